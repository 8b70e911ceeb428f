//! The [`ExecutorDriver`] handle: lifecycle, status updates and messages, and the state its
//! tasks share. The subscription loop and the update sender are in `session.rs`, the
//! callbacks' task in `dispatch.rs`.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mesoblk_proto::mesos::v1::executor::{call, Call};
use mesoblk_proto::mesos::v1::{task_status, TaskInfo, TaskState, TaskStatus};
use reqwest::Url;
use tokio::sync::{mpsc, Notify};

use super::updates::Book;
use super::{dispatch, session, Executor, ExecutorConfig, ExecutorEnvironment, ExecutorError};
use crate::lifecycle::{DriverStatus, Lifecycle};
use crate::transport::{drain, endpoint_url, Transport};

/// Poll interval of the bounded waits for updates to go out or be acknowledged.
const FLUSH_POLL: Duration = Duration::from_millis(20);

/// What the tasks share under a lock.
#[derive(Debug)]
pub(super) struct State {
    pub(super) book: Book,
    /// The live subscription's number.
    pub(super) connection: Option<u64>,
    connections: u64,
}

/// State shared by the handle and the driver's tasks.
#[derive(Debug)]
pub(super) struct Inner {
    pub(super) env: ExecutorEnvironment,
    pub(super) config: ExecutorConfig,
    /// `http://<agent>/api/v1/executor`.
    pub(super) url: Url,
    pub(super) calls: Transport,
    pub(super) stream: Transport,
    pub(super) life: Lifecycle,
    state: Mutex<State>,
    /// Wakes the update sender (new update, new connection).
    pub(super) wake: Notify,
    failure: Mutex<Option<ExecutorError>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded values are updated in single steps; a panic elsewhere cannot tear them.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inner {
    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Aborts because of `error` (kept for `join`).
    pub(super) fn fail(&self, error: ExecutorError) {
        if self.life.abort() {
            tracing::warn!(%error, "executor driver aborted");
            *lock(&self.failure) = Some(error);
        }
    }

    fn call(&self, kind: call::Type) -> Call {
        Call {
            executor_id: self.env.executor_id.clone(),
            framework_id: self.env.framework_id.clone(),
            r#type: Some(kind as i32),
            ..Call::default()
        }
    }

    /// The SUBSCRIBE call with everything unacknowledged, and the uuids it carries.
    pub(super) fn subscribe_request(&self) -> (Vec<u8>, Vec<Vec<u8>>) {
        let subscribe = self.state().book.subscribe_body();
        let uuids = subscribe
            .unacknowledged_updates
            .iter()
            .filter_map(|u| u.status.uuid.clone())
            .collect();
        let call = Call {
            subscribe: Some(subscribe),
            ..self.call(call::Type::Subscribe)
        };
        (self.stream.encode(&call), uuids)
    }

    /// Records a SUBSCRIBED whose SUBSCRIBE carried `uuids`; returns the connection's number
    /// and whether an earlier subscription existed.
    pub(super) fn on_subscribed(&self, uuids: &[Vec<u8>]) -> (u64, bool) {
        let mut state = self.state();
        let reregistered = state.connections > 0;
        state.connections += 1;
        let connection = state.connections;
        state.connection = Some(connection);
        state.book.subscribed(connection, uuids, Instant::now());
        drop(state);
        self.wake.notify_one();
        (connection, reregistered)
    }

    pub(super) fn on_disconnected(&self) {
        self.state().connection = None;
    }

    /// Sends one call (UPDATE or MESSAGE) to the agent.
    pub(super) async fn post(&self, call: &Call, name: &'static str) -> Result<(), ExecutorError> {
        let body = self.calls.encode(call);
        let timeout = self.config.call_timeout;
        let (_, response) = self
            .calls
            .post(&self.url, body, None, timeout, None)
            .await
            .map_err(|source| ExecutorError::Call { call: name, source })?;
        drain(response, timeout).await;
        Ok(())
    }

    /// The UPDATE call for `status`.
    pub(super) fn update_call(&self, status: TaskStatus) -> Call {
        Call {
            update: Some(call::Update { status }),
            ..self.call(call::Type::Update)
        }
    }

    /// Waits (at most `timeout`) until every pending update went out on the live connection,
    /// or there is none. Returns whether that happened.
    pub(super) async fn flush(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let done = {
                let state = self.state();
                match state.connection {
                    Some(connection) => state.book.all_sent_on(connection),
                    None => state.book.len() == 0,
                }
            };
            if done {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(FLUSH_POLL).await;
        }
    }

    /// A task arrived in LAUNCH or LAUNCH_GROUP.
    pub(super) fn launched(&self, task: &TaskInfo) {
        self.state().book.launched(task.clone());
    }

    /// ACKNOWLEDGED arrived.
    pub(super) fn acknowledged(&self, task_id: &str, uuid: &[u8]) {
        if !self.state().book.acknowledged(task_id, uuid) {
            tracing::debug!(task = task_id, "acknowledgement of an unknown update");
        }
    }
}

/// The handle to an executor driver: lifecycle, status updates, messages.
///
/// `Clone + Send + Sync`; every clone drives the same subscription. See the
/// [module docs](super) for the threading model and the connection logic.
#[derive(Debug, Clone)]
pub struct ExecutorDriver {
    pub(super) inner: Arc<Inner>,
}

impl ExecutorDriver {
    /// A driver for the executor described by `env` (usually
    /// [`ExecutorEnvironment::from_process`]). Nothing is sent before [`start`](Self::start).
    pub fn new(env: ExecutorEnvironment, config: ExecutorConfig) -> Result<Self, ExecutorError> {
        let url = endpoint_url(&env.agent_endpoint, "api/v1/executor")
            .map_err(|e| ExecutorError::Config(e.to_string()))?;
        let auth = env
            .authentication_token
            .as_ref()
            .map(|token| format!("Bearer {token}"));
        let transport = |streaming| {
            Transport::new(
                config.content_type,
                config.connect_timeout,
                auth.as_deref(),
                streaming,
            )
            .map_err(|e| ExecutorError::Config(e.to_string()))
        };
        let calls = transport(false)?;
        let stream = transport(true)?;
        let state = State {
            book: Book::new(config.updates_max, config.resend),
            connection: None,
            connections: 0,
        };
        Ok(ExecutorDriver {
            inner: Arc::new(Inner {
                env,
                config,
                url,
                calls,
                stream,
                life: Lifecycle::new(),
                state: Mutex::new(state),
                wake: Notify::new(),
                failure: Mutex::new(None),
            }),
        })
    }

