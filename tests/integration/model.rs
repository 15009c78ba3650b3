//! Model-based tests: the reference engine and the Redis store, fed the same
//! operations, must give the same answers, step by step.
//!
//! The engine (`lockd_core::Engine`) is the model: the property test runs
//! random operation sequences against an engine and a `RedisStore` on a real
//! redis-server and compares every observable answer. The scenario tests
//! below it cover what random sequences with long TTLs cannot: expiry,
//! dead daemons and waiter deadlines, on both sides.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lockd_core::engine::WAIT_GRACE_MS;
use lockd_core::{
    AcquireOutcome, AcquireSpec, Caller, Effects, Engine, Event, HoldEnd, Lease, LeaveOutcome,
    LockError, LockId, LockMode, Now, Outcome, QueueView, StatsDelta, SyncOutcome, WaiterState,
};
use lockd_redis::{RedisOptions, RedisStore};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use crate::harness::{RedisServer, unique};

const RESOURCES: [&str; 3] = ["r0", "r1", "r2"];
const CLIENTS: [&str; 4] = ["c0", "c1", "c2", "c3"];
const DAEMONS: [&str; 2] = ["d0", "d1"];
/// Daemon liveness, lease TTLs and waits of the property test: long enough
/// that nothing expires during a case, so both sides must answer alike.
const LONG_MS: u64 = 60_000;
/// Which answer came from where, for messages; indexes the per-side arrays.
const SIDES: [&str; 2] = ["engine", "redis"];

/// The wall clock as the engine takes it; Redis reads the same clock with TIME.
fn wall_clock() -> Now {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    Now::from_micros(since_epoch.as_micros() as u64)
}

fn caller(daemon: usize, liveness_ms: u64) -> Caller<'static> {
    Caller {
        daemon_id: DAEMONS[daemon],
        liveness_ms,
    }
}

fn spec(resource: &str, client: &str, mode: LockMode, ttl_ms: u64, wait_ms: u64) -> AcquireSpec {
    AcquireSpec {
        resource: resource.to_owned(),
        mode,
        ttl_ms,
        wait_ms,
        client_id: client.to_owned(),
        max_renewals: 0,
    }
}

/// What the engine and the Redis store answered to one operation, in [`SIDES`] order.
type Both<T> = [Outcome<T>; 2];

/// An engine and a Redis store, fed the same operations.
struct Twin {
    engine: Engine,
    redis: RedisStore,
}

impl Twin {
    /// A fresh engine, and a store on `server` under a key prefix of its own.
    async fn open(server: &RedisServer, name: &str) -> Twin {
        let redis = RedisStore::connect(&RedisOptions {
            key_prefix: unique(name),
            connections: 1,
            timeout: Duration::from_secs(2),
            list_held_index: true,
            max_ttl: Duration::from_secs(24 * 3600),
            ..RedisOptions::new(server.url(), "")
        })
        .await
        .expect("connect to test redis");
        Twin {
            engine: Engine::new(),
            redis,
        }
    }

    async fn acquire(
        &mut self,
        spec: &AcquireSpec,
        secret: &str,
        caller: &Caller<'_>,
        max_queue: u64,
    ) -> Both<AcquireOutcome> {
        let engine = self
            .engine
            .acquire(wall_clock(), spec, secret, caller, max_queue);
        let redis = self.redis.acquire(spec, secret, caller, max_queue).await;
        [engine, redis]
    }

    async fn release(&mut self, lock: &LockId, client: &str, caller: &Caller<'_>) -> Both<Lease> {
        let engine = self.engine.release(wall_clock(), lock, client, caller);
        let redis = self.redis.release(lock, client, caller).await;
        [engine, redis]
    }

    async fn renew(
        &mut self,
        lock: &LockId,
        client: &str,
        ttl_ms: Option<u64>,
        caller: &Caller<'_>,
    ) -> Both<Lease> {
        let engine = self
            .engine
            .renew(wall_clock(), lock, client, ttl_ms, caller);
        let redis = self.redis.renew(lock, client, ttl_ms, caller).await;
        [engine, redis]
    }

    async fn leave(
        &mut self,
        resource: &str,
        secret: &str,
        caller: &Caller<'_>,
        outcome_unknown: bool,
    ) -> Both<LeaveOutcome> {
        let engine = self
            .engine
            .leave(wall_clock(), resource, secret, caller, outcome_unknown);
        let redis = self
            .redis
            .leave(resource, secret, caller, outcome_unknown)
            .await;
        [engine, redis]
    }

    async fn sync(
        &mut self,
        resource: &str,
        secrets: &[String],
        caller: &Caller<'_>,
    ) -> Both<SyncOutcome> {
        let engine = self.engine.sync(wall_clock(), resource, secrets, caller);
        let redis = self.redis.sync(resource, secrets, caller).await;
        [engine, redis]
    }

    async fn queue(&self, resource: &str) -> [QueueView; 2] {
        let engine = self.engine.queue(wall_clock(), resource);
        let redis = self.redis.queue(resource).await.expect("redis queue");
        [engine, redis]
    }

    async fn held_by(&self, client: &str) -> [Vec<Lease>; 2] {
        let engine = self.engine.held_by(wall_clock(), client);
        let redis = self.redis.held_by(client).await.expect("redis held_by");
        [engine, redis]
    }
}

// Projections: the parts of answers that both sides must agree on. Times and
// fencing tokens come from each side's own clock, so they are left out.

/// A lease without its times and token.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct LeaseView {
    lock_id: String,
    resource: String,
    mode: LockMode,
    client_id: String,
    ttl_ms: u64,
    renewal_count: u32,
    max_renewals: u32,
}

