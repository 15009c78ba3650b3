//! Parsing of the records and replies of lockd's Lua scripts into lock types.

use lockd_core::{Effects, Event, HoldEnd, Lease, LockId, LockMode, Waiter};
use redis::Value;

use crate::error::StoreError;

/// The common reply of every script that changes a resource (`finish` in common.lua).
pub(crate) struct ScriptReply {
    pub status: String,
    pub payload: Value,
    pub effects: Effects,
    pub queue_length: u64,
    /// Set when the reply grants or renews something fewer replicas than
    /// required confirmed: why, for the client's UNAVAILABLE.
    pub unconfirmed: Option<String>,
    /// The server the script ran on (run_id/master_replid), which a
    /// confirmation checks it still talks to.
    pub server: String,
}

fn bad(what: impl Into<String>) -> StoreError {
    StoreError::Reply(what.into())
}

pub(crate) fn text(v: &Value) -> Result<String, StoreError> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).map_err(|_| bad("non-utf8 string")),
        Value::SimpleString(s) => Ok(s.clone()),
        Value::Okay => Ok("OK".to_owned()),
        other => Err(bad(format!("expected a string, got {other:?}"))),
    }
}

pub(crate) fn int(v: &Value) -> Result<i64, StoreError> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::BulkString(_) | Value::SimpleString(_) => {
            text(v)?.parse().map_err(|_| bad("expected an integer"))
        }
        other => Err(bad(format!("expected an integer, got {other:?}"))),
    }
}

pub(crate) fn array(v: Value) -> Result<Vec<Value>, StoreError> {
    match v {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        other => Err(bad(format!("expected an array, got {other:?}"))),
    }
}

fn mode(field: &str) -> Result<LockMode, StoreError> {
    field
        .parse::<i32>()
        .ok()
        .and_then(LockMode::from_code)
        .ok_or_else(|| bad(format!("bad mode {field:?}")))
}

fn num<T: std::str::FromStr>(field: Option<&str>) -> Result<T, StoreError> {
    field
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| bad("bad number in record"))
}

/// A holder record `mode|token-acquired*1000|acquired|expires-acquired|ttl|renewals|max_renewals|client`
/// (see `parse_holder` in common.lua).
pub(crate) fn holder(record: &str, secret: &str, resource: &str) -> Result<Lease, StoreError> {
    let mut f = record.splitn(8, '|');
    let mode = mode(f.next().unwrap_or_default())?;
    let token_offset: u64 = num(f.next())?;
    let acquired_at_ms: u64 = num(f.next())?;
    let held_ms: u64 = num(f.next())?;
    Ok(Lease {
        lock_id: if secret.is_empty() {
            String::new()
        } else {
            LockId::new(secret, resource).encode()
        },
        resource: resource.to_owned(),
        mode,
        fencing_token: acquired_at_ms * 1000 + token_offset,
        acquired_at_ms,
        expires_at_ms: acquired_at_ms + held_ms,
        ttl_ms: num(f.next())?,
        renewal_count: num(f.next())?,
        max_renewals: num(f.next())?,
        client_id: f
            .next()
            .ok_or_else(|| bad("holder record without client"))?
            .to_owned(),
    })
}

/// A waiter record `mode|ttl|max_renewals|enqueued|deadline|daemon|client`.
pub(crate) fn waiter(record: &str, position: u64) -> Result<Waiter, StoreError> {
    let mut f = record.splitn(7, '|');
    let mode = mode(f.next().unwrap_or_default())?;
    let ttl_ms = num(f.next())?;
    let _max_renewals: u32 = num(f.next())?;
    let enqueued_at_ms = num(f.next())?;
    let _deadline: u64 = num(f.next())?;
    let _daemon = f.next();
    Ok(Waiter {
        client_id: f
            .next()
            .ok_or_else(|| bad("waiter record without client"))?
            .to_owned(),
        mode,
        ttl_ms,
        position,
        enqueued_at_ms,
    })
}

