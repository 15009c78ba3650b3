//! A held lock: [`LockGuard`], its background renewal, and how loss is reported.
//!
//! The guard spawns one task that renews the lease every third of its ttl.
//! The task publishes every new lease, and the loss of the lease, on a
//! `tokio::sync::watch` channel: the guard reads it in [`LockGuard::lease`]
//! and [`LockGuard::lost`], and callers in other tasks get their own
//! receiver from [`LockGuard::watch`]. A renewal failure is never swallowed:
//! either a later retry succeeds before the lease would expire, or the lease
//! is declared lost.

use std::fmt;
use std::future::Future;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::Code;

use crate::client::{self, Client};
use crate::error::{CodeName, Error, Result};
use crate::types::Lease;

/// The first retry of a failed renewal waits this long; each next one twice as long...
const RETRY_BACKOFF_START: Duration = Duration::from_millis(50);
/// ...up to this.
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// The least time one renewal attempt is given, even when the lease is
/// believed to end sooner: the daemon's clock decides.
const MIN_ATTEMPT: Duration = Duration::from_millis(250);

/// Why a [`LockGuard`] stopped holding its lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LostReason {
    /// The daemon refused a renewal: `NOT_FOUND` (released behind the
    /// guard's back, or already expired), `PERMISSION_DENIED` (held by another
    /// client_id) or `FAILED_PRECONDITION` (the renewal limit was reached; the
    /// lease still runs until its `expires_at`).
    Rejected {
        /// The code of the refusal.
        code: Code,
        /// The daemon's message.
        message: String,
    },
    /// Renewals kept failing with retryable errors (such as `UNAVAILABLE`)
    /// until the lease's `expires_at` had passed.
    Expired {
        /// When the lease ended, by the daemon's clock.
        expires_at: SystemTime,
        /// The last renewal error.
        last_error: String,
    },
    /// The renewal task ended unexpectedly (it panicked).
    RenewerStopped,
}

impl LostReason {
    /// The gRPC code of the refusal, for [`LostReason::Rejected`].
    pub fn code(&self) -> Option<Code> {
        match self {
            LostReason::Rejected { code, .. } => Some(*code),
            LostReason::Expired { .. } | LostReason::RenewerStopped => None,
        }
    }
}

impl fmt::Display for LostReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LostReason::Rejected { code, message } => {
                write!(f, "renewal refused: {}: {message}", CodeName(*code))
            }
            LostReason::Expired { last_error, .. } => {
                write!(f, "lease expired before it could be renewed ({last_error})")
            }
            LostReason::RenewerStopped => f.write_str("the renewal task stopped unexpectedly"),
        }
    }
}

/// What the renewal task publishes: the latest lease and, once it happened,
/// why it was lost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseStatus {
    /// The lease as of the last successful grant or renewal.
    pub lease: Lease,
    /// Set once, when the lease is lost; never cleared.
    pub lost: Option<LostReason>,
}

/// A held lock, renewed in the background until released or dropped.
///
/// - [`release`](LockGuard::release) ends the lease and reports the outcome.
/// - Dropping the guard releases it on a spawned task, best effort, when a
///   Tokio runtime is running; otherwise the lease runs out on its own.
/// - [`lost`](LockGuard::lost) resolves when the lease can no longer be
///   trusted: stop using the protected resource then.
///
/// ```no_run
/// use std::time::Duration;
/// use lockd_client::Client;
///
/// # async fn do_work(_token: u64) {}
/// # async fn demo() -> lockd_client::Result<()> {
/// let client = Client::connect("127.0.0.1:50051").await?;
/// let guard = client.lock("jobs/nightly").ttl(Duration::from_secs(15)).acquire().await?;
/// tokio::select! {
///     _ = do_work(guard.fencing_token()) => guard.release().await?,
///     reason = guard.lost() => eprintln!("lock lost, stopping: {reason}"),
/// }
/// # Ok(()) }
/// ```
pub struct LockGuard {
    client: Client,
    /// The client_id the lease was taken with; renewals and release present it.
    client_id: String,
    lock_id: String,
    fencing_token: u64,
    status: watch::Receiver<LeaseStatus>,
    renewer: JoinHandle<()>,
    /// Set by `release` and `detach`, so that drop does not release again.
    finished: bool,
}

