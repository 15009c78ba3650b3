//! Domain rules of lockd, with no I/O: what a lock is and how requests are judged.
//!
//! - [`mode`]: lock modes and their compatibility.
//! - [`validate`]: request checks against the daemon's [`Limits`].
//! - [`lock_id`]: lock ids, a secret plus the resource they belong to.
//! - [`lease`]: leases, waiters, and the outcomes both lock stores report.
//! - [`engine`]: the reference engine, lock state in memory; `lockd --dev` serves
//!   it and the Redis store's Lua scripts follow it rule for rule.
//! - [`stats`]: statistics deltas and totals.
//! - [`error`]: [`LockError`], which the daemon maps to gRPC status codes.

pub mod engine;
pub mod error;
pub mod lease;
pub mod lock_id;
pub mod mode;
pub mod stats;
pub mod validate;

pub use engine::{Caller, Engine, Now, Outcome};
pub use error::LockError;
pub use lease::{
    AcquireOutcome, AcquireSpec, Effects, Event, HoldEnd, Lease, LeaveOutcome, QueueView,
    SyncOutcome, Waiter, WaiterState,
};
pub use lock_id::LockId;
pub use mode::LockMode;
pub use stats::{Stats, StatsDelta};
pub use validate::Limits;
