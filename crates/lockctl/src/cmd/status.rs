//! `lockctl status`: show a live lease by its lock_id (GetLock).

use crate::cmd::Ctx;
use crate::exit::Failure;
use crate::output::{lease_json, lease_text};

pub async fn run(ctx: &Ctx, lock_id: &str) -> Result<(), Failure> {
    let client = ctx.connect().await?;
    let lease = client
        .get_lock(lock_id)
        .await
        .map_err(|e| Failure::from(e).context(format!("lock {lock_id}")))?;
    ctx.out.emit(lease_json(&lease), || lease_text(&lease));
    Ok(())
}
