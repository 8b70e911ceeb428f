//! Offer operations other than launches: RESERVE, UNRESERVE, CREATE and DESTROY (speculative:
//! the books change at ACCEPT, as in Mesos) and CREATE_DISK / DESTROY_DISK (not speculative:
//! the consumed disk stays allocated to the framework until the agent answers, then the agent's
//! `converted_resources` replace it). Every operation is booked with a uuid and sent to the agent
//! as APPLY_OPERATION; the agent's status updates are forwarded as UPDATE_OPERATION_STATUS when
//! the framework set an operation id, and ACKNOWLEDGE_OPERATION_STATUS goes back to the agent.
//! The checks (Mesos's `validation::operation`) are in `operation_validation`.

use mesoblk_proto::mesoblk::agent::v1 as agent;
use mesoblk_proto::mesos::v1::offer::operation::Type as OpType;
use mesoblk_proto::mesos::v1::scheduler::{call, event, Event};
use mesoblk_proto::mesos::v1::{
    offer, AgentId, FrameworkId, Operation, OperationId, OperationState, OperationStatus, Resource,
    ResourceProviderId, Uuid,
};
use tracing::{debug, info, warn};

use super::{convert, typed_event, Master};
use crate::allocator::{AgentId as AllocAgentId, FrameworkId as AllocFrameworkId, ResourceSet};
use crate::error::ApiError;

/// An operation the master tracks.
#[derive(Debug)]
pub struct OperationRecord {
    /// Mesos's view: info, latest status, statuses, uuid.
    pub operation: Operation,
    /// The role of the offer it came from.
    pub role: String,
    /// For CREATE_DISK/DESTROY_DISK: what it holds until it ends.
    pub(super) consumed: ResourceSet,
    /// RESERVE/UNRESERVE/CREATE/DESTROY: applied to the books at ACCEPT.
    pub speculative: bool,
}

/// Mesos's terminal operation states.
pub fn is_terminal(state: OperationState) -> bool {
    matches!(
        state,
        OperationState::OperationFinished
            | OperationState::OperationFailed
            | OperationState::OperationError
            | OperationState::OperationDropped
            | OperationState::OperationGoneByOperator
    )
}

fn state_of(status: &OperationStatus) -> OperationState {
    OperationState::try_from(status.state).unwrap_or(OperationState::OperationUnknown)
}

/// The UPDATE_OPERATION_STATUS event for `status`.
pub fn operation_event(status: OperationStatus) -> Event {
    Event {
        update_operation_status: Some(event::UpdateOperationStatus { status }),
        ..typed_event(event::Type::UpdateOperationStatus)
    }
}

/// Every resource an operation names, for in-place normalisation (allocation injection, format
/// upgrade).
pub fn operation_resources_mut(operation: &mut offer::Operation) -> Vec<&mut Resource> {
    let mut out: Vec<&mut Resource> = Vec::new();
    if let Some(launch) = operation.launch.as_mut() {
        for task in &mut launch.task_infos {
            out.extend(task.resources.iter_mut());
            if let Some(executor) = task.executor.as_mut() {
                out.extend(executor.resources.iter_mut());
            }
        }
    }
    if let Some(group) = operation.launch_group.as_mut() {
        out.extend(group.executor.resources.iter_mut());
        for task in &mut group.task_group.tasks {
            out.extend(task.resources.iter_mut());
            if let Some(executor) = task.executor.as_mut() {
                out.extend(executor.resources.iter_mut());
            }
        }
    }
    if let Some(reserve) = operation.reserve.as_mut() {
        out.extend(reserve.resources.iter_mut());
        out.extend(reserve.source.iter_mut());
    }
    if let Some(unreserve) = operation.unreserve.as_mut() {
        out.extend(unreserve.resources.iter_mut());
    }
    if let Some(create) = operation.create.as_mut() {
        out.extend(create.volumes.iter_mut());
    }
    if let Some(destroy) = operation.destroy.as_mut() {
        out.extend(destroy.volumes.iter_mut());
    }
    if let Some(create_disk) = operation.create_disk.as_mut() {
        out.push(&mut create_disk.source);
    }
    if let Some(destroy_disk) = operation.destroy_disk.as_mut() {
        out.push(&mut destroy_disk.source);
    }
    out
}

