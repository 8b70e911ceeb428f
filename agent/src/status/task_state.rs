//! The task state machine as an agent sees it (pure: no I/O, no clock).
//!
//! ```text
//! STAGING ──► STARTING ──► RUNNING ──► KILLING ──► terminal
//!    │            │           │                      ▲
//!    └────────────┴───────────┴──────────────────────┘
//! ```
//!
//! A task moves only forward along that line: STAGING (the agent got it) → STARTING (its
//! executor got it) → RUNNING → KILLING (a kill was asked for, only if the framework has the
//! `TASK_KILLING_STATE` capability) → one terminal state (FINISHED, FAILED, KILLED, ERROR, LOST,
//! DROPPED, GONE). Steps may be skipped (STAGING → FAILED when a launch fails; RUNNING →
//! FINISHED). STARTING, RUNNING and KILLING may repeat (an executor may send RUNNING again, e.g.
//! with a health-check result). A terminal state is final. UNREACHABLE, GONE_BY_OPERATOR and
//! UNKNOWN are the master's to set, never an agent's.

pub use mesoblk_proto::task_state::is_terminal;

use mesoblk_proto::mesos::v1::TaskState;
use thiserror::Error;

/// Why a transition is refused.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransitionError {
    /// The task already ended.
    #[error("the task is already {}; it cannot become {}", .from.as_str_name(), .to.as_str_name())]
    AlreadyTerminal {
        /// Its terminal state.
        from: TaskState,
        /// The state asked for.
        to: TaskState,
    },
    /// The state asked for comes before the current one.
    #[error("a task cannot go back from {} to {}", .from.as_str_name(), .to.as_str_name())]
    Backwards {
        /// The current state.
        from: TaskState,
        /// The state asked for.
        to: TaskState,
    },
    /// Only the master sets this state.
    #[error("{} is set by the master, never by an agent", .to.as_str_name())]
    MasterOnly {
        /// The state asked for.
        to: TaskState,
    },
    /// TASK_KILLING for a framework without the `TASK_KILLING_STATE` capability.
    #[error("TASK_KILLING needs the framework's TASK_KILLING_STATE capability")]
    KillingNotEnabled,
}

/// A state's place on the agent's line (see the module docs); `None` for master-only states.
fn rank(state: TaskState) -> Option<u8> {
    match state {
        TaskState::TaskStaging => Some(0),
        TaskState::TaskStarting => Some(1),
        TaskState::TaskRunning => Some(2),
        TaskState::TaskKilling => Some(3),
        TaskState::TaskFinished
        | TaskState::TaskFailed
        | TaskState::TaskKilled
        | TaskState::TaskError
        | TaskState::TaskLost
        | TaskState::TaskDropped
        | TaskState::TaskGone => Some(4),
        TaskState::TaskUnreachable | TaskState::TaskGoneByOperator | TaskState::TaskUnknown => None,
    }
}

/// Whether a task in `from` may move to `to`; `killing_state` is whether its framework has the
/// `TASK_KILLING_STATE` capability.
pub fn check_transition(
    from: TaskState,
    to: TaskState,
    killing_state: bool,
) -> Result<(), TransitionError> {
    if is_terminal(from) {
        return Err(TransitionError::AlreadyTerminal { from, to });
    }
    let Some(to_rank) = rank(to) else {
        return Err(TransitionError::MasterOnly { to });
    };
    if to == TaskState::TaskKilling && !killing_state {
        return Err(TransitionError::KillingNotEnabled);
    }
    // A non-terminal `from` that is not on the line (UNREACHABLE, UNKNOWN) is never an agent's
    // current state; treat it as the line's start so any agent state may follow.
    let from_rank = rank(from).unwrap_or(0);
    let repeat = from == to && to != TaskState::TaskStaging;
    if to_rank > from_rank || repeat {
        Ok(())
    } else {
        Err(TransitionError::Backwards { from, to })
    }
}

/// One task's current state, changed only through allowed transitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskLifecycle {
    state: TaskState,
    killing_state: bool,
}

impl TaskLifecycle {
    /// A task the agent just received: TASK_STAGING.
    pub fn new(killing_state: bool) -> TaskLifecycle {
        TaskLifecycle {
            state: TaskState::TaskStaging,
            killing_state,
        }
    }

    /// A task whose last known state is `state` (after recovery).
    ///
    /// # Panics
    /// If `state` is master-only (an agent never records one).
    pub fn resume(state: TaskState, killing_state: bool) -> TaskLifecycle {
        assert!(rank(state).is_some(), "{state:?} is not an agent state");
        TaskLifecycle {
            state,
            killing_state,
        }
    }

