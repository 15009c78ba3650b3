//! Child processes (etcd, lockd) on free loopback ports, logging into the
//! deployment's scratch folder; built on lockd-testkit's processes.
//!
//! Every child is stopped when its [`Proc`] is dropped, so an error or a signal
//! that unwinds the command still ends them; the kernel also kills them if this
//! process dies without unwinding (lockd-testkit sets `PR_SET_PDEATHSIG`).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use lockd_testkit::ChildProcess;

/// A running child process whose output goes to a log file.
pub struct Proc {
    pub name: String,
    process: ChildProcess,
}

impl Proc {
    /// Starts `program` with `args`, logging to `<dir>/<name>.log`.
    pub fn spawn(name: &str, program: &Path, args: &[String], dir: &Path) -> Result<Proc> {
        let log = dir.join(format!("{name}.log"));
        let mut cmd = Command::new(program);
        cmd.args(args).current_dir(dir);
        let process = ChildProcess::spawn(name, cmd, &log)
            .with_context(|| format!("starting {} ({})", name, program.display()))?;
        tracing::debug!(name, pid = process.pid(), "started");
        Ok(Proc {
            name: name.to_string(),
            process,
        })
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Fails with the exit status and log tail if the process has ended.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.process.exited() {
            bail!(
                "{} exited ({status}); last log lines:\n{}",
                self.name,
                self.process.log_tail(15)
            );
        }
        Ok(())
    }

    /// kill -9, and waits until it is gone.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// SIGTERM, then SIGKILL if it has not ended within `grace`.
    pub async fn stop(&mut self, grace: Duration) {
        if self.process.exited().is_some() {
            return;
        }
        self.process.signal(libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.process.exited().is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tracing::warn!(name = %self.name, "did not stop within {grace:?} of SIGTERM; killing");
        self.process.kill();
    }
}

/// A loopback TCP port that was free a moment ago and is not handed out twice
/// in this run.
pub fn free_port() -> Result<u16> {
    lockd_testkit::try_free_port().context("finding a free loopback port")
}

/// Polls `ready` every 50 ms until it succeeds, the process exits, or `limit` passes.
pub async fn wait_ready<F, Fut>(proc_: &mut Proc, limit: Duration, mut ready: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let deadline = Instant::now() + limit;
    let mut last_err = None;
    while Instant::now() < deadline {
        proc_.check_running()?;
        match tokio::time::timeout(Duration::from_secs(2), ready()).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => last_err = Some(e),
            Err(_) => last_err = Some(anyhow::anyhow!("readiness check timed out")),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!(
        "{} not ready after {limit:?} (last error: {}); last log lines:\n{}",
        proc_.name,
        last_err.map(|e| format!("{e:#}")).unwrap_or_default(),
        proc_.process.log_tail(15)
    )
}
