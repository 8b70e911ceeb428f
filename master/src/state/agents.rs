//! Agents: registration (a new id `<masterUUID>-S<n>`; re-registration is in `reregistration`),
//! the event stream that carries every
//! master → agent message, pings and the removal of agents that stop answering or lose their
//! stream for longer than `agent_ping_timeout × max_agent_ping_timeouts`: offers rescinded, tasks
//! TASK_LOST (TASK_UNREACHABLE for PARTITION_AWARE frameworks, REASON_AGENT_REMOVED), operations
//! OPERATION_UNREACHABLE, FAILURE to every framework, as Mesos's `__removeSlave`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use mesoblk_proto::mesoblk::agent::v1 as agent;
use mesoblk_proto::mesos::v1::agent_info::Capability as AgentCapability;
use mesoblk_proto::mesos::v1::resource::disk_info::source::Type as SourceType;
use mesoblk_proto::mesos::v1::{AgentId, AgentInfo, ExecutorInfo, ResourceProviderInfo};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::tasks::TaskKey;
use super::{convert, Master, MAX_REMOVED_AGENTS};
use crate::allocator::{AgentId as AllocAgentId, FrameworkId as AllocFrameworkId, ResourceSet};
use crate::error::ApiError;
use crate::stream::{event_queue, EventQueue, EventSender};

/// Why an agent is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentRemoval {
    /// It stopped answering: it may come back by re-registering; its tasks are
    /// TASK_UNREACHABLE (TASK_LOST for frameworks that are not PARTITION_AWARE).
    Unreachable,
    /// An operator marked it gone (MARK_AGENT_GONE, already in the registry): it may never come
    /// back; its tasks are TASK_GONE_BY_OPERATOR (TASK_LOST for frameworks that are not
    /// PARTITION_AWARE).
    Gone,
}

/// An agent's live event stream.
#[derive(Debug)]
pub struct AgentConnection {
    /// Distinguishes this stream from the agent's earlier and later ones.
    pub id: u64,
    pub(super) outbox: EventSender<agent::Event>,
}

/// An executor the master knows on an agent.
#[derive(Debug)]
pub struct ExecutorRecord {
    /// Its info, as launched.
    pub info: ExecutorInfo,
    /// The role its resources are allocated to.
    pub role: String,
    /// What it holds in the allocator.
    pub(super) allocation: ResourceSet,
    /// Its tasks that have not ended; at zero its resources return and it is forgotten.
    pub(super) live_tasks: usize,
}

/// A registered agent.
#[derive(Debug)]
pub struct Agent {
    /// Its `AgentInfo` (id set; `resources` as last reported).
    pub info: AgentInfo,
    /// Base URL of its HTTP API.
    pub endpoint: String,
    /// Host and port from the endpoint.
    pub address: (String, u16),
    /// What it can do.
    pub capabilities: Vec<AgentCapability>,
    /// Its resource providers.
    pub resource_providers: Vec<ResourceProviderInfo>,
    /// Its version, as reported.
    pub version: Option<String>,
    /// When it registered.
    pub registered_time: SystemTime,
    /// When it last re-registered.
    pub reregistered_time: Option<SystemTime>,
    /// The live stream, when subscribed.
    pub connection: Option<AgentConnection>,
    /// When it last showed a sign of life (master clock).
    pub(super) last_seen: Duration,
    /// Live tasks on it.
    pub tasks: BTreeSet<TaskKey>,
    /// Executors on it, by framework then executor id.
    pub executors: BTreeMap<String, BTreeMap<String, ExecutorRecord>>,
}

impl Agent {
    /// Whether its stream is up (it gets offers only then).
    pub fn connected(&self) -> bool {
        self.connection.is_some()
    }

    /// Whether it declared `capability`.
    pub fn has_capability(
        &self,
        capability: mesoblk_proto::mesos::v1::agent_info::capability::Type,
    ) -> bool {
        self.capabilities
            .iter()
            .any(|c| c.r#type == Some(capability as i32))
    }

    /// `slave(1)@ip:port`, the pid Mesos's endpoints show.
    pub fn pid(&self) -> String {
        format!("slave(1)@{}:{}", self.address.0, self.address.1)
    }
}

/// `http://host:port[/...]` → (host, port).
fn parse_endpoint(endpoint: &str) -> Option<(String, u16)> {
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))?;
    let authority = rest.split('/').next()?;
    let (host, port) = authority.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

