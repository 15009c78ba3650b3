//! The retrying client of a failover run: attempts to take one fresh lock,
//! started at a fixed pace from the moment of the kill until one succeeds.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use serde::Serialize;

/// How attempts are paced and bounded.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Between the starts of two attempts.
    pub every: Duration,
    /// Attempts under way at once, at most.
    pub in_flight: usize,
    /// Deadline of one attempt.
    pub timeout: Duration,
    /// No attempt starts, and none is waited for, later than this after the start.
    pub give_up: Duration,
}

/// What the attempts of one run saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Attempts {
    /// From the start to the answer of the first successful attempt.
    #[serde(rename = "granted_ms", serialize_with = "opt_ms")]
    pub granted: Option<Duration>,
    /// When that attempt had been sent, from the start: the grant became
    /// possible between the last failure's start and the grant.
    #[serde(rename = "granted_attempt_sent_ms", serialize_with = "opt_ms")]
    pub granted_sent: Option<Duration>,
    /// When the last failed attempt before the grant had been sent.
    #[serde(rename = "last_failed_attempt_sent_ms", serialize_with = "opt_ms")]
    pub last_failed_sent: Option<Duration>,
    pub attempts: u64,
    /// Failed attempts by the kind of failure (`Acquire: Unavailable`, ...).
    pub failures: BTreeMap<String, u64>,
    pub first_failure: Option<String>,
    pub last_failure: Option<String>,
}

fn opt_ms<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(ms(*d)),
        None => s.serialize_none(),
    }
}

/// Milliseconds with microsecond precision.
pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Starts `attempt(n)` every `pace.every` from `start` (at most
/// `pace.in_flight` at once) until one succeeds or `pace.give_up` has passed.
pub async fn until_granted<F>(start: Instant, pace: Pace, mut attempt: F) -> Attempts
where
    F: FnMut(u64) -> BoxFuture<'static, Result<()>>,
{
    let mut out = Attempts::default();
    let mut running = FuturesUnordered::new();
    let give_up = tokio::time::Instant::from_std(start + pace.give_up);
    let mut next = tokio::time::Instant::now();
    let mut n = 0u64;
    loop {
        tokio::select! {
            biased;
            Some((sent, outcome)) = running.next(), if !running.is_empty() => {
                let outcome: Result<Result<()>, tokio::time::error::Elapsed> = outcome;
                match outcome {
                    Ok(Ok(())) => {
                        out.granted = Some(start.elapsed());
                        out.granted_sent = Some(sent);
                        break;
                    }
                    Ok(Err(e)) => out.failed(sent, failure_kind(&e), format!("{e:#}")),
                    Err(_) => out.failed(sent, "attempt timeout".into(), "attempt timeout".into()),
                }
            }
            _ = tokio::time::sleep_until(next), if running.len() < pace.in_flight => {
                let sent = start.elapsed();
                let fut = tokio::time::timeout(pace.timeout, attempt(n));
                running.push(async move { (sent, fut.await) });
                n += 1;
                out.attempts = n;
                next = (next + pace.every).max(tokio::time::Instant::now());
            }
            _ = tokio::time::sleep_until(give_up) => break,
        }
    }
    out
}

impl Attempts {
    fn failed(&mut self, sent: Duration, kind: String, message: String) {
        *self.failures.entry(kind).or_default() += 1;
        let message: String = message.chars().take(300).collect();
        self.first_failure.get_or_insert_with(|| message.clone());
        self.last_failure = Some(message);
        if self.last_failed_sent.is_none_or(|s| s < sent) {
            self.last_failed_sent = Some(sent);
        }
    }
}

/// The operation and status of an error (`Acquire: Unavailable`), without the
/// message, which names addresses and times that differ on every attempt.
pub fn failure_kind(e: &anyhow::Error) -> String {
    let text = format!("{e:#}");
    let mut parts = text.splitn(3, ": ");
    let kind = match (parts.next(), parts.next()) {
        (Some(a), Some(b)) => format!("{a}: {b}"),
        (Some(a), None) => a.to_string(),
        _ => String::new(),
    };
    kind.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn pace() -> Pace {
        Pace {
            every: Duration::from_millis(2),
            in_flight: 4,
            timeout: Duration::from_millis(50),
            give_up: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn stops_at_the_first_success_and_counts_the_failures_by_kind() {
        let calls = Arc::new(AtomicU64::new(0));
        let c = calls.clone();
        let out = until_granted(Instant::now(), pace(), move |n| {
            c.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                if n < 5 {
                    anyhow::bail!("Acquire: Unavailable: no primary at 127.0.0.1:{n}")
                }
                Ok(())
            })
        })
        .await;
        assert!(out.granted.is_some());
        assert_eq!(out.failures.get("Acquire: Unavailable"), Some(&5));
        assert!(out.granted_sent >= out.last_failed_sent);
        assert!(out.attempts >= 6);
    }

    #[tokio::test]
    async fn an_attempt_that_hangs_does_not_hold_up_the_next() {
        let out = until_granted(Instant::now(), pace(), |n| {
            Box::pin(async move {
                if n == 0 {
                    futures::future::pending::<()>().await;
                }
                Ok(())
            })
        })
        .await;
        // Attempt 1 succeeds while attempt 0 still hangs.
        assert!(out.granted.is_some());
        assert!(out.failures.is_empty());
    }

    #[tokio::test]
    async fn gives_up() {
        let mut p = pace();
        p.give_up = Duration::from_millis(30);
        let out = until_granted(Instant::now(), p, |_| {
            Box::pin(async { anyhow::bail!("LeaseGrant: etcdserver: no leader") })
        })
        .await;
        assert!(out.granted.is_none());
        assert_eq!(
            out.failures.keys().next().unwrap(),
            "LeaseGrant: etcdserver"
        );
    }
}
