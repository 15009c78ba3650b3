//! `lockctl run`: wait for a lock, run a command while holding it, release it.
//!
//! Like `flock`, `consul lock` and `etcdctl lock`: the lease is renewed in the
//! background while COMMAND runs, COMMAND learns its fencing token from the
//! environment, and lockctl exits with COMMAND's status. Unlike a local
//! `flock`, the lease can be lost (the daemon unreachable until it expired,
//! or released by someone else): COMMAND is then stopped, since it no longer
//! holds the lock.
//!
//! COMMAND must never outlive the lease, so it runs in a process group of
//! its own, which lockctl kills when it is done with the lock (COMMAND
//! exited, the lease was lost, a signal ended lockctl), and which the kernel
//! and the watchdog (see `watchdog`) kill if lockctl itself dies.

use std::io::{self, IsTerminal, Write as _};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use futures::StreamExt;
use lockd_client::{Code, LockGuard, QueueEvent};
use tokio::process::{Child, Command};
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::cli::RunArgs;
use crate::cmd::{Ctx, lock_request};
use crate::exit::{
    CANNOT_EXECUTE, COMMAND_NOT_FOUND, Failure, INTERRUPTED, LEASE_LOST, UNEXPECTED,
};
use crate::report;
use crate::watchdog::Watchdog;

/// Signals that end lockctl while it waits, and that are passed on to
/// COMMAND's process group while it runs. When lockctl's stdin is the
/// terminal, COMMAND's group is made the terminal's foreground group, so
/// Ctrl-C reaches COMMAND from the terminal itself and not lockctl; a SIGINT
/// that lockctl does get was sent to it alone, and is passed on.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl Signals {
    fn install() -> Result<Signals, Failure> {
        let install = |kind| {
            signal(kind)
                .map_err(|e| Failure::new(UNEXPECTED, format!("installing a signal handler: {e}")))
        };
        Ok(Signals {
            interrupt: install(SignalKind::interrupt())?,
            terminate: install(SignalKind::terminate())?,
            hangup: install(SignalKind::hangup())?,
        })
    }
}

pub async fn run(ctx: &Ctx, args: RunArgs) -> Result<u8, Failure> {
    let client = ctx.connect().await?;
    // From here on lockctl has a lock or a place in line to give back, so
    // signals are handled instead of ending the process outright.
    let mut signals = Signals::install()?;
    let resource = args.lock.resource.clone();
    let guard = wait_for_lock(
        lock_request(&client, &args.lock).queue(),
        &resource,
        &mut signals,
    )
    .await?;
    let program = args.command[0].clone();

    let mut watchdog = match Watchdog::start() {
        Ok(watchdog) => watchdog,
        Err(err) => {
            release(guard, &resource).await;
            return Err(Failure::new(
                UNEXPECTED,
                format!("starting the watchdog of {program}: {err}"),
            ));
        }
    };
    let mut command = Command::new(&program);
    command
        .args(&args.command[1..])
        .env("LOCKD_LOCK_ID", guard.lock_id())
        .env("LOCKD_FENCING_TOKEN", guard.fencing_token().to_string())
        .env("LOCKD_RESOURCE", &resource);
    let spawned = tie_to_lockctl(&mut command).and_then(|()| command.spawn());
    let mut child = match spawned {
        Ok(child) => child,
        Err(err) => {
            watchdog.stand_down();
            let failure = if err.kind() == std::io::ErrorKind::NotFound {
                Failure::new(COMMAND_NOT_FOUND, format!("{program}: command not found"))
            } else {
                Failure::new(CANNOT_EXECUTE, format!("{program}: cannot execute: {err}"))
            };
            release(guard, &resource).await;
            return Err(failure);
        }
    };
    // The child's pid is its process group's id (`process_group(0)`).
    let group = child.id().and_then(|pid| libc::pid_t::try_from(pid).ok());
    if let Some(pid) = child.id()
        && let Err(err) = watchdog.guard(pid)
    {
        // COMMAND still dies with lockctl (PDEATHSIG); only what it starts
        // would not. Not worth refusing the run for, but worth saying.
        report::warning(format_args!(
            "the watchdog is gone ({err}): if lockctl dies, what {program} started may outlive the lease"
        ));
    }
    let outcome = supervise(&mut child, group, guard, &args, &resource, &mut signals).await;
    watchdog.stand_down();
    outcome
}

