//! The store on Sentinel, on Cluster and on a restarted standalone server, with real servers.
//!
//! Every test starts its own deployment (lockd-testkit) and stays well under a
//! minute; failovers take about 3 s here.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lockd_core::{AcquireOutcome, AcquireSpec, Caller, Lease, LockError, LockId, LockMode};
use lockd_redis::conn::{Connector, Topology};
use lockd_redis::{Notice, RedisOptions, RedisStore, StoreError};
use lockd_testkit::{RedisCluster, RedisServer, SentinelGroup, unique};
use tokio::sync::mpsc;

const TIMEOUT: Duration = Duration::from_millis(500);

/// How long the store may take to follow a failover, once the deployment has.
const FOLLOW: Duration = Duration::from_secs(20);

fn options(url: &str) -> RedisOptions {
    RedisOptions {
        url: url.to_owned(),
        key_prefix: unique("topo"),
        connections: 4,
        timeout: TIMEOUT,
        list_held_index: false,
        max_ttl: Duration::from_secs(60),
        // These tests follow connections through failovers; the quarantine
        // after one is the daemon's tests' concern (tests/integration/ha.rs).
        failover_quarantine: Duration::ZERO,
        ..RedisOptions::new(url, "")
    }
}

const CALLER: Caller<'static> = Caller {
    daemon_id: "topologies",
    liveness_ms: 10_000,
};

async fn acquire(store: &RedisStore, resource: &str) -> Result<Lease, LockError> {
    acquire_as(store, resource, &LockId::generate(resource).secret).await
}

/// [`acquire`] with a given lease secret: a retry with the same secret
/// finds a grant that an earlier try made but could not confirm.
async fn acquire_as(store: &RedisStore, resource: &str, secret: &str) -> Result<Lease, LockError> {
    let spec = AcquireSpec {
        resource: resource.to_owned(),
        mode: LockMode::Exclusive,
        ttl_ms: 30_000,
        wait_ms: 0,
        client_id: "topologies".to_owned(),
        max_renewals: 0,
    };
    match store.acquire(&spec, secret, &CALLER, 100).await.0 {
        Ok(AcquireOutcome::Granted(lease)) => Ok(lease),
        Ok(other) => panic!("acquiring fresh resource {resource} answered {other:?}"),
        Err(err) => Err(err),
    }
}

/// Whether a change of `resource` is announced within 500 ms.
async fn noticed_soon(rx: &mut mpsc::UnboundedReceiver<Notice>, resource: &str) -> bool {
    tokio::time::timeout(Duration::from_millis(500), async {
        while let Some(notice) = rx.recv().await {
            if notice == Notice::Changed(resource.to_owned()) {
                return;
            }
        }
    })
    .await
    .is_ok()
}

/// Acquires fresh resources until one is granted; every failure meanwhile
/// must be UNAVAILABLE. Returns the granted resource.
async fn acquire_until_granted(store: &RedisStore, name: &str) -> String {
    let deadline = Instant::now() + FOLLOW;
    for attempt in 0.. {
        let resource = format!("{name}-{attempt}");
        match acquire(store, &resource).await {
            Ok(_) => return resource,
            Err(LockError::Unavailable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("acquire of {resource} failed with {err:?}"),
        }
    }
    unreachable!()
}

/// Releases `lease`, then takes its resource again: the token is larger.
async fn released_then_granted_higher(store: &RedisStore, lock: &LockId, lease: &Lease) {
    store
        .release(lock, "topologies", &CALLER)
        .await
        .0
        .expect("release");
    let next = acquire(store, &lock.resource).await.unwrap();
    assert!(next.fencing_token > lease.fencing_token);
}

/// A primary of `cluster` other than `than`.
fn another_primary(cluster: &RedisCluster, than: SocketAddr) -> SocketAddr {
    cluster
        .shards()
        .iter()
        .map(|s| s.primary)
        .find(|p| *p != than)
        .expect("a cluster of more than one primary")
}

/// A direct async connection to one node, for looking at keys.
async fn node(addr: SocketAddr) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://{addr}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn exists(addr: SocketAddr, key: &str) -> bool {
    redis::cmd("EXISTS")
        .arg(key)
        .query_async::<i64>(&mut node(addr).await)
        .await
        .unwrap()
        == 1
}

async fn role(addr: SocketAddr) -> String {
    let value: redis::Value = redis::cmd("ROLE")
        .query_async(&mut node(addr).await)
        .await
        .unwrap();
    match value {
        redis::Value::Array(items) => match items.first() {
            Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            other => panic!("ROLE answered {other:?}"),
        },
        other => panic!("ROLE answered {other:?}"),
    }
}

