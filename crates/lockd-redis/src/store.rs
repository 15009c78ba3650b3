//! [`RedisStore`]: lockd's lock operations as Lua scripts over a few
//! multiplexed connections, the reaper that sweeps resources nobody touches,
//! and the read-only views (GetLock, GetQueue).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::conn::Lane;
use futures::StreamExt;
use lockd_core::{
    AcquireOutcome, AcquireSpec, Caller, Effects, Lease, LeaveOutcome, LockError, LockId, Outcome,
    QueueView, StatsDelta, SyncOutcome, WaiterState,
};
use redis::{ScriptInvocation, Value};
use tokio::sync::mpsc;

use crate::conn::{Connector, Lanes};
use crate::error::StoreError;
use crate::index::LeaseIndex;
use crate::keys::{BUCKETS, Namespace};
use crate::notify::{Notice, Notifier};
use crate::reply::{self, ScriptReply, array, int, text};
use crate::scripts::{Named, Scripts};

/// How to reach Redis and name keys there.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// PEM certificate authorities a `rediss` server must chain to, instead
    /// of the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// Prefix of every key, so that deployments can share one Redis.
    pub key_prefix: String,
    /// Multiplexed connections for lock operations.
    pub connections: usize,
    /// Bound on every Redis call; past it the outcome is unknown and the call fails.
    pub timeout: Duration,
    /// Keep the per-client lease index that ListHeld reads.
    pub list_held_index: bool,
    /// The longest lease a renewal may set: the lease index's bound for a
    /// renewal that keeps the lease's own TTL.
    pub max_ttl: Duration,
    /// How long a bucket grants nothing after its Redis server changed (a
    /// failover or a restart that may have lost writes).
    pub failover_quarantine: Duration,
    /// Replicas that must confirm a grant or renewal (`WAIT`) before it is
    /// answered; 0 answers once the primary has it.
    pub min_replicas_ack: usize,
    /// How long to wait for those confirmations.
    pub replicas_timeout: Duration,
}

impl RedisOptions {
    /// The daemon's defaults for `url` and `key_prefix`: four lanes, a 1 s
    /// bound, the lease index on, leases of at most 5 minutes, a quarantine
    /// as long, and no replica confirmations.
    pub fn new(url: impl Into<String>, key_prefix: impl Into<String>) -> RedisOptions {
        let max_ttl = Duration::from_secs(300);
        RedisOptions {
            url: url.into(),
            ca_file: None,
            key_prefix: key_prefix.into(),
            connections: 4,
            timeout: Duration::from_secs(1),
            list_held_index: true,
            max_ttl,
            failover_quarantine: max_ttl,
            min_replicas_ack: 0,
            replicas_timeout: Duration::from_secs(1),
        }
    }
}

/// Told of every script call's round trip: the script's name, how long it
/// took, and on failure what kind of failure ([`error_kind`]). It runs on the
/// calling task, so it must be quick (a metric update); it lets the daemon
/// measure Redis without this crate knowing its metrics.
pub type Observer = Arc<dyn Fn(&'static str, Duration, Option<&'static str>) + Send + Sync>;

/// A bounded name for each way a call can fail, fit for a metric label:
/// `timeout`, `connection` (refused, dropped, I/O), `script` (a failure of
/// lockd's script itself), `reply` (a reply lockd cannot read), else `server`
/// (Redis refused: loading, read-only, out of memory, no auth).
pub fn error_kind(err: &StoreError) -> &'static str {
    match err {
        // The connection's own response timeout fires as an I/O error.
        StoreError::Timeout(_) => "timeout",
        StoreError::Redis(err) if err.is_timeout() => "timeout",
        StoreError::Script { .. } => "script",
        StoreError::Reply(_) => "reply",
        StoreError::Redis(err)
            if err.is_io_error() || err.is_connection_dropped() || err.is_connection_refusal() =>
        {
            "connection"
        }
        _ => "server",
    }
}

/// Most waiters GetQueue lists, and most queue entries it looks at for them.
const QUEUE_VIEW_LIMIT: usize = 1_000;
const QUEUE_VIEW_SCAN: usize = 4 * QUEUE_VIEW_LIMIT;
/// Most resources of one bucket one reaper pass sweeps.
const REAP_PER_BUCKET: usize = 64;
/// Most sweeps the reaper runs at once.
const REAP_CONCURRENCY: usize = 16;
/// How long a daemon keeps the reaper's turn without renewing it; a dead
/// reaper's turn passes to another daemon after this.
const REAPER_CLAIM_MS: u64 = 3_000;
/// Connections replica confirmations wait on.
const CONFIRM_CONNECTIONS: usize = 2;

