//! Command-line flags, and the [`Settings`] they resolve to.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::systems::SystemKind;

/// Load lockd and compare it with Redis SET NX locks and etcd's Lock API.
#[derive(Debug, Parser)]
#[command(name = "lockd-bench", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start redis-server, etcd and lockd on free loopback ports, run every
    /// workload against every system, print a table and write JSON.
    Compare(CompareArgs),
    /// Load an existing lockd deployment at one or more gRPC addresses.
    Run(RunArgs),
    /// kill -9 the Redis primary under lockd (Sentinel; Cluster: the primary
    /// of a fresh resource's slot) and the leader of a three-member etcd
    /// cluster, and time until a lock on a fresh resource is granted again.
    Failover(FailoverArgs),
}

/// Flags shared by `compare` and `run`.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Short run with fewer samples; scale stops at 100k leases. Under two minutes.
    #[arg(long)]
    pub quick: bool,
    /// Write the results as JSON to FILE
    /// (default for compare: <workspace>/target/lockd-bench/compare.json).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Concurrent logical clients in the uncontended and scale workloads.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub clients: u64,
    /// Waiters queued on one resource in the handoff workload.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub waiters: u64,
    /// Shared connections (gRPC channels, etcd clients) the logical clients are
    /// spread over. The waiters workload opens more: one per 250 streams.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub channels: u64,
    /// Lease counts of the scale workload, comma-separated
    /// (default: 1000,10000,100000, and 1000000 without --quick).
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    pub scale_levels: Vec<u64>,
    /// Line lengths of the waiters workload, comma-separated (default: 1000,10000).
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    pub waiter_levels: Vec<usize>,
    /// Workloads to run, comma-separated (default: all for compare;
    /// uncontended,handoff,expiry for run).
    #[arg(long = "workload", value_enum, value_delimiter = ',')]
    pub workloads: Vec<Workload>,
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Systems to compare, comma-separated (default: lockd-redis, lockd-dev,
    /// redis-direct, etcd; lockd-sentinel, lockd-sentinel-noack and
    /// lockd-cluster run only when named).
    #[arg(long = "system", value_enum, value_delimiter = ',')]
    pub systems: Vec<SystemKind>,
    /// The lockd binary (default: <workspace>/target/release/lockd, built with
    /// `cargo build --release -p lockd` if missing).
    #[arg(long, env = "LOCKD_BIN", value_name = "PATH")]
    pub lockd_bin: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// gRPC address of a lockd replica (host:port or http://host:port). Give it
    /// twice or more to measure handoff across replicas too.
    #[arg(long = "endpoint", required = true, value_name = "ADDR")]
    pub endpoints: Vec<String>,
    /// The deployment's Redis, read with INFO for memory and command counts
    /// (optional; those figures are left out without it).
    #[arg(long, value_name = "URL")]
    pub redis_url: Option<String>,
    /// PID of a lockd process on this machine, for RSS figures (optional).
    #[arg(long, value_name = "PID")]
    pub daemon_pid: Option<u32>,
}

