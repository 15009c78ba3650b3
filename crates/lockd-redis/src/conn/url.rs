//! Parsing of lockd's Redis URLs: one server, a primary watched by Sentinel, or a Cluster.
//!
//! - `redis://`, `rediss://`, `redis+unix://`: one server, parsed by redis-rs.
//! - `redis[s]+sentinel://[user:pass@]host:port[,host:port...]/MASTER_NAME[/db]`: the
//!   sentinels to ask for the primary of `MASTER_NAME`. The credentials are the data
//!   nodes' only, as redis-py's `Sentinel(..., password=...)` does (it keeps
//!   `sentinel_kwargs` apart): sentinels are reached without a password.
//! - `redis[s]+cluster://[user:pass@]host:port[,host:port...]`: seed nodes of a Cluster,
//!   which has database 0 only.
//!
//! A query (`?protocol=resp3`) and a `#insecure` fragment apply to every data node.

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo};

use crate::error::StoreError;

/// Sentinel's own port, when a sentinel in the list names none.
const SENTINEL_PORT: u16 = 26379;
/// Redis' port, when a seed of a cluster names none.
const REDIS_PORT: u16 = 6379;

/// What a URL points at.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// One server, restarted in place if at all.
    Node(ConnectionInfo),
    Sentinel(SentinelTarget),
    Cluster(ClusterTarget),
}

/// The sentinels and how to reach the primary they name.
#[derive(Debug, Clone)]
pub(crate) struct SentinelTarget {
    /// Without credentials.
    pub sentinels: Vec<ConnectionInfo>,
    pub master: String,
    /// Credentials, database, protocol and TLS of the data nodes; its address is a
    /// placeholder that [`with_host`] replaces.
    pub node: ConnectionInfo,
}

/// The seed nodes of a cluster, each with the data nodes' settings.
#[derive(Debug, Clone)]
pub(crate) struct ClusterTarget {
    pub seeds: Vec<ConnectionInfo>,
}

/// `template` with its address replaced by `host:port`, keeping TLS.
pub(crate) fn with_host(template: &ConnectionInfo, host: &str, port: u16) -> ConnectionInfo {
    let addr = match template.addr() {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ConnectionAddr::Tcp(host.to_owned(), port),
    };
    template.clone().set_addr(addr)
}

