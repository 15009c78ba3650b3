//! Errors of the Redis store.

use lockd_core::LockError;

/// Why the Redis store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(std::time::Duration),
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

impl From<StoreError> for LockError {
    fn from(err: StoreError) -> LockError {
        match err {
            StoreError::Reply(msg) => LockError::Internal(msg),
            other => LockError::Unavailable(other.to_string()),
        }
    }
}
