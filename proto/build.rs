//! Compiles `proto/**/*.proto` with prost, deriving `prost_reflect::ReflectMessage` for every
//! message so the JSON codec can walk them by descriptor. protoc comes from the
//! `protoc-bin-vendored` crate so a fresh machine needs no system package; `PROTOC` in the
//! environment still wins.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "proto/mesos/v1/mesos.proto",
    "proto/mesos/v1/scheduler/scheduler.proto",
    "proto/mesos/v1/executor/executor.proto",
    "proto/mesos/v1/quota/quota.proto",
    "proto/mesos/v1/master/master.proto",
    "proto/mesoblk/agent/v1/agent.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = match std::env::var_os("PROTOC") {
        Some(path) => PathBuf::from(path),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    println!("cargo:rerun-if-env-changed=PROTOC");
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    prost_reflect_build::Builder::new()
        .descriptor_pool("crate::DESCRIPTOR_POOL")
        .compile_protos_with_config(config, PROTOS, &["proto"])?;
    Ok(())
}
