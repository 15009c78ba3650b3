//! The REST API's JSON shapes, named as in the original brief (camelCase), and
//! their conversions from the lock types.

use std::time::{Duration, UNIX_EPOCH};

use lockd_core::{Lease, LockMode, Stats, Waiter};
use serde::{Deserialize, Serialize};

/// The body of every acquire endpoint. Strings default to empty so that a
/// missing field is reported by the same check as an empty one, by name.
/// Every body refuses unknown fields: a misspelt one (`ttl_ms` for `ttl`)
/// would otherwise be dropped and its default applied without a word.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct AcquireBody {
    pub resource: String,
    /// exclusive, shared, read, write, or read-write together with `access`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// read or write: the side of a read-write lock.
    pub access: Option<String>,
    /// Milliseconds; 0 or absent means the daemon's default.
    pub ttl: Option<u64>,
    /// Milliseconds; absent means the daemon's default, 0 means try once.
    pub wait_timeout: Option<u64>,
    pub client_id: String,
    /// 0 or absent means the daemon's default.
    pub max_renewals: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ReleaseBody {
    pub lock_id: String,
    pub client_id: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct RenewBody {
    pub lock_id: String,
    pub client_id: String,
    /// Milliseconds from now; 0 or absent keeps the lease's TTL.
    pub ttl: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HeldQuery {
    pub client_id: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct QueueQuery {
    pub resource: String,
}

/// `{"success": true, "data": ...}`.
#[derive(Serialize)]
pub struct Success<T> {
    pub success: bool,
    pub data: T,
}

impl<T> Success<T> {
    pub fn new(data: T) -> Success<T> {
        Success {
            success: true,
            data,
        }
    }
}

/// A lease. `lockId` is left out where the secret must not be shown (queue holders).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseJson {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub lock_id: String,
    pub resource: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub client_id: String,
    pub fencing_token: u64,
    pub acquired_at: String,
    pub expires_at: String,
    /// Milliseconds.
    pub ttl: u64,
    pub renewal_count: u32,
    /// 0 means unlimited.
    pub max_renewals: u32,
    /// Only in status answers; always false, since only live leases are found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_expired: Option<bool>,
}

impl From<Lease> for LeaseJson {
    fn from(lease: Lease) -> LeaseJson {
        LeaseJson {
            lock_id: lease.lock_id,
            resource: lease.resource,
            kind: lease.mode.as_str(),
            client_id: lease.client_id,
            fencing_token: lease.fencing_token,
            acquired_at: rfc3339(lease.acquired_at_ms),
            expires_at: rfc3339(lease.expires_at_ms),
            ttl: lease.ttl_ms,
            renewal_count: lease.renewal_count,
            max_renewals: lease.max_renewals,
            is_expired: None,
        }
    }
}

/// One waiter of a resource's queue.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WaiterJson {
    pub client_id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub ttl: u64,
    /// 0 means next in line.
    pub position: u64,
    pub enqueued_at: String,
}

impl From<Waiter> for WaiterJson {
    fn from(waiter: Waiter) -> WaiterJson {
        WaiterJson {
            client_id: waiter.client_id,
            kind: waiter.mode.as_str(),
            ttl: waiter.ttl_ms,
            position: waiter.position,
            enqueued_at: rfc3339(waiter.enqueued_at_ms),
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueJson {
    pub resource: String,
    pub waiting_clients: usize,
    pub holders: Vec<LeaseJson>,
    pub queue: Vec<WaiterJson>,
}

/// Live leases by mode.
#[derive(Debug, Default, Serialize)]
pub struct LockTypesJson {
    pub exclusive: u64,
    pub shared: u64,
    pub read: u64,
    pub write: u64,
}

#[derive(Debug, Serialize)]
pub struct ResourceCountJson {
    pub resource: String,
    pub locks: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatsJson {
    pub total_locks: u64,
    pub active_locks: u64,
    pub expired_locks: u64,
    pub released_locks: u64,
    /// Milliseconds, over leases that ended.
    pub average_hold_time: f64,
    pub lock_types: LockTypesJson,
    pub top_resources: Vec<ResourceCountJson>,
    pub waiting: u64,
}

impl From<Stats> for StatsJson {
    fn from(stats: Stats) -> StatsJson {
        let mut lock_types = LockTypesJson::default();
        for (mode, n) in stats.active_by_mode {
            let slot = match mode {
                LockMode::Exclusive => &mut lock_types.exclusive,
                LockMode::Shared => &mut lock_types.shared,
                LockMode::Read => &mut lock_types.read,
                LockMode::Write => &mut lock_types.write,
            };
            *slot += n;
        }
        StatsJson {
            total_locks: stats.total_locks,
            active_locks: stats.active_locks,
            expired_locks: stats.expired_locks,
            released_locks: stats.released_locks,
            average_hold_time: stats.average_hold_time_ms,
            lock_types,
            top_resources: stats
                .top_resources
                .into_iter()
                .map(|(resource, locks)| ResourceCountJson { resource, locks })
                .collect(),
            waiting: stats.waiting,
        }
    }
}

/// The health answer; `activeLocks` and `totalLocks` only when statistics could be read.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthJson {
    /// healthy or unhealthy.
    pub status: &'static str,
    /// redis or memory.
    pub store: &'static str,
    pub timestamp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_locks: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_locks: Option<u64>,
}

/// Milliseconds since the epoch as RFC 3339 in UTC, with milliseconds.
pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}
