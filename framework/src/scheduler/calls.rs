//! The calls a scheduler makes to the master (`POST /api/v1/scheduler` with the subscription's
//! `Mesos-Stream-Id`), each an `async` method of [`SchedulerDriver`].
//!
//! Every call goes on the driver's call connection (not the event stream's), carries the
//! framework id and the stream id, follows a leader redirect, retries a 503 per
//! [`SchedulerConfig::call_retry`](super::SchedulerConfig::call_retry), and is bounded by
//! [`SchedulerConfig::call_timeout`](super::SchedulerConfig::call_timeout). A call succeeds
//! when the master accepts it (202, or 200 for UPDATE_FRAMEWORK); what the master then does is
//! reported on the event stream (for instance a TASK_LOST update for a task launched from a
//! stale offer). While the driver is disconnected calls fail with
//! [`DriverError::NotSubscribed`] rather than wait.

use mesoblk_proto::mesos::v1::scheduler::{call, Call};
use mesoblk_proto::mesos::v1::{
    offer, AgentId, ExecutorId, Filters, FrameworkInfo, KillPolicy, OfferId, OperationStatus,
    Request, TaskId, TaskInfo, TaskStatus,
};

use super::driver::Inner;
use super::{DriverError, SchedulerDriver};
use crate::operations;
use crate::transport::drain;

impl Inner {
    /// Sends `call` as a `kind` call on the live subscription.
    pub(super) async fn send(&self, mut call: Call, kind: call::Type) -> Result<(), DriverError> {
        let name = kind.as_str_name();
        let (url, stream_id, framework_id) = {
            let session = self.session();
            match (&session.stream_id, &session.framework.id) {
                (Some(stream), Some(id)) => (session.leader.clone(), stream.clone(), id.clone()),
                _ => return Err(DriverError::NotSubscribed),
            }
        };
        call.r#type = Some(kind as i32);
        call.framework_id = Some(framework_id);
        let body = self.calls.encode(&call);
        let timeout = self.config.call_timeout;
        let retry = Some(self.config.call_retry);
        let (_, response) = self
            .calls
            .post(&url, body, Some(&stream_id), timeout, retry)
            .await
            .map_err(|source| DriverError::Call { call: name, source })?;
        drain(response, timeout).await;
        tracing::debug!(call = name, "call accepted");
        Ok(())
    }
}

/// The ACKNOWLEDGE for `status`, if it needs one: only updates with a `uuid` (and the agent
/// that sent them) are acknowledged; master-generated ones (reconciliation, lost agents) have
/// none.
pub(super) fn acknowledgement(status: &TaskStatus) -> Option<call::Acknowledge> {
    let uuid = status.uuid.as_ref().filter(|u| !u.is_empty())?;
    Some(call::Acknowledge {
        agent_id: status.agent_id.clone()?,
        task_id: status.task_id.clone(),
        uuid: uuid.clone(),
    })
}

/// The ACKNOWLEDGE_OPERATION_STATUS for `status`, if it needs one: only statuses with a `uuid`
/// of an operation with an id.
pub(super) fn operation_acknowledgement(
    status: &OperationStatus,
) -> Option<call::AcknowledgeOperationStatus> {
    let uuid = status.uuid.as_ref().filter(|u| !u.value.is_empty())?;
    Some(call::AcknowledgeOperationStatus {
        agent_id: status.agent_id.clone(),
        resource_provider_id: status.resource_provider_id.clone(),
        uuid: uuid.value.clone(),
        operation_id: status.operation_id.clone()?,
    })
}

/// The roles a framework subscribes with (`roles`, else the deprecated single `role`).
fn framework_roles(info: &FrameworkInfo) -> Vec<String> {
    if info.roles.is_empty() {
        #[allow(deprecated)] // Pre-MULTI_ROLE frameworks still name their role here.
        let role = info.role.clone().unwrap_or_else(|| "*".into());
        vec![role]
    } else {
        info.roles.clone()
    }
}

