//! The lock service's operations, shared by the gRPC handlers and the REST
//! gateway: validate, call the store, account for what changed.

use std::sync::Arc;

use lockd_core::validate::{self, RawAcquire};
use lockd_core::{Lease, Limits, LockError, LockId, QueueView, Stats};

use crate::metrics::Metrics;
use crate::stats::StatsRecorder;
use crate::store::Store;
use crate::waiters::{Acquired, Waiters};

/// Everything an API handler needs.
pub struct LockCore {
    pub store: Arc<Store>,
    pub waiters: Arc<Waiters>,
    pub limits: Limits,
    pub stats: Arc<StatsRecorder>,
    pub metrics: Arc<Metrics>,
}

impl LockCore {
    /// Validates a request and either grants it or queues it.
    pub async fn start_acquire(&self, raw: &RawAcquire<'_>) -> Result<Acquired, LockError> {
        let spec = self.limits.acquire_spec(raw)?;
        self.waiters.acquire(&spec).await
    }

    /// Acquires, waiting in line as long as the request allows.
    pub async fn acquire(&self, raw: &RawAcquire<'_>) -> Result<Lease, LockError> {
        let started = std::time::Instant::now();
        match self.start_acquire(raw).await? {
            Acquired::Granted(lease) => {
                self.metrics.waited(started.elapsed());
                Ok(lease)
            }
            Acquired::Waiting { mut ticket, .. } => match ticket.granted().await {
                Ok(lease) => {
                    ticket.delivered();
                    self.metrics.waited(started.elapsed());
                    Ok(lease)
                }
                Err(err) => {
                    ticket.leave().await;
                    Err(err)
                }
            },
        }
    }

    /// Ends a lease.
    pub async fn release(&self, lock_id: &str, client_id: &str) -> Result<Lease, LockError> {
        let lock = parse_lock(lock_id, Some(client_id))?;
        let (result, effects) = self
            .store
            .release(&lock, client_id, &self.waiters.caller())
            .await;
        self.waiters.handle_effects(&lock.resource, effects);
        result
    }

    /// Extends a lease; `ttl_ms` 0 keeps its TTL.
    pub async fn renew(
        &self,
        lock_id: &str,
        client_id: &str,
        ttl_ms: u64,
    ) -> Result<Lease, LockError> {
        let lock = parse_lock(lock_id, Some(client_id))?;
        let ttl = self.limits.ttl(ttl_ms)?;
        let (result, effects) = self
            .store
            .renew(&lock, client_id, ttl, &self.waiters.caller())
            .await;
        self.waiters.handle_effects(&lock.resource, effects);
        if result.is_ok() {
            self.metrics.renewed();
        }
        result
    }

    /// A live lease by id.
    pub async fn get(&self, lock_id: &str) -> Result<Lease, LockError> {
        let lock = parse_lock(lock_id, None)?;
        self.store.get(&lock).await
    }

    /// The live leases of one client.
    pub async fn held(&self, client_id: &str) -> Result<Vec<Lease>, LockError> {
        validate::client_id(client_id)?;
        self.store.held_by(client_id).await
    }

    /// Holders and waiters of one resource.
    pub async fn queue(&self, resource: &str) -> Result<QueueView, LockError> {
        validate::resource(resource)?;
        self.store.queue(resource).await
    }

    /// Deployment-wide statistics.
    pub async fn stats(&self) -> Result<Stats, LockError> {
        self.stats.read(&self.store).await
    }
}

impl LockCore {
    /// The Prometheus text exposition, with the gauges read now.
    pub async fn metrics_text(&self) -> String {
        let active = self.stats().await.ok().map(|s| s.active_locks);
        self.metrics.render(self.waiters.count(), active)
    }
}

/// An empty lock id is a missing field, one lockd could not have issued is
/// invalid, and only a well-formed one is looked up (and may be NOT_FOUND).
fn parse_lock(lock_id: &str, client_id: Option<&str>) -> Result<LockId, LockError> {
    validate::lock_id(lock_id)?;
    if let Some(client_id) = client_id {
        validate::client_id(client_id)?;
    }
    LockId::parse(lock_id)
}
