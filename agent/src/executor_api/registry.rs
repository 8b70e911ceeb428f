//! The table of custom executors and their tasks, and what every part of the module does to
//! it: send an event, report a task's end from the agent, take an executor's update, start a
//! shutdown, notice an executor's end.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use mesoblk_proto::mesos::v1::executor::Event;
use mesoblk_proto::mesos::v1::task_status::{Reason, Source};
use mesoblk_proto::mesos::v1::{
    framework_info, ExecutorInfo, FrameworkInfo, TaskInfo, TaskState, TaskStatus,
};
use nix::sys::signal::Signal;
use tokio::sync::mpsc::UnboundedSender;

use super::events;
use super::recovery;
use super::{
    AcknowledgeWhen, ExecutorApiConfig, ExecutorMessage, ExecutorPhase, ExecutorSummary, Sinks,
    Work,
};
use crate::checkpoint::{Checkpointer, RunId};
use crate::executor::process::Leader;
use crate::executor::TaskUpdate;
use crate::executor::{Cgroups, IoLimits};
use crate::status::{is_terminal, status_state, status_uuid, NewStatus, UpdateUuid};

/// An executor's ids.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct ExecutorKey {
    pub(super) framework_id: String,
    pub(super) executor_id: String,
}

impl std::fmt::Display for ExecutorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} of framework {}", self.executor_id, self.framework_id)
    }
}

/// A live event stream to an executor.
#[derive(Debug)]
pub(super) struct Connection {
    pub(super) events: UnboundedSender<Event>,
    pub(super) last_heartbeat: Instant,
}

/// One task of an executor.
#[derive(Debug)]
pub(super) struct TaskEntry {
    pub(super) info: TaskInfo,
    /// TASK_STAGING until its executor reports on it.
    pub(super) state: TaskState,
    /// Sent to the executor (not queued).
    pub(super) launched: bool,
    /// Uuids of the executor's updates the scheduler has not acknowledged yet.
    pub(super) awaiting_scheduler: BTreeSet<UpdateUuid>,
    /// Uuids the executor was sent ACKNOWLEDGED for (a resent one is acknowledged again).
    pub(super) acknowledged: BTreeSet<UpdateUuid>,
    /// Its devices' `io.max` limits (checkpointed with it, so a recovered task has them too).
    pub(super) io: Vec<IoLimits>,
}

impl TaskEntry {
    /// A task in `state` holding the devices `io`, not sent to its executor yet.
    pub(super) fn new(info: TaskInfo, state: TaskState, io: Vec<IoLimits>) -> TaskEntry {
        TaskEntry {
            info,
            state,
            launched: false,
            awaiting_scheduler: BTreeSet::new(),
            acknowledged: BTreeSet::new(),
            io,
        }
    }
}

/// Why the agent ends an executor: what its unfinished tasks become.
#[derive(Clone, Debug)]
pub(super) struct Termination {
    pub(super) state: TaskState,
    pub(super) reason: Reason,
    pub(super) message: String,
}

/// The signals still to send a shut-down executor's group.
#[derive(Debug)]
pub(super) struct Shutdown {
    pub(super) sigterm_at: Instant,
    pub(super) sigkill_at: Instant,
    pub(super) sigterm_sent: bool,
    pub(super) sigkill_sent: bool,
}

/// One executor.
#[derive(Debug)]
pub(super) struct ExecutorEntry {
    pub(super) framework: FrameworkInfo,
    pub(super) info: ExecutorInfo,
    pub(super) run: RunId,
    pub(super) sandbox: PathBuf,
    pub(super) leader: Leader,
    /// Its cgroup, if it has one.
    pub(super) cgroup: Option<PathBuf>,
    pub(super) phase: ExecutorPhase,
    pub(super) connection: Option<Connection>,
    /// Work waiting for the executor to subscribe.
    pub(super) queued: Vec<Work>,
    pub(super) tasks: BTreeMap<String, TaskEntry>,
    /// When it must have (re-)subscribed.
    pub(super) subscribe_by: Option<Instant>,
    pub(super) termination: Option<Termination>,
    pub(super) shutdown: Option<Shutdown>,
}