/// Waits for COMMAND while holding the lease, passing signals on to its
/// group; then kills what is left of the group and releases the lease.
async fn supervise(
    child: &mut Child,
    group: Option<libc::pid_t>,
    guard: LockGuard,
    args: &RunArgs,
    resource: &str,
    signals: &mut Signals,
) -> Result<u8, Failure> {
    let program = &args.command[0];
    let lost = guard.lost();
    tokio::pin!(lost);
    loop {
        tokio::select! {
            status = child.wait() => {
                // What COMMAND left running must not outlive the lease either.
                kill_group(group);
                take_back_terminal();
                let status = match status {
                    Ok(status) => status,
                    Err(e) => {
                        release(guard, resource).await;
                        return Err(Failure::new(UNEXPECTED, format!("waiting for {program}: {e}")));
                    }
                };
                if let Some(reason) = guard.lost_reason() {
                    release(guard, resource).await;
                    return Err(Failure::new(
                        LEASE_LOST,
                        format!("the lease on {resource:?} was lost before {program} exited \
                                 ({reason}); it exited with {status}"),
                    ));
                }
                release(guard, resource).await;
                return Ok(exit_status(status));
            }
            reason = &mut lost => {
                report::warning(format_args!(
                    "lost the lease on {resource:?} ({reason}); sending SIGTERM to {program}"
                ));
                let status = stop(child, group, args.grace, program).await;
                take_back_terminal();
                // A lease stopped by its renewal limit is still live: free it now.
                release(guard, resource).await;
                return Err(Failure::new(
                    LEASE_LOST,
                    format!("{program} was stopped ({status}) because the lease on \
                             {resource:?} was lost"),
                ));
            }
            _ = signals.terminate.recv() => forward(child, group, libc::SIGTERM),
            _ = signals.hangup.recv() => forward(child, group, libc::SIGHUP),
            _ = signals.interrupt.recv() => forward(child, group, libc::SIGINT),
        }
    }
}

/// Waits in line through `WaitQueue`, showing the place in line on stderr
/// when it is a terminal. Ctrl-C, SIGTERM or SIGHUP leave the queue.
async fn wait_for_lock(
    mut events: lockd_client::QueueStream,
    resource: &str,
    signals: &mut Signals,
) -> Result<LockGuard, Failure> {
    let mut progress = Progress::new(resource);
    let outcome = loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(QueueEvent::Queued { position, queue_length })) => {
                    progress.show(position, queue_length);
                }
                Some(Ok(QueueEvent::Granted(guard))) => break Ok(guard),
                Some(Err(err)) => {
                    break Err(Failure::from(err).context(format!("waiting for {resource:?}")));
                }
                None => break Err(Failure::new(UNEXPECTED, "WaitQueue ended without a grant")),
            },
            _ = signals.interrupt.recv() => break Err(interrupted(resource)),
            _ = signals.terminate.recv() => break Err(interrupted(resource)),
            _ = signals.hangup.recv() => break Err(interrupted(resource)),
        }
    };
    progress.clear();
    outcome
}

fn interrupted(resource: &str) -> Failure {
    Failure::new(
        INTERRUPTED,
        format!("interrupted while waiting for {resource:?}"),
    )
}

/// The place-in-line line on stderr, redrawn in place; shown only when
/// stderr is a terminal, so logs and pipes stay clean.
struct Progress<'a> {
    resource: &'a str,
    shown: bool,
    tty: bool,
}

impl<'a> Progress<'a> {
    fn new(resource: &'a str) -> Progress<'a> {
        Progress {
            resource,
            shown: false,
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn show(&mut self, position: u64, queue_length: u64) {
        if !self.tty {
            return;
        }
        let place = if position == 0 {
            "next in line".to_owned()
        } else {
            format!("{position} ahead")
        };
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[Klockctl: waiting for {:?}: {place} ({queue_length} waiting)",
            self.resource
        );
        let _ = err.flush();
        self.shown = true;
    }

    fn clear(&mut self) {
        if self.shown {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
            self.shown = false;
        }
    }
}

/// Makes `command` a process group of its own, tied to lockctl's life:
/// the kernel sends it SIGKILL when lockctl dies (`PR_SET_PDEATHSIG`), and it
/// takes the terminal's foreground when lockctl has it.
///
/// PDEATHSIG fires when the *thread* that forked the child ends, not the
/// process. lockctl runs on a current-thread Tokio runtime driven by
/// `block_on` in `main`, so this spawn happens on the main thread, which
/// lives exactly as long as lockctl.
fn tie_to_lockctl(command: &mut Command) -> io::Result<()> {
    let parent = libc::pid_t::try_from(std::process::id())
        .map_err(|_| io::Error::other("lockctl's pid does not fit a pid_t"))?;
    // SAFETY: getpgrp and tcgetpgrp have no memory-safety preconditions.
    let foreground = io::stdin().is_terminal() && unsafe { libc::tcgetpgrp(0) == libc::getpgrp() };
    command.process_group(0);
    // SAFETY: the hook runs in the forked child before exec, and calls only
    // async-signal-safe functions (prctl, getppid, sigprocmask, tcsetpgrp,
    // getpid) without allocating.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // lockctl may have died before prctl took effect; then no signal
            // will come, so do not start at all.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            if foreground {
                // A background group asking for the terminal gets SIGTTOU
                // unless it blocks it; the old mask is restored for COMMAND.
                let mut block: libc::sigset_t = std::mem::zeroed();
                let mut old: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut block);
                libc::sigaddset(&mut block, libc::SIGTTOU);
                libc::sigprocmask(libc::SIG_BLOCK, &block, &mut old);
                libc::tcsetpgrp(0, libc::getpid());
                libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            }
            Ok(())
        });
    }
    Ok(())
}

