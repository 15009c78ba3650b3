//! `lockctl run`: wait for a lock, run a command while holding it, release it.
//!
//! Like `flock`, `consul lock` and `etcdctl lock`: the lease is renewed in the
//! background while COMMAND runs, COMMAND learns its fencing token from the
//! environment, and lockctl exits with COMMAND's status. Unlike a local
//! `flock`, the lease can be lost (the daemon unreachable until it expired,
//! or released by someone else): COMMAND is then stopped, since it no longer
//! holds the lock.

use std::io::{IsTerminal, Write as _};
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

/// Signals that end lockctl while it waits, and that are passed on to
/// COMMAND while it runs. Ctrl-C reaches COMMAND from the terminal itself, so
/// SIGINT is not passed on (COMMAND would get it twice); lockctl just keeps
/// waiting for COMMAND to exit.
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

    let mut child = match Command::new(&program)
        .args(&args.command[1..])
        .env("LOCKD_LOCK_ID", guard.lock_id())
        .env("LOCKD_FENCING_TOKEN", guard.fencing_token().to_string())
        .env("LOCKD_RESOURCE", &resource)
        .spawn()
    {
        Ok(child) => child,
        Err(err) => {
            let failure = if err.kind() == std::io::ErrorKind::NotFound {
                Failure::new(COMMAND_NOT_FOUND, format!("{program}: command not found"))
            } else {
                Failure::new(CANNOT_EXECUTE, format!("{program}: cannot execute: {err}"))
            };
            release(guard, &resource).await;
            return Err(failure);
        }
    };

    let lost = guard.lost();
    tokio::pin!(lost);
    loop {
        tokio::select! {
            status = child.wait() => {
                let status = status.map_err(|e| {
                    Failure::new(UNEXPECTED, format!("waiting for {program}: {e}"))
                })?;
                if let Some(reason) = guard.lost_reason() {
                    release(guard, &resource).await;
                    return Err(Failure::new(
                        LEASE_LOST,
                        format!("the lease on {resource:?} was lost before {program} exited \
                                 ({reason}); it exited with {status}"),
                    ));
                }
                release(guard, &resource).await;
                return Ok(exit_status(status));
            }
            reason = &mut lost => {
                report::warning(format_args!(
                    "lost the lease on {resource:?} ({reason}); sending SIGTERM to {program}"
                ));
                let status = stop(&mut child, args.grace, &program).await;
                // A lease stopped by its renewal limit is still live: free it now.
                release(guard, &resource).await;
                return Err(Failure::new(
                    LEASE_LOST,
                    format!("{program} was stopped ({status}) because the lease on \
                             {resource:?} was lost"),
                ));
            }
            _ = signals.terminate.recv() => forward(&child, libc::SIGTERM),
            _ = signals.hangup.recv() => forward(&child, libc::SIGHUP),
            _ = signals.interrupt.recv() => {}
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

/// Sends `signal` to the child, if it still runs.
fn forward(child: &Child, signal: libc::c_int) {
    if let Some(pid) = child.id().and_then(|pid| libc::pid_t::try_from(pid).ok()) {
        // SAFETY: kill has no memory-safety preconditions; `pid` is our own
        // child, not yet reaped (tokio clears `id()` once it is).
        unsafe { libc::kill(pid, signal) };
    }
}

/// SIGTERM, then SIGKILL if the child is still there after `grace`.
async fn stop(child: &mut Child, grace: Duration, program: &str) -> String {
    forward(child, libc::SIGTERM);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(Ok(status)) => status.to_string(),
        Ok(Err(e)) => format!("wait failed: {e}"),
        Err(_) => {
            report::warning(format_args!(
                "{program} still runs {grace:?} after SIGTERM; sending SIGKILL"
            ));
            let _ = child.start_kill();
            match child.wait().await {
                Ok(status) => status.to_string(),
                Err(e) => format!("wait failed: {e}"),
            }
        }
    }
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
