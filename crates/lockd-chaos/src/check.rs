//! The checks made over the whole history once the run ends.
//!
//! The live checks (conflicting leases, fenced or lost writes, foreign
//! releases) run as the workload goes, in `history` and `register`; these
//! need every grant: tokens unique and increasing in real time per
//! resource, and FIFO among waiters that stayed.

use std::collections::{HashMap, HashSet};

use crate::history::{Grant, Method};

/// At most this many findings of one check are listed; the rest are counted.
const LIST_LIMIT: usize = 20;

/// Every finding of the history checks.
pub fn check(grants: &[Grant]) -> Vec<String> {
    let mut by_resource: HashMap<&str, Vec<&Grant>> = HashMap::new();
    for g in grants {
        by_resource.entry(&g.resource).or_default().push(g);
    }
    let mut findings = Vec::new();
    for (resource, grants) in by_resource {
        findings.extend(capped(resource, "duplicate token", unique_tokens(&grants)));
        findings.extend(capped(
            resource,
            "token order",
            tokens_follow_real_time(&grants),
        ));
        findings.extend(capped(resource, "fifo", fifo(&grants)));
    }
    findings
}

fn capped(resource: &str, check: &str, found: Vec<String>) -> Vec<String> {
    let total = found.len();
    let mut out: Vec<String> = found
        .into_iter()
        .take(LIST_LIMIT)
        .map(|f| format!("{resource}: {check}: {f}"))
        .collect();
    if total > LIST_LIMIT {
        out.push(format!("{resource}: {check}: {} more", total - LIST_LIMIT));
    }
    out
}

fn unique_tokens(grants: &[&Grant]) -> Vec<String> {
    let mut seen = HashSet::new();
    grants
        .iter()
        .filter(|g| !seen.insert(g.token))
        .map(|g| format!("token {} granted twice", g.token))
        .collect()
}

/// A grant asked for after another grant was received must carry a higher
/// token: "strictly increases per resource".
fn tokens_follow_real_time(grants: &[&Grant]) -> Vec<String> {
    let mut by_received: Vec<&Grant> = grants.to_vec();
    by_received.sort_by_key(|g| g.received);
    let mut by_sent: Vec<&Grant> = grants.to_vec();
    by_sent.sort_by_key(|g| g.sent);
    let mut found = Vec::new();
    let mut done = 0;
    let mut highest: Option<&Grant> = None;
    for later in by_sent {
        while done < by_received.len() && by_received[done].received < later.sent {
            let g = by_received[done];
            if highest.is_none_or(|h| g.token > h.token) {
                highest = Some(g);
            }
            done += 1;
        }
        if let Some(earlier) = highest
            && later.token <= earlier.token
        {
            found.push(format!(
                "token {} was asked for after token {} had been granted",
                later.token, earlier.token
            ));
        }
    }
    found
}

/// A WaitQueue waiter told its place before another request was sent is
/// granted first (a lower token), when both were granted and no Redis data
/// loss lay between them.
fn fifo(grants: &[&Grant]) -> Vec<String> {
    let mut queued: Vec<(&Grant, tokio::time::Instant)> = grants
        .iter()
        .filter(|g| g.method == Method::WaitQueue)
        .filter_map(|g| g.queued_at.map(|at| (*g, at)))
        .collect();
    queued.sort_by_key(|(_, at)| *at);
    let mut by_sent: Vec<&Grant> = grants.to_vec();
    by_sent.sort_by_key(|g| g.sent);
    // Per data-loss epoch, the queued waiter with the highest token among
    // those told their place before the current request was sent.
    let mut highest: HashMap<u64, &Grant> = HashMap::new();
    let mut done = 0;
    let mut found = Vec::new();
    for later in by_sent {
        while done < queued.len() && queued[done].1 < later.sent {
            let g = queued[done].0;
            let best = highest.entry(g.losses_at_send).or_insert(g);
            if g.token > best.token {
                *best = g;
            }
            done += 1;
        }
        if let Some(earlier) = highest.get(&later.losses_at_grant)
            && later.token < earlier.token
        {
            found.push(format!(
                "token {} ({}) was granted ahead of token {} ({}), which was queued before \
                     it was asked for",
                later.token,
                later.mode.as_str(),
                earlier.token,
                earlier.mode.as_str()
            ));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use lockd_client::Mode;
    use tokio::time::Instant;

    use super::*;

    fn grant(token: u64, sent_ms: u64, received_ms: u64, queued_ms: Option<u64>) -> Grant {
        let base = Instant::now();
        let at = |ms| base + Duration::from_millis(ms);
        Grant {
            resource: "r".into(),
            mode: Mode::Exclusive,
            token,
            method: if queued_ms.is_some() {
                Method::WaitQueue
            } else {
                Method::Acquire
            },
            sent: at(sent_ms),
            received: at(received_ms),
            queued_at: queued_ms.map(at),
            losses_at_send: 0,
            losses_at_grant: 0,
        }
    }

    #[test]
    fn a_clean_history_passes() {
        let grants = [
            grant(1, 0, 2, None),
            grant(2, 1, 10, Some(3)),
            grant(3, 5, 20, Some(6)),
        ];
        assert!(check(&grants).is_empty(), "{:?}", check(&grants));
    }

    #[test]
    fn a_token_that_goes_back_is_found() {
        let grants = [grant(5, 0, 2, None), grant(4, 3, 4, None)];
        let found = check(&grants);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("token order"));
    }

    #[test]
    fn a_duplicate_token_is_found() {
        let grants = [grant(5, 0, 2, None), grant(5, 1, 3, None)];
        assert!(check(&grants).iter().any(|f| f.contains("duplicate token")));
    }

    #[test]
    fn barging_past_a_queued_waiter_is_found() {
        // Token 3 was queued at 2 ms; a request sent at 5 ms got token 2.
        let grants = [grant(3, 0, 20, Some(2)), grant(2, 5, 6, None)];
        let found = check(&grants);
        assert!(found.iter().any(|f| f.contains("fifo")), "{found:?}");
    }

    #[test]
    fn fifo_is_not_judged_across_a_data_loss() {
        let mut later = grant(2, 5, 6, None);
        later.losses_at_grant = 1;
        let grants = [grant(3, 0, 20, Some(2)), later];
        assert!(!check(&grants).iter().any(|f| f.contains("fifo")));
    }
}
