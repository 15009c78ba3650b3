//! Builds a daemon from its configuration and serves until told to stop.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use lockd_redis::conn::{is_unreachable, redacted_url};
use lockd_redis::flags::ConfigCheck;
use lockd_redis::{Notice, RedisOptions, RedisStore, StoreError};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::core::{Health, LockCore};
use crate::error::DaemonError;
use crate::metrics::Metrics;
use crate::pb;
use crate::pb::lock_service_server::LockServiceServer;
use crate::service::LockApi;
use crate::stats::StatsRecorder;
use crate::store::{MemoryStore, Store};
use crate::waiters::{self, Waiters};

/// How often the store's health is checked.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// How often due resources are swept: the bound on how late an expiry that
/// no operation sees is counted.
const REAP_INTERVAL: Duration = Duration::from_secs(1);

/// First pause between attempts to reach Redis at startup.
const CONNECT_FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// Longest pause between attempts to reach Redis at startup: short enough
/// that a daemon serves within seconds of Redis coming up.
const CONNECT_MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Serves lockd on `listener` until `shutdown` resolves, then goes NOT_SERVING,
/// ends waiting calls with UNAVAILABLE (leases stay in the store) and returns.
///
/// gRPC (and HTTP) serve at once, also while Redis is down: liveness SERVING,
/// readiness NOT_SERVING and lock calls UNAVAILABLE until Redis answers and
/// passes the startup checks. A check that fails for a reason of
/// configuration stops the daemon with that error; retrying cannot fix it.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    config.validate()?;
    let (notices, mut notice_rx) = mpsc::unbounded_channel();
    // A Redis store starts empty and is published whole once checked (see
    // `RedisSlot`): every task below may hold it from the start.
    let store = Arc::new(if config.dev {
        Store::Memory(MemoryStore::new(notices.clone()))
    } else {
        Store::redis_pending()
    });
    let metrics = Arc::new(Metrics::new(config.max_ttl, config.max_wait));
    let stats = Arc::new(StatsRecorder::new(Arc::clone(&metrics)));
    let stop = CancellationToken::new();
    let (watch, watch_rx) = if config.dev {
        (None, None)
    } else {
        let (tx, rx) = mpsc::unbounded_channel();
        (Some(tx), Some(rx))
    };
    let waiters = Arc::new(Waiters::new(
        Arc::clone(&store),
        config.waiter_liveness,
        config.max_wait + Duration::from_millis(lockd_core::engine::WAIT_GRACE_MS) + config.max_ttl,
        config.max_queue,
        Arc::clone(&stats),
        watch,
        stop.child_token(),
    ));
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = Arc::new(Health::new(reporter));
    health.set_alive(true).await;
    health.set(false).await;
    let core = Arc::new(LockCore::new(
        Arc::clone(&store),
        Arc::clone(&waiters),
        config.limits(),
        Arc::clone(&stats),
        Arc::clone(&metrics),
        Arc::clone(&health),
    ));

    let background = CancellationToken::new();
    let on_notice = Arc::clone(&waiters);
    tokio::spawn(async move {
        while let Some(notice) = notice_rx.recv().await {
            on_notice.on_notice(notice);
        }
    });
    tokio::spawn(keep_alive(
        Arc::clone(&waiters),
        config.waiter_liveness / 5,
        background.clone(),
    ));
    let ready = StoreTasks {
        waiters: Arc::clone(&waiters),
        store: Arc::clone(&store),
        health: Arc::clone(&health),
        metrics: Arc::clone(&metrics),
        stop: background.clone(),
    };
    // A configuration Redis refuses, found once it answers.
    let (failed_tx, failed_rx) = oneshot::channel::<DaemonError>();
    if config.dev {
        ready.start(None, None).await;
    } else {
        let options = redis_options(&config);
        let stop = background.clone();
        tokio::spawn(async move {
            match connect_redis(&options, notices, &ready.metrics, &stop).await {
                Ok(Some((redis, notifier))) => {
                    redis.set_observer(ready.metrics.redis_observer());
                    if ready.store.publish(redis) {
                        ready.start(Some(notifier), watch_rx).await;
                    }
                }
                Ok(None) => {}
                Err(err) => {
                    let _ = failed_tx.send(err);
                }
            }
        });
    }
    if let Some(addr) = config.http_listen {
        let http = TcpListener::bind(addr).await.map_err(DaemonError::Http)?;
        tracing::info!(%addr, "http serving /metrics and the REST API");
        let core = Arc::clone(&core);
        let stop = background.clone();
        tokio::spawn(async move {
            if let Err(err) = crate::http::serve(http, core, stop).await {
                tracing::error!(error = %err, "http server failed");
            }
        });
    }

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let redis_url = (!config.dev).then(|| redacted_url(&config.redis_url));
    tracing::info!(
        addr = %listener.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string()),
        store = if config.dev { "memory (--dev)" } else { "redis" },
        redis_url = redis_url.as_deref().unwrap_or("-"),
        "lockd serving"
    );
    if !config.dev && config.quarantine() < config.max_ttl {
        tracing::warn!(
            failover_quarantine = %humantime::format_duration(config.quarantine()),
            max_ttl = %humantime::format_duration(config.max_ttl),
            "--failover-quarantine is shorter than --max-ttl: after a redis failover a lease lost with the old primary may still be held when its resource is granted again"
        );
    }
    let (why_tx, why_rx) = oneshot::channel::<DaemonError>();
    let stopping = {
        let health = Arc::clone(&health);
        let background = background.clone();
        async move {
            let failed = tokio::select! {
                _ = shutdown => None,
                Ok(err) = failed_rx => Some(err),
            };
            match &failed {
                None => tracing::info!("shutting down"),
                Some(err) => tracing::error!(error = %err, "cannot use redis: shutting down"),
            }
            background.cancel();
            health.stop().await;
            health.set_alive(false).await;
            stop.cancel();
            if let Some(err) = failed {
                let _ = why_tx.send(err);
            }
        }
    };
    // Nagle's algorithm against delayed ACKs stalls small replies by 40 ms;
    // the builder's own nodelay applies only to listeners it binds itself.
    let incoming = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(30)));
    let served = tonic::transport::Server::builder()
        // Dead client connections drop their streams, and so their waits.
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(LockServiceServer::new(LockApi::new(Arc::clone(&core))))
        .serve_with_incoming_shutdown(incoming, stopping)
        .await;
    background.cancel();
    waiters.close(config.shutdown_grace).await;
    served?;
    match why_rx.await {
        Ok(err) => Err(err),
        Err(_) => Ok(()),
    }
}

