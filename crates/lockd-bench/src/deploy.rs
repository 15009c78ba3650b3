//! A running system under test: either started here from scratch (redis-server,
//! etcd, one or two lockd replicas) or an existing lockd deployment.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use lockd_testkit::{RedisCluster, RedisServer, SentinelGroup, TempDir, program, target_dir};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::metrics::RedisProbe;
use crate::procs::{Proc, free_port, wait_ready};
use crate::systems::etcd::Etcd;
use crate::systems::lockd::{Lockd, connect_channel};
use crate::systems::redis_direct::RedisDirect;
use crate::systems::{LockSystem, SystemKind};

/// How a deployment is started and connected to.
pub struct DeployOpts {
    /// Shared connections per endpoint.
    pub channels: usize,
    /// lockd replicas on the same Redis (lockd-redis only).
    pub replicas: usize,
    pub lockd_bin: Option<PathBuf>,
    /// Redis-direct's pause between attempts on a busy lock.
    pub spin: Duration,
    /// More flags for every lockd daemon (`--min-replicas-ack` is added for the
    /// systems on replicated Redis).
    pub lockd_args: Vec<String>,
}

/// The Redis a deployment keeps its state in. Dropping it kills its processes.
pub enum Store {
    Single(RedisServer),
    Sentinel(SentinelGroup),
    Cluster(RedisCluster),
}

impl Store {
    /// The Redis `kind` needs, if any, started on free loopback ports.
    pub async fn start(kind: SystemKind) -> Result<Option<Store>> {
        Ok(Some(match kind {
            SystemKind::LockdRedis | SystemKind::RedisDirect => {
                Store::Single(blocking("redis-server", RedisServer::start).await?)
            }
            SystemKind::LockdSentinel | SystemKind::LockdSentinelNoack => {
                Store::Sentinel(blocking("the Sentinel group", SentinelGroup::start).await?)
            }
            SystemKind::LockdCluster => {
                Store::Cluster(blocking("the Redis Cluster", RedisCluster::start).await?)
            }
            SystemKind::LockdDev | SystemKind::Etcd => return Ok(None),
        }))
    }

