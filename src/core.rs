//! The lock service's operations, shared by the gRPC handlers and the REST
//! gateway: validate, call the store, account for what changed. A waiting
//! acquire is a stream of events whose last one is the grant: WaitQueue maps
//! it onto its response stream, Acquire waits for its end.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use futures::Stream;
use lockd_core::validate::{self, RawAcquire};
use lockd_core::{Lease, Limits, LockError, LockId, QueueView, Stats};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::metrics::Metrics;
use crate::stats::StatsRecorder;
use crate::store::Store;
use crate::waiters::{self, Acquired, Ticket, Waiters};

/// The health services that flip with the store's health: readiness.
const HEALTH_SERVICES: [&str; 2] = ["", "lockd.v1.LockService"];

/// The health service that says only whether the process runs: liveness.
/// It never looks at Redis, so that an outage of Redis makes pods unready
/// instead of restarting them all.
pub const LIVENESS_SERVICE: &str = "liveness";

/// Whether this daemon serves: decided in one place (the health watcher),
/// reported by gRPC health and REST `/health` alike. Liveness is separate:
/// SERVING from start to shutdown.
pub struct Health {
    /// Held while a change is applied, so that both endpoints always end up
    /// with the same, last, status.
    reporter: tokio::sync::Mutex<HealthReporter>,
    serving: AtomicBool,
    /// Set at shutdown: from then on nothing turns health back on.
    stopping: AtomicBool,
}

impl Health {
    pub fn new(reporter: HealthReporter) -> Health {
        Health {
            reporter: tokio::sync::Mutex::new(reporter),
            serving: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
        }
    }

    /// Sets the status both health endpoints report; after [`Health::stop`]
    /// only NOT_SERVING.
    pub async fn set(&self, serving: bool) {
        let reporter = self.reporter.lock().await;
        let serving = serving && !self.stopping.load(Ordering::SeqCst);
        self.serving.store(serving, Ordering::SeqCst);
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for service in HEALTH_SERVICES {
            reporter.set_service_status(service, status).await;
        }
    }

    /// NOT_SERVING for good: the daemon is shutting down.
    pub async fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.set(false).await;
    }

    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::SeqCst)
    }

    /// Sets the liveness service: true once the process serves, false at shutdown.
    pub async fn set_alive(&self, alive: bool) {
        let status = if alive {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.reporter
            .lock()
            .await
            .set_service_status(LIVENESS_SERVICE, status)
            .await;
    }
}

/// Everything an API handler needs, behind the operations below.
pub struct LockCore {
    store: Arc<Store>,
    waiters: Arc<Waiters>,
    limits: Limits,
    stats: Arc<StatsRecorder>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// What a waiting acquire sees: its place in line, then its lease.
#[derive(Debug)]
pub enum WaitEvent {
    Queued { position: u64, queue_length: u64 },
    Granted(Lease),
}

/// Where a waiting acquire's stream stands.
enum WaitState {
    /// Granted at once: the lease is all there is to say.
    Granted(Lease),
    /// Queued: the first position, then whatever the ticket hears.
    Queued {
        ticket: Ticket,
        position: u64,
        queue_length: u64,
    },
    Waiting(Ticket),
    /// The grant was handed out; being asked for more means it was taken.
    Handed(Ticket),
    Done,
}

impl LockCore {
    pub fn new(
        store: Arc<Store>,
        waiters: Arc<Waiters>,
        limits: Limits,
        stats: Arc<StatsRecorder>,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> LockCore {
        LockCore {
            store,
            waiters,
            limits,
            stats,
            metrics,
            health,
        }
    }

    /// The metrics handlers record their calls in.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Whether this daemon serves now (gRPC health says the same).
    pub fn is_serving(&self) -> bool {
        self.health.is_serving()
    }

    /// What keeps the lock state: `redis` or `memory`.
    pub fn store_kind(&self) -> &'static str {
        match *self.store {
            Store::Redis(_) => "redis",
            Store::Memory(_) => "memory",
        }
    }

    /// Validates a request and waits in line for it: a stream of its places
    /// in line, ending with the grant or an error. Dropping the stream before
    /// the grant was taken from it (asked for the next item) takes the request
    /// out of line and releases whatever was granted to it.
    pub async fn wait(
        &self,
        raw: &RawAcquire<'_>,
    ) -> Result<impl Stream<Item = Result<WaitEvent, LockError>> + Send + 'static, LockError> {
        let started = Instant::now();
        let spec = self.limits.acquire_spec(raw)?;
        let state = match self.waiters.acquire(&spec).await? {
            Acquired::Granted(lease) => WaitState::Granted(lease),
            Acquired::Waiting {
                ticket,
                position,
                queue_length,
            } => WaitState::Queued {
                ticket,
                position,
                queue_length,
            },
        };
        let metrics = Arc::clone(&self.metrics);
        Ok(futures::stream::unfold(state, move |state| {
            let metrics = Arc::clone(&metrics);
            async move {
                match state {
                    WaitState::Granted(lease) => {
                        metrics.waited(started.elapsed());
                        Some((Ok(WaitEvent::Granted(lease)), WaitState::Done))
                    }
                    WaitState::Queued {
                        ticket,
                        position,
                        queue_length,
                    } => Some((
                        Ok(WaitEvent::Queued {
                            position,
                            queue_length,
                        }),
                        WaitState::Waiting(ticket),
                    )),
                    WaitState::Waiting(mut ticket) => match ticket.next().await {
                        Ok(waiters::WaitEvent::Position {
                            position,
                            queue_length,
                        }) => Some((
                            Ok(WaitEvent::Queued {
                                position,
                                queue_length,
                            }),
                            WaitState::Waiting(ticket),
                        )),
                        Ok(waiters::WaitEvent::Granted(lease)) => {
                            metrics.waited(started.elapsed());
                            Some((Ok(WaitEvent::Granted(lease)), WaitState::Handed(ticket)))
                        }
                        Err(err) => {
                            // Out of line before the caller hears why.
                            ticket.leave().await;
                            Some((Err(err), WaitState::Done))
                        }
                    },
                    WaitState::Handed(mut ticket) => {
                        ticket.delivered();
                        None
                    }
                    WaitState::Done => None,
                }
            }
        }))
    }

    /// Acquires, waiting in line as long as the request allows: the last
    /// event of [`LockCore::wait`].
    pub async fn acquire(&self, raw: &RawAcquire<'_>) -> Result<Lease, LockError> {
        use futures::StreamExt;
        let events = self.wait(raw).await?;
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            if let WaitEvent::Granted(lease) = event? {
                // Asking once more marks the lease as taken.
                let _ = events.next().await;
                return Ok(lease);
            }
        }
        Err(LockError::Internal(
            "the wait ended without a grant or an error".to_owned(),
        ))
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
