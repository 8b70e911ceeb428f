//! The executor's two network tasks: the subscription loop (SUBSCRIBE, read events, recover a
//! lost agent) and the update sender (POST each pending UPDATE, retry, resend).
//!
//! Losing the agent (the stream ends, fails, or stays silent for `idle_timeout`): the driver
//! calls `disconnected`; then, if the framework checkpoints, it resubscribes after a random
//! wait in `[0, subscription_backoff_max]` (Mesos's executor library does the same) until
//! `recovery_timeout` after the first failure, carrying every unacknowledged task and update;
//! without checkpointing, or once the recovery timeout passed, it shuts down (`shutdown`, then
//! the driver stops). Mesos's rule that `MESOS_CHECKPOINT` must be exactly `1` applies.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mesoblk_proto::mesos::v1::executor::{event, Event};
use tokio::sync::mpsc;

use super::dispatch::Dispatch;
use super::driver::Inner;
use crate::backoff::Backoff;
use crate::transport::{EventReader, TransportError};

/// How one subscription ended.
enum End {
    /// The attempt failed or the stream broke.
    Broken {
        subscribed: bool,
        error: TransportError,
    },
    /// The dispatcher is gone.
    Closed,
}

/// The subscription loop; returns when the driver ends or gives up on the agent.
pub(super) async fn run(inner: Arc<Inner>, tx: mpsc::Sender<Dispatch>) {
    let mut recovery_deadline: Option<Instant> = None;
    while inner.life.is_running() {
        let end = tokio::select! {
            end = subscribe_and_read(&inner, &tx, &mut recovery_deadline) => end,
            () = inner.life.ended() => break,
        };
        inner.on_disconnected();
        let (subscribed, error) = match end {
            End::Closed => break,
            End::Broken { subscribed, error } => (subscribed, error),
        };
        if !inner.life.is_running() {
            break;
        }
        if subscribed {
            tracing::warn!(%error, "disconnected from the agent");
            if tx.send(Dispatch::Disconnected).await.is_err() {
                break;
            }
        } else {
            tracing::info!(%error, "subscription to the agent failed");
        }
        if !inner.env.checkpoint {
            let reason = format!("lost the agent and the framework does not checkpoint: {error}");
            let _ = tx.send(Dispatch::Shutdown(reason)).await;
            break;
        }
        let now = Instant::now();
        let deadline = *recovery_deadline.get_or_insert(now + inner.env.recovery_timeout);
        if now >= deadline {
            let timeout = inner.env.recovery_timeout;
            let reason = format!("the agent did not come back within {timeout:?}: {error}");
            let _ = tx.send(Dispatch::Shutdown(reason)).await;
            break;
        }
        let delay = inner
            .env
            .subscription_backoff_max
            .mul_f64(fastrand::f64())
            .min(deadline - now);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = inner.life.ended() => break,
        }
    }
    inner.on_disconnected();
}

fn broken(subscribed: bool, error: TransportError) -> End {
    End::Broken { subscribed, error }
}

