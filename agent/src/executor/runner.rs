//! [`CommandExecutor`]: launches command tasks, kills them, watches them end, and finds them
//! again after an agent restart. See the module docs of `crate::executor` for the whole story.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use mesoblk_proto::mesos::v1::task_status::{Reason, Source};
use mesoblk_proto::mesos::v1::{framework_info, FrameworkInfo, TaskInfo, TaskState, TaskStatus};
use nix::sys::signal::Signal;
use nix::unistd::{Gid, Uid, User};
use thiserror::Error;

use super::cgroup::{CgroupConfig, CgroupError, Cgroups, IoLimits, Limits};
use super::command;
use super::env::{inherited_base, merge, MesosEnv};
use super::launcher::{LauncherArgs, TaskExit};
use super::process::{self, is_alive, Leader, ReleaseError};
use crate::checkpoint::{
    unix_ms_now, CheckpointError, CheckpointedRun, Checkpointer, Layout, RunId, RunPhase,
    RunRecord, RUN_RECORD_FORMAT,
};
use crate::status::{NewStatus, StatusUpdateStore, StoreError, TaskKey, TaskLifecycle};
use crate::PROVISIONING;

/// A status update from the executor.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskUpdate {
    /// The task's framework.
    pub framework_id: String,
    /// The update (with uuid, source, timestamp, executor and agent ids).
    pub status: TaskStatus,
}

/// Where the executor's status updates go.
///
/// Updates of one task arrive in order. `update` should make the update durable before it
/// returns (the executor moves on assuming it is). After an agent restart the executor may
/// report a terminal update again (it cannot know whether the first one was stored before the
/// crash); the status-update store refuses the second one, which is the intended outcome.
/// `update` is called with the executor's task table locked: it must not call back into the
/// executor.
pub trait StatusSink: Send + Sync {
    /// Takes one update.
    fn update(&self, update: TaskUpdate);
}

impl StatusSink for std::sync::mpsc::Sender<TaskUpdate> {
    fn update(&self, update: TaskUpdate) {
        let _ = self.send(update);
    }
}

impl StatusSink for Mutex<StatusUpdateStore> {
    fn update(&self, update: TaskUpdate) {
        let mut store = self.lock().unwrap_or_else(|p| p.into_inner());
        match store.add(&update.framework_id, update.status) {
            Ok(_) => {}
            Err(StoreError::Refused(e)) => tracing::info!(error = %e, "status update not stored"),
            Err(e) => tracing::error!(error = %e, "cannot store a status update"),
        }
    }
}

/// How the executor runs tasks.
#[derive(Clone, Debug)]
pub struct ExecutorConfig {
    /// Where sandboxes and checkpoints go.
    pub layout: Layout,
    /// The `mesoblk-launcher` binary.
    pub launcher: PathBuf,
    /// `MESOS_AGENT_ENDPOINT`: the agent's `ip:port`.
    pub agent_endpoint: String,
    /// The kill grace period when neither the kill nor the task names one (Mesos: 3 s).
    pub kill_grace: Duration,
    /// `MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD` unless the ExecutorInfo sets one (Mesos: 5 s).
    pub shutdown_grace: Duration,
    /// Run tasks as their user (Mesos's `--switch_user`); needs root to switch.
    pub switch_user: bool,
    /// Task cgroups; `None` runs without (and so does an unusable hierarchy, logged once).
    pub cgroups: Option<CgroupConfig>,
    /// How often running tasks are checked (exit, kill escalation).
    pub poll_interval: Duration,
    /// How long a launcher may take to start its task.
    pub launch_timeout: Duration,
    /// The environment every task starts from; `None`: the agent's own, without `MESOS_*` and
    /// `LIBPROCESS_*` (Mesos's default).
    pub base_env: Option<Vec<(String, String)>>,
}

impl ExecutorConfig {
    /// Mesos's defaults, with cgroups at `/sys/fs/cgroup/mesoblk`.
    pub fn new(layout: Layout, launcher: impl Into<PathBuf>) -> ExecutorConfig {
        ExecutorConfig {
            layout,
            launcher: launcher.into(),
            agent_endpoint: "127.0.0.1:5051".to_string(),
            kill_grace: Duration::from_secs(3),
            shutdown_grace: Duration::from_secs(5),
            switch_user: true,
            cgroups: Some(CgroupConfig::default()),
            poll_interval: Duration::from_millis(100),
            launch_timeout: Duration::from_secs(30),
            base_env: None,
        }
    }
}

/// `mesoblk-launcher` next to the running binary (where `cargo build` and packages put it).
pub fn default_launcher() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("mesoblk-launcher")))
        .unwrap_or_else(|| PathBuf::from("mesoblk-launcher"))
}

/// One task to launch.
#[derive(Clone, Debug, Default)]
pub struct TaskLaunch {
    /// Its framework (with its id).
    pub framework: FrameworkInfo,
    /// The task (with a `command` and no `executor`).
    pub task: TaskInfo,
    /// Variables the agent adds (the task's block device, ...); the task's own win.
    pub extra_env: Vec<(String, String)>,
    /// Block I/O limits on the task's devices (`io.max`), one entry per limited device.
    pub io_limits: Vec<IoLimits>,
    /// The run's container id (a fresh UUID when `None`): the agent chooses it when it must
    /// know the sandbox before the launch, to mount the task's disks in it.
    pub container_id: Option<String>,
}

