//! Waiters: 1k and 10k requests waiting at once in the line of one resource
//! (WaitQueue streams on lockd, blocked Lock calls on etcd). Measured: the
//! daemon's RSS per waiter, and over a run of handoffs down the line: handoffs
//! per second, release-to-grant time, and the Redis work per handoff (commands
//! and script runs from `INFO commandstats`, CPU from `INFO cpu`), net of what
//! Redis does meanwhile when nothing is handed off. That work should not grow
//! with the length of the line; the idle rate is reported too, since a daemon
//! may do per-waiter work in the background.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use tokio::sync::mpsc;

use super::Ctx;
use super::scale::count_name;
use super::uncontended::error_note;
use crate::cli::Workload;
use crate::metrics::{CmdStats, Lat, RedisProbe};
use crate::report::{Row, bytes};
use crate::systems::{Held, LockReq};

/// How long a waiter may wait.
const WAIT: Duration = Duration::from_secs(300);
/// Joins in flight at once while filling the line.
const JOIN_CONCURRENCY: usize = 256;

/// Every line length of the settings, one after the other on the same deployment.
/// (`compare` instead starts a fresh deployment for each length, so that one
/// line's teardown cannot slow the next.)
pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &level in &ctx.settings.waiter_levels {
        rows.push(measure(ctx, level).await?);
    }
    annotate_growth(&mut rows);
    Ok(rows)
}

/// Adds to each row how its net Redis commands per handoff compare with the
/// first (shortest) line's, per system.
pub fn annotate_growth(rows: &mut [Row]) {
    let mut base: std::collections::HashMap<String, (u64, f64)> = Default::default();
    for row in rows
        .iter_mut()
        .filter(|r| r.workload == Workload::Waiters.name())
    {
        let Some(c) = row
            .extra
            .get("redis_cmds_per_handoff")
            .and_then(|v| v.as_f64())
        else {
            continue;
        };
        match base.get(&row.system) {
            None => {
                base.insert(row.system.clone(), (row.clients as u64, c));
            }
            Some(&(level, b)) if b > 0.0 => {
                let growth = round2(c / b);
                row.insert("redis_cmds_per_handoff_growth", growth);
                row.add_note(format!(
                    "x{growth} net cmds/handoff vs {} waiters",
                    count_name(level)
                ));
            }
            Some(_) => {}
        }
    }
}

/// State shared by the waiters during the handoff run. A plain mutex: held for
/// a few instructions, never across an await.
struct Chain {
    started: Instant,
    last_release: Instant,
    grants: usize,
    gaps: Lat,
}

/// Redis work per handoff; `None` where the idle background outweighed it.
struct PerHandoff {
    raw_cmds: f64,
    cmds: Option<f64>,
    scripts: Option<f64>,
    cpu_us: Option<f64>,
}

/// Redis counters at one moment.
#[derive(Clone, Copy)]
struct RedisSnap {
    cmds: CmdStats,
    cpu: f64,
    at: Instant,
}

async fn snap(r: &RedisProbe) -> Result<RedisSnap> {
    Ok(RedisSnap {
        cmds: r.commands().await?,
        cpu: r.cpu_secs().await?,
        at: Instant::now(),
    })
}

