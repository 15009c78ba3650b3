//! The Redis lock store: lockd's operations as Lua scripts, run over a few
//! multiplexed connections that pipeline concurrent requests.

use std::time::Duration;

use lockd_core::{
    AcquireOutcome, AcquireSpec, Caller, Effects, Lease, LeaveOutcome, LockError, LockId, LockMode,
    Outcome, QueueView, StatsDelta, SyncOutcome, WaiterState,
};
use redis::aio::ConnectionManager;
use redis::{Script, ScriptInvocation, Value};
use tokio::sync::{mpsc, oneshot};

use crate::conn::{Connector, Lanes};
use crate::error::StoreError;
use crate::keys::{Namespace, ResourceKeys};
use crate::notify::{Notice, Notifier};
use crate::reply::{self, ScriptReply, array, int, text};

/// How to reach Redis and name keys there.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// Prefix of every key, so that deployments can share one Redis.
    pub key_prefix: String,
    /// Multiplexed connections for lock operations.
    pub connections: usize,
    /// Bound on every Redis call; past it the outcome is unknown and the call fails.
    pub timeout: Duration,
    /// Keep the per-client lease index that ListHeld reads.
    pub list_held_index: bool,
}

/// Every script, loaded once and run by SHA.
struct Scripts {
    acquire: Script,
    sync: Script,
    leave: Script,
    release: Script,
    renew: Script,
    get: Script,
    queue: Script,
    held: Script,
}

impl Scripts {
    fn new() -> Scripts {
        let common = include_str!("../lua/common.lua");
        let with_common = |op: &str| Script::new(&format!("{common}\n{op}"));
        Scripts {
            acquire: with_common(include_str!("../lua/acquire.lua")),
            sync: with_common(include_str!("../lua/sync.lua")),
            leave: with_common(include_str!("../lua/leave.lua")),
            release: with_common(include_str!("../lua/release.lua")),
            renew: with_common(include_str!("../lua/renew.lua")),
            get: Script::new(include_str!("../lua/get.lua")),
            queue: Script::new(include_str!("../lua/queue.lua")),
            held: Script::new(include_str!("../lua/held.lua")),
        }
    }
}

/// A change to a client's lease index, written behind the lock operations.
enum IndexOp {
    Put {
        key: String,
        lock_id: String,
        expires_ms: u64,
    },
    Remove {
        key: String,
        lock_id: String,
    },
    /// Answered once every earlier change is written.
    Flush(oneshot::Sender<()>),
}

/// Statistics counters as stored: field name and value.
type Counters = Vec<(String, i64)>;

/// Lock state in Redis.
pub struct RedisStore {
    lanes: Lanes,
    scripts: Scripts,
    ns: Namespace,
    timeout: Duration,
    /// The lease index writer; `None` when the index is off.
    index: Option<mpsc::UnboundedSender<IndexOp>>,
    connector: Connector,
}

impl RedisStore {
    /// Connects, failing if Redis cannot be reached within the timeout.
    pub async fn connect(options: &RedisOptions) -> Result<RedisStore, StoreError> {
        let connector = Connector::new(&options.url, options.timeout)?;
        let lanes = connector.lanes(options.connections).await?;
        let index = options.list_held_index.then(|| {
            let (index, index_rx) = mpsc::unbounded_channel();
            tokio::spawn(write_index(lanes.conn(), index_rx, options.timeout));
            index
        });
        Ok(RedisStore {
            lanes,
            scripts: Scripts::new(),
            ns: Namespace::new(&options.key_prefix, connector.db()),
            timeout: options.timeout,
            index,
            connector,
        })
    }

    /// Opens the connection that receives keyspace notifications.
    pub async fn notifier(
        &self,
        notices: mpsc::UnboundedSender<Notice>,
    ) -> Result<Notifier, StoreError> {
        Notifier::connect(&self.connector, self.ns.clone(), notices).await
    }

