//! The reference lock engine: lockd's rules applied to state in process memory.
//!
//! `lockd --dev` serves this engine directly. The Redis store runs the same rules
//! as Lua scripts (`crates/lockd-redis/lua`), operation for operation, and the
//! property tests check that the two agree. Every operation has the same shape
//! as a script: sweep what ended, do the operation, grant whoever is next in
//! line, then report what changed ([`Effects`]).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use crate::error::LockError;
use crate::lease::{
    AcquireOutcome, AcquireSpec, Effects, Event, HoldEnd, Lease, LeaveOutcome, QueueView,
    SyncOutcome, Waiter, WaiterState,
};
use crate::lock_id::LockId;
use crate::mode::LockMode;

/// Extra time a queue entry outlives its waiter's deadline, so that the
/// waiter's own daemon times it out first and the sweep is only a safety net.
pub const WAIT_GRACE_MS: u64 = 2_000;

/// How long a cancellation waits for an acquire whose reply never came
/// ([`Engine::leave`] with `outcome_unknown`). An acquire that reaches the
/// store later than this after its leave takes effect.
pub const CANCEL_KEEP_MS: u64 = 3_600_000;

/// Most dead queue entries one operation drops; the rest wait for the next
/// sweep, so that no single operation's work grows with the queue.
pub const PURGE_LIMIT: usize = 100;

/// Most waiters one operation grants (a long run of shared waiters); the
/// rest are granted by the next sweep, which is due at once.
pub const GRANT_LIMIT: usize = 1_000;

/// Most expired leases one operation ends, earliest first; the rest by the
/// next sweep, which is due at once. Until then they still hold.
pub const EXPIRE_LIMIT: usize = 1_000;

/// The store's clock as one operation sees it: frozen for the whole operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Milliseconds since the Unix epoch: lease times.
    pub ms: u64,
    /// Microseconds since the Unix epoch: the floor of fencing tokens.
    pub us: u64,
}

impl Now {
    /// The instant `us` microseconds after the epoch.
    pub fn from_micros(us: u64) -> Now {
        Now { ms: us / 1000, us }
    }
}

/// What an operation answers, and what it changed whether it succeeded or not:
/// a failed operation may still have swept expired leases or taken over grants.
pub type Outcome<T> = (Result<T, LockError>, Effects);

/// Who calls an operation: the daemon that owns the waiters it may take grants for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller<'a> {
    pub daemon_id: &'a str,
    /// How long this daemon's queue entries stay valid without a sync.
    pub liveness_ms: u64,
}

#[derive(Debug, Clone)]
struct Holder {
    mode: LockMode,
    client_id: String,
    token: u64,
    acquired_ms: u64,
    expires_ms: u64,
    ttl_ms: u64,
    renewals: u32,
    max_renewals: u32,
}

#[derive(Debug, Clone)]
struct QueuedWaiter {
    seq: u64,
    mode: LockMode,
    ttl_ms: u64,
    max_renewals: u32,
    enqueued_ms: u64,
    deadline_ms: u64,
    daemon_id: String,
    client_id: String,
}

/// What a resource knows of one daemon with waiters or grants there.
#[derive(Debug, Clone, Default)]
struct DaemonLedger {
    /// Liveness deadline; `None` once the daemon was found dead here.
    deadline_ms: Option<u64>,
    /// How many of its queue entries count as waiting.
    waiting: u64,
    /// Its entries with a sequence up to this are from before it was found dead.
    tomb: u64,
}

