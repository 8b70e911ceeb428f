//! The running agent: the daemon that ties storage, the command executor and the status-update
//! store to the master (the `mesoblk-agent` binary is a thin shell around [`run`]).
//!
//! # Pieces
//!
//! - [`resources`]: `--resources` and `--attributes`, and the machine's detected cpus and mem.
//! - [`identity`]: the checkpointed agent id.
//! - [`books`]: the tasks the agent reports when it re-registers.
//! - `link`: registration, the event stream, PING/PONG, reconnection with backoff.
//! - `events`, `tasks`, `operations`: what each master event does.
//! - `sender`: the loop that sends status updates (and operation statuses) until acknowledged.
//! - `device_stats`: the loop that reports the attached devices' figures to the master.
//! - `sandbox_gc`: the loop that deletes the sandboxes of ended runs (`crate::gc`).
//!
//! # Start and restart
//!
//! [`run`] recovers storage first (the caller opens it), then, when the work dir names an agent
//! id, recovers the status-update store, the books and the command executor under that id
//! (tasks that kept running across an agent crash are watched again; tasks that ended meanwhile
//! get their terminal update) and re-registers with them. Without an id it registers, stores
//! the id it gets, and starts empty. After a lost stream, a 403 or a master restart it
//! re-registers with its frameworks, tasks and unacknowledged updates, with exponential backoff
//! between attempts.
//!
//! # A task's life
//!
//! RUN_TASK books the task (durably), attaches its disks (a storage error is TASK_ERROR with
//! the error's message, nothing left behind), and launches it with the devices in its
//! environment. Every status update goes to the store first; its terminal one detaches the
//! task's disks. The scheduler's acknowledgement of the terminal update removes the task from
//! the books. Tasks with a custom executor (and task groups) go to the executor API
//! (`custom`, `crate::executor_api`) the same way, their disks attached first.

pub mod books;
pub mod identity;
pub mod resources;

mod custom;
mod device_stats;
mod events;
mod io_limits;
mod link;
mod operations;
mod sandbox_gc;
mod sender;
mod tasks;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime};

use mesoblk_proto::mesoblk::agent::v1 as agent;
use mesoblk_proto::mesos::v1::{
    AgentId, AgentInfo, Attribute, MasterInfo, Resource, Task, TaskState,
};
use thiserror::Error;
use tokio::sync::{mpsc, Notify};

use crate::checkpoint::{CheckpointError, Layout};
use crate::executor::{CgroupConfig, CommandExecutor, ExecutorConfig, StatusSink, TaskUpdate};
use crate::executor_api::{ExecutorApi, ExecutorApiConfig, ExecutorMessage, Sinks};
use crate::status::{is_terminal, status_state, Backoff, StatusUpdateStore, StoreError, TaskKey};
use crate::storage::Storage;

use books::TaskBooks;

/// Completed tasks `/state` remembers.
const COMPLETED_TASKS_KEPT: usize = 200;

/// How the agent runs (its flags, in library terms).
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The master's `http://host:port`.
    pub master_url: String,
    /// The work dir (checkpoints, sandboxes, volume records).
    pub work_dir: PathBuf,
    /// The hostname reported to the master.
    pub hostname: String,
    /// The agent's own base URL, `http://ip:port`, as the master and tasks reach it.
    pub endpoint: String,
    /// The port the agent serves on.
    pub port: u16,
    /// cpus, mem, ports and whatever `--resources` adds (storage's disks come on top).
    pub resources: Vec<Resource>,
    /// `--attributes`.
    pub attributes: Vec<Attribute>,
    /// The agents' shared secret, sent as `Authorization: Bearer`.
    pub secret: Option<String>,
    /// The `mesoblk-launcher` binary.
    pub launcher: PathBuf,
    /// Run tasks as their user.
    pub switch_user: bool,
    /// Task cgroups (`None`: none).
    pub cgroups: Option<CgroupConfig>,
    /// `MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD` and the grace of a framework shutdown.
    pub executor_shutdown_grace_period: Duration,
    /// How long a custom executor has to subscribe (`--executor_registration_timeout`).
    pub executor_registration_timeout: Duration,
    /// The first wait between registration attempts (doubling up to a minute).
    pub registration_backoff: Duration,
    /// Status update retries.
    pub status_backoff: Backoff,
    /// How often device figures go to the master (`--device_stats_interval`; zero: never).
    pub device_stats_interval: Duration,
    /// How long ended sandboxes are kept (`--gc_delay`, `--gc_disk_headroom`).
    pub gc: crate::gc::GcPolicy,
    /// How often sandboxes are collected (`--disk_watch_interval`).
    pub disk_watch_interval: Duration,
}

