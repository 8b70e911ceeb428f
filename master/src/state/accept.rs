//! ACCEPT, as Mesos's `Master::accept` and `_accept`:
//!
//! 1. The offers are validated (unique, outstanding, this framework's, one role, one agent). If
//!    they are not valid, the framework's valid ones go back to the allocator, each task gets
//!    TASK_DROPPED (PARTITION_AWARE) or TASK_LOST with REASON_INVALID_OFFERS, and each other
//!    operation OPERATION_ERROR if it asked for feedback.
//! 2. The offers merge; every operation's resources get the offer's allocation role when they
//!    have none (`injectAllocationInfo`) and are upgraded to the post-refinement format.
//! 3. Operations run in order against the "remaining" resources: speculative ones (RESERVE,
//!    UNRESERVE, CREATE, DESTROY) convert them, CREATE_DISK/DESTROY_DISK and launches consume
//!    them. An invalid task gets TASK_ERROR (REASON_TASK_INVALID / REASON_TASK_GROUP_INVALID),
//!    an invalid operation is dropped.
//! 4. The allocator takes the conversions and the consumed resources; what is left returns to
//!    the agent, filtered from this framework for the ACCEPT's `refuse_seconds`.

use std::collections::BTreeSet;

use mesoblk_proto::mesos::v1::agent_info::capability::Type as AgentCapability;
use mesoblk_proto::mesos::v1::offer::operation::Type as OpType;
use mesoblk_proto::mesos::v1::scheduler::call;
use mesoblk_proto::mesos::v1::{offer, task_status, TaskInfo, TaskState};
use tracing::{debug, error, info, warn};

use super::operations::operation_resources_mut;
use super::tasks::master_status;
use super::{convert, Master};
use crate::allocator::{Accept, Conversion, OfferId, ResourceSet};
use crate::PROVISIONING;

/// The running state of one ACCEPT.
#[derive(Default)]
pub(super) struct Plan {
    pub(super) remaining: ResourceSet,
    pub(super) conversions: Vec<Conversion>,
    pub(super) used: ResourceSet,
    pub(super) destroyed: ResourceSet,
}

