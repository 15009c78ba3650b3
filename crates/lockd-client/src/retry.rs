//! Re-queueing an Acquire that ended UNAVAILABLE, with backoff, within the caller's wait.
//!
//! Safe because the daemon guarantees that an Acquire or WaitQueue answered
//! with an error leaves no lease and no queue entry behind: it leaves the
//! queue and releases any grant it took for the call, retrying until Redis
//! answers (see `src/waiters.rs` of the daemon). So an UNAVAILABLE from a
//! daemon shutting down in a rolling restart, or from a Redis blip, can be
//! asked again without holding two leases.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::time::Duration;

use tokio::time::Instant;
use tonic::Code;

use crate::error::Error;
use crate::pb;

/// The first retry waits about this long; each next one about twice as long...
const BACKOFF_START: Duration = Duration::from_millis(50);
/// ...up to about this.
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// The wait an unset `wait_timeout_ms` stands for: the daemon's default,
/// documented in `lock.proto`. Retries never go past it.
const DEFAULT_WAIT: Duration = Duration::from_secs(5);

/// The retry state of one lock request: its deadline and the next backoff.
#[derive(Debug)]
pub(crate) struct Retry {
    deadline: Instant,
    backoff: Duration,
}

impl Retry {
    /// Starts the clock of `request`'s wait now.
    pub(crate) fn start(request: &pb::AcquireRequest) -> Retry {
        let wait = request
            .wait_timeout_ms
            .map_or(DEFAULT_WAIT, Duration::from_millis);
        Retry {
            deadline: Instant::now() + wait,
            backoff: BACKOFF_START,
        }
    }

    /// After `err`, either sleeps the backoff and returns true with
    /// `request`'s wait cut to what is left of the caller's, or returns false
    /// (not retryable, or no time left for another attempt).
    pub(crate) async fn again(&mut self, err: &Error, request: &mut pb::AcquireRequest) -> bool {
        if err.code() != Some(Code::Unavailable) {
            return false;
        }
        let pause = jitter(self.backoff);
        let resume = Instant::now() + pause;
        if resume >= self.deadline {
            return false;
        }
        tracing::warn!(
            resource = %request.resource,
            %err,
            "lock request failed; retrying in {pause:?}"
        );
        tokio::time::sleep_until(resume).await;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        let left = self.deadline.saturating_duration_since(Instant::now());
        // At least 1 ms: 0 would mean "try once", which is still within the wait.
        request.wait_timeout_ms = Some(crate::client::millis(left).max(1));
        true
    }
}

/// `base` scaled by a random factor in [0.5, 1.5), so that clients cut off
/// by the same restart do not all come back in the same millisecond.
fn jitter(base: Duration) -> Duration {
    // RandomState is seeded randomly per process and per instance: enough
    // spread for backoff without a random-number crate.
    let random = RandomState::new().hash_one(Instant::now());
    let permille = 500 + random % 1000;
    base * u32::try_from(permille).unwrap_or(1000) / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(wait_ms: Option<u64>) -> pb::AcquireRequest {
        pb::AcquireRequest {
            resource: "r".into(),
            wait_timeout_ms: wait_ms,
            ..Default::default()
        }
    }

    fn unavailable() -> Error {
        tonic::Status::unavailable("shutting down").into()
    }

    #[test]
    fn jitter_stays_within_half_and_one_and_a_half() {
        for _ in 0..100 {
            let d = jitter(Duration::from_millis(100));
            assert!(d >= Duration::from_millis(50) && d < Duration::from_millis(150));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_back_off_and_stop_at_the_callers_deadline() {
        let mut req = request(Some(3000));
        let mut retry = Retry::start(&req);
        let start = Instant::now();
        let mut attempts = 0;
        while retry.again(&unavailable(), &mut req).await {
            attempts += 1;
            let left = Duration::from_millis(req.wait_timeout_ms.unwrap());
            assert!(start.elapsed() + left <= Duration::from_millis(3001));
        }
        assert!(attempts >= 3, "{attempts} retries");
        assert!(start.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn only_unavailable_is_retried_and_try_once_is_not() {
        let mut req = request(Some(3000));
        let busy: Error = tonic::Status::deadline_exceeded("busy").into();
        assert!(!Retry::start(&req).again(&busy, &mut req).await);
        let once = request(Some(0));
        assert!(
            !Retry::start(&once)
                .again(&unavailable(), &mut once.clone())
                .await
        );
        let mut unset = request(None);
        assert!(Retry::start(&unset).again(&unavailable(), &mut unset).await);
        assert!(unset.wait_timeout_ms.unwrap() <= 5000);
    }
}
