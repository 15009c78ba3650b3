//! WaitQueue through `LockBuilder::queue`: positions, grants, and leaving.

use std::time::Duration;

use futures::StreamExt;
use lockd_client::{Code, LockGuard, QueueEvent, QueueStream};

use crate::{DaemonClient, dev_daemon, eventually};

/// The next event, which must come within 5 s.
async fn next(events: &mut QueueStream) -> QueueEvent {
    tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("an event within 5 s")
        .expect("the stream ended early")
        .expect("the stream failed")
}

fn queued(event: QueueEvent) -> (u64, u64) {
    match event {
        QueueEvent::Queued {
            position,
            queue_length,
        } => (position, queue_length),
        QueueEvent::Granted(g) => panic!("expected Queued, got a grant: {g:?}"),
    }
}

fn granted(event: QueueEvent) -> LockGuard {
    match event {
        QueueEvent::Granted(g) => g,
        QueueEvent::Queued { position, .. } => panic!("expected Granted, got position {position}"),
    }
}

#[tokio::test]
async fn queue_reports_positions_then_grants_in_fifo_order() {
    let daemon = dev_daemon();
    let holder_client = daemon.client().await;
    let holder = holder_client
        .lock("q/fifo")
        .acquire()
        .await
        .expect("holder");

    let first_client = daemon.client().await;
    let mut first = first_client
        .lock("q/fifo")
        .wait(Duration::from_secs(30))
        .queue();
    assert_eq!(queued(next(&mut first).await), (0, 1));

    let second_client = daemon.client().await;
    let mut second = second_client
        .lock("q/fifo")
        .wait(Duration::from_secs(30))
        .queue();
    assert_eq!(queued(next(&mut second).await), (1, 2));

    let snapshot = holder_client
        .queue_snapshot("q/fifo")
        .await
        .expect("GetQueue");
    assert_eq!(snapshot.holders.len(), 1);
    assert_eq!(snapshot.holders[0].client_id, holder_client.client_id());
    assert!(
        snapshot.holders[0].lock_id.is_empty(),
        "GetQueue must hide lock ids"
    );
    let waiters: Vec<_> = snapshot
        .waiters
        .iter()
        .map(|w| (w.position, w.client_id.as_str()))
        .collect();
    assert_eq!(
        waiters,
        [
            (0, first_client.client_id()),
            (1, second_client.client_id())
        ]
    );

    let holder_token = holder.fencing_token();
    holder.release().await.expect("release holder");
    let first_guard = granted(next(&mut first).await);
    assert!(first_guard.fencing_token() > holder_token);
    assert_eq!(first_guard.client_id(), first_client.client_id());
    assert!(
        first.next().await.is_none(),
        "the stream ends after Granted"
    );

    // The second waiter moves up while the first holds the lock.
    assert_eq!(queued(next(&mut second).await), (0, 1));
    let first_token = first_guard.fencing_token();
    first_guard.release().await.expect("release first");
    let second_guard = granted(next(&mut second).await);
    assert!(second_guard.fencing_token() > first_token);
    second_guard.release().await.expect("release second");
}

#[tokio::test]
async fn an_uncontended_queue_is_granted_at_once() {
    let daemon = dev_daemon();
    let client = daemon.client().await;
    let guard = client
        .lock("q/free")
        .queue()
        .granted(|position, _| panic!("queued at {position} on a free lock"))
        .await
        .expect("granted");
    assert_eq!(guard.lease().resource, "q/free");
    // The grant from WaitQueue is a real, renewable lease.
    client.get_lock(guard.lock_id()).await.expect("live");
    guard.release().await.expect("release");
}

#[tokio::test]
async fn dropping_the_stream_leaves_the_queue() {
    let daemon = dev_daemon();
    let client = daemon.client().await;
    let holder = client.lock("q/leave").acquire().await.expect("holder");
    let waiter_client = daemon.client().await;
    let mut events = waiter_client
        .lock("q/leave")
        .wait(Duration::from_secs(30))
        .queue();
    assert_eq!(queued(next(&mut events).await), (0, 1));
    drop(events);

    eventually(
        Duration::from_secs(3),
        "the waiter to leave the queue",
        || {
            let client = client.clone();
            async move {
                let snapshot = client.queue_snapshot("q/leave").await.ok()?;
                snapshot.waiters.is_empty().then_some(())
            }
        },
    )
    .await;
    // Releasing now must not hand the lock to the departed waiter.
    holder.release().await.expect("release");
    let snapshot = client.queue_snapshot("q/leave").await.expect("GetQueue");
    assert!(
        snapshot.holders.is_empty(),
        "granted to a waiter that left: {snapshot:?}"
    );
}

#[tokio::test]
async fn a_queue_that_waits_too_long_fails_with_deadline_exceeded() {
    let daemon = dev_daemon();
    let client = daemon.client().await;
    let holder = client.lock("q/timeout").acquire().await.expect("holder");
    let other = daemon.client().await;
    let err = other
        .lock("q/timeout")
        .wait(Duration::from_millis(300))
        .queue()
        .granted(|_, _| {})
        .await
        .expect_err("never granted");
    assert_eq!(err.code(), Some(Code::DeadlineExceeded), "{err}");
    holder.release().await.expect("release");
}
