//! `lockd-bench failover`: kill -9 of the node that writes (the Redis primary
//! under lockd, etcd's leader) and the time until a client that keeps trying
//! is granted a lock on a fresh resource again.
//!
//! Every run starts its system afresh on loopback ports:
//! - lockd-sentinel(-noack): a Sentinel group (1 primary, 2 replicas, 3
//!   sentinels; down-after 1 s) and one lockd on `redis+sentinel://`. The
//!   primary is killed.
//! - lockd-cluster: three primaries with one replica each, one lockd on
//!   `redis+cluster://`; the primary of the shard owning the fresh resource's
//!   slot is killed. With `--min-replicas-ack` 1 that shard gets a second
//!   replica first, so that, as in the Sentinel group, the promoted node still
//!   has a replica and WAIT 1 can succeed there again.
//! - etcd: three members with etcd's default timing; the leader (from the
//!   maintenance Status of each member) is killed, and the client tries the
//!   two survivors in turn.
//!
//! Beside the time to the grant, a run records when the new primary (the
//! sentinels' majority, a surviving cluster node) or the new leader was first
//! named, which splits the figure into the store's failover and what lockd
//! adds to it.

mod attempts;
mod etcd;
mod redis;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use lockd_testkit::{RedisCluster, RedisServer, SentinelGroup, TempDir};
use serde::Serialize;

use self::attempts::{Attempts, Pace, ms, until_granted};
use crate::cli::{FailoverArgs, Quarantine};
use crate::deploy::{Store, blocking, lockd_binary, start_lockd, workspace_root};
use crate::machine::Machine;
use crate::systems::etcd::Etcd;
use crate::systems::lockd::Lockd;
use crate::systems::{AbortOnDrop, LockReq, LockSystem, SystemKind};

/// Lease TTL of every lock taken here (capped by a case's --max-ttl).
const LEASE_TTL: Duration = Duration::from_secs(2);

/// TTL of the lease held across the kill, whose renewal is timed: long
/// enough to outlive the failover. Cases whose --max-ttl is shorter skip it.
const HELD_TTL: Duration = Duration::from_secs(30);

/// How long a system that was just started may take to grant its first lock.
const WARM_UP: Duration = Duration::from_secs(20);

/// How often the watchers ask who the primary or the leader is.
const WATCH_EVERY: Duration = Duration::from_millis(10);

/// One system with one set of lockd flags, measured `--runs` times.
struct Case {
    system: SystemKind,
    quarantine: Option<Quarantine>,
    /// Flags of lockd beside `--listen` and `--redis-url`.
    lockd_args: Vec<String>,
    /// Short, for resource names.
    tag: String,
}

impl Case {
    fn flags(&self) -> String {
        if self.lockd_args.is_empty() {
            "-".into()
        } else {
            self.lockd_args.join(" ")
        }
    }

    fn ttl(&self) -> Duration {
        self.quarantine
            .and_then(Quarantine::max_ttl)
            .map_or(LEASE_TTL, |max| max.min(LEASE_TTL))
    }

    /// What the figure of this case is the time of.
    fn measures(&self) -> String {
        let store = match self.system {
            SystemKind::LockdCluster => "the primary of the fresh resource's shard",
            _ => "the Sentinel group's primary",
        };
        match self.quarantine {
            None => "kill -9 of the leader -> first LeaseGrant+Lock on a fresh key, \
                     trying the two survivors in turn"
                .into(),
            Some(Quarantine::For(d)) if d.is_zero() => format!(
                "kill -9 of {store} -> first grant on a fresh resource there: the \
                 store's failover plus lockd's switch to the new primary; and the first \
                 renewal of a lease held across the kill"
            ),
            Some(Quarantine::Default) => format!(
                "kill -9 of {store} with lockd's default quarantine (--max-ttl): a fresh \
                 resource there waits out the quarantine, so the held lease's first \
                 renewal is the figure of service coming back"
            ),
            Some(Quarantine::For(d)) => format!(
                "kill -9 of {store} -> first grant on a fresh resource there: how long the \
                 failed-over primary's resources stay unavailable with a {} quarantine",
                humantime::format_duration(d)
            ),
        }
    }
}

