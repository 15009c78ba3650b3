//! This daemon's waiters: who waits where, and how each learns it was granted.
//!
//! A waiter's place in line lives in the store; this module keeps only the
//! channel to each waiting call. It looks at a resource again (a *sync*) when
//! Redis says one of its keys changed, when the earliest holder's lease is due
//! to end, and every tick regardless, because notifications are only hints
//! and the store drops the queue entries of daemons that stop syncing.
//!
//! What this module assumes of the store, and guarantees in turn:
//! - a grant reported in `my_grants` was taken out of the store's inbox, so
//!   this daemon alone must hand it to its waiter or release it. A waiter
//!   leaves the local map only with its end result or through its ticket,
//!   and a ticket dropped before its lease reached the client leaves the
//!   store, which releases whatever was granted to it;
//! - a leave that fails is retried (one attempt in flight at a time) until it
//!   succeeds or every lease and wait it could concern has ended, so no entry
//!   or grant of a request this daemon gave up on is left to lapse by itself;
//! - until the store has answered an acquire, its outcome is unknown: a
//!   leave then also cancels that acquire in the store, should it arrive
//!   after the leave (a client that went away mid-call, a reply that timed
//!   out). What stays open: a daemon killed between taking a grant over and
//!   handing it to its client, or with leaves still owed, leaves those leases
//!   to their TTL;
//! - a resource this daemon could not sync for longer than its liveness has
//!   lost its entries in the store, so its waiting calls end UNAVAILABLE
//!   then, not at their own (possibly hour-long) deadline.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use lockd_core::{
    AcquireOutcome, AcquireSpec, Caller, Effects, Lease, LockError, LockId, SyncOutcome,
    WaiterState,
};
use lockd_redis::{Notice, Notifier};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::stats::StatsRecorder;
use crate::store::Store;

/// How many of this daemon's waiters on a resource an event-driven sync
/// asks about: the ones at the front, whose positions matter most.
const POSITIONS_PER_SYNC: usize = 64;

/// Most waiters one sync script asks about, so that its work is bounded.
const SECRETS_PER_SYNC: usize = 256;

/// What a waiting call hears about its place in line. Kept in a watch
/// channel: a newer position replaces an unread one (updates may be
/// coalesced), and a waiter costs one small allocation, not a channel buffer.
#[derive(Debug, Clone)]
enum Update {
    /// Nothing new since the request was queued.
    Waiting,
    Position {
        position: u64,
        queue_length: u64,
    },
    Granted(Lease),
    Gone,
    /// This daemon could not reach the store for longer than its liveness.
    Unreachable,
    /// Granted, but fewer replicas than `--min-replicas-ack` confirmed it.
    Unconfirmed,
}

/// What a waiting call sees next.
#[derive(Debug)]
pub enum WaitEvent {
    Position { position: u64, queue_length: u64 },
    Granted(Lease),
}

struct LocalWaiter {
    updates: watch::Sender<Update>,
    /// Arrival order on this daemon, which is also the order in the store's queue.
    arrival: u64,
    /// Set once the store has queued it; syncs ask only about queued waiters.
    queued: bool,
    /// The last position sent; positions only ever go down.
    position: Option<u64>,
}

#[derive(Default)]
struct LocalResource {
    waiters: HashMap<String, LocalWaiter>,
    /// A sync is running; `again` asks it to run once more, `again_full`
    /// to ask for every waiter's position.
    syncing: bool,
    again: bool,
    again_full: bool,
    /// When the pending expiry timer fires.
    timer_at: Option<Instant>,
    /// Whether a subscription was asked for: only then does forgetting the
    /// resource need to reach the watcher. Requests granted at once never ask.
    watched: bool,
    /// When a sync of this resource last succeeded (or its first waiter was
    /// queued): past the liveness, the store has dropped these waiters.
    synced_at: Option<Instant>,
}

/// A leave still owed to the store: the request's resource and secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct OwedLeave {
    resource: String,
    secret: String,
}

/// How an owed leave stands.
#[derive(Debug, Clone, Copy)]
struct Owed {
    outcome_unknown: bool,
    first_try: Instant,
    /// An attempt is running: ticks do not start another.
    in_flight: bool,
}

