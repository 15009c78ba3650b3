//! High availability: two daemons on a Sentinel group and on a Redis Cluster,
//! through kill -9 and SIGSTOP of primaries, a promoted replica whose clock
//! is behind, and one shard failing while the others serve. Every test runs
//! a workload whose acknowledged leases a checker compares: no two
//! overlapping, tokens rising, no call hanging, service back by itself.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lockd::pb;
use lockd_redis::keys::Namespace;
use lockd_testkit::{RedisCluster, SentinelGroup};
use tonic::Code;

use crate::harness::*;

/// Lease length of the workload, and the quarantine that covers it.
const TTL_MS: u64 = 1_500;

/// The flags of every daemon here: short leases, a quarantine as long as
/// the longest lease (the safe setting), and waits short enough to finish.
fn ha_args(url: &str, prefix: &str) -> Vec<String> {
    [
        "--redis-url",
        url,
        "--key-prefix",
        prefix,
        "--max-ttl",
        "1500ms",
        "--default-ttl",
        "1500ms",
        "--failover-quarantine",
        "1500ms",
        "--redis-timeout",
        "500ms",
        "--waiter-liveness",
        "2s",
    ]
    .map(String::from)
    .to_vec()
}

async fn daemons(url: &str, name: &str, extra: &[&str]) -> Vec<Daemon> {
    let prefix = unique(name);
    let mut args = ha_args(url, &prefix);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    vec![Daemon::start(&args).await, Daemon::start(&args).await]
}

/// One lease as its client saw it: held from the grant's arrival until the
/// earlier of its TTL from the request's sending and the release's sending.
#[derive(Debug, Clone)]
struct Hold {
    resource: String,
    token: u64,
    granted: Instant,
    ends: Instant,
}

/// An acquire that got an answer: from which daemon, when and how fast,
/// and what it was (`Ok(true)` a grant, `Ok(false)` no lease, or the
/// failure's code).
struct Answer {
    resource: String,
    daemon: SocketAddr,
    at: Instant,
    took: Duration,
    outcome: Result<bool, Code>,
}

/// What one daemon answered on some resources in one window of time.
#[derive(Default, Clone)]
struct Window {
    grants: usize,
    unavailable: usize,
}

/// Every acknowledged lease of a test, every answered acquire, and the calls
/// that failed.
#[derive(Default)]
struct History {
    holds: Mutex<Vec<Hold>>,
    answers: Mutex<Vec<Answer>>,
    failures: Mutex<HashMap<String, usize>>,
}

impl History {
    fn hold(&self, hold: Hold) {
        self.holds.lock().unwrap().push(hold);
    }

    fn answered(
        &self,
        resource: &str,
        daemon: SocketAddr,
        sent: Instant,
        outcome: Result<bool, Code>,
    ) {
        self.answers.lock().unwrap().push(Answer {
            resource: resource.to_owned(),
            daemon,
            at: Instant::now(),
            took: sent.elapsed(),
            outcome,
        });
    }

    fn failed(&self, status: &tonic::Status) {
        *self
            .failures
            .lock()
            .unwrap()
            .entry(format!("{:?}", status.code()))
            .or_default() += 1;
    }

    /// Grants on any of `resources` that arrived between `from` and `to`.
    fn granted_between(&self, resources: &[String], from: Instant, to: Instant) -> usize {
        self.holds
            .lock()
            .unwrap()
            .iter()
            .filter(|h| resources.contains(&h.resource) && h.granted > from && h.granted < to)
            .count()
    }

    /// What `daemon` answered on any of `resources` in each of `count`
    /// consecutive windows of `width` from `from`.
    fn windows(
        &self,
        resources: &[String],
        daemon: SocketAddr,
        from: Instant,
        width: Duration,
        count: u32,
    ) -> Vec<Window> {
        let mut windows = vec![Window::default(); count as usize];
        for answer in self.answers.lock().unwrap().iter() {
            if answer.daemon != daemon || !resources.contains(&answer.resource) || answer.at < from
            {
                continue;
            }
            let Some(window) = windows.get_mut((answer.at - from).div_duration_f64(width) as usize)
            else {
                continue;
            };
            match answer.outcome {
                Ok(true) => window.grants += 1,
                Err(Code::Unavailable) => window.unavailable += 1,
                _ => {}
            }
        }
        windows
    }

