//! /metrics after real traffic: every family an operator alerts on exists
//! and moves, and contention is counted apart from errors.

use crate::harness::*;

async fn scrape(port: u16) -> String {
    let response = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    response.text().await.expect("metrics text")
}

/// The value of one series, `name{labels}` exactly as exposed.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn has(text: &str, series: &str) -> f64 {
    value(text, series).unwrap_or_else(|| panic!("{series} missing:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_families_exist_and_move() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let env = Env::with_args(
        Backend::Redis,
        1,
        &[
            "--http-listen",
            &addr,
            "--max-queue",
            "1",
            "--redis-timeout",
            "300ms",
        ],
    )
    .await;
    let mut client = env.client(0).await;

    let before = scrape(port).await;
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        has(
            &before,
            &format!(r#"lockd_build_info{{version="{version}"}}"#)
        ),
        1.0
    );
    assert!(has(&before, "process_resident_memory_bytes") > 0.0);
    assert!(has(&before, "process_open_fds") > 0.0);
    assert!(has(&before, "process_cpu_seconds_total") >= 0.0);
    // The hold and wait histograms reach the default --max-ttl and --max-wait.
    assert!(
        before.contains(r#"lockd_hold_seconds_bucket{le="300.0"}"#),
        "{before}"
    );
    assert!(
        before.contains(r#"lockd_acquire_wait_seconds_bucket{le="3600.0"}"#),
        "{before}"
    );

    // A busy try-lock and a full queue are contention, not errors.
    let held = acquire(&mut client, req("m", "a")).await;
    let busy = client.acquire(req("m", "b").wait(0)).await.unwrap_err();
    assert_eq!(busy.code(), tonic::Code::DeadlineExceeded);
    let mut waiting = Waiting::start(&mut client, req("m", "c").wait(30_000)).await;
    waiting.queued().await;
    let full = client.acquire(req("m", "d").wait(5_000)).await.unwrap_err();
    assert_eq!(full.code(), tonic::Code::ResourceExhausted, "{full:?}");
    let during = scrape(port).await;
    assert_eq!(has(&during, "lockd_waiters"), 1.0);
    assert_eq!(
        has(
            &during,
            r#"lockd_contended_total{method="Acquire",reason="wait_timeout"}"#
        ),
        1.0
    );
    assert_eq!(
        has(
            &during,
            r#"lockd_contended_total{method="Acquire",reason="queue_full"}"#
        ),
        1.0
    );
    assert!(!during.contains("lockd_errors_total{"), "{during}");

    release(&mut client, &held).await;
    let next = waiting.granted().await;
    release(&mut client, &next).await;
    let after = scrape(port).await;
    assert_eq!(has(&after, "lockd_waiters"), 0.0);
    assert_eq!(has(&after, "lockd_hold_seconds_count"), 2.0);
    assert!(has(&after, "lockd_acquire_wait_seconds_count") >= 2.0);
    assert!(
        has(
            &after,
            r#"lockd_redis_duration_seconds_count{script="acquire"}"#
        ) >= 4.0
    );
    assert!(
        has(
            &after,
            r#"lockd_redis_duration_seconds_count{script="release"}"#
        ) >= 2.0
    );
    assert!(!after.contains("lockd_redis_errors_total{"), "{after}");

    // A Redis that stops answering: script calls time out, and are counted.
    env.redis.as_ref().expect("redis").pause();
    let failed = client.acquire(req("n", "a").wait(0)).await.unwrap_err();
    assert_eq!(failed.code(), tonic::Code::Unavailable, "{failed:?}");
    let outage = scrape(port).await;
    env.redis.as_ref().expect("redis").resume();
    assert!(
        has(
            &outage,
            r#"lockd_redis_errors_total{script="acquire",kind="timeout"}"#
        ) >= 1.0
    );
    assert!(has(&outage, r#"lockd_errors_total{code="Unavailable"}"#) >= 1.0);
}
