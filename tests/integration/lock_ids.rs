//! Lock ids lockd could not have issued are INVALID_ARGUMENT naming lock_id,
//! over gRPC and REST; well-formed unknown ones are NOT_FOUND.

use lockd::pb;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tonic::Code;

use crate::both_backends;
use crate::harness::*;

/// A well-formed secret: 22 base64url characters, 16 bytes.
const SECRET: &str = "AAAAAAAAAAAAAAAAAAAAAA";

/// Ids that no lockd issues, one per way of being malformed.
fn malformed() -> Vec<String> {
    vec![
        "nope".into(),                      // no separator
        "short.cg".into(),                  // secret too short
        format!("{SECRET}A.cg"),            // secret too long
        "AAAAAAAAAAAAAAAAAAAA!!.cg".into(), // secret not base64url
        format!("{SECRET}.!!"),             // resource not base64url
        format!("{SECRET}._w"),             // resource bytes 0xff: not UTF-8
        format!("{SECRET}."),               // empty resource
        format!("{SECRET}.YQpi"),           // resource "a\nb": a control character
    ]
}

async fn grpc_message(c: &mut Client, lock_id: &str) -> (Code, Code, Code, String) {
    let release = c
        .release(pb::ReleaseRequest {
            lock_id: lock_id.into(),
            client_id: "a".into(),
        })
        .await;
    let renew = renew_code(c, lock_id, "a").await;
    let get = c
        .get_lock(pb::GetLockRequest {
            lock_id: lock_id.into(),
        })
        .await;
    let message = get
        .as_ref()
        .err()
        .map(|s| s.message().to_owned())
        .unwrap_or_default();
    let code = |r: Result<_, tonic::Status>| r.map_or_else(|s| s.code(), |_| Code::Ok);
    (
        code(release.map(|_| ())),
        renew,
        code(get.map(|_| ())),
        message,
    )
}

async fn grpc_junk_is_invalid_and_unknown_is_not_found(backend: Backend) {
    let env = Env::new(backend, 1).await;
    let mut c = env.client(0).await;
    let lease = acquire(&mut c, req("r", "a")).await;
    for junk in malformed() {
        let (release, renew, get, message) = grpc_message(&mut c, &junk).await;
        assert_eq!(
            (release, renew, get),
            (
                Code::InvalidArgument,
                Code::InvalidArgument,
                Code::InvalidArgument
            ),
            "{junk:?}"
        );
        assert!(message.contains("lock_id"), "{junk:?}: {message:?}");
    }
    // Well formed but unknown: a random secret on a live lease's resource,
    // and one on a resource nobody locked.
    let (_, resource) = lease.lock_id.split_once('.').unwrap();
    for unknown in [format!("{SECRET}.{resource}"), format!("{SECRET}.bm9ib2R5")] {
        let (release, renew, get, _) = grpc_message(&mut c, &unknown).await;
        assert_eq!(
            (release, renew, get),
            (Code::NotFound, Code::NotFound, Code::NotFound),
            "{unknown:?}"
        );
    }
    // Empty stays a missing field.
    let (release, renew, get, message) = grpc_message(&mut c, "").await;
    assert_eq!(
        (release, renew, get),
        (
            Code::InvalidArgument,
            Code::InvalidArgument,
            Code::InvalidArgument
        )
    );
    assert!(message.contains("must not be empty"), "{message:?}");
    assert_eq!(get_code(&mut c, &lease.lock_id).await, Code::Ok);
}
both_backends!(grpc, grpc_junk_is_invalid_and_unknown_is_not_found);

/// The REST status and error body of the three calls that take a lock id.
async fn rest_calls(http: &reqwest::Client, port: u16, lock_id: &str) -> Vec<(StatusCode, Value)> {
    let base = reqwest::Url::parse(&format!("http://127.0.0.1:{port}")).unwrap();
    let mut status = base.clone();
    status
        .path_segments_mut()
        .unwrap()
        .clear()
        .extend(["api", "locks", lock_id, "status"]);
    let body = json!({"lockId": lock_id, "clientId": "a"});
    let requests = [
        http.get(status),
        http.post(base.join("/api/locks/release").unwrap())
            .json(&body),
        http.post(base.join("/api/locks/renew").unwrap())
            .json(&body),
    ];
    let mut replies = Vec::new();
    for request in requests {
        let response = request.send().await.expect("http request");
        let code = response.status();
        replies.push((code, response.json().await.expect("a JSON body")));
    }
    replies
}

async fn rest_junk_is_invalid_and_unknown_is_not_found(backend: Backend) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let env = Env::with_args(backend, 1, &["--http-listen", &addr]).await;
    let mut c = env.client(0).await;
    let lease = acquire(&mut c, req("r", "a")).await;
    let http = reqwest::Client::new();
    for junk in malformed() {
        for (status, body) in rest_calls(&http, port, &junk).await {
            assert_eq!(status, StatusCode::BAD_REQUEST, "{junk:?}: {body}");
            assert_eq!(body["code"], "invalid_argument", "{junk:?}: {body}");
            assert_eq!(body["field"], "lockId", "{junk:?}: {body}");
        }
    }
    let (_, resource) = lease.lock_id.split_once('.').unwrap();
    for (status, body) in rest_calls(&http, port, &format!("{SECRET}.{resource}")).await {
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["code"], "not_found", "{body}");
    }
}
both_backends!(rest, rest_junk_is_invalid_and_unknown_is_not_found);
