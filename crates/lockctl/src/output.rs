//! How results are shown: readable text by default, JSON with `--json`.
//!
//! JSON field names follow `lock.proto` (`fencing_token`, `ttl_ms`, ...);
//! times are RFC 3339 strings in UTC.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{Duration, SystemTime};

use lockd_client::{Lease, QueueSnapshot, Stats, Waiter};
use serde_json::{Value, json};

/// Where results go: stdout, as text or as JSON.
#[derive(Clone, Copy, Debug)]
pub struct Output {
    pub json: bool,
}

impl Output {
    /// Prints `json` in JSON mode, else the text made by `text`.
    pub fn emit(&self, json: Value, text: impl FnOnce() -> String) {
        if self.json {
            print_line(&json.to_string());
        } else {
            let text = text();
            print_line(text.trim_end_matches('\n'));
        }
    }
}

/// Writes one line to stdout; a closed pipe (`lockctl ... | head`) is not an error.
pub fn print_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

pub fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// A duration rounded for people: milliseconds under 10 s, seconds above.
pub fn approx(d: Duration) -> String {
    let rounded = if d >= Duration::from_secs(10) {
        Duration::from_secs(d.as_secs() + u64::from(d.subsec_millis() >= 500))
    } else {
        Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    };
    humantime::format_duration(rounded).to_string()
}

/// "in 12s" or "12s ago", relative to now.
pub fn relative(t: SystemTime) -> String {
    match t.duration_since(SystemTime::now()) {
        Ok(ahead) => format!("in {}", approx(ahead)),
        Err(e) => format!("{} ago", approx(e.duration())),
    }
}

pub fn lease_json(lease: &Lease) -> Value {
    json!({
        "lock_id": lease.lock_id,
        "resource": lease.resource,
        "mode": lease.mode.as_str(),
        "client_id": lease.client_id,
        "fencing_token": lease.fencing_token,
        "acquired_at": time(lease.acquired_at),
        "expires_at": time(lease.expires_at),
        "ttl_ms": u64::try_from(lease.ttl.as_millis()).unwrap_or(u64::MAX),
        "renewal_count": lease.renewal_count,
        "max_renewals": lease.max_renewals,
    })
}

pub fn lease_text(lease: &Lease) -> String {
    let limit = match lease.max_renewals {
        0 => "no limit".to_owned(),
        n => format!("limit {n}"),
    };
    let mut s = String::new();
    let _ = writeln!(s, "lock_id        {}", lease.lock_id);
    let _ = writeln!(s, "resource       {}", lease.resource);
    let _ = writeln!(s, "mode           {}", lease.mode);
    let _ = writeln!(s, "client_id      {}", lease.client_id);
    let _ = writeln!(s, "fencing_token  {}", lease.fencing_token);
    let _ = writeln!(
        s,
        "acquired_at    {} ({})",
        time(lease.acquired_at),
        relative(lease.acquired_at)
    );
    let _ = writeln!(
        s,
        "expires_at     {} ({})",
        time(lease.expires_at),
        relative(lease.expires_at)
    );
    let _ = writeln!(s, "ttl            {}", approx(lease.ttl));
    let _ = writeln!(s, "renewals       {} ({limit})", lease.renewal_count);
    s
}

pub fn leases_text(leases: &[Lease]) -> String {
    if leases.is_empty() {
        return "no leases".to_owned();
    }
    let mut rows = vec![[
        "LOCK_ID".to_owned(),
        "RESOURCE".to_owned(),
        "MODE".to_owned(),
        "TOKEN".to_owned(),
        "EXPIRES".to_owned(),
    ]];
    for l in leases {
        rows.push([
            l.lock_id.clone(),
            l.resource.clone(),
            l.mode.to_string(),
            l.fencing_token.to_string(),
            relative(l.expires_at),
        ]);
    }
    table(&rows)
}

fn waiter_json(w: &Waiter) -> Value {
    json!({
        "client_id": w.client_id,
        "mode": w.mode.as_str(),
        "ttl_ms": u64::try_from(w.ttl.as_millis()).unwrap_or(u64::MAX),
        "position": w.position,
        "enqueued_at": time(w.enqueued_at),
    })
}

