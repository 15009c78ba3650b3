//! Compiles `proto/` into the daemon's gRPC code and the descriptor set that
//! server reflection serves. protoc comes from `protoc-bin-vendored`, so a fresh
//! machine needs no system protobuf compiler.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // tonic-prost-build does not emit rerun-if-changed for the proto folder itself.
    println!("cargo:rerun-if-changed=proto");
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let well_known = protoc_bin_vendored::include_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .codec_path("crate::codec::SmallBufferCodec")
        .file_descriptor_set_path(out_dir.join("lockd_descriptor.bin"))
        .compile_protos(
            &[PathBuf::from("proto/lockd/v1/lock.proto")],
            &[PathBuf::from("proto"), well_known],
        )?;
    Ok(())
}
