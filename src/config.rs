//! The daemon's configuration: flags, `LOCKD_*` environment variables and a TOML file, in that order.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::builder::{BoolishValueParser, Resettable};
use clap::error::ErrorKind;
use clap::{ArgAction, ArgMatches, Command, CommandFactory, FromArgMatches, Parser, ValueEnum};
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

    /// Redis to keep lock state in: redis://[user:password@]host:port[/db]
    /// (rediss:// for TLS); Sentinel:
    /// redis+sentinel://[user:password@]host:port[,host:port...]/MASTER[/db];
    /// Cluster: redis+cluster://[user:password@]host:port[,host:port...] (seed nodes).
    #[arg(
        long,
        env = "LOCKD_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,

    /// PEM file of the certificate authorities that a rediss:// server's
    /// certificate (and a Sentinel's or Cluster node's) must chain to;
    /// without it, the system's trusted roots.
    #[arg(long, env = "LOCKD_REDIS_CA", value_name = "FILE")]
    pub redis_ca: Option<PathBuf>,

    /// Serve the same API from process memory instead of Redis (one daemon,
    /// state lost on exit): for a first try and for tests. The variable takes
    /// 1/0, true/false, yes/no, on/off.
    #[arg(long, env = "LOCKD_DEV", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub dev: bool,

    /// Prefix of every Redis key, so that several deployments can share one Redis.
    #[arg(long, env = "LOCKD_KEY_PREFIX", default_value = "lockd")]
    pub key_prefix: String,

    /// Lease time to live when a request says 0. At least 1ms, at most --max-ttl.
    #[arg(long, env = "LOCKD_DEFAULT_TTL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub default_ttl: Duration,

    /// Longest lease time to live a request may ask for. At least 1ms. It is
    /// also how long a Redis failover stops new grants by default
    /// (--failover-quarantine): longer jobs renew their lease.
    #[arg(long, env = "LOCKD_MAX_TTL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub max_ttl: Duration,

    /// Shortest lease time to live a request may ask for: a shorter lease would
    /// end before its holder could act on it. At least 1ms, at most --default-ttl.
    #[arg(long, env = "LOCKD_MIN_TTL", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub min_ttl: Duration,

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
    /// bytes per held lease). Off: ListHeld answers UNIMPLEMENTED. Takes
    /// 1/0, true/false, yes/no, on/off.
    #[arg(
        long,
        env = "LOCKD_LIST_HELD_INDEX",
        default_value_t = true,
        action = ArgAction::Set,
        value_parser = BoolishValueParser::new()
    )]
    pub list_held_index: bool,

    /// Bound on every Redis call; past it the call fails with UNAVAILABLE.
    /// Above 0 and at most a quarter of --waiter-liveness: queue entries are
    /// synced every fifth of the liveness, and a sync that times out must leave
    /// time for the next one before the entries lapse.
    #[arg(long, env = "LOCKD_REDIS_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub redis_timeout: Duration,

    /// After the Redis server holding a resource changes (a Sentinel or
    /// Cluster failover, or a restart that may have lost writes), grant
    /// nothing on it for this long, so that a lease lost with the old server
    /// has ended first. Default: --max-ttl, the longest a lost lease lasts.
    /// Shorter trades that safety for availability; 0 turns it off.
    #[arg(long, env = "LOCKD_FAILOVER_QUARANTINE", value_parser = humantime::parse_duration)]
    pub failover_quarantine: Option<Duration>,

    /// Replicas that must confirm a grant or renewal (Redis WAIT) before it
    /// is answered; on a timeout the grant is released and the call fails
    /// UNAVAILABLE. Default: 1 with a Sentinel or Cluster URL, 0 (the
    /// primary alone) with a single server.
    #[arg(long, env = "LOCKD_MIN_REPLICAS_ACK")]
    pub min_replicas_ack: Option<usize>,

    /// How long a grant or renewal waits for --min-replicas-ack replicas.
    /// Default: --redis-timeout.
    #[arg(long, env = "LOCKD_MIN_REPLICAS_TIMEOUT", value_parser = humantime::parse_duration)]
    pub min_replicas_timeout: Option<Duration>,

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

    /// Log format: text for people, json (one object per line, with every
    /// tracing field) for log pipelines. Text is coloured only when stderr,
    /// where logs go, is a terminal and NO_COLOR is unset.
    #[arg(long, env = "LOCKD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Least severe level logged: error, warn, info, debug, trace, or filter
    /// directives such as `info,lockd=debug`. RUST_LOG, when set, wins over it.
    #[arg(long, env = "LOCKD_LOG_LEVEL", default_value = "info", value_parser = parse_log_level)]
    pub log_level: String,

    /// TOML file of settings: keys are flag names without `--` (`redis_url`
    /// or `redis-url`), values as the flags take them. Flags and LOCKD_*
    /// variables override it.
    #[arg(long, env = "LOCKD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Check the configuration, print it as TOML (secrets masked) and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Arguments a config file may not set: one names the file itself, the others
