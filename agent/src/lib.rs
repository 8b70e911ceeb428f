//! mesoblk-agent: runs on every machine, reports its cpus, mem, ports and block pools to the
//! master, runs tasks, and provisions a ublk device per task through `ublk-target`.
//!
//! - [`node`]: the running agent (master link, task and operation handling, restart without
//!   disruption), which the `mesoblk-agent` binary runs;
//! - [`http`]: the agent's HTTP API (`/state`, `/health`, `/metrics/snapshot`, `/files/*`);
//! - [`storage`]: block pools, profiles, volumes and the ublk devices attached to tasks;
//! - [`executor`]: the command executor (sandbox, environment, user, process groups, kill with
//!   grace, cgroup v2 limits) and its `mesoblk-launcher` helper;
//! - [`executor_api`]: custom executors and Mesos's v1 executor HTTP API (`/api/v1/executor`);
//! - [`gc`]: sandbox garbage collection (`--gc_delay`, `--gc_disk_headroom`);
//! - [`status`]: the task state machine and the crash-safe status-update store;
//! - [`checkpoint`]: what lets a restarted agent find its running tasks.

#![forbid(unsafe_code)]

pub mod checkpoint;
pub mod executor;
pub mod executor_api;
pub mod gc;
pub mod http;
pub mod node;
pub mod status;
pub mod storage;

/// The tracing target of the provisioning milestones (RUN_TASK received, volume created, device
/// live, handed over, launcher spawned, TASK_STARTING/RUNNING stored and posted): debug events,
/// off unless asked for (`RUST_LOG=info,mesoblk::provisioning=debug`), that
/// `scripts/lib/provisioning-breakdown.py` turns into a per-phase breakdown of a launch.
pub const PROVISIONING: &str = "mesoblk::provisioning";
