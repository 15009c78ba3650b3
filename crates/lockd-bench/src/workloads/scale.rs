//! Scale: hold 1k, 10k, 100k (and 1M in the full run) leases at once. At each
//! level: the rate at which the leases were taken, acquire latency of an
//! open-loop probe on other resources, Redis memory per lease (growth of
//! `used_memory` over the leases held) and the daemon's RSS.
//!
//! Filling is bounded by a wall-time budget per system; a level not reached
//! within it is reported with the count reached, and larger levels are skipped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::sync::Mutex;

use super::Ctx;
use super::uncontended::error_note;
use crate::cli::Workload;
use crate::load::{open_loop, pair_op};
use crate::report::{Row, bytes};
use crate::systems::{Held, LockReq};

/// Fill errors after which filling stops.
const MAX_FILL_ERRORS: u64 = 1_000;

/// The shared state of the fill workers.
struct Fill {
    /// Next resource number to take.
    next: AtomicU64,
    /// Leases taken, plus those being taken right now.
    held: AtomicU64,
    errors: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
    /// The leases, kept only when they must be released afterwards.
    kept: Option<Mutex<Vec<Held>>>,
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let s = &ctx.settings;
    // Leases must outlive the fill (1M leases take a few minutes here), and
    // lockd's default --max-ttl is 5 minutes.
    let ttl_ms = 300_000;
    let mem0 = used_memory(ctx).await;
    let rss0 = ctx.rss();
    let fill = Arc::new(Fill {
        next: AtomicU64::new(0),
        held: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_error: std::sync::Mutex::new(None),
        kept: ctx.cleanup.then(|| Mutex::new(Vec::new())),
    });
    let budget_end = Instant::now() + s.scale_fill_budget;
    let probe_rate = match ctx.peak {
        Some(peak) if peak * 0.5 < s.scale_probe_rate => (peak * 0.5).max(10.0),
        _ => s.scale_probe_rate,
    };
    let mut rows = Vec::new();
    for &level in &s.scale_levels {
        let before = fill.held.load(Ordering::Relaxed);
        let started = Instant::now();
        fill_to(ctx, &fill, level, ttl_ms, budget_end).await;
        let held = fill.held.load(Ordering::Relaxed);
        let fill_rate = (held - before) as f64 / started.elapsed().as_secs_f64().max(1e-9);
        // Let counters and lazy structures settle before reading memory.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mem = used_memory(ctx).await;
        let rss = ctx.rss();
        let redis_per_lease = super::per(mem, mem0, held);
        let rss_per_lease = super::per(rss, rss0, held);
        let fill_errors = fill.errors.load(Ordering::Relaxed);
        let first_error = fill
            .first_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut row = ctx
            .row(
                Workload::Scale,
                format!("{} leases", count_name(level)),
                s.clients,
            )
            .ops(fill_rate)
            .set("leases_held", held)
            .set("fill_acquires_per_sec", (fill_rate * 10.0).round() / 10.0)
            .set("fill_errors", fill_errors)
            .set("first_error", first_error.clone())
            .set("redis_used_memory_bytes", mem)
            .set("redis_bytes_per_lease", redis_per_lease)
            .set("daemon_rss_bytes", rss)
            .set("daemon_rss_bytes_per_lease", rss_per_lease)
            .note("ops/s = fill rate")
            .note(
                redis_per_lease
                    .map(|b| format!("redis {}/lease", bytes(b)))
                    .unwrap_or_default(),
            )
            .note(
                rss.map(|b| format!("daemon RSS {}", bytes(b as f64)))
                    .unwrap_or_default(),
            )
            .note(error_note(fill_errors, &first_error));
        if held < level {
            rows.push(row.error(format!(
                "reached {held} of {level} leases ({fill_errors} errors, fill budget {:?}); larger levels skipped",
                s.scale_fill_budget
            )));
            break;
        }
        let op = pair_op(
            ctx.system.clone(),
            ctx.resource(&format!("sp/{level}/")),
            64,
            s.lease_ttl_ms,
        );
        let probe = open_loop(s.clients, probe_rate, s.scale_probe_duration, op).await;
        row = row
            .latency(probe.acquire.summary())
            .set("probe_rate", (probe_rate * 10.0).round() / 10.0)
            .set("probe_release_latency_ms", probe.release.summary())
            .set("probe_errors", probe.errors)
            .set("probe_dispatch_lag_ms", probe.dispatch_lag.summary())
            .note(super::uncontended::starved_note(&probe.dispatch_lag))
            .note(format!("latency: open-loop probe at {probe_rate:.0}/s"));
        rows.push(row);
    }
    if let Some(kept) = &fill.kept {
        release_all(ctx, std::mem::take(&mut *kept.lock().await)).await;
    }
    Ok(rows)
}

/// Takes leases on fresh resources with `clients` workers until `level` are
/// held, `budget_end` passes, or too many errors.
async fn fill_to(ctx: &Ctx, fill: &Arc<Fill>, level: u64, ttl_ms: u64, budget_end: Instant) {
    let mut tasks = Vec::new();
    for worker in 0..ctx.settings.clients {
        let fill = fill.clone();
        let sys = ctx.system.clone();
        let prefix = ctx.resource("s/");
        tasks.push(tokio::spawn(async move {
            while Instant::now() < budget_end
                && fill.errors.load(Ordering::Relaxed) < MAX_FILL_ERRORS
            {
                // Reserve one of the `level` leases; given back if the acquire fails.
                if fill.held.fetch_add(1, Ordering::Relaxed) >= level {
                    fill.held.fetch_sub(1, Ordering::Relaxed);
                    break;
                }
                let i = fill.next.fetch_add(1, Ordering::Relaxed);
                let req = LockReq {
                    resource: format!("{prefix}{i}"),
                    client_id: format!("bench-{worker}"),
                    ttl_ms,
                    wait: Duration::from_secs(2),
                };
                match sys.acquire(worker, &req).await {
                    Ok(h) => {
                        if let Some(kept) = &fill.kept {
                            kept.lock().await.push(h);
                        }
                    }
                    Err(e) => {
                        fill.held.fetch_sub(1, Ordering::Relaxed);
                        fill.errors.fetch_add(1, Ordering::Relaxed);
                        let mut first = fill.first_error.lock().unwrap_or_else(|e| e.into_inner());
                        first.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// Releases `held` with a few dozen concurrent requests, within two minutes.
async fn release_all(ctx: &Ctx, held: Vec<Held>) {
    use futures::StreamExt;
    let deadline = Instant::now() + Duration::from_secs(120);
    let sys = ctx.system.clone();
    futures::stream::iter(held.into_iter().enumerate())
        .for_each_concurrent(64, |(i, h)| {
            let sys = sys.clone();
            async move {
                if Instant::now() < deadline {
                    let _ = sys.release(i, &h).await;
                }
            }
        })
        .await;
}

async fn used_memory(ctx: &Ctx) -> Option<u64> {
    match &ctx.redis {
        Some(r) => r.used_memory().await.ok(),
        None => None,
    }
}

/// 1000 -> "1k", 1000000 -> "1M".
pub fn count_name(n: u64) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}