impl ExecutorEntry {
    /// A run found again after an agent restart, waiting for its executor to re-subscribe by
    /// `deadline`; its tasks come back with their resources and devices' limits, so its group
    /// is resized from them as before the restart.
    pub(super) fn recovered(
        run: recovery::RecoveredExecutor,
        deadline: Instant,
    ) -> (ExecutorKey, ExecutorEntry) {
        let key = ExecutorKey {
            framework_id: run.record.run.framework_id.clone(),
            executor_id: run.record.run.executor_id.clone(),
        };
        let tasks = run
            .tasks
            .into_iter()
            .map(|task| {
                let mut entry = TaskEntry::new(task.info, task.state, task.io);
                entry.launched = true;
                (entry.info.task_id.value.clone(), entry)
            })
            .collect();
        let entry = ExecutorEntry {
            framework: run.framework,
            info: run.executor,
            run: run.record.run,
            sandbox: run.record.sandbox,
            leader: Leader::Adopted {
                pid: run.record.pid,
                start_ticks: run.record.start_ticks,
            },
            cgroup: run.record.cgroup,
            phase: ExecutorPhase::Recovering,
            connection: None,
            queued: Vec::new(),
            tasks,
            subscribe_by: Some(deadline),
            termination: None,
            shutdown: None,
        };
        (key, entry)
    }

    /// Sends `event` on the live stream; false when there is none.
    pub(super) fn send(&mut self, event: Event) -> bool {
        let sent = self
            .connection
            .as_ref()
            .is_some_and(|c| c.events.send(event).is_ok());
        if !sent {
            self.connection = None;
        }
        sent
    }

    /// Sends `work` to the subscribed executor (LAUNCH per task, or LAUNCH_GROUP).
    pub(super) fn deliver(&mut self, work: &Work) {
        for task in work.tasks() {
            if let Some(entry) = self.tasks.get_mut(&task.task_id.value) {
                entry.launched = true;
            }
        }
        match work {
            Work::Tasks(tasks) => {
                for task in tasks {
                    self.send(events::launch(task));
                }
            }
            Work::Group(group) => {
                self.send(events::launch_group(group));
            }
        }
    }

    pub(super) fn summary(&self) -> ExecutorSummary {
        ExecutorSummary {
            framework: self.framework.clone(),
            info: self.info.clone(),
            container_id: self.run.container_id.clone(),
            sandbox: self.sandbox.clone(),
            pid: self.leader.pid(),
            phase: self.phase,
            connected: self
                .connection
                .as_ref()
                .is_some_and(|c| !c.events.is_closed()),
            tasks: self
                .tasks
                .values()
                .map(|t| (t.info.clone(), t.state))
                .collect(),
            queued: self
                .tasks
                .iter()
                .filter(|(_, t)| !t.launched)
                .map(|(id, _)| id.clone())
                .collect(),
        }
    }

    /// The limits its cgroup should have: its own resources plus its live tasks'.
    pub(super) fn limits(&self) -> crate::executor::Limits {
        let live = || self.tasks.values().filter(|t| !is_terminal(t.state));
        let resources = live().flat_map(|t| &t.info.resources);
        super::cgroup::limits(
            self.info.resources.iter().chain(resources),
            live().flat_map(|t| &t.io),
        )
    }

    /// TASK_LOST, or TASK_DROPPED for a PARTITION_AWARE framework.
    pub(super) fn lost_state(&self) -> TaskState {
        lost_state(&self.framework)
    }
}

