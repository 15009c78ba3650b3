//! lockctl end to end: the real binary against a real `lockd --dev` daemon
//! (see `lockd_testkit::lockd` for how the daemon is found and started).

use std::process::Stdio;
use std::time::Duration;

use lockd_client::{Client, Code};
use lockd_testkit::{Lockd, RedisServer, unique};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Clients of the test daemon, for setting up what lockctl then inspects.
trait DaemonClient {
    /// A connected client with a fresh client_id.
    fn client(&self) -> impl std::future::Future<Output = Client>;
    /// Waits until the daemon serves lock calls: it listens before it has
    /// reached Redis, and answers UNAVAILABLE until then.
    fn ready(&self) -> impl std::future::Future<Output = ()>;
}

impl DaemonClient for Lockd {
    async fn client(&self) -> Client {
        Client::connect(self.endpoint())
            .await
            .unwrap_or_else(|e| panic!("connecting to the test daemon: {e}"))
            .with_client_id(unique("test"))
    }

    async fn ready(&self) {
        let client = self.client().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while client.stats().await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the test daemon did not reach redis within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// What a finished lockctl run left behind.
#[derive(Debug)]
struct Run {
    status: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    #[track_caller]
    fn assert_status(&self, status: i32) -> &Run {
        assert_eq!(self.status, status, "unexpected exit status: {self:?}");
        self
    }
}

/// `lockctl --endpoint <daemon> --client-id <id> ARGS...`, isolated from
/// the caller's LOCKD_* environment.
fn lockctl(daemon: &Lockd, client_id: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lockctl"));
    cmd.env_remove("LOCKD_ENDPOINT")
        .env_remove("LOCKD_CLIENT_ID")
        .env_remove("RUST_LOG")
        .args(["--endpoint", &daemon.endpoint(), "--client-id", client_id])
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

async fn run(mut cmd: Command) -> Run {
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("lockctl finished within 30 s")
        .expect("lockctl started");
    Run {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn wait_child(child: Child) -> Run {
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("lockctl finished within 30 s")
        .expect("waiting for lockctl");
    Run {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn signal(child: &Child, signal: libc::c_int) {
    let pid = child.id().expect("still running");
    // SAFETY: kill has no memory-safety preconditions; pid is our child.
    let rc = unsafe { libc::kill(libc::pid_t::try_from(pid).unwrap(), signal) };
    assert_eq!(rc, 0, "kill failed");
}

/// Polls `check` every 50 ms for up to `limit`.
async fn eventually<T, Fut: std::future::Future<Output = Option<T>>>(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> Fut,
) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn waiters(client: &Client, resource: &str) -> Vec<String> {
    let snapshot = client.queue_snapshot(resource).await.expect("GetQueue");
    snapshot.waiters.into_iter().map(|w| w.client_id).collect()
}

#[tokio::test]
async fn acquire_status_held_release_in_json() {
    let daemon = Lockd::start(&["--dev"]);
    let me = unique("ctl");
    let acquired = run(lockctl(
        &daemon,
        &me,
        &[
            "--json", "acquire", "ctl/json", "--ttl", "45s", "--mode", "write",
        ],
    ))
    .await;
    let lease = acquired.assert_status(0).json();
    let lock_id = lease["lock_id"].as_str().expect("lock_id").to_owned();
    assert!(!lock_id.is_empty());
    assert_eq!(lease["resource"], "ctl/json");
    assert_eq!(lease["mode"], "write");
    assert_eq!(lease["client_id"], me.as_str());
    assert_eq!(lease["ttl_ms"], 45_000);
    assert!(lease["fencing_token"].as_u64().expect("token") > 0);
    assert!(lease["expires_at"].as_str().expect("time").ends_with('Z'));

    // The lease outlives the lockctl that took it.
    let status = run(lockctl(&daemon, &me, &["status", &lock_id, "--json"])).await;
    let live = status.assert_status(0).json();
    assert_eq!(live["lock_id"], lock_id.as_str());
    assert_eq!(live["fencing_token"], lease["fencing_token"]);

    let held = run(lockctl(&daemon, &me, &["--json", "held"])).await;
    let held = held.assert_status(0).json();
    assert_eq!(held["client_id"], me.as_str());
    let ids: Vec<_> = held["leases"]
        .as_array()
        .expect("leases")
        .iter()
        .map(|l| l["lock_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, std::slice::from_ref(&lock_id));

    let renewed = run(lockctl(
        &daemon,
        &me,
        &["--json", "renew", &lock_id, "--ttl", "90s"],
    ))
    .await;
    let renewed = renewed.assert_status(0).json();
    assert_eq!(renewed["ttl_ms"], 90_000);
    assert_eq!(renewed["renewal_count"], 1);

    let released = run(lockctl(&daemon, &me, &["release", &lock_id])).await;
    assert_eq!(
        released.assert_status(0).stdout.trim(),
        format!("released {lock_id}")
    );

    let gone = run(lockctl(&daemon, &me, &["status", &lock_id])).await;
    gone.assert_status(4);
    assert!(gone.stderr.starts_with("lockctl: "), "{gone:?}");
    assert!(gone.stderr.contains("NOT_FOUND"), "{gone:?}");
    assert!(gone.stdout.is_empty());
}

#[tokio::test]
async fn text_output_is_readable() {
    let daemon = Lockd::start(&["--dev"]);
    let me = unique("ctl");
    let acquired = run(lockctl(&daemon, &me, &["acquire", "ctl/text"])).await;
    let text = &acquired.assert_status(0).stdout;
    assert!(text.contains("resource       ctl/text"), "{text}");
    assert!(text.contains("mode           exclusive"), "{text}");
    assert!(text.contains("ttl            30s"), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("fencing_token  ")),
        "{text}"
    );

    let queue = run(lockctl(&daemon, &me, &["queue", "ctl/text"])).await;
    let text = &queue.assert_status(0).stdout;
    assert!(text.contains("holders (1):"), "{text}");
    assert!(text.contains(&me), "{text}");
    assert!(text.contains("waiters: none"), "{text}");

    let stats = run(lockctl(&daemon, &me, &["stats"])).await;
    assert!(
        stats.assert_status(0).stdout.contains("active locks"),
        "{stats:?}"
    );
}

#[tokio::test]
async fn failures_have_distinct_exit_statuses() {
    let daemon = Lockd::start(&["--dev"]);
    let owner = unique("owner");
    let acquired = run(lockctl(
        &daemon,
        &owner,
        &["--json", "acquire", "ctl/codes"],
    ))
    .await;
    let lock_id = acquired.assert_status(0).json()["lock_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let stranger = unique("stranger");
    let busy = run(lockctl(
        &daemon,
        &stranger,
        &["acquire", "ctl/codes", "--wait", "0s"],
    ))
    .await;
    busy.assert_status(6);
    assert!(busy.stderr.contains("DEADLINE_EXCEEDED"), "{busy:?}");

    let denied = run(lockctl(&daemon, &stranger, &["release", &lock_id])).await;
    denied.assert_status(5);
    assert!(denied.stderr.contains("PERMISSION_DENIED"), "{denied:?}");

    let invalid = run(lockctl(&daemon, &owner, &["acquire", ""])).await;
    invalid.assert_status(2);
    assert!(invalid.stderr.contains("INVALID_ARGUMENT"), "{invalid:?}");

    let usage = run(lockctl(&daemon, &owner, &["acquire", "r", "--ttl", "soon"])).await;
    usage.assert_status(2);

    // Nothing listens on port 1 (privileged, unassigned): connections are
    // refused at once, with no race against other tests' daemons.
    let mut down = Command::new(env!("CARGO_BIN_EXE_lockctl"));
    down.args(["--endpoint", "127.0.0.1:1", "health"]);
    let down = run(down).await;
    down.assert_status(3);
    assert!(
        down.stderr.starts_with("lockctl: error: cannot connect"),
        "{down:?}"
    );
}

#[tokio::test]
async fn health_reports_serving_on_both_endpoint_forms() {
    let daemon = Lockd::start(&["--dev"]);
    let me = unique("ctl");
    let text = run(lockctl(&daemon, &me, &["health"])).await;
    assert_eq!(text.assert_status(0).stdout.trim(), "SERVING");

    // http:// form, given through the environment.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lockctl"));
    cmd.env("LOCKD_ENDPOINT", format!("http://{}", daemon.endpoint()))
        .args(["--json", "health"]);
    let json = run(cmd).await;
    assert_eq!(json.assert_status(0).json()["status"], "SERVING");
}

#[tokio::test]
async fn health_names_services_and_fails_when_redis_is_down() {
    let daemon = Lockd::start(&["--dev"]);
    let me = unique("ctl");
    let api = run(lockctl(
        &daemon,
        &me,
        &["health", "--service", "lockd.v1.LockService"],
    ))
    .await;
    assert_eq!(api.assert_status(0).stdout.trim(), "SERVING");
    let unknown = run(lockctl(
        &daemon,
        &me,
        &["health", "--service", "no.such.Service"],
    ))
    .await;
    unknown.assert_status(4);

    let Some(mut redis) = RedisServer::try_start() else {
        eprintln!("redis-server is not installed: NOT_SERVING is not checked");
        return;
    };
    let daemon = Lockd::start(&["--redis-url", &redis.url()]);
    daemon.ready().await;
    run(lockctl(&daemon, &me, &["health"]))
        .await
        .assert_status(0);
    redis.kill();
    let down = eventually(
        Duration::from_secs(10),
        "health to turn NOT_SERVING",
        || async {
            let out = run(lockctl(&daemon, &me, &["--json", "health"])).await;
            (out.status != 0).then_some(out)
        },
    )
    .await;
    down.assert_status(10);
    assert_eq!(down.json()["status"], "NOT_SERVING");
    assert!(down.stderr.contains("lockd is NOT_SERVING"), "{down:?}");
}

#[tokio::test]
async fn queue_and_stats_json_parse() {
    let daemon = Lockd::start(&["--dev"]);
    let client = daemon.client().await;
    let holder = client.lock("ctl/queue").acquire().await.expect("holder");
    let waiter = daemon.client().await;
    let waiting = tokio::spawn(async move {
        waiter
            .lock("ctl/queue")
            .wait(Duration::from_secs(20))
            .acquire()
            .await
    });
    eventually(Duration::from_secs(5), "a waiter", || async {
        (!waiters(&client, "ctl/queue").await.is_empty()).then_some(())
    })
    .await;

    let me = unique("ctl");
    let queue = run(lockctl(&daemon, &me, &["--json", "queue", "ctl/queue"])).await;
    let queue = queue.assert_status(0).json();
    assert_eq!(queue["resource"], "ctl/queue");
    assert_eq!(queue["holders"][0]["client_id"], client.client_id());
    assert_eq!(queue["holders"][0]["lock_id"], "");
    assert_eq!(queue["waiters"].as_array().unwrap().len(), 1);
    assert_eq!(queue["waiters"][0]["position"], 0);

    let stats = run(lockctl(&daemon, &me, &["--json", "stats"])).await;
    let stats = stats.assert_status(0).json();
    for key in [
        "total_locks",
        "active_locks",
        "expired_locks",
        "released_locks",
        "waiting",
    ] {
        assert!(stats[key].is_u64(), "{key} missing in {stats}");
    }
    assert!(stats["average_hold_time_ms"].is_number());
    assert!(stats["active_by_mode"].is_object());
    assert!(stats["top_resources"].is_array());

    holder.release().await.expect("release");
    let granted = waiting.await.unwrap().expect("the waiter gets it");
    granted.release().await.expect("release");
}

#[tokio::test]
async fn run_passes_the_lease_to_the_command_and_its_exit_code_back() {
    let daemon = Lockd::start(&["--dev"]);
    let client = daemon.client().await;
    let me = unique("ctl");
    let out = run(lockctl(
        &daemon,
        &me,
        &[
            "run",
            "ctl/run",
            "--",
            "sh",
            "-c",
            r#"echo "$LOCKD_LOCK_ID $LOCKD_FENCING_TOKEN $LOCKD_RESOURCE"; exit 7"#,
        ],
    ))
    .await;
    out.assert_status(7);
    let fields: Vec<&str> = out.stdout.split_whitespace().collect();
    assert_eq!(fields.len(), 3, "{out:?}");
    let (lock_id, token) = (fields[0], fields[1]);
    assert!(!lock_id.is_empty());
    assert!(token.parse::<u64>().expect("numeric token") > 0);
    assert_eq!(fields[2], "ctl/run");

    // Released when the command ended.
    let err = client.get_lock(lock_id).await.expect_err("released");
    assert_eq!(err.code(), Some(Code::NotFound));
    let snapshot = client.queue_snapshot("ctl/run").await.expect("GetQueue");
    assert!(snapshot.holders.is_empty(), "{snapshot:?}");

    let ok = run(lockctl(&daemon, &me, &["run", "ctl/run", "--", "true"])).await;
    ok.assert_status(0);
}

#[tokio::test]
async fn run_renews_while_the_command_runs() {
    let daemon = Lockd::start(&["--dev"]);
    let me = unique("ctl");
    // A 600 ms lease held for 2 s: only renewals keep it.
    let out = run(lockctl(
        &daemon,
        &me,
        &["run", "ctl/renew", "--ttl", "600ms", "--", "sleep", "2"],
    ))
    .await;
    out.assert_status(0);
    assert!(out.stderr.is_empty(), "{out:?}");
}

#[tokio::test]
async fn run_waits_for_a_contended_lock() {
    let daemon = Lockd::start(&["--dev"]);
    let client = daemon.client().await;
    let holder = client
        .lock("ctl/contended")
        .acquire()
        .await
        .expect("holder");
    let me = unique("ctl");
    let mut cmd = lockctl(
        &daemon,
        &me,
        &[
            "run",
            "ctl/contended",
            "--wait",
            "20s",
            "--",
            "sh",
            "-c",
            "echo $LOCKD_FENCING_TOKEN",
        ],
    );
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    eventually(Duration::from_secs(5), "lockctl in the queue", || async {
        (waiters(&client, "ctl/contended").await == [me.clone()]).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        waiters(&client, "ctl/contended").await,
        std::slice::from_ref(&me),
        "lockctl run must keep waiting while the lock is held"
    );

    let holder_token = holder.fencing_token();
    holder.release().await.expect("release");
    let out = wait_child(child).await;
    out.assert_status(0);
    let token: u64 = out.stdout.trim().parse().expect("token");
    assert!(token > holder_token, "{token} <= {holder_token}");
    // stderr is not a terminal here: no progress line.
    assert!(out.stderr.is_empty(), "{out:?}");
}

#[tokio::test]
async fn run_gives_up_after_wait_and_ctrl_c_leaves_the_queue() {
    let daemon = Lockd::start(&["--dev"]);
    let client = daemon.client().await;
    let holder = client.lock("ctl/giveup").acquire().await.expect("holder");
    let me = unique("ctl");

    let timed_out = run(lockctl(
        &daemon,
        &me,
        &[
            "run",
            "ctl/giveup",
            "--wait",
            "300ms",
            "--",
            "touch",
            "/nonexistent/ran",
        ],
    ))
    .await;
    timed_out.assert_status(6);
    assert!(
        timed_out.stderr.contains("DEADLINE_EXCEEDED"),
        "{timed_out:?}"
    );

    let child = lockctl(
        &daemon,
        &me,
        &["run", "ctl/giveup", "--wait", "20s", "--", "true"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn");
    eventually(Duration::from_secs(5), "lockctl in the queue", || async {
        (!waiters(&client, "ctl/giveup").await.is_empty()).then_some(())
    })
    .await;
    signal(&child, libc::SIGINT);
    let out = wait_child(child).await;
    out.assert_status(130);
    eventually(
        Duration::from_secs(3),
        "lockctl to leave the queue",
        || async {
            waiters(&client, "ctl/giveup")
                .await
                .is_empty()
                .then_some(())
        },
    )
    .await;
    holder.release().await.expect("release");
}

#[tokio::test]
async fn run_stops_the_command_when_the_lease_is_lost() {
    let daemon = Lockd::start(&["--dev"]);
    let me = unique("ctl");
    let child = lockctl(
        &daemon,
        &me,
        &[
            "run",
            "ctl/lost",
            "--ttl",
            "900ms",
            "--",
            "sh",
            "-c",
            "trap 'echo got-sigterm; exit 0' TERM; echo started; while :; do sleep 0.05; done",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn");

    // Take the lease away behind lockctl's back, as an operator would.
    let operator = daemon.client().await.with_client_id(me.clone());
    let lease = eventually(
        Duration::from_secs(5),
        "lockctl to hold the lock",
        || async { operator.list_held(&me).await.ok()?.into_iter().next() },
    )
    .await;
    operator
        .release(&lease.lock_id)
        .await
        .expect("release behind its back");

    let out = wait_child(child).await;
    out.assert_status(9);
    assert!(out.stdout.contains("got-sigterm"), "{out:?}");
    assert!(out.stderr.contains("lost the lease"), "{out:?}");
    assert!(out.stderr.contains("NOT_FOUND"), "{out:?}");
}

#[tokio::test]
async fn run_reports_a_missing_command_and_releases() {
    let daemon = Lockd::start(&["--dev"]);
    let client = daemon.client().await;
    let me = unique("ctl");
    let out = run(lockctl(
        &daemon,
        &me,
        &["run", "ctl/missing", "--", "/nonexistent/command"],
    ))
    .await;
    out.assert_status(127);
    assert_eq!(
        out.stderr,
        "lockctl: error: /nonexistent/command: command not found\n"
    );
    let snapshot = client
        .queue_snapshot("ctl/missing")
        .await
        .expect("GetQueue");
    assert!(snapshot.holders.is_empty(), "{snapshot:?}");
}

#[tokio::test]
async fn watch_prints_changes_and_stops_on_ctrl_c() {
    let daemon = Lockd::start(&["--dev"]);
    let client = daemon.client().await;
    let me = unique("ctl");
    let mut child = lockctl(
        &daemon,
        &me,
        &["--json", "watch", "ctl/watch", "--interval", "100ms"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || -> Value {
        let line = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
            .await
            .expect("a snapshot within 5 s")
            .expect("read")
            .expect("a line");
        serde_json::from_str(&line).expect("JSON line")
    };

    let first = next().await;
    assert_eq!(first["resource"], "ctl/watch");
    assert_eq!(first["holders"].as_array().unwrap().len(), 0);

    let guard = client
        .lock("ctl/watch")
        .ttl(Duration::from_secs(60))
        .acquire()
        .await
        .expect("acquire");
    let second = next().await;
    assert_eq!(second["holders"][0]["client_id"], client.client_id());

    guard.release().await.expect("release");
    let third = next().await;
    assert_eq!(third["holders"].as_array().unwrap().len(), 0);

    signal(&child, libc::SIGINT);
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .expect("watch stops on SIGINT")
        .expect("wait");
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn https_endpoints_are_refused_not_dialled_in_plaintext() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lockctl"));
    cmd.env_remove("LOCKD_ENDPOINT")
        .env_remove("RUST_LOG")
        .args(["--endpoint", "https://127.0.0.1:1", "health"]);
    let out = run(cmd).await;
    out.assert_status(2);
    assert!(
        out.stderr.starts_with("lockctl: error: invalid endpoint"),
        "{out:?}"
    );
    assert!(out.stderr.contains("TLS is not supported yet"), "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
}

/// True while `pid` runs; a zombie (dead, not yet reaped by whoever
/// adopted it) counts as gone.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

async fn read_pid(path: &std::path::Path) -> i32 {
    eventually(
        Duration::from_secs(10),
        "the command to write its pid",
        || async {
            let text = std::fs::read_to_string(path).ok()?;
            text.trim().parse().ok()
        },
    )
    .await
}

#[tokio::test]
async fn run_takes_its_command_and_grandchildren_down_when_killed() {
    let daemon = Lockd::start(&["--dev"]);
    let me = unique("ctl");
    let dir = lockd_testkit::TempDir::new("lockctl-run").expect("scratch dir");
    let (child_pid, grandchild_pid, marker) = (
        dir.path().join("child.pid"),
        dir.path().join("grandchild.pid"),
        dir.path().join("marker"),
    );
    // The grandchild writes the marker: it is what must stop.
    let script = format!(
        "(while :; do date +%s%N > {marker}; sleep 0.05; done) & echo $! > {grandchild}; \
         echo $$ > {child}; wait",
        marker = marker.display(),
        grandchild = grandchild_pid.display(),
        child = child_pid.display(),
    );
    let mut lockctl_run = lockctl(
        &daemon,
        &me,
        &["run", "ctl/kill9", "--ttl", "2s", "--", "sh", "-c", &script],
    )
    .spawn()
    .expect("spawn");
    let child = read_pid(&child_pid).await;
    let grandchild = read_pid(&grandchild_pid).await;
    assert!(alive(child) && alive(grandchild));

    signal(&lockctl_run, libc::SIGKILL);
    let _ = lockctl_run.wait().await;
    eventually(
        Duration::from_secs(2),
        "the command and its child to die",
        || async { (!alive(child) && !alive(grandchild)).then_some(()) },
    )
    .await;
    let last = std::fs::read_to_string(&marker).expect("marker");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        std::fs::read_to_string(&marker).expect("marker"),
        last,
        "something still writes the marker"
    );
}

#[tokio::test]
async fn run_kills_what_its_command_left_behind_before_releasing() {
    let daemon = Lockd::start(&["--dev"]);
    let me = unique("ctl");
    let dir = lockd_testkit::TempDir::new("lockctl-run").expect("scratch dir");
    let leftover = dir.path().join("leftover.pid");
    let script = format!("sleep 300 & echo $! > {}", leftover.display());
    let out = run(lockctl(
        &daemon,
        &me,
        &["run", "ctl/leftover", "--", "sh", "-c", &script],
    ))
    .await;
    out.assert_status(0);
    let pid = read_pid(&leftover).await;
    assert!(!alive(pid), "the background sleep outlived the lock");
}

#[tokio::test]
async fn acquire_waits_out_a_redis_pause_within_wait() {
    let redis = RedisServer::start();
    let daemon = Lockd::start(&["--redis-url", &redis.url()]);
    let me = unique("ctl");
    // The daemon is up and has used Redis before Redis stops answering.
    daemon.ready().await;
    redis.pause();
    let acquire = run(lockctl(
        &daemon,
        &me,
        &[
            "--json", "acquire", "ctl/blip", "--ttl", "10s", "--wait", "10s",
        ],
    ));
    let resume = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        redis.resume();
    };
    let (out, ()) = tokio::join!(acquire, resume);
    out.assert_status(0);
    assert_eq!(out.json()["resource"], "ctl/blip");
    // The retries were reported, in lockctl's one format.
    assert!(!out.stderr.is_empty(), "{out:?}");
    for line in out.stderr.lines() {
        assert!(line.starts_with("lockctl: warning: "), "{out:?}");
    }
}
