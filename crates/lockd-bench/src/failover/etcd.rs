//! A three-member etcd cluster on loopback, its leader, and when the
//! survivors have elected a new one.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use etcd_client::{Client, ConnectOptions};
use lockd_testkit::program;

use crate::procs::{Proc, free_port, wait_ready};

/// The members, each with its client URL; killed when dropped.
pub struct EtcdCluster {
    pub members: Vec<Proc>,
    pub endpoints: Vec<String>,
}

/// Starts `n` members with etcd's default timing (heartbeat 100 ms, election
/// timeout 1 s), their data under `dir`, and waits until each one knows a
/// leader and a lease can be granted.
pub async fn start(dir: &Path, n: usize) -> Result<EtcdCluster> {
    let mut peers = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..n {
        peers.push(format!("http://127.0.0.1:{}", free_port()?));
        clients.push(format!("http://127.0.0.1:{}", free_port()?));
    }
    let initial: Vec<String> = peers
        .iter()
        .enumerate()
        .map(|(i, p)| format!("m{i}={p}"))
        .collect();
    let token = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut members = Vec::new();
    for i in 0..n {
        let args: Vec<String> = vec![
            "--name".into(),
            format!("m{i}"),
            "--data-dir".into(),
            dir.join(format!("etcd-m{i}")).display().to_string(),
            "--listen-client-urls".into(),
            clients[i].clone(),
            "--advertise-client-urls".into(),
            clients[i].clone(),
            "--listen-peer-urls".into(),
            peers[i].clone(),
            "--initial-advertise-peer-urls".into(),
            peers[i].clone(),
            "--initial-cluster".into(),
            initial.join(","),
            "--initial-cluster-token".into(),
            token.clone(),
            "--initial-cluster-state".into(),
            "new".into(),
            "--log-level".into(),
            "warn".into(),
            "--logger".into(),
            "zap".into(),
        ];
        members.push(Proc::spawn(
            &format!("etcd-m{i}"),
            &program("etcd"),
            &args,
            dir,
        )?);
    }
    for (p, url) in members.iter_mut().zip(&clients) {
        wait_ready(p, Duration::from_secs(30), || {
            let url = url.clone();
            async move {
                let mut c = connect(&url).await?;
                if c.status().await?.leader() == 0 {
                    bail!("no leader yet");
                }
                let lease = c.lease_grant(5, None).await?;
                c.lease_revoke(lease.id()).await?;
                Ok(())
            }
        })
        .await?;
    }
    Ok(EtcdCluster {
        members,
        endpoints: clients,
    })
}

/// A client of one member only, with a deadline on each request.
pub async fn connect(endpoint: &str) -> Result<Client> {
    let options = ConnectOptions::new()
        .with_timeout(Duration::from_secs(1))
        .with_connect_timeout(Duration::from_secs(1));
    Client::connect([endpoint], Some(options))
        .await
        .with_context(|| format!("connecting to etcd at {endpoint}"))
}

/// The leader's member id, and the index of the endpoint that is the leader
/// (from the maintenance Status of every member, which must agree).
pub async fn leader(endpoints: &[String]) -> Result<(u64, usize)> {
    let mut seen = Vec::new();
    for ep in endpoints {
        let status = connect(ep).await?.status().await.context("Status")?;
        let me = status
            .header()
            .context("Status without header")?
            .member_id();
        seen.push((me, status.leader()));
    }
    let leader = seen[0].1;
    if leader == 0 || seen.iter().any(|(_, l)| *l != leader) {
        bail!("the members do not agree on a leader: {seen:?}");
    }
    let index = seen
        .iter()
        .position(|(me, _)| *me == leader)
        .context("no member is the leader they name")?;
    Ok((leader, index))
}

/// Polls the survivors' Status every `every` until one names a leader other
/// than `old`: the time from `start`, and the new leader's id.
pub async fn watch_election(
    mut survivors: Vec<Client>,
    old: u64,
    start: Instant,
    every: Duration,
    limit: Duration,
) -> Option<(Duration, u64)> {
    while start.elapsed() < limit {
        for c in survivors.iter_mut() {
            let status = tokio::time::timeout(Duration::from_millis(500), c.status()).await;
            if let Ok(Ok(s)) = status
                && s.leader() != 0
                && s.leader() != old
            {
                return Some((start.elapsed(), s.leader()));
            }
        }
        tokio::time::sleep(every).await;
    }
    None
}