#[derive(Debug, Default)]
struct Resource {
    /// Live leases by secret.
    holders: BTreeMap<String, Holder>,
    /// Queue order: sequence number to secret.
    queue: BTreeMap<u64, String>,
    waiters: HashMap<String, QueuedWaiter>,
    /// Daemons with waiters or undelivered grants here.
    daemons: HashMap<String, DaemonLedger>,
    /// The last arrival sequence handed out; it restarts only with an empty queue.
    last_seq: u64,
    /// Grants not yet taken over by their waiter's daemon: secret to daemon.
    inbox: BTreeMap<String, String>,
    /// The sweep time last put in [`Engine::due`] for this resource.
    due_at: Option<u64>,
    /// Work promote did in the current operation, across its calls, and
    /// whether it stopped at a limit with more to do.
    purged: usize,
    promoted: usize,
    promote_pending: bool,
}

/// Lock state of every resource, in memory.
#[derive(Debug, Default)]
pub struct Engine {
    resources: HashMap<String, Resource>,
    /// When each resource next needs a sweep (a lease ends, a daemon's
    /// liveness lapses), so that the periodic reap visits only those.
    due: BinaryHeap<Reverse<(u64, String)>>,
    /// The last fencing token handed out on any resource: tokens only grow,
    /// whatever the clock does.
    floor: u64,
    /// Requests cancelled before their acquire was seen: (resource, secret) to
    /// when the cancellation lapses.
    cancelled: HashMap<(String, String), u64>,
}

impl Holder {
    fn lease(&self, secret: &str, resource: &str) -> Lease {
        Lease {
            lock_id: LockId::new(secret, resource).encode(),
            resource: resource.to_owned(),
            mode: self.mode,
            client_id: self.client_id.clone(),
            fencing_token: self.token,
            acquired_at_ms: self.acquired_ms,
            expires_at_ms: self.expires_ms,
            ttl_ms: self.ttl_ms,
            renewal_count: self.renewals,
            max_renewals: self.max_renewals,
        }
    }
}

/// The state a step shares across resources: the token floor.
struct Shared<'a> {
    floor: &'a mut u64,
}

impl Resource {
    fn daemon_alive(&self, daemon_id: &str, now: Now) -> bool {
        self.daemons
            .get(daemon_id)
            .and_then(|d| d.deadline_ms)
            .is_some_and(|d| d > now.ms)
    }

    /// Whether a queue entry still counts as waiting: its daemon is alive
    /// and the entry is not from before that daemon was last found dead.
    fn counted(&self, w: &QueuedWaiter) -> bool {
        self.daemons
            .get(&w.daemon_id)
            .is_some_and(|d| d.deadline_ms.is_some() && w.seq > d.tomb)
    }

    fn set_daemon_alive(&mut self, caller: &Caller<'_>, now: Now) {
        self.daemons
            .entry(caller.daemon_id.to_owned())
            .or_default()
            .deadline_ms = Some(now.ms + caller.liveness_ms);
    }

    /// Takes an entry out of line, keeping the ledger in step.
    fn remove_entry(&mut self, secret: &str, effects: &mut Effects) {
        let Some(w) = self.waiters.remove(secret) else {
            return;
        };
        self.queue.remove(&w.seq);
        if self.counted(&w)
            && let Some(d) = self.daemons.get_mut(&w.daemon_id)
        {
            d.waiting -= 1;
            effects.events.push(Event::Dequeued);
        }
    }

    fn end_hold(&mut self, secret: &str, how: HoldEnd, held_ms: u64, effects: &mut Effects) {
        if let Some(h) = self.holders.remove(secret) {
            self.inbox.remove(secret);
            effects.events.push(Event::Ended {
                how,
                mode: h.mode,
                held_ms,
            });
        }
    }

