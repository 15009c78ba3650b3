//! The fenced register: the storage a lock protects, as a careful storage service would fence it.
//!
//! Each resource has one integer. Every operation presents its lease's
//! fencing token. A write is accepted only if no operation with a higher
//! token came before it; a read only if no write with a higher token came
//! before it. So a holder whose lease ended can no longer change anything,
//! and a holder whose operation is refused while its lease was still live
//! (as the client sees it) proves that someone with a newer token acted
//! while it held the lock: a conflicting grant.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::time::Instant;

/// What the register did with an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done; for a read, the value.
    Accepted(u64),
    /// A newer token had touched the register first.
    Fenced,
    /// The holder's lease could have ended (as the client sees it), so it
    /// did not try: no storage call is made with a lease nobody trusts.
    Stale,
}

#[derive(Debug, Default)]
struct Cell {
    value: u64,
    /// The highest token of any accepted operation.
    max_seen: u64,
    /// The token of the last accepted write.
    last_write: u64,
}

/// Every resource's register, and the violations it saw.
#[derive(Debug, Default)]
pub struct Register {
    cells: Mutex<HashMap<String, Cell>>,
}

/// A finding of the register: what went wrong and the tokens involved.
pub type Finding = String;

impl Register {
    /// A read with `token` by a holder that trusts its lease until `trusted_until`.
    pub fn read(
        &self,
        resource: &str,
        token: u64,
        trusted_until: Instant,
    ) -> (Outcome, Option<Finding>) {
        let mut cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        if Instant::now() >= trusted_until {
            return (Outcome::Stale, None);
        }
        let cell = cells.entry(resource.to_owned()).or_default();
        if token < cell.last_write {
            let finding = format!(
                "{resource}: a read with token {token} was fenced by a write with token {} \
                 while its lease was live",
                cell.last_write
            );
            return (Outcome::Fenced, Some(finding));
        }
        cell.max_seen = cell.max_seen.max(token);
        (Outcome::Accepted(cell.value), None)
    }

    /// Writes `expected + 1` with `token`, where `expected` is what the same
    /// holder read before: anything else there means an update was lost.
    pub fn increment(
        &self,
        resource: &str,
        token: u64,
        expected: u64,
        trusted_until: Instant,
    ) -> (Outcome, Option<Finding>) {
        let mut cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        if Instant::now() >= trusted_until {
            return (Outcome::Stale, None);
        }
        let cell = cells.entry(resource.to_owned()).or_default();
        if token < cell.max_seen {
            let finding = format!(
                "{resource}: a write with token {token} was fenced by token {} while its \
                 lease was live",
                cell.max_seen
            );
            return (Outcome::Fenced, Some(finding));
        }
        let lost = (cell.value != expected).then(|| {
            format!(
                "{resource}: lost update: token {token} read {expected} but found {} when it wrote",
                cell.value
            )
        });
        cell.value += 1;
        cell.max_seen = token;
        cell.last_write = token;
        (Outcome::Accepted(cell.value), lost)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[test]
    fn an_older_token_is_fenced_and_reported_while_trusted() {
        let r = Register::default();
        assert_eq!(
            r.increment("a", 5, 0, later()),
            (Outcome::Accepted(1), None)
        );
        let (outcome, finding) = r.increment("a", 4, 1, later());
        assert_eq!(outcome, Outcome::Fenced);
        assert!(finding.unwrap().contains("fenced by token 5"));
        let (outcome, finding) = r.read("a", 3, later());
        assert_eq!(outcome, Outcome::Fenced);
        assert!(finding.is_some());
    }

    #[test]
    fn a_lapsed_lease_does_not_write() {
        let r = Register::default();
        let past = Instant::now();
        assert_eq!(r.increment("a", 5, 0, past), (Outcome::Stale, None));
        assert_eq!(r.read("a", 5, past), (Outcome::Stale, None));
    }

    #[test]
    fn interleaved_holders_lose_an_update() {
        let r = Register::default();
        // Two holders both read 0; the second write finds 1.
        assert_eq!(r.read("a", 1, later()).0, Outcome::Accepted(0));
        assert_eq!(r.read("a", 2, later()).0, Outcome::Accepted(0));
        assert_eq!(r.increment("a", 2, 0, later()).1, None);
        // Token 1 is now fenced, but a double grant with a higher token is not:
        let (_, finding) = r.increment("a", 3, 0, later());
        assert!(finding.unwrap().contains("lost update"));
    }

    #[test]
    fn shared_readers_with_any_tokens_read_together() {
        let r = Register::default();
        r.increment("a", 1, 0, later());
        assert_eq!(r.read("a", 7, later()).0, Outcome::Accepted(1));
        assert_eq!(r.read("a", 6, later()).0, Outcome::Accepted(1));
    }
}
