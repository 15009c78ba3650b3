//! Prometheus metrics of this daemon. Label values never name resources or
//! clients: their number is unbounded.

use std::time::Duration;

use lockd_core::{Event, HoldEnd};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabel {
    mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ContendedLabel {
    method: &'static str,
    /// wait_timeout or queue_full.
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScriptLabel {
    script: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScriptErrorLabel {
    script: &'static str,
    /// One of [`lockd_redis::store::error_kind`]'s names.
    kind: &'static str,
}

fn latency_histogram() -> Histogram {
    // 100 µs to about 100 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 21))
}

fn redis_histogram() -> Histogram {
    // 50 µs to about 6.5 s: past --redis-timeout a call fails anyway.
    Histogram::new(exponential_buckets(0.00005, 2.0, 18))
}

/// Buckets doubling from `first` seconds, the last exactly `last`: a
/// histogram of holds or waits must reach the longest one allowed, or every
/// long one lands in +Inf and its quantiles say nothing.
fn buckets_up_to(first: f64, last: Duration) -> Vec<f64> {
    let last = last.as_secs_f64().max(first);
    let mut buckets = Vec::new();
    let mut bound = first;
    while bound < last {
        buckets.push(bound);
        bound *= 2.0;
    }
    buckets.push(last);
    buckets
}

/// The gRPC codes that mean the lock was busy rather than that something
/// failed, and the reason label each is counted under.
fn contention(code: tonic::Code) -> Option<&'static str> {
    match code {
        tonic::Code::DeadlineExceeded => Some("wait_timeout"),
        tonic::Code::ResourceExhausted => Some("queue_full"),
        _ => None,
    }
}

/// Every metric lockd exports: `lockd_*`, and the standard `process_*` ones.
pub struct Metrics {
    registry: Registry,
    grants: Family<ModeLabel, Counter>,
    releases: Counter,
    expiries: Counter,
    abandoned: Counter,
    renewals: Counter,
    /// The sum of `contended`'s wait_timeout series, kept because the
    /// dashboard in deploy/ reads it.
    wait_timeouts: Counter,
    contended: Family<ContendedLabel, Counter>,
    errors: Family<CodeLabel, Counter>,
    acquire_wait: Histogram,
    hold: Histogram,
    rpc: Family<MethodLabel, Histogram, fn() -> Histogram>,
    waiters: Gauge,
    active_leases: Gauge,
    redis_up: Gauge,
    notifications_up: Gauge,
    redis_duration: Family<ScriptLabel, Histogram, fn() -> Histogram>,
    redis_errors: Family<ScriptErrorLabel, Counter>,
}

impl Metrics {
    /// `max_hold` and `max_wait` are the longest lease and wait allowed
    /// (`--max-ttl`, `--max-wait`): the top buckets of their histograms.
    pub fn new(max_hold: Duration, max_wait: Duration) -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            grants: Family::default(),
            releases: Counter::default(),
            expiries: Counter::default(),
            abandoned: Counter::default(),
            renewals: Counter::default(),
            wait_timeouts: Counter::default(),
            contended: Family::default(),
            errors: Family::default(),
            acquire_wait: Histogram::new(buckets_up_to(0.0001, max_wait)),
            hold: Histogram::new(buckets_up_to(0.001, max_hold)),
            rpc: Family::new_with_constructor(latency_histogram),
            waiters: Gauge::default(),
            active_leases: Gauge::default(),
            redis_up: Gauge::default(),
            notifications_up: Gauge::default(),
            redis_duration: Family::new_with_constructor(redis_histogram),
            redis_errors: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "lockd_grants",
            "Leases granted by this daemon's operations",
            m.grants.clone(),
        );
        registry.register(
            "lockd_releases",
            "Leases ended by Release",
            m.releases.clone(),
        );
        registry.register(
            "lockd_expiries",
            "Leases seen to expire",
            m.expiries.clone(),
        );
        registry.register(
            "lockd_abandoned_grants",
            "Grants released because their waiter went away before receiving them",
            m.abandoned.clone(),
        );
        registry.register("lockd_renewals", "Successful renewals", m.renewals.clone());
        registry.register(
            "lockd_wait_timeouts",
            "Acquires not granted within their wait (lockd_contended has them by method)",
            m.wait_timeouts.clone(),
        );
        registry.register(
            "lockd_contended",
            "Acquires refused because the lock was busy, by method and reason: \
             wait_timeout (DEADLINE_EXCEEDED: not granted within the request's wait, \
             or at once for a try-lock with wait 0) or queue_full (RESOURCE_EXHAUSTED: \
             --max-queue waiters already). Normal contention, so not in lockd_errors",
            m.contended.clone(),
        );
        registry.register(
            "lockd_errors",
            "Failed RPCs by gRPC code, except contention (see lockd_contended)",
            m.errors.clone(),
        );
        registry.register(
            "lockd_acquire_wait_seconds",
            "Time from an acquire request to its grant",
            m.acquire_wait.clone(),
        );
        registry.register(
            "lockd_hold_seconds",
            "Time from grant to release or expiry",
            m.hold.clone(),
        );
        registry.register(
            "lockd_rpc_duration_seconds",
            "Request handling time by method (gRPC; http.* for the REST API)",
            m.rpc.clone(),
        );
        registry.register(
            "lockd_waiters",
            "Requests waiting in line on this daemon",
            m.waiters.clone(),
        );
        registry.register(
            "lockd_active_leases",
            "Live leases in the deployment (from the shared statistics)",
            m.active_leases.clone(),
        );
        registry.register(
            "lockd_redis_up",
            "1 while the lock store answers, else 0",
            m.redis_up.clone(),
        );
        registry.register(
            "lockd_notifications_up",
            "1 while Redis keyspace notifications are known to arrive, else 0 \
             (waiters then wait for the periodic sync)",
            m.notifications_up.clone(),
        );
        registry.register(
            "lockd_redis_duration_seconds",
            "Round trip of each lockd script call to Redis, by script",
            m.redis_duration.clone(),
        );
        registry.register(
            "lockd_redis_errors",
            "Failed lockd script calls to Redis, by script and kind \
             (timeout, connection, server, script, reply)",
            m.redis_errors.clone(),
        );
        let build: Family<VersionLabel, Gauge> = Family::default();
        build
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("lockd_build_info", "lockd's version; always 1", build);
        registry.register_collector(Box::new(ProcessCollector));
        m.redis_up.set(1);
        m.notifications_up.set(1);
        Metrics { registry, ..m }
    }

    /// Counts the state changes of one store operation.
    pub fn record(&self, events: &[Event]) {
        for event in events {
            match *event {
                Event::Granted(mode) => {
                    self.grants
                        .get_or_create(&ModeLabel {
                            mode: mode.as_str(),
                        })
                        .inc();
                }
                Event::Ended { how, held_ms, .. } => {
                    match how {
                        HoldEnd::Released => self.releases.inc(),
                        HoldEnd::Expired => self.expiries.inc(),
                        HoldEnd::Abandoned => self.abandoned.inc(),
                    };
                    self.hold.observe(held_ms as f64 / 1000.0);
                }
                Event::Enqueued | Event::Dequeued => {}
            }
        }
    }

    pub fn renewed(&self) {
        self.renewals.inc();
    }

    pub fn waited(&self, waited: Duration) {
        self.acquire_wait.observe(waited.as_secs_f64());
    }

    /// Records one RPC: its duration and, if it failed, its code.
    pub fn rpc(&self, method: &'static str, took: Duration, failed: Option<tonic::Code>) {
        self.rpc
            .get_or_create(&MethodLabel { method })
            .observe(took.as_secs_f64());
        if let Some(code) = failed {
            if let Some(reason) = contention(code) {
                if code == tonic::Code::DeadlineExceeded {
                    self.wait_timeouts.inc();
                }
                self.contended
                    .get_or_create(&ContendedLabel { method, reason })
                    .inc();
                return;
            }
            self.errors
                .get_or_create(&CodeLabel {
                    code: format!("{code:?}"),
                })
                .inc();
        }
    }

    /// The store's [`lockd_redis::Observer`]: records each script call.
    pub fn redis_observer(&self) -> lockd_redis::Observer {
        let duration = self.redis_duration.clone();
        let errors = self.redis_errors.clone();
        std::sync::Arc::new(move |script, took: Duration, failed| {
            duration
                .get_or_create(&ScriptLabel { script })
                .observe(took.as_secs_f64());
            if let Some(kind) = failed {
                errors
                    .get_or_create(&ScriptErrorLabel { script, kind })
                    .inc();
            }
        })
    }

    pub fn set_store_up(&self, up: bool) {
        self.redis_up.set(i64::from(up));
    }

    pub fn set_notifications_up(&self, up: bool) {
        self.notifications_up.set(i64::from(up));
    }

    /// The text exposition, after setting the gauges that are read on demand.
    pub fn render(&self, waiters: usize, active_leases: Option<u64>) -> String {
        self.waiters.set(waiters as i64);
        if let Some(active) = active_leases {
            self.active_leases.set(active as i64);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The standard `process_*` metrics, read from /proc/self at each scrape
/// (Linux only; elsewhere they are left out). Names follow the Prometheus
/// client libraries so that existing dashboards work.
#[derive(Debug)]
struct ProcessCollector;

/// Clock ticks per second of /proc's CPU times: the kernel reports them in
/// USER_HZ, which is 100 on every Linux architecture.
const USER_HZ: f64 = 100.0;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(seconds) = cpu_seconds() {
            let metric = ConstCounter::new(seconds);
            metric.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time spent",
                None,
                metric.metric_type(),
            )?)?;
        }
        if let Some(bytes) = resident_bytes() {
            let metric = ConstGauge::new(bytes as i64);
            metric.encode(encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory size",
                None,
                metric.metric_type(),
            )?)?;
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            // The directory handle being read is one of them.
            let metric = ConstGauge::new(fds.count().saturating_sub(1) as i64);
            metric.encode(encoder.encode_descriptor(
                "process_open_fds",
                "Open file descriptors",
                None,
                metric.metric_type(),
            )?)?;
        }
        if let Some(max) = max_fds() {
            let metric = ConstGauge::new(max as i64);
            metric.encode(encoder.encode_descriptor(
                "process_max_fds",
                "Limit of open file descriptors",
                None,
                metric.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// utime + stime of /proc/self/stat (fields 14 and 15), in seconds.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; fields after it do not.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// VmRSS of /proc/self/status, which is in kB.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kb: u64 = kb.split_whitespace().next()?.parse().ok()?;
    Some(kb * 1024)
}

/// The soft limit of "Max open files" in /proc/self/limits.
fn max_fds() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let soft = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?;
    soft.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_and_wait_buckets_reach_the_limits() {
        let day = Duration::from_secs(24 * 3600);
        let buckets = buckets_up_to(0.001, day);
        assert_eq!(buckets.first(), Some(&0.001));
        assert_eq!(buckets.last(), Some(&86_400.0));
        assert!(buckets.windows(2).all(|w| w[0] < w[1]), "{buckets:?}");
        assert!(buckets.len() < 40, "{}", buckets.len());
        // A limit below the first bucket still gives one bucket.
        assert_eq!(buckets_up_to(0.001, Duration::ZERO), vec![0.001]);
    }

    #[test]
    fn contention_is_not_an_error() {
        let m = Metrics::new(Duration::from_secs(60), Duration::from_secs(60));
        m.rpc(
            "Acquire",
            Duration::ZERO,
            Some(tonic::Code::DeadlineExceeded),
        );
        m.rpc(
            "Acquire",
            Duration::ZERO,
            Some(tonic::Code::ResourceExhausted),
        );
        m.rpc("Release", Duration::ZERO, Some(tonic::Code::NotFound));
        let text = m.render(0, None);
        assert!(
            text.contains(r#"lockd_contended_total{method="Acquire",reason="wait_timeout"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"lockd_contended_total{method="Acquire",reason="queue_full"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"lockd_errors_total{code="NotFound"} 1"#),
            "{text}"
        );
        assert!(!text.contains(r#"code="DeadlineExceeded""#), "{text}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn process_metrics_are_read() {
        assert!(cpu_seconds().is_some());
        assert!(resident_bytes().is_some_and(|b| b > 0));
        assert!(max_fds().is_some_and(|n| n > 0));
    }
}