    /// Ends expired leases; settles daemons whose liveness lapsed (their
    /// entries stop counting as waiting, their undelivered grants are released).
    fn sweep(&mut self, now: Now, effects: &mut Effects) {
        let mut expired: Vec<(u64, String, u64)> = self
            .holders
            .iter()
            .filter(|(_, h)| h.expires_ms <= now.ms)
            .map(|(s, h)| {
                let held_ms = h.expires_ms.saturating_sub(h.acquired_ms);
                (h.expires_ms, s.clone(), held_ms)
            })
            .collect();
        // Earliest first, as the store's expiry index orders them.
        expired.sort();
        if expired.len() > EXPIRE_LIMIT {
            expired.truncate(EXPIRE_LIMIT);
            self.promote_pending = true;
        }
        for (_, secret, held_ms) in expired {
            self.end_hold(&secret, HoldEnd::Expired, held_ms, effects);
        }
        if self.queue.is_empty() && self.inbox.is_empty() {
            return;
        }
        let last_seq = self.last_seq;
        for d in self.daemons.values_mut() {
            if d.deadline_ms.is_some_and(|dl| dl <= now.ms) {
                for _ in 0..d.waiting {
                    effects.events.push(Event::Dequeued);
                }
                *d = DaemonLedger {
                    deadline_ms: None,
                    waiting: 0,
                    tomb: last_seq,
                };
            }
        }
        let abandoned: Vec<String> = self
            .inbox
            .iter()
            .filter(|(_, d)| !self.daemon_alive(d, now))
            .map(|(s, _)| s.clone())
            .collect();
        for secret in abandoned {
            self.inbox.remove(&secret);
            if let Some(h) = self.holders.get(&secret) {
                let held_ms = now.ms.saturating_sub(h.acquired_ms);
                self.end_hold(&secret, HoldEnd::Abandoned, held_ms, effects);
            }
        }
    }

    /// Ends `secret`'s lease if it expired but the sweep has not reached it
    /// (the sweep ends at most [`EXPIRE_LIMIT`]), so no rule serves it.
    fn expire_if_due(&mut self, secret: &str, now: Now, effects: &mut Effects) {
        if let Some(h) = self.holders.get(secret)
            && h.expires_ms <= now.ms
        {
            let held_ms = h.expires_ms.saturating_sub(h.acquired_ms);
            self.end_hold(secret, HoldEnd::Expired, held_ms, effects);
        }
    }

    /// Whether a request in `mode` may join the current holders.
    fn admits(&self, mode: LockMode) -> bool {
        self.holders
            .values()
            .all(|h| mode.is_compatible_with(h.mode))
    }

    fn grant(
        &mut self,
        shared: &mut Shared<'_>,
        now: Now,
        mode: LockMode,
        ttl_ms: u64,
        max_renewals: u32,
        client_id: String,
    ) -> Holder {
        *shared.floor = (*shared.floor + 1).max(now.us);
        Holder {
            mode,
            client_id,
            token: *shared.floor,
            acquired_ms: now.ms,
            expires_ms: now.ms + ttl_ms,
            ttl_ms,
            renewals: 0,
            max_renewals,
        }
    }

    /// Grants the head of the queue for as long as it is compatible with the
    /// holders, dropping dead entries on the way: at most [`PURGE_LIMIT`]
    /// drops and [`GRANT_LIMIT`] grants per operation. Grants go to the inbox
    /// of the waiter's daemon.
    fn promote(&mut self, shared: &mut Shared<'_>, now: Now, effects: &mut Effects) {
        while let Some((_, secret)) = self.queue.first_key_value() {
            let secret = secret.clone();
            let Some(w) = self.waiters.get(&secret).cloned() else {
                self.queue.pop_first();
                continue;
            };
            if !self.counted(&w) || w.deadline_ms <= now.ms {
                if self.purged >= PURGE_LIMIT {
                    self.promote_pending = true;
                    return;
                }
                self.purged += 1;
                self.remove_entry(&secret, effects);
                continue;
            }
            if !self.admits(w.mode) {
                break;
            }
            if self.promoted >= GRANT_LIMIT {
                self.promote_pending = true;
                return;
            }
            self.promoted += 1;
            self.remove_entry(&secret, effects);
            let holder = self.grant(shared, now, w.mode, w.ttl_ms, w.max_renewals, w.client_id);
            self.holders.insert(secret.clone(), holder);
            self.inbox.insert(secret, w.daemon_id);
            effects.events.push(Event::Granted(w.mode));
        }
    }

