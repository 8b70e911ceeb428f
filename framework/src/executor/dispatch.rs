//! The executor's callbacks' task: calls the [`Executor`] for each queued item, one at a time,
//! and carries out a shutdown (callback within the grace period, pending updates flushed
//! within what is left of it, then the driver stops).

use mesoblk_proto::mesos::v1::executor::{event, Event};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Executor, ExecutorDriver};

/// What the subscription loop hands to the callbacks.
#[derive(Debug)]
pub(super) enum Dispatch {
    /// SUBSCRIBED arrived.
    Subscribed {
        subscribed: Box<event::Subscribed>,
        reregistered: bool,
    },
    /// The live subscription broke.
    Disconnected,
    /// LAUNCH, LAUNCH_GROUP, KILL, MESSAGE or ERROR.
    Event(Box<Event>),
    /// Shut down, for this reason.
    Shutdown(String),
}

/// The task's body; returns when the queue closes or after a shutdown.
pub(super) async fn run<E: Executor>(
    driver: ExecutorDriver,
    mut executor: E,
    mut rx: mpsc::Receiver<Dispatch>,
) {
    while let Some(item) = rx.recv().await {
        if !driver.inner.life.is_running() {
            continue;
        }
        match item {
            Dispatch::Subscribed {
                subscribed,
                reregistered,
            } => {
                if reregistered {
                    executor.reregistered(&driver, &subscribed.agent_info).await;
                } else {
                    executor
                        .registered(
                            &driver,
                            &subscribed.executor_info,
                            &subscribed.framework_info,
                            &subscribed.agent_info,
                        )
                        .await;
                }
            }
            Dispatch::Disconnected => executor.disconnected(&driver).await,
            Dispatch::Event(event) => deliver(&driver, &mut executor, *event).await,
            Dispatch::Shutdown(reason) => {
                shut_down(&driver, &mut executor, &reason).await;
                break;
            }
        }
    }
}

async fn deliver<E: Executor>(driver: &ExecutorDriver, executor: &mut E, event: Event) {
    use event::Type as T;
    match (event.r#type(), event) {
        (
            T::Launch,
            Event {
                launch: Some(launch),
                ..
            },
        ) => {
            executor.launch_task(driver, launch.task).await;
        }
        (
            T::LaunchGroup,
            Event {
                launch_group: Some(group),
                ..
            },
        ) => {
            executor.launch_group(driver, group.task_group).await;
        }
        (
            T::Kill,
            Event {
                kill: Some(kill), ..
            },
        ) => {
            executor
                .kill_task(driver, &kill.task_id, kill.kill_policy.as_ref())
                .await;
        }
        (
            T::Message,
            Event {
                message: Some(message),
                ..
            },
        ) => {
            executor.framework_message(driver, &message.data).await;
        }
        (
            T::Error,
            Event {
                error: Some(error), ..
            },
        ) => {
            executor.error(driver, &error.message).await;
        }
        (kind, _) => {
            tracing::warn!(
                event = kind.as_str_name(),
                "dropping an event without its body"
            );
        }
    }
}

async fn shut_down<E: Executor>(driver: &ExecutorDriver, executor: &mut E, reason: &str) {
    let inner = &driver.inner;
    let grace = inner.env.shutdown_grace_period;
    let deadline = Instant::now() + grace;
    tracing::info!(reason, ?grace, "shutting down");
    if tokio::time::timeout_at(deadline, executor.shutdown(driver))
        .await
        .is_err()
    {
        tracing::warn!("the shutdown callback overran the grace period");
    }
    let left = deadline.saturating_duration_since(Instant::now());
    if !inner.flush(left).await {
        tracing::warn!("status updates still pending at the end of the grace period");
    }
    inner.life.begin_stop();
    inner.life.finish_stop();
}
