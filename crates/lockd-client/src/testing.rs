//! Starts a throwaway `lockd --dev` daemon on a free loopback port, for
//! integration tests (feature `test-util`); also a throwaway Redis, for tests
//! of the daemon's Redis mode.
//!
//! The daemon binary is `$LOCKD_BIN` when set. Otherwise it is
//! `<target>/debug/lockd` of this workspace, which is first brought up to date
//! with `cargo build -p lockd` (once per test process), so tests never run a
//! stale daemon. Each daemon writes its output to
//! `<target>/lockd-test-logs/lockd-<port>.log`, quoted when it fails to start.
//!
//! ```no_run
//! # async fn demo() -> lockd_client::Result<()> {
//! let daemon = lockd_client::testing::DevDaemon::start();
//! let client = daemon.client().await;
//! let guard = client.lock("r").acquire().await?;
//! # Ok(()) }
//! ```

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::Client;

/// How long a daemon may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A `lockd --dev` child process, killed when dropped.
#[derive(Debug)]
pub struct DevDaemon {
    child: Option<Child>,
    addr: SocketAddr,
    log: PathBuf,
}

impl DevDaemon {
    /// Starts `lockd --dev --listen 127.0.0.1:<free port>` and waits until it
    /// accepts connections. Panics, quoting the daemon's log, if it cannot.
    pub fn start() -> DevDaemon {
        DevDaemon::start_with_args(&[])
    }

    /// Like [`DevDaemon::start`], with more daemon flags appended.
    pub fn start_with_args(args: &[&str]) -> DevDaemon {
        DevDaemon::launch(&["--dev"], args)
    }

    /// Starts a daemon that keeps its state in the Redis at `redis_url`
    /// (not `--dev`), with more daemon flags appended.
    pub fn start_with_redis(redis_url: &str, args: &[&str]) -> DevDaemon {
        DevDaemon::launch(&["--redis-url", redis_url], args)
    }

    fn launch(store: &[&str], args: &[&str]) -> DevDaemon {
        let bin = lockd_bin();
        let args: Vec<&str> = store.iter().chain(args).copied().collect();
        let mut last_failure = String::new();
        // A free port can be taken by someone else between our probe and the
        // daemon's bind: try a few.
        for _ in 0..3 {
            match try_start(bin, &args) {
                Ok(daemon) => return daemon,
                Err(failure) => last_failure = failure,
            }
        }
        panic!("lockd did not start: {last_failure}");
    }

    /// The address the daemon listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:<port>`, as `lockctl --endpoint` and [`Client::connect`] take it.
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// A connected client with a fresh client_id.
    pub async fn client(&self) -> Client {
        let client = Client::connect(self.endpoint())
            .await
            .unwrap_or_else(|e| panic!("connecting to the dev daemon: {e}"));
        client.with_client_id(unique_client_id("test"))
    }

    /// The daemon's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the daemon now (it is killed on drop anyway).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for DevDaemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A throwaway `redis-server` on a free loopback port, without persistence;
/// killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
}

impl RedisServer {
    /// Starts `redis-server`, or returns `None` when it is not installed.
    /// Panics if it is installed but does not come up.
    pub fn start() -> Option<RedisServer> {
        let port = free_port().expect("a free port");
        let child = match Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => panic!("running redis-server: {e}"),
        };
        let mut redis = RedisServer {
            child: Some(child),
            port,
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            let exited = redis
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                panic!("redis-server exited with {status} before listening on {addr}");
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(redis)
    }

    /// `redis://127.0.0.1:<port>`, for `lockd --redis-url`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server now (it is killed on drop anyway).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `<prefix>-<pid>-<counter>`: distinct across tests and test processes.
pub fn unique_client_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

fn try_start(bin: &Path, args: &[&str]) -> Result<DevDaemon, String> {
    let port = free_port().map_err(|e| format!("finding a free port: {e}"))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let log_dir = target_dir().join("lockd-test-logs");
    std::fs::create_dir_all(&log_dir).map_err(|e| format!("creating {log_dir:?}: {e}"))?;
    let log = log_dir.join(format!("lockd-{port}.log"));
    let out = File::create(&log).map_err(|e| format!("creating {log:?}: {e}"))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let child = Command::new(bin)
        .args(["--listen", &addr.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("running {bin:?}: {e}"))?;
    let mut daemon = DevDaemon {
        child: Some(child),
        addr,
        log,
    };
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(daemon);
        }
        let exited = daemon
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten());
        if let Some(status) = exited {
            return Err(format!(
                "{bin:?} exited with {status} before listening on {addr}; its log:\n{}",
                daemon.log()
            ));
        }
        if Instant::now() > deadline {
            let log = daemon.log();
            daemon.stop();
            return Err(format!(
                "{bin:?} did not listen on {addr} within {START_TIMEOUT:?}; its log:\n{log}"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The daemon binary to test against; see the module docs.
pub fn lockd_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("LOCKD_BIN") {
            return PathBuf::from(bin);
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(&cargo)
            .args(["build", "--quiet", "-p", "lockd", "--bin", "lockd"])
            .current_dir(workspace_root())
            .status()
            .unwrap_or_else(|e| panic!("running {cargo:?} build -p lockd: {e}"));
        assert!(
            status.success(),
            "`cargo build -p lockd` failed ({status}); set LOCKD_BIN to test another daemon"
        );
        let bin = target_dir().join("debug").join("lockd");
        assert!(
            bin.exists(),
            "{bin:?} is missing after cargo build -p lockd"
        );
        bin
    })
}

/// The workspace this crate is built in.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/lockd-client sits two levels below the workspace root")
        .to_path_buf()
}

/// `$CARGO_TARGET_DIR`, else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        None => workspace_root().join("target"),
    }
}
