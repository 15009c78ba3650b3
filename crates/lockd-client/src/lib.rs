//! Rust client for lockd.

/// Generated lockd.v1 messages and the `LockServiceClient` stub.
pub mod pb {
    tonic::include_proto!("lockd.v1");
}