/// What the agent's storage gave a task, once its devices are live: sent to a launch started
/// with [`CommandExecutor::launch_with_disks`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DiskGrant {
    /// Variables naming the task's devices (the task's own variables win).
    pub env: Vec<(String, String)>,
    /// Block I/O limits on the devices (`io.max`).
    pub io_limits: Vec<IoLimits>,
}

/// Where a launch waits for its task's disks: `Ok` once they are attached, `Err` with the
/// reason (the task gets TASK_ERROR). A dropped sender counts as a failure.
pub type DiskGate = std::sync::mpsc::Receiver<Result<DiskGrant, String>>;

/// Why a launch failed. Unless said otherwise, the task's terminal update was already sent.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LaunchError {
    /// The task is malformed (TASK_ERROR, REASON_TASK_INVALID).
    #[error("invalid task: {0}")]
    InvalidTask(String),
    /// The task runs already (no update: the running task's own updates stand).
    #[error("{0} is already running on this agent")]
    AlreadyRunning(TaskKey),
    /// The task names a custom executor (no update: not a command task).
    #[error("task {0} has its own executor; the command executor runs only command tasks")]
    NotACommandTask(String),
    /// The task's user does not exist (TASK_FAILED, REASON_CONTAINER_LAUNCH_FAILED).
    #[error("user {user:?} does not exist on this agent")]
    UnknownUser {
        /// The user.
        user: String,
    },
    /// The agent cannot switch to the task's user (TASK_FAILED).
    #[error(
        "cannot run the task as user {user:?}: the agent runs as uid {uid}, not root (turn \
         off user switching to run tasks as the agent's user)"
    )]
    CannotSwitchUser {
        /// The user.
        user: String,
        /// The agent's uid.
        uid: u32,
    },
    /// The sandbox could not be made (TASK_FAILED).
    #[error("cannot prepare the sandbox {path}")]
    Sandbox {
        /// The sandbox.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The task's cgroup could not be made (TASK_FAILED).
    #[error("cannot set up the task's cgroup")]
    Cgroup(#[source] CgroupError),
    /// The task could not be checkpointed (TASK_FAILED).
    #[error("cannot checkpoint the task")]
    Checkpoint(#[source] CheckpointError),
    /// The launcher could not be started (TASK_FAILED).
    #[error("cannot start the launcher {path}")]
    Launcher {
        /// The launcher binary.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The command could not be started (TASK_FAILED from the executor,
    /// REASON_COMMAND_EXECUTOR_FAILED).
    #[error("{0}")]
    Command(String),
    /// The task's disks could not be attached (TASK_ERROR, REASON_TASK_INVALID, as the agent
    /// reports any refused disk); the launcher was torn down.
    #[error("{0}")]
    Disks(String),
}

impl LaunchError {
    /// The terminal state, reason and source reported for this error; `None` when no update is
    /// sent.
    pub fn terminal(&self) -> Option<(TaskState, Reason, Source)> {
        match self {
            LaunchError::AlreadyRunning(_) | LaunchError::NotACommandTask(_) => None,
            LaunchError::InvalidTask(_) | LaunchError::Disks(_) => {
                Some((TaskState::TaskError, Reason::TaskInvalid, Source::Agent))
            }
            LaunchError::Command(_) => Some((
                TaskState::TaskFailed,
                Reason::CommandExecutorFailed,
                Source::Executor,
            )),
            _ => Some((
                TaskState::TaskFailed,
                Reason::ContainerLaunchFailed,
                Source::Agent,
            )),
        }
    }

    /// The message with its causes, on one line.
    pub fn message(&self) -> String {
        let mut message = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(e) = source {
            message.push_str(": ");
            message.push_str(&e.to_string());
            source = e.source();
        }
        message
    }
}

/// Why a kill was refused.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum KillError {
    /// No running task by that key (never launched here, or already ended).
    #[error("{0} is not running on this agent")]
    UnknownTask(TaskKey),
}

/// The executor could not start or recover.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ExecutorError {
    /// The checkpoints could not be read.
    #[error("cannot read the executor checkpoints")]
    Checkpoint(#[from] CheckpointError),
    /// The watcher thread could not be started.
    #[error("cannot start the task watcher thread")]
    Thread(#[source] std::io::Error),
}

/// A running task, as [`CommandExecutor::tasks`] shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct RunInfo {
    /// The task.
    pub key: TaskKey,
    /// Its run.
    pub run: RunId,
    /// The launcher's pid (the process group's id).
    pub pid: i32,
    /// The sandbox.
    pub sandbox: PathBuf,
    /// The cgroup, if any.
    pub cgroup: Option<PathBuf>,
    /// The task's state.
    pub state: TaskState,
}

/// What [`CommandExecutor::recover`] found.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Tasks whose process group still runs, now watched again.
    pub reattached: Vec<TaskKey>,
    /// Tasks that ended while the agent was away (their terminal update was sent).
    pub ended: Vec<TaskKey>,
    /// Checkpoints that could not be read (left on disk).
    pub unreadable: Vec<String>,
}

/// A launch's wait for its disks, with the names of the variables the task sets itself.
struct Gate {
    receiver: DiskGate,
    task_env: Vec<String>,
}

#[derive(Debug)]
struct Kill {
    started: Instant,
    deadline: Instant,
    escalated: bool,
}

#[derive(Debug)]
struct Entry {
    record: RunRecord,
    leader: Leader,
    lifecycle: TaskLifecycle,
    task_kill_grace: Duration,
    kill: Option<Kill>,
}

struct Inner {
    config: ExecutorConfig,
    checkpointer: Checkpointer,
    cgroups: Option<Cgroups>,
    sink: Arc<dyn StatusSink>,
    tasks: Mutex<BTreeMap<TaskKey, Entry>>,
    stop: Mutex<bool>,
    wake: Condvar,
}

/// The built-in command executor of one agent.
pub struct CommandExecutor {
    inner: Arc<Inner>,
    watcher: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for CommandExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandExecutor")
            .field("layout", &self.inner.config.layout)
            .field("cgroups", &self.inner.cgroups.as_ref().map(Cgroups::base))
            .finish_non_exhaustive()
    }
}

