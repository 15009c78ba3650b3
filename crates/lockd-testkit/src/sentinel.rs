//! A Sentinel deployment that fails over within seconds.
//!
//! One primary, two replicas and three sentinels (quorum 2) on loopback.

use std::net::SocketAddr;
use std::time::Duration;

use crate::redis::{RedisServer, info_field, probe};
use crate::wait;

/// How long replication and sentinel discovery may take at start.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a failover may take; about 3 s is usual here.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);

/// A primary with two replicas watched by three sentinels, all killed on
/// drop. Each node has its own data folder, so a replica's received RDB is
/// never loaded by another node.
#[derive(Debug)]
pub struct SentinelGroup {
    /// The data nodes; the first one started as the primary.
    nodes: Vec<RedisServer>,
    sentinels: Vec<RedisServer>,
}

impl SentinelGroup {
    /// The name the sentinels monitor the primary under.
    pub const MASTER_NAME: &'static str = "mymaster";

    /// Starts the six processes and waits until both replicas are in sync and
    /// every sentinel knows both replicas and the two other sentinels, so a
    /// failover can start right away. Panics naming what did not come up.
    pub fn start() -> SentinelGroup {
        SentinelGroup::start_with_successor_clock(None)
    }

    /// [`SentinelGroup::start`] where the first replica's wall clock runs
    /// `offset_secs` away from the real one (libfaketime) and the second can
    /// never be promoted (`replica-priority 0`): the primary's successor is
    /// the replica with the shifted clock.
    pub fn start_with_successor_offset(offset_secs: i64) -> SentinelGroup {
        SentinelGroup::start_with_successor_clock(Some(offset_secs))
    }

    fn start_with_successor_clock(offset_secs: Option<i64>) -> SentinelGroup {
        let primary = RedisServer::start();
        let primary_port = primary.port().to_string();
        let replica_of = ["--replicaof", "127.0.0.1", primary_port.as_str()];
        let mut nodes = vec![primary];
        match offset_secs {
            None => {
                for _ in 0..2 {
                    nodes.push(RedisServer::start_with(&replica_of));
                }
            }
            Some(offset) => {
                nodes.push(RedisServer::start_with_clock_offset(offset, &replica_of));
                let mut never = replica_of.to_vec();
                never.extend(["--replica-priority", "0"]);
                nodes.push(RedisServer::start_with(&never));
            }
        }
        for replica in &nodes[1..] {
            let addr = replica.addr();
            let linked = wait::until(SETTLE_TIMEOUT, || {
                (info_field(addr, "replication", "master_link_status")? == "up").then_some(())
            });
            if linked.is_none() {
                panic!(
                    "replica {addr} did not sync with primary 127.0.0.1:{primary_port} \
                     within {SETTLE_TIMEOUT:?}"
                );
            }
        }
        let sentinels: Vec<RedisServer> = (0..3).map(|_| start_sentinel(&primary_port)).collect();
        for sentinel in &sentinels {
            let addr = sentinel.addr();
            let mut last = Vec::new();
            let settled = wait::until(SETTLE_TIMEOUT, || {
                last = sentinel_master(addr)?;
                let field = |name: &str| {
                    last.iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.as_str())
                };
                (field("flags") == Some("master")
                    && field("num-slaves") == Some("2")
                    && field("num-other-sentinels") == Some("2"))
                .then_some(())
            });
            if settled.is_none() {
                panic!(
                    "sentinel {addr} did not see the primary with 2 replicas and 2 other \
                     sentinels within {SETTLE_TIMEOUT:?}; it reports {last:?}"
                );
            }
        }
        SentinelGroup { nodes, sentinels }
    }

    /// Where the sentinels listen, for a Sentinel-aware client.
    pub fn sentinel_addrs(&self) -> Vec<SocketAddr> {
        self.sentinels.iter().map(RedisServer::addr).collect()
    }

    /// `redis+sentinel://` with every sentinel and the master name, for lockd's `--redis-url`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinel_addrs()
            .iter()
            .map(|a| a.to_string())
            .collect();
        format!(
            "redis+sentinel://{}/{}",
            hosts.join(","),
            SentinelGroup::MASTER_NAME
        )
    }

    /// The data nodes other than the current primary.
    pub fn replica_addrs(&self) -> Vec<SocketAddr> {
        let primary = self.primary_addr();
        self.nodes
            .iter()
            .filter(|n| n.pid().is_some())
            .map(RedisServer::addr)
            .filter(|a| *a != primary)
            .collect()
    }

    /// The primary and the replicas, in start order (not in current roles).
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The data node listening on `addr`.
    pub fn node(&self, addr: SocketAddr) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| n.addr() == addr)
            .unwrap_or_else(|| panic!("no node of the sentinel group listens on {addr}"))
    }

    /// The data node listening on `addr`, to kill or restart it.
    pub fn node_mut(&mut self, addr: SocketAddr) -> &mut RedisServer {
        self.nodes
            .iter_mut()
            .find(|n| n.addr() == addr)
            .unwrap_or_else(|| panic!("no node of the sentinel group listens on {addr}"))
    }

    /// The primary a majority of the sentinels report, waiting a little while
    /// they disagree (as they do during a failover).
    pub fn primary_addr(&self) -> SocketAddr {
        let mut answers = Vec::new();
        wait::until(Duration::from_secs(5), || {
            answers = self.reported_primaries();
            majority(&answers)
        })
        .unwrap_or_else(|| panic!("the sentinels do not agree on a primary: {answers:?}"))
    }

    /// kill -9 of the current primary; returns its address.
    pub fn kill_primary(&mut self) -> SocketAddr {
        let addr = self.primary_addr();
        self.node_mut(addr).kill();
        addr
    }

    /// SIGSTOP of the current primary (resume it with
    /// `node(addr).resume()`); returns its address.
    pub fn pause_primary(&self) -> SocketAddr {
        let addr = self.primary_addr();
        self.node(addr).pause();
        addr
    }

    /// Waits until a majority of the sentinels report a primary other than
    /// `old` and that node says it is a master; returns it.
    pub fn wait_for_failover(&self, old: SocketAddr) -> SocketAddr {
        let mut answers = Vec::new();
        wait::until(FAILOVER_TIMEOUT, || {
            answers = self.reported_primaries();
            let new = majority(&answers).filter(|addr| *addr != old)?;
            (info_field(new, "replication", "role")? == "master").then_some(new)
        })
        .unwrap_or_else(|| {
            panic!(
                "the sentinels did not fail over from {old} within {FAILOVER_TIMEOUT:?}; \
                 they report {answers:?}"
            )
        })
    }

    /// What each sentinel answers to `get-master-addr-by-name` (`None` when
    /// it does not answer).
    fn reported_primaries(&self) -> Vec<Option<SocketAddr>> {
        self.sentinels
            .iter()
            .map(|s| {
                let (host, port): (String, u16) = probe(s.addr())
                    .and_then(|mut c| {
                        redis::cmd("SENTINEL")
                            .arg("get-master-addr-by-name")
                            .arg(SentinelGroup::MASTER_NAME)
                            .query(&mut c)
                    })
                    .ok()?;
                format!("{host}:{port}").parse().ok()
            })
            .collect()
    }
}