/// Events `g<mode>`, `r|x|a<mode>:<held ms>`, `q+` or `q-<count>` (that many dequeues).
fn events(s: &str, out: &mut Vec<Event>) -> Result<(), StoreError> {
    if let Some(count) = s.strip_prefix("q-") {
        let n: usize = count.parse().map_err(|_| bad(format!("bad event {s:?}")))?;
        out.extend(std::iter::repeat_n(Event::Dequeued, n));
        return Ok(());
    }
    out.push(event(s)?);
    Ok(())
}

/// One event `g<mode>`, `r|x|a<mode>:<held ms>` or `q+`.
fn event(s: &str) -> Result<Event, StoreError> {
    let (kind, rest) = s.split_at_checked(1).ok_or_else(|| bad("empty event"))?;
    let ended = |how| -> Result<Event, StoreError> {
        let (m, held) = rest.split_once(':').ok_or_else(|| bad("bad end event"))?;
        // Lua may print a whole number of milliseconds with a fraction.
        let held_ms = held.parse::<f64>().map_err(|_| bad("bad hold time"))?;
        Ok(Event::Ended {
            how,
            mode: mode(m)?,
            held_ms: held_ms.max(0.0) as u64,
        })
    };
    match kind {
        "g" => Ok(Event::Granted(mode(rest)?)),
        "r" => ended(HoldEnd::Released),
        "x" => ended(HoldEnd::Expired),
        "a" => ended(HoldEnd::Abandoned),
        "q" if rest == "+" => Ok(Event::Enqueued),
        _ => Err(bad(format!("unknown event {s:?}"))),
    }
}

/// Parses `{status, payload, my grants, next expiry, events, queue length}` (`finish` in common.lua).
pub(crate) fn script_reply(v: Value, resource: &str) -> Result<ScriptReply, StoreError> {
    let mut parts = array(v)?.into_iter();
    let mut next = || parts.next().ok_or_else(|| bad("short script reply"));
    let status = text(&next()?)?;
    let payload = next()?;
    let mine = array(next()?)?;
    let next_expiry = int(&next()?)?;
    let events = array(next()?)?;
    let queue_length = int(&next()?)?.max(0) as u64;
    let server = text(&next()?)?;
    let mut effects = Effects {
        next_expiry_in_ms: u64::try_from(next_expiry).ok(),
        ..Effects::default()
    };
    effects.my_grants = leases(mine, resource)?;
    for e in &events {
        self::events(&text(e)?, &mut effects.events)?;
    }
    Ok(ScriptReply {
        status,
        payload,
        effects,
        queue_length,
        unconfirmed: None,
        server,
    })
}

/// A flat list `secret, record, ...` as secrets with their leases.
fn leases(flat: Vec<Value>, resource: &str) -> Result<Vec<(String, Lease)>, StoreError> {
    flat.chunks(2)
        .map(|pair| match pair {
            [secret, record] => {
                let secret = text(secret)?;
                let lease = holder(&text(record)?, &secret, resource)?;
                Ok((secret, lease))
            }
            _ => Err(bad("odd grant list")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_records_keep_pipes_in_client_ids() {
        let lease = holder("3|17|1000|1000|1000|2|5|team|a|b", "s", "r").unwrap();
        assert_eq!(lease.mode, LockMode::Read);
        assert_eq!(lease.fencing_token, 1_000_017);
        assert_eq!(lease.acquired_at_ms, 1000);
        assert_eq!(lease.expires_at_ms, 2000);
        assert_eq!(lease.renewal_count, 2);
        assert_eq!(lease.max_renewals, 5);
        assert_eq!(lease.client_id, "team|a|b");
    }

    #[test]
    fn events_parse() {
        assert_eq!(event("g2").unwrap(), Event::Granted(LockMode::Shared));
        assert_eq!(
            event("x1:250").unwrap(),
            Event::Ended {
                how: HoldEnd::Expired,
                mode: LockMode::Exclusive,
                held_ms: 250
            }
        );
        assert_eq!(event("q+").unwrap(), Event::Enqueued);
        let mut out = Vec::new();
        events("q-3", &mut out).unwrap();
        assert_eq!(out, vec![Event::Dequeued; 3]);
        assert!(event("z9").is_err());
        assert!(events("q-", &mut out).is_err());
    }
}