/// Parses `url`; a failure names the part that is wrong, without the password.
pub(crate) fn parse(url: &str) -> Result<Target, StoreError> {
    let bad = |part: &'static str, reason: String| StoreError::BadUrl {
        url: super::redacted_url(url),
        part,
        reason,
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(bad(
            "scheme",
            "no scheme: expected redis://, rediss://, redis+unix://, redis+sentinel:// \
             or redis+cluster://"
                .to_owned(),
        ));
    };
    let scheme = scheme.to_ascii_lowercase();
    let parts = Parts::split(rest);
    let rejected = |e: redis::RedisError| bad("url", e.to_string());
    match scheme.as_str() {
        "redis" | "rediss" | "valkey" | "valkeys" => {
            if parts.hosts.contains(',') {
                return Err(bad(
                    "host list",
                    format!(
                        "a {scheme}:// URL names one server; for several, use \
                         redis+sentinel://HOSTS/MASTER_NAME or redis+cluster://HOSTS"
                    ),
                ));
            }
            node_info(url).map(Target::Node).map_err(rejected)
        }
        "redis+unix" | "unix" | "valkey+unix" => node_info(url).map(Target::Node).map_err(rejected),
        "redis+sentinel" | "rediss+sentinel" => {
            let tls = scheme.starts_with("rediss");
            let hosts = host_list(parts.hosts, SENTINEL_PORT).map_err(|(p, r)| bad(p, r))?;
            let mut segments = parts.path.split('/');
            let master = segments.next().unwrap_or_default();
            if master.is_empty() {
                return Err(bad(
                    "master name",
                    "missing: expected redis+sentinel://HOST:PORT[,HOST:PORT...]/MASTER_NAME[/DB]"
                        .to_owned(),
                ));
            }
            if let Some(c) = master
                .chars()
                .find(|c| c.is_whitespace() || c.is_control() || *c == '%')
            {
                return Err(bad(
                    "master name",
                    format!("{master:?} holds {c:?}, which no Sentinel master name holds"),
                ));
            }
            let db = match segments.next() {
                None | Some("") => 0,
                Some(db) => parse_db(db).map_err(|r| bad("db", r))?,
            };
            if let Some(extra) = segments.find(|s| !s.is_empty()) {
                return Err(bad(
                    "path",
                    format!("{extra:?} follows the database; the path is /MASTER_NAME[/DB]"),
                ));
            }
            let data_scheme = if tls { "rediss" } else { "redis" };
            let (host, port) = &hosts[0];
            let node =
                node_info(&parts.node_url(data_scheme, host, *port, db)).map_err(rejected)?;
            let sentinels = hosts
                .iter()
                .map(|(host, port)| {
                    // The fragment (#insecure) goes to the sentinels too: their
                    // certificates are the deployment's.
                    node_info(&format!("{data_scheme}://{host}:{port}{}", parts.fragment))
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(rejected)?;
            Ok(Target::Sentinel(SentinelTarget {
                sentinels,
                master: master.to_owned(),
                node,
            }))
        }
        "redis+cluster" | "rediss+cluster" => {
            let tls = scheme.starts_with("rediss");
            let hosts = host_list(parts.hosts, REDIS_PORT).map_err(|(p, r)| bad(p, r))?;
            let path = parts.path.trim_end_matches('/');
            if !path.is_empty() {
                let reason = match parse_db(path) {
                    Ok(0) => None,
                    Ok(db) => Some(format!("database {db}: Redis Cluster has database 0 only")),
                    Err(_) => Some(format!(
                        "{path:?} follows the seeds; a cluster URL has no path (database 0 only)"
                    )),
                };
                if let Some(reason) = reason {
                    return Err(bad("db", reason));
                }
            }
            let data_scheme = if tls { "rediss" } else { "redis" };
            let seeds = hosts
                .iter()
                .map(|(host, port)| node_info(&parts.node_url(data_scheme, host, *port, 0)))
                .collect::<Result<Vec<_>, _>>()
                .map_err(rejected)?;
            Ok(Target::Cluster(ClusterTarget { seeds }))
        }
        other => Err(bad(
            "scheme",
            format!(
                "{other}:// is not one lockd knows; use redis://, rediss://, redis+unix://, \
                 redis+sentinel://, rediss+sentinel://, redis+cluster:// or rediss+cluster://"
            ),
        )),
    }
}

/// One server's URL, as redis-rs reads it (percent-decoding the credentials).
fn node_info(url: &str) -> Result<ConnectionInfo, redis::RedisError> {
    url.into_connection_info()
}

/// The pieces of what follows `scheme://`.
struct Parts<'a> {
    /// `user:pass@`, or empty.
    userinfo: &'a str,
    hosts: &'a str,
    /// Without its leading `/`.
    path: &'a str,
    /// `?...`, or empty.
    query: &'a str,
    /// `#...`, or empty.
    fragment: &'a str,
}

