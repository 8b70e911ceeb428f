//! [`ExecutorApi`]: what the daemon calls (see the module docs), and the monitor task that
//! notices executor exits, registration deadlines, shutdown deadlines and heartbeat times.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use mesoblk_proto::mesos::v1::task_status::Reason;
use mesoblk_proto::mesos::v1::{KillPolicy, TaskInfo, TaskState};
use tokio::task::JoinHandle;

use super::registry::{
    lost_state, ExecutorEntry, ExecutorKey, Inner, Registry, TaskEntry, Termination,
};
use super::{events, recovery, spawn};
use super::{
    AcknowledgeWhen, ApiError, ExecutorApiConfig, ExecutorLaunch, ExecutorPhase, ExecutorSummary,
    LaunchError, Sinks, Work, EXECUTOR_API_PATH,
};
use crate::checkpoint::{CheckpointError, Checkpointer};
use crate::executor::Cgroups;
use crate::status::UpdateUuid;

/// Custom executors and their HTTP API. Dropping it stops watching; executors keep running
/// (a restarted agent finds them with [`ExecutorApi::recover`]).
pub struct ExecutorApi {
    inner: Arc<Inner>,
    monitor: JoinHandle<()>,
}

impl std::fmt::Debug for ExecutorApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecutorApi")
            .field("agent_endpoint", &self.inner.config.agent_endpoint)
            .finish_non_exhaustive()
    }
}

impl Drop for ExecutorApi {
    fn drop(&mut self) {
        self.monitor.abort();
    }
}

impl ExecutorApi {
    /// The API with no executors. Must be called inside a tokio runtime (it spawns the
    /// monitor task).
    pub fn new(config: ExecutorApiConfig, sinks: Sinks) -> ExecutorApi {
        let config_cgroups = config.cgroups.clone();
        let inner = Arc::new(Inner {
            checkpointer: Checkpointer::new(config.layout.clone()),
            config,
            sinks,
            registry: Mutex::new(Registry::default()),
            recovered: AtomicBool::new(false),
            cgroups: probe_cgroups(&config_cgroups),
        });
        let monitor = tokio::spawn(monitor(Arc::downgrade(&inner)));
        ExecutorApi { inner, monitor }
    }

    /// The router serving `POST /api/v1/executor`, to merge into the agent's.
    pub fn routes(&self) -> axum::Router {
        axum::Router::new()
            .route(
                EXECUTOR_API_PATH,
                axum::routing::any(super::http::executor_endpoint),
            )
            .with_state(self.inner.clone())
    }

    /// Launches tasks (or a task group) on their executor, starting it when it does not run
    /// yet; they go out when it subscribes. Blocks while a new executor's process starts.
    pub fn launch(&self, launch: ExecutorLaunch) -> Result<(), LaunchError> {
        let framework_id = launch.framework.id.clone().unwrap_or_default().value;
        let key = ExecutorKey {
            framework_id,
            executor_id: launch.executor.executor_id.value.clone(),
        };
        let tasks = launch.work.tasks().to_vec();
        let lost = lost_state(&launch.framework);
        let result = self.try_launch(&key, launch);
        if let Err(e) = &result {
            if let Some(end) = launch_failure(e, lost) {
                for task in &tasks {
                    let executor_id = &key.executor_id;
                    self.inner.agent_update(
                        &key.framework_id,
                        executor_id,
                        &task.task_id.value,
                        &end,
                    );
                }
            }
        }
        result
    }