    /// What lockd's `--redis-url` is given: `redis://`, `redis+sentinel://`
    /// with every sentinel and the master name, or `redis+cluster://` with
    /// every node as a seed.
    pub fn lockd_url(&self) -> String {
        let join = |addrs: Vec<SocketAddr>| {
            addrs
                .iter()
                .map(SocketAddr::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        match self {
            Store::Single(server) => server.url(),
            Store::Sentinel(group) => format!(
                "redis+sentinel://{}/{}",
                join(group.sentinel_addrs()),
                SentinelGroup::MASTER_NAME
            ),
            Store::Cluster(cluster) => format!("redis+cluster://{}", join(cluster.addrs())),
        }
    }

    /// A connection for INFO figures: to the server, or the Sentinel group's
    /// current primary. None for a cluster, whose figures are spread over
    /// three primaries (the workloads then leave them out).
    async fn probe(&self) -> Result<Option<RedisProbe>> {
        let url = match self {
            Store::Single(server) => server.url(),
            Store::Sentinel(group) => {
                let primary = tokio::task::block_in_place(|| group.primary_addr());
                format!("redis://{primary}")
            }
            Store::Cluster(_) => return Ok(None),
        };
        Ok(Some(RedisProbe::connect(&url).await?))
    }
}

/// A system ready to be loaded, with what is needed to measure it.
pub struct Deployment {
    /// The system through its first replica.
    pub system: Arc<dyn LockSystem>,
    /// The same system with consecutive slots on different replicas; only when
    /// there are two or more.
    pub replicated: Option<Arc<dyn LockSystem>>,
    /// The process serving the API (lockd, or redis-server/etcd when the system
    /// is used directly), for RSS figures.
    pub daemon_pid: Option<u32>,
    /// The Redis holding the state, for `INFO` figures.
    pub redis: Option<RedisProbe>,
    /// Children started for this deployment; stopped by [`Deployment::stop`] or on drop.
    procs: Vec<Proc>,
    /// Declared after `procs` so that lockd is stopped before its store.
    store: Option<Store>,
    /// Declared after the children so that it is removed only once they are gone.
    _scratch: Option<TempDir>,
}

impl Deployment {
    /// Starts `kind` from scratch on free loopback ports.
    pub async fn start(kind: SystemKind, opts: &DeployOpts) -> Result<Deployment> {
        let scratch = TempDir::new(&format!("bench-{}", kind.name()))?;
        let dir = scratch.path().to_path_buf();
        // Declared after `scratch`, so on an early return the children are
        // killed before their folder is removed.
        let mut procs = Vec::new();
        let store = Store::start(kind).await?;
        let redis = match &store {
            Some(s) => s.probe().await?,
            None => None,
        };
        let (system, replicated, daemon_pid): (Arc<dyn LockSystem>, _, _) = match kind {
            SystemKind::RedisDirect => {
                let Some(Store::Single(server)) = &store else {
                    bail!("redis-direct runs on one redis-server");
                };
                let system = RedisDirect::connect(&server.url(), opts.spin).await?;
                (Arc::new(system), None, server.pid())
            }
            SystemKind::Etcd => {
                let (p, endpoint) = start_etcd(&dir).await?;
                let pid = p.pid();
                procs.push(p);
                (
                    Arc::new(Etcd::connect(&endpoint, opts.channels).await?),
                    None,
                    Some(pid),
                )
            }
            _ => {
                let bin = opts.lockd_bin.as_deref().context("no lockd binary")?;
                let replicas = if kind == SystemKind::LockdDev {
                    1
                } else {
                    opts.replicas.max(1)
                };
                let url = store.as_ref().map(Store::lockd_url);
                let mut args = opts.lockd_args.clone();
                if let Some(n) = kind.min_replicas_ack() {
                    args.extend(["--min-replicas-ack".into(), n.to_string()]);
                }
                let mut endpoints = Vec::new();
                let mut pid = None;
                for i in 0..replicas {
                    let (p, addr) = start_lockd(bin, url.as_deref(), &args, &dir, i).await?;
                    pid = pid.or(Some(p.pid()));
                    procs.push(p);
                    endpoints.push(addr);
                }
                let (system, replicated) =
                    connect_lockd(kind.name(), &endpoints, opts.channels).await?;
                (system, replicated, pid)
            }
        };
        Ok(Deployment {
            system,
            replicated,
            daemon_pid,
            redis,
            procs,
            store,
            _scratch: Some(scratch),
        })
    }

    /// Connects to an existing lockd deployment.
    pub async fn existing(
        endpoints: &[String],
        channels: usize,
        redis_url: Option<&str>,
        daemon_pid: Option<u32>,
    ) -> Result<Deployment> {
        for ep in endpoints {
            check_health(ep)
                .await
                .with_context(|| format!("lockd at {ep} is not serving"))?;
        }
        let redis = match redis_url {
            Some(url) => Some(RedisProbe::connect(url).await?),
            None => None,
        };
        let (system, replicated) = connect_lockd("lockd", endpoints, channels).await?;
        Ok(Deployment {
            system,
            replicated,
            daemon_pid,
            redis,
            procs: Vec::new(),
            store: None,
            _scratch: None,
        })
    }

    /// Fails if a process of the deployment has exited.
    pub fn check_running(&mut self) -> Result<()> {
        for p in &mut self.procs {
            p.check_running()?;
        }
        Ok(())
    }

    /// Stops the children (lockd first, then the stores) and removes their files.
    pub async fn stop(mut self) {
        while let Some(mut p) = self.procs.pop() {
            p.stop(Duration::from_secs(3)).await;
        }
        // Dropping the store kills its processes.
        drop(self.store.take());
    }
}

/// The system through the first endpoint, and through all of them in turn if
/// there are several.
async fn connect_lockd(
    name: &'static str,
    endpoints: &[String],
    channels: usize,
) -> Result<(Arc<dyn LockSystem>, Option<Arc<dyn LockSystem>>)> {
    let first: Arc<dyn LockSystem> =
        Arc::new(Lockd::connect(name, &endpoints[..1], channels).await?);
    let all: Option<Arc<dyn LockSystem>> = if endpoints.len() > 1 {
        Some(Arc::new(Lockd::connect(name, endpoints, channels).await?))
    } else {
        None
    };
    Ok((first, all))
}

/// Runs a testkit starter, which blocks for seconds and panics with the log of
/// what did not come up; here that panic becomes an error of the run.
pub async fn blocking<T: Send + 'static>(what: &str, start: fn() -> T) -> Result<T> {
    tokio::task::spawn_blocking(start)
        .await
        .map_err(|e| match e.try_into_panic() {
            Ok(panic) => anyhow!("{what} did not start: {}", panic_message(&panic)),
            Err(e) => anyhow!("{what} did not start: {e}"),
        })
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)")
}

