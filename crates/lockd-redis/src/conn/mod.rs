//! The one place that opens connections to Redis: the lanes lock operations
//! run on and the connections that receive keyspace notifications.
//!
//! A [`Connector`] reads the URL ([`url`]): one server, a primary found
//! through Sentinel ([`sentinel`]), or a Cluster ([`cluster`]). Everything
//! else asks it for connections and never parses a URL itself. Lanes
//! ([`lane`]) come from deadpool-redis pools and are held for good.

mod cluster;
mod lane;
mod sentinel;
mod url;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionInfo, ProtocolVersion, RedisResult};
use tokio::sync::watch;

use crate::error::StoreError;
pub use cluster::key_slot;
pub use lane::Lane;
pub(crate) use lane::check_primary;
use lane::{NodeLane, NodeSource};
use url::Target;

/// What kind of deployment a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// One server (`redis://`, `rediss://`, `redis+unix://`).
    Standalone,
    /// A primary the sentinels name (`redis+sentinel://`).
    Sentinel,
    /// A Redis Cluster (`redis+cluster://`).
    Cluster,
}

/// How to reach one Redis deployment.
#[derive(Debug, Clone)]
pub struct Connector {
    target: Target,
    timeout: Duration,
    /// The URL without its password, for errors.
    url: String,
}

impl Connector {
    /// Parses `url` (failing with [`StoreError::BadUrl`] naming the part
    /// that is wrong); `timeout` bounds every call on the connections it opens.
    pub fn new(url: &str, timeout: Duration) -> Result<Connector, StoreError> {
        Ok(Connector {
            target: url::parse(url)?,
            timeout,
            url: redacted_url(url),
        })
    }

    /// Verifies every server's TLS certificate (data nodes and sentinels)
    /// against the PEM certificate authorities `ca` instead of the system's
    /// roots. Fails unless the URL is a `rediss` one.
    pub fn trusting(mut self, ca: &[u8]) -> Result<Connector, StoreError> {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        // redis-rs takes a file without certificates, and would then trust no server.
        if CertificateDer::pem_slice_iter(ca)
            .flatten()
            .next()
            .is_none()
        {
            return Err(StoreError::Unusable {
                url: self.url.clone(),
                reason: "--redis-ca holds no PEM certificate".to_owned(),
            });
        }
        let bad = |reason: String| StoreError::BadUrl {
            url: self.url.clone(),
            part: "scheme",
            reason,
        };
        let with_ca = |info: &ConnectionInfo| -> Result<ConnectionInfo, StoreError> {
            if !matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }) {
                return Err(bad(
                    "--redis-ca is given but the URL is not a rediss:// one: the \
                     connection would not use TLS"
                        .to_owned(),
                ));
            }
            let certificates = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.to_vec()),
            };
            let client =
                redis::Client::build_with_tls(info.clone(), certificates).map_err(|e| {
                    StoreError::Unusable {
                        url: self.url.clone(),
                        reason: format!("--redis-ca holds no usable certificate: {e}"),
                    }
                })?;
            Ok(client.get_connection_info().clone())
        };
        self.target = match &self.target {
            Target::Node(info) => Target::Node(with_ca(info)?),
            Target::Sentinel(t) => Target::Sentinel(url::SentinelTarget {
                sentinels: t.sentinels.iter().map(with_ca).collect::<Result<_, _>>()?,
                master: t.master.clone(),
                node: with_ca(&t.node)?,
            }),
            Target::Cluster(t) => Target::Cluster(url::ClusterTarget {
                seeds: t.seeds.iter().map(with_ca).collect::<Result<_, _>>()?,
            }),
        };
        Ok(self)
    }

    /// The logical database keys live in, for keyspace channel names.
    pub fn db(&self) -> i64 {
        match &self.target {
            Target::Node(info) => info.redis_settings().db(),
            Target::Sentinel(t) => t.node.redis_settings().db(),
            Target::Cluster(_) => 0,
        }
    }

    /// The bound on every call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn topology(&self) -> Topology {
        match &self.target {
            Target::Node(_) => Topology::Standalone,
            Target::Sentinel(_) => Topology::Sentinel,
            Target::Cluster(_) => Topology::Cluster,
        }
    }

    /// `count` long-lived lanes, each connected to a writable primary (for a
    /// cluster, `count` per primary). Fails if that cannot be done
    /// within a few timeouts.
    pub async fn lanes(&self, count: usize) -> Result<Lanes, StoreError> {
        let count = count.max(1);
        let (shutdown, closed) = watch::channel(());
        let kind = match &self.target {
            Target::Node(info) => {
                let source = Arc::new(NodeSource::fixed(
                    info.clone(),
                    self.timeout,
                    count,
                    closed,
                )?);
                let lanes = open_node_lanes(&source, count).await?;
                LanesKind::Nodes { lanes, source }
            }
            Target::Sentinel(target) => {
                let resolver = Arc::new(sentinel::Resolver::new(target.clone(), self.timeout));
                let source = Arc::new(NodeSource::sentinel(
                    Arc::clone(&resolver),
                    self.timeout,
                    count,
                    closed.clone(),
                ));
                let lanes = open_node_lanes(&source, count).await?;
                tokio::spawn(sentinel::follow(resolver, lanes.clone(), closed));
                LanesKind::Nodes { lanes, source }
            }
            Target::Cluster(target) => {
                let cluster = cluster::Cluster::start(target, self.timeout, count).await?;
                tokio::spawn(cluster::follow(Arc::clone(&cluster), closed));
                LanesKind::Cluster { cluster }
            }
        };
        Ok(Lanes {
            kind,
            next: AtomicUsize::new(0),
            timeout: self.timeout,
            _shutdown: shutdown,
        })
    }

    /// A RESP3 connection to the node `info` names, for pub/sub, configured
    /// by `config` (push sender, resubscription) on top of this connector's
    /// timeouts. It reconnects to that address by itself.
    pub(crate) async fn subscriber_at(
        &self,
        info: ConnectionInfo,
        config: ConnectionManagerConfig,
    ) -> Result<ConnectionManager, StoreError> {
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let info = info.set_redis_settings(settings);
        let config = config
            .set_response_timeout(Some(self.timeout))
            .set_connection_timeout(Some(self.timeout))
            .set_max_delay(Duration::from_secs(1));
        let client = redis::Client::open(info)?;
        bounded_by(
            self.timeout * 2,
            client.get_connection_manager_with_config(config),
        )
        .await
    }
}

