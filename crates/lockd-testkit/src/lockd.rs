//! A lockd daemon as a child process, for tests that kill it or run it as users do.
//!
//! The binary is `$LOCKD_BIN` when set. Otherwise it is `<target>/debug/lockd`
//! of this workspace, first brought up to date with `cargo build -p lockd`
//! (once per test process), so tests never run a stale daemon. Tests of the
//! lockd package itself pass `env!("CARGO_BIN_EXE_lockd")` to
//! [`Lockd::command`] instead. Each daemon's output goes to
//! `<target>/lockd-test-logs/lockd-<port>.log`, quoted when it fails to start.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::OnceLock;
use std::time::Duration;

use crate::ids::try_free_port;
use crate::paths::{target_dir, workspace_root};
use crate::process::ChildProcess;
use crate::wait;

/// How long a daemon may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A lockd child process, killed on drop.
#[derive(Debug)]
pub struct Lockd {
    process: ChildProcess,
    addr: SocketAddr,
}

/// How to start a [`Lockd`]: which binary, which flags, which environment.
#[derive(Debug, Clone)]
pub struct LockdCommand {
    bin: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Lockd {
    /// `lockd --listen 127.0.0.1:<free port> ARGS` with [`lockd_bin`], once
    /// it accepts connections. Panics, quoting the daemon's log, if it
    /// cannot start.
    pub fn start(args: &[&str]) -> Lockd {
        Lockd::command(lockd_bin()).args(args).start()
    }

    /// A daemon of another binary, or with environment variables.
    pub fn command(bin: impl Into<PathBuf>) -> LockdCommand {
        LockdCommand {
            bin: bin.into(),
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// The address the daemon listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:<port>`, as `lockctl --endpoint` and clients take it.
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// The daemon's output so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// kill -9: no shutdown code runs.
    pub fn kill(&mut self) -> ExitStatus {
        self.process.kill()
    }

    /// SIGTERM, and waits for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.process.terminate()
    }

    /// Freezes the daemon (SIGSTOP), as a long pause of its host would.
    pub fn pause(&self) {
        self.process.pause();
    }

    /// SIGCONT after [`Lockd::pause`].
    pub fn resume(&self) {
        self.process.resume();
    }
}

impl LockdCommand {
    /// Appends daemon flags (after `--listen`).
    pub fn args(mut self, args: &[&str]) -> LockdCommand {
        self.args.extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// Sets an environment variable of the daemon.
    pub fn env(mut self, key: &str, value: &str) -> LockdCommand {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Starts the daemon and waits until it accepts connections. A free port
    /// can be taken by someone else between our probe and the daemon's bind,
    /// so a daemon that exits early is retried on another port, twice.
    pub fn start(&self) -> Lockd {
        let mut failure = String::new();
        for _ in 0..3 {
            match self.try_start() {
                Ok(daemon) => return daemon,
                Err(e) => failure = e,
            }
        }
        panic!("lockd did not start: {failure}");
    }

    fn try_start(&self) -> Result<Lockd, String> {
        let bin = &self.bin;
        let port = try_free_port().map_err(|e| format!("finding a free port: {e}"))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log_dir = target_dir().join("lockd-test-logs");
        std::fs::create_dir_all(&log_dir)
            .map_err(|e| format!("creating {}: {e}", log_dir.display()))?;
        let log = log_dir.join(format!("lockd-{port}.log"));
        // A log left by an earlier run on the same port would be quoted as ours.
        let _ = std::fs::remove_file(&log);
        let mut cmd = Command::new(bin);
        cmd.args(["--listen", &addr.to_string()])
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        let mut process = ChildProcess::spawn("lockd", cmd, &log)
            .map_err(|e| format!("running {}: {e}", bin.display()))?;
        let listening = wait::until(START_TIMEOUT, || {
            if process.exited().is_some() {
                return Some(false);
            }
            TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                .is_ok()
                .then_some(true)
        });
        match listening {
            Some(true) => Ok(Lockd { process, addr }),
            Some(false) => Err(format!(
                "{} exited with {} before listening on {addr}; its log:\n{}",
                bin.display(),
                process.kill(),
                process.log()
            )),
            None => {
                process.kill();
                Err(format!(
                    "{} did not listen on {addr} within {START_TIMEOUT:?}; its log:\n{}",
                    bin.display(),
                    process.log()
                ))
            }
        }
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
            "{} is missing after cargo build -p lockd",
            bin.display()
        );
        bin
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dev_daemon_listens_and_dies_on_sigterm() {
        let mut daemon = Lockd::start(&["--dev"]);
        assert!(TcpStream::connect(daemon.addr()).is_ok());
        assert!(daemon.terminate().success(), "{}", daemon.log());
    }

    #[test]
    fn a_daemon_that_cannot_start_is_reported_with_its_log() {
        let failed = Lockd::command(lockd_bin())
            .args(&["--no-such-flag"])
            .try_start()
            .err()
            .unwrap();
        assert!(failed.contains("no-such-flag"), "{failed}");
    }
}
