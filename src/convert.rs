//! Conversions between lock types and their protobuf messages.

use lockd_core::{Lease, LockMode, Stats, Waiter};
use prost_types::Timestamp;

use crate::pb;

/// A protobuf timestamp from milliseconds since the epoch.
pub fn timestamp(ms: u64) -> Timestamp {
    Timestamp {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

pub fn mode(mode: LockMode) -> pb::LockMode {
    match mode {
        LockMode::Exclusive => pb::LockMode::Exclusive,
        LockMode::Shared => pb::LockMode::Shared,
        LockMode::Read => pb::LockMode::Read,
        LockMode::Write => pb::LockMode::Write,
    }
}

pub fn lease(lease: Lease) -> pb::Lease {
    pb::Lease {
        lock_id: lease.lock_id,
        resource: lease.resource,
        mode: mode(lease.mode) as i32,
        client_id: lease.client_id,
        fencing_token: lease.fencing_token,
        acquired_at: Some(timestamp(lease.acquired_at_ms)),
        expires_at: Some(timestamp(lease.expires_at_ms)),
        ttl_ms: lease.ttl_ms,
        renewal_count: lease.renewal_count,
        max_renewals: lease.max_renewals,
    }
}

pub fn waiter(waiter: Waiter) -> pb::Waiter {
    pb::Waiter {
        client_id: waiter.client_id,
        mode: mode(waiter.mode) as i32,
        ttl_ms: waiter.ttl_ms,
        position: waiter.position,
        enqueued_at: Some(timestamp(waiter.enqueued_at_ms)),
    }
}

pub fn stats(stats: Stats) -> pb::GetStatsResponse {
    pb::GetStatsResponse {
        total_locks: stats.total_locks,
        active_locks: stats.active_locks,
        expired_locks: stats.expired_locks,
        released_locks: stats.released_locks,
        average_hold_time_ms: stats.average_hold_time_ms,
        active_by_mode: stats
            .active_by_mode
            .into_iter()
            .map(|(m, n)| (m.as_str().to_owned(), n))
            .collect(),
        top_resources: stats
            .top_resources
            .into_iter()
            .map(|(resource, locks)| pb::ResourceCount { resource, locks })
            .collect(),
        waiting: stats.waiting,
    }
}
