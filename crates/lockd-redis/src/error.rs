//! Errors of the Redis store, and which of them mean "try again" and which
//! mean "lockd has a bug".

use lockd_core::LockError;
use redis::{ErrorKind, ServerErrorKind};

/// Why the Redis store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
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
    /// The error of running `script`: outages stay [`StoreError::Redis`],
    /// errors the script itself raised become [`StoreError::Script`].
    pub fn from_script(script: &'static str, err: redis::RedisError) -> StoreError {
        if is_outage(&err) {
            StoreError::Redis(err)
        } else {
            StoreError::Script {
                script,
                source: err,
            }
        }
    }
}

/// Whether an error says Redis cannot serve now (retrying later may work),
/// rather than that the command itself is wrong.
fn is_outage(err: &redis::RedisError) -> bool {
    if err.is_io_error()
        || err.is_timeout()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
    {
        return true;
    }
    match err.kind() {
        ErrorKind::Server(kind) => matches!(
            kind,
            ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ReadOnly
                | ServerErrorKind::Moved
                | ServerErrorKind::Ask
        ),
        ErrorKind::Extension => matches!(err.code(), Some("OOM" | "BUSY" | "NOREPLICAS")),
        ErrorKind::Io | ErrorKind::ClusterConnectionNotFound => true,
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
