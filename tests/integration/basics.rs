//! Lock semantics through the gRPC API, each test run against both the Redis
//! store and the `--dev` memory store.

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use lockd::pb::{self, LockMode};
use tonic::Code;

use crate::both_backends;
use crate::harness::*;

async fn exclusive_excludes_and_try_lock_fails_fast(backend: Backend) {
    let env = Env::new(backend, 1).await;
    let mut c = env.client(0).await;
    let first = acquire(&mut c, req("r", "a")).await;
    assert_eq!(first.resource, "r");
    assert_eq!(first.client_id, "a");
    assert_eq!(
        first.mode,
        LockMode::Exclusive as i32,
        "unspecified means exclusive"
    );
    assert!(first.fencing_token > 0);
    assert_eq!(first.ttl_ms, 30_000);

    let started = std::time::Instant::now();
    let err = c.acquire(req("r", "b").wait(0)).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "try-lock does not wait"
    );
    // The same client is no exception: a second exclusive grant is a second holder.
    let err = c.acquire(req("r", "a").wait(0)).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded);

    release(&mut c, &first).await;
    let second = acquire(&mut c, req("r", "b").wait(0)).await;
    assert!(second.fencing_token > first.fencing_token);
}
both_backends!(
    exclusive_excludes,
    exclusive_excludes_and_try_lock_fails_fast
);

