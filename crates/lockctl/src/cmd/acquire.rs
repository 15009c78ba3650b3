//! `lockctl acquire`: take a lease and print it, leaving it to run out on its own.

use crate::cli::AcquireArgs;
use crate::cmd::{Ctx, lock_request};
use crate::exit::Failure;
use crate::output::{lease_json, lease_text};

pub async fn run(ctx: &Ctx, args: AcquireArgs) -> Result<(), Failure> {
    let client = ctx.connect().await?;
    let resource = args.lock.resource.clone();
    let guard = lock_request(&client, &args.lock)
        .acquire()
        .await
        .map_err(|e| Failure::from(e).context(format!("acquiring {resource:?}")))?;
    // lockctl exits now: the lease must outlive it, so stop the renewals
    // without releasing.
    let lease = guard.detach();
    ctx.out.emit(lease_json(&lease), || lease_text(&lease));
    Ok(())
}
