//! Task lifecycle: records created at launch (TASK_STAGING), status updates from agents kept per
//! task in order and forwarded to the scheduler until it acknowledges them (retried with a
//! doubling backoff meanwhile, and again when it resubscribes), ACKNOWLEDGE forwarded to the
//! agent, KILL, explicit and implicit RECONCILE, SHUTDOWN, MESSAGE, and master-generated updates
//! (no uuid, never retried) for lost or removed tasks.
//!
//! Mesos's rules kept here: a task's state is the latest state the agent reported, its
//! `status_update_state`/`status_update_uuid` the update last forwarded; its resources return to
//! the allocator when it first reaches a terminal (or unreachable) state; it stays in the books
//! until the terminal update is acknowledged, then joins its framework's completed tasks.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use mesoblk_proto::mesoblk::agent::v1 as agent;
use mesoblk_proto::mesos::v1::scheduler::{call, event, Event};
use mesoblk_proto::mesos::v1::{
    task_status, AgentId, ExecutorId, FrameworkId, Task, TaskId, TaskState, TaskStatus,
};
use tracing::{debug, warn};

use super::{epoch_secs, typed_event, AgentRemoval, Master};
use crate::allocator::{AgentId as AllocAgentId, FrameworkId as AllocFrameworkId, ResourceSet};
use crate::config::STATUS_UPDATE_RETRY_INTERVAL_MAX;
use crate::error::ApiError;
use crate::PROVISIONING;

/// A task's key: (framework id, task id).
pub type TaskKey = (String, String);

/// Unacknowledged updates kept per task; an agent sending more is refused until it gets acks.
pub const MAX_PENDING_UPDATES_PER_TASK: usize = 256;

/// A live task.
#[derive(Debug)]
pub struct TaskRecord {
    /// The task as Mesos reports it (state, statuses, resources, ...).
    pub task: Task,
    /// The role its resources are allocated to.
    pub role: String,
    /// What it holds in the allocator (returned when it ends).
    pub(super) allocation: ResourceSet,
    /// Updates not yet acknowledged, oldest (the one being delivered) first.
    pub(super) pending: VecDeque<TaskStatus>,
    /// When the head update is due again, and the current backoff.
    pub(super) retry: Option<(Duration, Duration)>,
    /// The uuid of the last acknowledged update (a retransmission of it is acked again).
    pub(super) last_acked: Option<Vec<u8>>,
    /// Whether its resources went back to the allocator.
    pub(super) recovered: bool,
}

impl TaskRecord {
    /// A new record for `task`, holding `allocation` in `role`.
    pub(super) fn new(task: Task, role: String, allocation: ResourceSet) -> Self {
        TaskRecord {
            task,
            role,
            allocation,
            pending: VecDeque::new(),
            retry: None,
            last_acked: None,
            recovered: false,
        }
    }

    /// Updates not yet acknowledged by the scheduler.
    pub fn pending_updates(&self) -> impl Iterator<Item = &TaskStatus> {
        self.pending.iter()
    }
}

pub use mesoblk_proto::task_state::is_terminal;

pub(super) fn state_of(state: i32) -> TaskState {
    TaskState::try_from(state).unwrap_or(TaskState::TaskUnknown)
}

/// The `master/tasks_<state>` counter for a terminal state.
fn terminal_counter(state: TaskState) -> Option<&'static str> {
    Some(match state {
        TaskState::TaskFinished => "master/tasks_finished",
        TaskState::TaskFailed => "master/tasks_failed",
        TaskState::TaskKilled => "master/tasks_killed",
        TaskState::TaskError => "master/tasks_error",
        TaskState::TaskLost => "master/tasks_lost",
        TaskState::TaskDropped => "master/tasks_dropped",
        TaskState::TaskGone => "master/tasks_gone",
        TaskState::TaskGoneByOperator => "master/tasks_gone_by_operator",
        _ => return None,
    })
}

