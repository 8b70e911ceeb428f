//! The master's books and the rules that change them.
//!
//! Ownership: one [`Master`] value holds everything: frameworks and their streams, agents and
//! theirs, the [`Allocator`], offers (inside the allocator), tasks with their unacknowledged
//! status updates, and operations. It is plain synchronous code with no I/O and no timers, so
//! every rule can be unit-tested; it lives behind a `std` mutex in a [`MasterHandle`], which HTTP
//! handlers share. Time enters as arguments ([`Master::tick`]) or from [`Master::now`] (the time
//! since the master started, the allocator's clock). A method that needs something to happen
//! later outside the periodic tick (a failover timer) records an [`Effect`];
//! [`MasterHandle::with`] carries the effects out after releasing the lock. Nothing ever awaits
//! while holding the lock.
//!
//! Events to a framework or an agent go into its connection's bounded queue
//! (`Config::event_queue_max`); a subscriber that lets the queue fill up is disconnected, as if
//! its stream had broken.
//!
//! Layout: [`frameworks`] (SUBSCRIBE, failover, TEARDOWN), [`agents`] (registration, streams,
//! health, removal; re-registration in `reregistration`), [`offers`] (allocation,
//! OFFERS/RESCIND, DECLINE/REVIVE/SUPPRESS), [`accept`] (ACCEPT; launches in `launch`),
//! [`operations`] (offer operations and their status; their checks in `operation_validation`),
//! [`tasks`] (task lifecycle, status updates and acknowledgements; KILL, RECONCILE, SHUTDOWN and
//! MESSAGE in `task_calls`), [`convert`] (Mesos resources ⇄ the allocator's), [`validation`] and
//! [`task_validation`] (Mesos's checks and messages), `persistence` (the registry hooks),
//! `recovered_agents` (agents across a restart: recovered, unreachable, gone), `stored_resources`
//! (persistent volumes and created disks in the registry),
//! [`device_stats`] (the agents' device figures, for monitoring), [`operator_events`] (the
//! operator API's SUBSCRIBE streams and the events fed to them),
//! [`timer`] (the allocation-run timer behind `allocator/mesos/allocation_run_ms`).

pub mod accept;
pub mod agents;
pub mod convert;
pub mod device_stats;
pub mod frameworks;
mod handle;
mod launch;
pub mod offers;
mod operation_validation;
pub mod operations;
pub mod operator_events;
mod persistence;
mod recovered_agents;
mod reregistration;
mod stored_resources;
mod task_calls;
pub mod task_validation;
pub mod tasks;
pub mod timer;
pub mod validation;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mesoblk_proto::mesos::v1::scheduler::{event, Event};
use mesoblk_proto::mesos::v1::{Address, AgentInfo, MasterInfo, TimeInfo};

pub use agents::{Agent, AgentConnection, AgentRemoval};
pub use frameworks::{CompletedFramework, Connection, Framework, Subscription};
pub use handle::MasterHandle;
pub use operations::OperationRecord;
pub use tasks::{TaskKey, TaskRecord};

use crate::allocator::{Allocator, AllocatorConfig, QuotaConfig};
use crate::config::{Config, MESOS_VERSION};
use crate::error::ApiError;

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
    /// Stop the master: too many recovered agents failed to re-register
    /// (`--recovery_agent_removal_limit`), as Mesos exits in that case.
    Exit {
        /// Why, for the one-line message.
        message: String,
    },
}

/// Deadlines of the periodic work [`Master::tick`] does.
#[derive(Debug, Default)]
struct Deadlines {
    allocation: Duration,
    ping: Duration,
}

