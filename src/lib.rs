//! placeholder

/// Generated lockd.v1 messages and service traits.
pub mod pb {
    tonic::include_proto!("lockd.v1");
    /// Descriptor set for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("lockd_descriptor");
}