/// Waits for `Changed(resource)` for every resource of `wanted`.
async fn expect_changes(rx: &mut mpsc::UnboundedReceiver<Notice>, wanted: &[String]) {
    let mut missing: HashSet<&String> = wanted.iter().collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !missing.is_empty() {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Notice::Changed(resource))) => {
                missing.remove(&resource);
            }
            Ok(Some(Notice::Disconnected)) => {}
            Ok(None) | Err(_) => panic!("no keyspace notice for {missing:?}"),
        }
    }
}

fn drain(rx: &mut mpsc::UnboundedReceiver<Notice>) {
    while rx.try_recv().is_ok() {}
}

async fn wait_ping(lanes_ping: impl AsyncFn() -> Result<(), lockd_redis::StoreError>, ok: bool) {
    let deadline = Instant::now() + FOLLOW;
    loop {
        if lanes_ping().await.is_ok() == ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "ping_all did not become {} within {FOLLOW:?}",
            if ok { "ok" } else { "failing" }
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_standalone_server_is_reconnected_to() {
    let mut server = RedisServer::start();
    let store = RedisStore::connect(&options(&server.url())).await.unwrap();
    acquire(&store, "before").await.unwrap();
    server.kill();
    wait_ping(async || store.ping().await, false).await;
    server.restart();
    wait_ping(async || store.ping().await, true).await;
    // Every lane is back: a run of calls meets no dead connection.
    for i in 0..20 {
        acquire(&store, &format!("after-{i}")).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_store_follows_a_killed_primary() {
    let mut group = SentinelGroup::start();
    let connector = Connector::new(&group.url(), TIMEOUT).unwrap();
    assert_eq!(connector.topology(), Topology::Sentinel);
    let store = RedisStore::connect(&options(&group.url())).await.unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let notifier = store.notifier(tx).await.unwrap().probing();
    notifier
        .ensure_events_patiently()
        .await
        .expect("keyspace events arrive");
    let first = acquire_until_granted(&store, "first").await;
    let old = group.primary_addr();
    assert!(exists(old, &store.namespace().resource(&first).holders).await);
    let watched = "watched".to_owned();
    notifier.watch(&watched).await.unwrap();
    acquire(&store, &watched).await.unwrap();
    expect_changes(&mut rx, std::slice::from_ref(&watched)).await;

    group.kill_primary();
    // No primary until the sentinels promote a replica.
    wait_ping(async || store.ping().await, false).await;
    let new = group.wait_for_failover(old);
    let granted = acquire_until_granted(&store, "during").await;
    assert!(exists(new, &store.namespace().resource(&granted).holders).await);
    wait_ping(async || store.ping().await, true).await;

    // The subscription followed the primary: a change there is announced.
    let keys = store.namespace().resource(&watched);
    let deadline = Instant::now() + FOLLOW;
    loop {
        drain(&mut rx);
        let _: () = redis::cmd("HSET")
            .arg(&keys.holders)
            .arg("probe")
            .arg(1)
            .query_async(&mut node(new).await)
            .await
            .unwrap();
        if noticed_soon(&mut rx, &watched).await {
            break;
        }
        assert!(Instant::now() < deadline, "no notice from the new primary");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_primary_gets_no_writes_once_replaced() {
    let group = SentinelGroup::start();
    let store = RedisStore::connect(&options(&group.url())).await.unwrap();
    acquire_until_granted(&store, "first").await;
    let old = group.pause_primary();
    let new = group.wait_for_failover(old);
    acquire_until_granted(&store, "moved").await;
    // Back, and still a primary for several seconds: the split-brain window.
    group.node(old).resume();
    let mut written = Vec::new();
    for i in 0..20 {
        let resource = format!("after-{i}");
        acquire(&store, &resource).await.unwrap();
        written.push(store.namespace().resource(&resource).holders);
    }
    let old_role = role(old).await;
    eprintln!("the resumed primary {old} answers ROLE {old_role}");
    if old_role == "master" {
        for key in &written {
            assert!(
                !exists(old, key).await,
                "{key} was written to the demoted primary"
            );
        }
    }
    for key in &written {
        assert!(exists(new, key).await, "{key} is not on the new primary");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_grants_wait_for_a_replica_and_fail_without_one() {
    let mut group = SentinelGroup::start();
    let store = RedisStore::connect(&RedisOptions {
        min_replicas_ack: 1,
        replicas_timeout: Duration::from_millis(300),
        ..options(&group.url())
    })
    .await
    .unwrap();
    acquire(&store, "confirmed").await.unwrap();
    for replica in group.replica_addrs() {
        group.node_mut(replica).kill();
    }
    match acquire(&store, "unconfirmed").await {
        Err(LockError::Unavailable(why)) => assert!(why.contains("--min-replicas-ack"), "{why}"),
        other => panic!("{other:?}"),
    }
    // Waiting for absent replicas holds up the confirmations only.
    store.ping().await.unwrap();
}

/// The resources of `names` by the primary owning their keys.
async fn by_shard(cluster: &RedisCluster, store: &RedisStore, names: &[String]) -> Vec<String> {
    let mut any = node(cluster.shards()[0].primary).await;
    let mut per_shard: Vec<(SocketAddr, String)> = Vec::new();
    for name in names {
        let key = store.namespace().resource(name).holders;
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&key)
            .query_async(&mut any)
            .await
            .unwrap();
        let owner = cluster.primary_of(slot).unwrap();
        if !per_shard.iter().any(|(o, _)| *o == owner) {
            per_shard.push((owner, name.clone()));
        }
    }
    assert_eq!(per_shard.len(), 3, "the names do not cover every shard");
    per_shard.into_iter().map(|(_, name)| name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_runs_scripts_and_mixed_slot_pipelines_on_every_shard() {
    let cluster = RedisCluster::start();
    let store = RedisStore::connect(&options(&cluster.url())).await.unwrap();
    let names: Vec<String> = (0..30).map(|i| format!("res-{i}")).collect();
    for name in &names {
        acquire(&store, name).await.unwrap();
    }
    for shard in cluster.shards() {
        let keys: i64 = redis::cmd("DBSIZE")
            .query_async(&mut node(shard.primary).await)
            .await
            .unwrap();
        assert!(keys > 0, "no lock state on shard {}", shard.primary);
    }
    // Both read all 256 buckets in one pipeline, over every slot.
    let stats = store.read_stats().await.unwrap();
    assert_eq!(stats.grants_by_mode.iter().sum::<u64>(), 30);
    store.reap(&CALLER).await.unwrap();
    store.ping().await.unwrap();
    // A lease is read back from its own shard.
    let lease = acquire(&store, "read-back").await.unwrap();
    let lock = LockId::parse(&lease.lock_id).unwrap();
    assert_eq!(
        store.get(&lock).await.unwrap().fencing_token,
        lease.fencing_token
    );

    // Confirmations go to the primary of each resource's slot, on every shard.
    let confirming = RedisStore::connect(&RedisOptions {
        min_replicas_ack: 1,
        replicas_timeout: Duration::from_secs(2),
        ..options(&cluster.url())
    })
    .await
    .unwrap();
    let fresh: Vec<String> = (0..24).map(|i| format!("confirmed-{i}")).collect();
    let one_per_shard = by_shard(&cluster, &confirming, &fresh).await;
    assert_eq!(one_per_shard.len(), 3);
    for name in one_per_shard {
        acquire(&confirming, &name)
            .await
            .unwrap_or_else(|err| panic!("shard of {name}: {err:?}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_notices_come_from_every_shard_and_survive_a_failover() {
    let mut cluster = RedisCluster::start();
    let store = RedisStore::connect(&options(&cluster.url())).await.unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let notifier = store.notifier(tx).await.unwrap().probing();
    notifier
        .ensure_events_patiently()
        .await
        .expect("keyspace events arrive");
    let names: Vec<String> = (0..30).map(|i| format!("res-{i}")).collect();
    let watched = by_shard(&cluster, &store, &names).await;
    for name in &watched {
        notifier.watch(name).await.unwrap();
    }
    drain(&mut rx);
    for name in &watched {
        acquire(&store, name).await.unwrap();
    }
    expect_changes(&mut rx, &watched).await;

    let victim = &watched[0];
    let key = store.namespace().resource(victim).holders;
    let mut any = node(cluster.shards()[0].primary).await;
    let slot: u16 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(&key)
        .query_async(&mut any)
        .await
        .unwrap();
    let old = cluster.kill_primary_of(slot);
    // The other shards still serve: the store stays healthy.
    store.ping().await.unwrap();
    cluster.wait_for_failover(slot, old);
    let lanes = Connector::new(&cluster.url(), TIMEOUT)
        .unwrap()
        .lanes(1)
        .await
        .unwrap();
    let mut lane = lanes.conn();
    let deadline = Instant::now() + FOLLOW;
    loop {
        drain(&mut rx);
        let wrote = redis::cmd("HSET")
            .arg(&key)
            .arg("probe")
            .arg(1)
            .query_async::<()>(&mut lane)
            .await;
        if wrote.is_ok() && noticed_soon(&mut rx, victim).await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no notice from the new primary of slot {slot} (write: {wrote:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The other shards' notices still arrive, and the store serves everywhere.
    drain(&mut rx);
    let others: Vec<String> = watched[1..].to_vec();
    for name in &others {
        let _: () = redis::cmd("HSET")
            .arg(store.namespace().resource(name).holders)
            .arg("probe")
            .arg(1)
            .query_async(&mut lane)
            .await
            .unwrap();
    }
    expect_changes(&mut rx, &others).await;
    acquire_until_granted(&store, "after-failover").await;
    store.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_server_gets_no_writes_until_it_is_a_primary_again() {
    let other = RedisServer::start();
    let server = RedisServer::start();
    let store = RedisStore::connect(&options(&server.url())).await.unwrap();
    acquire(&store, "before").await.unwrap();
    let mut admin = node(server.addr()).await;
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(other.port())
        .query_async(&mut admin)
        .await
        .unwrap();
    // It still answers PING, but no lane may use it: READONLY replaces the
    // lane, and a new one is refused until ROLE says master.
    wait_ping(async || store.ping().await, false).await;
    for i in 0..10 {
        match acquire(&store, &format!("demoted-{i}")).await {
            Err(LockError::Unavailable(_)) => {}
            other => panic!("a write to a replica answered {other:?}"),
        }
    }
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query_async(&mut admin)
        .await
        .unwrap();
    wait_ping(async || store.ping().await, true).await;
    acquire_until_granted(&store, "promoted").await;
}

/// A bucket's slot resharded to another primary while a lease in it is
/// held. While its keys are split or moved but the slot not yet handed
/// over, Redis refuses lockd's multi-key scripts with TRYAGAIN (a queue
/// that is empty does not exist on either side), so the bucket answers
/// UNAVAILABLE and grants nothing; a call under way when the move ends is
/// sent again and succeeds; after the move the old owner's MOVED is
/// followed; the next grant's token is larger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_follows_a_slot_moved_to_another_primary_while_a_lease_is_held() {
    let cluster = RedisCluster::start();
    let store = RedisStore::connect(&options(&cluster.url())).await.unwrap();
    let lease = acquire(&store, "moving").await.unwrap();
    let lock = LockId::parse(&lease.lock_id).unwrap();
    let key = store.namespace().resource("moving").holders;
    let slot: u16 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(&key)
        .query_async(&mut node(cluster.shards()[0].primary).await)
        .await
        .unwrap();
    let from = cluster.primary_of(slot).unwrap();
    let to = another_primary(&cluster, from);
    let renew = async |what: &str| {
        let renewed = store.renew(&lock, "topologies", None, &CALLER).await.0;
        let renewed = renewed.unwrap_or_else(|err| panic!("renewal {what}: {err:?}"));
        assert_eq!(renewed.fencing_token, lease.fencing_token, "renewal {what}");
    };
    let refused = async |what: &str| {
        let spec = AcquireSpec {
            resource: "moving".to_owned(),
            mode: LockMode::Exclusive,
            ttl_ms: 30_000,
            wait_ms: 0,
            client_id: "other".to_owned(),
            max_renewals: 0,
        };
        let secret = LockId::generate("moving").secret;
        let outcome = store.acquire(&spec, &secret, &CALLER, 100).await.0;
        assert!(
            !matches!(outcome, Ok(AcquireOutcome::Granted(_))),
            "a held lease was granted again {what}: {outcome:?}"
        );
    };

    let unavailable =
        async |what: &str| match store.renew(&lock, "topologies", None, &CALLER).await.0 {
            Err(LockError::Unavailable(why)) => assert!(why.contains("TryAgain"), "{what}: {why}"),
            other => panic!("a renewal {what} answered {other:?}"),
        };
    cluster.begin_slot_move(slot, to);
    unavailable("while the slot is migrating, its keys not moved yet").await;
    refused("while the slot is migrating").await;
    cluster.migrate_keys(slot, to);
    let keys_in = async |addr: SocketAddr| -> i64 {
        redis::cmd("CLUSTER")
            .arg("COUNTKEYSINSLOT")
            .arg(slot)
            .query_async(&mut node(addr).await)
            .await
            .unwrap()
    };
    assert!(keys_in(from).await == 0 && keys_in(to).await > 0);
    unavailable("with its keys on the importing primary").await;
    refused("with its keys on the importing primary").await;
    // A renewal sent just before the move ends is sent again until it can run.
    let renewal = std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(100));
            cluster.finish_slot_move(slot, to);
        });
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(store.renew(
                &lock,
                "topologies",
                None,
                &CALLER,
            ))
        })
    });
    let renewed = renewal.0.expect("a renewal across the end of the move");
    assert_eq!(renewed.fencing_token, lease.fencing_token);
    renew("after the move").await;
    assert_eq!(
        store.get(&lock).await.unwrap().fencing_token,
        lease.fencing_token
    );
    refused("after the move").await;
    released_then_granted_higher(&store, &lock, &lease).await;
    assert!(
        exists(to, &key).await,
        "the new lease is not on the new owner"
    );
}

/// A store starts while one shard's primary is down (not the shards of the
/// layout marker and of the earlier layout's key, which a first start reads) and serves the other shards at
/// once; the down shard's resources fail UNAVAILABLE within the timeout
/// rather than hang, and are served once its replica has taken over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_store_starts_and_serves_with_one_primary_down() {
    let mut cluster = RedisCluster::start();
    let opts = options(&cluster.url());
    let ns = lockd_redis::keys::Namespace::new(&opts.key_prefix, 0);
    let slot_of = async |key: &str| -> u16 {
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut node(cluster.shards()[0].primary).await)
            .await
            .unwrap()
    };
    // A first start reads the layout marker and looks for an earlier
    // layout's keys: their shards must be up.
    let marker = cluster.primary_of(slot_of(&ns.layout()).await).unwrap();
    let old_layout = cluster
        .primary_of(slot_of(&ns.previous_layout_stats()).await)
        .unwrap();
    let victim = cluster
        .shards()
        .into_iter()
        .find(|s| s.primary != marker && s.primary != old_layout)
        .unwrap();
    let names: Vec<String> = (0..40).map(|i| format!("down-{i}")).collect();
    let mut on_victim = None;
    let mut elsewhere = None;
    for name in &names {
        let slot = slot_of(&ns.resource(name).holders).await;
        let owner = cluster.primary_of(slot).unwrap();
        match owner == victim.primary {
            true => on_victim.get_or_insert((name.clone(), slot)),
            false => elsewhere.get_or_insert((name.clone(), slot)),
        };
    }
    let ((down, down_slot), (up, _)) = (on_victim.unwrap(), elsewhere.unwrap());
    cluster.kill_primary_of(down_slot);
    let started = Instant::now();
    let store = RedisStore::connect(&opts)
        .await
        .expect("a store starts with one primary down");
    acquire(&store, &up)
        .await
        .expect("a resource of a live shard");
    let sent = Instant::now();
    match acquire(&store, &down).await {
        Err(LockError::Unavailable(_)) => {}
        other => panic!("a resource of the down shard answered {other:?}"),
    }
    assert!(
        sent.elapsed() < TIMEOUT * 3,
        "the down shard's call took {:?}",
        sent.elapsed()
    );
    store.ping().await.expect("ping with one shard down");
    eprintln!("started and served in {:?}", started.elapsed());
    cluster.wait_for_failover(down_slot, victim.primary);
    let deadline = Instant::now() + FOLLOW;
    loop {
        match acquire(&store, &down).await {
            Ok(_) => break,
            Err(LockError::Unavailable(why)) if Instant::now() < deadline => {
                eprintln!("after the failover: {why}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("the failed-over shard's resource answered {err:?}"),
        }
    }
}

/// `rediss://` with `--redis-ca`: the store serves over TLS when the
/// server's certificate chains to the given authority, refuses to start
/// when it does not (saying why), and refuses a CA for a URL without TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_server_is_trusted_only_through_the_given_authority() {
    let certificate = lockd_testkit::SelfSigned::new();
    let tls_port = lockd_testkit::free_port();
    let args = certificate.redis_args(tls_port);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = RedisServer::start_with(&args);
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let trusted = RedisStore::connect(&RedisOptions {
        ca_file: Some(certificate.cert()),
        ..options(&url)
    })
    .await
    .expect("a store over TLS with the server's authority");
    acquire(&trusted, "over-tls").await.unwrap();
    trusted.ping().await.unwrap();
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut node(server.addr()).await)
        .await
        .unwrap();
    assert!(
        clients.lines().any(|l| l.contains(&format!(":{tls_port}"))
            || l.contains(&format!("laddr=127.0.0.1:{tls_port}"))),
        "no client on the TLS port: {clients}"
    );

    let stranger = lockd_testkit::SelfSigned::new();
    let refused = RedisStore::connect(&RedisOptions {
        ca_file: Some(stranger.cert()),
        ..options(&url)
    })
    .await;
    let err = refused
        .err()
        .expect("a server whose certificate chains elsewhere");
    assert!(!lockd_redis::conn::is_unreachable(&err), "{err}");
    let said = StoreError::unusable("rediss://127.0.0.1", err).to_string();
    assert!(
        said.contains("--redis-ca") && said.contains("certificate"),
        "{said}"
    );

    let plain = RedisStore::connect(&RedisOptions {
        ca_file: Some(certificate.cert()),
        ..options(&server.url())
    })
    .await;
    let err = plain.err().expect("a CA for a URL without TLS");
    assert!(err.to_string().contains("--redis-ca"), "{err}");
}

/// A lease carried (as a failover carries it) onto a server whose clock is
/// 30 s behind: its renewal there answers, the renewed record reads back,
/// and the lease is released; the next grant's token is larger. The lease
/// was acquired "in the future" of the new clock, which a renewal must not
/// turn into a record no script can read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_renewed_on_a_server_whose_clock_is_behind_stays_readable() {
    let ahead = RedisServer::start();
    let behind = RedisServer::start_with_clock_offset(-30, &[]);
    let opts = options(&ahead.url());
    let store = RedisStore::connect(&opts).await.unwrap();
    let lease = acquire(&store, "carried").await.unwrap();
    let lock = LockId::parse(&lease.lock_id).unwrap();
    drop(store);
    // What a replica would have: every key, with its time to live.
    let mut from = node(ahead.addr()).await;
    let mut to = node(behind.addr()).await;
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS")
        .arg(format!("{}*", opts.key_prefix))
        .query_async(&mut from)
        .await
        .unwrap();
    assert!(!keys.is_empty());
    for key in keys {
        let dump: Vec<u8> = redis::cmd("DUMP")
            .arg(&key)
            .query_async(&mut from)
            .await
            .unwrap();
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut from)
            .await
            .unwrap();
        let _: () = redis::cmd("RESTORE")
            .arg(&key)
            .arg(ttl.max(0))
            .arg(dump)
            .arg("REPLACE")
            .query_async(&mut to)
            .await
            .unwrap();
    }
    let moved = RedisStore::connect(&RedisOptions {
        url: behind.url(),
        ..opts.clone()
    })
    .await
    .unwrap();
    for round in 0..2 {
        // Shorter than the clocks' difference: the new expiry is before
        // the acquisition as the old clock dated it.
        let renewed = moved
            .renew(&lock, "topologies", Some(1_500), &CALLER)
            .await
            .0;
        let renewed = renewed.unwrap_or_else(|err| panic!("renewal {round}: {err:?}"));
        assert_eq!(renewed.fencing_token, lease.fencing_token);
    }
    assert_eq!(
        moved.get(&lock).await.unwrap().fencing_token,
        lease.fencing_token
    );
    released_then_granted_higher(&moved, &lock, &lease).await;
}

/// After a Sentinel promotion the new primary's resources grant nothing
/// for the quarantine, fresh ones too, while a lease that survived renews;
/// then grants resume with a token above every earlier one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_promotion_quarantines_new_grants_but_not_renewals() {
    const QUARANTINE: Duration = Duration::from_secs(3);
    let mut group = SentinelGroup::start();
    let store = RedisStore::connect(&RedisOptions {
        failover_quarantine: QUARANTINE,
        // The survivor must be on the promoted replica: wait for one.
        min_replicas_ack: 1,
        replicas_timeout: Duration::from_secs(2),
        ..options(&group.url())
    })
    .await
    .unwrap();
    let held = acquire(&store, "survivor").await.unwrap();
    let held_lock = LockId::parse(&held.lock_id).unwrap();
    let old = group.primary_addr();
    group.kill_primary();
    group.wait_for_failover(old);
    // One secret for every try on the fresh resource, as a client retrying
    // should: a try granted but not confirmed in time (the replica is still
    // attaching to the new primary) stands, and the next try finds it.
    let fresh = LockId::generate("fresh").secret;
    // The first answer from the new primary starts its quarantine.
    let deadline = Instant::now() + FOLLOW;
    let refused_at = loop {
        match acquire_as(&store, "fresh", &fresh).await {
            Err(LockError::Unavailable(why)) if why.contains("--failover-quarantine") => {
                break Instant::now();
            }
            Err(LockError::Unavailable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("a fresh resource after the promotion answered {other:?}"),
        }
    };
    // The first confirmation may meet a connection to the old primary.
    let renewed = loop {
        match store.renew(&held_lock, "topologies", None, &CALLER).await.0 {
            Ok(lease) => break lease,
            Err(LockError::Unavailable(_)) if refused_at.elapsed() < QUARANTINE / 2 => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("a surviving lease did not renew in the quarantine: {other:?}"),
        }
    };
    assert_eq!(renewed.fencing_token, held.fencing_token);
    match acquire_as(&store, "fresh", &fresh).await {
        Err(LockError::Unavailable(why)) => assert!(why.contains("--failover-quarantine")),
        other => panic!("a fresh resource beside the renewal answered {other:?}"),
    }
    let granted = loop {
        match acquire_as(&store, "fresh", &fresh).await {
            Ok(lease) => break lease,
            Err(LockError::Unavailable(_)) if refused_at.elapsed() < QUARANTINE * 3 => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("after the quarantine a fresh resource answered {other:?}"),
        }
    };
    // The quarantine began at or before the first refusal.
    assert!(
        refused_at.elapsed() >= QUARANTINE - Duration::from_millis(1_000),
        "granted {:?} after the first refusal, inside a {QUARANTINE:?} quarantine",
        refused_at.elapsed()
    );
    assert!(granted.fencing_token > held.fencing_token);
}

/// A one-node cluster names itself with an empty host in `CLUSTER SLOTS`:
/// the store takes that for the node it asked, and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_node_cluster_that_names_itself_with_an_empty_host_serves() {
    let cluster = RedisCluster::start_single();
    let addr = cluster.addrs()[0];
    let slots: redis::Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut node(addr).await)
        .await
        .unwrap();
    let host = match &slots {
        redis::Value::Array(ranges) => match ranges.first() {
            Some(redis::Value::Array(range)) => range.get(2).cloned(),
            _ => None,
        },
        _ => None,
    };
    assert!(
        matches!(&host, Some(redis::Value::Array(n)) if n.first() == Some(&redis::Value::BulkString(Vec::new()))),
        "the node does not name itself with an empty host: {slots:?}"
    );
    let store = RedisStore::connect(&options(&cluster.url()))
        .await
        .expect("a store on a one-node cluster");
    store.ping().await.expect("ping");
    let lease = acquire(&store, "alone").await.expect("a grant");
    let lock = LockId::parse(&lease.lock_id).unwrap();
    released_then_granted_higher(&store, &lock, &lease).await;
    assert!(exists(addr, &store.namespace().resource("alone").holders).await);
}

/// Under `cluster-require-full-coverage yes`, a shard lost with its replica
/// puts every node in state `fail`: they still answer ROLE and PING but
/// refuse every key, so the store's ping fails (the daemon goes
/// NOT_SERVING) rather than report a cluster that serves nothing as up. It
/// passes again once the shard is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_in_state_fail_does_not_pass_the_ping() {
    let mut cluster = RedisCluster::start();
    let store = RedisStore::connect(&options(&cluster.url())).await.unwrap();
    store.ping().await.expect("ping of a healthy cluster");
    cluster.require_full_coverage(true);
    let shard = cluster.shards()[0].clone();
    for addr in shard.replicas.iter().chain([&shard.primary]) {
        cluster.kill_node(*addr);
    }
    cluster.wait_failed();
    // The other primaries answer ROLE master; the state is what fails.
    for other in cluster
        .shards()
        .iter()
        .filter(|s| s.primary != shard.primary)
    {
        assert_eq!(role(other.primary).await, "master");
    }
    wait_ping(async || store.ping().await, false).await;
    match acquire(&store, "covered").await {
        Err(LockError::Unavailable(_)) => {}
        other => panic!("a cluster in state fail answered {other:?}"),
    }
    for addr in [&shard.primary].into_iter().chain(&shard.replicas) {
        cluster.restart_node(*addr);
    }
    cluster.wait_ok();
    wait_ping(async || store.ping().await, true).await;
    acquire_until_granted(&store, "covered-again").await;
}

/// A slot moving to a primary that has just joined and serves no slot yet:
/// `CLUSTER SLOTS` leaves it out, so only the owner's ASK names it. A
/// one-key read of a lease whose keys moved there follows the ASK to that
/// node, which has none of lockd's scripts yet; once the move ends, the
/// lease is renewed and released there, and the next token is larger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_follows_an_ask_to_a_new_primary_the_map_does_not_list() {
    let mut cluster = RedisCluster::start();
    let store = RedisStore::connect(&options(&cluster.url())).await.unwrap();
    let lease = acquire(&store, "asked").await.unwrap();
    let lock = LockId::parse(&lease.lock_id).unwrap();
    let key = store.namespace().resource("asked").holders;
    let slot = lockd_redis::conn::key_slot(key.as_bytes());
    let new = cluster.add_primary();
    assert!(cluster.shards().iter().all(|s| s.primary != new));
    cluster.begin_slot_move(slot, new);
    cluster.migrate_keys(slot, new);
    // An importing node answers plain commands with MOVED: count instead.
    let keys_on_new: i64 = redis::cmd("CLUSTER")
        .arg("COUNTKEYSINSLOT")
        .arg(slot)
        .query_async(&mut node(new).await)
        .await
        .unwrap();
    assert!(keys_on_new > 0, "the lease's keys are on {new}");
    let read = store
        .get(&lock)
        .await
        .expect("a read that the owner answers with ASK to the new primary");
    assert_eq!(read.fencing_token, lease.fencing_token);
    cluster.finish_slot_move(slot, new);
    let renewed = store.renew(&lock, "topologies", None, &CALLER).await.0;
    assert_eq!(
        renewed.expect("a renewal after the move").fencing_token,
        lease.fencing_token
    );
    released_then_granted_higher(&store, &lock, &lease).await;
    assert!(exists(new, &key).await, "the new lease is on {new}");
}