/// Opens `count` lanes one after the other, each within its limit.
async fn open_node_lanes(
    source: &Arc<NodeSource>,
    count: usize,
) -> Result<Vec<Arc<NodeLane>>, StoreError> {
    let mut lanes = Vec::with_capacity(count);
    for index in 0..count {
        let limit = source.connect_limit();
        let (conn, addr) = bounded_by(limit, source.connect()).await?;
        lanes.push(NodeLane::new(index, Arc::clone(source), conn, addr));
    }
    Ok(lanes)
}

async fn bounded_by<T, E: Into<StoreError>>(
    limit: Duration,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err(StoreError::Timeout(limit)),
    }
}

/// Whether a failure to connect or to run the startup checks means only that
/// Redis does not answer (yet): down, starting, loading its data, no primary
/// elected, the node answering is a demoted primary (READONLY). Waiting can
/// fix those. Everything else (a refused password, a
/// port that does not speak Redis, a previous key layout, an evicting
/// policy, notifications that cannot be turned on) is a configuration to
/// change, which retrying cannot fix.
pub fn is_unreachable(err: &StoreError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    match err {
        StoreError::NotReady | StoreError::Timeout(_) => true,
        // A certificate that does not verify stays so until an operator
        // changes the server's certificate or --redis-ca.
        StoreError::Redis(err) if is_certificate_error(err) => false,
        StoreError::Redis(err) => {
            err.is_io_error()
                || matches!(
                    err.kind(),
                    ErrorKind::Server(
                        ServerErrorKind::BusyLoading
                            | ServerErrorKind::TryAgain
                            | ServerErrorKind::ClusterDown
                            // A slot moved: the lanes follow it.
                            | ServerErrorKind::Moved
                            | ServerErrorKind::Ask
                            | ServerErrorKind::MasterDown
                            // The node is no longer the primary: a failover
                            // is under way, and the lanes follow it.
                            | ServerErrorKind::ReadOnly
                    )
                )
        }
        _ => false,
    }
}