    /// Hands the caller its grants and reports when waiters should look again.
    fn finish(&mut self, now: Now, resource: &str, caller: &Caller<'_>, effects: &mut Effects) {
        let mine: Vec<String> = self
            .inbox
            .iter()
            .filter(|(_, d)| d.as_str() == caller.daemon_id)
            .map(|(s, _)| s.clone())
            .collect();
        for secret in mine {
            self.inbox.remove(&secret);
            self.expire_if_due(&secret, now, effects);
            if let Some(h) = self.holders.get(&secret) {
                effects
                    .my_grants
                    .push((secret.clone(), h.lease(&secret, resource)));
            }
        }
        if !self.queue.is_empty() {
            effects.next_expiry_in_ms = self
                .holders
                .values()
                .map(|h| h.expires_ms.saturating_sub(now.ms))
                .min();
        }
        if self.queue.is_empty() && self.inbox.is_empty() {
            self.daemons.clear();
            self.last_seq = 0;
        }
    }

    /// Whether nothing remains that must outlive this operation.
    fn is_idle(&self) -> bool {
        self.holders.is_empty() && self.queue.is_empty() && self.inbox.is_empty()
    }

    /// When this resource next changes by itself: a lease ends or a daemon's
    /// liveness lapses; `now` when dead entries are left to purge.
    fn next_due(&self, now: Now) -> Option<u64> {
        if self.promote_pending {
            return Some(now.ms);
        }
        let leases = self.holders.values().map(|h| h.expires_ms);
        let daemons = self.daemons.values().filter_map(|d| d.deadline_ms);
        leases.chain(daemons).min()
    }

    fn position_of(&self, seq: u64) -> u64 {
        self.queue.range(..seq).count() as u64
    }
}

impl Engine {
    /// An engine with no locks.
    pub fn new() -> Engine {
        Engine::default()
    }