impl<'a> Parts<'a> {
    fn split(rest: &'a str) -> Parts<'a> {
        // The last '@' ends the credentials: a password may hold '@', '/' or
        // '?' unescaped, a host list never does (as in `redacted_url`).
        let (userinfo, after) = match rest.rfind('@') {
            Some(at) => (&rest[..=at], &rest[at + 1..]),
            None => ("", rest),
        };
        let (after, fragment) = match after.find('#') {
            Some(i) => (&after[..i], &after[i..]),
            None => (after, ""),
        };
        let (after, query) = match after.find('?') {
            Some(i) => (&after[..i], &after[i..]),
            None => (after, ""),
        };
        let (hosts, path) = match after.split_once('/') {
            Some((hosts, path)) => (hosts, path),
            None => (after, ""),
        };
        Parts {
            userinfo,
            hosts,
            path,
            query,
            fragment,
        }
    }

    /// A one-server URL for a data node, with the credentials, query and fragment.
    fn node_url(&self, scheme: &str, host: &str, port: u16, db: i64) -> String {
        format!(
            "{scheme}://{}{host}:{port}/{db}{}{}",
            self.userinfo, self.query, self.fragment
        )
    }
}

/// `host:port[,host:port...]`, each host as it may appear in a URL (`[::1]`).
fn host_list(hosts: &str, default_port: u16) -> Result<Vec<(String, u16)>, (&'static str, String)> {
    if hosts.is_empty() {
        return Err((
            "host list",
            "no host: expected HOST:PORT[,HOST:PORT...]".to_owned(),
        ));
    }
    hosts
        .split(',')
        .map(|entry| {
            let entry = entry.trim();
            if entry.is_empty() {
                return Err((
                    "host list",
                    format!("{hosts:?} has an empty entry; separate hosts with one ','"),
                ));
            }
            let (host, port) = if let Some(v6) = entry.strip_prefix('[') {
                let Some((addr, after)) = v6.split_once(']') else {
                    return Err(("host list", format!("{entry:?} lacks its closing ']'")));
                };
                let port = match after {
                    "" => None,
                    p => Some(p.strip_prefix(':').ok_or_else(|| {
                        ("host list", format!("{entry:?}: expected ':' after ']'"))
                    })?),
                };
                (format!("[{addr}]"), port)
            } else {
                match entry.split_once(':') {
                    Some((host, port)) => (host.to_owned(), Some(port)),
                    None => (entry.to_owned(), None),
                }
            };
            if host.is_empty() || host == "[]" {
                return Err((
                    "host list",
                    format!("{entry:?} has no host before its port"),
                ));
            }
            if let Some(c) = host
                .chars()
                .find(|c| c.is_whitespace() || matches!(c, '/' | '?' | '#' | '@'))
            {
                return Err(("host list", format!("host {host:?} holds {c:?}")));
            }
            let port = match port {
                None => default_port,
                Some(p) => match p.parse::<u16>() {
                    Ok(port) if port > 0 => port,
                    _ => {
                        return Err((
                            "port",
                            format!("{p:?} of host {host} is not a port number (1 to 65535)"),
                        ));
                    }
                },
            };
            Ok((host, port))
        })
        .collect()
}

fn parse_db(text: &str) -> Result<i64, String> {
    match text.parse::<i64>() {
        Ok(db) if db >= 0 => Ok(db),
        _ => Err(format!("{text:?} is not a database number (0, 1, ...)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(info: &ConnectionInfo) -> String {
        info.addr().to_string()
    }

    fn rejected(url: &str) -> (&'static str, String) {
        match parse(url) {
            Err(StoreError::BadUrl { part, reason, url }) => {
                assert!(!url.contains("sekret"), "{url}");
                assert!(!reason.contains("sekret"), "{reason}");
                (part, reason)
            }
            Err(other) => panic!("{url}: not a BadUrl: {other}"),
            Ok(target) => panic!("{url}: accepted as {target:?}"),
        }
    }

    #[test]
    fn one_server_urls_are_nodes() {
        for (url, shown, db) in [
            ("redis://127.0.0.1:6379", "127.0.0.1:6379", 0),
            ("redis://:pw@host:7000/3", "host:7000", 3),
            ("redis+unix:///run/redis.sock?db=2", "/run/redis.sock", 2),
        ] {
            match parse(url) {
                Ok(Target::Node(info)) => {
                    assert_eq!(addr(&info), shown, "{url}");
                    assert_eq!(info.redis_settings().db(), db, "{url}");
                }
                other => panic!("{url}: {other:?}"),
            }
        }
    }

    #[test]
    fn sentinel_urls_name_sentinels_master_and_db() {
        let Ok(Target::Sentinel(t)) =
            parse("redis+sentinel://app:pw@10.0.0.1:26379,10.0.0.2,[::1]:26380/mymaster/2")
        else {
            panic!("not a sentinel target");
        };
        let sentinels: Vec<String> = t.sentinels.iter().map(addr).collect();
        assert_eq!(sentinels, ["10.0.0.1:26379", "10.0.0.2:26379", "::1:26380"]);
        assert_eq!(t.master, "mymaster");
        assert_eq!(t.node.redis_settings().db(), 2);
        assert_eq!(t.node.redis_settings().username(), Some("app"));
        assert_eq!(t.node.redis_settings().password(), Some("pw"));
        // Like redis-py: the password is the data nodes', not the sentinels'.
        assert!(
            t.sentinels
                .iter()
                .all(|s| s.redis_settings().password().is_none())
        );
        let node = with_host(&t.node, "10.0.0.9", 6380);
        assert_eq!(addr(&node), "10.0.0.9:6380");
        assert_eq!(node.redis_settings().password(), Some("pw"));

        let Ok(Target::Sentinel(t)) = parse("redis+sentinel://h:1/m/") else {
            panic!("not a sentinel target");
        };
        assert_eq!(t.node.redis_settings().db(), 0);
        let Ok(Target::Sentinel(t)) = parse("redis+sentinel://h:1/m?protocol=resp3") else {
            panic!("not a sentinel target");
        };
        assert_eq!(
            t.node.redis_settings().protocol(),
            redis::ProtocolVersion::RESP3
        );
    }

    #[test]
    fn cluster_urls_name_seeds() {
        let Ok(Target::Cluster(t)) = parse("redis+cluster://:pw@a:7000,b:7001") else {
            panic!("not a cluster target");
        };
        let seeds: Vec<String> = t.seeds.iter().map(addr).collect();
        assert_eq!(seeds, ["a:7000", "b:7001"]);
        assert!(
            t.seeds
                .iter()
                .all(|s| s.redis_settings().password() == Some("pw"))
        );
        for url in [
            "redis+cluster://a",
            "redis+cluster://a:1/",
            "redis+cluster://a:1/0",
        ] {
            assert!(matches!(parse(url), Ok(Target::Cluster(_))), "{url}");
        }
        let Ok(Target::Cluster(t)) = parse("redis+cluster://a") else {
            panic!("not a cluster target");
        };
        assert_eq!(addr(&t.seeds[0]), "a:6379");
    }

    #[test]
    fn bad_urls_name_the_wrong_part() {
        let cases = [
            ("127.0.0.1:6379", "scheme"),
            ("http://host:80", "scheme"),
            ("redis+sentinels://h:1/m", "scheme"),
            ("redis://a:1,b:2", "host list"),
            ("redis://:sekret@host:notaport", "url"),
            ("redis+sentinel://:sekret@/mymaster", "host list"),
            ("redis+sentinel://a:1,,b:2/m", "host list"),
            ("redis+sentinel://a:1,:2/m", "host list"),
            ("redis+sentinel://[::1/m", "host list"),
            ("redis+sentinel://a:0/m", "port"),
            ("redis+sentinel://a:70000/m", "port"),
            ("redis+sentinel://a:x/m", "port"),
            ("redis+sentinel://:sekret@a:1", "master name"),
            ("redis+sentinel://a:1/", "master name"),
            ("redis+sentinel://a:1/my%20master", "master name"),
            ("redis+sentinel://a:1/m/x", "db"),
            ("redis+sentinel://a:1/m/-1", "db"),
            ("redis+sentinel://a:1/m/1/2", "path"),
            ("redis+cluster://a:1/3", "db"),
            ("redis+cluster://a:1/m", "db"),
            ("redis+cluster://", "host list"),
            ("rediss+cluster://a:1,b:99999", "port"),
        ];
        for (url, part) in cases {
            assert_eq!(rejected(url).0, part, "{url}: {:?}", rejected(url).1);
        }
        let (_, reason) = rejected("redis+cluster://a:1/3");
        assert!(reason.contains("database 0"), "{reason}");
        let (_, reason) = rejected("redis+sentinel://a:1/m/1/2");
        assert!(reason.contains("/MASTER_NAME[/DB]"), "{reason}");
    }

    #[test]
    fn bad_url_messages_hide_the_password() {
        let err = parse("redis+sentinel://app:sekret@a:1").map(|_| ());
        let text = err.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains("app:***@"), "{text}");
        assert!(!text.contains("sekret"), "{text}");
        assert!(text.contains("master name"), "{text}");
    }
}
