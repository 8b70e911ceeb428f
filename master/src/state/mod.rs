//! The master's books and the rules that change them.
//!
//! Ownership: one [`Master`] value holds everything (frameworks and their connections today;
//! agents, offers, tasks and operations in the next milestone). It is plain synchronous code with
//! no I/O and no timers, so every rule can be unit-tested; it lives behind a `std` mutex in a
//! [`MasterHandle`], which HTTP handlers share. A method that needs something to happen later
//! (a failover timer) records an [`Effect`]; [`MasterHandle::with`] carries the effects out after
//! releasing the lock. Nothing ever awaits while holding the lock.
//!
//! Events to a framework go into its connection's bounded queue (`Config::event_queue_max`); a
//! subscriber that lets the queue fill up is disconnected, as if its stream had broken.
//!
//! Next milestone: the offer/task/agent state plugs in here. The scheduler calls that already
//! arrive validated ([`Master::accept`], [`Master::decline`], [`Master::revive`],
//! [`Master::suppress`], [`Master::kill`], [`Master::shutdown`], [`Master::acknowledge`],
//! [`Master::acknowledge_operation_status`], [`Master::message`], [`Master::request`], the inverse
//! offer calls) are the seams: each is a method here that will consult the allocator
//! (`crate::allocator`) and the agent registry, and [`Master::remove_framework`] is where a
//! removed framework's tasks get killed and its offers rescinded.

pub mod validation;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mesoblk_proto::codec::ContentType;
use mesoblk_proto::mesos::v1::framework_info::capability::Type as Capability;
use mesoblk_proto::mesos::v1::scheduler::{call, event, Event, OfferConstraints};
use mesoblk_proto::mesos::v1::{
    task_status, Address, FrameworkId, FrameworkInfo, MasterInfo, OperationState, OperationStatus,
    TaskState, TaskStatus, TimeInfo,
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::config::{Config, MESOS_VERSION};
use crate::error::ApiError;
use crate::stream::EventStream;

/// Something the master asked to happen outside the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Remove the framework after `timeout` unless it has resubscribed (its generation moved on).
    FailoverTimer {
        /// The disconnected framework.
        framework_id: String,
        /// Its generation when it disconnected.
        generation: u64,
        /// Its `failover_timeout`.
        timeout: Duration,
    },
}

/// A framework's live event stream.
#[derive(Debug)]
pub struct Connection {
    /// Distinguishes this stream from the framework's earlier and later ones.
    pub id: u64,
    /// The `Mesos-Stream-Id` handed out with it.
    pub stream_id: String,
    outbox: mpsc::Sender<Event>,
}

/// A registered framework.
#[derive(Debug)]
pub struct Framework {
    /// Its `FrameworkInfo`, with `id` set.
    pub info: FrameworkInfo,
    /// The live stream, when subscribed.
    pub connection: Option<Connection>,
    /// Whether offers may go to it (connected frameworks are active).
    pub active: bool,
    /// Roles it does not want offers for.
    pub suppressed_roles: BTreeSet<String>,
    /// Its offer constraints, as given.
    pub offer_constraints: Option<OfferConstraints>,
    /// When it first subscribed.
    pub registered_time: SystemTime,
    /// When it last resubscribed.
    pub reregistered_time: Option<SystemTime>,
    /// Bumped on every (re)subscription; a failover timer only fires for its own generation.
    pub generation: u64,
}

/// A framework that was removed (torn down or failed over too late).
#[derive(Debug, Clone)]
pub struct CompletedFramework {
    /// Its last `FrameworkInfo`.
    pub info: FrameworkInfo,
    /// When it first subscribed.
    pub registered_time: SystemTime,
    /// When it was removed.
    pub unregistered_time: SystemTime,
}

/// The result of a SUBSCRIBE: the stream to return, whatever the outcome (a refused
/// subscription is an ERROR event on a 200 stream, as in Mesos).
#[derive(Debug)]
pub struct Subscription {
    /// The `Mesos-Stream-Id` header value.
    pub stream_id: String,
    /// The framework, when subscribed.
    pub framework_id: Option<String>,
    /// Connection id, when subscribed.
    pub connection_id: Option<u64>,
    /// The queue the stream reads.
    pub events: mpsc::Receiver<Event>,
}

