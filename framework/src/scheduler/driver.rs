//! The [`SchedulerDriver`] handle: its lifecycle (start, stop, abort, join, run) and the state
//! its tasks share. The calls to the master are in `calls.rs`, the subscription loop in
//! `session.rs`, the callbacks' task in `dispatch.rs`.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use mesoblk_proto::mesos::v1::scheduler::{call, Call};
use mesoblk_proto::mesos::v1::{FrameworkId, FrameworkInfo};
use reqwest::Url;
use tokio::sync::mpsc;

use super::{dispatch, session, DriverError, Scheduler, SchedulerConfig};
use crate::lifecycle::{DriverStatus, Lifecycle};
use crate::transport::{endpoint_url, Transport};

/// What the subscription needs to know, and what calls need from it.
#[derive(Debug)]
pub(super) struct Session {
    /// The framework as it subscribes; `id` is set after the first SUBSCRIBED.
    pub(super) framework: FrameworkInfo,
    /// Roles suppressed by SUPPRESS and not revived; sent again on every resubscription.
    pub(super) suppressed_roles: BTreeSet<String>,
    /// The scheduler endpoint of the master believed to lead.
    pub(super) leader: Url,
    /// The live subscription's `Mesos-Stream-Id`.
    pub(super) stream_id: Option<String>,
    /// Whether `registered` was dispatched (later subscriptions are re-registrations).
    pub(super) registered: bool,
}

/// State shared by the handle and the driver's tasks.
#[derive(Debug)]
pub(super) struct Inner {
    pub(super) config: SchedulerConfig,
    /// The configured scheduler endpoint.
    pub(super) master: Url,
    /// Client for calls (keeps its connection alive between calls).
    pub(super) calls: Transport,
    /// Client for subscriptions (one fresh connection each).
    pub(super) stream: Transport,
    session: Mutex<Session>,
    pub(super) life: Lifecycle,
    /// Why the driver aborted on its own; handed to the first `join`.
    failure: Mutex<Option<DriverError>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded values are plain data updated in one step; a panic elsewhere cannot leave
    // them half-written.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inner {
    pub(super) fn session(&self) -> MutexGuard<'_, Session> {
        lock(&self.session)
    }

    pub(super) fn is_running(&self) -> bool {
        self.life.is_running()
    }

    /// Aborts because of `error` (kept for `join`), unless already ended.
    pub(super) fn fail(&self, error: DriverError) {
        if self.life.abort() {
            tracing::warn!(%error, "scheduler driver aborted");
            *lock(&self.failure) = Some(error);
        }
    }

    /// The SUBSCRIBE call for the current session and where to send it.
    pub(super) fn subscribe_request(&self) -> (Url, Vec<u8>) {
        let session = self.session();
        let call = Call {
            r#type: Some(call::Type::Subscribe as i32),
            framework_id: session.framework.id.clone(),
            subscribe: Some(call::Subscribe {
                framework_info: session.framework.clone(),
                suppressed_roles: session.suppressed_roles.iter().cloned().collect(),
                offer_constraints: None,
            }),
            ..Call::default()
        };
        (session.leader.clone(), self.stream.encode(&call))
    }

    /// Records a SUBSCRIBED from `leader`; returns whether the framework had registered before.
    pub(super) fn on_subscribed(
        &self,
        framework_id: &FrameworkId,
        stream_id: String,
        leader: Url,
    ) -> bool {
        let mut session = self.session();
        if let Some(old) = session
            .framework
            .id
            .as_ref()
            .filter(|id| *id != framework_id)
        {
            tracing::warn!(old = %old.value, new = %framework_id.value, "master assigned another framework id");
        }
        session.framework.id = Some(framework_id.clone());
        session.stream_id = Some(stream_id);
        session.leader = leader;
        std::mem::replace(&mut session.registered, true)
    }

    /// The subscription ended: calls are refused until the next SUBSCRIBED.
    pub(super) fn on_disconnected(&self) {
        self.session().stream_id = None;
    }

    /// A subscription attempt failed before SUBSCRIBED: try the configured master next, in
    /// case the leader moved.
    pub(super) fn forget_leader(&self) {
        self.session().leader = self.master.clone();
    }
}