/// A status the master makes up (Mesos's `createStatusUpdate` with `SOURCE_MASTER`).
pub fn master_status(
    task_id: &str,
    agent_id: Option<&str>,
    state: TaskState,
    reason: task_status::Reason,
    message: impl Into<String>,
) -> TaskStatus {
    TaskStatus {
        task_id: TaskId {
            value: task_id.into(),
        },
        state: state as i32,
        message: Some(message.into()),
        source: Some(task_status::Source::Master as i32),
        reason: Some(reason as i32),
        agent_id: agent_id.map(|value| AgentId {
            value: value.into(),
        }),
        timestamp: Some(epoch_secs(SystemTime::now())),
        ..Default::default()
    }
}

/// The UPDATE event for `status`.
pub fn update_event(status: TaskStatus) -> Event {
    Event {
        update: Some(event::Update { status }),
        ..typed_event(event::Type::Update)
    }
}

impl Master {
    /// Books a launched task (TASK_STAGING) holding `allocation` in `role`.
    pub(super) fn add_task(&mut self, task: Task, role: String, allocation: ResourceSet) {
        let key = (task.framework_id.value.clone(), task.task_id.value.clone());
        if let Some(agent) = self.agents.get_mut(&task.agent_id.value) {
            agent.tasks.insert(key.clone());
        }
        self.tasks
            .insert(key.clone(), TaskRecord::new(task, role, allocation));
        self.publish_task_added(&key);
    }

    /// Sends a status the master made up to the framework (when connected), without a uuid.
    pub(super) fn send_master_update(&mut self, framework_id: &str, status: TaskStatus) {
        if let Some(counter) = terminal_counter(state_of(status.state)) {
            self.count(counter);
        }
        self.send(framework_id, update_event(status));
    }

    /// A master-generated transition of a booked task (agent removed, framework removed,
    /// reconciliation after re-registration): applied, forwarded when `forward`, and the task
    /// leaves the books (Mesos's `updateTask` + `removeTask`).
    pub(super) fn end_task(&mut self, key: &TaskKey, status: TaskStatus, forward: bool) {
        self.apply_status(key, &status, None);
        self.remove_task(key);
        if forward {
            self.send(&key.0, update_event(status));
        }
    }

    /// Applies a status to the task's books (Mesos's `updateTask`).
    fn apply_status(&mut self, key: &TaskKey, status: &TaskStatus, latest: Option<TaskState>) {
        let Some(record) = self.tasks.get_mut(key) else {
            return;
        };
        let update_state = latest.unwrap_or(state_of(status.state));
        let old = state_of(record.task.state);
        let ends = |s: TaskState| is_terminal(s) || s == TaskState::TaskUnreachable;
        let transitioned = !ends(old) && ends(update_state);
        // Mesos tells operator subscribers when an update changes the task's state.
        let changed = !is_terminal(old) && status.state != old as i32;
        if !is_terminal(old) {
            record.task.state = update_state as i32;
        }
        let mut stored = status.clone();
        stored.data = None;
        if record.task.statuses.last().map(|s| s.state) == Some(status.state) {
            record.task.statuses.pop();
        }
        record.task.statuses.push(stored);
        if transitioned {
            if let Some(counter) = terminal_counter(update_state) {
                self.count(counter);
            }
            self.recover_task_resources(key);
        }
        if changed {
            self.publish_task_updated(key, status, update_state as i32);
        }
    }

    /// Returns a task's resources (and its executor's, once no live task uses it) to the
    /// allocator, once.
    fn recover_task_resources(&mut self, key: &TaskKey) {
        let Some(record) = self.tasks.get_mut(key) else {
            return;
        };
        if record.recovered {
            return;
        }
        record.recovered = true;
        let agent_id = record.task.agent_id.value.clone();
        let role = record.role.clone();
        let allocation = std::mem::take(&mut record.allocation);
        let executor_id = record.task.executor_id.as_ref().map(|e| e.value.clone());
        let framework = AllocFrameworkId(key.0.clone());
        let alloc_agent = AllocAgentId(agent_id.clone());
        if let Err(e) = self
            .allocator
            .recover(&alloc_agent, &framework, &role, &allocation)
        {
            debug!(task = %key.1, agent = %agent_id, "recovering task resources: {e}");
        }
        if let Some(executor_id) = executor_id {
            self.release_executor_task(&agent_id, &key.0, &executor_id);
        }
        let now = self.now();
        self.allocate_agents(&[agent_id], now);
    }