/// The waiters of this daemon and the machinery that wakes them.
pub struct Waiters {
    store: Arc<Store>,
    daemon_id: String,
    liveness_ms: u64,
    max_queue: u64,
    /// Resource to its local waiters. A plain mutex: it is held only for map
    /// updates, never across an await.
    resources: Mutex<HashMap<String, LocalResource>>,
    /// Resources whose subscription may need to change; one task applies them in order.
    watch: Option<mpsc::UnboundedSender<String>>,
    stats: Arc<StatsRecorder>,
    /// Next arrival number.
    arrivals: std::sync::atomic::AtomicU64,
    /// Leaves that failed; retried every tick until they succeed.
    owed: Mutex<HashMap<OwedLeave, Owed>>,
    /// How long a failed leave is retried: past it, every lease and wait it
    /// could concern has ended.
    leave_horizon: Duration,
    /// Background leaves and syncs, awaited at shutdown.
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

/// A request that is waiting or may still hold a grant. Dropping it before
/// [`Ticket::delivered`] takes the request out of line and releases any lease
/// granted to it: the client never received that lease.
pub struct Ticket {
    waiters: Arc<Waiters>,
    resource: String,
    secret: String,
    updates: watch::Receiver<Update>,
    deadline: Instant,
    waited_ms: u64,
    registered: bool,
    delivered: bool,
    /// The acquire's reply never came: the store may still queue or grant it.
    outcome_unknown: bool,
}

/// How an acquire turned out.
pub enum Acquired {
    Granted(Lease),
    /// Queued at `position` of `queue_length`; the ticket waits for the rest.
    Waiting {
        ticket: Ticket,
        position: u64,
        queue_length: u64,
    },
}

impl Waiters {
    /// `leave_horizon` is how long a failed leave is retried: at least the
    /// longest wait plus the longest lease.
    pub fn new(
        store: Arc<Store>,
        liveness: Duration,
        leave_horizon: Duration,
        max_queue: u64,
        stats: Arc<StatsRecorder>,
        watch: Option<mpsc::UnboundedSender<String>>,
        shutdown: CancellationToken,
    ) -> Waiters {
        Waiters {
            store,
            daemon_id: uuid::Uuid::new_v4().simple().to_string(),
            liveness_ms: liveness.as_millis() as u64,
            max_queue,
            resources: Mutex::default(),
            watch,
            stats,
            arrivals: std::sync::atomic::AtomicU64::new(0),
            owed: Mutex::default(),
            leave_horizon,
            tasks: TaskTracker::new(),
            shutdown,
        }
    }

    /// This daemon as the store sees it.
    pub fn caller(&self) -> Caller<'_> {
        Caller {
            daemon_id: &self.daemon_id,
            liveness_ms: self.liveness_ms,
        }
    }

    fn local(&self) -> MutexGuard<'_, HashMap<String, LocalResource>> {
        // Held only for map updates that leave it consistent at every step.
        self.resources.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tries to acquire; if the request may wait, queues it and returns a ticket.
    pub async fn acquire(self: &Arc<Self>, spec: &AcquireSpec) -> Result<Acquired, LockError> {
        let secret = LockId::generate(&spec.resource).secret;
        let (tx, rx) = watch::channel(Update::Waiting);
        let registered = spec.wait_ms > 0;
        if registered {
            self.local()
                .entry(spec.resource.clone())
                .or_default()
                .waiters
                .insert(
                    secret.clone(),
                    LocalWaiter {
                        updates: tx,
                        arrival: self
                            .arrivals
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                        queued: false,
                        position: None,
                    },
                );
        }
        // From here on, dropping the ticket (the client went away) undoes
        // whatever the store did with this request.
        let mut ticket = Ticket {
            waiters: Arc::clone(self),
            resource: spec.resource.clone(),
            secret: secret.clone(),
            updates: rx,
            deadline: Instant::now() + Duration::from_millis(spec.wait_ms),
            waited_ms: spec.wait_ms,
            registered,
            delivered: false,
            // Until the store answers, the call may be dropped with the
            // acquire still on its way to Redis.
            outcome_unknown: true,
        };
        let (result, effects) = self
            .store
            .acquire(spec, &secret, &self.caller(), self.max_queue)
            .await;
        self.handle_effects(&spec.resource, effects);
        match result {
            Ok(AcquireOutcome::Granted(lease)) => {
                ticket.delivered();
                Ok(Acquired::Granted(lease))
            }
            Ok(AcquireOutcome::Busy) => {
                ticket.delivered();
                Err(LockError::WaitTimeout { waited_ms: 0 })
            }
            Ok(AcquireOutcome::Queued {
                position,
                queue_length,
            }) => {
                ticket.outcome_unknown = false;
                if let Some(r) = self.local().get_mut(&spec.resource) {
                    r.watched = true;
                    // The script just proved this daemon alive there.
                    r.synced_at = Some(Instant::now());
                    if let Some(w) = r.waiters.get_mut(&secret) {
                        w.queued = true;
                        w.position = Some(position);
                    }
                }
                self.request_watch(&spec.resource);
                Ok(Acquired::Waiting {
                    ticket,
                    position,
                    queue_length,
                })
            }
            // The store may still act on the request (a timeout, or a script
            // that failed part way): dropping the ticket leaves and cancels it.
            Err(err) => {
                ticket.outcome_unknown =
                    matches!(err, LockError::Unavailable(_) | LockError::Internal(_));
                if !ticket.outcome_unknown {
                    // A definite refusal (the queue is full): nothing to undo.
                    ticket.delivered();
                }
                Err(err)
            }
        }
    }