    /// The longest acquire on any of `resources` answered after `since`.
    fn slowest_answer(&self, resources: &[String], since: Instant) -> Duration {
        self.answers
            .lock()
            .unwrap()
            .iter()
            .filter(|a| resources.contains(&a.resource) && a.at > since)
            .map(|a| a.took)
            .max()
            .unwrap_or_default()
    }

    /// The checker: per resource, no two holds overlap, and a later hold
    /// has a larger token. Returns how many holds it checked.
    fn check(&self) -> usize {
        let mut holds = self.holds.lock().unwrap().clone();
        holds.sort_by_key(|h| h.granted);
        let mut by_resource: HashMap<&str, Vec<&Hold>> = HashMap::new();
        for hold in &holds {
            by_resource.entry(&hold.resource).or_default().push(hold);
        }
        for (resource, holds) in by_resource {
            for (i, earlier) in holds.iter().enumerate() {
                for later in &holds[i + 1..] {
                    assert!(
                        earlier.ends <= later.granted,
                        "{resource}: a lease was granted {:?} before the previous one ended \
                         (tokens {} and {})",
                        earlier.ends - later.granted,
                        earlier.token,
                        later.token
                    );
                    assert!(
                        later.token > earlier.token,
                        "{resource}: token {} after {}",
                        later.token,
                        earlier.token
                    );
                }
            }
        }
        holds.len()
    }
}

/// A call that does not answer within this is a hang.
const CALL_BOUND: Duration = Duration::from_secs(10);

async fn bounded<T>(what: &str, call: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(CALL_BOUND, call)
        .await
        .unwrap_or_else(|_| panic!("{what} did not answer within {CALL_BOUND:?}"))
}

/// When a workload stops: set up front, or only once a test knows when its
/// failover ended (it runs on until then).
#[derive(Clone, Default)]
struct Until(Arc<Mutex<Option<Instant>>>);

impl Until {
    fn at(at: Instant) -> Until {
        let until = Until::default();
        until.set(at);
        until
    }

    fn set(&self, at: Instant) {
        *self.0.lock().unwrap() = Some(at);
    }

    fn passed(&self) -> bool {
        self.0
            .lock()
            .unwrap()
            .is_some_and(|at| Instant::now() >= at)
    }
}

