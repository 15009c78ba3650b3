//! The workloads, one module each. Each takes a [`Ctx`] (one system, ready) and
//! returns its result rows.

pub mod expiry;
pub mod handoff;
pub mod scale;
pub mod uncontended;
pub mod waiters;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use crate::cli::{Settings, Workload};
use crate::metrics::{RedisProbe, rss_bytes};
use crate::report::Row;
use crate::systems::LockSystem;

/// Everything a workload needs about the system it loads.
pub struct Ctx {
    pub system: Arc<dyn LockSystem>,
    /// The same deployment with consecutive slots on different replicas, when
    /// there are two or more.
    pub replicated: Option<Arc<dyn LockSystem>>,
    pub settings: Arc<Settings>,
    /// The process serving the API, for RSS figures.
    pub daemon_pid: Option<u32>,
    /// The Redis holding the state, for memory and command counts.
    pub redis: Option<RedisProbe>,
    /// Prefix of every resource name of this run, so that runs never meet.
    pub prefix: String,
    /// Peak pairs/s that the uncontended workload measured on this system.
    pub peak: Option<f64>,
    /// Release what a workload leaves held: set when loading a real deployment.
    pub cleanup: bool,
}

impl Ctx {
    pub fn resource(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    pub fn row(&self, workload: Workload, level: impl Into<String>, clients: usize) -> Row {
        Row::new(workload.name(), self.system.name(), level, clients)
    }

    /// RSS of the daemon, if known and readable.
    pub fn rss(&self) -> Option<u64> {
        self.daemon_pid.and_then(|pid| rss_bytes(pid).ok())
    }
}

/// Runs `workload`; `level` picks one line length of the waiters workload
/// instead of all of them.
pub async fn run(workload: Workload, ctx: &Ctx, level: Option<usize>) -> Result<Vec<Row>> {
    match workload {
        Workload::Uncontended => uncontended::run(ctx).await,
        Workload::Handoff => handoff::run(ctx).await,
        Workload::Expiry => expiry::run(ctx).await,
        Workload::Scale => scale::run(ctx).await,
        Workload::Waiters => match level {
            Some(w) => Ok(vec![waiters::measure(ctx, w).await?]),
            None => waiters::run(ctx).await,
        },
    }
}

/// Per-lease or per-waiter share of a growth in bytes.
fn per(after: Option<u64>, before: Option<u64>, count: u64) -> Option<f64> {
    let (a, b) = (after?, before?);
    (count > 0).then(|| ((a as f64 - b as f64) / count as f64 * 10.0).round() / 10.0)
}

/// Milliseconds with microsecond precision, for JSON fields.
fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}