/// Per-second rates between two snapshots: (commands, scripts, CPU seconds).
fn rates(a: RedisSnap, b: RedisSnap) -> (f64, f64, f64) {
    let secs = (b.at - a.at).as_secs_f64().max(1e-9);
    let d = b.cmds.since(a.cmds);
    (
        d.calls as f64 / secs,
        d.scripts as f64 / secs,
        (b.cpu - a.cpu) / secs,
    )
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// One line of `w` waiters.
pub async fn measure(ctx: &Ctx, w: usize) -> Result<Row> {
    let s = &ctx.settings;
    let sys = ctx.system.clone();
    let resource = ctx.resource(&format!("q/{w}"));
    // Leases outlive the whole measurement with room to spare: the holder's is
    // not renewed, and etcd waiters renew theirs once a third of the TTL has
    // passed, which would add thousands of keep-alive streams to what is measured.
    let measurement = s.waiter_fill_budget + s.idle_window + s.waiter_handoff_time;
    let ttl_ms = 3 * measurement.as_millis() as u64 + 60_000;
    let req = |who: String| LockReq {
        resource: resource.clone(),
        client_id: who,
        ttl_ms,
        wait: WAIT,
    };
    let holder = sys
        .acquire(0, &req("holder".into()))
        .await
        .context("holder acquire")?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss0 = ctx.rss();

    // Fill the line, for at most the fill budget; joins still in flight then are dropped.
    let started = Instant::now();
    let joins: Vec<Result<_>> = futures::stream::iter(0..w)
        .map(|i| {
            let sys = sys.clone();
            let r = req(format!("waiter-{i}"));
            async move { sys.join_queue(i + 1, &r).await }
        })
        .buffer_unordered(JOIN_CONCURRENCY)
        .take_until(tokio::time::sleep(s.waiter_fill_budget))
        .collect()
        .await;
    let join_secs = started.elapsed().as_secs_f64();
    let (mut waiting, mut join_errors, mut first_error) = (Vec::new(), 0u64, None);
    for j in joins {
        match j {
            Ok(x) => waiting.push(x),
            Err(e) => {
                join_errors += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    let queued = waiting.len();
    tracing::debug!(w, queued, join_secs, "line filled");
    if queued < 2 {
        bail!(
            "only {queued} of {w} waiters joined: {}",
            first_error.unwrap_or_default()
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss1 = ctx.rss();

    // What Redis does with the line standing still (stats flushes, syncs, pings).
    let idle = match &ctx.redis {
        Some(r) => {
            let a = snap(r).await?;
            tokio::time::sleep(s.idle_window).await;
            Some(rates(a, snap(r).await?))
        }
        None => None,
    };

    // Hand the lock down the line; the waiter granted after `handoffs` grants,
    // or once the time is up, keeps it.
    let (handoffs, limit) = (s.waiter_handoffs.min(queued - 1), s.waiter_handoff_time);
    let now = Instant::now();
    let chain = Arc::new(Mutex::new(Chain {
        started: now,
        last_release: now,
        grants: 0,
        gaps: Lat::new(),
    }));
    let (last_tx, mut last_rx) = mpsc::unbounded_channel::<(usize, Held)>();
    let mut tasks = Vec::with_capacity(queued);
    for (i, wt) in waiting.into_iter().enumerate() {
        let (sys, chain, last_tx) = (sys.clone(), chain.clone(), last_tx.clone());
        tasks.push(tokio::spawn(async move {
            let held = wt.grant.await?;
            let keep = {
                let mut c = chain.lock().unwrap_or_else(|e| e.into_inner());
                let gap = c.last_release.elapsed();
                c.gaps.record(gap);
                c.grants += 1;
                let keep = c.grants > handoffs || c.started.elapsed() >= limit;
                if !keep {
                    c.last_release = Instant::now();
                }
                keep
            };
            if keep {
                let _ = last_tx.send((i + 1, held));
                Ok(())
            } else {
                sys.release(i + 1, &held).await
            }
        }));
    }
    drop(last_tx);
    let before = match &ctx.redis {
        Some(r) => Some(snap(r).await?),
        None => None,
    };
    tracing::debug!(w, handoffs, "handing off");
    let t0 = Instant::now();
    {
        let mut c = chain.lock().unwrap_or_else(|e| e.into_inner());
        c.started = t0;
        c.last_release = t0;
    }
    sys.release(0, &holder).await.context("holder release")?;
    let last = tokio::time::timeout(limit + Duration::from_secs(10), last_rx.recv()).await;
    let elapsed = t0.elapsed();
    let after = match &ctx.redis {
        Some(r) => Some(snap(r).await?),
        None => None,
    };
    let (grants, gaps) = {
        let c = chain.lock().unwrap_or_else(|e| e.into_inner());
        (c.grants, c.gaps.clone())
    };
    tracing::debug!(w, grants, ?elapsed, "handoffs done; leaving the line");

    // Leave the line: cancelling the calls removes the waiters; then free the lock.
    for t in &tasks {
        t.abort();
    }
    let mut handoff_errors = 0u64;
    for t in tasks {
        if let Ok(Err(e)) = t.await {
            handoff_errors += 1;
            first_error.get_or_insert_with(|| format!("{e:#}"));
        }
    }
    if let Ok(Some((slot, held))) = last {
        let _ = sys.release(slot, &held).await;
    }

    // Redis work per handoff: raw over the handoff run, and net of the idle
    // rate; the net figure is left out when the background outweighs the
    // handoffs (fewer commands per second while handing off than while idle).
    let per_handoff = match (before, after, idle) {
        (Some(a), Some(b), Some((idle_cmds, idle_scripts, idle_cpu))) if grants > 0 => {
            let secs = (b.at - a.at).as_secs_f64();
            let d = b.cmds.since(a.cmds);
            let g = grants as f64;
            let net = |total: f64, idle_rate: f64| {
                let n = total - idle_rate * secs;
                (n > 0.0).then(|| round2(n / g))
            };
            Some(PerHandoff {
                raw_cmds: round2(d.calls as f64 / g),
                cmds: net(d.calls as f64, idle_cmds),
                scripts: net(d.scripts as f64, idle_scripts),
                cpu_us: net((b.cpu - a.cpu) * 1e6, idle_cpu * 1e6),
            })
        }
        _ => None,
    };
    let rss_per_waiter = super::per(rss1, rss0, queued as u64);
    let errors = join_errors + handoff_errors;
    let mut row = ctx
        .row(
            Workload::Waiters,
            format!("{} waiters", count_name(w as u64)),
            w,
        )
        .ops(grants as f64 / elapsed.as_secs_f64().max(1e-9))
        .latency(gaps.summary())
        .set("waiters_queued", queued)
        .set(
            "join_per_sec",
            (queued as f64 / join_secs * 10.0).round() / 10.0,
        )
        .set("handoffs", grants)
        .set("daemon_rss_bytes", rss1)
        .set("rss_bytes_per_waiter", rss_per_waiter)
        .set(
            "redis_cmds_per_handoff",
            per_handoff.as_ref().and_then(|p| p.cmds),
        )
        .set(
            "redis_cmds_per_handoff_raw",
            per_handoff.as_ref().map(|p| p.raw_cmds),
        )
        .set(
            "redis_scripts_per_handoff",
            per_handoff.as_ref().and_then(|p| p.scripts),
        )
        .set(
            "redis_cpu_us_per_handoff",
            per_handoff.as_ref().and_then(|p| p.cpu_us),
        )
        .set("idle_redis_cmds_per_sec", idle.map(|i| round2(i.0)))
        .set("idle_redis_scripts_per_sec", idle.map(|i| round2(i.1)))
        .set("idle_redis_cpu_pct", idle.map(|i| round2(i.2 * 100.0)))
        .set("errors", errors)
        .set("first_error", first_error.clone())
        .note(
            rss_per_waiter
                .map(|b| format!("RSS {}/waiter", bytes(b)))
                .unwrap_or_default(),
        )
        .note(match &per_handoff {
            Some(PerHandoff {
                cmds: Some(c),
                raw_cmds,
                ..
            }) => {
                format!("{c} redis cmds/handoff net ({raw_cmds} raw)")
            }
            Some(p) => format!(
                "{} redis cmds/handoff raw; net unmeasurable under idle load",
                p.raw_cmds
            ),
            None => String::new(),
        })
        .note(
            idle.map(|i| format!("idle redis {:.0} cmds/s, {:.0}% CPU", i.0, i.2 * 100.0))
                .unwrap_or_default(),
        )
        .note(error_note(errors, &first_error));
    if queued < w {
        row = row.error(format!(
            "only {queued} of {w} waiters joined within {:?}",
            s.waiter_fill_budget
        ));
    }
    Ok(row)
}