fn cases(args: &FailoverArgs) -> Vec<Case> {
    let systems = if args.systems.is_empty() {
        vec![
            SystemKind::LockdSentinel,
            SystemKind::LockdCluster,
            SystemKind::Etcd,
        ]
    } else {
        args.systems.clone()
    };
    let mut out = Vec::new();
    for system in systems {
        let Some(ack) = system.min_replicas_ack() else {
            out.push(Case {
                system,
                quarantine: None,
                lockd_args: Vec::new(),
                tag: "etcd".into(),
            });
            continue;
        };
        for &q in &args.quarantine {
            let mut lockd_args = vec!["--min-replicas-ack".to_string(), ack.to_string()];
            lockd_args.extend(q.lockd_args());
            out.push(Case {
                system,
                quarantine: Some(q),
                lockd_args,
                tag: format!(
                    "{}-q{}",
                    system.name(),
                    match q {
                        Quarantine::Default => "default".to_string(),
                        Quarantine::For(d) => humantime::format_duration(d).to_string(),
                    }
                ),
            });
        }
    }
    out
}

/// What one kill showed.
#[derive(Debug, Default, Serialize)]
struct RunResult {
    run: u32,
    #[serde(flatten)]
    attempts: Attempts,
    /// When the new primary (or leader) was first named, from the kill.
    #[serde(serialize_with = "opt_ms")]
    promoted_ms: Option<Duration>,
    killed: String,
    new_primary: Option<String>,
    /// How long the kill call itself took (it also looks the victim up).
    kill_call_ms: f64,
    /// lockd-cluster: locks on the other shards taken while the fresh one was tried.
    other_shards: Option<OtherShards>,
    /// lockd: Renew, tried the same way, of a lease taken before the kill on
    /// the primary that was killed (replicated there by --min-replicas-ack).
    renewal: Option<Attempts>,
    /// Why the run has no figure.
    error: Option<String>,
}

fn opt_ms<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(ms(*d)),
        None => s.serialize_none(),
    }
}

/// Acquire+release pairs on resources of the shards that were not killed.
#[derive(Debug, Default, Clone, Serialize)]
struct OtherShards {
    ok: u64,
    failed: u64,
    max_ms: f64,
    /// From the kill: when the first failed pair was sent, and when the last
    /// one ended: the other shards were unavailable at most this long.
    #[serde(serialize_with = "opt_ms")]
    first_failed_sent_ms: Option<Duration>,
    #[serde(serialize_with = "opt_ms")]
    last_failed_end_ms: Option<Duration>,
    first_failure: Option<String>,
}

impl OtherShards {
    fn failed(&mut self, sent: Duration, end: Duration, why: String) {
        self.failed += 1;
        self.first_failed_sent_ms.get_or_insert(sent);
        self.last_failed_end_ms = Some(end);
        self.first_failure.get_or_insert(why);
    }

    /// How long the other shards failed, from the first failure to the last.
    fn outage(&self) -> Option<Duration> {
        Some(
            self.last_failed_end_ms?
                .saturating_sub(self.first_failed_sent_ms?),
        )
    }
}

/// Median, smallest and largest of some runs' figures, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(values: &[Duration]) -> Option<Spread> {
        let mut v: Vec<f64> = values.iter().map(|d| ms(*d)).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2.0
        };
        Some(Spread {
            median: (median * 1e3).round() / 1e3,
            min: v[0],
            max: v[v.len() - 1],
        })
    }
}

#[derive(Debug, Serialize)]
struct CaseResult {
    system: &'static str,
    lockd_args: Vec<String>,
    measures: String,
    runs: usize,
    granted_runs: usize,
    /// Kill to first grant.
    failover_ms: Option<Spread>,
    /// Kill to the new primary or leader being named.
    promotion_ms: Option<Spread>,
    /// New primary or leader named to the first grant.
    after_promotion_ms: Option<Spread>,
    /// lockd: kill to the first renewal of the lease held across it.
    renewal_ms: Option<Spread>,
    renewed_runs: usize,
    notes: Vec<String>,
    run_results: Vec<RunResult>,
}

