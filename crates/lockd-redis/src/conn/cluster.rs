//! Redis Cluster: lanes per primary, the slot map, and each command sent to the primary of its slot.
//!
//! lockd does not use redis-rs's `ClusterConnection`: one such connection
//! serves every shard, and when a request meets a dead node it recovers for
//! all of them at once (reconnecting to the seeds, emptying its slot map and
//! reading it again with its write lock held), so the failover of one shard
//! stalled lockd on every shard. Here every primary has lanes of its own
//! ([`NodeLane`], as a standalone server has: deadpool-redis connections,
//! ROLE-checked, replaced on errors), so a dead primary fails only the
//! commands for its own slots, within the lanes' timeout, and a primary
//! found in a new slot map gets lanes while the others keep theirs.
//!
//! What this assumes of the rest: the slot map decides only where a command
//! is sent, never whether it is safe to run. A node that does not own the
//! slot answers MOVED without running anything, so sending the command
//! again to the owner is safe; a replica or a demoted primary is refused by
//! the lanes' ROLE check and `READONLY`, and the scripts check their server
//! themselves (failover.lua). A stale map costs availability until the next
//! read (at most [`REFRESH_EVERY`], sooner after an error), never a grant.
//!
//! A pipeline whose commands hash to several primaries (statistics, the
//! reaper's due sets) is split into one sub-pipeline per primary, sent at
//! once, and the replies put back in order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use redis::{
    Arg, AsyncConnectionConfig, Cmd, ConnectionInfo, ErrorKind, Pipeline, RedisError, RedisResult,
    ServerErrorKind, Value,
};
use tokio::sync::watch;

use super::lane::{Lane, NodeLane, NodeSource, check_primary, lock};
use super::url::{ClusterTarget, with_host};
use crate::error::StoreError;

/// Hash slots of a Redis Cluster.
const SLOTS: usize = 16384;
/// How often the slot map is read when nothing asks for it sooner.
const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// Reads asked for by failing commands stay this far apart: while a shard
/// fails over, every command for it fails, and one CLUSTER SLOTS per gap is
/// enough to see the promotion.
const REFRESH_GAP: Duration = Duration::from_millis(100);
/// Pauses before sending a command again after TRYAGAIN: doubled from the
/// first up to the second.
const TRY_AGAIN_FIRST_PAUSE: Duration = Duration::from_millis(10);
const TRY_AGAIN_MAX_PAUSE: Duration = Duration::from_millis(200);
/// How long a shard for a node only a redirect named is kept unused.
const REDIRECT_SHARD_KEEP: Duration = Duration::from_secs(60);
/// The owner of a slot no primary serves.
const NO_SHARD: u16 = u16::MAX;

/// The slot of `key`: of its hash tag (the bytes between the first `{` and
/// the next `}`, when not empty), else of the whole key.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&c| c == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let len = rest.iter().position(|&c| c == b'}')?;
            (len > 0).then(|| &rest[..len])
        })
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(hashed) % SLOTS as u16
}

/// The key a command is routed by: its first key, or `None` for a keyless
/// command (INFO, PING, SCRIPT LOAD, MULTI, ...).
fn command_key(cmd: &Cmd) -> Option<&[u8]> {
    let mut args = cmd.args_iter().filter_map(|a| match a {
        Arg::Simple(bytes) => Some(bytes),
        _ => None,
    });
    let name = args.next()?.to_ascii_uppercase();
    match name.as_slice() {
        b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" | b"FCALL_RO" => {
            let _script = args.next()?;
            let count: u64 = std::str::from_utf8(args.next()?).ok()?.parse().ok()?;
            if count == 0 {
                return None;
            }
            args.next()
        }
        b"PING" | b"ECHO" | b"TIME" | b"INFO" | b"CONFIG" | b"CLIENT" | b"ROLE" | b"SCRIPT"
        | b"CLUSTER" | b"WAIT" | b"DBSIZE" | b"SELECT" | b"COMMAND" | b"MULTI" | b"EXEC"
        | b"ASKING" => None,
        _ => args.next(),
    }
}

fn command_name(cmd: &Cmd) -> Vec<u8> {
    match cmd.args_iter().next() {
        Some(Arg::Simple(bytes)) => bytes.to_ascii_uppercase(),
        _ => Vec::new(),
    }
}

/// Where a MOVED or ASK reply sends a command: `<slot> <host>:<port>`.
#[derive(Debug)]
enum Redirect {
    Moved { host: String, port: u16 },
    Ask { host: String, port: u16 },
}

/// `answered` is the host of the node that replied: Redis names a node whose
/// endpoint it does not know with an empty host (`MOVED 3999 :7001`), which
/// means that node's own host; `?` is no redirect to follow.
fn redirect_of(value: &Value, answered: &str) -> Option<Redirect> {
    let Value::ServerError(err) = value else {
        return None;
    };
    let kind = err.kind()?;
    if !matches!(kind, ServerErrorKind::Moved | ServerErrorKind::Ask) {
        return None;
    }
    let target = err.details()?.split_ascii_whitespace().nth(1)?;
    let (host, port) = target.rsplit_once(':')?;
    let host = match host {
        "" => answered,
        // A node whose endpoint is unknown, as in CLUSTER SLOTS: nothing to
        // connect to; the map is read again instead.
        "?" => return None,
        host => host,
    };
    let (host, port) = (host.to_owned(), port.parse().ok()?);
    Some(match kind {
        ServerErrorKind::Moved => Redirect::Moved { host, port },
        _ => Redirect::Ask { host, port },
    })
}

