//! Keyspace notifications: wake-up hints for the resources this daemon has waiters on.
//!
//! Notifications can be late or lost (a reconnect drops whatever was published
//! meanwhile, a restarted Redis or a new primary does not have
//! `notify-keyspace-events` set, since CONFIG SET is not replicated), so they
//! only ever make the daemon look sooner; its own timers and periodic syncs
//! are what guarantee progress. [`Notifier::ensure_events`] turns the flags on
//! where CONFIG allows it and proves with a probe write that events arrive.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionInfo, PushInfo, PushKind, Value};
use tokio::sync::{mpsc, watch};

use crate::conn::{Connector, Lanes, Topology};
use crate::error::StoreError;
use crate::flags::{self, ConfigCheck, NOTIFY_FLAGS};
use crate::keys::Namespace;

/// The least time a probe waits for its events before it concludes that
/// keyspace notifications do not arrive.
const PROBE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// How many times a probe at start writes its key before it concludes that
/// events do not arrive, when CONFIG showed the flags set. On a loaded machine an
/// event has been seen to miss one round's patience although the flags were
/// on; a server whose flags CONFIG cannot show gets one round, since missing
/// flags are then the likely cause and the daemon should say so at once.
const PROBE_ROUNDS: u32 = 3;

/// A hint from Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A key of this resource changed.
    Changed(String),
    /// The notification connection dropped; anything may have been missed.
    Disconnected,
}

/// Where the messages of one subscribed channel go.
#[derive(Debug, Clone)]
enum Route {
    /// A key of this resource.
    Resource(String),
    /// The probe key: its events prove that notifications arrive.
    Probe,
}

/// Channel name to route, for the channels currently subscribed.
type Routes = Arc<Mutex<HashMap<String, Route>>>;

/// How long a probe waits before reading its key back, so that the key's
/// one-millisecond TTL has surely run out and the read removes it.
const PROBE_EXPIRY_WAIT: Duration = Duration::from_millis(3);

/// How often the primaries are looked up again (Sentinel, Cluster), besides
/// after every dropped subscription.
const TOPOLOGY_EVERY: Duration = Duration::from_secs(1);

/// RESP3 connections subscribed to the keyspace channels of watched
/// resources, one per primary: keyspace events are published on the node
/// that owns the key only. Each reconnects and resubscribes by itself; the
/// set follows the primaries (a Sentinel failover, a Cluster topology change).
///
/// Every channel is subscribed on every primary: a node publishes only the
/// events of its own keys, so no event arrives twice, and unlike a pattern
/// subscription nothing arrives that no waiter asked for.
pub struct Notifier {
    inner: Arc<Inner>,
    /// Closed on drop; the topology follower ends then.
    _shutdown: watch::Sender<()>,
}

struct Inner {
    connector: Connector,
    /// CONFIG, INFO and the probe's writes go over a plain connection of their
    /// own, so that they never queue behind the subscriber's reconnects and
    /// the probe crosses the server the way lock scripts do. It also tells
    /// where the primaries are.
    control: Lanes,
    subscribers: tokio::sync::Mutex<Vec<Subscriber>>,
    push: Arc<PushShared>,
    ns: Namespace,
    timeout: Duration,
    /// For the `Disconnected` notice after events come back: whatever was
    /// published while they were off is lost.
    notices: mpsc::UnboundedSender<Notice>,
    /// The probe key, once the key prefix is known ([`Notifier::probing`]).
    probe: Mutex<Option<String>>,
    /// Events seen on the probe channel. A tokio mutex: one probe at a time
    /// holds it across its awaits.
    probe_events: tokio::sync::Mutex<mpsc::UnboundedReceiver<String>>,
    /// Set when the set of primaries changed since the last successful
    /// [`Notifier::ensure_events`]: the new ones were never probed.
    moved: AtomicBool,
    /// Each primary's `run_id` at the last successful check; a new one means
    /// a restarted Redis whose flags are back to its configuration file.
    run_ids: Mutex<HashMap<String, String>>,
}

