//! The lock store a daemon runs on: Redis, or process memory for `--dev`.

use std::sync::{Mutex, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use lockd_core::{
    AcquireOutcome, AcquireSpec, Caller, Effects, Engine, Lease, LeaveOutcome, LockError, LockId,
    Now, Outcome, QueueView, StatsDelta, SyncOutcome,
};
use lockd_redis::{Notice, RedisStore, StoreError};
use tokio::sync::mpsc;

/// Lock state in process memory: the reference engine behind a mutex, with a
/// clock that never goes back.
pub struct MemoryStore {
    engine: Mutex<Engine>,
    /// Wall-clock microseconds at `started`; later times add monotonic elapsed time.
    epoch_us: u64,
    started: Instant,
    /// Stands in for keyspace notifications.
    notices: mpsc::UnboundedSender<Notice>,
    /// Deployment statistics: every operation's events, added as it runs.
    totals: Mutex<StatsDelta>,
}

/// Where lock state lives.
// One per daemon, behind an Arc: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Store {
    /// Redis, which may not be reachable yet when the daemon starts.
    Redis(RedisSlot),
    Memory(MemoryStore),
}

/// The Redis store, empty until it is connected and has passed every startup
/// check, then set once and for good.
///
/// Invariant: a [`RedisStore`] is reachable from the daemon only through
/// this slot, and is put in it only once it is complete (lanes open, layout,
/// eviction policy and notifications checked). So no operation can run on a
/// half-built store: until then every operation fails with
/// [`StoreError::NotReady`] (UNAVAILABLE to clients).
#[derive(Default)]
pub struct RedisSlot(OnceLock<RedisStore>);

impl RedisSlot {
    /// Publishes the checked store. A second store is refused (and dropped):
    /// the first one may already be serving.
    pub fn publish(&self, store: RedisStore) -> bool {
        self.0.set(store).is_ok()
    }

    /// The store, once published.
    pub fn get(&self) -> Option<&RedisStore> {
        self.0.get()
    }
}