/// Whether a failure suggests the slot map is out of date: the node is
/// gone, no longer a primary, or the cluster reports the slot unserved.
fn map_is_stale(result: &RedisResult<Value>) -> bool {
    match result {
        Err(err) => {
            super::lane::breaks(err)
                || matches!(
                    err.kind(),
                    ErrorKind::Server(ServerErrorKind::ClusterDown | ServerErrorKind::TryAgain)
                )
        }
        Ok(value) => reply_is_stale(value),
    }
}

/// [`map_is_stale`] for one reply of a pipeline.
fn reply_is_stale(value: &Value) -> bool {
    matches!(value, Value::ServerError(err) if matches!(
        err.kind(),
        Some(
            ServerErrorKind::ReadOnly
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::Moved
                | ServerErrorKind::MasterDown
        )
    ))
}

fn unserved(slot: u16) -> RedisError {
    RedisError::from((
        ErrorKind::Server(ServerErrorKind::ClusterDown),
        "no cluster primary serves the slot",
        format!("slot {slot}"),
    ))
}

/// A primary as `CLUSTER SLOTS` names it, with the slots it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Primary {
    pub host: String,
    pub port: u16,
    /// Inclusive ranges.
    pub slots: Vec<(u16, u16)>,
}

/// What `CLUSTER SLOTS` says: the primaries (each once, in slot order)
/// and every node it names, replicas too.
#[derive(Debug)]
struct SlotsReply {
    primaries: Vec<Primary>,
    nodes: Vec<(String, u16)>,
}

/// One primary and its lanes. Dropping it (once no lane of its is in use)
/// ends its lanes' reconnecting.
pub(crate) struct Shard {
    host: String,
    port: u16,
    lanes: Vec<Arc<NodeLane>>,
    _closed: watch::Sender<()>,
}

impl Shard {
    fn name(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn lane(&self, pick: usize) -> &Arc<NodeLane> {
        &self.lanes[pick % self.lanes.len()]
    }

    /// Whether every lane is connected, its node answers ROLE `master`, and
    /// the node's cluster state is `ok`: a node in state `fail` (it lost
    /// sight of the majority, or a slot has no primary under
    /// `cluster-require-full-coverage yes`) still answers ROLE and PING but
    /// refuses every key with CLUSTERDOWN.
    async fn check(&self) -> Result<(), StoreError> {
        // Every lane not connected starts reconnecting now, not one per check.
        let currents: Vec<_> = self.lanes.iter().map(|lane| lane.connected()).collect();
        for (lane, current) in self.lanes.iter().zip(currents) {
            let Some(current) = current else {
                return Err(StoreError::Redis(super::lane::io_error(format!(
                    "{}: reconnecting",
                    self.name()
                ))));
            };
            let mut conn = current.conn.clone();
            if let Err(err) = check_primary(&mut conn, &current.addr).await {
                if let StoreError::Redis(err) = &err {
                    lane.check(current.generation, err);
                }
                return Err(err);
            }
        }
        let info: String = redis::cmd("CLUSTER")
            .arg("INFO")
            .query_async(&mut Lane::node(Arc::clone(&self.lanes[0])))
            .await?;
        if !info.lines().any(|l| l.trim() == "cluster_state:ok") {
            return Err(StoreError::Redis(RedisError::from((
                ErrorKind::Server(ServerErrorKind::ClusterDown),
                "the node's cluster state is not ok",
                self.name(),
            ))));
        }
        Ok(())
    }
}

/// The slot map: which shard serves each slot.
struct Table {
    /// One entry per slot: an index into `shards`, or [`NO_SHARD`].
    owner: Vec<u16>,
    shards: Vec<Arc<Shard>>,
    /// Every node the map named, replicas too: where to ask for the next
    /// map when no primary answers.
    nodes: Vec<(String, u16)>,
}

impl Table {
    fn empty() -> Table {
        Table {
            owner: vec![NO_SHARD; SLOTS],
            shards: Vec::new(),
            nodes: Vec::new(),
        }
    }

    fn shard_of(&self, slot: u16) -> Option<&Arc<Shard>> {
        let index = *self.owner.get(usize::from(slot))?;
        self.shards.get(usize::from(index))
    }
}

/// The lanes of a whole cluster.
pub(crate) struct Cluster {
    seeds: Vec<ConnectionInfo>,
    /// Credentials, protocol and TLS of every node.
    template: ConnectionInfo,
    timeout: Duration,
    lanes_per_shard: usize,
    table: RwLock<Arc<Table>>,
    /// Held while the map is read, so that reads are one at a time; holds
    /// when the last one ended.
    refreshed: tokio::sync::Mutex<Option<Instant>>,
    /// Shards of nodes redirects named that the map does not, with when
    /// each was last used.
    redirected: Mutex<Vec<(Arc<Shard>, Instant)>>,
    /// The shards the last [`Cluster::ping`] could not reach, to log changes only.
    failing: Mutex<Vec<String>>,
    /// The body of every script a SCRIPT LOAD went through, by SHA1: a
    /// node that answers EVALSHA with NOSCRIPT (one that missed the load,
    /// a promoted replica, a new primary a redirect named) is given the
    /// script itself, so that no load has to reach every primary at once.
    scripts: Mutex<HashMap<String, Vec<u8>>>,
}

impl Cluster {
    /// No map yet, no connection; `seeds` is not empty (the URL parser
    /// makes sure).
    fn new(seeds: &[ConnectionInfo], timeout: Duration, lanes_per_shard: usize) -> Cluster {
        Cluster {
            seeds: seeds.to_vec(),
            template: seeds[0].clone(),
            timeout,
            lanes_per_shard: lanes_per_shard.max(1),
            table: RwLock::new(Arc::new(Table::empty())),
            refreshed: tokio::sync::Mutex::new(None),
            redirected: Mutex::new(Vec::new()),
            failing: Mutex::new(Vec::new()),
            scripts: Mutex::new(HashMap::new()),
        }
    }

