//! The `lockd` binary: parses flags, starts logging, binds, and runs the daemon.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::CommandFactory;
use clap::error::ErrorKind;
use lockd::config::{Config, LogFormat};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::load().unwrap_or_else(|err| err.exit());
    if let Err(err) = config.validate() {
        // Checked before binding, so a refused configuration never holds the
        // port; reported the way clap reports a bad flag, on stderr, exit 2.
        Config::command()
            .error(ErrorKind::ArgumentConflict, err)
            .exit();
    }
    if config.print_config {
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    init_logging(&config);
    // Installed before the port opens, so that a SIGTERM as soon as the
    // daemon accepts connections already shuts it down gracefully.
    let shutdown = match shutdown_signal() {
        Ok(shutdown) => shutdown,
        Err(err) => {
            tracing::error!(error = %err, "cannot watch SIGINT and SIGTERM");
            return ExitCode::FAILURE;
        }
    };
    let listener = match TcpListener::bind(config.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!(addr = %config.listen, error = %err, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    match lockd::server::run(listener, config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "lockd stopped");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, so stdout stays for what the daemon is asked to print.
fn init_logging(config: &Config) {
    // RUST_LOG wins, so per-module debugging keeps working over a deployed
    // --log-level; a RUST_LOG that does not parse is reported, not obeyed.
    let rust_log = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let (filter, bad_rust_log) = match rust_log.as_deref().map(EnvFilter::try_new) {
        Some(Ok(filter)) => (filter, None),
        other => (
            EnvFilter::try_new(&config.log_level).unwrap_or_else(|_| EnvFilter::new("info")),
            other.and_then(Result::err),
        ),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        // Flattened, so `message` and the event's fields sit at the top level
        // where log pipelines look for them.
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => {
            // Colour codes are noise in files and log collectors.
            let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
            builder
                .with_ansi(std::io::stderr().is_terminal() && !no_color)
                .init();
        }
    }
    if let Some(err) = bad_rust_log {
        tracing::warn!(error = %err, log_level = %config.log_level, "RUST_LOG ignored");
    }
}

/// A future that resolves on SIGINT or SIGTERM, its handlers installed now.
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}