/// A published store, for one operation.
enum Ready<'a> {
    Redis(&'a RedisStore),
    Memory(&'a MemoryStore),
}

/// What an operation that found no store yet reports.
fn not_ready<T>() -> Outcome<T> {
    (Err(StoreError::NotReady.into()), Effects::default())
}

impl MemoryStore {
    pub fn new(notices: mpsc::UnboundedSender<Notice>) -> MemoryStore {
        let epoch_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        MemoryStore {
            engine: Mutex::new(Engine::new()),
            epoch_us,
            started: Instant::now(),
            notices,
            totals: Mutex::new(StatsDelta::default()),
        }
    }

    fn now(&self) -> Now {
        Now::from_micros(self.epoch_us + self.started.elapsed().as_micros() as u64)
    }

    fn engine(&self) -> std::sync::MutexGuard<'_, Engine> {
        // A panic while holding the lock cannot leave the engine half-changed
        // in a way later calls misread, so a poisoned lock is still usable.
        self.engine.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs a changing operation, counts it, and tells waiters of the
    /// resource to look again.
    fn change<T>(
        &self,
        resource: &str,
        op: impl FnOnce(&mut Engine, Now) -> Outcome<T>,
    ) -> Outcome<T> {
        let outcome = op(&mut self.engine(), self.now());
        self.count(resource, &outcome.1);
        outcome
    }

    /// Adds what an operation changed to the totals, as the Redis scripts
    /// do in their bucket's counters.
    fn count(&self, resource: &str, effects: &Effects) {
        if !effects.events.is_empty() {
            self.totals
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .record(resource, &effects.events);
            let _ = self.notices.send(Notice::Changed(resource.to_owned()));
        }
    }
}

impl Store {
    /// A Redis store that is not connected yet: see [`RedisSlot`].
    pub fn redis_pending() -> Store {
        Store::Redis(RedisSlot::default())
    }

    /// Publishes a connected and checked Redis store; false if this is not a
    /// Redis store or one was published already.
    pub fn publish(&self, redis: RedisStore) -> bool {
        match self {
            Store::Redis(slot) => slot.publish(redis),
            Store::Memory(_) => false,
        }
    }

    /// The store to run an operation on, or [`StoreError::NotReady`].
    fn ready(&self) -> Result<Ready<'_>, StoreError> {
        match self {
            Store::Redis(slot) => slot.get().map(Ready::Redis).ok_or(StoreError::NotReady),
            Store::Memory(m) => Ok(Ready::Memory(m)),
        }
    }

    pub async fn acquire(
        &self,
        spec: &AcquireSpec,
        secret: &str,
        caller: &Caller<'_>,
        max_queue: u64,
    ) -> Outcome<AcquireOutcome> {
        match self.ready() {
            Err(_) => not_ready(),
            Ok(Ready::Redis(r)) => r.acquire(spec, secret, caller, max_queue).await,
            Ok(Ready::Memory(m)) => m.change(&spec.resource, |e, now| {
                e.acquire(now, spec, secret, caller, max_queue)
            }),
        }
    }

    pub async fn sync(
        &self,
        resource: &str,
        secrets: &[String],
        caller: &Caller<'_>,
    ) -> Outcome<SyncOutcome> {
        match self.ready() {
            Err(_) => not_ready(),
            Ok(Ready::Redis(r)) => r.sync(resource, secrets, caller).await,
            Ok(Ready::Memory(m)) => {
                m.change(resource, |e, now| e.sync(now, resource, secrets, caller))
            }
        }
    }

    pub async fn leave(
        &self,
        resource: &str,
        secret: &str,
        caller: &Caller<'_>,
        outcome_unknown: bool,
    ) -> Outcome<LeaveOutcome> {
        match self.ready() {
            Err(_) => not_ready(),
            Ok(Ready::Redis(r)) => r.leave(resource, secret, caller, outcome_unknown).await,
            Ok(Ready::Memory(m)) => m.change(resource, |e, now| {
                e.leave(now, resource, secret, caller, outcome_unknown)
            }),
        }
    }

    pub async fn release(
        &self,
        lock: &LockId,
        client_id: &str,
        caller: &Caller<'_>,
    ) -> Outcome<Lease> {
        match self.ready() {
            Err(_) => not_ready(),
            Ok(Ready::Redis(r)) => r.release(lock, client_id, caller).await,
            Ok(Ready::Memory(m)) => m.change(&lock.resource, |e, now| {
                e.release(now, lock, client_id, caller)
            }),
        }
    }

    pub async fn renew(
        &self,
        lock: &LockId,
        client_id: &str,
        ttl_ms: Option<u64>,
        caller: &Caller<'_>,
    ) -> Outcome<Lease> {
        match self.ready() {
            Err(_) => not_ready(),
            Ok(Ready::Redis(r)) => r.renew(lock, client_id, ttl_ms, caller).await,
            Ok(Ready::Memory(m)) => m.change(&lock.resource, |e, now| {
                e.renew(now, lock, client_id, ttl_ms, caller)
            }),
        }
    }

    pub async fn get(&self, lock: &LockId) -> Result<Lease, LockError> {
        match self.ready() {
            Err(err) => Err(err.into()),
            Ok(Ready::Redis(r)) => r.get(lock).await,
            Ok(Ready::Memory(m)) => m.engine().get(m.now(), lock),
        }
    }

    pub async fn queue(&self, resource: &str) -> Result<QueueView, LockError> {
        match self.ready() {
            Err(err) => Err(err.into()),
            Ok(Ready::Redis(r)) => r.queue(resource).await,
            Ok(Ready::Memory(m)) => Ok(m.engine().queue(m.now(), resource)),
        }
    }

    pub async fn held_by(&self, client_id: &str) -> Result<Vec<Lease>, LockError> {
        match self.ready() {
            Err(err) => Err(err.into()),
            Ok(Ready::Redis(r)) => r.held_by(client_id).await,
            Ok(Ready::Memory(m)) => Ok(m.engine().held_by(m.now(), client_id)),
        }
    }

    /// Where the store is, as it may be logged: the Redis URL without its
    /// password, or `memory`.
    pub fn address(&self) -> String {
        match self.ready() {
            Ok(Ready::Redis(r)) => r.address().to_owned(),
            Ok(Ready::Memory(_)) => "memory".to_owned(),
            Err(_) => "redis (not connected yet)".to_owned(),
        }
    }

    /// Whether the store answers now.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self.ready() {
            Err(err) => Err(err),
            Ok(Ready::Redis(r)) => r.ping().await,
            Ok(Ready::Memory(_)) => Ok(()),
        }
    }

    pub async fn read_stats(&self) -> Result<StatsDelta, StoreError> {
        match self.ready() {
            Err(err) => Err(err),
            Ok(Ready::Redis(r)) => r.read_stats().await,
            Ok(Ready::Memory(m)) => Ok(m.totals.lock().unwrap_or_else(|e| e.into_inner()).clone()),
        }
    }

    /// Sweeps the resources whose due time has come (leases ended, daemons'
    /// liveness lapsed), whoever's they are, and returns what each reported.
    pub async fn reap(&self, caller: &Caller<'_>) -> Result<Vec<(String, Effects)>, StoreError> {
        match self.ready() {
            Err(err) => Err(err),
            Ok(Ready::Redis(r)) => r.reap(caller).await,
            Ok(Ready::Memory(m)) => {
                let swept = m.engine().reap(m.now(), caller);
                for (resource, effects) in &swept {
                    m.count(resource, effects);
                }
                Ok(swept)
            }
        }
    }
}
