//! Facts about Mesos task states that the master, the agent and frameworks all need.

use crate::mesos::v1::TaskState;

/// Whether `state` is terminal: the task will never run again (Mesos's
/// `protobuf::isTerminalState`). TASK_UNREACHABLE and TASK_UNKNOWN are not: the task may still
/// be running where it can no longer be seen.
pub fn is_terminal(state: TaskState) -> bool {
    matches!(
        state,
        TaskState::TaskFinished
            | TaskState::TaskFailed
            | TaskState::TaskKilled
            | TaskState::TaskError
            | TaskState::TaskLost
            | TaskState::TaskDropped
            | TaskState::TaskGone
            | TaskState::TaskGoneByOperator
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_states_a_task_never_leaves_are_terminal() {
        let terminal: Vec<_> = (0..=20)
            .filter_map(|n| TaskState::try_from(n).ok())
            .filter(|s| is_terminal(*s))
            .map(|s| s.as_str_name())
            .collect();
        assert_eq!(
            terminal,
            [
                "TASK_FINISHED",
                "TASK_FAILED",
                "TASK_KILLED",
                "TASK_LOST",
                "TASK_ERROR",
                "TASK_DROPPED",
                "TASK_GONE",
                "TASK_GONE_BY_OPERATOR"
            ]
        );
    }
}
