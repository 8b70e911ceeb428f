//! Custom executors: tasks with an `ExecutorInfo` and task groups go to the executor API
//! ([`crate::executor_api`]) with their disks attached first, exactly as for command tasks
//! (the devices in the new executor's environment and in each task's resource labels; a
//! terminal update releases them). Executor MESSAGE calls are forwarded to the master.

use std::path::PathBuf;
use std::sync::Arc;

use mesoblk_proto::mesoblk::agent::v1 as agent;
use mesoblk_proto::mesos::v1::task_status::{Reason, Source};
use mesoblk_proto::mesos::v1::{
    AgentId, ExecutorId, ExecutorInfo, FrameworkId, FrameworkInfo, TaskInfo, TaskState,
};
use tokio::sync::mpsc;

use super::{link, Node};
use crate::checkpoint::path_component;
use crate::executor_api::{ExecutorLaunch, ExecutorMessage, MessageSink, Work};
use crate::status::{NewStatus, TaskKey};

/// A launch refused as a whole, before anything is booked.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Refusal {
    /// Why, for every task's TASK_ERROR.
    pub(super) message: String,
    /// The tasks that get TASK_ERROR: the launch's tasks the agent does not have (one it has
    /// keeps its own status stream, which a TASK_ERROR would end), each once.
    pub(super) report: Vec<String>,
}

/// Whether a launch (a task group, or tasks for one executor) must be refused: one of its
/// task ids is already known to the agent, or given twice. Checked for every task before any
/// is booked, so a refused launch leaves nothing behind.
pub(super) fn refuse_launch(ids: &[&str], is_known: impl Fn(&str) -> bool) -> Option<Refusal> {
    let mut seen = std::collections::BTreeSet::new();
    let mut message = None;
    for id in ids {
        if is_known(id) {
            message.get_or_insert_with(|| format!("task {id} is already known to this agent"));
        } else if !seen.insert(*id) {
            message.get_or_insert_with(|| format!("task {id} is given twice"));
        }
    }
    let message = message?;
    let report = seen
        .into_iter()
        .filter(|id| !is_known(id))
        .map(str::to_owned)
        .collect();
    Some(Refusal { message, report })
}

/// Executor messages on their way to the master (the executor API calls the sink with its
/// table locked, so it only queues).
pub(super) struct MessageQueue(pub(super) mpsc::UnboundedSender<ExecutorMessage>);

impl MessageSink for MessageQueue {
    fn message(&self, message: ExecutorMessage) {
        let _ = self.0.send(message);
    }
}

/// Posts executor messages to the master (`/agent/v1/framework_message`); not reliable, as in
/// Mesos: one the master refuses is dropped.
pub(super) async fn forward_messages(
    node: Arc<Node>,
    client: reqwest::Client,
    mut messages: mpsc::UnboundedReceiver<ExecutorMessage>,
) {
    while let Some(message) = messages.recv().await {
        let Some(agent_id) = node.agent_id().map(str::to_owned) else {
            continue;
        };
        let body = agent::ExecutorMessage {
            agent_id: AgentId { value: agent_id },
            framework_id: FrameworkId {
                value: message.framework_id,
            },
            executor_id: ExecutorId {
                value: message.executor_id,
            },
            data: message.data,
        };
        if let Err(e) = link::send(&node, &client, "/agent/v1/framework_message", &body).await {
            tracing::info!(error = %e, "executor message dropped");
        }
    }
}

impl Node {
    /// Hands tasks to a custom executor (RUN_TASK with `TaskInfo.executor`, RUN_TASK_GROUP).
    pub(super) fn launch_on_custom_executor(
        self: &Arc<Self>,
        framework: FrameworkInfo,
        executor: ExecutorInfo,
        work: Work,
    ) {
        let framework_id = framework.id.clone().unwrap_or_default().value;
        let keys: Vec<TaskKey> = work
            .tasks()
            .iter()
            .map(|t| TaskKey::new(framework_id.clone(), t.task_id.value.clone()))
            .collect();
        let ids: Vec<&str> = keys.iter().map(|k| k.task_id.as_str()).collect();
        if let Some(refusal) = refuse_launch(&ids, |id| {
            self.is_known(&TaskKey::new(framework_id.clone(), id))
        }) {
            self.refuse(&framework_id, &work, &refusal);
            return;
        }
        for (i, (task, key)) in work.tasks().iter().zip(&keys).enumerate() {
            if !self.book(&framework, task, key) {
                // `book` failed this task; the others of the launch fail with it (a booked
                // one leaves the books when its terminal update is acknowledged).
                for other in keys.iter().take(i).chain(keys.iter().skip(i + 1)) {
                    self.report(
                        other,
                        NewStatus::new(&other.task_id, TaskState::TaskFailed, Source::Agent)
                            .reason(Reason::ContainerLaunchFailed)
                            .message(format!(
                                "the agent cannot checkpoint task {} of the same launch",
                                key.task_id
                            )),
                    );
                }
                return;
            }
        }
        let node = Arc::clone(self);
        tokio::task::spawn_blocking(move || node.launch_custom(framework, executor, work));
    }

    /// Sends the refusal's TASK_ERROR to each task it names; tasks the agent already has keep
    /// their own updates.
    fn refuse(&self, framework_id: &str, work: &Work, refusal: &Refusal) {
        tracing::warn!(framework = %framework_id, reason = %refusal.message, "launch refused");
        let reason = match work {
            Work::Group(_) => Reason::TaskGroupInvalid,
            Work::Tasks(_) => Reason::TaskInvalid,
        };
        for task_id in &refusal.report {
            let key = TaskKey::new(framework_id, task_id.as_str());
            self.report(
                &key,
                NewStatus::new(task_id, TaskState::TaskError, Source::Agent)
                    .reason(reason)
                    .message(refusal.message.clone()),
            );
        }
    }

