//! The executor driver's error type.

use super::env::EnvError;
use super::updates::BookFull;
use crate::transport::TransportError;

/// Why an executor driver operation failed. Nothing in the driver panics; every failure is one
/// of these.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecutorError {
    /// The environment is not an executor's.
    #[error(transparent)]
    Environment(#[from] EnvError),
    /// The settings are unusable.
    #[error("invalid executor driver configuration: {0}")]
    Config(String),
    /// `start` (or `run`) on a driver that was started before.
    #[error("the driver was already started")]
    AlreadyStarted,
    /// `start` outside a tokio runtime.
    #[error("the driver must be started from within a tokio runtime")]
    NoRuntime,
    /// The driver is not running.
    #[error("the driver is not running")]
    NotRunning,
    /// A call that needs the agent while disconnected from it.
    #[error("not subscribed to the agent")]
    NotSubscribed,
    /// TASK_STAGING is the agent's state; an executor may not send it (Mesos aborts such an
    /// executor).
    #[error("an executor may not send TASK_STAGING")]
    StagingUpdate,
    /// Too many updates are waiting for acknowledgement.
    #[error(transparent)]
    Backlog(#[from] BookFull),
    /// The exchange with the agent failed.
    #[error("call {call} failed")]
    Call {
        /// The call type (`UPDATE`, `MESSAGE`).
        call: &'static str,
        /// What happened.
        #[source]
        source: TransportError,
    },
    /// A callback panicked; the driver aborted.
    #[error("an executor callback panicked: {0}")]
    CallbackPanicked(String),
}