    /// Applies what a store operation reported: statistics, grants for this
    /// daemon's waiters, and when to look again.
    pub fn handle_effects(self: &Arc<Self>, resource: &str, effects: Effects) {
        self.stats.record(&effects.events);
        for (secret, lease) in effects.my_grants {
            let resource = lease.resource.clone();
            self.deliver(&resource, &secret, Update::Granted(lease));
        }
        for secret in effects.unconfirmed_grants {
            self.deliver(resource, &secret, Update::Unconfirmed);
        }
        if let Some(ms) = effects.next_expiry_in_ms {
            self.arm_timer(resource, ms);
        }
    }

    /// Hands an end result to a local waiter and forgets it.
    ///
    /// A grant for a waiter that is no longer here is not released here: the
    /// same grant can arrive twice (a sync's fallback read and another call's
    /// take-over race), and the second must not end a lease the client has.
    /// A waiter leaves this map only by receiving its end result or through
    /// its ticket, whose leave (retried until it succeeds) releases whatever
    /// was granted to it.
    fn deliver(self: &Arc<Self>, resource: &str, secret: &str, update: Update) {
        if let Some(w) = self.remove(resource, secret) {
            // A closed channel means the ticket is being dropped and will leave.
            let _ = w.updates.send(update);
        }
    }

    fn forget(&self, resource: &str, secret: &str) {
        self.remove(resource, secret);
    }

    /// Takes a waiter out of the local map; the last one of a watched
    /// resource ends its subscription.
    fn remove(&self, resource: &str, secret: &str) -> Option<LocalWaiter> {
        let mut local = self.local();
        let r = local.get_mut(resource)?;
        let waiter = r.waiters.remove(secret);
        if r.waiters.is_empty() {
            let watched = r.watched;
            local.remove(resource);
            drop(local);
            if watched {
                self.request_watch(resource);
            }
        }
        waiter
    }

    fn request_watch(&self, resource: &str) {
        if let Some(watch) = &self.watch {
            let _ = watch.send(resource.to_owned());
        }
    }

    /// Whether this daemon has waiters on `resource`.
    pub fn is_waiting_on(&self, resource: &str) -> bool {
        self.local().contains_key(resource)
    }

    /// Resources with local waiters.
    pub fn resources(&self) -> Vec<String> {
        self.local().keys().cloned().collect()
    }

    /// How many requests wait on this daemon.
    pub fn count(&self) -> usize {
        self.local().values().map(|r| r.waiters.len()).sum()
    }

