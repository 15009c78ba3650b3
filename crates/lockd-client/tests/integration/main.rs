//! Integration tests of lockd-client against a real `lockd --dev` daemon
//! (see `lockd_testkit::lockd` for how it is found and started).
//! One test binary, one module per area.

mod guard;
mod queue;
mod retry;
mod rpc;

use std::future::Future;
use std::time::Duration;

use lockd_client::Client;
use lockd_testkit::{Lockd, unique};

/// `lockd --dev` on a free port, killed on drop.
pub fn dev_daemon() -> Lockd {
    Lockd::start(&["--dev"])
}

/// Clients of a test daemon.
pub trait DaemonClient {
    /// A connected client with a fresh client_id.
    fn client(&self) -> impl Future<Output = Client>;
    /// Waits until the daemon serves lock calls: it listens before it has
    /// reached Redis, and answers UNAVAILABLE until then.
    fn ready(&self) -> impl Future<Output = ()>;
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

/// Polls `check` every 50 ms until it returns `Some`, or panics after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