    /// Reads the slot map from a seed and connects to every primary in it.
    /// Fails if no seed answers, or no primary takes a connection (a wrong
    /// password fails here, not at the first lock call); a primary that is
    /// down is logged and connected to once it is back.
    pub(crate) async fn start(
        target: &ClusterTarget,
        timeout: Duration,
        lanes_per_shard: usize,
    ) -> Result<Arc<Cluster>, StoreError> {
        let cluster = Arc::new(Cluster::new(&target.seeds, timeout, lanes_per_shard));
        cluster.refresh(Duration::ZERO).await?;
        let table = cluster.table();
        if table.shards.is_empty() {
            return Err(StoreError::Redis(unserved(0)));
        }
        let connects = table.shards.iter().map(|shard| async move {
            for lane in &shard.lanes {
                lane.current().await?;
            }
            Ok::<(), RedisError>(())
        });
        let results = futures::future::join_all(connects).await;
        let mut first_error = None;
        for (shard, result) in table.shards.iter().zip(&results) {
            if let Err(err) = result {
                tracing::warn!(node = %shard.name(), error = %err, "cannot connect to a cluster primary yet; its slots are unavailable");
                first_error.get_or_insert_with(|| err.clone());
            }
        }
        match first_error {
            Some(err) if results.iter().all(Result::is_err) => Err(err.into()),
            _ => Ok(cluster),
        }
    }

    fn table(&self) -> Arc<Table> {
        Arc::clone(&self.table.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn shard_of(&self, slot: u16) -> RedisResult<Arc<Shard>> {
        self.table()
            .shard_of(slot)
            .cloned()
            .ok_or_else(|| unserved(slot))
    }

    /// The primaries of the map, read again unless that was just done, as
    /// nodes to connect to.
    pub(crate) async fn primaries(&self) -> Vec<ConnectionInfo> {
        if let Err(err) = self.refresh(REFRESH_GAP).await {
            tracing::debug!(error = %err, "reading the cluster slot map failed");
        }
        self.table()
            .shards
            .iter()
            .map(|s| with_host(&self.template, &s.host, s.port))
            .collect()
    }

    /// Reads the slot map again unless a read ended less than `gap` ago (one
    /// that was under way when this was called counts), and installs it.
    pub(crate) async fn refresh(&self, gap: Duration) -> Result<(), StoreError> {
        let mut refreshed = self.refreshed.lock().await;
        if refreshed.is_some_and(|at| at.elapsed() < gap) {
            return Ok(());
        }
        let read = tokio::time::timeout(self.timeout * 2, self.read_slots()).await;
        *refreshed = Some(Instant::now());
        match read {
            Ok(read) => self.install(read?),
            Err(_) => Err(StoreError::Timeout(self.timeout * 2)),
        }
    }

    /// A read of the map in the background, for a command that failed as if
    /// the map were stale; skipped while one is under way or one ended
    /// within [`REFRESH_GAP`], so that a storm of failing commands does not
    /// pile up tasks waiting for their turn.
    fn refresh_soon(self: &Arc<Self>) {
        match self.refreshed.try_lock() {
            Ok(last) if last.is_none_or(|at| at.elapsed() >= REFRESH_GAP) => {}
            _ => return,
        }
        let cluster = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(err) = cluster.refresh(REFRESH_GAP).await {
                tracing::debug!(error = %err, "reading the cluster slot map failed");
            }
        });
    }

    /// The slot map most connected primaries report (the first one's on a
    /// tie), each asked within half the timeout: an old primary cut off in
    /// a minority still names itself, and must not win by answering first.
    /// With no connected primary answering, the first answer to arrive from
    /// a fresh connection to a node of the last map or a seed.
    async fn read_slots(&self) -> Result<SlotsReply, StoreError> {
        let table = self.table();
        let bound = self.timeout / 2;
        let asks = table.shards.iter().filter_map(|shard| {
            let current = shard.lane(0).connected()?;
            Some(async move {
                let mut conn = current.conn.clone();
                let reply =
                    tokio::time::timeout(bound, slots_cmd().query_async::<Value>(&mut conn))
                        .await
                        .map_err(|_| StoreError::Timeout(bound))??;
                parse_slots(&reply, &shard.host)
            })
        });
        let mut views: Vec<(SlotsReply, usize)> = Vec::new();
        let mut errors = Vec::new();
        for answer in futures::future::join_all(asks).await {
            match answer {
                Ok(view) => match views
                    .iter_mut()
                    .find(|(v, _)| v.primaries == view.primaries)
                {
                    Some((_, count)) => *count += 1,
                    None => views.push((view, 1)),
                },
                Err(err) => errors.push(err),
            }
        }
        let most = views.iter().map(|(_, count)| *count).max().unwrap_or(0);
        if let Some(index) = views.iter().position(|(_, count)| *count == most) {
            return Ok(views.swap_remove(index).0);
        }
        let mut nodes: Vec<ConnectionInfo> = table
            .nodes
            .iter()
            .map(|(host, port)| with_host(&self.template, host, *port))
            .collect();
        nodes.extend(self.seeds.iter().cloned());
        // Half the timeout each, so that both phases fit the read's bound.
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(bound))
            .set_response_timeout(Some(bound));
        let mut fresh: futures::stream::FuturesUnordered<
            BoxFuture<'_, Result<SlotsReply, StoreError>>,
        > = nodes
            .into_iter()
            .map(|info| {
                let config = config.clone();
                async move {
                    let host = match info.addr() {
                        redis::ConnectionAddr::Tcp(host, _)
                        | redis::ConnectionAddr::TcpTls { host, .. } => host.clone(),
                        _ => String::new(),
                    };
                    let client = redis::Client::open(info)?;
                    let mut conn = client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?;
                    let reply = slots_cmd().query_async::<Value>(&mut conn).await?;
                    parse_slots(&reply, &host)
                }
                .boxed()
            })
            .collect();
        // The first that answers, not the first in the list: one node that
        // takes the connection and then stalls must not hold up the others.
        while let Some(answer) = futures::StreamExt::next(&mut fresh).await {
            match answer {
                // A node reset or not yet joined answers an empty map at
                // once: the others are waited for.
                Ok(view) if view.primaries.is_empty() => {}
                Ok(view) => return Ok(view),
                Err(err) => errors.push(err),
            }
        }
        let mut first_error = None;
        // A refused password says more than a node that is down.
        for err in errors {
            if !super::is_unreachable(&err) {
                return Err(err);
            }
            first_error.get_or_insert(err);
        }
        Err(first_error.unwrap_or(StoreError::NotReady))
    }