/// Scripts reach the primary that needs them while another primary is
/// frozen: a first load need not reach every primary, and a primary that
/// lost lockd's scripts (SCRIPT FLUSH; a restarted node or a promoted
/// replica may have none) is given them on its NOSCRIPT. The frozen shard
/// holds up nobody else's calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_reach_a_primary_while_another_is_frozen() {
    let cluster = RedisCluster::start();
    let store = RedisStore::connect(&options(&cluster.url())).await.unwrap();
    let shards = cluster.shards();
    let (served, frozen) = (shards[0].primary, shards[1].primary);
    let on_served: Vec<String> = (0..200)
        .map(|i| format!("served-{i}"))
        .filter(|name| {
            let key = store.namespace().resource(name).holders;
            cluster.primary_of(lockd_redis::conn::key_slot(key.as_bytes())) == Some(served)
        })
        .take(2)
        .collect();
    let frozen_node = cluster.nodes().iter().find(|n| n.addr() == frozen).unwrap();
    frozen_node.pause();
    let granted = async |name: &str, what: &str| {
        let sent = Instant::now();
        let granted = acquire(&store, name).await;
        let took = sent.elapsed();
        if let Err(err) = granted {
            frozen_node.resume();
            panic!("{what}: {err:?}");
        }
        assert!(took < TIMEOUT * 2, "{what} took {took:?}");
    };
    granted(&on_served[0], "the first grant, its script loaded then").await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut node(served).await)
        .await
        .unwrap();
    granted(&on_served[1], "a grant after SCRIPT FLUSH").await;
    frozen_node.resume();
}

