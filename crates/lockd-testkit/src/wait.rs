//! Bounded polling, the one way every starter waits for readiness.

use std::time::{Duration, Instant};

/// How often a readiness check is repeated.
const POLL: Duration = Duration::from_millis(20);

/// Calls `check` every few milliseconds until it returns `Some`, or returns
/// `None` once `within` has passed.
pub(crate) fn until<T>(within: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}
