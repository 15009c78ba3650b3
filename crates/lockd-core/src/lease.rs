//! Leases, waiters and the requests and outcomes that both lock stores share.

use crate::mode::LockMode;

/// A validated acquire request with defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcquireSpec {
    pub resource: String,
    pub mode: LockMode,
    pub ttl_ms: u64,
    /// How long to wait in line; 0 means try once.
    pub wait_ms: u64,
    pub client_id: String,
    /// 0 means unlimited.
    pub max_renewals: u32,
}

/// A granted lock. Times are milliseconds since the Unix epoch on the store's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Encoded [`crate::LockId`]; empty where the secret must not be shown.
    pub lock_id: String,
    pub resource: String,
    pub mode: LockMode,
    pub client_id: String,
    pub fencing_token: u64,
    pub acquired_at_ms: u64,
    pub expires_at_ms: u64,
    pub ttl_ms: u64,
    pub renewal_count: u32,
    pub max_renewals: u32,
}

/// One entry of a resource's queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiter {
    pub client_id: String,
    pub mode: LockMode,
    pub ttl_ms: u64,
    /// 0 means next in line.
    pub position: u64,
    pub enqueued_at_ms: u64,
}

/// The holders and the waiters of one resource.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueView {
    pub holders: Vec<Lease>,
    pub waiters: Vec<Waiter>,
}

/// What an acquire attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcquireOutcome {
    /// Granted at once.
    Granted(Lease),
    /// Busy and the request asked not to wait.
    Busy,
    /// Queued; grants arrive later through [`Effects::my_grants`].
    Queued { position: u64, queue_length: u64 },
}

/// Where one of the caller's waiters stands after a sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaiterState {
    /// Still in line at this position.
    Queued(u64),
    /// Granted; the lease is in [`Effects::my_grants`] of this or an earlier call.
    Granted,
    /// No longer in the queue and not granted (purged or timed out).
    Gone,
}

/// The result of a sync: where each of the caller's waiters stands.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SyncOutcome {
    /// In the order the secrets were given.
    pub states: Vec<WaiterState>,
    pub queue_length: u64,
}

/// What a leave did with the waiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveOutcome {
    /// It was still queued and left the queue.
    Left,
    /// It had been granted but never handed over; the lease was released.
    GrantReleased,
    /// Nothing was there (already gone).
    NotFound,
}

/// How a hold ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldEnd {
    Released,
    Expired,
    /// Granted to a waiter that went away before the lease was handed over.
    Abandoned,
}

/// A state change seen by one store operation, for statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Granted(LockMode),
    Ended {
        how: HoldEnd,
        mode: LockMode,
        held_ms: u64,
    },
    Enqueued,
    /// A waiter left the queue (granted, gone away, timed out or purged).
    Dequeued,
}

/// What every store operation reports besides its own answer. Its grants
/// left the store's inbox with it: whoever ran the operation must hand them
/// to their waiters (`Waiters::handle_effects` in the daemon).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[must_use = "its grants must reach their waiters or be released"]
pub struct Effects {
    /// Grants made to this daemon's waiters, by this or by another daemon's call,
    /// that this call took over. Each must reach its waiter or be released.
    pub my_grants: Vec<(String, Lease)>,
    /// Grants to this daemon's waiters that this call took over but fewer
    /// replicas than required confirmed (`--min-replicas-ack`): a failover
    /// could lose them, so they must not reach their waiters. Each waiter
    /// fails UNAVAILABLE and leaves, which releases its grant.
    pub unconfirmed_grants: Vec<String>,
    /// Milliseconds until the earliest holder's lease ends, when waiters remain.
    pub next_expiry_in_ms: Option<u64>,
    /// State changes, for statistics.
    pub events: Vec<Event>,
}