fn operation_tasks(operation: &offer::Operation) -> Vec<&TaskInfo> {
    match operation.r#type() {
        OpType::Launch => operation
            .launch
            .as_ref()
            .map(|l| l.task_infos.iter().collect())
            .unwrap_or_default(),
        OpType::LaunchGroup => operation
            .launch_group
            .as_ref()
            .map(|g| g.task_group.tasks.iter().collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

impl Master {
    /// `validation::offer::validate`, in Mesos's order and words.
    fn validate_offers(
        &self,
        framework_id: &str,
        ids: &[mesoblk_proto::mesos::v1::OfferId],
    ) -> Result<Vec<OfferId>, String> {
        if ids.is_empty() {
            return Err("No offers specified".into());
        }
        let mut seen = BTreeSet::new();
        for id in ids {
            if !seen.insert(&id.value) {
                return Err(format!("Duplicate offer {} in offer list", id.value));
            }
        }
        let mut offers = Vec::with_capacity(ids.len());
        for id in ids {
            let offer = self
                .parse_offer_id(&id.value)
                .and_then(|o| self.allocator.offer(o))
                .ok_or_else(|| format!("Offer {} is no longer valid", id.value))?;
            offers.push((id, offer));
        }
        for (id, offer) in &offers {
            if offer.framework.0 != framework_id {
                return Err(format!(
                    "Offer {} has invalid framework {} while framework {framework_id} is expected",
                    id.value, offer.framework.0
                ));
            }
        }
        let (_, first) = offers[0];
        for (id, offer) in &offers {
            if offer.role != first.role {
                return Err(format!(
                    "Aggregated offers must be allocated to the same role. Offer {} uses role \
                     '{} but another is using role '{}",
                    id.value, offer.role, first.role
                ));
            }
        }
        for (id, offer) in &offers {
            if offer.agent != first.agent {
                return Err(format!(
                    "Aggregated offers must belong to one single agent. Offer {} uses agent {} \
                     and agent {}",
                    id.value, offer.agent.0, first.agent.0
                ));
            }
        }
        Ok(offers.iter().map(|(_, o)| o.id).collect())
    }

    /// ACCEPT (see the module docs).
    pub fn accept(&mut self, framework_id: &str, accept: call::Accept) {
        self.count("master/messages_accept");
        let offers = match self.validate_offers(framework_id, &accept.offer_ids) {
            Ok(offers) => offers,
            Err(error) => return self.accept_invalid_offers(framework_id, &accept, &error),
        };
        self.forget_offers(&offers);
        let merged = match self.allocator.merge_offers(&offers) {
            Ok(id) => id,
            Err(e) => return self.accept_invalid_offers(framework_id, &accept, &e.to_string()),
        };
        let Some(offer) = self.allocator.offer(merged).cloned() else {
            return;
        };
        let agent_id = offer.agent.0.clone();
        if !self.agents.get(&agent_id).is_some_and(|a| a.connected()) {
            // Offers of disconnected agents are rescinded, so this is a race at most.
            let _ = self.allocator.rescind(merged);
            let state = self.lost_or_dropped(framework_id);
            for operation in &accept.operations {
                for task in operation_tasks(operation) {
                    let status = master_status(
                        &task.task_id.value,
                        Some(&task.agent_id.value),
                        state,
                        task_status::Reason::AgentDisconnected,
                        "Agent disconnected",
                    );
                    self.send_master_update(framework_id, status);
                }
            }
            return;
        }
        info!(framework = %framework_id, agent = %agent_id, offers = accept.offer_ids.len(), "processing ACCEPT");
        for task in accept.operations.iter().flat_map(operation_tasks) {
            debug!(target: PROVISIONING, task = %task.task_id.value, "ACCEPT received");
        }
        let mut plan = Plan {
            remaining: offer.resources.clone(),
            ..Plan::default()
        };
        for operation in accept.operations {
            self.accept_operation(framework_id, &agent_id, &offer.role, operation, &mut plan);
        }
        let now = self.now();
        let decision = Accept {
            conversions: plan.conversions,
            used: plan.used,
            refuse_seconds: accept.filters.as_ref().and_then(|f| f.refuse_seconds),
        };
        let speculative = !decision.conversions.is_empty();
        if let Err(e) = self.allocator.accept(merged, decision, now) {
            error!(framework = %framework_id, agent = %agent_id, "the allocator refused a validated ACCEPT: {e}");
            let _ = self.allocator.rescind(merged);
        } else if speculative {
            // CREATE and DESTROY changed the agent's volumes: into the registry.
            self.persist_agent_resources(&agent_id, false);
        }
        if !plan.destroyed.is_empty() {
            self.rescind_offers_holding(&agent_id, &plan.destroyed);
        }
    }

    fn lost_or_dropped(&self, framework_id: &str) -> TaskState {
        if self.partition_aware(framework_id) {
            TaskState::TaskDropped
        } else {
            TaskState::TaskLost
        }
    }

    fn accept_invalid_offers(&mut self, framework_id: &str, accept: &call::Accept, error: &str) {
        warn!(framework = %framework_id, %error, "ACCEPT used invalid offers");
        for id in &accept.offer_ids {
            if let Some(offer) = self.own_offer(framework_id, id) {
                self.forget_offers(&[offer]);
                let _ = self.allocator.rescind(offer);
            }
        }
        let state = self.lost_or_dropped(framework_id);
        for operation in &accept.operations {
            let tasks = operation_tasks(operation);
            if !matches!(operation.r#type(), OpType::Launch | OpType::LaunchGroup) {
                let message = format!("Operation attempted with invalid offers: {error}");
                self.drop_operation(framework_id, operation, &message);
                continue;
            }
            for task in tasks {
                let status = master_status(
                    &task.task_id.value,
                    Some(&task.agent_id.value),
                    state,
                    task_status::Reason::InvalidOffers,
                    format!("Task launched with invalid offers: {error}"),
                );
                self.send_master_update(framework_id, status);
            }
        }
    }

    /// DESTROY rescinds other offers of the agent that hold a destroyed volume.
    fn rescind_offers_holding(&mut self, agent_id: &str, volumes: &ResourceSet) {
        let holding: Vec<OfferId> = self
            .allocator
            .offers()
            .filter(|o| o.agent.0 == agent_id)
            .filter(|o| {
                volumes
                    .items()
                    .iter()
                    .any(|v| o.resources.items().contains(v))
            })
            .map(|o| o.id)
            .collect();
        for id in &holding {
            let _ = self.allocator.rescind(*id);
        }
        self.rescind_offers(&holding);
    }

    pub(super) fn task_error(
        &mut self,
        framework_id: &str,
        task: &TaskInfo,
        reason: task_status::Reason,
        message: &str,
    ) {
        let status = master_status(
            &task.task_id.value,
            Some(&task.agent_id.value),
            TaskState::TaskError,
            reason,
            message,
        );
        self.send_master_update(framework_id, status);
    }

    fn accept_operation(
        &mut self,
        framework_id: &str,
        agent_id: &str,
        role: &str,
        mut operation: offer::Operation,
        plan: &mut Plan,
    ) {
        let kind = operation.r#type();
        for resource in operation_resources_mut(&mut operation) {
            convert::upgrade(resource);
            if resource.allocation_info.is_none() {
                convert::allocate(std::slice::from_mut(resource), role);
            }
        }
        let invalid = operation_resources_mut(&mut operation)
            .into_iter()
            .find_map(|r| convert::validate(r).err());
        let group_reason = task_status::Reason::TaskGroupInvalid;
        if let Some(e) = invalid {
            match kind {
                OpType::Launch | OpType::LaunchGroup => {
                    let reason = if kind == OpType::Launch {
                        task_status::Reason::TaskInvalid
                    } else {
                        group_reason
                    };
                    for task in operation_tasks(&operation) {
                        self.task_error(framework_id, task, reason, &e.0);
                    }
                }
                OpType::Unknown => warn!("ignoring an unknown operation"),
                _ => self.drop_operation(
                    framework_id,
                    &operation,
                    &format!("Operation attempted with invalid resources: {e}"),
                ),
            }
            return;
        }
        if operation.id.is_some() {
            if let Err(message) = self.feedback_supported(agent_id, &operation) {
                match kind {
                    OpType::Launch | OpType::LaunchGroup => {
                        let reason = if kind == OpType::Launch {
                            task_status::Reason::TaskInvalid
                        } else {
                            group_reason
                        };
                        for task in operation_tasks(&operation) {
                            self.task_error(framework_id, task, reason, &message);
                        }
                    }
                    _ => self.drop_operation(framework_id, &operation, &message),
                }
                return;
            }
        }
        match kind {
            OpType::Reserve | OpType::Unreserve | OpType::Create | OpType::Destroy => {
                self.accept_speculative(framework_id, agent_id, role, operation, plan);
            }
            OpType::CreateDisk | OpType::DestroyDisk => {
                let source = match self.disk_operation_source(agent_id, &operation) {
                    Ok(source) => source,
                    Err(e) => {
                        let message = format!("{e}; on agent {agent_id}");
                        return self.drop_operation(framework_id, &operation, &message);
                    }
                };
                if !plan.remaining.contains(&source) {
                    let message = self.not_contained(kind, &plan.remaining, &source, role);
                    return self.drop_operation(framework_id, &operation, &message);
                }
                let _ = plan.remaining.subtract(&source);
                let _ = plan.used.add(&source);
                self.apply_operation(framework_id, agent_id, operation, role, source);
            }
            OpType::GrowVolume | OpType::ShrinkVolume => {
                let message = format!(
                    "Not supported on agent {agent_id} because it does not have RESIZE_VOLUME capability"
                );
                self.drop_operation(framework_id, &operation, &message);
            }
            OpType::Launch => {
                let tasks = operation.launch.map(|l| l.task_infos).unwrap_or_default();
                for task in tasks {
                    self.launch_task(framework_id, agent_id, role, task, plan);
                }
            }
            OpType::LaunchGroup => {
                if let Some(group) = operation.launch_group {
                    self.launch_group(
                        framework_id,
                        agent_id,
                        role,
                        group.executor,
                        group.task_group,
                        plan,
                    );
                }
            }
            OpType::Unknown => warn!("ignoring an unknown operation"),
        }
    }

    /// Mesos's checks when an operation sets `id` (operation feedback).
    fn feedback_supported(
        &self,
        agent_id: &str,
        operation: &offer::Operation,
    ) -> Result<(), String> {
        match operation.r#type() {
            OpType::Launch => {
                return Err("The `id` field cannot be set on LAUNCH operations".into())
            }
            OpType::LaunchGroup => {
                return Err("The `id` field cannot be set on LAUNCH_GROUP operations".into())
            }
            _ => {}
        }
        let agent = self.agents.get(agent_id);
        let has = |c: AgentCapability| agent.is_some_and(|a| a.has_capability(c));
        if !has(AgentCapability::ResourceProvider) {
            return Err(format!("Operation requested feedback, but agent {agent_id} does not have the required RESOURCE_PROVIDER capability"));
        }
        let on_provider = super::operations::operation_resources(operation)
            .iter()
            .any(|r| r.provider_id.is_some());
        if !on_provider && !has(AgentCapability::AgentOperationFeedback) {
            return Err(format!("Operation on agent default resources requested feedback, but agent {agent_id} does not have the required AGENT_OPERATION_FEEDBACK and RESOURCE_PROVIDER capabilities"));
        }
        Ok(())
    }

    fn not_contained(
        &self,
        kind: OpType,
        remaining: &ResourceSet,
        consumed: &ResourceSet,
        role: &str,
    ) -> String {
        let mut have = convert::to_protos(remaining);
        convert::allocate(&mut have, role);
        let mut want = convert::to_protos(consumed);
        convert::allocate(&mut want, role);
        format!(
            "Invalid {} Operation: {} does not contain {}",
            kind.as_str_name(),
            convert::stringify(&have),
            convert::stringify(&want)
        )
    }

    fn accept_speculative(
        &mut self,
        framework_id: &str,
        agent_id: &str,
        role: &str,
        operation: offer::Operation,
        plan: &mut Plan,
    ) {
        let conversion = match self.speculative_conversion(framework_id, agent_id, &operation) {
            Ok(c) => c,
            Err(e) => {
                let message = format!("{e}; on agent {agent_id}");
                return self.drop_operation(framework_id, &operation, &message);
            }
        };
        if !plan.remaining.contains(&conversion.consumed) {
            let message = self.not_contained(
                operation.r#type(),
                &plan.remaining,
                &conversion.consumed,
                role,
            );
            return self.drop_operation(framework_id, &operation, &message);
        }
        let mut remaining = plan.remaining.clone();
        let applied = remaining
            .subtract(&conversion.consumed)
            .and_then(|()| remaining.add(&conversion.converted));
        if let Err(e) = applied {
            return self.drop_operation(
                framework_id,
                &operation,
                &format!("Invalid resources: {e}"),
            );
        }
        plan.remaining = remaining;
        if operation.r#type() == OpType::Destroy {
            let _ = plan.destroyed.add(&conversion.consumed);
        }
        plan.conversions.push(conversion);
        self.apply_operation(framework_id, agent_id, operation, role, ResourceSet::new());
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

    /// REQUEST: Mesos passes it to the allocator, whose default implementation ignores it.
    pub fn request(&mut self, framework_id: &str, request: &call::Request) {
        debug!(framework = %framework_id, requests = request.requests.len(), "REQUEST");
    }
}
