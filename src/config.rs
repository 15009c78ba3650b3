//! The daemon's configuration: flags, each with a `LOCKD_*` environment variable.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use lockd_core::Limits;

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

    /// Lease time to live when a request says 0.
    #[arg(long, env = "LOCKD_DEFAULT_TTL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub default_ttl: Duration,

    /// Longest lease time to live a request may ask for.
    #[arg(long, env = "LOCKD_MAX_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub max_ttl: Duration,

    /// How long a request waits in line when it does not say.
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
    #[arg(long, env = "LOCKD_REDIS_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub redis_timeout: Duration,

    /// Multiplexed Redis connections for lock operations.
    #[arg(long, env = "LOCKD_REDIS_CONNECTIONS", default_value_t = 4)]
    pub redis_connections: usize,

    /// How long this daemon's queue entries stay valid without a sync; after
    /// that (a dead daemon) other daemons skip them. Synced every fifth of it.
    #[arg(long, env = "LOCKD_WAITER_LIVENESS", default_value = "5s", value_parser = humantime::parse_duration)]
    pub waiter_liveness: Duration,

    /// How long shutdown waits for in-flight work.
    #[arg(long, env = "LOCKD_SHUTDOWN_GRACE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
}

impl Config {
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
