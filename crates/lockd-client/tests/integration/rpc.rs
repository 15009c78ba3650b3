//! The one-call RPCs of `Client`: status codes, held leases, stats, health.

use std::time::Duration;

use lockd_client::{Client, Code, Error, Health, Mode};

use crate::{DaemonClient, dev_daemon, eventually};

#[tokio::test]
async fn connect_accepts_both_address_forms() {
    let daemon = dev_daemon();
    for addr in [daemon.endpoint(), format!("http://{}", daemon.endpoint())] {
        let client = Client::connect(&addr).await.expect("connect");
        assert_eq!(
            client.health("").await.expect("health"),
            Health::Serving,
            "{addr}"
        );
    }
}

#[tokio::test]
async fn connecting_to_nothing_fails_as_unavailable() {
    // Nothing listens on port 1 (privileged, unassigned): refused at once.
    let err = Client::connect("127.0.0.1:1")
        .await
        .expect_err("nobody listens");
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert_eq!(err.code(), Some(Code::Unavailable));
}

#[tokio::test]
async fn errors_keep_the_daemons_status_code() {
    let daemon = dev_daemon();
    let owner = daemon.client().await;
    let stranger = daemon.client().await;
    let guard = owner.lock("rpc/codes").acquire().await.expect("acquire");

    let err = stranger
        .release(guard.lock_id())
        .await
        .expect_err("not ours");
    assert_eq!(err.code(), Some(Code::PermissionDenied), "{err}");
    let err = stranger
        .renew(guard.lock_id(), None)
        .await
        .expect_err("not ours");
    assert_eq!(err.code(), Some(Code::PermissionDenied), "{err}");

    // Well formed (a secret and resource "r") but issued by nobody.
    let err = owner
        .get_lock("AAAAAAAAAAAAAAAAAAAAAA.cg")
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Some(Code::NotFound), "{err}");
    let err = owner.get_lock("no-such-lock").await.expect_err("malformed");
    assert_eq!(err.code(), Some(Code::InvalidArgument), "{err}");

    let err = owner.lock("").acquire().await.expect_err("empty resource");
    assert_eq!(err.code(), Some(Code::InvalidArgument), "{err}");
    assert!(err.to_string().starts_with("INVALID_ARGUMENT: "), "{err}");

    guard.release().await.expect("release");
}

#[tokio::test]
async fn renew_moves_the_expiry_and_counts() {
    let daemon = dev_daemon();
    let client = daemon.client().await;
    let guard = client
        .lock("rpc/renew")
        .ttl(Duration::from_secs(60))
        .acquire()
        .await
        .expect("acquire");
    let lease = guard.detach();
    let renewed = client
        .renew(&lease.lock_id, Some(Duration::from_secs(120)))
        .await
        .expect("renew");
    assert_eq!(renewed.ttl, Duration::from_secs(120));
    assert_eq!(renewed.renewal_count, lease.renewal_count + 1);
    assert_eq!(renewed.fencing_token, lease.fencing_token);
    assert!(renewed.expires_at > lease.expires_at);
    client.release(&lease.lock_id).await.expect("release");
}

#[tokio::test]
async fn list_held_stats_and_health() {
    let daemon = dev_daemon();
    let client = daemon.client().await;
    let a = client.lock("rpc/held/a").acquire().await.expect("a");
    let b = client
        .lock("rpc/held/b")
        .mode(Mode::Shared)
        .acquire()
        .await
        .expect("b");

    let mut held = client
        .list_held(client.client_id())
        .await
        .expect("ListHeld");
    held.sort_by(|x, y| x.resource.cmp(&y.resource));
    let summary: Vec<_> = held
        .iter()
        .map(|l| (l.resource.as_str(), l.mode, l.lock_id.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            ("rpc/held/a", Mode::Exclusive, a.lock_id()),
            ("rpc/held/b", Mode::Shared, b.lock_id())
        ]
    );
    let nobody = client
        .list_held("nobody-holds-anything")
        .await
        .expect("ListHeld");
    assert!(nobody.is_empty());

    // Counters reach the stats within about a second.
    let stats = eventually(Duration::from_secs(5), "stats to count both leases", || {
        let client = client.clone();
        async move {
            let stats = client.stats().await.ok()?;
            (stats.active_locks >= 2 && stats.total_locks >= 2).then_some(stats)
        }
    })
    .await;
    assert_eq!(
        stats.active_by_mode.get("shared").copied(),
        Some(1),
        "{stats:?}"
    );

    assert_eq!(client.health("").await.expect("health"), Health::Serving);
    a.release().await.expect("release a");
    b.release().await.expect("release b");
}