fn lease_view(lease: &Lease) -> LeaseView {
    LeaseView {
        lock_id: lease.lock_id.clone(),
        resource: lease.resource.clone(),
        mode: lease.mode,
        client_id: lease.client_id.clone(),
        ttl_ms: lease.ttl_ms,
        renewal_count: lease.renewal_count,
        max_renewals: lease.max_renewals,
    }
}

#[derive(Debug, PartialEq, Eq)]
enum AcquireView {
    Granted(LeaseView),
    Busy,
    Queued { position: u64, queue_length: u64 },
}

fn acquire_view(outcome: &AcquireOutcome) -> AcquireView {
    match outcome {
        AcquireOutcome::Granted(lease) => AcquireView::Granted(lease_view(lease)),
        AcquireOutcome::Busy => AcquireView::Busy,
        AcquireOutcome::Queued {
            position,
            queue_length,
        } => AcquireView::Queued {
            position: *position,
            queue_length: *queue_length,
        },
    }
}

fn answer<T, V>(result: &Result<T, LockError>, view: impl Fn(&T) -> V) -> Result<V, LockError> {
    result.as_ref().map(view).map_err(Clone::clone)
}

/// A statistics event without its hold time; sorted lists of these are
/// compared, so that only the counts per kind (and mode) must agree.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum EventView {
    Granted(LockMode),
    Ended(&'static str, LockMode),
    Enqueued,
    Dequeued,
}

fn event_views(effects: &Effects) -> Vec<EventView> {
    let mut views: Vec<EventView> = effects
        .events
        .iter()
        .map(|event| match *event {
            Event::Granted(mode) => EventView::Granted(mode),
            Event::Ended { how, mode, .. } => EventView::Ended(
                match how {
                    HoldEnd::Released => "released",
                    HoldEnd::Expired => "expired",
                    HoldEnd::Abandoned => "abandoned",
                },
                mode,
            ),
            Event::Enqueued => EventView::Enqueued,
            Event::Dequeued => EventView::Dequeued,
        })
        .collect();
    views.sort();
    views
}

fn grant_views(effects: &Effects) -> Vec<(String, LeaseView)> {
    let mut views: Vec<(String, LeaseView)> = effects
        .my_grants
        .iter()
        .map(|(secret, lease)| (secret.clone(), lease_view(lease)))
        .collect();
    views.sort();
    views
}

/// Holders as a multiset (each side lists them in its own order), waiters in order.
#[derive(Debug, PartialEq, Eq)]
struct QueueShape {
    holders: Vec<LeaseView>,
    waiters: Vec<(String, LockMode, u64, u64)>,
}

fn queue_shape(view: &QueueView) -> QueueShape {
    let mut holders: Vec<LeaseView> = view.holders.iter().map(lease_view).collect();
    holders.sort();
    QueueShape {
        holders,
        waiters: view
            .waiters
            .iter()
            .map(|w| (w.client_id.clone(), w.mode, w.ttl_ms, w.position))
            .collect(),
    }
}

fn held_set(leases: &[Lease]) -> BTreeSet<(String, String, LockMode)> {
    leases
        .iter()
        .map(|l| (l.lock_id.clone(), l.resource.clone(), l.mode))
        .collect()
}

// The property test.

/// One generated operation. Indexes pick from [`RESOURCES`], [`CLIENTS`] and [`DAEMONS`].
#[derive(Debug, Clone)]
enum Op {
    Acquire {
        resource: usize,
        client: usize,
        daemon: usize,
        mode: LockMode,
        ttl_ms: u64,
        /// Queue (wait [`LONG_MS`]) rather than try once.
        wait: bool,
        max_renewals: u32,
        /// 0 is unlimited; small limits make LimitReached likely.
        max_queue: u64,
    },
    Release {
        target: Target,
        by: By,
        daemon: usize,
    },
    Renew {
        target: Target,
        by: By,
        ttl_ms: Option<u64>,
        daemon: usize,
    },
    Leave {
        target: Target,
        /// `None`: the daemon that queued the target.
        daemon: Option<usize>,
        /// As after an acquire whose reply never came.
        outcome_unknown: bool,
    },
    /// A sync by `daemon` on `resource` with every secret it ever queued there.
    Sync {
        resource: usize,
        daemon: usize,
    },
    Queue {
        resource: usize,
    },
    HeldBy {
        client: usize,
    },
    /// An idle gap longer than every short timer of the timed test (lease
    /// TTLs, daemon liveness), then a reaper pass on both sides.
    Sleep,
}

/// The lock an operation names.
#[derive(Debug, Clone)]
enum Target {
    /// A lease handed over and not known to have ended.
    Held(Index),
    /// A waiter not known to have been granted or to have left.
    Waiting(Index),
    /// The secret of an earlier acquire, whatever became of it; also the
    /// fallback of the others when nothing fits.
    Any(Index),
    /// A secret nobody used, on this resource.
    Unknown(usize),
}

/// Who releases or renews.
#[derive(Debug, Clone)]
enum By {
    /// The client that asked for the lock.
    Owner,
    /// This client, who may or may not be the owner.
    Client(usize),
}

fn mode_strategy() -> impl Strategy<Value = LockMode> {
    prop::sample::select(LockMode::ALL.to_vec())
}

/// Targets of release and renew: mostly leases.
fn lease_target() -> impl Strategy<Value = Target> {
    prop_oneof![
        6 => any::<Index>().prop_map(Target::Held),
        1 => any::<Index>().prop_map(Target::Waiting),
        2 => any::<Index>().prop_map(Target::Any),
        1 => (0..RESOURCES.len()).prop_map(Target::Unknown),
    ]
}

