//! A Redis Cluster on loopback: three primaries and three replicas, or one
//! node alone.
//!
//! A one-second node timeout lets a killed primary fail over in seconds.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use crate::ids::try_free_port;
use crate::paths::{TempDir, program};
use crate::process::ChildProcess;
use crate::redis::{RedisServer, default_args, info_field, probe};
use crate::wait;

/// How long `redis-cli --cluster create` and the first convergence may take.
const CREATE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a failover may take; about 3 s is usual here.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);

/// The number of hash slots of every Redis Cluster.
const SLOTS: usize = 16384;

/// Cluster nodes (six, or one), all killed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

/// One primary as the cluster sees it, with its replicas and slot ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub primary: SocketAddr,
    pub replicas: Vec<SocketAddr>,
    /// Inclusive ranges.
    pub slots: Vec<(u16, u16)>,
}

impl RedisCluster {
    /// Starts six nodes, joins them with `redis-cli --cluster create
    /// --cluster-replicas 1`, and waits until every node reports the cluster
    /// ok with all slots assigned and every replica in sync.
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..6).map(|_| start_node()).collect();
        let scratch = TempDir::new("cluster-create")
            .unwrap_or_else(|e| panic!("creating a folder for redis-cli's output: {e}"));
        let mut cmd = Command::new(program("redis-cli"));
        cmd.args(["--cluster", "create"])
            .args(nodes.iter().map(|n| n.addr().to_string()))
            .args(["--cluster-replicas", "1", "--cluster-yes"]);
        let log = scratch.path().join("create.log");
        let mut create = ChildProcess::spawn("redis-cli --cluster create", cmd, &log)
            .unwrap_or_else(|e| panic!("running redis-cli (apt-get install redis-tools): {e}"));
        match create.wait_timeout(CREATE_TIMEOUT) {
            Some(status) if status.success() => {}
            Some(status) => panic!(
                "redis-cli --cluster create failed ({status}); its output:\n{}",
                create.log()
            ),
            None => panic!(
                "redis-cli --cluster create did not finish within {CREATE_TIMEOUT:?}; \
                 its output:\n{}",
                create.log()
            ),
        }
        let cluster = RedisCluster { nodes };
        let mut last = Vec::new();
        let formed = wait::until(CREATE_TIMEOUT, || {
            last = cluster.shards();
            let complete = last.len() == 3
                && last.iter().all(|s| s.replicas.len() == 1)
                && cluster.everyone_ok()
                && cluster.replicas_in_sync(&last);
            complete.then_some(())
        });
        if formed.is_none() {
            panic!(
                "the cluster did not settle into 3 primaries with a synced replica each \
                 within {CREATE_TIMEOUT:?}; it reports {last:?}"
            );
        }
        cluster
    }

    /// One node that serves every slot itself and has never met another
    /// node: its `CLUSTER SLOTS` names its own endpoint with an empty host.
    /// Waits until it reports the cluster ok.
    pub fn start_single() -> RedisCluster {
        let node = start_node();
        let addr = node.addr();
        let mut c = probe(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        let _: () = redis::cmd("CLUSTER")
            .arg("ADDSLOTSRANGE")
            .arg(0)
            .arg(SLOTS - 1)
            .query(&mut c)
            .unwrap_or_else(|e| panic!("CLUSTER ADDSLOTSRANGE on {addr}: {e}"));
        let cluster = RedisCluster { nodes: vec![node] };
        cluster.wait_ok();
        cluster
    }

    /// All nodes, in start order (not in current roles).
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Where the nodes listen, as seeds for a cluster client.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(RedisServer::addr).collect()
    }

    /// `redis+cluster://` with every node as a seed, for lockd's `--redis-url`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.addrs().iter().map(|a| a.to_string()).collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// The primary serving `slot`, as the first live node that answers sees it.
    pub fn primary_of(&self, slot: u16) -> Option<SocketAddr> {
        self.owner(slot)
    }

    /// The primaries that serve slots, as the first live node that answers
    /// sees them (empty if none answers).
    pub fn shards(&self) -> Vec<Shard> {
        self.live()
            .find_map(|n| cluster_nodes(n.addr()))
            .map(|text| parse_shards(&text))
            .unwrap_or_default()
    }

    /// kill -9 of the primary serving `slot`; returns its address.
    pub fn kill_primary_of(&mut self, slot: u16) -> SocketAddr {
        let primary = self.owner(slot).unwrap_or_else(|| {
            panic!(
                "no primary serves slot {slot}; the cluster reports {:?}",
                self.shards()
            )
        });
        self.node_mut(primary).kill();
        primary
    }

    /// Starts one more node and joins it as a primary with no slots, the way
    /// `redis-cli --cluster add-node` does; waits until every node knows
    /// every other and reports the cluster ok. `CLUSTER SLOTS` leaves it
    /// out until it serves a slot.
    /// Returns its address.
    pub fn add_primary(&mut self) -> SocketAddr {
        let node = start_node();
        let addr = node.addr();
        let seed = self
            .live()
            .next()
            .map(RedisServer::addr)
            .unwrap_or_else(|| panic!("no live node to join {addr} to"));
        let mut c = probe(seed).unwrap_or_else(|e| panic!("connecting to {seed}: {e}"));
        let _: () = redis::cmd("CLUSTER")
            .arg("MEET")
            .arg(addr.ip().to_string())
            .arg(addr.port())
            .arg(cluster_port(addr))
            .query(&mut c)
            .unwrap_or_else(|e| panic!("CLUSTER MEET {addr} on {seed}: {e}"));
        self.nodes.push(node);
        let everyone = self.live().count();
        let joined = wait::until(CREATE_TIMEOUT, || {
            self.live()
                .all(|n| {
                    cluster_nodes(n.addr()).is_some_and(|text| {
                        text.lines().count() == everyone && !text.contains("handshake")
                    })
                })
                .then_some(())
        });
        assert!(
            joined.is_some(),
            "{addr} did not join the cluster within {CREATE_TIMEOUT:?}"
        );
        // A node that just joined refuses keys until it has seen the map.
        self.wait_ok();
        addr
    }

    /// kill -9 of the node at `addr`, whatever its role.
    pub fn kill_node(&mut self, addr: SocketAddr) {
        self.node_mut(addr).kill();
    }

    /// `cluster-require-full-coverage` on every live node: with `yes`, a
    /// slot without a primary puts the whole cluster in state `fail`.
    pub fn require_full_coverage(&self, required: bool) {
        for node in self.live() {
            let addr = node.addr();
            let _: () = probe(addr)
                .and_then(|mut c| {
                    redis::cmd("CONFIG")
                        .arg("SET")
                        .arg("cluster-require-full-coverage")
                        .arg(if required { "yes" } else { "no" })
                        .query(&mut c)
                })
                .unwrap_or_else(|e| panic!("CONFIG SET on {addr}: {e}"));
        }
    }

    /// Waits until every live node reports `cluster_state:fail`.
    pub fn wait_failed(&self) {
        let failed = wait::until(FAILOVER_TIMEOUT, || {
            self.live()
                .all(|n| cluster_info(n.addr()).is_some_and(|t| t.contains("cluster_state:fail")))
                .then_some(())
        });
        assert!(
            failed.is_some(),
            "the cluster did not report state fail on every live node within {FAILOVER_TIMEOUT:?}"
        );
    }

    /// Starts the killed node at `addr` again with its data folder; it
    /// rejoins the cluster (as a replica, once another node took its slots).
    pub fn restart_node(&mut self, addr: SocketAddr) {
        self.node_mut(addr).restart();
    }

    fn node_mut(&mut self, addr: SocketAddr) -> &mut RedisServer {
        self.nodes
            .iter_mut()
            .find(|n| n.addr() == addr)
            .unwrap_or_else(|| panic!("{addr} is not a node of this cluster"))
    }

    /// Waits until every live node sees a primary other than `old` serving
    /// `slot` and reports the cluster ok; returns the new primary.
    pub fn wait_for_failover(&self, slot: u16, old: SocketAddr) -> SocketAddr {
        let new = wait::until(FAILOVER_TIMEOUT, || {
            let views: Vec<Option<SocketAddr>> = self
                .live()
                .map(|n| cluster_nodes(n.addr()).and_then(|t| owner_in(&parse_shards(&t), slot)))
                .collect();
            let first = (*views.first()?)?;
            let agreed = first != old && views.iter().all(|v| *v == Some(first));
            agreed.then_some(first)
        })
        .unwrap_or_else(|| {
            panic!(
                "slot {slot} did not fail over from {old} within {FAILOVER_TIMEOUT:?}; \
                 the cluster reports {:?}",
                self.shards()
            )
        });
        self.wait_ok();
        new
    }

    /// Starts moving `slot` to the primary at `to`, the way `redis-cli
    /// --cluster reshard` does: `to` imports it, its owner migrates it.
    /// Until [`RedisCluster::migrate_keys`] and
    /// [`RedisCluster::finish_slot_move`], the owner answers commands whose
    /// keys it still has and sends the others to `to` with ASK.
    pub fn begin_slot_move(&self, slot: u16, to: SocketAddr) {
        let from = self
            .owner(slot)
            .unwrap_or_else(|| panic!("no primary serves slot {slot}"));
        assert_ne!(from, to, "slot {slot} is already served by {to}");
        let (from_id, to_id) = (self.node_id(from), self.node_id(to));
        setslot(to, slot, &["IMPORTING", &from_id]);
        setslot(from, slot, &["MIGRATING", &to_id]);
    }

    /// Moves every key of `slot` from its owner to `to` (MIGRATE), after
    /// [`RedisCluster::begin_slot_move`].
    pub fn migrate_keys(&self, slot: u16, to: SocketAddr) {
        let from = self
            .owner(slot)
            .unwrap_or_else(|| panic!("no primary serves slot {slot}"));
        let mut c = probe(from).unwrap_or_else(|e| panic!("connecting to {from}: {e}"));
        loop {
            let keys: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(100)
                .query(&mut c)
                .unwrap_or_else(|e| panic!("CLUSTER GETKEYSINSLOT on {from}: {e}"));
            if keys.is_empty() {
                return;
            }
            let _: () = redis::cmd("MIGRATE")
                .arg(to.ip().to_string())
                .arg(to.port())
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(&keys)
                .query(&mut c)
                .unwrap_or_else(|e| panic!("MIGRATE from {from} to {to}: {e}"));
        }
    }

    /// Ends the move of `slot` to `to`: every primary is told that `to`
    /// owns it (the new owner first, as redis-cli does); the replicas learn
    /// it from them.
    pub fn finish_slot_move(&self, slot: u16, to: SocketAddr) {
        let to_id = self.node_id(to);
        setslot(to, slot, &["NODE", &to_id]);
        for shard in self.shards() {
            if shard.primary != to {
                setslot(shard.primary, slot, &["NODE", &to_id]);
            }
        }
        let moved = wait::until(FAILOVER_TIMEOUT, || {
            self.live()
                .all(|n| {
                    cluster_nodes(n.addr())
                        .is_some_and(|t| owner_in(&parse_shards(&t), slot) == Some(to))
                })
                .then_some(())
        });
        assert!(
            moved.is_some(),
            "not every node names {to} the owner of slot {slot}"
        );
    }

    /// The cluster node id of the node at `addr`.
    fn node_id(&self, addr: SocketAddr) -> String {
        let mut c = probe(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        redis::cmd("CLUSTER")
            .arg("MYID")
            .query(&mut c)
            .unwrap_or_else(|e| panic!("CLUSTER MYID on {addr}: {e}"))
    }

    /// Waits until every live node reports `cluster_state:ok`.
    pub fn wait_ok(&self) {
        if wait::until(FAILOVER_TIMEOUT, || self.everyone_ok().then_some(())).is_none() {
            panic!(
                "the cluster was not ok on every live node within {FAILOVER_TIMEOUT:?}; \
                 it reports {:?}",
                self.shards()
            );
        }
    }

    fn live(&self) -> impl Iterator<Item = &RedisServer> {
        self.nodes.iter().filter(|n| n.pid().is_some())
    }

    fn owner(&self, slot: u16) -> Option<SocketAddr> {
        owner_in(&self.shards(), slot)
    }

    fn everyone_ok(&self) -> bool {
        self.live().all(|n| {
            cluster_info(n.addr()).is_some_and(|text| {
                text.contains("cluster_state:ok")
                    && text.contains(&format!("cluster_slots_assigned:{SLOTS}"))
            })
        })
    }

    fn replicas_in_sync(&self, shards: &[Shard]) -> bool {
        shards
            .iter()
            .flat_map(|s| &s.replicas)
            .all(|r| info_field(*r, "replication", "master_link_status").as_deref() == Some("up"))
    }
}

