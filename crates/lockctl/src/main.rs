//! `lockctl`: the command-line client of lockd.
//!
//! Layout: `cli` is the command line (its doc comments are the `--help`
//! text), `cmd` holds one module per subcommand, `output` renders text and
//! JSON on stdout, `report` prints lockctl's own messages on stderr, `exit`
//! maps failures to exit statuses, `watchdog` kills what `run` started if
//! lockctl dies. Everything that talks to the
//! daemon goes through the `lockd-client` crate.

// The doc comments of `cli` are `--help` text, written for the terminal
// (`[default: <user>@<hostname>]`), not rustdoc markup.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]

mod cli;
mod cmd;
mod exit;
mod output;
mod report;
mod watchdog;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // `lockctl run` starts a copy of itself as its watchdog (see `watchdog`).
    if let Some(status) = watchdog::main_if_watchdog() {
        return ExitCode::from(status);
    }
    let cli = cli::Cli::parse();
    // Warnings from the client library (such as a failed renewal being
    // retried) go to stderr; RUST_LOG=lockd_client=debug shows more. A lost
    // lease is reported by `run` itself, so the library's own line is off.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .event_format(report::LogFormat)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("warn,lockd_client::lease_lost=off")
            }),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            report::error(format_args!("starting the async runtime: {e}"));
            return ExitCode::from(exit::UNEXPECTED);
        }
    };
    match runtime.block_on(cmd::dispatch(cli)) {
        Ok(status) => ExitCode::from(status),
        Err(failure) => {
            report::error(&failure.message);
            ExitCode::from(failure.status)
        }
    }
}