/// Replicas that must confirm a grant before it is answered, and the
/// connections confirmations wait on: a WAIT blocks its connection, so it
/// must not hold up the lanes (their calls, the health ping) while replicas lag.
struct Confirm {
    replicas: usize,
    within: Duration,
    lanes: Lanes,
    /// confirm.lua with the server check it needs. A pipeline does not load
    /// scripts: it runs by SHA, and by its text on a server that lacks it.
    script: redis::Script,
    source: String,
}

/// Lock state in Redis.
pub struct RedisStore {
    lanes: Lanes,
    scripts: Scripts,
    ns: Namespace,
    /// `None` when the index is off.
    index: Option<LeaseIndex>,
    connector: Connector,
    /// Set once, after connecting: the daemon builds its metrics later, and
    /// the store is shared (behind `Arc`) by then.
    observer: OnceLock<Observer>,
    /// Where this store's Redis is, without its password: for logs.
    address: String,
    /// Every bucket's server was recorded by this store's first bucket pass:
    /// from then on a bucket without a record has lost its data.
    known: Vec<AtomicBool>,
    confirm: Option<Confirm>,
    /// The run_ids of the primaries the lanes reach, as last read.
    servers: std::sync::Mutex<Vec<String>>,
}

impl RedisStore {
    /// Connects, failing if Redis cannot be reached within the timeout.
    pub async fn connect(options: &RedisOptions) -> Result<RedisStore, StoreError> {
        let mut connector = Connector::new(&options.url, options.timeout)?;
        if let Some(path) = &options.ca_file {
            let pem = std::fs::read(path).map_err(|e| StoreError::Unusable {
                url: crate::conn::redacted_url(&options.url),
                reason: format!("cannot read --redis-ca {}: {e}", path.display()),
            })?;
            connector = connector.trusting(&pem)?;
        }
        let lanes = connector.lanes(options.connections).await?;
        let ns = Namespace::new(&options.key_prefix, connector.db());
        check_layout(&ns, &lanes).await?;
        check_eviction(&lanes).await?;
        let confirm = match options.min_replicas_ack {
            0 => None,
            replicas => Some(Confirm {
                replicas,
                within: options.replicas_timeout,
                lanes: connector.lanes(CONFIRM_CONNECTIONS).await?,
                script: redis::Script::new(&confirm_source()),
                source: confirm_source(),
            }),
        };
        let store = RedisStore {
            lanes,
            scripts: Scripts::new(options.failover_quarantine),
            index: options
                .list_held_index
                .then(|| LeaseIndex::new(ns.clone(), options.max_ttl, options.timeout)),
            ns,
            connector,
            observer: OnceLock::new(),
            address: crate::conn::redacted_url(&options.url),
            known: (0..BUCKETS).map(|_| AtomicBool::new(false)).collect(),
            confirm,
            servers: std::sync::Mutex::new(Vec::new()),
        };
        store.servers_changed().await?;
        store.check_buckets().await?;
        Ok(store)
    }

    /// Reads the run_id and replication id of every primary the lanes reach
    /// (one, or each Cluster primary) and says whether the set changed since
    /// last read.
    async fn servers_changed(&self) -> Result<bool, StoreError> {
        let info: Value = self
            .bounded(
                redis::cmd("INFO")
                    .arg("server")
                    .arg("replication")
                    .query_async(&mut self.conn()),
            )
            .await?;
        let mut run_ids = Vec::new();
        collect_run_ids(&info, &mut run_ids);
        run_ids.sort();
        let mut seen = self
            .servers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let changed = *seen != run_ids;
        *seen = run_ids;
        Ok(changed)
    }

    /// Runs the bucket pass on every bucket: records each bucket's server,
    /// and starts the quarantine of buckets whose server changed since it was
    /// recorded. Returns how many buckets it found changed. The lock scripts
    /// make the same check themselves; this pass only makes a failover's
    /// quarantine start when it is noticed rather than when a bucket is next used.
    ///
    /// Buckets are passed one call each, so that a Cluster shard that does
    /// not answer fails only its own buckets: they stay unrecorded, and the
    /// pass fails only when every bucket failed; after a partial failure the
    /// reaper's next pass runs it again.
    pub async fn check_buckets(&self) -> Result<usize, StoreError> {
        let started = Instant::now();
        let passes = (0..BUCKETS).map(|bucket| async move {
            let stats = self.ns.stats(bucket);
            let known = self.known[usize::from(bucket)].load(Ordering::Relaxed);
            let call = self.scripts.bucket_call(&stats, known);
            let result: Result<(i64, i64), StoreError> =
                match self.bounded(call.invoke_async(&mut self.conn())).await {
                    Err(StoreError::Redis(err)) => Err(StoreError::from_script("bucket", err)),
                    other => other,
                };
            (bucket, result)
        });
        let results = futures::future::join_all(passes).await;
        let (mut changed, mut longest, mut failed) = (0, 0, None);
        for (bucket, result) in results {
            match result {
                Ok((found, left)) => {
                    self.known[usize::from(bucket)].store(true, Ordering::Relaxed);
                    if found == 1 {
                        changed += 1;
                        longest = longest.max(left);
                    }
                }
                Err(err) => {
                    failed.get_or_insert((0, err)).0 += 1;
                }
            }
        }
        if let Some(observe) = self.observer.get() {
            let kind = failed.as_ref().map(|(_, err)| error_kind(err));
            observe("bucket", started.elapsed(), kind);
        }
        if changed > 0 {
            tracing::warn!(
                buckets = changed,
                quarantine_ms = longest,
                "the redis server changed since it last held lock state (a failover or a restart that may have lost writes): no new grants in those buckets until their quarantine ends"
            );
        }
        match failed {
            Some((count, err)) if usize::from(BUCKETS) == count => Err(err),
            Some((count, err)) => {
                tracing::warn!(buckets = count, error = %err, "the bucket pass failed on some buckets; the reaper runs it again");
                // Forget the servers read, so the reaper's next pass runs this again.
                self.servers
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clear();
                Ok(changed)
            }
            None => Ok(changed),
        }
    }

