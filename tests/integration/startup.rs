//! Startup: flags that contradict each other or make no sense stop the daemon
//! before it connects or serves, in process and as the real binary.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use lockd::config::Config;

use crate::harness::*;

/// A Redis URL nobody answers on: a daemon that got as far as connecting
/// would fail with a Redis error instead of naming the flags.
fn unreachable_redis() -> String {
    format!("redis://127.0.0.1:{}", free_port())
}

fn config(args: &[&str]) -> Config {
    Config::try_parse_from(["lockd"].iter().chain(args)).expect("flags parse")
}

/// Flags that clap accepts but the daemon must refuse, each with the pieces
/// its error must name.
fn refused() -> Vec<(Vec<&'static str>, Vec<&'static str>)> {
    vec![
        (
            vec!["--default-ttl", "48h"],
            vec!["--default-ttl 48h", "--max-ttl 5m"],
        ),
        (
            vec!["--default-wait", "2h"],
            vec!["--default-wait 2h", "--max-wait 1h"],
        ),
        (
            vec!["--waiter-liveness", "1s"],
            vec!["--redis-timeout 1s", "--waiter-liveness 1s", "fifth"],
        ),
        (
            vec!["--redis-timeout", "2s", "--waiter-liveness", "7s"],
            vec!["--redis-timeout 2s", "--waiter-liveness 7s"],
        ),
        (
            vec!["--waiter-liveness", "0s"],
            vec!["--waiter-liveness 0s"],
        ),
        (
            vec!["--redis-connections", "0"],
            vec!["--redis-connections 0"],
        ),
        (vec!["--redis-timeout", "0s"], vec!["--redis-timeout 0s"]),
        (vec!["--max-ttl", "0s"], vec!["--max-ttl 0s"]),
        (vec!["--default-ttl", "0s"], vec!["--default-ttl 0s"]),
        (vec!["--min-ttl", "0s"], vec!["--min-ttl 0s"]),
        (
            vec!["--min-ttl", "1m"],
            vec!["--min-ttl 1m", "--default-ttl 30s"],
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_refuses_bad_flags_before_connecting() {
    let redis_url = unreachable_redis();
    for (flags, named) in refused() {
        let mut args = vec!["--redis-url", &redis_url];
        args.extend(&flags);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let result = tokio::time::timeout(
            Duration::from_secs(5),
            lockd::server::run(listener, config(&args), std::future::pending()),
        )
        .await
        .unwrap_or_else(|_| panic!("{flags:?}: the daemon served instead of refusing"));
        let message = result.expect_err("refused").to_string();
        for piece in named {
            assert!(
                message.contains(piece),
                "{flags:?}: {piece:?} in {message:?}"
            );
        }
        assert!(!message.contains("redis:"), "{flags:?}: {message:?}");
    }
}

#[test]
fn limits_are_inclusive() {
    for args in [
        &["--default-ttl", "5m"][..],
        &["--default-wait", "1h"],
        &["--redis-timeout", "1s", "--waiter-liveness", "4s"],
        &["--redis-timeout", "250ms", "--waiter-liveness", "1s"],
        &["--max-wait", "0s", "--default-wait", "0s"],
        &[
            "--shutdown-grace",
            "0s",
            "--max-queue",
            "0",
            "--max-renewals",
            "0",
        ],
    ] {
        config(args)
            .validate()
            .unwrap_or_else(|err| panic!("{args:?}: {err}"));
    }
    config(&[]).validate().expect("the defaults are valid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dev_store_ignores_redis_only_flags() {
    // No Redis call can time out in --dev, so a short liveness is fine there.
    let env = Env::with_args(
        Backend::Dev,
        1,
        &["--waiter-liveness", "1s", "--redis-connections", "0"],
    )
    .await;
    let mut c = env.client(0).await;
    acquire(&mut c, req("r", "a")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_exits_2_naming_both_flags() {
    let redis_url = unreachable_redis();
    for (flags, named) in refused() {
        let port = free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_lockd"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--redis-url", &redis_url])
            .args(&flags)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn lockd");
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for lockd") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{flags:?}: lockd kept running");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        // 2, like every flag clap itself refuses.
        assert_eq!(status.code(), Some(2), "{flags:?}: {status:?}");
        for piece in named {
            assert!(stderr.contains(piece), "{flags:?}: {piece:?} in {stderr:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_errors_say_what_is_wrong_and_where_without_the_password() {
    let redis = RedisServer::start_with(&["--requirepass", "sekret"]);
    let bare = format!("redis://127.0.0.1:{}", redis.port);
    let message = refusal(&["--redis-url", &bare]).await;
    assert!(message.contains("requires a password"), "{message}");
    assert!(message.contains(&bare), "names the URL: {message}");

    let wrong = format!("redis://:wrong-sekret@127.0.0.1:{}", redis.port);
    let message = refusal(&["--redis-url", &wrong]).await;
    assert!(
        message.contains("refused the user or password"),
        "{message}"
    );
    assert!(!message.contains("wrong-sekret"), "no password: {message}");
    assert!(
        message.contains(&format!("127.0.0.1:{}", redis.port)),
        "{message}"
    );

    // A port that answers, but not in Redis' protocol.
    let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = http.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut stream in http.incoming().flatten() {
            let mut buf = [0u8; 256];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        }
    });
    let url = format!("redis://127.0.0.1:{port}");
    let message = refusal(&["--redis-url", &url]).await;
    assert!(
        message.contains("does not speak the Redis protocol"),
        "{message}"
    );
}