impl SchedulerDriver {
    async fn call(&self, call: Call, kind: call::Type) -> Result<(), DriverError> {
        self.ensure_running()?;
        self.inner.send(call, kind).await
    }

    /// ACCEPT: applies `operations` (see [`crate::operations`]) to the resources of
    /// `offer_ids`; what is left over is declined with `filters`.
    pub async fn accept(
        &self,
        offer_ids: Vec<OfferId>,
        operations: Vec<offer::Operation>,
        filters: Option<Filters>,
    ) -> Result<(), DriverError> {
        let accept = call::Accept {
            offer_ids,
            operations,
            filters,
        };
        let call = Call {
            accept: Some(accept),
            ..Call::default()
        };
        self.call(call, call::Type::Accept).await
    }

    /// ACCEPT with one LAUNCH of `tasks`.
    pub async fn launch_tasks(
        &self,
        offer_ids: Vec<OfferId>,
        tasks: Vec<TaskInfo>,
        filters: Option<Filters>,
    ) -> Result<(), DriverError> {
        let operations = vec![operations::launch(tasks)];
        self.accept(offer_ids, operations, filters).await
    }

    /// DECLINE: returns the offers' resources; `filters` says how long not to offer them again
    /// (Mesos's default is 5 seconds).
    pub async fn decline(
        &self,
        offer_ids: Vec<OfferId>,
        filters: Option<Filters>,
    ) -> Result<(), DriverError> {
        let decline = call::Decline { offer_ids, filters };
        let call = Call {
            decline: Some(decline),
            ..Call::default()
        };
        self.call(call, call::Type::Decline).await
    }

    /// ACCEPT_INVERSE_OFFERS.
    pub async fn accept_inverse_offers(
        &self,
        inverse_offer_ids: Vec<OfferId>,
        filters: Option<Filters>,
    ) -> Result<(), DriverError> {
        let body = call::AcceptInverseOffers {
            inverse_offer_ids,
            filters,
        };
        let call = Call {
            accept_inverse_offers: Some(body),
            ..Call::default()
        };
        self.call(call, call::Type::AcceptInverseOffers).await
    }

    /// DECLINE_INVERSE_OFFERS.
    pub async fn decline_inverse_offers(
        &self,
        inverse_offer_ids: Vec<OfferId>,
        filters: Option<Filters>,
    ) -> Result<(), DriverError> {
        let body = call::DeclineInverseOffers {
            inverse_offer_ids,
            filters,
        };
        let call = Call {
            decline_inverse_offers: Some(body),
            ..Call::default()
        };
        self.call(call, call::Type::DeclineInverseOffers).await
    }

    /// REVIVE: removes offer filters and unsuppresses `roles` (all the framework's roles when
    /// empty). Remembered for resubscriptions.
    pub async fn revive(&self, roles: Vec<String>) -> Result<(), DriverError> {
        let call = Call {
            revive: Some(call::Revive {
                roles: roles.clone(),
            }),
            ..Call::default()
        };
        self.call(call, call::Type::Revive).await?;
        let mut session = self.inner.session();
        if roles.is_empty() {
            session.suppressed_roles.clear();
        } else {
            for role in &roles {
                session.suppressed_roles.remove(role);
            }
        }
        Ok(())
    }

    /// SUPPRESS: no offers for `roles` (all the framework's roles when empty) until revived.
    /// Remembered: a resubscription names them as `suppressed_roles`.
    pub async fn suppress(&self, roles: Vec<String>) -> Result<(), DriverError> {
        let call = Call {
            suppress: Some(call::Suppress {
                roles: roles.clone(),
            }),
            ..Call::default()
        };
        self.call(call, call::Type::Suppress).await?;
        let mut session = self.inner.session();
        let roles = if roles.is_empty() {
            framework_roles(&session.framework)
        } else {
            roles
        };
        session.suppressed_roles.extend(roles);
        Ok(())
    }