/// With `--min-replicas-ack 1`, a grant right after its slot moved to
/// another primary is confirmed there: the confirmation runs on connections
/// with a slot map of their own, which may still name the old owner, and
/// follows that owner's MOVED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_confirms_a_grant_right_after_its_slot_moved() {
    let cluster = RedisCluster::start();
    let mut opts = options(&cluster.url());
    opts.min_replicas_ack = 1;
    opts.replicas_timeout = Duration::from_secs(2);
    let store = RedisStore::connect(&opts).await.unwrap();
    let lease = acquire(&store, "confirmed")
        .await
        .expect("a confirmed grant");
    let lock = LockId::parse(&lease.lock_id).unwrap();
    store
        .release(&lock, "topologies", &CALLER)
        .await
        .0
        .expect("release");
    let key = store.namespace().resource("confirmed").holders;
    let slot = lockd_redis::conn::key_slot(key.as_bytes());
    let from = cluster.primary_of(slot).unwrap();
    let to = another_primary(&cluster, from);
    cluster.begin_slot_move(slot, to);
    cluster.migrate_keys(slot, to);
    cluster.finish_slot_move(slot, to);
    let again = acquire(&store, "confirmed")
        .await
        .expect("a confirmed grant right after the move");
    assert!(again.fencing_token > lease.fencing_token);
}

/// An evicting `maxmemory-policy` on one Cluster primary of three is
/// refused at start, as on a single server: every primary is asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_one_evicting_primary_is_refused() {
    let cluster = RedisCluster::start();
    // Not the owner of slot 0, whose primary a keyless command would reach
    // if only one were asked.
    let evicting = cluster.primary_of(16383).unwrap();
    assert_ne!(Some(evicting), cluster.primary_of(0));
    for shard in cluster.shards() {
        let policy = if shard.primary == evicting {
            "allkeys-lru"
        } else {
            "noeviction"
        };
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory-policy")
            .arg(policy)
            .query_async(&mut node(shard.primary).await)
            .await
            .unwrap();
    }
    match RedisStore::connect(&options(&cluster.url())).await {
        Err(StoreError::Evicting { policy }) => assert_eq!(policy, "allkeys-lru"),
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("a store started on a cluster with an evicting primary"),
    }
}
