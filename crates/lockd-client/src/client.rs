//! The connection to a daemon ([`Client`]) and its one-call RPCs.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::error::{Error, Result};
use crate::lock::LockBuilder;
use crate::pb;
use crate::pb::lock_service_client::LockServiceClient;
use crate::types::{Health, Lease, QueueSnapshot, Stats};

/// How long [`Client::connect`] waits for the TCP and HTTP/2 handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// HTTP/2 keep-alive: a dead connection is noticed within about
/// `KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT`, so renewals fail over to a new
/// connection and the daemon sees abandoned `WaitQueue` calls go away.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A handle on one lockd daemon (or a load balancer in front of replicas).
///
/// Cloning is cheap: clones share the HTTP/2 connection, which reconnects on
/// its own after a failure. Every request carries the client's `client_id`
/// (see [`Client::client_id`]) unless a builder overrides it.
///
/// ```no_run
/// # async fn demo() -> lockd_client::Result<()> {
/// let client = lockd_client::Client::connect("127.0.0.1:50051").await?;
/// let stats = client.stats().await?;
/// println!("{} leases live", stats.active_locks);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Client {
    rpc: LockServiceClient<Channel>,
    channel: Channel,
    /// Shared by clones; every lock request and release presents it.
    client_id: Arc<str>,
}

impl Client {
    /// Connects to `addr`, given as `host:port` or `http://host:port`.
    ///
    /// `https://` is refused with [`Error::InvalidEndpoint`]: TLS is not
    /// supported yet, and the address is never dialled in plaintext instead.
    ///
    /// Fails with [`Error::Connect`] if the daemon does not answer within 5 s.
    pub async fn connect(addr: impl AsRef<str>) -> Result<Client> {
        let endpoint = endpoint(addr.as_ref())?;
        let uri = endpoint.uri().to_string();
        let channel = endpoint.connect().await.map_err(|source| Error::Connect {
            endpoint: uri,
            source,
        })?;
        Ok(Client::from_channel(channel))
    }

    /// Like [`Client::connect`], but connects on the first call instead of now.
    pub fn connect_lazy(addr: impl AsRef<str>) -> Result<Client> {
        Ok(Client::from_channel(
            endpoint(addr.as_ref())?.connect_lazy(),
        ))
    }

    /// Wraps a channel built by the caller (TLS, custom timeouts, ...).
    pub fn from_channel(channel: Channel) -> Client {
        Client {
            rpc: LockServiceClient::new(channel.clone()),
            channel,
            client_id: default_client_id().into(),
        }
    }

    /// Returns a client that presents `client_id` instead of the default.
    pub fn with_client_id(mut self, client_id: impl Into<String>) -> Client {
        self.client_id = client_id.into().into();
        self
    }

    /// The client_id this client presents: by default `<hostname>-<pid>`,
    /// the same for every client of this process.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The underlying channel, to build other gRPC clients on the same connection.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The generated stub, for calls this API does not wrap.
    pub fn raw(&self) -> LockServiceClient<Channel> {
        self.rpc.clone()
    }

    /// Starts a lock request on `resource`; see [`LockBuilder`].
    pub fn lock(&self, resource: impl Into<String>) -> LockBuilder {
        LockBuilder::new(self.clone(), resource.into())
    }

    /// Ends the lease `lock_id`, presenting this client's client_id.
    ///
    /// To end a lease held through a [`LockGuard`](crate::LockGuard), use
    /// [`LockGuard::release`](crate::LockGuard::release) instead.
    pub async fn release(&self, lock_id: &str) -> Result<()> {
        release(self.raw(), lock_id, &self.client_id).await
    }

    /// Extends the lease `lock_id` to now + `ttl` (`None`: the lease's own ttl).
    pub async fn renew(&self, lock_id: &str, ttl: Option<Duration>) -> Result<Lease> {
        renew(self.raw(), lock_id, &self.client_id, ttl).await
    }

    /// The live lease `lock_id`; `NOT_FOUND` once it was released or expired.
    pub async fn get_lock(&self, lock_id: &str) -> Result<Lease> {
        let resp = self
            .raw()
            .get_lock(pb::GetLockRequest {
                lock_id: lock_id.to_owned(),
            })
            .await?
            .into_inner();
        lease_of(resp.lease)
    }

    /// The live leases held by `client_id`, on any replica.
    pub async fn list_held(&self, client_id: &str) -> Result<Vec<Lease>> {
        let resp = self
            .raw()
            .list_held(pb::ListHeldRequest {
                client_id: client_id.to_owned(),
            })
            .await?
            .into_inner();
        Ok(resp.leases.into_iter().map(Lease::from).collect())
    }

    /// The holders and waiters of `resource`, in order.
    pub async fn queue_snapshot(&self, resource: &str) -> Result<QueueSnapshot> {
        let resp = self
            .raw()
            .get_queue(pb::GetQueueRequest {
                resource: resource.to_owned(),
            })
            .await?
            .into_inner();
        Ok(resp.into())
    }

    /// Deployment-wide statistics.
    pub async fn stats(&self) -> Result<Stats> {
        let resp = self
            .raw()
            .get_stats(pb::GetStatsRequest {})
            .await?
            .into_inner();
        Ok(resp.into())
    }