/// One primary's subscription connection.
struct Subscriber {
    /// `host:port` (or the socket path), for logs and `run_ids`.
    name: String,
    info: ConnectionInfo,
    conn: ConnectionManager,
}

/// What every subscription connection's push handler shares.
struct PushShared {
    routes: Routes,
    probe_tx: mpsc::UnboundedSender<String>,
    notices: mpsc::UnboundedSender<Notice>,
    /// Set by every `Disconnection` push: the connection comes back without
    /// knowing whether the server still publishes the events.
    dropped: AtomicBool,
    /// Woken by every `Disconnection` push. The subscriber hears of a dead
    /// server at once, while the lanes would only on their next command.
    dropped_signal: tokio::sync::Notify,
    /// Woken likewise, for the topology follower: a dropped node may be a
    /// failed primary.
    topology_signal: tokio::sync::Notify,
}

impl PushShared {
    fn on_push(&self, push: PushInfo) -> Result<(), redis::aio::SendError> {
        let notice = match push.kind {
            PushKind::Message => {
                let (channel, event) = match push.data.as_slice() {
                    [Value::BulkString(c), Value::BulkString(e)] => (c, e),
                    _ => return Ok(()),
                };
                let channel = String::from_utf8_lossy(channel).into_owned();
                let route = self
                    .routes
                    .lock()
                    .ok()
                    .and_then(|routes| routes.get(&channel).cloned());
                match route {
                    Some(Route::Probe) => {
                        // Only a probe in progress reads these; one that gave up left.
                        let _ = self
                            .probe_tx
                            .send(String::from_utf8_lossy(event).into_owned());
                        return Ok(());
                    }
                    // Every script refreshes key expiries; an `expire` event is
                    // never a change of holders or queue, and following it would
                    // make each sync wake the next one.
                    Some(Route::Resource(_)) if event.as_slice() == b"expire" => {
                        return Ok(());
                    }
                    Some(Route::Resource(resource)) => Notice::Changed(resource),
                    None => return Ok(()),
                }
            }
            PushKind::Disconnection => {
                self.dropped.store(true, Ordering::Relaxed);
                self.dropped_signal.notify_one();
                self.topology_signal.notify_one();
                Notice::Disconnected
            }
            _ => return Ok(()),
        };
        self.notices.send(notice).map_err(|_| redis::aio::SendError)
    }
}

impl Notifier {
    pub(crate) async fn connect(
        connector: &Connector,
        ns: Namespace,
        notices: mpsc::UnboundedSender<Notice>,
    ) -> Result<Notifier, StoreError> {
        let (probe_tx, probe_rx) = mpsc::unbounded_channel();
        let push = Arc::new(PushShared {
            routes: Arc::default(),
            probe_tx,
            notices: notices.clone(),
            dropped: AtomicBool::new(false),
            dropped_signal: tokio::sync::Notify::new(),
            topology_signal: tokio::sync::Notify::new(),
        });
        let control = connector.lanes(1).await?;
        let inner = Arc::new(Inner {
            connector: connector.clone(),
            control,
            subscribers: tokio::sync::Mutex::new(Vec::new()),
            push,
            ns,
            timeout: connector.timeout(),
            notices,
            probe: Mutex::new(None),
            probe_events: tokio::sync::Mutex::new(probe_rx),
            moved: AtomicBool::new(false),
            run_ids: Mutex::new(HashMap::new()),
        });
        inner.follow_primaries().await?;
        inner.moved.store(false, Ordering::Relaxed);
        let (shutdown, closed) = watch::channel(());
        if connector.topology() != Topology::Standalone {
            tokio::spawn(follow(Arc::downgrade(&inner), closed));
        }
        Ok(Notifier {
            inner,
            _shutdown: shutdown,
        })
    }

