//! Keyspace notifications: wake-up hints for the resources this daemon has waiters on.
//!
//! Notifications can be late or lost (a reconnect drops whatever was published
//! meanwhile, a restarted Redis forgets `notify-keyspace-events`), so they
//! only ever make the daemon look sooner; its own timers and periodic syncs
//! are what guarantee progress. [`Notifier::ensure_events`] turns the flags on
//! where CONFIG allows it and proves with a probe write that events arrive.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc;

use crate::conn::{Connector, Lanes};
use crate::error::StoreError;
use crate::flags::{self, ConfigCheck, NOTIFY_FLAGS};
use crate::keys::Namespace;

/// The least time a probe waits for its events before it concludes that
/// keyspace notifications do not arrive.
const PROBE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

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

/// A RESP3 connection subscribed to the keyspace channels of watched resources.
/// It reconnects and resubscribes by itself.
pub struct Notifier {
    conn: ConnectionManager,
    /// CONFIG, INFO and the probe's writes go over a plain connection of their
    /// own, so that they never queue behind the subscriber's reconnects and
    /// the probe crosses the server the way lock scripts do.
    control: Lanes,
    routes: Routes,
    ns: Namespace,
    timeout: Duration,
    /// For the `Disconnected` notice after events come back: whatever was
    /// published while they were off is lost.
    notices: mpsc::UnboundedSender<Notice>,
    /// The probe key, once the key prefix is known ([`Notifier::probing`]).
    probe: Option<String>,
    /// Events seen on the probe channel. A tokio mutex: one probe at a time
    /// holds it across its awaits.
    probe_events: tokio::sync::Mutex<mpsc::UnboundedReceiver<String>>,
    /// Set by every `Disconnection` push: the connection comes back without
    /// knowing whether the server still publishes the events.
    dropped: Arc<AtomicBool>,
    /// Woken by every `Disconnection` push. The subscriber hears of a dead
    /// server at once, while the lanes would only on their next command.
    dropped_signal: Arc<tokio::sync::Notify>,
    /// The server's `run_id` at the last successful check; a new one means a
    /// restarted Redis whose flags are back to its configuration file.
    run_id: Mutex<Option<String>>,
}

impl Notifier {
    pub(crate) async fn connect(
        connector: &Connector,
        ns: Namespace,
        notices: mpsc::UnboundedSender<Notice>,
    ) -> Result<Notifier, StoreError> {
        let routes: Routes = Arc::default();
        let push_routes = Arc::clone(&routes);
        let dropped = Arc::new(AtomicBool::new(false));
        let push_dropped = Arc::clone(&dropped);
        let dropped_signal = Arc::new(tokio::sync::Notify::new());
        let push_signal = Arc::clone(&dropped_signal);
        let (probe_tx, probe_rx) = mpsc::unbounded_channel();
        let push_notices = notices.clone();
        let on_push = move |push: PushInfo| {
            let notice = match push.kind {
                PushKind::Message => {
                    let (channel, event) = match push.data.as_slice() {
                        [Value::BulkString(c), Value::BulkString(e)] => (c, e),
                        _ => return Ok(()),
                    };
                    let channel = String::from_utf8_lossy(channel).into_owned();
                    let route = push_routes
                        .lock()
                        .ok()
                        .and_then(|routes| routes.get(&channel).cloned());
                    match route {
                        Some(Route::Probe) => {
                            // Only a probe in progress reads these; one that gave up left.
                            let _ = probe_tx.send(String::from_utf8_lossy(event).into_owned());
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
                    push_dropped.store(true, Ordering::Relaxed);
                    push_signal.notify_one();
                    Notice::Disconnected
                }
                _ => return Ok(()),
            };
            push_notices.send(notice).map_err(|_| redis::aio::SendError)
        };
        let config = ConnectionManagerConfig::new()
            .set_push_sender(on_push)
            .set_automatic_resubscription();
        let conn = connector.subscriber(config).await?;
        let control = connector.lanes(1).await?;
        Ok(Notifier {
            conn,
            control,
            routes,
            ns,
            timeout: connector.timeout(),
            notices,
            probe: None,
            probe_events: tokio::sync::Mutex::new(probe_rx),
            dropped,
            dropped_signal,
            run_id: Mutex::new(None),
        })
    }

    /// Proves notifications with probe writes to this daemon's probe key
    /// ([`Namespace::probe`]). Without it, [`Notifier::ensure_events`] can
    /// only believe CONFIG.
    pub fn probing(mut self) -> Notifier {
        let key = self.ns.probe(&flags::probe_tail());
        if let Ok(mut routes) = self.routes.lock() {
            routes.insert(self.ns.keyspace_channel(&key), Route::Probe);
        }
        self.probe = Some(key);
        self
    }

    fn channels(&self, resource: &str) -> [String; 2] {
        let keys = self.ns.resource(resource);
        [
            self.ns.keyspace_channel(&keys.holders),
            self.ns.keyspace_channel(&keys.queue),
        ]
    }

    /// Starts delivering changes of `resource`. The caller must look at the
    /// resource once more afterwards: changes before the subscription are not replayed.
    pub async fn watch(&self, resource: &str) -> Result<(), StoreError> {
        let channels = self.channels(resource);
        if let Ok(mut routes) = self.routes.lock() {
            for channel in &channels {
                routes.insert(channel.clone(), Route::Resource(resource.to_owned()));
            }
        }
        let mut conn = self.conn.clone();
        tokio::time::timeout(self.timeout, conn.subscribe(&channels))
            .await
            .map_err(|_| StoreError::Timeout(self.timeout))??;
        Ok(())
    }

    /// Stops delivering changes of `resource`.
    pub async fn unwatch(&self, resource: &str) -> Result<(), StoreError> {
        let channels = self.channels(resource);
        if let Ok(mut routes) = self.routes.lock() {
            for channel in &channels {
                routes.remove(channel);
            }
        }
        let mut conn = self.conn.clone();
        tokio::time::timeout(self.timeout, conn.unsubscribe(&channels))
            .await
            .map_err(|_| StoreError::Timeout(self.timeout))??;
        Ok(())
    }

    /// Keeps the connection honest: a failed reconnect is retried only by the next command.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        tokio::time::timeout(
            self.timeout,
            redis::cmd("PING").query_async::<Value>(&mut conn),
        )
        .await
        .map_err(|_| StoreError::Timeout(self.timeout))??;
        Ok(())
    }

