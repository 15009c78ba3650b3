//! The store's contracts from the correctness review, each end to end on a
//! real redis-server: injective keys, reclaimed grants, outages heard,
//! retried leaves, monotonic tokens, exact statistics, read-your-writes
//! ListHeld, bounded script work and honest error codes.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lockd::pb;
use lockd_core::{AcquireOutcome, AcquireSpec, Caller, LeaveOutcome, LockError, LockMode};
use lockd_redis::keys::Namespace;
use lockd_redis::{RedisOptions, RedisStore};
use tonic::Code;

use crate::harness::*;

/// Flags that make a dead daemon look dead within about a second.
const FAST_LIVENESS: [&str; 4] = ["--waiter-liveness", "1s", "--redis-timeout", "250ms"];

async fn stats(c: &mut Client) -> pb::GetStatsResponse {
    c.get_stats(pb::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner()
}

async fn queue(c: &mut Client, resource: &str) -> pb::GetQueueResponse {
    c.get_queue(pb::GetQueueRequest {
        resource: resource.into(),
    })
    .await
    .unwrap()
    .into_inner()
}

async fn held(c: &mut Client, client_id: &str) -> Vec<pb::Lease> {
    c.list_held(pb::ListHeldRequest {
        client_id: client_id.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .leases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_named_like_internal_keys_are_ordinary_locks() {
    let env = Env::new(Backend::Redis, 1).await;
    let mut c = env.client(0).await;
    // Before the bucketed layout, "stats" was the statistics hash's key.
    for name in ["stats", "{stats}", "stats}:top", "c:{x}", "%7B", ":", "{}"] {
        let lease = acquire(&mut c, req(name, "a")).await;
        release(&mut c, &lease).await;
    }
    let s = stats(&mut c).await;
    assert_eq!(s.total_locks, 7);
    assert_eq!(s.released_locks, 7);
    assert_eq!(s.active_locks, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_to_a_dead_daemons_waiter_is_reclaimed_while_nobody_touches_the_resource() {
    let env = Env::with_args(Backend::Redis, 1, &FAST_LIVENESS).await;
    let mut args = env.daemon_args();
    args.extend(FAST_LIVENESS.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut doomed = DaemonProcess::spawn(&args).await;
    let mut c = env.client(0).await;
    let holder = acquire(&mut c, req("r", "holder").ttl(300_000)).await;
    let mut d = doomed.client().await;
    let mut waiter = Waiting::start(&mut d, req("r", "waiter").wait(60_000).ttl(300_000)).await;
    waiter.queued().await;
    // The waiter's daemon dies just before the holder releases: the grant
    // goes to its inbox, and the hour-long lease is nobody's.
    doomed.kill();
    release(&mut c, &holder).await;
    // Nobody touches "r" again; only read-only views look at it.
    let reclaimed = eventually(Duration::from_secs(6), || {
        let mut c = c.clone();
        async move { queue(&mut c, "r").await.holders.is_empty() }
    })
    .await;
    assert!(reclaimed, "the abandoned grant still holds the resource");
    let s = stats(&mut c).await;
    assert_eq!(s.active_locks, 0, "{s:?}");
    assert_eq!(s.waiting, 0, "{s:?}");
    acquire(&mut c, req("r", "next").wait(0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_call_hears_of_an_outage_within_the_liveness() {
    let env = Env::with_args(Backend::Redis, 1, &FAST_LIVENESS).await;
    let mut c = env.client(0).await;
    let _holder = acquire(&mut c, req("r", "holder")).await;
    let mut waiter = Waiting::start(&mut c, req("r", "waiter").wait(3_600_000)).await;
    waiter.queued().await;
    let redis = env.redis.as_ref().unwrap();
    redis.pause();
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(10), waiter.next()).await;
    redis.resume();
    let err = ended
        .expect("the hour-long wait ends within seconds")
        .expect_err("no grant while redis is frozen");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "heard after {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_that_fails_is_retried_so_its_grant_never_blocks_the_resource() {
    let env = Env::with_args(
        Backend::Redis,
        1,
        &["--waiter-liveness", "3s", "--redis-timeout", "250ms"],
    )
    .await;
    let mut c = env.client(0).await;
    let holder = acquire(&mut c, req("r", "holder")).await;
    let mut waiter = Waiting::start(&mut c, req("r", "waiter").wait(600).ttl(300_000)).await;
    waiter.queued().await;
    // Redis is frozen when the wait ends: the leave fails.
    let redis = env.redis.as_ref().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.pause();
    let err = waiter.next().await.expect_err("the wait times out");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.resume();
    // The queue entry is still valid (wait + grace, daemon alive): without
    // the retried leave, this release would grant the hour-long lease to a
    // waiter that is gone.
    release(&mut c, &holder).await;
    let free = eventually(Duration::from_secs(3), || {
        let mut c = c.clone();
        async move { c.acquire(req("r", "next").wait(0)).await.is_ok() }
    })
    .await;
    assert!(free, "the gone waiter's grant blocks the resource");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_script_is_internal_and_names_the_script() {
    let env = Env::new(Backend::Redis, 1).await;
    let redis = env.redis.as_ref().unwrap();
    let keys = Namespace::new(&env.prefix, 0).resource("broken");
    let mut conn = redis.connection();
    // A key of the wrong type makes HGETALL fail inside the script.
    let _: () = redis::cmd("SET")
        .arg(&keys.holders)
        .arg("x")
        .query(&mut conn)
        .unwrap();
    let mut c = env.client(0).await;
    let err = c.acquire(req("broken", "a")).await.unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{err:?}");
    assert!(err.message().contains("acquire"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_held_is_read_your_writes_on_another_replica() {
    let env = Env::new(Backend::Redis, 2).await;
    let mut a = env.client(0).await;
    let mut b = env.client(1).await;
    for i in 0..300 {
        let lease = acquire(&mut a, req(&format!("r{}", i % 7), "ryw")).await;
        let listed = held(&mut b, "ryw").await;
        assert!(
            listed.iter().any(|l| l.lock_id == lease.lock_id),
            "round {i}: a granted lease is missing from ListHeld on the other replica"
        );
        release(&mut a, &lease).await;
        let listed = held(&mut b, "ryw").await;
        assert!(
            listed.iter().all(|l| l.lock_id != lease.lock_id),
            "round {i}: a released lease is still listed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statistics_count_leases_that_expire_on_resources_nobody_touches() {
    let env = Env::new(Backend::Redis, 2).await;
    let mut a = env.client(0).await;
    let mut b = env.client(1).await;
    for i in 0..5 {
        acquire(&mut a, req(&format!("short{i}"), "x").ttl(200)).await;
    }
    for _ in 0..3 {
        let lease = acquire(&mut b, req("hot", "y")).await;
        release(&mut b, &lease).await;
    }
    let counted = eventually(Duration::from_secs(5), || {
        let mut a = a.clone();
        async move {
            let s = stats(&mut a).await;
            s.active_locks == 0 && s.expired_locks == 5
        }
    })
    .await;
    let from_a = stats(&mut a).await;
    assert!(counted, "expiries nobody saw are not counted: {from_a:?}");
    assert_eq!(from_a.total_locks, 8);
    assert_eq!(from_a.released_locks, 3);
    assert!((from_a.average_hold_time_ms - 125.0).abs() < 125.0);
    let from_b = stats(&mut b).await;
    assert_eq!(from_a, from_b, "every replica answers the same");
    assert_eq!(from_a.top_resources[0].resource, "hot");
    assert_eq!(from_a.top_resources[0].locks, 3);
}

/// A store of our own on `server`, for looking below the daemon.
async fn store(server: &RedisServer, prefix: &str) -> RedisStore {
    RedisStore::connect(&RedisOptions {
        connections: 1,
        timeout: Duration::from_secs(2),
        list_held_index: true,
        max_ttl: Duration::from_secs(3600),
        ..RedisOptions::new(server.url(), prefix)
    })
    .await
    .unwrap()
}

fn secret() -> String {
    lockd_core::LockId::generate("r").secret
}

fn exclusive(resource: &str, client: &str, wait_ms: u64) -> AcquireSpec {
    AcquireSpec {
        resource: resource.to_owned(),
        mode: LockMode::Exclusive,
        ttl_ms: 60_000,
        wait_ms,
        client_id: client.to_owned(),
        max_renewals: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_script_drops_a_bounded_number_of_dead_entries() {
    let server = RedisServer::start();
    let prefix = unique("bounded");
    let store = store(&server, &prefix).await;
    let dead = Caller {
        daemon_id: "dead",
        liveness_ms: 300,
    };
    let live = Caller {
        daemon_id: "live",
        liveness_ms: 60_000,
    };
    let (held, _) = store
        .acquire(&exclusive("r", "h", 0), &secret(), &live, 0)
        .await;
    let Ok(AcquireOutcome::Granted(lease)) = held else {
        panic!("{held:?}");
    };
    for i in 0..1_000 {
        let (queued, _) = store
            .acquire(
                &exclusive("r", &format!("w{i}"), 60_000),
                &secret(),
                &dead,
                0,
            )
            .await;
        assert!(matches!(queued, Ok(AcquireOutcome::Queued { .. })));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let keys = store.namespace().resource("r");
    let mut conn = server.connection();
    let lock = lockd_core::LockId::parse(&lease.lock_id).unwrap();
    let (released, _) = store.release(&lock, "h", &live).await;
    released.unwrap();
    let left: u64 = redis::cmd("ZCARD")
        .arg(&keys.queue)
        .query(&mut conn)
        .unwrap();
    assert_eq!(left, 900, "one script drops at most 100 dead entries");
    // The rest go by the reaper's sweeps, and the waiting count is exact:
    // the dead daemon's entries stopped counting when it was found dead.
    let mut swept = 0;
    while swept < 20 {
        store.reap(&live).await.unwrap();
        let n: u64 = redis::cmd("ZCARD")
            .arg(&keys.queue)
            .query(&mut conn)
            .unwrap();
        if n == 0 {
            break;
        }
        swept += 1;
    }
    let totals = store.read_stats().await.unwrap();
    assert_eq!(totals.waiting, 0);
    let (free, _) = store
        .acquire(&exclusive("r", "n", 0), &secret(), &live, 0)
        .await;
    assert!(matches!(free, Ok(AcquireOutcome::Granted(_))), "{free:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquire_that_arrives_after_its_leave_takes_no_effect() {
    let server = RedisServer::start();
    let store = store(&server, &unique("cancel")).await;
    let me = Caller {
        daemon_id: "d",
        liveness_ms: 60_000,
    };
    // The acquire's reply timed out; the daemon's leave ran first.
    let late_secret = secret();
    let (left, _) = store.leave("r", &late_secret, &me, true).await;
    assert_eq!(left.unwrap(), LeaveOutcome::NotFound);
    let (late, _) = store
        .acquire(&exclusive("r", "a", 0), &late_secret, &me, 0)
        .await;
    assert!(matches!(late, Ok(AcquireOutcome::Busy)), "{late:?}");
    let (free, _) = store
        .acquire(&exclusive("r", "b", 0), &secret(), &me, 0)
        .await;
    assert!(matches!(free, Ok(AcquireOutcome::Granted(_))), "{free:?}");
}

/// libfaketime, preloaded before glibc so that Debian's jemalloc-built
/// redis-server starts (see shared/notes/redis-topologies.md).
const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_rise_when_redis_comes_back_with_its_clock_an_hour_behind() {
    assert!(
        std::path::Path::new(FAKETIME).exists(),
        "libfaketime is missing: apt-get install faketime (see .ci/run)"
    );
    let dir = std::env::temp_dir().join(unique("clock"));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let start = |offset: Option<&str>| {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(offset) = offset {
            cmd.env(
                "LD_PRELOAD",
                format!("{FAKETIME}:/lib/x86_64-linux-gnu/libc.so.6"),
            )
            .env("FAKETIME", offset)
            .env("DONT_FAKE_MONOTONIC", "1");
        }
        cmd.spawn().unwrap()
    };
    let url = format!("redis://127.0.0.1:{port}");
    let ready = || async {
        eventually(Duration::from_secs(10), || async {
            redis::Client::open(url.as_str())
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok()
        })
        .await
    };
    let mut first = start(None);
    assert!(ready().await, "redis did not start");
    let prefix = unique("tok");
    // The restart starts a quarantine (tested in failover.rs); this test is
    // about the tokens, so it takes none.
    let args = [
        "--redis-url",
        &url,
        "--key-prefix",
        &prefix,
        "--failover-quarantine",
        "0s",
    ];
    let token = |daemon: &Daemon| {
        let addr = daemon.addr;
        async move {
            let mut c = connect(addr).await;
            let lease = acquire(&mut c, req("r", "a").ttl(100)).await;
            release(&mut c, &lease).await;
            lease.fencing_token
        }
    };
    let daemon = Daemon::start(&args).await;
    let before = token(&daemon).await;
    drop(daemon);
    let _ = first.kill();
    let _ = first.wait();
    let mut second = start(Some("-1h"));
    assert!(ready().await, "redis under faketime did not start");
    let daemon = Daemon::start(&args).await;
    let after = token(&daemon).await;
    drop(daemon);
    let _ = second.kill();
    let _ = second.wait();
    assert!(
        after > before,
        "token {after} after {before} once the clock stepped back an hour"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_with_keys_of_the_previous_layout_is_refused() {
    let server = RedisServer::start();
    let prefix = unique("old");
    let mut conn = server.connection();
    // What the layout before buckets wrote as soon as it counted anything.
    let _: () = redis::cmd("HSET")
        .arg(format!("{prefix}:{{stats}}"))
        .arg("g:exclusive")
        .arg(1)
        .query(&mut conn)
        .unwrap();
    let url = server.url();
    let message = refusal(&["--redis-url", &url, "--key-prefix", &prefix]).await;
    assert!(message.contains("earlier lockd key layout"), "{message}");
    assert!(message.contains(&format!("{prefix}:*")), "{message}");
    // Another prefix on the same Redis starts, and marks its layout.
    let fresh = unique("new");
    let daemon = Daemon::start(&["--redis-url", &url, "--key-prefix", &fresh]).await;
    let marker: String = redis::cmd("GET")
        .arg(Namespace::new(&fresh, 0).layout())
        .query(&mut conn)
        .unwrap();
    assert_eq!(marker, lockd_redis::keys::LAYOUT_VERSION);
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_evicts_any_key_is_refused() {
    let server = RedisServer::start_with(&["--maxmemory-policy", "allkeys-lru"]);
    let url = server.url();
    let message = refusal(&["--redis-url", &url]).await;
    assert!(message.contains("allkeys-lru"), "{message}");
    assert!(message.contains("noeviction"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_run_of_shared_waiters_is_granted_in_bounded_steps() {
    let server = RedisServer::start();
    let store = store(&server, &unique("run")).await;
    let me = Caller {
        daemon_id: "d",
        liveness_ms: 60_000,
    };
    let writer = secret();
    let (held, _) = store
        .acquire(&exclusive("r", "w", 0), &writer, &me, 0)
        .await;
    assert!(matches!(held, Ok(AcquireOutcome::Granted(_))));
    let shared = |i: usize| AcquireSpec {
        mode: LockMode::Shared,
        ..exclusive("r", &format!("s{i}"), 60_000)
    };
    for i in 0..2_500 {
        let (queued, _) = store.acquire(&shared(i), &secret(), &me, 0).await;
        assert!(matches!(queued, Ok(AcquireOutcome::Queued { .. })));
    }
    let lock = lockd_core::LockId::new(writer.as_str(), "r");
    let (released, effects) = store.release(&lock, "w", &me).await;
    released.unwrap();
    assert_eq!(
        effects.my_grants.len(),
        lockd_core::engine::GRANT_LIMIT,
        "one script grants a bounded run"
    );
    // The rest are due at once, and the reaper grants them.
    let mut granted = effects.my_grants.len();
    for _ in 0..10 {
        for (_, effects) in store.reap(&me).await.unwrap() {
            granted += effects.my_grants.len();
        }
        if granted == 2_500 {
            break;
        }
    }
    assert_eq!(granted, 2_500);
    let totals = store.read_stats().await.unwrap();
    assert_eq!(totals.waiting, 0);
    assert_eq!(totals.active_by_mode[LockMode::Shared.index()], 2_500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_leases_ending_at_once_are_ended_in_bounded_steps() {
    let server = RedisServer::start();
    let store = store(&server, &unique("readers")).await;
    let me = Caller {
        daemon_id: "d",
        liveness_ms: 60_000,
    };
    let reader = |i: usize| AcquireSpec {
        mode: LockMode::Read,
        ttl_ms: 3_000,
        ..exclusive("r", &format!("reader{i}"), 0)
    };
    let filling = Instant::now();
    // Pipelined on the store's connection, so the fill takes a fraction of
    // the TTL even on a loaded machine.
    let specs: Vec<AcquireSpec> = (0..1_500).map(reader).collect();
    let secrets: Vec<String> = specs.iter().map(|_| secret()).collect();
    let grants = futures::future::join_all(
        specs
            .iter()
            .zip(&secrets)
            .map(|(spec, secret)| store.acquire(spec, secret, &me, 0)),
    )
    .await;
    let mut last = None;
    for (granted, _) in grants {
        let Ok(AcquireOutcome::Granted(lease)) = granted else {
            panic!("{granted:?}");
        };
        last = Some(lease);
    }
    assert!(
        filling.elapsed() < Duration::from_millis(2_500),
        "the readers must all be granted before the first expires"
    );
    // Every reader's lease has ended; none was ended yet.
    tokio::time::sleep(Duration::from_millis(3_200)).await;
    // The next operation on the resource ends the earliest 1000 only.
    let (writer, effects) = store
        .acquire(&exclusive("r", "writer", 0), &secret(), &me, 0)
        .await;
    let ended = effects
        .events
        .iter()
        .filter(|e| matches!(e, lockd_core::Event::Ended { .. }))
        .count();
    assert_eq!(ended, lockd_core::engine::EXPIRE_LIMIT);
    assert!(
        matches!(writer, Ok(AcquireOutcome::Busy)),
        "expired leases not yet ended still hold: {writer:?}"
    );
    // An expired lease the sweep has not reached yet is not served: renewing
    // it ends it instead.
    let last = last.expect("a lease");
    let lock = lockd_core::LockId::parse(&last.lock_id).unwrap();
    let (renewed, _) = store.renew(&lock, &last.client_id, None, &me).await;
    assert_eq!(renewed.unwrap_err(), lockd_core::LockError::NotFound);
    for _ in 0..5 {
        store.reap(&me).await.unwrap();
    }
    let totals = store.read_stats().await.unwrap();
    assert_eq!(totals.expired, 1_500);
    assert_eq!(totals.active_by_mode, [0, 0, 0, 0]);
    let (writer, _) = store
        .acquire(&exclusive("r", "writer", 0), &secret(), &me, 0)
        .await;
    assert!(
        matches!(writer, Ok(AcquireOutcome::Granted(_))),
        "{writer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_end_without_its_record_does_not_hold_the_resource() {
    let server = RedisServer::start();
    let prefix = unique("stray");
    let store = store(&server, &prefix).await;
    let me = Caller {
        daemon_id: "d",
        liveness_ms: 60_000,
    };
    // An operator deleted a holder record but not its entry in the expiry index.
    let keys = store.namespace().resource("r");
    let mut conn = server.connection();
    let _: () = redis::cmd("ZADD")
        .arg(&keys.expiries)
        .arg(1)
        .arg("gone-secret")
        .query(&mut conn)
        .unwrap();
    let (granted, _) = store
        .acquire(&exclusive("r", "a", 0), &secret(), &me, 0)
        .await;
    assert!(
        matches!(granted, Ok(AcquireOutcome::Granted(_))),
        "{granted:?}"
    );
    let stray: Option<f64> = redis::cmd("ZSCORE")
        .arg(&keys.expiries)
        .arg("gone-secret")
        .query(&mut conn)
        .unwrap();
    assert_eq!(stray, None, "the stray entry is dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_under_the_floor_is_refused_naming_the_field() {
    let env = Env::with_args(Backend::Redis, 1, &["--min-ttl", "500ms"]).await;
    let mut c = env.client(0).await;
    let err = c.acquire(req("r", "a").ttl(499)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("ttl_ms"), "{err:?}");
    let lease = acquire(&mut c, req("r", "a").ttl(500)).await;
    let err = c
        .renew(pb::RenewRequest {
            lock_id: lease.lock_id.clone(),
            client_id: "a".into(),
            ttl_ms: 10,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("ttl_ms"), "{err:?}");
}

/// A client may retry an Acquire that failed UNAVAILABLE after it ran: the
/// same acquire run twice answers as its first run did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_acquire_run_twice_answers_as_the_first_run() {
    let server = RedisServer::start();
    let store = store(&server, &unique("rerun")).await;
    let me = Caller {
        daemon_id: "d",
        liveness_ms: 60_000,
    };
    let held = secret();
    let (first, _) = store.acquire(&exclusive("r", "a", 0), &held, &me, 0).await;
    let (again, _) = store.acquire(&exclusive("r", "a", 0), &held, &me, 0).await;
    match (first, again) {
        (Ok(AcquireOutcome::Granted(one)), Ok(AcquireOutcome::Granted(two))) => {
            assert_eq!(one.fencing_token, two.fencing_token, "one lease, not two");
        }
        other => panic!("{other:?}"),
    }
    let waiting = secret();
    let (first, _) = store
        .acquire(&exclusive("r", "b", 60_000), &waiting, &me, 0)
        .await;
    let (again, _) = store
        .acquire(&exclusive("r", "b", 60_000), &waiting, &me, 0)
        .await;
    assert!(
        matches!(first, Ok(AcquireOutcome::Queued { position: 0, .. })),
        "{first:?}"
    );
    assert!(
        matches!(
            again,
            Ok(AcquireOutcome::Queued {
                position: 0,
                queue_length: 1
            })
        ),
        "queued once: {again:?}"
    );
    // Another client's request with the same secret is not mistaken for it.
    let (other, _) = store.acquire(&exclusive("r", "c", 0), &held, &me, 0).await;
    assert!(matches!(other, Ok(AcquireOutcome::Busy)), "{other:?}");
}

/// A node demoted under the daemon (before its lanes follow) may lack the
/// latest grants: reads refuse there as writes do, rather than answer that a
/// live lease does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_from_a_demoted_node_are_unavailable_not_empty() {
    let server = RedisServer::start();
    let empty = RedisServer::start();
    let store = store(&server, &unique("demoted")).await;
    let me = Caller {
        daemon_id: "d",
        liveness_ms: 60_000,
    };
    let (held, _) = store
        .acquire(&exclusive("r", "a", 0), &secret(), &me, 0)
        .await;
    let Ok(AcquireOutcome::Granted(lease)) = held else {
        panic!("{held:?}");
    };
    let lock = lockd_core::LockId::parse(&lease.lock_id).unwrap();
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(empty.port)
        .query(&mut server.connection())
        .unwrap();
    let read = store.get(&lock).await;
    assert!(matches!(read, Err(LockError::Unavailable(_))), "{read:?}");
    let view = store.queue("r").await;
    assert!(matches!(view, Err(LockError::Unavailable(_))), "{view:?}");
}
