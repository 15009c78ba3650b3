//! The one place where lock errors become gRPC status codes.

use lockd_core::LockError;
use tonic::{Code, Status};

/// The gRPC code of each error.
pub fn code(err: &LockError) -> Code {
    match err {
        LockError::InvalidArgument { .. } => Code::InvalidArgument,
        LockError::NotFound => Code::NotFound,
        LockError::NotOwner => Code::PermissionDenied,
        LockError::RenewalLimit { .. } => Code::FailedPrecondition,
        LockError::WaitTimeout { .. } => Code::DeadlineExceeded,
        LockError::LimitReached(_) => Code::ResourceExhausted,
        LockError::Unavailable(_) | LockError::ShuttingDown => Code::Unavailable,
        LockError::Disabled(_) => Code::Unimplemented,
        LockError::Internal(_) => Code::Internal,
    }
}

/// The status a client sees.
pub fn status(err: LockError) -> Status {
    Status::new(code(&err), err.to_string())
}

/// Why a daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot use redis: {0}")]
    Redis(#[from] lockd_redis::StoreError),
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("cannot listen for http: {0}")]
    Http(std::io::Error),
    #[error("server reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// A flag's value makes no sense on its own.
    #[error("invalid --{flag} {value}: {why}")]
    BadFlag {
        flag: &'static str,
        value: String,
        why: &'static str,
    },
    /// Two flags' values contradict each other.
    #[error("--{flag} {value} does not fit --{other} {other_value}: {why}")]
    FlagConflict {
        flag: &'static str,
        value: String,
        other: &'static str,
        other_value: String,
        why: String,
    },
}
