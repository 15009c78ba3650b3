//! [`Lane`]: one long-lived multiplexed connection, replaced from its pool when it breaks.
//!
//! deadpool-redis PINGs a connection every time it is checked out again, so a
//! checkout per operation would double the round trips. A lane takes its
//! connection out of the pool for good and goes back only to replace it: after
//! a connection error, a `READONLY` answer (the node is no longer the
//! primary), or a word from Sentinel that the primary moved. Replacement is
//! single-flight per lane and backs off from 100 ms to 5 s until it succeeds.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use deadpool_redis::{Runtime, Timeouts};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, Pipeline, RedisError,
    RedisFuture, RedisResult, ServerErrorKind, Value,
};
use tokio::sync::{Notify, watch};

use super::cluster::Cluster;
use super::sentinel::Resolver;
use crate::error::StoreError;

/// First pause after a failed replacement; doubled after each, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// One connection lock operations run on; cheap to clone.
#[derive(Clone)]
pub struct Lane {
    kind: LaneKind,
}

#[derive(Clone)]
enum LaneKind {
    /// A standalone or Sentinel-watched primary.
    Node { slot: Arc<NodeLane> },
    /// Lane `pick` of whichever Cluster primary serves each command's slot.
    Cluster { cluster: Arc<Cluster>, pick: usize },
}

impl Lane {
    pub(crate) fn node(slot: Arc<NodeLane>) -> Lane {
        Lane {
            kind: LaneKind::Node { slot },
        }
    }

    pub(crate) fn cluster(cluster: Arc<Cluster>, pick: usize) -> Lane {
        Lane {
            kind: LaneKind::Cluster { cluster, pick },
        }
    }

    /// Runs `pipeline` as one write on one connection to the node that
    /// serves `routing_key` (on Cluster, that slot's primary, whatever keys
    /// or keyless commands the pipeline holds), and returns its replies. A
    /// retry after a dropped connection resends all of it.
    ///
    /// `response_timeout` replaces the lanes' bound for this call, for a
    /// pipeline that blocks on purpose (WAIT).
    pub async fn one_node_pipeline(
        &mut self,
        routing_key: &str,
        pipeline: &Pipeline,
        response_timeout: Duration,
    ) -> RedisResult<Vec<Value>> {
        match &self.kind {
            LaneKind::Cluster { cluster, pick } => {
                cluster
                    .one_node_pipeline(*pick, routing_key, pipeline, response_timeout)
                    .await
            }
            LaneKind::Node { slot } => {
                let count = pipeline.cmd_iter().count();
                slot.pipeline(pipeline, 0, count, Some(response_timeout))
                    .await
            }
        }
    }
}

impl ConnectionLike for Lane {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &self.kind {
            LaneKind::Cluster { cluster, pick } => Box::pin(cluster.command(*pick, cmd)),
            LaneKind::Node { slot } => Box::pin(slot.command(cmd)),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &self.kind {
            LaneKind::Cluster { cluster, pick } => {
                Box::pin(cluster.pipeline(*pick, cmd, offset, count))
            }
            LaneKind::Node { slot } => Box::pin(slot.pipeline(cmd, offset, count, None)),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.kind {
            LaneKind::Node { slot, .. } => slot.source.db(),
            LaneKind::Cluster { .. } => 0,
        }
    }
}

/// Where a lane's connections come from.
pub(crate) struct NodeSource {
    timeout: Duration,
    config: AsyncConnectionConfig,
    /// Its sender is held by the owning `Lanes`; once it is dropped, every
    /// replacement ends.
    shutdown: watch::Receiver<()>,
    db: i64,
    /// How many connections a pool may be creating at once.
    pool_size: usize,
    kind: SourceKind,
}

enum SourceKind {
    /// One server at one address.
    Fixed {
        // Boxed: with TLS parameters these are large, and a Sentinel source has neither.
        info: Box<ConnectionInfo>,
        addr: Box<ConnectionAddr>,
        pool: deadpool_redis::Pool,
    },
    /// The primary the sentinels name; a pool per address it had.
    Sentinel {
        resolver: Arc<Resolver>,
        pool: Mutex<Option<(ConnectionAddr, deadpool_redis::Pool)>>,
    },
}

impl NodeSource {
    pub(crate) fn fixed(
        info: ConnectionInfo,
        timeout: Duration,
        pool_size: usize,
        shutdown: watch::Receiver<()>,
    ) -> Result<NodeSource, StoreError> {
        let config = connection_config(timeout);
        let db = info.redis_settings().db();
        let addr = info.addr().clone();
        let pool = pool(info.clone(), &config, timeout, pool_size)?;
        Ok(NodeSource {
            timeout,
            config,
            shutdown,
            db,
            pool_size,
            kind: SourceKind::Fixed {
                info: Box::new(info),
                addr: Box::new(addr),
                pool,
            },
        })
    }

