//! The one place that opens connections to Redis: the lanes lock operations
//! run on and the connection that receives keyspace notifications.
//!
//! Sentinel and Cluster plug in here: everything else asks a [`Connector`]
//! for connections and never parses a URL itself.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, ProtocolVersion, RedisResult};

use crate::error::StoreError;

/// How to reach one Redis deployment.
#[derive(Debug, Clone)]
pub struct Connector {
    info: redis::ConnectionInfo,
    timeout: Duration,
}

impl Connector {
    /// Parses `url`; `timeout` bounds every call on the connections it opens.
    pub fn new(url: &str, timeout: Duration) -> Result<Connector, StoreError> {
        Ok(Connector {
            info: url.into_connection_info()?,
            timeout,
        })
    }

    /// The logical database keys live in, for keyspace channel names.
    pub fn db(&self) -> i64 {
        self.info.redis_settings().db()
    }

    /// The bound on every call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `count` multiplexed connections that reconnect by themselves.
    pub async fn lanes(&self, count: usize) -> Result<Lanes, StoreError> {
        let client = redis::Client::open(self.info.clone())?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(self.timeout))
            .set_connection_timeout(Some(self.timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let mut conns = Vec::with_capacity(count.max(1));
        for _ in 0..count.max(1) {
            let conn = self
                .bounded_by(
                    self.timeout * 2,
                    client.get_connection_manager_with_config(config.clone()),
                )
                .await?;
            conns.push(conn);
        }
        Ok(Lanes {
            conns,
            next: AtomicUsize::new(0),
            timeout: self.timeout,
        })
    }

    /// A RESP3 connection for pub/sub, configured by `config` (push sender,
    /// resubscription) on top of this connector's timeouts.
    pub async fn subscriber(
        &self,
        config: ConnectionManagerConfig,
    ) -> Result<ConnectionManager, StoreError> {
        let settings = self
            .info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let info = self.info.clone().set_redis_settings(settings);
        let config = config
            .set_response_timeout(Some(self.timeout))
            .set_connection_timeout(Some(self.timeout))
            .set_max_delay(Duration::from_secs(1));
        let client = redis::Client::open(info)?;
        self.bounded_by(
            self.timeout * 2,
            client.get_connection_manager_with_config(config),
        )
        .await
    }

    async fn bounded_by<T>(
        &self,
        limit: Duration,
        call: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(limit, call).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(StoreError::Timeout(limit)),
        }
    }
}

/// Whether a failure to connect or to run the startup checks means only that
/// Redis does not answer (yet): down, starting, loading its data, no primary
/// elected. Waiting can fix those. Everything else (a refused password, a
/// port that does not speak Redis, a previous key layout, an evicting
/// policy, notifications that cannot be turned on) is a configuration to
/// change, which retrying cannot fix.
pub fn is_unreachable(err: &StoreError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    match err {
        StoreError::NotReady | StoreError::Timeout(_) => true,
        StoreError::Redis(err) => {
            err.is_io_error()
                || matches!(
                    err.kind(),
                    ErrorKind::Server(
                        ServerErrorKind::BusyLoading
                            | ServerErrorKind::TryAgain
                            | ServerErrorKind::ClusterDown
                            | ServerErrorKind::MasterDown
                    )
                )
        }
        _ => false,
    }
}

/// `url` as it may be logged: the password in the authority
/// (`redis://user:secret@host`) and any `pass`/`password` query parameter
/// (`redis+unix:///run/redis.sock?pass=secret`) become `***`, so that an
/// operator sees where lockd connects without the secret reaching the logs.
pub fn redacted_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    // Split at the last '@': a password may hold '@', '/' or '?' unescaped,
    // a host and a database number never do. Hiding too much beats leaking.
    let (userinfo, rest) = match rest.rsplit_once('@') {
        Some((userinfo, rest)) => match userinfo.split_once(':') {
            Some((user, _)) => (format!("{user}:***@"), rest),
            // `redis://secret@host` is read as a bare password by some clients.
            None => ("***@".to_owned(), rest),
        },
        None => (String::new(), rest),
    };
    let rest = match rest.split_once('?') {
        Some((path, query)) => {
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _))
                        if key.eq_ignore_ascii_case("pass")
                            || key.eq_ignore_ascii_case("password") =>
                    {
                        format!("{key}=***")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", pairs.join("&"))
        }
        None => rest.to_owned(),
    };
    format!("{scheme}{userinfo}{rest}")
}

/// One multiplexed connection lock operations run on; cheap to clone.
pub type Lane = ConnectionManager;

/// A few multiplexed connections that pipeline concurrent requests; calls
/// are spread over them in turn.
pub struct Lanes {
    conns: Vec<ConnectionManager>,
    next: AtomicUsize,
    timeout: Duration,
}

impl Lanes {
    /// The next lane.
    pub fn conn(&self) -> Lane {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        self.conns[i].clone()
    }

    /// Pings every lane at once and fails with the first error if any lane
    /// does not answer.
    ///
    /// A lane learns that its connection died (a restarted Redis) only from a
    /// command that fails on it; that failure starts its reconnect, and the
    /// lane's next command waits for the new connection. Pinging every lane
    /// lets those failures happen here rather than in a caller's request, so
    /// that a lane nobody used during an outage is not the one a caller hits.
    pub async fn ping_all(&self) -> Result<(), StoreError> {
        let pings = self.conns.iter().map(|conn| {
            let mut conn = conn.clone();
            async move {
                self.bounded(redis::cmd("PING").query_async::<redis::Value>(&mut conn))
                    .await
            }
        });
        for result in futures::future::join_all(pings).await {
            result?;
        }
        Ok(())
    }

    /// Runs `call` within the timeout; past it the outcome is unknown.
    pub async fn bounded<T>(
        &self,
        call: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redacted_url;

    #[test]
    fn passwords_never_survive_redaction() {
        let cases = [
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            (
                "redis://:sekret@127.0.0.1:6379/2",
                "redis://:***@127.0.0.1:6379/2",
            ),
            (
                "rediss://app:se@cr:et@redis.svc:6380",
                "rediss://app:***@redis.svc:6380",
            ),
            ("redis://sekret@host", "redis://***@host"),
            ("redis://:a/b?c@host:1", "redis://:***@host:1"),
            (
                "redis+unix:///run/redis.sock?db=1&pass=sekret",
                "redis+unix:///run/redis.sock?db=1&pass=***",
            ),
            (
                "redis://host/0?protocol=resp3",
                "redis://host/0?protocol=resp3",
            ),
        ];
        for (url, shown) in cases {
            assert_eq!(redacted_url(url), shown, "{url}");
        }
    }
}
