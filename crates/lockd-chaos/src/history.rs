//! What the workload saw: grants, call outcomes, faults, and the leases clients trust right now.
//!
//! Times are the chaos process's own monotonic clock. A client trusts a
//! lease from when the grant reached it until the moment its request was
//! sent plus the lease's ttl (or a renewal's send time plus the ttl): the
//! lease began on the Redis clock after the request left, so it cannot end
//! before then. Two conflicting leases trusted at the same instant are a
//! double grant, whatever any server believed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use lockd_client::Mode;
use tokio::time::Instant;

/// How a grant was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Acquire,
    WaitQueue,
}

/// One grant as its client saw it.
#[derive(Debug, Clone)]
pub struct Grant {
    pub resource: String,
    pub mode: Mode,
    pub token: u64,
    pub method: Method,
    pub sent: Instant,
    pub received: Instant,
    /// When the first Queued event came (WaitQueue only).
    pub queued_at: Option<Instant>,
    /// Redis data losses before the request was sent and before the grant came.
    pub losses_at_send: u64,
    pub losses_at_grant: u64,
}

#[derive(Debug)]
struct Trusted {
    hold: u64,
    mode: Mode,
    token: u64,
    until: Instant,
}

/// The shared record of one run.
#[derive(Debug, Default)]
pub struct History {
    grants: Mutex<Vec<Grant>>,
    outcomes: Mutex<BTreeMap<String, u64>>,
    faults: Mutex<BTreeMap<String, u64>>,
    violations: Mutex<Vec<String>>,
    trusted: Mutex<HashMap<String, Vec<Trusted>>>,
    next_hold: AtomicU64,
    /// Redis restarts that lost every key.
    losses: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether two modes may be held at once (SHARED and READ with each other).
pub fn compatible(a: Mode, b: Mode) -> bool {
    let shared = |m| matches!(m, Mode::Shared | Mode::Read);
    shared(a) && shared(b)
}

impl History {
    pub fn record_grant(&self, grant: Grant) {
        lock(&self.grants).push(grant);
    }

    /// Counts one outcome of a call, as `call/outcome`.
    pub fn count(&self, call: &str, outcome: &str) {
        *lock(&self.outcomes)
            .entry(format!("{call}/{outcome}"))
            .or_default() += 1;
    }

    pub fn count_fault(&self, kind: &str) {
        *lock(&self.faults).entry(kind.to_owned()).or_default() += 1;
    }

    pub fn violation(&self, what: String) {
        tracing::error!(violation = %what, "safety violation");
        lock(&self.violations).push(what);
    }

    pub fn note_data_loss(&self) {
        self.losses.fetch_add(1, Ordering::SeqCst);
    }

    pub fn losses(&self) -> u64 {
        self.losses.load(Ordering::SeqCst)
    }

    /// A client starts trusting a lease until `until`; a conflicting lease
    /// trusted now is a violation. Returns the hold's handle.
    pub fn trust(&self, resource: &str, mode: Mode, token: u64, until: Instant) -> u64 {
        let hold = self.next_hold.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut trusted = lock(&self.trusted);
        let holds = trusted.entry(resource.to_owned()).or_default();
        holds.retain(|t| t.until > now);
        // A grant that came after its lease could have ended is never used.
        if until <= now {
            return hold;
        }
        for other in holds.iter() {
            if !compatible(mode, other.mode) {
                self.violation(format!(
                    "{resource}: token {token} ({}) granted while token {} ({}) was still live",
                    mode.as_str(),
                    other.token,
                    other.mode.as_str()
                ));
            }
        }
        holds.push(Trusted {
            hold,
            mode,
            token,
            until,
        });
        hold
    }

    /// A renewal moved a lease's end to `until`. A lease whose trust lapsed
    /// stays lapsed (`false`): the client no longer uses it, whatever the
    /// server says, because someone else may have been granted meanwhile.
    pub fn retrust(&self, resource: &str, hold: u64, until: Instant) -> bool {
        let now = Instant::now();
        let mut trusted = lock(&self.trusted);
        let Some(mine) = trusted
            .get_mut(resource)
            .and_then(|holds| holds.iter_mut().find(|t| t.hold == hold && t.until > now))
        else {
            return false;
        };
        mine.until = mine.until.max(until);
        true
    }

    /// The client stops trusting a lease (before it sends Release).
    pub fn distrust(&self, resource: &str, hold: u64) {
        if let Some(holds) = lock(&self.trusted).get_mut(resource) {
            holds.retain(|t| t.hold != hold);
        }
    }

    pub fn grants(&self) -> Vec<Grant> {
        lock(&self.grants).clone()
    }

    pub fn outcomes(&self) -> BTreeMap<String, u64> {
        lock(&self.outcomes).clone()
    }

    pub fn faults(&self) -> BTreeMap<String, u64> {
        lock(&self.faults).clone()
    }

    pub fn violations(&self) -> Vec<String> {
        lock(&self.violations).clone()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn conflicting_trusted_leases_are_a_violation_and_lapsed_ones_are_not() {
        let h = History::default();
        let soon = Instant::now() + Duration::from_secs(60);
        h.trust("a", Mode::Shared, 1, soon);
        h.trust("a", Mode::Read, 2, soon);
        assert!(h.violations().is_empty());
        h.trust("a", Mode::Write, 3, soon);
        assert_eq!(h.violations().len(), 2);

        let h = History::default();
        let lapsed = h.trust("b", Mode::Exclusive, 1, Instant::now());
        h.trust("b", Mode::Exclusive, 2, soon);
        assert!(h.violations().is_empty());
        // A lapsed lease is not trusted again by a renewal.
        assert!(!h.retrust("b", lapsed, soon));
    }

    #[test]
    fn a_released_lease_is_not_trusted() {
        let h = History::default();
        let soon = Instant::now() + Duration::from_secs(60);
        let first = h.trust("a", Mode::Exclusive, 1, soon);
        h.distrust("a", first);
        h.trust("a", Mode::Exclusive, 2, soon);
        assert!(h.violations().is_empty());
    }
}
