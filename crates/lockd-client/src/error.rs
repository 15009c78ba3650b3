//! The one error type of the client, which keeps the gRPC status code.

use std::fmt;

use tonic::Code;

use crate::guard::LostReason;

/// Shorthand for `Result<T, lockd_client::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong when talking to lockd.
///
/// Errors the daemon answered with stay [`Error::Rpc`] with their gRPC
/// [`Code`], so callers can tell a busy lock (`DEADLINE_EXCEEDED`) from an
/// unknown one (`NOT_FOUND`) or an unreachable daemon (`UNAVAILABLE`); see
/// [`Error::code`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address given to [`Client::connect`](crate::Client::connect) is not usable.
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The address as given.
        endpoint: String,
        /// Why it was refused.
        reason: String,
    },

    /// No connection could be made to the daemon.
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        /// The URI that was dialled.
        endpoint: String,
        /// The transport error, with its own causes.
        #[source]
        source: tonic::transport::Error,
    },

    /// The daemon (or the transport under the call) answered with a non-OK status.
    #[error("{}: {message}", code_name(*.code))]
    Rpc {
        /// The gRPC status code; see the status codes in `lock.proto`.
        code: Code,
        /// The status message, which names the offending field for `INVALID_ARGUMENT`.
        message: String,
    },

    /// The lease of a [`LockGuard`](crate::LockGuard) was lost: it could not be
    /// renewed, so the lock may already belong to someone else.
    #[error("lease lost: {0}")]
    LeaseLost(LostReason),

    /// The daemon broke the protocol, for example a grant without a lease.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl Error {
    /// The gRPC status code behind this error, if there is one.
    ///
    /// Connection failures report [`Code::Unavailable`]; a lost lease reports
    /// the code that the rejected renewal carried, if any.
    pub fn code(&self) -> Option<Code> {
        match self {
            Error::Rpc { code, .. } => Some(*code),
            Error::Connect { .. } => Some(Code::Unavailable),
            Error::LeaseLost(reason) => reason.code(),
            Error::InvalidEndpoint { .. } | Error::Protocol(_) => None,
        }
    }

    /// True when the call may succeed if simply tried again (`UNAVAILABLE`).
    pub fn is_retryable(&self) -> bool {
        self.code() == Some(Code::Unavailable)
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        Error::Rpc {
            code: status.code(),
            message: status.message().to_owned(),
        }
    }
}

/// The canonical upper-case name of a gRPC code, as written in `lock.proto`
/// (`NOT_FOUND`, `DEADLINE_EXCEEDED`, ...).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Displays a [`Code`] by its canonical name; see [`code_name`].
pub(crate) struct CodeName(pub Code);

impl fmt::Display for CodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(code_name(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_errors_keep_their_code_and_read_well() {
        let err = Error::from(tonic::Status::not_found("lock abc is unknown"));
        assert_eq!(err.code(), Some(Code::NotFound));
        assert_eq!(err.to_string(), "NOT_FOUND: lock abc is unknown");
        assert!(!err.is_retryable());
        assert!(Error::from(tonic::Status::unavailable("x")).is_retryable());
    }
}
