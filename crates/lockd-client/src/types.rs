//! Plain Rust views of the lockd.v1 messages: modes, leases, queues and statistics.
//!
//! The generated [`pb`](mod@crate::pb) types stay available for callers who want the
//! wire form; these types replace milliseconds and `Timestamp`s with
//! [`Duration`] and [`SystemTime`], and enum integers with [`Mode`].

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::pb;

/// Who may hold a resource at the same time.
///
/// `Shared` and `Read` are compatible with each other and with themselves;
/// `Exclusive` and `Write` are compatible with nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Mode {
    /// One holder at a time (the default).
    #[default]
    Exclusive,
    /// Any number of `Shared` or `Read` holders at a time.
    Shared,
    /// The reader side of a read-write lock: like `Shared`.
    Read,
    /// The writer side of a read-write lock: like `Exclusive`.
    Write,
}

impl Mode {
    /// Every mode, in wire order.
    pub const ALL: [Mode; 4] = [Mode::Exclusive, Mode::Shared, Mode::Read, Mode::Write];

    /// The lower-case name used by `lockctl` and by `GetStats.active_by_mode`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Exclusive => "exclusive",
            Mode::Shared => "shared",
            Mode::Read => "read",
            Mode::Write => "write",
        }
    }

    /// Reads a wire value; `UNSPECIFIED` (and any value this client does not
    /// know) means `Exclusive`, the most careful reading.
    pub fn from_wire(value: i32) -> Mode {
        match pb::LockMode::try_from(value) {
            Ok(pb::LockMode::Shared) => Mode::Shared,
            Ok(pb::LockMode::Read) => Mode::Read,
            Ok(pb::LockMode::Write) => Mode::Write,
            _ => Mode::Exclusive,
        }
    }
}

impl From<Mode> for pb::LockMode {
    fn from(mode: Mode) -> Self {
        match mode {
            Mode::Exclusive => pb::LockMode::Exclusive,
            Mode::Shared => pb::LockMode::Shared,
            Mode::Read => pb::LockMode::Read,
            Mode::Write => pb::LockMode::Write,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing a [`Mode`] from text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown lock mode {0:?} (expected exclusive, shared, read or write)")]
pub struct ParseModeError(String);

impl FromStr for Mode {
    type Err = ParseModeError;

    /// Accepts `exclusive`, `shared`, `read`, `write` in any case, and the
    /// wire names (`LOCK_MODE_SHARED`, ...).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        let name = lower.strip_prefix("lock_mode_").unwrap_or(&lower);
        match name {
            "exclusive" => Ok(Mode::Exclusive),
            "shared" => Ok(Mode::Shared),
            "read" => Ok(Mode::Read),
            "write" => Ok(Mode::Write),
            _ => Err(ParseModeError(s.to_owned())),
        }
    }
}

/// A granted lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Secret handle of this lease; with `client_id` it proves ownership.
    /// Empty in [`QueueSnapshot::holders`], where the daemon hides it.
    pub lock_id: String,
    /// The locked resource.
    pub resource: String,
    /// How the lock is held.
    pub mode: Mode,
    /// Who holds it.
    pub client_id: String,
    /// Strictly increases per resource across all grants. Pass it to the
    /// storage you protect and reject smaller ones.
    pub fencing_token: u64,
    /// When the lease was granted (daemon's clock).
    pub acquired_at: SystemTime,
    /// When the lease ends unless renewed (daemon's clock).
    pub expires_at: SystemTime,
    /// The lease's time to live.
    pub ttl: Duration,
    /// How many times the lease was renewed.
    pub renewal_count: u32,
    /// The renewal limit; 0 means unlimited.
    pub max_renewals: u32,
}

impl Lease {
    /// Time left until `expires_at` by this machine's clock; zero once passed.
    pub fn remaining(&self) -> Duration {
        self.expires_at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    }
}

impl From<pb::Lease> for Lease {
    fn from(l: pb::Lease) -> Self {
        Lease {
            mode: Mode::from_wire(l.mode),
            lock_id: l.lock_id,
            resource: l.resource,
            client_id: l.client_id,
            fencing_token: l.fencing_token,
            acquired_at: system_time(l.acquired_at),
            expires_at: system_time(l.expires_at),
            ttl: Duration::from_millis(l.ttl_ms),
            renewal_count: l.renewal_count,
            max_renewals: l.max_renewals,
        }
    }
}

/// Converts a wire timestamp; a missing or out-of-range one reads as the
/// Unix epoch, which for `expires_at` means "already over".
pub(crate) fn system_time(ts: Option<prost_types::Timestamp>) -> SystemTime {
    ts.and_then(|ts| SystemTime::try_from(ts).ok())
        .unwrap_or(UNIX_EPOCH)
}

/// One waiter in a resource's queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiter {
    /// Who waits.
    pub client_id: String,
    /// The mode it asked for.
    pub mode: Mode,
    /// The ttl it asked for (zero: the daemon's default).
    pub ttl: Duration,
    /// 0 means next in line.
    pub position: u64,
    /// When it joined the queue (daemon's clock).
    pub enqueued_at: SystemTime,
}