    pub(crate) fn sentinel(
        resolver: Arc<Resolver>,
        timeout: Duration,
        pool_size: usize,
        shutdown: watch::Receiver<()>,
    ) -> NodeSource {
        NodeSource {
            timeout,
            config: connection_config(timeout),
            shutdown,
            db: resolver.db(),
            pool_size,
            kind: SourceKind::Sentinel {
                resolver,
                pool: Mutex::new(None),
            },
        }
    }

    pub(crate) fn db(&self) -> i64 {
        self.db
    }

    pub(crate) fn resolver(&self) -> Option<&Arc<Resolver>> {
        match &self.kind {
            SourceKind::Sentinel { resolver, .. } => Some(resolver),
            SourceKind::Fixed { .. } => None,
        }
    }

    /// Where the primary is believed to be: the fixed address, or what the
    /// sentinels said last.
    pub(crate) fn primary(&self) -> Option<ConnectionAddr> {
        match &self.kind {
            SourceKind::Fixed { addr, .. } => Some(ConnectionAddr::clone(addr)),
            SourceKind::Sentinel { resolver, .. } => resolver.last(),
        }
    }

    /// How to connect to the data node at `addr` (credentials, db, TLS).
    pub(crate) fn node_info(&self, addr: &ConnectionAddr) -> ConnectionInfo {
        match &self.kind {
            SourceKind::Fixed { info, .. } => ConnectionInfo::clone(info),
            SourceKind::Sentinel { resolver, .. } => resolver.node_info(addr),
        }
    }

    /// How long one attempt at a new connection may take: finding the primary,
    /// connecting, and asking its role.
    pub(crate) fn connect_limit(&self) -> Duration {
        self.timeout * 3
    }

    fn closed(&self) -> bool {
        self.shutdown.has_changed().is_err()
    }

    /// A new connection to the primary, checked to be one.
    pub(crate) async fn connect(
        &self,
    ) -> Result<(MultiplexedConnection, ConnectionAddr), StoreError> {
        let (addr, pool) = match &self.kind {
            SourceKind::Fixed { addr, pool, .. } => (ConnectionAddr::clone(addr), pool.clone()),
            SourceKind::Sentinel { resolver, pool } => {
                let addr = resolver.resolve().await?;
                let existing = lock(pool)
                    .as_ref()
                    .filter(|(at, _)| *at == addr)
                    .map(|(_, pool)| pool.clone());
                let chosen = match existing {
                    Some(chosen) => chosen,
                    None => {
                        let info = resolver.node_info(&addr);
                        let fresh = self::pool(info, &self.config, self.timeout, self.pool_size)?;
                        *lock(pool) = Some((addr.clone(), fresh.clone()));
                        fresh
                    }
                };
                (addr, chosen)
            }
        };
        let object = pool.get().await.map_err(|e| pool_error(e, self.timeout))?;
        let mut conn = deadpool_redis::Connection::take(object);
        check_primary(&mut conn, &addr).await?;
        Ok((conn, addr))
    }
}

fn connection_config(timeout: Duration) -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_response_timeout(Some(timeout))
        .set_connection_timeout(Some(timeout))
}

