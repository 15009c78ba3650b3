//! The REST API of the original brief: each handler adapts its JSON onto the
//! core, exactly as the gRPC handlers do, so both APIs contend for the same locks.

use std::future::Future;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Json, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use lockd_core::validate::RawAcquire;
use lockd_core::{LockError, LockMode};
use serde::Serialize;

use super::error::ApiError;
use super::json::{
    AcquireBody, HealthJson, HeldQuery, LeaseJson, QueueJson, QueueQuery, ReleaseBody, RenewBody,
    StatsJson, Success, WaiterJson, rfc3339,
};
use crate::core::LockCore;

type Core = State<Arc<LockCore>>;
type ApiResult<T> = Result<Json<Success<T>>, ApiError>;

/// The routes under /api/locks, and /health.
pub fn routes() -> Router<Arc<LockCore>> {
    Router::new()
        .route("/api/locks/acquire", post(acquire))
        .route("/api/locks/exclusive", post(exclusive))
        .route("/api/locks/shared", post(shared))
        .route("/api/locks/read-write", post(read_write))
        .route("/api/locks/release", post(release))
        .route("/api/locks/renew", post(renew))
        .route("/api/locks/{lock_id}/status", get(status))
        .route("/api/locks/held", get(held))
        .route("/api/locks/queue", get(queue))
        .route("/api/locks/stats", get(stats))
        .route("/api/locks/health", get(health))
        .route("/health", get(health))
}

/// Runs a core call, recording it like an RPC (under `http.<Method>`) so that
/// REST traffic shows in the same duration, error and wait-timeout metrics.
async fn observe<T>(
    core: &LockCore,
    method: &'static str,
    body: impl Future<Output = Result<T, LockError>>,
) -> Result<T, ApiError> {
    let started = Instant::now();
    let result = body.await;
    let failed = result.as_ref().err().map(crate::error::code);
    core.metrics().rpc(method, started.elapsed(), failed);
    result.map_err(ApiError::from)
}

/// Which lock types an acquire endpoint hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    /// /api/locks/acquire: any, chosen by `type` (and `access` for read-write).
    Any,
    Exclusive,
    Shared,
    /// /api/locks/read-write: read or write, chosen by `access`.
    ReadWrite,
}

impl Endpoint {
    /// The `type` this endpoint implies.
    fn kind(self) -> Option<&'static str> {
        match self {
            Endpoint::Any => None,
            Endpoint::Exclusive => Some("exclusive"),
            Endpoint::Shared => Some("shared"),
            Endpoint::ReadWrite => Some("read-write"),
        }
    }
}

/// The lock mode of an acquire request: `type` is one of exclusive, shared,
/// read, write or read-write; read-write needs `access` (read or write). On a
/// typed endpoint `type` may be left out, and if given must agree.
fn lock_mode(
    endpoint: Endpoint,
    kind: Option<&str>,
    access: Option<&str>,
) -> Result<LockMode, ApiError> {
    let access = access
        .map(|a| match a {
            "read" => Ok(LockMode::Read),
            "write" => Ok(LockMode::Write),
            other => Err(ApiError::invalid(
                "access",
                format!("unknown access {other:?}; expected read or write"),
            )),
        })
        .transpose()?;
    if let (Some(given), Some(implied)) = (kind, endpoint.kind())
        && given != implied
    {
        return Err(ApiError::invalid(
            "type",
            format!("this endpoint takes {implied} locks, not {given:?}"),
        ));
    }
    match kind.or(endpoint.kind()) {
        Some("read-write") => access.ok_or_else(|| {
            ApiError::invalid("access", "required for a read-write lock: read or write")
        }),
        None => Ok(access.unwrap_or(LockMode::Exclusive)),
        Some(name) => {
            let mode = match name {
                "exclusive" => LockMode::Exclusive,
                "shared" => LockMode::Shared,
                "read" => LockMode::Read,
                "write" => LockMode::Write,
                other => {
                    return Err(ApiError::invalid(
                        "type",
                        format!(
                            "unknown type {other:?}; expected exclusive, shared, read, write or read-write"
                        ),
                    ));
                }
            };
            match access {
                Some(side) if side != mode => Err(ApiError::invalid(
                    "access",
                    format!("{side} does not go with type {name}; use type read-write"),
                )),
                _ => Ok(mode),
            }
        }
    }
}

/// Acquires as `endpoint` allows; 201 with the lease.
async fn acquire_as(
    core: &LockCore,
    endpoint: Endpoint,
    body: Result<Json<AcquireBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Success<LeaseJson>>), ApiError> {
    let Json(body) = body?;
    let mode = lock_mode(endpoint, body.kind.as_deref(), body.access.as_deref())?;
    let raw = RawAcquire {
        resource: &body.resource,
        mode: i32::from(mode.code()),
        ttl_ms: body.ttl.unwrap_or(0),
        wait_timeout_ms: body.wait_timeout,
        client_id: &body.client_id,
        max_renewals: body.max_renewals.unwrap_or(0),
    };
    let lease = observe(core, "http.Acquire", core.acquire(&raw)).await?;
    Ok((StatusCode::CREATED, Json(Success::new(lease.into()))))
}

async fn acquire(
    State(core): Core,
    body: Result<Json<AcquireBody>, JsonRejection>,
) -> impl IntoResponse {
    acquire_as(&core, Endpoint::Any, body).await
}

async fn exclusive(
    State(core): Core,
    body: Result<Json<AcquireBody>, JsonRejection>,
) -> impl IntoResponse {
    acquire_as(&core, Endpoint::Exclusive, body).await
}

async fn shared(
    State(core): Core,
    body: Result<Json<AcquireBody>, JsonRejection>,
) -> impl IntoResponse {
    acquire_as(&core, Endpoint::Shared, body).await
}

