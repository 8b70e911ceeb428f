//! The scheduler driver's error type.

use crate::transport::TransportError;

/// Why a scheduler driver operation failed. Nothing in the driver panics; every failure is one
/// of these.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    /// `start` (or `run`) on a driver that was started before.
    #[error("the driver was already started")]
    AlreadyStarted,
    /// `start` outside a tokio runtime.
    #[error("the driver must be started from within a tokio runtime")]
    NoRuntime,
    /// The driver is not running (never started, stopped or aborted).
    #[error("the driver is not running")]
    NotRunning,
    /// A call while no subscription is live (before SUBSCRIBED, or while reconnecting). The
    /// master would refuse it; try again after `registered`/`reregistered`.
    #[error("not subscribed to the master (disconnected or not yet registered)")]
    NotSubscribed,
    /// `acknowledge_*` on a driver that acknowledges by itself.
    #[error("explicit acknowledgement on a driver with implicit acknowledgements")]
    ImplicitAcknowledgements,
    /// The settings are unusable.
    #[error("invalid driver configuration: {0}")]
    Config(String),
    /// The exchange with the master failed; see the source for how.
    #[error("call {call} failed")]
    Call {
        /// The call type (`ACCEPT`, `TEARDOWN`, …).
        call: &'static str,
        /// What happened.
        #[source]
        source: TransportError,
    },
    /// The master refused the subscription or removed the framework (an ERROR event or a 4xx
    /// answer to SUBSCRIBE); the driver aborted.
    #[error("the master refused the framework: {0}")]
    Refused(String),
    /// A callback panicked; the driver aborted.
    #[error("a scheduler callback panicked: {0}")]
    CallbackPanicked(String),
    /// Every reconnection attempt failed; the driver aborted.
    #[error("gave up reconnecting to the master after {attempts} attempts")]
    ReconnectExhausted {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        #[source]
        last: TransportError,
    },
}

impl DriverError {
    /// The HTTP status with which the master refused a call, if that is what happened.
    pub fn status(&self) -> Option<u16> {
        match self {
            DriverError::Call { source, .. } => source.status(),
            _ => None,
        }
    }
}
