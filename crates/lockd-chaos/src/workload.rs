//! The clients: many workers on few resources across every daemon, each grant used on the fenced register.

use std::sync::Arc;
use std::time::Duration;

use lockd_client::pb::lock_service_client::LockServiceClient;
use lockd_client::pb::{self, wait_event};
use lockd_client::{Code, Mode};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::deploy::Disturbances;
use crate::history::{Grant, History, Method};
use crate::register::{Outcome, Register};

/// How long past its own wait a call may take before it counts as lost.
pub const CALL_BOUND: Duration = Duration::from_secs(10);

/// What every worker shares.
#[derive(Debug, Clone)]
pub struct Shared {
    pub history: Arc<History>,
    pub register: Arc<Register>,
    pub disturbances: Arc<Disturbances>,
    pub resources: Vec<String>,
}

/// One worker's loop until `until`: ask, use, renew, release or abandon.
pub async fn worker(
    id: usize,
    endpoints: Vec<String>,
    shared: Shared,
    until: Instant,
) -> anyhow::Result<()> {
    let mut rpcs = Vec::new();
    for e in &endpoints {
        let channel = lockd_client::client::endpoint(e)?.connect_lazy();
        rpcs.push(LockServiceClient::new(channel));
    }
    let mut rng = fastrand::Rng::with_seed(id as u64 ^ 0x5eed);
    let client_id = format!("chaos-{id}");
    while Instant::now() < until {
        let daemon = rng.usize(..rpcs.len());
        one_operation(&mut rpcs[daemon], daemon, &client_id, &shared, &mut rng).await;
    }
    Ok(())
}

fn status_name(code: Code) -> String {
    lockd_client::code_name(code).to_owned()
}

