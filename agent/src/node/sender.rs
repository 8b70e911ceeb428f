//! The sender loop: while the event stream is up, posts every due status update (with its
//! task's latest state) and every unacknowledged operation status to the master, then sleeps
//! until the store's next retry time or until woken by a new update. A 403 makes the master
//! link re-register.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mesoblk_proto::mesoblk::agent::v1 as agent;
use mesoblk_proto::mesos::v1::{AgentId, FrameworkId};

use super::link::{self, CallError};
use super::{lock, Node};
use crate::status::Wake;
use crate::PROVISIONING;

/// Wait between sends of an unacknowledged operation status.
const OPERATION_RETRY: Duration = Duration::from_secs(10);
/// Longest sleep when nothing is due (a safety net; wake-ups normally come first).
const IDLE_CHECK: Duration = Duration::from_secs(30);

/// Runs until the process ends.
pub(super) async fn run(node: Arc<Node>, client: reqwest::Client) {
    loop {
        let sleep = if node.link_status().connected {
            send_due(&node, &client).await
        } else {
            IDLE_CHECK
        };
        let _ = tokio::time::timeout(sleep, node.wake_sender.notified()).await;
    }
}

/// Sends what is due; how long until something is due again.
async fn send_due(node: &Arc<Node>, client: &reqwest::Client) -> Duration {
    let Some(rt) = node.runtime() else {
        return IDLE_CHECK;
    };
    let agent_id = AgentId {
        value: rt.agent_id.clone(),
    };
    let due = lock(&rt.store).due(Instant::now());
    for outgoing in due {
        let task_id = outgoing.key.task_id.clone();
        let state = outgoing.status.state().as_str_name();
        let posted = Instant::now();
        let update = agent::StatusUpdate {
            framework_id: FrameworkId {
                value: outgoing.key.framework_id.clone(),
            },
            agent_id: agent_id.clone(),
            status: outgoing.status,
            latest_state: Some(outgoing.latest_state as i32),
        };
        match link::send(node, client, "/agent/v1/status_update", &update).await {
            Ok(()) => {
                tracing::debug!(target: PROVISIONING, task = %task_id, state, ms = posted.elapsed().as_millis(), "status update posted");
                node.counters
                    .status_updates_sent
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => failed(node, &e, "status update"),
        }
    }
    send_operations(node, client).await;
    let next_operation = lock(&node.operations).values().map(|p| p.next_send).min();
    let next_update = match lock(&rt.store).wake() {
        Wake::Now => Some(Instant::now()),
        Wake::At(at) => Some(at),
        Wake::Idle => None,
    };
    [next_operation, next_update]
        .into_iter()
        .flatten()
        .min()
        .map_or(IDLE_CHECK, |at| {
            at.saturating_duration_since(Instant::now())
        })
}

async fn send_operations(node: &Arc<Node>, client: &reqwest::Client) {
    let now = Instant::now();
    let due: Vec<agent::OperationStatusUpdate> = {
        let mut pending = lock(&node.operations);
        pending
            .values_mut()
            .filter(|p| p.next_send <= now)
            .map(|p| {
                p.next_send = now + OPERATION_RETRY;
                p.update.clone()
            })
            .collect()
    };
    for update in due {
        if let Err(e) = link::send(node, client, "/agent/v1/operation_status", &update).await {
            failed(node, &e, "operation status");
        }
    }
}

fn failed(node: &Node, error: &CallError, what: &str) {
    tracing::warn!(error = %error, "{what} not delivered; will retry");
    if matches!(error, CallError::Forbidden) {
        node.relink.notify_one();
    }
}