    /// KILL: asks for `task_id` to be killed, optionally naming its agent and overriding its
    /// kill policy. The outcome arrives as a status update.
    pub async fn kill_task(
        &self,
        task_id: TaskId,
        agent_id: Option<AgentId>,
        kill_policy: Option<KillPolicy>,
    ) -> Result<(), DriverError> {
        let kill = call::Kill {
            task_id,
            agent_id,
            kill_policy,
        };
        let call = Call {
            kill: Some(kill),
            ..Call::default()
        };
        self.call(call, call::Type::Kill).await
    }

    /// SHUTDOWN: asks an agent to shut an executor down (with all its tasks).
    pub async fn shutdown_executor(
        &self,
        executor_id: ExecutorId,
        agent_id: AgentId,
    ) -> Result<(), DriverError> {
        let shutdown = call::Shutdown {
            executor_id,
            agent_id,
        };
        let call = Call {
            shutdown: Some(shutdown),
            ..Call::default()
        };
        self.call(call, call::Type::Shutdown).await
    }

    /// ACKNOWLEDGE `status` (explicit acknowledgements only: a driver configured with
    /// implicit ones refuses with [`DriverError::ImplicitAcknowledgements`]). Returns whether
    /// an acknowledgement was sent: updates without a `uuid` need none and are skipped.
    pub async fn acknowledge_status_update(
        &self,
        status: &TaskStatus,
    ) -> Result<bool, DriverError> {
        if self.inner.config.implicit_acknowledgements {
            return Err(DriverError::ImplicitAcknowledgements);
        }
        let Some(acknowledge) = acknowledgement(status) else {
            return Ok(false);
        };
        let call = Call {
            acknowledge: Some(acknowledge),
            ..Call::default()
        };
        self.call(call, call::Type::Acknowledge).await?;
        Ok(true)
    }

    /// ACKNOWLEDGE_OPERATION_STATUS (explicit acknowledgements only, as
    /// [`acknowledge_status_update`](Self::acknowledge_status_update)). Returns whether one was
    /// sent: statuses without a `uuid` or an operation id need none.
    pub async fn acknowledge_operation_status(
        &self,
        status: &OperationStatus,
    ) -> Result<bool, DriverError> {
        if self.inner.config.implicit_acknowledgements {
            return Err(DriverError::ImplicitAcknowledgements);
        }
        let Some(acknowledge) = operation_acknowledgement(status) else {
            return Ok(false);
        };
        let call = Call {
            acknowledge_operation_status: Some(acknowledge),
            ..Call::default()
        };
        self.call(call, call::Type::AcknowledgeOperationStatus)
            .await?;
        Ok(true)
    }

    /// RECONCILE: asks for the latest state of `tasks` (explicit), or of every task the master
    /// knows for the framework when `tasks` is empty (implicit). Answers arrive as status
    /// updates without a `uuid`; unknown tasks come back TASK_LOST (TASK_UNKNOWN for
    /// PARTITION_AWARE frameworks).
    pub async fn reconcile_tasks(
        &self,
        tasks: Vec<call::reconcile::Task>,
    ) -> Result<(), DriverError> {
        let call = Call {
            reconcile: Some(call::Reconcile { tasks }),
            ..Call::default()
        };
        self.call(call, call::Type::Reconcile).await
    }

    /// RECONCILE_OPERATIONS: asks for the latest status of `operations` (all when empty).
    pub async fn reconcile_operations(
        &self,
        operations: Vec<call::reconcile_operations::Operation>,
    ) -> Result<(), DriverError> {
        let call = Call {
            reconcile_operations: Some(call::ReconcileOperations { operations }),
            ..Call::default()
        };
        self.call(call, call::Type::ReconcileOperations).await
    }

