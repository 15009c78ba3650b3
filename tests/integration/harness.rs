//! Test harness: real redis-server processes on free loopback ports, real
//! daemons (in-process on 127.0.0.1:0, or as child processes that can be
//! killed), and real gRPC clients. The processes come from `lockd-testkit`;
//! this module adds what needs the lockd crate itself.

use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use clap::Parser;
use lockd::config::Config;
use lockd::pb;
use lockd::pb::lock_service_client::LockServiceClient;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

pub type Client = LockServiceClient<Channel>;

pub use lockd_testkit::{free_port, unique};

/// A redis-server child process, killed on drop. Derefs to
/// [`lockd_testkit::RedisServer`] for kill, restart and the rest.
pub struct RedisServer {
    server: lockd_testkit::RedisServer,
    pub port: u16,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// A server with extra configuration flags.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let server = lockd_testkit::RedisServer::start_with(extra);
        RedisServer {
            port: server.port(),
            server,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Freezes the server: connections stay open but nothing answers.
    pub fn pause(&self) {
        self.server.pause();
    }

    pub fn resume(&self) {
        self.server.resume();
    }

    /// A direct connection, for looking at keys.
    pub fn connection(&self) -> redis::Connection {
        self.server.connection()
    }
}

impl Deref for RedisServer {
    type Target = lockd_testkit::RedisServer;

    fn deref(&self) -> &Self::Target {
        &self.server
    }
}

impl DerefMut for RedisServer {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.server
    }
}

/// A daemon running inside the test process.
pub struct Daemon {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), lockd::error::DaemonError>>>,
}

impl Daemon {
    /// Starts a daemon with these flags (besides --listen).
    pub async fn start(args: &[&str]) -> Daemon {
        log_to_test_output();
        let config =
            Config::try_parse_from(["lockd"].iter().chain(args)).expect("valid test flags");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(lockd::server::run(listener, config, async move {
            let _ = stopped.await;
        }));
        let mut daemon = Daemon {
            addr,
            stop: Some(stop),
            task: Some(task),
        };
        // Reaching Redis, its checks and the notification probe can take
        // seconds on a loaded machine, and several tries when another test's
        // Cluster or Sentinel group starves a 250 ms --redis-timeout.
        let started = eventually(Duration::from_secs(60), || async {
            serving(addr).await || daemon.task.as_ref().is_some_and(JoinHandle::is_finished)
        })
        .await;
        if let Some(task) = daemon.task.take_if(|t| t.is_finished()) {
            panic!("daemon stopped before serving: {:?}", task.await);
        }
        assert!(
            started,
            "daemon did not start serving within 60 s; its warnings are above"
        );
        daemon
    }

    pub async fn client(&self) -> Client {
        connect(self.addr).await
    }

    /// Sends the shutdown signal and waits for the daemon to return.
    pub async fn shutdown(mut self) -> Result<(), lockd::error::DaemonError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().expect("running");
        tokio::time::timeout(Duration::from_secs(15), task)
            .await
            .expect("daemon stops within 15 s")
            .expect("daemon task does not panic")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Sends in-process daemons' warnings to the output of the test that
/// started them, which the test runner shows when that test fails.
fn log_to_test_output() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_ansi(false)
        .with_test_writer()
        .try_init();
}

/// A daemon as a child process, for tests that kill it.
pub struct DaemonProcess {
    daemon: lockd_testkit::Lockd,
    pub addr: SocketAddr,
}

impl DaemonProcess {
    pub async fn spawn(args: &[&str]) -> DaemonProcess {
        let command = lockd_testkit::Lockd::command(env!("CARGO_BIN_EXE_lockd"))
            .env("RUST_LOG", "warn")
            .args(args);
        // Waiting for the port blocks; off the runtime, in-process daemons
        // of the same test keep running meanwhile.
        let daemon = tokio::task::spawn_blocking(move || command.start())
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        let addr = daemon.addr();
        // lockd listens before it has reached Redis: ready means SERVING.
        assert!(
            eventually(Duration::from_secs(30), || serving(addr)).await,
            "daemon process did not start serving within 30 s; its log:\n{}",
            daemon.log()
        );
        DaemonProcess { addr, daemon }
    }

    pub async fn client(&self) -> Client {
        connect(self.addr).await
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill(&mut self) {
        self.daemon.kill();
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.daemon.terminate()
    }
}

/// Whether the daemon's health service says SERVING.
pub async fn serving(addr: SocketAddr) -> bool {
    use tonic_health::pb::health_client::HealthClient;
    let Ok(channel) = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
    else {
        return false;
    };
    HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .is_ok_and(|r| {
            r.into_inner().status
                == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        })
}

pub async fn connect(addr: SocketAddr) -> Client {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect to lockd");
    LockServiceClient::new(channel)
}

/// Where the daemons of a test keep lock state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Dev,
    Redis,
}

/// One test's world: a Redis (for the Redis backend) and its daemons.
pub struct Env {
    pub redis: Option<RedisServer>,
    pub prefix: String,
    pub daemons: Vec<Daemon>,
}

impl Env {
    /// `replicas` daemons on one store; the dev backend has exactly one.
    pub async fn new(backend: Backend, replicas: usize) -> Env {
        Env::with_args(backend, replicas, &[]).await
    }

    pub async fn with_args(backend: Backend, replicas: usize, extra: &[&str]) -> Env {
        let redis = (backend == Backend::Redis).then(RedisServer::start);
        let prefix = unique("t");
        let mut env = Env {
            redis,
            prefix,
            daemons: Vec::new(),
        };
        for _ in 0..replicas {
            let daemon = env.start_daemon(extra).await;
            env.daemons.push(daemon);
        }
        env
    }

