//! Acquire retried after UNAVAILABLE: a rolling restart, and a Redis that stops answering.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lockd_client::Client;
use lockd_testkit::{Lockd, RedisServer, unique};
use tokio::net::{TcpListener, TcpStream};

use crate::{DaemonClient, eventually};

/// A TCP forwarder standing in for a load balancer: new connections go to
/// whichever daemon `target` names at the time.
struct Proxy {
    addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let target = Arc::new(Mutex::new(target));
        let current = Arc::clone(&target);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let to = *current.lock().unwrap();
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Proxy { addr, target }
    }

    fn point_at(&self, target: SocketAddr) {
        *self.target.lock().unwrap() = target;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_survives_a_rolling_restart_within_its_wait() {
    let redis = RedisServer::start();
    let url = redis.url();
    let old = Lockd::start(&["--redis-url", &url]);
    let new = Lockd::start(&["--redis-url", &url]);
    old.ready().await;
    new.ready().await;
    let proxy = Proxy::start(old.addr()).await;
    let resource = unique("rolling");

    let holder = new.client().await;
    let held = holder
        .lock(resource.as_str())
        .ttl(Duration::from_secs(10))
        .acquire()
        .await
        .expect("holder acquires");

    let waiter = Client::connect(format!("http://{}", proxy.addr))
        .await
        .expect("connect through the proxy")
        .with_client_id(unique("waiter"));
    let started = Instant::now();
    let waiting = tokio::spawn({
        let resource = resource.clone();
        async move {
            waiter
                .lock(resource)
                .ttl(Duration::from_secs(10))
                .wait(Duration::from_secs(15))
                .acquire()
                .await
        }
    });
    eventually(Duration::from_secs(5), "the waiter to queue", || async {
        let snapshot = holder.queue_snapshot(&resource).await.ok()?;
        (!snapshot.waiters.is_empty()).then_some(())
    })
    .await;

    // The rolling restart: the balancer sends new connections to the new
    // daemon, and the old one is told to stop while the waiter waits on it.
    proxy.point_at(new.addr());
    let mut old = old;
    let stopped = tokio::task::spawn_blocking(move || old.terminate())
        .await
        .expect("terminate the old daemon");
    assert!(stopped.success(), "the old daemon exited with {stopped}");
    held.release().await.expect("holder releases");

    let guard = tokio::time::timeout(Duration::from_secs(15), waiting)
        .await
        .expect("the acquire returns within its wait")
        .expect("the acquire task")
        .expect("the acquire is retried on the new daemon and granted");
    assert!(started.elapsed() < Duration::from_secs(15));
    let snapshot = holder.queue_snapshot(&resource).await.expect("GetQueue");
    assert_eq!(snapshot.holders.len(), 1, "{snapshot:?}");
    assert!(snapshot.waiters.is_empty(), "{snapshot:?}");
    guard.release().await.expect("release");
}

#[tokio::test]
async fn acquire_outlasts_a_redis_pause_within_its_wait() {
    let redis = RedisServer::start();
    let daemon = Lockd::start(&["--redis-url", &redis.url()]);
    daemon.ready().await;
    let client = daemon.client().await;
    let resource = unique("blip");

    redis.pause();
    let started = Instant::now();
    let acquire = client
        .lock(resource.as_str())
        .ttl(Duration::from_secs(10))
        .wait(Duration::from_secs(10))
        .acquire();
    let resume = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        redis.resume();
    };
    let (guard, ()) = tokio::join!(acquire, resume);
    let guard = guard.expect("the acquire is retried once Redis answers again");
    assert!(started.elapsed() < Duration::from_secs(10));
    let held = client
        .list_held(client.client_id())
        .await
        .expect("ListHeld");
    assert_eq!(held.len(), 1, "exactly one lease: {held:?}");
    guard.release().await.expect("release");
}

#[tokio::test]
async fn retries_stop_at_the_callers_wait() {
    // Nothing listens on port 1: every attempt is UNAVAILABLE at once.
    let client = Client::connect_lazy("127.0.0.1:1").expect("lazy client");
    let started = Instant::now();
    let err = client
        .lock("never")
        .wait(Duration::from_millis(700))
        .acquire()
        .await
        .expect_err("nothing to acquire from");
    assert!(err.is_retryable(), "{err}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(200),
        "gave up at once: {took:?}"
    );
    assert!(
        took < Duration::from_millis(900),
        "waited past the wait: {took:?}"
    );
}