    fn try_launch(&self, key: &ExecutorKey, launch: ExecutorLaunch) -> Result<(), LaunchError> {
        check_launch(key, &launch)?;
        let mut registry = self.inner.lock();
        for task in launch.work.tasks() {
            if registry
                .find_task(&key.framework_id, &task.task_id.value)
                .is_some()
            {
                return Err(LaunchError::DuplicateTask(task.task_id.value.clone()));
            }
        }
        if !registry.executors.contains_key(key) {
            // Started under the lock: a second launch for the same executor must find it.
            let tasks = launch.work.tasks().iter().flat_map(|t| &t.resources);
            let limits = super::cgroup::limits(
                launch.executor.resources.iter().chain(tasks),
                launch.io_limits.values().flatten(),
            );
            let started = spawn::start(
                &self.inner.config,
                &self.inner.checkpointer,
                &launch.framework,
                &launch.executor,
                &launch.extra_env,
                self.inner.cgroups.as_ref().map(|c| (c, &limits)),
            )
            .map_err(LaunchError::Start)?;
            let entry = ExecutorEntry {
                framework: launch.framework.clone(),
                info: launch.executor.clone(),
                run: started.run,
                sandbox: started.sandbox,
                leader: started.leader,
                cgroup: started.cgroup,
                phase: ExecutorPhase::Registering,
                connection: None,
                queued: Vec::new(),
                tasks: BTreeMap::new(),
                subscribe_by: Some(Instant::now() + self.inner.config.registration_timeout),
                termination: None,
                shutdown: None,
            };
            registry.executors.insert(key.clone(), entry);
        }
        let entry = registry.executors.get_mut(key).expect("inserted above");
        if entry.phase == ExecutorPhase::Terminating {
            return Err(LaunchError::Terminating(key.to_string()));
        }
        let io = |task: &TaskInfo| {
            let io = launch.io_limits.get(&task.task_id.value);
            io.cloned().unwrap_or_default()
        };
        for task in launch.work.tasks() {
            recovery::write_task(&self.inner.checkpointer, &entry.run, task, &io(task))
                .map_err(LaunchError::Checkpoint)?;
        }
        let subscribed = entry.phase == ExecutorPhase::Running && entry.connection.is_some();
        for task in launch.work.tasks() {
            let task_entry = TaskEntry::new(task.clone(), TaskState::TaskStaging, io(task));
            entry.tasks.insert(task.task_id.value.clone(), task_entry);
        }
        if let (Some(cgroups), Some(path)) = (&self.inner.cgroups, &entry.cgroup) {
            // A new executor's group was made with these tasks; this is for one that runs.
            super::cgroup::update(cgroups, path, &entry.limits());
        }
        if subscribed {
            entry.deliver(&launch.work);
        } else {
            entry.queued.push(launch.work);
        }
        Ok(())
    }

    /// Kills a task: KILL to its executor; a task still queued ends at once (TASK_KILLED,
    /// REASON_TASK_KILLED_DURING_LAUNCH), and an unsubscribed executor left without tasks is
    /// shut down.
    pub fn kill(
        &self,
        framework_id: &str,
        task_id: &str,
        kill_policy: Option<KillPolicy>,
    ) -> Result<(), ApiError> {
        let mut registry = self.inner.lock();
        let unknown = || ApiError::UnknownTask {
            framework_id: framework_id.to_string(),
            task_id: task_id.to_string(),
        };
        let key = registry
            .find_task(framework_id, task_id)
            .ok_or_else(unknown)?;
        let entry = registry.executors.get_mut(&key).ok_or_else(unknown)?;
        let launched = entry.tasks.get(task_id).is_some_and(|t| t.launched);
        if launched {
            if !entry.send(events::kill(task_id, kill_policy)) {
                return Err(ApiError::NotConnected(key.to_string()));
            }
            return Ok(());
        }
        // Mesos kills a whole task group when one of its tasks is killed before launch.
        let mut killed_ids = vec![task_id.to_string()];
        entry.queued.retain_mut(|work| match work {
            Work::Tasks(tasks) => {
                tasks.retain(|t| t.task_id.value != task_id);
                !tasks.is_empty()
            }
            Work::Group(group) => {
                let hit = group.tasks.iter().any(|t| t.task_id.value == task_id);
                if hit {
                    let others = group.tasks.iter().map(|t| t.task_id.value.clone());
                    killed_ids.extend(others.filter(|id| id != task_id));
                }
                !hit
            }
        });
        let killed = Termination {
            state: TaskState::TaskKilled,
            reason: Reason::TaskKilledDuringLaunch,
            message: "Killed before delivery to the executor".to_string(),
        };
        let mut released = Vec::new();
        for id in killed_ids {
            released.extend(entry.tasks.remove(&id).into_iter().flat_map(|t| t.io));
            let checkpointer = &self.inner.checkpointer;
            if let Err(e) = recovery::write_task_state(checkpointer, &entry.run, &id, killed.state)
            {
                tracing::warn!(task = %id, error = %e, "cannot checkpoint the killed task");
            }
            self.inner
                .agent_update(framework_id, &key.executor_id, &id, &killed);
        }
        if entry.tasks.is_empty() && entry.phase == ExecutorPhase::Registering {
            self.inner.begin_shutdown(entry, None);
        } else {
            self.inner.shrink(entry, &released);
        }
        Ok(())
    }