    /// Puts a new map in place, keeping the shards (and their connections)
    /// of primaries it still names.
    fn install(&self, reply: SlotsReply) -> Result<(), StoreError> {
        let old = self.table();
        // Shards only a redirect named, unused for long, go with their
        // connections (and their reconnecting, if the node is gone).
        lock(&self.redirected).retain(|(_, used)| used.elapsed() < REDIRECT_SHARD_KEEP);
        let mut table = Table::empty();
        table.nodes = reply.nodes;
        for primary in reply.primaries {
            let same = |s: &&Arc<Shard>| s.host == primary.host && s.port == primary.port;
            let kept = old.shards.iter().find(same).cloned().or_else(|| {
                let mut aside = lock(&self.redirected);
                let at = aside.iter().position(|(s, _)| same(&s))?;
                Some(aside.swap_remove(at).0)
            });
            let shard = match kept {
                Some(shard) => shard,
                None => self.shard(&primary.host, primary.port)?,
            };
            let index = table.shards.len() as u16;
            for (start, end) in &primary.slots {
                for slot in *start..=*end {
                    if let Some(owner) = table.owner.get_mut(usize::from(slot)) {
                        *owner = index;
                    }
                }
            }
            table.shards.push(shard);
        }
        let names = |t: &Table| t.shards.iter().map(|s| s.name()).collect::<Vec<_>>();
        let (before, after) = (names(&old), names(&table));
        if before != after && !before.is_empty() {
            tracing::info!(before = ?before, after = ?after, "the cluster's primaries changed");
        }
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
        Ok(())
    }

    fn shard(&self, host: &str, port: u16) -> Result<Arc<Shard>, StoreError> {
        let (closed, on_close) = watch::channel(());
        let info = with_host(&self.template, host, port);
        let source = Arc::new(NodeSource::fixed(
            info,
            self.timeout,
            self.lanes_per_shard,
            on_close,
        )?);
        let lanes = (0..self.lanes_per_shard)
            .map(|i| NodeLane::unconnected(i, Arc::clone(&source)))
            .collect();
        Ok(Arc::new(Shard {
            host: host.to_owned(),
            port,
            lanes,
            _closed: closed,
        }))
    }

