//! Real redis-server, Sentinel, Cluster and lockd processes for lockd's tests.
//!
//! Only tests (as a dev-dependency) and the benchmark use this crate. The
//! processes listen on free loopback ports. Every starter polls until what it started really serves, within a bounded
//! wait, and panics with a message naming what did not come up (with the tail
//! of its log). Every child is killed when its handle is dropped, and by the
//! kernel if the test process dies first (see [`process`]).
//!
//! # Layout
//!
//! - [`ids`]: free loopback ports and names unique within the process.
//! - [`paths`]: the workspace and target folders, programs on `PATH`, and
//!   [`TempDir`], the scratch folder each server keeps its data in.
//! - [`process`]: [`ChildProcess`], a child with its output in a log file,
//!   signalled by pid.
//! - [`redis`]: [`RedisServer`], one redis-server (also with its clock offset
//!   through libfaketime), paused, killed and restarted on its port.
//! - [`sentinel`]: [`SentinelGroup`], a primary, two replicas and three
//!   sentinels that fail over within seconds.
//! - [`cluster`]: [`RedisCluster`], three primaries with one replica each.
//! - [`tls`]: [`SelfSigned`], a throwaway certificate for a TLS redis-server.
//! - [`lockd`]: [`Lockd`], a lockd daemon as a child process.
//! - `src/bin/lockd-testkit.rs`: the same starters for shell scripts
//!   (`tests/run.sh`).

pub mod cluster;
pub mod ids;
pub mod lockd;
pub mod paths;
pub mod process;
pub mod redis;
pub mod sentinel;
pub mod tls;
mod wait;

pub use cluster::{RedisCluster, Shard};
pub use ids::{free_port, try_free_port, unique};
pub use lockd::{Lockd, LockdCommand, lockd_bin};
pub use paths::{TempDir, program, target_dir, workspace_root};
pub use process::ChildProcess;
pub use redis::{RedisServer, faketime_preload};
pub use sentinel::SentinelGroup;
pub use tls::SelfSigned;