/// What runs on a store once it is usable: started only after a Redis
/// store is published, so none of it sees a store that is not ready.
struct StoreTasks {
    waiters: Arc<Waiters>,
    store: Arc<Store>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
}

impl StoreTasks {
    /// Starts the notification watcher, the reaper and the health watcher,
    /// and goes SERVING.
    async fn start(
        self,
        notifier: Option<Arc<lockd_redis::Notifier>>,
        watch_rx: Option<mpsc::UnboundedReceiver<String>>,
    ) {
        if let (Some(notifier), Some(rx)) = (notifier.clone(), watch_rx) {
            tokio::spawn(waiters::run_watcher(
                Arc::clone(&self.waiters),
                notifier,
                rx,
            ));
        }
        tokio::spawn(reap(
            Arc::clone(&self.waiters),
            Arc::clone(&self.store),
            self.stop.clone(),
        ));
        self.metrics.set_store_up(true);
        self.health.set(true).await;
        tokio::spawn(watch_health(
            self.health,
            self.store,
            notifier,
            self.metrics,
            self.stop,
        ));
    }
}

fn redis_options(config: &Config) -> RedisOptions {
    RedisOptions {
        url: config.redis_url.clone(),
        ca_file: config.redis_ca.clone(),
        key_prefix: config.key_prefix.clone(),
        connections: config.redis_connections,
        timeout: config.redis_timeout,
        list_held_index: config.list_held_index,
        max_ttl: config.max_ttl,
        failover_quarantine: config.quarantine(),
        min_replicas_ack: config.replicas_ack(),
        replicas_timeout: config.replicas_timeout(),
    }
}

