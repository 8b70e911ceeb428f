//! mesoblk-framework: libraries for writing Mesos frameworks in Rust, in the shape of the Mesos
//! Java API: a [`Scheduler`] driven by a [`SchedulerDriver`] that keeps the framework
//! subscribed to the master, and an [`Executor`] driven by an [`ExecutorDriver`] that talks to
//! the agent.
//!
//! The drivers speak plain Mesos v1 HTTP (`/api/v1/scheduler`, `/api/v1/executor`, JSON or
//! protobuf) and assume nothing of mesoblk, so they drive Apache Mesos as well. mesoblk's block
//! disks are standard Mesos disk resources; the helpers that find and use them are apart, in
//! [`block`].
//!
//! Modules:
//! - [`scheduler`]: the [`Scheduler`] trait and [`SchedulerDriver`] (threading model,
//!   reconnection, heartbeats and acknowledgements are documented there);
//! - [`executor`]: the [`Executor`] trait and [`ExecutorDriver`] (environment, reliable status
//!   updates, agent recovery);
//! - [`operations`]: builders for ACCEPT operations (LAUNCH, RESERVE, CREATE_DISK, …);
//! - [`block`]: mesoblk block disks: RAW pools in offers, CREATE_DISK/DESTROY_DISK, the
//!   device a task gets;
//! - [`backoff`], [`transport`]: retry policy, HTTP errors (stout durations come from
//!   `mesoblk_proto::stout`).
//!
//! Everything runs on tokio; nothing panics on bad input or network trouble: failures are the
//! typed errors of each module. The protobuf types are re-exported as [`proto`].

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod backoff;
pub mod block;
pub mod executor;
mod lifecycle;
pub mod operations;
pub mod scheduler;
pub mod transport;

pub use executor::{Executor, ExecutorDriver};
pub use lifecycle::DriverStatus;
pub use mesoblk_proto as proto;
pub use mesoblk_proto::codec::ContentType;
pub use scheduler::{Scheduler, SchedulerConfig, SchedulerDriver};

/// The drivers are handles that callbacks and other tasks share.
const _: () = {
    const fn shareable<T: Clone + Send + Sync + 'static>() {}
    shareable::<SchedulerDriver>();
    shareable::<ExecutorDriver>();
};