async fn read_write(
    State(core): Core,
    body: Result<Json<AcquireBody>, JsonRejection>,
) -> impl IntoResponse {
    acquire_as(&core, Endpoint::ReadWrite, body).await
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Released {
    lock_id: String,
    resource: String,
}

#[derive(Serialize)]
struct ReleaseReply {
    success: bool,
    message: &'static str,
    data: Released,
}

async fn release(
    State(core): Core,
    body: Result<Json<ReleaseBody>, JsonRejection>,
) -> Result<Json<ReleaseReply>, ApiError> {
    let Json(body) = body?;
    let lease = observe(
        &core,
        "http.Release",
        core.release(&body.lock_id, &body.client_id),
    )
    .await?;
    Ok(Json(ReleaseReply {
        success: true,
        message: "Lock released successfully",
        data: Released {
            lock_id: body.lock_id,
            resource: lease.resource,
        },
    }))
}

async fn renew(
    State(core): Core,
    body: Result<Json<RenewBody>, JsonRejection>,
) -> ApiResult<LeaseJson> {
    let Json(body) = body?;
    let lease = observe(
        &core,
        "http.Renew",
        core.renew(&body.lock_id, &body.client_id, body.ttl.unwrap_or(0)),
    )
    .await?;
    Ok(Json(Success::new(lease.into())))
}

async fn status(
    State(core): Core,
    lock_id: Result<Path<String>, PathRejection>,
) -> ApiResult<LeaseJson> {
    let Path(lock_id) = lock_id?;
    let lease = observe(&core, "http.GetLock", core.get(&lock_id)).await?;
    let mut lease = LeaseJson::from(lease);
    // The core finds live leases only.
    lease.is_expired = Some(false);
    Ok(Json(Success::new(lease)))
}

async fn held(
    State(core): Core,
    query: Result<Query<HeldQuery>, QueryRejection>,
) -> ApiResult<Vec<LeaseJson>> {
    let Query(query) = query?;
    let leases = observe(&core, "http.ListHeld", core.held(&query.client_id)).await?;
    Ok(Json(Success::new(
        leases.into_iter().map(LeaseJson::from).collect(),
    )))
}

async fn queue(
    State(core): Core,
    query: Result<Query<QueueQuery>, QueryRejection>,
) -> ApiResult<QueueJson> {
    let Query(query) = query?;
    let view = observe(&core, "http.GetQueue", core.queue(&query.resource)).await?;
    Ok(Json(Success::new(QueueJson {
        resource: query.resource,
        waiting_clients: view.waiters.len(),
        holders: view.holders.into_iter().map(LeaseJson::from).collect(),
        queue: view.waiters.into_iter().map(WaiterJson::from).collect(),
    })))
}

async fn stats(State(core): Core) -> ApiResult<StatsJson> {
    let stats = observe(&core, "http.GetStats", core.stats()).await?;
    Ok(Json(Success::new(stats.into())))
}

#[derive(Serialize)]
struct Unhealthy {
    success: bool,
    error: String,
    code: &'static str,
    data: HealthJson,
}

/// 200 "healthy" while this daemon serves, else 503 "unhealthy": the same
/// answer as gRPC health at every moment, from the same flag.
async fn health(State(core): Core) -> Response {
    let store = core.store_kind();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    if core.is_serving() {
        let stats = core.stats().await.ok();
        return Json(Success::new(HealthJson {
            status: "healthy",
            store,
            timestamp: rfc3339(now),
            active_locks: stats.as_ref().map(|s| s.active_locks),
            total_locks: stats.as_ref().map(|s| s.total_locks),
        }))
        .into_response();
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(Unhealthy {
            success: false,
            error: "lock store unavailable: not serving".to_owned(),
            code: "unavailable",
            data: HealthJson {
                status: "unhealthy",
                store,
                timestamp: rfc3339(now),
                active_locks: None,
                total_locks: None,
            },
        }),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(result: Result<LockMode, ApiError>) -> String {
        result.unwrap_err().field.expect("names a field")
    }

    #[test]
    fn type_and_access_choose_the_mode() {
        use Endpoint::*;
        assert_eq!(lock_mode(Any, None, None).unwrap(), LockMode::Exclusive);
        for (kind, mode) in [
            ("exclusive", LockMode::Exclusive),
            ("shared", LockMode::Shared),
            ("read", LockMode::Read),
            ("write", LockMode::Write),
        ] {
            assert_eq!(lock_mode(Any, Some(kind), None).unwrap(), mode);
        }
        assert_eq!(
            lock_mode(Any, Some("read-write"), Some("write")).unwrap(),
            LockMode::Write
        );
        assert_eq!(
            lock_mode(ReadWrite, None, Some("read")).unwrap(),
            LockMode::Read
        );
        assert_eq!(
            lock_mode(Exclusive, None, None).unwrap(),
            LockMode::Exclusive
        );
        assert_eq!(lock_mode(Shared, None, None).unwrap(), LockMode::Shared);
        assert_eq!(
            lock_mode(Shared, Some("shared"), None).unwrap(),
            LockMode::Shared
        );
    }

    #[test]
    fn bad_type_or_access_names_the_field() {
        use Endpoint::*;
        assert_eq!(field(lock_mode(Any, Some("bogus"), None)), "type");
        assert_eq!(field(lock_mode(Any, Some("read-write"), None)), "access");
        assert_eq!(field(lock_mode(ReadWrite, None, None)), "access");
        assert_eq!(field(lock_mode(ReadWrite, None, Some("both"))), "access");
        assert_eq!(field(lock_mode(Shared, Some("exclusive"), None)), "type");
        assert_eq!(field(lock_mode(Any, Some("read"), Some("write"))), "access");
    }
}
