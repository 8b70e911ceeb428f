//! Agent re-registration (POST /agent/v1/reregister): a known agent's books are reconciled with
//! its report (tasks it does not know were lost on the way: TASK_LOST, or TASK_GONE for
//! PARTITION_AWARE frameworks); an agent the master removed, or never knew (after a master
//! restart), is admitted again with its id and the tasks it reports, except those of frameworks
//! that were told the tasks were lost and are not PARTITION_AWARE, which are shut down on the
//! agent as Mesos does. Unacknowledged updates it reports are processed as new ones. An agent
//! marked gone is refused (410); a recovered one (`recovered_agents`) stops being recovered.

use std::collections::BTreeSet;
use std::time::SystemTime;

use mesoblk_proto::mesoblk::agent::v1 as agent;
use mesoblk_proto::mesos::v1::{task_status, ExecutorInfo, TaskState};
use tracing::{debug, info, warn};

use super::agents::validate_registration;
use super::agents::ExecutorRecord;
use super::tasks::{is_terminal, master_status, shutdown_framework_event, TaskKey, TaskRecord};
use super::{convert, Master};
use crate::allocator::{
    AgentId as AllocAgentId, Allocation, FrameworkId as AllocFrameworkId, ResourceSet,
};
use crate::error::ApiError;

/// The role a reported task's resources are allocated to (`*` if none says).
fn task_role(task: &mesoblk_proto::mesos::v1::Task) -> String {
    task.resources
        .iter()
        .find_map(|r| convert::allocation_role(r).map(str::to_owned))
        .unwrap_or_else(|| "*".to_owned())
}

impl Master {
    /// POST /agent/v1/reregister: a known agent keeps its books, which are reconciled with its
    /// report; an agent the master removed (or does not know) is admitted again with its id and
    /// the tasks it reports (except those of frameworks that were told they are lost and are not
    /// PARTITION_AWARE: those frameworks are shut down on the agent).
    pub fn reregister_agent(
        &mut self,
        reregister: agent::ReregisterAgent,
    ) -> Result<agent::Registered, ApiError> {
        let Some(id) = reregister
            .agent
            .agent_info
            .id
            .as_ref()
            .map(|i| i.value.clone())
        else {
            return Err(ApiError::bad_request(
                "'AgentInfo.id' must be set when re-registering",
            ));
        };
        super::validation::validate_id(&id)
            .map_err(|e| ApiError::bad_request(format!("Invalid agent id: {e}")))?;
        self.refuse_gone_agent(&id)?;
        let (address, total) = validate_registration(&reregister.agent)?;
        self.recover_frameworks(&reregister.frameworks);
        if self.agents.contains_key(&id) {
            self.reregister_known(&id, reregister, address, total)?;
        } else {
            self.readmit(&id, reregister, address, total)?;
        }
        if self.recovered_agents.remove(&id).is_some() {
            info!(agent = %id, "recovered agent re-registered");
        }
        self.persist_agent(&id);
        self.count("master/slave_reregistrations");
        Ok(self.registered_answer(&id))
    }

    /// Frameworks an agent reports that this master does not know become recovered frameworks
    /// (inactive until they subscribe), as after a Mesos master failover.
    fn recover_frameworks(&mut self, frameworks: &[mesoblk_proto::mesos::v1::FrameworkInfo]) {
        for info in frameworks {
            let Some(id) = info.id.as_ref().map(|i| i.value.clone()) else {
                continue;
            };
            if self.frameworks.contains_key(&id)
                || self.completed.iter().any(|c| c.info.id == info.id)
            {
                continue;
            }
            info!(framework = %id, "recovered framework from a re-registering agent");
            self.frameworks.insert(
                id.clone(),
                super::Framework {
                    info: info.clone(),
                    connection: None,
                    active: false,
                    recovered: true,
                    suppressed_roles: BTreeSet::new(),
                    offer_constraints: None,
                    registered_time: SystemTime::now(),
                    reregistered_time: None,
                    generation: 0,
                    completed_tasks: Default::default(),
                },
            );
            self.publish_framework(&id, true);
        }
    }

