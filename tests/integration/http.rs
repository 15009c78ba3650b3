//! The HTTP port: the brief's REST API and /metrics, spoken to with a real
//! HTTP client, and contending with gRPC clients for the same locks.

use std::time::{Duration, Instant, SystemTime};

use lockd::pb;
use reqwest::{StatusCode, Url};
use serde_json::{Value, json};

use crate::both_backends;
use crate::harness::*;

/// A REST client of one daemon's HTTP port.
#[derive(Clone)]
struct Rest {
    http: reqwest::Client,
    base: Url,
}

impl Rest {
    fn new(port: u16) -> Rest {
        Rest {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .expect("http client"),
            base: Url::parse(&format!("http://127.0.0.1:{port}")).expect("base url"),
        }
    }

    fn url(&self, path: &str) -> Url {
        self.base.join(path).expect("url")
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.expect("http request");
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap_or("").to_owned());
        let text = response.text().await.expect("body");
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {text:?} ({content_type:?})"));
        (status, body)
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(self.http.post(self.url(path)).json(&body)).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.http.get(self.url(path))).await
    }

    /// GET with one query parameter, encoded.
    async fn get_with(&self, path: &str, key: &str, value: &str) -> (StatusCode, Value) {
        let mut url = self.url(path);
        url.query_pairs_mut().append_pair(key, value);
        self.send(self.http.get(url)).await
    }

    /// POSTs an acquire to `path` and returns the lease, or panics.
    async fn acquire_at(&self, path: &str, body: Value) -> Value {
        let (status, reply) = self.post(path, body).await;
        assert_eq!(status, StatusCode::CREATED, "{reply}");
        assert_eq!(reply["success"], true, "{reply}");
        reply["data"].clone()
    }

    async fn acquire(&self, body: Value) -> Value {
        self.acquire_at("/api/locks/acquire", body).await
    }

    async fn release(&self, lease: &Value) -> (StatusCode, Value) {
        self.post(
            "/api/locks/release",
            json!({"lockId": lease["lockId"], "clientId": lease["clientId"]}),
        )
        .await
    }

    async fn status(&self, lock_id: &str) -> (StatusCode, Value) {
        let mut url = self.url("/");
        url.path_segments_mut()
            .expect("base")
            .clear()
            .extend(["api", "locks", lock_id, "status"]);
        self.send(self.http.get(url)).await
    }

    async fn queue(&self, resource: &str) -> Value {
        let (status, reply) = self
            .get_with("/api/locks/queue", "resource", resource)
            .await;
        assert_eq!(status, StatusCode::OK, "{reply}");
        reply["data"].clone()
    }

    async fn stats(&self) -> Value {
        let (status, reply) = self.get("/api/locks/stats").await;
        assert_eq!(status, StatusCode::OK, "{reply}");
        reply["data"].clone()
    }
}

/// A daemon serving the REST API as well, and a client of it.
async fn start(backend: Backend) -> (Env, Rest) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let env = Env::with_args(backend, 1, &["--http-listen", &addr]).await;
    (env, Rest::new(port))
}

/// A failed call: checks the status and the error envelope, returns the body.
fn expect_error((status, body): (StatusCode, Value), expected: StatusCode, code: &str) -> Value {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["success"], false, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
    assert_eq!(body["code"], code, "{body}");
    body
}

