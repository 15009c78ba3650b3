//! `lockd-bench`: load lockd and compare it with plain Redis locks and etcd's Lock API.
//!
//! `compare` starts every system it measures on free loopback ports, runs each
//! workload against each system, prints a table and writes JSON; `run` loads an
//! existing lockd deployment; `failover` times failovers. Map of the modules:
//!
//! - [`cli`]: flags, and the [`cli::Settings`] that `--quick` and the flags resolve to.
//! - [`procs`]: child processes (redis-server, etcd, lockd) and their scratch folders.
//! - [`deploy`]: a running system under test, started here or reached at an address.
//! - [`systems`]: the [`systems::LockSystem`] trait and its four implementations.
//! - [`load`]: closed-loop and open-loop (fixed arrival rate) drivers.
//! - [`metrics`]: HDR latency histograms, process RSS, Redis `INFO` figures.
//! - [`workloads`]: one module per workload.
//! - [`report`]: result rows, the table and the JSON file; [`machine`]: what ran it.
//! - [`driver`]: the `compare` and `run` commands, tying the above together.
//! - [`failover`]: the `failover` command: kill -9 of a Redis primary or etcd's
//!   leader, and the time to the next grant on a fresh resource.

mod cli;
mod deploy;
mod driver;
mod failover;
mod load;
mod machine;
mod metrics;
mod procs;
mod report;
mod systems;
mod workloads;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,lockd_bench=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lockd-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The command future owns every child process; dropping it on a signal kills
    // them and removes their scratch folders (see `procs`).
    let outcome = runtime.block_on(async {
        tokio::select! {
            result = driver::run(cli) => result,
            signal = shutdown_signal() => Err(anyhow::anyhow!("interrupted by {signal}")),
        }
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lockd-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM, naming the signal.
async fn shutdown_signal() -> &'static str {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}
