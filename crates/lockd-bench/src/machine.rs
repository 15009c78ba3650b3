//! What the results were measured on: written into the JSON beside them.

use std::path::Path;

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_bytes: u64,
    pub cpu_model: String,
    pub kernel: String,
    pub os: String,
    /// 1-minute load average when the run started: the cores may be shared.
    pub loadavg_at_start: String,
    pub redis_version: String,
    pub etcd_version: String,
    pub lockd_binary: Option<String>,
    pub lockd_commit: String,
    pub started_at: String,
    pub command: Vec<String>,
}

impl Machine {
    pub async fn probe(lockd_binary: Option<&Path>, workspace: &Path) -> Machine {
        let cpuinfo = read("/proc/cpuinfo");
        let meminfo = read("/proc/meminfo");
        Machine {
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            memory_bytes: meminfo
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .map(|kb| kb * 1024)
                .unwrap_or(0),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
                .unwrap_or_default(),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            os: read("/etc/os-release")
                .lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
                .unwrap_or_default(),
            loadavg_at_start: read("/proc/loadavg")
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
            redis_version: first_line(&["redis-server", "--version"]).await,
            etcd_version: first_line(&["etcd", "--version"]).await,
            lockd_binary: lockd_binary.map(|p| p.display().to_string()),
            lockd_commit: first_line(&[
                "git",
                "-C",
                &workspace.display().to_string(),
                "rev-parse",
                "--short",
                "HEAD",
            ])
            .await,
            started_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            command: std::env::args().collect(),
        }
    }
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The first line a command prints, or "unavailable".
async fn first_line(argv: &[&str]) -> String {
    match tokio::process::Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .await
    {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string(),
        _ => "unavailable".into(),
    }
}