async fn wait_timeout_ends_with_deadline_exceeded(backend: Backend) {
    let env = Env::new(backend, 1).await;
    let mut c = env.client(0).await;
    let _held = acquire(&mut c, req("r", "a")).await;
    let started = std::time::Instant::now();
    let err = c.acquire(req("r", "b").wait(300)).await.unwrap_err();
    let waited = started.elapsed();
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert!(waited >= Duration::from_millis(280), "waited {waited:?}");
    assert!(waited < Duration::from_secs(3), "waited {waited:?}");

    let mut w = Waiting::start(&mut c, req("r", "c").wait(300)).await;
    assert_eq!(w.queued().await.position, 0);
    let err = w.next().await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded);
    // Timed-out waiters are out of line.
    let queue = c
        .get_queue(pb::GetQueueRequest {
            resource: "r".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(queue.waiters.is_empty(), "{queue:?}");
}
both_backends!(wait_timeout, wait_timeout_ends_with_deadline_exceeded);

async fn waiters_are_served_in_order_with_positions(backend: Backend) {
    let env = Env::new(backend, 1).await;
    let mut c = env.client(0).await;
    let holder = acquire(&mut c, req("r", "holder")).await;
    let mut waiting = Vec::new();
    for i in 0..4 {
        let mut w = Waiting::start(&mut c, req("r", &format!("w{i}")).wait(10_000)).await;
        let q = w.queued().await;
        assert_eq!((q.position, q.queue_length), (i, i + 1));
        waiting.push(w);
    }
    release(&mut c, &holder).await;
    let mut last_token = holder.fencing_token;
    for (i, w) in waiting.iter_mut().enumerate() {
        let lease = w.granted().await;
        assert_eq!(lease.client_id, format!("w{i}"));
        assert!(lease.fencing_token > last_token);
        last_token = lease.fencing_token;
        assert!(w.ended().await, "the stream ends after Granted");
        release(&mut c, &lease).await;
    }
}
both_backends!(fifo_order, waiters_are_served_in_order_with_positions);

async fn positions_only_go_down(backend: Backend) {
    let env = Env::new(backend, 1).await;
    let mut c = env.client(0).await;
    let holder = acquire(&mut c, req("r", "holder")).await;
    let mut w0 = Waiting::start(&mut c, req("r", "w0").wait(10_000)).await;
    w0.queued().await;
    let mut w1 = Waiting::start(&mut c, req("r", "w1").wait(10_000)).await;
    w1.queued().await;
    let mut last = Waiting::start(&mut c, req("r", "w2").wait(10_000)).await;
    assert_eq!(last.queued().await.position, 2);
    drop(w0);
    let q = last.queued().await;
    assert_eq!(q.position, 1, "a waiter ahead left");
    release(&mut c, &holder).await;
    assert_eq!(w1.granted().await.client_id, "w1");
    assert_eq!(last.queued().await.position, 0);
}
both_backends!(positions, positions_only_go_down);

async fn shared_waiters_at_the_head_are_granted_together_and_nobody_barges(backend: Backend) {
    let env = Env::new(backend, 1).await;
    let mut c = env.client(0).await;
    let writer = acquire(&mut c, req("r", "writer").mode(LockMode::Write)).await;
    let mut r1 = Waiting::start(&mut c, req("r", "r1").mode(LockMode::Read).wait(10_000)).await;
    r1.queued().await;
    let mut s2 = Waiting::start(&mut c, req("r", "s2").mode(LockMode::Shared).wait(10_000)).await;
    s2.queued().await;
    let mut x3 = Waiting::start(
        &mut c,
        req("r", "x3").mode(LockMode::Exclusive).wait(10_000),
    )
    .await;
    x3.queued().await;
    let mut r4 = Waiting::start(&mut c, req("r", "r4").mode(LockMode::Read).wait(10_000)).await;
    assert_eq!(r4.queued().await.position, 3);

    release(&mut c, &writer).await;
    let a = r1.granted().await;
    let b = s2.granted().await;
    // A reader that arrives now must not pass the queued exclusive request.
    let err = c
        .acquire(req("r", "late").mode(LockMode::Read).wait(0))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::DeadlineExceeded,
        "no barging past the queue"
    );
    let queue = c
        .get_queue(pb::GetQueueRequest {
            resource: "r".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(queue.holders.len(), 2, "{queue:?}");
    assert!(
        queue.holders.iter().all(|h| h.lock_id.is_empty()),
        "lock ids are secret"
    );
    let order: Vec<&str> = queue.waiters.iter().map(|w| w.client_id.as_str()).collect();
    assert_eq!(order, ["x3", "r4"]);

    release(&mut c, &a).await;
    release(&mut c, &b).await;
    let x = x3.granted().await;
    assert_eq!(x.client_id, "x3");
    release(&mut c, &x).await;
    assert_eq!(r4.granted().await.client_id, "r4");
}
both_backends!(
    shared_batch,
    shared_waiters_at_the_head_are_granted_together_and_nobody_barges
);

async fn read_write_compatibility(backend: Backend) {
    let env = Env::new(backend, 1).await;
    let mut c = env.client(0).await;
    use LockMode::*;
    for (held, asked, compatible) in [
        (Read, Read, true),
        (Read, Shared, true),
        (Shared, Read, true),
        (Shared, Shared, true),
        (Read, Write, false),
        (Write, Read, false),
        (Write, Write, false),
        (Shared, Exclusive, false),
        (Exclusive, Shared, false),
        (Write, Exclusive, false),
    ] {
        let resource = format!("{held:?}-{asked:?}");
        let first = acquire(&mut c, req(&resource, "a").mode(held)).await;
        let second = c.acquire(req(&resource, "b").mode(asked).wait(0)).await;
        assert_eq!(
            second.is_ok(),
            compatible,
            "{held:?} then {asked:?}: {second:?}"
        );
        release(&mut c, &first).await;
    }
}
both_backends!(read_write, read_write_compatibility);

async fn renew_extends_and_counts_up_to_the_limit(backend: Backend) {
    let env = Env::new(backend, 1).await;
    let mut c = env.client(0).await;
    let lease = acquire(&mut c, req("r", "a").ttl(1_000).max_renewals(2)).await;
    assert_eq!(lease.max_renewals, 2);
    let renew = |ttl_ms| pb::RenewRequest {
        lock_id: lease.lock_id.clone(),
        client_id: "a".into(),
        ttl_ms,
    };
    let renewed = c
        .renew(renew(5_000))
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();
    assert_eq!(renewed.renewal_count, 1);
    assert_eq!(renewed.ttl_ms, 5_000);
    assert_eq!(
        renewed.fencing_token, lease.fencing_token,
        "renewal keeps the token"
    );
    let old_end = lease.expires_at.unwrap().seconds * 1000
        + i64::from(lease.expires_at.unwrap().nanos / 1_000_000);
    let new_end = renewed.expires_at.unwrap().seconds * 1000
        + i64::from(renewed.expires_at.unwrap().nanos / 1_000_000);
    assert!(new_end >= old_end + 3_900, "{old_end} -> {new_end}");
    let kept = c.renew(renew(0)).await.unwrap().into_inner().lease.unwrap();
    assert_eq!(
        (kept.renewal_count, kept.ttl_ms),
        (2, 5_000),
        "ttl 0 keeps the lease's"
    );
    let err = c.renew(renew(0)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    // The lease is still held after a refused renewal.
    let got = c
        .get_lock(pb::GetLockRequest {
            lock_id: lease.lock_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();
    assert_eq!(got.renewal_count, 2);
}
both_backends!(renew, renew_extends_and_counts_up_to_the_limit);

async fn server_default_renewal_limit(backend: Backend) {
    let env = Env::with_args(backend, 1, &["--max-renewals", "1"]).await;
    let mut c = env.client(0).await;
    let lease = acquire(&mut c, req("r", "a")).await;
    assert_eq!(lease.max_renewals, 1);
    let renew = pb::RenewRequest {
        lock_id: lease.lock_id.clone(),
        client_id: "a".into(),
        ttl_ms: 0,
    };
    c.renew(renew.clone()).await.unwrap();
    assert_eq!(
        c.renew(renew).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
}
both_backends!(default_renewal_limit, server_default_renewal_limit);

async fn wrong_owner_and_unknown_locks(backend: Backend) {
    let env = Env::new(backend, 1).await;
    let mut c = env.client(0).await;
    let lease = acquire(&mut c, req("r", "a")).await;
    let id = lease.lock_id.as_str();
    assert_eq!(release_code(&mut c, id, "b").await, Code::PermissionDenied);
    assert_eq!(renew_code(&mut c, id, "b").await, Code::PermissionDenied);
    assert_eq!(
        get_code(&mut c, id).await,
        Code::Ok,
        "still held by its owner"
    );

    // A forged id with the right resource and a wrong secret names nothing.
    let (_, encoded_resource) = id.split_once('.').unwrap();
    let forged = format!("AAAAAAAAAAAAAAAAAAAAAA.{encoded_resource}");
    for unknown in ["AAAAAAAAAAAAAAAAAAAAAA.cg", &forged] {
        assert_eq!(
            release_code(&mut c, unknown, "a").await,
            Code::NotFound,
            "{unknown}"
        );
        assert_eq!(get_code(&mut c, unknown).await, Code::NotFound, "{unknown}");
    }
    // One lockd could not have issued is invalid instead (see lock_ids.rs).
    assert_eq!(
        release_code(&mut c, "nope", "a").await,
        Code::InvalidArgument
    );

    release(&mut c, &lease).await;
    assert_eq!(
        release_code(&mut c, id, "a").await,
        Code::NotFound,
        "released twice"
    );
    assert_eq!(renew_code(&mut c, id, "a").await, Code::NotFound);
}
both_backends!(owners, wrong_owner_and_unknown_locks);

async fn leases_expire_on_their_own(backend: Backend) {
    let env = Env::new(backend, 1).await;
    let mut c = env.client(0).await;
    let lease = acquire(&mut c, req("r", "a").ttl(200)).await;
    let mut w = Waiting::start(&mut c, req("r", "b").wait(5_000)).await;
    w.queued().await;
    let started = std::time::Instant::now();
    let next = w.granted().await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "granted {:?} after queueing",
        started.elapsed()
    );
    assert!(next.fencing_token > lease.fencing_token);
    let err = c
        .renew(pb::RenewRequest {
            lock_id: lease.lock_id.clone(),
            client_id: "a".into(),
            ttl_ms: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::NotFound,
        "an expired lease cannot be renewed"
    );
    let err = c
        .get_lock(pb::GetLockRequest {
            lock_id: lease.lock_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}
both_backends!(expiry, leases_expire_on_their_own);

async fn cancelled_waiters_leave_the_queue(backend: Backend) {
    let env = Env::new(backend, 1).await;
    let mut c = env.client(0).await;
    let holder = acquire(&mut c, req("r", "holder")).await;
    // A unary Acquire whose caller gives up.
    let mut unary = c.clone();
    let pending = tokio::spawn(async move { unary.acquire(req("r", "unary").wait(30_000)).await });
    // A WaitQueue stream whose caller drops it.
    let mut stream = Waiting::start(&mut c, req("r", "stream").wait(30_000)).await;
    stream.queued().await;
    let queue_len = |mut c: Client| async move {
        c.get_queue(pb::GetQueueRequest {
            resource: "r".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .waiters
        .len()
    };
    assert!(eventually(Duration::from_secs(5), || queue_len(c.clone()).map_eq(2)).await);
    pending.abort();
    drop(stream);
    assert!(
        eventually(Duration::from_secs(2), || queue_len(c.clone()).map_eq(0)).await,
        "both waiters left within 2 s"
    );
    // With nobody in line, the next request after the release is granted at once.
    release(&mut c, &holder).await;
    acquire(&mut c, req("r", "next").wait(0)).await;
}
both_backends!(cancelled_waiters, cancelled_waiters_leave_the_queue);

async fn a_waiter_whose_connection_drops_leaves(backend: Backend) {
    let env = Env::new(backend, 1).await;
    let mut c = env.client(0).await;
    let holder = acquire(&mut c, req("r", "holder")).await;
    {
        // Its own connection, closed when the client and stream are dropped.
        let mut gone = env.client(0).await;
        let mut w = Waiting::start(&mut gone, req("r", "gone").wait(30_000)).await;
        w.queued().await;
    }
    let mut behind = Waiting::start(&mut c, req("r", "behind").wait(30_000)).await;
    let q = behind.queued().await;
    assert!(q.position <= 1);
    // The daemon notices the closed connection and takes its waiter out of line.
    let alone = eventually(Duration::from_secs(5), || {
        let mut c = c.clone();
        async move {
            let queue = c
                .get_queue(pb::GetQueueRequest {
                    resource: "r".into(),
                })
                .await
                .unwrap()
                .into_inner();
            queue.waiters.len() == 1 && queue.waiters[0].client_id == "behind"
        }
    })
    .await;
    assert!(alone, "the vanished waiter left the queue");
    release(&mut c, &holder).await;
    let lease = behind.granted().await;
    assert_eq!(lease.client_id, "behind", "the vanished waiter was skipped");
}
both_backends!(vanished_waiter, a_waiter_whose_connection_drops_leaves);

async fn sixteen_clients_never_overlap(backend: Backend) {
    let env = Env::new(backend, 1).await;
    let inside = Arc::new(AtomicI32::new(0));
    let mut tasks = Vec::new();
    for i in 0..16 {
        let mut c = env.client(0).await;
        let inside = Arc::clone(&inside);
        tasks.push(tokio::spawn(async move {
            let mut tokens = Vec::new();
            for _ in 0..5 {
                let lease = acquire(&mut c, req("hot", &format!("c{i}")).wait(30_000)).await;
                assert_eq!(
                    inside.fetch_add(1, Ordering::SeqCst),
                    0,
                    "two holders at once"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                tokens.push(lease.fencing_token);
                release(&mut c, &lease).await;
            }
            tokens
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 80, "every grant has its own fencing token");
}
both_backends!(sixteen_clients, sixteen_clients_never_overlap);

async fn invalid_input_names_the_field(backend: Backend) {
    let env = Env::new(backend, 1).await;
    let mut c = env.client(0).await;
    let long = "x".repeat(513);
    let cases: Vec<(pb::AcquireRequest, &str)> = vec![
        (req("", "a"), "resource"),
        (req(&long, "a"), "resource"),
        (req("bad\u{7}name", "a"), "resource"),
        (req("r", ""), "client_id"),
        (req("r", &"c".repeat(257)), "client_id"),
        (req("r", "a\n"), "client_id"),
        (
            pb::AcquireRequest {
                mode: 9,
                ..req("r", "a")
            },
            "mode",
        ),
        (req("r", "a").ttl(25 * 60 * 60 * 1000), "ttl_ms"),
        (req("r", "a").wait(2 * 60 * 60 * 1000), "wait_timeout_ms"),
    ];
    for (request, field) in cases {
        let err = c.acquire(request.clone()).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(err.message().contains(field), "{field}: {}", err.message());
        let err = c.wait_queue(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}");
    }
    let err = c
        .release(pb::ReleaseRequest {
            lock_id: "".into(),
            client_id: "a".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("lock_id"));
    let err = c
        .renew(pb::RenewRequest {
            lock_id: "x".into(),
            client_id: "".into(),
            ttl_ms: 0,
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("client_id"), "{err:?}");
    let err = c
        .get_lock(pb::GetLockRequest { lock_id: "".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .list_held(pb::ListHeldRequest {
            client_id: "".into(),
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("client_id"));
    let err = c
        .get_queue(pb::GetQueueRequest {
            resource: "".into(),
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("resource"));
    // A resource of exactly 512 bytes with odd characters is fine.
    let name = format!("{{ü}}{}", "y".repeat(512 - 4));
    assert_eq!(name.len(), 512);
    acquire(&mut c, req(&name, "a")).await;
}
both_backends!(invalid_input, invalid_input_names_the_field);

/// `future.map_eq(v)`: resolves to whether the future's output equals `v`.
trait MapEq: std::future::Future + Sized {
    fn map_eq(self, v: Self::Output) -> impl std::future::Future<Output = bool>
    where
        Self::Output: PartialEq,
    {
        async move { self.await == v }
    }
}
impl<F: std::future::Future> MapEq for F {}
