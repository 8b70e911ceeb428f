//! ublk-target: mesoblk's userspace block device.
//!
//! The crate is layered so that almost all of it runs without ublk in the kernel:
//! - [`request`]: decoding a ublk I/O descriptor into a validated [`request::Request`];
//! - [`backend`]: where blocks live (file or block device through io_uring, RAM, null);
//! - [`cache`]: a writeback/writethrough cache store in front of a backend, crash-consistent;
//! - [`device_cache`]: a cache attached to a served device: spec, per-queue backend, admin jobs;
//! - [`engine`]: running one request against a backend, producing ublk's result code;
//! - [`datapath`]: one request's admission, execution and accounting on a queue thread;
//! - [`qos`]: per-device and per-group token-bucket throttling (pure; the clock is injected);
//! - [`stats`]: per-device I/O counters and latency histograms, snapshots and rates (pure);
//! - [`spec`]: what a device is made of, validated before anything is created;
//! - [`daemon`]: one serving process per device, and the records that let others find it;
//! - [`admin`]: the per-device socket for status and live QoS changes;
//! - [`sys`]: the kernel glue (libublk, raw io_uring, ioctls/statx), the only module that may
//!   use `unsafe`.
//!
//! The `mesoblk-target` binary (src/bin) is the command-line front end.

#![deny(missing_docs)]

pub mod admin;
pub mod backend;
pub mod cache;
pub mod daemon;
pub mod datapath;
pub mod device_cache;
pub mod engine;
pub mod qos;
pub mod request;
pub mod spec;
pub mod stats;
#[allow(unsafe_code)]
pub mod sys;

/// The `tracing` target of a device start's milestones (debug events, timed by the log's
/// timestamps; `RUST_LOG=info,mesoblk::provisioning=debug`), the same target the agent uses.
pub const PROVISIONING: &str = "mesoblk::provisioning";