/// are actions of one invocation rather than settings.
const NOT_IN_FILE: [&str; 4] = ["config", "print_config", "help", "version"];

impl Config {
    /// The configuration of this process: its arguments, its environment and
    /// the file `--config` names. Errors are clap's, so callers report them
    /// with [`clap::Error::exit`] like any bad flag (status 2; 0 for --help).
    pub fn load() -> Result<Config, clap::Error> {
        Config::try_load_from(std::env::args_os())
    }

    /// [`Config::load`] with the given arguments, the first being the binary name.
    pub fn try_load_from<I, T>(args: I) -> Result<Config, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let mut command = Config::command();
        // A first pass only to find the file: it may itself come from a flag
        // or from LOCKD_CONFIG.
        let first = command.try_get_matches_from_mut(&args)?;
        let Some(path) = first.get_one::<PathBuf>("config").cloned() else {
            return from_matches(&mut command, &first);
        };
        // File values become the arguments' defaults, so that clap's own order
        // (flag, then variable, then default) puts the file below both. On a
        // fresh command: a parsed one has indexed its arguments, and mut_arg
        // would leave that index pointing at the wrong ones.
        let values = file_values(&command, &path)?;
        let mut command = Config::command();
        for (id, value) in values {
            command = command.mut_arg(id, |arg| arg.default_value(value));
        }
        let matches = command.try_get_matches_from_mut(&args)?;
        from_matches(&mut command, &matches)
    }

    /// The effective configuration as a config file would state it, with the
    /// Redis password masked; reading it back gives the same configuration.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        for (key, value) in self.settings() {
            // TOML has no null: an unset optional setting shows as a comment.
            let _ = match value {
                Some(value) => writeln!(out, "{key} = {value}"),
                None => writeln!(out, "# {key} is not set"),
            };
        }
        out
    }

    /// Every setting a file may hold, in flag order, as TOML values.
    fn settings(&self) -> Vec<(&'static str, Option<toml::Value>)> {
        let text = |s: &str| Some(toml::Value::String(s.to_owned()));
        let duration = |d: Duration| Some(toml::Value::String(show(d)));
        let int = |n: u64| Some(toml::Value::Integer(i64::try_from(n).unwrap_or(i64::MAX)));
        let log_format = match self.log_format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        };
        vec![
            ("listen", text(&self.listen.to_string())),
            (
                "http_listen",
                self.http_listen.and_then(|a| text(&a.to_string())),
            ),
            ("redis_url", text(&mask_url(&self.redis_url))),
            (
                "redis_ca",
                self.redis_ca
                    .as_ref()
                    .and_then(|p| text(&p.display().to_string())),
            ),
            ("dev", Some(toml::Value::Boolean(self.dev))),
            ("key_prefix", text(&self.key_prefix)),
            ("default_ttl", duration(self.default_ttl)),
            ("max_ttl", duration(self.max_ttl)),
            ("min_ttl", duration(self.min_ttl)),
            ("default_wait", duration(self.default_wait)),
            ("max_wait", duration(self.max_wait)),
            ("max_renewals", int(self.max_renewals.into())),
            ("max_queue", int(self.max_queue)),
            (
                "list_held_index",
                Some(toml::Value::Boolean(self.list_held_index)),
            ),
            ("redis_timeout", duration(self.redis_timeout)),
            ("failover_quarantine", duration(self.quarantine())),
            ("min_replicas_ack", int(self.replicas_ack() as u64)),
            ("min_replicas_timeout", duration(self.replicas_timeout())),
            ("redis_connections", int(self.redis_connections as u64)),
            ("waiter_liveness", duration(self.waiter_liveness)),
            ("shutdown_grace", duration(self.shutdown_grace)),
            ("log_format", text(log_format)),
            ("log_level", text(&self.log_level)),
        ]
    }

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
        if self.min_ttl.as_millis() == 0 {
            return Err(bad_flag(
                "min-ttl",
                show(self.min_ttl),
                "must be at least 1ms: a lease of 0 ms protects nothing",
            ));
        }
        if self.min_ttl > self.default_ttl {
            return Err(conflict(
                ("min-ttl", self.min_ttl),
                ("default-ttl", self.default_ttl),
                "the floor must not exceed the default: requests that say ttl_ms 0 would get \
                 leases shorter than any request may ask for"
                    .into(),
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
        if self.quarantine() > MAX_QUARANTINE {
            return Err(bad_flag(
                "failover-quarantine",
                show(self.quarantine()),
                "must be at most 30 days: the scripts keep its end in milliseconds",
            ));
        }
        if self.replicas_ack() > 0 && self.replicas_timeout().as_millis() == 0 {
            return Err(bad_flag(
                "min-replicas-timeout",
                show(self.replicas_timeout()),
                "must be at least 1ms when --min-replicas-ack is above 0: no replica could confirm in time",
            ));
        }
        let quarter = self.waiter_liveness / 4;
        if self.replicas_ack() > 0 && self.replicas_timeout() > quarter {
            return Err(conflict(
                ("min-replicas-timeout", self.replicas_timeout()),
                ("waiter-liveness", self.waiter_liveness),
                format!(
                    "must be at most a quarter of the liveness ({}): a sync that hands over a \
                     grant waits for its confirmation, and must leave time for the next sync \
                     before the queue entries lapse",
                    show(quarter)
                ),
            ));
        }
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

    /// How long a bucket grants nothing after its Redis server changed.
    pub fn quarantine(&self) -> Duration {
        self.failover_quarantine.unwrap_or(self.max_ttl)
    }

    /// Replicas that must confirm a grant: as set, else 1 where the URL
    /// names replicas (Sentinel, Cluster).
    pub fn replicas_ack(&self) -> usize {
        self.min_replicas_ack.unwrap_or_else(|| {
            // URL schemes are case-insensitive: REDIS+SENTINEL:// is Sentinel too.
            let scheme = self
                .redis_url
                .split("://")
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            usize::from(scheme.ends_with("+sentinel") || scheme.ends_with("+cluster"))
        })
    }

    /// How long a grant waits for its replicas.
    pub fn replicas_timeout(&self) -> Duration {
        self.min_replicas_timeout.unwrap_or(self.redis_timeout)
    }

    /// The request limits this configuration sets.
    pub fn limits(&self) -> Limits {
        Limits {
            default_ttl_ms: self.default_ttl.as_millis() as u64,
            min_ttl_ms: self.min_ttl.as_millis() as u64,
            max_ttl_ms: self.max_ttl.as_millis() as u64,
            default_wait_ms: self.default_wait.as_millis() as u64,
            max_wait_ms: self.max_wait.as_millis() as u64,
            default_max_renewals: self.max_renewals,
            max_queue: self.max_queue,
        }
    }
}

/// Longest --failover-quarantine: far below what the scripts' numbers hold.
const MAX_QUARANTINE: Duration = Duration::from_secs(30 * 24 * 3600);

fn from_matches(command: &mut Command, matches: &ArgMatches) -> Result<Config, clap::Error> {
    Config::from_arg_matches(matches).map_err(|err| err.format(command))
}

/// The settings of the config file at `path`, as argument ids and the text
/// their flags would take, each checked by its flag's own parser so that a
/// bad value is reported against the file's key rather than as a flag.
fn file_values(command: &Command, path: &Path) -> Result<BTreeMap<String, String>, clap::Error> {
    let fail = |kind: ErrorKind, why: String| {
        command
            .clone()
            .error(kind, format!("config file {}: {why}", path.display()))
    };
    let text = std::fs::read_to_string(path)
        .map_err(|err| fail(ErrorKind::Io, format!("cannot read it: {err}")))?;
    let table: toml::Table = text
        .parse()
        .map_err(|err| fail(ErrorKind::InvalidValue, format!("not valid TOML: {err}")))?;
    let mut values = BTreeMap::new();
    let mut keys: BTreeMap<String, String> = BTreeMap::new();
    for (key, value) in table {
        let id = key.replace('-', "_");
        let arg = command
            .get_arguments()
            .find(|arg| arg.get_id() == id.as_str() && !NOT_IN_FILE.contains(&id.as_str()))
            .ok_or_else(|| {
                let why = if NOT_IN_FILE.contains(&id.as_str()) {
                    format!("key `{key}` cannot be set in a config file")
                } else {
                    format!(
                        "unknown key `{key}`; keys are the flags of `lockd --help` without `--`"
                    )
                };
                fail(ErrorKind::UnknownArgument, why)
            })?;
        if let Some(other) = keys.insert(id.clone(), key.clone()) {
            return Err(fail(
                ErrorKind::ArgumentConflict,
                format!("keys `{other}` and `{key}` set the same flag"),
            ));
        }
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => {
                return Err(fail(
                    ErrorKind::InvalidValue,
                    format!(
                        "key `{key}`: expected a string, integer or boolean, found {}",
                        other.type_str()
                    ),
                ));
            }
        };
        // The flag's parser on its own: a command of this one argument, the
        // value as its default, and no variable that could hide it.
        let check = Command::new("lockd")
            .arg(
                arg.clone()
                    .env(Resettable::Reset)
                    .default_value(value.clone()),
            )
            .try_get_matches_from(["lockd"]);
        if let Err(err) = check {
            let mut why = std::error::Error::source(&err)
                .map(ToString::to_string)
                .unwrap_or_else(|| first_line(&err.to_string()));
            let possible: Vec<String> = arg
                .get_possible_values()
                .iter()
                .map(|v| v.get_name().to_owned())
                .collect();
            if !possible.is_empty() {
                why = format!("{why}; one of: {}", possible.join(", "));
            }
            return Err(fail(
                ErrorKind::InvalidValue,
                format!("key `{key}` = {value:?}: {why}"),
            ));
        }
        values.insert(id, value);
    }
    Ok(values)
}

/// The message of a rendered clap error, without its `error: ` prefix and usage.
fn first_line(rendered: &str) -> String {
    let line = rendered.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_owned()
}

/// A filter for `--log-level`, checked the way the logger will read it.
fn parse_log_level(value: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::builder()
        .parse(value)
        .map(|_| value.to_owned())
        .map_err(|err| err.to_string())
}

/// `url` with the password of its user info, and of a `password`/`pass`
/// query parameter, replaced by `***`: safe to print and to log.
pub fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let authority = match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            // redis-rs reads a lone user-info word as a user name, not a secret.
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((name, _)) if matches!(name, "password" | "pass") => format!("{name}=***"),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_is_printed() {
        let config = Config::try_parse_from(["lockd"]).expect("defaults parse");
        let printed: Vec<&str> = config.settings().iter().map(|(key, _)| *key).collect();
        let command = Config::command();
        let flags: Vec<&str> = command
            .get_arguments()
            .map(|arg| arg.get_id().as_str())
            .filter(|id| !NOT_IN_FILE.contains(id))
            .collect();
        assert_eq!(printed, flags);
    }

    #[test]
    fn passwords_are_masked() {
        for (url, masked) in [
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("redis://:hunter2@h:6379/0", "redis://:***@h:6379/0"),
            ("rediss://app:p@ss:w@h:6380", "rediss://app:***@h:6380"),
            ("redis://app@h", "redis://app@h"),
            (
                "redis+unix:///run/redis.sock?db=1&pass=hunter2",
                "redis+unix:///run/redis.sock?db=1&pass=***",
            ),
        ] {
            assert_eq!(mask_url(url), masked, "{url}");
        }
    }
}
