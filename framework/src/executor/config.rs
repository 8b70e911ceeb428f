//! How an [`ExecutorDriver`](super::ExecutorDriver) talks to its agent. What the agent decides
//! (endpoint, checkpointing, recovery, grace period) comes from the environment
//! ([`ExecutorEnvironment`](super::ExecutorEnvironment)); this is the rest.

use std::time::Duration;

use mesoblk_proto::codec::ContentType;

use super::updates::ResendPolicy;
use crate::backoff::BackoffPolicy;

/// Settings of an executor driver. Start from [`ExecutorConfig::default`] and change fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ExecutorConfig {
    /// The encoding of calls and events.
    pub content_type: ContentType,
    /// Longest wait for a TCP connection.
    pub connect_timeout: Duration,
    /// Longest wait for the answer to SUBSCRIBE and its SUBSCRIBED event.
    pub subscribe_timeout: Duration,
    /// Longest wait for the answer to an UPDATE or MESSAGE.
    pub call_timeout: Duration,
    /// Silence on the event stream after which the agent counts as gone. Mesos agents send a
    /// HEARTBEAT every 30 minutes; the default allows three to be missed.
    pub idle_timeout: Duration,
    /// Retries of an UPDATE whose POST failed, before it waits for the next subscription.
    pub update_retry: BackoffPolicy,
    /// Resends of updates the agent accepted but that stay unacknowledged.
    pub resend: ResendPolicy,
    /// Unacknowledged updates kept at most; more are refused.
    pub updates_max: usize,
    /// Events buffered between the stream and the callbacks.
    pub event_queue_max: usize,
}

impl Default for ExecutorConfig {
    /// JSON; 5 s to connect, 30 s to subscribe, 10 s per call, 90 minutes of silence; failed
    /// UPDATE POSTs retried from 0.5 s doubling to 10 s, 10 times; accepted updates resent
    /// after 10 s doubling to 10 minutes (the agent's own schedule towards the master), 10
    /// times per connection; 10 000 unacknowledged updates; 1024 buffered events.
    fn default() -> Self {
        ExecutorConfig {
            content_type: ContentType::Json,
            connect_timeout: Duration::from_secs(5),
            subscribe_timeout: Duration::from_secs(30),
            call_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(90 * 60),
            update_retry: BackoffPolicy::new(
                Duration::from_millis(500),
                Duration::from_secs(10),
                10,
            ),
            resend: ResendPolicy {
                resend_initial: Duration::from_secs(10),
                resend_max: Duration::from_secs(600),
                resends_max: 10,
            },
            updates_max: 10_000,
            event_queue_max: 1024,
        }
    }
}