/// Targets of leave: mostly waiters.
fn waiter_target() -> impl Strategy<Value = Target> {
    prop_oneof![
        6 => any::<Index>().prop_map(Target::Waiting),
        1 => any::<Index>().prop_map(Target::Held),
        2 => any::<Index>().prop_map(Target::Any),
        1 => (0..RESOURCES.len()).prop_map(Target::Unknown),
    ]
}

/// Mostly r0, so that requests meet there; r2 mostly stays free.
fn resource_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![3 => Just(0), 2 => Just(1), 1 => Just(2)]
}

fn by_strategy() -> impl Strategy<Value = By> {
    prop_oneof![
        3 => Just(By::Owner),
        1 => (0..CLIENTS.len()).prop_map(By::Client),
    ]
}

/// The timed test's short lease TTL and daemon liveness, and the idle gap
/// that outlasts both: a step sees a short lease and a daemon's liveness
/// either well before or well after it ends, never near the boundary, so
/// both sides must agree although each reads its own clock.
const SHORT_TTL_MS: u64 = 300;
const SHORT_LIVENESS_MS: u64 = 300;
const IDLE_GAP: Duration = Duration::from_millis(700);

/// TTLs of acquires and renewals: long only, or (timed) short ones too.
fn ttl_strategy(timed: bool) -> BoxedStrategy<u64> {
    if timed {
        prop_oneof![Just(SHORT_TTL_MS), LONG_MS..=2 * LONG_MS].boxed()
    } else {
        (LONG_MS..=2 * LONG_MS).boxed()
    }
}

fn op_strategy(timed: bool) -> impl Strategy<Value = Op> {
    let acquire = (
        resource_strategy(),
        0..CLIENTS.len(),
        0..DAEMONS.len(),
        mode_strategy(),
        ttl_strategy(timed),
        prop::bool::weighted(0.6),
        0..=2u32,
        prop_oneof![3 => Just(0u64), 1 => 1..=3u64],
    )
        .prop_map(
            |(resource, client, daemon, mode, ttl_ms, wait, max_renewals, max_queue)| Op::Acquire {
                resource,
                client,
                daemon,
                mode,
                ttl_ms,
                wait,
                max_renewals,
                max_queue,
            },
        );
    let release = (lease_target(), by_strategy(), 0..DAEMONS.len())
        .prop_map(|(target, by, daemon)| Op::Release { target, by, daemon });
    let renew = (
        lease_target(),
        by_strategy(),
        prop_oneof![Just(None), ttl_strategy(timed).prop_map(Some)],
        0..DAEMONS.len(),
    )
        .prop_map(|(target, by, ttl_ms, daemon)| Op::Renew {
            target,
            by,
            ttl_ms,
            daemon,
        });
    let leave = (
        waiter_target(),
        prop_oneof![3 => Just(None), 1 => (0..DAEMONS.len()).prop_map(Some)],
        prop::bool::weighted(0.2),
    )
        .prop_map(|(target, daemon, outcome_unknown)| Op::Leave {
            target,
            daemon,
            outcome_unknown,
        });
    let sync = (resource_strategy(), 0..DAEMONS.len())
        .prop_map(|(resource, daemon)| Op::Sync { resource, daemon });
    prop_oneof![
        6 => acquire,
        3 => release,
        2 => renew,
        1 => leave,
        3 => sync,
        1 => (0..RESOURCES.len()).prop_map(|resource| Op::Queue { resource }),
        1 => (0..CLIENTS.len()).prop_map(|client| Op::HeldBy { client }),
        u32::from(timed) => Just(Op::Sleep),
    ]
}

/// The secret of one acquire and what the test knows about it.
struct Known {
    secret: String,
    resource: usize,
    client: usize,
    daemon: usize,
    mode: LockMode,
    /// The step at which it joined a queue; any grant of it comes later.
    queued_at: Option<usize>,
    /// Granted or queued, and not known to have ended or left: a hint for
    /// picking targets (with [`Side::delivered`]), nothing is checked against it.
    live: bool,
}

/// A fencing token as one side showed it.
struct Seen {
    resource: String,
    token: u64,
    /// The step at which this lease was first seen; it was granted no later.
    step: usize,
}

/// What one side has shown so far.
#[derive(Default)]
struct Side {
    /// Secrets handed to their daemon: granted at once, or through `my_grants`.
    delivered: HashSet<String>,
    /// The fencing token of every lease seen, by secret.
    tokens: HashMap<String, Seen>,
}

/// One generated case: both sides and what the test learned on the way.
struct Case {
    twin: Twin,
    known: Vec<Known>,
    sides: [Side; 2],
    step: usize,
    /// Every event the engine reported, as counters: what the Redis
    /// scripts must have counted into their buckets.
    engine_totals: StatsDelta,
    /// The liveness every daemon's calls carry.
    liveness_ms: u64,
}

impl Case {
    fn known(&self, secret: &str) -> Option<&Known> {
        self.known.iter().find(|k| k.secret == secret)
    }

    /// The lock a target names, and the index of its acquire if there was one.
    fn resolve(&self, target: &Target) -> (LockId, Option<usize>) {
        let fits = |k: &Known| {
            let handed_over = self.sides[0].delivered.contains(&k.secret);
            match target {
                Target::Held(_) => k.live && handed_over,
                Target::Waiting(_) => k.live && !handed_over && k.queued_at.is_some(),
                Target::Any(_) | Target::Unknown(_) => true,
            }
        };
        let fitting: Vec<usize> = (0..self.known.len())
            .filter(|&i| fits(&self.known[i]))
            .collect();
        let pick = match target {
            Target::Unknown(_) => None,
            Target::Held(index) | Target::Waiting(index) | Target::Any(index) => {
                if !fitting.is_empty() {
                    Some(fitting[index.index(fitting.len())])
                } else if !self.known.is_empty() {
                    Some(index.index(self.known.len()))
                } else {
                    None
                }
            }
        };
        match (pick, target) {
            (Some(i), _) => {
                let k = &self.known[i];
                (LockId::new(&k.secret, RESOURCES[k.resource]), Some(i))
            }
            (None, Target::Unknown(resource)) => (LockId::generate(RESOURCES[*resource]), None),
            (None, _) => (LockId::generate(RESOURCES[0]), None),
        }
    }

