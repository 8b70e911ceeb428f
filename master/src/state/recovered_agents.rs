//! Agents across a master restart, as Mesos's `slaves.recovered`, `slaves.unreachable` and
//! `slaves.gone`:
//! - **recovered**: admitted in the registry, expected to re-register. Listed (GET_AGENTS
//!   `recovered_agents`, `/master/state` `recovered_slaves`) but not offered. Those that have not
//!   re-registered `--agent_reregister_timeout` after the start are marked unreachable in the
//!   registry, and frameworks get an agent FAILURE, unless more than
//!   `--recovery_agent_removal_limit` of them failed: then the master exits, as Mesos does, for an
//!   operator to look into it. Tasks are not stored, so a framework reconciling a task on such an
//!   agent gets no answer while it is recovered, then TASK_UNREACHABLE (TASK_LOST if not
//!   PARTITION_AWARE).
//! - **unreachable**: may re-register with their id (see `reregistration`).
//! - **gone** (MARK_AGENT_GONE): stored before anything changes; a registered agent is removed
//!   (tasks TASK_GONE_BY_OPERATOR, or TASK_LOST if not PARTITION_AWARE; SHUTDOWN on its stream);
//!   a gone agent that re-registers is refused with 410 Gone, and its agent exits.
//!
//! Unreachable and gone agents older than `--registry_max_agent_age` are forgotten by the
//! registry at start (Mesos does it every `--registry_gc_interval` too; mesoblk only at start).

use std::time::{Duration, SystemTime};

use mesoblk_proto::mesos::v1::scheduler::{event, Event};
use mesoblk_proto::mesos::v1::AgentId;
use tracing::{info, warn};

use super::persistence::from_epoch_secs;
use super::{typed_event, AgentRemoval, Effect, Master, MAX_REMOVED_AGENTS};
use crate::error::ApiError;
use crate::registry::{epoch_secs, AgentState, Mutation, RegistrySnapshot};

impl Master {
    /// Takes the registry's agents: admitted ones become recovered (with the re-registration
    /// deadline), unreachable and gone ones are remembered as such, and those older than
    /// `--registry_max_agent_age` are forgotten.
    pub(super) fn recover_agents(&mut self, snapshot: &RegistrySnapshot) {
        let now = SystemTime::now();
        let max_age = self.config.registry_max_agent_age;
        let too_old = |secs: f64| {
            now.duration_since(from_epoch_secs(secs))
                .is_ok_and(|age| age > max_age)
        };
        let mut forget = Vec::new();
        let mut unreachable = Vec::new();
        for (id, record) in &snapshot.agents {
            match (record.state, &record.info) {
                (AgentState::Admitted, Some(info)) => {
                    self.recovered_agents.insert(id.clone(), info.clone());
                }
                (AgentState::Admitted, None) => {
                    warn!(agent = %id, "the registry admits an agent without its info; ignoring it");
                }
                (AgentState::Unreachable { time_secs } | AgentState::Gone { time_secs }, _)
                    if too_old(time_secs) =>
                {
                    forget.push(Mutation::RemoveAgent {
                        agent_id: id.clone(),
                    });
                }
                (AgentState::Unreachable { time_secs }, _) => {
                    unreachable.push((id.clone(), from_epoch_secs(time_secs)));
                }
                (AgentState::Gone { time_secs }, _) => {
                    self.gone_agents
                        .insert(id.clone(), from_epoch_secs(time_secs));
                }
            }
        }
        if !forget.is_empty() {
            info!(
                agents = forget.len(),
                ?max_age,
                "forgetting old unreachable and gone agents"
            );
            let _ = self.persist("forget old agents", self.config.registry.apply(forget));
        }
        unreachable.sort_by_key(|(_, time)| *time);
        let skip = unreachable.len().saturating_sub(MAX_REMOVED_AGENTS);
        self.removed_agents
            .extend(unreachable.into_iter().skip(skip));
        let recovered = self.recovered_agents.len();
        let timeout = self.config.agent_reregister_timeout;
        if recovered > 0 {
            self.reregister_deadline = Some((self.now().saturating_add(timeout), recovered));
        }
        info!(
            recovered,
            unreachable = self.removed_agents.len(),
            gone = self.gone_agents.len(),
            ?timeout,
            "recovered agents from the registry; allowing them to re-register"
        );
    }