/// The handle to a scheduler driver: lifecycle and calls to the master.
///
/// `Clone + Send + Sync` and cheap to clone; every clone drives the same subscription. See the
/// [module docs](super) for the threading model and the connection logic.
#[derive(Debug, Clone)]
pub struct SchedulerDriver {
    pub(super) inner: Arc<Inner>,
}

impl SchedulerDriver {
    /// A driver for `framework` (set `framework.id` to fail over an existing framework).
    /// `framework.failover_timeout` is how long the master keeps the framework, and its tasks,
    /// while the driver is disconnected; Mesos's default is 0, with which any broken connection
    /// ends the framework (the resubscription is then refused), so set it for a driver that
    /// should survive a master restart. Checks the settings; nothing is sent before
    /// [`start`](Self::start).
    pub fn new(framework: FrameworkInfo, config: SchedulerConfig) -> Result<Self, DriverError> {
        let master = endpoint_url(&config.master, "api/v1/scheduler")
            .map_err(|e| DriverError::Config(e.to_string()))?;
        let shortest = config
            .subscribe_timeout
            .min(config.call_timeout)
            .min(config.connect_timeout);
        if shortest.is_zero() {
            return Err(DriverError::Config("timeouts must be positive".into()));
        }
        let auth = config.authorization.as_deref();
        let transport = |streaming| {
            Transport::new(config.content_type, config.connect_timeout, auth, streaming)
                .map_err(|e| DriverError::Config(e.to_string()))
        };
        let calls = transport(false)?;
        let stream = transport(true)?;
        let session = Session {
            framework,
            suppressed_roles: BTreeSet::new(),
            leader: master.clone(),
            stream_id: None,
            registered: false,
        };
        Ok(SchedulerDriver {
            inner: Arc::new(Inner {
                config,
                master,
                calls,
                stream,
                session: Mutex::new(session),
                life: Lifecycle::new(),
                failure: Mutex::new(None),
            }),
        })
    }