/// A deadpool-redis pool whose connections have lockd's timeouts.
fn pool(
    info: ConnectionInfo,
    config: &AsyncConnectionConfig,
    timeout: Duration,
    size: usize,
) -> Result<deadpool_redis::Pool, StoreError> {
    let manager = deadpool_redis::Manager::new_with_config(info, config.clone())?;
    deadpool_redis::Pool::builder(manager)
        .max_size(size.max(1))
        .runtime(Runtime::Tokio1)
        .timeouts(Timeouts {
            wait: Some(timeout),
            create: Some(timeout * 2),
            recycle: Some(timeout),
        })
        .build()
        .map_err(|e| StoreError::Redis(io_error(format!("building a connection pool: {e}"))))
}

/// A pool's failure as the store reports it: what Redis said, or a timeout.
pub(crate) fn pool_error(err: deadpool_redis::PoolError, timeout: Duration) -> StoreError {
    match err {
        deadpool_redis::PoolError::Backend(e) => e.into(),
        deadpool_redis::PoolError::Timeout(_) => StoreError::Timeout(timeout),
        other => StoreError::Redis(io_error(format!("connection pool: {other}"))),
    }
}

/// Refuses a connection to a node that is not a primary: a demoted primary
/// still answers everything but writes.
pub(crate) async fn check_primary(
    conn: &mut impl ConnectionLike,
    addr: &ConnectionAddr,
) -> Result<(), StoreError> {
    match redis::cmd("ROLE").query_async::<Value>(conn).await {
        Ok(value) => match role_of(&value) {
            Some(role) if role == "master" => Ok(()),
            Some(role) => Err(StoreError::Redis(not_primary(addr, &role))),
            None => Err(StoreError::Reply(format!("ROLE answered {value:?}"))),
        },
        // A user without ROLE (an ACL that leaves it out): the role cannot be
        // checked, and a READONLY answer still replaces the lane later.
        Err(err) if err.code() == Some("NOPERM") => {
            tracing::debug!(node = %addr, "ROLE is refused; cannot check the node is a primary");
            Ok(())
        }
        Err(err) => Err(err.into()),
    }
}

/// The first element of a ROLE reply: `master`, `slave` or `sentinel`.
pub(crate) fn role_of(value: &Value) -> Option<String> {
    match value {
        Value::Array(items) => match items.first()? {
            Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
            Value::SimpleString(text) => Some(text.clone()),
            _ => None,
        },
        _ => None,
    }
}

/// The error of a node that is not (or no longer) the primary; like a
/// `READONLY` reply, it means "unreachable for writes", which waiting fixes.
pub(crate) fn not_primary(addr: &ConnectionAddr, role: &str) -> RedisError {
    RedisError::from((
        ErrorKind::Server(ServerErrorKind::ReadOnly),
        "node is not a primary",
        format!("{addr} answers ROLE {role}"),
    ))
}

pub(crate) fn io_error(message: String) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        message,
    ))
}

/// Whether `err` says the connection (or its node's role) is gone for good:
/// dropped, refused, or the node answered READONLY. A timeout does not: the
/// node may only be slow, and Sentinel tells when it was replaced.
pub(crate) fn breaks(err: &RedisError) -> bool {
    if err.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly) {
        return true;
    }
    !err.is_timeout()
        && (err.is_io_error() || err.is_connection_dropped() || err.is_connection_refusal())
}