#[derive(Debug, Serialize)]
struct FailoverSettings {
    runs: u32,
    retry_every_ms: f64,
    in_flight: u32,
    attempt_timeout_ms: f64,
    attempt_wait_ms: f64,
    give_up_ms: f64,
    lease_ttl_ms: f64,
    quarantines: Vec<String>,
    topologies: Vec<&'static str>,
}

#[derive(Serialize)]
struct FailoverReport {
    machine: Machine,
    settings: FailoverSettings,
    results: Vec<CaseResult>,
}

/// What every run of a command shares.
struct RunCtx {
    bin: Option<PathBuf>,
    prefix: String,
    pace: Pace,
    attempt_wait: Duration,
    keep_logs: Option<PathBuf>,
}

pub async fn run(args: FailoverArgs) -> Result<()> {
    let cases = cases(&args);
    if cases.is_empty() {
        bail!("no case to run");
    }
    if let Some(bad) = cases
        .iter()
        .find(|c| c.system != SystemKind::Etcd && c.system.min_replicas_ack().is_none())
    {
        bail!(
            "failover measures lockd-sentinel, lockd-sentinel-noack, lockd-cluster and etcd, \
             not {}",
            bad.system.name()
        );
    }
    let root = workspace_root();
    let bin = if cases.iter().any(|c| c.system.is_lockd()) {
        Some(lockd_binary(args.lockd_bin.clone()).await?)
    } else {
        None
    };
    let machine = Machine::probe(bin.as_deref(), &root).await;
    let ctx = RunCtx {
        bin,
        prefix: format!(
            "lockd-bench/{}/",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ),
        pace: Pace {
            every: args.retry_every,
            in_flight: args.in_flight as usize,
            timeout: args.attempt_timeout,
            give_up: args.give_up,
        },
        attempt_wait: args.attempt_wait,
        keep_logs: args.keep_logs.clone(),
    };
    if let Some(dir) = &ctx.keep_logs {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    eprintln!(
        "lockd-bench failover: {} cases x {} runs, interleaved",
        cases.len(),
        args.runs
    );
    let mut results: Vec<Vec<RunResult>> = cases.iter().map(|_| Vec::new()).collect();
    for run in 1..=args.runs {
        for (case, out) in cases.iter().zip(results.iter_mut()) {
            let started = Instant::now();
            let outcome = if case.system == SystemKind::Etcd {
                etcd_run(&ctx, run).await
            } else {
                lockd_run(case, &ctx, run).await
            };
            let r = outcome.unwrap_or_else(|e| RunResult {
                run,
                error: Some(format!("{e:#}")),
                ..RunResult::default()
            });
            eprintln!(
                "[run {run}/{}] {} {}: {} ({:.0} s)",
                args.runs,
                case.system.name(),
                case.flags(),
                progress(&r),
                started.elapsed().as_secs_f64()
            );
            out.push(r);
        }
    }
    let results: Vec<CaseResult> = cases
        .iter()
        .zip(results)
        .map(|(case, runs)| summarize(case, runs, args.give_up))
        .collect();
    let report = FailoverReport {
        machine,
        settings: FailoverSettings {
            runs: args.runs,
            retry_every_ms: ms(args.retry_every),
            in_flight: args.in_flight,
            attempt_timeout_ms: ms(args.attempt_timeout),
            attempt_wait_ms: ms(args.attempt_wait),
            give_up_ms: ms(args.give_up),
            lease_ttl_ms: ms(LEASE_TTL),
            quarantines: args
                .quarantine
                .iter()
                .map(|q| match q {
                    Quarantine::Default => "default".to_string(),
                    Quarantine::For(d) => humantime::format_duration(*d).to_string(),
                })
                .collect(),
            topologies: vec![
                "sentinel: 1 primary, 2 replicas, 3 sentinels, quorum 2, \
                 down-after-milliseconds 1000, failover-timeout 3000",
                "cluster: 3 primaries with 1 replica each, cluster-node-timeout 1000, \
                 cluster-require-full-coverage no; with --min-replicas-ack >= 1 a second \
                 replica on the shard that is killed",
                "etcd: 3 members, heartbeat 100 ms, election timeout 1000 ms (etcd's defaults)",
            ],
        },
        results,
    };
    println!("{}", table(&report.results));
    let path = args
        .json
        .clone()
        .unwrap_or_else(|| root.join("target/lockd-bench/failover.json"));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(&report)?;
    std::fs::write(&path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    eprintln!("results written to {}", path.display());
    Ok(())
}

fn progress(r: &RunResult) -> String {
    if let Some(e) = &r.error {
        return format!("ERROR: {}", e.lines().next().unwrap_or_default());
    }
    let promoted = r
        .promoted_ms
        .map_or("not seen".to_string(), |d| format!("{:.0} ms", ms(d)));
    match r.attempts.granted {
        Some(d) => format!(
            "granted after {:.0} ms (new primary named at {promoted}, {} attempts)",
            ms(d),
            r.attempts.attempts
        ),
        None => format!(
            "no grant (new primary named at {promoted}, {} attempts, last failure: {})",
            r.attempts.attempts,
            r.attempts.last_failure.as_deref().unwrap_or("-")
        ),
    }
}

fn summarize(case: &Case, runs: Vec<RunResult>, give_up: Duration) -> CaseResult {
    let granted: Vec<Duration> = runs.iter().filter_map(|r| r.attempts.granted).collect();
    let promoted: Vec<Duration> = runs.iter().filter_map(|r| r.promoted_ms).collect();
    let after: Vec<Duration> = runs
        .iter()
        .filter_map(|r| Some(r.attempts.granted?.saturating_sub(r.promoted_ms?)))
        .collect();
    let renewed: Vec<Duration> = runs
        .iter()
        .filter_map(|r| r.renewal.as_ref()?.granted)
        .collect();
    let mut notes = Vec::new();
    let renew_tried = runs.iter().filter(|r| r.renewal.is_some()).count();
    if renewed.len() < renew_tried {
        let last = runs
            .iter()
            .filter_map(|r| r.renewal.as_ref())
            .find(|a| a.granted.is_none())
            .and_then(|a| a.last_failure.as_deref())
            .unwrap_or("-");
        notes.push(format!(
            "{} of {renew_tried} held leases not renewed: {}",
            renew_tried - renewed.len(),
            flatten(last, 160)
        ));
    }
    let errors = runs.iter().filter(|r| r.error.is_some()).count();
    if errors > 0 {
        let first = runs.iter().find_map(|r| r.error.as_deref()).unwrap_or("");
        notes.push(format!("{errors} runs failed: {}", flatten(first, 200)));
    }
    let given_up = runs
        .iter()
        .filter(|r| r.error.is_none() && r.attempts.granted.is_none())
        .count();
    if given_up > 0 {
        notes.push(format!(
            "{given_up} runs: no grant within {}",
            humantime::format_duration(give_up)
        ));
    }
    let mut failures: std::collections::BTreeMap<&str, u64> = Default::default();
    for r in &runs {
        for (k, v) in &r.attempts.failures {
            *failures.entry(k.as_str()).or_default() += v;
        }
    }
    let mut failures: Vec<_> = failures.into_iter().collect();
    failures.sort_by_key(|f| std::cmp::Reverse(f.1));
    if !failures.is_empty() {
        let listed: Vec<String> = failures
            .iter()
            .take(3)
            .map(|(k, v)| format!("{k} x{v}"))
            .collect();
        notes.push(format!("failed attempts: {}", listed.join(", ")));
    }
    let other: Vec<&OtherShards> = runs
        .iter()
        .filter_map(|r| r.other_shards.as_ref())
        .collect();
    if !other.is_empty() {
        let ok: u64 = other.iter().map(|o| o.ok).sum();
        let failed: u64 = other.iter().map(|o| o.failed).sum();
        let outages: Vec<Duration> = other.iter().filter_map(|o| o.outage()).collect();
        let outage = match Spread::of(&outages) {
            Some(s) => format!(
                ", failing for {:.0} ms median ({:.0}-{:.0}) in {} runs",
                s.median,
                s.min,
                s.max,
                outages.len()
            ),
            None => String::new(),
        };
        notes.push(format!(
            "other shards meanwhile: {failed} of {} pairs failed{outage}",
            ok + failed
        ));
    }
    CaseResult {
        system: case.system.name(),
        lockd_args: case.lockd_args.clone(),
        measures: case.measures(),
        runs: runs.len(),
        granted_runs: granted.len(),
        failover_ms: Spread::of(&granted),
        promotion_ms: Spread::of(&promoted),
        after_promotion_ms: Spread::of(&after),
        renewal_ms: Spread::of(&renewed),
        renewed_runs: renewed.len(),
        notes,
        run_results: runs,
    }
}

fn flatten(text: &str, max: usize) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" / ")
        .chars()
        .take(max)
        .collect()
}