/// Whether `err` is a TLS handshake that failed on the server's
/// certificate (rustls says "invalid peer certificate: ...").
pub(crate) fn is_certificate_error(err: &redis::RedisError) -> bool {
    err.is_io_error() && err.to_string().contains("certificate")
}

/// `url` as it may be logged: the password in the authority
/// (`redis://user:secret@host`) and any `pass`/`password` query parameter
/// (`redis+unix:///run/redis.sock?pass=secret`) become `***`, so that an
/// operator sees where lockd connects without the secret reaching the logs.
pub fn redacted_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    // Split at the last '@': a password may hold '@', '/' or '?' unescaped,
    // a host and a database number never do. Hiding too much beats leaking.
    let (userinfo, rest) = match rest.rsplit_once('@') {
        Some((userinfo, rest)) => match userinfo.split_once(':') {
            Some((user, _)) => (format!("{user}:***@"), rest),
            // `redis://secret@host` is read as a bare password by some clients.
            None => ("***@".to_owned(), rest),
        },
        None => (String::new(), rest),
    };
    let rest = match rest.split_once('?') {
        Some((path, query)) => {
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _))
                        if key.eq_ignore_ascii_case("pass")
                            || key.eq_ignore_ascii_case("password") =>
                    {
                        format!("{key}=***")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", pairs.join("&"))
        }
        None => rest.to_owned(),
    };
    format!("{scheme}{userinfo}{rest}")
}

/// A few long-lived connections that pipeline concurrent requests; calls
/// are spread over them in turn. Dropping it ends its background tasks (lane
/// replacement, following Sentinel).
pub struct Lanes {
    kind: LanesKind,
    next: AtomicUsize,
    timeout: Duration,
    /// Closed on drop, which every background task of these lanes watches.
    _shutdown: watch::Sender<()>,
}

enum LanesKind {
    Nodes {
        lanes: Vec<Arc<NodeLane>>,
        source: Arc<NodeSource>,
    },
    Cluster {
        cluster: Arc<cluster::Cluster>,
    },
}

impl Lanes {
    /// The next lane.
    pub fn conn(&self) -> Lane {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        match &self.kind {
            LanesKind::Nodes { lanes, .. } => Lane::node(Arc::clone(&lanes[i % lanes.len()])),
            LanesKind::Cluster { cluster } => Lane::cluster(Arc::clone(cluster), i),
        }
    }

    pub fn topology(&self) -> Topology {
        match &self.kind {
            LanesKind::Nodes { source, .. } if source.resolver().is_some() => Topology::Sentinel,
            LanesKind::Nodes { .. } => Topology::Standalone,
            LanesKind::Cluster { .. } => Topology::Cluster,
        }
    }

    /// Whether every lane reaches a writable primary, within the timeout.
    ///
    /// Standalone and Sentinel: each lane's node answers ROLE `master` (a
    /// demoted primary still answers PING); a lane whose node does not is
    /// replaced, and one being replaced is waited for. A lane learns that its
    /// connection died (a restarted Redis) only from a command that fails on
    /// it, so asking every lane lets that happen here rather than in a
    /// caller's request.
    ///
    /// Cluster: at least one primary answers so on every lane; the ones that
    /// do not are logged, since the others still serve their slots.
    pub async fn ping_all(&self) -> Result<(), StoreError> {
        match &self.kind {
            LanesKind::Nodes { lanes, .. } => {
                let checks = lanes.iter().map(|lane| {
                    self.bounded_store(async move {
                        let current = lane.current().await?;
                        let mut conn = current.conn.clone();
                        match check_primary(&mut conn, &current.addr).await {
                            Ok(()) => Ok(()),
                            Err(StoreError::Redis(err)) => {
                                lane.check(current.generation, &err);
                                Err(StoreError::Redis(err))
                            }
                            Err(err) => Err(err),
                        }
                    })
                });
                for result in futures::future::join_all(checks).await {
                    result?;
                }
                Ok(())
            }
            LanesKind::Cluster { cluster } => self.bounded_store(cluster.ping()).await,
        }
    }

