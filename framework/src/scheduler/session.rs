//! The subscription loop: SUBSCRIBE, read events until the stream breaks, resubscribe with the
//! framework id after a jittered backoff. Runs on its own task; hands everything the scheduler
//! must see to the dispatcher through a bounded queue.
//!
//! One pass ([`subscribe_and_read`]):
//! 1. POST SUBSCRIBE (with `framework_info.id` once known) to the leader, following 307s; a
//!    503, a network error or a timeout is a failed attempt, a 4xx a refusal;
//! 2. the answer must be 200 in the requested encoding with a `Mesos-Stream-Id`, and its first
//!    event SUBSCRIBED within `subscribe_timeout` (an ERROR instead is a refusal);
//! 3. then events are read until the stream ends, fails, or stays silent for
//!    `heartbeat_interval × heartbeat_misses_max` (HEARTBEATs count as activity); ERROR ends it
//!    as a refusal.
//!
//! Between passes: a broken live subscription is reported (`disconnected`) and the backoff
//! starts over; failed attempts consume the backoff, and exhausting it aborts the driver; a
//! refusal aborts at once. Stopping (TEARDOWN) ends the loop when the stream closes; stop with
//! failover and abort end it at once.

use std::sync::Arc;
use std::time::Duration;

use mesoblk_proto::mesos::v1::scheduler::{event, Event};
use tokio::sync::mpsc;

use super::config::DEFAULT_HEARTBEAT_INTERVAL;
use super::dispatch::Dispatch;
use super::driver::Inner;
use super::DriverError;
use crate::backoff::Backoff;
use crate::transport::{EventReader, TransportError, MESOS_STREAM_ID};

/// How one pass ended.
enum End {
    /// The attempt failed or the live stream broke; retry.
    Broken {
        subscribed: bool,
        error: TransportError,
    },
    /// The master refused the framework; abort.
    Refused(String),
    /// The dispatcher is gone; nothing left to do.
    Closed,
}

/// The loop; returns when the driver ends.
pub(super) async fn run(inner: Arc<Inner>, tx: mpsc::Sender<Dispatch>) {
    let mut backoff = Backoff::new(inner.config.reconnect);
    while inner.is_running() {
        let end = tokio::select! {
            end = subscribe_and_read(&inner, &tx, &mut backoff) => end,
            () = inner.life.ended() => break,
        };
        inner.on_disconnected();
        let (subscribed, error) = match end {
            End::Closed => break,
            End::Refused(message) => {
                let _ = tx.send(Dispatch::Fatal(message.clone())).await;
                inner.fail(DriverError::Refused(message));
                break;
            }
            End::Broken { subscribed, error } => (subscribed, error),
        };
        if !inner.is_running() {
            // Stopping: the master closed the stream after TEARDOWN.
            break;
        }
        if subscribed {
            tracing::warn!(%error, "disconnected from the master; resubscribing");
            if tx.send(Dispatch::Disconnected).await.is_err() {
                break;
            }
            backoff.reset();
        } else {
            tracing::info!(%error, "subscription attempt failed");
            inner.forget_leader();
        }
        let Some(delay) = backoff.next_delay() else {
            let attempts = backoff.attempts();
            let message = format!("gave up reconnecting after {attempts} attempts: {error}");
            let _ = tx.send(Dispatch::Fatal(message)).await;
            inner.fail(DriverError::ReconnectExhausted {
                attempts,
                last: error,
            });
            break;
        };
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
    backoff: &mut Backoff,
) -> End {
    let (url, body) = inner.subscribe_request();
    let timeout = inner.config.subscribe_timeout;
    let (url, response) = match inner.stream.post(&url, body, None, timeout, None).await {
        Ok(answer) => answer,
        Err(error) if error.is_retryable() => return broken(false, error),
        Err(error) => return End::Refused(format!("SUBSCRIBE failed: {error}")),
    };
    if let Err(error) = inner.stream.check_content_type(&url, &response) {
        return End::Refused(error.to_string());
    }
    let stream_id = response
        .headers()
        .get(MESOS_STREAM_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let Some(stream_id) = stream_id else {
        return End::Refused(
            TransportError::MissingStreamId {
                url: url.to_string(),
            }
            .to_string(),
        );
    };
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
    let subscribed = match (first.r#type(), first.subscribed, first.error) {
        (event::Type::Subscribed, Some(subscribed), _) => subscribed,
        (event::Type::Error, _, Some(error)) => return End::Refused(error.message),
        _ => return broken(false, protocol("the first event is not SUBSCRIBED")),
    };
    let interval = subscribed
        .heartbeat_interval_seconds
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_HEARTBEAT_INTERVAL);
    let idle = inner.config.idle_timeout(interval);
    let reregistered = inner.on_subscribed(&subscribed.framework_id, stream_id, url.clone());
    tracing::info!(framework = %subscribed.framework_id.value, master = %url, ?interval, "subscribed");
    backoff.reset();
    let dispatch = Dispatch::Subscribed {
        framework_id: subscribed.framework_id,
        master_info: subscribed.master_info.map(Box::new),
        reregistered,
    };
    if tx.send(dispatch).await.is_err() {
        return End::Closed;
    }
    read_events(inner, tx, &mut reader, idle, &url).await
}

/// Reads a live subscription's events until it ends.
async fn read_events(
    inner: &Inner,
    tx: &mpsc::Sender<Dispatch>,
    reader: &mut EventReader,
    idle: Duration,
    url: &reqwest::Url,
) -> End {
    loop {
        let event: Event = match reader.next(idle).await {
            Ok(Some(event)) => event,
            Ok(None) => {
                let error = TransportError::Protocol {
                    url: url.to_string(),
                    message: "the master closed the event stream".into(),
                };
                return broken(true, error);
            }
            Err(error) => return broken(true, error),
        };
        match event.r#type() {
            event::Type::Heartbeat => {
                tracing::trace!("heartbeat");
                continue;
            }
            event::Type::Error => {
                let message = event.error.map(|e| e.message).unwrap_or_default();
                return End::Refused(message);
            }
            event::Type::Subscribed => {
                tracing::warn!("ignoring a second SUBSCRIBED");
                continue;
            }
            _ => {}
        }
        // While stopping, events are no longer delivered.
        if inner.is_running() && tx.send(Dispatch::Event(Box::new(event))).await.is_err() {
            return End::Closed;
        }
    }
}
