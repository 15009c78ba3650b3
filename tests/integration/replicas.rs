//! Several daemons on one Redis: FIFO order, wake-ups and answers across replicas.

use std::time::{Duration, Instant};

use lockd::pb::{self, LockMode};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_waiters_on_two_replicas_are_served_in_arrival_order() {
    let env = Env::new(Backend::Redis, 2).await;
    let mut a = env.client(0).await;
    let mut b = env.client(1).await;
    let holder = acquire(&mut a, req("r", "holder")).await;
    let mut waiting = Vec::new();
    for i in 0..6u64 {
        let client = if i % 2 == 0 { &mut a } else { &mut b };
        let mut w = Waiting::start(client, req("r", &format!("w{i}")).wait(20_000)).await;
        let q = w.queued().await;
        assert_eq!((q.position, q.queue_length), (i, i + 1), "w{i}");
        waiting.push(w);
    }
    let queue = b
        .get_queue(pb::GetQueueRequest {
            resource: "r".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let order: Vec<String> = queue.waiters.iter().map(|w| w.client_id.clone()).collect();
    assert_eq!(order, ["w0", "w1", "w2", "w3", "w4", "w5"]);
    assert_eq!(
        queue.waiters.iter().map(|w| w.position).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4, 5]
    );

    let mut previous = holder.clone();
    for (i, w) in waiting.iter_mut().enumerate() {
        // Release through the other replica than the next waiter's.
        let releaser = if i % 2 == 0 { &mut b } else { &mut a };
        release(releaser, &previous).await;
        let lease = w.granted().await;
        assert_eq!(lease.client_id, format!("w{i}"));
        assert!(lease.fencing_token > previous.fencing_token);
        previous = lease;
    }
    release(&mut a, &previous).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_on_one_replica_wakes_a_waiter_on_another_at_once() {
    let env = Env::new(Backend::Redis, 2).await;
    let mut a = env.client(0).await;
    let mut b = env.client(1).await;
    let mut worst = Duration::ZERO;
    for round in 0..20 {
        let resource = format!("handoff-{round}");
        let held = acquire(&mut a, req(&resource, "a")).await;
        let mut w = Waiting::start(&mut b, req(&resource, "b").wait(10_000)).await;
        w.queued().await;
        let started = Instant::now();
        release(&mut a, &held).await;
        w.granted().await;
        worst = worst.max(started.elapsed());
    }
    // Notifications make this milliseconds; the periodic sync alone would take up to a second.
    assert!(
        worst < Duration::from_millis(500),
        "slowest handoff {worst:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_wakes_a_waiter_on_another_replica() {
    let env = Env::new(Backend::Redis, 2).await;
    let mut a = env.client(0).await;
    let mut b = env.client(1).await;
    let lease = acquire(&mut a, req("r", "a").ttl(300)).await;
    let mut w = Waiting::start(&mut b, req("r", "b").wait(10_000)).await;
    w.queued().await;
    let granted = w.granted().await;
    let expired_at = lease.expires_at.unwrap();
    let granted_at = granted.acquired_at.unwrap();
    let late_ms = (granted_at.seconds - expired_at.seconds) * 1000
        + i64::from(granted_at.nanos - expired_at.nanos) / 1_000_000;
    assert!(
        (0..200).contains(&late_ms),
        "granted {late_ms} ms after expiry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_batch_spans_replicas() {
    let env = Env::new(Backend::Redis, 2).await;
    let mut a = env.client(0).await;
    let mut b = env.client(1).await;
    let writer = acquire(&mut a, req("r", "w").mode(LockMode::Write)).await;
    let mut r1 = Waiting::start(&mut a, req("r", "r1").mode(LockMode::Read).wait(10_000)).await;
    r1.queued().await;
    let mut r2 = Waiting::start(&mut b, req("r", "r2").mode(LockMode::Read).wait(10_000)).await;
    r2.queued().await;
    release(&mut b, &writer).await;
    r1.granted().await;
    r2.granted().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_answers_the_same_stats_and_held_leases() {
    let env = Env::new(Backend::Redis, 2).await;
    let mut a = env.client(0).await;
    let mut b = env.client(1).await;
    let first = acquire(&mut a, req("s1", "me").mode(LockMode::Shared)).await;
    let _second = acquire(&mut b, req("s2", "me")).await;
    let third = acquire(&mut a, req("s1", "other").mode(LockMode::Read)).await;
    release(&mut a, &third).await;

    let held = b
        .list_held(pb::ListHeldRequest {
            client_id: "me".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .leases;
    let mut resources: Vec<&str> = held.iter().map(|l| l.resource.as_str()).collect();
    resources.sort_unstable();
    assert_eq!(resources, ["s1", "s2"]);
    assert!(
        held.iter().any(|l| l.lock_id == first.lock_id),
        "lock ids are listed"
    );

    let stats = |mut c: Client| async move {
        c.get_stats(pb::GetStatsRequest {})
            .await
            .unwrap()
            .into_inner()
    };
    // Each daemon flushes its own counters at least once a second.
    let same = eventually(Duration::from_secs(5), || {
        let (a, b) = (a.clone(), b.clone());
        async move {
            let (x, y) = (stats(a).await, stats(b).await);
            x == y && x.total_locks == 3
        }
    })
    .await;
    assert!(same, "replicas agree");
    let s = stats(a.clone()).await;
    assert_eq!(s.active_locks, 2);
    assert_eq!(s.released_locks, 1);
    assert_eq!(s.active_by_mode["shared"], 1);
    assert_eq!(s.active_by_mode["exclusive"], 1);
    assert_eq!(s.active_by_mode["read"], 0);
    assert_eq!(s.top_resources[0].resource, "s1");
    assert_eq!(s.top_resources[0].locks, 2);
}

/// Calls of one command since the last CONFIG RESETSTAT.
fn command_calls(conn: &mut redis::Connection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(conn).unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_waiter_costs_about_one_sync_a_second() {
    let env = Env::new(Backend::Redis, 2).await;
    let mut a = env.client(0).await;
    let mut b = env.client(1).await;
    let _held = acquire(&mut a, req("r", "a").ttl(60_000)).await;
    let mut w1 = Waiting::start(&mut a, req("r", "w1").wait(60_000)).await;
    w1.queued().await;
    let mut w2 = Waiting::start(&mut b, req("r", "w2").wait(60_000)).await;
    w2.queued().await;
    // A resource whose newest token left with a holder that is gone, while an
    // older holder stays: the script keeps that token in a field of its own.
    let _older = acquire(&mut a, req("s", "s1").mode(pb::LockMode::Shared)).await;
    let newer = acquire(&mut a, req("s", "s2").mode(pb::LockMode::Shared)).await;
    let mut w3 = Waiting::start(&mut b, req("s", "w3").wait(60_000)).await;
    w3.queued().await;
    release(&mut a, &newer).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut conn = env.redis.as_ref().unwrap().connection();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut conn)
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Two daemons, one periodic sync and one reaper claim a second each;
    // nothing a script writes may wake further syncs.
    let scripts = command_calls(&mut conn, "evalsha");
    assert!(
        scripts <= 12,
        "{scripts} scripts in 2 s while nothing changed"
    );
}
