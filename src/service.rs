//! gRPC handlers of `lockd.v1.LockService`: each adapts its request onto the
//! core and maps errors; the rules live elsewhere.

use std::sync::Arc;

use lockd_core::LockError;
use lockd_core::validate::RawAcquire;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::convert;
use crate::core::{LockCore, WaitEvent};
use crate::error::status;
use crate::pb::lock_service_server::LockService;
use crate::pb::{self, wait_event::Event};

/// The WaitQueue response stream.
pub type WaitStream = std::pin::Pin<Box<dyn Stream<Item = Result<pb::WaitEvent, Status>> + Send>>;

/// The LockService implementation.
pub struct LockApi {
    core: Arc<LockCore>,
}

impl LockApi {
    pub fn new(core: Arc<LockCore>) -> LockApi {
        LockApi { core }
    }
}

impl LockApi {
    /// Runs a handler body, recording its duration and error code.
    async fn observe<T>(
        &self,
        method: &'static str,
        body: impl std::future::Future<Output = Result<T, LockError>>,
    ) -> Result<T, Status> {
        let started = std::time::Instant::now();
        let result = body.await.map_err(status);
        let failed = result.as_ref().err().map(Status::code);
        self.core.metrics().rpc(method, started.elapsed(), failed);
        result
    }
}

fn raw(r: &pb::AcquireRequest) -> RawAcquire<'_> {
    RawAcquire {
        resource: &r.resource,
        mode: r.mode,
        ttl_ms: r.ttl_ms,
        wait_timeout_ms: r.wait_timeout_ms,
        client_id: &r.client_id,
        max_renewals: r.max_renewals,
    }
}

fn queued(position: u64, queue_length: u64) -> pb::WaitEvent {
    pb::WaitEvent {
        event: Some(Event::Queued(pb::Queued {
            position,
            queue_length,
        })),
    }
}

fn granted(lease: lockd_core::Lease) -> pb::WaitEvent {
    pb::WaitEvent {
        event: Some(Event::Granted(pb::Granted {
            lease: Some(convert::lease(lease)),
        })),
    }
}

#[tonic::async_trait]
impl LockService for LockApi {
    async fn acquire(
        &self,
        request: Request<pb::AcquireRequest>,
    ) -> Result<Response<pb::AcquireResponse>, Status> {
        let lease = self
            .observe("Acquire", self.core.acquire(&raw(request.get_ref())))
            .await?;
        Ok(Response::new(pb::AcquireResponse {
            lease: Some(convert::lease(lease)),
        }))
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let r = request.get_ref();
        self.observe("Release", self.core.release(&r.lock_id, &r.client_id))
            .await?;
        Ok(Response::new(pb::ReleaseResponse {}))
    }

    async fn renew(
        &self,
        request: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::RenewResponse>, Status> {
        let r = request.get_ref();
        let lease = self
            .observe("Renew", self.core.renew(&r.lock_id, &r.client_id, r.ttl_ms))
            .await?;
        Ok(Response::new(pb::RenewResponse {
            lease: Some(convert::lease(lease)),
        }))
    }

    type WaitQueueStream = WaitStream;

    async fn wait_queue(
        &self,
        request: Request<pb::AcquireRequest>,
    ) -> Result<Response<Self::WaitQueueStream>, Status> {
        let started = std::time::Instant::now();
        let events = self
            .observe("WaitQueue", self.core.wait(&raw(request.get_ref())))
            .await?;
        let core = Arc::clone(&self.core);
        let events = events.map(move |event| match event {
            Ok(WaitEvent::Queued {
                position,
                queue_length,
            }) => Ok(queued(position, queue_length)),
            Ok(WaitEvent::Granted(lease)) => Ok(granted(lease)),
            Err(err) => {
                let err = status(err);
                core.metrics()
                    .rpc("WaitQueue", started.elapsed(), Some(err.code()));
                Err(err)
            }
        });
        Ok(Response::new(Box::pin(events)))
    }

    async fn get_lock(
        &self,
        request: Request<pb::GetLockRequest>,
    ) -> Result<Response<pb::GetLockResponse>, Status> {
        let lease = self
            .observe("GetLock", self.core.get(&request.get_ref().lock_id))
            .await?;
        Ok(Response::new(pb::GetLockResponse {
            lease: Some(convert::lease(lease)),
        }))
    }

    async fn list_held(
        &self,
        request: Request<pb::ListHeldRequest>,
    ) -> Result<Response<pb::ListHeldResponse>, Status> {
        let leases = self
            .observe("ListHeld", self.core.held(&request.get_ref().client_id))
            .await?;
        Ok(Response::new(pb::ListHeldResponse {
            leases: leases.into_iter().map(convert::lease).collect(),
        }))
    }

    async fn get_queue(
        &self,
        request: Request<pb::GetQueueRequest>,
    ) -> Result<Response<pb::GetQueueResponse>, Status> {
        let resource = request.into_inner().resource;
        let view = self.observe("GetQueue", self.core.queue(&resource)).await?;
        Ok(Response::new(pb::GetQueueResponse {
            resource,
            holders: view.holders.into_iter().map(convert::lease).collect(),
            waiters: view.waiters.into_iter().map(convert::waiter).collect(),
        }))
    }

    async fn get_stats(
        &self,
        _request: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::GetStatsResponse>, Status> {
        let stats = self.observe("GetStats", self.core.stats()).await?;
        Ok(Response::new(convert::stats(stats)))
    }
}