    fn client(&self, by: &By, known: Option<usize>) -> &'static str {
        match by {
            By::Owner => CLIENTS[known.map_or(0, |i| self.known[i].client)],
            By::Client(i) => CLIENTS[*i],
        }
    }

    async fn run(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let ctx = format!("step {}: {op:?}", self.step);
        match op {
            Op::Acquire {
                resource,
                client,
                daemon,
                mode,
                ttl_ms,
                wait,
                max_renewals,
                max_queue,
            } => {
                let secret = LockId::generate(RESOURCES[*resource]).secret;
                let spec = AcquireSpec {
                    max_renewals: *max_renewals,
                    ..spec(
                        RESOURCES[*resource],
                        CLIENTS[*client],
                        *mode,
                        *ttl_ms,
                        if *wait { LONG_MS } else { 0 },
                    )
                };
                let both = self
                    .twin
                    .acquire(
                        &spec,
                        &secret,
                        &caller(*daemon, self.liveness_ms),
                        *max_queue,
                    )
                    .await;
                let answers = both.each_ref().map(|(r, _)| answer(r, acquire_view));
                prop_assert_eq!(&answers[0], &answers[1], "answers of {}", ctx);
                let queued = matches!(answers[0], Ok(AcquireView::Queued { .. }));
                let granted = matches!(answers[0], Ok(AcquireView::Granted(_)));
                self.known.push(Known {
                    secret: secret.clone(),
                    resource: *resource,
                    client: *client,
                    daemon: *daemon,
                    mode: *mode,
                    queued_at: queued.then_some(self.step),
                    live: queued || granted,
                });
                for (side, (result, _)) in both.iter().enumerate() {
                    if let Ok(AcquireOutcome::Granted(lease)) = result {
                        self.sides[side].delivered.insert(secret.clone());
                        self.observe(side, lease, &ctx)?;
                    }
                }
                self.check_effects(&ctx, *daemon, &both)?;
            }
            Op::Release { target, by, daemon } => {
                let (lock, known) = self.resolve(target);
                let client = self.client(by, known);
                let both = self
                    .twin
                    .release(&lock, client, &caller(*daemon, self.liveness_ms))
                    .await;
                self.check_lease_answers(&ctx, &both)?;
                self.check_effects(&ctx, *daemon, &both)?;
                if let (Some(i), Ok(_) | Err(LockError::NotFound)) = (known, &both[0].0) {
                    self.known[i].live = false;
                }
            }
            Op::Renew {
                target,
                by,
                ttl_ms,
                daemon,
            } => {
                let (lock, known) = self.resolve(target);
                let client = self.client(by, known);
                let both = self
                    .twin
                    .renew(&lock, client, *ttl_ms, &caller(*daemon, self.liveness_ms))
                    .await;
                self.check_lease_answers(&ctx, &both)?;
                self.check_effects(&ctx, *daemon, &both)?;
                if let (Some(i), Err(LockError::NotFound)) = (known, &both[0].0) {
                    self.known[i].live = false;
                }
            }
            Op::Leave {
                target,
                daemon,
                outcome_unknown,
            } => {
                let (lock, known) = self.resolve(target);
                let daemon = daemon.or(known.map(|i| self.known[i].daemon)).unwrap_or(0);
                let both = self
                    .twin
                    .leave(
                        &lock.resource,
                        &lock.secret,
                        &caller(daemon, self.liveness_ms),
                        *outcome_unknown,
                    )
                    .await;
                let answers = both.each_ref().map(|(r, _)| answer(r, |o| *o));
                prop_assert_eq!(&answers[0], &answers[1], "answers of {}", ctx);
                self.check_effects(&ctx, daemon, &both)?;
                if let Some(i) = known {
                    self.known[i].live = false;
                }
            }
            Op::Sync { resource, daemon } => {
                let secrets: Vec<String> = self
                    .known
                    .iter()
                    .filter(|k| {
                        k.resource == *resource && k.daemon == *daemon && k.queued_at.is_some()
                    })
                    .map(|k| k.secret.clone())
                    .collect();
                let both = self
                    .twin
                    .sync(
                        RESOURCES[*resource],
                        &secrets,
                        &caller(*daemon, self.liveness_ms),
                    )
                    .await;
                let answers = both.each_ref().map(|(r, _)| answer(r, Clone::clone));
                prop_assert_eq!(&answers[0], &answers[1], "answers of {}", ctx);
                self.check_effects(&ctx, *daemon, &both)?;
                // "Granted" promises the lease was handed to this daemon by
                // this call or an earlier one.
                for (side, (result, _)) in both.iter().enumerate() {
                    let Ok(outcome) = result else { continue };
                    for (secret, state) in secrets.iter().zip(&outcome.states) {
                        if *state == WaiterState::Granted {
                            prop_assert!(
                                self.sides[side].delivered.contains(secret.as_str()),
                                "{}: {} reported Granted but never handed over: {}",
                                SIDES[side],
                                secret,
                                ctx
                            );
                        }
                    }
                }
                if let Ok(outcome) = &both[0].0 {
                    for (secret, state) in secrets.iter().zip(&outcome.states) {
                        if *state == WaiterState::Gone {
                            for k in self.known.iter_mut().filter(|k| k.secret == *secret) {
                                k.live = false;
                            }
                        }
                    }
                }
            }
            Op::Queue { resource } => self.check_queue(&ctx, RESOURCES[*resource]).await?,
            Op::HeldBy { client } => self.check_held_by(&ctx, CLIENTS[*client]).await?,
            Op::Sleep => {
                tokio::time::sleep(IDLE_GAP).await;
                // Both reapers sweep what came due meanwhile; what they
                // changed must agree, resource by resource.
                let reaper = caller(0, self.liveness_ms);
                let engine = self.twin.engine.reap(wall_clock(), &reaper);
                let redis = self.twin.redis.reap(&reaper).await.expect("redis reap");
                let by_resource = |swept: &[(String, Effects)]| {
                    let mut views = BTreeMap::new();
                    for (resource, effects) in swept {
                        if !effects.events.is_empty() || !effects.my_grants.is_empty() {
                            views.insert(
                                resource.clone(),
                                (event_views(effects), grant_views(effects)),
                            );
                        }
                    }
                    views
                };
                prop_assert_eq!(
                    by_resource(&engine),
                    by_resource(&redis),
                    "reaped at {}",
                    ctx
                );
                let merged = |swept: Vec<(String, Effects)>| {
                    let mut all = Effects::default();
                    for (_, effects) in swept {
                        all.events.extend(effects.events);
                        all.my_grants.extend(effects.my_grants);
                    }
                    (Ok(()), all)
                };
                let both: Both<()> = [merged(engine), merged(redis)];
                self.check_effects(&ctx, 0, &both)?;
            }
        }
        self.step += 1;
        Ok(())
    }

    /// Release and renew answer a lease or an error.
    fn check_lease_answers(&mut self, ctx: &str, both: &Both<Lease>) -> Result<(), TestCaseError> {
        let answers = both.each_ref().map(|(r, _)| answer(r, lease_view));
        prop_assert_eq!(&answers[0], &answers[1], "answers of {}", ctx);
        for (side, (result, _)) in both.iter().enumerate() {
            if let Ok(lease) = result {
                self.observe(side, lease, ctx)?;
            }
        }
        Ok(())
    }

    /// Statistics events and grants handed to the caller must agree, and every
    /// grant must reach the daemon whose waiter it was, once.
    fn check_effects<T>(
        &mut self,
        ctx: &str,
        daemon: usize,
        both: &Both<T>,
    ) -> Result<(), TestCaseError> {
        let [(_, engine), (_, redis)] = both;
        self.engine_totals.record("", &engine.events);
        prop_assert_eq!(event_views(engine), event_views(redis), "events of {}", ctx);
        prop_assert_eq!(grant_views(engine), grant_views(redis), "grants of {}", ctx);
        prop_assert_eq!(
            engine.next_expiry_in_ms.is_some(),
            redis.next_expiry_in_ms.is_some(),
            "whether waiters wait on an expiry, after {}",
            ctx
        );
        for (side, (_, effects)) in both.iter().enumerate() {
            for (secret, lease) in &effects.my_grants {
                let waiter = self
                    .known(secret)
                    .filter(|k| k.queued_at.is_some())
                    .map(|k| (k.daemon, CLIENTS[k.client], k.mode));
                prop_assert_eq!(
                    waiter,
                    Some((daemon, lease.client_id.as_str(), lease.mode)),
                    "{}: grant of {} went to {}, not to its waiter's daemon: {}",
                    SIDES[side],
                    secret,
                    DAEMONS[daemon],
                    ctx
                );
                prop_assert!(
                    self.sides[side].delivered.insert(secret.clone()),
                    "{}: {} handed over twice: {}",
                    SIDES[side],
                    secret,
                    ctx
                );
                self.observe(side, lease, ctx)?;
            }
        }
        Ok(())
    }

    /// Records a lease's fencing token on one side. A lease keeps its token;
    /// a grant made after another was seen has a larger token than it.
    fn observe(&mut self, side: usize, lease: &Lease, ctx: &str) -> Result<(), TestCaseError> {
        let lock = LockId::parse(&lease.lock_id).ok();
        let known = lock.as_ref().and_then(|l| self.known(&l.secret));
        prop_assert!(
            known.is_some(),
            "{}: a lease nobody asked for: {:?} at {}",
            SIDES[side],
            lease,
            ctx
        );
        let secret = lock.expect("parsed above").secret;
        // Granted at once (now) or from the queue (after it was queued).
        let granted_from = known.and_then(|k| k.queued_at).unwrap_or(self.step);
        let tokens = &mut self.sides[side].tokens;
        if let Some(seen) = tokens.get(&secret) {
            prop_assert_eq!(
                seen.token,
                lease.fencing_token,
                "{}: fencing token of {} changed at {}",
                SIDES[side],
                secret,
                ctx
            );
            return Ok(());
        }
        for (other, seen) in tokens.iter().filter(|(_, s)| s.resource == lease.resource) {
            prop_assert_ne!(
                seen.token,
                lease.fencing_token,
                "{}: {} and {} share a fencing token, at {}",
                SIDES[side],
                other,
                secret,
                ctx
            );
            if seen.step < granted_from {
                prop_assert!(
                    lease.fencing_token > seen.token,
                    "{}: {} granted after {} was seen, with a smaller fencing token ({} < {}), at {}",
                    SIDES[side],
                    secret,
                    other,
                    lease.fencing_token,
                    seen.token,
                    ctx
                );
            }
        }
        tokens.insert(
            secret,
            Seen {
                resource: lease.resource.clone(),
                token: lease.fencing_token,
                step: self.step,
            },
        );
        Ok(())
    }

    async fn check_queue(&mut self, ctx: &str, resource: &str) -> Result<(), TestCaseError> {
        let views = self.twin.queue(resource).await;
        prop_assert_eq!(
            queue_shape(&views[0]),
            queue_shape(&views[1]),
            "queue of {} at {}",
            resource,
            ctx
        );
        Ok(())
    }

    async fn check_held_by(&mut self, ctx: &str, client: &str) -> Result<(), TestCaseError> {
        let [engine, redis] = self.twin.held_by(client).await;
        for (side, leases) in [&engine, &redis].into_iter().enumerate() {
            for lease in leases {
                self.observe(side, lease, ctx)?;
            }
        }
        prop_assert_eq!(
            held_set(&engine),
            held_set(&redis),
            "held by {} at {}",
            client,
            ctx
        );
        Ok(())
    }

    /// After the last step: the whole state, and the order of fencing tokens.
    async fn check_end(&mut self) -> Result<(), TestCaseError> {
        let ctx = format!("the end, after {} steps", self.step);
        for resource in RESOURCES {
            self.check_queue(&ctx, resource).await?;
        }
        for client in CLIENTS {
            self.check_held_by(&ctx, client).await?;
        }
        // Token values differ between the sides, but grants happen in the
        // same order, so leases sorted by token must line up. Only leases
        // both sides showed count: the engine's `held_by` may show more (see
        // `check_held_by`).
        let [engine, redis] = &self.sides;
        prop_assert_eq!(
            token_order(engine, redis),
            token_order(redis, engine),
            "leases by fencing token, per resource"
        );
        // The scripts count in the same step as they change state: their
        // counters must equal the sum of the events, hold times aside.
        let counted = self.twin.redis.read_stats().await.expect("redis stats");
        let expected = &self.engine_totals;
        prop_assert_eq!(counted.grants_by_mode, expected.grants_by_mode, "grants");
        prop_assert_eq!(counted.active_by_mode, expected.active_by_mode, "active");
        prop_assert_eq!(
            (counted.released, counted.expired, counted.abandoned),
            (expected.released, expected.expired, expected.abandoned),
            "ended holds"
        );
        prop_assert_eq!(counted.holds_ended, expected.holds_ended, "ended holds");
        prop_assert_eq!(counted.waiting, expected.waiting, "waiting");
        Ok(())
    }
}

