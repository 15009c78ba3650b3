//! The API around the locks: listing, queues, stats, health and reflection.

use std::time::Duration;

use lockd::pb::{self, LockMode};
use tokio_stream::StreamExt;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

use crate::both_backends;
use crate::harness::*;

async fn list_held_shows_only_live_leases_of_that_client(backend: Backend) {
    let env = Env::new(backend, 1).await;
    let mut c = env.client(0).await;
    let a1 = acquire(&mut c, req("one", "alice")).await;
    let a2 = acquire(&mut c, req("two", "alice").ttl(200)).await;
    let a3 = acquire(&mut c, req("three", "alice")).await;
    let _b = acquire(&mut c, req("four", "bob")).await;
    release(&mut c, &a3).await;
    let held = |mut c: Client| async move {
        let mut ids: Vec<String> = c
            .list_held(pb::ListHeldRequest {
                client_id: "alice".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .leases
            .into_iter()
            .map(|l| l.lock_id)
            .collect();
        ids.sort();
        ids
    };
    let mut expected = vec![a1.lock_id.clone(), a2.lock_id.clone()];
    expected.sort();
    assert_eq!(held(c.clone()).await, expected);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        held(c.clone()).await,
        vec![a1.lock_id.clone()],
        "expired leases drop out"
    );
    let nobody = c
        .list_held(pb::ListHeldRequest {
            client_id: "nobody".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(nobody.leases.is_empty());
}
both_backends!(list_held, list_held_shows_only_live_leases_of_that_client);

async fn stats_count_grants_releases_expiries_and_waiters(backend: Backend) {
    let env = Env::new(backend, 1).await;
    let mut c = env.client(0).await;
    let x = acquire(&mut c, req("a", "c")).await;
    let _r = acquire(&mut c, req("b", "c").mode(LockMode::Read)).await;
    let _e = acquire(&mut c, req("e", "c").ttl(100)).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    // Touching the expired lease's resource ends it.
    let e2 = acquire(&mut c, req("e", "c")).await;
    release(&mut c, &x).await;
    let mut w = Waiting::start(&mut c, req("e", "d").wait(10_000)).await;
    w.queued().await;
    let s = c
        .get_stats(pb::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.total_locks, 4, "{s:?}");
    assert_eq!(s.released_locks, 1);
    assert_eq!(s.expired_locks, 1);
    assert_eq!(s.active_locks, 2);
    assert_eq!(s.active_by_mode["read"], 1);
    assert_eq!(s.active_by_mode["exclusive"], 1);
    assert_eq!(s.waiting, 1);
    assert!(s.average_hold_time_ms > 0.0);
    assert_eq!(s.top_resources[0].resource, "e");
    assert_eq!(s.top_resources[0].locks, 2);
    release(&mut c, &e2).await;
    w.granted().await;
    let s = c
        .get_stats(pb::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((s.total_locks, s.waiting), (5, 0));
}
both_backends!(stats, stats_count_grants_releases_expiries_and_waiters);

async fn reflection_lists_the_services(backend: Backend) {
    let env = Env::new(backend, 1).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", env.daemons[0].addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"lockd.v1.LockService".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );
}
both_backends!(reflection, reflection_lists_the_services);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_index_list_held_is_unimplemented_and_nothing_is_indexed() {
    let env = Env::with_args(Backend::Redis, 1, &["--list-held-index", "false"]).await;
    let mut c = env.client(0).await;
    let lease = acquire(&mut c, req("r", "alice")).await;
    let err = c
        .list_held(pb::ListHeldRequest {
            client_id: "alice".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err:?}");
    assert!(err.message().contains("--list-held-index"));
    release(&mut c, &lease).await;
    let mut conn = env.redis.as_ref().unwrap().connection();
    let index_keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:c:*", env.prefix))
        .query(&mut conn)
        .unwrap();
    assert!(index_keys.is_empty(), "{index_keys:?}");
}
