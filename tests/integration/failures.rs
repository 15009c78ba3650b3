//! Failures: Redis frozen, daemons killed and restarted, shutdown.

use std::time::{Duration, Instant};

use lockd::pb;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::harness::*;

async fn health(addr: std::net::SocketAddr, service: &str) -> ServingStatus {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner();
    ServingStatus::try_from(response.status).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_redis_means_unavailable_and_not_serving_then_recovery() {
    let env = Env::new(Backend::Redis, 1).await;
    let addr = env.daemons[0].addr;
    let mut c = env.client(0).await;
    let held = acquire(&mut c, req("r", "a")).await;
    assert_eq!(health(addr, "").await, ServingStatus::Serving);
    assert_eq!(
        health(addr, "lockd.v1.LockService").await,
        ServingStatus::Serving
    );

    let redis = env.redis.as_ref().unwrap();
    redis.pause();
    let started = Instant::now();
    let err = c.acquire(req("other", "a")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "failed after {:?}",
        started.elapsed()
    );
    let err = c
        .release(pb::ReleaseRequest {
            lock_id: held.lock_id.clone(),
            client_id: "a".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    let not_serving = eventually(Duration::from_secs(5), || async {
        health(addr, "").await == ServingStatus::NotServing
            && health(addr, "lockd.v1.LockService").await == ServingStatus::NotServing
    })
    .await;
    assert!(not_serving, "health goes NOT_SERVING");

    redis.resume();
    let serving = eventually(Duration::from_secs(10), || async {
        health(addr, "lockd.v1.LockService").await == ServingStatus::Serving
    })
    .await;
    assert!(serving, "health recovers by itself");
    // The lease taken before the outage is intact and still ours.
    release(&mut c, &held).await;
    acquire(&mut c, req("r", "b").wait(0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_survive_a_killed_daemon_and_tokens_keep_rising_across_restarts() {
    let redis = RedisServer::start();
    let prefix = unique("kill");
    let args = ["--redis-url", &redis.url(), "--key-prefix", &prefix];
    let mut first = DaemonProcess::spawn(&args).await;
    let mut c = first.client().await;
    let lease = acquire(&mut c, req("r", "a").ttl(60_000)).await;
    let mut tokens = vec![lease.fencing_token];
    let idle = acquire(&mut c, req("idle", "a")).await;
    release(&mut c, &idle).await;
    tokens.push(idle.fencing_token);
    first.kill();

    let second = DaemonProcess::spawn(&args).await;
    let mut c = second.client().await;
    let got = c
        .get_lock(pb::GetLockRequest {
            lock_id: lease.lock_id.clone(),
        })
        .await
        .expect("the lease outlives its daemon")
        .into_inner()
        .lease
        .unwrap();
    assert_eq!(got.fencing_token, lease.fencing_token);
    let err = c.acquire(req("r", "b").wait(0)).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "still held");
    release(&mut c, &lease).await;
    // After a restart and with no state left for "idle", tokens still rise.
    let again = acquire(&mut c, req("r", "b")).await;
    let idle_again = acquire(&mut c, req("idle", "b")).await;
    assert!(again.fencing_token > tokens[0]);
    assert!(idle_again.fencing_token > tokens[1]);
    let mut conn = redis.connection();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query(&mut conn)
        .unwrap();
    assert!(!keys.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_daemons_waiters_stop_blocking_within_seconds() {
    let redis = RedisServer::start();
    let prefix = unique("dead");
    let args = [
        "--redis-url",
        &redis.url(),
        "--key-prefix",
        &prefix,
        "--waiter-liveness",
        "1s",
        "--redis-timeout",
        "250ms",
    ];
    let mut doomed = DaemonProcess::spawn(&args).await;
    let survivor = DaemonProcess::spawn(&args).await;
    let mut s = survivor.client().await;
    let holder = acquire(&mut s, req("r", "holder")).await;
    let mut d = doomed.client().await;
    let mut head = Waiting::start(&mut d, req("r", "doomed").wait(60_000)).await;
    head.queued().await;
    let mut behind = Waiting::start(&mut s, req("r", "behind").wait(60_000)).await;
    assert_eq!(behind.queued().await.position, 1);
    doomed.kill();
    // Released right away, so the grant may go to the dead daemon's waiter,
    // which never takes it over: that grant must be released, not kept for its TTL.
    release(&mut s, &holder).await;
    let started = Instant::now();
    let lease = behind.granted().await;
    assert_eq!(lease.client_id, "behind");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "unblocked after {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_waits_with_unavailable_and_keeps_leases() {
    let mut env = Env::new(Backend::Redis, 2).await;
    let mut c = env.client(0).await;
    let held = acquire(&mut c, req("r", "a")).await;
    let mut w = Waiting::start(&mut c, req("r", "b").wait(60_000)).await;
    w.queued().await;
    let daemon = env.daemons.remove(0);
    let stopping = tokio::spawn(daemon.shutdown());
    let err = w.next().await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    stopping.await.unwrap().expect("clean shutdown");
    let mut other = env.client(0).await;
    other
        .get_lock(pb::GetLockRequest {
            lock_id: held.lock_id.clone(),
        })
        .await
        .expect("the lease stays in Redis");
    let queue = other
        .get_queue(pb::GetQueueRequest {
            resource: "r".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        queue.waiters.is_empty(),
        "the waiter left the queue: {queue:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_cleanly() {
    let redis = RedisServer::start();
    let prefix = unique("term");
    let mut daemon =
        DaemonProcess::spawn(&["--redis-url", &redis.url(), "--key-prefix", &prefix]).await;
    let mut c = daemon.client().await;
    let _held = acquire(&mut c, req("r", "a")).await;
    let mut w = Waiting::start(&mut c, req("r", "b").wait(60_000)).await;
    w.queued().await;
    let status = tokio::task::spawn_blocking(move || daemon.terminate())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(w.next().await.unwrap_err().code(), Code::Unavailable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_turns_on_the_keyspace_notifications_it_needs() {
    let redis = RedisServer::start();
    let mut conn = redis.connection();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("notify-keyspace-events")
        .arg("El")
        .query(&mut conn)
        .unwrap();
    let _daemon = Daemon::start(&["--redis-url", &redis.url()]).await;
    let flags: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("notify-keyspace-events")
        .query(&mut conn)
        .unwrap();
    for flag in ['K', 'E', 'l', 'g', 'h', 'z', 'x', 'e'] {
        assert!(flags[1].contains(flag), "{flag} in {:?}", flags[1]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_config_access_the_daemon_names_the_flags_to_set() {
    // Managed Redis services often disable CONFIG.
    let redis = RedisServer::start_with(&["--rename-command", "CONFIG", ""]);
    let message = refusal(&["--redis-url", &redis.url()]).await;
    assert!(message.contains("notify-keyspace-events"), "{message}");
    assert!(message.contains("Kghzxe"), "{message}");
}
