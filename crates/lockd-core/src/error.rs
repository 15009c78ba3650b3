//! The errors of lock operations, each of which maps to one gRPC status code.

/// Why a lock operation failed. The daemon maps each variant to one gRPC code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    /// A request field is invalid; `field` names it.
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    /// The lock is unknown, released, or its lease expired.
    #[error("lock not found: it is unknown, released or expired")]
    NotFound,
    /// The lock is held by another client.
    #[error("lock is held by another client_id")]
    NotOwner,
    /// The lease was renewed as often as it may be.
    #[error("renewal limit of {max} reached")]
    RenewalLimit { max: u32 },
    /// The lock was not granted within the wait time.
    #[error("lock not granted within {waited_ms} ms")]
    WaitTimeout { waited_ms: u64 },
    /// A configured limit was reached.
    #[error("{0}")]
    LimitReached(String),
    /// The store cannot be reached or answered out of time; the outcome may be unknown.
    #[error("lock store unavailable: {0}")]
    Unavailable(String),
    /// The operation is switched off in this deployment.
    #[error("{0}")]
    Disabled(&'static str),
    /// The daemon is shutting down.
    #[error("daemon is shutting down")]
    ShuttingDown,
    /// The store answered something the daemon does not understand.
    #[error("internal error: {0}")]
    Internal(String),
}

impl LockError {
    /// Shorthand for an invalid field.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        LockError::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }
}
