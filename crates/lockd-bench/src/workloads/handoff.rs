//! Handoff: N waiters join the line of one resource, one after another, behind a
//! gate holder; the gate releases, and each waiter releases as soon as it is
//! granted. Measured: time from a release being sent to the next grant arriving,
//! grants per second while the line drains, and whether the grants came in the
//! order the waiters joined (FIFO). Repeated over rounds on fresh resources, and,
//! with two lockd replicas, with consecutive waiters on different replicas.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::Ctx;
use super::uncontended::error_note;
use crate::cli::Workload;
use crate::metrics::Lat;
use crate::report::Row;
use crate::systems::{LockReq, LockSystem};

/// How long a waiter may wait for its grant.
const WAIT: Duration = Duration::from_secs(30);

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let n = ctx.settings.handoff_waiters;
    let mut rows = vec![measure(ctx, &ctx.system, format!("{n} waiters"), "h1").await?];
    if let Some(replicated) = &ctx.replicated {
        rows.push(measure(ctx, replicated, format!("{n} waiters, 2 replicas"), "h2").await?);
    }
    Ok(rows)
}

/// What one drained line showed.
#[derive(Default)]
struct Round {
    /// Release-to-grant gaps, in grant order.
    gaps: Vec<Duration>,
    /// Waiter numbers in grant order.
    order: Vec<usize>,
    fencing: Vec<Option<u64>>,
    /// Places in line reported on joining (lockd), by waiter number.
    positions: Vec<Option<u64>>,
    /// From the gate's release to the last grant.
    drain: Duration,
    errors: u64,
    first_error: Option<String>,
}

/// Shared by the waiters of one round: when the last release was sent, and the
/// grants so far. A plain mutex: it is held for a few instructions, never across
/// an await.
struct Chain {
    last_release: Instant,
    grants: Vec<(usize, Instant, Duration, Option<u64>)>,
}

async fn measure(ctx: &Ctx, sys: &Arc<dyn LockSystem>, level: String, tag: &str) -> Result<Row> {
    let s = &ctx.settings;
    let n = s.handoff_waiters;
    let mut gaps = Lat::new();
    let (mut grants, mut drain) = (0u64, Duration::ZERO);
    let (mut fifo_ok, mut fencing_ok, mut positions_ok) = (true, true, true);
    let (mut errors, mut first_error) = (0u64, None);
    for r in 0..s.handoff_rounds {
        let resource = ctx.resource(&format!("{tag}/{r}"));
        let round = round(ctx, sys, &resource, n).await?;
        round.gaps.iter().for_each(|g| gaps.record(*g));
        grants += round.order.len() as u64;
        drain += round.drain;
        fifo_ok &= round.order == (0..n).collect::<Vec<_>>();
        let tokens: Vec<u64> = round.fencing.iter().flatten().copied().collect();
        fencing_ok &= tokens.windows(2).all(|w| w[0] < w[1]);
        positions_ok &= round
            .positions
            .iter()
            .enumerate()
            .all(|(i, p)| p.is_none_or(|p| p == i as u64));
        errors += round.errors;
        first_error = first_error.or(round.first_error);
    }
    let fair = sys.fair();
    let has_fencing = sys.name().starts_with("lockd");
    let rate = if drain.is_zero() {
        0.0
    } else {
        grants as f64 / drain.as_secs_f64()
    };
    let mut row = ctx
        .row(Workload::Handoff, level, n)
        .ops(rate)
        .latency(gaps.summary())
        .set("rounds", s.handoff_rounds)
        .set("grants", grants)
        .set("fair", fair)
        .set("fifo_ok", fifo_ok)
        .set("fencing_ok", has_fencing.then_some(fencing_ok))
        .set("positions_ok", has_fencing.then_some(positions_ok))
        .set("errors", errors)
        .set("first_error", first_error.clone());
    row = if fair {
        row.note(if fifo_ok { "FIFO ok" } else { "FIFO VIOLATED" })
    } else {
        row.set("spin_ms", super::ms(s.spin)).note(format!(
            "unfair: spin-retry every {} ms, no queue; grants in join order: {}",
            super::ms(s.spin),
            if fifo_ok { "yes" } else { "no" }
        ))
    };
    if has_fencing {
        row = row
            .note(if fencing_ok {
                "fencing ok"
            } else {
                "FENCING NOT INCREASING"
            })
            .note(if positions_ok {
                ""
            } else {
                "WRONG QUEUE POSITIONS"
            });
    }
    Ok(row.note(error_note(errors, &first_error)))
}

async fn round(ctx: &Ctx, sys: &Arc<dyn LockSystem>, resource: &str, n: usize) -> Result<Round> {
    let ttl_ms = ctx.settings.lease_ttl_ms;
    let gate_req = LockReq {
        resource: resource.to_string(),
        client_id: "gate".into(),
        ttl_ms,
        wait: Duration::from_secs(5),
    };
    let gate = sys.acquire(0, &gate_req).await.context("gate acquire")?;
    let mut out = Round::default();
    let mut waiting = Vec::with_capacity(n);
    for i in 0..n {
        let req = LockReq {
            resource: resource.to_string(),
            client_id: format!("waiter-{i}"),
            ttl_ms,
            wait: WAIT,
        };
        let w = sys
            .join_queue(i + 1, &req)
            .await
            .with_context(|| format!("waiter {i} joining the line"))?;
        out.positions.push(w.position);
        waiting.push(w);
    }
    let chain = Arc::new(Mutex::new(Chain {
        last_release: Instant::now(),
        grants: Vec::with_capacity(n),
    }));
    let mut tasks = Vec::with_capacity(n);
    for (i, w) in waiting.into_iter().enumerate() {
        let (sys, chain) = (sys.clone(), chain.clone());
        tasks.push(tokio::spawn(async move {
            let held = tokio::time::timeout(WAIT, w.grant)
                .await
                .context("no grant within 30 s")??;
            {
                let mut c = chain.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                let gap = now - c.last_release;
                c.grants.push((i, now, gap, held.fencing));
                c.last_release = Instant::now();
            }
            sys.release(i + 1, &held).await
        }));
    }
    let released_at = Instant::now();
    chain.lock().unwrap_or_else(|e| e.into_inner()).last_release = released_at;
    sys.release(0, &gate).await.context("gate release")?;
    for t in tasks {
        let outcome = t.await.map_err(anyhow::Error::new).and_then(|r| r);
        if let Err(e) = outcome {
            out.errors += 1;
            out.first_error.get_or_insert_with(|| format!("{e:#}"));
        }
    }
    let c = chain.lock().unwrap_or_else(|e| e.into_inner());
    let mut grants = c.grants.clone();
    grants.sort_by_key(|g| g.1);
    out.drain = grants.last().map(|g| g.1 - released_at).unwrap_or_default();
    for (who, _, gap, fencing) in grants {
        out.order.push(who);
        out.gaps.push(gap);
        out.fencing.push(fencing);
    }
    Ok(out)
}
