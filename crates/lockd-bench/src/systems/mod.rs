//! The systems under test, behind one trait so that every workload drives them
//! the same way.
//!
//! A *slot* is a logical client's number: each system maps it onto one of its few
//! shared connections (`slot % connections`), so many logical clients share a
//! handful of HTTP/2 or Redis connections, and a release goes out on the same
//! connection as its acquire.

pub mod etcd;
pub mod lockd;
pub mod redis_direct;

use std::time::{Duration, SystemTime};

use anyhow::Result;
use clap::ValueEnum;
use futures::future::BoxFuture;
use serde::Serialize;

/// The systems `compare` measures: the first four by default, the three on
/// replicated Redis (Sentinel, Cluster) when named with `--system`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum, Serialize)]
pub enum SystemKind {
    /// lockd with the Redis backend, through its gRPC API.
    #[value(name = "lockd-redis")]
    #[serde(rename = "lockd-redis")]
    LockdRedis,
    /// lockd --dev: in-memory state, so only the cost of the gRPC layer.
    #[value(name = "lockd-dev")]
    #[serde(rename = "lockd-dev")]
    LockdDev,
    /// SET NX PX and a compare-and-delete script straight on Redis.
    #[value(name = "redis-direct")]
    #[serde(rename = "redis-direct")]
    RedisDirect,
    /// etcd's v3 Lock API (lease grant, lock, unlock, revoke).
    #[value(name = "etcd")]
    #[serde(rename = "etcd")]
    Etcd,
    /// lockd on a Sentinel group (1 primary, 2 replicas, 3 sentinels), a grant
    /// acknowledged once one replica has it (`--min-replicas-ack 1`).
    #[value(name = "lockd-sentinel")]
    #[serde(rename = "lockd-sentinel")]
    LockdSentinel,
    /// lockd on the same Sentinel group without waiting for a replica
    /// (`--min-replicas-ack 0`): the difference to lockd-sentinel is the cost of WAIT.
    #[value(name = "lockd-sentinel-noack")]
    #[serde(rename = "lockd-sentinel-noack")]
    LockdSentinelNoack,
    /// lockd on a Redis Cluster of three primaries with one replica each
    /// (`--min-replicas-ack 1`).
    #[value(name = "lockd-cluster")]
    #[serde(rename = "lockd-cluster")]
    LockdCluster,
}

impl SystemKind {
    /// What `compare` runs when no `--system` is given. The replicated-Redis
    /// systems start six or seven Redis processes each and need lockd's HA
    /// connection layer, so they run only when asked for.
    pub const DEFAULT: [SystemKind; 4] = [
        SystemKind::LockdRedis,
        SystemKind::LockdDev,
        SystemKind::RedisDirect,
        SystemKind::Etcd,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SystemKind::LockdRedis => "lockd-redis",
            SystemKind::LockdDev => "lockd-dev",
            SystemKind::RedisDirect => "redis-direct",
            SystemKind::Etcd => "etcd",
            SystemKind::LockdSentinel => "lockd-sentinel",
            SystemKind::LockdSentinelNoack => "lockd-sentinel-noack",
            SystemKind::LockdCluster => "lockd-cluster",
        }
    }

    pub fn is_lockd(self) -> bool {
        !matches!(self, SystemKind::RedisDirect | SystemKind::Etcd)
    }

    /// `--min-replicas-ack` of the lockd daemons of this system, for the systems
    /// on replicated Redis.
    pub fn min_replicas_ack(self) -> Option<u32> {
        match self {
            SystemKind::LockdSentinel | SystemKind::LockdCluster => Some(1),
            SystemKind::LockdSentinelNoack => Some(0),
            _ => None,
        }
    }
}

/// One request for an exclusive lock.
#[derive(Debug, Clone)]
pub struct LockReq {
    pub resource: String,
    pub client_id: String,
    pub ttl_ms: u64,
    /// How long to wait (or spin) for a busy lock.
    pub wait: Duration,
}

/// A granted lock, with what it takes to release it.
#[derive(Debug, Clone)]
pub struct Held {
    pub resource: String,
    pub client_id: String,
    /// lockd's lock_id, the random value stored in Redis, or etcd's lock key.
    pub handle: String,
    /// etcd's lease id; 0 elsewhere.
    pub lease_id: i64,
    /// lockd's fencing token; the others have none.
    pub fencing: Option<u64>,
    /// The lease time-to-live actually in force (etcd rounds up to whole seconds
    /// and to its minimum).
    pub ttl_ms: u64,
    /// When the lease ends unless renewed: lockd's own figure; for the others,
    /// an estimate from when the TTL was last set.
    pub expires_at: SystemTime,
}

/// A request known to be in line for a lock. Dropping it leaves the line.
pub struct Waiting {
    /// The place in line when it joined (lockd only; 0 is next).
    pub position: Option<u64>,
    /// Resolves with the lease once granted.
    pub grant: BoxFuture<'static, Result<Held>>,
}

/// A lock service as the workloads see it.
pub trait LockSystem: Send + Sync {
    fn name(&self) -> &'static str;

    /// Whether waiters are served in the order they asked.
    fn fair(&self) -> bool;

    /// Takes the lock, waiting up to `req.wait` for it.
    fn acquire<'a>(&'a self, slot: usize, req: &'a LockReq) -> BoxFuture<'a, Result<Held>>;

    /// Ends a lease.
    fn release<'a>(&'a self, slot: usize, held: &'a Held) -> BoxFuture<'a, Result<()>>;

    /// Asks for the lock and returns once the request is known to be in line, so
    /// that requests joined one after another are in a known order. Systems with
    /// no queue return after a first failed attempt and then retry.
    fn join_queue<'a>(&'a self, slot: usize, req: &'a LockReq) -> BoxFuture<'a, Result<Waiting>>;
}

/// Aborts a spawned task when dropped, so a dropped [`Waiting`] stops its work.
pub struct AbortOnDrop<T>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
