//! LockGuard: renewal, release, drop, detach, and every way of losing a lease.

use std::time::{Duration, Instant};

use lockd_client::{Code, LostReason};

use crate::{DaemonClient, dev_daemon, eventually};

#[tokio::test]
async fn guard_renews_in_the_background_and_releases() {
    let daemon = dev_daemon();
    let client = daemon.client().await;
    let guard = client
        .lock("guard/renew")
        .ttl(Duration::from_millis(900))
        .acquire()
        .await
        .expect("acquire");
    assert!(!guard.lock_id().is_empty());
    assert!(guard.fencing_token() > 0);
    let first = guard.lease();
    assert_eq!(first.resource, "guard/renew");
    assert_eq!(first.client_id, client.client_id());
    assert_eq!(first.ttl, Duration::from_millis(900));

    // Three ttls later the lease is still live only because it was renewed.
    tokio::time::sleep(Duration::from_millis(2700)).await;
    assert_eq!(guard.lost_reason(), None);
    let renewed = guard.lease();
    assert!(
        renewed.renewal_count >= 4,
        "expected about 8 renewals in 2.7 s at ttl/3, saw {}",
        renewed.renewal_count
    );
    assert!(renewed.expires_at > first.expires_at);
    assert_eq!(renewed.fencing_token, first.fencing_token);
    let on_daemon = client.get_lock(guard.lock_id()).await.expect("still live");
    assert_eq!(on_daemon.fencing_token, guard.fencing_token());

    let lock_id = guard.lock_id().to_owned();
    guard.release().await.expect("release");
    let err = client.get_lock(&lock_id).await.expect_err("released");
    assert_eq!(err.code(), Some(Code::NotFound));
}

#[tokio::test]
async fn lost_fires_when_the_lease_is_released_behind_the_guards_back() {
    let daemon = dev_daemon();
    let client = daemon.client().await;
    let guard = client
        .lock("guard/stolen")
        .ttl(Duration::from_millis(900))
        .acquire()
        .await
        .expect("acquire");
    let mut status = guard.watch();
    // The raw stub, not the guard: the guard does not know.
    client.release(guard.lock_id()).await.expect("raw release");

    let reason = tokio::time::timeout(Duration::from_secs(5), guard.lost())
        .await
        .expect("lost() must fire within a renewal interval or two");
    assert_eq!(reason.code(), Some(Code::NotFound), "{reason}");
    assert!(guard.is_lost());
    assert!(status.borrow_and_update().lost.is_some());
    // Releasing a lost lease reports that it is gone.
    let err = guard.release().await.expect_err("already released");
    assert_eq!(err.code(), Some(Code::NotFound));
}

#[tokio::test]
async fn lost_fires_at_the_renewal_limit() {
    let daemon = dev_daemon();
    let client = daemon.client().await;
    let guard = client
        .lock("guard/limit")
        .ttl(Duration::from_millis(900))
        .max_renewals(2)
        .acquire()
        .await
        .expect("acquire");
    assert_eq!(guard.lease().max_renewals, 2);
    let reason = tokio::time::timeout(Duration::from_secs(5), guard.lost())
        .await
        .expect("the third renewal must be refused");
    assert_eq!(reason.code(), Some(Code::FailedPrecondition), "{reason}");
    assert_eq!(guard.lease().renewal_count, 2);
}

#[tokio::test]
async fn lost_fires_when_the_daemon_stays_unreachable_until_expiry() {
    let mut daemon = dev_daemon();
    let client = daemon.client().await;
    let guard = client
        .lock("guard/unreachable")
        .ttl(Duration::from_millis(1500))
        .acquire()
        .await
        .expect("acquire");
    let granted = Instant::now();
    daemon.kill();

    let reason = tokio::time::timeout(Duration::from_secs(6), guard.lost())
        .await
        .expect("lost() must fire once the lease's time is up");
    let after = granted.elapsed();
    assert!(
        matches!(reason, LostReason::Expired { .. }),
        "expected Expired, got {reason:?}"
    );
    // Not before the lease could have ended, and not long after.
    assert!(
        after >= Duration::from_millis(1200),
        "lost too early: {after:?}"
    );
    assert!(
        after <= Duration::from_millis(3500),
        "lost too late: {after:?}"
    );
}

