//! Redis Cluster: pipelines over many slots, the primaries, and reaching each of them.
//!
//! redis-rs refuses a pipeline whose commands hash to different slots
//! (CROSSSLOT), yet lockd reads all 256 buckets in one (statistics, the
//! reaper's due sets). Such a pipeline is split here into one sub-pipeline per
//! slot, sent at once, and the replies put back in order.

use std::collections::HashMap;

use redis::aio::ConnectionLike;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
use redis::{Arg, Cmd, Pipeline, RedisResult, Value};

use crate::error::StoreError;

/// The slot route of a command: its first key's, or `None` for a keyless command.
fn command_route(cmd: &Cmd) -> Option<Route> {
    let args: Vec<&[u8]> = cmd
        .args_iter()
        .filter_map(|a| match a {
            Arg::Simple(bytes) => Some(bytes),
            _ => None,
        })
        .collect();
    let name = args.first()?.to_ascii_uppercase();
    let key = match name.as_slice() {
        b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" | b"FCALL_RO" => {
            let count: u64 = std::str::from_utf8(args.get(2)?).ok()?.parse().ok()?;
            if count == 0 {
                return None;
            }
            args.get(3)?
        }
        b"PING" | b"ECHO" | b"TIME" | b"INFO" | b"CONFIG" | b"CLIENT" | b"ROLE" | b"SCRIPT"
        | b"CLUSTER" | b"WAIT" | b"DBSIZE" | b"SELECT" | b"COMMAND" => return None,
        _ => args.get(1)?,
    };
    Some(Route::with_key(key, SlotAddr::Master))
}

/// Sends `pipeline` on a cluster connection: as it is when all its commands
/// share a slot (or it is a transaction, which must), else split by slot.
pub(crate) async fn send_pipeline(
    conn: &mut ClusterConnection,
    pipeline: &Pipeline,
    offset: usize,
    count: usize,
) -> RedisResult<Vec<Value>> {
    let routes: Vec<Option<Route>> = pipeline.cmd_iter().map(command_route).collect();
    let mut distinct = routes.iter().flatten();
    let first = distinct.next();
    let one_slot = first.is_none_or(|first| distinct.all(|r| r == first));
    if pipeline.is_transaction() || one_slot {
        return conn.req_packed_commands(pipeline, offset, count).await;
    }
    // Commands of one slot stay in one sub-pipeline, in their order.
    let mut groups: Vec<(Option<Route>, Vec<usize>)> = Vec::new();
    let mut group_of: HashMap<Option<Route>, usize> = HashMap::new();
    for (i, route) in routes.iter().enumerate() {
        let g = *group_of.entry(*route).or_insert_with(|| {
            groups.push((*route, Vec::new()));
            groups.len() - 1
        });
        groups[g].1.push(i);
    }
    let commands: Vec<&Cmd> = pipeline.cmd_iter().collect();
    let sends = groups.iter().map(|(route, members)| {
        let mut sub = redis::pipe();
        for &i in members {
            sub.add_command(commands[i].clone());
        }
        let mut conn = conn.clone();
        let route: SingleNodeRoutingInfo = (*route).into();
        async move {
            let n = sub.len();
            conn.route_pipeline(sub, 0, n, route).await
        }
    });
    let replies = futures::future::join_all(sends).await;
    let mut values: Vec<Value> = vec![Value::Nil; commands.len()];
    for ((_, members), reply) in groups.iter().zip(replies) {
        for (&i, value) in members.iter().zip(reply?) {
            values[i] = value;
        }
    }
    Ok(values.into_iter().skip(offset).take(count).collect())
}

/// A primary and the slots it serves, from `CLUSTER SLOTS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Primary {
    pub host: String,
    pub port: u16,
    /// Inclusive ranges.
    pub slots: Vec<(u16, u16)>,
}