/// The master's state. See the module docs.
#[derive(Debug)]
pub struct Master {
    config: Arc<Config>,
    info: MasterInfo,
    start_time: SystemTime,
    clock: Instant,
    frameworks: BTreeMap<String, Framework>,
    completed: VecDeque<CompletedFramework>,
    next_framework_id: u64,
    next_connection_id: u64,
    weights: BTreeMap<String, f64>,
    quotas: BTreeMap<String, mesoblk_proto::mesos::v1::quota::QuotaConfig>,
    effects: Vec<Effect>,
    allocator: Allocator,
    agents: BTreeMap<String, Agent>,
    /// Agents removed as unreachable, with when, oldest first (bounded).
    removed_agents: VecDeque<(String, SystemTime)>,
    next_agent_id: u64,
    /// Agents admitted in the registry that have not re-registered since this master started.
    recovered_agents: BTreeMap<String, AgentInfo>,
    /// When recovered agents that have not re-registered are marked unreachable (master clock),
    /// and how many agents were recovered (for `--recovery_agent_removal_limit`).
    reregister_deadline: Option<(Duration, usize)>,
    /// Agents marked gone (MARK_AGENT_GONE), with when: refused for good.
    gone_agents: BTreeMap<String, SystemTime>,
    /// The registry's persistent volumes and created disks, by agent ([`stored_resources`]).
    stored: stored_resources::StoredResources,
    tasks: BTreeMap<TaskKey, TaskRecord>,
    /// When each task with an unacknowledged update is due for a retry.
    retries: BTreeSet<(Duration, TaskKey)>,
    /// Operations by uuid (hyphenated).
    operations: BTreeMap<String, OperationRecord>,
    /// Agent events waiting for the agent's stream (shutdowns decided at re-registration).
    pending_agent_events: BTreeMap<String, Vec<mesoblk_proto::mesoblk::agent::v1::Event>>,
    /// The framework each outstanding offer was sent to, by allocator offer number.
    offer_owners: BTreeMap<u64, String>,
    deadlines: Deadlines,
    ping_sequence: u64,
    counters: BTreeMap<&'static str, u64>,
    /// Each agent's latest device figures ([`device_stats`]).
    device_stats: BTreeMap<String, mesoblk_proto::mesoblk::agent::v1::DeviceStats>,
    /// Durations of allocation runs (`allocator/mesos/allocation_run_ms`).
    allocation_run: timer::Timer,
    /// Operator API SUBSCRIBE streams ([`operator_events`]).
    operator_subscribers: operator_events::OperatorSubscribers,
}

/// How far back `allocator/mesos/allocation_run_ms` looks (Mesos's allocator timer window).
const ALLOCATION_RUN_WINDOW: Duration = Duration::from_secs(3600);

/// Removed agents remembered (Mesos's `MAX_REMOVED_SLAVES`).
pub const MAX_REMOVED_AGENTS: usize = 100_000;

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

/// An event of `kind` with no body.
pub fn typed_event(kind: event::Type) -> Event {
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
        ..typed_event(event::Type::Error)
    }
}

/// The HEARTBEAT event.
pub fn heartbeat_event() -> Event {
    typed_event(event::Type::Heartbeat)
}

impl Master {
    /// A master with no frameworks or agents, identified by a fresh UUID.
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
        let allocator = Allocator::new(AllocatorConfig {
            allocation_interval: config.allocation_interval,
            offer_timeout: config.offer_timeout,
            seed: u64::from_le_bytes(*b"mesoblk!"),
            ..AllocatorConfig::default()
        });
        Master {
            config: Arc::new(config),
            info,
            start_time: SystemTime::now(),
            clock: Instant::now(),
            frameworks: BTreeMap::new(),
            completed: VecDeque::new(),
            next_framework_id: 0,
            next_connection_id: 0,
            weights: BTreeMap::new(),
            quotas: BTreeMap::new(),
            effects: Vec::new(),
            allocator,
            agents: BTreeMap::new(),
            removed_agents: VecDeque::new(),
            next_agent_id: 0,
            recovered_agents: BTreeMap::new(),
            reregister_deadline: None,
            gone_agents: BTreeMap::new(),
            stored: Default::default(),
            tasks: BTreeMap::new(),
            retries: BTreeSet::new(),
            operations: BTreeMap::new(),
            pending_agent_events: BTreeMap::new(),
            offer_owners: BTreeMap::new(),
            deadlines: Deadlines::default(),
            ping_sequence: 0,
            counters: BTreeMap::new(),
            device_stats: BTreeMap::new(),
            allocation_run: timer::Timer::new(ALLOCATION_RUN_WINDOW, timer::TIMER_CAPACITY),
            operator_subscribers: Vec::new(),
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

    /// Time since the master started: the clock of the allocator, retries and health checks.
    pub fn now(&self) -> Duration {
        self.clock.elapsed()
    }

    /// Registered frameworks by id.
    pub fn frameworks(&self) -> &BTreeMap<String, Framework> {
        &self.frameworks
    }

    /// Removed frameworks, oldest first.
    pub fn completed_frameworks(&self) -> &VecDeque<CompletedFramework> {
        &self.completed
    }

    /// Registered agents by id.
    pub fn agents(&self) -> &BTreeMap<String, Agent> {
        &self.agents
    }

    /// Agents removed as unreachable, oldest first.
    pub fn removed_agents(&self) -> &VecDeque<(String, SystemTime)> {
        &self.removed_agents
    }

    /// Agents recovered from the registry that have not re-registered yet, with their last
    /// `AgentInfo` (Mesos's `slaves.recovered`).
    pub fn recovered_agents(&self) -> &BTreeMap<String, AgentInfo> {
        &self.recovered_agents
    }

    /// Agents marked gone, with when.
    pub fn gone_agents(&self) -> &BTreeMap<String, SystemTime> {
        &self.gone_agents
    }

    /// Live tasks (not yet terminal-and-acknowledged) by (framework, task) id.
    pub fn tasks(&self) -> &BTreeMap<TaskKey, TaskRecord> {
        &self.tasks
    }

    /// Operations the master tracks, by uuid.
    pub fn operations(&self) -> &BTreeMap<String, OperationRecord> {
        &self.operations
    }

    /// The allocator (offers, totals, allocations).
    pub fn allocator(&self) -> &Allocator {
        &self.allocator
    }

    /// Event counters (`master/tasks_finished`, `master/slave_registrations`, ...).
    pub fn counters(&self) -> &BTreeMap<&'static str, u64> {
        &self.counters
    }