    pub fn daemon_args(&self) -> Vec<String> {
        match &self.redis {
            Some(redis) => vec![
                "--redis-url".into(),
                redis.url(),
                "--key-prefix".into(),
                self.prefix.clone(),
            ],
            None => vec!["--dev".into()],
        }
    }

    pub async fn start_daemon(&self, extra: &[&str]) -> Daemon {
        let mut args = self.daemon_args();
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Daemon::start(&args).await
    }

    /// A client of daemon `i`.
    pub async fn client(&self, i: usize) -> Client {
        self.daemons[i].client().await
    }
}

/// An acquire request.
pub fn req(resource: &str, client: &str) -> pb::AcquireRequest {
    pb::AcquireRequest {
        resource: resource.to_owned(),
        client_id: client.to_owned(),
        ttl_ms: 30_000,
        ..Default::default()
    }
}

pub trait RequestExt {
    fn mode(self, mode: pb::LockMode) -> Self;
    fn ttl(self, ms: u64) -> Self;
    fn wait(self, ms: u64) -> Self;
    fn max_renewals(self, n: u32) -> Self;
}

impl RequestExt for pb::AcquireRequest {
    fn mode(mut self, mode: pb::LockMode) -> Self {
        self.mode = mode as i32;
        self
    }
    fn ttl(mut self, ms: u64) -> Self {
        self.ttl_ms = ms;
        self
    }
    fn wait(mut self, ms: u64) -> Self {
        self.wait_timeout_ms = Some(ms);
        self
    }
    fn max_renewals(mut self, n: u32) -> Self {
        self.max_renewals = n;
        self
    }
}

/// Acquires or panics with the status.
pub async fn acquire(client: &mut Client, request: pb::AcquireRequest) -> pb::Lease {
    client
        .acquire(request)
        .await
        .expect("acquire")
        .into_inner()
        .lease
        .expect("lease")
}

pub async fn release(client: &mut Client, lease: &pb::Lease) {
    client
        .release(pb::ReleaseRequest {
            lock_id: lease.lock_id.clone(),
            client_id: lease.client_id.clone(),
        })
        .await
        .expect("release");
}

fn code<T>(result: Result<T, tonic::Status>) -> tonic::Code {
    result.map_or_else(|status| status.code(), |_| tonic::Code::Ok)
}

/// The status code of a Release (`Ok` when it succeeds).
pub async fn release_code(client: &mut Client, lock_id: &str, client_id: &str) -> tonic::Code {
    code(
        client
            .release(pb::ReleaseRequest {
                lock_id: lock_id.into(),
                client_id: client_id.into(),
            })
            .await,
    )
}

/// The status code of a Renew that keeps the lease's TTL.
pub async fn renew_code(client: &mut Client, lock_id: &str, client_id: &str) -> tonic::Code {
    code(
        client
            .renew(pb::RenewRequest {
                lock_id: lock_id.into(),
                client_id: client_id.into(),
                ttl_ms: 0,
            })
            .await,
    )
}

/// The status code of a GetLock.
pub async fn get_code(client: &mut Client, lock_id: &str) -> tonic::Code {
    code(
        client
            .get_lock(pb::GetLockRequest {
                lock_id: lock_id.into(),
            })
            .await,
    )
}

/// A WaitQueue call in progress.
pub struct Waiting {
    pub stream: tonic::Streaming<pb::WaitEvent>,
}

impl Waiting {
    pub async fn start(client: &mut Client, request: pb::AcquireRequest) -> Waiting {
        let stream = client
            .wait_queue(request)
            .await
            .expect("wait_queue")
            .into_inner();
        Waiting { stream }
    }

    /// The next event, within 10 s.
    pub async fn next(&mut self) -> Result<pb::wait_event::Event, tonic::Status> {
        let message = tokio::time::timeout(Duration::from_secs(10), self.stream.message())
            .await
            .expect("an event within 10 s")?;
        Ok(message
            .and_then(|m| m.event)
            .expect("an event, not the end"))
    }

    /// The next Queued position, or panics.
    pub async fn queued(&mut self) -> pb::Queued {
        match self.next().await {
            Ok(pb::wait_event::Event::Queued(q)) => q,
            other => panic!("expected Queued, got {other:?}"),
        }
    }

    /// Skips position updates until the grant.
    pub async fn granted(&mut self) -> pb::Lease {
        loop {
            match self.next().await {
                Ok(pb::wait_event::Event::Queued(_)) => continue,
                Ok(pb::wait_event::Event::Granted(g)) => return g.lease.expect("lease"),
                Err(status) => panic!("expected Granted, got {status:?}"),
            }
        }
    }

    /// Whether the stream ended after the grant.
    pub async fn ended(&mut self) -> bool {
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.stream.message()).await,
            Ok(Ok(None))
        )
    }
}

/// Polls `check` until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Runs a test body against both backends: `mod name { dev, redis }`.
#[macro_export]
macro_rules! both_backends {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn dev() {
                super::$body($crate::harness::Backend::Dev).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                super::$body($crate::harness::Backend::Redis).await;
            }
        }
    };
}

/// What `lockd::server::run` answers for these flags when it refuses to
/// serve; panics if it serves instead (within 10 s).
pub async fn refusal(args: &[&str]) -> String {
    let config = Config::try_parse_from(["lockd"].iter().chain(args)).expect("flags parse");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let served = tokio::time::timeout(
        Duration::from_secs(10),
        lockd::server::run(listener, config, std::future::pending()),
    )
    .await
    .expect("the daemon served instead of refusing");
    served.expect_err("refused").to_string()
}