pub fn queue_json(q: &QueueSnapshot) -> Value {
    json!({
        "resource": q.resource,
        "holders": q.holders.iter().map(lease_json).collect::<Vec<_>>(),
        "waiters": q.waiters.iter().map(waiter_json).collect::<Vec<_>>(),
    })
}

pub fn queue_text(q: &QueueSnapshot) -> String {
    let mut s = format!("resource {}\n", q.resource);
    if q.holders.is_empty() {
        s.push_str("holders: none\n");
    } else {
        let _ = writeln!(s, "holders ({}):", q.holders.len());
        let mut rows = vec![[
            "CLIENT_ID".to_owned(),
            "MODE".to_owned(),
            "TOKEN".to_owned(),
            "HELD".to_owned(),
            "EXPIRES".to_owned(),
        ]];
        for h in &q.holders {
            rows.push([
                h.client_id.clone(),
                h.mode.to_string(),
                h.fencing_token.to_string(),
                approx(h.acquired_at.elapsed().unwrap_or_default()),
                relative(h.expires_at),
            ]);
        }
        s.push_str(&indent(&table(&rows)));
    }
    if q.waiters.is_empty() {
        s.push_str("waiters: none\n");
    } else {
        let _ = writeln!(s, "waiters ({}):", q.waiters.len());
        let mut rows = vec![[
            "POS".to_owned(),
            "CLIENT_ID".to_owned(),
            "MODE".to_owned(),
            "TTL".to_owned(),
            "WAITING".to_owned(),
        ]];
        for w in &q.waiters {
            rows.push([
                w.position.to_string(),
                w.client_id.clone(),
                w.mode.to_string(),
                if w.ttl.is_zero() {
                    "default".to_owned()
                } else {
                    approx(w.ttl)
                },
                approx(w.enqueued_at.elapsed().unwrap_or_default()),
            ]);
        }
        s.push_str(&indent(&table(&rows)));
    }
    s
}

pub fn stats_json(st: &Stats) -> Value {
    json!({
        "total_locks": st.total_locks,
        "active_locks": st.active_locks,
        "expired_locks": st.expired_locks,
        "released_locks": st.released_locks,
        "average_hold_time_ms": st.average_hold_time_ms,
        "active_by_mode": st.active_by_mode,
        "top_resources": st.top_resources.iter()
            .map(|(resource, locks)| json!({"resource": resource, "locks": locks}))
            .collect::<Vec<_>>(),
        "waiting": st.waiting,
    })
}

pub fn stats_text(st: &Stats) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "active locks      {}", st.active_locks);
    let by_mode: Vec<String> = st
        .active_by_mode
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(mode, n)| format!("{mode} {n}"))
        .collect();
    if !by_mode.is_empty() {
        let _ = writeln!(s, "  by mode         {}", by_mode.join(", "));
    }
    let _ = writeln!(s, "waiting           {}", st.waiting);
    let _ = writeln!(s, "total granted     {}", st.total_locks);
    let _ = writeln!(s, "released          {}", st.released_locks);
    let _ = writeln!(s, "expired           {}", st.expired_locks);
    let avg = Duration::from_secs_f64((st.average_hold_time_ms / 1000.0).max(0.0));
    let _ = writeln!(s, "average hold time {}", approx(avg));
    if !st.top_resources.is_empty() {
        s.push_str("top resources:\n");
        let mut rows = vec![["LOCKS".to_owned(), "RESOURCE".to_owned()]];
        for (resource, locks) in &st.top_resources {
            rows.push([locks.to_string(), resource.clone()]);
        }
        s.push_str(&indent(&table(&rows)));
    }
    s
}

/// Left-aligned columns separated by two spaces.
fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut s = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[i]);
            }
        }
        s.push_str(line.trim_end());
        s.push('\n');
    }
    s
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(approx(Duration::from_millis(1500)), "1s 500ms");
        assert_eq!(approx(Duration::from_millis(29_600)), "30s");
        assert_eq!(approx(Duration::from_micros(1_234_567)), "1s 234ms");
    }

    #[test]
    fn tables_align_columns() {
        let rows = [
            ["A".to_owned(), "B".to_owned()],
            ["long".to_owned(), "x".to_owned()],
        ];
        assert_eq!(table(&rows), "A     B\nlong  x\n");
    }
}