/// Connects to Redis and runs the startup checks, retrying with backoff
/// (doubling, jittered, up to [`CONNECT_MAX_BACKOFF`]) while Redis does not
/// answer. Fails at once on anything retrying cannot fix; `None` if the
/// daemon is stopped first.
async fn connect_redis(
    options: &RedisOptions,
    notices: mpsc::UnboundedSender<Notice>,
    metrics: &Metrics,
    stop: &CancellationToken,
) -> Result<Option<(RedisStore, Arc<lockd_redis::Notifier>)>, DaemonError> {
    // Logged with every failure so the operator sees where lockd looks,
    // never with the password.
    let url = redacted_url(&options.url);
    let mut backoff = CONNECT_FIRST_BACKOFF;
    for attempt in 1u32.. {
        let opened = tokio::select! {
            opened = open_redis(options, notices.clone()) => opened,
            _ = stop.cancelled() => return Ok(None),
        };
        match opened {
            Ok(opened) => {
                if attempt > 1 {
                    tracing::info!(%url, attempt, "redis reachable: serving");
                }
                return Ok(Some(opened));
            }
            Err(err) if is_unreachable(&err) => {
                metrics.set_store_up(false);
                let pause = jittered(backoff);
                tracing::warn!(
                    %url,
                    error = %err,
                    attempt,
                    retry_in = ?pause,
                    "redis not reachable yet: not serving, retrying"
                );
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.cancelled() => return Ok(None),
                }
                backoff = (backoff * 2).min(CONNECT_MAX_BACKOFF);
            }
            Err(err) => {
                let err = lockd_redis::StoreError::unusable(&url, err);
                tracing::error!(error = %err, "redis cannot be used as configured");
                return Err(err.into());
            }
        }
    }
    Ok(None)
}

/// Between half and all of `pause`, so that daemons restarted together do
/// not all knock on Redis at the same instant.
fn jittered(pause: Duration) -> Duration {
    // Random enough for spreading retries; no need for a generator crate.
    let fraction = (uuid::Uuid::new_v4().as_u128() % 1000) as u32;
    pause / 2 + pause / 2 * fraction / 1000
}

/// One attempt: the store with its startup checks (layout, eviction), then
/// the notification connection and its check. Nothing is kept of a failed
/// attempt.
async fn open_redis(
    options: &RedisOptions,
    notices: mpsc::UnboundedSender<Notice>,
) -> Result<(RedisStore, Arc<lockd_redis::Notifier>), StoreError> {
    let redis = RedisStore::connect(options).await?;
    let notifier = redis.notifier(notices).await?.probing();
    // Without notifications every handoff between daemons waits for a
    // periodic sync: refuse to start rather than be silently slow.
    match notifier.ensure_events_patiently().await? {
        ConfigCheck::Unavailable(reason) => tracing::info!(
            %reason,
            "CONFIG is refused; a probe showed keyspace notifications arrive (evicted events cannot be probed)"
        ),
        ConfigCheck::Added { added } => {
            tracing::info!(%added, "turned on keyspace notification flags");
        }
        ConfigCheck::AlreadySet => {}
    }
    Ok((redis, Arc::new(notifier)))
}

/// Keeps this daemon's waiters alive in the store, catches missed
/// notifications and retries owed leaves. Nothing else runs in this loop, so
/// no slow call can delay the syncs that keep this daemon looking alive.
async fn keep_alive(waiters: Arc<Waiters>, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        // Spawns the syncs; it never waits on the store itself.
        waiters.sync_all();
    }
}

/// Sweeps resources whose due time has come, whoever's they are, so that
/// leases that end on resources nobody touches are counted, and grants
/// abandoned by dead daemons are reclaimed, within [`REAP_INTERVAL`].
async fn reap(waiters: Arc<Waiters>, store: Arc<Store>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(REAP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        match store.reap(&waiters.caller()).await {
            Ok(swept) => {
                for (resource, effects) in swept {
                    waiters.handle_effects(&resource, effects);
                }
            }
            Err(err) => tracing::debug!(error = %err, "reaping failed; retrying next tick"),
        }
    }
}

