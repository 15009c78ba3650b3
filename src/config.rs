//! The daemon's configuration: flags, each with a `LOCKD_*` environment variable.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use lockd_core::Limits;

use crate::error::DaemonError;

/// lockd: a distributed lock service. gRPC in front, Redis behind.
#[derive(Debug, Clone, Parser)]
#[command(name = "lockd", version, about)]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(long, env = "LOCKD_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Address to serve HTTP on: GET /metrics (Prometheus) and the REST API.
    /// Off unless set.
    #[arg(long, env = "LOCKD_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,

    /// Redis to keep lock state in: redis://[user:password@]host:port[/db].
    #[arg(
        long,
        env = "LOCKD_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,

    /// Serve the same API from process memory instead of Redis (one daemon,
    /// state lost on exit): for a first try and for tests.
    #[arg(long, env = "LOCKD_DEV")]
    pub dev: bool,

    /// Prefix of every Redis key, so that several deployments can share one Redis.
    #[arg(long, env = "LOCKD_KEY_PREFIX", default_value = "lockd")]
    pub key_prefix: String,

    /// Lease time to live when a request says 0. At least 1ms, at most --max-ttl.
    #[arg(long, env = "LOCKD_DEFAULT_TTL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub default_ttl: Duration,

    /// Longest lease time to live a request may ask for. At least 1ms.
    #[arg(long, env = "LOCKD_MAX_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub max_ttl: Duration,

    /// How long a request waits in line when it does not say. At most --max-wait.
    #[arg(long, env = "LOCKD_DEFAULT_WAIT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub default_wait: Duration,

    /// Longest wait in line a request may ask for.
    #[arg(long, env = "LOCKD_MAX_WAIT", default_value = "1h", value_parser = humantime::parse_duration)]
    pub max_wait: Duration,

    /// Renewal limit of a lease when a request says 0; 0 means unlimited.
    #[arg(long, env = "LOCKD_MAX_RENEWALS", default_value_t = 0)]
    pub max_renewals: u32,

    /// Most waiters one resource may have; 0 means unlimited.
    #[arg(long, env = "LOCKD_MAX_QUEUE", default_value_t = 100_000)]
    pub max_queue: u64,

    /// Keep a per-client index of leases in Redis for ListHeld (about 180
    /// bytes per held lease). Off: ListHeld answers UNIMPLEMENTED.
    #[arg(long, env = "LOCKD_LIST_HELD_INDEX", default_value_t = true, action = clap::ArgAction::Set)]
    pub list_held_index: bool,

    /// Bound on every Redis call; past it the call fails with UNAVAILABLE.
    /// Above 0 and at most a quarter of --waiter-liveness: queue entries are
    /// synced every fifth of the liveness, and a sync that times out must leave
    /// time for the next one before the entries lapse.
    #[arg(long, env = "LOCKD_REDIS_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub redis_timeout: Duration,

    /// Multiplexed Redis connections for lock operations. At least 1.
    #[arg(long, env = "LOCKD_REDIS_CONNECTIONS", default_value_t = 4)]
    pub redis_connections: usize,

    /// How long this daemon's queue entries stay valid without a sync; after
    /// that (a dead daemon) other daemons skip them. Synced every fifth of it;
    /// at least 1ms and, with Redis, at least 4 times --redis-timeout.
    #[arg(long, env = "LOCKD_WAITER_LIVENESS", default_value = "5s", value_parser = humantime::parse_duration)]
    pub waiter_liveness: Duration,

    /// How long shutdown waits for in-flight work.
    #[arg(long, env = "LOCKD_SHUTDOWN_GRACE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
}

