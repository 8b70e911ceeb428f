//! Tasks: RUN_TASK (book, attach disks, launch), kills, framework shutdowns, acknowledgements,
//! and the end of a task (its disks are released).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mesoblk_proto::mesos::v1::task_status::{Reason, Source};
use mesoblk_proto::mesos::v1::{framework_info, FrameworkInfo, Task, TaskInfo, TaskState};
use nix::unistd::{Gid, Uid, User};
use tokio::sync::mpsc;

use super::{lock, Launching, Node, COMPLETED_TASKS_KEPT};
use crate::checkpoint::RunId;
use crate::executor::{command, DiskGrant, LaunchError, StatusSink as _, TaskLaunch, TaskUpdate};
use crate::executor_api::Work;
use crate::status::{NewStatus, TaskKey};
use crate::storage::{attach_task_shared, TaskDiskRequest, TaskDisks};
use crate::PROVISIONING;

fn booked(framework: &FrameworkInfo, task: &TaskInfo, agent_id: &str) -> Task {
    Task {
        name: task.name.clone(),
        task_id: task.task_id.clone(),
        framework_id: framework.id.clone().unwrap_or_default(),
        executor_id: task.executor.as_ref().map(|e| e.executor_id.clone()),
        agent_id: mesoblk_proto::mesos::v1::AgentId {
            value: agent_id.to_owned(),
        },
        state: TaskState::TaskStaging as i32,
        resources: task.resources.clone(),
        labels: task.labels.clone(),
        discovery: task.discovery.clone(),
        kill_policy: task.kill_policy,
        user: task
            .command
            .as_ref()
            .and_then(|c| c.user.clone())
            .or_else(|| Some(framework.user.clone()).filter(|u| !u.is_empty())),
        ..Default::default()
    }
}

