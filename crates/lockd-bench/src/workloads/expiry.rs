//! Expiry: holders that never release. Each of several resources gets a holder
//! with a short TTL (200 ms) and a line of waiters that never release either, so
//! every grant after the first follows the expiry of the lease before it.
//! Measured: time from that lease's `expires_at` to the next grant arriving.
//! lockd reports `expires_at` itself (Redis clock, same machine); for the other
//! systems it is estimated from when the TTL was last set, which is a little
//! early, so their figures are upper bounds.

use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};

use super::Ctx;
use super::uncontended::error_note;
use crate::cli::Workload;
use crate::metrics::Lat;
use crate::report::Row;
use crate::systems::{Held, LockReq};

/// How long a waiter may wait: long enough for a line of etcd's 2 s minimum leases.
const WAIT: Duration = Duration::from_secs(120);

#[derive(Default)]
struct ChainOut {
    gaps: Vec<Duration>,
    /// Grants that came before the previous lease's expires_at, and by how much.
    early: Vec<Duration>,
    ttl_ms: u64,
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let s = &ctx.settings;
    let outcomes = futures::future::join_all((0..s.expiry_chains).map(|c| chain(ctx, c))).await;
    let mut lat = Lat::new();
    let (mut early, mut max_early) = (0u64, Duration::ZERO);
    let (mut errors, mut first_error) = (0u64, None);
    let mut ttl_ms = 0;
    for o in outcomes {
        match o {
            Ok(c) => {
                c.gaps.iter().for_each(|g| lat.record(*g));
                early += c.early.len() as u64;
                max_early = c.early.iter().copied().fold(max_early, Duration::max);
                ttl_ms = ttl_ms.max(c.ttl_ms);
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    let estimated = !ctx.system.name().starts_with("lockd");
    let row = ctx
        .row(
            Workload::Expiry,
            format!("ttl {ttl_ms} ms"),
            s.expiry_chains * (s.expiry_chain_len + 1),
        )
        .latency(lat.summary())
        .set("ttl_ms_requested", s.expiry_ttl_ms)
        .set("ttl_ms", ttl_ms)
        .set("chains", s.expiry_chains)
        .set("chain_len", s.expiry_chain_len)
        .set("early_grants", early)
        .set("max_early_ms", super::ms(max_early))
        .set("expires_at_estimated", estimated)
        .set("errors", errors)
        .set("first_error", first_error.clone())
        .note(if ttl_ms > s.expiry_ttl_ms && ttl_ms > 0 {
            format!("TTL raised to the system's minimum, {ttl_ms} ms")
        } else {
            String::new()
        })
        .note(if estimated {
            "expires_at estimated client-side"
        } else {
            ""
        })
        .note(if early > 0 && !estimated {
            format!(
                "{early} GRANTS BEFORE expires_at (up to {:.3} ms)",
                super::ms(max_early)
            )
        } else {
            String::new()
        })
        .note(error_note(errors, &first_error));
    Ok(vec![row])
}

/// One resource: a holder and a line of waiters, none of which release.
async fn chain(ctx: &Ctx, c: usize) -> Result<ChainOut> {
    let s = &ctx.settings;
    let chains = s.expiry_chains;
    let resource = ctx.resource(&format!("e/{c}"));
    let req = |who: String| LockReq {
        resource: resource.clone(),
        client_id: who,
        ttl_ms: s.expiry_ttl_ms,
        wait: WAIT,
    };
    let holder = ctx
        .system
        .acquire(c, &req(format!("holder-{c}")))
        .await
        .context("first holder")?;
    let mut tasks = Vec::new();
    for i in 0..s.expiry_chain_len {
        let slot = c + chains * (i + 1);
        let w = ctx
            .system
            .join_queue(slot, &req(format!("waiter-{c}-{i}")))
            .await
            .with_context(|| format!("waiter {i} joining"))?;
        tasks.push(tokio::spawn(async move {
            let held = w.grant.await?;
            Ok::<(SystemTime, Held), anyhow::Error>((SystemTime::now(), held))
        }));
    }
    let mut grants = Vec::new();
    for t in tasks {
        grants.push(t.await.context("waiter task")??);
    }
    grants.sort_by_key(|g| g.0);
    let mut out = ChainOut {
        ttl_ms: holder.ttl_ms,
        ..Default::default()
    };
    let mut prev_expiry = holder.expires_at;
    for (at, held) in grants {
        match at.duration_since(prev_expiry) {
            Ok(gap) => out.gaps.push(gap),
            Err(e) => out.early.push(e.duration()),
        }
        prev_expiry = held.expires_at;
    }
    Ok(out)
}