/// Checks what an agent reports about itself; returns its endpoint address and total resources.
pub(super) fn validate_registration(
    register: &agent::RegisterAgent,
) -> Result<((String, u16), ResourceSet), ApiError> {
    let bad = |m: String| ApiError::bad_request(m);
    if register.agent_info.hostname.is_empty() {
        return Err(bad("'AgentInfo.hostname' must be set".into()));
    }
    let address = parse_endpoint(&register.endpoint).ok_or_else(|| {
        bad(format!(
            "'endpoint' must be http://HOST:PORT, not '{}'",
            register.endpoint
        ))
    })?;
    for resource in &register.agent_info.resources {
        if resource.allocation_info.is_some() {
            return Err(bad("Agent resources must not be allocated".into()));
        }
        let kind = resource
            .disk
            .as_ref()
            .and_then(|d| d.source.as_ref())
            .map(|s| s.r#type);
        let provided =
            matches!(kind, Some(k) if k == SourceType::Block as i32 || k == SourceType::Raw as i32);
        if provided && resource.provider_id.is_none() {
            return Err(bad(
                "BLOCK and RAW disk resources must come from a resource provider ('provider_id')"
                    .into(),
            ));
        }
    }
    let total = convert::to_set(&register.agent_info.resources)
        .map_err(|e| bad(format!("Invalid resources: {e}")))?;
    Ok((address, total))
}

impl Master {
    pub(super) fn registered_answer(&self, agent_id: &str) -> agent::Registered {
        agent::Registered {
            agent_id: AgentId {
                value: agent_id.into(),
            },
            master_info: self.info.clone(),
            ping_interval_seconds: Some(self.config.agent_ping_timeout.as_secs_f64()),
            max_ping_timeouts: Some(self.config.max_agent_ping_timeouts),
        }
    }

    pub(super) fn new_agent(
        &self,
        register: agent::RegisterAgent,
        id: &str,
        address: (String, u16),
    ) -> Agent {
        let mut info = register.agent_info;
        info.id = Some(AgentId { value: id.into() });
        Agent {
            info,
            endpoint: register.endpoint,
            address,
            capabilities: register.capabilities,
            resource_providers: register.resource_providers,
            version: register.version,
            registered_time: SystemTime::now(),
            reregistered_time: None,
            connection: None,
            last_seen: self.now(),
            tasks: BTreeSet::new(),
            executors: BTreeMap::new(),
        }
    }

    /// POST /agent/v1/register: a new agent id; the agent gets offers once its stream is up.
    pub fn register_agent(
        &mut self,
        register: agent::RegisterAgent,
    ) -> Result<agent::Registered, ApiError> {
        if register.agent_info.id.is_some() {
            return Err(ApiError::bad_request(
                "'AgentInfo.id' must not be set when registering; re-register instead",
            ));
        }
        let (address, total) = validate_registration(&register)?;
        let id = format!("{}-S{}", self.info.id, self.next_agent_id);
        self.next_agent_id += 1;
        self.allocator
            .add_agent(AllocAgentId(id.clone()), total, Vec::new())
            .map_err(|e| ApiError::service_unavailable(e.to_string()))?;
        // Inactive until its stream is up; it has no offers yet, so nothing is rescinded.
        let _ = self.allocator.deactivate_agent(&AllocAgentId(id.clone()));
        info!(agent = %id, hostname = %register.agent_info.hostname, endpoint = %register.endpoint, "agent registered");
        let agent = self.new_agent(register, &id, address);
        self.agents.insert(id.clone(), agent);
        self.persist_agent(&id);
        self.publish_agent_added(&id);
        self.count("master/slave_registrations");
        Ok(self.registered_answer(&id))
    }

    /// 403 unless the agent is registered; otherwise notes that it is alive.
    pub(super) fn check_agent(&mut self, agent_id: &str) -> Result<(), ApiError> {
        let now = self.now();
        match self.agents.get_mut(agent_id) {
            Some(agent) => {
                agent.last_seen = now;
                Ok(())
            }
            None => Err(ApiError::forbidden(format!(
                "Agent {agent_id} is not registered; register or re-register first"
            ))),
        }
    }

    /// When an agent was removed as unreachable, if it was.
    pub fn removed_agent_time(&self, agent_id: &str) -> Option<SystemTime> {
        self.removed_agents
            .iter()
            .rev()
            .find(|(a, _)| a == agent_id)
            .map(|(_, t)| *t)
    }

    /// POST /agent/v1/subscribe: the agent's stream; it replaces an earlier one. The agent is
    /// active from now on and its resources are offered.
    pub fn subscribe_agent(
        &mut self,
        subscribe: &agent::Subscribe,
    ) -> Result<(u64, EventQueue<agent::Event>), ApiError> {
        let agent_id = subscribe.agent_id.value.clone();
        self.check_agent(&agent_id)?;
        let (outbox, events) = event_queue(self.config.event_queue_max);
        let connection_id = self.next_connection_id;
        self.next_connection_id += 1;
        for queued in self
            .pending_agent_events
            .remove(&agent_id)
            .unwrap_or_default()
        {
            let _ = outbox.try_send(Box::new(queued));
        }
        if let Some(agent) = self.agents.get_mut(&agent_id) {
            // Dropping the old sender ends the old stream.
            agent.connection = Some(AgentConnection {
                id: connection_id,
                outbox,
            });
        }
        if let Err(e) = self
            .allocator
            .activate_agent(&AllocAgentId(agent_id.clone()))
        {
            warn!(agent = %agent_id, "activating in the allocator: {e}");
        }
        info!(agent = %agent_id, "agent subscribed");
        let now = self.now();
        self.allocate_agents(&[agent_id], now);
        Ok((connection_id, events))
    }

    /// The agent's stream `connection_id` ended: it is disconnected, its offers are rescinded,
    /// and it is removed unless it comes back within the removal timeout.
    pub fn agent_exited(&mut self, agent_id: &str, connection_id: u64) {
        let now = self.now();
        let Some(agent) = self.agents.get_mut(agent_id) else {
            return;
        };
        if agent.connection.as_ref().map(|c| c.id) != Some(connection_id) {
            return;
        }
        agent.connection = None;
        agent.last_seen = now;
        info!(agent = %agent_id, "agent disconnected");
        let rescinded = self
            .allocator
            .deactivate_agent(&AllocAgentId(agent_id.to_owned()))
            .unwrap_or_default();
        self.rescind_offers(&rescinded);
    }

    /// POST /agent/v1/pong.
    pub fn pong(&mut self, pong: &agent::Pong) -> Result<(), ApiError> {
        self.check_agent(&pong.agent_id.value)
    }

    /// Queues `event` on the agent's stream; false when the agent is not connected (or its queue
    /// overflowed, which disconnects it).
    pub(super) fn send_to_agent(&mut self, agent_id: &str, event: agent::Event) -> bool {
        let Some(connection) = self
            .agents
            .get(agent_id)
            .and_then(|a| a.connection.as_ref())
        else {
            return false;
        };
        match connection.outbox.try_send(Box::new(event)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                warn!(agent = %agent_id, "agent event queue full; disconnecting the agent");
                let id = connection.id;
                self.agent_exited(agent_id, id);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Queues an event for an agent whose stream is not up; it goes out when the agent
    /// subscribes (and is dropped if the agent is removed first).
    pub(super) fn queue_agent_event(&mut self, agent_id: &str, event: agent::Event) {
        self.pending_agent_events
            .entry(agent_id.to_owned())
            .or_default()
            .push(event);
    }

    /// Sends PING to every connected agent.
    pub(super) fn ping_agents(&mut self, _now: Duration) {
        self.ping_sequence += 1;
        let sequence = self.ping_sequence;
        let connected: Vec<String> = self
            .agents
            .iter()
            .filter(|(_, a)| a.connected())
            .map(|(id, _)| id.clone())
            .collect();
        for agent_id in connected {
            let ping = agent::Event {
                r#type: Some(agent::event::Type::Ping as i32),
                ping: Some(agent::event::Ping {
                    sequence: Some(sequence),
                }),
                ..Default::default()
            };
            self.send_to_agent(&agent_id, ping);
        }
    }

    /// Removes every agent silent (no pong, no stream, no message) for the removal timeout.
    pub(super) fn remove_unhealthy_agents(&mut self, now: Duration) {
        let timeout = self.config.agent_removal_timeout();
        let silent: Vec<String> = self
            .agents
            .iter()
            .filter(|(_, a)| now.saturating_sub(a.last_seen) >= timeout)
            .map(|(id, _)| id.clone())
            .collect();
        for agent_id in silent {
            warn!(agent = %agent_id, ?timeout, "agent unreachable: health check timed out");
            self.remove_agent(
                &agent_id,
                "health check timed out",
                AgentRemoval::Unreachable,
            );
        }
    }

    /// Removes an agent (`__removeSlave`); see [`AgentRemoval`] for what its tasks become. An
    /// unreachable agent is recorded as such in the registry here; a gone one was recorded by
    /// the caller, before anything changed.
    pub fn remove_agent(&mut self, agent_id: &str, message: &str, removal: AgentRemoval) {
        if !self.agents.contains_key(agent_id) {
            return;
        }
        let when = SystemTime::now();
        let unreachable = removal == AgentRemoval::Unreachable;
        let rescinded = self
            .allocator
            .remove_agent(&AllocAgentId(agent_id.to_owned()))
            .unwrap_or_default();
        self.rescind_offers(&rescinded);
        let keys: Vec<TaskKey> = self
            .agents
            .get(agent_id)
            .map(|a| a.tasks.iter().cloned().collect())
            .unwrap_or_default();
        for key in keys {
            // The allocator forgot the agent, so nothing is recovered; mark it so.
            if let Some(record) = self.tasks.get_mut(&key) {
                record.recovered = true;
            }
            let status = self.agent_lost_status(&key, message, removal, when);
            let connected = self.is_connected(&key.0);
            self.end_task(&key, status, connected);
        }
        self.operations_lost_with_agent(agent_id, unreachable);
        let Some(agent) = self.agents.remove(agent_id) else {
            return;
        };
        if unreachable {
            self.persist_agent_removal(agent_id, when);
        }
        self.publish_agent_removed(agent_id);
        self.pending_agent_events.remove(agent_id);
        if let Some(connection) = agent.connection {
            let _ = connection.outbox.try_send(Box::new(agent::Event {
                r#type: Some(agent::event::Type::Shutdown as i32),
                shutdown: Some(agent::event::Shutdown {
                    message: Some(message.into()),
                }),
                ..Default::default()
            }));
        }
        if unreachable {
            while self.removed_agents.len() >= MAX_REMOVED_AGENTS {
                self.removed_agents.pop_front();
            }
            self.removed_agents.push_back((agent_id.to_owned(), when));
        }
        self.count("master/slave_removals");
        self.notify_agent_lost(agent_id);
    }

    /// One of an executor's tasks ended; at the last one its resources return to the allocator.
    pub(super) fn release_executor_task(
        &mut self,
        agent_id: &str,
        framework_id: &str,
        executor_id: &str,
    ) {
        let Some(executors) = self
            .agents
            .get_mut(agent_id)
            .and_then(|a| a.executors.get_mut(framework_id))
        else {
            return;
        };
        let Some(record) = executors.get_mut(executor_id) else {
            return;
        };
        record.live_tasks = record.live_tasks.saturating_sub(1);
        if record.live_tasks > 0 {
            return;
        }
        let Some(record) = executors.remove(executor_id) else {
            return;
        };
        if executors.is_empty() {
            if let Some(agent) = self.agents.get_mut(agent_id) {
                agent.executors.remove(framework_id);
            }
        }
        if let Err(e) = self.allocator.recover(
            &AllocAgentId(agent_id.to_owned()),
            &AllocFrameworkId(framework_id.to_owned()),
            &record.role,
            &record.allocation,
        ) {
            debug!(executor = %executor_id, "recovering executor resources: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_endpoint;

    #[test]
    fn endpoints_parse_to_host_and_port() {
        assert_eq!(
            parse_endpoint("http://10.0.0.5:5051"),
            Some(("10.0.0.5".into(), 5051))
        );
        assert_eq!(
            parse_endpoint("https://agent.local:443/x"),
            Some(("agent.local".into(), 443))
        );
        assert_eq!(
            parse_endpoint("http://[::1]:5051"),
            Some(("::1".into(), 5051))
        );
        for bad in [
            "",
            "10.0.0.5:5051",
            "http://host",
            "http://:80",
            "http://h:99999",
        ] {
            assert_eq!(parse_endpoint(bad), None, "{bad}");
        }
    }
}