    /// Durations of the allocation runs of the last hour.
    pub fn allocation_run(&self) -> &timer::Timer {
        &self.allocation_run
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

    fn count(&mut self, name: &'static str) {
        *self.counters.entry(name).or_insert(0) += 1;
    }

    /// The periodic work, due at `now`: the batch allocation every `--allocation_interval`,
    /// offer timeouts, status update retries, agent pings and the removal of agents that stopped
    /// answering. [`MasterHandle`] calls it on a short timer.
    pub fn tick(&mut self, now: Duration) {
        self.expire_offers(now);
        self.retry_status_updates(now);
        if now >= self.deadlines.ping {
            self.deadlines.ping = now.saturating_add(self.config.agent_ping_timeout);
            self.ping_agents(now);
        }
        self.remove_unhealthy_agents(now);
        self.expire_recovered_agents(now);
        if now >= self.deadlines.allocation {
            self.deadlines.allocation = now.saturating_add(self.config.allocation_interval);
            self.allocate_all(now);
        }
    }

    /// UPDATE_WEIGHTS: validated, kept and given to the allocator.
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
        for (role, weight) in &weights {
            if let Err(e) = self.allocator.set_weight(role, *weight) {
                return Err(ApiError::bad_request(e.to_string()));
            }
        }
        self.persist_weights(&weights)?;
        self.weights.extend(weights);
        Ok(())
    }

    /// UPDATE_QUOTA: validated, kept and given to the allocator.
    pub fn update_quota(
        &mut self,
        configs: Vec<mesoblk_proto::mesos::v1::quota::QuotaConfig>,
    ) -> Result<(), ApiError> {
        let mut converted = Vec::with_capacity(configs.len());
        for config in &configs {
            validation::validate_role(&config.role)
                .map_err(|e| ApiError::bad_request(format!("Invalid 'QuotaConfig': {e}")))?;
            if config.role == "*" {
                return Err(ApiError::bad_request(
                    "Invalid 'QuotaConfig': Invalid role: quota cannot be set for role '*'",
                ));
            }
            let quota = quota_config(config)?;
            converted.push((config.role.clone(), quota));
        }
        for (role, quota) in converted {
            self.allocator
                .set_quota(&role, quota)
                .map_err(|e| ApiError::bad_request(format!("Invalid 'QuotaConfig': {e}")))?;
        }
        self.persist_quotas(&configs)?;
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

/// A Mesos `QuotaConfig` as the allocator's, with Mesos's message for bad quantities.
fn quota_config(
    config: &mesoblk_proto::mesos::v1::quota::QuotaConfig,
) -> Result<QuotaConfig, ApiError> {
    for (name, scalar) in config.guarantees.iter().chain(config.limits.iter()) {
        if !(scalar.value.is_finite() && scalar.value >= 0.0) {
            return Err(ApiError::bad_request(format!(
                "Invalid 'QuotaConfig': Negative or non-finite quantity for '{name}'"
            )));
        }
    }
    let guarantees: Vec<(&str, f64)> = config
        .guarantees
        .iter()
        .map(|(k, s)| (k.as_str(), s.value))
        .collect();
    let limits: Vec<(&str, f64)> = config
        .limits
        .iter()
        .map(|(k, s)| (k.as_str(), s.value))
        .collect();
    QuotaConfig::from_units(&guarantees, &limits)
        .map_err(|e| ApiError::bad_request(format!("Invalid 'QuotaConfig': {e}")))
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod recovery_tests;
