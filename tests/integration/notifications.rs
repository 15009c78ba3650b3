//! Keyspace notifications against awkward Redis deployments: CONFIG disabled,
//! and a Redis that restarts and forgets its flags.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

/// A redis-server on a port of its own that can be killed and started again
/// on the same port, as a restarted Redis comes back at the same address.
struct Restartable {
    port: u16,
    child: Option<Child>,
}

impl Restartable {
    fn start(extra: &[&str]) -> Restartable {
        let mut redis = Restartable {
            port: free_port(),
            child: None,
        };
        redis.spawn(extra);
        redis
    }

    fn spawn(&mut self, extra: &[&str]) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(client) = redis::Client::open(self.url())
                && let Ok(mut conn) = client.get_connection()
                && redis::cmd("PING").query::<String>(&mut conn).is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    /// SIGKILL: every connection dies with the server.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Restartable {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Daemon flags under which a waiter's periodic sync comes only every 6 s, so
/// that a handoff in well under a second can only be a notification's doing.
fn slow_sync(url: &str, prefix: &str) -> Vec<String> {
    [
        "--redis-url",
        url,
        "--key-prefix",
        prefix,
        "--waiter-liveness",
        "30s",
        "--redis-timeout",
        "1s",
        // These tests restart Redis to test connections and notifications;
        // the quarantine a restart starts is tested in failover.rs.
        "--failover-quarantine",
        "0s",
    ]
    .map(String::from)
    .to_vec()
}

async fn start(args: &[String]) -> Daemon {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Daemon::start(&args).await
}

/// The slowest of a few handoffs from a holder on `a` to a waiter on `b`.
async fn slowest_handoff(a: &Daemon, b: &Daemon, name: &str) -> Duration {
    let mut ca = a.client().await;
    let mut cb = b.client().await;
    let mut worst = Duration::ZERO;
    for round in 0..5 {
        let resource = format!("{name}-{round}");
        let held = acquire(&mut ca, req(&resource, "a")).await;
        let mut w = Waiting::start(&mut cb, req(&resource, "b").wait(20_000)).await;
        w.queued().await;
        let started = Instant::now();
        release(&mut ca, &held).await;
        let lease = w.granted().await;
        worst = worst.max(started.elapsed());
        release(&mut cb, &lease).await;
    }
    worst
}

/// Waits until every daemon has gone NOT_SERVING at least once and then
/// SERVING again.
async fn wait_down_and_up(addrs: &[SocketAddr]) {
    let mut seen_down = vec![false; addrs.len()];
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut all_up = true;
        for (i, addr) in addrs.iter().enumerate() {
            let up = serving(*addr).await;
            seen_down[i] |= !up;
            all_up &= up && seen_down[i];
        }
        if all_up {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "health did not go down and up: {seen_down:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Kills Redis and starts it again on the same port with `extra` flags, then
/// waits for SERVING. Health may or may not be seen to go down meanwhile: a
/// daemon notices at once and is back within a health tick.
async fn restart(redis: &mut Restartable, extra: &[&str], addrs: &[SocketAddr]) {
    redis.kill();
    redis.spawn(extra);
    for addr in addrs {
        assert!(
            eventually(Duration::from_secs(10), || serving(*addr)).await,
            "{addr} serving again"
        );
    }
}

/// The server's notify-keyspace-events.
fn notify_flags(redis: &Restartable) -> String {
    let reply: Vec<String> = redis::Client::open(redis.url())
        .and_then(|c| c.get_connection())
        .and_then(|mut c| {
            redis::cmd("CONFIG")
                .arg("GET")
                .arg("notify-keyspace-events")
                .query(&mut c)
        })
        .unwrap();
    reply[1].clone()
}

async fn metrics(port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_managed_redis_without_config_works_when_its_flags_are_set() {
    let redis = Restartable::start(&[
        "--rename-command",
        "CONFIG",
        "",
        "--notify-keyspace-events",
        "KEA",
    ]);
    let args = slow_sync(&redis.url(), &unique("managed"));
    let a = start(&args).await;
    let b = start(&args).await;
    let worst = slowest_handoff(&a, &b, "managed").await;
    eprintln!("managed redis: slowest handoff {worst:?}");
    assert!(worst < Duration::from_secs(1), "slowest handoff {worst:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_config_a_probe_finds_flags_that_are_missing() {
    // `l` (lists) is on, the hash, zset, generic and expired events are not.
    let redis = Restartable::start(&[
        "--rename-command",
        "CONFIG",
        "",
        "--notify-keyspace-events",
        "Kl",
    ]);
    let message = refusal(&["--redis-url", &redis.url()]).await;
    assert!(message.contains("notify-keyspace-events"), "{message}");
    assert!(message.contains("Kghzxe"), "{message}");
    assert!(message.contains("hgzx"), "names what is missing: {message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_come_back_after_a_redis_restart() {
    let mut redis = Restartable::start(&[]);
    let args = slow_sync(&redis.url(), &unique("restart"));
    let a = start(&args).await;
    let b = start(&args).await;
    let before = slowest_handoff(&a, &b, "before").await;
    restart(&mut redis, &[], &[a.addr, b.addr]).await;
    // The server starts with no flags; the daemons put them back.
    let restored = eventually(Duration::from_secs(10), || async {
        "Kghzxe".chars().all(|f| notify_flags(&redis).contains(f))
    })
    .await;
    assert!(restored, "flags restored: {:?}", notify_flags(&redis));
    let after = slowest_handoff(&a, &b, "after").await;
    eprintln!("redis restart: slowest handoff {before:?} before, {after:?} after");
    assert!(after < Duration::from_secs(1), "slowest handoff {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_lost_for_good_raise_an_alarm_while_locks_keep_working() {
    let mut redis = Restartable::start(&[]);
    let http = free_port();
    let mut args = slow_sync(&redis.url(), &unique("alarm"));
    args.extend(["--http-listen".into(), format!("127.0.0.1:{http}")]);
    let daemon = start(&args).await;
    assert!(metrics(http).await.contains("lockd_notifications_up 1"));

    // The new server refuses CONFIG and has no flags: they cannot come back.
    restart(
        &mut redis,
        &["--rename-command", "CONFIG", ""],
        &[daemon.addr],
    )
    .await;
    let alarmed = eventually(Duration::from_secs(10), || async {
        metrics(http).await.contains("lockd_notifications_up 0")
    })
    .await;
    assert!(alarmed, "lockd_notifications_up goes 0");
    assert!(
        serving(daemon.addr).await,
        "locks still work: SERVING stays"
    );
    let mut c = daemon.client().await;
    let lease = acquire(&mut c, req("r", "a")).await;
    release(&mut c, &lease).await;

    // An operator fixes the server's configuration and restarts it.
    restart(
        &mut redis,
        &[
            "--rename-command",
            "CONFIG",
            "",
            "--notify-keyspace-events",
            "KEA",
        ],
        &[daemon.addr],
    )
    .await;
    let restored = eventually(Duration::from_secs(10), || async {
        metrics(http).await.contains("lockd_notifications_up 1")
    })
    .await;
    assert!(restored, "lockd_notifications_up goes back to 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_serving_after_a_restart_no_call_fails_on_a_dead_connection() {
    let mut redis = Restartable::start(&[]);
    let (daemon, mut c) = daemon_with_warm_lanes(&redis, "lanes").await;
    redis.kill();
    // Clients keep calling while Redis is away; those calls fail.
    let mut failed_while_down = 0;
    for i in 0..6 {
        if c.acquire(req(&format!("down-{i}"), "a").wait(0))
            .await
            .is_err()
        {
            failed_while_down += 1;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(failed_while_down > 0);
    redis.spawn(&[]);
    wait_down_and_up(&[daemon.addr]).await;
    every_call_succeeds(&mut c, "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_right_after_a_quick_restart_means_every_lane_works() {
    let mut redis = Restartable::start(&[]);
    let (daemon, mut c) = daemon_with_warm_lanes(&redis, "quick").await;
    redis.kill();
    redis.spawn(&[]);
    assert!(
        eventually(Duration::from_secs(10), || serving(daemon.addr)).await,
        "serving again"
    );
    every_call_succeeds(&mut c, "quick").await;
}

/// 50 Acquire/Release pairs, spread over every lane, all of which must succeed.
async fn every_call_succeeds(c: &mut Client, name: &str) {
    let mut failures = Vec::new();
    for i in 0..50 {
        match c.acquire(req(&format!("{name}-{i}"), "a")).await {
            Ok(reply) => {
                let lease = reply.into_inner().lease.expect("lease");
                if let Err(status) = c
                    .release(lockd::pb::ReleaseRequest {
                        lock_id: lease.lock_id,
                        client_id: lease.client_id,
                    })
                    .await
                {
                    failures.push(format!("release {i}: {status}"));
                }
            }
            Err(status) => failures.push(format!("acquire {i}: {status}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} failed: {failures:#?}",
        failures.len()
    );
}

/// A daemon with four lanes on `redis`, each of which has carried calls, and
/// a client of it.
async fn daemon_with_warm_lanes(redis: &Restartable, name: &str) -> (Daemon, Client) {
    let prefix = unique(name);
    let daemon = Daemon::start(&[
        "--redis-url",
        &redis.url(),
        "--key-prefix",
        &prefix,
        "--redis-connections",
        "4",
        "--failover-quarantine",
        "0s",
    ])
    .await;
    let mut c = daemon.client().await;
    for i in 0..8 {
        let lease = acquire(&mut c, req(&format!("warm-{i}"), "a")).await;
        release(&mut c, &lease).await;
    }
    (daemon, c)
}