    /// Starts the driver on the current tokio runtime: one task subscribes (and resubscribes)
    /// and reads events, another calls `scheduler`'s callbacks. Returns at once.
    pub fn start<S: Scheduler>(&self, scheduler: S) -> Result<(), DriverError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| DriverError::NoRuntime)?;
        if !self.inner.life.start() {
            return Err(DriverError::AlreadyStarted);
        }
        let (tx, rx) = mpsc::channel(self.inner.config.event_queue_max.max(1));
        let connection = runtime.spawn(session::run(self.inner.clone(), tx));
        let dispatcher = runtime.spawn(dispatch::run(self.clone(), scheduler, rx));
        self.inner.life.set_callback_task(dispatcher.id());
        let inner = self.inner.clone();
        runtime.spawn(async move {
            // The connection task ends on stop/abort; it also ends when the dispatcher is gone
            // (its queue closes), e.g. after a panicking callback.
            let dispatched = dispatcher.await;
            if let Err(e) = &dispatched {
                inner.fail(DriverError::CallbackPanicked(e.to_string()));
            }
            let _ = connection.await;
            inner.life.set_finished();
        });
        Ok(())
    }

    /// Stops the driver. Without `failover` it first sends TEARDOWN, so the master removes the
    /// framework (its tasks are killed); with `failover` it just closes the subscription, and
    /// the master keeps the framework for its `failover_timeout`, so another driver with the
    /// same framework id can take over. The driver is stopped when this returns, even if the
    /// TEARDOWN could not be delivered (the error says so; while disconnected that is
    /// [`DriverError::NotSubscribed`]).
    pub async fn stop(&self, failover: bool) -> Result<(), DriverError> {
        if !self.inner.life.begin_stop() {
            return Err(DriverError::NotRunning);
        }
        // The stream stays open until TEARDOWN is answered: a framework whose stream closed
        // first would be "not subscribed" and its TEARDOWN refused.
        let result = if failover {
            Ok(())
        } else {
            self.inner.send(Call::default(), call::Type::Teardown).await
        };
        self.inner.life.finish_stop();
        result
    }

    /// Aborts the driver: closes the subscription without TEARDOWN and delivers no further
    /// callbacks. The master keeps the framework for its `failover_timeout`.
    pub fn abort(&self) -> Result<(), DriverError> {
        if self.inner.life.abort() {
            Ok(())
        } else {
            Err(DriverError::NotRunning)
        }
    }

    /// Waits until the driver has ended and its tasks have finished. `Ok(Stopped)` after
    /// [`stop`](Self::stop), `Ok(Aborted)` after [`abort`](Self::abort); when the driver
    /// aborted on its own (the master refused the framework, reconnection was exhausted) the
    /// first caller gets that error, later callers `Ok(Aborted)`. Called from a callback, it
    /// waits only for the driver to end, not for the callback's own task.
    pub async fn join(&self) -> Result<DriverStatus, DriverError> {
        if self.status() == DriverStatus::NotStarted {
            return Err(DriverError::NotRunning);
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
    pub async fn run<S: Scheduler>(&self, scheduler: S) -> Result<DriverStatus, DriverError> {
        self.start(scheduler)?;
        self.join().await
    }

    /// Where the driver is in its life.
    pub fn status(&self) -> DriverStatus {
        self.inner.life.status()
    }

    /// The framework's id, once the master assigned it (or as given for a failover).
    pub fn framework_id(&self) -> Option<FrameworkId> {
        self.inner.session().framework.id.clone()
    }

    /// Whether a subscription is live (calls can be made).
    pub fn is_subscribed(&self) -> bool {
        self.inner.session().stream_id.is_some()
    }

    /// The scheduler endpoint of the master the driver talks to (the leader after redirects).
    pub fn master_url(&self) -> String {
        self.inner.session().leader.to_string()
    }

    /// Fails unless the driver is running.
    pub(super) fn ensure_running(&self) -> Result<(), DriverError> {
        if self.inner.is_running() {
            Ok(())
        } else {
            Err(DriverError::NotRunning)
        }
    }
}

#[cfg(test)]
mod tests {
    use mesoblk_proto::mesos::v1::FrameworkId;
    use serde_json::Value;

    use super::*;

    fn info() -> FrameworkInfo {
        FrameworkInfo {
            user: "u".into(),
            name: "n".into(),
            failover_timeout: Some(30.0),
            ..FrameworkInfo::default()
        }
    }

    #[test]
    fn subscribe_calls_have_mesos_shape() {
        let driver =
            SchedulerDriver::new(info(), SchedulerConfig::new("127.0.0.1:5050")).expect("driver");
        let (url, body) = driver.inner.subscribe_request();
        assert_eq!(url.as_str(), "http://127.0.0.1:5050/api/v1/scheduler");
        let json: Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(json["type"], "SUBSCRIBE");
        assert!(json.get("framework_id").is_none(), "{json}");
        assert_eq!(json["subscribe"]["framework_info"]["user"], "u");
        assert_eq!(
            json["subscribe"]["framework_info"]["failover_timeout"],
            30.0
        );

        // Once registered (and with a suppressed role), a resubscription names both.
        let id = FrameworkId {
            value: "F-1".into(),
        };
        let url = driver.inner.master.clone();
        assert!(!driver.inner.on_subscribed(&id, "stream".into(), url));
        driver.inner.session().suppressed_roles.insert("*".into());
        driver.inner.on_disconnected();
        let (_, body) = driver.inner.subscribe_request();
        let json: Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(json["framework_id"]["value"], "F-1");
        assert_eq!(json["subscribe"]["framework_info"]["id"]["value"], "F-1");
        assert_eq!(json["subscribe"]["suppressed_roles"][0], "*");
        assert!(!driver.is_subscribed());
    }

    #[test]
    fn protobuf_drivers_encode_protobuf() {
        let mut config = SchedulerConfig::new("http://m:5050/");
        config.content_type = mesoblk_proto::codec::ContentType::Protobuf;
        let driver = SchedulerDriver::new(info(), config).expect("driver");
        let (_, body) = driver.inner.subscribe_request();
        let call: Call = mesoblk_proto::codec::decode_protobuf(&body).expect("protobuf");
        assert_eq!(call.r#type(), call::Type::Subscribe);
        assert_eq!(driver.master_url(), "http://m:5050/api/v1/scheduler");
    }
}
