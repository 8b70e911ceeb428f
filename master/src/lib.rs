//! mesoblk-master: the elected master that tracks agents' resources and offers them to frameworks
//! with DRF, speaking the Mesos v1 scheduler and operator HTTP APIs.
//!
//! This crate never depends on `ublk-target`: the master knows block storage only as Mesos disk
//! resources reported by agents.
//!
//! Layout:
//! - [`config`]: the master's settings (from Mesos-named flags in the binary);
//! - [`state`]: the [`state::Master`] books (frameworks today; agents, offers and tasks next),
//!   synchronous and free of I/O, behind a [`state::MasterHandle`];
//! - [`stream`]: the RecordIO event stream each subscribed framework reads, with heartbeats;
//! - [`http`]: the axum [`http::router`] with `/api/v1/scheduler`, `/api/v1` and the plain
//!   endpoints, status codes and messages as Mesos gives them ([`error::ApiError`]).

#![forbid(unsafe_code)]

pub mod allocator;
pub mod config;
pub mod error;
pub mod http;
pub mod state;
pub mod stream;

pub use config::Config;
pub use http::router;
pub use state::MasterHandle;
