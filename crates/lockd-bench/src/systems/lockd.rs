//! lockd through its gRPC API (both the Redis backend and `--dev`).

use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use futures::future::BoxFuture;
use lockd_client::pb;
use lockd_client::pb::lock_service_client::LockServiceClient;
use tonic::transport::{Channel, Endpoint};

use super::{Held, LockReq, LockSystem, Waiting};

/// Logical clients spread over a few shared HTTP/2 channels.
pub struct Lockd {
    name: &'static str,
    /// With several endpoints the channels alternate between them, so that
    /// consecutive slots talk to different replicas.
    clients: Vec<LockServiceClient<Channel>>,
}

impl Lockd {
    /// Opens `per_endpoint` channels to each endpoint.
    pub async fn connect(
        name: &'static str,
        endpoints: &[String],
        per_endpoint: usize,
    ) -> Result<Self> {
        let mut clients = Vec::new();
        for _ in 0..per_endpoint.max(1) {
            for ep in endpoints {
                let channel = connect_channel(ep).await?;
                clients.push(LockServiceClient::new(channel));
            }
        }
        Ok(Lockd { name, clients })
    }

    /// Renews a lease for its own ttl_ms.
    pub async fn renew(&self, slot: usize, h: &Held) -> Result<()> {
        self.client(slot)
            .renew(pb::RenewRequest {
                lock_id: h.handle.clone(),
                client_id: h.client_id.clone(),
                ttl_ms: 0,
            })
            .await
            .map_err(|s| status_err("Renew", s))?;
        Ok(())
    }

    fn client(&self, slot: usize) -> LockServiceClient<Channel> {
        self.clients[slot % self.clients.len()].clone()
    }
}

/// One HTTP/2 connection to `addr` (host:port, or a URL).
pub async fn connect_channel(addr: &str) -> Result<Channel> {
    let url = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    Endpoint::from_shared(url.clone())
        .with_context(|| format!("bad endpoint {addr}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connecting to {url}"))
}

fn request(req: &LockReq) -> pb::AcquireRequest {
    pb::AcquireRequest {
        resource: req.resource.clone(),
        mode: pb::LockMode::Exclusive as i32,
        ttl_ms: req.ttl_ms,
        wait_timeout_ms: Some(req.wait.as_millis() as u64),
        client_id: req.client_id.clone(),
        max_renewals: 0,
    }
}

fn held(lease: pb::Lease) -> Held {
    let expires_at = lease
        .expires_at
        .map(|t| {
            SystemTime::UNIX_EPOCH + Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32)
        })
        .unwrap_or(SystemTime::UNIX_EPOCH);
    Held {
        resource: lease.resource,
        client_id: lease.client_id,
        handle: lease.lock_id,
        lease_id: 0,
        fencing: Some(lease.fencing_token),
        ttl_ms: lease.ttl_ms,
        expires_at,
    }
}

fn status_err(op: &str, s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{op}: {:?}: {}", s.code(), s.message())
}

impl LockSystem for Lockd {
    fn name(&self) -> &'static str {
        self.name
    }

    fn fair(&self) -> bool {
        true
    }

    fn acquire<'a>(&'a self, slot: usize, req: &'a LockReq) -> BoxFuture<'a, Result<Held>> {
        Box::pin(async move {
            let resp = self
                .client(slot)
                .acquire(request(req))
                .await
                .map_err(|s| status_err("Acquire", s))?
                .into_inner();
            Ok(held(resp.lease.context("Acquire returned no lease")?))
        })
    }

    fn release<'a>(&'a self, slot: usize, h: &'a Held) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.client(slot)
                .release(pb::ReleaseRequest {
                    lock_id: h.handle.clone(),
                    client_id: h.client_id.clone(),
                })
                .await
                .map_err(|s| status_err("Release", s))?;
            Ok(())
        })
    }

    /// Uses WaitQueue, whose first message (Queued) says the request is in line.
    fn join_queue<'a>(&'a self, slot: usize, req: &'a LockReq) -> BoxFuture<'a, Result<Waiting>> {
        Box::pin(async move {
            let mut stream = self
                .client(slot)
                .wait_queue(request(req))
                .await
                .map_err(|s| status_err("WaitQueue", s))?
                .into_inner();
            let first = stream
                .message()
                .await
                .map_err(|s| status_err("WaitQueue", s))?
                .context("WaitQueue ended before its first event")?;
            match first.event {
                Some(pb::wait_event::Event::Granted(g)) => {
                    let lease = held(g.lease.context("Granted without a lease")?);
                    Ok(Waiting {
                        position: None,
                        grant: Box::pin(async move { Ok(lease) }),
                    })
                }
                Some(pb::wait_event::Event::Queued(q)) => Ok(Waiting {
                    position: Some(q.position),
                    grant: Box::pin(async move {
                        loop {
                            let ev = stream
                                .message()
                                .await
                                .map_err(|s| status_err("WaitQueue", s))?
                                .context("WaitQueue ended without a grant")?;
                            match ev.event {
                                Some(pb::wait_event::Event::Granted(g)) => {
                                    return Ok(held(g.lease.context("Granted without a lease")?));
                                }
                                Some(pb::wait_event::Event::Queued(_)) => continue,
                                None => bail!("WaitQueue sent an empty event"),
                            }
                        }
                    }),
                }),
                None => bail!("WaitQueue sent an empty first event"),
            }
        })
    }
}