#[derive(Debug, Args)]
pub struct FailoverArgs {
    /// Kills per case. The cases are interleaved (the first run of every case,
    /// then the second, ...) so that they all see the same machine state.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub runs: u32,
    /// Write the results as JSON to FILE
    /// (default: <workspace>/target/lockd-bench/failover.json).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Systems, comma-separated: lockd-sentinel, lockd-sentinel-noack,
    /// lockd-cluster, etcd (default: lockd-sentinel, lockd-cluster, etcd).
    #[arg(long = "system", value_enum, value_delimiter = ',')]
    pub systems: Vec<SystemKind>,
    /// lockd's --failover-quarantine, one lockd case each, comma-separated: a
    /// duration (0: none), or `default` to leave the flag out. A duration above
    /// 0 also sets --max-ttl and --default-ttl to it, so that a lease lost in
    /// the failover has ended when the quarantine does.
    #[arg(long, value_delimiter = ',', default_value = "0,default,2s",
          value_parser = parse_quarantine, value_name = "Q,...")]
    pub quarantine: Vec<Quarantine>,
    /// Time between the starts of two attempts to take the fresh lock.
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    pub retry_every: Duration,
    /// Attempts under way at once, at most. Attempts start every --retry-every
    /// whether or not the earlier ones have answered, so that one that hangs
    /// does not hide the moment the system serves again; 1 gives a client that
    /// waits for each answer before it retries.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub in_flight: u32,
    /// Deadline of one attempt: one not answered by then is abandoned and
    /// counted as `attempt timeout`.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub attempt_timeout: Duration,
    /// lockd attempts: Acquire's wait_timeout_ms. A fresh resource has no line,
    /// so this only bounds how long lockd may hold a request before answering.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    pub attempt_wait: Duration,
    /// Copy each run's lockd log into DIR (as <case>-<run>-lockd.log) before
    /// its scratch folder is removed.
    #[arg(long, value_name = "DIR")]
    pub keep_logs: Option<PathBuf>,
    /// A run with no grant this long after the kill is given up, and reported so.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub give_up: Duration,
    /// The lockd binary (default: <workspace>/target/release/lockd, built with
    /// `cargo build --release -p lockd` if missing).
    #[arg(long, env = "LOCKD_BIN", value_name = "PATH")]
    pub lockd_bin: Option<PathBuf>,
}

/// lockd's `--failover-quarantine` in one failover case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quarantine {
    /// The flag left out: lockd's default.
    Default,
    /// `--failover-quarantine D` (and, above 0, `--max-ttl D --default-ttl D`).
    For(Duration),
}

impl Quarantine {
    /// The flags lockd is started with.
    pub fn lockd_args(self) -> Vec<String> {
        match self {
            Quarantine::Default => Vec::new(),
            Quarantine::For(d) => {
                let d = humantime::format_duration(d).to_string();
                let mut args = vec!["--failover-quarantine".to_string(), d.clone()];
                if self != Quarantine::For(Duration::ZERO) {
                    args.extend(["--max-ttl".into(), d.clone(), "--default-ttl".into(), d]);
                }
                args
            }
        }
    }

    /// The longest lease lockd grants in this case, if capped here.
    pub fn max_ttl(self) -> Option<Duration> {
        match self {
            Quarantine::For(d) if !d.is_zero() => Some(d),
            _ => None,
        }
    }
}

fn parse_quarantine(s: &str) -> Result<Quarantine, String> {
    if s.eq_ignore_ascii_case("default") {
        return Ok(Quarantine::Default);
    }
    humantime::parse_duration(s)
        .map(Quarantine::For)
        .map_err(|e| format!("{e} (give a duration such as 0, 2s, or `default`)"))
}

/// The workloads, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Acquire+release pairs on many resources: peak rate, then open loop at 50%.
    Uncontended,
    /// Waiters queued on one resource, each holder releasing at once.
    Handoff,
    /// Holders that never release; the next grant follows the lease's expiry.
    Expiry,
    /// Latency and memory while 1k..1M leases are held.
    Scale,
    /// 1k and 10k queued WaitQueue streams: memory per waiter, Redis commands per handoff.
    Waiters,
}

impl Workload {
    pub const ALL: [Workload; 5] = [
        Workload::Uncontended,
        Workload::Handoff,
        Workload::Expiry,
        Workload::Scale,
        Workload::Waiters,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Uncontended => "uncontended",
            Workload::Handoff => "handoff",
            Workload::Expiry => "expiry",
            Workload::Scale => "scale",
            Workload::Waiters => "waiters",
        }
    }

    /// Whether the workload means anything for `system`: plain Redis locks have
    /// no queue to hold waiters in.
    pub fn applies_to(self, system: SystemKind) -> bool {
        !(self == Workload::Waiters && system == SystemKind::RedisDirect)
    }
}

