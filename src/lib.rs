//! lockd: a distributed lock and coordination daemon.
//!
//! Lock state lives in Redis, so any number of these stateless daemons serve
//! the same locks; each keeps only its own waiting calls in memory.
//!
//! Layout of the workspace:
//! - `crates/lockd-core`: modes, validation, errors and the reference lock engine (no I/O).
//! - `crates/lockd-redis`: the Redis store, its Lua scripts and keyspace notifications.
//! - this crate, the daemon:
//!   - [`config`]: flags and `LOCKD_*` variables.
//!   - [`server`]: [`server::run`] builds a daemon on a listener and serves until shutdown.
//!   - [`service`]: the gRPC handlers, thin adapters onto [`core`].
//!   - [`core`]: the operations shared by every API.
//!   - [`waiters`]: this daemon's waiting calls and what wakes them.
//!   - [`store`]: Redis or, with `--dev`, process memory.
//!   - [`stats`]: statistics batched into deployment-wide totals.
//!   - [`metrics`]: Prometheus metrics; [`http`] serves them and the REST API.
//!   - [`convert`], [`error`]: protobuf conversions and gRPC status codes.
//!   - [`codec`]: the protobuf codec, with buffers sized for lockd's small messages.

pub mod codec;
pub mod config;
pub mod convert;
pub mod core;
pub mod error;
pub mod http;
pub mod metrics;
pub mod server;
pub mod service;
pub mod stats;
pub mod store;
pub mod waiters;

/// Generated `lockd.v1` messages and service traits.
pub mod pb {
    tonic::include_proto!("lockd.v1");

    /// Descriptor set served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("lockd_descriptor");
}
