//! The watchdog of `lockctl run`: a copy of lockctl that kills COMMAND's process group if lockctl dies.
//!
//! `PR_SET_PDEATHSIG` kills COMMAND itself when lockctl dies, even by
//! `kill -9`, but not what COMMAND started (a shell's pipeline, a service's
//! workers): those would go on after the lease ran out. So `run` starts this
//! watchdog first, puts COMMAND in a process group of its own, and tells the
//! watchdog the group on a pipe. The watchdog reads the pipe to its end:
//! `done` means lockctl stopped the group itself; the end of the pipe without
//! it means lockctl died (the kernel closes its end whatever killed it), and
//! the watchdog sends SIGKILL to the whole group. SIGKILL, not SIGTERM: the
//! lease is no longer renewed, so there is no time to grant.
//!
//! The watchdog is lockctl's own binary (`/proc/self/exe`, which works even
//! if the file was replaced since) with [`ARG`] as its only argument, in a
//! process group of its own so that Ctrl-C on the terminal does not reach it.

use std::io::{self, BufRead, Write as _};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};

use crate::report;

/// The first argument that makes lockctl a watchdog; not a subcommand, so
/// that it stays out of `--help`.
pub const ARG: &str = "__lockctl-watchdog";

/// What lockctl writes once it has stopped the group itself.
const DONE: &str = "done";

/// Runs the watchdog if this process was started as one; `None` otherwise.
pub fn main_if_watchdog() -> Option<u8> {
    let mut args = std::env::args_os().skip(1);
    if args.next()? != ARG || args.next().is_some() {
        return None;
    }
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
        // SAFETY: SIG_IGN installs no handler code. Only SIGKILL (or the end
        // of the pipe) ends the watchdog, so a signal aimed at lockctl's
        // session cannot disarm it before it has done its one job.
        unsafe { libc::signal(signal, libc::SIG_IGN) };
    }
    Some(watch(io::stdin().lock()))
}

/// Reads the group, then waits for `done` or the end of `pipe`.
fn watch(mut pipe: impl BufRead) -> u8 {
    let mut line = String::new();
    match pipe.read_line(&mut line) {
        // lockctl ended before it started COMMAND: nothing to guard.
        Ok(0) | Err(_) => return 0,
        Ok(_) => {}
    }
    // COMMAND could not be started: lockctl stands down before naming a group.
    if line.trim() == DONE {
        return 0;
    }
    let pgid = match line.trim().parse::<libc::pid_t>() {
        Ok(pgid) if pgid > 1 => pgid,
        _ => {
            report::error(format_args!("watchdog: not a process group: {line:?}"));
            return 1;
        }
    };
    line.clear();
    let _ = pipe.read_line(&mut line);
    if line.trim() == DONE {
        return 0;
    }
    // SAFETY: a plain syscall. The group is COMMAND's, and it cannot have been
    // reused yet: lockctl died without saying `done`, so members may still run.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    0
}

/// lockctl's side: the running watchdog and the write end of its pipe.
#[derive(Debug)]
pub struct Watchdog {
    process: Child,
    pipe: ChildStdin,
}

impl Watchdog {
    /// Starts the watchdog; it guards nothing until [`Watchdog::guard`].
    pub fn start() -> io::Result<Watchdog> {
        let mut process = Command::new("/proc/self/exe")
            .arg(ARG)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()?;
        let pipe = process
            .stdin
            .take()
            .ok_or_else(|| io::Error::other("the watchdog has no stdin"))?;
        Ok(Watchdog { process, pipe })
    }

    /// From now on, the watchdog kills process group `pgid` if lockctl dies.
    pub fn guard(&mut self, pgid: u32) -> io::Result<()> {
        writeln!(self.pipe, "{pgid}")?;
        self.pipe.flush()
    }

    /// Tells the watchdog lockctl is done with the group, and reaps it.
    pub fn stand_down(mut self) {
        // A watchdog that is already gone has nothing left to do.
        let _ = writeln!(self.pipe, "{DONE}").and_then(|()| self.pipe.flush());
        drop(self.pipe);
        if let Err(err) = self.process.wait() {
            report::warning(format_args!("waiting for the watchdog: {err}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_stands_down_on_done_and_on_an_early_end() {
        assert_eq!(watch(&b""[..]), 0);
        assert_eq!(watch(&b"done\n"[..]), 0);
        assert_eq!(watch(&b"12345\ndone\n"[..]), 0);
        assert_eq!(watch(&b"not-a-pid\n"[..]), 1);
        assert_eq!(watch(&b"1\n"[..]), 1);
    }
}
