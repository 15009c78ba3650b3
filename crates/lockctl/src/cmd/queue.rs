//! `lockctl queue`: show the holders and waiters of a resource (GetQueue).

use crate::cmd::Ctx;
use crate::exit::Failure;
use crate::output::{queue_json, queue_text};

pub async fn run(ctx: &Ctx, resource: &str) -> Result<(), Failure> {
    let client = ctx.connect().await?;
    let queue = client
        .queue_snapshot(resource)
        .await
        .map_err(|e| Failure::from(e).context(format!("queue of {resource:?}")))?;
    ctx.out.emit(queue_json(&queue), || queue_text(&queue));
    Ok(())
}