/// A refused subscription: the ERROR event on a stream that then ends.
fn refused(
    outbox: &mpsc::Sender<Event>,
    events: mpsc::Receiver<Event>,
    stream_id: String,
    message: String,
) -> Subscription {
    // The queue is new and empty, so this cannot fail; the sender's owner drops it right after,
    // which ends the stream.
    let _ = outbox.try_send(error_event(message));
    Subscription {
        stream_id,
        framework_id: None,
        connection_id: None,
        events,
    }
}

/// The master's state. See the module docs.
#[derive(Debug)]
pub struct Master {
    config: Arc<Config>,
    info: MasterInfo,
    start_time: SystemTime,
    frameworks: BTreeMap<String, Framework>,
    completed: VecDeque<CompletedFramework>,
    next_framework_id: u64,
    next_connection_id: u64,
    weights: BTreeMap<String, f64>,
    quotas: BTreeMap<String, mesoblk_proto::mesos::v1::quota::QuotaConfig>,
    effects: Vec<Effect>,
}

/// Seconds since the epoch, as Mesos reports times in JSON.
pub fn epoch_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A `TimeInfo` for `t`.
pub fn time_info(t: SystemTime) -> TimeInfo {
    let nanos = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    TimeInfo {
        nanoseconds: i64::try_from(nanos).unwrap_or(i64::MAX),
    }
}

fn event(kind: event::Type) -> Event {
    Event {
        r#type: Some(kind as i32),
        ..Default::default()
    }
}

/// An ERROR event.
pub fn error_event(message: impl Into<String>) -> Event {
    Event {
        error: Some(event::Error {
            message: message.into(),
        }),
        ..event(event::Type::Error)
    }
}

/// The HEARTBEAT event.
pub fn heartbeat_event() -> Event {
    event(event::Type::Heartbeat)
}