    /// Proves notifications with probe writes to this daemon's probe key
    /// ([`Namespace::probe`]). Without it, [`Notifier::ensure_events`] can
    /// only believe CONFIG.
    pub fn probing(self) -> Notifier {
        let key = self.inner.ns.probe(&flags::probe_tail());
        if let Ok(mut routes) = self.inner.push.routes.lock() {
            routes.insert(self.inner.ns.keyspace_channel(&key), Route::Probe);
        }
        if let Ok(mut probe) = self.inner.probe.lock() {
            *probe = Some(key);
        }
        self
    }

    fn channels(&self, resource: &str) -> [String; 2] {
        let ns = &self.inner.ns;
        let keys = ns.resource(resource);
        [
            ns.keyspace_channel(&keys.holders),
            ns.keyspace_channel(&keys.queue),
        ]
    }

    /// Starts delivering changes of `resource`. The caller must look at the
    /// resource once more afterwards: changes before the subscription are not replayed.
    pub async fn watch(&self, resource: &str) -> Result<(), StoreError> {
        let channels = self.channels(resource);
        if let Ok(mut routes) = self.inner.push.routes.lock() {
            for channel in &channels {
                routes.insert(channel.clone(), Route::Resource(resource.to_owned()));
            }
        }
        self.inner
            .on_every_subscriber(|mut conn| {
                let channels = channels.clone();
                async move { conn.subscribe(&channels).await }
            })
            .await
    }

    /// Stops delivering changes of `resource`.
    pub async fn unwatch(&self, resource: &str) -> Result<(), StoreError> {
        let channels = self.channels(resource);
        if let Ok(mut routes) = self.inner.push.routes.lock() {
            for channel in &channels {
                routes.remove(channel);
            }
        }
        self.inner
            .on_every_subscriber(|mut conn| {
                let channels = channels.clone();
                async move { conn.unsubscribe(&channels).await }
            })
            .await
    }

