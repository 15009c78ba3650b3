//! The HTTP port: Prometheus metrics and the REST API of the original brief.
//!
//! - [`rest`]: the brief's endpoints under /api/locks, and /health.
//! - [`json`]: their JSON shapes.
//! - [`error`]: lock errors as HTTP statuses and JSON error bodies.

mod error;
mod json;
mod rest;

pub use error::status_code;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::core::LockCore;
use error::ApiError;

/// Serves the HTTP port until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    core: Arc<LockCore>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(core))
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}

/// Every route of the HTTP port; unknown paths and methods answer in JSON too.
fn router(core: Arc<LockCore>) -> Router {
    rest::routes()
        .route("/metrics", get(metrics))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(core)
}

async fn metrics(State(core): State<Arc<LockCore>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        core.metrics_text().await,
    )
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::no_route(
        StatusCode::NOT_FOUND,
        format!("no route for {method} {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::no_route(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}