/// One subscription, from SUBSCRIBE to the end of its stream.
async fn subscribe_and_read(
    inner: &Inner,
    tx: &mpsc::Sender<Dispatch>,
    recovery_deadline: &mut Option<Instant>,
) -> End {
    let (body, uuids) = inner.subscribe_request();
    let timeout = inner.config.subscribe_timeout;
    let (url, response) = match inner
        .stream
        .post(&inner.url, body, None, timeout, None)
        .await
    {
        Ok(answer) => answer,
        Err(error) => return broken(false, error),
    };
    if let Err(error) = inner.stream.check_content_type(&url, &response) {
        return broken(false, error);
    }
    let mut reader = EventReader::new(&url, response, inner.stream.content_type());
    let protocol = |message: &str| TransportError::Protocol {
        url: url.to_string(),
        message: message.to_owned(),
    };
    let first: Event = match reader.next(timeout).await {
        Ok(Some(event)) => event,
        Ok(None) => return broken(false, protocol("the stream ended before SUBSCRIBED")),
        Err(error) => return broken(false, error),
    };
    let Some(subscribed) = first
        .subscribed
        .filter(|_| first.r#type == Some(event::Type::Subscribed as i32))
    else {
        return broken(false, protocol("the first event is not SUBSCRIBED"));
    };
    let (_, reregistered) = inner.on_subscribed(&uuids);
    *recovery_deadline = None;
    tracing::info!(agent = %subscribed.agent_info.hostname, reregistered, "subscribed to the agent");
    if tx
        .send(Dispatch::Subscribed {
            subscribed: Box::new(subscribed),
            reregistered,
        })
        .await
        .is_err()
    {
        return End::Closed;
    }
    loop {
        let event: Event = match reader.next(inner.config.idle_timeout).await {
            Ok(Some(event)) => event,
            Ok(None) => return broken(true, protocol("the agent closed the event stream")),
            Err(error) => return broken(true, error),
        };
        if let Some(dispatch) = handle(inner, event) {
            if tx.send(dispatch).await.is_err() {
                return End::Closed;
            }
        }
    }
}

/// Applies what the driver handles itself (acknowledgements, launched tasks) and returns what
/// the callbacks must see.
fn handle(inner: &Inner, event: Event) -> Option<Dispatch> {
    use event::Type as T;
    match event.r#type() {
        T::Heartbeat => None,
        T::Acknowledged => {
            if let Some(ack) = &event.acknowledged {
                inner.acknowledged(&ack.task_id.value, &ack.uuid);
            }
            None
        }
        T::Launch => {
            if let Some(launch) = &event.launch {
                inner.launched(&launch.task);
            }
            Some(Dispatch::Event(Box::new(event)))
        }
        T::LaunchGroup => {
            if let Some(group) = &event.launch_group {
                for task in &group.task_group.tasks {
                    inner.launched(task);
                }
            }
            Some(Dispatch::Event(Box::new(event)))
        }
        T::Shutdown => Some(Dispatch::Shutdown(
            "the agent asked the executor to shut down".into(),
        )),
        T::Kill | T::Message | T::Error => Some(Dispatch::Event(Box::new(event))),
        T::Subscribed => {
            tracing::warn!("ignoring a second SUBSCRIBED");
            None
        }
        T::Unknown => {
            tracing::debug!("ignoring an event of unknown type");
            None
        }
    }
}

/// The update sender: POSTs each update due on the live connection, oldest first; a failed
/// POST is retried with backoff, and after the retries (or a refusal) the update waits for the
/// next subscription. Ends when the driver ends.
pub(super) async fn send_updates(inner: Arc<Inner>) {
    let mut failures = Backoff::new(inner.config.update_retry);
    loop {
        let (connection, due, resend_at) = {
            let state = inner.state();
            match state.connection {
                Some(connection) => (
                    Some(connection),
                    state.book.next_due(connection, Instant::now()),
                    state.book.next_resend_at(connection),
                ),
                None => (None, None, None),
            }
        };
        let (Some(connection), Some(status)) = (connection, due) else {
            let wait = resend_at
                .map(|at| at.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_secs(3_600));
            tokio::select! {
                () = inner.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
                () = inner.life.ended() => return,
            }
            continue;
        };
        let uuid = status.uuid.clone().unwrap_or_default();
        let call = inner.update_call(status);
        match inner.post(&call, "UPDATE").await {
            Ok(()) => {
                failures.reset();
                inner.state().book.sent(&uuid, connection, Instant::now());
            }
            Err(error) => {
                let retryable = matches!(
                    &error,
                    super::ExecutorError::Call { source, .. } if source.is_retryable()
                );
                let delay = if retryable {
                    failures.next_delay()
                } else {
                    None
                };
                tracing::warn!(%error, ?delay, "status update not delivered");
                let Some(delay) = delay else {
                    // Refused, or retried enough: the next SUBSCRIBE (or resend) carries it.
                    failures.reset();
                    inner.state().book.sent(&uuid, connection, Instant::now());
                    continue;
                };
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = inner.life.ended() => return,
                }
            }
        }
    }
}