    /// The scheduler acknowledged the update `uuid` of `task_id` (a terminal one ends the
    /// task's bookkeeping). With [`AcknowledgeWhen::SchedulerAcknowledged`], ACKNOWLEDGED goes
    /// to the executor now, when the update came from it. `Ok(true)` when the event went out.
    pub fn acknowledge(
        &self,
        framework_id: &str,
        task_id: &str,
        uuid: &[u8],
    ) -> Result<bool, ApiError> {
        let uuid: UpdateUuid = uuid.try_into().map_err(|_| ApiError::BadUuid(uuid.len()))?;
        let mut registry = self.inner.lock();
        let unknown = || ApiError::UnknownTask {
            framework_id: framework_id.to_string(),
            task_id: task_id.to_string(),
        };
        let key = registry
            .find_task(framework_id, task_id)
            .ok_or_else(unknown)?;
        let entry = registry.executors.get_mut(&key).ok_or_else(unknown)?;
        let task = entry.tasks.get_mut(task_id).ok_or_else(unknown)?;
        if !task.awaiting_scheduler.remove(&uuid) {
            // An update the agent generated, or one acknowledged before.
            return Ok(false);
        }
        let done = crate::status::is_terminal(task.state) && task.awaiting_scheduler.is_empty();
        let sent = self.inner.config.acknowledge == AcknowledgeWhen::SchedulerAcknowledged
            && Inner::acknowledge_executor(entry, task_id, uuid);
        if done {
            entry.tasks.remove(task_id);
        }
        Ok(sent)
    }

    /// Sends a scheduler's message to an executor (MESSAGE).
    pub fn framework_message(
        &self,
        framework_id: &str,
        executor_id: &str,
        data: &[u8],
    ) -> Result<(), ApiError> {
        let key = ExecutorKey {
            framework_id: framework_id.to_string(),
            executor_id: executor_id.to_string(),
        };
        let mut registry = self.inner.lock();
        let entry = registry
            .executors
            .get_mut(&key)
            .ok_or_else(|| ApiError::UnknownExecutor {
                framework_id: key.framework_id.clone(),
                executor_id: key.executor_id.clone(),
            })?;
        if entry.phase != ExecutorPhase::Running || !entry.send(events::message(data)) {
            return Err(ApiError::NotConnected(key.to_string()));
        }
        Ok(())
    }

    /// Shuts an executor down (SHUTDOWN, then its process group is signalled after its grace
    /// period). Its unfinished tasks fail when it ends.
    pub fn shutdown_executor(&self, framework_id: &str, executor_id: &str) -> Result<(), ApiError> {
        let key = ExecutorKey {
            framework_id: framework_id.to_string(),
            executor_id: executor_id.to_string(),
        };
        let mut registry = self.inner.lock();
        let entry = registry
            .executors
            .get_mut(&key)
            .ok_or_else(|| ApiError::UnknownExecutor {
                framework_id: key.framework_id.clone(),
                executor_id: key.executor_id.clone(),
            })?;
        tracing::info!(executor = %key, "shutting the executor down");
        self.inner.begin_shutdown(entry, None);
        Ok(())
    }

    /// Shuts down every executor of a framework.
    pub fn shutdown_framework(&self, framework_id: &str) {
        let mut registry = self.inner.lock();
        for (key, entry) in registry.executors.iter_mut() {
            if key.framework_id == framework_id {
                self.inner.begin_shutdown(entry, None);
            }
        }
    }

    /// Every executor, sorted by framework and executor id.
    pub fn executors(&self) -> Vec<ExecutorSummary> {
        let registry = self.inner.lock();
        registry
            .executors
            .values()
            .map(ExecutorEntry::summary)
            .collect()
    }

    /// Takes back the executors this module checkpointed before an agent restart; call it once
    /// at start (the endpoint answers 503 until then). Those still running wait for their
    /// re-subscription (`reregistration_timeout`); those gone are reported by the monitor like
    /// any executor that ended. Returns how many were found.
    pub fn recover(&self) -> Result<usize, CheckpointError> {
        let found = recovery::scan(&self.inner.checkpointer)?;
        let count = found.len();
        let deadline = Instant::now() + self.inner.config.reregistration_timeout;
        let mut registry = self.inner.lock();
        for run in found {
            let (key, entry) = ExecutorEntry::recovered(run, deadline);
            tracing::info!(executor = %key, pid = entry.leader.pid(), "recovering executor");
            // A second call finds the same runs: the entries already there are the live ones.
            registry.executors.entry(key).or_insert(entry);
        }
        self.inner.recovered.store(true, Ordering::SeqCst);
        Ok(count)
    }
}

