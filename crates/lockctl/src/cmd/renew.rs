//! `lockctl renew`: extend a lease to now + ttl and print it.

use std::time::Duration;

use crate::cmd::Ctx;
use crate::exit::Failure;
use crate::output::{lease_json, lease_text};

pub async fn run(ctx: &Ctx, lock_id: &str, ttl: Option<Duration>) -> Result<(), Failure> {
    let client = ctx.connect().await?;
    let lease = client
        .renew(lock_id, ttl)
        .await
        .map_err(|e| Failure::from(e).context(format!("renewing {lock_id}")))?;
    ctx.out.emit(lease_json(&lease), || lease_text(&lease));
    Ok(())
}
