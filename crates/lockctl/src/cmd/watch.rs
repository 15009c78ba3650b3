//! `lockctl watch`: the holders and waiters of a resource, refreshed live.
//!
//! On a terminal (text mode) the screen is redrawn at every refresh. Into a
//! pipe, or with `--json`, a snapshot is printed each time it changes (one
//! JSON object per line). Ctrl-C or SIGTERM stops it with status 0.

use std::io::{IsTerminal, Write as _};
use std::time::{Duration, SystemTime};

use lockd_client::QueueSnapshot;
use tokio::signal::unix::{SignalKind, signal};

use crate::cmd::Ctx;
use crate::exit::{Failure, UNEXPECTED};
use crate::output::{print_line, queue_json, queue_text, time};
use crate::report;

pub async fn run(ctx: &Ctx, resource: &str, interval: Duration) -> Result<(), Failure> {
    let install = |kind| {
        signal(kind)
            .map_err(|e| Failure::new(UNEXPECTED, format!("installing a signal handler: {e}")))
    };
    let client = ctx.connect().await?;
    let mut interrupt = install(SignalKind::interrupt())?;
    let mut terminate = install(SignalKind::terminate())?;
    let redraw = !ctx.out.json && std::io::stdout().is_terminal();
    let mut ticks = tokio::time::interval(interval.max(Duration::from_millis(10)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<QueueSnapshot> = None;
    let mut failing = false;

    loop {
        let snapshot = tokio::select! {
            snapshot = async {
                ticks.tick().await;
                client.queue_snapshot(resource).await
            } => snapshot,
            _ = interrupt.recv() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
        };
        let snapshot = match snapshot {
            Ok(snapshot) => {
                if failing {
                    report::note("the daemon answers again");
                    failing = false;
                }
                snapshot
            }
            // The daemon restarting or Redis blinking should not end a watch.
            Err(err) if err.is_retryable() => {
                if !failing {
                    report::warning(format_args!(
                        "{} (still trying)",
                        Failure::from(err).message
                    ));
                    failing = true;
                }
                continue;
            }
            Err(err) => {
                return Err(Failure::from(err).context(format!("queue of {resource:?}")));
            }
        };
        if redraw {
            let mut out = std::io::stdout().lock();
            // Home the cursor and clear the screen, then draw.
            let _ = write!(
                out,
                "\x1b[H\x1b[2J{} every {}; Ctrl-C to stop\n\n{}",
                time(SystemTime::now()),
                humantime::format_duration(interval),
                queue_text(&snapshot)
            );
            let _ = out.flush();
        } else if last.as_ref() != Some(&snapshot) {
            if ctx.out.json {
                print_line(&queue_json(&snapshot).to_string());
            } else {
                print_line(&format!(
                    "--- {}\n{}",
                    time(SystemTime::now()),
                    queue_text(&snapshot).trim_end()
                ));
            }
        }
        last = Some(snapshot);
    }
}