    /// The blocking part: every task's disks, then the executor API's launch.
    fn launch_custom(&self, framework: FrameworkInfo, executor: ExecutorInfo, work: Work) {
        let Some(rt) = self.runtime() else {
            return;
        };
        let framework_id = framework.id.clone().unwrap_or_default().value;
        let mut extra_env = Vec::new();
        let mut io_limits = std::collections::BTreeMap::new();
        let mut tasks = Vec::new();
        for task in work.tasks() {
            let key = TaskKey::new(framework_id.clone(), task.task_id.value.clone());
            let mounts = self.custom_mount_dir(&framework, &executor, task);
            match self.attach_task_disks(&framework, task, &mounts) {
                Ok(disks) => {
                    extra_env.extend(disks.env);
                    io_limits.insert(task.task_id.value.clone(), self.io_limits(&disks.devices));
                    // The executor sees each disk's attachment in its resource labels.
                    let mut task = task.clone();
                    if !disks.resources.is_empty() {
                        task.resources = disks.resources;
                    }
                    tasks.push(task);
                }
                Err(message) => {
                    // A group fails as a whole: its other tasks' disks are released by their
                    // own terminal updates.
                    for other in work.tasks() {
                        let other_key =
                            TaskKey::new(framework_id.clone(), other.task_id.value.clone());
                        let why = if other_key == key {
                            message.clone()
                        } else {
                            format!("another task of its group failed: {message}")
                        };
                        self.report(
                            &other_key,
                            NewStatus::new(&other_key.task_id, TaskState::TaskError, Source::Agent)
                                .reason(Reason::TaskInvalid)
                                .message(why),
                        );
                    }
                    return;
                }
            }
        }
        let work = match work {
            Work::Tasks(_) => Work::Tasks(tasks),
            Work::Group(mut group) => {
                group.tasks = tasks;
                Work::Group(group)
            }
        };
        let launch = ExecutorLaunch {
            framework,
            executor,
            work,
            extra_env,
            io_limits,
        };
        // A failed launch is reported by the executor API (terminal updates release the disks).
        if let Err(e) = rt.executors.launch(launch) {
            tracing::info!(error = %e, "custom executor launch failed");
        }
    }

    /// Where a custom executor's task has its MOUNT disks mounted (the executor's sandbox is
    /// made by the executor API later, so they live beside it).
    fn custom_mount_dir(
        &self,
        framework: &FrameworkInfo,
        executor: &ExecutorInfo,
        task: &TaskInfo,
    ) -> PathBuf {
        let framework_id = framework.id.clone().unwrap_or_default().value;
        self.config
            .work_dir
            .join("mounts")
            .join(path_component(&framework_id))
            .join(path_component(&executor.executor_id.value))
            .join(path_component(&task.task_id.value))
    }

    /// KILL_TASK of a task that a custom executor runs; `false` when none does.
    pub(super) fn kill_custom(
        &self,
        key: &TaskKey,
        policy: Option<&mesoblk_proto::mesos::v1::KillPolicy>,
    ) -> bool {
        let Some(rt) = self.runtime() else {
            return false;
        };
        rt.executors
            .kill(&key.framework_id, &key.task_id, policy.cloned())
            .is_ok()
    }

    /// SHUTDOWN_EXECUTOR: a custom executor is shut down; otherwise the executor is a command
    /// task's (whose executor id is its task id) and the task is killed.
    pub(super) fn shutdown_executor(&self, framework_id: &str, executor_id: &str) {
        let Some(rt) = self.runtime() else {
            return;
        };
        if rt
            .executors
            .shutdown_executor(framework_id, executor_id)
            .is_err()
        {
            let key = TaskKey::new(framework_id, executor_id);
            self.kill_task(&key, Some(self.config.executor_shutdown_grace_period));
        }
    }

    /// FRAMEWORK_MESSAGE from the scheduler to one of its executors (dropped, as in Mesos,
    /// when the executor is unknown or not connected).
    pub(super) fn framework_message(&self, message: agent::event::FrameworkMessage) {
        let Some(rt) = self.runtime() else {
            return;
        };
        let sent = rt.executors.framework_message(
            &message.framework_id.value,
            &message.executor_id.value,
            &message.data,
        );
        if let Err(e) = sent {
            tracing::info!(error = %e, "framework message dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_launch_with_a_known_task_is_refused_whole_and_spares_the_known_task() {
        let known = |id: &str| id == "running";
        let refusal = refuse_launch(&["a", "b", "running", "c"], known).expect("refused");
        assert_eq!(
            refusal.message,
            "task running is already known to this agent"
        );
        // Every task of the group but the known one gets TASK_ERROR; the known one keeps its
        // own stream.
        assert_eq!(refusal.report, ["a", "b", "c"]);
    }

    #[test]
    fn a_task_given_twice_refuses_the_launch_and_is_reported_once() {
        let refusal = refuse_launch(&["a", "b", "a"], |_| false).expect("refused");
        assert_eq!(refusal.message, "task a is given twice");
        assert_eq!(refusal.report, ["a", "b"]);
    }

    #[test]
    fn a_launch_of_new_distinct_tasks_goes_ahead() {
        assert_eq!(refuse_launch(&["a", "b"], |id| id == "c"), None);
        assert_eq!(refuse_launch(&[], |_| true), None);
    }
}