    /// Sets the [`Observer`] of script calls; only the first one set counts.
    pub fn set_observer(&self, observer: Observer) {
        let _ = self.observer.set(observer);
    }

    /// Opens the connection that receives keyspace notifications.
    pub async fn notifier(
        &self,
        notices: mpsc::UnboundedSender<Notice>,
    ) -> Result<Notifier, StoreError> {
        Notifier::connect(&self.connector, self.ns.clone(), notices).await
    }

    fn conn(&self) -> Lane {
        self.lanes.conn()
    }

    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        self.lanes.bounded(call).await
    }

    /// Runs one script on `conn`, telling a failure of the script itself
    /// from an outage.
    async fn run(
        &self,
        named: &Named,
        invocation: &ScriptInvocation<'_>,
        conn: &mut Lane,
    ) -> Result<Value, StoreError> {
        let started = Instant::now();
        let result = match self.bounded(invocation.invoke_async(conn)).await {
            Err(StoreError::Redis(err)) => Err(StoreError::from_script(named.name, err)),
            other => other,
        };
        if let Some(observe) = self.observer.get() {
            observe(
                named.name,
                started.elapsed(),
                result.as_ref().err().map(error_kind),
            );
        }
        result
    }

    /// Runs a resource script and parses the common reply.
    async fn call(
        &self,
        named: &Named,
        resource: &str,
        args: impl FnOnce(&mut ScriptInvocation<'_>),
    ) -> Result<ScriptReply, StoreError> {
        self.call_on(self.conn(), named, resource, args).await
    }

    async fn call_on(
        &self,
        mut conn: Lane,
        named: &Named,
        resource: &str,
        args: impl FnOnce(&mut ScriptInvocation<'_>),
    ) -> Result<ScriptReply, StoreError> {
        let keys = self.ns.resource(resource);
        let known = &self.known[usize::from(crate::keys::bucket(resource))];
        let mut invocation =
            self.scripts
                .resource_call(named, resource, &keys, known.load(Ordering::Relaxed));
        args(&mut invocation);
        let value = self.run(named, &invocation, &mut conn).await?;
        // The script recorded the bucket's server if it had no record: from
        // now on a missing one is lost data, also on a daemon whose bucket
        // pass failed for this bucket and that does not run the reaper.
        known.store(true, Ordering::Relaxed);
        let mut reply = reply::script_reply(value, resource).map_err(|err| {
            tracing::error!(script = named.name, error = %err, "unexpected script reply");
            err
        })?;
        let grants = matches!(
            (named.name, reply.status.as_str()),
            ("acquire", "granted") | ("renew", "ok")
        ) || !reply.effects.my_grants.is_empty();
        if grants && let Err(why) = self.confirmed(&keys.stats, &reply.server).await {
            let secrets = reply.effects.my_grants.drain(..).map(|(secret, _)| secret);
            reply.effects.unconfirmed_grants.extend(secrets);
            reply.unconfirmed = Some(why);
        }
        Ok(reply)
    }

    /// Waits until enough replicas have what `server` (the server a script
    /// just ran on) wrote up to now in the bucket whose statistics hash is
    /// `stats`: the grants of that script and those of other daemons it took
    /// over, which the replication stream carries before. `WAIT` counts the
    /// writes of the connection it runs on, so it goes with confirm.lua's
    /// write, checked to be on that same server, in one pipeline on one
    /// connection. `Err` says why not, for the client.
    async fn confirmed(&self, stats: &str, server: &str) -> Result<(), String> {
        let Some(confirm) = &self.confirm else {
            return Ok(());
        };
        let pipeline = |by_text: bool| {
            let mut pipe = redis::pipe();
            if by_text {
                pipe.cmd("EVAL").arg(&confirm.source);
            } else {
                pipe.cmd("EVALSHA").arg(confirm.script.get_hash());
            }
            pipe.arg(1).arg(stats).arg(server);
            pipe.cmd("WAIT")
                .arg(confirm.replicas)
                .arg(u64::try_from(confirm.within.as_millis()).unwrap_or(u64::MAX));
            pipe
        };
        let mut conn = confirm.lanes.conn();
        let bound = confirm.within + self.connector.timeout();
        let started = Instant::now();
        let answer = tokio::time::timeout(bound, async {
            let replies = conn
                .one_node_pipeline(stats, &pipeline(false), bound)
                .await?;
            match replies.first() {
                Some(Value::ServerError(err))
                    if err.kind() == Some(redis::ServerErrorKind::NoScript) =>
                {
                    conn.one_node_pipeline(stats, &pipeline(true), bound).await
                }
                _ => Ok(replies),
            }
        })
        .await;
        if let Some(observe) = self.observer.get() {
            let failed = match &answer {
                Ok(Ok(_)) => None,
                Ok(Err(_)) => Some("connection"),
                Err(_) => Some("timeout"),
            };
            observe("confirm", started.elapsed(), failed);
        }
        let replies = match answer {
            Ok(Ok(replies)) => replies,
            Ok(Err(err)) => {
                return Err(format!(
                    "redis replicas could not confirm the write (--min-replicas-ack): {err}"
                ));
            }
            Err(_) => {
                return Err(format!(
                    "redis replicas did not confirm the write within {bound:?} (--min-replicas-ack)"
                ));
            }
        };
        match replies.as_slice() {
            [Value::Int(1), Value::Int(acked)] if *acked >= confirm.replicas as i64 => Ok(()),
            [Value::Int(1), Value::Int(acked)] => Err(format!(
                "only {acked} of the {} replicas --min-replicas-ack requires confirmed the write within {:?}; \
                 a redis failover could lose it",
                confirm.replicas, confirm.within
            )),
            [Value::Int(0), _] => Err(
                "the redis server that made the write is no longer the one serving its resource \
                 (a failover); the write may be lost"
                    .to_owned(),
            ),
            other => Err(format!(
                "unexpected answer to a replica confirmation: {other:?}"
            )),
        }
    }

    /// Grants at once, queues, or reports busy.
    ///
    /// With the lease index on, the request's lock id is noted in its client's
    /// index on the same connection just ahead of the script, so that a grant
    /// is listed by the time it is answered, at no extra round trip.
    pub async fn acquire(
        &self,
        spec: &AcquireSpec,
        secret: &str,
        caller: &Caller<'_>,
        max_queue: u64,
    ) -> Outcome<AcquireOutcome> {
        let lock_id = LockId::new(secret, spec.resource.as_str()).encode();
        let conn = self.conn();
        let script = self.call_on(conn.clone(), &self.scripts.acquire, &spec.resource, |inv| {
            inv.arg(secret)
                .arg(spec.mode.code())
                .arg(spec.ttl_ms)
                .arg(spec.max_renewals)
                .arg(&spec.client_id)
                .arg(spec.wait_ms)
                .arg(caller.daemon_id)
                .arg(caller.liveness_ms)
                .arg(max_queue);
        });
        let (indexed, reply) = match &self.index {
            Some(index) => {
                let bound = spec.ttl_ms
                    + if spec.wait_ms > 0 {
                        spec.wait_ms + lockd_core::engine::WAIT_GRACE_MS
                    } else {
                        0
                    };
                let note = index.put(self, conn, &spec.client_id, &lock_id, bound);
                tokio::join!(note, script)
            }
            None => (Ok(()), script.await),
        };
        let reply = match reply {
            Ok(reply) => reply,
            Err(err) => return (Err(err.into()), Effects::default()),
        };
        let result = match reply.status.as_str() {
            "granted" if reply.unconfirmed.is_some() => Err(LockError::Unavailable(
                reply.unconfirmed.clone().unwrap_or_default(),
            )),
            "quarantined" => {
                self.forget_candidate(&spec.client_id, &lock_id);
                Err(quarantined(&reply.payload))
            }
            "granted" => text(&reply.payload)
                .and_then(|record| reply::holder(&record, secret, &spec.resource))
                .map(AcquireOutcome::Granted)
                .map_err(LockError::from),
            "busy" | "cancelled" => {
                self.forget_candidate(&spec.client_id, &lock_id);
                Ok(AcquireOutcome::Busy)
            }
            "queued" => queued(reply.payload).map_err(LockError::from),
            "full" => {
                self.forget_candidate(&spec.client_id, &lock_id);
                Err(LockError::LimitReached(format!(
                    "resource has {} waiters, the limit (--max-queue)",
                    int(&reply.payload).unwrap_or_default()
                )))
            }
            other => Err(unexpected("acquire", other)),
        };
        // A lease the index could not note must not reach the client: ListHeld
        // would miss it. Failing here makes the caller leave, which releases it.
        let result = match (result, indexed) {
            (Ok(_), Err(err)) => {
                tracing::warn!(resource = %spec.resource, error = %err, "noting a lease in the lease index failed");
                Err(LockError::from(err))
            }
            (result, _) => result,
        };
        (result, reply.effects)
    }

    /// Drops a lock id from its client's index in the background: it was
    /// never granted, and ListHeld checks every candidate anyway.
    fn forget_candidate(&self, client_id: &str, lock_id: &str) {
        if let Some(index) = &self.index {
            index.remove_later(self.conn(), client_id, lock_id, self.connector.timeout());
        }
    }

    /// Keeps this daemon's waiters alive and reports where each stands.
    pub async fn sync(
        &self,
        resource: &str,
        secrets: &[String],
        caller: &Caller<'_>,
    ) -> Outcome<SyncOutcome> {
        let reply = self
            .call_on(self.conn(), &self.scripts.sync, resource, |inv| {
                inv.arg(caller.daemon_id).arg(caller.liveness_ms);
                for secret in secrets {
                    inv.arg(secret);
                }
            })
            .await;
        let mut reply = match reply {
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
        // A waiter found granted is handed a lease read afterwards: it must
        // be confirmed like one this reply carries.
        let found_granted = states
            .as_ref()
            .is_ok_and(|states| states.contains(&WaiterState::Granted));
        if found_granted && reply.unconfirmed.is_none() && reply.effects.my_grants.is_empty() {
            let keys = self.ns.resource(resource);
            reply.unconfirmed = self.confirmed(&keys.stats, &reply.server).await.err();
        }
        // Waiters found granted whose grants are unconfirmed leave, which
        // releases the grants.
        if reply.unconfirmed.is_some()
            && let Ok(states) = &states
        {
            for (secret, state) in secrets.iter().zip(states) {
                if *state == WaiterState::Granted {
                    reply.effects.unconfirmed_grants.push(secret.clone());
                }
            }
        }
        let result = match reply.unconfirmed {
            Some(why) if found_granted => Err(LockError::Unavailable(why)),
            _ => states
                .map(|states| SyncOutcome {
                    states,
                    queue_length: reply.queue_length,
                })
                .map_err(LockError::from),
        };
        (result, reply.effects)
    }

    /// Takes a waiter out of line, releasing its lease if it was granted but
    /// not handed over. With `outcome_unknown` (the acquire's reply never
    /// came), a request not found yet is cancelled ahead of its acquire.
    pub async fn leave(
        &self,
        resource: &str,
        secret: &str,
        caller: &Caller<'_>,
        outcome_unknown: bool,
    ) -> Outcome<LeaveOutcome> {
        let reply = self
            .call(&self.scripts.leave, resource, |inv| {
                inv.arg(secret)
                    .arg(caller.daemon_id)
                    .arg(u8::from(outcome_unknown));
            })
            .await;
        match reply {
            Ok(reply) => {
                let result = match reply.status.as_str() {
                    "left" => Ok(LeaveOutcome::Left),
                    "released" => Ok(LeaveOutcome::GrantReleased),
                    "none" => Ok(LeaveOutcome::NotFound),
                    other => Err(unexpected("leave", other)),
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
        let (result, effects) = lease_reply("release", reply, lock);
        if let Ok(lease) = &result {
            self.forget_candidate(&lease.client_id, &lease.lock_id);
        }
        (result, effects)
    }

    /// Extends a lease held by `client_id`; its new end is noted in the lease
    /// index on the same connection just ahead of the script.
    pub async fn renew(
        &self,
        lock: &LockId,
        client_id: &str,
        ttl_ms: Option<u64>,
        caller: &Caller<'_>,
    ) -> Outcome<Lease> {
        let conn = self.conn();
        let script = self.call_on(conn.clone(), &self.scripts.renew, &lock.resource, |inv| {
            inv.arg(&lock.secret)
                .arg(client_id)
                .arg(ttl_ms.unwrap_or(0))
                .arg(caller.daemon_id);
        });
        let (indexed, reply) = match &self.index {
            Some(index) => {
                let bound = ttl_ms.unwrap_or_else(|| index.max_ttl_ms());
                let lock_id = lock.encode();
                let note = index.put(self, conn, client_id, &lock_id, bound);
                tokio::join!(note, script)
            }
            None => (Ok(()), script.await),
        };
        let (result, effects) = lease_reply("renew", reply, lock);
        let result = match (result, indexed) {
            (Ok(_), Err(err)) => Err(LockError::from(err)),
            (result, _) => result,
        };
        (result, effects)
    }

    /// A live lease by its id.
    pub async fn get(&self, lock: &LockId) -> Result<Lease, LockError> {
        let keys = self.ns.resource(&lock.resource);
        let named = &self.scripts.get;
        let mut invocation = named.script.prepare_invoke();
        invocation.key(&keys.holders).arg(&lock.secret);
        match self.run(named, &invocation, &mut self.conn()).await? {
            Value::Nil | Value::Boolean(false) => Err(LockError::NotFound),
            record => Ok(reply::holder(
                &text(&record)?,
                &lock.secret,
                &lock.resource,
            )?),
        }
    }

    /// The first live holders (secrets hidden, earliest to end first, at most
    /// 1000) and the first live waiters of a resource.
    pub async fn queue(&self, resource: &str) -> Result<QueueView, LockError> {
        let keys = self.ns.resource(resource);
        let named = &self.scripts.queue;
        let mut invocation = named.script.prepare_invoke();
        invocation
            .key(&keys.holders)
            .key(&keys.queue)
            .key(&keys.waiters)
            .key(&keys.daemons)
            .key(&keys.expiries)
            .arg(QUEUE_VIEW_LIMIT)
            .arg(QUEUE_VIEW_SCAN);
        let value = self.run(named, &invocation, &mut self.conn()).await?;
        let mut parts = array(value)?.into_iter().skip(1);
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

    /// Every live lease of one client: the candidates in its index, each
    /// checked against its resource.
    pub async fn held_by(&self, client_id: &str) -> Result<Vec<Lease>, LockError> {
        let Some(index) = &self.index else {
            return Err(LockError::Disabled(
                "ListHeld is off: this deployment runs with --list-held-index=false",
            ));
        };
        let named = &self.scripts.held;
        let mut invocation = named.script.prepare_invoke();
        invocation.key(index.key(client_id));
        let ids = array(self.run(named, &invocation, &mut self.conn()).await?)?;
        let lookups = ids.iter().filter_map(|id| {
            // An index entry that is no lock id names no lease: skip it.
            let lock = LockId::parse(&text(id).ok()?).ok()?;
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

    /// Sweeps every resource whose due time has come (a lease ended, a
    /// daemon's liveness lapsed), whoever's they are, and returns what each
    /// sweep reported. One daemon at a time holds the reaper's turn, to keep
    /// an idle deployment quiet; two reaping at once would be harmless, since
    /// a sweep of a resource with nothing due changes nothing.
    pub async fn reap(&self, caller: &Caller<'_>) -> Result<Vec<(String, Effects)>, StoreError> {
        let named = &self.scripts.reaper;
        let mut claim = named.script.prepare_invoke();
        claim
            .key(self.ns.reaper())
            .arg(caller.daemon_id)
            .arg(REAPER_CLAIM_MS);
        // The claim answers with the server's clock: due times are on it.
        let now_ms = match self.run(named, &claim, &mut self.conn()).await? {
            Value::Int(ms) if ms >= 0 => ms,
            _ => return Ok(Vec::new()),
        };
        // The reaper's daemon also notices a changed server in buckets nobody
        // uses, with one INFO a pass and the bucket pass only on a change, so
        // that an idle deployment stays quiet.
        match self.servers_changed().await {
            Ok(false) => {}
            Ok(true) => {
                if let Err(err) = self.check_buckets().await {
                    // Forget the servers read, so the next pass tries again.
                    self.servers
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .clear();
                    tracing::warn!(error = %err, "checking the buckets' redis server failed");
                }
            }
            Err(err) => tracing::warn!(error = %err, "reading the redis servers' run_id failed"),
        }
        // One read a bucket, so that a Cluster shard that does not answer
        // holds up only its own buckets. A multiplexed connection pipelines
        // them all the same.
        let reads = (0..BUCKETS).map(|bucket| async move {
            let mut read = redis::cmd("ZRANGE");
            read.arg(self.ns.due(bucket))
                .arg("-inf")
                .arg(now_ms)
                .arg("BYSCORE")
                .arg("LIMIT")
                .arg(0)
                .arg(REAP_PER_BUCKET);
            self.bounded(read.query_async::<Vec<String>>(&mut self.conn()))
                .await
        });
        let mut found = Vec::new();
        let mut failed = None;
        for read in futures::future::join_all(reads).await {
            match read {
                Ok(resources) => found.extend(resources),
                Err(err) => failed.get_or_insert((0, err)).0 += 1,
            }
        }
        match failed {
            Some((count, err)) if count == usize::from(BUCKETS) => return Err(err),
            Some((count, err)) => {
                tracing::warn!(buckets = count, error = %err, "reading the due resources of some buckets failed");
            }
            None => {}
        }
        let due = found.into_iter();
        // A few at a time: a backlog of due resources must not crowd out the
        // syncs that keep this daemon's own waiters alive.
        let sweeps = futures::stream::iter(due.map(|resource| async move {
            let reply = self
                .call(&self.scripts.sweep, &resource, |inv| {
                    inv.arg(caller.daemon_id);
                })
                .await;
            (resource, reply)
        }))
        .buffer_unordered(REAP_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
        let mut swept = Vec::new();
        for (resource, reply) in sweeps {
            match reply {
                Ok(reply) => swept.push((resource, reply.effects)),
                Err(err) => {
                    tracing::warn!(%resource, error = %err, "sweeping a due resource failed");
                }
            }
        }
        Ok(swept)
    }

    /// Every lane answers PING within the timeout.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.lanes.ping_all().await
    }

    /// The deployment-wide totals: every bucket's counters and top list.
    pub async fn read_stats(&self) -> Result<StatsDelta, StoreError> {
        let mut conn = self.conn();
        crate::stats::read(&self.ns, &self.lanes, &mut conn).await
    }

    /// The Redis this store uses, as it may be logged (no password).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The key layout, for tests and tools that look at Redis directly.
    pub fn namespace(&self) -> &Namespace {
        &self.ns
    }

    pub(crate) fn lanes(&self) -> &Lanes {
        &self.lanes
    }

    pub(crate) fn scripts(&self) -> &Scripts {
        &self.scripts
    }
}

/// Refuses a Redis with lock state of the layout before buckets under this
/// prefix, then marks the prefix as this layout's. A one-time check at
/// startup, not a lock operation, so two commands are enough.
async fn check_layout(ns: &Namespace, lanes: &Lanes) -> Result<(), StoreError> {
    let mut conn = lanes.conn();
    let marker: Option<String> = lanes
        .bounded(redis::cmd("GET").arg(ns.layout()).query_async(&mut conn))
        .await?;
    match marker.as_deref() {
        Some(crate::keys::LAYOUT_VERSION) => return Ok(()),
        Some(other) => {
            return Err(StoreError::OtherLayout {
                found: other.to_owned(),
            });
        }
        None => {}
    }
    let old = ns.previous_layout_stats();
    let found: bool = lanes
        .bounded(redis::cmd("EXISTS").arg(&old).query_async(&mut conn))
        .await?;
    if found {
        let pattern = old.replace("{stats}", "*");
        return Err(StoreError::PreviousLayout { key: old, pattern });
    }
    // NX: a daemon of another layout that marked the prefix meanwhile wins,
    // and this one refuses on its next start.
    let _: Value = lanes
        .bounded(
            redis::cmd("SET")
                .arg(ns.layout())
                .arg(crate::keys::LAYOUT_VERSION)
                .arg("NX")
                .query_async(&mut conn),
        )
        .await?;
    Ok(())
}

/// Refuses a Redis that may evict any key. Volatile policies evict only keys
/// with an expiry, and lockd's lock state has none: those pass with a
/// warning, for the cancellations and lease index that do expire.
async fn check_eviction(lanes: &Lanes) -> Result<(), StoreError> {
    let mut conn = lanes.conn();
    let reply = lanes
        .bounded(
            redis::cmd("CONFIG")
                .arg("GET")
                .arg("maxmemory-policy")
                .query_async::<Value>(&mut conn),
        )
        .await;
    let policies = match reply.and_then(per_node_config) {
        Ok(policies) => policies,
        Err(err) => {
            tracing::info!(error = %err, "cannot read maxmemory-policy; make sure redis never evicts lock state");
            return Ok(());
        }
    };
    if let Some(policy) = policies.iter().find(|p| p.starts_with("allkeys")) {
        return Err(StoreError::Evicting {
            policy: policy.clone(),
        });
    }
    if let Some(policy) = policies.iter().find(|p| p.starts_with("volatile")) {
        tracing::warn!(%policy, "redis may evict keys with an expiry: cancellations of timed-out acquires and ListHeld entries");
    }
    Ok(())
}

/// The value of a `CONFIG GET` of one parameter on every node it reached:
/// one server's reply (an array, or a map in RESP3), or, on a Cluster, a
/// map of node name to such a reply per primary.
fn per_node_config(reply: Value) -> Result<Vec<String>, StoreError> {
    match reply {
        Value::Map(nodes)
            if !nodes.is_empty()
                && nodes
                    .iter()
                    .all(|(_, v)| matches!(v, Value::Map(_) | Value::Array(_))) =>
        {
            nodes
                .into_iter()
                .map(|(_, reply)| crate::flags::config_value(reply))
                .collect()
        }
        one => Ok(vec![crate::flags::config_value(one)?]),
    }
}

fn lease_reply(
    script: &'static str,
    reply: Result<ScriptReply, StoreError>,
    lock: &LockId,
) -> Outcome<Lease> {
    let reply = match reply {
        Ok(reply) => reply,
        Err(err) => return (Err(err.into()), Effects::default()),
    };
    let result = match reply.status.as_str() {
        // A release needs no confirmation: one lost in a failover ends at its TTL.
        "ok" if script == "renew" && reply.unconfirmed.is_some() => Err(LockError::Unavailable(
            reply.unconfirmed.clone().unwrap_or_default(),
        )),
        "ok" => text(&reply.payload)
            .and_then(|record| reply::holder(&record, &lock.secret, &lock.resource))
            .map_err(LockError::from),
        "not_found" => Err(LockError::NotFound),
        "not_owner" => Err(LockError::NotOwner),
        "limit" => Err(LockError::RenewalLimit {
            max: int(&reply.payload).unwrap_or_default() as u32,
        }),
        other => Err(unexpected(script, other)),
    };
    (result, reply.effects)
}

/// confirm.lua with the server check it calls.
fn confirm_source() -> String {
    format!(
        "{}\n{}",
        include_str!("../lua/failover.lua"),
        include_str!("../lua/confirm.lua")
    )
}

/// The `run_id` and `master_replid` lines of an INFO reply: one server's
/// text, or a Cluster's map of node to text.
fn collect_run_ids(info: &Value, out: &mut Vec<String>) {
    match info {
        Value::Map(nodes) => {
            for (_, node) in nodes {
                collect_run_ids(node, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_run_ids(v, out)),
        // RESP3 sends INFO as verbatim text.
        Value::VerbatimString { text, .. } => {
            collect_run_ids(&Value::SimpleString(text.clone()), out)
        }
        other => {
            if let Ok(text) = text(other) {
                // A server is its run_id and its replication id, as in failover.lua.
                out.extend(
                    text.lines()
                        .filter(|line| {
                            line.starts_with("run_id:") || line.starts_with("master_replid:")
                        })
                        .map(|line| line.trim().to_owned()),
                );
            }
        }
    }
}

/// A free resource in a bucket under quarantine, for an acquire that does not wait.
fn quarantined(payload: &Value) -> LockError {
    let left_ms = int(payload).unwrap_or_default().max(0);
    LockError::Unavailable(format!(
        "the redis server holding this resource changed (a failover or a restart that may \
         have lost writes): no new grants on it for another {left_ms} ms \
         (--failover-quarantine), so that a lease lost with the old server has ended; \
         retry then, or wait in line"
    ))
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

fn unexpected(script: &'static str, status: &str) -> LockError {
    tracing::error!(script, status, "unexpected script status");
    LockError::Internal(format!("script {script} answered {status:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_values_come_from_one_server_or_every_cluster_primary() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let resp2 = |v: &str| Value::Array(vec![bulk("maxmemory-policy"), bulk(v)]);
        let resp3 = |v: &str| Value::Map(vec![(bulk("maxmemory-policy"), bulk(v))]);
        assert_eq!(
            per_node_config(resp2("noeviction")).unwrap(),
            ["noeviction"]
        );
        assert_eq!(
            per_node_config(resp3("noeviction")).unwrap(),
            ["noeviction"]
        );
        let cluster = Value::Map(vec![
            (bulk("10.0.0.1:7000"), resp3("noeviction")),
            (bulk("10.0.0.2:7000"), resp2("allkeys-lru")),
        ]);
        assert_eq!(
            per_node_config(cluster).unwrap(),
            ["noeviction", "allkeys-lru"]
        );
    }

    #[test]
    fn run_ids_come_from_one_server_or_every_cluster_primary() {
        let one = Value::BulkString(
            b"# Server\r\nredis_version:7.0.15\r\nrun_id:abc\r\n# Replication\r\nmaster_replid:r1\r\nmaster_replid2:0\r\n"
                .to_vec(),
        );
        let mut ids = Vec::new();
        collect_run_ids(&one, &mut ids);
        assert_eq!(ids, ["run_id:abc", "master_replid:r1"]);

        let node = |id: &str| Value::VerbatimString {
            format: redis::VerbatimFormat::Text,
            text: format!("# Server\r\nrun_id:{id}\r\ntcp_port:1\r\n"),
        };
        let cluster = Value::Map(vec![
            (Value::SimpleString("127.0.0.1:7000".into()), node("x")),
            (Value::SimpleString("127.0.0.1:7001".into()), node("y")),
        ]);
        let mut ids = Vec::new();
        collect_run_ids(&cluster, &mut ids);
        assert_eq!(ids, ["run_id:x", "run_id:y"]);
    }
}
