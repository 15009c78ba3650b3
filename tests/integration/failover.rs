//! Failover safety on one Redis and its replicas: the quarantine after the
//! server changes (a restart with or without its data), the token floor's
//! jump, and grants confirmed by replicas (`--min-replicas-ack`).

use std::time::{Duration, Instant};

use lockd::pb;
use tonic::Code;

use crate::harness::*;

/// The text of a refusal during a quarantine.
const QUARANTINED: &str = "--failover-quarantine";

/// Tries a non-waiting acquire until Redis answers it (the daemon's lanes
/// reconnect after a restart), then until it is granted; returns the lease,
/// when it was granted, and whether a quarantine refused it before.
async fn acquire_through_quarantine(
    c: &mut Client,
    request: pb::AcquireRequest,
    within: Duration,
) -> (pb::Lease, Instant, bool) {
    let deadline = Instant::now() + within;
    let mut refused = false;
    loop {
        match c.acquire(request.clone()).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                if let Some(lease) = reply.lease {
                    return (lease, Instant::now(), refused);
                }
                panic!("a free resource was not granted: {reply:?}");
            }
            Err(status) if status.code() == Code::Unavailable => {
                refused |= status.message().contains(QUARANTINED);
            }
            Err(status) => panic!("unexpected refusal: {status:?}"),
        }
        assert!(Instant::now() < deadline, "no grant within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_that_lost_the_data_quarantines_every_resource_and_lifts_tokens() {
    let mut env = Env::with_args(Backend::Redis, 1, &["--failover-quarantine", "2s"]).await;
    let mut c = env.client(0).await;
    let before = acquire(&mut c, req("held", "a")).await;

    env.redis.as_mut().unwrap().restart_empty();
    let restarted = Instant::now();
    // Queued during the quarantine: granted only once it ends.
    let (lease, granted_at, refused) =
        acquire_through_quarantine(&mut c, req("fresh", "b").wait(0), Duration::from_secs(15))
            .await;
    assert!(refused, "a free resource was refused during the quarantine");
    assert!(
        granted_at - restarted >= Duration::from_millis(1900),
        "granted {:?} after the restart, inside the 2 s quarantine",
        granted_at - restarted
    );
    // The lost lease's token was issued by the old server; the new one must
    // be above it and above the old server's clock by the jump.
    assert!(
        lease.fencing_token > before.fencing_token + 3_000_000_000,
        "token {} after the restart is not an hour above {}",
        lease.fencing_token,
        before.fencing_token
    );
    // The lost lease's resource is free on the new server, after its own quarantine.
    let (other, _, _) =
        acquire_through_quarantine(&mut c, req("held", "c").wait(0), Duration::from_secs(5)).await;
    assert!(other.fencing_token > before.fencing_token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_that_kept_the_data_quarantines_new_grants_but_not_renewals() {
    let redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let prefix = unique("kept");
    let daemon = Daemon::start(&[
        "--redis-url",
        &redis.url(),
        "--key-prefix",
        &prefix,
        "--failover-quarantine",
        "2s",
    ])
    .await;
    let mut redis = redis;
    let mut c = daemon.client().await;
    let held = acquire(&mut c, req("r", "a")).await;

    redis.restart();
    let restarted = Instant::now();
    // The lease survived the restart: its holder renews it during the quarantine.
    let renewed = eventually(Duration::from_secs(10), || {
        let mut c = c.clone();
        let lock_id = held.lock_id.clone();
        async move {
            c.renew(pb::RenewRequest {
                lock_id,
                client_id: "a".into(),
                ttl_ms: 30_000,
            })
            .await
            .is_ok()
        }
    })
    .await;
    assert!(renewed, "a surviving lease renews after the restart");
    assert!(
        restarted.elapsed() < Duration::from_secs(2),
        "the renewal came only after the quarantine; the test proves nothing"
    );
    // A waiter queued behind it is not granted on release until the quarantine ends.
    let mut waiter = Waiting::start(&mut c, req("r", "b").wait(10_000)).await;
    waiter.queued().await;
    release(&mut c, &held).await;
    let granted = waiter.granted().await;
    assert!(
        restarted.elapsed() >= Duration::from_millis(1900),
        "granted {:?} after the restart, inside the quarantine",
        restarted.elapsed()
    );
    assert!(granted.fencing_token > held.fencing_token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_zero_grants_at_once_after_a_restart_and_tokens_still_rise() {
    let mut env = Env::with_args(Backend::Redis, 1, &["--failover-quarantine", "0s"]).await;
    let mut c = env.client(0).await;
    let before = acquire(&mut c, req("r", "a")).await;
    env.redis.as_mut().unwrap().restart_empty();
    let (lease, _, refused) =
        acquire_through_quarantine(&mut c, req("r", "b").wait(0), Duration::from_secs(10)).await;
    assert!(!refused, "no quarantine was asked for");
    assert!(lease.fencing_token > before.fencing_token);
}

/// A primary with one replica, and a daemon that needs it to confirm grants
/// within `confirm_within` (a loaded test machine may starve the replica a while).
async fn replicated(
    confirm_within: &str,
    extra: &[&str],
) -> (RedisServer, RedisServer, Daemon, String) {
    let primary = RedisServer::start();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &primary.port.to_string()]);
    let synced = eventually(Duration::from_secs(10), || async {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut primary.connection())
            .unwrap();
        info.contains("connected_slaves:1") && info.contains("state=online")
    })
    .await;
    assert!(synced, "the replica did not sync");
    let prefix = unique("acked");
    let url = primary.url();
    let mut args = vec![
        "--redis-url",
        &url,
        "--key-prefix",
        &prefix,
        "--min-replicas-ack",
        "1",
        "--min-replicas-timeout",
        confirm_within,
    ];
    args.extend(extra);
    let daemon = Daemon::start(&args).await;
    (primary, replica, daemon, prefix)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_wait_for_a_replica_and_an_unconfirmed_grant_is_released() {
    let (_primary, replica, daemon, _) = replicated("1s", &[]).await;
    let mut c = daemon.client().await;
    let held = acquire(&mut c, req("held", "a")).await;

    replica.pause();
    let err = c.acquire(req("fresh", "b").wait(0)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("--min-replicas-ack"), "{err:?}");
    let err = c
        .renew(pb::RenewRequest {
            lock_id: held.lock_id.clone(),
            client_id: "a".into(),
            ttl_ms: 30_000,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("--min-replicas-ack"), "{err:?}");
    // A WaitQueue grant that the replica cannot confirm fails the stream.
    let mut waiter = Waiting::start(&mut c, req("held", "w").wait(10_000)).await;
    waiter.queued().await;
    release(&mut c, &held).await;
    match waiter.next().await {
        Err(status) => {
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
            assert!(
                status.message().contains("--min-replicas-ack"),
                "{status:?}"
            );
        }
        other => panic!("expected UNAVAILABLE, got {other:?}"),
    }

    replica.resume();
    // Neither unconfirmed grant stayed: both resources are free again.
    for resource in ["fresh", "held"] {
        let free = eventually(Duration::from_secs(10), || {
            let mut c = c.clone();
            async move {
                c.acquire(req(resource, "c").wait(0))
                    .await
                    .is_ok_and(|r| r.into_inner().lease.is_some())
            }
        })
        .await;
        assert!(free, "the unconfirmed grant of {resource} was released");
    }
}

/// A lift of the token offset, as the bucket pass makes it on a bucket whose
/// recorded server is not this one: the tokens that follow must clear what a
/// lost server that took over from the same state (and lifted, and granted)
/// could have handed out before now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_lift_clears_a_lost_one_made_from_the_same_state() {
    use lockd_redis::{RedisOptions, RedisStore};
    let server = RedisServer::start();
    let prefix = unique("lift");
    let store = RedisStore::connect(&RedisOptions::new(server.url(), prefix.as_str()))
        .await
        .unwrap();
    let stats = store.namespace().stats(7);
    let mut conn = server.connection();
    let clock = |conn: &mut redis::Connection| -> u64 {
        let time: Vec<u64> = redis::cmd("TIME").query(conn).unwrap();
        time[0] * 1_000_000 + time[1]
    };
    let now_us = clock(&mut conn);
    let hour = 3_600_000_000u64;
    // Two earlier failovers left an offset of two hours; the last grant was
    // 10 s ago. A server that took over from this state (and was lost)
    // lifted the offset by an hour and granted until a second ago.
    let offset = 2 * hour;
    let floor = now_us + offset - 10_000_000;
    let lost_server_last_token = now_us - 1_000_000 + offset + hour;
    let _: () = redis::cmd("HSET")
        .arg(&stats)
        .arg("n")
        .arg("a-lost-server/replid")
        .arg("f")
        .arg(floor)
        .arg("o")
        .arg(offset)
        .query(&mut conn)
        .unwrap();
    assert!(store.check_buckets().await.unwrap() >= 1);
    let (floor, offset): (u64, u64) = redis::cmd("HMGET")
        .arg(&stats)
        .arg("f")
        .arg("o")
        .query(&mut conn)
        .unwrap();
    let next_token = (floor + 1).max(clock(&mut conn) + offset);
    assert!(
        next_token > lost_server_last_token,
        "the next token {next_token} is not above the lost server's {lost_server_last_token}"
    );
    assert_eq!(offset, 3 * hour, "one hour per change of server");
}

/// A confirmation waits --min-replicas-timeout, even when that is longer
/// than the bound on every other Redis call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmation_waits_longer_than_the_redis_timeout() {
    let (_primary, replica, daemon, _) = replicated(
        "4s",
        &["--redis-timeout", "200ms", "--waiter-liveness", "20s"],
    )
    .await;
    let mut c = daemon.client().await;
    replica.pause();
    let resume = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        replica.resume();
    };
    let (reply, ()) = tokio::join!(c.acquire(req("slow", "a").wait(0)), resume);
    let lease = reply
        .expect("confirmed once the replica is back")
        .into_inner()
        .lease;
    assert!(lease.is_some());
}