    /// Asks the standard `grpc.health.v1.Health` service about `service`
    /// (`""`: the daemon as a whole; `"lockd.v1.LockService"`: the lock API).
    ///
    /// A service name the daemon does not know fails with `NOT_FOUND`.
    pub async fn health(&self, service: &str) -> Result<Health> {
        let resp = HealthClient::new(self.channel())
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.to_owned(),
            })
            .await?
            .into_inner();
        Ok(match ServingStatus::try_from(resp.status) {
            Ok(ServingStatus::Serving) => Health::Serving,
            Ok(ServingStatus::NotServing) => Health::NotServing,
            _ => Health::Unknown,
        })
    }
}

pub(crate) async fn release(
    mut rpc: LockServiceClient<Channel>,
    lock_id: &str,
    client_id: &str,
) -> Result<()> {
    rpc.release(pb::ReleaseRequest {
        lock_id: lock_id.to_owned(),
        client_id: client_id.to_owned(),
    })
    .await?;
    Ok(())
}

pub(crate) async fn renew(
    mut rpc: LockServiceClient<Channel>,
    lock_id: &str,
    client_id: &str,
    ttl: Option<Duration>,
) -> Result<Lease> {
    let resp = rpc
        .renew(pb::RenewRequest {
            lock_id: lock_id.to_owned(),
            client_id: client_id.to_owned(),
            ttl_ms: ttl.map_or(0, millis),
        })
        .await?
        .into_inner();
    lease_of(resp.lease)
}

/// A response's lease, which the protocol says is always there.
pub(crate) fn lease_of(lease: Option<pb::Lease>) -> Result<Lease> {
    lease
        .map(Lease::from)
        .ok_or_else(|| Error::Protocol("the daemon answered without a lease".into()))
}

/// Whole milliseconds, saturating; a non-zero duration under 1 ms rounds up
/// so that it is not read as "the daemon's default".
pub(crate) fn millis(d: Duration) -> u64 {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 && !d.is_zero() { 1 } else { ms }
}

/// Turns `host:port` or `http://host:port` into a tonic endpoint.
pub fn endpoint(addr: &str) -> Result<Endpoint> {
    let invalid = |reason: &str| Error::InvalidEndpoint {
        endpoint: addr.to_owned(),
        reason: reason.to_owned(),
    };
    let trimmed = addr.trim();
    if trimmed.is_empty() {
        return Err(invalid("the address is empty"));
    }
    let uri = match trimmed.split_once("://") {
        Some(("http", _)) => trimmed.to_owned(),
        // Without TLS support, tonic would dial https:// in plaintext: a
        // user who asked for encryption must not silently get none.
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => {
            return Err(invalid(
                "TLS is not supported yet (use host:port or http://host:port on a trusted network)",
            ));
        }
        Some((scheme, _)) => {
            return Err(invalid(&format!(
                "unsupported scheme {scheme:?} (use host:port or http://host:port)"
            )));
        }
        None => format!("http://{trimmed}"),
    };
    let endpoint = Endpoint::from_shared(uri).map_err(|e| invalid(&e.to_string()))?;
    if endpoint.uri().host().is_none_or(str::is_empty) {
        return Err(invalid("no host"));
    }
    Ok(endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT))
}

/// `<hostname>-<pid>`: stable for the life of the process, distinct between
/// processes, and readable in `ListHeld` and `GetQueue` output.
pub fn default_client_id() -> String {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| format!("{}-{}", hostname(), std::process::id()))
        .clone()
}

/// This machine's host name, or `localhost` when it cannot be read.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && !h.chars().any(char::is_control))
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_accept_host_port_and_http_urls() {
        assert_eq!(
            endpoint("127.0.0.1:50051").unwrap().uri().to_string(),
            "http://127.0.0.1:50051/"
        );
        assert_eq!(
            endpoint("http://localhost:7000").unwrap().uri().to_string(),
            "http://localhost:7000/"
        );
        assert_eq!(
            endpoint(" [::1]:50051 ").unwrap().uri().to_string(),
            "http://[::1]:50051/"
        );
    }

    #[test]
    fn endpoints_reject_garbage() {
        for bad in [
            "",
            "   ",
            "unix:///tmp/sock",
            "ftp://host:1",
            "http://",
            "https://h:1",
        ] {
            assert!(
                matches!(endpoint(bad), Err(Error::InvalidEndpoint { .. })),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn https_is_refused_rather_than_dialled_in_plaintext() {
        for tls in ["https://127.0.0.1:50051", "HTTPS://localhost:1"] {
            let Err(Error::InvalidEndpoint { reason, .. }) = endpoint(tls) else {
                panic!("{tls:?} was accepted");
            };
            assert!(reason.contains("TLS is not supported yet"), "{reason}");
        }
    }

    #[test]
    fn default_client_id_is_stable_and_valid() {
        let id = default_client_id();
        assert_eq!(id, default_client_id());
        assert!(id.ends_with(&format!("-{}", std::process::id())));
        assert!(!id.chars().any(char::is_control));
    }

    #[test]
    fn millis_rounds_sub_millisecond_durations_up() {
        assert_eq!(millis(Duration::ZERO), 0);
        assert_eq!(millis(Duration::from_micros(10)), 1);
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
    }
}
