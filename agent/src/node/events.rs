//! What each event from the master does. Handling never blocks the stream: anything slow
//! (launching, attaching disks, storage operations, posting) runs in its own task.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use mesoblk_proto::mesoblk::agent::v1 as agent;
use mesoblk_proto::mesos::v1::AgentId;

use super::{link, Node};
use crate::status::TaskKey;

/// Handles one event; `true` when the master told the agent to shut down.
pub(super) fn handle(node: &Arc<Node>, client: &reqwest::Client, event: agent::Event) -> bool {
    use agent::event::Type;
    node.counters.events.fetch_add(1, Ordering::Relaxed);
    let kind = event.r#type();
    if kind != Type::Ping {
        tracing::debug!(event = kind.as_str_name(), "event from the master");
    }
    match kind {
        Type::Ping => pong(node, client, event.ping.and_then(|p| p.sequence)),
        Type::RunTask => {
            if let Some(run) = event.run_task {
                node.run_task(run.framework, run.task);
            }
        }
        Type::RunTaskGroup => {
            if let Some(run) = event.run_task_group {
                let work = crate::executor_api::Work::Group(run.task_group);
                node.launch_on_custom_executor(run.framework, run.executor, work);
            }
        }
        Type::KillTask => {
            if let Some(kill) = event.kill_task {
                let key = TaskKey::new(kill.framework_id.value, kill.task_id.value);
                let grace = kill
                    .kill_policy
                    .and_then(|p| p.grace_period)
                    .map(|d| crate::executor::command::duration(&d));
                node.kill_task(&key, grace);
            }
        }
        Type::ShutdownFramework => {
            if let Some(shutdown) = event.shutdown_framework {
                node.shutdown_framework(&shutdown.framework_id.value);
            }
        }
        Type::ShutdownExecutor => {
            if let Some(shutdown) = event.shutdown_executor {
                node.shutdown_executor(&shutdown.framework_id.value, &shutdown.executor_id.value);
            }
        }
        Type::Acknowledge => {
            if let Some(ack) = event.acknowledge {
                let key = TaskKey::new(ack.framework_id.value, ack.task_id.value);
                node.acknowledge(&key, &ack.uuid);
            }
        }
        Type::ApplyOperation => {
            if let Some(apply) = event.apply_operation {
                node.apply_operation(apply);
            }
        }
        Type::AcknowledgeOperationStatus => {
            if let Some(ack) = event.acknowledge_operation_status {
                node.acknowledge_operation(&ack.status_uuid.value);
            }
        }
        Type::FrameworkMessage => {
            if let Some(message) = event.framework_message {
                node.framework_message(message);
            }
        }
        Type::Shutdown => {
            let message = event.shutdown.and_then(|s| s.message).unwrap_or_default();
            tracing::warn!(%message, "the master shut this agent down");
            node.shutdown_by_master();
            return true;
        }
        Type::Unknown => tracing::warn!("event of unknown type ignored"),
    }
    false
}

fn pong(node: &Arc<Node>, client: &reqwest::Client, sequence: Option<u64>) {
    let Some(agent_id) = node.agent_id().map(str::to_owned) else {
        return;
    };
    let node = Arc::clone(node);
    let client = client.clone();
    tokio::spawn(async move {
        let pong = agent::Pong {
            agent_id: AgentId { value: agent_id },
            sequence,
        };
        if let Err(e) = link::send(&node, &client, "/agent/v1/pong", &pong).await {
            tracing::warn!(error = %e, "PONG refused");
            if matches!(e, link::CallError::Forbidden) {
                node.relink.notify_one();
            }
        }
    });
}
