//! Exit statuses, and the one failure type every command returns.
//!
//! The statuses are listed for users in `lockctl --help` (see `cli.rs`).

use std::error::Error as _;

use lockd_client::{Code, Error};

pub const UNEXPECTED: u8 = 1;
pub const USAGE: u8 = 2;
pub const UNAVAILABLE: u8 = 3;
pub const NOT_FOUND: u8 = 4;
pub const PERMISSION_DENIED: u8 = 5;
pub const NOT_GRANTED: u8 = 6;
pub const RENEWAL_LIMIT: u8 = 7;
pub const EXHAUSTED: u8 = 8;
pub const LEASE_LOST: u8 = 9;
pub const NOT_SERVING: u8 = 10;
pub const CANNOT_EXECUTE: u8 = 126;
pub const COMMAND_NOT_FOUND: u8 = 127;
pub const INTERRUPTED: u8 = 130;

/// Why lockctl stops unsuccessfully: printed as `lockctl: error: <message>`, then
/// the process exits with `status`.
#[derive(Debug)]
pub struct Failure {
    pub status: u8,
    pub message: String,
}

impl Failure {
    pub fn new(status: u8, message: impl Into<String>) -> Failure {
        Failure {
            status,
            message: message.into(),
        }
    }

    /// Prefixes the message with what was being done.
    pub fn context(mut self, doing: impl std::fmt::Display) -> Failure {
        self.message = format!("{doing}: {}", self.message);
        self
    }
}

/// The exit status for a gRPC code.
pub fn status_for(code: Option<Code>) -> u8 {
    match code {
        Some(Code::InvalidArgument) => USAGE,
        Some(Code::Unavailable) => UNAVAILABLE,
        Some(Code::NotFound) => NOT_FOUND,
        Some(Code::PermissionDenied) => PERMISSION_DENIED,
        Some(Code::DeadlineExceeded) => NOT_GRANTED,
        Some(Code::FailedPrecondition) => RENEWAL_LIMIT,
        Some(Code::ResourceExhausted) => EXHAUSTED,
        _ => UNEXPECTED,
    }
}

impl From<Error> for Failure {
    fn from(err: Error) -> Failure {
        let status = match &err {
            Error::InvalidEndpoint { .. } => USAGE,
            Error::LeaseLost(_) => LEASE_LOST,
            other => status_for(other.code()),
        };
        // Transport errors say little at the top ("transport error"); the
        // cause ("Connection refused") is further down the chain.
        let mut message = err.to_string();
        let mut source = err.source();
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !message.contains(&cause_text) {
                message = format!("{message}: {cause_text}");
            }
            source = cause.source();
        }
        Failure { status, message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_get_distinct_statuses() {
        let statuses = [
            Code::InvalidArgument,
            Code::Unavailable,
            Code::NotFound,
            Code::PermissionDenied,
            Code::DeadlineExceeded,
            Code::FailedPrecondition,
            Code::ResourceExhausted,
        ]
        .map(|c| status_for(Some(c)));
        let mut sorted = statuses.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), statuses.len());
        assert!(!statuses.contains(&0));
    }

    #[test]
    fn failures_keep_the_daemon_message() {
        let f = Failure::from(not_found());
        assert_eq!(f.status, NOT_FOUND);
        assert_eq!(f.message, "NOT_FOUND: lock abc is unknown");
        assert_eq!(
            f.context("status abc").message,
            "status abc: NOT_FOUND: lock abc is unknown"
        );
    }

    fn not_found() -> Error {
        Error::Rpc {
            code: Code::NotFound,
            message: "lock abc is unknown".into(),
        }
    }
}