fn table(results: &[CaseResult]) -> String {
    let mut out = String::from(
        "| system | lockd flags | granted | failover median ms | min | max | \
         new primary named, median (min-max) ms | then to grant, median ms | \
         held lease renewed, median (min-max) ms | notes |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    let num = |v: f64| format!("{v:.0}");
    for r in results {
        let (median, min, max) = match r.failover_ms {
            Some(s) => (num(s.median), num(s.min), num(s.max)),
            None => ("-".into(), "-".into(), "-".into()),
        };
        let promoted = r.promotion_ms.map_or("-".into(), |s| {
            format!("{} ({}-{})", num(s.median), num(s.min), num(s.max))
        });
        let after = r.after_promotion_ms.map_or("-".into(), |s| num(s.median));
        let renewal = r.renewal_ms.map_or("-".into(), |s| {
            format!("{} ({}-{})", num(s.median), num(s.min), num(s.max))
        });
        let flags = if r.lockd_args.is_empty() {
            "-".to_string()
        } else {
            format!("`{}`", r.lockd_args.join(" "))
        };
        out.push_str(&format!(
            "| {} | {} | {}/{} | {median} | {min} | {max} | {promoted} | {after} | {renewal} | {} |\n",
            r.system,
            flags,
            r.granted_runs,
            r.runs,
            r.notes.join("; ").replace('|', "/")
        ));
    }
    out
}

/// Takes and releases `resource`, retrying for up to [`WARM_UP`]: proves the
/// system grants before anything is killed.
async fn warm_up(sys: &dyn LockSystem, slot: usize, resource: &str, ttl: Duration) -> Result<()> {
    let req = LockReq {
        resource: resource.to_string(),
        client_id: "failover-warm-up".into(),
        ttl_ms: ttl.as_millis() as u64,
        wait: Duration::from_secs(1),
    };
    let deadline = Instant::now() + WARM_UP;
    loop {
        let tried = tokio::time::timeout(Duration::from_secs(2), sys.acquire(slot, &req)).await;
        match tried {
            Ok(Ok(held)) => return sys.release(slot, &held).await,
            Ok(Err(e)) if Instant::now() > deadline => {
                return Err(e.context(format!("no grant on {resource} within {WARM_UP:?}")));
            }
            Err(_) if Instant::now() > deadline => {
                bail!("no grant on {resource} within {WARM_UP:?} (attempts time out)")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The fresh resource's own shard in a cluster run: where it is, and what
/// runs beside it.
struct ClusterPlan {
    slot: u16,
    /// Resources on the same shard, taken before the kill: one released, one held.
    warm: String,
    held: String,
    /// One resource on each other shard, taken while the fresh one is tried,
    /// by a client whose lease index is not on the shard that is killed
    /// either: otherwise those grants would depend on it too.
    other: Vec<String>,
    other_client: String,
    /// A primary of another shard, which the watcher asks.
    survivor: std::net::SocketAddr,
    /// The second replica of the shard that is killed.
    _spare: Option<RedisServer>,
}

async fn plan_cluster(
    cluster: &RedisCluster,
    fresh: &str,
    base: &str,
    spare: bool,
) -> Result<ClusterPlan> {
    let slot = redis::resource_slot(fresh);
    let shards = tokio::task::block_in_place(|| cluster.shards());
    let target = shards
        .iter()
        .find(|s| s.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
        .with_context(|| format!("no shard serves slot {slot}: {shards:?}"))?;
    let on_server = redis::server_key_slot(target.primary, &redis::resource_key(fresh)).await?;
    if on_server != slot {
        bail!("slot of {fresh}: computed {slot}, Redis says {on_server}");
    }
    let others: Vec<_> = shards
        .iter()
        .filter(|s| s.primary != target.primary)
        .collect();
    let survivor = others.first().context("a cluster of one shard")?.primary;
    let spare = if spare {
        Some(redis::add_replica(target.primary, &cluster.addrs()).await?)
    } else {
        None
    };
    Ok(ClusterPlan {
        slot,
        warm: redis::name_in_slots(&format!("{base}warm-"), &target.slots, true),
        held: redis::name_in_slots(&format!("{base}held-"), &target.slots, true),
        other: others
            .iter()
            .enumerate()
            .map(|(i, s)| redis::name_in_slots(&format!("{base}other{i}-"), &s.slots, true))
            .collect(),
        other_client: redis::client_outside("failover-other-shards-", &target.slots),
        survivor,
        _spare: spare,
    })
}

async fn lockd_run(case: &Case, ctx: &RunCtx, run: u32) -> Result<RunResult> {
    let bin = ctx.bin.as_deref().context("no lockd binary")?;
    let scratch = TempDir::new(&format!("failover-{}", case.system.name()))?;
    let dir = scratch.path().to_path_buf();
    let base = format!("{}{}/{run}/", ctx.prefix, case.tag);
    let fresh = format!("{base}fresh");
    let ttl = case.ttl();
    let mut store = match case.system {
        SystemKind::LockdCluster => {
            Store::Cluster(blocking("the Redis Cluster", RedisCluster::start).await?)
        }
        _ => Store::Sentinel(blocking("the Sentinel group", SentinelGroup::start).await?),
    };
    let plan = match &store {
        Store::Cluster(c) => {
            let spare = case.system.min_replicas_ack().unwrap_or(0) > 0;
            Some(plan_cluster(c, &fresh, &base, spare).await?)
        }
        _ => None,
    };
    let (mut daemon, addr) =
        start_lockd(bin, Some(&store.lockd_url()), &case.lockd_args, &dir, 0).await?;
    let lockd = Arc::new(Lockd::connect(case.system.name(), std::slice::from_ref(&addr), 1).await?);
    let warm = plan
        .as_ref()
        .map_or(format!("{base}warm"), |p| p.warm.clone());
    warm_up(lockd.as_ref(), 0, &warm, ttl).await?;
    // A lease that lives through the failover (its --min-replicas-ack replica
    // has it), whose renewal is timed beside the fresh grant.
    let held = if case
        .quarantine
        .and_then(Quarantine::max_ttl)
        .is_none_or(|m| m >= HELD_TTL)
    {
        let name = plan
            .as_ref()
            .map_or(format!("{base}held"), |p| p.held.clone());
        let req = LockReq {
            resource: name,
            client_id: "failover-held".into(),
            ttl_ms: HELD_TTL.as_millis() as u64,
            wait: Duration::from_secs(1),
        };
        Some(
            lockd
                .acquire(0, &req)
                .await
                .context("taking the lease held across the kill")?,
        )
    } else {
        None
    };
    let other = plan.as_ref().map(|p| p.other.clone()).unwrap_or_default();
    let other_client = plan
        .as_ref()
        .map(|p| p.other_client.clone())
        .unwrap_or_default();
    let other_lockd = Arc::new(Lockd::connect(case.system.name(), &[addr], 1).await?);
    for name in &other {
        warm_up(other_lockd.as_ref(), 0, name, ttl).await?;
    }
    let watch = match (&store, &plan) {
        (Store::Sentinel(g), _) => redis::Watch::sentinels(g).await?,
        (_, Some(p)) => redis::Watch::cluster(p.survivor, p.slot).await?,
        _ => bail!("a cluster run without a plan"),
    };
    // The kill. The clock starts just before it; `kill_call_ms` says how long
    // the call took (the cluster's also looks up the slot's primary).
    let (start, old) = match (&mut store, &plan) {
        (Store::Sentinel(g), _) => {
            let old = tokio::task::block_in_place(|| g.primary_addr());
            let start = Instant::now();
            tokio::task::block_in_place(|| g.node_mut(old).kill());
            (start, old)
        }
        (Store::Cluster(c), Some(p)) => {
            let start = Instant::now();
            let old = tokio::task::block_in_place(|| c.kill_primary_of(p.slot));
            (start, old)
        }
        _ => bail!("nothing to kill"),
    };
    let kill_call = start.elapsed();
    let watcher = AbortOnDrop(tokio::spawn(watch.run(
        old,
        start,
        WATCH_EVERY,
        ctx.pace.give_up,
    )));
    let stop = Arc::new(AtomicBool::new(false));
    let other_task = (!other.is_empty()).then(|| {
        AbortOnDrop(tokio::spawn(other_shards(
            start,
            other_lockd.clone(),
            other.clone(),
            other_client.clone(),
            ttl,
            stop.clone(),
            ctx.pace,
        )))
    });
    let req = LockReq {
        resource: fresh,
        client_id: "failover-probe".into(),
        ttl_ms: ttl.as_millis() as u64,
        wait: ctx.attempt_wait,
    };
    let fresh = until_granted(start, ctx.pace, |_| {
        let (lockd, req) = (lockd.clone(), req.clone());
        Box::pin(async move { lockd.acquire(0, &req).await.map(|_| ()) })
    });
    let renewal = async {
        let held = held.as_ref()?;
        Some(
            until_granted(start, ctx.pace, |_| {
                let (lockd, held) = (lockd.clone(), held.clone());
                Box::pin(async move { lockd.renew(0, &held).await })
            })
            .await,
        )
    };
    let (attempts, renewal) = tokio::join!(fresh, renewal);
    stop.store(true, Ordering::Relaxed);
    let other_shards = match other_task {
        Some(mut t) => tokio::time::timeout(ctx.pace.give_up, &mut t.0)
            .await
            .ok()
            .and_then(Result::ok),
        None => None,
    };
    let mut watcher = watcher;
    let promoted = tokio::time::timeout(Duration::from_secs(5), &mut watcher.0)
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
    let alive = daemon.check_running();
    daemon.stop(Duration::from_secs(3)).await;
    if let Some(keep) = &ctx.keep_logs {
        let to = keep.join(format!("{}-{run}-lockd.log", case.tag));
        if let Err(e) = std::fs::copy(dir.join("lockd-0.log"), &to) {
            tracing::warn!("copying the lockd log to {}: {e}", to.display());
        }
    }
    drop(plan);
    drop(store);
    alive.context("lockd died during the failover")?;
    Ok(RunResult {
        run,
        attempts,
        promoted_ms: promoted.map(|p| p.0),
        killed: old.to_string(),
        new_primary: promoted.map(|p| p.1.to_string()),
        kill_call_ms: ms(kill_call),
        other_shards,
        renewal,
        error: None,
    })
}

/// Takes and releases the resources of the other shards in turn, every
/// `pace.every`, until `stop` is set and the last pair succeeded (so that the
/// end of an outage is seen), or `pace.give_up` has passed.
async fn other_shards(
    start: Instant,
    lockd: Arc<Lockd>,
    names: Vec<String>,
    client_id: String,
    ttl: Duration,
    stop: Arc<AtomicBool>,
    pace: Pace,
) -> OtherShards {
    let mut out = OtherShards::default();
    let mut last_ok = true;
    for i in 0.. {
        if stop.load(Ordering::Relaxed) && last_ok || start.elapsed() > pace.give_up {
            break;
        }
        let req = LockReq {
            resource: names[i % names.len()].clone(),
            client_id: client_id.clone(),
            ttl_ms: ttl.as_millis() as u64,
            wait: Duration::from_millis(200),
        };
        let started = Instant::now();
        let pair = async {
            let held = lockd.acquire(0, &req).await?;
            lockd.release(0, &held).await
        };
        let sent = started.duration_since(start);
        match tokio::time::timeout(pace.timeout, pair).await {
            Ok(Ok(())) => out.ok += 1,
            Ok(Err(e)) => out.failed(sent, start.elapsed(), flatten(&format!("{e:#}"), 300)),
            Err(_) => out.failed(sent, start.elapsed(), "attempt timeout".into()),
        }
        last_ok = out.last_failed_end_ms.is_none_or(|end| end < sent);
        out.max_ms = out.max_ms.max(ms(started.elapsed()));
        tokio::time::sleep(pace.every).await;
    }
    out
}

async fn etcd_run(ctx: &RunCtx, run: u32) -> Result<RunResult> {
    let scratch = TempDir::new("failover-etcd")?;
    let dir: &Path = scratch.path();
    let base = format!("{}etcd/{run}/", ctx.prefix);
    let mut cluster = etcd::start(dir, 3).await?;
    let (leader, index) = etcd::leader(&cluster.endpoints).await?;
    let survivors: Vec<String> = cluster
        .endpoints
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != index)
        .map(|(_, e)| e.clone())
        .collect();
    let sys = Arc::new(Etcd::connect_each(&survivors, ctx.pace.timeout).await?);
    for slot in 0..survivors.len() {
        warm_up(sys.as_ref(), slot, &format!("{base}warm{slot}"), LEASE_TTL).await?;
    }
    let mut watchers = Vec::new();
    for ep in &survivors {
        watchers.push(etcd::connect(ep).await?);
    }
    let killed = cluster.endpoints[index].clone();
    let start = Instant::now();
    cluster.members[index].kill();
    let kill_call = start.elapsed();
    let watcher = AbortOnDrop(tokio::spawn(etcd::watch_election(
        watchers,
        leader,
        start,
        WATCH_EVERY,
        ctx.pace.give_up,
    )));
    // etcd's Lock on a fresh key does not wait for a holder, so an attempt
    // may take as long as its deadline.
    let req = LockReq {
        resource: format!("{base}fresh"),
        client_id: "failover-probe".into(),
        ttl_ms: LEASE_TTL.as_millis() as u64,
        wait: ctx.pace.timeout,
    };
    let attempts = until_granted(start, ctx.pace, |n| {
        let (sys, req) = (sys.clone(), req.clone());
        Box::pin(async move { sys.acquire(n as usize, &req).await.map(|_| ()) })
    })
    .await;
    let mut watcher = watcher;
    let elected = tokio::time::timeout(Duration::from_secs(5), &mut watcher.0)
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
    for m in cluster.members.iter_mut() {
        m.stop(Duration::from_secs(3)).await;
    }
    Ok(RunResult {
        run,
        attempts,
        promoted_ms: elected.map(|e| e.0),
        killed,
        new_primary: elected.map(|e| format!("member {:x}", e.1)),
        kill_call_ms: ms(kill_call),
        other_shards: None,
        renewal: None,
        error: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_of_odd_and_even_counts() {
        let d = |v: &[u64]| {
            v.iter()
                .map(|m| Duration::from_millis(*m))
                .collect::<Vec<_>>()
        };
        let s = Spread::of(&d(&[30, 10, 20])).unwrap();
        assert_eq!((s.median, s.min, s.max), (20.0, 10.0, 30.0));
        let s = Spread::of(&d(&[40, 10, 20, 30])).unwrap();
        assert_eq!(s.median, 25.0);
        assert!(Spread::of(&[]).is_none());
    }

    #[test]
    fn quarantine_flags() {
        assert!(Quarantine::Default.lockd_args().is_empty());
        assert_eq!(
            Quarantine::For(Duration::ZERO).lockd_args(),
            ["--failover-quarantine", "0s"]
        );
        assert_eq!(
            Quarantine::For(Duration::from_secs(2)).lockd_args(),
            [
                "--failover-quarantine",
                "2s",
                "--max-ttl",
                "2s",
                "--default-ttl",
                "2s"
            ]
        );
    }
}