/// Whether a reply is the `READONLY` error of a replica or demoted primary.
fn is_read_only(value: &Value) -> bool {
    matches!(value, Value::ServerError(err) if err.kind() == Some(ServerErrorKind::ReadOnly))
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these leaves plain data, still usable.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One lane's connection and its replacement.
pub(crate) struct NodeLane {
    index: usize,
    source: Arc<NodeSource>,
    state: Mutex<LaneState>,
    /// Woken when a replacement attempt ends, in success or failure.
    attempted: Notify,
    /// Cuts a replacement's pause short: a caller needs the lane now.
    kick: Notify,
}

struct LaneState {
    /// `None` while broken.
    current: Option<Current>,
    generation: u64,
    /// A replacement task runs.
    replacing: bool,
    /// It is connecting right now, rather than pausing between attempts.
    attempting: bool,
    last_error: Option<String>,
    /// When the last failed attempt ended.
    failed_at: Option<Instant>,
}

#[derive(Clone)]
pub(crate) struct Current {
    pub generation: u64,
    pub conn: MultiplexedConnection,
    pub addr: ConnectionAddr,
}

impl NodeLane {
    pub(crate) fn new(
        index: usize,
        source: Arc<NodeSource>,
        conn: MultiplexedConnection,
        addr: ConnectionAddr,
    ) -> Arc<NodeLane> {
        Arc::new(NodeLane {
            index,
            source,
            state: Mutex::new(LaneState {
                current: Some(Current {
                    generation: 1,
                    conn,
                    addr,
                }),
                generation: 1,
                replacing: false,
                attempting: false,
                last_error: None,
                failed_at: None,
            }),
            attempted: Notify::new(),
            kick: Notify::new(),
        })
    }

    /// The address of the current connection, if the lane has one.
    pub(crate) fn addr(&self) -> Option<ConnectionAddr> {
        lock(&self.state).current.as_ref().map(|c| c.addr.clone())
    }

    /// A lane with no connection yet: its first caller starts connecting.
    /// Cluster shards begin so, since a shard's primary may be down when
    /// the slot map first names it.
    pub(crate) fn unconnected(index: usize, source: Arc<NodeSource>) -> Arc<NodeLane> {
        Arc::new(NodeLane {
            index,
            source,
            state: Mutex::new(LaneState {
                current: None,
                generation: 0,
                replacing: false,
                attempting: false,
                last_error: Some("not connected yet".to_owned()),
                failed_at: None,
            }),
            attempted: Notify::new(),
            kick: Notify::new(),
        })
    }

    /// The connection if the lane has one now; otherwise `None` at once,
    /// with a replacement started, for callers that must not wait on a
    /// node that may be down (fan-outs over every Cluster primary).
    pub(crate) fn connected(self: &Arc<Self>) -> Option<Current> {
        let mut state = lock(&self.state);
        if state.current.is_none() {
            self.start_replacing(&mut state);
        }
        state.current.clone()
    }

    /// Runs one command on the lane's connection; an error that says the
    /// connection or the node's role is gone replaces it.
    pub(crate) async fn command(self: &Arc<Self>, cmd: &Cmd) -> RedisResult<Value> {
        let mut current = self.current().await?;
        let result = current.conn.req_packed_command(cmd).await;
        match &result {
            Err(err) => self.check(current.generation, err),
            Ok(value) => {
                if is_read_only(value) {
                    self.broken(current.generation, "the node answered READONLY");
                }
            }
        }
        result
    }

    /// Runs a pipeline on the lane's connection, with `response_timeout`
    /// instead of the lanes' bound if given. A pipeline's own errors come
    /// back as values; a `READONLY` among them replaces the connection too.
    pub(crate) async fn pipeline(
        self: &Arc<Self>,
        pipeline: &Pipeline,
        offset: usize,
        count: usize,
        response_timeout: Option<Duration>,
    ) -> RedisResult<Vec<Value>> {
        let current = self.current().await?;
        let mut conn = current.conn.clone();
        if let Some(timeout) = response_timeout {
            conn.set_response_timeout(timeout);
        }
        let result = conn.req_packed_commands(pipeline, offset, count).await;
        match &result {
            Err(err) => self.check(current.generation, err),
            Ok(values) => {
                if values.iter().any(is_read_only) {
                    self.broken(current.generation, "the node answered READONLY");
                }
            }
        }
        result
    }

    /// The connection to use. While the lane is being replaced, the caller
    /// waits for it, up to the lanes' timeout: a restarted Redis is usually
    /// back within that, and a call then succeeds instead of failing. A
    /// waiting caller cuts the replacement's backoff short, but attempts
    /// stay at least [`FIRST_BACKOFF`] apart, so that callers during an
    /// outage do not hammer Redis with connects.
    pub(crate) async fn current(self: &Arc<Self>) -> Result<Current, RedisError> {
        let deadline = tokio::time::Instant::now() + self.source.timeout;
        loop {
            let attempted = self.attempted.notified();
            tokio::pin!(attempted);
            attempted.as_mut().enable();
            let pause_until = {
                let mut state = lock(&self.state);
                if let Some(current) = &state.current {
                    return Ok(current.clone());
                }
                self.start_replacing(&mut state);
                if tokio::time::Instant::now() >= deadline {
                    let why = state.last_error.as_deref().unwrap_or("not connected");
                    return Err(io_error(format!("redis lane reconnecting: {why}")));
                }
                match (state.attempting, state.failed_at) {
                    (true, _) => None,
                    (false, Some(at)) if at.elapsed() < FIRST_BACKOFF => {
                        Some(tokio::time::Instant::from_std(at + FIRST_BACKOFF))
                    }
                    (false, _) => {
                        state.attempting = true;
                        self.kick.notify_one();
                        None
                    }
                }
            };
            match pause_until {
                Some(until) => tokio::time::sleep_until(until.min(deadline)).await,
                None => {
                    let _ = tokio::time::timeout_at(deadline, attempted).await;
                }
            }
        }
    }

    /// Marks the connection of `generation` broken if `err` says it is.
    pub(crate) fn check(self: &Arc<Self>, generation: u64, err: &RedisError) {
        if breaks(err) {
            self.broken(generation, &err.to_string());
        }
    }

    /// Replaces the connection of `generation`, unless it was replaced already.
    pub(crate) fn broken(self: &Arc<Self>, generation: u64, reason: &str) {
        let mut state = lock(&self.state);
        let Some(current) = &state.current else {
            return;
        };
        if current.generation != generation {
            return;
        }
        tracing::warn!(lane = self.index, node = %current.addr, reason, "redis lane broken; replacing it");
        state.current = None;
        self.start_replacing(&mut state);
    }

    /// Replaces the connection unless it is to `addr`: the primary moved there.
    pub(crate) fn follow(self: &Arc<Self>, addr: &ConnectionAddr, reason: &str) {
        let generation = {
            let state = lock(&self.state);
            match &state.current {
                Some(current) if current.addr != *addr => current.generation,
                _ => return,
            }
        };
        self.broken(generation, reason);
    }

    fn start_replacing(self: &Arc<Self>, state: &mut LaneState) {
        if state.replacing {
            return;
        }
        state.replacing = true;
        state.attempting = true;
        let lane = Arc::clone(self);
        tokio::spawn(async move { lane.replace().await });
    }

    /// Attempts until a connection to a primary is installed or the lanes are dropped.
    async fn replace(self: Arc<Self>) {
        let mut shutdown = self.source.shutdown.clone();
        let mut backoff = FIRST_BACKOFF;
        let mut failures = 0u32;
        loop {
            if self.source.closed() {
                let mut state = lock(&self.state);
                state.replacing = false;
                state.attempting = false;
                state.last_error = Some("the store is closed".to_owned());
                drop(state);
                self.attempted.notify_waiters();
                return;
            }
            let limit = self.source.connect_limit();
            let attempt = match tokio::time::timeout(limit, self.source.connect()).await {
                Ok(result) => result,
                Err(_) => Err(StoreError::Timeout(limit)),
            };
            match attempt {
                Ok((conn, addr)) => {
                    let mut state = lock(&self.state);
                    state.generation += 1;
                    if failures > 0 {
                        tracing::info!(lane = self.index, node = %addr, failures, "redis lane reconnected");
                    } else {
                        tracing::debug!(lane = self.index, node = %addr, "redis lane replaced");
                    }
                    state.current = Some(Current {
                        generation: state.generation,
                        conn,
                        addr,
                    });
                    state.replacing = false;
                    state.attempting = false;
                    state.last_error = None;
                    drop(state);
                    self.attempted.notify_waiters();
                    return;
                }
                Err(err) => {
                    if failures == 0 {
                        tracing::warn!(lane = self.index, error = %err, retry_in = ?backoff, "redis lane replacement failed; retrying");
                    } else {
                        tracing::debug!(lane = self.index, error = %err, retry_in = ?backoff, "redis lane replacement failed; retrying");
                    }
                    let mut state = lock(&self.state);
                    state.attempting = false;
                    state.last_error = Some(err.to_string());
                    state.failed_at = Some(Instant::now());
                    drop(state);
                    self.attempted.notify_waiters();
                }
            }
            failures += 1;
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.kick.notified() => {}
                _ = shutdown.changed() => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            lock(&self.state).attempting = true;
        }
    }
}