impl LockGuard {
    /// Starts renewing `lease`, whose time counts from `base` (local time):
    /// the sending of the request that got it, when that is known.
    pub(crate) fn start(
        client: Client,
        client_id: String,
        lease: Lease,
        base: std::time::Instant,
    ) -> LockGuard {
        let lock_id = lease.lock_id.clone();
        let fencing_token = lease.fencing_token;
        let (tx, status) = watch::channel(LeaseStatus { lease, lost: None });
        let renew = {
            let rpc = client.raw();
            let (lock_id, client_id) = (lock_id.clone(), client_id.clone());
            move || {
                let (rpc, lock_id, client_id) = (rpc.clone(), lock_id.clone(), client_id.clone());
                async move { client::renew(rpc, &lock_id, &client_id, None).await }
            }
        };
        let renewer = tokio::spawn(renew_loop(renew, tx, Instant::from_std(base)));
        LockGuard {
            client,
            client_id,
            lock_id,
            fencing_token,
            status,
            renewer,
            finished: false,
        }
    }

    /// The lease's secret handle.
    pub fn lock_id(&self) -> &str {
        &self.lock_id
    }

    /// The fencing token: pass it to the storage you protect.
    pub fn fencing_token(&self) -> u64 {
        self.fencing_token
    }

    /// The client_id the lease is held under.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The lease as of the last successful renewal.
    pub fn lease(&self) -> Lease {
        self.status.borrow().lease.clone()
    }

    /// Why the lease was lost, if it was.
    pub fn lost_reason(&self) -> Option<LostReason> {
        self.status.borrow().lost.clone()
    }

    /// True once the lease was lost.
    pub fn is_lost(&self) -> bool {
        self.status.borrow().lost.is_some()
    }

    /// Resolves when the lease is lost, with the reason; pending while it is held.
    pub fn lost(&self) -> impl Future<Output = LostReason> + Send + 'static {
        let mut status = self.status.clone();
        async move {
            // The renewal task sets `lost` before it ends; a closed channel
            // without it means the task died.
            let _ = status.wait_for(|s| s.lost.is_some()).await;
            let reason = status.borrow().lost.clone();
            reason.unwrap_or(LostReason::RenewerStopped)
        }
    }

    /// A receiver of every lease update and of the loss, for other tasks.
    pub fn watch(&self) -> watch::Receiver<LeaseStatus> {
        self.status.clone()
    }

    /// Stops renewing and ends the lease.
    ///
    /// Fails with the daemon's error, for example `NOT_FOUND` if the lease
    /// had already expired or been released elsewhere.
    pub async fn release(mut self) -> Result<()> {
        self.finished = true;
        self.renewer.abort();
        client::release(self.client.raw(), &self.lock_id, &self.client_id).await
    }

    /// Stops renewing without releasing, and hands back the lease: it stays
    /// held until it expires, or until someone renews or releases it by its
    /// lock_id and client_id.
    pub fn detach(mut self) -> Lease {
        self.finished = true;
        self.renewer.abort();
        self.lease()
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.status.borrow();
        f.debug_struct("LockGuard")
            .field("resource", &status.lease.resource)
            .field("client_id", &self.client_id)
            .field("fencing_token", &self.fencing_token)
            .field("expires_at", &status.lease.expires_at)
            .field("lost", &status.lost)
            .finish_non_exhaustive()
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.renewer.abort();
        if self.finished {
            return;
        }
        let gone = matches!(
            self.status.borrow().lost,
            Some(LostReason::Rejected {
                code: Code::NotFound | Code::PermissionDenied,
                ..
            })
        );
        if gone {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::debug!(lock_id = %self.lock_id, "guard dropped outside a runtime; the lease will expire");
            return;
        };
        let rpc = self.client.raw();
        let (lock_id, client_id) = (self.lock_id.clone(), self.client_id.clone());
        runtime.spawn(async move {
            if let Err(err) = client::release(rpc, &lock_id, &client_id).await {
                tracing::warn!(%lock_id, %err, "release of a dropped lock guard failed");
            }
        });
    }
}

