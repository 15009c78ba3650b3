//! The per-client lease index that ListHeld reads: candidates, not facts.
//!
//! Each entry is a lock id scored with an upper bound on when its lease can
//! end. Entries are written just ahead of the lock script that may grant
//! them (Acquire, Renew), on the same connection, so every lease a client is
//! told about is in its index by then; ListHeld checks each candidate against
//! its resource, so entries for requests that were never granted, or leases
//! since released, are only garbage that the bound trims.

use std::time::Duration;

use crate::conn::Lane;

use crate::error::StoreError;
use crate::keys::Namespace;
use crate::store::RedisStore;

/// Where the index lives and how far ahead a renewal may reach.
pub struct LeaseIndex {
    ns: Namespace,
    max_ttl_ms: u64,
    /// Added to every bound: the lock script reads Redis' clock a little
    /// after the index script, up to a timeout later on a slow path.
    margin_ms: u64,
}

impl LeaseIndex {
    pub fn new(ns: Namespace, max_ttl: Duration, timeout: Duration) -> LeaseIndex {
        LeaseIndex {
            ns,
            max_ttl_ms: max_ttl.as_millis() as u64,
            margin_ms: 2 * timeout.as_millis() as u64,
        }
    }

    /// The index key of a client.
    pub fn key(&self, client_id: &str) -> String {
        self.ns.client_index(client_id)
    }

    /// The bound for a renewal that keeps the lease's own TTL.
    pub fn max_ttl_ms(&self) -> u64 {
        self.max_ttl_ms
    }

    /// Notes `lock_id` as a candidate that lives at most `bound_ms` from now.
    pub async fn put(
        &self,
        store: &RedisStore,
        mut conn: Lane,
        client_id: &str,
        lock_id: &str,
        bound_ms: u64,
    ) -> Result<(), StoreError> {
        let named = &store.scripts().index;
        let mut invocation = named.script.prepare_invoke();
        invocation
            .key(self.key(client_id))
            .arg(lock_id)
            .arg(bound_ms + self.margin_ms);
        match store
            .lanes()
            .bounded(invocation.invoke_async::<()>(&mut conn))
            .await
        {
            Err(StoreError::Redis(err)) => Err(StoreError::from_script(named.name, err)),
            other => other,
        }
    }

    /// Drops a candidate in the background; failing only leaves garbage
    /// that its bound trims.
    pub fn remove_later(&self, mut conn: Lane, client_id: &str, lock_id: &str, timeout: Duration) {
        let key = self.key(client_id);
        let lock_id = lock_id.to_owned();
        tokio::spawn(async move {
            let removed = tokio::time::timeout(
                timeout,
                redis::cmd("ZREM")
                    .arg(&key)
                    .arg(&lock_id)
                    .query_async::<()>(&mut conn),
            )
            .await;
            if !matches!(removed, Ok(Ok(()))) {
                tracing::debug!("dropping a lease index entry failed; its bound trims it");
            }
        });
    }
}
