//! One redis-server child: paused, killed, restarted, or with its clock offset.
//!
//! Each server listens on a free loopback port and keeps its data in a
//! scratch folder of its own; libfaketime offsets the clock.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::ids::try_free_port;
use crate::paths::{TempDir, program};
use crate::process::ChildProcess;
use crate::wait;

/// How long a redis-server may take to answer PING after it is started.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Lines of the log quoted when a server does not come up.
const LOG_LINES: usize = 20;

/// A redis-server child process, killed on drop. Its data folder
/// ([`RedisServer::dir`]) is its own, so a restart finds exactly what this
/// server persisted and nothing another server wrote.
#[derive(Debug)]
pub struct RedisServer {
    /// `None` once killed and not restarted.
    process: Option<ChildProcess>,
    port: u16,
    /// What error messages call this server ("redis-server", "sentinel", ...).
    name: String,
    /// The full argument list, kept to restart the server as it was.
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// Holds `data/` (the server's `dir`) and the log, which outlives
    /// [`RedisServer::restart_empty`].
    scratch: TempDir,
}

impl RedisServer {
    /// A server without persistence. Panics if it does not come up.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// A server with more configuration flags (`--name value` pairs, applied
    /// after the defaults, so they override them).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        RedisServer::try_start_with(extra).unwrap_or_else(|| {
            panic!("redis-server is not installed (apt-get install redis-server)")
        })
    }

    /// [`RedisServer::start`], or `None` when redis-server is not installed,
    /// for tests that can skip what needs it.
    pub fn try_start() -> Option<RedisServer> {
        RedisServer::try_start_with(&[])
    }

    /// A server whose wall clock (`TIME`, key expiry) runs `offset_secs`
    /// seconds away from the real one (negative: behind), through
    /// libfaketime. Its monotonic clock is left alone so that Redis' own
    /// timers keep working.
    pub fn start_with_clock_offset(offset_secs: i64, extra: &[&str]) -> RedisServer {
        let env = vec![
            ("LD_PRELOAD".to_string(), faketime_preload()),
            ("FAKETIME".to_string(), format!("{offset_secs:+}")),
            ("DONT_FAKE_MONOTONIC".to_string(), "1".to_string()),
        ];
        RedisServer::launch("redis-server (faketime)", env, |port, dir| {
            default_args(port, dir, extra)
        })
        .unwrap_or_else(|| panic!("redis-server is not installed (apt-get install redis-server)"))
    }

    fn try_start_with(extra: &[&str]) -> Option<RedisServer> {
        RedisServer::launch("redis-server", Vec::new(), |port, dir| {
            default_args(port, dir, extra)
        })
    }

    /// Starts a server whose arguments `args(port, data_dir)` gives, on a
    /// free port; on a port someone else took meanwhile, tries another.
    /// `None` if redis-server is not installed; panics if it does not come up.
    pub(crate) fn launch(
        name: &str,
        env: Vec<(String, String)>,
        args: impl Fn(u16, &Path) -> Vec<String>,
    ) -> Option<RedisServer> {
        let mut failure = String::new();
        for _ in 0..3 {
            let port = try_free_port().unwrap_or_else(|e| panic!("finding a port for {name}: {e}"));
            let scratch = TempDir::new(&format!("redis-{port}"))
                .unwrap_or_else(|e| panic!("creating a scratch folder for {name}: {e}"));
            let data = scratch.path().join("data");
            std::fs::create_dir_all(&data)
                .unwrap_or_else(|e| panic!("creating {}: {e}", data.display()));
            let mut server = RedisServer {
                process: None,
                port,
                name: name.to_string(),
                args: args(port, &data),
                env: env.clone(),
                scratch,
            };
            match server.spawn() {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
                Err(e) => panic!("running {name}: {e}"),
                Ok(()) => {}
            }
            match server.wait_ready() {
                Ok(()) => return Some(server),
                // Most likely the port was taken: try another one.
                Err(exited) if exited => failure = server.log_tail(),
                Err(_) => panic!(
                    "{name} on port {port} did not answer PING within {START_TIMEOUT:?}; \
                     its log:\n{}",
                    server.log_tail()
                ),
            }
        }
        panic!("{name} exited before answering PING, three times; its last log:\n{failure}")
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let mut cmd = Command::new(program("redis-server"));
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(self.dir());
        let log = self.scratch.path().join("redis.log");
        self.process = Some(ChildProcess::spawn(&self.name, cmd, &log)?);
        Ok(())
    }

    /// Polls PING until PONG. `Err(true)` if the server exited meanwhile,
    /// `Err(false)` if it is still running but silent.
    fn wait_ready(&mut self) -> Result<(), bool> {
        let addr = self.addr();
        let mut exited = false;
        let ready = wait::until(START_TIMEOUT, || {
            let process = self.process.as_mut()?;
            if process.exited().is_some() {
                exited = true;
                return Some(false);
            }
            // A server started with --requirepass answers NOAUTH: it is up.
            let answered = probe(addr).and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            match answered {
                Ok(_) => Some(true),
                Err(err) if err.code() == Some("NOAUTH") => Some(true),
                Err(_) => None,
            }
        });
        match ready {
            Some(true) => Ok(()),
            _ => Err(exited),
        }
    }

    fn log_tail(&self) -> String {
        self.process
            .as_ref()
            .map(|p| p.log_tail(LOG_LINES))
            .unwrap_or_default()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:<port>`, for `lockd --redis-url`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's `dir`: its RDB, AOF and (for cluster nodes) nodes.conf.
    pub fn dir(&self) -> PathBuf {
        self.scratch.path().join("data")
    }

    /// The pid while the server runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ChildProcess::pid)
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing
    /// answers, as with a long GC pause or a partitioned host.
    pub fn pause(&self) {
        if let Some(p) = &self.process {
            p.pause();
        }
    }

    /// SIGCONT after [`RedisServer::pause`].
    pub fn resume(&self) {
        if let Some(p) = &self.process {
            p.resume();
        }
    }

    /// kill -9: no shutdown code runs, nothing more is saved.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// Kills the server if it runs and starts it again on the same port with
    /// the same flags and data folder: it comes back with whatever it had
    /// persisted (nothing, unless started with `--appendonly yes` or a save
    /// point). Panics if it does not come up.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn()
            .unwrap_or_else(|e| panic!("restarting {} on port {}: {e}", self.name, self.port));
        if self.wait_ready().is_err() {
            panic!(
                "{} did not come back on port {} within {START_TIMEOUT:?}; its log:\n{}",
                self.name,
                self.port,
                self.log_tail()
            );
        }
    }

    /// [`RedisServer::restart`] with an emptied data folder: the server comes
    /// back with no data, as a replacement machine would.
    pub fn restart_empty(&mut self) {
        self.kill();
        let dir = self.dir();
        std::fs::remove_dir_all(&dir)
            .and_then(|()| std::fs::create_dir_all(&dir))
            .unwrap_or_else(|e| panic!("emptying {}: {e}", dir.display()));
        self.restart();
    }

    /// A direct connection, for looking at keys.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .unwrap_or_else(|e| panic!("connecting to {} at {}: {e}", self.name, self.addr()))
    }
}

/// `--port`, loopback only, no persistence, replication without the 5 s
/// diskless-sync delay, then `extra`.
pub(crate) fn default_args(port: u16, dir: &Path, extra: &[&str]) -> Vec<String> {
    let port = port.to_string();
    let dir = dir.display().to_string();
    let defaults = [
        "--port",
        &port,
        "--bind",
        "127.0.0.1",
        "--dir",
        &dir,
        "--save",
        "",
        "--appendonly",
        "no",
        "--repl-diskless-sync-delay",
        "0",
    ];
    defaults
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
}

/// A short-lived connection for readiness and topology checks: it gives up
/// within a second instead of hanging on a paused or dead node.
pub(crate) fn probe(addr: SocketAddr) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(format!("redis://{addr}"))?;
    let conn = client.get_connection_with_timeout(Duration::from_millis(500))?;
    conn.set_read_timeout(Some(Duration::from_secs(1)))?;
    conn.set_write_timeout(Some(Duration::from_secs(1)))?;
    Ok(conn)
}

/// The value of `field` in `INFO <section>` of the server at `addr`.
pub(crate) fn info_field(addr: SocketAddr, section: &str, field: &str) -> Option<String> {
    let text: String = probe(addr)
        .and_then(|mut c| redis::cmd("INFO").arg(section).query(&mut c))
        .ok()?;
    text.lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(k, _)| *k == field)
        .map(|(_, v)| v.trim().to_string())
}

/// libfaketime and the glibc to preload after it, from the multiarch folders
/// Debian installs them in.
/// The `LD_PRELOAD` value that runs a program under libfaketime. Debian's
/// redis-server hangs at start under libfaketime alone: its jemalloc and
/// libfaketime recurse into each other's initialisation. Preloading glibc
/// after libfaketime makes it use glibc's malloc. Panics if libfaketime is
/// not installed.
pub fn faketime_preload() -> String {
    let (faketime, libc) = faketime_libraries();
    format!("{}:{}", faketime.display(), libc.display())
}

fn faketime_libraries() -> (PathBuf, PathBuf) {
    let triple = format!("{}-linux-gnu", std::env::consts::ARCH);
    let find = |candidates: &[String]| candidates.iter().map(PathBuf::from).find(|p| p.is_file());
    let faketime = find(&[
        format!("/usr/lib/{triple}/faketime/libfaketime.so.1"),
        "/usr/lib/faketime/libfaketime.so.1".to_string(),
    ])
    .unwrap_or_else(|| panic!("libfaketime.so.1 is not installed (apt-get install faketime)"));
    let libc = find(&[
        format!("/lib/{triple}/libc.so.6"),
        format!("/usr/lib/{triple}/libc.so.6"),
    ])
    .unwrap_or_else(|| panic!("glibc's libc.so.6 was not found under /lib/{triple}"));
    (faketime, libc)
}

#[cfg(test)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use super::*;

    fn set(server: &RedisServer, key: &str, value: &str) {
        let () = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .query(&mut server.connection())
            .unwrap();
    }

    fn get(server: &RedisServer, key: &str) -> Option<String> {
        redis::cmd("GET")
            .arg(key)
            .query(&mut server.connection())
            .unwrap()
    }

    #[test]
    fn restart_keeps_what_was_persisted_and_restart_empty_does_not() {
        let mut server =
            RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
        let port = server.port();
        set(&server, "k", "v");
        server.restart();
        assert_eq!(server.port(), port);
        assert_eq!(get(&server, "k").as_deref(), Some("v"));
        server.restart_empty();
        assert_eq!(get(&server, "k"), None);
    }

    #[test]
    fn kill_and_pause_make_the_server_unreachable() {
        let mut server = RedisServer::start();
        server.pause();
        let ping =
            probe(server.addr()).and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
        assert!(ping.is_err(), "a paused server answered PING");
        server.resume();
        assert_eq!(get(&server, "missing"), None);
        server.kill();
        assert!(
            probe(server.addr()).is_err(),
            "a killed server accepts connections"
        );
    }

    #[test]
    fn clock_offset_server_reads_thirty_seconds_behind() {
        let server = RedisServer::start_with_clock_offset(-30, &[]);
        let (secs, _micros): (u64, u64) =
            redis::cmd("TIME").query(&mut server.connection()).unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let behind = now as i64 - secs as i64;
        assert!(
            (28..=32).contains(&behind),
            "TIME is {behind} s behind, not ~30 s"
        );
    }
}