    fn arm_timer(self: &Arc<Self>, resource: &str, in_ms: u64) {
        // A little after the expiry, so the store's clock has surely passed it.
        let at = Instant::now() + Duration::from_millis(in_ms + 2);
        {
            let mut local = self.local();
            let Some(r) = local.get_mut(resource) else {
                return;
            };
            if r.timer_at.is_some_and(|t| t <= at) {
                return;
            }
            r.timer_at = Some(at);
        }
        let this = Arc::clone(self);
        let resource = resource.to_owned();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = this.shutdown.cancelled() => return,
            }
            if let Some(r) = this.local().get_mut(&resource)
                && r.timer_at == Some(at)
            {
                r.timer_at = None;
            }
            this.request_sync(&resource);
        });
    }

    /// Looks at a resource again soon; runs coalesce, one at a time per
    /// resource. Such a sync asks where only the first [`POSITIONS_PER_SYNC`]
    /// of this daemon's waiters stand, so that its cost does not grow with the
    /// queue; the periodic sync asks for all of them.
    pub fn request_sync(self: &Arc<Self>, resource: &str) {
        self.schedule_sync(resource, false);
    }

    fn schedule_sync(self: &Arc<Self>, resource: &str, full: bool) {
        {
            let mut local = self.local();
            let Some(r) = local.get_mut(resource) else {
                return;
            };
            if r.syncing {
                r.again = true;
                r.again_full |= full;
                return;
            }
            r.syncing = true;
        }
        let this = Arc::clone(self);
        let resource = resource.to_owned();
        self.tasks
            .spawn(async move { this.run_sync(resource, full).await });
    }

    /// Syncs every resource with local waiters: keeps them alive in the store,
    /// refreshes every position and catches whatever notifications were missed.
    /// Waiters of a resource that could not be synced for longer than the
    /// liveness are told so: the store has dropped them by now.
    pub fn sync_all(self: &Arc<Self>) {
        let liveness = Duration::from_millis(self.liveness_ms);
        let mut lost = Vec::new();
        for (resource, r) in self.local().iter() {
            if r.synced_at.is_some_and(|at| at.elapsed() > liveness) {
                // Only queued waiters had entries to lose; an acquire still
                // in flight answers for itself.
                lost.extend(
                    r.waiters
                        .iter()
                        .filter(|(_, w)| w.queued)
                        .map(|(s, _)| (resource.clone(), s.clone())),
                );
            }
        }
        for (resource, secret) in lost {
            self.deliver(&resource, &secret, Update::Unreachable);
        }
        for resource in self.resources() {
            self.schedule_sync(&resource, true);
        }
        self.retry_leaves();
    }

    async fn run_sync(self: Arc<Self>, resource: String, mut full: bool) {
        loop {
            let secrets: Vec<String> = match self.local().get(&resource) {
                Some(r) => {
                    let mut queued: Vec<(u64, &String)> = r
                        .waiters
                        .iter()
                        .filter(|(_, w)| w.queued)
                        .map(|(s, w)| (w.arrival, s))
                        .collect();
                    if !full && queued.len() > POSITIONS_PER_SYNC {
                        queued.select_nth_unstable(POSITIONS_PER_SYNC);
                        queued.truncate(POSITIONS_PER_SYNC);
                    }
                    queued.into_iter().map(|(_, s)| s.clone()).collect()
                }
                None => return,
            };
            // A resource with no queued waiter here is still synced once: that
            // keeps this daemon alive there and takes over its grants.
            let chunks: Vec<&[String]> = if secrets.is_empty() {
                vec![&[]]
            } else {
                secrets.chunks(SECRETS_PER_SYNC).collect()
            };
            for chunk in chunks {
                let (result, effects) = self.store.sync(&resource, chunk, &self.caller()).await;
                self.handle_effects(&resource, effects);
                match result {
                    Ok(outcome) => {
                        if let Some(r) = self.local().get_mut(&resource) {
                            r.synced_at = Some(Instant::now());
                        }
                        self.apply_states(&resource, chunk, outcome).await;
                    }
                    Err(err) => {
                        tracing::warn!(%resource, error = %err, "sync failed");
                        break;
                    }
                }
            }
            let mut local = self.local();
            match local.get_mut(&resource) {
                Some(r) if r.again => {
                    r.again = false;
                    full = std::mem::take(&mut r.again_full);
                }
                Some(r) => {
                    r.syncing = false;
                    return;
                }
                None => return,
            }
        }
    }

    async fn apply_states(
        self: &Arc<Self>,
        resource: &str,
        secrets: &[String],
        outcome: SyncOutcome,
    ) {
        let mut fetch = Vec::new();
        let mut gone = Vec::new();
        {
            let mut local = self.local();
            let Some(r) = local.get_mut(resource) else {
                return;
            };
            for (secret, state) in secrets.iter().zip(outcome.states) {
                let Some(w) = r.waiters.get_mut(secret) else {
                    continue;
                };
                match state {
                    WaiterState::Queued(position) => {
                        if w.position.is_none_or(|p| position < p) {
                            w.position = Some(position);
                            let _ = w.updates.send(Update::Position {
                                position,
                                queue_length: outcome.queue_length,
                            });
                        }
                    }
                    // Granted, but the grant reached none of this daemon's
                    // replies (one was lost): read the lease itself.
                    WaiterState::Granted => fetch.push(secret.clone()),
                    WaiterState::Gone => gone.push(secret.clone()),
                }
            }
        }
        for secret in gone {
            self.deliver(resource, &secret, Update::Gone);
        }
        for secret in fetch {
            match self
                .store
                .get(&LockId::new(secret.as_str(), resource))
                .await
            {
                Ok(lease) => self.deliver(resource, &secret, Update::Granted(lease)),
                Err(LockError::NotFound) => self.deliver(resource, &secret, Update::Gone),
                Err(err) => {
                    tracing::warn!(%resource, error = %err, "reading a granted lease failed")
                }
            }
        }
    }

    /// Acts on a hint from the store.
    pub fn on_notice(self: &Arc<Self>, notice: Notice) {
        match notice {
            Notice::Changed(resource) => self.request_sync(&resource),
            Notice::Disconnected => self.sync_all(),
        }
    }

    /// Takes a request out of line in the background, releasing its lease if
    /// it was granted but never handed over; retried until it succeeds.
    fn leave_later(self: &Arc<Self>, resource: String, secret: String, outcome_unknown: bool) {
        let this = Arc::clone(self);
        self.tasks.spawn(async move {
            this.leave_now(resource, secret, outcome_unknown, Instant::now())
                .await;
        });
    }

    /// One attempt at a leave; a failure is owed and retried every tick.
    async fn leave_now(
        self: &Arc<Self>,
        resource: String,
        secret: String,
        outcome_unknown: bool,
        first_try: Instant,
    ) -> bool {
        let (result, effects) = self
            .store
            .leave(&resource, &secret, &self.caller(), outcome_unknown)
            .await;
        self.handle_effects(&resource, effects);
        let owed = OwedLeave { resource, secret };
        match result {
            Ok(_) => {
                self.owed_leaves().remove(&owed);
                true
            }
            Err(err) => {
                if first_try.elapsed() > self.leave_horizon {
                    tracing::error!(resource = %owed.resource, error = %err, "giving up on a leave: every lease it could concern has ended");
                    self.owed_leaves().remove(&owed);
                } else {
                    tracing::warn!(resource = %owed.resource, error = %err, "leaving the queue failed; retrying");
                    self.owed_leaves().insert(
                        owed,
                        Owed {
                            outcome_unknown,
                            first_try,
                            in_flight: false,
                        },
                    );
                }
                false
            }
        }
    }

    fn owed_leaves(&self) -> MutexGuard<'_, HashMap<OwedLeave, Owed>> {
        self.owed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many leaves are owed to the store.
    pub fn owed_count(&self) -> usize {
        self.owed_leaves().len()
    }

    /// Tries every owed leave that is not being tried already once more.
    fn retry_leaves(self: &Arc<Self>) {
        let due: Vec<(OwedLeave, Owed)> = self
            .owed_leaves()
            .iter_mut()
            .filter(|(_, o)| !o.in_flight)
            .map(|(leave, o)| {
                o.in_flight = true;
                (leave.clone(), *o)
            })
            .collect();
        for (leave, owed) in due {
            let this = Arc::clone(self);
            self.tasks.spawn(async move {
                this.leave_now(
                    leave.resource,
                    leave.secret,
                    owed.outcome_unknown,
                    owed.first_try,
                )
                .await;
            });
        }
    }

    /// Ends every wait with UNAVAILABLE and waits for background work to finish.
    pub async fn close(&self, grace: Duration) {
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("background work still running at shutdown");
        }
    }
}