    /// At the re-registration deadline: recovered agents that did not come back are marked
    /// unreachable (or the master exits past `--recovery_agent_removal_limit`).
    pub(super) fn expire_recovered_agents(&mut self, now: Duration) {
        let Some((deadline, recovered)) = self.reregister_deadline else {
            return;
        };
        if now < deadline {
            return;
        }
        self.reregister_deadline = None;
        let missing = self.recovered_agents.len();
        if missing == 0 {
            return;
        }
        let timeout = self.config.agent_reregister_timeout;
        let share = missing as f64 / recovered.max(1) as f64;
        let limit = self.config.recovery_agent_removal_limit;
        if share > limit {
            let ids: Vec<&str> = self.recovered_agents.keys().map(String::as_str).collect();
            let message = format!(
                "Post-recovery agent removal limit exceeded! After {timeout:?} there were \
                 {missing} ({:.1}%) agents recovered from the registry that did not re-register: \
                 {}; the configured removal limit is {:.1}% (--recovery_agent_removal_limit)",
                share * 100.0,
                ids.join(", "),
                limit * 100.0
            );
            self.effects.push(Effect::Exit { message });
            return;
        }
        let when = SystemTime::now();
        let agents = std::mem::take(&mut self.recovered_agents);
        let batch = agents
            .keys()
            .map(|id| Mutation::MarkAgentUnreachable {
                agent_id: id.clone(),
                time_secs: epoch_secs(when),
            })
            .collect();
        let _ = self.persist(
            "mark recovered agents unreachable",
            self.config.registry.apply(batch),
        );
        for (id, info) in agents {
            warn!(agent = %id, hostname = %info.hostname, ?timeout, "agent did not re-register after the master restarted; marking it unreachable");
            while self.removed_agents.len() >= MAX_REMOVED_AGENTS {
                self.removed_agents.pop_front();
            }
            self.removed_agents.push_back((id.clone(), when));
            self.count("master/slave_removals");
            self.count("master/recovery_slave_removals");
            self.notify_agent_lost(&id);
        }
    }

    /// FAILURE (agent lost) to every connected framework, as Mesos's `sendSlaveLost`.
    pub(super) fn notify_agent_lost(&mut self, agent_id: &str) {
        let connected: Vec<String> = self
            .frameworks
            .iter()
            .filter(|(_, f)| f.connection.is_some())
            .map(|(id, _)| id.clone())
            .collect();
        for framework_id in connected {
            let failure = Event {
                failure: Some(event::Failure {
                    agent_id: Some(AgentId {
                        value: agent_id.into(),
                    }),
                    executor_id: None,
                    status: None,
                }),
                ..typed_event(event::Type::Failure)
            };
            self.send(&framework_id, failure);
        }
    }

    /// MARK_AGENT_GONE: stored first (503 if the registry refuses, nothing changed); then a
    /// registered agent is removed and told to shut down. An agent already gone is fine (200, as
    /// Mesos); one the master never knew is 404.
    pub fn mark_agent_gone(&mut self, agent_id: &str) -> Result<(), ApiError> {
        if self.gone_agents.contains_key(agent_id) {
            info!(agent = %agent_id, "agent is already gone");
            return Ok(());
        }
        let known = self.agents.contains_key(agent_id)
            || self.recovered_agents.contains_key(agent_id)
            || self.removed_agent_time(agent_id).is_some();
        if !known {
            return Err(ApiError::not_found(format!(
                "Agent '{agent_id}' is not known to the master"
            )));
        }
        let when = SystemTime::now();
        self.persist(
            "mark an agent gone",
            self.config.registry.mark_agent_gone(agent_id, when),
        )?;
        warn!(agent = %agent_id, "agent marked gone by the operator");
        self.recovered_agents.remove(agent_id);
        self.removed_agents.retain(|(a, _)| a != agent_id);
        self.remove_agent(agent_id, "Agent has been marked gone", AgentRemoval::Gone);
        self.gone_agents.insert(agent_id.to_owned(), when);
        Ok(())
    }

    /// 410 for an agent the operator marked gone: it may never come back with this id.
    pub(super) fn refuse_gone_agent(&self, agent_id: &str) -> Result<(), ApiError> {
        match self.gone_agents.get(agent_id) {
            Some(_) => {
                warn!(agent = %agent_id, "refusing an agent that was marked gone");
                Err(ApiError::gone(format!(
                    "Agent {agent_id} has been marked gone by an operator and may not re-register; \
                     remove its work directory to register as a new agent"
                )))
            }
            None => Ok(()),
        }
    }
}
