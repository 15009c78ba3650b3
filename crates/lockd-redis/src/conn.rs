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

/// A few multiplexed connections that pipeline concurrent requests; calls
/// are spread over them in turn.
pub struct Lanes {
    conns: Vec<ConnectionManager>,
    next: AtomicUsize,
    timeout: Duration,
}

impl Lanes {
    /// The next lane.
    pub fn conn(&self) -> ConnectionManager {
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