impl CommandExecutor {
    /// An executor with no tasks; probes cgroups (logging once when they are unusable) and
    /// starts the watcher thread.
    pub fn new(
        config: ExecutorConfig,
        sink: Arc<dyn StatusSink>,
    ) -> Result<CommandExecutor, ExecutorError> {
        assert!(!config.poll_interval.is_zero());
        let cgroups = config.cgroups.clone().and_then(|c| match Cgroups::probe(c) {
            Ok(cg) => {
                tracing::info!(base = %cg.base().display(), controllers = ?cg.controllers(), "task cgroups enabled");
                Some(cg)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cgroup v2 unavailable: tasks run without resource limits");
                None
            }
        });
        let inner = Arc::new(Inner {
            checkpointer: Checkpointer::new(config.layout.clone()),
            config,
            cgroups,
            sink,
            tasks: Mutex::new(BTreeMap::new()),
            stop: Mutex::new(false),
            wake: Condvar::new(),
        });
        let watcher_inner = Arc::clone(&inner);
        let watcher = std::thread::Builder::new()
            .name("task-watcher".into())
            .spawn(move || watcher_inner.watch())
            .map_err(ExecutorError::Thread)?;
        Ok(CommandExecutor {
            inner,
            watcher: Some(watcher),
        })
    }

    /// An executor that takes over the tasks checkpointed under `config.layout` by an earlier
    /// agent process: live process groups are watched again (and a kill in progress goes on),
    /// runs whose launcher is gone get their terminal update now.
    pub fn recover(
        config: ExecutorConfig,
        sink: Arc<dyn StatusSink>,
    ) -> Result<(CommandExecutor, Recovery), ExecutorError> {
        let executor = CommandExecutor::new(config, sink)?;
        let scan = executor.inner.checkpointer.scan()?;
        let mut recovery = Recovery {
            unreadable: scan.unreadable.iter().map(|e| e.to_string()).collect(),
            ..Recovery::default()
        };
        for run in scan.runs {
            executor.inner.adopt(run, &mut recovery);
        }
        // Report what ended while the agent was away before returning.
        executor.inner.tick();
        Ok((executor, recovery))
    }

    /// Whether task cgroups are in use.
    pub fn cgroups(&self) -> Option<&Cgroups> {
        self.inner.cgroups.as_ref()
    }

    /// Launches a command task: TASK_STARTING and TASK_RUNNING on success, the terminal update
    /// of [`LaunchError::terminal`] on failure, with nothing left running.
    pub fn launch(&self, launch: TaskLaunch) -> Result<RunInfo, LaunchError> {
        self.launch_gated(launch, None)
    }

    /// [`CommandExecutor::launch`] while the task's disks are still being attached: the
    /// launcher is started, checkpointed and put in its cgroup, TASK_STARTING is sent, then the
    /// launch waits on `disks` and lets the launcher start the task with the disks' variables
    /// and `io.max` limits added. If the disks fail, the launcher is torn down, nothing is left
    /// and the task gets TASK_ERROR with the reason. `launch.extra_env` and `launch.io_limits`
    /// still apply (known before the launch).
    pub fn launch_with_disks(
        &self,
        launch: TaskLaunch,
        disks: DiskGate,
    ) -> Result<RunInfo, LaunchError> {
        self.launch_gated(launch, Some(disks))
    }

    fn launch_gated(
        &self,
        launch: TaskLaunch,
        disks: Option<DiskGate>,
    ) -> Result<RunInfo, LaunchError> {
        let framework_id = launch.framework.id.as_ref().map(|i| i.value.clone());
        let task_id = launch.task.task_id.value.clone();
        let Some(framework_id) = framework_id.filter(|f| !f.is_empty()) else {
            let e = LaunchError::InvalidTask("the framework has no id".into());
            self.inner.report_failure("", &task_id, &e);
            return Err(e);
        };
        let key = TaskKey::new(framework_id.clone(), task_id.clone());
        if self.inner.lock().contains_key(&key) {
            return Err(LaunchError::AlreadyRunning(key));
        }
        if launch.task.executor.is_some() {
            return Err(LaunchError::NotACommandTask(task_id));
        }
        let result = self.inner.launch(key, &launch, disks);
        if let Err(e) = &result {
            self.inner.report_failure(&framework_id, &task_id, e);
        }
        result
    }