/// A 400 that names `field`, in the `field` member and in the message.
fn expect_invalid(reply: (StatusCode, Value), field: &str) {
    let body = expect_error(reply, StatusCode::BAD_REQUEST, "invalid_argument");
    assert_eq!(body["field"], field, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(message.contains(field), "{message:?} names {field}");
}

fn time(value: &Value) -> SystemTime {
    humantime::parse_rfc3339(value.as_str().expect("a timestamp string"))
        .unwrap_or_else(|e| panic!("{value} is not RFC 3339: {e}"))
}

fn millis_between(from: &Value, to: &Value) -> u128 {
    time(to)
        .duration_since(time(from))
        .expect("ordered")
        .as_millis()
}

/// Checks a lease object's shape and that it is the lease asked for.
fn check_lease(lease: &Value, resource: &str, kind: &str, client: &str, ttl: u64) {
    assert!(
        lease["lockId"].as_str().is_some_and(|s| !s.is_empty()),
        "{lease}"
    );
    assert_eq!(lease["resource"], resource, "{lease}");
    assert_eq!(lease["type"], kind, "{lease}");
    assert_eq!(lease["clientId"], client, "{lease}");
    assert!(
        lease["fencingToken"].as_u64().is_some_and(|t| t > 0),
        "{lease}"
    );
    assert_eq!(lease["ttl"], ttl, "{lease}");
    // A fresh lease ends ttl after its grant; a renewed one later.
    let lasts = millis_between(&lease["acquiredAt"], &lease["expiresAt"]);
    if lease["renewalCount"] == 0 {
        assert_eq!(lasts, u128::from(ttl), "{lease}");
    } else {
        assert!(lasts >= u128::from(ttl), "{lease}");
    }
    assert!(lease["renewalCount"].is_u64(), "{lease}");
    assert!(lease["maxRenewals"].is_u64(), "{lease}");
}

async fn lease_lifecycle(backend: Backend) {
    let (_env, rest) = start(backend).await;
    // Names that need escaping in URLs and whose lock ids hold '.', '-' and '_'.
    let resource = "orders/42 ünï?&#%~>>>";
    let client = "client &=?/ü";
    let lease = rest
        .acquire(json!({
            "resource": resource, "type": "exclusive", "ttl": 30000,
            "waitTimeout": 5000, "clientId": client, "maxRenewals": 3,
        }))
        .await;
    check_lease(&lease, resource, "exclusive", client, 30_000);
    assert_eq!(lease["renewalCount"], 0);
    assert_eq!(lease["maxRenewals"], 3);
    let lock_id = lease["lockId"].as_str().unwrap().to_owned();
    assert!(lock_id.contains('.'), "{lock_id}");
    let acquired_at = time(&lease["acquiredAt"]);
    let skew = SystemTime::now()
        .duration_since(acquired_at)
        .unwrap_or_else(|e| e.duration());
    assert!(skew < Duration::from_secs(5), "acquiredAt is now: {skew:?}");

    let (status, reply) = rest.status(&lock_id).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["success"], true);
    let found = &reply["data"];
    assert_eq!(found["lockId"], lock_id.as_str());
    assert_eq!(found["fencingToken"], lease["fencingToken"]);
    assert_eq!(found["isExpired"], false);
    // The lock id's '.' and '-' percent-encoded in the path still find it.
    let encoded = lock_id.replace('.', "%2E").replace('-', "%2D");
    let (status, reply) = rest.get(&format!("/api/locks/{encoded}/status")).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["data"]["lockId"], lock_id.as_str());

    let (status, reply) = rest
        .post(
            "/api/locks/renew",
            json!({"lockId": lock_id, "clientId": client, "ttl": 60000}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let renewed = &reply["data"];
    check_lease(renewed, resource, "exclusive", client, 60_000);
    assert_eq!(renewed["renewalCount"], 1);
    assert_eq!(renewed["fencingToken"], lease["fencingToken"]);
    assert_eq!(renewed["acquiredAt"], lease["acquiredAt"]);
    assert!(time(&renewed["expiresAt"]) > time(&lease["expiresAt"]));
    // Without a ttl the lease keeps its own.
    let (status, reply) = rest
        .post(
            "/api/locks/renew",
            json!({"lockId": lock_id, "clientId": client}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["data"]["ttl"], 60_000);
    assert_eq!(reply["data"]["renewalCount"], 2);

    let (status, reply) = rest.get_with("/api/locks/held", "clientId", client).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let held = reply["data"].as_array().expect("an array");
    assert_eq!(held.len(), 1, "{reply}");
    assert_eq!(held[0]["lockId"], lock_id.as_str());
    assert_eq!(held[0]["resource"], resource);
    let (_, reply) = rest.get_with("/api/locks/held", "clientId", "nobody").await;
    assert_eq!(reply["data"], json!([]));

    let (status, reply) = rest.release(&lease).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["success"], true);
    assert_eq!(reply["data"]["resource"], resource);
    expect_error(
        rest.status(&lock_id).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    expect_error(
        rest.release(&lease).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let (_, reply) = rest.get_with("/api/locks/held", "clientId", client).await;
    assert_eq!(reply["data"], json!([]));

    // Defaults: no type is exclusive, no ttl is --default-ttl.
    let lease = rest
        .acquire(json!({"resource": "d", "clientId": "c"}))
        .await;
    check_lease(&lease, "d", "exclusive", "c", 30_000);
}
both_backends!(lifecycle, lease_lifecycle);

async fn typed_endpoints_hand_out_their_modes(backend: Backend) {
    let (_env, rest) = start(backend).await;
    let x = rest
        .acquire_at(
            "/api/locks/exclusive",
            json!({"resource": "x", "clientId": "a"}),
        )
        .await;
    check_lease(&x, "x", "exclusive", "a", 30_000);
    expect_error(
        rest.post(
            "/api/locks/exclusive",
            json!({"resource": "x", "clientId": "b", "waitTimeout": 0}),
        )
        .await,
        StatusCode::CONFLICT,
        "wait_timeout",
    );

    // Shared and read holders share; a writer does not get in.
    let s1 = rest
        .acquire_at(
            "/api/locks/shared",
            json!({"resource": "s", "clientId": "a", "ttl": 5000}),
        )
        .await;
    check_lease(&s1, "s", "shared", "a", 5000);
    let s2 = rest
        .acquire_at(
            "/api/locks/shared",
            json!({"resource": "s", "clientId": "b", "waitTimeout": 0}),
        )
        .await;
    assert_eq!(s2["type"], "shared");
    assert!(s2["fencingToken"].as_u64() > s1["fencingToken"].as_u64());
    let r = rest
        .acquire_at(
            "/api/locks/read-write",
            json!({"resource": "s", "clientId": "c", "access": "read", "waitTimeout": 0}),
        )
        .await;
    assert_eq!(r["type"], "read");
    expect_error(
        rest.post(
            "/api/locks/read-write",
            json!({"resource": "s", "clientId": "d", "access": "write", "waitTimeout": 0}),
        )
        .await,
        StatusCode::CONFLICT,
        "wait_timeout",
    );

    // /acquire takes every type, read-write with its access.
    for (body, kind) in [
        (json!({"type": "write"}), "write"),
        (json!({"type": "read"}), "read"),
        (json!({"type": "shared"}), "shared"),
        (json!({"type": "read-write", "access": "write"}), "write"),
        (json!({"type": "read-write", "access": "read"}), "read"),
    ] {
        let mut body = body;
        let resource = format!("t-{kind}-{}", body["access"]);
        body["resource"] = json!(resource);
        body["clientId"] = json!("a");
        let lease = rest.acquire(body).await;
        check_lease(&lease, &resource, kind, "a", 30_000);
    }
    let lease = rest
        .acquire_at(
            "/api/locks/read-write",
            json!({"resource": "rw", "clientId": "a", "type": "read-write", "access": "write"}),
        )
        .await;
    assert_eq!(lease["type"], "write");
}
both_backends!(typed_endpoints, typed_endpoints_hand_out_their_modes);

async fn errors_have_their_status_and_name_the_field(backend: Backend) {
    let (_env, rest) = start(backend).await;
    let acquire = "/api/locks/acquire";
    for (body, field) in [
        (json!({"clientId": "c"}), "resource"),
        (json!({"resource": "", "clientId": "c"}), "resource"),
        (json!({"resource": "a\nb", "clientId": "c"}), "resource"),
        (json!({"resource": "r"}), "clientId"),
        (json!({"resource": "r", "clientId": ""}), "clientId"),
        (
            json!({"resource": "r", "clientId": "c", "ttl": 100_000_000_000u64}),
            "ttl",
        ),
        (
            json!({"resource": "r", "clientId": "c", "waitTimeout": 100_000_000_000u64}),
            "waitTimeout",
        ),
        (
            json!({"resource": "r", "clientId": "c", "type": "bogus"}),
            "type",
        ),
        (
            json!({"resource": "r", "clientId": "c", "type": "read-write"}),
            "access",
        ),
        (
            json!({"resource": "r", "clientId": "c", "type": "read-write", "access": "both"}),
            "access",
        ),
    ] {
        expect_invalid(rest.post(acquire, body).await, field);
    }
    expect_invalid(
        rest.post(
            "/api/locks/shared",
            json!({"resource": "r", "clientId": "c", "type": "exclusive"}),
        )
        .await,
        "type",
    );
    expect_invalid(
        rest.post(
            "/api/locks/read-write",
            json!({"resource": "r", "clientId": "c"}),
        )
        .await,
        "access",
    );
    expect_invalid(
        rest.post("/api/locks/release", json!({"clientId": "c"}))
            .await,
        "lockId",
    );
    expect_invalid(
        rest.post("/api/locks/renew", json!({"lockId": "x.y"}))
            .await,
        "clientId",
    );
    expect_invalid(rest.get("/api/locks/held").await, "clientId");
    expect_invalid(rest.get("/api/locks/queue").await, "resource");

    // Bodies that are not the JSON asked for: JSON errors, never plain text.
    let json_body = |body: &'static str| {
        rest.http
            .post(rest.url(acquire))
            .header("content-type", "application/json")
            .body(body)
    };
    expect_error(
        rest.send(json_body("{not json")).await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
    );
    let body = expect_error(
        rest.send(json_body(
            r#"{"resource": "r", "clientId": "c", "ttl": "long"}"#,
        ))
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
    );
    assert!(body["error"].as_str().unwrap().contains("ttl"), "{body}");
    let body = expect_error(
        rest.send(json_body(
            r#"{"resource": "r", "clientId": "c", "ttl": -5}"#,
        ))
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
    );
    assert!(body["error"].as_str().unwrap().contains("ttl"), "{body}");
    expect_error(
        rest.send(json_body("")).await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
    );
    expect_error(
        rest.send(rest.http.post(rest.url(acquire)).body("resource=r"))
            .await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "invalid_argument",
    );

    // 403: another client's lock.
    let lease = rest
        .acquire(json!({"resource": "r", "clientId": "owner"}))
        .await;
    let lock_id = lease["lockId"].as_str().unwrap();
    expect_error(
        rest.post(
            "/api/locks/release",
            json!({"lockId": lock_id, "clientId": "thief"}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "not_owner",
    );
    expect_error(
        rest.post(
            "/api/locks/renew",
            json!({"lockId": lock_id, "clientId": "thief"}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "not_owner",
    );

    // 400: a lock id lockd could not have issued (see lock_ids.rs).
    expect_invalid(rest.status("nope").await, "lockId");
    // 404: unknown well-formed lock ids, and unknown routes.
    let forged = format!(
        "AAAAAAAAAAAAAAAAAAAAAA.{}",
        lock_id.split_once('.').unwrap().1
    );
    expect_error(
        rest.status(&forged).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    expect_error(
        rest.post(
            "/api/locks/renew",
            json!({"lockId": forged, "clientId": "owner"}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    expect_error(
        rest.get("/api/nothing/here").await,
        StatusCode::NOT_FOUND,
        "no_route",
    );
    expect_error(
        rest.send(rest.http.get(rest.url(acquire))).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );

    // 409: not granted within waitTimeout, at once or after waiting it out.
    expect_error(
        rest.post(
            acquire,
            json!({"resource": "r", "clientId": "other", "waitTimeout": 0}),
        )
        .await,
        StatusCode::CONFLICT,
        "wait_timeout",
    );
    let started = Instant::now();
    expect_error(
        rest.post(
            acquire,
            json!({"resource": "r", "clientId": "other", "waitTimeout": 300}),
        )
        .await,
        StatusCode::CONFLICT,
        "wait_timeout",
    );
    assert!(
        started.elapsed() >= Duration::from_millis(280),
        "waited {:?}",
        started.elapsed()
    );
    // The timed-out waiter left the line.
    assert_eq!(rest.queue("r").await["waitingClients"], 0);

    // 409: the renewal limit.
    let limited = rest
        .acquire(json!({"resource": "l", "clientId": "c", "maxRenewals": 1}))
        .await;
    let renew = json!({"lockId": limited["lockId"], "clientId": "c"});
    let (status, reply) = rest.post("/api/locks/renew", renew.clone()).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    expect_error(
        rest.post("/api/locks/renew", renew).await,
        StatusCode::CONFLICT,
        "renewal_limit",
    );
}
both_backends!(errors, errors_have_their_status_and_name_the_field);

/// Starts a REST acquire that waits in line.
fn acquire_in_background(rest: &Rest, body: Value) -> tokio::task::JoinHandle<(StatusCode, Value)> {
    let rest = rest.clone();
    tokio::spawn(async move { rest.post("/api/locks/acquire", body).await })
}

/// Waits until `resource` has `n` waiters.
async fn until_waiting(rest: &Rest, resource: &str, n: u64) {
    let queued = eventually(Duration::from_secs(10), || async {
        rest.queue(resource).await["waitingClients"] == n
    })
    .await;
    assert!(queued, "{resource} gets {n} waiters");
}

async fn granted(task: tokio::task::JoinHandle<(StatusCode, Value)>) -> Value {
    let (status, reply) = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("granted within 10 s")
        .expect("task");
    assert_eq!(status, StatusCode::CREATED, "{reply}");
    reply["data"].clone()
}

async fn queue_and_stats_show_holders_and_waiters(backend: Backend) {
    let (_env, rest) = start(backend).await;
    let empty = rest.queue("q").await;
    assert_eq!(
        empty,
        json!({"resource": "q", "waitingClients": 0, "holders": [], "queue": []})
    );
    let holder = rest
        .acquire(json!({"resource": "q", "clientId": "h", "ttl": 20000}))
        .await;
    let first = acquire_in_background(
        &rest,
        json!({"resource": "q", "clientId": "w1", "type": "shared", "ttl": 7000, "waitTimeout": 10000}),
    );
    until_waiting(&rest, "q", 1).await;
    let second = acquire_in_background(
        &rest,
        json!({"resource": "q", "clientId": "w2", "type": "write", "waitTimeout": 10000}),
    );
    until_waiting(&rest, "q", 2).await;

    let q = rest.queue("q").await;
    assert_eq!(q["resource"], "q");
    let holders = q["holders"].as_array().unwrap();
    assert_eq!(holders.len(), 1, "{q}");
    assert_eq!(holders[0]["clientId"], "h");
    assert_eq!(holders[0]["fencingToken"], holder["fencingToken"]);
    assert!(
        holders[0].get("lockId").is_none(),
        "the secret is not shown: {q}"
    );
    let waiters = q["queue"].as_array().unwrap();
    assert_eq!(waiters.len(), 2, "{q}");
    for (i, (client, kind, ttl)) in [("w1", "shared", 7000), ("w2", "write", 30000)]
        .into_iter()
        .enumerate()
    {
        let w = &waiters[i];
        assert_eq!(w["clientId"], client, "{q}");
        assert_eq!(w["type"], kind, "{q}");
        assert_eq!(w["ttl"], ttl, "{q}");
        assert_eq!(w["position"], i as u64, "{q}");
        time(&w["enqueuedAt"]);
    }

    let s = rest.stats().await;
    assert_eq!(s["totalLocks"], 1, "{s}");
    assert_eq!(s["activeLocks"], 1, "{s}");
    assert_eq!(s["waiting"], 2, "{s}");
    assert_eq!(
        s["lockTypes"],
        json!({"exclusive": 1, "shared": 0, "read": 0, "write": 0})
    );

    // Served in order: w1 when the holder releases, w2 when w1 does.
    let (status, _) = rest.release(&holder).await;
    assert_eq!(status, StatusCode::OK);
    let w1 = granted(first).await;
    check_lease(&w1, "q", "shared", "w1", 7000);
    assert!(w1["fencingToken"].as_u64() > holder["fencingToken"].as_u64());
    assert_eq!(rest.queue("q").await["queue"][0]["clientId"], "w2");
    let (status, _) = rest.release(&w1).await;
    assert_eq!(status, StatusCode::OK);
    let w2 = granted(second).await;
    assert_eq!(w2["type"], "write");

    let s = rest.stats().await;
    assert_eq!(s["totalLocks"], 3, "{s}");
    assert_eq!(s["activeLocks"], 1, "{s}");
    assert_eq!(s["releasedLocks"], 2, "{s}");
    assert_eq!(s["expiredLocks"], 0, "{s}");
    assert_eq!(s["waiting"], 0, "{s}");
    assert!(
        s["averageHoldTime"].as_f64().is_some_and(|t| t > 0.0),
        "{s}"
    );
    assert_eq!(
        s["lockTypes"],
        json!({"exclusive": 0, "shared": 0, "read": 0, "write": 1})
    );
    assert_eq!(s["topResources"], json!([{"resource": "q", "locks": 3}]));
}
both_backends!(queue_and_stats, queue_and_stats_show_holders_and_waiters);

/// A daemon with an HTTP port, for the REST client, and the gRPC client of
/// another daemon on the same Redis (or of the same daemon with --dev).
async fn grpc_and_rest(backend: Backend) -> (Env, Client, Rest) {
    let (mut env, rest) = start(backend).await;
    if backend == Backend::Redis {
        let daemon = env.start_daemon(&[]).await;
        env.daemons.push(daemon);
    }
    let grpc = env.client(env.daemons.len() - 1).await;
    (env, grpc, rest)
}

async fn grpc_and_rest_clients_wait_in_one_line(backend: Backend) {
    let (_env, mut grpc, rest) = grpc_and_rest(backend).await;

    // A REST client waits behind a gRPC holder...
    let held = acquire(&mut grpc, req("shared-lock", "grpc-client")).await;
    expect_error(
        rest.post(
            "/api/locks/acquire",
            json!({"resource": "shared-lock", "clientId": "rest-client", "waitTimeout": 0}),
        )
        .await,
        StatusCode::CONFLICT,
        "wait_timeout",
    );
    let (status, reply) = rest.status(&held.lock_id).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["data"]["clientId"], "grpc-client");
    assert_eq!(reply["data"]["fencingToken"], held.fencing_token);
    expect_error(
        rest.post(
            "/api/locks/release",
            json!({"lockId": held.lock_id, "clientId": "rest-client"}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "not_owner",
    );
    let waiting = acquire_in_background(
        &rest,
        json!({"resource": "shared-lock", "clientId": "rest-client", "waitTimeout": 10000}),
    );
    until_waiting(&rest, "shared-lock", 1).await;
    assert!(!waiting.is_finished(), "granted while gRPC holds the lock");
    release(&mut grpc, &held).await;
    let rest_lease = granted(waiting).await;
    assert_eq!(rest_lease["clientId"], "rest-client");
    assert!(rest_lease["fencingToken"].as_u64().unwrap() > held.fencing_token);

    // ... and a gRPC client waits behind a REST holder.
    let mut line = grpc.clone();
    let grpc_waiting = tokio::spawn(async move {
        line.acquire(req("shared-lock", "grpc-client").wait(10_000))
            .await
    });
    until_waiting(&rest, "shared-lock", 1).await;
    assert!(
        !grpc_waiting.is_finished(),
        "granted while REST holds the lock"
    );
    let err = grpc
        .release(pb::ReleaseRequest {
            lock_id: rest_lease["lockId"].as_str().unwrap().to_owned(),
            client_id: "grpc-client".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let (status, reply) = rest.release(&rest_lease).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let lease = tokio::time::timeout(Duration::from_secs(10), grpc_waiting)
        .await
        .expect("granted within 10 s")
        .expect("task")
        .expect("granted")
        .into_inner()
        .lease
        .expect("lease");
    assert_eq!(lease.client_id, "grpc-client");
    assert!(lease.fencing_token > rest_lease["fencingToken"].as_u64().unwrap());
    // The REST API sees the gRPC client's lease among its held ones.
    let (_, reply) = rest
        .get_with("/api/locks/held", "clientId", "grpc-client")
        .await;
    assert_eq!(reply["data"][0]["lockId"], lease.lock_id.as_str());
}
both_backends!(grpc_and_rest, grpc_and_rest_clients_wait_in_one_line);

async fn health_is_healthy_while_the_store_answers(backend: Backend) {
    let (_env, rest) = start(backend).await;
    rest.acquire(json!({"resource": "h", "clientId": "c"}))
        .await;
    for path in ["/health", "/api/locks/health"] {
        let (status, reply) = rest.get(path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {reply}");
        assert_eq!(reply["success"], true);
        let data = &reply["data"];
        assert_eq!(data["status"], "healthy", "{reply}");
        let store = if backend == Backend::Redis {
            "redis"
        } else {
            "memory"
        };
        assert_eq!(data["store"], store);
        assert_eq!(data["activeLocks"], 1, "{reply}");
        assert_eq!(data["totalLocks"], 1, "{reply}");
        time(&data["timestamp"]);
    }
}
both_backends!(health, health_is_healthy_while_the_store_answers);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_redis_means_503_and_unhealthy_then_recovery() {
    let (env, rest) = start(Backend::Redis).await;
    let held = rest
        .acquire(json!({"resource": "r", "clientId": "c"}))
        .await;
    let redis = env.redis.as_ref().unwrap();
    redis.pause();

    // REST health reports what gRPC health does, which the health watcher
    // flips within about a second of the outage.
    let unhealthy = eventually(Duration::from_secs(5), || async {
        rest.get("/health").await.0 == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    assert!(unhealthy, "REST health goes unhealthy");
    for path in ["/health", "/api/locks/health"] {
        let body = expect_error(
            rest.get(path).await,
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
        );
        assert_eq!(body["data"]["status"], "unhealthy", "{body}");
    }
    let started = Instant::now();
    expect_error(
        rest.post(
            "/api/locks/acquire",
            json!({"resource": "other", "clientId": "c"}),
        )
        .await,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "failed after {:?}",
        started.elapsed()
    );
    expect_error(
        rest.status(held["lockId"].as_str().unwrap()).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );

    redis.resume();
    let healthy = eventually(Duration::from_secs(10), || async {
        rest.get("/health").await.0 == StatusCode::OK
    })
    .await;
    assert!(healthy, "health recovers by itself");
    // The lease taken before the outage is intact and still ours.
    let (status, reply) = rest.release(&held).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_rest_grants() {
    let (_env, rest) = start(Backend::Dev).await;
    let metrics = || async {
        let response = rest
            .http
            .get(rest.url("/metrics"))
            .send()
            .await
            .expect("metrics");
        assert_eq!(response.status(), StatusCode::OK);
        response.text().await.expect("text")
    };
    assert!(!metrics().await.contains("lockd_grants_total{"));
    rest.acquire(json!({"resource": "m", "clientId": "c", "type": "shared"}))
        .await;
    let text = metrics().await;
    assert!(
        text.contains(r#"lockd_grants_total{mode="shared"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"lockd_rpc_duration_seconds_count{method="http.Acquire"} 1"#),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rest_waiter_that_hangs_up_leaves_the_line() {
    let (_env, rest) = start(Backend::Dev).await;
    let holder = rest
        .acquire(json!({"resource": "g", "clientId": "h"}))
        .await;
    let waiting = acquire_in_background(
        &rest,
        json!({"resource": "g", "clientId": "gone", "waitTimeout": 30000}),
    );
    until_waiting(&rest, "g", 1).await;
    // Dropping the request closes its connection.
    waiting.abort();
    let _ = waiting.await;
    until_waiting(&rest, "g", 0).await;
    let (status, _) = rest.release(&holder).await;
    assert_eq!(status, StatusCode::OK);
    // Nobody was granted the lock on the way out.
    assert_eq!(rest.queue("g").await["holders"], json!([]));
}

/// A misspelt field is refused by name on every endpoint that takes a body,
/// instead of being dropped and its default applied; nothing is acquired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_body_fields_are_refused_by_name() {
    let (_env, rest) = start(Backend::Dev).await;
    let refused = |(status, body): (StatusCode, Value), field: &str| {
        let body = expect_error((status, body), StatusCode::BAD_REQUEST, "invalid_argument");
        assert_eq!(body["field"], field, "{body}");
        assert!(
            body["error"].as_str().unwrap().contains(field),
            "the message names {field}: {body}"
        );
    };
    for path in [
        "/api/locks/acquire",
        "/api/locks/exclusive",
        "/api/locks/shared",
        "/api/locks/read-write",
    ] {
        refused(
            rest.post(
                path,
                json!({"resource": "u", "clientId": "c", "access": "read", "ttl_ms": 60000}),
            )
            .await,
            "ttl_ms",
        );
    }
    assert_eq!(rest.queue("u").await["holders"], json!([]));

    let lease = rest
        .acquire(json!({"resource": "u", "clientId": "c"}))
        .await;
    refused(
        rest.post(
            "/api/locks/renew",
            json!({"lockId": lease["lockId"], "clientId": "c", "ttlMs": 5}),
        )
        .await,
        "ttlMs",
    );
    refused(
        rest.post(
            "/api/locks/release",
            json!({"lockId": lease["lockId"], "clientId": "c", "force": true}),
        )
        .await,
        "force",
    );
    // Neither call took effect: the lease is still held, with its TTL.
    let (status, reply) = rest.status(lease["lockId"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["data"]["ttl"], lease["ttl"], "{reply}");

    // Malformed JSON stays a 400 of its own, without a field.
    let (status, body) = rest
        .send(
            rest.http
                .post(rest.url("/api/locks/release"))
                .header("content-type", "application/json")
                .body(r#"{"lockId": "#),
        )
        .await;
    let body = expect_error((status, body), StatusCode::BAD_REQUEST, "invalid_argument");
    assert!(body.get("field").is_none(), "{body}");
    let (status, reply) = rest.release(&lease).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
}