#[tokio::test]
async fn dropping_the_guard_releases_the_lease() {
    let daemon = dev_daemon();
    let client = daemon.client().await;
    let guard = client
        .lock("guard/drop")
        .ttl(Duration::from_secs(60))
        .acquire()
        .await
        .expect("acquire");
    let lock_id = guard.lock_id().to_owned();
    drop(guard);
    eventually(
        Duration::from_secs(3),
        "the dropped lease to be released",
        || {
            let client = client.clone();
            let lock_id = lock_id.clone();
            async move {
                match client.get_lock(&lock_id).await {
                    Err(e) if e.code() == Some(Code::NotFound) => Some(()),
                    _ => None,
                }
            }
        },
    )
    .await;
    // And the resource is free again at once.
    let again = client
        .lock("guard/drop")
        .wait(Duration::ZERO)
        .acquire()
        .await
        .expect("free after drop");
    again.release().await.expect("release");
}

#[tokio::test]
async fn a_detached_lease_stays_held_without_renewals() {
    let daemon = dev_daemon();
    let client = daemon.client().await;
    let guard = client
        .lock("guard/detach")
        .ttl(Duration::from_secs(60))
        .acquire()
        .await
        .expect("acquire");
    let lease = guard.detach();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let live = client.get_lock(&lease.lock_id).await.expect("still held");
    assert_eq!(live.renewal_count, 0);
    client.release(&lease.lock_id).await.expect("release by id");
}

#[tokio::test]
async fn a_busy_lock_is_refused_with_deadline_exceeded() {
    let daemon = dev_daemon();
    let client = daemon.client().await;
    let holder = client.lock("guard/busy").acquire().await.expect("acquire");
    let other = daemon.client().await;

    let err = other
        .lock("guard/busy")
        .wait(Duration::ZERO)
        .acquire()
        .await
        .expect_err("busy");
    assert_eq!(err.code(), Some(Code::DeadlineExceeded), "{err}");

    let started = Instant::now();
    let err = other
        .lock("guard/busy")
        .wait(Duration::from_millis(400))
        .acquire()
        .await
        .expect_err("still busy");
    assert_eq!(err.code(), Some(Code::DeadlineExceeded), "{err}");
    assert!(
        started.elapsed() >= Duration::from_millis(350),
        "gave up after {:?}, before the wait was over",
        started.elapsed()
    );
    holder.release().await.expect("release");
}

#[tokio::test]
async fn shared_locks_coexist_and_exclude_writers() {
    let daemon = dev_daemon();
    let (a, b, w) = (
        daemon.client().await,
        daemon.client().await,
        daemon.client().await,
    );
    use lockd_client::Mode;
    let ra = a
        .lock("guard/rw")
        .mode(Mode::Read)
        .acquire()
        .await
        .expect("reader a");
    let rb = b
        .lock("guard/rw")
        .mode(Mode::Shared)
        .wait(Duration::ZERO)
        .acquire()
        .await
        .expect("reader b");
    assert_eq!(ra.lease().mode, Mode::Read);
    assert_eq!(rb.lease().mode, Mode::Shared);
    let err = w
        .lock("guard/rw")
        .mode(Mode::Write)
        .wait(Duration::ZERO)
        .acquire()
        .await
        .expect_err("a writer must wait for readers");
    assert_eq!(err.code(), Some(Code::DeadlineExceeded));
    ra.release().await.expect("release a");
    rb.release().await.expect("release b");
    let wg = w
        .lock("guard/rw")
        .mode(Mode::Write)
        .wait(Duration::ZERO)
        .acquire()
        .await
        .expect("free for the writer");
    assert!(wg.fencing_token() > 0);
    wg.release().await.expect("release w");
}