    /// A driver configured from the process's environment, with default settings.
    pub fn from_env() -> Result<Self, ExecutorError> {
        Self::new(
            ExecutorEnvironment::from_process()?,
            ExecutorConfig::default(),
        )
    }

    /// What the agent told this executor.
    pub fn environment(&self) -> &ExecutorEnvironment {
        &self.inner.env
    }

    /// Starts the driver on the current tokio runtime: it subscribes to the agent, calls
    /// `executor` as events arrive and delivers status updates. Returns at once.
    pub fn start<E: Executor>(&self, executor: E) -> Result<(), ExecutorError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| ExecutorError::NoRuntime)?;
        if !self.inner.life.start() {
            return Err(ExecutorError::AlreadyStarted);
        }
        let (tx, rx) = mpsc::channel(self.inner.config.event_queue_max.max(1));
        let connection = runtime.spawn(session::run(self.inner.clone(), tx));
        let sender = runtime.spawn(session::send_updates(self.inner.clone()));
        let dispatcher = runtime.spawn(dispatch::run(self.clone(), executor, rx));
        self.inner.life.set_callback_task(dispatcher.id());
        let inner = self.inner.clone();
        runtime.spawn(async move {
            if let Err(e) = dispatcher.await {
                inner.fail(ExecutorError::CallbackPanicked(e.to_string()));
            }
            let _ = connection.await;
            let _ = sender.await;
            inner.life.set_finished();
        });
        Ok(())
    }

    /// Stops the driver after the pending status updates went out to the agent (waiting at
    /// most the shutdown grace period). Updates not yet acknowledged then are not resent.
    pub async fn stop(&self) -> Result<(), ExecutorError> {
        if !self.inner.life.begin_stop() {
            return Err(ExecutorError::NotRunning);
        }
        self.inner.flush(self.inner.env.shutdown_grace_period).await;
        self.inner.life.finish_stop();
        Ok(())
    }

    /// Aborts the driver at once.
    pub fn abort(&self) -> Result<(), ExecutorError> {
        if self.inner.life.abort() {
            Ok(())
        } else {
            Err(ExecutorError::NotRunning)
        }
    }

    /// Waits until the driver has ended: `Ok(Stopped)` after [`stop`](Self::stop) or a
    /// shutdown (the agent's SHUTDOWN, or the agent gone for good), `Ok(Aborted)` after
    /// [`abort`](Self::abort); the first caller after a failure gets the error. The executor's
    /// process should exit when this returns.
    pub async fn join(&self) -> Result<DriverStatus, ExecutorError> {
        if self.status() == DriverStatus::NotStarted {
            return Err(ExecutorError::NotRunning);
        }
        self.inner.life.wait_finished().await;
        match self.status() {
            DriverStatus::Aborted => match lock(&self.inner.failure).take() {
                Some(error) => Err(error),
                None => Ok(DriverStatus::Aborted),
            },
            status => Ok(status),
        }
    }

    /// [`start`](Self::start) then [`join`](Self::join).
    pub async fn run<E: Executor>(&self, executor: E) -> Result<DriverStatus, ExecutorError> {
        self.start(executor)?;
        self.join().await
    }

    /// Where the driver is in its life.
    pub fn status(&self) -> DriverStatus {
        self.inner.life.status()
    }

    /// Whether a subscription to the agent is live.
    pub fn is_subscribed(&self) -> bool {
        self.inner.state().connection.is_some()
    }

    /// Sends a status update reliably: the driver fills in `executor_id`, `source`
    /// (SOURCE_EXECUTOR), `timestamp` and a fresh `uuid`, keeps the update and sends it to the
    /// agent, again on every resubscription (and after a while without acknowledgement) until
    /// the agent reports it acknowledged. Returns the update's uuid once it is queued; works
    /// while disconnected. TASK_STAGING is refused.
    pub fn send_status_update(&self, mut status: TaskStatus) -> Result<Vec<u8>, ExecutorError> {
        if !matches!(self.status(), DriverStatus::Running) {
            return Err(ExecutorError::NotRunning);
        }
        if status.state() == TaskState::TaskStaging {
            return Err(ExecutorError::StagingUpdate);
        }
        let uuid = uuid::Uuid::new_v4().as_bytes().to_vec();
        status.executor_id = Some(self.inner.env.executor_id.clone());
        status.source = Some(task_status::Source::Executor as i32);
        status.timestamp = Some(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        );
        status.uuid = Some(uuid.clone());
        self.inner.state().book.add(status)?;
        self.inner.wake.notify_one();
        Ok(uuid)
    }

    /// Sends `data` to the scheduler (MESSAGE; not reliable, and only while subscribed).
    pub async fn send_framework_message(&self, data: Vec<u8>) -> Result<(), ExecutorError> {
        if !self.inner.life.is_running() {
            return Err(ExecutorError::NotRunning);
        }
        if !self.is_subscribed() {
            return Err(ExecutorError::NotSubscribed);
        }
        let call = Call {
            message: Some(call::Message { data }),
            ..self.inner.call(call::Type::Message)
        };
        self.inner.post(&call, "MESSAGE").await
    }

    /// Status updates sent and not yet acknowledged.
    pub fn unacknowledged_updates(&self) -> usize {
        self.inner.state().book.len()
    }

    /// Waits (at most `timeout`) until every status update sent so far is acknowledged;
    /// returns whether that happened. Useful before exiting.
    pub async fn wait_acknowledged(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.unacknowledged_updates() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(FLUSH_POLL).await;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use mesoblk_proto::mesos::v1::{AgentId, TaskId};
    use serde_json::Value;

    use super::*;

    #[tokio::test]
    async fn subscribe_and_update_calls_have_mesos_shape() {
        let env = ExecutorEnvironment::new("127.0.0.1:5051", "F-1", "E-1");
        let driver = ExecutorDriver::new(env, ExecutorConfig::default()).expect("driver");
        assert_eq!(
            driver.inner.url.as_str(),
            "http://127.0.0.1:5051/api/v1/executor"
        );
        let task = TaskInfo {
            name: "t".into(),
            task_id: TaskId { value: "t".into() },
            agent_id: AgentId { value: "S".into() },
            ..TaskInfo::default()
        };
        driver.inner.launched(&task);
        // Queued while not running is refused; the books are filled by hand here.
        let status = TaskStatus {
            task_id: task.task_id.clone(),
            state: TaskState::TaskRunning as i32,
            uuid: Some(vec![7; 16]),
            ..TaskStatus::default()
        };
        assert!(matches!(
            driver.send_status_update(status.clone()),
            Err(ExecutorError::NotRunning)
        ));
        driver.inner.state().book.add(status).expect("room");
        let (body, uuids) = driver.inner.subscribe_request();
        assert_eq!(uuids, vec![vec![7; 16]]);
        let json: Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(json["type"], "SUBSCRIBE");
        assert_eq!(json["framework_id"]["value"], "F-1");
        assert_eq!(json["executor_id"]["value"], "E-1");
        assert_eq!(
            json["subscribe"]["unacknowledged_tasks"][0]["task_id"]["value"],
            "t"
        );
        let update = &json["subscribe"]["unacknowledged_updates"][0]["status"];
        assert_eq!(update["state"], "TASK_RUNNING");
        assert_eq!(update["uuid"], "BwcHBwcHBwcHBwcHBwcHBw==");
    }
}