    /// Runs `cmd` on lane `pick` of the primary of its key's slot, following
    /// one MOVED (after reading the map again) or an ASK, and sending it
    /// again after TRYAGAIN (a multi-key command in a slot whose keys are
    /// half migrated) until the lanes' timeout is near. None of those
    /// replies ran the command, so sending it again is safe. Keyless
    /// commands: INFO goes to every primary (a map of node to reply, of
    /// those that answered), SCRIPT to every primary (the first reply),
    /// anything else to one primary that answers.
    pub(crate) async fn command(self: &Arc<Self>, pick: usize, cmd: &Cmd) -> RedisResult<Value> {
        let Some(key) = command_key(cmd) else {
            return self.keyless(pick, cmd).await;
        };
        let slot = key_slot(key);
        let started = Instant::now();
        let mut pause = TRY_AGAIN_FIRST_PAUSE;
        loop {
            let result = self.on_slot(pick, slot, cmd).await;
            let try_again = matches!(&result, Ok(Value::ServerError(err))
                if err.kind() == Some(ServerErrorKind::TryAgain));
            if !try_again || started.elapsed() + pause >= self.timeout {
                return result;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(TRY_AGAIN_MAX_PAUSE);
        }
    }

    async fn on_slot(self: &Arc<Self>, pick: usize, slot: u16, cmd: &Cmd) -> RedisResult<Value> {
        let mut target = self.shard_of(slot).inspect_err(|_| self.refresh_soon())?;
        let mut asking = false;
        let mut result = target.lane(pick).command(cmd).await;
        if map_is_stale(&result) {
            match result
                .as_ref()
                .ok()
                .and_then(|v| redirect_of(v, &target.host))
            {
                Some(Redirect::Moved { host, port }) => {
                    // The node that answered knows the owner; the map is
                    // read again meanwhile, for the commands after this one.
                    self.refresh_soon();
                    target = self.shard_at(&host, port)?;
                    result = target.lane(pick).command(cmd).await;
                }
                _ => self.refresh_soon(),
            }
        }
        if let Some(Redirect::Ask { host, port }) = result
            .as_ref()
            .ok()
            .and_then(|v| redirect_of(v, &target.host))
        {
            target = self.shard_at(&host, port)?;
            asking = true;
            result = self.asking(&target, pick, cmd).await;
        }
        let no_script = matches!(&result, Ok(Value::ServerError(err))
            if err.kind() == Some(ServerErrorKind::NoScript));
        if let Some(body) = no_script.then(|| self.script_body(cmd)).flatten() {
            // The script did not run: load it on the node that lacks it and
            // send the call once more.
            let mut load = redis::cmd("SCRIPT");
            load.arg("LOAD").arg(body);
            if let Value::ServerError(err) = target.lane(pick).command(&load).await? {
                return Err(err.into());
            }
            result = match asking {
                true => self.asking(&target, pick, cmd).await,
                false => target.lane(pick).command(cmd).await,
            };
        }
        result
    }

    /// The body of the script an EVALSHA names, if a SCRIPT LOAD of it went
    /// through this cluster.
    fn script_body(&self, cmd: &Cmd) -> Option<Vec<u8>> {
        if command_name(cmd) != b"EVALSHA" {
            return None;
        }
        let Some(Arg::Simple(sha)) = cmd.args_iter().nth(1) else {
            return None;
        };
        let sha = String::from_utf8_lossy(sha).to_ascii_lowercase();
        lock(&self.scripts).get(&sha).cloned()
    }

    /// Keeps the body of a SCRIPT LOAD that a node answered with `sha`.
    fn remember_script(&self, cmd: &Cmd, sha: &Value) {
        let mut args = cmd.args_iter().skip(1);
        let (Some(Arg::Simple(sub)), Some(Arg::Simple(body))) = (args.next(), args.next()) else {
            return;
        };
        let sha = match sha {
            Value::BulkString(b) => String::from_utf8_lossy(b).to_ascii_lowercase(),
            Value::SimpleString(s) => s.to_ascii_lowercase(),
            _ => return,
        };
        if sub.eq_ignore_ascii_case(b"LOAD") {
            lock(&self.scripts).insert(sha, body.to_vec());
        }
    }

    /// The shard of the node at `host:port` that a MOVED or ASK names: the
    /// map's, or one kept aside for nodes the map does not name yet (a new
    /// primary importing its first slot serves none, so CLUSTER SLOTS leaves
    /// it out). Those are dropped once the map names them or after
    /// [`REDIRECT_SHARD_KEEP`] unused.
    fn shard_at(&self, host: &str, port: u16) -> RedisResult<Arc<Shard>> {
        if let Some(shard) = self
            .table()
            .shards
            .iter()
            .find(|s| s.host == host && s.port == port)
        {
            return Ok(Arc::clone(shard));
        }
        let mut aside = lock(&self.redirected);
        aside.retain(|(_, used)| used.elapsed() < REDIRECT_SHARD_KEEP);
        if let Some((shard, used)) = aside
            .iter_mut()
            .find(|(s, _)| s.host == host && s.port == port)
        {
            *used = Instant::now();
            return Ok(Arc::clone(shard));
        }
        let shard = self.shard(host, port).map_err(|e| {
            RedisError::from((
                ErrorKind::Server(ServerErrorKind::TryAgain),
                "cannot reach the node a redirect names",
                format!("{host}:{port}: {e}"),
            ))
        })?;
        aside.push((Arc::clone(&shard), Instant::now()));
        Ok(shard)
    }

    /// A command for a slot being migrated, on the node the slot moves to.
    async fn asking(&self, shard: &Shard, pick: usize, cmd: &Cmd) -> RedisResult<Value> {
        let mut pipe = redis::pipe();
        pipe.cmd("ASKING").ignore().add_command(cmd.clone());
        let mut replies = shard.lane(pick).pipeline(&pipe, 0, 2, None).await?;
        Ok(replies.pop().unwrap_or(Value::Nil))
    }

    async fn keyless(self: &Arc<Self>, pick: usize, cmd: &Cmd) -> RedisResult<Value> {
        let table = self.table();
        if table.shards.is_empty() {
            return Err(unserved(0));
        }
        let get = matches!(cmd.args_iter().nth(1),
            Some(Arg::Simple(sub)) if sub.eq_ignore_ascii_case(b"GET"));
        match command_name(cmd).as_slice() {
            // CONFIG GET of every primary, since one primary's setting (an
            // evicting maxmemory-policy) says nothing of the others'.
            b"INFO" | b"SCRIPT" => self.fan_out(&table, pick, cmd).await,
            b"CONFIG" if get => self.fan_out(&table, pick, cmd).await,
            _ => {
                // Sent once, to a connected primary if there is one: after
                // a failure nothing says it did not run.
                let shard = table
                    .shards
                    .iter()
                    .find(|s| s.lane(pick).connected().is_some())
                    .unwrap_or(&table.shards[0]);
                shard.lane(pick).command(cmd).await
            }
        }
    }

    /// `cmd` on every connected primary of `table`: SCRIPT answers the
    /// first reply, others a map of node name to reply, of those that
    /// answered; an error only if none did.
    async fn fan_out(&self, table: &Table, pick: usize, cmd: &Cmd) -> RedisResult<Value> {
        let replies =
            futures::future::join_all(table.shards.iter().map(|s| self.on_connected(s, pick, cmd)))
                .await;
        let mut answered = Vec::new();
        let mut first_error = None;
        for (shard, reply) in table.shards.iter().zip(replies) {
            let Some(reply) = reply else {
                // Down or reconnecting: no reply to count. A script
                // it lacks is given to it on its first NOSCRIPT.
                continue;
            };
            match reply {
                Ok(Value::ServerError(err)) => {
                    first_error.get_or_insert_with(|| err.into());
                }
                Ok(value) => answered.push((Value::BulkString(shard.name().into()), value)),
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        let script = command_name(cmd) == b"SCRIPT";
        match (answered.is_empty(), first_error) {
            (true, Some(err)) => Err(err),
            (true, None) => Err(super::lane::io_error(
                "no cluster primary is connected".to_owned(),
            )),
            // One node that took the script is enough: its body is
            // kept, and a node that missed it gets it on its first
            // NOSCRIPT, so a silent shard holds up nobody else.
            _ if script => {
                let sha = answered
                    .into_iter()
                    .next()
                    .map_or(Value::Nil, |(_, value)| value);
                self.remember_script(cmd, &sha);
                Ok(sha)
            }
            _ => Ok(Value::Map(answered)),
        }
    }

    /// `cmd` on a shard whose lane is connected now, within part of the
    /// timeout, so that one primary that is down or silent does not make a
    /// fan-out over all of them miss its bound.
    /// `None` for a shard whose lane is not connected (it starts reconnecting).
    async fn on_connected(
        &self,
        shard: &Shard,
        pick: usize,
        cmd: &Cmd,
    ) -> Option<RedisResult<Value>> {
        let lane = shard.lane(pick);
        lane.connected()?;
        let bound = self.timeout / 2;
        Some(match tokio::time::timeout(bound, lane.command(cmd)).await {
            Ok(result) => result,
            Err(_) => Err(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("{} did not answer within {bound:?}", shard.name()),
            ))),
        })
    }

    /// Runs `pipeline`: whole on one primary when it is a transaction or all
    /// its commands are for one primary, else split by primary. Commands
    /// answered MOVED or ASK (which did not run) are sent again one by one.
    pub(crate) async fn pipeline(
        self: &Arc<Self>,
        pick: usize,
        pipeline: &Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        let table = self.table();
        let commands: Vec<&Cmd> = pipeline.cmd_iter().collect();
        let mut owners = Vec::with_capacity(commands.len());
        for cmd in &commands {
            owners.push(match command_key(cmd) {
                Some(key) => {
                    let slot = key_slot(key);
                    Some(usize::from(table.owner[usize::from(slot)]))
                        .filter(|i| *i < table.shards.len())
                        .ok_or_else(|| unserved(slot))?
                }
                None => usize::MAX,
            });
        }
        let first = owners
            .iter()
            .copied()
            .find(|o| *o != usize::MAX)
            .unwrap_or(0);
        let one_shard = owners.iter().all(|o| *o == first || *o == usize::MAX);
        if pipeline.is_transaction() || one_shard {
            let shard = table.shards.get(first).ok_or_else(|| unserved(0))?;
            // A transaction's replies are sliced by the node connection; a
            // plain pipeline's here, after its redirects are followed.
            let (from, n) = match pipeline.is_transaction() {
                true => (offset, count),
                false => (0, commands.len()),
            };
            let result = shard.lane(pick).pipeline(pipeline, from, n, None).await;
            if result
                .as_ref()
                .map_or(true, |values| values.iter().any(reply_is_stale))
            {
                self.refresh_soon();
            }
            if pipeline.is_transaction() {
                return result;
            }
            let mut values = result?;
            self.follow_redirects(pick, &commands, &mut values).await;
            return Ok(values.into_iter().skip(offset).take(count).collect());
        }
        // Keyless commands in a mixed pipeline go with the first primary's.
        let mut groups: HashMap<usize, Vec<usize>> = HashMap::new();
        for (i, owner) in owners.iter().enumerate() {
            let owner = if *owner == usize::MAX { first } else { *owner };
            groups.entry(owner).or_default().push(i);
        }
        let sends = groups.iter().map(|(owner, members)| {
            let mut sub = redis::pipe();
            for &i in members {
                sub.add_command(commands[i].clone());
            }
            let shard = Arc::clone(&table.shards[*owner]);
            async move {
                let n = members.len();
                shard.lane(pick).pipeline(&sub, 0, n, None).await
            }
        });
        let replies = futures::future::join_all(sends).await;
        let mut values = vec![Value::Nil; commands.len()];
        let mut stale = false;
        for ((_, members), reply) in groups.iter().zip(replies) {
            let reply = match reply {
                Ok(reply) => reply,
                Err(err) => {
                    self.refresh_soon();
                    return Err(err);
                }
            };
            for (&i, value) in members.iter().zip(reply) {
                stale |= reply_is_stale(&value);
                values[i] = value;
            }
        }
        if stale {
            self.refresh_soon();
        }
        self.follow_redirects(pick, &commands, &mut values).await;
        Ok(values.into_iter().skip(offset).take(count).collect())
    }

    /// Sends again each command answered MOVED or ASK, on its own.
    async fn follow_redirects(
        self: &Arc<Self>,
        pick: usize,
        commands: &[&Cmd],
        values: &mut [Value],
    ) {
        let redirected: Vec<usize> = (0..values.len())
            .filter(|&i| redirect_of(&values[i], "").is_some())
            .collect();
        if redirected.is_empty() {
            return;
        }
        let resent =
            futures::future::join_all(redirected.iter().map(|&i| self.command(pick, commands[i])))
                .await;
        // A resend that failed leaves the redirect, which the caller reads
        // as the server error it is.
        for (&i, result) in redirected.iter().zip(resent) {
            if let Ok(value) = result {
                values[i] = value;
            }
        }
    }

    /// `pipeline` as one write to the primary of `routing_key`'s slot, with
    /// its own response timeout (for WAIT), following one MOVED or ASK of its
    /// first command. Not retried otherwise: the caller treats any failure as
    /// unconfirmed.
    pub(crate) async fn one_node_pipeline(
        self: &Arc<Self>,
        pick: usize,
        routing_key: &str,
        pipeline: &Pipeline,
        response_timeout: Duration,
    ) -> RedisResult<Vec<Value>> {
        let shard = self
            .shard_of(key_slot(routing_key.as_bytes()))
            .inspect_err(|_| self.refresh_soon())?;
        let count = pipeline.cmd_iter().count();
        let result = shard
            .lane(pick)
            .pipeline(pipeline, 0, count, Some(response_timeout))
            .await;
        if result
            .as_ref()
            .map_or(true, |values| values.iter().any(reply_is_stale))
        {
            self.refresh_soon();
        }
        // A first command answered MOVED or ASK did not run (what followed
        // it ran on a node it was not meant for): the pipeline goes once to
        // the node named, as one command would.
        let redirect = match &result {
            Ok(values) => values.first().and_then(|v| redirect_of(v, &shard.host)),
            Err(_) => None,
        };
        match redirect {
            Some(Redirect::Moved { host, port }) => {
                self.shard_at(&host, port)?
                    .lane(pick)
                    .pipeline(pipeline, 0, count, Some(response_timeout))
                    .await
            }
            Some(Redirect::Ask { host, port }) => {
                let mut asked = redis::pipe();
                asked.cmd("ASKING");
                for cmd in pipeline.cmd_iter() {
                    asked.add_command(cmd.clone());
                }
                self.shard_at(&host, port)?
                    .lane(pick)
                    .pipeline(&asked, 1, count, Some(response_timeout))
                    .await
            }
            None => result,
        }
    }

    /// Whether every primary of the map answers ROLE `master` on every
    /// lane. Succeeds if at least one does, since the others' slots are
    /// the only ones affected; the ones that do not are logged when that
    /// changes. Each primary is checked within half the timeout, so that a
    /// silent one cannot make the whole check miss its bound.
    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        let table = self.table();
        if table.shards.is_empty() {
            return Err(StoreError::Redis(unserved(0)));
        }
        let bound = self.timeout / 2;
        let checks = table.shards.iter().map(|shard| async move {
            match tokio::time::timeout(bound, shard.check()).await {
                Ok(result) => result,
                Err(_) => Err(StoreError::Timeout(bound)),
            }
        });
        let results = futures::future::join_all(checks).await;
        let mut down = Vec::new();
        let mut last_error = None;
        for (shard, result) in table.shards.iter().zip(results) {
            if let Err(err) = result {
                down.push(shard.name());
                last_error = Some(err);
            }
        }
        down.sort();
        {
            let mut known = lock(&self.failing);
            if *known != down {
                if down.is_empty() {
                    tracing::info!("every cluster primary answers again");
                } else {
                    tracing::warn!(
                        shards = ?down,
                        error = ?last_error.as_ref().map(|e| e.to_string()),
                        "cluster primaries do not answer; their slots are unavailable"
                    );
                }
                *known = down.clone();
            }
        }
        match last_error {
            Some(err) if down.len() == table.shards.len() => Err(err),
            _ => Ok(()),
        }
    }
}