    /// Kills a task: TASK_KILLING (when the framework accepts it), SIGTERM to its process group,
    /// SIGKILL after `grace` (else the task's kill policy, else the configured default), then
    /// TASK_KILLED when it is gone. A second kill may shorten the grace period.
    pub fn kill(&self, key: &TaskKey, grace: Option<Duration>) -> Result<(), KillError> {
        self.inner.kill(key, grace)
    }

    /// The running tasks.
    pub fn tasks(&self) -> Vec<RunInfo> {
        self.inner
            .lock()
            .iter()
            .map(|(key, e)| run_info(key, e))
            .collect()
    }

    /// One running task.
    pub fn task(&self, key: &TaskKey) -> Option<RunInfo> {
        self.inner.lock().get(key).map(|e| run_info(key, e))
    }
}

impl Drop for CommandExecutor {
    /// Stops watching; the tasks keep running (a new executor recovers them).
    fn drop(&mut self) {
        *self.inner.stop.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.inner.wake.notify_all();
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
    }
}

fn run_info(key: &TaskKey, e: &Entry) -> RunInfo {
    RunInfo {
        key: key.clone(),
        run: e.record.run.clone(),
        pid: e.leader.pid(),
        sandbox: e.record.sandbox.clone(),
        cgroup: e.record.cgroup.clone(),
        state: e.lifecycle.state(),
    }
}

fn killing_state(framework: &FrameworkInfo) -> bool {
    framework
        .capabilities
        .iter()
        .any(|c| c.r#type() == framework_info::capability::Type::TaskKillingState)
}

/// The task's user, when the launcher must switch to it.
pub(crate) fn resolve_user(user: Option<&str>, switch: bool) -> Result<Option<User>, LaunchError> {
    let Some(name) = user.filter(|_| switch) else {
        return Ok(None);
    };
    let found = User::from_name(name).ok().flatten();
    let user = found.ok_or_else(|| LaunchError::UnknownUser {
        user: name.to_string(),
    })?;
    let me = Uid::effective();
    if me.is_root() {
        Ok(Some(user))
    } else if user.uid == me {
        Ok(None)
    } else {
        Err(LaunchError::CannotSwitchUser {
            user: name.to_string(),
            uid: me.as_raw(),
        })
    }
}

/// Creates the sandbox and its `stdout` and `stderr`, owned by the task's user.
pub(crate) fn make_sandbox(
    path: &Path,
    owner: Option<(Uid, Gid)>,
) -> std::io::Result<std::fs::File> {
    std::fs::create_dir_all(path)?;
    let mut stderr = None;
    for name in ["stdout", "stderr"] {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o644)
            .open(path.join(name))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&file, Some(uid.as_raw()), Some(gid.as_raw()))?;
        }
        stderr = Some(file);
    }
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid.as_raw()), Some(gid.as_raw()))?;
    }
    Ok(stderr.expect("the loop opened stderr last"))
}

/// How a task's end is reported: its terminal state, reason, source and message (Mesos's
/// command executor's words: "Command exited with status 3").
pub fn end_status(
    exit: TaskExit,
    killed: bool,
    escalated: bool,
) -> (TaskState, Option<Reason>, Source, String) {
    let failed_or_killed = if killed {
        TaskState::TaskKilled
    } else {
        TaskState::TaskFailed
    };
    match exit {
        TaskExit::Exited(code) => {
            let state = if killed {
                TaskState::TaskKilled
            } else if code == 0 {
                TaskState::TaskFinished
            } else {
                TaskState::TaskFailed
            };
            let message = format!("Command exited with status {code}");
            (state, None, Source::Executor, message)
        }
        TaskExit::Signaled { signal, core } => {
            let core = if core { " (core dumped)" } else { "" };
            let message = format!(
                "Command terminated with signal {}{core}",
                signal_name(signal)
            );
            (failed_or_killed, None, Source::Executor, message)
        }
        TaskExit::Started { .. } | TaskExit::NotStarted if killed => {
            let message = if escalated {
                format!(
                    "Command terminated with signal {}",
                    signal_name(Signal::SIGKILL as i32)
                )
            } else {
                "Command killed".to_string()
            };
            (TaskState::TaskKilled, None, Source::Executor, message)
        }
        TaskExit::Started { .. } => (
            TaskState::TaskFailed,
            Some(Reason::ExecutorTerminated),
            Source::Agent,
            "Abnormal executor termination: the launcher ended without recording the command's \
             exit status"
                .to_string(),
        ),
        TaskExit::NotStarted => (
            TaskState::TaskFailed,
            Some(Reason::AgentRestarted),
            Source::Agent,
            "Abnormal executor termination: the agent restarted while launching the task, which \
             was never started"
                .to_string(),
        ),
    }
}