/// The secrets of the leases one side showed (and the other too), per
/// resource, by fencing token.
fn token_order<'a>(side: &'a Side, other: &Side) -> BTreeMap<&'a str, Vec<&'a str>> {
    let mut by_resource: BTreeMap<&str, Vec<(u64, &str)>> = BTreeMap::new();
    let both_saw = side
        .tokens
        .iter()
        .filter(|(secret, _)| other.tokens.contains_key(*secret));
    for (secret, seen) in both_saw {
        by_resource
            .entry(seen.resource.as_str())
            .or_default()
            .push((seen.token, secret.as_str()));
    }
    by_resource
        .into_iter()
        .map(|(resource, mut tokens)| {
            tokens.sort();
            (resource, tokens.into_iter().map(|(_, s)| s).collect())
        })
        .collect()
}

async fn run_case(
    server: &RedisServer,
    ops: Vec<Op>,
    liveness_ms: u64,
) -> Result<(), TestCaseError> {
    let mut case = Case {
        twin: Twin::open(server, "model").await,
        known: Vec::new(),
        sides: Default::default(),
        step: 0,
        engine_totals: StatsDelta::default(),
        liveness_ms,
    };
    for op in &ops {
        case.run(op).await?;
    }
    case.check_end().await
}

#[test]
fn engine_and_redis_agree_on_random_operations() {
    let server = RedisServer::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut runner = TestRunner::new(Config {
        cases: 128,
        // No regressions file: a failure prints the shrunk sequence instead.
        failure_persistence: None,
        // Enough to shrink a failure to a few steps (the default is 4 per case).
        max_shrink_iters: 4096,
        ..Config::default()
    });
    let ops = prop::collection::vec(op_strategy(false), 1..=40);
    if let Err(err) = runner.run(&ops, |ops| {
        runtime.block_on(run_case(&server, ops, LONG_MS))
    }) {
        panic!("the engine and the Redis store disagree: {err}");
    }
}

