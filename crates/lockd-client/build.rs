//! Compiles the lockd.v1 client stubs from the workspace's `proto/` folder.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../../proto");
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let well_known = protoc_bin_vendored::include_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC.
    unsafe { std::env::set_var("PROTOC", protoc) };
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(
            &[PathBuf::from("../../proto/lockd/v1/lock.proto")],
            &[PathBuf::from("../../proto"), well_known],
        )?;
    Ok(())
}
