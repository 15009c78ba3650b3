//! Sentinel: finding the primary, and moving every lane when it changes.
//!
//! redis-rs and deadpool-redis look the primary up only when they open a
//! connection, and never move an open one. Here the sentinels are asked
//! (`SENTINEL MASTER`, which also gives the config epoch) whenever a lane
//! needs a connection and once a second, and their `+switch-master` messages
//! are followed: a lane on any other address is replaced at once.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use futures::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, Value};
use tokio::sync::watch;

use super::lane::{NodeLane, lock};
use super::url::{SentinelTarget, with_host};
use crate::error::StoreError;

/// How often the sentinels are asked where the primary is, besides their messages.
const RESOLVE_EVERY: Duration = Duration::from_secs(1);

/// Longest pause between attempts to subscribe to `+switch-master`.
const SUBSCRIBE_MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Asks the sentinels where the primary of one master name is.
pub(crate) struct Resolver {
    target: SentinelTarget,
    timeout: Duration,
    /// One cached connection per sentinel, dropped when it fails.
    conns: Mutex<Vec<Option<MultiplexedConnection>>>,
    /// The highest config epoch an answer had: a sentinel still reporting a
    /// lower one has not heard of the latest failover.
    epoch: Mutex<Option<u64>>,
    last: Mutex<Option<ConnectionAddr>>,
}

/// One sentinel's view of the primary.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    addr: ConnectionAddr,
    epoch: u64,
}

impl Resolver {
    pub(crate) fn new(target: SentinelTarget, timeout: Duration) -> Resolver {
        let conns = Mutex::new(vec![None; target.sentinels.len()]);
        Resolver {
            target,
            timeout,
            conns,
            epoch: Mutex::new(None),
            last: Mutex::new(None),
        }
    }

    pub(crate) fn db(&self) -> i64 {
        self.target.node.redis_settings().db()
    }

    pub(crate) fn master(&self) -> &str {
        &self.target.master
    }

