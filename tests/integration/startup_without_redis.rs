//! Startup while Redis is down: the daemon serves health at once, waits for Redis without exiting, and serves locks once Redis answers.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use lockd::config::Config;
use lockd_testkit::{ChildProcess, TempDir, program};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::harness::*;

const PASSWORD: &str = "sekret";

/// A redis-server on a port chosen before it starts, killed on drop.
struct LateRedis {
    _process: ChildProcess,
    _dir: TempDir,
}

impl LateRedis {
    fn start(port: u16, extra: &[&str]) -> LateRedis {
        let dir = TempDir::new(&format!("late-redis-{port}")).expect("scratch folder");
        let mut cmd = Command::new(program("redis-server"));
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .args(extra);
        let process = ChildProcess::spawn("redis-server", cmd, &dir.path().join("redis.log"))
            .expect("redis-server runs");
        LateRedis {
            _process: process,
            _dir: dir,
        }
    }
}

/// The status the health service reports for `service`, if it answers.
async fn health(addr: SocketAddr, service: &str) -> Option<ServingStatus> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .ok()?;
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .ok()?;
    ServingStatus::try_from(reply.into_inner().status).ok()
}

/// Waits until the health of `service` is `want`, within `within`.
async fn health_becomes(addr: SocketAddr, service: &str, want: ServingStatus, within: Duration) {
    let start = Instant::now();
    loop {
        let now = health(addr, service).await;
        if now == Some(want) {
            return;
        }
        assert!(
            start.elapsed() < within,
            "health of {service:?} is {now:?}, not {want:?}, after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a daemon must report while Redis is down: alive, not ready, and
/// lock calls UNAVAILABLE naming why.
async fn assert_waiting_for_redis(addr: SocketAddr) {
    health_becomes(
        addr,
        "liveness",
        ServingStatus::Serving,
        Duration::from_secs(10),
    )
    .await;
    for service in ["", "lockd.v1.LockService"] {
        assert_eq!(
            health(addr, service).await,
            Some(ServingStatus::NotServing),
            "readiness {service:?} while redis is down"
        );
    }
    let mut client = connect(addr).await;
    let status = client
        .acquire(req("r", "a"))
        .await
        .expect_err("no lock without redis");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("redis not reachable yet"),
        "{status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_waits_for_redis_and_then_serves_without_a_restart() {
    let port = free_port();
    let url = format!("redis://:{PASSWORD}@127.0.0.1:{port}");
    let config = Config::try_parse_from(["lockd", "--redis-url", &url]).expect("flags");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(lockd::server::run(listener, config, async move {
        let _ = stopped.await;
    }));

    assert_waiting_for_redis(addr).await;
    assert!(!daemon.is_finished(), "the daemon gave up without redis");

    let _redis = LateRedis::start(port, &["--requirepass", PASSWORD]);
    health_becomes(
        addr,
        "lockd.v1.LockService",
        ServingStatus::Serving,
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(health(addr, "").await, Some(ServingStatus::Serving));
    assert_eq!(health(addr, "liveness").await, Some(ServingStatus::Serving));
    let mut client = connect(addr).await;
    let lease = acquire(&mut client, req("r", "a")).await;
    release(&mut client, &lease).await;

    let _ = stop.send(());
    let result = tokio::time::timeout(Duration::from_secs(15), daemon)
        .await
        .expect("stops in time")
        .expect("no panic");
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_comes_up_misconfigured_still_stops_the_daemon() {
    // Retrying cannot fix a policy that evicts lock state.
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let config = Config::try_parse_from(["lockd", "--redis-url", &url]).expect("flags");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let daemon = tokio::spawn(lockd::server::run(listener, config, std::future::pending()));
    assert_waiting_for_redis(addr).await;
    let _redis = LateRedis::start(port, &["--maxmemory-policy", "allkeys-lru"]);
    let result = tokio::time::timeout(Duration::from_secs(15), daemon)
        .await
        .expect("stops once redis answers")
        .expect("no panic");
    let message = result.expect_err("refused").to_string();
    assert!(message.contains("maxmemory-policy"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_keeps_running_without_redis_and_never_logs_the_password() {
    let port = free_port();
    let url = format!("redis://:{PASSWORD}@127.0.0.1:{port}");
    let command = lockd_testkit::Lockd::command(env!("CARGO_BIN_EXE_lockd"))
        .env("RUST_LOG", "info")
        .args(&["--redis-url", &url]);
    let mut daemon = tokio::task::spawn_blocking(move || command.start())
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let addr = daemon.addr();

    assert_waiting_for_redis(addr).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Still answering after 3 s: it neither exited nor restarted.
    assert_waiting_for_redis(addr).await;

    let _redis = LateRedis::start(port, &["--requirepass", PASSWORD]);
    health_becomes(
        addr,
        "lockd.v1.LockService",
        ServingStatus::Serving,
        Duration::from_secs(15),
    )
    .await;
    let mut client = connect(addr).await;
    let lease = acquire(&mut client, req("r", "a")).await;
    release(&mut client, &lease).await;

    let status = tokio::task::spawn_blocking(move || (daemon.terminate(), daemon.log()))
        .await
        .unwrap();
    let (status, log) = status;
    assert!(status.success(), "{status:?}; its log:\n{log}");
    let shown = format!("redis://:***@127.0.0.1:{port}");
    assert!(
        log.contains("redis not reachable yet") && log.contains(&shown),
        "the retries name {shown}; its log:\n{log}"
    );
    assert!(
        !log.contains(PASSWORD),
        "the password leaked; its log:\n{log}"
    );
}