    /// Makes sure the events lockd needs reach this connection: turns the
    /// flags on through CONFIG where Redis allows it, then, CONFIG or not,
    /// writes the probe key and waits for its events. Sends `Disconnected`
    /// on success, since events may have been lost before.
    pub async fn ensure_events(&self) -> Result<ConfigCheck, StoreError> {
        self.dropped.store(false, Ordering::Relaxed);
        // After a restart the control connection is dead until a command
        // fails on it; that failure starts its reconnect, which a second
        // ping waits for.
        if self.control.ping_all().await.is_err() {
            self.control.ping_all().await?;
        }
        let run_id = self.server_run_id().await?;
        let check = flags::enable_notifications(&self.control).await?;
        if let Some(key) = &self.probe {
            self.probe(key, &check).await?;
        }
        if let Ok(mut last) = self.run_id.lock() {
            *last = run_id;
        }
        // A closed channel means shutdown; nobody is left to wake.
        let _ = self.notices.send(Notice::Disconnected);
        Ok(check)
    }

    /// Resolves at the next `Disconnection` push (or at once if one came
    /// since the last call): often the first sign that Redis went away.
    pub async fn disconnected(&self) {
        self.dropped_signal.notified().await;
    }

    /// Why the events may have stopped since the last successful
    /// [`Notifier::ensure_events`], if they may have.
    pub async fn changed(&self) -> Option<&'static str> {
        if self.dropped.load(Ordering::Relaxed) {
            return Some("notification connection dropped");
        }
        let now = match self.server_run_id().await {
            Ok(now) => now,
            Err(err) => {
                tracing::debug!(error = %err, "INFO server failed");
                return None;
            }
        };
        let last = self.run_id.lock().ok().and_then(|last| last.clone());
        match (last, now) {
            (Some(last), Some(now)) if last != now => Some("redis run_id changed"),
            _ => None,
        }
    }

    /// The server's `run_id`, or `None` where INFO is refused.
    async fn server_run_id(&self) -> Result<Option<String>, StoreError> {
        let mut conn = self.control.conn();
        match self
            .control
            .bounded(
                redis::cmd("INFO")
                    .arg("server")
                    .query_async::<String>(&mut conn),
            )
            .await
        {
            Ok(info) => Ok(flags::run_id(&info)),
            Err(StoreError::Redis(err)) if err.code().is_some() => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Writes the probe key so that it produces one event per probed flag,
    /// and waits for those events on the subscription.
    async fn probe(&self, key: &str, check: &ConfigCheck) -> Result<(), StoreError> {
        let mut events = self.probe_events.lock().await;
        // Late events of an earlier probe that gave up.
        while events.try_recv().is_ok() {}
        let channel = self.ns.keyspace_channel(key);
        let mut conn = self.conn.clone();
        // Subscribing again is harmless, and it waits for a reconnect in progress.
        tokio::time::timeout(self.timeout, conn.subscribe(&channel))
            .await
            .map_err(|_| StoreError::Timeout(self.timeout))??;
        let mut control = self.control.conn();
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
        // Events arrive within milliseconds; on a loaded machine they may take
        // longer than one call's timeout, and a probe that gives up too soon
        // would stop a daemon whose Redis is fine.
        let patience = self.timeout.max(PROBE_PATIENCE);
        let deadline = tokio::time::Instant::now() + patience;
        let mut seen = Vec::new();
        while !flags::unseen_flags(&seen).is_empty() {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(event)) => seen.push(event),
                Ok(None) | Err(_) => break,
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
                within: patience,
            },
        })
    }
}