    /// Runs `op` on a resource between the sweep and the grant-and-report steps
    /// that every operation shares, and forgets the resource once it is idle.
    fn with_resource<T>(
        &mut self,
        now: Now,
        resource: &str,
        caller: &Caller<'_>,
        op: impl FnOnce(&mut Resource, &mut Shared<'_>, &mut Effects) -> Result<T, LockError>,
    ) -> Outcome<T> {
        let mut effects = Effects::default();
        let state = self.resources.entry(resource.to_owned()).or_default();
        let mut shared = Shared {
            floor: &mut self.floor,
        };
        state.purged = 0;
        state.promoted = 0;
        state.promote_pending = false;
        state.sweep(now, &mut effects);
        let result = op(state, &mut shared, &mut effects);
        state.promote(&mut shared, now, &mut effects);
        state.finish(now, resource, caller, &mut effects);
        if state.is_idle() {
            self.resources.remove(resource);
        } else if let Some(due) = state.next_due(now)
            && state.due_at.is_none_or(|at| due != at)
        {
            state.due_at = Some(due);
            self.due.push(Reverse((due, resource.to_owned())));
        }
        (result, effects)
    }

    /// Grants at once, queues, or reports busy. `secret` becomes the lease's
    /// secret, whether granted now or later from the queue.
    pub fn acquire(
        &mut self,
        now: Now,
        spec: &AcquireSpec,
        secret: &str,
        caller: &Caller<'_>,
        max_queue: u64,
    ) -> Outcome<AcquireOutcome> {
        let cancelled = self
            .cancelled
            .remove(&(spec.resource.clone(), secret.to_owned()))
            .is_some_and(|until| until > now.ms);
        self.with_resource(now, &spec.resource, caller, |r, shared, effects| {
            if cancelled {
                return Ok(AcquireOutcome::Busy);
            }
            r.promote(shared, now, effects);
            if r.queue.is_empty() && r.admits(spec.mode) {
                let holder = r.grant(
                    shared,
                    now,
                    spec.mode,
                    spec.ttl_ms,
                    spec.max_renewals,
                    spec.client_id.clone(),
                );
                let lease = holder.lease(secret, &spec.resource);
                r.holders.insert(secret.to_owned(), holder);
                effects.events.push(Event::Granted(spec.mode));
                return Ok(AcquireOutcome::Granted(lease));
            }
            if spec.wait_ms == 0 {
                return Ok(AcquireOutcome::Busy);
            }
            if max_queue > 0 && r.queue.len() as u64 >= max_queue {
                return Err(LockError::LimitReached(format!(
                    "resource has {} waiters, the limit (--max-queue)",
                    r.queue.len()
                )));
            }
            r.last_seq += 1;
            let seq = r.last_seq;
            r.queue.insert(seq, secret.to_owned());
            r.waiters.insert(
                secret.to_owned(),
                QueuedWaiter {
                    seq,
                    mode: spec.mode,
                    ttl_ms: spec.ttl_ms,
                    max_renewals: spec.max_renewals,
                    enqueued_ms: now.ms,
                    deadline_ms: now.ms + spec.wait_ms + WAIT_GRACE_MS,
                    daemon_id: caller.daemon_id.to_owned(),
                    client_id: spec.client_id.clone(),
                },
            );
            r.set_daemon_alive(caller, now);
            if let Some(d) = r.daemons.get_mut(caller.daemon_id) {
                d.waiting += 1;
            }
            effects.events.push(Event::Enqueued);
            let queue_length = r.queue.len() as u64;
            Ok(AcquireOutcome::Queued {
                position: queue_length - 1,
                queue_length,
            })
        })
    }

    /// Keeps the caller's waiters alive, grants whoever is next, and reports
    /// where each of `secrets` (the caller's waiters on `resource`) stands.
    /// The sweep runs first: a daemon whose liveness lapsed is settled as
    /// dead before this sync revives it, so its older entries stay dead.
    pub fn sync(
        &mut self,
        now: Now,
        resource: &str,
        secrets: &[String],
        caller: &Caller<'_>,
    ) -> Outcome<SyncOutcome> {
        self.with_resource(now, resource, caller, |r, shared, effects| {
            r.set_daemon_alive(caller, now);
            r.promote(shared, now, effects);
            let mut states = Vec::with_capacity(secrets.len());
            for s in secrets {
                let state = match r.waiters.get(s) {
                    Some(w) if r.counted(w) => WaiterState::Queued(r.position_of(w.seq)),
                    Some(_) => {
                        r.remove_entry(s, effects);
                        WaiterState::Gone
                    }
                    None => {
                        r.expire_if_due(s, now, effects);
                        if r.holders.contains_key(s) {
                            WaiterState::Granted
                        } else {
                            WaiterState::Gone
                        }
                    }
                };
                states.push(state);
            }
            Ok(SyncOutcome {
                states,
                queue_length: r.queue.len() as u64,
            })
        })
    }

    /// Takes a waiter out of line; if it was granted but never handed over,
    /// releases that lease. With `outcome_unknown` (the acquire's reply never
    /// came), a request not found yet is cancelled ahead of its acquire for
    /// [`CANCEL_KEEP_MS`].
    pub fn leave(
        &mut self,
        now: Now,
        resource: &str,
        secret: &str,
        caller: &Caller<'_>,
        outcome_unknown: bool,
    ) -> Outcome<LeaveOutcome> {
        let outcome = self.with_resource(now, resource, caller, |r, _, effects| {
            if r.waiters.contains_key(secret) {
                r.remove_entry(secret, effects);
                return Ok(LeaveOutcome::Left);
            }
            r.expire_if_due(secret, now, effects);
            if let Some(h) = r.holders.get(secret) {
                let held_ms = now.ms.saturating_sub(h.acquired_ms);
                r.end_hold(secret, HoldEnd::Abandoned, held_ms, effects);
                return Ok(LeaveOutcome::GrantReleased);
            }
            Ok(LeaveOutcome::NotFound)
        });
        if outcome_unknown && matches!(outcome.0, Ok(LeaveOutcome::NotFound)) {
            self.cancelled.retain(|_, until| *until > now.ms);
            self.cancelled.insert(
                (resource.to_owned(), secret.to_owned()),
                now.ms + CANCEL_KEEP_MS,
            );
        }
        outcome
    }

    /// Ends a lease held by `client_id`.
    pub fn release(
        &mut self,
        now: Now,
        lock: &LockId,
        client_id: &str,
        caller: &Caller<'_>,
    ) -> Outcome<Lease> {
        self.with_resource(now, &lock.resource, caller, |r, _, effects| {
            r.expire_if_due(&lock.secret, now, effects);
            let h = r.holders.get(&lock.secret).ok_or(LockError::NotFound)?;
            if h.client_id != client_id {
                return Err(LockError::NotOwner);
            }
            let lease = h.lease(&lock.secret, &lock.resource);
            let held_ms = now.ms.saturating_sub(lease.acquired_at_ms);
            r.end_hold(&lock.secret, HoldEnd::Released, held_ms, effects);
            Ok(lease)
        })
    }

    /// Extends a lease held by `client_id` to now + `ttl_ms` (its own TTL when `None`).
    pub fn renew(
        &mut self,
        now: Now,
        lock: &LockId,
        client_id: &str,
        ttl_ms: Option<u64>,
        caller: &Caller<'_>,
    ) -> Outcome<Lease> {
        self.with_resource(now, &lock.resource, caller, |r, _, effects| {
            r.expire_if_due(&lock.secret, now, effects);
            let h = r.holders.get_mut(&lock.secret).ok_or(LockError::NotFound)?;
            if h.client_id != client_id {
                return Err(LockError::NotOwner);
            }
            if h.max_renewals > 0 && h.renewals >= h.max_renewals {
                return Err(LockError::RenewalLimit {
                    max: h.max_renewals,
                });
            }
            let ttl = ttl_ms.unwrap_or(h.ttl_ms);
            h.ttl_ms = ttl;
            h.expires_ms = now.ms + ttl;
            h.renewals += 1;
            Ok(h.lease(&lock.secret, &lock.resource))
        })
    }

    /// A live lease by its id.
    pub fn get(&self, now: Now, lock: &LockId) -> Result<Lease, LockError> {
        self.resources
            .get(&lock.resource)
            .and_then(|r| r.holders.get(&lock.secret))
            .filter(|h| h.expires_ms > now.ms)
            .map(|h| h.lease(&lock.secret, &lock.resource))
            .ok_or(LockError::NotFound)
    }

    /// The live holders (secrets hidden) and live waiters of a resource, in order.
    pub fn queue(&self, now: Now, resource: &str) -> QueueView {
        let Some(r) = self.resources.get(resource) else {
            return QueueView::default();
        };
        let holders = r
            .holders
            .iter()
            .filter(|(_, h)| h.expires_ms > now.ms)
            .map(|(s, h)| Lease {
                lock_id: String::new(),
                ..h.lease(s, resource)
            })
            .collect();
        let waiters = r
            .queue
            .values()
            .filter_map(|s| r.waiters.get(s))
            .filter(|w| w.deadline_ms > now.ms && r.counted(w) && r.daemon_alive(&w.daemon_id, now))
            .enumerate()
            .map(|(i, w)| Waiter {
                client_id: w.client_id.clone(),
                mode: w.mode,
                ttl_ms: w.ttl_ms,
                position: i as u64,
                enqueued_at_ms: w.enqueued_ms,
            })
            .collect();
        QueueView { holders, waiters }
    }

    /// Every live lease of one client.
    pub fn held_by(&self, now: Now, client_id: &str) -> Vec<Lease> {
        let mut leases: Vec<Lease> = self
            .resources
            .iter()
            .flat_map(|(name, r)| {
                r.holders
                    .iter()
                    .filter(|(_, h)| h.client_id == client_id && h.expires_ms > now.ms)
                    .map(move |(s, h)| h.lease(s, name))
            })
            .collect();
        leases
            .sort_by(|a, b| (a.acquired_at_ms, &a.resource).cmp(&(b.acquired_at_ms, &b.resource)));
        leases
    }

    /// Sweeps every resource whose due time has come, as the Redis store's
    /// reaper does: ends expired leases, settles dead daemons, grants the
    /// next in line. Returns what each sweep reported, grants to `caller`'s
    /// waiters included.
    pub fn reap(&mut self, now: Now, caller: &Caller<'_>) -> Vec<(String, Effects)> {
        let mut swept = Vec::new();
        while let Some(Reverse((due, _))) = self.due.peek() {
            if *due > now.ms {
                break;
            }
            let Some(Reverse((due, name))) = self.due.pop() else {
                break;
            };
            match self.resources.get_mut(&name) {
                Some(r) if r.due_at == Some(due) => r.due_at = None,
                _ => continue,
            }
            let (_, effects) = self.with_resource(now, &name, caller, |_, _, _| Ok(()));
            swept.push((name, effects));
        }
        swept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(resource: &str, ttl_ms: u64) -> AcquireSpec {
        AcquireSpec {
            resource: resource.to_owned(),
            mode: LockMode::Exclusive,
            ttl_ms,
            wait_ms: 0,
            client_id: "c".to_owned(),
            max_renewals: 0,
        }
    }

    #[test]
    fn the_reaper_ends_only_leases_whose_time_has_come() {
        let caller = Caller {
            daemon_id: "d",
            liveness_ms: 5_000,
        };
        let mut engine = Engine::new();
        let t0 = Now::from_micros(1_000_000_000);
        for (name, ttl) in [("short", 100), ("long", 60_000)] {
            let (granted, _) = engine.acquire(t0, &spec(name, ttl), name, &caller, 0);
            assert!(matches!(granted, Ok(AcquireOutcome::Granted(_))));
        }
        let early = engine.reap(Now::from_micros(t0.us + 50_000), &caller);
        assert!(early.is_empty(), "nothing is due yet");
        let later = engine.reap(Now::from_micros(t0.us + 200_000), &caller);
        let events: Vec<Event> = later.into_iter().flat_map(|(_, e)| e.events).collect();
        assert_eq!(
            events,
            vec![Event::Ended {
                how: HoldEnd::Expired,
                mode: LockMode::Exclusive,
                held_ms: 100
            }]
        );
        assert!(
            !engine.resources.contains_key("short"),
            "idle resources are forgotten"
        );
        assert!(engine.resources.contains_key("long"));
        let again = engine.reap(Now::from_micros(t0.us + 300_000), &caller);
        assert!(again.is_empty(), "each expiry counts once");
    }

    #[test]
    fn tokens_grow_when_the_clock_steps_back() {
        let caller = Caller {
            daemon_id: "d",
            liveness_ms: 5_000,
        };
        let mut engine = Engine::new();
        let t0 = Now::from_micros(10_000_000_000);
        let token = |outcome: Outcome<AcquireOutcome>| match outcome.0 {
            Ok(AcquireOutcome::Granted(lease)) => lease.fencing_token,
            other => panic!("not granted: {other:?}"),
        };
        let first = token(engine.acquire(t0, &spec("r", 10), "a", &caller, 0));
        // Long after the lease ended and the resource was forgotten, the
        // clock steps back an hour.
        let later = Now::from_micros(t0.us + 60_000_000);
        engine.reap(later, &caller);
        let back = Now::from_micros(t0.us - 3_600_000_000);
        let second = token(engine.acquire(back, &spec("r", 10), "b", &caller, 0));
        assert!(second > first, "{second} after {first}");
    }
}