    fn reregister_known(
        &mut self,
        id: &str,
        reregister: agent::ReregisterAgent,
        address: (String, u16),
        total: ResourceSet,
    ) -> Result<(), ApiError> {
        let alloc_id = AllocAgentId(id.to_owned());
        if self.allocator.agent_total(&alloc_id) != Some(&total) {
            match self.allocator.update_agent(&alloc_id, total) {
                Ok(rescinded) => self.rescind_offers(&rescinded),
                Err(e) => warn!(agent = %id, "keeping the agent's known total: {e}"),
            }
        }
        let rescinded = self
            .allocator
            .deactivate_agent(&alloc_id)
            .unwrap_or_default();
        self.rescind_offers(&rescinded);
        let reported: BTreeSet<TaskKey> = reregister
            .tasks
            .iter()
            .map(|t| (t.framework_id.value.clone(), t.task_id.value.clone()))
            .collect();
        let now = self.now();
        if let Some(agent) = self.agents.get_mut(id) {
            agent.endpoint = reregister.agent.endpoint.clone();
            agent.address = address;
            agent.capabilities = reregister.agent.capabilities.clone();
            agent.resource_providers = reregister.agent.resource_providers.clone();
            agent.version.clone_from(&reregister.agent.version);
            agent.info.attributes = reregister.agent.agent_info.attributes.clone();
            agent.reregistered_time = Some(SystemTime::now());
            agent.connection = None;
            agent.last_seen = now;
        }
        // Tasks the master launched that the agent does not know were lost on the way.
        let missing: Vec<TaskKey> = self
            .agents
            .get(id)
            .map(|a| {
                a.tasks
                    .iter()
                    .filter(|k| !reported.contains(*k))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        for key in missing {
            let state = if self.partition_aware(&key.0) {
                TaskState::TaskGone
            } else {
                TaskState::TaskLost
            };
            let status = master_status(
                &key.1,
                Some(id),
                state,
                task_status::Reason::Reconciliation,
                "Reconciliation: Task is unknown to the agent",
            );
            self.end_task(&key, status, true);
        }
        for task in &reregister.tasks {
            let key = (task.framework_id.value.clone(), task.task_id.value.clone());
            if !self.tasks.contains_key(&key) {
                // Mesos assumes this cannot happen (an agent only drops tasks the master dropped).
                warn!(agent = %id, task = %key.1, "ignoring a task the master does not know");
            }
        }
        info!(agent = %id, "agent re-registered");
        self.replay_updates(reregister.unacknowledged_updates);
        Ok(())
    }

    fn readmit(
        &mut self,
        id: &str,
        reregister: agent::ReregisterAgent,
        address: (String, u16),
        total: ResourceSet,
    ) -> Result<(), ApiError> {
        let was_removed = self.removed_agent_time(id).is_some();
        self.removed_agents.retain(|(a, _)| a != id);
        let mut shutdown: BTreeSet<String> = BTreeSet::new();
        let mut adopted = Vec::new();
        for task in &reregister.tasks {
            let framework_id = task.framework_id.value.clone();
            let state = TaskState::try_from(task.state).unwrap_or(TaskState::TaskUnknown);
            if !self.frameworks.contains_key(&framework_id) {
                shutdown.insert(framework_id);
            } else if was_removed && !self.partition_aware(&framework_id) {
                // Its framework was told the task is lost: Mesos shuts the framework down here.
                shutdown.insert(framework_id);
            } else if !is_terminal(state) {
                adopted.push(task.clone());
            }
        }
        let used = Self::allocations_of(&adopted);
        self.allocator
            .add_agent(AllocAgentId(id.to_owned()), total, used)
            .map_err(|e| ApiError::bad_request(format!("Invalid re-registration: {e}")))?;
        let _ = self
            .allocator
            .deactivate_agent(&AllocAgentId(id.to_owned()));
        let mut agent = self.new_agent(reregister.agent, id, address);
        agent.reregistered_time = Some(agent.registered_time);
        self.agents.insert(id.to_owned(), agent);
        for task in adopted {
            self.adopt_task(id, task, &reregister.executors);
        }
        for framework_id in shutdown {
            self.shutdown_framework_later(id, &framework_id);
        }
        info!(agent = %id, "agent re-admitted");
        self.publish_agent_added(id);
        self.replay_updates(reregister.unacknowledged_updates);
        Ok(())
    }

    /// The allocations that reported tasks hold (their resources, in their allocation role).
    fn allocations_of(tasks: &[mesoblk_proto::mesos::v1::Task]) -> Vec<Allocation> {
        tasks
            .iter()
            .filter_map(|task| {
                let resources = convert::to_set(&task.resources).ok()?;
                Some(Allocation {
                    framework: AllocFrameworkId(task.framework_id.value.clone()),
                    role: task_role(task),
                    resources,
                })
            })
            .collect()
    }

    /// Books a task a re-admitted agent reports; its resources were allocated when the agent
    /// was added to the allocator.
    fn adopt_task(
        &mut self,
        agent_id: &str,
        task: mesoblk_proto::mesos::v1::Task,
        executors: &[ExecutorInfo],
    ) {
        let Ok(allocation) = convert::to_set(&task.resources) else {
            warn!(task = %task.task_id.value, "ignoring a reported task with invalid resources");
            return;
        };
        let role = task_role(&task);
        let key = (task.framework_id.value.clone(), task.task_id.value.clone());
        if let Some(executor_id) = &task.executor_id {
            let info = executors.iter().find(|e| e.executor_id == *executor_id);
            if let (Some(info), Some(agent)) = (info, self.agents.get_mut(agent_id)) {
                agent
                    .executors
                    .entry(key.0.clone())
                    .or_default()
                    .entry(executor_id.value.clone())
                    .or_insert_with(|| ExecutorRecord {
                        info: info.clone(),
                        role: role.clone(),
                        allocation: ResourceSet::new(),
                        live_tasks: 0,
                    })
                    .live_tasks += 1;
            }
        }
        if let Some(agent) = self.agents.get_mut(agent_id) {
            agent.tasks.insert(key.clone());
        }
        self.tasks
            .insert(key, TaskRecord::new(task, role, allocation));
    }

    fn replay_updates(&mut self, updates: Vec<agent::StatusUpdate>) {
        for update in updates {
            if let Err(e) = self.status_update(update) {
                debug!("replayed status update refused: {}", e.message);
            }
        }
    }

    /// Shuts a framework down on an agent once its stream is up (queued until then).
    fn shutdown_framework_later(&mut self, agent_id: &str, framework_id: &str) {
        info!(agent = %agent_id, framework = %framework_id, "shutting down a framework on a re-registered agent");
        if let Some(agent) = self.agents.get_mut(agent_id) {
            agent.executors.remove(framework_id);
        }
        self.queue_agent_event(agent_id, shutdown_framework_event(framework_id));
    }
}