    /// MESSAGE: sends `data` to an executor (not reliable: Mesos may drop it).
    pub async fn send_framework_message(
        &self,
        executor_id: ExecutorId,
        agent_id: AgentId,
        data: Vec<u8>,
    ) -> Result<(), DriverError> {
        let message = call::Message {
            agent_id,
            executor_id,
            data,
        };
        let call = Call {
            message: Some(message),
            ..Call::default()
        };
        self.call(call, call::Type::Message).await
    }

    /// REQUEST: asks the allocator for resources (advisory; Mesos's allocator ignores it).
    pub async fn request_resources(&self, requests: Vec<Request>) -> Result<(), DriverError> {
        let call = Call {
            request: Some(call::Request { requests }),
            ..Call::default()
        };
        self.call(call, call::Type::Request).await
    }

    /// UPDATE_FRAMEWORK: replaces the framework's `FrameworkInfo` (its `id` is set by the
    /// driver) and its suppressed roles. Later resubscriptions use the new values.
    pub async fn update_framework(
        &self,
        mut framework: FrameworkInfo,
        suppressed_roles: Vec<String>,
    ) -> Result<(), DriverError> {
        framework.id = self.framework_id();
        let update = call::UpdateFramework {
            framework_info: framework.clone(),
            suppressed_roles: suppressed_roles.clone(),
            offer_constraints: None,
        };
        let call = Call {
            update_framework: Some(update),
            ..Call::default()
        };
        self.call(call, call::Type::UpdateFramework).await?;
        let mut session = self.inner.session();
        session.framework = framework;
        session.suppressed_roles = suppressed_roles.into_iter().collect();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use mesoblk_proto::mesos::v1::{OperationId, OperationState, TaskState, Uuid};

    use super::*;

    fn status(uuid: Option<Vec<u8>>, agent: Option<&str>) -> TaskStatus {
        TaskStatus {
            task_id: TaskId { value: "t".into() },
            state: TaskState::TaskRunning as i32,
            uuid,
            agent_id: agent.map(|a| AgentId { value: a.into() }),
            ..TaskStatus::default()
        }
    }

    #[test]
    fn only_updates_with_uuid_and_agent_are_acknowledged() {
        assert_eq!(acknowledgement(&status(None, Some("a"))), None);
        assert_eq!(acknowledgement(&status(Some(vec![]), Some("a"))), None);
        assert_eq!(acknowledgement(&status(Some(vec![1; 16]), None)), None);
        let ack = acknowledgement(&status(Some(vec![1; 16]), Some("a"))).expect("ack");
        assert_eq!(ack.agent_id.value, "a");
        assert_eq!(ack.task_id.value, "t");
        assert_eq!(ack.uuid, vec![1; 16]);
    }

    #[test]
    fn only_operation_statuses_with_uuid_and_id_are_acknowledged() {
        let mut status = OperationStatus {
            state: OperationState::OperationFinished as i32,
            agent_id: Some(AgentId { value: "a".into() }),
            ..OperationStatus::default()
        };
        assert_eq!(operation_acknowledgement(&status), None);
        status.uuid = Some(Uuid { value: vec![2; 16] });
        assert_eq!(operation_acknowledgement(&status), None);
        status.operation_id = Some(OperationId { value: "op".into() });
        let ack = operation_acknowledgement(&status).expect("ack");
        assert_eq!(ack.operation_id.value, "op");
        assert_eq!(ack.uuid, vec![2; 16]);
    }

    #[test]
    fn roles_fall_back_to_the_legacy_role() {
        let info = FrameworkInfo {
            user: "u".into(),
            name: "n".into(),
            ..FrameworkInfo::default()
        };
        assert_eq!(framework_roles(&info), vec!["*".to_string()]);
        let info = FrameworkInfo {
            roles: vec!["a".into(), "b".into()],
            ..info
        };
        assert_eq!(
            framework_roles(&info),
            vec!["a".to_string(), "b".to_string()]
        );
    }
}
