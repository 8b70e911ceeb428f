//! Custom executors: the agent's side of Mesos's v1 executor HTTP API (`POST /api/v1/executor`)
//! and the executor processes behind it. The daemon plugs it in; this module owns no socket.
//!
//! # Using it (the daemon)
//!
//! ```text
//! let api = ExecutorApi::new(config, Sinks { status, messages });   // inside a tokio runtime
//! let router = my_router.merge(api.routes());                       // serves /api/v1/executor
//! api.recover()?;                     // once at start: until then the endpoint answers 503
//! api.launch(ExecutorLaunch { framework, executor, work, extra_env, io_limits })?; // blocks briefly
//! api.kill(framework_id, task_id, kill_policy)?;                     // KILL to the executor
//! api.acknowledge(framework_id, task_id, uuid)?;                     // the scheduler's ack
//! api.framework_message(framework_id, executor_id, data)?;           // MESSAGE to it
//! api.shutdown_executor(framework_id, executor_id)?; api.shutdown_framework(framework_id);
//! api.executors();                                                   // for /state, re-registration
//! ```
//!
//! Status updates from executors (UPDATE calls) go to [`Sinks::status`], the same
//! [`StatusSink`] the command executor reports to, and so do the updates the agent itself
//! generates for custom-executor tasks (TASK_FAILED when an executor dies, ...). Executor
//! MESSAGE calls go to [`Sinks::messages`] (the daemon forwards them to the master, which
//! gives them to the scheduler). Both sinks are called with the executor table locked: they
//! must not call back into [`ExecutorApi`]. As in Mesos, an executor's update is acknowledged
//! to it (ACKNOWLEDGED) once the status sink took it; with
//! [`AcknowledgeWhen::SchedulerAcknowledged`] only when the scheduler acknowledged it.
//!
//! # An executor's life (as in Mesos's agent)
//!
//! [`ExecutorApi::launch`] with a new executor (`launch` holds the executor table while the
//! launcher starts it: milliseconds) starts its `CommandInfo` through
//! `mesoblk-launcher` (see `crate::executor::launcher`): its own session and process group, the
//! sandbox `<work_dir>/slaves/<agent>/frameworks/<fw>/executors/<ex>/runs/<container>/` as its
//! working folder with `stdout` and `stderr` files, and the environment Mesos gives executors
//! (see `docs/executor-api.md`). Its tasks are queued: the executor must SUBSCRIBE within
//! `--executor_registration_timeout` (default 1 min) or it is killed and its tasks fail
//! (TASK_FAILED, REASON_EXECUTOR_REGISTRATION_TIMEOUT). SUBSCRIBE answers 200 with a RecordIO stream:
//! SUBSCRIBED (executor_info, framework_info, agent_info, container_id), then one LAUNCH per
//! queued task and one LAUNCH_GROUP per queued task group; later launches go out at once.
//! HEARTBEAT events follow every `heartbeat_interval` (Mesos: 30 mins). When the executor
//! process ends, every task of it that is not terminal gets TASK_FAILED with
//! REASON_EXECUTOR_TERMINATED from SOURCE_AGENT (or the reason the agent killed it for).
//!
//! Killing a task sends KILL (a task still queued is dropped and gets TASK_KILLED,
//! REASON_TASK_KILLED_DURING_LAUNCH; an unsubscribed executor left without tasks is shut
//! down). Shutting an executor down sends SHUTDOWN, then SIGTERM to its process group after
//! its shutdown grace period (`ExecutorInfo.shutdown_grace_period`, else the configured one)
//! and SIGKILL `kill_grace` later.
//!
//! # Re-subscription
//!
//! A broken connection leaves the executor registered: it may SUBSCRIBE again (the newest
//! connection replaces any older one). A re-SUBSCRIBE's `unacknowledged_updates` are taken
//! again like UPDATE calls (the status-update store drops duplicates; one the executor was
//! already sent ACKNOWLEDGED for is acknowledged again at once). After an agent restart
//! ([`ExecutorApi::recover`]), executors still running must re-subscribe within
//! `executor_reregistration_timeout` (Mesos's `--executor_reregistration_timeout`) or they are
//! killed (REASON_EXECUTOR_REREGISTRATION_TIMEOUT); a task the agent had launched but whose
//! executor does not list it in `unacknowledged_tasks` and never reported on, was lost in the
//! restart: TASK_LOST (TASK_DROPPED for PARTITION_AWARE frameworks), REASON_AGENT_RESTARTED.
//!
//! # Cgroups
//!
//! With [`ExecutorApiConfig::cgroups`] each executor runs in its own cgroup v2 group
//! (`<root>/<parent>/<container id>`, beside the command executor's): `cpu.max` and `memory.max`
//! from the executor's resources plus those of its tasks that have not ended, and an `io.max`
//! line per device of those tasks, written before the executor's first instruction and again
//! whenever a launch adds tasks or a task ends (as Mesos resizes an executor's container);
//! after an agent restart too, from the checkpointed tasks. The group goes when the executor
//! ends.
//!
//! # Checkpoints
//!
//! Next to the command executor's: `framework.info`, `executor.info`, and per run
//! `executor_api.json` (the launcher's pid and start time) and `tasks/<t>/task.info`,
//! `task.io.json` (its devices' `io.max` limits) and `task.state` (the last state the executor
//! reported). The command executor's recovery
//! ignores these runs (they have no `run.json`) and this module's ignores its runs.

