//! APPLY_OPERATION: CREATE_DISK and DESTROY_DISK go to storage; RESERVE, UNRESERVE, CREATE and
//! DESTROY are speculative (the master applied them already) and simply finish. Every outcome
//! is an `OperationStatusUpdate` kept and re-sent until the master acknowledges it.

use std::sync::Arc;
use std::time::Instant;

use mesoblk_proto::mesoblk::agent::v1 as agent;
use mesoblk_proto::mesos::v1::offer::operation::Type as OperationType;
use mesoblk_proto::mesos::v1::{AgentId, OperationState, OperationStatus, Uuid};

use super::{lock, Node, PendingOperation};

impl Node {
    /// APPLY_OPERATION.
    pub(super) fn apply_operation(self: &Arc<Self>, apply: agent::event::ApplyOperation) {
        let node = Arc::clone(self);
        tokio::spawn(async move {
            let worker = Arc::clone(&node);
            let info = apply.operation_info.clone();
            let operation_uuid = uuid::Uuid::from_slice(&apply.operation_uuid.value)
                .map(|u| u.to_string())
                .ok();
            let status = tokio::task::spawn_blocking(move || {
                worker.operation_outcome(&info, operation_uuid.as_deref())
            })
            .await
            .unwrap_or_else(|e| OperationStatus {
                operation_id: apply.operation_info.id.clone(),
                state: OperationState::OperationFailed as i32,
                message: Some(format!("the operation panicked: {e}")),
                ..Default::default()
            });
            node.queue_operation_status(apply, status);
        });
    }

    /// What the operation does on this agent.
    fn operation_outcome(
        &self,
        info: &mesoblk_proto::mesos::v1::offer::Operation,
        operation_uuid: Option<&str>,
    ) -> OperationStatus {
        match info.r#type() {
            OperationType::CreateDisk | OperationType::DestroyDisk => {
                lock(&self.storage).apply_operation(info, operation_uuid)
            }
            OperationType::Reserve
            | OperationType::Unreserve
            | OperationType::Create
            | OperationType::Destroy => OperationStatus {
                operation_id: info.id.clone(),
                state: OperationState::OperationFinished as i32,
                ..Default::default()
            },
            other => OperationStatus {
                operation_id: info.id.clone(),
                state: OperationState::OperationError as i32,
                message: Some(format!(
                    "{} is not an operation agents apply",
                    other.as_str_name()
                )),
                ..Default::default()
            },
        }
    }

    fn queue_operation_status(
        &self,
        apply: agent::event::ApplyOperation,
        mut status: OperationStatus,
    ) {
        let Some(agent_id) = self.agent_id().map(str::to_owned) else {
            return;
        };
        let status_uuid = uuid::Uuid::new_v4().as_bytes().to_vec();
        status.uuid = Some(Uuid {
            value: status_uuid.clone(),
        });
        status.agent_id = Some(AgentId {
            value: agent_id.clone(),
        });
        tracing::info!(operation = ?status.operation_id.as_ref().map(|i| &i.value), state = ?status.state(), message = ?status.message, "operation applied");
        let update = agent::OperationStatusUpdate {
            agent_id: AgentId { value: agent_id },
            framework_id: apply.framework_id,
            operation_uuid: apply.operation_uuid,
            status,
        };
        lock(&self.operations).insert(
            status_uuid,
            PendingOperation {
                update,
                next_send: Instant::now(),
            },
        );
        self.wake_sender.notify_one();
    }

    /// ACKNOWLEDGE_OPERATION_STATUS: the status is no longer re-sent.
    pub(super) fn acknowledge_operation(&self, status_uuid: &[u8]) {
        if lock(&self.operations).remove(status_uuid).is_none() {
            tracing::debug!("acknowledgement of an unknown operation status ignored");
        }
    }
}