    /// Keeps the connections honest: a failed reconnect is retried only by the next command.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.inner
            .on_every_subscriber(|mut conn| async move {
                redis::cmd("PING").query_async::<()>(&mut conn).await
            })
            .await
    }

    /// Makes sure the events lockd needs reach these connections: follows
    /// the primaries, turns the flags on through CONFIG on every one of them
    /// where Redis allows it, then, CONFIG or not, writes the probe key and
    /// waits for its events. Sends `Disconnected` on success, since events
    /// may have been lost before.
    ///
    /// The probe key lives in one slot, so on a cluster it proves the events
    /// of its own shard's primary; the others are checked through CONFIG.
    /// One probe round: for checks while serving, which must not hold up
    /// the health loop.
    pub async fn ensure_events(&self) -> Result<ConfigCheck, StoreError> {
        self.ensure(1).await
    }

    /// [`Notifier::ensure_events`] for a daemon starting: when CONFIG showed
    /// the flags on, up to [`PROBE_ROUNDS`] probe rounds before concluding
    /// that events do not arrive, since concluding so stops the daemon.
    pub async fn ensure_events_patiently(&self) -> Result<ConfigCheck, StoreError> {
        self.ensure(PROBE_ROUNDS).await
    }

    async fn ensure(&self, rounds: u32) -> Result<ConfigCheck, StoreError> {
        let inner = &self.inner;
        inner.push.dropped.store(false, Ordering::Relaxed);
        inner.moved.store(false, Ordering::Relaxed);
        // After a restart the control connection is dead until a command
        // fails on it; that failure starts its reconnect, which a second
        // ping waits for.
        if inner.control.ping_all().await.is_err() {
            inner.control.ping_all().await?;
        }
        inner.follow_primaries().await?;
        let nodes: Vec<(String, ConnectionManager)> = inner
            .subscribers
            .lock()
            .await
            .iter()
            .map(|s| (s.name.clone(), s.conn.clone()))
            .collect();
        let mut run_ids = HashMap::new();
        let mut check = ConfigCheck::AlreadySet;
        for (name, mut conn) in nodes {
            if let Some(run_id) = inner.server_run_id(&mut conn).await? {
                run_ids.insert(name.clone(), run_id);
            }
            let node_check = flags::enable_notifications(&mut conn, inner.timeout)
                .await
                .map_err(|err| {
                    tracing::debug!(node = %name, error = %err, "turning on keyspace notifications failed");
                    err
                })?;
            check = merge(check, node_check);
        }
        let probe = inner.probe.lock().ok().and_then(|p| p.clone());
        if let Some(key) = probe {
            inner.probe(&key, &check, rounds).await?;
        }
        if let Ok(mut last) = inner.run_ids.lock() {
            *last = run_ids;
        }
        // A closed channel means shutdown; nobody is left to wake.
        let _ = inner.notices.send(Notice::Disconnected);
        Ok(check)
    }

    /// Resolves at the next `Disconnection` push (or at once if one came
    /// since the last call): often the first sign that Redis went away.
    pub async fn disconnected(&self) {
        self.inner.push.dropped_signal.notified().await;
    }

    /// Why the events may have stopped since the last successful
    /// [`Notifier::ensure_events`], if they may have.
    pub async fn changed(&self) -> Option<&'static str> {
        let inner = &self.inner;
        if inner.push.dropped.load(Ordering::Relaxed) {
            return Some("notification connection dropped");
        }
        if inner.moved.load(Ordering::Relaxed) {
            return Some("the redis primaries changed");
        }
        let nodes: Vec<(String, ConnectionManager)> = inner
            .subscribers
            .lock()
            .await
            .iter()
            .map(|s| (s.name.clone(), s.conn.clone()))
            .collect();
        for (name, mut conn) in nodes {
            let now = match inner.server_run_id(&mut conn).await {
                Ok(now) => now,
                Err(err) => {
                    tracing::debug!(node = %name, error = %err, "INFO server failed");
                    continue;
                }
            };
            let last = inner
                .run_ids
                .lock()
                .ok()
                .and_then(|ids| ids.get(&name).cloned());
            if let (Some(last), Some(now)) = (last, now)
                && last != now
            {
                return Some("redis run_id changed");
            }
        }
        None
    }
}

/// The combined answer of CONFIG on several primaries: the least certain one.
fn merge(a: ConfigCheck, b: ConfigCheck) -> ConfigCheck {
    match (a, b) {
        (ConfigCheck::Unavailable(r), _) | (_, ConfigCheck::Unavailable(r)) => {
            ConfigCheck::Unavailable(r)
        }
        (ConfigCheck::Added { added: x }, ConfigCheck::Added { added: y }) => {
            let mut added = x;
            added.extend(
                y.chars()
                    .filter(|c| !added.contains(*c))
                    .collect::<Vec<_>>(),
            );
            ConfigCheck::Added { added }
        }
        (added @ ConfigCheck::Added { .. }, _) | (_, added @ ConfigCheck::Added { .. }) => added,
        _ => ConfigCheck::AlreadySet,
    }
}

