//! Scheduler calls about tasks (Mesos's `Master::kill`, `reconcile`, `shutdown`, `message`):
//! KILL goes to the task's agent, or becomes a reconciliation when the task is unknown;
//! RECONCILE answers from the books (implicit: every task of the framework; explicit: each task
//! listed, known or not, with Mesos's states and messages); SHUTDOWN and MESSAGE are forwarded to
//! the executor's agent; an executor's message comes back from its agent
//! (`POST /agent/v1/framework_message`) as a MESSAGE event to the scheduler.

use mesoblk_proto::mesoblk::agent::v1 as agent;
use mesoblk_proto::mesos::v1::scheduler::{call, event, Event};
use mesoblk_proto::mesos::v1::{task_status, FrameworkId, TaskState, TaskStatus};
use tracing::{debug, info, warn};

use super::tasks::{master_status, state_of, update_event, TaskRecord};
use super::{typed_event, Master};
use crate::error::ApiError;

impl Master {
    /// KILL (`Master::kill`): an unknown task is reconciled instead; a known one is killed by its
    /// agent (if connected; otherwise when it comes back).
    pub fn kill(&mut self, framework_id: &str, kill: &call::Kill) {
        let key = (framework_id.to_owned(), kill.task_id.value.clone());
        let Some(record) = self.tasks.get(&key) else {
            info!(task = %key.1, framework = %framework_id, "cannot kill an unknown task; performing reconciliation");
            let reconcile = call::Reconcile {
                tasks: vec![call::reconcile::Task {
                    task_id: kill.task_id.clone(),
                    agent_id: kill.agent_id.clone(),
                }],
            };
            self.reconcile(framework_id, reconcile);
            return;
        };
        let agent_id = record.task.agent_id.value.clone();
        if kill.agent_id.as_ref().is_some_and(|a| a.value != agent_id) {
            warn!(task = %key.1, "cannot kill a task of another agent");
            return;
        }
        let event = agent::Event {
            r#type: Some(agent::event::Type::KillTask as i32),
            kill_task: Some(agent::event::KillTask {
                framework_id: FrameworkId {
                    value: framework_id.into(),
                },
                task_id: kill.task_id.clone(),
                kill_policy: kill.kill_policy,
            }),
            ..Default::default()
        };
        if !self.send_to_agent(&agent_id, event) {
            warn!(task = %key.1, agent = %agent_id, "agent disconnected; the kill waits for it to come back");
        }
    }

    /// RECONCILE (`Master::reconcile`): implicit (no tasks) sends the latest state of every task
    /// of the framework; explicit answers each task, known or not, as Mesos does.
    pub fn reconcile(&mut self, framework_id: &str, reconcile: call::Reconcile) {
        let partition_aware = self.partition_aware(framework_id);
        let lost_unless = |state: TaskState| {
            if partition_aware {
                state
            } else {
                TaskState::TaskLost
            }
        };
        let known = |record: &TaskRecord| {
            let state = record.task.status_update_state.unwrap_or(record.task.state);
            let mut status = master_status(
                &record.task.task_id.value,
                Some(&record.task.agent_id.value),
                state_of(state),
                task_status::Reason::Reconciliation,
                "Reconciliation: Latest task state",
            );
            status.executor_id.clone_from(&record.task.executor_id);
            status
        };
        if reconcile.tasks.is_empty() {
            let statuses: Vec<TaskStatus> = self
                .tasks
                .range((framework_id.to_owned(), String::new())..)
                .take_while(|(k, _)| k.0 == framework_id)
                .map(|(_, r)| known(r))
                .collect();
            debug!(framework = %framework_id, tasks = statuses.len(), "implicit reconciliation");
            for status in statuses {
                self.send(framework_id, update_event(status));
            }
            return;
        }
        for task in reconcile.tasks {
            let key = (framework_id.to_owned(), task.task_id.value.clone());
            let agent = task.agent_id.as_ref().map(|a| a.value.as_str());
            let status = if let Some(record) = self.tasks.get(&key) {
                known(record)
            } else if let Some(agent) = agent.filter(|a| self.agents.contains_key(*a)) {
                master_status(
                    &key.1,
                    Some(agent),
                    lost_unless(TaskState::TaskGone),
                    task_status::Reason::Reconciliation,
                    "Reconciliation: Task is unknown to the agent",
                )
            } else if let Some(agent) = agent.filter(|a| self.recovered_agents.contains_key(*a)) {
                // As Mesos: no answer until the agent re-registers or is marked unreachable.
                debug!(framework = %framework_id, task = %key.1, %agent, "not reconciling a task of a recovered agent yet");
                continue;
            } else if let Some(agent) = agent.filter(|a| self.gone_agents.contains_key(*a)) {
                master_status(
                    &key.1,
                    Some(agent),
                    lost_unless(TaskState::TaskGoneByOperator),
                    task_status::Reason::Reconciliation,
                    "Reconciliation: Task is gone",
                )
            } else if let Some(when) = agent.and_then(|a| self.removed_agent_time(a)) {
                let mut status = master_status(
                    &key.1,
                    agent,
                    lost_unless(TaskState::TaskUnreachable),
                    task_status::Reason::Reconciliation,
                    "Reconciliation: Task is unreachable",
                );
                status.unreachable_time = Some(super::time_info(when));
                status
            } else {
                master_status(
                    &key.1,
                    agent,
                    lost_unless(TaskState::TaskUnknown),
                    task_status::Reason::Reconciliation,
                    "Reconciliation: Task is unknown",
                )
            };
            self.send(framework_id, update_event(status));
        }
    }

