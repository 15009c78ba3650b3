//! Uncontended: C clients take and release locks on resources nobody else uses.
//! First a closed loop finds the peak rate of acquire+release pairs; then an open
//! loop at half that rate gives latency with queueing counted.

use anyhow::Result;

use super::Ctx;
use crate::cli::Workload;
use crate::load::{closed_loop, open_loop, pair_op};
use crate::report::Row;

/// Resources each client cycles over.
const KEYS_PER_CLIENT: u64 = 64;

/// The level name of the closed-loop row, which other workloads read the peak from.
pub const PEAK_LEVEL: &str = "peak (closed loop)";

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let s = &ctx.settings;
    let op = pair_op(
        ctx.system.clone(),
        ctx.resource("u/"),
        KEYS_PER_CLIENT,
        s.lease_ttl_ms,
    );
    let peak = closed_loop(s.clients, s.warmup, s.peak_duration, op.clone()).await;
    let mut rows = vec![
        ctx.row(Workload::Uncontended, PEAK_LEVEL, s.clients)
            .ops(peak.rate())
            .latency(peak.acquire.summary())
            .set("release_latency_ms", peak.release.summary())
            .set("errors", peak.errors)
            .set("first_error", peak.first_error.clone())
            .note(release_note(&peak.release))
            .note(error_note(peak.errors, &peak.first_error)),
    ];
    let target = peak.rate() * 0.5;
    if peak.ops == 0 || target < 1.0 {
        return Ok(rows);
    }
    let open = open_loop(s.clients, target, s.open_duration, op).await;
    rows.push(
        ctx.row(Workload::Uncontended, "50% of peak (open loop)", s.clients)
            .ops(open.rate())
            .latency(open.acquire.summary())
            .set("target_rate", (target * 10.0).round() / 10.0)
            .set("release_latency_ms", open.release.summary())
            .set("pair_latency_ms", open.pair.summary())
            .set("acquire_service_ms", open.acquire_service.summary())
            .set("dispatch_lag_ms", open.dispatch_lag.summary())
            .set("dropped", open.dropped)
            .set("errors", open.errors)
            .set("first_error", open.first_error.clone())
            .note(format!("target {target:.0}/s"))
            .note(release_note(&open.release))
            .note(if open.dropped > 0 {
                format!("{} dropped", open.dropped)
            } else {
                String::new()
            })
            .note(starved_note(&open.dispatch_lag))
            .note(error_note(open.errors, &open.first_error)),
    );
    Ok(rows)
}

fn release_note(lat: &crate::metrics::Lat) -> String {
    match lat.summary() {
        Some(p) => format!("release p50/p99 {:.3}/{:.3} ms", p.p50, p.p99),
        None => String::new(),
    }
}

/// A warning when the load generator's own arrivals ran late: then the machine,
/// not only the system under test, was short of CPU.
pub fn starved_note(lag: &crate::metrics::Lat) -> String {
    match lag.summary() {
        Some(p) if p.p99 > 2.0 => format!("load generator late: arrival lag p99 {:.1} ms", p.p99),
        _ => String::new(),
    }
}

pub fn error_note(errors: u64, first: &Option<String>) -> String {
    match (errors, first) {
        (0, _) => String::new(),
        (n, Some(e)) => format!(
            "{n} errors, first: {}",
            e.chars().take(100).collect::<String>()
        ),
        (n, None) => format!("{n} errors"),
    }
}
