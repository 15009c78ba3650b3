//! `lockctl release`: end a lease by its lock_id.

use serde_json::json;

use crate::cmd::Ctx;
use crate::exit::Failure;

pub async fn run(ctx: &Ctx, lock_id: &str) -> Result<(), Failure> {
    let client = ctx.connect().await?;
    client
        .release(lock_id)
        .await
        .map_err(|e| Failure::from(e).context(format!("releasing {lock_id}")))?;
    ctx.out
        .emit(json!({"lock_id": lock_id, "released": true}), || {
            format!("released {lock_id}")
        });
    Ok(())
}
