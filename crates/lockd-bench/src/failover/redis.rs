//! What a failover run needs to know about the Redis under lockd: the Cluster
//! slot of a resource, a second replica for the shard that is killed, and when
//! the sentinels or the cluster name the new primary.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use lockd_testkit::{RedisServer, SentinelGroup};

use crate::procs::free_port;

/// The key prefix lockd uses unless `--key-prefix` says otherwise.
const LOCKD_KEY_PREFIX: &str = "lockd";

/// The slot of a key, as lockd routes it.
pub fn key_slot(key: &str) -> u16 {
    lockd_redis::conn::key_slot(key.as_bytes())
}

/// A key lockd writes for `resource` (its holders), as lockd-redis names it.
pub fn resource_key(resource: &str) -> String {
    lockd_redis::keys::Namespace::new(LOCKD_KEY_PREFIX, 0)
        .resource(resource)
        .holders
}

/// The slot every key of `resource` is in.
pub fn resource_slot(resource: &str) -> u16 {
    key_slot(&resource_key(resource))
}

/// The slot of a client id's lease index (which lockd writes ahead of every
/// grant to it, wherever the resource is).
pub fn client_slot(client_id: &str) -> u16 {
    key_slot(&lockd_redis::keys::Namespace::new(LOCKD_KEY_PREFIX, 0).client_index(client_id))
}

/// The first of `<base>0`, `<base>1`, ... whose lease index is outside `slots`.
pub fn client_outside(base: &str, slots: &[(u16, u16)]) -> String {
    (0u32..)
        .map(|i| format!("{base}{i}"))
        .find(|id| {
            let slot = client_slot(id);
            !slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
        })
        .unwrap_or_default()
}

/// `CLUSTER KEYSLOT` of `key` on the node at `addr`, to check [`key_slot`]
/// against the server.
pub async fn server_key_slot(addr: SocketAddr, key: &str) -> Result<u16> {
    let mut c = connect(addr).await?;
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(&mut c)
        .await
        .with_context(|| format!("CLUSTER KEYSLOT on {addr}"))
}

/// The first of `<base>0`, `<base>1`, ... whose slot is in `slots` (inclusive
/// ranges) or, with `inside` false, outside them.
pub fn name_in_slots(base: &str, slots: &[(u16, u16)], inside: bool) -> String {
    (0u32..)
        .map(|i| format!("{base}{i}"))
        .find(|name| {
            let slot = resource_slot(name);
            slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)) == inside
        })
        .unwrap_or_default()
}

async fn connect(addr: SocketAddr) -> Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://{addr}"))?;
    let connecting = client.get_multiplexed_async_connection();
    tokio::time::timeout(Duration::from_secs(2), connecting)
        .await
        .with_context(|| format!("connecting to {addr}: timed out"))?
        .with_context(|| format!("connecting to {addr}"))
}

/// `CLUSTER NODES` of the node at `addr`.
async fn cluster_nodes(c: &mut redis::aio::MultiplexedConnection) -> Result<String> {
    Ok(redis::cmd("CLUSTER").arg("NODES").query_async(c).await?)
}

/// One line of `CLUSTER NODES`: `id ip:port@bus flags master ping pong epoch link slot...`.
struct NodeLine<'a> {
    id: &'a str,
    addr: Option<SocketAddr>,
    bus: Option<u16>,
    flags: Vec<&'a str>,
    slots: Vec<(u16, u16)>,
}

fn node_lines(text: &str) -> Vec<NodeLine<'_>> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (addr, bus) = f.get(1)?.split_once('@')?;
            Some(NodeLine {
                id: f.first()?,
                addr: addr.parse().ok(),
                bus: bus.split(',').next()?.parse().ok(),
                flags: f.get(2)?.split(',').collect(),
                slots: f
                    .get(8..)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|s| match s.split_once('-') {
                        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                        None => s.parse().ok().map(|x| (x, x)),
                    })
                    .collect(),
            })
        })
        .collect()
}