mod api;
mod cgroup;
mod events;
mod http;
mod recovery;
mod registry;
mod spawn;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mesoblk_proto::mesos::v1::{AgentId, AgentInfo, ExecutorInfo, FrameworkInfo, TaskGroupInfo};
use mesoblk_proto::mesos::v1::{TaskInfo, TaskState};
use thiserror::Error;

use crate::checkpoint::{CheckpointError, Layout};
use crate::executor::IoLimits;
pub use crate::executor::{CgroupConfig, StatusSink, TaskUpdate};
pub use api::ExecutorApi;

/// The route this module serves.
pub const EXECUTOR_API_PATH: &str = "/api/v1/executor";

/// How executors are run and talked to.
#[derive(Clone, Debug)]
pub struct ExecutorApiConfig {
    /// Where sandboxes and checkpoints go.
    pub layout: Layout,
    /// The `mesoblk-launcher` binary.
    pub launcher: PathBuf,
    /// `MESOS_AGENT_ENDPOINT`: the `host:port` of the agent's HTTP server.
    pub agent_endpoint: String,
    /// The agent as SUBSCRIBED describes it.
    pub agent_info: AgentInfo,
    /// `--executor_registration_timeout`: how long a new executor has to SUBSCRIBE (1 min).
    pub registration_timeout: Duration,
    /// `--executor_reregistration_timeout`: how long a recovered executor has (2 s).
    pub reregistration_timeout: Duration,
    /// `--executor_shutdown_grace_period`, unless the ExecutorInfo sets one (5 s).
    pub shutdown_grace: Duration,
    /// Between SIGTERM and SIGKILL of a shut-down executor's group (3 s).
    pub kill_grace: Duration,
    /// `MESOS_RECOVERY_TIMEOUT` given to executors (`--recovery_timeout`, 15 mins).
    pub recovery_timeout: Duration,
    /// `MESOS_SUBSCRIPTION_BACKOFF_MAX` given to executors (2 s).
    pub subscription_backoff_max: Duration,
    /// Between HEARTBEAT events (Mesos: 30 mins).
    pub heartbeat_interval: Duration,
    /// How often executors are checked (exits, deadlines, heartbeats).
    pub poll_interval: Duration,
    /// How long the launcher may take to start an executor.
    pub launch_timeout: Duration,
    /// When an executor's update is acknowledged to it (Mesos: once stored).
    pub acknowledge: AcknowledgeWhen,
    /// Run executors as their user (`CommandInfo.user`, else `FrameworkInfo.user`).
    pub switch_user: bool,
    /// Executor cgroups (`None`: none; an unusable hierarchy is logged and runs without).
    pub cgroups: Option<CgroupConfig>,
    /// The environment every executor starts from; `None`: the agent's own without `MESOS_*`
    /// and `LIBPROCESS_*`.
    pub base_env: Option<Vec<(String, String)>>,
}

impl ExecutorApiConfig {
    /// Mesos's defaults for the agent whose server listens on `agent_endpoint` (`host:port`).
    pub fn new(layout: Layout, launcher: impl Into<PathBuf>, agent_endpoint: &str) -> Self {
        let hostname = agent_endpoint
            .rsplit_once(':')
            .map_or(agent_endpoint, |(host, _)| host)
            .to_string();
        let agent_info = AgentInfo {
            hostname,
            id: Some(AgentId {
                value: layout.agent_id().to_string(),
            }),
            ..AgentInfo::default()
        };
        ExecutorApiConfig {
            layout,
            launcher: launcher.into(),
            agent_endpoint: agent_endpoint.to_string(),
            agent_info,
            registration_timeout: Duration::from_secs(60),
            reregistration_timeout: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(5),
            kill_grace: Duration::from_secs(3),
            recovery_timeout: Duration::from_secs(15 * 60),
            subscription_backoff_max: Duration::from_secs(2),
            heartbeat_interval: Duration::from_secs(30 * 60),
            poll_interval: Duration::from_millis(100),
            launch_timeout: Duration::from_secs(30),
            switch_user: true,
            cgroups: None,
            base_env: None,
            acknowledge: AcknowledgeWhen::Stored,
        }
    }
}

/// When the agent sends an executor ACKNOWLEDGED for one of its status updates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcknowledgeWhen {
    /// As soon as [`Sinks::status`] took it (and so made it durable): Mesos's agent
    /// (`Slave::___statusUpdate`). The scheduler's acknowledgement only ends the task's
    /// bookkeeping.
    Stored,
    /// When the scheduler acknowledges it ([`ExecutorApi::acknowledge`]): the executor holds
    /// (and resends) its update until the scheduler has it.
    SchedulerAcknowledged,
}