/// A cluster node. Its own data folder already keeps its nodes file apart
/// from the others'; the port in the name tells them apart in a report. The
/// bus port is chosen free too: the default (port + 10000) may
/// be taken or above 65535.
fn start_node() -> RedisServer {
    RedisServer::launch("cluster node", Vec::new(), |port, dir| {
        let bus = try_free_port().unwrap_or_else(|e| panic!("finding a cluster bus port: {e}"));
        let mut args = default_args(port, dir, &[]);
        args.extend(
            [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &format!("nodes-{port}.conf"),
                "--cluster-node-timeout",
                "1000",
                "--cluster-require-full-coverage",
                "no",
                "--cluster-port",
                &bus.to_string(),
            ]
            .map(String::from),
        );
        args
    })
    .unwrap_or_else(|| panic!("redis-server is not installed (apt-get install redis-server)"))
}

/// The cluster bus port of the node at `addr` (`cluster-port`).
fn cluster_port(addr: SocketAddr) -> u16 {
    let value: Vec<String> = probe(addr)
        .and_then(|mut c| {
            redis::cmd("CONFIG")
                .arg("GET")
                .arg("cluster-port")
                .query(&mut c)
        })
        .unwrap_or_else(|e| panic!("CONFIG GET cluster-port on {addr}: {e}"));
    value
        .get(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{addr} answered cluster-port {value:?}"))
}

/// `CLUSTER SETSLOT slot <how...>` on the node at `addr`.
fn setslot(addr: SocketAddr, slot: u16, how: &[&str]) {
    let mut c = probe(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    let _: () = redis::cmd("CLUSTER")
        .arg("SETSLOT")
        .arg(slot)
        .arg(how)
        .query(&mut c)
        .unwrap_or_else(|e| panic!("CLUSTER SETSLOT {slot} {how:?} on {addr}: {e}"));
}

/// `CLUSTER INFO` of the node at `addr`.
fn cluster_info(addr: SocketAddr) -> Option<String> {
    probe(addr)
        .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query(&mut c))
        .ok()
}

/// `CLUSTER NODES` of the node at `addr`.
fn cluster_nodes(addr: SocketAddr) -> Option<String> {
    probe(addr)
        .and_then(|mut c| redis::cmd("CLUSTER").arg("NODES").query(&mut c))
        .ok()
}

/// The primaries with slots in a `CLUSTER NODES` answer (lines of `id
/// ip:port@bus flags master-id ping pong epoch link slot...`).
fn parse_shards(text: &str) -> Vec<Shard> {
    struct Line<'a> {
        id: &'a str,
        addr: Option<SocketAddr>,
        flags: Vec<&'a str>,
        master: &'a str,
        slots: Vec<(u16, u16)>,
    }
    let lines: Vec<Line> = text
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let addr = fields.get(1)?.split(['@', ',']).next()?.parse().ok();
            Some(Line {
                id: fields.first()?,
                addr,
                flags: fields.get(2)?.split(',').collect(),
                master: fields.get(3)?,
                slots: fields
                    .get(8..)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|s| parse_range(s))
                    .collect(),
            })
        })
        .collect();
    let healthy = |l: &Line| {
        !l.flags
            .iter()
            .any(|f| *f == "fail" || *f == "fail?" || *f == "handshake")
    };
    lines
        .iter()
        .filter(|l| l.flags.contains(&"master") && healthy(l) && !l.slots.is_empty())
        .filter_map(|m| {
            Some(Shard {
                primary: m.addr?,
                replicas: lines
                    .iter()
                    .filter(|r| r.flags.contains(&"slave") && r.master == m.id && healthy(r))
                    .filter_map(|r| r.addr)
                    .collect(),
                slots: m.slots.clone(),
            })
        })
        .collect()
}