impl Master {
    /// A master with no frameworks, identified by a fresh UUID.
    pub fn new(config: Config) -> Self {
        let id = uuid::Uuid::new_v4().to_string();
        let ip = config.advertise_ip;
        let info = MasterInfo {
            id,
            // Mesos stores `in_addr.s_addr`: the address bytes in network order, read as a host
            // integer.
            ip: u32::from_ne_bytes(ip.octets()),
            port: u32::from(config.advertise_port),
            pid: Some(format!("master@{ip}:{}", config.advertise_port)),
            hostname: Some(config.hostname.clone()),
            version: Some(MESOS_VERSION.into()),
            address: Some(Address {
                hostname: Some(config.hostname.clone()),
                ip: Some(ip.to_string()),
                port: i32::from(config.advertise_port),
            }),
            domain: None,
            capabilities: Vec::new(),
        };
        Master {
            config: Arc::new(config),
            info,
            start_time: SystemTime::now(),
            frameworks: BTreeMap::new(),
            completed: VecDeque::new(),
            next_framework_id: 0,
            next_connection_id: 0,
            weights: BTreeMap::new(),
            quotas: BTreeMap::new(),
            effects: Vec::new(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// This master's `MasterInfo`.
    pub fn info(&self) -> &MasterInfo {
        &self.info
    }

    /// When the master started.
    pub fn start_time(&self) -> SystemTime {
        self.start_time
    }

    /// Registered frameworks by id.
    pub fn frameworks(&self) -> &BTreeMap<String, Framework> {
        &self.frameworks
    }

    /// Removed frameworks, oldest first.
    pub fn completed_frameworks(&self) -> &VecDeque<CompletedFramework> {
        &self.completed
    }

    /// Role weights set by UPDATE_WEIGHTS.
    pub fn weights(&self) -> &BTreeMap<String, f64> {
        &self.weights
    }

    /// Quotas set by UPDATE_QUOTA.
    pub fn quotas(&self) -> &BTreeMap<String, mesoblk_proto::mesos::v1::quota::QuotaConfig> {
        &self.quotas
    }

    /// Takes the effects recorded since the last call.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    fn new_framework_id(&mut self) -> String {
        let id = format!("{}-{:04}", self.info.id, self.next_framework_id);
        self.next_framework_id += 1;
        id
    }

    fn is_completed(&self, framework_id: &str) -> bool {
        self.completed.iter().any(|c| {
            c.info
                .id
                .as_ref()
                .is_some_and(|id| id.value == framework_id)
        })
    }

    fn subscribed_event(&self, framework_id: &str) -> Event {
        Event {
            subscribed: Some(event::Subscribed {
                framework_id: FrameworkId {
                    value: framework_id.into(),
                },
                heartbeat_interval_seconds: Some(self.config.heartbeat_interval.as_secs_f64()),
                master_info: Some(self.info.clone()),
            }),
            ..event(event::Type::Subscribed)
        }
    }

    /// Handles SUBSCRIBE (`Master::subscribe` and `_subscribe` in Mesos): a new framework gets an
    /// id; a known id fails the old stream over ("Framework failed over") and keeps the
    /// framework; an unknown id is taken as a framework recovering after a master failover; the
    /// id of a removed framework, or an invalid `FrameworkInfo`, gets an ERROR event and a closed
    /// stream.
    pub fn subscribe(&mut self, subscribe: call::Subscribe) -> Subscription {
        let (outbox, events) = mpsc::channel(self.config.event_queue_max);
        let stream_id = uuid::Uuid::new_v4().to_string();
        let mut info = subscribe.framework_info;
        info!(framework = %info.name, "received subscription request");
        if let Err(message) = self.validate_subscription(
            &info,
            &subscribe.suppressed_roles,
            subscribe.offer_constraints.as_ref(),
        ) {
            info!(framework = %info.name, %message, "refusing subscription");
            return refused(&outbox, events, stream_id, message);
        }
        let requested_id = info
            .id
            .as_ref()
            .map(|id| id.value.clone())
            .filter(|id| !id.is_empty());
        let connection_id = self.next_connection_id;
        self.next_connection_id += 1;
        let connection = Connection {
            id: connection_id,
            stream_id: stream_id.clone(),
            outbox,
        };
        let suppressed: BTreeSet<String> = subscribe.suppressed_roles.into_iter().collect();
        let now = SystemTime::now();
        let framework_id = match requested_id {
            Some(id) if self.frameworks.contains_key(&id) => {
                let Some(framework) = self.frameworks.get_mut(&id) else {
                    unreachable!("checked above");
                };
                // Mesos keeps `user` and `checkpoint` (MESOS-703) and refuses a new principal.
                info.user.clone_from(&framework.info.user);
                info.checkpoint = framework.info.checkpoint;
                if let Err(message) = validation::validate_update(&framework.info, &info) {
                    // The refusal goes on the new stream; the old one stays as it is.
                    info!(framework = %id, %message, "refusing resubscription");
                    return refused(&connection.outbox, events, stream_id, message);
                }
                if let Some(old) = framework.connection.take() {
                    info!(framework = %id, "framework failed over");
                    let _ = old.outbox.try_send(error_event("Framework failed over"));
                }
                framework.info = info;
                framework.suppressed_roles = suppressed;
                framework.offer_constraints = subscribe.offer_constraints;
                framework.reregistered_time = Some(now);
                framework.generation += 1;
                framework.connection = Some(connection);
                framework.active = true;
                info!(framework = %id, "framework resubscribed");
                id
            }
            requested => {
                // A new framework, or (with an id) one this master has not seen: Mesos
                // reconstructs it as recovered after a master failover.
                let id = match requested {
                    Some(id) => id,
                    None => self.new_framework_id(),
                };
                info.id = Some(FrameworkId { value: id.clone() });
                info!(framework = %id, name = %info.name, "framework subscribed");
                self.frameworks.insert(
                    id.clone(),
                    Framework {
                        info,
                        connection: Some(connection),
                        active: true,
                        suppressed_roles: suppressed,
                        offer_constraints: subscribe.offer_constraints,
                        registered_time: now,
                        reregistered_time: None,
                        generation: 0,
                    },
                );
                id
            }
        };
        let subscribed = self.subscribed_event(&framework_id);
        self.send(&framework_id, subscribed);
        Subscription {
            stream_id,
            framework_id: Some(framework_id),
            connection_id: Some(connection_id),
            events,
        }
    }

    fn validate_subscription(
        &self,
        info: &FrameworkInfo,
        suppressed_roles: &[String],
        offer_constraints: Option<&OfferConstraints>,
    ) -> Result<(), String> {
        validation::validate_framework_info(info)?;
        if info.user == "root" && !self.config.root_submissions {
            return Err(
                "User 'root' is not allowed to run frameworks without --root_submissions set"
                    .into(),
            );
        }
        if let Some(id) = info.id.as_ref().filter(|id| !id.value.is_empty()) {
            if self.is_completed(&id.value) {
                return Err("Framework has been removed".into());
            }
        }
        let roles = validation::framework_roles(info);
        validation::validate_allocator_options(&roles, suppressed_roles, offer_constraints)
    }

    /// Queues `event` for the framework's stream. A full queue disconnects the framework.
    pub fn send(&mut self, framework_id: &str, event: Event) {
        let Some(framework) = self.frameworks.get_mut(framework_id) else {
            return;
        };
        let Some(connection) = &framework.connection else {
            debug!(framework = %framework_id, "dropping event for a disconnected framework");
            return;
        };
        match connection.outbox.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                warn!(framework = %framework_id, "event queue full; disconnecting the framework");
                let id = connection.id;
                self.exited(framework_id, id);
            }
            // The stream is gone; its close hook reports it.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// The framework's stream `connection_id` ended: mark it disconnected and start its failover
    /// timer (`Master::exited` and `_exited` in Mesos). Nothing happens if the framework has
    /// moved on to another stream or is gone.
    pub fn exited(&mut self, framework_id: &str, connection_id: u64) {
        let Some(framework) = self.frameworks.get_mut(framework_id) else {
            return;
        };
        if framework.connection.as_ref().map(|c| c.id) != Some(connection_id) {
            debug!(framework = %framework_id, "ignoring the end of a replaced stream");
            return;
        }
        framework.connection = None;
        framework.active = false;
        let timeout = validation::failover_timeout(&framework.info).unwrap_or_default();
        info!(framework = %framework_id, ?timeout, "framework disconnected; waiting for it to fail over");
        self.effects.push(Effect::FailoverTimer {
            framework_id: framework_id.into(),
            generation: framework.generation,
            timeout,
        });
    }

    /// A failover timer fired: remove the framework unless it resubscribed meanwhile.
    pub fn failover_timeout_expired(&mut self, framework_id: &str, generation: u64) {
        let expired = self
            .frameworks
            .get(framework_id)
            .is_some_and(|f| f.connection.is_none() && f.generation == generation);
        if expired {
            info!(framework = %framework_id, "framework failover timeout; removing it");
            self.remove_framework(framework_id);
        }
    }

    /// Removes a framework (TEARDOWN, operator TEARDOWN, failover timeout): its stream is closed
    /// and its id is remembered as removed. Next milestone: kill its tasks, rescind its offers,
    /// return its resources to the allocator.
    pub fn remove_framework(&mut self, framework_id: &str) -> bool {
        let Some(framework) = self.frameworks.remove(framework_id) else {
            return false;
        };
        info!(framework = %framework_id, "removing framework");
        // Dropping the connection's sender ends the stream once queued events are written.
        drop(framework.connection);
        if self.config.max_completed_frameworks > 0 {
            while self.completed.len() >= self.config.max_completed_frameworks {
                self.completed.pop_front();
            }
            self.completed.push_back(CompletedFramework {
                info: framework.info,
                registered_time: framework.registered_time,
                unregistered_time: SystemTime::now(),
            });
        }
        true
    }

    /// Checks that a non-SUBSCRIBE call comes from the framework's current stream, in Mesos's
    /// order: unknown framework (400), not subscribed (403), missing or different
    /// `Mesos-Stream-Id` (400).
    pub fn authorize_call(
        &self,
        framework_id: &str,
        stream_id: Option<&str>,
    ) -> Result<(), ApiError> {
        let framework = self
            .frameworks
            .get(framework_id)
            .ok_or_else(|| ApiError::bad_request("Framework cannot be found"))?;
        let connection = framework
            .connection
            .as_ref()
            .ok_or_else(|| ApiError::forbidden("Framework is not subscribed"))?;
        let stream_id = stream_id.ok_or_else(|| {
            ApiError::bad_request(
                "All non-subscribe calls should include the 'Mesos-Stream-Id' header",
            )
        })?;
        if stream_id != connection.stream_id {
            return Err(ApiError::bad_request(format!(
                "The stream ID '{stream_id}' included in this request didn't match the stream ID \
                 currently associated with framework ID {framework_id}"
            )));
        }
        Ok(())
    }

    fn partition_aware(&self, framework_id: &str) -> bool {
        self.frameworks
            .get(framework_id)
            .is_some_and(|f| validation::has_capability(&f.info, Capability::PartitionAware))
    }

    /// UPDATE_FRAMEWORK: validated like a subscription, then applied (200), or 400.
    pub fn update_framework(&mut self, update: call::UpdateFramework) -> Result<(), ApiError> {
        let info = update.framework_info;
        let id = info
            .id
            .as_ref()
            .map(|id| id.value.clone())
            .unwrap_or_default();
        validation::validate_framework_info(&info).map_err(|e| {
            ApiError::bad_request(format!("Supplied FrameworkInfo is not valid: {e}"))
        })?;
        let framework = self
            .frameworks
            .get_mut(&id)
            .ok_or_else(|| ApiError::bad_request("Framework cannot be found"))?;
        validation::validate_update(&framework.info, &info).map_err(|e| {
            ApiError::bad_request(format!("FrameworkInfo update is not valid: {e}"))
        })?;
        let roles = validation::framework_roles(&info);
        validation::validate_allocator_options(
            &roles,
            &update.suppressed_roles,
            update.offer_constraints.as_ref(),
        )
        .map_err(|e| ApiError::bad_request(format!("'UpdateFramework' call is not valid: {e}")))?;
        info!(framework = %id, "framework updated");
        framework.info = info;
        framework.suppressed_roles = update.suppressed_roles.into_iter().collect();
        framework.offer_constraints = update.offer_constraints;
        Ok(())
    }

    /// RECONCILE. With no tasks listed (implicit), every known task's latest state is sent; with
    /// tasks listed (explicit), each gets its state or, when unknown, what Mesos says about an
    /// unknown task: TASK_LOST (TASK_UNKNOWN for PARTITION_AWARE frameworks), SOURCE_MASTER,
    /// REASON_RECONCILIATION, no uuid. This master knows no tasks or agents yet, so every listed
    /// task is unknown.
    pub fn reconcile(&mut self, framework_id: &str, reconcile: call::Reconcile) {
        if reconcile.tasks.is_empty() {
            debug!(framework = %framework_id, "implicit reconciliation: no known tasks");
            return;
        }
        let state = if self.partition_aware(framework_id) {
            TaskState::TaskUnknown
        } else {
            TaskState::TaskLost
        };
        for task in reconcile.tasks {
            let status = TaskStatus {
                task_id: task.task_id,
                state: state as i32,
                message: Some("Reconciliation: Task is unknown".into()),
                source: Some(task_status::Source::Master as i32),
                reason: Some(task_status::Reason::Reconciliation as i32),
                agent_id: task.agent_id,
                timestamp: Some(epoch_secs(SystemTime::now())),
                ..Default::default()
            };
            let update = Event {
                update: Some(event::Update { status }),
                ..event(event::Type::Update)
            };
            self.send(framework_id, update);
        }
    }

    /// RECONCILE_OPERATIONS: unknown operations get OPERATION_UNKNOWN with Mesos's messages.
    pub fn reconcile_operations(
        &mut self,
        framework_id: &str,
        reconcile: call::ReconcileOperations,
    ) {
        for operation in reconcile.operations {
            let message = if operation.agent_id.is_some() {
                "Reconciliation: Both operation and agent are unknown"
            } else {
                "Reconciliation: Operation is unknown and no 'agent_id' was provided"
            };
            let status = OperationStatus {
                operation_id: Some(operation.operation_id),
                state: OperationState::OperationUnknown as i32,
                message: Some(message.into()),
                agent_id: operation.agent_id,
                resource_provider_id: operation.resource_provider_id,
                ..Default::default()
            };
            let update = Event {
                update_operation_status: Some(event::UpdateOperationStatus { status }),
                ..event(event::Type::UpdateOperationStatus)
            };
            self.send(framework_id, update);
        }
    }

    /// ACCEPT. Next milestone: validate the offers and operations, apply them, launch tasks.
    pub fn accept(&mut self, framework_id: &str, accept: &call::Accept) {
        debug!(framework = %framework_id, offers = accept.offer_ids.len(), operations = accept.operations.len(), "ACCEPT (no offers outstanding yet)");
    }

    /// DECLINE. Next milestone: return the offers' resources with the filter.
    pub fn decline(&mut self, framework_id: &str, decline: &call::Decline) {
        debug!(framework = %framework_id, offers = decline.offer_ids.len(), "DECLINE");
    }

    /// ACCEPT_INVERSE_OFFERS (maintenance; not supported yet, accepted as a no-op like an
    /// unknown inverse offer in Mesos).
    pub fn accept_inverse_offers(&mut self, framework_id: &str, _call: &call::AcceptInverseOffers) {
        debug!(framework = %framework_id, "ACCEPT_INVERSE_OFFERS");
    }

    /// DECLINE_INVERSE_OFFERS (see [`Master::accept_inverse_offers`]).
    pub fn decline_inverse_offers(
        &mut self,
        framework_id: &str,
        _call: &call::DeclineInverseOffers,
    ) {
        debug!(framework = %framework_id, "DECLINE_INVERSE_OFFERS");
    }

    /// REVIVE. Next milestone: clear filters, unsuppress, allocate.
    pub fn revive(&mut self, framework_id: &str, revive: Option<&call::Revive>) {
        let roles: Vec<String> = revive.map(|r| r.roles.clone()).unwrap_or_default();
        if let Some(framework) = self.frameworks.get_mut(framework_id) {
            if roles.is_empty() {
                framework.suppressed_roles.clear();
            } else {
                for role in &roles {
                    framework.suppressed_roles.remove(role);
                }
            }
        }
        debug!(framework = %framework_id, ?roles, "REVIVE");
    }

    /// SUPPRESS. Next milestone: tell the allocator.
    pub fn suppress(&mut self, framework_id: &str, suppress: Option<&call::Suppress>) {
        if let Some(framework) = self.frameworks.get_mut(framework_id) {
            let roles: Vec<String> =
                match suppress.map(|s| s.roles.clone()).filter(|r| !r.is_empty()) {
                    Some(roles) => roles,
                    None => validation::framework_roles(&framework.info)
                        .into_iter()
                        .collect(),
                };
            framework.suppressed_roles.extend(roles);
        }
        debug!(framework = %framework_id, "SUPPRESS");
    }

    /// KILL. Next milestone: forward to the agent; an unknown task gets TASK_LOST/TASK_UNKNOWN.
    pub fn kill(&mut self, framework_id: &str, kill: &call::Kill) {
        debug!(framework = %framework_id, task = %kill.task_id.value, "KILL");
    }

    /// SHUTDOWN. Next milestone: forward to the agent.
    pub fn shutdown(&mut self, framework_id: &str, shutdown: &call::Shutdown) {
        debug!(framework = %framework_id, executor = %shutdown.executor_id.value, "SHUTDOWN");
    }

    /// ACKNOWLEDGE. Next milestone: forward to the agent's status update manager.
    pub fn acknowledge(&mut self, framework_id: &str, acknowledge: &call::Acknowledge) {
        debug!(framework = %framework_id, task = %acknowledge.task_id.value, "ACKNOWLEDGE");
    }

    /// ACKNOWLEDGE_OPERATION_STATUS. Next milestone: forward to the agent.
    pub fn acknowledge_operation_status(
        &mut self,
        framework_id: &str,
        ack: &call::AcknowledgeOperationStatus,
    ) {
        debug!(framework = %framework_id, operation = %ack.operation_id.value, "ACKNOWLEDGE_OPERATION_STATUS");
    }

    /// MESSAGE. Next milestone: forward to the executor through its agent.
    pub fn message(&mut self, framework_id: &str, message: &call::Message) {
        debug!(framework = %framework_id, agent = %message.agent_id.value, bytes = message.data.len(), "MESSAGE");
    }

    /// REQUEST: Mesos passes it to the allocator, whose default implementation ignores it.
    pub fn request(&mut self, framework_id: &str, request: &call::Request) {
        debug!(framework = %framework_id, requests = request.requests.len(), "REQUEST");
    }

    /// UPDATE_WEIGHTS: in memory until the registry lands.
    pub fn update_weights(&mut self, weights: Vec<(String, f64)>) -> Result<(), ApiError> {
        for (role, weight) in &weights {
            validation::validate_role(role).map_err(ApiError::bad_request)?;
            if *role == "*" {
                return Err(ApiError::bad_request(
                    "Updating weight for role '*' is not supported",
                ));
            }
            if !(weight.is_finite() && *weight > 0.0) {
                return Err(ApiError::bad_request(format!(
                    "Invalid weight '{weight}': weights must be positive"
                )));
            }
        }
        self.weights.extend(weights);
        Ok(())
    }

    /// UPDATE_QUOTA: in memory until the registry and allocator land.
    pub fn update_quota(
        &mut self,
        configs: Vec<mesoblk_proto::mesos::v1::quota::QuotaConfig>,
    ) -> Result<(), ApiError> {
        for config in &configs {
            validation::validate_role(&config.role)
                .map_err(|e| ApiError::bad_request(format!("Invalid 'QuotaConfig': {e}")))?;
            if config.role == "*" {
                return Err(ApiError::bad_request(
                    "Invalid 'QuotaConfig': Invalid role: quota cannot be set for role '*'",
                ));
            }
            for (name, scalar) in config.guarantees.iter().chain(config.limits.iter()) {
                if !(scalar.value.is_finite() && scalar.value >= 0.0) {
                    return Err(ApiError::bad_request(format!(
                        "Invalid 'QuotaConfig': Negative or non-finite quantity for '{name}'"
                    )));
                }
            }
        }
        for config in configs {
            if config.guarantees.is_empty() && config.limits.is_empty() {
                self.quotas.remove(&config.role);
            } else {
                self.quotas.insert(config.role.clone(), config);
            }
        }
        Ok(())
    }
}

/// The shared master: the books behind a mutex. Cloning is cheap.
#[derive(Debug, Clone)]
pub struct MasterHandle {
    inner: Arc<Mutex<Master>>,
}

impl MasterHandle {
    /// A master for `config`.
    pub fn new(config: Config) -> Self {
        MasterHandle {
            inner: Arc::new(Mutex::new(Master::new(config))),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Master> {
        // A panic while holding the lock cannot leave the books half-updated in a way worse
        // than stopping the master would, so keep serving.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the locked books, then carries out the effects it recorded.
    pub fn with<R>(&self, f: impl FnOnce(&mut Master) -> R) -> R {
        let (result, effects) = {
            let mut master = self.lock();
            let result = f(&mut master);
            (result, master.take_effects())
        };
        for effect in effects {
            self.run(effect);
        }
        result
    }

    /// The settings.
    pub fn config(&self) -> Arc<Config> {
        self.lock().config().clone()
    }

    /// The advertised address.
    pub fn advertised(&self) -> (String, Ipv4Addr, u16) {
        let master = self.lock();
        let config = master.config();
        (
            config.hostname.clone(),
            config.advertise_ip,
            config.advertise_port,
        )
    }

    fn run(&self, effect: Effect) {
        match effect {
            Effect::FailoverTimer {
                framework_id,
                generation,
                timeout,
            } => {
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    warn!(framework = %framework_id, "no runtime for the failover timer");
                    return;
                };
                let master = Arc::downgrade(&self.inner);
                runtime.spawn(async move {
                    // Far-future deadlines are clamped by tokio; `failover_timeout` was validated
                    // to fit in i64 nanoseconds.
                    tokio::time::sleep(timeout).await;
                    if let Some(inner) = master.upgrade() {
                        MasterHandle { inner }
                            .with(|m| m.failover_timeout_expired(&framework_id, generation));
                    }
                });
            }
        }
    }

    /// SUBSCRIBE: the `Mesos-Stream-Id` and the response body.
    pub fn subscribe(
        &self,
        subscribe: call::Subscribe,
        content_type: ContentType,
    ) -> (String, EventStream<Event>) {
        let subscription = self.with(|m| m.subscribe(subscribe));
        let heartbeat = self.config().heartbeat_interval;
        let on_close = match (
            subscription.framework_id.clone(),
            subscription.connection_id,
        ) {
            (Some(framework_id), Some(connection_id)) => {
                let master: Weak<Mutex<Master>> = Arc::downgrade(&self.inner);
                Some(Box::new(move || {
                    if let Some(inner) = master.upgrade() {
                        MasterHandle { inner }.with(|m| m.exited(&framework_id, connection_id));
                    }
                }) as crate::stream::CloseHook)
            }
            _ => None,
        };
        let heartbeat = on_close.as_ref().map(|_| (heartbeat, heartbeat_event()));
        let stream = EventStream::new(subscription.events, content_type, heartbeat, on_close);
        (subscription.stream_id, stream)
    }
}

#[cfg(test)]
mod tests;