    /// How to connect to the data node at `addr`.
    pub(crate) fn node_info(&self, addr: &ConnectionAddr) -> ConnectionInfo {
        match addr {
            ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
                with_host(&self.target.node, host, *port)
            }
            _ => self.target.node.clone().set_addr(addr.clone()),
        }
    }

    /// The data node address of `host:port`, as lanes compare it.
    fn addr_of(&self, host: &str, port: u16) -> ConnectionAddr {
        with_host(&self.target.node, host, port).addr().clone()
    }

    /// What the sentinels said last.
    pub(crate) fn last(&self) -> Option<ConnectionAddr> {
        lock(&self.last).clone()
    }

    /// Asks every sentinel at once and believes the answer of the highest
    /// config epoch: during a failover some sentinels still name the old
    /// primary for a while, with the old epoch.
    pub(crate) async fn resolve(&self) -> Result<ConnectionAddr, StoreError> {
        let asks = (0..self.target.sentinels.len()).map(|i| self.ask(i));
        let results = futures::future::join_all(asks).await;
        let mut answers = Vec::new();
        let mut first_error = None;
        for result in results {
            match result {
                Ok(answer) => answers.push(answer),
                // What a sentinel said (an unknown master name) tells more
                // than one that did not answer.
                Err(err) => {
                    let said = matches!(&err, StoreError::Redis(e) if e.code().is_some());
                    if said || first_error.is_none() {
                        first_error = Some(err);
                    }
                }
            }
        }
        let Some(best) = answers.iter().max_by_key(|a| a.epoch).cloned() else {
            return Err(first_error.unwrap_or(StoreError::NotReady));
        };
        let agreeing = answers.iter().filter(|a| **a == best).count();
        {
            let mut epoch = lock(&self.epoch);
            match *epoch {
                // Behind what an earlier answer said: only a majority of all
                // sentinels may take it back (a reset, a rebuilt deployment).
                Some(seen) if best.epoch < seen && agreeing * 2 <= self.target.sentinels.len() => {
                    return Err(StoreError::Redis(super::lane::io_error(format!(
                        "the sentinels that answer report config epoch {} for {}, \
                         older than the {seen} seen before",
                        best.epoch, self.target.master
                    ))));
                }
                _ => *epoch = Some(best.epoch),
            }
        }
        let previous = lock(&self.last).replace(best.addr.clone());
        if previous.as_ref().is_some_and(|p| *p != best.addr) {
            tracing::info!(
                master = %self.target.master,
                primary = %best.addr,
                epoch = best.epoch,
                "sentinels name a new primary"
            );
        }
        Ok(best.addr)
    }

    async fn ask(&self, i: usize) -> Result<Answer, StoreError> {
        let cached = lock(&self.conns).get(i).cloned().flatten();
        let mut conn = match cached {
            Some(conn) => conn,
            None => {
                let info = self.target.sentinels[i].clone();
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout));
                let opened = tokio::time::timeout(self.timeout * 2, async {
                    redis::Client::open(info)?
                        .get_multiplexed_async_connection_with_config(&config)
                        .await
                })
                .await;
                let conn = match opened {
                    Ok(result) => result?,
                    Err(_) => return Err(StoreError::Timeout(self.timeout * 2)),
                };
                if let Some(slot) = lock(&self.conns).get_mut(i) {
                    *slot = Some(conn.clone());
                }
                conn
            }
        };
        let reply = tokio::time::timeout(
            self.timeout,
            redis::cmd("SENTINEL")
                .arg("MASTER")
                .arg(&self.target.master)
                .query_async::<Value>(&mut conn),
        )
        .await;
        let value = match reply {
            Ok(Ok(value)) => value,
            Ok(Err(err)) => {
                if err.code().is_none() {
                    self.forget(i);
                }
                return Err(err.into());
            }
            Err(_) => {
                self.forget(i);
                return Err(StoreError::Timeout(self.timeout));
            }
        };
        let fields = fields(value);
        let field = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let (Some(ip), Some(port)) = (field("ip"), field("port").and_then(|p| p.parse().ok()))
        else {
            return Err(StoreError::Reply(format!(
                "SENTINEL MASTER {} answered without ip and port",
                self.target.master
            )));
        };
        Ok(Answer {
            addr: self.addr_of(ip, port),
            epoch: field("config-epoch")
                .and_then(|e| e.parse().ok())
                .unwrap_or(0),
        })
    }

    fn forget(&self, i: usize) {
        if let Some(slot) = lock(&self.conns).get_mut(i) {
            *slot = None;
        }
    }

    /// A `+switch-master` message's new primary, if it is about our master:
    /// `<name> <old-ip> <old-port> <new-ip> <new-port>`.
    fn switched_to(&self, payload: &str) -> Option<ConnectionAddr> {
        let parts: Vec<&str> = payload.split_whitespace().collect();
        match parts.as_slice() {
            [name, _, _, ip, port] if *name == self.target.master => {
                Some(self.addr_of(ip, port.parse().ok()?))
            }
            _ => None,
        }
    }

    /// A subscription to `+switch-master` on one sentinel, trying each in turn.
    async fn subscribe(&self, start: usize) -> Result<redis::aio::PubSubStream, StoreError> {
        let count = self.target.sentinels.len();
        let mut last_error = StoreError::NotReady;
        for k in 0..count {
            let info = self.target.sentinels[(start + k) % count].clone();
            let opened = tokio::time::timeout(self.timeout * 2, async {
                let mut pubsub = redis::Client::open(info)?.get_async_pubsub().await?;
                pubsub.subscribe("+switch-master").await?;
                Ok::<_, redis::RedisError>(pubsub.into_on_message())
            })
            .await;
            match opened {
                Ok(Ok(stream)) => return Ok(stream),
                Ok(Err(err)) => last_error = err.into(),
                Err(_) => last_error = StoreError::Timeout(self.timeout * 2),
            }
        }
        Err(last_error)
    }
}