/// `a-b` or `a`; `[...]` entries (slots being migrated) are skipped.
fn parse_range(field: &str) -> Option<(u16, u16)> {
    match field.split_once('-') {
        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
        None => {
            let slot = field.parse().ok()?;
            Some((slot, slot))
        }
    }
}

fn owner_in(shards: &[Shard], slot: u16) -> Option<SocketAddr> {
    shards
        .iter()
        .find(|s| s.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
        .map(|s| s.primary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_primaries_and_a_killed_one_fails_over() {
        let mut cluster = RedisCluster::start();
        let shards = cluster.shards();
        assert_eq!(shards.len(), 3, "{shards:?}");
        assert_eq!(cluster.nodes().len(), 6);
        assert!(cluster.addrs().iter().all(|a| a.ip().is_loopback()));
        assert!(cluster.url().starts_with("redis+cluster://127.0.0.1:"));
        assert!(cluster.primary_of(0).is_some());
        let old = cluster.kill_primary_of(0);
        let replica = shards.iter().find(|s| s.primary == old).unwrap().replicas[0];
        let new = cluster.wait_for_failover(0, old);
        assert_eq!(new, replica);
        assert_eq!(cluster.shards().len(), 3);
    }

    #[test]
    fn cluster_nodes_lines_are_parsed() {
        let text = "\
a 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b 127.0.0.1:7001@17001 master,fail - 0 0 2 connected
c 127.0.0.1:7002@17002 master - 0 0 3 connected 5461-10922 10923 [10924->-d]
d 127.0.0.1:7003@17003 slave a 0 0 1 connected
";
        let shards = parse_shards(text);
        assert_eq!(shards.len(), 2);
        assert_eq!(shards[0].replicas, vec!["127.0.0.1:7003".parse().unwrap()]);
        assert_eq!(shards[1].slots, vec![(5461, 10922), (10923, 10923)]);
        assert_eq!(
            owner_in(&shards, 10923),
            Some("127.0.0.1:7002".parse().unwrap())
        );
    }
}
