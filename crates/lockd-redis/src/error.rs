//! Errors of the Redis store, and which of them mean "try again" and which
//! mean "lockd has a bug".

use lockd_core::LockError;
use redis::{ErrorKind, ServerErrorKind};

/// Why the Redis store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The daemon has not yet connected to Redis and passed its startup
    /// checks: it is still retrying, and a client may retry too.
    #[error("redis not reachable yet")]
    NotReady,
    /// The Redis URL cannot be used as written: `part` names what is wrong
    /// (scheme, host list, port, master name, db, ...); `url` is without its
    /// password.
    #[error("bad redis URL {url}: {part}: {reason}")]
    BadUrl {
        url: String,
        part: &'static str,
        reason: String,
    },
    #[error("redis did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// A lockd script failed inside Redis (a Lua runtime error or a key of the
    /// wrong type): a defect, not an outage, so clients must not retry.
    #[error("lockd script {script} failed in redis: {source}")]
    Script {
        script: &'static str,
        source: redis::RedisError,
    },
    #[error("unexpected reply from a lockd script: {0}")]
    Reply(String),
    /// Redis answered, but lockd cannot use it as configured; `url` is
    /// the address without its password.
    #[error("cannot use redis at {url}: {reason}")]
    Unusable { url: String, reason: String },
    /// Lock state of an earlier lockd key layout is in this Redis: serving
    /// beside it could grant a lease that an old key still holds.
    #[error(
        "redis holds lock state of an earlier lockd key layout under this prefix \
         (found {key}); stop every lockd using it, let its leases end (--max-ttl) or \
         delete the keys matching '{pattern}', then start again, or use another --key-prefix"
    )]
    PreviousLayout { key: String, pattern: String },
    /// The prefix is marked with a key layout this daemon does not know: a
    /// newer lockd uses it.
    #[error(
        "redis holds lock state of key layout {found} under this prefix, which this lockd \
         does not know (it writes layout {}); run the lockd version that wrote it, or use \
         another --key-prefix",
        crate::keys::LAYOUT_VERSION
    )]
    OtherLayout { found: String },
    /// Redis may evict keys, and an evicted lease or queue is a lost lock.
    #[error(
        "redis maxmemory-policy is {policy}, which evicts lock state; set it to \
         noeviction (or a volatile-* policy) for lockd"
    )]
    Evicting { policy: String },
    #[error(
        "redis keyspace notifications are off and lockd cannot turn them on ({reason}); \
         set notify-keyspace-events to include the flags {flags:?} (for example \
         `CONFIG SET notify-keyspace-events {flags}` or in redis.conf)"
    )]
    Notifications { flags: String, reason: String },
    #[error(
        "redis keyspace notifications do not arrive: a probe write to {key} brought no events \
         for the flags {unseen:?} within {within:?} (notify-keyspace-events must include \
         {flags:?}; a proxy in between may also drop pub/sub)"
    )]
    NotificationsSilent {
        flags: String,
        unseen: String,
        key: String,
        within: std::time::Duration,
    },
}

impl StoreError {
    /// A startup failure at `url` (already without its password), said the
    /// way an operator can act on it.
    pub fn unusable(url: &str, err: StoreError) -> StoreError {
        let reason = match &err {
            StoreError::Redis(e) if e.kind() == ErrorKind::AuthenticationFailed => {
                "redis refused the user or password in the URL".to_owned()
            }
            StoreError::Redis(e) if e.code() == Some("NOAUTH") => {
                "redis requires a password: give it in the URL, \
                 redis://[USER]:PASSWORD@HOST:PORT"
                    .to_owned()
            }
            StoreError::Redis(e) if e.code() == Some("WRONGPASS") => {
                "redis refused the user or password in the URL".to_owned()
            }
            StoreError::Redis(e) if crate::conn::is_certificate_error(e) => format!(
                "the server's TLS certificate is not trusted ({e}); give the authority it \
                 chains to with --redis-ca, or fix the server's certificate"
            ),
            StoreError::Redis(e) if e.kind() == ErrorKind::Parse => {
                "the server at this address does not speak the Redis protocol \
                 (is the port right?)"
                    .to_owned()
            }
            StoreError::Redis(e) if e.code() == Some("NOPERM") => format!(
                "the redis user lacks a permission lockd needs ({e}); see the README's \
                 ACL line"
            ),
            StoreError::Unusable { .. } | StoreError::BadUrl { .. } => return err,
            other => other.to_string(),
        };
        StoreError::Unusable {
            url: url.to_owned(),
            reason,
        }
    }

    /// The error of running `script`: a failure of the script itself (a Lua
    /// runtime error, a key of the wrong type) becomes [`StoreError::Script`];
    /// everything else, whatever Redis' reason for not serving (down,
    /// loading, read-only, out of memory, misconfigured, a rotated
    /// password), stays [`StoreError::Redis`], which clients may retry.
    pub fn from_script(script: &'static str, err: redis::RedisError) -> StoreError {
        if is_script_failure(&err) {
            StoreError::Script {
                script,
                source: err,
            }
        } else {
            StoreError::Redis(err)
        }
    }
}

/// Whether an error says the script itself went wrong: Redis reports a Lua
/// runtime error as `ERR user_script:<line>: …` (or `ERR Error running
/// script …`), a command the script called on a key of the wrong type as
/// `WRONGTYPE`, and keys of more than one slot as `CROSSSLOT` (our keys'
/// hash tags are wrong: a bug, whichever node answers).
fn is_script_failure(err: &redis::RedisError) -> bool {
    match err.kind() {
        ErrorKind::Server(ServerErrorKind::CrossSlot) => true,
        ErrorKind::Server(ServerErrorKind::ResponseError) => {
            err.detail().is_some_and(|detail| detail.contains("script"))
        }
        ErrorKind::Extension => err.code() == Some("WRONGTYPE"),
        ErrorKind::UnexpectedReturnType | ErrorKind::Parse => true,
        _ => false,
    }
}

impl From<StoreError> for LockError {
    fn from(err: StoreError) -> LockError {
        match err {
            StoreError::Reply(msg) => LockError::Internal(msg),
            err @ StoreError::Script { .. } => LockError::Internal(err.to_string()),
            other => LockError::Unavailable(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(text: &str) -> redis::RedisError {
        match redis::parse_redis_value(text.as_bytes()) {
            Ok(redis::Value::ServerError(err)) => err.into(),
            other => panic!("{text:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn our_scripts_failing_are_internal_and_redis_refusing_is_unavailable() {
        let internal = |text: &str| {
            matches!(
                LockError::from(StoreError::from_script("acquire", server_error(text))),
                LockError::Internal(_)
            )
        };
        assert!(internal(
            "-CROSSSLOT Keys in request don't hash to the same slot\r\n"
        ));
        assert!(internal(
            "-ERR user_script:3: Script attempted to access nonexistent global variable\r\n"
        ));
        assert!(internal(
            "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"
        ));
        assert!(!internal(
            "-TRYAGAIN Multiple keys request during rehashing of slot\r\n"
        ));
        assert!(!internal("-CLUSTERDOWN The cluster is down\r\n"));
        assert!(!internal(
            "-READONLY You can't write against a read only replica.\r\n"
        ));
    }
}