/// A signal's description as `strsignal(3)` gives it on glibc, for messages.
pub fn signal_name(signal: i32) -> String {
    let known = match Signal::try_from(signal) {
        Ok(Signal::SIGHUP) => "Hangup",
        Ok(Signal::SIGINT) => "Interrupt",
        Ok(Signal::SIGQUIT) => "Quit",
        Ok(Signal::SIGILL) => "Illegal instruction",
        Ok(Signal::SIGTRAP) => "Trace/breakpoint trap",
        Ok(Signal::SIGABRT) => "Aborted",
        Ok(Signal::SIGBUS) => "Bus error",
        Ok(Signal::SIGFPE) => "Floating point exception",
        Ok(Signal::SIGKILL) => "Killed",
        Ok(Signal::SIGUSR1) => "User defined signal 1",
        Ok(Signal::SIGSEGV) => "Segmentation fault",
        Ok(Signal::SIGUSR2) => "User defined signal 2",
        Ok(Signal::SIGPIPE) => "Broken pipe",
        Ok(Signal::SIGALRM) => "Alarm clock",
        Ok(Signal::SIGTERM) => "Terminated",
        Ok(Signal::SIGXCPU) => "CPU time limit exceeded",
        Ok(Signal::SIGXFSZ) => "File size limit exceeded",
        _ => return format!("signal {signal}"),
    };
    known.to_string()
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<TaskKey, Entry>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends an update of `task_id` if the task's state machine allows it.
    fn emit(
        &self,
        framework_id: &str,
        record_task: &str,
        lifecycle: &mut TaskLifecycle,
        status: NewStatus,
    ) {
        debug_assert_eq!(status.task_id, record_task);
        if let Err(e) = lifecycle.transition(status.state) {
            tracing::error!(task = record_task, error = %e, "status update not sent");
            return;
        }
        let status = status.build(SystemTime::now());
        self.sink.update(TaskUpdate {
            framework_id: framework_id.to_string(),
            status,
        });
    }

    fn new_status(&self, task_id: &str, state: TaskState, source: Source) -> NewStatus {
        // A command task's executor id is its task id.
        NewStatus::new(task_id, state, source).ids(task_id, self.config.layout.agent_id())
    }

    fn report_failure(&self, framework_id: &str, task_id: &str, e: &LaunchError) {
        let Some((state, reason, source)) = e.terminal() else {
            return;
        };
        tracing::warn!(task = task_id, error = %e.message(), "launch failed");
        // A failed launch may have sent TASK_STARTING already; either way the terminal update
        // is allowed from there.
        let mut lifecycle = TaskLifecycle::resume(TaskState::TaskStarting, false);
        let status = self
            .new_status(task_id, state, source)
            .reason(reason)
            .message(e.message());
        self.emit(framework_id, task_id, &mut lifecycle, status);
    }

    fn launch(
        &self,
        key: TaskKey,
        launch: &TaskLaunch,
        disks: Option<DiskGate>,
    ) -> Result<RunInfo, LaunchError> {
        let task = &launch.task;
        let framework = &launch.framework;
        let command = task.command.as_ref().ok_or_else(|| {
            LaunchError::InvalidTask("the task has neither command nor executor".into())
        })?;
        let argv = command::argv(command).map_err(LaunchError::InvalidTask)?;
        let task_env = command::task_env(command).map_err(LaunchError::InvalidTask)?;
        let user = resolve_user(command::task_user(framework, task), self.config.switch_user)?;
        let executor = command::command_executor_info(framework, task);
        let run = RunId {
            framework_id: key.framework_id.clone(),
            executor_id: executor.executor_id.value.clone(),
            container_id: launch
                .container_id
                .clone()
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        };
        let layout = &self.config.layout;
        let sandbox = layout.sandbox_dir(&run);
        let owner = user.as_ref().map(|u| (u.uid, u.gid));
        let stderr = make_sandbox(&sandbox, owner).map_err(|source| LaunchError::Sandbox {
            path: sandbox.clone(),
            source,
        })?;
        self.checkpointer
            .write_infos(&run, framework, &executor, task)
            .map_err(LaunchError::Checkpoint)?;
        tracing::debug!(target: PROVISIONING, task = %key.task_id, "sandbox and infos written");
        let shutdown_grace = executor
            .shutdown_grace_period
            .as_ref()
            .map_or(self.config.shutdown_grace, command::duration);
        let sandbox_str = sandbox.to_string_lossy();
        let mesos = MesosEnv {
            framework_id: &key.framework_id,
            executor_id: &run.executor_id,
            task_id: &key.task_id,
            agent_id: layout.agent_id(),
            agent_endpoint: &self.config.agent_endpoint,
            sandbox: &sandbox_str,
            checkpoint: framework.checkpoint(),
            shutdown_grace,
        }
        .vars();
        let base = self.config.base_env.clone().unwrap_or_else(inherited_base);
        let env: Vec<(String, String)> = merge(&[&base, &mesos, &launch.extra_env, &task_env])
            .into_iter()
            .collect();
        let args = LauncherArgs {
            status_file: layout.launcher_status_path(&run),
            stdout: sandbox.join("stdout"),
            stderr: sandbox.join("stderr"),
            workdir: sandbox.clone(),
            user: user.as_ref().map(|u| u.name.clone()),
            argv0: argv.argv0,
            program: argv.program,
            args: argv.args,
        };
        let limits = Limits {
            cpus: command::scalar(task, "cpus"),
            mem_mb: command::scalar(task, "mem"),
            io: launch.io_limits.clone(),
        };
        let cgroup = match &self.cgroups {
            Some(cg) => Some(
                cg.create(&run.container_id, &limits)
                    .map_err(LaunchError::Cgroup)?,
            ),
            None => None,
        };
        let gate = disks.map(|receiver| Gate {
            receiver,
            task_env: task_env.iter().map(|(k, _)| k.clone()).collect(),
        });
        let started = self.start(
            &key,
            run.clone(),
            &args,
            &env,
            stderr,
            cgroup.clone(),
            killing_state(framework),
            gate,
        );
        let entry = match started {
            Ok(entry) => entry,
            Err(e) => {
                if let (Some(cg), Some(path)) = (&self.cgroups, &cgroup) {
                    let _ = cg.remove(path);
                }
                let _ = self.checkpointer.remove_run(&run);
                return Err(e);
            }
        };
        let mut entry = entry;
        entry.task_kill_grace = command::kill_grace(task, None, self.config.kill_grace);
        let info = run_info(&key, &entry);
        self.lock().insert(key, entry);
        Ok(info)
    }

    /// Starts the launcher, checkpoints it, puts it in its cgroup, sends TASK_STARTING, lets it
    /// start the task, sends TASK_RUNNING.
    #[allow(clippy::too_many_arguments)]
    fn start(
        &self,
        key: &TaskKey,
        run: RunId,
        args: &LauncherArgs,
        env: &[(String, String)],
        stderr: std::fs::File,
        cgroup: Option<PathBuf>,
        killing: bool,
        gate: Option<Gate>,
    ) -> Result<Entry, LaunchError> {
        let launcher = &self.config.launcher;
        let spawned = Instant::now();
        let pending = process::spawn_launcher(launcher, args, env, stderr).map_err(|source| {
            LaunchError::Launcher {
                path: launcher.clone(),
                source,
            }
        })?;
        tracing::debug!(target: PROVISIONING, task = %key.task_id, ms = spawned.elapsed().as_millis(), "launcher spawned");
        let mut record = RunRecord {
            format: RUN_RECORD_FORMAT,
            run,
            task_id: key.task_id.clone(),
            pid: pending.pid(),
            start_ticks: pending.start_ticks,
            sandbox: args.workdir.clone(),
            cgroup: cgroup.clone(),
            launched_unix_ms: unix_ms_now(),
            phase: RunPhase::Launching,
        };
        let prepared = self
            .checkpointer
            .write_run(&record)
            .map_err(LaunchError::Checkpoint)
            .and_then(|()| match (&self.cgroups, &cgroup) {
                (Some(cg), Some(path)) => cg
                    .add_process(path, pending.pid())
                    .map_err(LaunchError::Cgroup),
                _ => Ok(()),
            });
        if let Err(e) = prepared {
            pending.abort();
            return Err(e);
        }
        let mut lifecycle = TaskLifecycle::new(killing);
        let starting = self.new_status(&key.task_id, TaskState::TaskStarting, Source::Executor);
        self.emit(&key.framework_id, &key.task_id, &mut lifecycle, starting);
        tracing::debug!(target: PROVISIONING, task = %key.task_id, "TASK_STARTING stored");
        let extra_env = match gate {
            None => Vec::new(),
            Some(gate) => match self.open_gate(key, gate, cgroup.as_deref()) {
                Ok(env) => env,
                Err(e) => {
                    pending.abort();
                    return Err(e);
                }
            },
        };
        let released = process::release_with_env(pending, &extra_env, self.config.launch_timeout);
        let (leader, task_pid) = match released {
            Ok(started) => started,
            Err(ReleaseError::Refused(message)) => return Err(LaunchError::Command(message)),
            Err(ReleaseError::Broken(message)) => {
                return Err(LaunchError::Command(format!(
                    "the launcher failed: {message}"
                )))
            }
            Err(ReleaseError::Timeout(t)) => {
                return Err(LaunchError::Command(format!(
                    "the launcher did not start the command within {t:?}"
                )))
            }
        };
        tracing::info!(task = %key, launcher = leader.pid(), task_pid, "task started");
        let running = self.new_status(&key.task_id, TaskState::TaskRunning, Source::Executor);
        self.emit(&key.framework_id, &key.task_id, &mut lifecycle, running);
        tracing::debug!(target: PROVISIONING, task = %key.task_id, "TASK_RUNNING stored");
        record.phase = RunPhase::Running;
        if let Err(e) = self.checkpointer.write_run(&record) {
            // The task runs; a restarted agent would only report TASK_RUNNING again.
            tracing::warn!(task = %key, error = %e, "cannot checkpoint the running task");
        }
        Ok(Entry {
            record,
            leader,
            lifecycle,
            task_kill_grace: self.config.kill_grace,
            kill: None,
        })
    }

    /// Waits for the task's disks; their variables the task does not set itself, once their
    /// `io.max` limits are written.
    fn open_gate(
        &self,
        key: &TaskKey,
        gate: Gate,
        cgroup: Option<&Path>,
    ) -> Result<Vec<(String, String)>, LaunchError> {
        let grant = match gate.receiver.recv() {
            Ok(Ok(grant)) => grant,
            Ok(Err(message)) => return Err(LaunchError::Disks(message)),
            Err(_) => {
                return Err(LaunchError::Disks(
                    "the agent gave up attaching the task's disks".into(),
                ))
            }
        };
        tracing::debug!(target: PROVISIONING, task = %key.task_id, "disks received by the launch");
        if let (Some(cg), Some(path)) = (&self.cgroups, cgroup) {
            let io = Limits {
                io: grant.io_limits,
                ..Limits::default()
            };
            cg.update(path, &io).map_err(LaunchError::Cgroup)?;
        }
        Ok(grant
            .env
            .into_iter()
            .filter(|(k, _)| !gate.task_env.contains(k))
            .collect())
    }

    fn kill(&self, key: &TaskKey, grace: Option<Duration>) -> Result<(), KillError> {
        let mut tasks = self.lock();
        let entry = tasks
            .get_mut(key)
            .ok_or_else(|| KillError::UnknownTask(key.clone()))?;
        let grace = grace.unwrap_or(entry.task_kill_grace);
        let now = Instant::now();
        if let Some(kill) = &mut entry.kill {
            // Mesos: a shorter grace period in a later kill brings SIGKILL forward.
            kill.deadline = kill.deadline.min(kill.started + grace);
            drop(tasks);
            self.wake.notify_all();
            return Ok(());
        }
        if entry.lifecycle.killing_state() {
            let killing = self.new_status(&key.task_id, TaskState::TaskKilling, Source::Executor);
            self.emit(
                &key.framework_id,
                &key.task_id,
                &mut entry.lifecycle,
                killing,
            );
        }
        entry.kill = Some(Kill {
            started: now,
            deadline: now + grace,
            escalated: false,
        });
        entry.record.phase = RunPhase::Killing {
            requested_unix_ms: unix_ms_now(),
            grace_ms: u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
        };
        if let Err(e) = self.checkpointer.write_run(&entry.record) {
            tracing::warn!(task = %key, error = %e, "cannot checkpoint the kill");
        }
        tracing::info!(task = %key, ?grace, "killing task: SIGTERM to its process group");
        entry.leader.signal_group(Signal::SIGTERM);
        drop(tasks);
        self.wake.notify_all();
        Ok(())
    }

    /// Takes over one checkpointed run (see [`CommandExecutor::recover`]).
    fn adopt(&self, run: CheckpointedRun, recovery: &mut Recovery) {
        let record = run.record;
        let key = TaskKey::new(record.run.framework_id.clone(), record.task_id.clone());
        let killing = killing_state(&run.framework);
        let mut leader = Leader::Adopted {
            pid: record.pid,
            start_ticks: record.start_ticks,
        };
        let exit = read_exit(&self.config.layout.launcher_status_path(&record.run));
        let alive = is_alive(record.pid, record.start_ticks);
        if alive && exit == TaskExit::NotStarted {
            // Waiting for a `go` that will never come (it also sees EOF and exits by itself).
            leader.signal_group(Signal::SIGKILL);
        }
        let now = Instant::now();
        let (state, kill) = match &record.phase {
            RunPhase::Launching => (TaskState::TaskStaging, None),
            RunPhase::Running => (TaskState::TaskRunning, None),
            RunPhase::Killing {
                requested_unix_ms,
                grace_ms,
            } => {
                let elapsed =
                    Duration::from_millis(unix_ms_now().saturating_sub(*requested_unix_ms));
                let started = now.checked_sub(elapsed).unwrap_or(now);
                let deadline = started + Duration::from_millis(*grace_ms);
                let state = if killing {
                    TaskState::TaskKilling
                } else {
                    TaskState::TaskRunning
                };
                (
                    state,
                    Some(Kill {
                        started,
                        deadline,
                        escalated: false,
                    }),
                )
            }
            RunPhase::Terminated { .. } => {
                self.cleanup(&record);
                return;
            }
        };
        let mut lifecycle = TaskLifecycle::resume(state, killing);
        if alive && matches!(exit, TaskExit::Started { .. }) && state == TaskState::TaskStaging {
            // The agent died between starting the task and reporting it.
            let running = self.new_status(&key.task_id, TaskState::TaskRunning, Source::Executor);
            self.emit(&key.framework_id, &key.task_id, &mut lifecycle, running);
        }
        let mut entry = Entry {
            task_kill_grace: command::kill_grace(&run.task, None, self.config.kill_grace),
            record,
            leader,
            lifecycle,
            kill,
        };
        if entry.lifecycle.state() == TaskState::TaskRunning
            && entry.record.phase == RunPhase::Launching
        {
            entry.record.phase = RunPhase::Running;
            let _ = self.checkpointer.write_run(&entry.record);
        }
        if alive && exit != TaskExit::NotStarted {
            tracing::info!(task = %key, pid = entry.record.pid, "re-attached to a running task");
            recovery.reattached.push(key.clone());
        } else {
            recovery.ended.push(key.clone());
        }
        self.lock().insert(key, entry);
    }

    /// The watcher thread: a [`Inner::tick`] every poll interval until the executor is dropped.
    fn watch(&self) {
        let mut stop = self.stop.lock().unwrap_or_else(|p| p.into_inner());
        while !*stop {
            let (guard, _) = self
                .wake
                .wait_timeout(stop, self.config.poll_interval)
                .unwrap_or_else(|p| p.into_inner());
            stop = guard;
            if *stop {
                break;
            }
            drop(stop);
            self.tick();
            stop = self.stop.lock().unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Reports tasks whose process group ended, and escalates kills whose grace period is over.
    fn tick(&self) {
        let now = Instant::now();
        let mut ended = Vec::new();
        {
            let mut tasks = self.lock();
            let keys: Vec<TaskKey> = tasks.keys().cloned().collect();
            for key in keys {
                let entry = tasks.get_mut(&key).expect("listed just now");
                if entry.leader.has_exited() {
                    let mut entry = tasks.remove(&key).expect("listed just now");
                    self.report_end(&key, &mut entry);
                    ended.push(entry);
                    continue;
                }
                let Some(kill) = &mut entry.kill else {
                    continue;
                };
                if !kill.escalated && now >= kill.deadline {
                    kill.escalated = true;
                    tracing::info!(task = %key, "grace period over: SIGKILL to the task's process group");
                    entry.leader.signal_group(Signal::SIGKILL);
                    if let (Some(cg), Some(path)) = (&self.cgroups, &entry.record.cgroup) {
                        cg.kill_all(path);
                    }
                }
            }
        }
        for entry in ended {
            self.cleanup(&entry.record);
        }
    }

    fn report_end(&self, key: &TaskKey, entry: &mut Entry) {
        let exit = read_exit(&self.config.layout.launcher_status_path(&entry.record.run));
        let killed = entry.kill.is_some();
        let escalated = entry.kill.as_ref().is_some_and(|k| k.escalated);
        let (state, reason, source, message) = end_status(exit, killed, escalated);
        tracing::info!(task = %key, ?state, %message, "task ended");
        let mut status = self
            .new_status(&key.task_id, state, source)
            .message(message);
        status.reason = reason;
        self.emit(
            &key.framework_id,
            &key.task_id,
            &mut entry.lifecycle,
            status,
        );
    }

    /// Removes what a finished run leaves besides its sandbox: its cgroup and its checkpoint.
    fn cleanup(&self, record: &RunRecord) {
        if let (Some(cg), Some(path)) = (&self.cgroups, &record.cgroup) {
            if let Err(e) = cg.remove(path) {
                tracing::warn!(cgroup = %path.display(), error = %e, "cannot remove the task's cgroup");
            }
        }
        if let Err(e) = self.checkpointer.remove_run(&record.run) {
            tracing::warn!(error = %e, "cannot remove the run's checkpoint");
        }
    }
}

fn read_exit(path: &Path) -> TaskExit {
    std::fs::read_to_string(path).map_or(TaskExit::NotStarted, |t| TaskExit::parse(&t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_are_reported_like_mesos() {
        let (s, r, src, m) = end_status(TaskExit::Exited(3), false, false);
        assert_eq!((s, r, src), (TaskState::TaskFailed, None, Source::Executor));
        assert_eq!(m, "Command exited with status 3");
        assert_eq!(
            end_status(TaskExit::Exited(0), false, false).0,
            TaskState::TaskFinished
        );
        let (s, _, _, m) = end_status(
            TaskExit::Signaled {
                signal: 15,
                core: false,
            },
            true,
            false,
        );
        assert_eq!(s, TaskState::TaskKilled);
        assert_eq!(m, "Command terminated with signal Terminated");
        let (s, _, _, m) = end_status(
            TaskExit::Signaled {
                signal: 11,
                core: true,
            },
            false,
            false,
        );
        assert_eq!(s, TaskState::TaskFailed);
        assert_eq!(
            m,
            "Command terminated with signal Segmentation fault (core dumped)"
        );
        let (s, _, _, m) = end_status(TaskExit::Started { pid: 1 }, true, true);
        assert_eq!(
            (s, m.as_str()),
            (
                TaskState::TaskKilled,
                "Command terminated with signal Killed"
            )
        );
        let (s, r, src, _) = end_status(TaskExit::Started { pid: 1 }, false, false);
        assert_eq!(
            (s, r, src),
            (
                TaskState::TaskFailed,
                Some(Reason::ExecutorTerminated),
                Source::Agent
            )
        );
        assert_eq!(signal_name(64), "signal 64");
    }

    #[test]
    fn launch_errors_map_to_mesos_states() {
        let e = LaunchError::UnknownUser { user: "x".into() };
        assert_eq!(
            e.terminal(),
            Some((
                TaskState::TaskFailed,
                Reason::ContainerLaunchFailed,
                Source::Agent
            ))
        );
        assert_eq!(
            LaunchError::InvalidTask("x".into()).terminal().unwrap().0,
            TaskState::TaskError
        );
        assert_eq!(LaunchError::NotACommandTask("t".into()).terminal(), None);
        let e = LaunchError::Sandbox {
            path: "/x".into(),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        assert!(e.message().starts_with("cannot prepare the sandbox /x: "));
    }
}