async fn one_operation(
    rpc: &mut LockServiceClient<Channel>,
    daemon: usize,
    client_id: &str,
    shared: &Shared,
    rng: &mut fastrand::Rng,
) {
    let history = &shared.history;
    let resource = shared.resources[rng.usize(..shared.resources.len())].clone();
    let mode = match rng.u8(..10) {
        0..=3 => Mode::Exclusive,
        4..=5 => Mode::Write,
        6..=7 => Mode::Shared,
        _ => Mode::Read,
    };
    let ttl = Duration::from_millis(rng.u64(300..2000));
    let wait = Duration::from_millis(rng.u64(0..1500));
    let request = pb::AcquireRequest {
        resource: resource.clone(),
        mode: pb::LockMode::from(mode) as i32,
        ttl_ms: ttl.as_millis() as u64,
        wait_timeout_ms: Some(wait.as_millis() as u64),
        client_id: client_id.to_owned(),
        max_renewals: 0,
    };
    let method = if rng.bool() {
        Method::Acquire
    } else {
        Method::WaitQueue
    };
    let call = match method {
        Method::Acquire => "acquire",
        Method::WaitQueue => "wait_queue",
    };
    // A tenth of the streams are given up after their first Queued event.
    let cancel = method == Method::WaitQueue && rng.u8(..10) == 0;
    let disturbed = shared.disturbances.of(daemon);
    let losses_at_send = history.losses();
    let sent = Instant::now();
    let bound = wait + CALL_BOUND;
    let asked = async {
        match method {
            Method::Acquire => rpc
                .acquire(request)
                .await
                .map(|r| (r.into_inner().lease, None)),
            Method::WaitQueue => {
                let mut stream = rpc.wait_queue(request).await?.into_inner();
                let mut queued_at = None;
                loop {
                    match stream.message().await? {
                        Some(pb::WaitEvent {
                            event: Some(wait_event::Event::Queued(_)),
                        }) => {
                            queued_at.get_or_insert_with(Instant::now);
                            if cancel {
                                return Err(tonic::Status::cancelled("given up by the worker"));
                            }
                        }
                        Some(pb::WaitEvent {
                            event: Some(wait_event::Event::Granted(g)),
                        }) => return Ok((g.lease, queued_at)),
                        Some(_) => {}
                        None => {
                            return Err(tonic::Status::internal("stream ended without a grant"));
                        }
                    }
                }
            }
        }
    };
    let answer = tokio::time::timeout(bound, asked).await;
    let received = Instant::now();
    let (lease, queued_at) = match answer {
        Err(_) => {
            if shared.disturbances.of(daemon) == disturbed {
                history.violation(format!(
                    "{resource}: {call} through daemon {daemon} got no answer within its wait \
                     plus {CALL_BOUND:?}"
                ));
            }
            history.count(call, "client_timeout");
            return;
        }
        Ok(Err(status)) => {
            let code = status.code();
            if matches!(
                code,
                Code::Internal | Code::InvalidArgument | Code::PermissionDenied
            ) && !(code == Code::Internal && shared.disturbances.of(daemon) != disturbed)
            {
                history.violation(format!(
                    "{resource}: {call} answered {}: {}",
                    status_name(code),
                    status.message()
                ));
            }
            history.count(call, &status_name(code));
            return;
        }
        Ok(Ok((None, _))) => {
            history.violation(format!("{resource}: {call} answered OK without a lease"));
            return;
        }
        Ok(Ok((Some(lease), queued_at))) => (lease, queued_at),
    };
    history.count(call, "granted");
    let token = lease.fencing_token;
    history.record_grant(Grant {
        resource: resource.clone(),
        mode,
        token,
        method,
        sent,
        received,
        queued_at,
        losses_at_send,
        losses_at_grant: history.losses(),
    });
    let mut trusted_until = sent + ttl;
    let hold = history.trust(&resource, mode, token, trusted_until);

    // Use the register, sometimes renewing halfway.
    let register = &shared.register;
    let (first, finding) = register.read(&resource, token, trusted_until);
    report(history, finding);
    tokio::time::sleep(Duration::from_millis(rng.u64(0..50))).await;
    if rng.u8(..4) == 0 && Instant::now() < trusted_until {
        let renew_sent = Instant::now();
        let renewed = rpc
            .renew(pb::RenewRequest {
                lock_id: lease.lock_id.clone(),
                client_id: client_id.to_owned(),
                ttl_ms: 0,
            })
            .await;
        match renewed {
            Ok(_) => {
                if history.retrust(&resource, hold, renew_sent + ttl) {
                    trusted_until = trusted_until.max(renew_sent + ttl);
                }
                history.count("renew", "ok");
            }
            Err(s) => history.count("renew", &status_name(s.code())),
        }
    }
    if !compatible_with_others(mode) {
        if let Outcome::Accepted(value) = first {
            let (_, finding) = register.increment(&resource, token, value, trusted_until);
            report(history, finding);
        }
    } else {
        let (_, finding) = register.read(&resource, token, trusted_until);
        report(history, finding);
    }
    intrude(rpc, &lease.lock_id, history, &resource, rng).await;

    // Most leases are released; the rest are left to expire.
    if rng.u8(..10) < 8 {
        history.distrust(&resource, hold);
        match rpc
            .release(pb::ReleaseRequest {
                lock_id: lease.lock_id,
                client_id: client_id.to_owned(),
            })
            .await
        {
            Ok(_) => history.count("release", "ok"),
            Err(s) => {
                if s.code() == Code::PermissionDenied {
                    history.violation(format!("{resource}: the holder's release was denied"));
                }
                history.count("release", &status_name(s.code()));
            }
        }
    } else {
        history.count("release", "abandoned");
    }
}

fn compatible_with_others(mode: Mode) -> bool {
    matches!(mode, Mode::Shared | Mode::Read)
}

fn report(history: &History, finding: Option<String>) {
    if let Some(f) = finding {
        history.violation(f);
    }
}

/// Now and then, another client tries to release or renew this lease: it
/// must never succeed.
async fn intrude(
    rpc: &mut LockServiceClient<Channel>,
    lock_id: &str,
    history: &History,
    resource: &str,
    rng: &mut fastrand::Rng,
) {
    if rng.u8(..10) != 0 {
        return;
    }
    let intruder = "chaos-intruder".to_owned();
    let released = rpc
        .release(pb::ReleaseRequest {
            lock_id: lock_id.to_owned(),
            client_id: intruder.clone(),
        })
        .await;
    let renewed = rpc
        .renew(pb::RenewRequest {
            lock_id: lock_id.to_owned(),
            client_id: intruder,
            ttl_ms: 0,
        })
        .await;
    for (call, ok) in [("release", released.is_ok()), ("renew", renewed.is_ok())] {
        history.count(
            &format!("intruder_{call}"),
            if ok { "ok" } else { "refused" },
        );
        if ok {
            history.violation(format!("{resource}: another client_id's {call} succeeded"));
        }
    }
}
