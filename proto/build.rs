//! Compiles `proto/**/*.proto` with prost. protoc comes from the `protoc-bin-vendored` crate so a
//! fresh machine needs no system package; `PROTOC` in the environment still wins.

use std::path::PathBuf;

const PROTOS: &[&str] = &["proto/mesos/v1/mesos.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = match std::env::var_os("PROTOC") {
        Some(path) => PathBuf::from(path),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    println!("cargo:rerun-if-env-changed=PROTOC");
    prost_build::Config::new()
        .protoc_executable(protoc)
        .compile_protos(PROTOS, &["proto"])?;
    Ok(())
}