/// The address at least two of the answers name.
fn majority(answers: &[Option<SocketAddr>]) -> Option<SocketAddr> {
    answers
        .iter()
        .flatten()
        .find(|a| answers.iter().flatten().filter(|b| b == a).count() >= 2)
        .copied()
}

/// A sentinel watching the primary on `primary_port`. Each sentinel needs a
/// config file of its own, because it rewrites it.
fn start_sentinel(primary_port: &str) -> RedisServer {
    let master = SentinelGroup::MASTER_NAME;
    RedisServer::launch("sentinel", Vec::new(), |port, dir| {
        let conf = dir.join("sentinel.conf");
        let text = format!(
            "port {port}\n\
             bind 127.0.0.1\n\
             dir {dir}\n\
             sentinel monitor {master} 127.0.0.1 {primary_port} 2\n\
             sentinel down-after-milliseconds {master} 1000\n\
             sentinel failover-timeout {master} 3000\n",
            dir = dir.display()
        );
        std::fs::write(&conf, text).unwrap_or_else(|e| panic!("writing {}: {e}", conf.display()));
        vec![conf.display().to_string(), "--sentinel".to_string()]
    })
    .unwrap_or_else(|| panic!("redis-server is not installed (apt-get install redis-server)"))
}

/// `SENTINEL MASTER` of the sentinel at `addr`, as `field -> value` pairs.
fn sentinel_master(addr: SocketAddr) -> Option<Vec<(String, String)>> {
    let flat: Vec<String> = probe(addr)
        .and_then(|mut c| {
            redis::cmd("SENTINEL")
                .arg("MASTER")
                .arg(SentinelGroup::MASTER_NAME)
                .query(&mut c)
        })
        .ok()?;
    Some(
        flat.chunks(2)
            .filter_map(|kv| Some((kv.first()?.clone(), kv.get(1)?.clone())))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_killed_primary_is_replaced() {
        let mut group = SentinelGroup::start();
        assert_eq!(group.sentinel_addrs().len(), 3);
        assert!(group.url().starts_with("redis+sentinel://127.0.0.1:"));
        assert!(group.url().ends_with("/mymaster"));
        assert_eq!(group.replica_addrs().len(), 2);
        assert_eq!(group.nodes().len(), 3);
        let old = group.kill_primary();
        let new = group.wait_for_failover(old);
        assert_ne!(new, old);
        assert_eq!(group.primary_addr(), new);
        let () = redis::cmd("SET")
            .arg("k")
            .arg("v")
            .query(&mut group.node(new).connection())
            .unwrap();
    }

    #[test]
    fn a_paused_primary_is_replaced() {
        let group = SentinelGroup::start();
        let old = group.pause_primary();
        let new = group.wait_for_failover(old);
        assert_ne!(new, old);
        group.node(old).resume();
    }
}