/// NOT_SERVING while any lane of the store does not answer, SERVING again
/// once every lane does, so that no request after the flip runs into a
/// connection that died with the old server. A dropped notification
/// connection triggers a check at once: it is usually the first to know that
/// Redis went away, and the sooner the lanes are pinged, the fewer requests
/// meet a dead connection.
///
/// Keyspace notifications are checked again whenever they may have stopped
/// (the subscription dropped, Redis restarted, the store was unreachable) and
/// before going back to SERVING. Without them locks still work, only slower,
/// through the periodic syncs: that is an alarm (`lockd_notifications_up` 0 and
/// an error per failed attempt, retried with backoff), not NOT_SERVING.
async fn watch_health(
    health: Arc<Health>,
    store: Arc<Store>,
    notifier: Option<Arc<lockd_redis::Notifier>>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut serving = true;
    let mut events = EventsState::new();
    let mut tick = tokio::time::interval(HEALTH_INTERVAL);
    loop {
        let dropped = async {
            match &notifier {
                Some(notifier) => notifier.disconnected().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tick.tick() => {}
            _ = dropped => {}
            _ = stop.cancelled() => return,
        }
        let result = store.ping().await;
        if let Some(notifier) = &notifier {
            // Only a command makes a subscription connection that gave up try again.
            if let Err(err) = notifier.ping().await {
                tracing::debug!(error = %err, "notification connection ping failed");
            }
            if result.is_ok() {
                events.check(notifier, &metrics, !serving).await;
            } else {
                // Whatever happens to Redis meanwhile, look again once it is back.
                events.due = true;
            }
        }
        metrics.set_store_up(result.is_ok());
        match (result, serving) {
            (Err(err), true) => {
                tracing::warn!(store = %store.address(), error = %err, "store unreachable: not serving");
                health.set(false).await;
                serving = false;
            }
            (Ok(()), false) => {
                tracing::info!(store = %store.address(), "store reachable again: serving");
                health.set(true).await;
                serving = true;
            }
            _ => {}
        }
    }
}

/// Longest pause between attempts to restore keyspace notifications.
const EVENTS_MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Whether keyspace notifications work, and when to look again.
struct EventsState {
    /// They arrived at the last check.
    up: bool,
    /// Something happened that may have stopped them.
    due: bool,
    /// Pause before the next attempt while they are off, doubling each time.
    backoff: Duration,
    next_try: tokio::time::Instant,
}

impl EventsState {
    fn new() -> EventsState {
        EventsState {
            up: true,
            due: false,
            backoff: HEALTH_INTERVAL,
            next_try: tokio::time::Instant::now(),
        }
    }

    /// Checks the notifications if they may have stopped or are off and the
    /// backoff has run out; `recovering` forces a check before SERVING.
    async fn check(
        &mut self,
        notifier: &lockd_redis::Notifier,
        metrics: &Metrics,
        recovering: bool,
    ) {
        if let Some(reason) = notifier.changed().await {
            tracing::info!(reason, "checking keyspace notifications again");
            self.due = true;
        }
        let now = tokio::time::Instant::now();
        if !(self.due || recovering || (!self.up && now >= self.next_try)) {
            return;
        }
        self.due = false;
        match notifier.ensure_events().await {
            Ok(_) => {
                if !self.up {
                    tracing::info!("keyspace notifications restored");
                }
                self.up = true;
                self.backoff = HEALTH_INTERVAL;
            }
            Err(err) => {
                tracing::error!(
                    error = %err,
                    retry_in = ?self.backoff,
                    "keyspace notifications are off: waiters are woken only by the periodic sync"
                );
                self.up = false;
                self.next_try = now + self.backoff;
                self.backoff = (self.backoff * 2).min(EVENTS_MAX_BACKOFF);
            }
        }
        metrics.set_notifications_up(self.up);
    }
}