/// One client per id in `clients`, spread over the daemons, taking turns on
/// `resources` until `until`: each acquires (waiting a little), holds
/// briefly and releases, recording what it was granted.
async fn workload(
    addrs: &[SocketAddr],
    resources: &[String],
    clients: &[String],
    until: &Until,
    history: &Arc<History>,
) {
    let mut tasks = Vec::new();
    for (i, (&addr, client)) in addrs.iter().cycle().zip(clients).enumerate() {
        let mut c = connect(addr).await;
        let resources = resources.to_vec();
        let client = client.clone();
        let until = until.clone();
        let history = Arc::clone(history);
        tasks.push(tokio::spawn(async move {
            let mut n = 0usize;
            while !until.passed() {
                n += 1;
                let resource = &resources[(i + n) % resources.len()];
                let sent = Instant::now();
                let reply = bounded(
                    "acquire",
                    c.acquire(req(resource, &client).ttl(TTL_MS).wait(300)),
                )
                .await;
                let outcome = match &reply {
                    Ok(reply) => Ok(reply.get_ref().lease.is_some()),
                    Err(status) => Err(status.code()),
                };
                history.answered(resource, addr, sent, outcome);
                let lease = match reply {
                    Ok(reply) => match reply.into_inner().lease {
                        Some(lease) => lease,
                        None => continue,
                    },
                    Err(status) => {
                        history.failed(&status);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let granted = Instant::now();
                tokio::time::sleep(Duration::from_millis(5 + (n % 20) as u64)).await;
                let releasing = Instant::now();
                let released = bounded(
                    "release",
                    c.release(pb::ReleaseRequest {
                        lock_id: lease.lock_id.clone(),
                        client_id: client.clone(),
                    }),
                )
                .await;
                if let Err(status) = &released {
                    history.failed(status);
                }
                history.hold(Hold {
                    resource: resource.clone(),
                    token: lease.fencing_token,
                    granted,
                    // A release that failed (Redis gone mid-call) may not
                    // have run: the lease then lives its whole term.
                    ends: match released {
                        Ok(_) => releasing.min(sent + Duration::from_millis(TTL_MS)),
                        Err(_) => sent + Duration::from_millis(TTL_MS),
                    },
                });
            }
        }));
    }
    for task in tasks {
        task.await.expect("workload task");
    }
}

/// WaitQueue calls on `resource` from every daemon; each must end (granted
/// or refused) within its wait and a bound, and a grant joins the history.
fn waiters(
    addrs: &[SocketAddr],
    resource: &str,
    history: &Arc<History>,
) -> Vec<tokio::task::JoinHandle<()>> {
    addrs
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            let addr = *addr;
            let resource = resource.to_owned();
            let history = Arc::clone(history);
            tokio::spawn(async move {
                let mut c = connect(addr).await;
                let sent = Instant::now();
                let wait_ms = 8_000;
                let call = async {
                    let mut stream = c
                        .wait_queue(req(&resource, &format!("w{i}")).ttl(TTL_MS).wait(wait_ms))
                        .await?
                        .into_inner();
                    while let Some(event) = stream.message().await? {
                        if let Some(pb::wait_event::Event::Granted(g)) = event.event {
                            return Ok::<_, tonic::Status>(g.lease);
                        }
                    }
                    Ok(None)
                };
                let bound = Duration::from_millis(wait_ms) + CALL_BOUND;
                match tokio::time::timeout(bound, call).await {
                    Ok(Ok(Some(lease))) => history.hold(Hold {
                        resource,
                        token: lease.fencing_token,
                        granted: Instant::now(),
                        ends: sent + Duration::from_millis(wait_ms + TTL_MS),
                    }),
                    Ok(Ok(None)) => panic!("a WaitQueue stream ended without a grant or a status"),
                    Ok(Err(status)) => history.failed(&status),
                    Err(_) => panic!("a WaitQueue call did not end within {bound:?}"),
                }
            })
        })
        .collect()
}

/// Every daemon grants a fresh resource again within `within`.
async fn serves_again(addrs: &[SocketAddr], name: &str, within: Duration) {
    for (i, addr) in addrs.iter().enumerate() {
        let c = connect(*addr).await;
        let resource = format!("{name}-{i}");
        let ok = eventually(within, || {
            let mut c = c.clone();
            let resource = resource.clone();
            async move {
                c.acquire(req(&resource, "probe").ttl(TTL_MS).wait(0))
                    .await
                    .is_ok_and(|r| r.into_inner().lease.is_some())
            }
        })
        .await;
        assert!(
            ok,
            "daemon {addr} did not grant {resource} within {within:?}"
        );
    }
}

/// Lets the workload run until it is granted a lease after `failed` (and a
/// little longer), within 30 s. Grants need a replica to acknowledge them,
/// and on a loaded machine the sentinels may mark the new primary down and
/// fail over a second time before one does: the window is not fixed.
async fn resumes_granting(history: &History, resources: &[String], failed: Instant, until: &Until) {
    let resumed = eventually(Duration::from_secs(30), || async {
        history.granted_between(resources, failed, Instant::now()) > 0
    })
    .await;
    eprintln!(
        "granting again: {resumed}, {:?} after the failure",
        failed.elapsed()
    );
    until.set(Instant::now() + Duration::from_secs(2));
}

