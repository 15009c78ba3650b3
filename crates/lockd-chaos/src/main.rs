//! `lockd-chaos`: a fenced workload across lockd replicas while daemons, Redis and links break.
//!
//! One command starts redis-server and several daemons on loopback, runs
//! many clients on few resources while injecting faults one at a time,
//! heals, checks that every resource is grantable again, and checks the
//! history. It exits 1 on any violation or below the minimum throughput.
//!
//! - [`proxy`]: the TCP proxies that cut or slow a daemon's links.
//! - [`deploy`]: Redis, the daemons and their links.
//! - [`faults`]: the fault kinds and the injector.
//! - [`workload`]: the clients; [`register`]: the fenced storage they write.
//! - [`history`]: what the clients saw, with the live double-grant check.
//! - [`check`]: the checks over the whole history.

mod check;
mod deploy;
mod faults;
mod history;
mod proxy;
mod register;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use lockd_client::pb;
use lockd_client::pb::lock_service_client::LockServiceClient;
use tokio::time::Instant;

use crate::deploy::Deployment;
use crate::faults::Fault;
use crate::history::History;
use crate::register::Register;
use crate::workload::Shared;

/// Fault-injection run against real redis-server and lockd processes.
#[derive(Debug, Parser)]
#[command(name = "lockd-chaos", version)]
struct Cli {
    /// A CI-sized run: 60 s of load and faults.
    #[arg(long)]
    quick: bool,
    /// How long the load and the faults run (without --quick).
    #[arg(long, default_value = "10m", value_parser = humantime_duration)]
    duration: Duration,
    /// lockd daemons serving the same Redis.
    #[arg(long, default_value_t = 3)]
    daemons: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 24)]
    clients: usize,
    /// Resources the clients share.
    #[arg(long, default_value_t = 4)]
    resources: usize,
    /// Fault kinds to inject (comma-separated); default every kind.
    #[arg(long, value_enum, value_delimiter = ',')]
    faults: Vec<Fault>,
    /// Fewer grants per second than this fails the run.
    #[arg(long, default_value_t = 5.0)]
    min_throughput: f64,
    /// The lockd binary (default: `LOCKD_BIN`, else this workspace's debug build).
    #[arg(long, env = "LOCKD_BIN")]
    lockd: Option<PathBuf>,
    /// Seed of the fault schedule.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where to write the figures as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90s or 30m"))?;
    match unit {
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{s:?}: use s, m or h")),
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,lockd_chaos=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lockd-chaos: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(cli));
    runtime.shutdown_timeout(Duration::from_secs(2));
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("lockd-chaos: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `Ok(false)` when a check failed.
async fn run(cli: Cli) -> Result<bool> {
    let bin = match cli.lockd {
        Some(b) => b,
        None => tokio::task::spawn_blocking(|| lockd_testkit::lockd_bin().to_path_buf()).await?,
    };
    let duration = if cli.quick {
        Duration::from_secs(60)
    } else {
        cli.duration
    };
    let kinds: Vec<Fault> = if cli.faults.is_empty() {
        <Fault as clap::ValueEnum>::value_variants().to_vec()
    } else {
        cli.faults.clone()
    };
    let mut deploy = Deployment::start(bin, cli.daemons).await?;
    let history = Arc::new(History::default());
    let shared = Shared {
        history: history.clone(),
        register: Arc::new(Register::default()),
        disturbances: deploy.disturbances.clone(),
        resources: (0..cli.resources).map(|i| format!("chaos/{i}")).collect(),
    };
    let started = Instant::now();
    let until = started + duration;
    let mut workers = Vec::new();
    for id in 0..cli.clients {
        workers.push(tokio::spawn(workload::worker(
            id,
            deploy.endpoints(),
            shared.clone(),
            until,
        )));
    }
    let mut rng = fastrand::Rng::with_seed(cli.seed);
    faults::inject(&mut deploy, &kinds, until, &history, &mut rng).await?;
    for w in workers {
        w.await.context("a worker panicked")??;
    }
    let elapsed = started.elapsed();

    let mut findings = history.violations();
    findings.extend(check::check(&history.grants()));
    findings.extend(liveness(&deploy, &shared.resources).await);
    let grants = history.grants().len();
    let throughput = grants as f64 / elapsed.as_secs_f64();
    if throughput < cli.min_throughput {
        findings.push(format!(
            "throughput {throughput:.1} grants/s is below --min-throughput {}",
            cli.min_throughput
        ));
    }

    let summary = serde_json::json!({
        "duration_s": elapsed.as_secs_f64(),
        "daemons": cli.daemons,
        "clients": cli.clients,
        "resources": cli.resources,
        "grants": grants,
        "grants_per_s": throughput,
        "outcomes": history.outcomes(),
        "faults": history.faults(),
        "violation_count": findings.len(),
        // A broken build can find thousands: the first ones tell the story.
        "violations": findings.iter().take(100).collect::<Vec<_>>(),
    });
    println!("{}", serde_json::to_string_pretty(&summary)?);
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_vec_pretty(&summary)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if !findings.is_empty() {
        for (i, d) in deploy.daemons.iter().enumerate() {
            eprintln!("--- daemon {i} log (tail)\n{}", tail(&d.log(), 30));
        }
    }
    eprintln!(
        "lockd-chaos: {grants} grants in {:.0} s ({throughput:.0}/s), {} faults, {} violations",
        elapsed.as_secs_f64(),
        history.faults().values().sum::<u64>(),
        findings.len()
    );
    Ok(findings.is_empty())
}

fn tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// After healing, every resource must be grantable through every daemon
/// within a bound, and end with no holder and no waiter left.
async fn liveness(deploy: &Deployment, resources: &[String]) -> Vec<String> {
    const BOUND: Duration = Duration::from_secs(30);
    let mut findings = Vec::new();
    for (i, endpoint) in deploy.endpoints().iter().enumerate() {
        let channel = match lockd_client::client::endpoint(endpoint) {
            Ok(e) => e.connect_lazy(),
            Err(e) => {
                findings.push(format!("daemon {i}: {e}"));
                continue;
            }
        };
        let mut rpc = LockServiceClient::new(channel);
        for resource in resources {
            let asked = rpc.acquire(pb::AcquireRequest {
                resource: resource.clone(),
                mode: pb::LockMode::Exclusive as i32,
                ttl_ms: 5000,
                wait_timeout_ms: Some(BOUND.as_millis() as u64),
                client_id: "chaos-liveness".into(),
                max_renewals: 0,
            });
            match tokio::time::timeout(BOUND + Duration::from_secs(5), asked).await {
                Ok(Ok(r)) => {
                    if let Some(lease) = r.into_inner().lease {
                        let _ = rpc
                            .release(pb::ReleaseRequest {
                                lock_id: lease.lock_id,
                                client_id: "chaos-liveness".into(),
                            })
                            .await;
                    }
                }
                Ok(Err(s)) => findings.push(format!(
                    "liveness: {resource} through daemon {i} after healing: {}",
                    s.message()
                )),
                Err(_) => findings.push(format!(
                    "liveness: {resource} through daemon {i} not granted within {BOUND:?}"
                )),
            }
        }
    }
    // Abandoned leases end within the longest ttl; then nothing is left.
    tokio::time::sleep(Duration::from_secs(3)).await;
    if let Some(endpoint) = deploy.endpoints().first()
        && let Ok(e) = lockd_client::client::endpoint(endpoint)
    {
        let mut rpc = LockServiceClient::new(e.connect_lazy());
        for resource in resources {
            match rpc
                .get_queue(pb::GetQueueRequest {
                    resource: resource.clone(),
                })
                .await
            {
                Ok(q) => {
                    let q = q.into_inner();
                    if !q.holders.is_empty() || !q.waiters.is_empty() {
                        findings.push(format!(
                            "{resource}: {} holders and {} waiters left after the run",
                            q.holders.len(),
                            q.waiters.len()
                        ));
                    }
                }
                Err(s) => findings.push(format!("{resource}: GetQueue: {}", s.message())),
            }
        }
    }
    findings
}