/// Every size and duration of a run, resolved from the flags and `--quick`.
/// Written into the JSON so that a result can be told apart from another run's.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub quick: bool,
    pub clients: usize,
    pub channels: usize,
    /// Handoff: waiters queued on the one resource.
    pub handoff_waiters: usize,
    /// Handoff: how many times the queue is filled and drained.
    pub handoff_rounds: usize,
    /// Uncontended: unmeasured warm-up before the closed-loop peak.
    #[serde(with = "millis", rename = "warmup_ms")]
    pub warmup: Duration,
    /// Uncontended: closed-loop (peak) measurement.
    #[serde(with = "millis", rename = "peak_duration_ms")]
    pub peak_duration: Duration,
    /// Uncontended: open-loop measurement at 50% of the peak.
    #[serde(with = "millis", rename = "open_duration_ms")]
    pub open_duration: Duration,
    /// Lease time-to-live (ms) of every lease in the uncontended and handoff workloads.
    pub lease_ttl_ms: u64,
    /// Expiry: the lease TTL asked for (etcd rounds it up to its minimum).
    pub expiry_ttl_ms: u64,
    /// Expiry: resources worked on at once, and holders queued on each.
    pub expiry_chains: usize,
    pub expiry_chain_len: usize,
    /// Scale: leases held at each level.
    pub scale_levels: Vec<u64>,
    /// Scale: wall time allowed for filling all levels, per system.
    #[serde(with = "millis", rename = "scale_fill_budget_ms")]
    pub scale_fill_budget: Duration,
    /// Scale: open-loop probe at each level: rate cap (pairs/s) and duration.
    pub scale_probe_rate: f64,
    #[serde(with = "millis", rename = "scale_probe_duration_ms")]
    pub scale_probe_duration: Duration,
    /// Waiters: queue lengths; time allowed to fill each line; handoffs measured
    /// at each, at most this many and for at most this long.
    pub waiter_levels: Vec<usize>,
    #[serde(with = "millis", rename = "waiter_fill_budget_ms")]
    pub waiter_fill_budget: Duration,
    pub waiter_handoffs: usize,
    #[serde(with = "millis", rename = "waiter_handoff_time_ms")]
    pub waiter_handoff_time: Duration,
    /// Waiters: window over which Redis's idle command rate is measured.
    #[serde(with = "millis", rename = "idle_window_ms")]
    pub idle_window: Duration,
    /// Redis-direct: pause between SET NX attempts while the lock is busy.
    #[serde(with = "millis", rename = "spin_ms")]
    pub spin: Duration,
    /// Wall time allowed for one workload on one system before it is abandoned.
    #[serde(with = "millis", rename = "workload_timeout_ms")]
    pub workload_timeout: Duration,
}

impl Settings {
    pub fn new(args: &CommonArgs) -> Self {
        let quick = args.quick;
        let pick = |q: u64, full: u64| Duration::from_millis(if quick { q } else { full });
        Settings {
            quick,
            clients: args.clients as usize,
            channels: args.channels as usize,
            handoff_waiters: args.waiters as usize,
            handoff_rounds: if quick { 5 } else { 40 },
            warmup: pick(500, 2_000),
            peak_duration: pick(2_000, 10_000),
            open_duration: pick(2_000, 10_000),
            lease_ttl_ms: 30_000,
            expiry_ttl_ms: 200,
            expiry_chains: if quick { 8 } else { 16 },
            expiry_chain_len: if quick { 3 } else { 12 },
            scale_levels: if !args.scale_levels.is_empty() {
                args.scale_levels.clone()
            } else if quick {
                vec![1_000, 10_000, 100_000]
            } else {
                vec![1_000, 10_000, 100_000, 1_000_000]
            },
            scale_fill_budget: pick(15_000, 150_000),
            scale_probe_rate: 1_000.0,
            scale_probe_duration: pick(1_000, 5_000),
            waiter_levels: if args.waiter_levels.is_empty() {
                vec![1_000, 10_000]
            } else {
                args.waiter_levels.clone()
            },
            waiter_fill_budget: pick(8_000, 60_000),
            waiter_handoffs: if quick { 100 } else { 500 },
            waiter_handoff_time: pick(3_000, 15_000),
            idle_window: pick(1_000, 3_000),
            spin: Duration::from_millis(1),
            workload_timeout: pick(60_000, 400_000),
        }
    }
}

/// Serializes a `Duration` as whole milliseconds.
mod millis {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
}
