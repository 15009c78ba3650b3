//! `lockctl health`: ask the standard gRPC health service; non-zero unless SERVING.

use lockd_client::Health;
use serde_json::json;

use crate::cmd::Ctx;
use crate::exit::{Failure, NOT_SERVING};

pub async fn run(ctx: &Ctx, service: &str) -> Result<(), Failure> {
    let client = ctx.connect().await?;
    let health = client
        .health(service)
        .await
        .map_err(|e| Failure::from(e).context("health check"))?;
    ctx.out.emit(
        json!({"service": service, "status": health.as_str()}),
        || health.to_string(),
    );
    if health == Health::Serving {
        Ok(())
    } else {
        let what = if service.is_empty() { "lockd" } else { service };
        Err(Failure::new(NOT_SERVING, format!("{what} is {health}")))
    }
}