/// The same with time in it: short leases and daemon liveness, and idle
/// gaps longer than both after which each side's reaper runs, so that
/// expiry, dead daemons, abandoned grants and the waiting counts are checked
/// against the engine too.
#[test]
fn engine_and_redis_agree_across_idle_gaps() {
    let server = RedisServer::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut runner = TestRunner::new(Config {
        cases: 24,
        failure_persistence: None,
        max_shrink_iters: 512,
        ..Config::default()
    });
    let ops = prop::collection::vec(op_strategy(true), 1..=16);
    if let Err(err) = runner.run(&ops, |ops| {
        runtime.block_on(run_case(&server, ops, SHORT_LIVENESS_MS))
    }) {
        panic!("the engine and the Redis store disagree across idle gaps: {err}");
    }
}

// Scenarios with short TTLs and liveness, which random sequences avoid.

const SHORT_MS: u64 = 100;
/// Long enough past [`SHORT_MS`] that both sides see the end.
const PAST_SHORT: Duration = Duration::from_millis(2 * SHORT_MS);

/// Both answers, which must be equal after `view`; returns the agreed one.
fn agree<T, V: PartialEq + std::fmt::Debug>(
    what: &str,
    both: &Both<T>,
    view: impl Fn(&T) -> V,
) -> Result<V, LockError> {
    let [engine, redis] = both.each_ref().map(|(r, _)| answer(r, &view));
    assert_eq!(engine, redis, "answers of {what}");
    engine
}

/// Both sides' statistics events, with hold times, which must be equal; returns them.
fn agree_events<T>(what: &str, both: &Both<T>) -> Vec<Event> {
    let [(_, engine), (_, redis)] = both;
    assert_eq!(engine.events, redis.events, "events of {what}");
    assert_eq!(
        grant_views(engine),
        grant_views(redis),
        "grants handed over by {what}"
    );
    engine.events.clone()
}