impl From<pb::Waiter> for Waiter {
    fn from(w: pb::Waiter) -> Self {
        Waiter {
            mode: Mode::from_wire(w.mode),
            client_id: w.client_id,
            ttl: Duration::from_millis(w.ttl_ms),
            position: w.position,
            enqueued_at: system_time(w.enqueued_at),
        }
    }
}

/// The holders and the waiters of one resource (`GetQueue`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueSnapshot {
    /// The resource asked about.
    pub resource: String,
    /// The live leases, with `lock_id` left empty.
    pub holders: Vec<Lease>,
    /// The waiters in the order they will be served.
    pub waiters: Vec<Waiter>,
}

impl From<pb::GetQueueResponse> for QueueSnapshot {
    fn from(r: pb::GetQueueResponse) -> Self {
        QueueSnapshot {
            resource: r.resource,
            holders: r.holders.into_iter().map(Lease::from).collect(),
            waiters: r.waiters.into_iter().map(Waiter::from).collect(),
        }
    }
}

/// Deployment-wide statistics (`GetStats`).
#[derive(Clone, Debug, PartialEq)]
pub struct Stats {
    /// Grants ever made.
    pub total_locks: u64,
    /// Leases live now.
    pub active_locks: u64,
    /// Leases that ended by expiry.
    pub expired_locks: u64,
    /// Leases that ended by release.
    pub released_locks: u64,
    /// Mean time from grant to end over leases that ended, in milliseconds.
    pub average_hold_time_ms: f64,
    /// Live leases by mode name (`exclusive`, `shared`, `read`, `write`).
    pub active_by_mode: BTreeMap<String, u64>,
    /// Up to 10 resources with the most grants, most first.
    pub top_resources: Vec<(String, u64)>,
    /// Waiters queued now.
    pub waiting: u64,
}

impl From<pb::GetStatsResponse> for Stats {
    fn from(s: pb::GetStatsResponse) -> Self {
        Stats {
            total_locks: s.total_locks,
            active_locks: s.active_locks,
            expired_locks: s.expired_locks,
            released_locks: s.released_locks,
            average_hold_time_ms: s.average_hold_time_ms,
            active_by_mode: s.active_by_mode.into_iter().collect(),
            top_resources: s
                .top_resources
                .into_iter()
                .map(|r| (r.resource, r.locks))
                .collect(),
            waiting: s.waiting,
        }
    }
}

/// The answer of the standard gRPC health service (`grpc.health.v1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// The service is up and its dependencies (Redis) answer.
    Serving,
    /// The service is up but cannot serve, for example Redis is unreachable.
    NotServing,
    /// The daemon does not know yet.
    Unknown,
}

impl Health {
    /// The wire name: `SERVING`, `NOT_SERVING` or `UNKNOWN`.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Serving => "SERVING",
            Health::NotServing => "NOT_SERVING",
            Health::Unknown => "UNKNOWN",
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_from_cli_and_wire_names() {
        assert_eq!("shared".parse::<Mode>(), Ok(Mode::Shared));
        assert_eq!("WRITE".parse::<Mode>(), Ok(Mode::Write));
        assert_eq!("LOCK_MODE_READ".parse::<Mode>(), Ok(Mode::Read));
        assert!("upgradable".parse::<Mode>().is_err());
        for mode in Mode::ALL {
            assert_eq!(mode.as_str().parse::<Mode>(), Ok(mode));
            assert_eq!(Mode::from_wire(pb::LockMode::from(mode) as i32), mode);
        }
    }

    #[test]
    fn unspecified_and_unknown_modes_read_as_exclusive() {
        assert_eq!(Mode::from_wire(0), Mode::Exclusive);
        assert_eq!(Mode::from_wire(99), Mode::Exclusive);
    }

    #[test]
    fn lease_converts_times_and_ttl() {
        let lease = Lease::from(pb::Lease {
            lock_id: "id".into(),
            resource: "r".into(),
            mode: pb::LockMode::Shared as i32,
            client_id: "c".into(),
            fencing_token: 7,
            acquired_at: Some(prost_types::Timestamp {
                seconds: 10,
                nanos: 0,
            }),
            expires_at: None,
            ttl_ms: 1500,
            renewal_count: 2,
            max_renewals: 3,
        });
        assert_eq!(lease.mode, Mode::Shared);
        assert_eq!(lease.ttl, Duration::from_millis(1500));
        assert_eq!(lease.acquired_at, UNIX_EPOCH + Duration::from_secs(10));
        assert_eq!(lease.expires_at, UNIX_EPOCH);
        assert_eq!(lease.remaining(), Duration::ZERO);
    }
}
