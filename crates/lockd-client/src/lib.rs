//! Rust client for lockd, the distributed lock daemon (gRPC `lockd.v1.LockService`).
//!
//! A lock is a *lease*: it carries a fencing token and ends by itself unless
//! renewed. This crate takes leases, keeps them renewed in the background, and
//! tells the holder as soon as a lease can no longer be trusted.
//!
//! ```no_run
//! use std::time::Duration;
//! use lockd_client::{Client, Mode};
//!
//! # async fn demo() -> lockd_client::Result<()> {
//! let client = Client::connect("127.0.0.1:50051").await?;
//! let guard = client
//!     .lock("orders/42")
//!     .mode(Mode::Exclusive)
//!     .ttl(Duration::from_secs(10))
//!     .wait(Duration::from_secs(5))
//!     .acquire()
//!     .await?;
//! // Renewed every ~3.3 s from now on. Write with the fencing token so the
//! // storage can refuse a holder whose lease ran out.
//! println!("token {}", guard.fencing_token());
//! guard.release().await?;
//! # Ok(()) }
//! ```
//!
//! # Retries
//!
//! [`LockBuilder::acquire`] and [`LockBuilder::queue`] ask again, with a
//! backoff of 50 ms doubling to 1 s (with jitter), when the daemon answers
//! `UNAVAILABLE`: it is shutting down in a rolling restart, or Redis did not
//! answer in time. They never wait past the wait the caller gave (an unset
//! wait counts as the daemon's default, 5 s). This is safe because the
//! daemon guarantees that an Acquire or WaitQueue answered with an error
//! leaves no lease and no place in line behind: it leaves the queue and
//! releases any grant it took for the call, retrying until Redis answers.
//! Other errors, and every other call, are returned as they are.
//!
//! # Layout
//!
//! - [`client`]: [`Client`], the connection, and the one-call RPCs
//!   (release, renew, status, held leases, queues, statistics, health).
//! - [`lock`]: [`LockBuilder`], which asks for a lock either in one call
//!   ([`LockBuilder::acquire`]) or while reporting the place in line
//!   ([`LockBuilder::queue`], a [`QueueStream`] of [`QueueEvent`]s).
//! - [`guard`]: [`LockGuard`], a held lease renewed every third of its ttl,
//!   with [`LockGuard::lost`] and [`LostReason`].
//! - [`retry`]: how an Acquire or WaitQueue that ended `UNAVAILABLE` is
//!   asked again within the caller's wait.
//! - [`types`]: [`Mode`], [`Lease`], [`QueueSnapshot`], [`Stats`], [`Health`]:
//!   the wire messages with `Duration`s and `SystemTime`s.
//! - [`error`]: [`Error`], one enum that keeps the gRPC status code.
//! - [`pb`]: the generated messages and `LockServiceClient` stub.

pub mod client;
pub mod error;
pub mod guard;
pub mod lock;
pub mod retry;
pub mod types;

/// Generated lockd.v1 messages and the `LockServiceClient` stub.
pub mod pb {
    tonic::include_proto!("lockd.v1");
}

pub use client::Client;
pub use error::{Error, Result, code_name};
pub use guard::{LeaseStatus, LockGuard, LostReason};
pub use lock::{LockBuilder, QueueEvent, QueueStream};
pub use tonic::Code;
pub use types::{Health, Lease, Mode, ParseModeError, QueueSnapshot, Stats, Waiter};