/// Gives the terminal's foreground back to lockctl's group if COMMAND's
/// group had it, so that lockctl's last words and the shell are not stopped.
fn take_back_terminal() {
    if !io::stdin().is_terminal() {
        return;
    }
    // SAFETY: plain syscalls on valid pointers; SIGTTOU is blocked around
    // tcsetpgrp because lockctl's group is in the background at this point.
    unsafe {
        let mut block: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut block);
        libc::sigaddset(&mut block, libc::SIGTTOU);
        libc::pthread_sigmask(libc::SIG_BLOCK, &block, &mut old);
        let ours = libc::getpgrp();
        let fg = libc::tcgetpgrp(0);
        if fg != ours && fg > 0 {
            libc::tcsetpgrp(0, ours);
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
    }
}

/// Sends `signal` to COMMAND's group, while COMMAND still runs.
fn forward(child: &Child, group: Option<libc::pid_t>, signal: libc::c_int) {
    // tokio clears `id()` once COMMAND is reaped; until then its pid, and so
    // its group's id, cannot belong to anyone else.
    if let (Some(_), Some(group)) = (child.id(), group) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(-group, signal) };
    }
}

/// SIGKILL to what is left of COMMAND's group once COMMAND was reaped.
///
/// The group's id is not reserved any more if no member is left, so in
/// principle a new group could have the same id; Linux hands out pids in
/// order and reuses one only after wrapping around `pid_max`, so in the
/// microseconds between the reap and this call that does not happen.
fn kill_group(group: Option<libc::pid_t>) {
    if let Some(group) = group {
        // SAFETY: kill has no memory-safety preconditions. ESRCH (no one
        // left) is the usual outcome and is fine.
        unsafe { libc::kill(-group, libc::SIGKILL) };
    }
}

/// SIGTERM to COMMAND's group, then SIGKILL if COMMAND is still there after
/// `grace`; what is left of the group is killed either way.
async fn stop(
    child: &mut Child,
    group: Option<libc::pid_t>,
    grace: Duration,
    program: &str,
) -> String {
    forward(child, group, libc::SIGTERM);
    let status = match tokio::time::timeout(grace, child.wait()).await {
        Ok(Ok(status)) => status.to_string(),
        Ok(Err(e)) => format!("wait failed: {e}"),
        Err(_) => {
            report::warning(format_args!(
                "{program} still runs {grace:?} after SIGTERM; sending SIGKILL"
            ));
            forward(child, group, libc::SIGKILL);
            let _ = child.start_kill();
            match child.wait().await {
                Ok(status) => status.to_string(),
                Err(e) => format!("wait failed: {e}"),
            }
        }
    };
    kill_group(group);
    status
}

/// Releases after COMMAND is done; a failure is reported, not fatal: the
/// lease ends on its own at its ttl.
async fn release(guard: LockGuard, resource: &str) {
    let code = guard.lost_reason().and_then(|reason| reason.code());
    if matches!(code, Some(Code::NotFound | Code::PermissionDenied)) {
        // The daemon already said the lease is not ours any more.
        guard.detach();
        return;
    }
    if let Err(err) = guard.release().await {
        report::warning(format_args!(
            "releasing {resource:?} failed: {}",
            Failure::from(err).message
        ));
    }
}

/// The shell's convention: the exit code, or 128 + the signal that killed it.
fn exit_status(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(1),
        (None, Some(sig)) => u8::try_from(128 + sig).unwrap_or(255),
        (None, None) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_follow_the_shell() {
        assert_eq!(exit_status(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_status(ExitStatus::from_raw(7 << 8)), 7);
        assert_eq!(exit_status(ExitStatus::from_raw(libc::SIGTERM)), 143);
    }
}