/// Why the agent could not run.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum NodeError {
    /// A checkpoint (id, books) could not be read or written.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The status-update store could not be opened.
    #[error("cannot open the status-update store: {0}")]
    Store(#[from] StoreError),
    /// The command executor could not start.
    #[error("cannot start the command executor: {0}")]
    Executor(#[from] crate::executor::ExecutorError),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    /// The HTTP server failed.
    #[error("the agent's HTTP server failed: {0}")]
    Server(#[from] std::io::Error),
    /// The master refuses this agent for good: an operator marked it gone.
    #[error("the master refuses this agent (marked gone): {0}")]
    Gone(String),
}

/// Counters for `/metrics/snapshot`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Terminal updates by state name.
    terminal: Mutex<BTreeMap<&'static str, u64>>,
    /// Registrations and re-registrations that succeeded.
    pub registrations: AtomicU64,
    /// Status updates posted to the master.
    pub status_updates_sent: AtomicU64,
    /// Master events handled.
    pub events: AtomicU64,
}

impl Counters {
    fn terminal(&self, state: TaskState) {
        let mut map = self.terminal.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry(state.as_str_name()).or_default() += 1;
    }

    /// How many tasks ended in `state`.
    pub fn ended(&self, state: TaskState) -> u64 {
        let map = self.terminal.lock().unwrap_or_else(|p| p.into_inner());
        map.get(state.as_str_name()).copied().unwrap_or(0)
    }
}

/// What exists once the agent id is known.
pub struct Runtime {
    /// The agent id.
    pub agent_id: String,
    /// Checkpoint and sandbox paths.
    pub layout: Layout,
    /// Every task's status updates.
    pub store: Arc<Mutex<StatusUpdateStore>>,
    /// The built-in command executor.
    pub executor: CommandExecutor,
    /// Custom executors and their `/api/v1/executor`.
    pub executors: ExecutorApi,
    /// The tasks to report on re-registration.
    pub books: Mutex<TaskBooks>,
}

/// Where status updates go: the store (durably), then the sender is woken; a terminal update
/// also tells the agent the task ended (to release its disks).
struct Updates {
    store: Arc<Mutex<StatusUpdateStore>>,
    wake: Arc<Notify>,
    ended: mpsc::UnboundedSender<(TaskKey, TaskState)>,
}

impl StatusSink for Updates {
    fn update(&self, update: TaskUpdate) {
        let key = TaskKey::new(
            update.framework_id.clone(),
            update.status.task_id.value.clone(),
        );
        let state = status_state(&update.status);
        self.store.update(update);
        self.wake.notify_one();
        if is_terminal(state) {
            let _ = self.ended.send((key, state));
        }
    }
}

/// The master as the agent last saw it.
#[derive(Clone, Debug, Default)]
pub struct LinkStatus {
    /// Whether the event stream is up.
    pub connected: bool,
    /// The master's info from the last registration.
    pub master: Option<MasterInfo>,
}

/// A task being launched (between RUN_TASK and the executor knowing it).
#[derive(Debug, Default)]
struct Launching {
    kill_requested: bool,
}

/// An operation status sent to the master and not yet acknowledged.
#[derive(Clone, Debug)]
struct PendingOperation {
    update: agent::OperationStatusUpdate,
    next_send: std::time::Instant,
}

/// The running agent, shared by the master link, the sender, and the HTTP server.
pub struct Node {
    /// Its configuration.
    pub config: AgentConfig,
    /// When it started.
    pub started: SystemTime,
    /// Its block storage.
    pub storage: Mutex<Storage>,
    runtime: OnceLock<Runtime>,
    link: Mutex<LinkStatus>,
    /// Counters for metrics.
    pub counters: Counters,
    wake_sender: Arc<Notify>,
    relink: Notify,
    launching: Mutex<BTreeMap<TaskKey, Launching>>,
    operations: Mutex<BTreeMap<Vec<u8>, PendingOperation>>,
    completed: Mutex<VecDeque<Task>>,
    /// Sandboxes of tasks launched by this process (the executor forgets them when they end).
    sandboxes: Mutex<BTreeMap<TaskKey, PathBuf>>,
    /// Frameworks the master shut down here.
    shut_down: Mutex<BTreeSet<String>>,
    ended_tx: mpsc::UnboundedSender<(TaskKey, TaskState)>,
    messages_tx: mpsc::UnboundedSender<ExecutorMessage>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Node {
    /// The runtime, once the agent id is known.
    pub fn runtime(&self) -> Option<&Runtime> {
        self.runtime.get()
    }

    /// The agent id, once known.
    pub fn agent_id(&self) -> Option<&str> {
        self.runtime().map(|r| r.agent_id.as_str())
    }

    /// The link's status.
    pub fn link_status(&self) -> LinkStatus {
        lock(&self.link).clone()
    }

    /// Tasks that ended and whose end the scheduler acknowledged, newest last.
    pub fn completed_tasks(&self) -> Vec<Task> {
        lock(&self.completed).iter().cloned().collect()
    }

    /// Every booked task with its latest state (from the store), and sandbox when running.
    pub fn tasks(&self) -> Vec<(Task, Option<PathBuf>)> {
        let Some(rt) = self.runtime() else {
            return Vec::new();
        };
        let tasks: Vec<(TaskKey, Task)> = {
            // Lock order: books, then store; the executor is asked with neither held (its
            // sink takes the store while it holds its own lock).
            let books = lock(&rt.books);
            let store = lock(&rt.store);
            books
                .tasks()
                .map(|(key, task)| {
                    let mut task = task.clone();
                    if let Some(stream) = store.stream(key) {
                        if let Some(state) = stream.latest_state() {
                            task.state = state as i32;
                        }
                        task.statuses = stream.latest().cloned().into_iter().collect();
                    }
                    (key.clone(), task)
                })
                .collect()
        };
        tasks
            .into_iter()
            .map(|(key, task)| {
                let sandbox = rt
                    .executor
                    .task(&key)
                    .map(|r| r.sandbox)
                    .or_else(|| lock(&self.sandboxes).get(&key).cloned());
                (task, sandbox)
            })
            .collect()
    }

    /// The full resources the agent reports: its own and its storage's.
    pub fn total_resources(&self) -> Vec<Resource> {
        let mut all = self.config.resources.clone();
        all.extend(lock(&self.storage).resources());
        all
    }

    fn set_connected(&self, connected: bool) {
        lock(&self.link).connected = connected;
        self.wake_sender.notify_one();
    }

    /// Creates the runtime for `agent_id`: recovers the store, the books and the executor.
    fn start_runtime(self: &Arc<Self>, agent_id: &str) -> Result<&Runtime, NodeError> {
        if let Some(rt) = self.runtime() {
            return Ok(rt);
        }
        let layout = Layout::new(&self.config.work_dir, agent_id);
        let (store, report) =
            StatusUpdateStore::open(&layout.status_dir(), self.config.status_backoff)?;
        tracing::info!(
            streams = report.streams,
            pending = report.pending,
            torn = report.torn.len(),
            bad = report.bad.len(),
            "status updates recovered"
        );
        let store = Arc::new(Mutex::new(store));
        let (books, problems) = TaskBooks::open(&layout.agent_meta_dir().join("books"))?;
        for problem in problems {
            tracing::warn!(%problem, "unreadable task book entry");
        }
        let sink = Arc::new(Updates {
            store: Arc::clone(&store),
            wake: Arc::clone(&self.wake_sender),
            ended: self.ended_tx.clone(),
        });
        let mut exec_config = ExecutorConfig::new(layout.clone(), &self.config.launcher);
        exec_config.agent_endpoint = self
            .config
            .endpoint
            .trim_start_matches("http://")
            .to_owned();
        exec_config.shutdown_grace = self.config.executor_shutdown_grace_period;
        exec_config.switch_user = self.config.switch_user;
        exec_config.cgroups = self.config.cgroups.clone();
        let (executor, recovery) = CommandExecutor::recover(exec_config, Arc::clone(&sink) as _)?;
        tracing::info!(
            reattached = recovery.reattached.len(),
            ended = recovery.ended.len(),
            unreadable = recovery.unreadable.len(),
            "command executor recovered"
        );
        let executors = self.start_executor_api(&layout, agent_id, sink);
        self.release_orphan_disks(&executor, &executors);
        let runtime = Runtime {
            agent_id: agent_id.to_owned(),
            layout,
            store,
            executor,
            executors,
            books: Mutex::new(books),
        };
        let _ = self.runtime.set(runtime);
        let runtime = self.runtime().expect("just set");
        self.recover_operations(runtime);
        Ok(runtime)
    }
}

impl Node {
    /// The executor API, with the executors that survived an agent restart recovered.
    fn start_executor_api(
        &self,
        layout: &Layout,
        agent_id: &str,
        sink: Arc<Updates>,
    ) -> ExecutorApi {
        let endpoint = self.config.endpoint.trim_start_matches("http://");
        let mut config = ExecutorApiConfig::new(layout.clone(), &self.config.launcher, endpoint);
        config.agent_info = AgentInfo {
            hostname: self.config.hostname.clone(),
            id: Some(AgentId {
                value: agent_id.to_owned(),
            }),
            port: Some(i32::from(self.config.port)),
            resources: self.total_resources(),
            attributes: self.config.attributes.clone(),
            ..AgentInfo::default()
        };
        config.registration_timeout = self.config.executor_registration_timeout;
        config.shutdown_grace = self.config.executor_shutdown_grace_period;
        config.switch_user = self.config.switch_user;
        config.cgroups = self.config.cgroups.clone();
        let sinks = Sinks {
            status: sink,
            messages: Arc::new(custom::MessageQueue(self.messages_tx.clone())),
        };
        let executors = ExecutorApi::new(config, sinks);
        match executors.recover() {
            Ok(found) => tracing::info!(executors = found, "custom executors recovered"),
            Err(e) => tracing::error!(error = %e, "cannot recover the custom executors"),
        }
        executors
    }

    /// Detaches the disks of tasks that are not running: a task whose end was recorded just
    /// before the agent died never had its disks released.
    fn release_orphan_disks(&self, executor: &CommandExecutor, executors: &ExecutorApi) {
        let mut running: BTreeSet<String> = executor
            .tasks()
            .into_iter()
            .map(|run| run.key.task_id)
            .collect();
        for custom in executors.executors() {
            running.extend(
                custom
                    .tasks
                    .iter()
                    .map(|(task, _)| task.task_id.value.clone()),
            );
        }
        let mut storage = lock(&self.storage);
        let orphans: BTreeSet<String> = storage
            .volumes()
            .filter_map(|v| v.state.attachment().map(|a| a.task_id.clone()))
            .filter(|task| !running.contains(task))
            .collect();
        for task in orphans {
            tracing::info!(%task, "releasing the disks of a task that is not running");
            if let Err(e) = storage.detach_task(&task) {
                tracing::warn!(%task, error = %e.message(), "cannot release the task's disks");
            }
        }
    }
}

/// Runs the agent until `shutdown` resolves or the master shuts it down. `storage` must be
/// opened and recovered; `listener` is the bound HTTP listener.
pub async fn run(
    config: AgentConfig,
    storage: Storage,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    let (ended_tx, ended_rx) = mpsc::unbounded_channel();
    let (messages_tx, messages_rx) = mpsc::unbounded_channel();
    let node = Arc::new(Node {
        config,
        started: SystemTime::now(),
        storage: Mutex::new(storage),
        runtime: OnceLock::new(),
        link: Mutex::new(LinkStatus::default()),
        counters: Counters::default(),
        wake_sender: Arc::new(Notify::new()),
        relink: Notify::new(),
        launching: Mutex::new(BTreeMap::new()),
        operations: Mutex::new(BTreeMap::new()),
        completed: Mutex::new(VecDeque::new()),
        sandboxes: Mutex::new(BTreeMap::new()),
        shut_down: Mutex::new(BTreeSet::new()),
        ended_tx,
        messages_tx,
    });
    if let Some(id) = identity::load(&node.config.work_dir)? {
        tracing::info!(agent = %id, "recovering the agent's checkpoints");
        node.start_runtime(&id)?;
    }
    start_spares_thread(&node);
    let app = crate::http::router(Arc::clone(&node));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    tokio::spawn(tasks::watch_ended(Arc::clone(&node), ended_rx));
    let client = link::client()?;
    tokio::spawn(sender::run(Arc::clone(&node), client.clone()));
    tokio::spawn(device_stats::run(Arc::clone(&node), client.clone()));
    tokio::spawn(sandbox_gc::run(Arc::clone(&node)));
    tokio::spawn(custom::forward_messages(
        Arc::clone(&node),
        client.clone(),
        messages_rx,
    ));
    let outcome = tokio::select! {
        () = shutdown => {
            tracing::info!("shutting down: tasks keep running");
            Ok(())
        }
        result = link::run(Arc::clone(&node), client) => result,
        served = server => match served {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(NodeError::Server(e)),
            Err(e) => Err(NodeError::Server(std::io::Error::other(e.to_string()))),
        },
    };
    // Devices keep serving their tasks; spares and servers waiting for a device serve no one.
    let devices = {
        let mut storage = lock(&node.storage);
        storage.close_spares();
        storage.device_control()
    };
    devices.shutdown();
    outcome
}

impl Node {
    /// Waits until no command task is being launched (RUN_TASK to TASK_RUNNING stored), at
    /// most [`SPARES_YIELD_MAX`]: a spare's start, however low its priority, slows a launch
    /// it overlaps on a small machine (docs/benchmarks.md).
    fn wait_for_no_launch(&self) {
        let deadline = std::time::Instant::now() + SPARES_YIELD_MAX;
        while !lock(&self.launching).is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Longest a spare's start waits for launches to finish (so a stream of launches cannot starve
/// the spares).
const SPARES_YIELD_MAX: Duration = Duration::from_secs(2);

/// Starts the thread that makes the storage's spare devices (`storage::spares`) whenever the
/// storage asks, and asks once now. It ends with the node.
fn start_spares_thread(node: &Arc<Node>) {
    let (signal, wakes) = std::sync::mpsc::channel::<()>();
    let weak = Arc::downgrade(node);
    let spawned = std::thread::Builder::new()
        .name("spares".into())
        .spawn(move || {
            while wakes.recv().is_ok() {
                while wakes.try_recv().is_ok() {}
                let Some(node) = weak.upgrade() else { break };
                crate::storage::make_spares(&node.storage, || node.wait_for_no_launch());
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the spare devices' thread: no spares");
        return;
    }
    let mut storage = lock(&node.storage);
    storage.set_spares_signal(signal);
    storage.request_spares();
}