/// What to do about a failed renewal.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// The daemon refused: the lease is gone, or will not be extended.
    Lost,
    /// A passing failure: try again while the lease may still be live.
    Retry,
}

fn verdict(err: &Error) -> Verdict {
    match err.code() {
        Some(
            Code::NotFound
            | Code::PermissionDenied
            | Code::FailedPrecondition
            | Code::InvalidArgument
            | Code::Unauthenticated
            | Code::Unimplemented,
        ) => Verdict::Lost,
        _ => Verdict::Retry,
    }
}

/// The local instant at which `lease` surely ended: its ttl counted from
/// `base` (a moment no earlier than the grant as the daemon saw it, for
/// renewals the moment the request was sent), or its `expires_at` read on
/// this machine's clock, whichever comes first.
fn deadline(lease: &Lease, base: Instant) -> Instant {
    let now = Instant::now();
    let by_wall = now
        + lease
            .expires_at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
    (base + lease.ttl).min(by_wall)
}

/// Renews the lease in `tx` every third of its ttl until it is lost; the
/// guard aborts this task when it is released, detached or dropped.
async fn renew_loop<F, Fut>(mut renew: F, tx: watch::Sender<LeaseStatus>, mut base: Instant)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Lease>>,
{
    loop {
        let lease = tx.borrow().lease.clone();
        let interval = (lease.ttl / 3).max(Duration::from_millis(10));
        let ends = deadline(&lease, base);
        tokio::time::sleep_until(base + interval).await;

        let mut backoff = RETRY_BACKOFF_START;
        let mut attempts = 0u32;
        loop {
            let sent = Instant::now();
            if attempts > 0 && sent >= ends {
                let reason = LostReason::Expired {
                    expires_at: lease.expires_at,
                    last_error: format!("{attempts} renewal attempts failed"),
                };
                return declare_lost(&tx, reason);
            }
            attempts += 1;
            let budget = ends.saturating_duration_since(sent).max(MIN_ATTEMPT);
            let outcome = match tokio::time::timeout(budget, renew()).await {
                Ok(outcome) => outcome,
                Err(_) => Err(Error::Rpc {
                    code: Code::DeadlineExceeded,
                    message: format!("no answer to Renew within {budget:?}"),
                }),
            };
            match outcome {
                Ok(renewed) => {
                    tracing::trace!(lock_id = %renewed.lock_id, renewals = renewed.renewal_count, "lease renewed");
                    tx.send_modify(|s| s.lease = renewed);
                    base = sent;
                    break;
                }
                Err(err) if verdict(&err) == Verdict::Lost => {
                    let reason = match err {
                        Error::Rpc { code, message } => LostReason::Rejected { code, message },
                        other => LostReason::Rejected {
                            code: other.code().unwrap_or(Code::Unknown),
                            message: other.to_string(),
                        },
                    };
                    return declare_lost(&tx, reason);
                }
                Err(err) => {
                    let now = Instant::now();
                    if now >= ends {
                        let reason = LostReason::Expired {
                            expires_at: lease.expires_at,
                            last_error: err.to_string(),
                        };
                        return declare_lost(&tx, reason);
                    }
                    tracing::warn!(lock_id = %lease.lock_id, %err, left = ?(ends - now), "renewal failed; retrying");
                    tokio::time::sleep(backoff.min(ends - now)).await;
                    backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
                }
            }
        }
    }
}

