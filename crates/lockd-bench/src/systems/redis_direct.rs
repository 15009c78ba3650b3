//! Locks straight on Redis: `SET key token NX PX ttl` to take, a compare-and-delete
//! script to release, all through one shared multiplexed connection. No queue,
//! no fairness, no fencing: a busy lock is retried after a short pause.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use futures::future::BoxFuture;
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;

use super::{Held, LockReq, LockSystem, Waiting};

/// Deletes the key only if it still holds this client's token.
const RELEASE: &str = r"if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

#[derive(Clone)]
pub struct RedisDirect {
    inner: Arc<Inner>,
}

struct Inner {
    conn: MultiplexedConnection,
    release: redis::Script,
    /// Pause between attempts on a busy lock.
    spin: Duration,
}

impl RedisDirect {
    pub async fn connect(url: &str, spin: Duration) -> Result<Self> {
        let client = redis::Client::open(url).with_context(|| format!("bad Redis URL {url}"))?;
        // The default 500 ms response timeout would turn a queueing spike into errors.
        let config =
            AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(10)));
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        Ok(RedisDirect {
            inner: Arc::new(Inner {
                conn,
                release: redis::Script::new(RELEASE),
                spin,
            }),
        })
    }

    /// One SET NX attempt; `Some` if it took the lock.
    async fn try_once(&self, req: &LockReq, token: &str) -> Result<Option<Held>> {
        let mut conn = self.inner.conn.clone();
        let sent = SystemTime::now();
        let reply: Option<String> = redis::cmd("SET")
            .arg(&req.resource)
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(req.ttl_ms)
            .query_async(&mut conn)
            .await
            .context("SET NX PX")?;
        Ok(reply.map(|_| Held {
            resource: req.resource.clone(),
            client_id: req.client_id.clone(),
            handle: token.to_string(),
            lease_id: 0,
            fencing: None,
            ttl_ms: req.ttl_ms,
            // Redis starts the TTL when it runs the command, just after `sent`.
            expires_at: sent + Duration::from_millis(req.ttl_ms),
        }))
    }

    /// Retries until taken or until `deadline`.
    async fn spin_until(&self, req: &LockReq, token: &str, deadline: Instant) -> Result<Held> {
        loop {
            if let Some(h) = self.try_once(req, token).await? {
                return Ok(h);
            }
            if Instant::now() >= deadline {
                bail!("lock {} still busy after {:?}", req.resource, req.wait);
            }
            tokio::time::sleep(self.inner.spin).await;
        }
    }
}

fn new_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

impl LockSystem for RedisDirect {
    fn name(&self) -> &'static str {
        "redis-direct"
    }

    fn fair(&self) -> bool {
        false
    }

    fn acquire<'a>(&'a self, _slot: usize, req: &'a LockReq) -> BoxFuture<'a, Result<Held>> {
        Box::pin(async move {
            let deadline = Instant::now() + req.wait;
            self.spin_until(req, &new_token(), deadline).await
        })
    }

    fn release<'a>(&'a self, _slot: usize, h: &'a Held) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut conn = self.inner.conn.clone();
            let deleted: i64 = self
                .inner
                .release
                .key(&h.resource)
                .arg(&h.handle)
                .invoke_async(&mut conn)
                .await
                .context("release script")?;
            if deleted == 0 {
                bail!("lock {} was no longer held (expired?)", h.resource);
            }
            Ok(())
        })
    }

    /// There is no line to join: one attempt now, then retries every `spin`.
    fn join_queue<'a>(&'a self, _slot: usize, req: &'a LockReq) -> BoxFuture<'a, Result<Waiting>> {
        Box::pin(async move {
            let deadline = Instant::now() + req.wait;
            let token = new_token();
            if let Some(h) = self.try_once(req, &token).await? {
                return Ok(Waiting {
                    position: None,
                    grant: Box::pin(async move { Ok(h) }),
                });
            }
            let me = self.clone();
            let req = req.clone();
            Ok(Waiting {
                position: None,
                grant: Box::pin(async move { me.spin_until(&req, &token, deadline).await }),
            })
        })
    }
}