fn addrs(daemons: &[Daemon]) -> Vec<SocketAddr> {
    daemons.iter().map(|d| d.addr).collect()
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_hands_off_in_fifo_order_across_daemons() {
    let group = SentinelGroup::start();
    let daemons = daemons(&group.url(), "sfifo", &[]).await;
    let (mut a, mut b) = (daemons[0].client().await, daemons[1].client().await);
    let holder = acquire(&mut a, req("r", "holder").ttl(TTL_MS)).await;
    let mut queued = Vec::new();
    for i in 0..4 {
        let c = if i % 2 == 0 { &mut a } else { &mut b };
        let mut w = Waiting::start(c, req("r", &format!("w{i}")).ttl(TTL_MS).wait(10_000)).await;
        assert_eq!(w.queued().await.position, i);
        queued.push(w);
    }
    release(&mut a, &holder).await;
    let mut last = holder.fencing_token;
    for (i, w) in queued.iter_mut().enumerate() {
        let lease = w.granted().await;
        assert_eq!(lease.client_id, format!("w{i}"), "FIFO across daemons");
        assert!(lease.fencing_token > last);
        last = lease.fencing_token;
        let c = if i % 2 == 0 { &mut a } else { &mut b };
        release(c, &lease).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_primary_killed_with_leases_and_waiters_on_both_daemons() {
    let mut group = SentinelGroup::start();
    let daemons = daemons(&group.url(), "skill", &[]).await;
    let addrs = addrs(&daemons);
    let history = Arc::new(History::default());
    let resources = names("r", 3);
    // A lease held and waiters queued on both daemons when the primary dies.
    let mut c = daemons[0].client().await;
    let _held = acquire(&mut c, req("contended", "holder").ttl(TTL_MS)).await;
    let queued = waiters(&addrs, "contended", &history);

    let until = Until::default();
    let load = {
        let until = until.clone();
        let (addrs, resources, history) = (addrs.clone(), resources.clone(), Arc::clone(&history));
        tokio::spawn(
            async move { workload(&addrs, &resources, &names("c", 8), &until, &history).await },
        )
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let old = group.kill_primary();
    let killed = Instant::now();
    let new = group.wait_for_failover(old);
    eprintln!("sentinel failover {old} -> {new} in {:?}", killed.elapsed());
    resumes_granting(&history, &resources, killed, &until).await;
    load.await.expect("workload");
    for w in queued {
        w.await.expect("waiter");
    }
    let checked = history.check();
    let after = history.granted_between(&resources, killed, Instant::now());
    eprintln!(
        "{checked} holds checked, {after} after the kill; failures {:?}",
        history.failures.lock().unwrap()
    );
    assert!(after > 0, "nothing was granted after the failover");
    serves_again(&addrs, "fresh", Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_to_a_replica_whose_clock_is_30_s_behind() {
    let mut group = SentinelGroup::start_with_successor_offset(-30);
    let daemons = daemons(&group.url(), "sclock", &[]).await;
    let addrs = addrs(&daemons);
    let history = Arc::new(History::default());
    let resources = names("r", 3);
    let until = Until::at(Instant::now() + Duration::from_secs(10));
    let load = {
        let (addrs, resources, history) = (addrs.clone(), resources.clone(), Arc::clone(&history));
        tokio::spawn(
            async move { workload(&addrs, &resources, &names("c", 8), &until, &history).await },
        )
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let old = group.kill_primary();
    let new = group.wait_for_failover(old);
    let behind: Vec<u64> = redis::cmd("TIME")
        .query(&mut group.node(new).connection())
        .unwrap();
    let real = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        real - behind[0] >= 29,
        "the successor {new} is not 30 s behind"
    );
    load.await.expect("workload");
    serves_again(&addrs, "fresh", Duration::from_secs(10)).await;
    let mut c = connect(addrs[0]).await;
    // A lease that survived the failover ends on the successor's clock, 30 s
    // later than it would have: safe, and the resource comes back after it.
    for resource in &resources {
        let free = eventually(Duration::from_secs(40), || {
            let mut c = c.clone();
            let request = req(resource, "after").ttl(TTL_MS).wait(0);
            async move {
                c.acquire(request)
                    .await
                    .is_ok_and(|r| r.into_inner().lease.is_some())
            }
        })
        .await;
        assert!(free, "{resource} was not free again within 40 s");
        let lease = acquire(&mut c, req(resource, "check").ttl(TTL_MS).wait(5_000)).await;
        history.hold(Hold {
            resource: resource.clone(),
            token: lease.fencing_token,
            granted: Instant::now(),
            ends: Instant::now(),
        });
    }
    let checked = history.check();
    eprintln!("{checked} holds checked across the failover to a clock 30 s behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_primary_paused_past_failover_comes_back_demoted_and_unused() {
    let group = SentinelGroup::start();
    let daemons = daemons(&group.url(), "spause", &[]).await;
    let addrs = addrs(&daemons);
    let history = Arc::new(History::default());
    let resources = names("r", 3);
    let until = Until::default();
    let load = {
        let until = until.clone();
        let (addrs, resources, history) = (addrs.clone(), resources.clone(), Arc::clone(&history));
        tokio::spawn(
            async move { workload(&addrs, &resources, &names("c", 8), &until, &history).await },
        )
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let old = group.pause_primary();
    let paused = Instant::now();
    let new = group.wait_for_failover(old);
    // Back while it still believes it is the primary: the split-brain window.
    group.node(old).resume();
    eprintln!(
        "paused primary {old} replaced by {new} after {:?}",
        paused.elapsed()
    );
    resumes_granting(&history, &resources, paused, &until).await;
    load.await.expect("workload");
    // The sentinels demote it; nothing the daemons did kept it a primary.
    let demoted = eventually(Duration::from_secs(30), || async {
        let info: Result<String, _> = redis::cmd("INFO")
            .arg("replication")
            .query(&mut group.node(old).connection());
        info.is_ok_and(|info| info.contains("role:slave"))
    })
    .await;
    assert!(
        demoted,
        "the old primary {old} did not come back as a replica"
    );
    let checked = history.check();
    let after = history.granted_between(&resources, paused, Instant::now());
    eprintln!(
        "{checked} holds checked, {after} after the pause; failures {:?}",
        history.failures.lock().unwrap()
    );
    assert!(after > 0, "nothing was granted after the failover");
    serves_again(&addrs, "fresh", Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_hands_off_in_fifo_order_on_every_shard() {
    let cluster = RedisCluster::start();
    let daemons = daemons(&cluster.url(), "cfifo", &[]).await;
    let (mut a, mut b) = (daemons[0].client().await, daemons[1].client().await);
    // Enough resources that every shard holds some.
    for resource in names("r", 12) {
        let holder = acquire(&mut a, req(&resource, "holder").ttl(TTL_MS)).await;
        let mut w0 = Waiting::start(&mut b, req(&resource, "w0").ttl(TTL_MS).wait(10_000)).await;
        w0.queued().await;
        let mut w1 = Waiting::start(&mut a, req(&resource, "w1").ttl(TTL_MS).wait(10_000)).await;
        w1.queued().await;
        release(&mut a, &holder).await;
        let first = w0.granted().await;
        assert_eq!(first.client_id, "w0", "{resource}");
        release(&mut b, &first).await;
        let second = w1.granted().await;
        assert_eq!(second.client_id, "w1", "{resource}");
        assert!(
            holder.fencing_token < first.fencing_token
                && first.fencing_token < second.fencing_token
        );
        release(&mut a, &second).await;
    }
}

/// The slot `key` lives in, asked of the cluster itself.
fn slot_of(cluster: &RedisCluster, key: &str) -> u16 {
    let mut conn = cluster.nodes()[0].connection();
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query(&mut conn)
        .expect("CLUSTER KEYSLOT")
}

/// Each of these, from the kill of a shard's primary to the end of the
/// load, must hold grants on the other shards from every daemon. Each takes
/// tens of grants a second when all is well, even on a loaded machine; a
/// second is far above its scheduling pauses and far below an outage that
/// matters.
const WINDOW: Duration = Duration::from_secs(1);

/// How long the load runs on after the failover: a stall of the other
/// shards that begins late (when the failed shard's quarantine ends and its
/// grants reach their replica confirmations), or never ends, falls in
/// windows too.
const AFTER_FAILOVER: Duration = Duration::from_secs(6);

/// The longest an acquire on the other shards may take to answer. Each of
/// its Redis steps is bounded: the lease index note and the lock script
/// together by --redis-timeout (500 ms), the replica confirmation by
/// --min-replicas-timeout plus --redis-timeout (1 s), the wait for a busy
/// resource by the request's 300 ms, and withdrawing an unserved wait by
/// --redis-timeout again: about 2.3 s if every step ran out its bound.
/// Served, a call takes the wait plus a few round trips of milliseconds, and
/// about 1 s at worst on a loaded machine; a call past this bound waited on
/// something bigger than its own shard's answers.
const SPARED_ANSWER_BOUND: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_primary_killed_while_the_other_shards_keep_serving() {
    let mut cluster = RedisCluster::start();
    let prefix = unique("ckill");
    let args = ha_args(&cluster.url(), &prefix);
    let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
    let daemons = vec![
        Daemon::start(&args_ref).await,
        Daemon::start(&args_ref).await,
    ];
    let addrs = addrs(&daemons);
    let ns = Namespace::new(&prefix, 0);
    // Resources on the shard to fail, and resources on the others.
    let shards = cluster.shards();
    let shard_of = |key: &str| {
        let slot = slot_of(&cluster, key);
        shards
            .iter()
            .position(|s| s.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
            .expect("a shard serves the slot")
    };
    let all = names("r", 36);
    let doomed_shard = shard_of(&ns.resource(&all[0]).holders);
    let (doomed, spared): (Vec<String>, Vec<String>) = all
        .iter()
        .cloned()
        .partition(|r| shard_of(&ns.resource(r).holders) == doomed_shard);
    assert!(!spared.is_empty());
    // A grant also notes its lease in its client's index, which lives in
    // the client id's slot: a client indexed on the failed shard could not
    // be granted anything, whichever shard its resource is on.
    let spared_clients: Vec<String> = names("c", 64)
        .into_iter()
        .filter(|c| shard_of(&ns.client_index(c)) != doomed_shard)
        .take(8)
        .collect();
    let slot = slot_of(&cluster, &ns.resource(&doomed[0]).holders);
    let history = Arc::new(History::default());
    // Left open: the load runs until a time after the failover, which only
    // wait_for_failover tells.
    let until = Until::default();
    // Each side has clients of its own: a client waiting on the failed
    // shard would leave spared resources idle, which would pass for an
    // outage. The failed shard keeps its traffic all along, and three times
    // as many clients: their calls, which try the dead node and then wait
    // on the missing replica of its successor, are what must not reach the
    // others, and with only as many as the others an outage showed in few
    // runs.
    let load = |resources: &[String], clients: Vec<String>| {
        let (addrs, resources, until) = (addrs.clone(), resources.to_vec(), until.clone());
        let history = Arc::clone(&history);
        tokio::spawn(async move { workload(&addrs, &resources, &clients, &until, &history).await })
    };
    let loads = [load(&spared, spared_clients), load(&doomed, names("d", 24))];
    tokio::time::sleep(Duration::from_secs(2)).await;
    let old = cluster.kill_primary_of(slot);
    let killed = Instant::now();
    let new = cluster.wait_for_failover(slot, old);
    let failed_over = killed.elapsed();
    // Whole windows, so that the last is as long as the others.
    let count = (failed_over + AFTER_FAILOVER)
        .div_duration_f64(WINDOW)
        .ceil() as u32;
    until.set(killed + WINDOW * count);
    eprintln!("cluster shard failover {old} -> {new} in {failed_over:?}");
    for load in loads {
        load.await.expect("workload");
    }
    let checked = history.check();
    // Per daemon: each has connections of its own, and one that stalls
    // while the other serves is an outage all the same.
    let per_daemon: Vec<(SocketAddr, Vec<Window>)> = addrs
        .iter()
        .map(|&daemon| {
            let windows = history.windows(&spared, daemon, killed, WINDOW, count);
            (daemon, windows)
        })
        .collect();
    let table = per_daemon
        .iter()
        .map(|(daemon, windows)| {
            let cells: Vec<String> = windows
                .iter()
                .map(|w| format!("{}/{}", w.grants, w.unavailable))
                .collect();
            format!("{daemon}: {}", cells.join(" "))
        })
        .collect::<Vec<_>>()
        .join("\n");
    let table = format!(
        "grants/UNAVAILABLE on the other shards per {WINDOW:?} since the kill \
         (failover after {failed_over:?}):\n{table}"
    );
    let slowest = history.slowest_answer(&spared, killed);
    eprintln!(
        "{checked} holds checked; {table}\nslowest answer there {slowest:?}; failures {:?}",
        history.failures.lock().unwrap()
    );
    let windows = || per_daemon.iter().flat_map(|(_, windows)| windows);
    assert!(
        windows().all(|w| w.grants > 0),
        "the other shards stopped granting while one failed over; {table}"
    );
    // Their nodes and replicas all answer, so none of their calls has a
    // reason to fail for want of Redis (a wait that ran out is contention,
    // DEADLINE_EXCEEDED): a stall of some of a daemon's connections shows
    // here even while the others keep every window granting.
    assert!(
        windows().all(|w| w.unavailable == 0),
        "calls on the other shards failed UNAVAILABLE while one failed over; {table}"
    );
    assert!(
        slowest <= SPARED_ANSWER_BOUND,
        "an acquire on the other shards took {slowest:?} to answer, over \
         {SPARED_ANSWER_BOUND:?}: it waited on the failed shard"
    );
    // The promoted replica has no replica of its own, so WAIT 1 cannot
    // succeed there: the shard serves again once the old primary rejoins.
    let mut c = daemons[0].client().await;
    let refused = eventually(Duration::from_secs(10), || {
        let mut c = c.clone();
        let request = req(&doomed[0], "probe").ttl(TTL_MS).wait(0);
        async move {
            c.acquire(request).await.is_err_and(|s| {
                s.code() == Code::Unavailable && s.message().contains("--min-replicas-ack")
            })
        }
    })
    .await;
    assert!(
        refused,
        "a grant on the shard without a replica was not refused for want of one"
    );
    // Waiting for replicas that are not there holds up none of the daemons'
    // other calls: they stay serving for the other shards.
    for addr in &addrs {
        assert!(serving(*addr).await, "daemon {addr} stopped serving");
    }
    let spared_now = acquire(&mut c, req(&spared[0], "probe").ttl(TTL_MS)).await;
    release(&mut c, &spared_now).await;
    cluster.restart_node(old);
    let rejoined = eventually(Duration::from_secs(30), || {
        let mut c = c.clone();
        let resource = doomed[0].clone();
        async move {
            c.acquire(req(&resource, "probe2").ttl(TTL_MS).wait(0))
                .await
                .is_ok_and(|r| r.into_inner().lease.is_some())
        }
    })
    .await;
    assert!(
        rejoined,
        "the failed-over shard grants again once it has a replica"
    );
    let unavailable = history
        .failures
        .lock()
        .unwrap()
        .get(&format!("{:?}", Code::Unavailable))
        .copied()
        .unwrap_or(0);
    eprintln!("{unavailable} UNAVAILABLE answers in all");
}
