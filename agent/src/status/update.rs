//! Building status updates: every update the agent or its built-in executor makes carries a
//! fresh uuid (16 random bytes, a v4 UUID as pymesos expects), its source, an optional reason
//! and message, and a timestamp (seconds since the epoch).

use std::fmt;
use std::time::SystemTime;

use mesoblk_proto::mesos::v1::{task_status, AgentId, ExecutorId, TaskId, TaskState, TaskStatus};

/// A status update's uuid.
pub type UpdateUuid = [u8; 16];

/// Which task a stream of updates belongs to: task ids are unique within a framework.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskKey {
    /// The framework.
    pub framework_id: String,
    /// The task.
    pub task_id: String,
}

impl TaskKey {
    /// The key of task `task_id` of framework `framework_id`.
    pub fn new(framework_id: impl Into<String>, task_id: impl Into<String>) -> TaskKey {
        TaskKey {
            framework_id: framework_id.into(),
            task_id: task_id.into(),
        }
    }
}

impl fmt::Display for TaskKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "task {} of framework {}",
            self.task_id, self.framework_id
        )
    }
}

/// The parts of a new status update.
#[derive(Clone, Debug, PartialEq)]
pub struct NewStatus {
    /// The task.
    pub task_id: String,
    /// Its new state.
    pub state: TaskState,
    /// Who says so.
    pub source: task_status::Source,
    /// Why, when known.
    pub reason: Option<task_status::Reason>,
    /// A message for people.
    pub message: Option<String>,
    /// The task's executor.
    pub executor_id: Option<String>,
    /// This agent.
    pub agent_id: Option<String>,
}

impl NewStatus {
    /// An update of `task_id` to `state` from `source`, without reason or message.
    pub fn new(task_id: &str, state: TaskState, source: task_status::Source) -> NewStatus {
        NewStatus {
            task_id: task_id.to_string(),
            state,
            source,
            reason: None,
            message: None,
            executor_id: None,
            agent_id: None,
        }
    }

    /// Sets the reason.
    pub fn reason(mut self, reason: task_status::Reason) -> NewStatus {
        self.reason = Some(reason);
        self
    }

    /// Sets the message.
    pub fn message(mut self, message: impl Into<String>) -> NewStatus {
        self.message = Some(message.into());
        self
    }

    /// Sets the executor and agent ids.
    pub fn ids(mut self, executor_id: &str, agent_id: &str) -> NewStatus {
        self.executor_id = Some(executor_id.to_string());
        self.agent_id = Some(agent_id.to_string());
        self
    }

    /// The `TaskStatus`, with a new random uuid and `now` as its timestamp.
    pub fn build(self, now: SystemTime) -> TaskStatus {
        let uuid = *uuid::Uuid::new_v4().as_bytes();
        let timestamp = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let status = TaskStatus {
            task_id: TaskId {
                value: self.task_id,
            },
            state: self.state as i32,
            message: self.message,
            source: Some(self.source as i32),
            reason: self.reason.map(|r| r as i32),
            executor_id: self.executor_id.map(|value| ExecutorId { value }),
            agent_id: self.agent_id.map(|value| AgentId { value }),
            timestamp: Some(timestamp),
            uuid: Some(uuid.to_vec()),
            ..Default::default()
        };
        debug_assert_eq!(status_uuid(&status), Some(uuid));
        status
    }
}

/// The uuid of `status`, when it has a well-formed one (exactly 16 bytes).
pub fn status_uuid(status: &TaskStatus) -> Option<UpdateUuid> {
    status.uuid.as_deref().and_then(|u| u.try_into().ok())
}

/// The state of `status`; unknown numbers read as TASK_UNKNOWN.
pub fn status_state(status: &TaskStatus) -> TaskState {
    TaskState::try_from(status.state).unwrap_or(TaskState::TaskUnknown)
}

/// A uuid in the usual hyphenated form, for messages.
pub fn uuid_string(uuid: &UpdateUuid) -> String {
    uuid::Uuid::from_bytes(*uuid).hyphenated().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_updates_have_unique_v4_uuids_and_timestamps() {
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_500);
        let a = NewStatus::new("t", TaskState::TaskRunning, task_status::Source::Executor)
            .reason(task_status::Reason::CommandExecutorFailed)
            .message("hi")
            .ids("t", "S1")
            .build(now);
        let b =
            NewStatus::new("t", TaskState::TaskRunning, task_status::Source::Executor).build(now);
        assert_ne!(status_uuid(&a), status_uuid(&b));
        let ua = uuid::Uuid::from_bytes(status_uuid(&a).unwrap());
        assert_eq!(ua.get_version_num(), 4);
        assert_eq!(a.timestamp, Some(1.5));
        assert_eq!(a.source, Some(task_status::Source::Executor as i32));
        assert_eq!(a.message.as_deref(), Some("hi"));
        assert_eq!(a.agent_id.unwrap().value, "S1");
        assert_eq!(status_state(&b), TaskState::TaskRunning);
    }
}