    /// Where keyspace notifications come from: every primary, as its own
    /// node (the standalone server, the primary the sentinels name, every
    /// primary of the cluster).
    pub(crate) async fn primaries(&self) -> Result<Vec<ConnectionInfo>, StoreError> {
        match &self.kind {
            LanesKind::Nodes { lanes, source } => {
                let addr = lanes
                    .iter()
                    .find_map(|lane| lane.addr())
                    .or_else(|| source.primary());
                Ok(addr
                    .map(|addr| source.node_info(&addr))
                    .into_iter()
                    .collect())
            }
            LanesKind::Cluster { cluster } => Ok(cluster.primaries().await),
        }
    }

    /// Runs `call` within the timeout; past it the outcome is unknown.
    pub async fn bounded<T>(
        &self,
        call: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, StoreError> {
        bounded_by(self.timeout, call).await
    }

    async fn bounded_store<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        bounded_by(self.timeout, call).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every connection a target opens: data nodes and sentinels.
    fn infos(target: &Target) -> Vec<&ConnectionInfo> {
        match target {
            Target::Node(info) => vec![info],
            Target::Sentinel(t) => t.sentinels.iter().chain([&t.node]).collect(),
            Target::Cluster(t) => t.seeds.iter().collect(),
        }
    }

    #[test]
    fn a_ca_reaches_every_connection_of_every_tls_form() {
        let certificate = lockd_testkit::SelfSigned::new();
        let pem = std::fs::read(certificate.cert()).unwrap();
        for url in [
            "rediss://a:6380",
            "rediss+sentinel://a:26379,b:26379/mymaster",
            "rediss+cluster://a:7000,b:7001",
        ] {
            let connector = Connector::new(url, Duration::from_secs(1)).unwrap();
            assert!(
                infos(&connector.target).iter().all(|i| matches!(
                    i.addr(),
                    redis::ConnectionAddr::TcpTls {
                        tls_params: None,
                        ..
                    }
                )),
                "{url}: not TLS, or a CA before one was given"
            );
            let trusting = connector.trusting(&pem).unwrap();
            assert!(
                infos(&trusting.target).iter().all(|i| matches!(
                    i.addr(),
                    redis::ConnectionAddr::TcpTls {
                        tls_params: Some(_),
                        ..
                    }
                )),
                "{url}: a connection without the CA"
            );
        }
        let plain = Connector::new("redis+cluster://a:7000", Duration::from_secs(1)).unwrap();
        let err = plain.trusting(&pem).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("not a rediss")));
        let tls = Connector::new("rediss://a:6380", Duration::from_secs(1)).unwrap();
        let err = tls
            .trusting(b"not a certificate")
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("no PEM certificate")));
    }

    #[test]
    fn passwords_never_survive_redaction() {
        let cases = [
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            (
                "redis://:sekret@127.0.0.1:6379/2",
                "redis://:***@127.0.0.1:6379/2",
            ),
            (
                "rediss://app:se@cr:et@redis.svc:6380",
                "rediss://app:***@redis.svc:6380",
            ),
            ("redis://sekret@host", "redis://***@host"),
            ("redis://:a/b?c@host:1", "redis://:***@host:1"),
            (
                "redis+unix:///run/redis.sock?db=1&pass=sekret",
                "redis+unix:///run/redis.sock?db=1&pass=***",
            ),
            (
                "redis://host/0?protocol=resp3",
                "redis://host/0?protocol=resp3",
            ),
            (
                "redis+sentinel://app:sekret@s1:26379,s2:26379/mymaster/1",
                "redis+sentinel://app:***@s1:26379,s2:26379/mymaster/1",
            ),
            (
                "rediss+sentinel://:se@cr/et@[::1]:26379/m",
                "rediss+sentinel://:***@[::1]:26379/m",
            ),
            (
                "redis+cluster://sekret@a:7000,b:7001",
                "redis+cluster://***@a:7000,b:7001",
            ),
            (
                "redis+cluster://a:7000,b:7001?password=sekret",
                "redis+cluster://a:7000,b:7001?password=***",
            ),
        ];
        for (url, shown) in cases {
            assert_eq!(redacted_url(url), shown, "{url}");
        }
    }
}