/// Both sides' statistics events without hold times, which must be equal; returns them.
fn agree_counts<T>(what: &str, both: &Both<T>) -> Vec<EventView> {
    let [(_, engine), (_, redis)] = both;
    assert_eq!(event_views(engine), event_views(redis), "events of {what}");
    event_views(engine)
}

async fn agree_queue(twin: &Twin, resource: &str) -> QueueShape {
    let [engine, redis] = twin.queue(resource).await;
    assert_eq!(
        queue_shape(&engine),
        queue_shape(&redis),
        "queue of {resource}"
    );
    queue_shape(&engine)
}

/// Asserts that both sides granted at once.
fn granted(both: Both<AcquireOutcome>) {
    let answer = agree("acquire", &both, acquire_view);
    assert!(matches!(answer, Ok(AcquireView::Granted(_))), "{answer:?}");
}

/// Asserts that both sides queued.
fn queued(both: Both<AcquireOutcome>) {
    let answer = agree("acquire", &both, acquire_view);
    assert!(
        matches!(answer, Ok(AcquireView::Queued { .. })),
        "{answer:?}"
    );
}

fn ended(how: HoldEnd, mode: LockMode, held_ms: u64) -> Event {
    Event::Ended { how, mode, held_ms }
}

#[tokio::test]
async fn expired_lease_frees_the_resource_on_both() {
    let server = RedisServer::start();
    let mut twin = Twin::open(&server, "model-expiry").await;
    let d0 = caller(0, LONG_MS);
    let first = LockId::generate("r");
    let both = twin
        .acquire(
            &spec("r", "c0", LockMode::Exclusive, SHORT_MS, 0),
            &first.secret,
            &d0,
            0,
        )
        .await;
    assert!(matches!(
        agree("first acquire", &both, acquire_view),
        Ok(AcquireView::Granted(_))
    ));
    tokio::time::sleep(PAST_SHORT).await;

    assert_eq!(agree_queue(&twin, "r").await.holders, vec![]);
    let [engine, redis] = twin.held_by("c0").await;
    assert!(
        engine.is_empty() && redis.is_empty(),
        "{engine:?} {redis:?}"
    );

    let second = LockId::generate("r");
    let both = twin
        .acquire(
            &spec("r", "c1", LockMode::Exclusive, LONG_MS, 0),
            &second.secret,
            &d0,
            0,
        )
        .await;
    assert!(matches!(
        agree("acquire after expiry", &both, acquire_view),
        Ok(AcquireView::Granted(_))
    ));
    assert_eq!(
        agree_events("acquire after expiry", &both),
        vec![
            ended(HoldEnd::Expired, LockMode::Exclusive, SHORT_MS),
            Event::Granted(LockMode::Exclusive),
        ]
    );

    let both = twin.renew(&first, "c0", None, &d0).await;
    assert_eq!(
        agree("renew of the expired", &both, lease_view),
        Err(LockError::NotFound)
    );
    let both = twin.release(&first, "c0", &d0).await;
    assert_eq!(
        agree("release of the expired", &both, lease_view),
        Err(LockError::NotFound)
    );
    let both = twin.release(&second, "c1", &d0).await;
    assert!(agree("release of the second", &both, lease_view).is_ok());
}

#[tokio::test]
async fn expiry_grants_the_next_waiter_on_both() {
    let server = RedisServer::start();
    let mut twin = Twin::open(&server, "model-expiry-queue").await;
    let (d0, d1) = (caller(0, LONG_MS), caller(1, LONG_MS));
    let holder = LockId::generate("r");
    let waiter = LockId::generate("r");
    granted(
        twin.acquire(
            &spec("r", "c0", LockMode::Write, SHORT_MS, 0),
            &holder.secret,
            &d0,
            0,
        )
        .await,
    );
    let both = twin
        .acquire(
            &spec("r", "c1", LockMode::Read, LONG_MS, LONG_MS),
            &waiter.secret,
            &d1,
            0,
        )
        .await;
    assert_eq!(
        agree("queued acquire", &both, acquire_view),
        Ok(AcquireView::Queued {
            position: 0,
            queue_length: 1
        })
    );
    tokio::time::sleep(PAST_SHORT).await;

    // Anyone's call on the resource ends the lease and grants the waiter, but
    // only the waiter's daemon takes the grant over.
    let both = twin.sync("r", &[], &d0).await;
    assert_eq!(
        agree_events("d0's sync", &both),
        vec![
            ended(HoldEnd::Expired, LockMode::Write, SHORT_MS),
            Event::Dequeued,
            Event::Granted(LockMode::Read),
        ]
    );
    assert!(both[0].1.my_grants.is_empty());
    let both = twin
        .sync("r", std::slice::from_ref(&waiter.secret), &d1)
        .await;
    assert_eq!(
        agree("d1's sync", &both, |o| o.states.clone()),
        Ok(vec![WaiterState::Granted])
    );
    agree_events("d1's sync", &both);
    assert_eq!(
        grant_views(&both[0].1)
            .into_iter()
            .map(|(s, l)| (s, l.client_id))
            .collect::<Vec<_>>(),
        vec![(waiter.secret.clone(), "c1".to_owned())]
    );
}

