//! mesoblk-master: the elected master that tracks agents' resources and offers them to frameworks
//! with DRF, speaking the Mesos v1 scheduler and operator HTTP APIs.
//!
//! This crate never depends on `ublk-target`: the master knows block storage only as Mesos disk
//! resources reported by agents.
//!
//! Layout:
//! - [`config`]: the master's settings (from Mesos-named flags in the binary);
//! - [`registry`]: what survives a restart (agents, frameworks, weights, quotas, volumes,
//!   disks), behind the [`registry::Registry`] trait, with an embedded crash-safe log in
//!   `--work_dir`;
//! - [`auth`]: HTTP Basic principals for frameworks and operators, the agents' shared secret;
//! - [`state`]: the [`state::Master`] books (frameworks, agents, the allocator and its offers,
//!   tasks, operations), synchronous and free of I/O, behind a [`state::MasterHandle`] whose
//!   driver ticks the timers;
//! - [`flags`]: the agent, offer and task flags the binary adds to its command line;
//! - [`stream`]: the RecordIO event stream each subscribed framework reads, with heartbeats;
//! - [`http`]: the axum [`http::router`] with `/api/v1/scheduler`, `/api/v1`, the agent protocol
//!   (`/agent/v1/...`), `/master/state`, metrics and the plain endpoints, status codes and
//!   messages as Mesos gives them ([`error::ApiError`]).

#![forbid(unsafe_code)]

pub mod allocator;
pub mod auth;
pub mod config;
pub mod error;
pub mod flags;
pub mod http;
pub mod registry;
pub mod state;
pub mod stream;

/// The tracing target of a launch's milestones in the master (ACCEPT of a task, RUN_TASK queued
/// to the agent, a status update received, forwarded, acknowledged): debug events, off unless
/// asked for (`RUST_LOG=info,mesoblk::provisioning=debug`); the agent logs its own under the
/// same target (`scripts/lib/provisioning-breakdown.py` joins them).
pub const PROVISIONING: &str = "mesoblk::provisioning";

pub use config::Config;
pub use http::router;
pub use state::MasterHandle;
