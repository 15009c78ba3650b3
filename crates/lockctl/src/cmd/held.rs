//! `lockctl held`: list the live leases of a client id (ListHeld).

use serde_json::json;

use crate::cmd::Ctx;
use crate::exit::Failure;
use crate::output::{lease_json, leases_text};

pub async fn run(ctx: &Ctx, client_id: Option<String>) -> Result<(), Failure> {
    let client = ctx.connect().await?;
    let client_id = client_id.unwrap_or_else(|| ctx.client_id.clone());
    let leases = client
        .list_held(&client_id)
        .await
        .map_err(|e| Failure::from(e).context(format!("leases of {client_id:?}")))?;
    let json = json!({
        "client_id": client_id,
        "leases": leases.iter().map(lease_json).collect::<Vec<_>>(),
    });
    ctx.out.emit(json, || leases_text(&leases));
    Ok(())
}
