//! Frameworks: SUBSCRIBE (new, failover by id, recovery of an id this master has not seen),
//! stream ends and failover timeouts, UPDATE_FRAMEWORK, TEARDOWN, and the stream-id checks of
//! every other call. Each change is mirrored into the allocator (add, activate, deactivate,
//! update, remove), as Mesos's master does with its allocator.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::SystemTime;

use mesoblk_proto::mesos::v1::framework_info::capability::Type as Capability;
use mesoblk_proto::mesos::v1::scheduler::{call, event, Event, OfferConstraints};
use mesoblk_proto::mesos::v1::{FrameworkId, FrameworkInfo, Task};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{error_event, typed_event, validation, Effect, Master};
use crate::allocator::{FrameworkId as AllocFrameworkId, FrameworkSpec, Quantities};
use crate::error::ApiError;

/// A framework's live event stream.
#[derive(Debug)]
pub struct Connection {
    /// Distinguishes this stream from the framework's earlier and later ones.
    pub id: u64,
    /// The `Mesos-Stream-Id` handed out with it.
    pub stream_id: String,
    pub(super) outbox: mpsc::Sender<Event>,
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
    /// Known only from an agent's re-registration; not subscribed to this master yet.
    pub recovered: bool,
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
    /// Its terminal tasks whose last update was acknowledged, oldest first (bounded).
    pub completed_tasks: VecDeque<Task>,
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
    /// Its tasks, all terminal.
    pub completed_tasks: VecDeque<Task>,
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

/// What the allocator needs to know about a framework.
fn allocator_spec(
    info: &FrameworkInfo,
    suppressed: &BTreeSet<String>,
    active: bool,
) -> FrameworkSpec {
    let roles = validation::framework_roles(info);
    let mut min_allocatable = BTreeMap::new();
    for (role, filters) in &info.offer_filters {
        let Some(min) = &filters.min_allocatable_resources else {
            continue;
        };
        let sets: Vec<Quantities> = min
            .quantities
            .iter()
            .filter_map(|q| {
                let pairs: Vec<(&str, f64)> = q
                    .quantities
                    .iter()
                    .map(|(k, s)| (k.as_str(), s.value))
                    .collect();
                Quantities::from_units(&pairs).ok()
            })
            .collect();
        min_allocatable.insert(role.clone(), sets);
    }
    FrameworkSpec {
        suppressed_roles: suppressed.intersection(&roles).cloned().collect(),
        roles,
        active,
        min_allocatable,
    }
}

impl Master {
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
            ..typed_event(event::Type::Subscribed)
        }
    }

    /// Handles SUBSCRIBE (`Master::subscribe` and `_subscribe` in Mesos): a new framework gets an
    /// id; a known id fails the old stream over ("Framework failed over") and keeps the
    /// framework, its tasks and their unacknowledged updates (sent again on the new stream); an
    /// unknown id is taken as a framework recovering after a master failover; the id of a removed
    /// framework, or an invalid `FrameworkInfo`, gets an ERROR event and a closed stream.
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
                if !framework.recovered {
                    info.user.clone_from(&framework.info.user);
                    info.checkpoint = framework.info.checkpoint;
                    if let Err(message) = validation::validate_update(&framework.info, &info) {
                        // The refusal goes on the new stream; the old one stays as it is.
                        info!(framework = %id, %message, "refusing resubscription");
                        return refused(&connection.outbox, events, stream_id, message);
                    }
                }
                info.id = Some(FrameworkId { value: id.clone() });
                if let Some(old) = framework.connection.take() {
                    info!(framework = %id, "framework failed over");
                    let _ = old.outbox.try_send(error_event("Framework failed over"));
                }
                let was_recovered = framework.recovered;
                framework.info = info;
                framework.suppressed_roles = suppressed;
                framework.offer_constraints = subscribe.offer_constraints;
                framework.reregistered_time = Some(now);
                framework.generation += 1;
                framework.connection = Some(connection);
                framework.active = true;
                framework.recovered = false;
                info!(framework = %id, "framework resubscribed");
                self.resubscribe_in_allocator(&id, was_recovered);
                self.publish_framework(&id, false);
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
                let spec = allocator_spec(&info, &suppressed, true);
                if let Err(e) = self
                    .allocator
                    .add_framework(AllocFrameworkId(id.clone()), spec)
                {
                    warn!(framework = %id, "the allocator refused the framework: {e}");
                    return refused(&connection.outbox, events, stream_id, e.to_string());
                }
                self.frameworks.insert(
                    id.clone(),
                    Framework {
                        info,
                        connection: Some(connection),
                        active: true,
                        recovered: false,
                        suppressed_roles: suppressed,
                        offer_constraints: subscribe.offer_constraints,
                        registered_time: now,
                        reregistered_time: None,
                        generation: 0,
                        completed_tasks: VecDeque::new(),
                    },
                );
                self.publish_framework(&id, true);
                id
            }
        };
        self.persist_framework(&framework_id);
        let subscribed = self.subscribed_event(&framework_id);
        self.send(&framework_id, subscribed);
        self.resend_status_updates(&framework_id);
        let now = self.now();
        self.allocate_all(now);
        Subscription {
            stream_id,
            framework_id: Some(framework_id),
            connection_id: Some(connection_id),
            events,
        }
    }

    /// A resubscribed framework in the allocator: its old offers go away silently (the old stream
    /// got "Framework failed over"), its roles and suppressions are refreshed, and it is active.
    fn resubscribe_in_allocator(&mut self, framework_id: &str, was_recovered: bool) {
        let Some(framework) = self.frameworks.get(framework_id) else {
            return;
        };
        let spec = allocator_spec(&framework.info, &framework.suppressed_roles, true);
        let id = AllocFrameworkId(framework_id.to_owned());
        let result = if was_recovered {
            self.allocator.add_framework(id, spec)
        } else {
            let dropped = self.allocator.deactivate_framework(&id).unwrap_or_default();
            self.forget_offers(&dropped);
            self.allocator
                .update_framework(&id, spec)
                .and_then(|_| self.allocator.activate_framework(&id))
        };
        if let Err(e) = result {
            warn!(framework = %framework_id, "allocator update on resubscription failed: {e}");
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

    /// Whether the framework has a live stream.
    pub fn is_connected(&self, framework_id: &str) -> bool {
        self.frameworks
            .get(framework_id)
            .is_some_and(|f| f.connection.is_some())
    }

    /// The framework's stream `connection_id` ended: mark it disconnected, take back its offers
    /// and start its failover timer (`Master::exited` and `_exited` in Mesos). Nothing happens if
    /// the framework has moved on to another stream or is gone.
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
        let generation = framework.generation;
        info!(framework = %framework_id, ?timeout, "framework disconnected; waiting for it to fail over");
        match self
            .allocator
            .deactivate_framework(&AllocFrameworkId(framework_id.to_owned()))
        {
            Ok(dropped) => self.forget_offers(&dropped),
            Err(e) => debug!(framework = %framework_id, "deactivating in the allocator: {e}"),
        }
        self.publish_framework(framework_id, false);
        self.effects.push(Effect::FailoverTimer {
            framework_id: framework_id.into(),
            generation,
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

    /// Removes a framework (TEARDOWN, operator TEARDOWN, failover timeout), as Mesos's
    /// `removeFramework`: agents are told to shut it down, its tasks become TASK_KILLED
    /// (REASON_FRAMEWORK_REMOVED) and their resources return to the allocator, its offers are
    /// dropped, its stream closed and its id remembered as removed.
    pub fn remove_framework(&mut self, framework_id: &str) -> bool {
        if !self.frameworks.contains_key(framework_id) {
            return false;
        }
        info!(framework = %framework_id, "removing framework");
        self.shutdown_framework_on_agents(framework_id);
        self.kill_framework_tasks(framework_id);
        self.forget_framework_operations(framework_id);
        let Some(framework) = self.frameworks.remove(framework_id) else {
            return false;
        };
        self.persist_removal(&framework);
        self.publish_framework_removed(&framework.info);
        if !framework.recovered {
            match self
                .allocator
                .remove_framework(&AllocFrameworkId(framework_id.to_owned()))
            {
                Ok(dropped) => self.forget_offers(&dropped),
                Err(e) => debug!(framework = %framework_id, "removing from the allocator: {e}"),
            }
        }
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
                completed_tasks: framework.completed_tasks,
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

    /// Whether the framework declared PARTITION_AWARE.
    pub fn partition_aware(&self, framework_id: &str) -> bool {
        self.has_capability(framework_id, Capability::PartitionAware)
    }

    /// Whether the framework declared `capability`.
    pub fn has_capability(&self, framework_id: &str, capability: Capability) -> bool {
        self.frameworks
            .get(framework_id)
            .is_some_and(|f| validation::has_capability(&f.info, capability))
    }

    /// UPDATE_FRAMEWORK: validated like a subscription, then applied (200), or 400. Offers in
    /// roles the framework left are rescinded.
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
        let spec = allocator_spec(
            &framework.info,
            &framework.suppressed_roles,
            framework.active,
        );
        match self
            .allocator
            .update_framework(&AllocFrameworkId(id.clone()), spec)
        {
            Ok(rescinded) => self.send_rescinds(&id, &rescinded),
            Err(e) => warn!(framework = %id, "allocator refused the update: {e}"),
        }
        self.persist_framework(&id);
        self.publish_framework(&id, false);
        let now = self.now();
        self.allocate_all(now);
        Ok(())
    }
}
