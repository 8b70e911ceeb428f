//! The life of a driver, shared by the scheduler and executor drivers: not started → running →
//! (stopping →) stopped, or aborted; plus "both tasks have finished" for `join`.
//!
//! Transitions are compare-and-set on a `watch` channel, so the driver's tasks can await them.

use std::sync::OnceLock;

use tokio::sync::watch;

/// Where a driver is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DriverStatus {
    /// Created, not started.
    NotStarted,
    /// Started: connected, or trying to be.
    Running,
    /// Ended by `stop` (or, for an executor, after the agent asked it to shut down).
    Stopped,
    /// Ended by `abort`, or by a failure the driver cannot get past.
    Aborted,
}

/// [`DriverStatus`] plus the moment between `stop` and its last message (TEARDOWN, pending
/// status updates), during which the connection stays open but nothing is dispatched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    NotStarted,
    Running,
    Stopping,
    Stopped,
    Aborted,
}

impl Phase {
    pub(crate) fn is_terminal(self) -> bool {
        matches!(self, Phase::Stopped | Phase::Aborted)
    }
}

/// A driver's phase and completion.
#[derive(Debug)]
pub(crate) struct Lifecycle {
    phase: watch::Sender<Phase>,
    finished: watch::Sender<bool>,
    /// The callbacks' task, so `join` from a callback does not wait for itself.
    callback_task: OnceLock<tokio::task::Id>,
}

impl Lifecycle {
    pub(crate) fn new() -> Self {
        Lifecycle {
            phase: watch::channel(Phase::NotStarted).0,
            finished: watch::channel(false).0,
            callback_task: OnceLock::new(),
        }
    }

    fn transition(&self, from: &[Phase], to: Phase) -> bool {
        self.phase.send_if_modified(|phase| {
            let change = from.contains(phase);
            if change {
                *phase = to;
            }
            change
        })
    }

    pub(crate) fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    pub(crate) fn is_running(&self) -> bool {
        self.phase() == Phase::Running
    }

    /// Not started → running.
    pub(crate) fn start(&self) -> bool {
        self.transition(&[Phase::NotStarted], Phase::Running)
    }

    /// Running → stopping.
    pub(crate) fn begin_stop(&self) -> bool {
        self.transition(&[Phase::Running], Phase::Stopping)
    }

    /// Stopping → stopped (an abort meanwhile wins).
    pub(crate) fn finish_stop(&self) -> bool {
        self.transition(&[Phase::Stopping], Phase::Stopped)
    }

    /// Running or stopping → aborted.
    pub(crate) fn abort(&self) -> bool {
        self.transition(&[Phase::Running, Phase::Stopping], Phase::Aborted)
    }

    /// Waits until the driver is stopped or aborted.
    pub(crate) fn ended(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut phase = self.phase.subscribe();
        async move {
            let _ = phase.wait_for(|p| p.is_terminal()).await;
        }
    }

    pub(crate) fn set_callback_task(&self, id: tokio::task::Id) {
        let _ = self.callback_task.set(id);
    }

    /// Both tasks have finished.
    pub(crate) fn set_finished(&self) {
        self.finished.send_replace(true);
    }

    /// Waits for the driver to end and its tasks to finish; from the callbacks' own task, only
    /// for the driver to end.
    pub(crate) async fn wait_finished(&self) {
        let in_callback =
            tokio::task::try_id().is_some_and(|id| self.callback_task.get() == Some(&id));
        if in_callback {
            self.ended().await;
        } else {
            let mut finished = self.finished.subscribe();
            let _ = finished.wait_for(|done| *done).await;
        }
    }

    pub(crate) fn status(&self) -> DriverStatus {
        match self.phase() {
            Phase::NotStarted => DriverStatus::NotStarted,
            Phase::Running | Phase::Stopping => DriverStatus::Running,
            Phase::Stopped => DriverStatus::Stopped,
            Phase::Aborted => DriverStatus::Aborted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_follow_the_lifecycle() {
        let life = Lifecycle::new();
        assert_eq!(life.status(), DriverStatus::NotStarted);
        assert!(!life.begin_stop());
        assert!(!life.abort());
        assert!(life.start());
        assert!(!life.start());
        assert!(life.is_running());
        assert!(life.begin_stop());
        assert_eq!(life.status(), DriverStatus::Running);
        assert!(!life.is_running());
        assert!(life.abort());
        assert!(!life.finish_stop(), "an abort while stopping wins");
        assert_eq!(life.status(), DriverStatus::Aborted);
        assert!(life.phase().is_terminal());
    }

    #[tokio::test]
    async fn ended_resolves_once_terminal() {
        let life = Lifecycle::new();
        life.start();
        let ended = life.ended();
        life.begin_stop();
        life.finish_stop();
        tokio::time::timeout(std::time::Duration::from_secs(1), ended)
            .await
            .expect("ended");
    }
}