/// Reads the slot map every [`REFRESH_EVERY`] until `shutdown` closes, so
/// that a promoted replica is found even when no command failed.
pub(crate) async fn follow(cluster: Arc<Cluster>, mut shutdown: watch::Receiver<()>) {
    let mut tick = tokio::time::interval(REFRESH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        match cluster.refresh(REFRESH_GAP).await {
            Ok(()) if failing => {
                tracing::info!("the cluster slot map can be read again");
                failing = false;
            }
            Ok(()) => {}
            Err(err) if !failing => {
                tracing::warn!(error = %err, "reading the cluster slot map failed; retrying");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

fn slots_cmd() -> Cmd {
    let mut cmd = redis::cmd("CLUSTER");
    cmd.arg("SLOTS");
    cmd
}

/// Parses `CLUSTER SLOTS`: `[[start, end, [host, port, id, ...], replica...], ...]`,
/// into the primaries (each once, in slot order) and every node named. An
/// empty or NULL host means the node `answered` (a one-node cluster, or
/// `cluster-preferred-endpoint-type unknown-endpoint`).
fn parse_slots(value: &Value, answered: &str) -> Result<SlotsReply, StoreError> {
    let bad = || {
        StoreError::Redis(RedisError::from((
            ErrorKind::Parse,
            "CLUSTER SLOTS answered something else than a slot map",
            format!("{value:?}"),
        )))
    };
    let Value::Array(ranges) = value else {
        return Err(bad());
    };
    let node_of = |node: &Value| -> Result<Option<(String, u16)>, StoreError> {
        let Value::Array(node) = node else {
            return Err(bad());
        };
        let host = match node.first() {
            Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(Value::SimpleString(s)) => s.clone(),
            Some(Value::Nil) => String::new(),
            _ => return Err(bad()),
        };
        let host = if host.is_empty() {
            answered.to_owned()
        } else {
            host
        };
        let Some(Value::Int(port)) = node.get(1) else {
            return Err(bad());
        };
        // An unknown endpoint ("?") cannot be connected to.
        if host.is_empty() || host == "?" {
            return Ok(None);
        }
        let port = u16::try_from(*port).map_err(|_| bad())?;
        Ok(Some((host, port)))
    };
    let mut primaries: Vec<Primary> = Vec::new();
    let mut nodes: Vec<(String, u16)> = Vec::new();
    for range in ranges {
        let Value::Array(parts) = range else {
            return Err(bad());
        };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(primary)) =
            (parts.first(), parts.get(1), parts.get(2))
        else {
            return Err(bad());
        };
        let (Ok(start), Ok(end)) = (u16::try_from(*start), u16::try_from(*end)) else {
            return Err(bad());
        };
        if usize::from(end) >= SLOTS || start > end {
            return Err(bad());
        }
        for replica in &parts[3..] {
            if let Some(node) = node_of(replica)?
                && !nodes.contains(&node)
            {
                nodes.push(node);
            }
        }
        let Some((host, port)) = node_of(primary)? else {
            continue;
        };
        if !nodes.contains(&(host.clone(), port)) {
            nodes.push((host.clone(), port));
        }
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
    primaries.sort_by_key(|p| p.slots.iter().map(|s| s.0).min());
    Ok(SlotsReply { primaries, nodes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loaded_scripts_are_kept_for_the_evalsha_that_names_them() {
        let seed: ConnectionInfo = "redis://127.0.0.1:7000".parse().expect("a url");
        let cluster = Cluster::new(&[seed], Duration::from_secs(1), 1);
        let mut load = redis::cmd("SCRIPT");
        load.arg("LOAD").arg("return 1");
        // Redis answers the SHA1 in lowercase; an EVALSHA may name it in capitals.
        cluster.remember_script(
            &load,
            &Value::BulkString(b"e0e1f9fabfc9d4800c877a703b823ac0578ff8db".to_vec()),
        );
        let mut eval = redis::cmd("EVALSHA");
        eval.arg("E0E1F9FABFC9D4800C877A703B823AC0578FF8DB").arg(0);
        assert_eq!(
            cluster.script_body(&eval).as_deref(),
            Some(&b"return 1"[..])
        );
        let mut other = redis::cmd("EVALSHA");
        other.arg("0000000000000000000000000000000000000000").arg(0);
        assert_eq!(cluster.script_body(&other), None);
        // Only LOAD is kept, and only an answered SHA.
        let mut flush = redis::cmd("SCRIPT");
        flush.arg("FLUSH");
        cluster.remember_script(&flush, &Value::Okay);
        let mut unanswered = redis::cmd("SCRIPT");
        unanswered.arg("LOAD").arg("return 2");
        cluster.remember_script(&unanswered, &Value::Nil);
        assert_eq!(lock(&cluster.scripts).len(), 1);
        // EVAL carries its body itself.
        let mut eval_text = redis::cmd("EVAL");
        eval_text.arg("return 1").arg(0);
        assert_eq!(cluster.script_body(&eval_text), None);
    }

    #[test]
    fn keys_hash_to_the_slots_redis_gives_them() {
        // Figures from the Redis Cluster specification and CLUSTER KEYSLOT.
        assert_eq!(
            crc16::State::<crc16::XMODEM>::calculate(b"123456789"),
            0x31c3
        );
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        // An empty tag does not count: the whole key is hashed.
        assert_eq!(
            key_slot(b"foo{}{bar}"),
            crc16::State::<crc16::XMODEM>::calculate(b"foo{}{bar}") % 16384
        );
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
    }

    #[test]
    fn commands_route_by_their_first_key() {
        let mut hgetall = redis::cmd("HGETALL");
        hgetall.arg("p:{0a}:s");
        assert_eq!(command_key(&hgetall), Some(&b"p:{0a}:s"[..]));
        let mut evalsha = redis::cmd("EVALSHA");
        evalsha
            .arg("sha")
            .arg(2)
            .arg("p:{r}:h")
            .arg("p:{r}:q")
            .arg("x");
        assert_eq!(command_key(&evalsha), Some(&b"p:{r}:h"[..]));
        let mut keyless = redis::cmd("EVALSHA");
        keyless.arg("sha").arg(0);
        assert_eq!(command_key(&keyless), None);
        assert_eq!(command_key(&redis::cmd("PING")), None);
        let mut load = redis::cmd("SCRIPT");
        load.arg("LOAD").arg("return 1");
        assert_eq!(command_key(&load), None);
    }

    #[test]
    fn redirects_are_read_from_the_error() {
        let parse = |text: &str| redis::parse_redis_value(text.as_bytes()).expect("a reply");
        match redirect_of(&parse("-MOVED 3999 127.0.0.1:6381\r\n"), "10.0.0.1") {
            Some(Redirect::Moved { host, port }) => {
                assert_eq!((host.as_str(), port), ("127.0.0.1", 6381))
            }
            other => panic!("MOVED read as {other:?}"),
        }
        match redirect_of(&parse("-ASK 3999 10.0.0.2:7002\r\n"), "10.0.0.1") {
            Some(Redirect::Ask { host, port }) => {
                assert_eq!((host.as_str(), port), ("10.0.0.2", 7002))
            }
            _ => panic!("ASK not read"),
        }
        // An empty host is the answering node's.
        match redirect_of(&parse("-MOVED 3999 :7001\r\n"), "10.0.0.1") {
            Some(Redirect::Moved { host, port }) => {
                assert_eq!((host.as_str(), port), ("10.0.0.1", 7001))
            }
            other => panic!("MOVED with an empty host read as {other:?}"),
        }
        assert!(redirect_of(&parse("-MOVED 3999 ?:7001\r\n"), "10.0.0.1").is_none());
        assert!(redirect_of(&parse("-ERR nope\r\n"), "10.0.0.1").is_none());
        assert!(redirect_of(&parse("+OK\r\n"), "10.0.0.1").is_none());
    }

    #[test]
    fn cluster_slots_are_parsed_into_primaries_and_nodes() {
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
        let SlotsReply { primaries, nodes } = parse_slots(&value, "10.0.0.9").expect("parsed");
        assert_eq!(
            primaries,
            vec![
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
            ]
        );
        assert_eq!(nodes.len(), 3, "{nodes:?}");
        assert!(parse_slots(&Value::Nil, "x").is_err());
        let out_of_range = Value::Array(vec![Value::Array(vec![
            Value::Int(0),
            Value::Int(16384),
            node("127.0.0.1", 7000),
        ])]);
        assert!(parse_slots(&out_of_range, "x").is_err());
        // A one-node cluster names itself with an empty host.
        let alone = Value::Array(vec![Value::Array(vec![
            Value::Int(0),
            Value::Int(16383),
            node("", 7000),
        ])]);
        let SlotsReply { primaries, .. } = parse_slots(&alone, "10.0.0.9").unwrap();
        assert_eq!(
            (primaries[0].host.as_str(), primaries[0].port),
            ("10.0.0.9", 7000)
        );
    }
}