    /// Removes a task from the books into its framework's completed tasks.
    pub(super) fn remove_task(&mut self, key: &TaskKey) {
        self.recover_task_resources(key);
        let Some(record) = self.tasks.remove(key) else {
            return;
        };
        if let Some((due, _)) = record.retry {
            self.retries.remove(&(due, key.clone()));
        }
        if let Some(agent) = self.agents.get_mut(&record.task.agent_id.value) {
            agent.tasks.remove(key);
        }
        let max = self.config.max_completed_tasks_per_framework;
        if let Some(framework) = self.frameworks.get_mut(&key.0) {
            if max > 0 {
                while framework.completed_tasks.len() >= max {
                    framework.completed_tasks.pop_front();
                }
                framework.completed_tasks.push_back(record.task);
            }
        }
    }

    /// A status update from an agent (POST /agent/v1/status_update): booked, queued behind the
    /// task's unacknowledged updates and forwarded to the scheduler in order. A retransmission of
    /// the update being delivered is forwarded again at once; one that was acknowledged already
    /// gets its acknowledgement again.
    pub fn status_update(&mut self, update: agent::StatusUpdate) -> Result<(), ApiError> {
        let agent_id = update.agent_id.value.clone();
        self.check_agent(&agent_id)?;
        let mut status = update.status;
        let uuid = status.uuid.clone().unwrap_or_default();
        if uuid.len() != 16 {
            return Err(ApiError::bad_request(
                "Invalid status update: 'status.uuid' must be 16 bytes",
            ));
        }
        status.agent_id = Some(AgentId {
            value: agent_id.clone(),
        });
        if status.timestamp.is_none() {
            status.timestamp = Some(epoch_secs(SystemTime::now()));
        }
        if status.source.is_none() {
            status.source = Some(task_status::Source::Agent as i32);
        }
        let framework_id = update.framework_id.value;
        let key = (framework_id.clone(), status.task_id.value.clone());
        let latest = update.latest_state.map(state_of);
        let Some(record) = self
            .tasks
            .get(&key)
            .filter(|r| r.task.agent_id.value == agent_id)
        else {
            // Mesos forwards updates of tasks it does not know (for example after its own
            // restart); the agent retries them until acknowledged.
            warn!(task = %key.1, framework = %framework_id, agent = %agent_id, "status update for an unknown task");
            self.count("master/invalid_status_updates");
            self.send(&framework_id, update_event(status));
            return Ok(());
        };
        if record.last_acked.as_deref() == Some(uuid.as_slice()) {
            self.send_acknowledgement(&agent_id, &framework_id, &key.1, uuid);
            return Ok(());
        }
        if let Some(position) = record
            .pending
            .iter()
            .position(|s| s.uuid.as_deref() == Some(uuid.as_slice()))
        {
            if position == 0 {
                self.forward_head(&key);
            }
            return Ok(());
        }
        if record.pending.len() >= MAX_PENDING_UPDATES_PER_TASK {
            return Err(ApiError::service_unavailable(format!(
                "Task {} has {MAX_PENDING_UPDATES_PER_TASK} unacknowledged status updates",
                key.1
            )));
        }
        self.count("master/valid_status_updates");
        debug!(target: PROVISIONING, task = %key.1, state = status.state().as_str_name(), "status update received");
        self.apply_status(&key, &status, latest);
        let first = match self.tasks.get_mut(&key) {
            Some(record) => {
                record.pending.push_back(status);
                record.pending.len() == 1
            }
            None => false,
        };
        if first {
            self.forward_head(&key);
        }
        Ok(())
    }

