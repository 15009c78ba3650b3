//! `lockctl stats`: show deployment-wide statistics (GetStats).

use crate::cmd::Ctx;
use crate::exit::Failure;
use crate::output::{stats_json, stats_text};

pub async fn run(ctx: &Ctx) -> Result<(), Failure> {
    let client = ctx.connect().await?;
    let stats = client
        .stats()
        .await
        .map_err(|e| Failure::from(e).context("stats"))?;
    ctx.out.emit(stats_json(&stats), || stats_text(&stats));
    Ok(())
}