/// The fields of a `SENTINEL MASTER` reply, RESP2 (flat array) or RESP3 (map).
fn fields(value: Value) -> Vec<(String, String)> {
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    };
    match value {
        Value::Map(pairs) => pairs
            .iter()
            .filter_map(|(k, v)| Some((text(k)?, text(v)?)))
            .collect(),
        Value::Array(items) => items
            .chunks(2)
            .filter_map(|kv| Some((text(kv.first()?)?, text(kv.get(1)?)?)))
            .collect(),
        _ => Vec::new(),
    }
}

/// Keeps every lane on the primary the sentinels name, until the lanes are
/// dropped (`shutdown` closes): on `+switch-master` and once a second.
pub(crate) async fn follow(
    resolver: Arc<Resolver>,
    lanes: Vec<Arc<NodeLane>>,
    mut shutdown: watch::Receiver<()>,
) {
    let mut tick = tokio::time::interval(RESOLVE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut messages: Option<redis::aio::PubSubStream> = None;
    let mut backoff = Duration::from_millis(100);
    let mut next_subscribe = tokio::time::Instant::now();
    let mut start = 0;
    loop {
        if messages.is_none() && tokio::time::Instant::now() >= next_subscribe {
            match resolver.subscribe(start).await {
                Ok(stream) => {
                    messages = Some(stream);
                    backoff = Duration::from_millis(100);
                }
                Err(err) => {
                    tracing::debug!(error = %err, retry_in = ?backoff, "subscribing to +switch-master failed");
                    start += 1;
                    next_subscribe = tokio::time::Instant::now() + backoff;
                    backoff = (backoff * 2).min(SUBSCRIBE_MAX_BACKOFF);
                }
            }
        }
        let message = async {
            match messages.as_mut() {
                Some(stream) => stream.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {
                match resolver.resolve().await {
                    Ok(addr) => {
                        for lane in &lanes {
                            lane.follow(&addr, "the sentinels name another primary");
                        }
                    }
                    Err(err) => tracing::debug!(error = %err, "asking the sentinels for the primary failed"),
                }
            }
            message = message => match message {
                Some(msg) => {
                    let payload: String = msg.get_payload().unwrap_or_default();
                    if let Some(addr) = resolver.switched_to(&payload) {
                        tracing::info!(master = %resolver.master(), primary = %addr, "sentinel announced +switch-master");
                        for lane in &lanes {
                            lane.follow(&addr, "sentinel announced +switch-master");
                        }
                    }
                }
                None => {
                    // The sentinel went away: subscribe on the next one.
                    messages = None;
                    start += 1;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_master_fields_are_read_from_both_protocols() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let flat = Value::Array(vec![
            bulk("ip"),
            bulk("10.0.0.1"),
            bulk("config-epoch"),
            bulk("3"),
        ]);
        assert_eq!(
            fields(flat),
            vec![
                ("ip".to_owned(), "10.0.0.1".to_owned()),
                ("config-epoch".to_owned(), "3".to_owned())
            ]
        );
        let map = Value::Map(vec![(bulk("port"), Value::Int(6379))]);
        assert_eq!(fields(map), vec![("port".to_owned(), "6379".to_owned())]);
    }

    #[test]
    fn switch_master_messages_are_read_for_our_master_only() {
        let Ok(super::super::url::Target::Sentinel(target)) =
            super::super::url::parse("redis+sentinel://s:26379/mymaster")
        else {
            panic!("not a sentinel URL");
        };
        let resolver = Resolver::new(target, Duration::from_secs(1));
        assert_eq!(
            resolver.switched_to("mymaster 127.0.0.1 6379 127.0.0.1 6380"),
            Some(ConnectionAddr::Tcp("127.0.0.1".to_owned(), 6380))
        );
        assert_eq!(resolver.switched_to("other 1.1.1.1 1 2.2.2.2 2"), None);
        assert_eq!(resolver.switched_to("garbage"), None);
    }
}
