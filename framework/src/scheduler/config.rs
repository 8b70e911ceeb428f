//! How a [`SchedulerDriver`](super::SchedulerDriver) talks to the master: where, in which
//! encoding, how it acknowledges, and every timeout and retry bound; and the helpers that make
//! a framework's credentials and its [`FrameworkInfo`].

use std::time::Duration;

use mesoblk_proto::codec::ContentType;
use mesoblk_proto::mesos::v1::FrameworkInfo;

use crate::backoff::BackoffPolicy;

/// Mesos's heartbeat interval, assumed when SUBSCRIBED does not carry one.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(15);

/// Settings of a scheduler driver. Start from [`SchedulerConfig::new`] and change fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SchedulerConfig {
    /// The master: `host:port`, or an `http(s)://` URL (with an optional path prefix). A 307
    /// from it names the leader, which the driver then uses.
    pub master: String,
    /// The encoding of calls and events: JSON (Mesos's default) or protobuf.
    pub content_type: ContentType,
    /// Acknowledge every status update (and operation status) that needs it once the callback
    /// returns (`true`, the default), or leave it to the scheduler
    /// ([`SchedulerDriver::acknowledge_status_update`](super::SchedulerDriver::acknowledge_status_update)).
    pub implicit_acknowledgements: bool,
    /// Waits between subscription attempts after a failure or a broken stream. Exhausting it
    /// aborts the driver.
    pub reconnect: BackoffPolicy,
    /// Heartbeat intervals without any event after which the connection counts as lost.
    pub heartbeat_misses_max: u32,
    /// Longest wait for the answer to SUBSCRIBE and for its SUBSCRIBED event.
    pub subscribe_timeout: Duration,
    /// Longest wait for the answer to any other call.
    pub call_timeout: Duration,
    /// Retries of a call the master answers 503 (no leader yet).
    pub call_retry: BackoffPolicy,
    /// Longest wait for a TCP connection.
    pub connect_timeout: Duration,
    /// Events buffered between the stream and the callbacks; when full, the driver stops
    /// reading the stream until a callback returns.
    pub event_queue_max: usize,
    /// An `Authorization` header value for every request (`Basic …` for a master with
    /// `--authenticate_frameworks`), see [`basic_authorization`].
    pub authorization: Option<String>,
}

impl SchedulerConfig {
    /// Defaults for `master`: JSON, implicit acknowledgements, reconnect from 0.5 s doubling to
    /// 30 s for at most 100 attempts, 3 missed heartbeats, 30 s to subscribe, 10 s per call
    /// (pymesos's limit), 3 retries of a 503, 5 s to connect, 1024 buffered events.
    pub fn new(master: impl Into<String>) -> Self {
        SchedulerConfig {
            master: master.into(),
            content_type: ContentType::Json,
            implicit_acknowledgements: true,
            reconnect: BackoffPolicy::new(Duration::from_millis(500), Duration::from_secs(30), 100),
            heartbeat_misses_max: 3,
            subscribe_timeout: Duration::from_secs(30),
            call_timeout: Duration::from_secs(10),
            call_retry: BackoffPolicy::new(Duration::from_millis(200), Duration::from_secs(2), 3),
            connect_timeout: Duration::from_secs(5),
            event_queue_max: 1024,
            authorization: None,
        }
    }

    /// How long the stream may stay silent, given the master's heartbeat interval: interval ×
    /// [`heartbeat_misses_max`](Self::heartbeat_misses_max) (at least one interval), clamped to
    /// 10 ms … 1 hour so a bogus interval can neither spin nor hang the driver.
    pub fn idle_timeout(&self, heartbeat_interval: Duration) -> Duration {
        heartbeat_interval
            .saturating_mul(self.heartbeat_misses_max.max(1))
            .clamp(Duration::from_millis(10), Duration::from_secs(3_600))
    }
}

/// The `Authorization` value of HTTP Basic authentication (`Basic base64(principal:secret)`).
pub fn basic_authorization(principal: &str, secret: &str) -> String {
    use base64::Engine as _;
    let credential =
        base64::engine::general_purpose::STANDARD.encode(format!("{principal}:{secret}"));
    format!("Basic {credential}")
}

/// A [`FrameworkInfo`] named `name` whose tasks run as `user`, else as the user running this
/// process (`$USER`), else as `root`: what a command-line framework with a `--user` option
/// registers with. Every other field is Mesos's default.
pub fn framework_info(name: &str, user: Option<String>) -> FrameworkInfo {
    FrameworkInfo {
        user: user
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "root".into()),
        name: name.into(),
        ..FrameworkInfo::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framework_info_runs_tasks_as_the_given_user_else_this_one() {
        let given = framework_info("demo", Some("alice".into()));
        assert_eq!(
            (given.name.as_str(), given.user.as_str()),
            ("demo", "alice")
        );
        assert_eq!(given.id, None);
        let mine = std::env::var("USER").unwrap_or_else(|_| "root".into());
        assert_eq!(framework_info("demo", None).user, mine);
    }

    #[test]
    fn basic_authorization_is_rfc_7617() {
        assert_eq!(
            basic_authorization("Aladdin", "open sesame"),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
    }

    #[test]
    fn idle_timeout_is_interval_times_misses_clamped() {
        let mut config = SchedulerConfig::new("m:5050");
        assert_eq!(
            config.idle_timeout(Duration::from_secs(15)),
            Duration::from_secs(45)
        );
        config.heartbeat_misses_max = 0;
        assert_eq!(
            config.idle_timeout(Duration::from_secs(15)),
            Duration::from_secs(15)
        );
        assert_eq!(
            config.idle_timeout(Duration::ZERO),
            Duration::from_millis(10)
        );
        assert_eq!(
            config.idle_timeout(Duration::MAX),
            Duration::from_secs(3_600)
        );
    }
}
