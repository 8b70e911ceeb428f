//! APPLY_OPERATION: CREATE_DISK and DESTROY_DISK go to storage; RESERVE, UNRESERVE, CREATE and
//! DESTROY are speculative (the master applied them already) and simply finish. Every outcome
//! is an `OperationStatusUpdate` kept and re-sent until the master acknowledges it; pending
//! ones are kept in `<work_dir>/meta/slaves/<agent>/operations/<status uuid>.update`
//! (protobuf), so a restarted agent sends them again.

use std::sync::Arc;
use std::time::Instant;

use mesoblk_proto::mesoblk::agent::v1 as agent;
use mesoblk_proto::mesos::v1::offer::operation::Type as OperationType;
use mesoblk_proto::mesos::v1::{AgentId, OperationState, OperationStatus, Uuid};

use std::path::PathBuf;

use prost::Message as _;

use super::{lock, Node, PendingOperation, Runtime};
use crate::checkpoint::{create_dirs, write_atomically};

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
        if let Some(rt) = self.runtime() {
            let path = operation_path(rt, &status_uuid);
            let written = create_dirs(path.parent().expect("a folder"))
                .and_then(|()| write_atomically(&path, &update.encode_to_vec()));
            if let Err(e) = written {
                // Sent anyway; only a restart before the acknowledgement would lose it.
                tracing::warn!(error = %e, "cannot checkpoint an operation status");
            }
        }
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
            return;
        }
        if let Some(rt) = self.runtime() {
            let path = operation_path(rt, status_uuid);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove an acknowledged operation status");
            }
        }
    }

    /// Reads back the operation statuses a previous run left unacknowledged.
    pub(super) fn recover_operations(&self, rt: &Runtime) {
        let dir = rt.layout.agent_meta_dir().join(OPERATIONS_DIR);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        let mut pending = lock(&self.operations);
        for path in entries.flatten().map(|e| e.path()) {
            if path.extension().and_then(|e| e.to_str()) != Some("update") {
                continue;
            }
            let update = std::fs::read(&path)
                .ok()
                .and_then(|b| agent::OperationStatusUpdate::decode(b.as_slice()).ok());
            let Some(update) = update else {
                tracing::warn!(path = %path.display(), "unreadable operation status left alone");
                continue;
            };
            let Some(uuid) = update.status.uuid.as_ref().map(|u| u.value.clone()) else {
                continue;
            };
            pending.insert(
                uuid,
                PendingOperation {
                    update,
                    next_send: Instant::now(),
                },
            );
        }
        if !pending.is_empty() {
            tracing::info!(
                count = pending.len(),
                "unacknowledged operation statuses recovered"
            );
        }
    }
}

const OPERATIONS_DIR: &str = "operations";

fn operation_path(rt: &Runtime, status_uuid: &[u8]) -> PathBuf {
    let name: String = status_uuid.iter().map(|b| format!("{b:02x}")).collect();
    rt.layout
        .agent_meta_dir()
        .join(OPERATIONS_DIR)
        .join(format!("{name}.update"))
}