/// The executor cgroups, when configured and usable (an unusable hierarchy is logged once and
/// executors run without limits, as command tasks do).
fn probe_cgroups(config: &Option<super::CgroupConfig>) -> Option<Cgroups> {
    match Cgroups::probe(config.clone()?) {
        Ok(cgroups) => {
            tracing::info!(base = %cgroups.base().display(), "executor cgroups enabled");
            Some(cgroups)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cgroup v2 unavailable: executors run without resource limits");
            None
        }
    }
}

/// Checks a launch before anything is started.
fn check_launch(key: &ExecutorKey, launch: &ExecutorLaunch) -> Result<(), LaunchError> {
    if key.framework_id.is_empty() {
        return Err(LaunchError::Invalid("the FrameworkInfo has no id".into()));
    }
    if key.executor_id.is_empty() {
        return Err(LaunchError::Invalid(
            "the ExecutorInfo has no executor_id".into(),
        ));
    }
    let tasks = launch.work.tasks();
    if tasks.is_empty() {
        return Err(LaunchError::Invalid("no tasks to launch".into()));
    }
    let mut ids = BTreeSet::new();
    for task in tasks {
        if task.task_id.value.is_empty() || !ids.insert(task.task_id.value.as_str()) {
            return Err(LaunchError::Invalid(format!(
                "task id {:?} is empty or repeated",
                task.task_id.value
            )));
        }
    }
    spawn::check(&launch.executor).map_err(LaunchError::Invalid)
}

/// The terminal update a failed launch gives each of its tasks.
fn launch_failure(e: &LaunchError, lost: TaskState) -> Option<Termination> {
    let (state, reason) = match e {
        LaunchError::Invalid(_) => (TaskState::TaskError, Reason::TaskInvalid),
        LaunchError::DuplicateTask(_) => return None,
        LaunchError::Terminating(_) => (lost, Reason::ExecutorTerminated),
        LaunchError::Start(_) | LaunchError::Checkpoint(_) => {
            (TaskState::TaskFailed, Reason::ContainerLaunchFailed)
        }
    };
    Some(Termination {
        state,
        reason,
        message: e.to_string(),
    })
}

/// Why an executor that did not (re-)subscribe in time is killed.
fn missed_subscription(config: &ExecutorApiConfig, phase: ExecutorPhase) -> Termination {
    let (reason, what, limit) = if phase == ExecutorPhase::Recovering {
        (
            Reason::ExecutorReregistrationTimeout,
            "re-register",
            config.reregistration_timeout,
        )
    } else {
        (
            Reason::ExecutorRegistrationTimeout,
            "register",
            config.registration_timeout,
        )
    };
    Termination {
        state: TaskState::TaskFailed,
        reason,
        message: format!(
            "Executor did not {what} within {}",
            crate::executor::env::stout_duration(limit)
        ),
    }
}

/// The monitor: every poll interval, until the API is dropped.
async fn monitor(inner: Weak<Inner>) {
    let period = match inner.upgrade() {
        Some(inner) => inner.config.poll_interval,
        None => return,
    };
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        tick(&inner);
    }
}

/// Ends what ended, enforces deadlines, sends heartbeats.
fn tick(inner: &Inner) {
    let now = Instant::now();
    let mut registry = inner.lock();
    let keys: Vec<ExecutorKey> = registry.executors.keys().cloned().collect();
    for key in keys {
        let entry = registry.executors.get_mut(&key).expect("listed just now");
        if entry.leader.has_exited() {
            let entry = registry.executors.remove(&key).expect("listed just now");
            inner.executor_ended(&key, entry);
            continue;
        }
        if entry.subscribe_by.is_some_and(|by| now >= by) {
            let termination = missed_subscription(&inner.config, entry.phase);
            tracing::warn!(executor = %key, message = %termination.message, "terminating the executor");
            inner.begin_shutdown(entry, Some(termination));
        }
        Inner::escalate(entry, now);
        if let Some(conn) = &mut entry.connection {
            if now.duration_since(conn.last_heartbeat) >= inner.config.heartbeat_interval {
                conn.last_heartbeat = now;
                entry.send(events::heartbeat());
            }
        }
    }
}