/// A single-node etcd with its data under `dir`. Returns it and its client URL.
async fn start_etcd(dir: &Path) -> Result<(Proc, String)> {
    let client_url = format!("http://127.0.0.1:{}", free_port()?);
    let peer_url = format!("http://127.0.0.1:{}", free_port()?);
    let args: Vec<String> = vec![
        "--name".into(),
        "bench".into(),
        "--data-dir".into(),
        dir.join("etcd-data").display().to_string(),
        "--listen-client-urls".into(),
        client_url.clone(),
        "--advertise-client-urls".into(),
        client_url.clone(),
        "--listen-peer-urls".into(),
        peer_url.clone(),
        "--initial-advertise-peer-urls".into(),
        peer_url.clone(),
        "--initial-cluster".into(),
        format!("bench={peer_url}"),
        "--initial-cluster-state".into(),
        "new".into(),
        // Room for a million leases and their keys (the default is 2 GiB).
        "--quota-backend-bytes".into(),
        (8u64 << 30).to_string(),
        "--log-level".into(),
        "warn".into(),
        "--logger".into(),
        "zap".into(),
    ];
    let mut p = Proc::spawn("etcd", &program("etcd"), &args, dir)?;
    let url = client_url.clone();
    wait_ready(&mut p, Duration::from_secs(20), || {
        let url = url.clone();
        async move {
            let mut c = etcd_client::Client::connect([url.as_str()], None).await?;
            c.status().await?;
            // A lease grant needs a leader, which status alone does not prove.
            let lease = c.lease_grant(5, None).await?;
            c.lease_revoke(lease.id()).await?;
            Ok(())
        }
    })
    .await?;
    Ok((p, client_url))
}

/// A lockd replica: on `redis_url`, or `--dev` without one, with `extra` flags.
pub async fn start_lockd(
    bin: &Path,
    redis_url: Option<&str>,
    extra: &[String],
    dir: &Path,
    index: usize,
) -> Result<(Proc, String)> {
    let addr = format!("127.0.0.1:{}", free_port()?);
    let mut args: Vec<String> = vec!["--listen".into(), addr.clone()];
    match redis_url {
        Some(url) => args.extend(["--redis-url".into(), url.to_string()]),
        None => args.push("--dev".into()),
    }
    args.extend(extra.iter().cloned());
    let mut p = Proc::spawn(&format!("lockd-{index}"), bin, &args, dir)?;
    wait_ready(&mut p, Duration::from_secs(20), || check_health(&addr)).await?;
    Ok((p, addr))
}

/// SERVING from grpc.health.v1 for `lockd.v1.LockService`, or for the whole
/// server if that service is not registered with the health service.
pub async fn check_health(addr: &str) -> Result<()> {
    let mut health = HealthClient::new(connect_channel(addr).await?);
    let status = match health
        .check(HealthCheckRequest {
            service: "lockd.v1.LockService".into(),
        })
        .await
    {
        Ok(r) => r.into_inner().status,
        Err(s) if s.code() == tonic::Code::NotFound => {
            health
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .context("health check")?
                .into_inner()
                .status
        }
        Err(s) => bail!("health check: {:?}: {}", s.code(), s.message()),
    };
    if status != ServingStatus::Serving as i32 {
        bail!(
            "health status is {:?}",
            ServingStatus::try_from(status).unwrap_or(ServingStatus::Unknown)
        );
    }
    Ok(())
}

pub use lockd_testkit::workspace_root;

/// The lockd binary: `flag` if given, else the workspace's release build, built
/// with `cargo build --release -p lockd` if it is missing.
pub async fn lockd_binary(flag: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = flag {
        if !p.is_file() {
            bail!("--lockd-bin {} does not exist", p.display());
        }
        return Ok(p);
    }
    let root = workspace_root();
    let bin = target_dir().join("release/lockd");
    if bin.is_file() {
        return Ok(bin);
    }
    tracing::info!(
        "{} is missing; running cargo build --release -p lockd",
        bin.display()
    );
    let status =
        tokio::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "-p", "lockd"])
            .current_dir(&root)
            .status()
            .await
            .context("running cargo build --release -p lockd")?;
    if !status.success() || !bin.is_file() {
        bail!("cargo build --release -p lockd failed ({status})");
    }
    Ok(bin)
}