    /// The current state.
    pub fn state(&self) -> TaskState {
        self.state
    }

    /// Whether the task ended.
    pub fn is_terminal(&self) -> bool {
        is_terminal(self.state)
    }

    /// Whether the framework accepts TASK_KILLING.
    pub fn killing_state(&self) -> bool {
        self.killing_state
    }

    /// Whether moving to `to` is allowed, without moving.
    pub fn check(&self, to: TaskState) -> Result<(), TransitionError> {
        check_transition(self.state, to, self.killing_state)
    }

    /// Moves to `to`; returns the previous state.
    pub fn transition(&mut self, to: TaskState) -> Result<TaskState, TransitionError> {
        self.check(to)?;
        let from = std::mem::replace(&mut self.state, to);
        debug_assert!(!is_terminal(from));
        Ok(from)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use TaskState::*;

    const ALL: [TaskState; 14] = [
        TaskStaging,
        TaskStarting,
        TaskRunning,
        TaskKilling,
        TaskFinished,
        TaskFailed,
        TaskKilled,
        TaskError,
        TaskLost,
        TaskDropped,
        TaskUnreachable,
        TaskGone,
        TaskGoneByOperator,
        TaskUnknown,
    ];

    #[test]
    fn the_command_executor_path_is_allowed() {
        let mut t = TaskLifecycle::new(true);
        for to in [
            TaskStarting,
            TaskRunning,
            TaskRunning,
            TaskKilling,
            TaskKilled,
        ] {
            t.transition(to).unwrap();
        }
        assert!(t.is_terminal());
        assert_eq!(
            t.transition(TaskRunning),
            Err(TransitionError::AlreadyTerminal {
                from: TaskKilled,
                to: TaskRunning
            })
        );
    }

    #[test]
    fn launch_failures_go_straight_to_terminal() {
        for end in [TaskFailed, TaskError, TaskDropped, TaskLost, TaskGone] {
            let mut t = TaskLifecycle::new(false);
            assert_eq!(t.transition(end), Ok(TaskStaging));
            assert_eq!(t.state(), end);
        }
    }

    #[test]
    fn refusals_are_typed() {
        let mut t = TaskLifecycle::new(false);
        t.transition(TaskRunning).unwrap();
        assert_eq!(
            t.transition(TaskStarting),
            Err(TransitionError::Backwards {
                from: TaskRunning,
                to: TaskStarting
            })
        );
        assert_eq!(
            t.transition(TaskKilling),
            Err(TransitionError::KillingNotEnabled)
        );
        assert_eq!(
            t.transition(TaskUnreachable),
            Err(TransitionError::MasterOnly {
                to: TaskUnreachable
            })
        );
        assert_eq!(
            t.transition(TaskStaging),
            Err(TransitionError::Backwards {
                from: TaskRunning,
                to: TaskStaging
            })
        );
        // Refused transitions leave the state alone.
        assert_eq!(t.state(), TaskRunning);
        assert!(TransitionError::KillingNotEnabled
            .to_string()
            .contains("TASK_KILLING_STATE"));
    }

    #[test]
    fn terminal_states_match_mesos() {
        let terminal: Vec<_> = ALL.into_iter().filter(|s| is_terminal(*s)).collect();
        assert_eq!(
            terminal,
            vec![
                TaskFinished,
                TaskFailed,
                TaskKilled,
                TaskError,
                TaskLost,
                TaskDropped,
                TaskGone,
                TaskGoneByOperator
            ]
        );
    }

    proptest! {
        /// Any sequence of attempted transitions: accepted ones never go backwards, never leave
        /// a terminal state, and a refused one changes nothing.
        #[test]
        fn accepted_transitions_only_move_forward(
            killing in any::<bool>(),
            steps in proptest::collection::vec(0..ALL.len(), 0..20),
        ) {
            let mut t = TaskLifecycle::new(killing);
            for i in steps {
                let before = t.state();
                let to = ALL[i];
                match t.transition(to) {
                    Ok(from) => {
                        prop_assert_eq!(from, before);
                        prop_assert!(!is_terminal(before));
                        prop_assert!(rank(to).unwrap() >= rank(before).unwrap());
                        prop_assert!(killing || to != TaskKilling);
                    }
                    Err(_) => prop_assert_eq!(t.state(), before),
                }
            }
        }
    }
}