/// Keeps the subscriptions on the current primaries until the notifier is
/// dropped: once a second and after every dropped subscription.
async fn follow(inner: Weak<Inner>, mut shutdown: watch::Receiver<()>) {
    let mut tick = tokio::time::interval(TOPOLOGY_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let Some(push) = inner.upgrade().map(|i| Arc::clone(&i.push)) else {
            return;
        };
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
            _ = push.topology_signal.notified() => {
                // Give a failover a moment to be reported.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        drop(push);
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if let Err(err) = inner.follow_primaries().await {
            tracing::debug!(error = %err, "looking up the redis primaries failed");
        }
    }
}

impl Inner {
    /// Subscribes on every primary not yet subscribed on, and drops the
    /// subscriptions of nodes that are no longer primaries. New primaries get
    /// the notification flags and every channel; waiters are told to look
    /// again (`Disconnected`), since events before were lost.
    async fn follow_primaries(&self) -> Result<(), StoreError> {
        let wanted = self.control.primaries().await?;
        if wanted.is_empty() {
            return Err(StoreError::NotReady);
        }
        let mut subscribers = self.subscribers.lock().await;
        let before = subscribers.len();
        subscribers.retain(|s| {
            let keep = wanted.iter().any(|w| w.addr() == s.info.addr());
            if !keep {
                tracing::info!(node = %s.name, "no longer a redis primary: dropping its notification subscription");
            }
            keep
        });
        let mut changed = subscribers.len() != before;
        let channels: Vec<String> = self
            .push
            .routes
            .lock()
            .map(|routes| routes.keys().cloned().collect())
            .unwrap_or_default();
        let mut first_error = None;
        for info in wanted {
            if subscribers.iter().any(|s| s.info.addr() == info.addr()) {
                continue;
            }
            let name = info.addr().to_string();
            match self.subscribe_on(info.clone(), &channels).await {
                Ok(conn) => {
                    if before > 0 {
                        tracing::info!(node = %name, "subscribed to keyspace notifications of a new redis primary");
                    }
                    subscribers.push(Subscriber { name, info, conn });
                    changed = true;
                }
                Err(err) => {
                    tracing::debug!(node = %name, error = %err, "subscribing on a redis primary failed");
                    first_error.get_or_insert(err);
                }
            }
        }
        let none = subscribers.is_empty();
        drop(subscribers);
        if changed {
            self.moved.store(true, Ordering::Relaxed);
            self.push.dropped_signal.notify_one();
            let _ = self.notices.send(Notice::Disconnected);
        }
        // A primary that cannot be reached now (a shard failing over) is
        // tried again on the next round; the others' events flow meanwhile.
        match first_error {
            Some(err) if none => Err(err),
            _ => Ok(()),
        }
    }

    /// A subscription connection to `info`'s node with `channels`, and the
    /// notification flags turned on there (CONFIG SET is not replicated).
    async fn subscribe_on(
        &self,
        info: ConnectionInfo,
        channels: &[String],
    ) -> Result<ConnectionManager, StoreError> {
        let push = Arc::clone(&self.push);
        let config = ConnectionManagerConfig::new()
            .set_push_sender(move |info: PushInfo| push.on_push(info))
            .set_automatic_resubscription();
        let mut conn = self.connector.subscriber_at(info, config).await?;
        if !channels.is_empty() {
            tokio::time::timeout(self.timeout, conn.subscribe(channels))
                .await
                .map_err(|_| StoreError::Timeout(self.timeout))??;
        }
        // The probe of the next check says whether events arrive; a refusal
        // here is only logged.
        if let Err(err) = flags::enable_notifications(&mut conn, self.timeout).await {
            tracing::debug!(error = %err, "turning on keyspace notifications on a new primary failed");
        }
        Ok(conn)
    }

    /// Runs `call` on every subscription connection at once. It fails only
    /// if every connection failed: with one Cluster node down, a watch still
    /// holds on the others (and is recorded, so that it is undone later);
    /// the silent node's events are missed, as hints may be.
    async fn on_every_subscriber<F, Fut>(&self, call: F) -> Result<(), StoreError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<()>>,
    {
        let conns: Vec<ConnectionManager> = self
            .subscribers
            .lock()
            .await
            .iter()
            .map(|s| s.conn.clone())
            .collect();
        if conns.is_empty() {
            return Err(StoreError::NotReady);
        }
        let calls = conns.into_iter().map(|conn| {
            let call = call(conn);
            async move {
                match tokio::time::timeout(self.timeout, call).await {
                    Ok(result) => result.map_err(StoreError::from),
                    Err(_) => Err(StoreError::Timeout(self.timeout)),
                }
            }
        });
        let mut first_error = None;
        let mut succeeded = false;
        for result in futures::future::join_all(calls).await {
            match result {
                Ok(()) => succeeded = true,
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        match first_error {
            Some(err) if !succeeded => Err(err),
            Some(err) => {
                tracing::debug!(error = %err, "a subscription connection failed; the others hold");
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// The server's `run_id`, or `None` where INFO is refused.
    async fn server_run_id(
        &self,
        conn: &mut ConnectionManager,
    ) -> Result<Option<String>, StoreError> {
        let info = tokio::time::timeout(
            self.timeout,
            redis::cmd("INFO").arg("server").query_async::<String>(conn),
        )
        .await
        .map_err(|_| StoreError::Timeout(self.timeout))?;
        match info {
            Ok(info) => Ok(flags::run_id(&info)),
            Err(err) if err.code().is_some() => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    /// Writes the probe key so that it produces one event per probed flag,
    /// and waits for those events on the subscription.
    async fn probe(&self, key: &str, check: &ConfigCheck, rounds: u32) -> Result<(), StoreError> {
        let mut events = self.probe_events.lock().await;
        // Late events of an earlier probe that gave up.
        while events.try_recv().is_ok() {}
        let channel = self.ns.keyspace_channel(key);
        // Subscribing again is harmless, and it waits for a reconnect in progress.
        self.on_every_subscriber(|mut conn| {
            let channel = channel.clone();
            async move { conn.subscribe(&channel).await }
        })
        .await?;
        let mut control = self.control.conn();
        let rounds = match check {
            ConfigCheck::Unavailable(_) => 1,
            _ => rounds.max(1),
        };
        // Events arrive within milliseconds; on a loaded machine they may take
        // longer than one call's timeout, and a probe that gives up too soon
        // would stop a daemon whose Redis is fine.
        let patience = self.timeout.max(PROBE_PATIENCE);
        let mut seen = Vec::new();
        for round in 1..=rounds {
            if round > 1 {
                tracing::warn!(
                    %key,
                    unseen = ?flags::unseen_flags(&seen),
                    round,
                    "keyspace events of a probe write did not arrive in time; probing again"
                );
            }
            // hset, del, zadd and expire; the key lives one millisecond at most.
            self.control
                .bounded(
                    redis::pipe()
                        .atomic()
                        .hset(key, "probe", 1)
                        .ignore()
                        .del(key)
                        .ignore()
                        .zadd(key, "probe", 1)
                        .ignore()
                        .pexpire(key, 1)
                        .ignore()
                        .query_async::<()>(&mut control),
                )
                .await?;
            tokio::time::sleep(PROBE_EXPIRY_WAIT).await;
            // Reading an expired key removes it, with an `expired` event.
            self.control
                .bounded(
                    redis::cmd("EXISTS")
                        .arg(key)
                        .query_async::<i64>(&mut control),
                )
                .await?;
            let deadline = tokio::time::Instant::now() + patience;
            while !flags::unseen_flags(&seen).is_empty() {
                match tokio::time::timeout_at(deadline, events.recv()).await {
                    Ok(Some(event)) => seen.push(event),
                    Ok(None) | Err(_) => break,
                }
            }
            if flags::unseen_flags(&seen).is_empty() {
                break;
            }
        }
        let unseen = flags::unseen_flags(&seen);
        if unseen.is_empty() {
            return Ok(());
        }
        Err(match check {
            ConfigCheck::Unavailable(reason) => StoreError::Notifications {
                flags: NOTIFY_FLAGS.to_owned(),
                reason: format!(
                    "CONFIG is refused ({reason}) and a probe write to {key} brought no \
                     events for the flags {unseen:?} within {patience:?}"
                ),
            },
            _ => StoreError::NotificationsSilent {
                flags: NOTIFY_FLAGS.to_owned(),
                unseen,
                key: key.to_owned(),
                within: patience * rounds,
            },
        })
    }
}
