//! The keyspace notification flags lockd needs, turned on through CONFIG where Redis allows it.

use std::hash::{BuildHasher, Hasher};
use std::time::{SystemTime, UNIX_EPOCH};

use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{RedisError, Value};

use crate::error::StoreError;
use crate::reply::{array, text};

/// Keyspace notification flags lockd needs: keyspace channel, generic, hash,
/// zset, expired and evicted events.
pub const NOTIFY_FLAGS: &str = "Kghzxe";

/// The events a probe write provokes, each with the flag that turns it on.
/// `e` (evicted) cannot be provoked on purpose, so no probe ever proves it.
pub(crate) const PROBE_EVENTS: [(&str, char); 4] =
    [("hset", 'h'), ("del", 'g'), ("zadd", 'z'), ("expired", 'x')];

/// What CONFIG told about the flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigCheck {
    /// Every flag was set already.
    AlreadySet,
    /// lockd added the flags `added` to what was set.
    Added { added: String },
    /// CONFIG is refused (as on many managed Redis services), so only a
    /// probe can tell whether the events arrive. Holds the server's answer.
    Unavailable(String),
}

/// Turns on the keyspace notifications lockd needs, keeping flags already set.
///
/// A refused CONFIG GET is not an error here: the flags may well be set in
/// the server's own configuration, and the caller's probe finds out. A
/// refused CONFIG SET is, since the flags are then known to be missing.
/// Connection failures pass through as they are, so that an outage is not
/// mistaken for a configuration problem.
///
/// `notify-keyspace-events` is not replicated, so this runs on `conn`'s node
/// only: every primary needs its own call, and a new primary after a failover
/// another.
pub(crate) async fn enable_notifications(
    conn: &mut impl ConnectionLike,
    timeout: Duration,
) -> Result<ConfigCheck, StoreError> {
    let mut get = redis::cmd("CONFIG");
    get.arg("GET").arg("notify-keyspace-events");
    let current = bounded(&get, conn, timeout).await;
    let current = match current {
        Ok(value) => config_value(value)?,
        Err(StoreError::Redis(err)) if refused(&err) => {
            return Ok(ConfigCheck::Unavailable(err.to_string()));
        }
        Err(err) => return Err(err),
    };
    let missing = missing_flags(&current);
    if missing.is_empty() {
        return Ok(ConfigCheck::AlreadySet);
    }
    let wanted = format!("{current}{missing}");
    let mut set = redis::cmd("CONFIG");
    set.arg("SET").arg("notify-keyspace-events").arg(&wanted);
    match bounded(&set, conn, timeout).await {
        Ok(_) => Ok(ConfigCheck::Added { added: missing }),
        Err(StoreError::Redis(err)) if refused(&err) => Err(StoreError::Notifications {
            flags: NOTIFY_FLAGS.to_owned(),
            reason: format!("notify-keyspace-events is {current:?} and CONFIG SET failed: {err}"),
        }),
        Err(err) => Err(err),
    }
}

async fn bounded(
    cmd: &redis::Cmd,
    conn: &mut impl ConnectionLike,
    timeout: Duration,
) -> Result<Value, StoreError> {
    match tokio::time::timeout(timeout, cmd.query_async::<Value>(conn)).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(StoreError::Timeout(timeout)),
    }
}

/// Whether the server answered with an error (unknown or forbidden command),
/// as opposed to the connection failing.
fn refused(err: &RedisError) -> bool {
    err.code().is_some()
}

/// The value of a CONFIG GET reply, RESP2 (array) or RESP3 (map).
pub(crate) fn config_value(value: Value) -> Result<String, StoreError> {
    match value {
        Value::Map(pairs) => pairs
            .into_iter()
            .next()
            .map(|(_, v)| text(&v))
            .unwrap_or_else(|| Ok(String::new())),
        other => {
            let items = array(other)?;
            items.get(1).map(text).unwrap_or_else(|| Ok(String::new()))
        }
    }
}

/// The flags of [`NOTIFY_FLAGS`] that `current` lacks; `A` stands for every type flag.
fn missing_flags(current: &str) -> String {
    NOTIFY_FLAGS
        .chars()
        .filter(|&f| {
            let covered_by_all = f != 'K' && current.contains('A');
            !current.contains(f) && !covered_by_all
        })
        .collect()
}

/// The flags whose probe events did not arrive. With none at all, `K`
/// itself (or the subscription) is in doubt, and so is every flag.
pub(crate) fn unseen_flags(seen: &[String]) -> String {
    if seen.is_empty() {
        let mut all = String::from("K");
        all.extend(PROBE_EVENTS.iter().map(|(_, flag)| flag));
        return all;
    }
    PROBE_EVENTS
        .iter()
        .filter(|(event, _)| !seen.iter().any(|s| s == event))
        .map(|(_, flag)| *flag)
        .collect()
}

/// A tail that names this daemon's probe key ([`crate::keys::Namespace::probe`])
/// apart from those of daemons sharing its prefix.
pub(crate) fn probe_tail() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    // RandomState is seeded randomly per process and per instance.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(nanos);
    format!("{:x}-{:016x}", std::process::id(), hasher.finish())
}

/// The `run_id` line of `INFO server`: it changes whenever Redis restarts or
/// another server takes over the address.
pub(crate) fn run_id(info: &str) -> Option<String> {
    info.lines()
        .find_map(|line| line.strip_prefix("run_id:"))
        .map(|id| id.trim().to_owned())
        .filter(|id| !id.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_flags_keep_what_is_set() {
        assert_eq!(missing_flags(""), "Kghzxe");
        assert_eq!(missing_flags("KEA"), "");
        assert_eq!(missing_flags("AE"), "K");
        assert_eq!(missing_flags("Kx"), "ghze");
    }

    #[test]
    fn unseen_flags_name_what_the_probe_missed() {
        assert_eq!(unseen_flags(&[]), "Khgzx");
        let seen: Vec<String> = ["hset", "del", "zadd", "expired"]
            .map(String::from)
            .to_vec();
        assert_eq!(unseen_flags(&seen), "");
        assert_eq!(unseen_flags(&seen[..2]), "zx");
    }

    #[test]
    fn probe_tails_are_unique() {
        assert_ne!(probe_tail(), probe_tail());
    }

    #[test]
    fn run_id_is_read_from_info() {
        let info = "# Server\r\nredis_version:7.0.15\r\nrun_id:abc123\r\ntcp_port:6379\r\n";
        assert_eq!(run_id(info).as_deref(), Some("abc123"));
        assert_eq!(run_id("# Server\r\n"), None);
    }
}