impl Ticket {
    /// Waits for the next change: a better position, or the grant. Fails at
    /// the wait deadline, at shutdown, or if the store dropped the request.
    pub async fn next(&mut self) -> Result<WaitEvent, LockError> {
        let changed = tokio::select! {
            changed = self.updates.changed() => changed,
            _ = tokio::time::sleep_until(self.deadline) => {
                return Err(LockError::WaitTimeout { waited_ms: self.waited_ms });
            }
            _ = self.waiters.shutdown.cancelled() => return Err(LockError::ShuttingDown),
        };
        let update = match changed {
            Ok(()) => self.updates.borrow_and_update().clone(),
            // Forgotten without an end result.
            Err(_) => Update::Gone,
        };
        match update {
            Update::Position {
                position,
                queue_length,
            } => Ok(WaitEvent::Position {
                position,
                queue_length,
            }),
            Update::Granted(lease) => Ok(WaitEvent::Granted(lease)),
            Update::Waiting | Update::Gone => Err(LockError::Unavailable(
                "the request was dropped from the queue; try again".to_owned(),
            )),
            Update::Unreachable => Err(LockError::Unavailable(
                "lockd could not reach redis for longer than --waiter-liveness; \
                 the place in line is lost, try again"
                    .to_owned(),
            )),
            // Dropping the ticket leaves, which releases the grant.
            Update::Unconfirmed => Err(LockError::Unavailable(
                "the grant was not confirmed by --min-replicas-ack replicas in time, \
                 so a redis failover could lose it; it was released, try again"
                    .to_owned(),
            )),
        }
    }

