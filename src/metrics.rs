//! Prometheus metrics of this daemon. Label values never name resources or
//! clients: their number is unbounded.

use std::time::Duration;

use lockd_core::{Event, HoldEnd};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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

fn latency_histogram() -> Histogram {
    // 100 µs to about 100 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 21))
}

/// Every metric lockd exports, all named `lockd_*`.
pub struct Metrics {
    registry: Registry,
    grants: Family<ModeLabel, Counter>,
    releases: Counter,
    expiries: Counter,
    abandoned: Counter,
    renewals: Counter,
    wait_timeouts: Counter,
    errors: Family<CodeLabel, Counter>,
    acquire_wait: Histogram,
    hold: Histogram,
    rpc: Family<MethodLabel, Histogram, fn() -> Histogram>,
    waiters: Gauge,
    active_leases: Gauge,
    redis_up: Gauge,
    notifications_up: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            grants: Family::default(),
            releases: Counter::default(),
            expiries: Counter::default(),
            abandoned: Counter::default(),
            renewals: Counter::default(),
            wait_timeouts: Counter::default(),
            errors: Family::default(),
            acquire_wait: latency_histogram(),
            hold: latency_histogram(),
            rpc: Family::new_with_constructor(latency_histogram),
            waiters: Gauge::default(),
            active_leases: Gauge::default(),
            redis_up: Gauge::default(),
            notifications_up: Gauge::default(),
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
            "Acquires not granted within their wait",
            m.wait_timeouts.clone(),
        );
        registry.register("lockd_errors", "Failed RPCs by gRPC code", m.errors.clone());
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
            if code == tonic::Code::DeadlineExceeded {
                self.wait_timeouts.inc();
            }
            self.errors
                .get_or_create(&CodeLabel {
                    code: format!("{code:?}"),
                })
                .inc();
        }
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