impl Config {
    /// Checks the flags on their own and against each other; the daemon
    /// refuses to start, before it binds or connects, unless they pass.
    pub fn validate(&self) -> Result<(), DaemonError> {
        // Zeros first: a zero is the mistake to report, not the relation it
        // breaks as well. Limits and waiters count in whole milliseconds.
        if self.max_ttl.as_millis() == 0 {
            return Err(bad_flag(
                "max-ttl",
                show(self.max_ttl),
                "must be at least 1ms: no lease could be granted",
            ));
        }
        if self.default_ttl.as_millis() == 0 {
            return Err(bad_flag(
                "default-ttl",
                show(self.default_ttl),
                "must be at least 1ms: leases of requests that say ttl_ms 0 would expire as they are granted",
            ));
        }
        if self.waiter_liveness.as_millis() == 0 {
            return Err(bad_flag(
                "waiter-liveness",
                show(self.waiter_liveness),
                "must be at least 1ms: queue entries would lapse as soon as they are written",
            ));
        }
        if self.default_ttl > self.max_ttl {
            return Err(conflict(
                ("default-ttl", self.default_ttl),
                ("max-ttl", self.max_ttl),
                "the default must not exceed the maximum: requests that say ttl_ms 0 would get \
                 longer leases than any request may ask for"
                    .into(),
            ));
        }
        if self.default_wait > self.max_wait {
            return Err(conflict(
                ("default-wait", self.default_wait),
                ("max-wait", self.max_wait),
                "the default must not exceed the maximum: every request that leaves \
                 wait_timeout_ms unset would be refused"
                    .into(),
            ));
        }
        if self.dev {
            // The memory store makes no Redis calls, so the Redis flags do not matter.
            return Ok(());
        }
        if self.redis_connections == 0 {
            return Err(bad_flag(
                "redis-connections",
                self.redis_connections.to_string(),
                "must be at least 1: lock operations need a connection",
            ));
        }
        if self.redis_timeout.is_zero() {
            return Err(bad_flag(
                "redis-timeout",
                show(self.redis_timeout),
                "must be above 0: every Redis call would time out",
            ));
        }
        let quarter = self.waiter_liveness / 4;
        if self.redis_timeout > quarter {
            return Err(conflict(
                ("redis-timeout", self.redis_timeout),
                ("waiter-liveness", self.waiter_liveness),
                format!(
                    "must be at most a quarter of the liveness ({}): queue entries are synced \
                     every fifth of it, and a sync that times out must leave time for the next \
                     one before the entries lapse",
                    show(quarter)
                ),
            ));
        }
        Ok(())
    }

    /// The request limits this configuration sets.
    pub fn limits(&self) -> Limits {
        Limits {
            default_ttl_ms: self.default_ttl.as_millis() as u64,
            max_ttl_ms: self.max_ttl.as_millis() as u64,
            default_wait_ms: self.default_wait.as_millis() as u64,
            max_wait_ms: self.max_wait.as_millis() as u64,
            default_max_renewals: self.max_renewals,
            max_queue: self.max_queue,
        }
    }
}

fn bad_flag(flag: &'static str, value: String, why: &'static str) -> DaemonError {
    DaemonError::BadFlag { flag, value, why }
}

fn conflict(
    (flag, value): (&'static str, Duration),
    (other, other_value): (&'static str, Duration),
    why: String,
) -> DaemonError {
    DaemonError::FlagConflict {
        flag,
        value: show(value),
        other,
        other_value: show(other_value),
        why,
    }
}

/// A duration in the largest unit that states it exactly (`24h`, `1250ms`),
/// which `--flag` accepts back; humantime would say `1day`, which reads
/// unlike the flag's documented default.
fn show(value: Duration) -> String {
    let nanos = value.subsec_nanos();
    if nanos != 0 {
        return if nanos.is_multiple_of(1_000_000) {
            format!("{}ms", value.as_millis())
        } else if nanos.is_multiple_of(1_000) {
            format!("{}us", value.as_micros())
        } else {
            format!("{}ns", value.as_nanos())
        };
    }
    match value.as_secs() {
        0 => "0s".to_owned(),
        s if s.is_multiple_of(3600) => format!("{}h", s / 3600),
        s if s.is_multiple_of(60) => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}