    /// Sends the task's oldest unacknowledged update to its framework and schedules a retry.
    fn forward_head(&mut self, key: &TaskKey) {
        let now = self.now();
        let connected = self.is_connected(&key.0);
        let first_backoff = self.config.status_update_retry_interval;
        let Some(record) = self.tasks.get_mut(key) else {
            return;
        };
        let Some(head) = record.pending.front().cloned() else {
            return;
        };
        record.task.status_update_state = Some(head.state);
        record.task.status_update_uuid.clone_from(&head.uuid);
        if let Some((due, _)) = record.retry.take() {
            self.retries.remove(&(due, key.clone()));
        }
        if !connected {
            // Sent again when the framework resubscribes.
            return;
        }
        let due = now.saturating_add(first_backoff);
        record.retry = Some((due, first_backoff));
        self.retries.insert((due, key.clone()));
        debug!(target: PROVISIONING, task = %key.1, state = head.state().as_str_name(), "status update forwarded");
        self.send(&key.0, update_event(head));
    }

    /// Forwards again every head update that is due (doubling each task's backoff up to
    /// [`STATUS_UPDATE_RETRY_INTERVAL_MAX`]).
    pub(super) fn retry_status_updates(&mut self, now: Duration) {
        while let Some(first) = self.retries.first().cloned() {
            if first.0 > now {
                break;
            }
            self.retries.remove(&first);
            let key = first.1;
            if !self.is_connected(&key.0) {
                if let Some(record) = self.tasks.get_mut(&key) {
                    record.retry = None;
                }
                continue;
            }
            let Some(record) = self.tasks.get_mut(&key) else {
                continue;
            };
            let Some(head) = record.pending.front().cloned() else {
                record.retry = None;
                continue;
            };
            let backoff = record
                .retry
                .map_or(self.config.status_update_retry_interval, |(_, b)| b)
                .saturating_mul(2)
                .min(STATUS_UPDATE_RETRY_INTERVAL_MAX);
            let due = now.saturating_add(backoff);
            record.retry = Some((due, backoff));
            self.retries.insert((due, key.clone()));
            debug!(task = %key.1, "retrying an unacknowledged status update");
            self.send(&key.0, update_event(head));
        }
    }

    /// After a (re)subscription: every task's unacknowledged head update goes out again.
    pub(super) fn resend_status_updates(&mut self, framework_id: &str) {
        let keys: Vec<TaskKey> = self
            .tasks
            .range((framework_id.to_owned(), String::new())..)
            .take_while(|(k, _)| k.0 == framework_id)
            .filter(|(_, r)| !r.pending.is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            self.forward_head(&key);
        }
    }

    fn send_acknowledgement(
        &mut self,
        agent_id: &str,
        framework_id: &str,
        task_id: &str,
        uuid: Vec<u8>,
    ) {
        let event = agent::Event {
            r#type: Some(agent::event::Type::Acknowledge as i32),
            acknowledge: Some(agent::event::Acknowledge {
                framework_id: FrameworkId {
                    value: framework_id.into(),
                },
                task_id: TaskId {
                    value: task_id.into(),
                },
                uuid,
            }),
            ..Default::default()
        };
        self.send_to_agent(agent_id, event);
    }

    /// ACKNOWLEDGE: the head update of the task is done; the next one is forwarded, a terminal
    /// task leaves the books, and the acknowledgement goes to the agent.
    pub fn acknowledge(&mut self, framework_id: &str, ack: &call::Acknowledge) {
        let agent_id = ack.agent_id.value.clone();
        if !self.agents.contains_key(&agent_id) {
            warn!(agent = %agent_id, task = %ack.task_id.value, "cannot send an acknowledgement to an agent that is not registered");
            self.count("master/invalid_status_update_acknowledgements");
            return;
        }
        let key = (framework_id.to_owned(), ack.task_id.value.clone());
        debug!(target: PROVISIONING, task = %key.1, "acknowledgement received");
        let mut done = false;
        let mut next = false;
        if let Some(record) = self.tasks.get_mut(&key) {
            if record.pending.front().and_then(|s| s.uuid.as_deref()) == Some(ack.uuid.as_slice()) {
                record.pending.pop_front();
                record.last_acked = Some(ack.uuid.clone());
                if let Some((due, _)) = record.retry.take() {
                    self.retries.remove(&(due, key.clone()));
                }
                next = !record.pending.is_empty();
                done = !next && is_terminal(state_of(record.task.state));
            } else {
                debug!(task = %key.1, "acknowledgement of an update that is not being delivered");
            }
        }
        if next {
            self.forward_head(&key);
        } else if done {
            self.remove_task(&key);
        }
        self.count("master/valid_status_update_acknowledgements");
        self.send_acknowledgement(&agent_id, framework_id, &key.1, ack.uuid.clone());
    }

