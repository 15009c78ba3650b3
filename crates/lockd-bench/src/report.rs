//! Result rows, the table printed at the end, and the JSON file.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::cli::Settings;
use crate::machine::Machine;
use crate::metrics::Pct;

/// One (workload, system, level) result. Figures particular to a workload go in
/// `extra`, flattened into the JSON object.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub workload: String,
    pub system: String,
    pub level: String,
    pub clients: usize,
    pub ops_per_sec: f64,
    pub latency_ms: Option<Pct>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
    /// Short remarks for the table's last column (also in the JSON).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Row {
    pub fn new(workload: &str, system: &str, level: impl Into<String>, clients: usize) -> Row {
        Row {
            workload: workload.into(),
            system: system.into(),
            level: level.into(),
            clients,
            ops_per_sec: 0.0,
            latency_ms: None,
            extra: Map::new(),
            notes: Vec::new(),
            error: None,
        }
    }

    pub fn ops(mut self, per_sec: f64) -> Row {
        self.ops_per_sec = (per_sec * 10.0).round() / 10.0;
        self
    }

    pub fn latency(mut self, p: Option<Pct>) -> Row {
        self.latency_ms = p;
        self
    }

    /// Adds an extra figure; `None` values are left out.
    pub fn set(mut self, key: &str, value: impl Serialize) -> Row {
        self.insert(key, value);
        self
    }

    pub fn insert(&mut self, key: &str, value: impl Serialize) {
        let v = serde_json::to_value(value).unwrap_or(Value::Null);
        if !v.is_null() {
            self.extra.insert(key.into(), v);
        }
    }

    /// Adds a remark for the table; empty ones are left out.
    pub fn note(mut self, note: impl Into<String>) -> Row {
        self.add_note(note);
        self
    }

    pub fn add_note(&mut self, note: impl Into<String>) {
        let note = note.into();
        if !note.is_empty() {
            self.notes.push(note);
        }
    }

    pub fn error(mut self, e: impl std::fmt::Display) -> Row {
        self.error = Some(e.to_string());
        self
    }
}

#[derive(Serialize)]
pub struct Report {
    pub machine: Machine,
    pub settings: Settings,
    pub results: Vec<Row>,
}

impl Report {
    /// The results as a Markdown table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        out.push_str("| workload | system | level | clients | ops/s | p50 ms | p99 ms | p99.9 ms | notes |\n");
        out.push_str("|---|---|---|---:|---:|---:|---:|---:|---|\n");
        for r in &self.results {
            out.push_str(&table_line(r));
        }
        out
    }

    pub fn write_json(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
    }
}

/// One row of the Markdown table.
pub fn table_line(r: &Row) -> String {
    let num = |v: f64| {
        if v >= 100.0 {
            format!("{v:.0}")
        } else if v >= 1.0 {
            format!("{v:.2}")
        } else {
            format!("{v:.3}")
        }
    };
    let (p50, p99, p999) = match &r.latency_ms {
        Some(p) => (num(p.p50), num(p.p99), num(p.p999)),
        None => ("-".into(), "-".into(), "-".into()),
    };
    let ops = if r.ops_per_sec > 0.0 {
        format!("{:.0}", r.ops_per_sec)
    } else {
        "-".into()
    };
    let mut notes = r.notes.join("; ");
    if let Some(e) = &r.error {
        if !notes.is_empty() {
            notes.push_str("; ");
        }
        // Errors quoting a log put it after a line break; keep the first lines
        // of it, since that is where a daemon says why it did not start.
        let flat = e
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" / ");
        let _ = write!(
            notes,
            "ERROR: {}",
            flat.chars().take(200).collect::<String>()
        );
    }
    format!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
        r.workload,
        r.system,
        r.level,
        r.clients,
        ops,
        p50,
        p99,
        p999,
        notes.replace('|', "/")
    )
}

/// Bytes in a short human form (B, KiB, MiB, GiB).
pub fn bytes(n: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB"];
    let mut v = n;
    let mut i = 0;
    while v.abs() >= 1024.0 && i < units.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_flattens_extras_and_skips_none() {
        let row = Row::new("scale", "etcd", "1k leases", 64)
            .ops(1234.56)
            .set("redis_bytes_per_lease", Some(200.5))
            .set("fifo_ok", None::<bool>);
        let v = serde_json::to_value(&row).unwrap();
        assert_eq!(v["redis_bytes_per_lease"], 200.5);
        assert_eq!(v["ops_per_sec"], 1234.6);
        assert!(v.get("fifo_ok").is_none());
        assert!(v["latency_ms"].is_null());
    }

    #[test]
    fn human_bytes() {
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(1536.0), "1.5 KiB");
        assert_eq!(bytes(3.0 * 1024.0 * 1024.0), "3.0 MiB");
    }
}
