//! The response body of a subscription: events from the master, framed as RecordIO in the
//! subscriber's content type, with a heartbeat event interleaved at a fixed interval.
//!
//! Contract:
//! - events are written in the order they were queued; the stream ends (and the chunked response
//!   with it) once the master drops the queue's sender and the queued events are written;
//! - when heartbeats are on, the first one follows the first event immediately (Mesos's
//!   scheduler heartbeater starts right after SUBSCRIBED; [`EventStream::delay_first_heartbeat`]
//!   waits one interval instead, as the operator API's does), then one every interval while the
//!   queue is idle;
//! - dropping the stream, which hyper does when the client goes away, runs the `on_close` hook
//!   once, so the master can mark the subscriber disconnected.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use mesoblk_proto::codec::ContentType;
use mesoblk_proto::recordio;
use prost_reflect::ReflectMessage;
use tokio::sync::mpsc;
use tokio::time::{Interval, MissedTickBehavior};

/// What runs when a stream is dropped.
pub type CloseHook = Box<dyn FnOnce() + Send + Sync>;

/// A subscriber's event stream, usable as an axum response body.
pub struct EventStream<E> {
    events: mpsc::Receiver<E>,
    content_type: ContentType,
    heartbeat: Option<(Interval, E)>,
    on_close: Option<CloseHook>,
    ended: bool,
}

impl<E: ReflectMessage + Clone + Unpin> EventStream<E> {
    /// A stream of the events queued on `events`, encoded as `content_type`. With `heartbeat`,
    /// the event is sent every interval (first right away); must be called within a tokio
    /// runtime in that case.
    pub fn new(
        events: mpsc::Receiver<E>,
        content_type: ContentType,
        heartbeat: Option<(Duration, E)>,
        on_close: Option<CloseHook>,
    ) -> Self {
        let heartbeat = heartbeat.map(|(period, event)| {
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
            (interval, event)
        });
        EventStream {
            events,
            content_type,
            heartbeat,
            on_close,
            ended: false,
        }
    }

    /// The first heartbeat after one interval instead of right away (Mesos's operator API
    /// heartbeater waits; a framework's does not).
    #[must_use]
    pub fn delay_first_heartbeat(mut self) -> Self {
        if let Some((interval, _)) = &mut self.heartbeat {
            interval.reset();
        }
        self
    }

    fn frame(&self, event: &E) -> Bytes {
        Bytes::from(recordio::encode(&self.content_type.encode(event)))
    }
}

impl<E: ReflectMessage + Clone + Unpin> Stream for EventStream<E> {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        match this.events.poll_recv(cx) {
            Poll::Ready(Some(event)) => return Poll::Ready(Some(Ok(this.frame(&event)))),
            Poll::Ready(None) => {
                this.ended = true;
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        if let Some((interval, event)) = &mut this.heartbeat {
            if interval.poll_tick(cx).is_ready() {
                let event = event.clone();
                return Poll::Ready(Some(Ok(this.frame(&event))));
            }
        }
        Poll::Pending
    }
}

impl<E> Drop for EventStream<E> {
    fn drop(&mut self) {
        if let Some(hook) = self.on_close.take() {
            hook();
        }
    }
}