/// Publishes the loss. It is also logged, under its own target
/// `lockd_client::lease_lost` so that a program which reports the loss itself
/// (like lockctl) can silence the duplicate.
fn declare_lost(tx: &watch::Sender<LeaseStatus>, reason: LostReason) {
    let resource = tx.borrow().lease.resource.clone();
    tracing::warn!(target: "lockd_client::lease_lost", %resource, %reason, "lease lost");
    tx.send_modify(|s| s.lost = Some(reason));
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::types::Mode;

    fn lease(ttl: Duration) -> Lease {
        let now = SystemTime::now();
        Lease {
            lock_id: "lk".into(),
            resource: "r".into(),
            mode: Mode::Exclusive,
            client_id: "c".into(),
            fencing_token: 1,
            acquired_at: now,
            expires_at: now + ttl,
            ttl,
            renewal_count: 0,
            max_renewals: 0,
        }
    }

    /// Runs the renewal loop against `answer(call_number)` on the paused clock.
    fn start(
        ttl: Duration,
        answer: impl Fn(u32) -> Result<()> + Send + 'static,
    ) -> (watch::Receiver<LeaseStatus>, Arc<AtomicU32>) {
        let calls = Arc::new(AtomicU32::new(0));
        let (tx, rx) = watch::channel(LeaseStatus {
            lease: lease(ttl),
            lost: None,
        });
        let counter = calls.clone();
        let renew = move || {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            let result = answer(n).map(|()| {
                let mut l = lease(ttl);
                l.renewal_count = n;
                l
            });
            async move { result }
        };
        tokio::spawn(renew_loop(renew, tx, Instant::now()));
        (rx, calls)
    }

    #[tokio::test(start_paused = true)]
    async fn renews_every_third_of_the_ttl() {
        let (rx, calls) = start(Duration::from_secs(3), |_| Ok(()));
        tokio::time::sleep(Duration::from_millis(3500)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        let status = rx.borrow().clone();
        assert_eq!(status.lost, None);
        assert_eq!(status.lease.renewal_count, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn not_found_is_lost_at_once() {
        let (mut rx, calls) = start(Duration::from_secs(3), |_| {
            Err(tonic::Status::not_found("lock is unknown").into())
        });
        let status = rx.wait_for(|s| s.lost.is_some()).await.unwrap().clone();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            status.lost,
            Some(LostReason::Rejected {
                code: Code::NotFound,
                message: "lock is unknown".into()
            })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn renewal_limit_is_lost() {
        let (mut rx, _) = start(Duration::from_secs(3), |n| {
            if n < 2 {
                Ok(())
            } else {
                Err(tonic::Status::failed_precondition("renewal limit").into())
            }
        });
        let reason = rx
            .wait_for(|s| s.lost.is_some())
            .await
            .unwrap()
            .lost
            .clone();
        assert_eq!(reason.unwrap().code(), Some(Code::FailedPrecondition));
    }

    #[tokio::test(start_paused = true)]
    async fn unavailable_retries_until_the_lease_ends() {
        let started = Instant::now();
        let (mut rx, calls) = start(Duration::from_secs(3), |_| {
            Err(tonic::Status::unavailable("redis down").into())
        });
        let reason = rx
            .wait_for(|s| s.lost.is_some())
            .await
            .unwrap()
            .lost
            .clone();
        let after = started.elapsed();
        assert!(
            matches!(reason, Some(LostReason::Expired { .. })),
            "{reason:?}"
        );
        assert!(after >= Duration::from_secs(3), "lost too early: {after:?}");
        assert!(
            after < Duration::from_millis(3100),
            "lost too late: {after:?}"
        );
        assert!(calls.load(Ordering::SeqCst) > 2, "it should have retried");
    }

    #[tokio::test(start_paused = true)]
    async fn a_passing_outage_is_survived() {
        let (rx, _) = start(Duration::from_secs(3), |n| {
            if n == 1 || n == 2 {
                Err(tonic::Status::unavailable("blip").into())
            } else {
                Ok(())
            }
        });
        tokio::time::sleep(Duration::from_secs(10)).await;
        let status = rx.borrow().clone();
        assert_eq!(status.lost, None);
        assert!(status.lease.renewal_count > 3);
    }

    #[test]
    fn verdicts_follow_the_status_codes() {
        for code in [
            Code::NotFound,
            Code::PermissionDenied,
            Code::FailedPrecondition,
        ] {
            let err = Error::from(tonic::Status::new(code, "x"));
            assert_eq!(verdict(&err), Verdict::Lost, "{code:?}");
        }
        for code in [Code::Unavailable, Code::DeadlineExceeded, Code::Internal] {
            let err = Error::from(tonic::Status::new(code, "x"));
            assert_eq!(verdict(&err), Verdict::Retry, "{code:?}");
        }
    }
}