    /// A removed framework's tasks become TASK_KILLED (REASON_FRAMEWORK_REMOVED) and leave the
    /// books; nothing is sent (the framework is going away).
    pub(super) fn kill_framework_tasks(&mut self, framework_id: &str) {
        let keys: Vec<TaskKey> = self
            .tasks
            .range((framework_id.to_owned(), String::new())..)
            .take_while(|(k, _)| k.0 == framework_id)
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            let Some(record) = self.tasks.get(&key) else {
                continue;
            };
            let mut status = master_status(
                &key.1,
                Some(&record.task.agent_id.value),
                TaskState::TaskKilled,
                task_status::Reason::FrameworkRemoved,
                format!("Framework {framework_id} removed"),
            );
            status.executor_id.clone_from(&record.task.executor_id);
            self.end_task(&key, status, false);
        }
    }

    /// Tells every registered agent to shut the framework down, as Mesos's `removeFramework`
    /// does: not only those the master's books tie to it, which miss an executor whose last task
    /// ended (the master forgets it then, the agent does not) and whatever a restarted master
    /// only knows from re-registrations. An agent whose stream is not up yet gets it when it
    /// subscribes; one that does not run the framework ignores it.
    pub(super) fn shutdown_framework_on_agents(&mut self, framework_id: &str) {
        let agents: Vec<String> = self.agents.keys().cloned().collect();
        for agent_id in agents {
            let event = shutdown_framework_event(framework_id);
            if !self.send_to_agent(&agent_id, event.clone()) {
                self.queue_agent_event(&agent_id, event);
            }
        }
    }

    /// The status Mesos sends for a task lost with its agent.
    pub(super) fn agent_lost_status(
        &self,
        key: &TaskKey,
        message: &str,
        removal: AgentRemoval,
        when: SystemTime,
    ) -> TaskStatus {
        let (state, reason) = match removal {
            AgentRemoval::Unreachable => (
                TaskState::TaskUnreachable,
                task_status::Reason::AgentRemoved,
            ),
            AgentRemoval::Gone => (
                TaskState::TaskGoneByOperator,
                task_status::Reason::AgentRemovedByOperator,
            ),
        };
        let state = if self.partition_aware(&key.0) {
            state
        } else {
            TaskState::TaskLost
        };
        let record = self.tasks.get(key);
        let mut status = master_status(
            &key.1,
            record.map(|r| r.task.agent_id.value.as_str()),
            state,
            reason,
            message,
        );
        status.executor_id = record.and_then(|r| r.task.executor_id.clone());
        if removal == AgentRemoval::Unreachable {
            status.unreachable_time = Some(super::time_info(when));
        }
        status
    }

    /// The executor id a task runs under, for its status.
    pub fn task_executor(&self, key: &TaskKey) -> Option<ExecutorId> {
        self.tasks.get(key).and_then(|r| r.task.executor_id.clone())
    }
}

/// The agent event that shuts a framework's executors and tasks down.
pub(super) fn shutdown_framework_event(framework_id: &str) -> agent::Event {
    agent::Event {
        r#type: Some(agent::event::Type::ShutdownFramework as i32),
        shutdown_framework: Some(agent::event::ShutdownFramework {
            framework_id: FrameworkId {
                value: framework_id.into(),
            },
        }),
        ..Default::default()
    }
}