    /// Waits until granted, ignoring positions.
    pub async fn granted(&mut self) -> Result<Lease, LockError> {
        loop {
            if let WaitEvent::Granted(lease) = self.next().await? {
                return Ok(lease);
            }
        }
    }

    /// Leaves the queue now (releasing a grant that raced with this), so the
    /// caller's error is sent only once the request is out of line.
    ///
    /// The leave runs as a task of its own, so that a caller that stops
    /// waiting for it (a client whose call was cancelled meanwhile) cannot
    /// cut it short: it still retries until it succeeds.
    pub async fn leave(mut self) {
        if self.registered {
            self.waiters.forget(&self.resource, &self.secret);
            self.registered = false;
        }
        self.delivered = true;
        let waiters = Arc::clone(&self.waiters);
        let (resource, secret) = (
            std::mem::take(&mut self.resource),
            std::mem::take(&mut self.secret),
        );
        let outcome_unknown = self.outcome_unknown;
        let leave = self.waiters.tasks.spawn(async move {
            waiters
                .leave_now(resource, secret, outcome_unknown, Instant::now())
                .await;
        });
        // A join error means the task panicked or was aborted at shutdown.
        let _ = leave.await;
    }

    /// The lease reached the client's call: nothing to undo any more.
    pub fn delivered(&mut self) {
        self.delivered = true;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.registered {
            self.waiters.forget(&self.resource, &self.secret);
        }
        if !self.delivered {
            self.waiters.leave_later(
                std::mem::take(&mut self.resource),
                std::mem::take(&mut self.secret),
                self.outcome_unknown,
            );
        }
    }
}

/// Keeps the notification subscriptions equal to the set of resources with
/// local waiters, applying changes one at a time so they cannot reorder.
pub async fn run_watcher(
    waiters: Arc<Waiters>,
    notifier: Arc<Notifier>,
    mut changes: mpsc::UnboundedReceiver<String>,
) {
    let mut subscribed: HashSet<String> = HashSet::new();
    while let Some(resource) = changes.recv().await {
        let wanted = waiters.is_waiting_on(&resource);
        if wanted && !subscribed.contains(&resource) {
            match notifier.watch(&resource).await {
                Ok(()) => {
                    subscribed.insert(resource.clone());
                }
                Err(err) => {
                    tracing::warn!(%resource, error = %err, "subscribing failed; periodic syncs cover it")
                }
            }
            // Whatever changed before the subscription was not announced.
            waiters.request_sync(&resource);
        } else if !wanted
            && subscribed.remove(&resource)
            && let Err(err) = notifier.unwatch(&resource).await
        {
            tracing::warn!(%resource, error = %err, "unsubscribing failed");
        }
    }
}