impl Master {
    /// Books an operation (OPERATION_PENDING) and sends it to its agent.
    pub(super) fn apply_operation(
        &mut self,
        framework_id: &str,
        agent_id: &str,
        info: offer::Operation,
        role: &str,
        consumed: ResourceSet,
    ) {
        let uuid = uuid::Uuid::new_v4();
        let speculative = matches!(
            info.r#type(),
            OpType::Reserve | OpType::Unreserve | OpType::Create | OpType::Destroy
        );
        let provider = operation_resources(&info)
            .into_iter()
            .find_map(|r| r.provider_id.clone());
        let status = OperationStatus {
            operation_id: info.id.clone(),
            state: OperationState::OperationPending as i32,
            agent_id: Some(AgentId {
                value: agent_id.into(),
            }),
            resource_provider_id: provider,
            ..Default::default()
        };
        let operation = Operation {
            framework_id: Some(FrameworkId {
                value: framework_id.into(),
            }),
            agent_id: Some(AgentId {
                value: agent_id.into(),
            }),
            info: info.clone(),
            latest_status: status,
            statuses: Vec::new(),
            uuid: Uuid {
                value: uuid.as_bytes().to_vec(),
            },
        };
        info!(operation = %uuid, kind = info.r#type().as_str_name(), agent = %agent_id, "applying operation");
        self.operations.insert(
            uuid.to_string(),
            OperationRecord {
                operation,
                role: role.to_owned(),
                consumed,
                speculative,
            },
        );
        let event = agent::Event {
            r#type: Some(agent::event::Type::ApplyOperation as i32),
            apply_operation: Some(agent::event::ApplyOperation {
                framework_id: Some(FrameworkId {
                    value: framework_id.into(),
                }),
                operation_info: info,
                operation_uuid: Uuid {
                    value: uuid.as_bytes().to_vec(),
                },
            }),
            ..Default::default()
        };
        self.send_to_agent(agent_id, event);
    }

    /// An invalid operation (`Master::drop`): OPERATION_ERROR to the framework if it asked for
    /// feedback.
    pub(super) fn drop_operation(
        &mut self,
        framework_id: &str,
        operation: &offer::Operation,
        message: &str,
    ) {
        warn!(framework = %framework_id, kind = operation.r#type().as_str_name(), %message, "dropping operation");
        self.count("master/operations_error");
        if let Some(id) = &operation.id {
            let status = OperationStatus {
                operation_id: Some(id.clone()),
                state: OperationState::OperationError as i32,
                message: Some(message.into()),
                ..Default::default()
            };
            self.send(framework_id, operation_event(status));
        }
    }

    /// POST /agent/v1/operation_status.
    pub fn operation_status(
        &mut self,
        update: agent::OperationStatusUpdate,
    ) -> Result<(), ApiError> {
        let agent_id = update.agent_id.value.clone();
        self.check_agent(&agent_id)?;
        let key = uuid::Uuid::from_slice(&update.operation_uuid.value)
            .map_err(|_| ApiError::bad_request("'operation_uuid' must be 16 bytes"))?
            .to_string();
        let Some(record) = self.operations.get_mut(&key) else {
            debug!(operation = %key, "status of an unknown operation; acknowledging it");
            self.ack_operation_to_agent(
                &agent_id,
                &update.operation_uuid.value,
                update.status.uuid.as_ref(),
                None,
            );
            return Ok(());
        };
        let mut status = update.status;
        status.agent_id = Some(AgentId {
            value: agent_id.clone(),
        });
        status.operation_id.clone_from(&record.operation.info.id);
        if status.resource_provider_id.is_none() {
            status
                .resource_provider_id
                .clone_from(&record.operation.latest_status.resource_provider_id);
        }
        let was_terminal = is_terminal(state_of(&record.operation.latest_status));
        let now_terminal = is_terminal(state_of(&status));
        if !was_terminal {
            record.operation.latest_status = status.clone();
        }
        if record.operation.statuses.last() != Some(&status) {
            record.operation.statuses.push(status.clone());
        }
        let framework_id = record
            .operation
            .framework_id
            .as_ref()
            .map(|f| f.value.clone())
            .unwrap_or_default();
        let feedback = record.operation.info.id.is_some();
        if !was_terminal && now_terminal && !record.speculative {
            let role = record.role.clone();
            let consumed = std::mem::take(&mut record.consumed);
            self.finish_disk_operation(&agent_id, &framework_id, &role, consumed, &status);
        }
        if now_terminal {
            self.count(match state_of(&status) {
                OperationState::OperationFinished => "master/operations_finished",
                _ => "master/operations_failed",
            });
        }
        if feedback {
            self.send(&framework_id, operation_event(status));
        } else if now_terminal {
            self.operations.remove(&key);
            self.ack_operation_to_agent(
                &agent_id,
                &update.operation_uuid.value,
                status.uuid.as_ref(),
                status.resource_provider_id.clone(),
            );
        }
        Ok(())
    }

    /// A CREATE_DISK/DESTROY_DISK ended: its disk becomes the agent's converted resources, or
    /// returns as it was.
    fn finish_disk_operation(
        &mut self,
        agent_id: &str,
        framework_id: &str,
        role: &str,
        consumed: ResourceSet,
        status: &OperationStatus,
    ) {
        let agent = AllocAgentId(agent_id.to_owned());
        let framework = AllocFrameworkId(framework_id.to_owned());
        let finished = state_of(status) == OperationState::OperationFinished;
        let converted = convert::to_set(&status.converted_resources);
        let result = match (finished, converted) {
            (true, Ok(converted)) => self
                .allocator
                .convert_allocation(&agent, &framework, role, &consumed, &converted),
            (true, Err(e)) => {
                warn!(agent = %agent_id, "invalid converted resources ({e}); returning the source");
                self.allocator.recover(&agent, &framework, role, &consumed)
            }
            (false, _) => self.allocator.recover(&agent, &framework, role, &consumed),
        };
        if let Err(e) = result {
            warn!(agent = %agent_id, "accounting the end of a disk operation: {e}");
        }
        if finished {
            // The agent's disks changed: into the registry.
            self.persist_agent_resources(agent_id, false);
        }
        let now = self.now();
        self.allocate_agents(&[agent_id.to_owned()], now);
    }

    fn ack_operation_to_agent(
        &mut self,
        agent_id: &str,
        operation_uuid: &[u8],
        status_uuid: Option<&Uuid>,
        provider: Option<ResourceProviderId>,
    ) {
        let Some(status_uuid) = status_uuid.cloned() else {
            return;
        };
        let event = agent::Event {
            r#type: Some(agent::event::Type::AcknowledgeOperationStatus as i32),
            acknowledge_operation_status: Some(agent::event::AcknowledgeOperationStatus {
                operation_uuid: Uuid {
                    value: operation_uuid.to_vec(),
                },
                status_uuid,
                resource_provider_id: provider,
            }),
            ..Default::default()
        };
        self.send_to_agent(agent_id, event);
    }

    fn find_operation(
        &self,
        framework_id: &str,
        operation_id: &OperationId,
        agent: Option<&str>,
    ) -> Option<String> {
        self.operations
            .iter()
            .find(|(_, r)| {
                r.operation
                    .framework_id
                    .as_ref()
                    .is_some_and(|f| f.value == framework_id)
                    && r.operation.info.id.as_ref() == Some(operation_id)
                    && agent
                        .is_none_or(|a| r.operation.agent_id.as_ref().is_some_and(|x| x.value == a))
            })
            .map(|(k, _)| k.clone())
    }

    /// ACKNOWLEDGE_OPERATION_STATUS: forwarded to the agent; an acknowledged terminal status ends
    /// the operation.
    pub fn acknowledge_operation_status(
        &mut self,
        framework_id: &str,
        ack: &call::AcknowledgeOperationStatus,
    ) {
        let agent = ack.agent_id.as_ref().map(|a| a.value.as_str());
        let Some(key) = self.find_operation(framework_id, &ack.operation_id, agent) else {
            warn!(operation = %ack.operation_id.value, "acknowledgement of an unknown operation");
            return;
        };
        let Some(record) = self.operations.get(&key) else {
            return;
        };
        let agent_id = record
            .operation
            .agent_id
            .as_ref()
            .map(|a| a.value.clone())
            .unwrap_or_default();
        let operation_uuid = record.operation.uuid.value.clone();
        let latest = &record.operation.latest_status;
        let done = is_terminal(state_of(latest))
            && latest.uuid.as_ref().is_some_and(|u| u.value == ack.uuid);
        let provider = latest.resource_provider_id.clone();
        if done {
            self.operations.remove(&key);
        }
        self.ack_operation_to_agent(
            &agent_id,
            &operation_uuid,
            Some(&Uuid {
                value: ack.uuid.clone(),
            }),
            provider,
        );
    }

    /// RECONCILE_OPERATIONS (`Master::reconcileOperations`): known operations get their latest
    /// status; unknown ones what Mesos says about them. No operations listed means all of the
    /// framework's.
    pub fn reconcile_operations(
        &mut self,
        framework_id: &str,
        reconcile: call::ReconcileOperations,
    ) {
        let mut answers = Vec::new();
        if reconcile.operations.is_empty() {
            for record in self.operations.values() {
                if record
                    .operation
                    .framework_id
                    .as_ref()
                    .is_some_and(|f| f.value == framework_id)
                    && record.operation.info.id.is_some()
                {
                    answers.push(record.operation.latest_status.clone());
                }
            }
        }
        for operation in reconcile.operations {
            let agent = operation.agent_id.as_ref().map(|a| a.value.clone());
            if let Some(key) =
                self.find_operation(framework_id, &operation.operation_id, agent.as_deref())
            {
                if let Some(record) = self.operations.get(&key) {
                    answers.push(record.operation.latest_status.clone());
                    continue;
                }
            }
            let (state, message) = match agent.as_deref() {
                None => (
                    OperationState::OperationUnknown,
                    "Reconciliation: Operation is unknown and no 'agent_id' was provided",
                ),
                Some(a) if self.agents.contains_key(a) => (
                    OperationState::OperationUnknown,
                    "Reconciliation: Operation is unknown",
                ),
                Some(a) if self.recovered_agents.contains_key(a) => (
                    OperationState::OperationRecovering,
                    "Reconciliation: Agent is recovered but has not re-registered",
                ),
                Some(a) if self.gone_agents.contains_key(a) => (
                    OperationState::OperationGoneByOperator,
                    "Reconciliation: Agent marked gone by operator",
                ),
                Some(a) if self.removed_agent_time(a).is_some() => (
                    OperationState::OperationUnreachable,
                    "Reconciliation: Agent is unreachable",
                ),
                Some(_) => (
                    OperationState::OperationUnknown,
                    "Reconciliation: Both operation and agent are unknown",
                ),
            };
            answers.push(OperationStatus {
                operation_id: Some(operation.operation_id),
                state: state as i32,
                message: Some(message.into()),
                agent_id: operation.agent_id,
                resource_provider_id: operation.resource_provider_id,
                ..Default::default()
            });
        }
        for mut status in answers {
            // A reconciliation answer is not acknowledged.
            status.uuid = None;
            self.send(framework_id, operation_event(status));
        }
    }

    /// A removed framework's operations are forgotten (its allocations went with it).
    pub(super) fn forget_framework_operations(&mut self, framework_id: &str) {
        self.operations.retain(|_, r| {
            r.operation
                .framework_id
                .as_ref()
                .is_none_or(|f| f.value != framework_id)
        });
    }

    /// A removed agent's operations: OPERATION_UNREACHABLE (or GONE_BY_OPERATOR) to frameworks
    /// that asked for feedback, then forgotten.
    pub(super) fn operations_lost_with_agent(&mut self, agent_id: &str, unreachable: bool) {
        let keys: Vec<String> = self
            .operations
            .iter()
            .filter(|(_, r)| {
                r.operation
                    .agent_id
                    .as_ref()
                    .is_some_and(|a| a.value == agent_id)
            })
            .map(|(k, _)| k.clone())
            .collect();
        let (state, message) = if unreachable {
            (
                OperationState::OperationUnreachable,
                "Agent was marked unreachable",
            )
        } else {
            (
                OperationState::OperationGoneByOperator,
                "Agent has been marked gone",
            )
        };
        for key in keys {
            let Some(record) = self.operations.remove(&key) else {
                continue;
            };
            let (Some(id), Some(framework)) = (
                record.operation.info.id.clone(),
                record.operation.framework_id.clone(),
            ) else {
                continue;
            };
            let status = OperationStatus {
                operation_id: Some(id),
                state: state as i32,
                message: Some(message.into()),
                agent_id: Some(AgentId {
                    value: agent_id.into(),
                }),
                resource_provider_id: record.operation.latest_status.resource_provider_id.clone(),
                ..Default::default()
            };
            self.send(&framework.value, operation_event(status));
        }
    }
}

/// Every resource an operation names (read-only).
pub fn operation_resources(operation: &offer::Operation) -> Vec<Resource> {
    let mut copy = operation.clone();
    operation_resources_mut(&mut copy)
        .into_iter()
        .map(|r| r.clone())
        .collect()
}
