//! Measurements: HDR latency histograms, process RSS, and Redis `INFO` figures.

use std::time::Duration;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde::Serialize;

/// A latency histogram in nanoseconds, 1 ns to 10 minutes at 3 significant digits.
#[derive(Clone)]
pub struct Lat(Histogram<u64>);

impl Default for Lat {
    fn default() -> Self {
        Lat::new()
    }
}

impl Lat {
    pub fn new() -> Self {
        Lat(Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("valid histogram bounds"))
    }

    /// Records one latency; values past the top are clamped to it.
    pub fn record(&mut self, d: Duration) {
        let ns = (d.as_nanos() as u64).max(1);
        self.0.saturating_record(ns);
    }

    pub fn merge(&mut self, other: &Lat) {
        // Both histograms share the bounds above, so adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    /// The percentiles in milliseconds, or `None` when nothing was recorded.
    pub fn summary(&self) -> Option<Pct> {
        if self.0.is_empty() {
            return None;
        }
        let ms = |ns: u64| (ns as f64 / 1e6 * 1000.0).round() / 1000.0;
        Some(Pct {
            p50: ms(self.0.value_at_quantile(0.50)),
            p99: ms(self.0.value_at_quantile(0.99)),
            p999: ms(self.0.value_at_quantile(0.999)),
            max: ms(self.0.max()),
            mean: ms(self.0.mean() as u64),
            samples: self.0.len(),
        })
    }
}

/// Latency percentiles in milliseconds, as written to the JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Pct {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
    pub samples: u64,
}

/// Resident memory of a process on this machine, from `/proc/PID/status` (VmRSS).
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS line (has the process exited?)")?;
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .context("malformed VmRSS line")?
        .parse()
        .context("malformed VmRSS value")?;
    Ok(kb * 1024)
}

/// Reads `INFO` from the Redis a system keeps its state in.
#[derive(Clone)]
pub struct RedisProbe {
    conn: redis::aio::MultiplexedConnection,
}

impl RedisProbe {
    pub async fn connect(url: &str) -> Result<Self> {
        let client = redis::Client::open(url).with_context(|| format!("bad Redis URL {url}"))?;
        let conn = client
            .get_multiplexed_async_connection()
            .await
            .with_context(|| format!("connecting to {url}"))?;
        Ok(RedisProbe { conn })
    }

    async fn info(&self, section: &str) -> Result<String> {
        let mut conn = self.conn.clone();
        redis::cmd("INFO")
            .arg(section)
            .query_async(&mut conn)
            .await
            .with_context(|| format!("INFO {section}"))
    }

    /// `used_memory` from `INFO memory`, in bytes.
    pub async fn used_memory(&self) -> Result<u64> {
        let info = self.info("memory").await?;
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .context("no used_memory in INFO memory")?
            .trim()
            .parse()
            .context("malformed used_memory")
    }

    /// CPU seconds (user + system) Redis has used since it started, from `INFO cpu`.
    pub async fn cpu_secs(&self) -> Result<f64> {
        let info = self.info("cpu").await?;
        let field = |key: &str| -> Result<f64> {
            info.lines()
                .find_map(|l| l.strip_prefix(key))
                .with_context(|| format!("no {key} in INFO cpu"))?
                .trim()
                .parse()
                .with_context(|| format!("malformed {key}"))
        };
        Ok(field("used_cpu_user:")? + field("used_cpu_sys:")?)
    }

    /// Command counts since Redis started, from `INFO commandstats`.
    pub async fn commands(&self) -> Result<CmdStats> {
        let info = self.info("commandstats").await?;
        Ok(CmdStats::parse(&info))
    }
}

/// Totals of `INFO commandstats`, leaving out `INFO` itself so that probing
/// does not count. Commands run inside scripts count one by one, as Redis counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CmdStats {
    /// Every command.
    pub calls: u64,
    /// EVAL, EVALSHA and FCALL calls: one per script run.
    pub scripts: u64,
}

impl CmdStats {
    pub fn parse(info: &str) -> CmdStats {
        let mut out = CmdStats::default();
        for line in info.lines() {
            let Some((name, fields)) = line
                .strip_prefix("cmdstat_")
                .and_then(|l| l.split_once(':'))
            else {
                continue;
            };
            if name == "info" {
                continue;
            }
            let field = |key: &str| {
                fields
                    .split(',')
                    .find_map(|f| f.strip_prefix(key))
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            let calls = field("calls=");
            out.calls += calls;
            if matches!(
                name,
                "eval" | "evalsha" | "eval_ro" | "evalsha_ro" | "fcall" | "fcall_ro"
            ) {
                out.scripts += calls;
            }
        }
        out
    }

    pub fn since(self, before: CmdStats) -> CmdStats {
        CmdStats {
            calls: self.calls.saturating_sub(before.calls),
            scripts: self.scripts.saturating_sub(before.scripts),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_command_calls_without_info() {
        let info = "# Commandstats\r\ncmdstat_set:calls=10,usec=5,usec_per_call=0.5,rejected_calls=0,failed_calls=0\r\n\
                    cmdstat_info:calls=7,usec=1\r\ncmdstat_evalsha:calls=3,usec=9\r\n";
        let c = CmdStats::parse(info);
        assert_eq!(
            c,
            CmdStats {
                calls: 13,
                scripts: 3
            }
        );
        assert_eq!(
            c.since(CmdStats {
                calls: 3,
                scripts: 1
            })
            .calls,
            10
        );
    }

    #[test]
    fn percentiles_are_in_milliseconds() {
        let mut lat = Lat::new();
        for ms in 1..=100 {
            lat.record(Duration::from_millis(ms));
        }
        let p = lat.summary().unwrap();
        assert!((p.p50 - 50.0).abs() < 0.1, "{p:?}");
        assert!((p.p99 - 99.0).abs() < 0.1, "{p:?}");
        assert_eq!(p.samples, 100);
        assert!(Lat::new().summary().is_none());
    }
}
