//! etcd's own v3 Lock API through the `etcd-client` crate: grant a lease, Lock
//! with it, and to release, Unlock and revoke the lease.
//!
//! etcd's lock server does not keep a waiter's lease alive, so while a request
//! waits longer than a third of its TTL this client sends keep-alives itself;
//! the lease's expiry is then estimated from the last one sent.

use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use etcd_client::{Client, ConnectOptions, GetOptions, LockOptions};
use futures::future::BoxFuture;

use super::{AbortOnDrop, Held, LockReq, LockSystem, Waiting};

pub struct Etcd {
    /// Each client is one HTTP/2 connection.
    clients: Vec<Client>,
}

impl Etcd {
    pub async fn connect(endpoint: &str, connections: usize) -> Result<Self> {
        let mut clients = Vec::new();
        for _ in 0..connections.max(1) {
            let client = Client::connect([endpoint], None)
                .await
                .with_context(|| format!("connecting to etcd at {endpoint}"))?;
            clients.push(client);
        }
        Ok(Etcd { clients })
    }

    /// One client per endpoint, each with a deadline on every request: slot
    /// `n` talks to `endpoints[n % len]` only, so a caller picks the member.
    pub async fn connect_each(endpoints: &[String], timeout: Duration) -> Result<Self> {
        let options = ConnectOptions::new()
            .with_timeout(timeout)
            .with_connect_timeout(timeout);
        let mut clients = Vec::new();
        for endpoint in endpoints {
            let client = Client::connect([endpoint], Some(options.clone()))
                .await
                .with_context(|| format!("connecting to etcd at {endpoint}"))?;
            clients.push(client);
        }
        Ok(Etcd { clients })
    }

    fn client(&self, slot: usize) -> Client {
        self.clients[slot % self.clients.len()].clone()
    }
}

/// etcd leases are in whole seconds; etcd raises a TTL below its minimum
/// (2 s with default election settings) and says so in the grant's reply.
fn ttl_secs(ttl_ms: u64) -> i64 {
    ttl_ms.div_ceil(1000).max(1) as i64
}

/// A granted lease and when it was asked for.
struct Lease {
    id: i64,
    ttl: Duration,
    granted_at: SystemTime,
}

async fn grant(client: &mut Client, ttl_ms: u64) -> Result<Lease> {
    let granted_at = SystemTime::now();
    let resp = client
        .lease_grant(ttl_secs(ttl_ms), None)
        .await
        .context("LeaseGrant")?;
    Ok(Lease {
        id: resp.id(),
        ttl: Duration::from_secs(resp.ttl().max(1) as u64),
        granted_at,
    })
}

/// Revokes a lease when dropped unless disarmed. etcd leaves a cancelled Lock
/// call's key in place until its lease ends, so a request given up on (an error,
/// a timeout, a dropped [`Waiting`]) would block everyone behind it in line.
struct RevokeOnDrop {
    client: Client,
    lease: i64,
    armed: bool,
}

impl RevokeOnDrop {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for RevokeOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (mut client, lease) = (self.client.clone(), self.lease);
            rt.spawn(async move {
                let _ = client.lease_revoke(lease).await;
            });
        }
    }
}

/// Locks `req.resource` with `lease`, keeping the lease alive while waiting.
/// Unless it succeeds, the lease is revoked, which also removes the request.
async fn lock_with(mut client: Client, req: LockReq, lease: Lease) -> Result<Held> {
    let guard = RevokeOnDrop {
        client: client.clone(),
        lease: lease.id,
        armed: true,
    };
    let mut lock_client = client.clone();
    let lock = lock_client.lock(
        req.resource.clone(),
        Some(LockOptions::new().with_lease(lease.id)),
    );
    tokio::pin!(lock);
    let deadline = tokio::time::sleep(req.wait);
    tokio::pin!(deadline);
    let every = lease.ttl / 3;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut keeper = None;
    let mut refreshed_at = lease.granted_at;
    let outcome: Result<Vec<u8>> = loop {
        tokio::select! {
            r = &mut lock => break r.map(|resp| resp.key().to_vec()).context("Lock"),
            _ = ticker.tick() => {
                tracing::debug!(lease = lease.id, ttl = ?lease.ttl, "keeping a waiting lease alive");
                if keeper.is_none() {
                    match client.lease_keep_alive(lease.id).await {
                        Ok(k) => keeper = Some(k),
                        Err(e) => break Err(anyhow::Error::new(e).context("LeaseKeepAlive")),
                    }
                }
                if let Some((k, stream)) = keeper.as_mut() {
                    let sent = SystemTime::now();
                    let ok = k.keep_alive().await.is_ok() && matches!(stream.message().await, Ok(Some(_)));
                    if !ok {
                        break Err(anyhow::anyhow!("lease keep-alive failed while waiting"));
                    }
                    refreshed_at = sent;
                }
            }
            _ = &mut deadline => break Err(anyhow::anyhow!("lock {} still busy after {:?}", req.resource, req.wait)),
        }
    };
    let key = outcome?;
    let held = Held {
        resource: req.resource,
        client_id: req.client_id,
        handle: String::from_utf8(key).context("lock key is not UTF-8")?,
        lease_id: lease.id,
        fencing: None,
        ttl_ms: lease.ttl.as_millis() as u64,
        expires_at: refreshed_at + lease.ttl,
    };
    guard.disarm();
    Ok(held)
}

impl LockSystem for Etcd {
    fn name(&self) -> &'static str {
        "etcd"
    }

    fn fair(&self) -> bool {
        true
    }

    fn acquire<'a>(&'a self, slot: usize, req: &'a LockReq) -> BoxFuture<'a, Result<Held>> {
        Box::pin(async move {
            let mut client = self.client(slot);
            let lease = grant(&mut client, req.ttl_ms).await?;
            lock_with(client, req.clone(), lease).await
        })
    }

    fn release<'a>(&'a self, slot: usize, h: &'a Held) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut client = self.client(slot);
            client.unlock(h.handle.clone()).await.context("Unlock")?;
            client
                .lease_revoke(h.lease_id)
                .await
                .context("LeaseRevoke")?;
            Ok(())
        })
    }

    /// Starts Lock in a task, then polls until its key (`<name>/<lease hex>`,
    /// which etcd writes before it starts waiting) exists. A serializable read is
    /// enough on a single node and spares a Raft round per poll.
    fn join_queue<'a>(&'a self, slot: usize, req: &'a LockReq) -> BoxFuture<'a, Result<Waiting>> {
        Box::pin(async move {
            let mut client = self.client(slot);
            let lease = grant(&mut client, req.ttl_ms).await?;
            let key = format!("{}/{:x}", req.resource, lease.id);
            // If this future is dropped while polling, the task is aborted and
            // its own guard revokes the lease.
            let task = AbortOnDrop(tokio::spawn(lock_with(client.clone(), req.clone(), lease)));
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if task.0.is_finished() {
                    break;
                }
                let found = client
                    .get(
                        key.clone(),
                        Some(GetOptions::new().with_count_only().with_serializable()),
                    )
                    .await
                    .context("Range (is the lock key there yet?)")?;
                if found.count() > 0 {
                    break;
                }
                if Instant::now() >= deadline {
                    bail!("lock key {key} did not appear within 10 s");
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Ok(Waiting {
                position: None,
                grant: Box::pin(async move {
                    let mut task = task;
                    (&mut task.0).await.context("lock task")?
                }),
            })
        })
    }
}