/// The primaries the cluster reports, each once, in slot order.
pub(crate) async fn primaries(conn: &mut ClusterConnection) -> Result<Vec<Primary>, StoreError> {
    let value: Value = redis::cmd("CLUSTER").arg("SLOTS").query_async(conn).await?;
    parse_slots(&value)
}

/// Parses `CLUSTER SLOTS`: `[[start, end, [host, port, id, ...], replica...], ...]`.
fn parse_slots(value: &Value) -> Result<Vec<Primary>, StoreError> {
    let bad = || StoreError::Reply(format!("CLUSTER SLOTS answered {value:?}"));
    let Value::Array(ranges) = value else {
        return Err(bad());
    };
    let mut primaries: Vec<Primary> = Vec::new();
    for range in ranges {
        let Value::Array(parts) = range else {
            return Err(bad());
        };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(node))) =
            (parts.first(), parts.get(1), parts.get(2))
        else {
            return Err(bad());
        };
        let host = match node.first() {
            Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(Value::SimpleString(s)) => s.clone(),
            _ => return Err(bad()),
        };
        let Some(Value::Int(port)) = node.get(1) else {
            return Err(bad());
        };
        // An unknown endpoint ("?" or empty) cannot be connected to.
        if host.is_empty() || host == "?" {
            continue;
        }
        let (Ok(port), Ok(start), Ok(end)) = (
            u16::try_from(*port),
            u16::try_from(*start),
            u16::try_from(*end),
        ) else {
            return Err(bad());
        };
        match primaries
            .iter_mut()
            .find(|p| p.host == host && p.port == port)
        {
            Some(known) => known.slots.push((start, end)),
            None => primaries.push(Primary {
                host,
                port,
                slots: vec![(start, end)],
            }),
        }
    }
    primaries.sort_by_key(|p| p.slots.first().map(|s| s.0));
    Ok(primaries)
}

/// Runs `cmd` on the node at `host:port` only.
pub(crate) async fn on_node(
    conn: &mut ClusterConnection,
    host: &str,
    port: u16,
    cmd: Cmd,
) -> RedisResult<Value> {
    conn.route_command(
        cmd,
        redis::cluster_routing::RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
            host: host.to_owned(),
            port,
        }),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_route_by_their_first_key() {
        let by_key = |key: &str| Some(Route::with_key(key, SlotAddr::Master));
        let mut hgetall = redis::cmd("HGETALL");
        hgetall.arg("p:{0a}:s");
        assert_eq!(command_route(&hgetall), by_key("{0a}"));
        let mut evalsha = redis::cmd("EVALSHA");
        evalsha
            .arg("sha")
            .arg(2)
            .arg("p:{r}:h")
            .arg("p:{r}:q")
            .arg("x");
        assert_eq!(command_route(&evalsha), by_key("r"));
        let mut keyless = redis::cmd("EVALSHA");
        keyless.arg("sha").arg(0);
        assert_eq!(command_route(&keyless), None);
        assert_eq!(command_route(&redis::cmd("PING")), None);
    }

    #[test]
    fn cluster_slots_are_parsed_into_primaries() {
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let value = Value::Array(vec![
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(10922),
                node("127.0.0.1", 7001),
                node("127.0.0.1", 7004),
            ]),
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("127.0.0.1", 7000),
            ]),
            Value::Array(vec![
                Value::Int(10923),
                Value::Int(10923),
                node("127.0.0.1", 7001),
            ]),
            Value::Array(vec![Value::Int(10924), Value::Int(16383), node("?", 7002)]),
        ]);
        let primaries = parse_slots(&value).ok();
        assert_eq!(
            primaries,
            Some(vec![
                Primary {
                    host: "127.0.0.1".to_owned(),
                    port: 7000,
                    slots: vec![(0, 5460)]
                },
                Primary {
                    host: "127.0.0.1".to_owned(),
                    port: 7001,
                    slots: vec![(5461, 10922), (10923, 10923)]
                },
            ])
        );
        assert!(parse_slots(&Value::Nil).is_err());
    }
}