    fn conn(&self) -> ConnectionManager {
        self.lanes.conn()
    }

    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        self.lanes.bounded(call).await
    }

    async fn invoke(&self, invocation: &ScriptInvocation<'_>) -> Result<Value, StoreError> {
        let mut conn = self.conn();
        self.bounded(invocation.invoke_async(&mut conn)).await
    }

    /// Runs a resource script and parses the common reply.
    async fn call(
        &self,
        script: &Script,
        resource: &str,
        args: impl FnOnce(&mut ScriptInvocation<'_>),
    ) -> Result<ScriptReply, StoreError> {
        let keys = self.ns.resource(resource);
        let mut invocation = script.prepare_invoke();
        for key in keys.all() {
            invocation.key(key);
        }
        args(&mut invocation);
        let value = self.invoke(&invocation).await?;
        let reply = reply::script_reply(value, resource)?;
        for lease in &reply.granted {
            self.index_put(lease);
        }
        Ok(reply)
    }

    fn index_put(&self, lease: &Lease) {
        self.index_write(IndexOp::Put {
            key: self.ns.client_index(&lease.client_id),
            lock_id: lease.lock_id.clone(),
            expires_ms: lease.expires_at_ms,
        });
    }

    fn index_write(&self, op: IndexOp) {
        if let Some(index) = &self.index {
            // The writer lives as long as the store; a closed channel means shutdown.
            let _ = index.send(op);
        }
    }

    /// Grants at once, queues, or reports busy.
    pub async fn acquire(
        &self,
        spec: &AcquireSpec,
        secret: &str,
        caller: &Caller<'_>,
        max_queue: u64,
    ) -> Outcome<AcquireOutcome> {
        let reply = self
            .call(&self.scripts.acquire, &spec.resource, |inv| {
                inv.arg(secret)
                    .arg(spec.mode.code())
                    .arg(spec.ttl_ms)
                    .arg(spec.max_renewals)
                    .arg(&spec.client_id)
                    .arg(spec.wait_ms)
                    .arg(caller.daemon_id)
                    .arg(caller.liveness_ms)
                    .arg(max_queue);
            })
            .await;
        let reply = match reply {
            Ok(reply) => reply,
            Err(err) => return (Err(err.into()), Effects::default()),
        };
        let result = match reply.status.as_str() {
            "granted" => text(&reply.payload)
                .and_then(|record| reply::holder(&record, secret, &spec.resource))
                .map(AcquireOutcome::Granted)
                .map_err(LockError::from),
            "busy" => Ok(AcquireOutcome::Busy),
            "queued" => queued(reply.payload).map_err(LockError::from),
            "full" => Err(LockError::LimitReached(format!(
                "resource has {} waiters, the limit (--max-queue)",
                int(&reply.payload).unwrap_or_default()
            ))),
            other => Err(unexpected(other)),
        };
        (result, reply.effects)
    }

    /// Keeps this daemon's waiters alive and reports where each stands.
    pub async fn sync(
        &self,
        resource: &str,
        secrets: &[String],
        caller: &Caller<'_>,
    ) -> Outcome<SyncOutcome> {
        let reply = self
            .call(&self.scripts.sync, resource, |inv| {
                inv.arg(caller.daemon_id).arg(caller.liveness_ms);
                for secret in secrets {
                    inv.arg(secret);
                }
            })
            .await;
        let reply = match reply {
            Ok(reply) => reply,
            Err(err) => return (Err(err.into()), Effects::default()),
        };
        let states = array(reply.payload).and_then(|ranks| {
            ranks
                .iter()
                .map(|rank| {
                    Ok(match int(rank)? {
                        -1 => WaiterState::Granted,
                        r if r >= 0 => WaiterState::Queued(r as u64),
                        _ => WaiterState::Gone,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()
        });
        let result = states
            .map(|states| SyncOutcome {
                states,
                queue_length: reply.queue_length,
            })
            .map_err(LockError::from);
        (result, reply.effects)
    }

    /// Takes a waiter out of line, releasing its lease if it was granted but not handed over.
    pub async fn leave(
        &self,
        resource: &str,
        secret: &str,
        caller: &Caller<'_>,
    ) -> Outcome<LeaveOutcome> {
        let reply = self
            .call(&self.scripts.leave, resource, |inv| {
                inv.arg(secret).arg(caller.daemon_id);
            })
            .await;
        match reply {
            Ok(reply) => {
                let result = match reply.status.as_str() {
                    "left" => Ok(LeaveOutcome::Left),
                    "released" => Ok(LeaveOutcome::GrantReleased),
                    "none" => Ok(LeaveOutcome::NotFound),
                    other => Err(unexpected(other)),
                };
                (result, reply.effects)
            }
            Err(err) => (Err(err.into()), Effects::default()),
        }
    }

    /// Ends a lease held by `client_id`.
    pub async fn release(
        &self,
        lock: &LockId,
        client_id: &str,
        caller: &Caller<'_>,
    ) -> Outcome<Lease> {
        let reply = self
            .call(&self.scripts.release, &lock.resource, |inv| {
                inv.arg(&lock.secret).arg(client_id).arg(caller.daemon_id);
            })
            .await;
        let (result, effects) = self.lease_reply(reply, lock);
        if let Ok(lease) = &result {
            self.index_write(IndexOp::Remove {
                key: self.ns.client_index(&lease.client_id),
                lock_id: lease.lock_id.clone(),
            });
        }
        (result, effects)
    }

    /// Extends a lease held by `client_id`.
    pub async fn renew(
        &self,
        lock: &LockId,
        client_id: &str,
        ttl_ms: Option<u64>,
        caller: &Caller<'_>,
    ) -> Outcome<Lease> {
        let reply = self
            .call(&self.scripts.renew, &lock.resource, |inv| {
                inv.arg(&lock.secret)
                    .arg(client_id)
                    .arg(ttl_ms.unwrap_or(0))
                    .arg(caller.daemon_id);
            })
            .await;
        let (result, effects) = self.lease_reply(reply, lock);
        if let Ok(lease) = &result {
            self.index_put(lease);
        }
        (result, effects)
    }

    fn lease_reply(&self, reply: Result<ScriptReply, StoreError>, lock: &LockId) -> Outcome<Lease> {
        let reply = match reply {
            Ok(reply) => reply,
            Err(err) => return (Err(err.into()), Effects::default()),
        };
        let result = match reply.status.as_str() {
            "ok" => text(&reply.payload)
                .and_then(|record| reply::holder(&record, &lock.secret, &lock.resource))
                .map_err(LockError::from),
            "not_found" => Err(LockError::NotFound),
            "not_owner" => Err(LockError::NotOwner),
            "limit" => Err(LockError::RenewalLimit {
                max: int(&reply.payload).unwrap_or_default() as u32,
            }),
            other => Err(unexpected(other)),
        };
        (result, reply.effects)
    }

    /// A live lease by its id.
    pub async fn get(&self, lock: &LockId) -> Result<Lease, LockError> {
        let keys = self.ns.resource(&lock.resource);
        let mut invocation = self.scripts.get.prepare_invoke();
        invocation.key(&keys.holders).arg(&lock.secret);
        match self.invoke(&invocation).await? {
            Value::Nil | Value::Boolean(false) => Err(LockError::NotFound),
            record => Ok(reply::holder(
                &text(&record)?,
                &lock.secret,
                &lock.resource,
            )?),
        }
    }

    /// The live holders (secrets hidden) and waiters of a resource.
    pub async fn queue(&self, resource: &str) -> Result<QueueView, LockError> {
        let ResourceKeys {
            holders,
            queue,
            waiters,
            daemons,
            ..
        } = self.ns.resource(resource);
        let mut invocation = self.scripts.queue.prepare_invoke();
        invocation.key(holders).key(queue).key(waiters).key(daemons);
        let mut parts = array(self.invoke(&invocation).await?)?.into_iter().skip(1);
        let holder_records = array(parts.next().unwrap_or_default())?;
        let waiter_records = array(parts.next().unwrap_or_default())?;
        let mut view = QueueView::default();
        for record in &holder_records {
            view.holders
                .push(reply::holder(&text(record)?, "", resource)?);
        }
        view.holders.sort_by_key(|l| l.fencing_token);
        for (i, record) in waiter_records.iter().enumerate() {
            view.waiters.push(reply::waiter(&text(record)?, i as u64)?);
        }
        Ok(view)
    }

    /// Every live lease of one client, checked against each resource.
    pub async fn held_by(&self, client_id: &str) -> Result<Vec<Lease>, LockError> {
        let Some(index) = &self.index else {
            return Err(LockError::Disabled(
                "ListHeld is off: this deployment runs with --list-held-index=false",
            ));
        };
        let (flushed, done) = oneshot::channel();
        if index.send(IndexOp::Flush(flushed)).is_ok() {
            let _ = tokio::time::timeout(self.timeout, done).await;
        }
        let mut invocation = self.scripts.held.prepare_invoke();
        invocation.key(self.ns.client_index(client_id));
        let ids = array(self.invoke(&invocation).await?)?;
        let lookups = ids.iter().filter_map(|id| {
            let lock = LockId::parse(&text(id).ok()?)?;
            Some(async move { self.get(&lock).await })
        });
        let mut leases = Vec::new();
        for result in futures::future::join_all(lookups).await {
            match result {
                Ok(lease) if lease.client_id == client_id => leases.push(lease),
                Ok(_) | Err(LockError::NotFound) => {}
                Err(err) => return Err(err),
            }
        }
        leases
            .sort_by(|a, b| (a.acquired_at_ms, &a.resource).cmp(&(b.acquired_at_ms, &b.resource)));
        Ok(leases)
    }

    /// Every lane answers PING within the timeout.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.lanes.ping_all().await
    }

    /// Adds counter changes to the deployment-wide statistics.
    pub async fn add_stats(&self, delta: &StatsDelta) -> Result<(), StoreError> {
        let key = self.ns.stats();
        let top = self.ns.stats_top();
        let mut pipe = redis::pipe();
        for mode in LockMode::ALL {
            let i = mode.index();
            if delta.grants_by_mode[i] != 0 {
                pipe.hincr(&key, format!("g:{mode}"), delta.grants_by_mode[i])
                    .ignore();
            }
            if delta.active_by_mode[i] != 0 {
                pipe.hincr(&key, format!("a:{mode}"), delta.active_by_mode[i])
                    .ignore();
            }
        }
        for (field, n) in [
            ("released", delta.released as i64),
            ("expired", delta.expired as i64),
            ("abandoned", delta.abandoned as i64),
            ("hold_ms", delta.hold_ms_sum as i64),
            ("holds", delta.holds_ended as i64),
            ("waiting", delta.waiting),
        ] {
            if n != 0 {
                pipe.hincr(&key, field, n).ignore();
            }
        }
        if !delta.grants_by_resource.is_empty() {
            for (resource, n) in &delta.grants_by_resource {
                pipe.zincr(&top, resource, *n).ignore();
            }
            // Keep the candidates for the top list bounded.
            pipe.cmd("ZREMRANGEBYRANK")
                .arg(&top)
                .arg(0)
                .arg(-1001)
                .ignore();
        }
        let mut conn = self.conn();
        self.bounded(pipe.query_async::<()>(&mut conn)).await
    }

    /// The deployment-wide totals.
    pub async fn read_stats(&self) -> Result<StatsDelta, StoreError> {
        let mut conn = self.conn();
        let (fields, top): (Counters, Vec<(String, f64)>) = self
            .bounded(
                redis::pipe()
                    .hgetall(self.ns.stats())
                    .zrevrange_withscores(self.ns.stats_top(), 0, 99)
                    .query_async(&mut conn),
            )
            .await?;
        let mut totals = StatsDelta::default();
        for (field, n) in fields {
            let unsigned = n.max(0) as u64;
            match field.split_once(':') {
                Some(("g", mode)) => {
                    if let Ok(m) = mode.parse::<LockMode>() {
                        totals.grants_by_mode[m.index()] = unsigned;
                    }
                }
                Some(("a", mode)) => {
                    if let Ok(m) = mode.parse::<LockMode>() {
                        totals.active_by_mode[m.index()] = n;
                    }
                }
                _ => match field.as_str() {
                    "released" => totals.released = unsigned,
                    "expired" => totals.expired = unsigned,
                    "abandoned" => totals.abandoned = unsigned,
                    "hold_ms" => totals.hold_ms_sum = unsigned,
                    "holds" => totals.holds_ended = unsigned,
                    "waiting" => totals.waiting = n,
                    _ => {}
                },
            }
        }
        totals.grants_by_resource = top.into_iter().map(|(r, n)| (r, n as u64)).collect();
        Ok(totals)
    }
}

fn queued(payload: Value) -> Result<AcquireOutcome, StoreError> {
    let parts = array(payload)?;
    match parts.as_slice() {
        [position, length] => Ok(AcquireOutcome::Queued {
            position: int(position)?.max(0) as u64,
            queue_length: int(length)?.max(0) as u64,
        }),
        _ => Err(StoreError::Reply("bad queued reply".to_owned())),
    }
}

fn unexpected(status: &str) -> LockError {
    LockError::Internal(format!("unexpected script status {status:?}"))
}

/// How long the index writer gathers changes before writing them.
const INDEX_BATCH_WINDOW: Duration = Duration::from_millis(2);
/// Most changes written in one pipeline.
const INDEX_BATCH_MAX: usize = 4096;

/// Writes lease-index changes in batches. Gathering for a couple of
/// milliseconds turns one Redis round trip per lock operation into one per
/// batch, and a lease released within the window is never added at all. The
/// index is a hint that ListHeld checks against the leases, so a failed write
/// only means a lease may be missing from that list until it is renewed.
async fn write_index(
    mut conn: ConnectionManager,
    mut ops: mpsc::UnboundedReceiver<IndexOp>,
    timeout: Duration,
) {
    let mut batch = Vec::new();
    while ops.recv_many(&mut batch, INDEX_BATCH_MAX).await > 0 {
        let window = tokio::time::Instant::now() + INDEX_BATCH_WINDOW;
        while batch.len() < INDEX_BATCH_MAX
            && !batch.iter().any(|op| matches!(op, IndexOp::Flush(_)))
        {
            let room = INDEX_BATCH_MAX - batch.len();
            match tokio::time::timeout_at(window, ops.recv_many(&mut batch, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        // The last change of each lease wins: a later score replaces an
        // earlier one, and a removal replaces any add.
        let mut last: std::collections::HashMap<(String, String), Option<u64>> =
            std::collections::HashMap::new();
        let mut waiting = Vec::new();
        for op in batch.drain(..) {
            match op {
                IndexOp::Put {
                    key,
                    lock_id,
                    expires_ms,
                } => {
                    last.insert((key, lock_id), Some(expires_ms));
                }
                IndexOp::Remove { key, lock_id } => {
                    last.insert((key, lock_id), None);
                }
                IndexOp::Flush(done) => waiting.push(done),
            }
        }
        let mut pipe = redis::pipe();
        // One expiry per client key, the latest of its leases.
        let mut expiries: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
        for ((key, lock_id), expires_ms) in &last {
            match expires_ms {
                Some(expires_ms) => {
                    pipe.zadd(key, lock_id, expires_ms).ignore();
                    let latest = expiries.entry(key).or_default();
                    *latest = (*latest).max(*expires_ms);
                }
                None => {
                    pipe.zrem(key, lock_id).ignore();
                }
            }
        }
        for (key, expires_ms) in &expiries {
            // NX gives a new key an expiry; GT only ever extends it.
            pipe.cmd("PEXPIREAT")
                .arg(key)
                .arg(expires_ms)
                .arg("NX")
                .ignore();
            pipe.cmd("PEXPIREAT")
                .arg(key)
                .arg(expires_ms)
                .arg("GT")
                .ignore();
        }
        if pipe.cmd_iter().next().is_some() {
            match tokio::time::timeout(timeout, pipe.query_async::<()>(&mut conn)).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::warn!(error = %err, "lease index write failed"),
                Err(_) => tracing::warn!("lease index write timed out"),
            }
        }
        for done in waiting {
            let _ = done.send(());
        }
    }
}
