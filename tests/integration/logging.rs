//! Log output of the real binary: JSON lines, no colour codes off a terminal,
//! `--log-level` below `RUST_LOG`.

use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::free_port;

/// Everything `lockd --dev ARGS` logs from start to a SIGTERM, its output
/// piped (not a terminal).
fn logs(args: &[&str], rust_log: Option<&str>) -> String {
    let port = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_lockd"));
    command
        .args(["--dev", "--listen", &format!("127.0.0.1:{port}")])
        .args(args)
        .env_remove("NO_COLOR")
        .env_remove("LOCKD_LOG_LEVEL")
        .env_remove("LOCKD_LOG_FORMAT")
        .env_remove("LOCKD_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match rust_log {
        Some(filter) => command.env("RUST_LOG", filter),
        None => command.env_remove("RUST_LOG"),
    };
    let child = command.spawn().expect("spawn lockd");
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "lockd {args:?} did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SIGTERM rather than a kill, so that shutdown is logged as well.
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success());
    let out = child.wait_with_output().expect("wait for lockd");
    assert!(out.status.success(), "{args:?}: {:?}", out.status);
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    text
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
        })
        .collect()
}

#[test]
fn json_logs_are_one_object_per_line() {
    let text = logs(&["--log-format", "json"], None);
    let lines = json_lines(&text);
    assert!(!lines.is_empty(), "no logs");
    for line in &lines {
        assert!(line["level"].is_string(), "{line}");
        assert!(line["message"].is_string(), "{line}");
    }
    // The event's fields sit beside the message.
    let serving = lines
        .iter()
        .find(|line| line["message"] == "lockd serving")
        .unwrap_or_else(|| panic!("no serving line in {text}"));
    assert!(serving["addr"].is_string(), "{serving}");
    assert!(
        lines.iter().any(|line| line["message"] == "shutting down"),
        "{text}"
    );
}

#[test]
fn text_logs_have_no_colour_codes_off_a_terminal() {
    let text = logs(&["--log-format", "text"], None);
    assert!(text.contains("lockd serving"), "{text}");
    assert!(!text.contains("\x1b["), "{text:?}");
}

#[test]
fn log_level_filters_and_rust_log_wins() {
    let quiet = logs(&["--log-format", "json", "--log-level", "warn"], None);
    assert!(
        json_lines(&quiet)
            .iter()
            .all(|line| line["level"] != "INFO"),
        "{quiet}"
    );
    let loud = logs(
        &["--log-format", "json", "--log-level", "error"],
        Some("info"),
    );
    assert!(loud.contains("lockd serving"), "{loud}");
}