#[tokio::test]
async fn dead_daemon_loses_its_waiters_and_grants_on_both() {
    let server = RedisServer::start();
    let mut twin = Twin::open(&server, "model-dead-daemon").await;
    let d0 = caller(0, LONG_MS);
    let short_lived = caller(1, SHORT_MS);
    let holder = LockId::generate("r");
    let waiter = LockId::generate("r");
    granted(
        twin.acquire(
            &spec("r", "c0", LockMode::Exclusive, LONG_MS, 0),
            &holder.secret,
            &d0,
            0,
        )
        .await,
    );
    queued(
        twin.acquire(
            &spec("r", "c1", LockMode::Exclusive, LONG_MS, LONG_MS),
            &waiter.secret,
            &short_lived,
            0,
        )
        .await,
    );
    // The release grants the waiter while its daemon lives; the grant waits
    // in that daemon's inbox, which it never empties.
    let both = twin.release(&holder, "c0", &d0).await;
    assert!(agree("release", &both, lease_view).is_ok());
    assert_eq!(
        agree_counts("the release", &both),
        vec![
            EventView::Granted(LockMode::Exclusive),
            EventView::Ended("released", LockMode::Exclusive),
            EventView::Dequeued,
        ]
    );
    tokio::time::sleep(PAST_SHORT).await;

    let third = LockId::generate("r");
    let both = twin
        .acquire(
            &spec("r", "c2", LockMode::Exclusive, LONG_MS, 0),
            &third.secret,
            &d0,
            0,
        )
        .await;
    assert!(matches!(
        agree("acquire after the daemon died", &both, acquire_view),
        Ok(AcquireView::Granted(_))
    ));
    assert_eq!(
        agree_counts("the acquire", &both),
        vec![
            EventView::Granted(LockMode::Exclusive),
            EventView::Ended("abandoned", LockMode::Exclusive),
        ]
    );

    // A waiter of a dead daemon is out of line: not shown, and dropped
    // without a grant by the next call.
    let late = LockId::generate("r");
    queued(
        twin.acquire(
            &spec("r", "c3", LockMode::Shared, LONG_MS, LONG_MS),
            &late.secret,
            &short_lived,
            0,
        )
        .await,
    );
    tokio::time::sleep(PAST_SHORT).await;
    assert_eq!(agree_queue(&twin, "r").await.waiters, vec![]);
    let both = twin.release(&third, "c2", &d0).await;
    assert!(agree("release of the third", &both, lease_view).is_ok());
    assert_eq!(
        agree_counts("the release", &both),
        vec![
            EventView::Ended("released", LockMode::Exclusive),
            EventView::Dequeued,
        ]
    );
    let both = twin
        .sync("r", std::slice::from_ref(&late.secret), &d0)
        .await;
    assert_eq!(
        agree("sync", &both, |o| o.clone()),
        Ok(SyncOutcome {
            states: vec![WaiterState::Gone],
            queue_length: 0
        })
    );
}

#[tokio::test]
async fn waiter_past_its_deadline_is_dropped_on_both() {
    let server = RedisServer::start();
    let mut twin = Twin::open(&server, "model-deadline").await;
    let d0 = caller(0, LONG_MS);
    let holder = LockId::generate("r");
    let waiter = LockId::generate("r");
    granted(
        twin.acquire(
            &spec("r", "c0", LockMode::Exclusive, LONG_MS, 0),
            &holder.secret,
            &d0,
            0,
        )
        .await,
    );
    // A queue entry lives WAIT_GRACE_MS past the waiter's own deadline.
    queued(
        twin.acquire(
            &spec("r", "c1", LockMode::Exclusive, LONG_MS, 1),
            &waiter.secret,
            &d0,
            0,
        )
        .await,
    );
    assert_eq!(agree_queue(&twin, "r").await.waiters.len(), 1);
    tokio::time::sleep(Duration::from_millis(WAIT_GRACE_MS + 1) + PAST_SHORT).await;

    assert_eq!(agree_queue(&twin, "r").await.waiters, vec![]);
    let both = twin
        .sync("r", std::slice::from_ref(&waiter.secret), &d0)
        .await;
    // The next call drops the entry at the head of the line.
    assert_eq!(
        agree("sync", &both, |o| o.clone()),
        Ok(SyncOutcome {
            states: vec![WaiterState::Gone],
            queue_length: 0
        })
    );
    assert_eq!(agree_events("sync", &both), vec![Event::Dequeued]);
    let both = twin.release(&holder, "c0", &d0).await;
    assert_eq!(
        agree_counts("the release", &both),
        vec![EventView::Ended("released", LockMode::Exclusive)]
    );
    assert!(both.iter().all(|(_, e)| e.my_grants.is_empty()));
}

/// Found by the property test: a grant made to a waiter of daemon d1 by
/// another daemon's call waits in d1's inbox until d1 next calls on the
/// resource. It is a live lease and `held_by` lists it on both sides: the Redis
/// store indexes every grant in the call that makes it.
#[tokio::test]
async fn held_by_lists_grants_not_yet_handed_over() {
    let server = RedisServer::start();
    let mut twin = Twin::open(&server, "model-held-inbox").await;
    let (d0, d1) = (caller(0, LONG_MS), caller(1, LONG_MS));
    let holder = LockId::generate("r");
    let waiter = LockId::generate("r");
    granted(
        twin.acquire(
            &spec("r", "c0", LockMode::Exclusive, LONG_MS, 0),
            &holder.secret,
            &d0,
            0,
        )
        .await,
    );
    queued(
        twin.acquire(
            &spec("r", "c1", LockMode::Exclusive, LONG_MS, LONG_MS),
            &waiter.secret,
            &d1,
            0,
        )
        .await,
    );
    let both = twin.release(&holder, "c0", &d0).await;
    assert!(agree("release", &both, lease_view).is_ok());
    let queue = agree_queue(&twin, "r").await;
    assert_eq!(queue.holders.len(), 1, "c1 holds r on both: {queue:?}");
    let [engine, redis] = twin.held_by("c1").await;
    assert_eq!(held_set(&engine), held_set(&redis), "held by c1");
}