    /// SHUTDOWN of an executor: forwarded to its agent.
    pub fn shutdown(&mut self, framework_id: &str, shutdown: &call::Shutdown) {
        let event = agent::Event {
            r#type: Some(agent::event::Type::ShutdownExecutor as i32),
            shutdown_executor: Some(agent::event::ShutdownExecutor {
                framework_id: FrameworkId {
                    value: framework_id.into(),
                },
                executor_id: shutdown.executor_id.clone(),
            }),
            ..Default::default()
        };
        if !self.send_to_agent(&shutdown.agent_id.value, event) {
            warn!(agent = %shutdown.agent_id.value, "cannot shut down an executor on an agent that is not connected");
        }
    }

    /// MESSAGE: framework data for an executor, forwarded to its agent.
    pub fn message(&mut self, framework_id: &str, message: &call::Message) {
        let event = agent::Event {
            r#type: Some(agent::event::Type::FrameworkMessage as i32),
            framework_message: Some(agent::event::FrameworkMessage {
                framework_id: FrameworkId {
                    value: framework_id.into(),
                },
                executor_id: message.executor_id.clone(),
                data: message.data.clone(),
            }),
            ..Default::default()
        };
        if !self.send_to_agent(&message.agent_id.value, event) {
            warn!(agent = %message.agent_id.value, "dropping a framework message for an agent that is not connected");
        }
    }

    /// An executor's message for its scheduler (`Master::executorMessage`): a MESSAGE event
    /// with the agent and executor ids; dropped (and counted) when the framework is unknown or
    /// disconnected. 403 when the agent is not registered.
    pub fn executor_message(&mut self, message: agent::ExecutorMessage) -> Result<(), ApiError> {
        self.check_agent(&message.agent_id.value)?;
        let framework_id = message.framework_id.value.clone();
        let connected = self
            .frameworks
            .get(&framework_id)
            .is_some_and(|f| f.connection.is_some());
        if !connected {
            warn!(framework = %framework_id, executor = %message.executor_id.value,
                "not forwarding an executor message: the framework is unknown or disconnected");
            self.count("master/invalid_executor_to_framework_messages");
            return Ok(());
        }
        self.count("master/valid_executor_to_framework_messages");
        let event = Event {
            message: Some(event::Message {
                agent_id: message.agent_id,
                executor_id: message.executor_id,
                data: message.data,
            }),
            ..typed_event(event::Type::Message)
        };
        self.send(&framework_id, event);
        Ok(())
    }
}
