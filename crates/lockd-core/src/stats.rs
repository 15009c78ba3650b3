//! Deployment statistics: deltas gathered from lock events and the totals they add up to.

use std::collections::HashMap;

use crate::lease::{Event, HoldEnd};
use crate::mode::LockMode;

/// Counter changes not yet added to the shared totals.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatsDelta {
    pub grants_by_mode: [u64; 4],
    pub released: u64,
    pub expired: u64,
    pub abandoned: u64,
    /// Sum and count of the holds that ended, for the mean hold time.
    pub hold_ms_sum: u64,
    pub holds_ended: u64,
    /// Change of live leases by mode.
    pub active_by_mode: [i64; 4],
    /// Change of queued waiters.
    pub waiting: i64,
    /// Grants per resource, for the top list.
    pub grants_by_resource: HashMap<String, u64>,
}

impl StatsDelta {
    /// Adds the events of one operation on `resource`.
    pub fn record(&mut self, resource: &str, events: &[Event]) {
        let mut grants = 0;
        for event in events {
            match *event {
                Event::Granted(mode) => {
                    self.grants_by_mode[mode.index()] += 1;
                    self.active_by_mode[mode.index()] += 1;
                    grants += 1;
                }
                Event::Ended { how, mode, held_ms } => {
                    match how {
                        HoldEnd::Released => self.released += 1,
                        HoldEnd::Expired => self.expired += 1,
                        HoldEnd::Abandoned => self.abandoned += 1,
                    }
                    self.active_by_mode[mode.index()] -= 1;
                    self.hold_ms_sum += held_ms;
                    self.holds_ended += 1;
                }
                Event::Enqueued => self.waiting += 1,
                Event::Dequeued => self.waiting -= 1,
            }
        }
        if grants > 0 {
            *self
                .grants_by_resource
                .entry(resource.to_owned())
                .or_default() += grants;
        }
    }

    /// Keeps the `n` most granted resources of this delta. The top list is
    /// approximate: a resource that is never among a daemon's `n` busiest of a
    /// flush interval is not counted, which bounds the writes per flush.
    pub fn keep_top_resources(&mut self, n: usize) {
        if self.grants_by_resource.len() <= n {
            return;
        }
        let mut counts: Vec<(String, u64)> = self.grants_by_resource.drain().collect();
        counts.select_nth_unstable_by(n, |a, b| b.1.cmp(&a.1));
        counts.truncate(n);
        self.grants_by_resource = counts.into_iter().collect();
    }

    /// Whether there is nothing to add.
    pub fn is_empty(&self) -> bool {
        *self == StatsDelta::default()
    }

    /// Adds another delta into this one.
    pub fn merge(&mut self, other: StatsDelta) {
        for i in 0..4 {
            self.grants_by_mode[i] += other.grants_by_mode[i];
            self.active_by_mode[i] += other.active_by_mode[i];
        }
        self.released += other.released;
        self.expired += other.expired;
        self.abandoned += other.abandoned;
        self.hold_ms_sum += other.hold_ms_sum;
        self.holds_ended += other.holds_ended;
        self.waiting += other.waiting;
        for (resource, n) in other.grants_by_resource {
            *self.grants_by_resource.entry(resource).or_default() += n;
        }
    }
}

/// Deployment-wide statistics as the API reports them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    pub total_locks: u64,
    pub active_locks: u64,
    pub expired_locks: u64,
    pub released_locks: u64,
    pub average_hold_time_ms: f64,
    pub active_by_mode: Vec<(LockMode, u64)>,
    /// Most granted first, at most [`TOP_RESOURCES`].
    pub top_resources: Vec<(String, u64)>,
    pub waiting: u64,
}

/// How many resources the top list shows.
pub const TOP_RESOURCES: usize = 10;

impl Stats {
    /// Totals from summed counters. Gauges are clamped at zero: an expiry that
    /// no operation saw is never subtracted, but a lost increment must not
    /// show as a huge unsigned number either.
    pub fn from_totals(totals: &StatsDelta) -> Stats {
        let mut top: Vec<(String, u64)> = totals
            .grants_by_resource
            .iter()
            .map(|(r, n)| (r.clone(), *n))
            .collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top.truncate(TOP_RESOURCES);
        let active_by_mode: Vec<(LockMode, u64)> = LockMode::ALL
            .iter()
            .map(|m| (*m, totals.active_by_mode[m.index()].max(0) as u64))
            .collect();
        Stats {
            total_locks: totals.grants_by_mode.iter().sum(),
            active_locks: active_by_mode.iter().map(|(_, n)| n).sum(),
            expired_locks: totals.expired,
            released_locks: totals.released + totals.abandoned,
            average_hold_time_ms: if totals.holds_ended == 0 {
                0.0
            } else {
                totals.hold_ms_sum as f64 / totals.holds_ended as f64
            },
            active_by_mode,
            top_resources: top,
            waiting: totals.waiting.max(0) as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_busiest_resources_are_kept() {
        let mut d = StatsDelta::default();
        for (name, n) in [("a", 5), ("b", 1), ("c", 9), ("d", 2)] {
            for _ in 0..n {
                d.record(name, &[Event::Granted(LockMode::Exclusive)]);
            }
        }
        d.keep_top_resources(2);
        let mut kept: Vec<_> = d.grants_by_resource.into_iter().collect();
        kept.sort();
        assert_eq!(kept, vec![("a".to_owned(), 5), ("c".to_owned(), 9)]);
        assert_eq!(d.grants_by_mode[0], 17, "other counters are untouched");
    }

    #[test]
    fn events_add_up_to_totals() {
        let mut d = StatsDelta::default();
        d.record(
            "a",
            &[
                Event::Enqueued,
                Event::Dequeued,
                Event::Granted(LockMode::Read),
            ],
        );
        d.record("a", &[Event::Granted(LockMode::Exclusive)]);
        d.record("b", &[Event::Granted(LockMode::Write)]);
        d.record(
            "a",
            &[Event::Ended {
                how: HoldEnd::Released,
                mode: LockMode::Read,
                held_ms: 100,
            }],
        );
        d.record(
            "b",
            &[Event::Ended {
                how: HoldEnd::Expired,
                mode: LockMode::Write,
                held_ms: 300,
            }],
        );
        let s = Stats::from_totals(&d);
        assert_eq!(s.total_locks, 3);
        assert_eq!(s.active_locks, 1);
        assert_eq!(s.released_locks, 1);
        assert_eq!(s.expired_locks, 1);
        assert_eq!(s.average_hold_time_ms, 200.0);
        assert_eq!(
            s.top_resources,
            vec![("a".to_owned(), 2), ("b".to_owned(), 1)]
        );
        assert_eq!(s.waiting, 0);
        assert!(s.active_by_mode.contains(&(LockMode::Exclusive, 1)));
    }
}
