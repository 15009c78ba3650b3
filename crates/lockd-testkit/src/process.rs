//! A child process logging to a file, killed on drop and with its parent.
//!
//! The kernel kills every child when the process that started it dies
//! (`PR_SET_PDEATHSIG`), so an aborted test run leaves no servers behind.
//! Children are forked from one long-lived thread because
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child ends:
//! forking from a test's own thread would kill a server shared through a
//! static as soon as the first test using it returns.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

use crate::wait;

/// A running (or ended, not yet dropped) child process.
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    child: Child,
    log: PathBuf,
    /// Set once the child is reaped; from then on its pid may belong to
    /// someone else and must not be signalled.
    exit: Option<ExitStatus>,
}

impl ChildProcess {
    /// Starts `cmd` with no stdin and its stdout and stderr appended to `log`.
    /// `name` is what error messages call it.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> io::Result<ChildProcess> {
        let out = OpenOptions::new().create(true).append(true).open(log)?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: prctl and getppid are async-signal-safe and touch no memory
        // of the parent.
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                // The parent may have died before prctl took effect.
                if libc::getppid() != parent {
                    return Err(io::Error::other("parent exited during spawn"));
                }
                Ok(())
            });
        }
        let child = spawn_from_spawner_thread(cmd)?;
        Ok(ChildProcess {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
            exit: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the child has written so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of the log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The exit status, if the child has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// Sends `signal` unless the child has already been reaped.
    pub fn signal(&self, signal: libc::c_int) {
        if self.exit.is_none() {
            // SAFETY: a plain syscall on our own child, which is not reaped,
            // so the pid is still its own.
            unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        }
    }

    /// SIGSTOP: the child keeps its sockets open and answers nothing.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT after [`ChildProcess::pause`].
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// kill -9, and waits for the child to be gone; no shutdown code runs.
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(status) = self.exited() {
            return status;
        }
        self.signal(libc::SIGKILL);
        self.reap()
    }

    /// SIGTERM, and waits (without limit) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.reap()
    }

    /// The exit status once the child ends, or `None` if it is still running
    /// after `within`.
    pub fn wait_timeout(&mut self, within: Duration) -> Option<ExitStatus> {
        wait::until(within, || self.exited())
    }

    fn reap(&mut self) -> ExitStatus {
        let status = self
            .child
            .wait()
            .unwrap_or_else(|e| panic!("waiting for {} to exit: {e}", self.name));
        self.exit = Some(status);
        status
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if self.exited().is_none() {
            // Reaped here, so that a scratch folder removed right after is
            // no longer written to.
            self.signal(libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` from a thread that lives as long as this process; see the
/// module docs for why.
fn spawn_from_spawner_thread(cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("lockd-testkit-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in incoming {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .unwrap_or_else(|e| panic!("starting the lockd-testkit spawner thread: {e}"));
        requests
    });
    let gone = || io::Error::other("the lockd-testkit spawner thread is gone");
    let (reply, result) = mpsc::channel();
    spawner.send((cmd, reply)).map_err(|_| gone())?;
    result.recv().map_err(|_| gone())?
}