/// The healthy primary serving `slot` in a `CLUSTER NODES` answer.
fn owner_of(text: &str, slot: u16) -> Option<SocketAddr> {
    node_lines(text)
        .into_iter()
        .filter(|l| l.flags.contains(&"master") && !l.flags.iter().any(|f| f.starts_with("fail")))
        .find(|l| l.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
        .and_then(|l| l.addr)
}

/// Starts one more cluster node and makes it a replica of `primary`, so that
/// the shard keeps a replica after a failover (as a Sentinel group does) and
/// `WAIT 1` there can succeed again. Returns once it is in sync and every one
/// of `nodes` knows it as a replica: a node that has not heard of it yet
/// ignores its pings, and a promoted replica that does not know it never
/// tells it to follow, which leaves it replicating the dead primary.
pub async fn add_replica(primary: SocketAddr, nodes: &[SocketAddr]) -> Result<RedisServer> {
    let bus = free_port()?.to_string();
    let node = tokio::task::spawn_blocking(move || {
        RedisServer::start_with(&[
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "1000",
            "--cluster-require-full-coverage",
            "no",
            "--cluster-port",
            &bus,
        ])
    })
    .await
    .map_err(|e| anyhow::anyhow!("the spare cluster node did not start: {e}"))?;
    let mut p = connect(primary).await?;
    let text = cluster_nodes(&mut p).await?;
    let me = node_lines(&text)
        .into_iter()
        .find(|l| l.flags.contains(&"myself"))
        .map(|l| (l.id.to_string(), l.bus))
        .context("CLUSTER NODES has no `myself` line")?;
    let (primary_id, Some(primary_bus)) = me else {
        bail!("CLUSTER NODES of {primary} names no bus port");
    };
    let mut n = connect(node.addr()).await?;
    let () = redis::cmd("CLUSTER")
        .arg("MEET")
        .arg(primary.ip().to_string())
        .arg(primary.port())
        .arg(primary_bus)
        .query_async(&mut n)
        .await
        .context("CLUSTER MEET")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    // REPLICATE needs the node to know the primary, which gossip tells it.
    loop {
        let known = cluster_nodes(&mut n).await?.contains(&primary_id);
        if known {
            let r: redis::RedisResult<()> = redis::cmd("CLUSTER")
                .arg("REPLICATE")
                .arg(&primary_id)
                .query_async(&mut n)
                .await;
            if r.is_ok() {
                break;
            }
        }
        if Instant::now() > deadline {
            bail!("the spare node did not become a replica of {primary} within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    loop {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut n)
            .await?;
        if info.contains("master_link_status:up") {
            break;
        }
        if Instant::now() > deadline {
            bail!("the spare replica of {primary} did not sync within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let id: String = redis::cmd("CLUSTER")
        .arg("MYID")
        .query_async(&mut n)
        .await
        .context("CLUSTER MYID")?;
    for addr in nodes {
        let mut c = connect(*addr).await?;
        loop {
            let text = cluster_nodes(&mut c).await?;
            let known = node_lines(&text).into_iter().any(|l| {
                l.id == id
                    && l.flags.contains(&"slave")
                    && !l.flags.iter().any(|f| matches!(*f, "handshake" | "noaddr"))
            });
            if known {
                break;
            }
            if Instant::now() > deadline {
                bail!("{addr} did not learn of the spare replica {id} within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(node)
}

/// Watches for the new primary after `old` was killed: resolves with the time
/// from `start` when it is named, and the node.
pub enum Watch {
    /// A majority of the sentinels answer `get-master-addr-by-name` with
    /// another node (what `+switch-master` announces).
    Sentinel(Vec<redis::aio::MultiplexedConnection>),
    /// A surviving node's `CLUSTER NODES` names another healthy primary for `slot`.
    Cluster(redis::aio::MultiplexedConnection, u16),
}

impl Watch {
    pub async fn sentinels(group: &SentinelGroup) -> Result<Watch> {
        let mut conns = Vec::new();
        for addr in group.sentinel_addrs() {
            conns.push(connect(addr).await?);
        }
        Ok(Watch::Sentinel(conns))
    }

    pub async fn cluster(survivor: SocketAddr, slot: u16) -> Result<Watch> {
        Ok(Watch::Cluster(connect(survivor).await?, slot))
    }

    /// Polls every `every` until the change is seen; `None` after `limit`.
    pub async fn run(
        mut self,
        old: SocketAddr,
        start: Instant,
        every: Duration,
        limit: Duration,
    ) -> Option<(Duration, SocketAddr)> {
        while start.elapsed() < limit {
            if let Some(new) = self.current().await.filter(|a| *a != old) {
                return Some((start.elapsed(), new));
            }
            tokio::time::sleep(every).await;
        }
        None
    }

    async fn current(&mut self) -> Option<SocketAddr> {
        match self {
            Watch::Sentinel(conns) => {
                let mut answers = Vec::new();
                for c in conns.iter_mut() {
                    let mut cmd = redis::cmd("SENTINEL");
                    cmd.arg("get-master-addr-by-name")
                        .arg(SentinelGroup::MASTER_NAME);
                    let asked = cmd.query_async::<(String, u16)>(c);
                    let answer = tokio::time::timeout(Duration::from_millis(500), asked).await;
                    if let Ok(Ok((host, port))) = answer {
                        answers.extend(format!("{host}:{port}").parse::<SocketAddr>().ok());
                    }
                }
                answers
                    .iter()
                    .find(|a| answers.iter().filter(|b| b == a).count() >= 2)
                    .copied()
            }
            Watch::Cluster(c, slot) => {
                let asked = cluster_nodes(c);
                let text = tokio::time::timeout(Duration::from_millis(500), asked)
                    .await
                    .ok()?
                    .ok()?;
                owner_of(&text, *slot)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resource_is_in_the_slot_of_its_bucket() {
        let key = resource_key("lockd-bench/x/fresh/1");
        let open = key.find('{').unwrap();
        let tag = &key[open + 1..open + 1 + key[open + 1..].find('}').unwrap()];
        assert_eq!(resource_slot("lockd-bench/x/fresh/1"), key_slot(tag));
        let inside = name_in_slots("r/", &[(0, 5460)], true);
        assert!(resource_slot(&inside) <= 5460);
        let outside = name_in_slots("r/", &[(0, 5460)], false);
        assert!(resource_slot(&outside) > 5460);
        let client = client_outside("c-", &[(0, 5460)]);
        assert!(client_slot(&client) > 5460);
    }

    #[test]
    fn the_owner_of_a_slot_is_a_healthy_primary() {
        let text = "\
a 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b 127.0.0.1:7001@17001 master,fail - 0 0 2 connected 5461-10922
c 127.0.0.1:7002@17002 master - 0 0 3 connected 10923-16383
d 127.0.0.1:7003@17003 slave a 0 0 1 connected
";
        assert_eq!(owner_of(text, 0), Some("127.0.0.1:7000".parse().unwrap()));
        assert_eq!(owner_of(text, 6000), None);
        assert_eq!(
            owner_of(text, 16383),
            Some("127.0.0.1:7002".parse().unwrap())
        );
        let lines = node_lines(text);
        assert_eq!(lines[0].bus, Some(17000));
    }
}