/// TASK_LOST, or TASK_DROPPED for a PARTITION_AWARE framework.
pub(super) fn lost_state(framework: &FrameworkInfo) -> TaskState {
    let partition_aware = framework
        .capabilities
        .iter()
        .any(|c| c.r#type() == framework_info::capability::Type::PartitionAware);
    if partition_aware {
        TaskState::TaskDropped
    } else {
        TaskState::TaskLost
    }
}

/// The table.
#[derive(Debug, Default)]
pub(super) struct Registry {
    pub(super) executors: BTreeMap<ExecutorKey, ExecutorEntry>,
    pub(super) next_connection: u64,
}

impl Registry {
    /// The executor running `task_id` of `framework_id`.
    pub(super) fn find_task(&self, framework_id: &str, task_id: &str) -> Option<ExecutorKey> {
        self.executors
            .iter()
            .find(|(k, e)| k.framework_id == framework_id && e.tasks.contains_key(task_id))
            .map(|(k, _)| k.clone())
    }
}

/// The shared state behind the API and the HTTP endpoint.
pub(super) struct Inner {
    pub(super) config: ExecutorApiConfig,
    pub(super) sinks: Sinks,
    pub(super) checkpointer: Checkpointer,
    pub(super) registry: Mutex<Registry>,
    /// Executor cgroups, when configured and usable.
    pub(super) cgroups: Option<Cgroups>,
    /// Set by `ExecutorApi::recover`; until then the endpoint answers 503, as Mesos's agent
    /// does while it recovers.
    pub(super) recovered: AtomicBool,
}

impl Inner {
    pub(super) fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reports a task's update generated by the agent itself.
    pub(super) fn agent_update(
        &self,
        framework_id: &str,
        executor_id: &str,
        task_id: &str,
        end: &Termination,
    ) {
        let status = NewStatus::new(task_id, end.state, Source::Agent)
            .reason(end.reason)
            .message(end.message.clone())
            .ids(executor_id, self.config.layout.agent_id())
            .build(SystemTime::now());
        tracing::info!(task = task_id, executor = executor_id, state = ?end.state,
            message = %end.message, "task ended by the agent");
        self.sinks.status.update(TaskUpdate {
            framework_id: framework_id.to_string(),
            status,
        });
    }

    /// Shrinks an executor's group to its remaining tasks when `ended` (one of its tasks) has
    /// just ended; the devices it held lose their `io.max` lines.
    pub(super) fn shrink(&self, entry: &ExecutorEntry, ended: &[IoLimits]) {
        if let (Some(cgroups), Some(path)) = (&self.cgroups, &entry.cgroup) {
            let mut limits = entry.limits();
            super::cgroup::release(&mut limits, ended);
            super::cgroup::update(cgroups, path, &limits);
        }
    }

    /// Takes a status update from an executor (an UPDATE call or a resent one).
    pub(super) fn executor_update(
        &self,
        key: &ExecutorKey,
        entry: &mut ExecutorEntry,
        status: TaskStatus,
    ) {
        let Some(uuid) = status_uuid(&status) else {
            return;
        };
        let mut status = status;
        status.agent_id = self.config.agent_info.id.clone();
        status
            .executor_id
            .get_or_insert_with(|| entry.info.executor_id.clone());
        let task_id = status.task_id.value.clone();
        let state = status_state(&status);
        let mut ended = None;
        if let Some(task) = entry.tasks.get_mut(&task_id) {
            if task.acknowledged.contains(&uuid) {
                // A resent update the executor was told about: it missed the ACKNOWLEDGED.
                entry.send(events::acknowledged(&task_id, &uuid));
                return;
            }
            task.launched = true;
            // A terminal task stays terminal (the status-update store refuses what follows).
            if !is_terminal(task.state) {
                ended = is_terminal(state).then(|| task.io.clone());
                task.state = state;
                task.awaiting_scheduler.insert(uuid);
                let checkpointer = &self.checkpointer;
                if let Err(e) =
                    recovery::write_task_state(checkpointer, &entry.run, &task_id, state)
                {
                    tracing::warn!(task = %task_id, error = %e, "cannot checkpoint the task's state");
                }
            }
        } else {
            tracing::info!(task = %task_id, executor = %key, "update for a task this agent does not know; forwarded");
        }
        if let Some(ended) = ended {
            self.shrink(entry, &ended);
        }
        self.sinks.status.update(TaskUpdate {
            framework_id: key.framework_id.clone(),
            status,
        });
        if self.config.acknowledge == AcknowledgeWhen::Stored {
            // Mesos's `Slave::___statusUpdate`: the sink made the update durable.
            Self::acknowledge_executor(entry, &task_id, uuid);
        }
    }

    /// Sends ACKNOWLEDGED for `uuid` and remembers it.
    pub(super) fn acknowledge_executor(
        entry: &mut ExecutorEntry,
        task_id: &str,
        uuid: UpdateUuid,
    ) -> bool {
        if let Some(task) = entry.tasks.get_mut(task_id) {
            task.acknowledged.insert(uuid);
        }
        entry.send(events::acknowledged(task_id, &uuid))
    }

    /// Forwards an executor's MESSAGE.
    pub(super) fn executor_message(&self, key: &ExecutorKey, data: Vec<u8>) {
        self.sinks.messages.message(ExecutorMessage {
            framework_id: key.framework_id.clone(),
            executor_id: key.executor_id.clone(),
            data,
        });
    }

    /// Starts shutting `entry` down: SHUTDOWN now (if subscribed), SIGTERM after its grace
    /// period, SIGKILL `kill_grace` later. A group not subscribed gets SIGTERM at once.
    pub(super) fn begin_shutdown(
        &self,
        entry: &mut ExecutorEntry,
        termination: Option<Termination>,
    ) {
        if entry.termination.is_none() {
            entry.termination = termination;
        }
        if entry.shutdown.is_some() {
            return;
        }
        let now = Instant::now();
        let grace = if entry.send(events::shutdown()) {
            super::spawn::shutdown_grace(&self.config, &entry.info)
        } else {
            std::time::Duration::ZERO
        };
        entry.phase = ExecutorPhase::Terminating;
        entry.subscribe_by = None;
        entry.shutdown = Some(Shutdown {
            sigterm_at: now + grace,
            sigkill_at: now + grace + self.config.kill_grace,
            sigterm_sent: false,
            sigkill_sent: false,
        });
    }

    /// Signals a shutting-down group whose time is up.
    pub(super) fn escalate(entry: &mut ExecutorEntry, now: Instant) {
        let Some(shutdown) = &mut entry.shutdown else {
            return;
        };
        if !shutdown.sigterm_sent && now >= shutdown.sigterm_at {
            shutdown.sigterm_sent = true;
            entry.leader.signal_group(Signal::SIGTERM);
        }
        if !shutdown.sigkill_sent && now >= shutdown.sigkill_at {
            shutdown.sigkill_sent = true;
            entry.leader.signal_group(Signal::SIGKILL);
        }
    }

    /// Reports the end of an executor's process: every task not terminal ends as its
    /// termination says (TASK_FAILED, REASON_EXECUTOR_TERMINATED by default).
    pub(super) fn executor_ended(&self, key: &ExecutorKey, entry: ExecutorEntry) {
        tracing::info!(executor = %key, pid = entry.leader.pid(), "executor ended");
        let end = entry.termination.clone().unwrap_or(Termination {
            state: TaskState::TaskFailed,
            reason: Reason::ExecutorTerminated,
            message: "Executor terminated".to_string(),
        });
        for (task_id, task) in &entry.tasks {
            if !is_terminal(task.state) {
                self.agent_update(&key.framework_id, &key.executor_id, task_id, &end);
            }
        }
        if let (Some(cgroups), Some(path)) = (&self.cgroups, &entry.cgroup) {
            if let Err(e) = cgroups.remove(path) {
                tracing::warn!(executor = %key, error = %e, "cannot remove the executor's cgroup");
            }
        }
        if let Err(e) = self.checkpointer.remove_run(&entry.run) {
            tracing::warn!(executor = %key, error = %e, "cannot remove the executor's checkpoint");
        }
    }
}