/// A MESSAGE call from an executor, for its scheduler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecutorMessage {
    /// The framework.
    pub framework_id: String,
    /// The executor that sent it.
    pub executor_id: String,
    /// The bytes.
    pub data: Vec<u8>,
}

/// Where executor MESSAGE calls go.
pub trait MessageSink: Send + Sync {
    /// Takes one message.
    fn message(&self, message: ExecutorMessage);
}

impl MessageSink for std::sync::mpsc::Sender<ExecutorMessage> {
    fn message(&self, message: ExecutorMessage) {
        let _ = self.send(message);
    }
}

/// The daemon's callbacks.
#[derive(Clone)]
pub struct Sinks {
    /// Status updates, from executors and from the agent.
    pub status: Arc<dyn StatusSink>,
    /// Executor messages.
    pub messages: Arc<dyn MessageSink>,
}

/// What an executor runs.
#[derive(Clone, Debug, PartialEq)]
pub enum Work {
    /// Tasks, each sent in its own LAUNCH event.
    Tasks(Vec<TaskInfo>),
    /// A task group, sent in one LAUNCH_GROUP event.
    Group(TaskGroupInfo),
}

impl Work {
    /// The tasks.
    pub fn tasks(&self) -> &[TaskInfo] {
        match self {
            Work::Tasks(tasks) => tasks,
            Work::Group(group) => &group.tasks,
        }
    }
}

/// One launch: tasks (or a task group) for an executor, started if it does not run yet.
#[derive(Clone, Debug)]
pub struct ExecutorLaunch {
    /// The framework (with its id).
    pub framework: FrameworkInfo,
    /// The executor (with a `command`).
    pub executor: ExecutorInfo,
    /// Its tasks.
    pub work: Work,
    /// Variables the agent adds to a new executor's environment (the tasks' block devices).
    pub extra_env: Vec<(String, String)>,
    /// Per task id, the `io.max` limits of its block devices (a task without is unlimited).
    pub io_limits: BTreeMap<String, Vec<IoLimits>>,
}

/// Where an executor is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecutorPhase {
    /// Started, not subscribed yet.
    Registering,
    /// Subscribed (the connection may be down, waiting for a re-subscription).
    Running,
    /// Found again after an agent restart, not re-subscribed yet.
    Recovering,
    /// Being shut down.
    Terminating,
}

/// One executor as [`ExecutorApi::executors`] lists it.
#[derive(Clone, Debug)]
pub struct ExecutorSummary {
    /// Its framework.
    pub framework: FrameworkInfo,
    /// The executor.
    pub info: ExecutorInfo,
    /// Its container (run) id.
    pub container_id: String,
    /// Its sandbox.
    pub sandbox: PathBuf,
    /// Its process group.
    pub pid: i32,
    /// Its phase.
    pub phase: ExecutorPhase,
    /// Whether it has a live event stream.
    pub connected: bool,
    /// Its tasks that are not acknowledged terminal yet, with their latest state.
    pub tasks: Vec<(TaskInfo, TaskState)>,
    /// The ids of those not sent to the executor yet (it has not subscribed).
    pub queued: Vec<String>,
}

/// Why a launch failed. Unless said otherwise, each task already got its terminal update.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LaunchError {
    /// The launch is malformed (TASK_ERROR, REASON_TASK_INVALID).
    #[error("invalid launch: {0}")]
    Invalid(String),
    /// A task id is in use on this agent already (no update).
    #[error("task {0} is already known to this agent")]
    DuplicateTask(String),
    /// The executor is shutting down (TASK_LOST, or TASK_DROPPED for PARTITION_AWARE
    /// frameworks; REASON_EXECUTOR_TERMINATED).
    #[error("executor {0} is shutting down")]
    Terminating(String),
    /// The executor could not be started (TASK_FAILED, REASON_CONTAINER_LAUNCH_FAILED).
    #[error("cannot start the executor: {0}")]
    Start(String),
    /// Its checkpoints could not be written (TASK_FAILED, REASON_CONTAINER_LAUNCH_FAILED).
    #[error("cannot checkpoint the executor")]
    Checkpoint(#[source] CheckpointError),
}

/// Why a request about an executor or task was refused (nothing changed).
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ApiError {
    /// No such task on a custom executor of this agent.
    #[error("unknown task {task_id} of framework {framework_id}")]
    UnknownTask {
        /// The framework.
        framework_id: String,
        /// The task.
        task_id: String,
    },
    /// No such executor.
    #[error("unknown executor {executor_id} of framework {framework_id}")]
    UnknownExecutor {
        /// The framework.
        framework_id: String,
        /// The executor.
        executor_id: String,
    },
    /// The executor has no live connection to send on.
    #[error("executor {0} is not connected")]
    NotConnected(String),
    /// An acknowledgement's uuid is not 16 bytes.
    #[error("a status update uuid has 16 bytes, not {0}")]
    BadUuid(usize),
}