fn partition_aware(framework: Option<&FrameworkInfo>) -> bool {
    framework.is_some_and(|f| {
        f.capabilities
            .iter()
            .any(|c| c.r#type() == framework_info::capability::Type::PartitionAware)
    })
}

impl Node {
    /// Reports a status update the agent itself makes (source AGENT unless said otherwise).
    pub(super) fn report(&self, key: &TaskKey, status: NewStatus) {
        let Some(rt) = self.runtime() else {
            return;
        };
        let status = status
            .ids(&key.task_id, &rt.agent_id)
            .build(SystemTime::now());
        let sink = super::Updates {
            store: Arc::clone(&rt.store),
            wake: Arc::clone(&self.wake_sender),
            ended: self.ended_tx.clone(),
        };
        sink.update(TaskUpdate {
            framework_id: key.framework_id.clone(),
            status,
        });
    }

    /// Books a task so that a re-registration reports it; `false` (with TASK_FAILED sent)
    /// when it cannot be written.
    pub(super) fn book(&self, framework: &FrameworkInfo, task: &TaskInfo, key: &TaskKey) -> bool {
        let Some(rt) = self.runtime() else {
            return false;
        };
        let result = lock(&rt.books).add(framework, booked(framework, task, &rt.agent_id));
        if let Err(e) = result {
            tracing::error!(task = %key, error = %e, "cannot book the task");
            self.report(
                key,
                NewStatus::new(&key.task_id, TaskState::TaskFailed, Source::Agent)
                    .reason(Reason::ContainerLaunchFailed)
                    .message(format!("the agent cannot checkpoint the task: {e}")),
            );
            return false;
        }
        true
    }

    pub(super) fn is_known(&self, key: &TaskKey) -> bool {
        let Some(rt) = self.runtime() else {
            return false;
        };
        lock(&self.launching).contains_key(key)
            || lock(&rt.books).task(key).is_some()
            || rt.executor.task(key).is_some()
    }

    /// RUN_TASK.
    pub(super) fn run_task(self: &Arc<Self>, framework: FrameworkInfo, task: TaskInfo) {
        let Some(framework_id) = framework.id.as_ref().map(|i| i.value.clone()) else {
            tracing::warn!(task = %task.task_id.value, "RUN_TASK without a framework id ignored");
            return;
        };
        let key = TaskKey::new(framework_id, task.task_id.value.clone());
        tracing::debug!(target: PROVISIONING, task = %key.task_id, "RUN_TASK received");
        if self.is_known(&key) {
            tracing::warn!(task = %key, "RUN_TASK for a task this agent already has; ignored");
            return;
        }
        if let Some(executor) = task.executor.clone() {
            self.launch_on_custom_executor(framework, executor, Work::Tasks(vec![task]));
            return;
        }
        if !self.book(&framework, &task, &key) {
            return;
        }
        tracing::debug!(target: PROVISIONING, task = %key.task_id, "task booked");
        lock(&self.launching).insert(key.clone(), Launching::default());
        let node = Arc::clone(self);
        tokio::task::spawn_blocking(move || node.launch_command_task(framework, task, key));
    }

    /// The blocking part of RUN_TASK for a command task: disks, then the launch.
    fn launch_command_task(&self, framework: FrameworkInfo, task: TaskInfo, key: TaskKey) {
        let Some(rt) = self.runtime() else {
            return;
        };
        let container_id = uuid::Uuid::new_v4().to_string();
        let run = RunId {
            framework_id: key.framework_id.clone(),
            executor_id: key.task_id.clone(),
            container_id: container_id.clone(),
        };
        let sandbox = rt.layout.sandbox_dir(&run);
        lock(&self.sandboxes).insert(key.clone(), sandbox.clone());
        tracing::debug!(target: PROVISIONING, task = %key.task_id, "launch started");
        let launch = TaskLaunch {
            framework: framework.clone(),
            task: task.clone(),
            io_limits: Vec::new(),
            extra_env: Vec::new(),
            container_id: Some(container_id),
        };
        // The launcher starts while the devices do; it starts the task once they are live.
        let (gate, disks) = std::sync::mpsc::sync_channel(1);
        let (launched, attached) = std::thread::scope(|scope| {
            let attach = scope.spawn(|| {
                // Owned by this thread: if it ends without sending, the launch stops waiting.
                let gate = gate;
                let attached = self.attach_task_disks(&framework, &task, &sandbox);
                let grant = attached.as_ref().map_err(Clone::clone).map(|d| DiskGrant {
                    env: d.env.clone(),
                    io_limits: self.io_limits(&d.devices),
                });
                if attached.is_ok() {
                    tracing::debug!(target: PROVISIONING, task = %key.task_id, "disks attached");
                }
                // A launch that failed first no longer listens.
                let _ = gate.send(grant);
                attached.is_ok()
            });
            let launched = rt.executor.launch_with_disks(launch, disks);
            (launched, attach.join().unwrap_or(false))
        });
        let failed = match launched {
            Ok(info) => {
                tracing::info!(task = %key, pid = info.pid, "task launched");
                false
            }
            // Not reachable (RUN_TASK checked both); no update is sent for these.
            Err(e @ (LaunchError::AlreadyRunning(_) | LaunchError::NotACommandTask(_))) => {
                tracing::warn!(task = %key, error = %e, "task not launched");
                false
            }
            // The executor sent the terminal update, which frees the disks.
            Err(e) => {
                tracing::info!(task = %key, error = %e.message(), "launch failed");
                true
            }
        };
        if attached && failed {
            // The launch failed while the devices started: the release that followed its
            // terminal update may have run before they were attached.
            if let Err(e) = lock(&self.storage).detach_task(&key.task_id) {
                tracing::warn!(task = %key, error = %e.message(), "cannot release the disks of a failed launch");
            }
        }
        let kill = lock(&self.launching)
            .remove(&key)
            .is_some_and(|l| l.kill_requested);
        if kill {
            self.kill_task(&key, None);
        }
    }

    /// Attaches the task's disks, MOUNT disks under `sandbox`; what the task got, or the
    /// message of the storage error (nothing is left attached then).
    pub(super) fn attach_task_disks(
        &self,
        framework: &FrameworkInfo,
        task: &TaskInfo,
        sandbox: &std::path::Path,
    ) -> Result<TaskDisks, String> {
        let (uid, gid) = task_owner(framework, task, self.config.switch_user);
        std::fs::create_dir_all(sandbox)
            .map_err(|e| format!("cannot create the sandbox {}: {e}", sandbox.display()))?;
        let request = TaskDiskRequest {
            task_id: &task.task_id.value,
            resources: &task.resources,
            uid,
            gid,
            sandbox,
        };
        let disks = attach_task_shared(&self.storage, &request).map_err(|e| e.message())?;
        for device in &disks.devices {
            tracing::info!(task = %task.task_id.value, volume = %device.volume_id, device = %device.block_path.display(), "disk attached");
        }
        Ok(disks)
    }

    /// KILL_TASK (and SHUTDOWN_EXECUTOR of a command task).
    pub(super) fn kill_task(&self, key: &TaskKey, grace: Option<Duration>) {
        let Some(rt) = self.runtime() else {
            return;
        };
        if rt.executor.task(key).is_some() {
            if let Err(e) = rt.executor.kill(key, grace) {
                tracing::info!(task = %key, error = %e, "kill raced with the task's end");
            }
            return;
        }
        if let Some(launching) = lock(&self.launching).get_mut(key) {
            launching.kill_requested = true;
            return;
        }
        let policy = grace.map(|g| mesoblk_proto::mesos::v1::KillPolicy {
            grace_period: Some(mesoblk_proto::mesos::v1::DurationInfo {
                nanoseconds: i64::try_from(g.as_nanos()).unwrap_or(i64::MAX),
            }),
        });
        if self.kill_custom(key, policy.as_ref()) {
            return;
        }
        let books = lock(&rt.books);
        if books.task(key).is_some() {
            // Ended already; its terminal update is on its way.
            return;
        }
        // As Mesos's agent: a task it does not know is lost (dropped, for partition-aware
        // frameworks).
        let state = if partition_aware(books.framework(&key.framework_id)) {
            TaskState::TaskDropped
        } else {
            TaskState::TaskLost
        };
        drop(books);
        tracing::info!(task = %key, "kill of an unknown task");
        self.report(
            key,
            NewStatus::new(&key.task_id, state, Source::Agent)
                .reason(Reason::TaskUnknown)
                .message("Cannot find task on this agent"),
        );
    }

    /// SHUTDOWN_FRAMEWORK: kills every task of the framework.
    pub(super) fn shutdown_framework(&self, framework_id: &str) {
        let Some(rt) = self.runtime() else {
            return;
        };
        tracing::info!(framework = %framework_id, "shutting down the framework's tasks");
        lock(&self.shut_down).insert(framework_id.to_owned());
        // As Mesos's agent: the framework is gone, so are the updates of its ended tasks. A
        // task a custom executor still runs is not ended: it is forgotten with its terminal
        // update, once its executor is shut down.
        let custom = live_custom_tasks(&rt.executors, framework_id);
        let ended: Vec<TaskKey> = lock(&rt.books)
            .tasks()
            .map(|(key, _)| key.clone())
            .filter(|key| key.framework_id == framework_id)
            .collect();
        for key in ended {
            if rt.executor.task(&key).is_none()
                && !custom.contains(&key.task_id)
                && !lock(&self.launching).contains_key(&key)
            {
                self.forget_task(&key);
            }
        }
        rt.executors.shutdown_framework(framework_id);
        let grace = Some(self.config.executor_shutdown_grace_period);
        for run in rt.executor.tasks() {
            if run.key.framework_id == framework_id {
                self.kill_task(&run.key, grace);
            }
        }
        for (key, launching) in lock(&self.launching).iter_mut() {
            if key.framework_id == framework_id {
                launching.kill_requested = true;
            }
        }
    }

    /// SHUTDOWN from the master: every task is killed and the agent forgets its id (it will
    /// register as a new agent), as Mesos's agent does.
    pub(super) fn shutdown_by_master(&self) {
        if let Some(rt) = self.runtime() {
            for run in rt.executor.tasks() {
                self.kill_task(&run.key, Some(self.config.executor_shutdown_grace_period));
            }
            for executor in rt.executors.executors() {
                let framework_id = executor.framework.id.unwrap_or_default().value;
                rt.executors.shutdown_framework(&framework_id);
            }
        }
        let latest = self.config.work_dir.join("meta/slaves/latest");
        if let Err(e) = std::fs::remove_file(&latest) {
            tracing::warn!(error = %e, "cannot remove the agent id checkpoint");
        }
    }

    /// ACKNOWLEDGE: the scheduler has the update; a task whose terminal update is acknowledged
    /// is forgotten.
    pub(super) fn acknowledge(&self, key: &TaskKey, uuid: &[u8]) {
        let Some(rt) = self.runtime() else {
            return;
        };
        let Ok(uuid) = <[u8; 16]>::try_from(uuid) else {
            tracing::warn!(task = %key, "acknowledgement without a 16-byte uuid ignored");
            return;
        };
        // The executor API keeps its own books of the updates its executors sent.
        let _ = rt
            .executors
            .acknowledge(&key.framework_id, &key.task_id, &uuid);
        let acked = lock(&rt.store).acknowledge(key, &uuid);
        tracing::debug!(target: PROVISIONING, task = %key.task_id, "acknowledgement stored");
        self.wake_sender.notify_one();
        match acked {
            Ok(crate::status::Acked::Acked { complete: true }) => self.forget_task(key),
            Ok(_) => {}
            Err(e) => tracing::info!(task = %key, error = %e, "acknowledgement ignored"),
        }
    }

    /// Forgets an ended task: its updates and its books; `/state` lists it as completed.
    fn forget_task(&self, key: &TaskKey) {
        let Some(rt) = self.runtime() else {
            return;
        };
        // Lock order: books, then store.
        let mut books = lock(&rt.books);
        let final_status = {
            let mut store = lock(&rt.store);
            let status = store.stream(key).and_then(|s| s.latest().cloned());
            if let Err(e) = store.forget(key) {
                tracing::warn!(task = %key, error = %e, "cannot forget the task's updates");
            }
            status
        };
        if let Some(mut task) = books.task(key).cloned() {
            if let Some(status) = final_status {
                task.state = status.state;
                task.statuses = vec![status];
            }
            let mut completed = lock(&self.completed);
            if completed.len() == COMPLETED_TASKS_KEPT {
                completed.pop_front();
            }
            completed.push_back(task);
        }
        lock(&self.sandboxes).remove(key);
        if let Err(e) = books.remove(key) {
            tracing::warn!(task = %key, error = %e, "cannot remove the task from the books");
        }
    }

    /// Whether `framework_id` was shut down (its tasks' updates are no longer kept).
    fn is_shut_down(&self, framework_id: &str) -> bool {
        lock(&self.shut_down).contains(framework_id)
    }
}

/// The ids of the framework's tasks that its custom executors run and that have not ended.
fn live_custom_tasks(
    executors: &crate::executor_api::ExecutorApi,
    framework_id: &str,
) -> std::collections::BTreeSet<String> {
    executors
        .executors()
        .into_iter()
        .filter(|e| {
            e.framework
                .id
                .as_ref()
                .is_some_and(|id| id.value == framework_id)
        })
        .flat_map(|e| e.tasks)
        .filter(|(_, state)| !crate::status::is_terminal(*state))
        .map(|(task, _)| task.task_id.value)
        .collect()
}

/// The uid and gid a task runs as (and owns its disks as).
fn task_owner(framework: &FrameworkInfo, task: &TaskInfo, switch_user: bool) -> (u32, u32) {
    let me = (Uid::effective().as_raw(), Gid::effective().as_raw());
    if !switch_user {
        return me;
    }
    command::task_user(framework, task)
        .and_then(|name| User::from_name(name).ok().flatten())
        .map_or(me, |u| (u.uid.as_raw(), u.gid.as_raw()))
}

/// Releases the disks of tasks that ended, and counts the ends.
pub(super) async fn watch_ended(
    node: Arc<Node>,
    mut ended: mpsc::UnboundedReceiver<(TaskKey, TaskState)>,
) {
    while let Some((key, state)) = ended.recv().await {
        node.counters.terminal(state);
        if node.is_shut_down(&key.framework_id) {
            node.forget_task(&key);
        }
        let node = Arc::clone(&node);
        let released = tokio::task::spawn_blocking(move || {
            lock(&node.storage)
                .detach_task(&key.task_id)
                .map_err(|e| (key, e.message()))
        })
        .await;
        match released {
            Ok(Ok(())) => {}
            Ok(Err((key, message))) => {
                tracing::warn!(task = %key, error = %message, "cannot release the task's disks")
            }
            Err(e) => tracing::error!(error = %e, "disk release panicked"),
        }
    }
}
