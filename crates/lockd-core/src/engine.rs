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

#[derive(Debug, Default)]
struct Resource {
    /// Live leases by secret.
    holders: BTreeMap<String, Holder>,
    /// Queue order: sequence number to secret.
    queue: BTreeMap<u64, String>,
    waiters: HashMap<String, QueuedWaiter>,
    /// Liveness deadline of each daemon with waiters or undelivered grants here.
    daemons: HashMap<String, u64>,
    /// Grants not yet taken over by their waiter's daemon: secret to daemon.
    inbox: BTreeMap<String, String>,
    /// The last fencing token handed out.
    last_token: u64,
    /// The sweep time last put in [`Engine::due`] for this resource.
    due_at: Option<u64>,
}

/// Lock state of every resource, in memory.
#[derive(Debug, Default)]
pub struct Engine {
    resources: HashMap<String, Resource>,
    /// When each resource next needs a sweep (its earliest lease end), so that
    /// the periodic sweep visits only those instead of every resource.
    due: BinaryHeap<Reverse<(u64, String)>>,
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

impl Resource {
    /// Ends expired leases and grants abandoned by dead daemons.
    fn sweep(&mut self, now: Now, effects: &mut Effects) {
        let expired: Vec<String> = self
            .holders
            .iter()
            .filter(|(_, h)| h.expires_ms <= now.ms)
            .map(|(s, _)| s.clone())
            .collect();
        for secret in expired {
            if let Some(h) = self.holders.remove(&secret) {
                self.inbox.remove(&secret);
                effects.events.push(Event::Ended {
                    how: HoldEnd::Expired,
                    mode: h.mode,
                    held_ms: h.expires_ms.saturating_sub(h.acquired_ms),
                });
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
            if let Some(h) = self.holders.remove(&secret) {
                effects.events.push(Event::Ended {
                    how: HoldEnd::Abandoned,
                    mode: h.mode,
                    held_ms: now.ms.saturating_sub(h.acquired_ms),
                });
            }
        }
    }

    fn daemon_alive(&self, daemon_id: &str, now: Now) -> bool {
        self.daemons.get(daemon_id).is_some_and(|&d| d > now.ms)
    }

    fn waiter_alive(&self, w: &QueuedWaiter, now: Now) -> bool {
        w.deadline_ms > now.ms && self.daemon_alive(&w.daemon_id, now)
    }

    fn next_token(&mut self, now: Now) -> u64 {
        self.last_token = (self.last_token + 1).max(now.us);
        self.last_token
    }

    /// Whether a request in `mode` may join the current holders.
    fn admits(&self, mode: LockMode) -> bool {
        self.holders
            .values()
            .all(|h| mode.is_compatible_with(h.mode))
    }

    fn grant(
        &mut self,
        now: Now,
        mode: LockMode,
        ttl_ms: u64,
        max_renewals: u32,
        client_id: String,
    ) -> Holder {
        Holder {
            mode,
            client_id,
            token: self.next_token(now),
            acquired_ms: now.ms,
            expires_ms: now.ms + ttl_ms,
            ttl_ms,
            renewals: 0,
            max_renewals,
        }
    }

    /// Grants the head of the queue for as long as it is compatible with the
    /// holders, dropping dead entries on the way. Grants go to the inbox of
    /// the waiter's daemon.
    fn promote(&mut self, now: Now, effects: &mut Effects) {
        while let Some((&seq, secret)) = self.queue.first_key_value() {
            let secret = secret.clone();
            let Some(w) = self.waiters.get(&secret).cloned() else {
                self.queue.remove(&seq);
                continue;
            };
            if !self.waiter_alive(&w, now) {
                self.queue.remove(&seq);
                self.waiters.remove(&secret);
                effects.events.push(Event::Dequeued);
                continue;
            }
            if !self.admits(w.mode) {
                break;
            }
            self.queue.remove(&seq);
            self.waiters.remove(&secret);
            let holder = self.grant(now, w.mode, w.ttl_ms, w.max_renewals, w.client_id);
            self.holders.insert(secret.clone(), holder);
            self.inbox.insert(secret, w.daemon_id);
            effects.events.push(Event::Dequeued);
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
        }
    }

    /// Whether nothing remains that must outlive this operation. The last
    /// token is kept until the clock has passed it, so that a token made from
    /// the clock later is still larger.
    fn is_idle(&self, now: Now) -> bool {
        self.holders.is_empty()
            && self.queue.is_empty()
            && self.inbox.is_empty()
            && now.us > self.last_token
    }

    /// When this resource next changes by itself: its earliest lease end,
    /// or, with no lease left, when the clock passes its last token.
    fn next_due(&self) -> u64 {
        self.holders
            .values()
            .map(|h| h.expires_ms)
            .min()
            .unwrap_or(self.last_token / 1000 + 1)
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
        op: impl FnOnce(&mut Resource, &mut Effects) -> Result<T, LockError>,
    ) -> Outcome<T> {
        let mut effects = Effects::default();
        let state = self.resources.entry(resource.to_owned()).or_default();
        state.sweep(now, &mut effects);
        let result = op(state, &mut effects);
        state.promote(now, &mut effects);
        state.finish(now, resource, caller, &mut effects);
        if state.is_idle(now) {
            self.resources.remove(resource);
        } else {
            let due = state.next_due();
            if state.due_at.is_none_or(|at| due < at) {
                state.due_at = Some(due);
                self.due.push(Reverse((due, resource.to_owned())));
            }
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
        self.with_resource(now, &spec.resource, caller, |r, effects| {
            r.promote(now, effects);
            if r.queue.is_empty() && r.admits(spec.mode) {
                let holder = r.grant(
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
            let seq = r.queue.last_key_value().map_or(1, |(&s, _)| s + 1);
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
            r.daemons
                .insert(caller.daemon_id.to_owned(), now.ms + caller.liveness_ms);
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
    pub fn sync(
        &mut self,
        now: Now,
        resource: &str,
        secrets: &[String],
        caller: &Caller<'_>,
    ) -> Outcome<SyncOutcome> {
        self.with_resource(now, resource, caller, |r, effects| {
            r.daemons
                .insert(caller.daemon_id.to_owned(), now.ms + caller.liveness_ms);
            r.promote(now, effects);
            let states = secrets
                .iter()
                .map(|s| match r.waiters.get(s) {
                    Some(w) => WaiterState::Queued(r.position_of(w.seq)),
                    None if r.holders.contains_key(s) => WaiterState::Granted,
                    None => WaiterState::Gone,
                })
                .collect();
            Ok(SyncOutcome {
                states,
                queue_length: r.queue.len() as u64,
            })
        })
    }

    /// Takes a waiter out of line; if it was granted but never handed over,
    /// releases that lease.
    pub fn leave(
        &mut self,
        now: Now,
        resource: &str,
        secret: &str,
        caller: &Caller<'_>,
    ) -> Outcome<LeaveOutcome> {
        self.with_resource(now, resource, caller, |r, effects| {
            if let Some(w) = r.waiters.remove(secret) {
                r.queue.remove(&w.seq);
                effects.events.push(Event::Dequeued);
                return Ok(LeaveOutcome::Left);
            }
            if let Some(h) = r.holders.remove(secret) {
                r.inbox.remove(secret);
                effects.events.push(Event::Ended {
                    how: HoldEnd::Abandoned,
                    mode: h.mode,
                    held_ms: now.ms.saturating_sub(h.acquired_ms),
                });
                return Ok(LeaveOutcome::GrantReleased);
            }
            Ok(LeaveOutcome::NotFound)
        })
    }

    /// Ends a lease held by `client_id`.
    pub fn release(
        &mut self,
        now: Now,
        lock: &LockId,
        client_id: &str,
        caller: &Caller<'_>,
    ) -> Outcome<Lease> {
        self.with_resource(now, &lock.resource, caller, |r, effects| {
            let h = r.holders.get(&lock.secret).ok_or(LockError::NotFound)?;
            if h.client_id != client_id {
                return Err(LockError::NotOwner);
            }
            let lease = h.lease(&lock.secret, &lock.resource);
            r.holders.remove(&lock.secret);
            r.inbox.remove(&lock.secret);
            effects.events.push(Event::Ended {
                how: HoldEnd::Released,
                mode: lease.mode,
                held_ms: now.ms.saturating_sub(lease.acquired_at_ms),
            });
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
        self.with_resource(now, &lock.resource, caller, |r, _| {
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
            .filter(|w| r.waiter_alive(w, now))
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

    /// Ends expired leases and forgets idle resources, as Redis key expiry
    /// does for the Redis store, visiting only resources whose time has come.
    /// Grants are left to the waiters' own syncs. Returns what ended, for
    /// statistics.
    pub fn sweep_idle(&mut self, now: Now) -> Effects {
        let mut effects = Effects::default();
        while let Some(Reverse((due, _))) = self.due.peek() {
            if *due > now.ms {
                break;
            }
            let Some(Reverse((due, name))) = self.due.pop() else {
                break;
            };
            let Some(r) = self.resources.get_mut(&name) else {
                continue;
            };
            if r.due_at == Some(due) {
                r.due_at = None;
            }
            r.sweep(now, &mut effects);
            if r.is_idle(now) {
                self.resources.remove(&name);
            } else if r.due_at.is_none() {
                let next = r.next_due().max(now.ms + 1);
                r.due_at = Some(next);
                self.due.push(Reverse((next, name)));
            }
        }
        effects
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
    fn the_periodic_sweep_ends_only_leases_whose_time_has_come() {
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
        let early = engine.sweep_idle(Now::from_micros(t0.us + 50_000));
        assert!(early.events.is_empty(), "nothing is due yet");
        let later = engine.sweep_idle(Now::from_micros(t0.us + 200_000));
        assert_eq!(
            later.events,
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
        let again = engine.sweep_idle(Now::from_micros(t0.us + 300_000));
        assert!(again.events.is_empty(), "each expiry counts once");
    }
}
