//! The `compare` and `run` commands: start or reach each system, run the
//! workloads on it, collect the rows, print the table and write the JSON.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Result;

use crate::cli::{Cli, Command, CompareArgs, RunArgs, Settings, Workload};
use crate::deploy::{DeployOpts, Deployment, lockd_binary, workspace_root};
use crate::machine::Machine;
use crate::report::{Report, Row, table_line};
use crate::systems::SystemKind;
use crate::workloads::{self, Ctx, uncontended};

pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Compare(args) => compare(args).await,
        Command::Run(args) => run_existing(args).await,
        Command::Failover(args) => crate::failover::run(args).await,
    }
}

/// A prefix unique to this run for every resource name.
fn run_prefix() -> String {
    format!(
        "lockd-bench/{}/",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Connections a deployment needs for `workload`: the waiters workload opens up
/// to 10k streams, so it gets one connection per 250 of them.
fn channels_for(settings: &Settings, workload: Workload) -> usize {
    if workload == Workload::Waiters {
        let most = settings.waiter_levels.iter().copied().max().unwrap_or(0);
        settings.channels.max(most.div_ceil(250))
    } else {
        settings.channels
    }
}

async fn compare(args: CompareArgs) -> Result<()> {
    let settings = Arc::new(Settings::new(&args.common));
    let workloads = if args.common.workloads.is_empty() {
        Workload::ALL.to_vec()
    } else {
        args.common.workloads.clone()
    };
    let systems = if args.systems.is_empty() {
        SystemKind::DEFAULT.to_vec()
    } else {
        args.systems.clone()
    };
    let root = workspace_root();
    let (lockd_bin, lockd_error) = if systems.iter().any(|s| s.is_lockd()) {
        match lockd_binary(args.lockd_bin.clone()).await {
            Ok(p) => (Some(p), None),
            Err(e) => {
                tracing::error!("no lockd to measure: {e:#}");
                (None, Some(format!("{e:#}")))
            }
        }
    } else {
        (None, None)
    };
    let machine = Machine::probe(lockd_bin.as_deref(), &root).await;
    let prefix = run_prefix();
    let mut peaks: HashMap<SystemKind, f64> = HashMap::new();
    let mut results = Vec::new();
    eprintln!(
        "lockd-bench compare ({}): {} workloads x {} systems",
        if settings.quick { "quick" } else { "full" },
        workloads.len(),
        systems.len()
    );
    for &workload in &workloads {
        for &kind in &systems {
            if !workload.applies_to(kind) {
                continue;
            }
            let rows = if let (true, Some(e)) = (kind.is_lockd(), &lockd_error) {
                vec![Row::new(workload.name(), kind.name(), "-", settings.clients).error(e)]
            } else {
                let opts = DeployOpts {
                    channels: channels_for(&settings, workload),
                    replicas: if workload == Workload::Handoff { 2 } else { 1 },
                    lockd_bin: lockd_bin.clone(),
                    spin: settings.spin,
                    lockd_args: Vec::new(),
                };
                let peak = peaks.get(&kind).copied();
                if workload == Workload::Waiters {
                    // A fresh deployment per line length: tearing down a long
                    // line can keep a system busy well after the last cancel.
                    let mut rows = Vec::new();
                    for &level in &settings.waiter_levels {
                        rows.extend(
                            measure(kind, workload, Some(level), &opts, &settings, &prefix, peak)
                                .await,
                        );
                    }
                    workloads::waiters::annotate_growth(&mut rows);
                    rows
                } else {
                    measure(kind, workload, None, &opts, &settings, &prefix, peak).await
                }
            };
            for r in &rows {
                eprint!("{}", table_line(r));
                if r.workload == "uncontended"
                    && r.level == uncontended::PEAK_LEVEL
                    && r.ops_per_sec > 0.0
                {
                    peaks.insert(kind, r.ops_per_sec);
                }
            }
            results.extend(rows);
        }
    }
    let report = Report {
        machine,
        settings: (*settings).clone(),
        results,
    };
    let path = args
        .common
        .json
        .clone()
        .unwrap_or_else(|| root.join("target/lockd-bench/compare.json"));
    finish(&report, &path)
}

/// One workload on a freshly started `kind`, stopped afterwards. Failures become
/// error rows so that the other systems still run.
async fn measure(
    kind: SystemKind,
    workload: Workload,
    level: Option<usize>,
    opts: &DeployOpts,
    settings: &Arc<Settings>,
    prefix: &str,
    peak: Option<f64>,
) -> Vec<Row> {
    let level_name = level.map_or("-".to_string(), |l| {
        format!("{} waiters", workloads::scale::count_name(l as u64))
    });
    let error_row = |e: String| {
        vec![
            Row::new(
                workload.name(),
                kind.name(),
                level_name.clone(),
                level.unwrap_or(settings.clients),
            )
            .error(e),
        ]
    };
    tracing::info!("{} on {}: starting", workload.name(), kind.name());
    let started = std::time::Instant::now();
    let mut dep = match Deployment::start(kind, opts).await {
        Ok(d) => d,
        Err(e) => return error_row(format!("starting {}: {e:#}", kind.name())),
    };
    let rows = run_workload(&mut dep, workload, level, settings, prefix, peak, false).await;
    dep.stop().await;
    tracing::info!(
        "{} on {}: done in {:.1} s",
        workload.name(),
        kind.name(),
        started.elapsed().as_secs_f64()
    );
    rows.unwrap_or_else(|e| error_row(format!("{e:#}")))
}

/// Runs `workload` with a time limit, and notices a daemon that died meanwhile.
async fn run_workload(
    dep: &mut Deployment,
    workload: Workload,
    level: Option<usize>,
    settings: &Arc<Settings>,
    prefix: &str,
    peak: Option<f64>,
    cleanup: bool,
) -> Result<Vec<Row>> {
    let ctx = Ctx {
        system: dep.system.clone(),
        replicated: dep.replicated.clone(),
        settings: settings.clone(),
        daemon_pid: dep.daemon_pid,
        redis: dep.redis.clone(),
        prefix: prefix.to_string(),
        peak,
        cleanup,
    };
    let outcome = tokio::time::timeout(
        settings.workload_timeout,
        workloads::run(workload, &ctx, level),
    )
    .await;
    let alive = dep.check_running();
    match (outcome, alive) {
        (_, Err(dead)) => Err(dead.context("a process of the system under test died")),
        (Err(_), Ok(())) => anyhow::bail!("gave up after {:?}", settings.workload_timeout),
        (Ok(rows), Ok(())) => rows,
    }
}

async fn run_existing(args: RunArgs) -> Result<()> {
    let settings = Arc::new(Settings::new(&args.common));
    let workloads = if args.common.workloads.is_empty() {
        vec![Workload::Uncontended, Workload::Handoff, Workload::Expiry]
    } else {
        args.common.workloads.clone()
    };
    let channels = workloads
        .iter()
        .map(|w| channels_for(&settings, *w))
        .max()
        .unwrap_or(settings.channels);
    let mut dep = Deployment::existing(
        &args.endpoints,
        channels,
        args.redis_url.as_deref(),
        args.daemon_pid,
    )
    .await?;
    let machine = Machine::probe(None, &workspace_root()).await;
    let prefix = run_prefix();
    let mut peak = None;
    let mut results = Vec::new();
    for &workload in &workloads {
        tracing::info!("{}: starting", workload.name());
        let rows = run_workload(&mut dep, workload, None, &settings, &prefix, peak, true)
            .await
            .unwrap_or_else(|e| {
                vec![
                    Row::new(workload.name(), "lockd", "-", settings.clients)
                        .error(format!("{e:#}")),
                ]
            });
        for r in &rows {
            eprint!("{}", table_line(r));
            if r.workload == "uncontended"
                && r.level == uncontended::PEAK_LEVEL
                && r.ops_per_sec > 0.0
            {
                peak = Some(r.ops_per_sec);
            }
        }
        results.extend(rows);
    }
    let report = Report {
        machine,
        settings: (*settings).clone(),
        results,
    };
    match &args.common.json {
        Some(path) => finish(&report, path),
        None => {
            println!("{}", report.table());
            Ok(())
        }
    }
}

fn finish(report: &Report, path: &Path) -> Result<()> {
    println!("{}", report.table());
    report.write_json(path)?;
    eprintln!("results written to {}", path.display());
    Ok(())
}
