//! The master's settings, and stout's duration syntax (`1secs`, `500ms`, `2mins`) that Mesos
//! flags use.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::AuthConfig;
use crate::registry::{InMemoryRegistry, Registry};

/// The Mesos version the master speaks, reported by `/version`, GET_VERSION and
/// `MasterInfo.version`. Clients parse it as dotted integers (pymesos crashes on anything else).
pub const MESOS_VERSION: &str = "1.11.0";

/// How often a subscribed framework gets HEARTBEAT, as Mesos's `DEFAULT_HEARTBEAT_INTERVAL`.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(15);

/// How many removed frameworks the master remembers (`--max_completed_frameworks`).
pub const DEFAULT_MAX_COMPLETED_FRAMEWORKS: usize = 50;

/// Events buffered for one subscriber before it counts as too slow and is disconnected.
pub const DEFAULT_EVENT_QUEUE_MAX: usize = 4096;

/// Mesos's `--agent_ping_timeout` default: how often the master pings an agent.
pub const DEFAULT_AGENT_PING_TIMEOUT: Duration = Duration::from_secs(15);

/// Mesos's `--max_agent_ping_timeouts` default: missed pings before an agent is unreachable.
pub const DEFAULT_MAX_AGENT_PING_TIMEOUTS: u32 = 5;

/// First retry of an unacknowledged status update to its scheduler (Mesos's agent uses 10 s,
/// doubling up to 10 minutes).
pub const DEFAULT_STATUS_UPDATE_RETRY_INTERVAL: Duration = Duration::from_secs(10);

/// Longest interval between retries of one status update.
pub const STATUS_UPDATE_RETRY_INTERVAL_MAX: Duration = Duration::from_secs(600);

/// Mesos's `--agent_reregister_timeout` default: how long agents recovered from the registry
/// have to re-register after a master restart before they are marked unreachable.
pub const DEFAULT_AGENT_REREGISTER_TIMEOUT: Duration = Duration::from_secs(600);

/// Mesos's `--registry_max_agent_age` default: unreachable and gone agents older than this are
/// forgotten by the registry.
pub const DEFAULT_REGISTRY_MAX_AGENT_AGE: Duration = Duration::from_secs(14 * 24 * 3600);

/// Terminal tasks remembered per framework (`--max_completed_tasks_per_framework`).
pub const DEFAULT_MAX_COMPLETED_TASKS_PER_FRAMEWORK: usize = 1000;

// A heartbeat interval of zero would spin; the flag parser and `Config::validate` refuse it.
const _: () = assert!(DEFAULT_HEARTBEAT_INTERVAL.as_millis() > 0);
const _: () = assert!(DEFAULT_EVENT_QUEUE_MAX > 0);

/// Everything the master needs to know at start.
#[derive(Debug, Clone)]
pub struct Config {
    /// Hostname advertised in `MasterInfo` and used by `/master/redirect`.
    pub hostname: String,
    /// IPv4 address advertised in `MasterInfo`.
    pub advertise_ip: Ipv4Addr,
    /// Port advertised in `MasterInfo`.
    pub advertise_port: u16,
    /// Interval between HEARTBEAT events on framework streams.
    pub heartbeat_interval: Duration,
    /// Removed frameworks remembered (their ids get "Framework has been removed").
    pub max_completed_frameworks: usize,
    /// Events buffered per subscriber.
    pub event_queue_max: usize,
    /// Whether frameworks may run as `root` (Mesos's `--root_submissions`).
    pub root_submissions: bool,
    /// Batch allocation interval.
    pub allocation_interval: Duration,
    /// The master's work directory (`--work_dir`); the embedded registry lives in its
    /// `registry/` subdirectory.
    pub work_dir: Option<PathBuf>,
    /// The flags as given, reported by GET_FLAGS.
    pub flags: Vec<(String, String)>,
    /// How often agents are pinged (`--agent_ping_timeout`).
    pub agent_ping_timeout: Duration,
    /// Missed pings (or that many ping intervals without a stream) before an agent is removed
    /// as unreachable (`--max_agent_ping_timeouts`).
    pub max_agent_ping_timeouts: u32,
    /// Offers older than this are rescinded (`--offer_timeout`; off by default).
    pub offer_timeout: Option<Duration>,
    /// First retry of an unacknowledged status update; doubles up to
    /// [`STATUS_UPDATE_RETRY_INTERVAL_MAX`].
    pub status_update_retry_interval: Duration,
    /// Terminal tasks remembered per framework.
    pub max_completed_tasks_per_framework: usize,
    /// How long agents recovered from the registry have to re-register after a restart
    /// (`--agent_reregister_timeout`).
    pub agent_reregister_timeout: Duration,
    /// The largest fraction (0 to 1) of recovered agents that may fail to re-register in time;
    /// beyond it the master exits instead of marking them unreachable
    /// (`--recovery_agent_removal_limit`, given in percent).
    pub recovery_agent_removal_limit: f64,
    /// Unreachable and gone agents older than this are forgotten by the registry at start
    /// (`--registry_max_agent_age`).
    pub registry_max_agent_age: Duration,
    /// Where the master's persistent state goes (`--registry`, `--work_dir`); in memory unless
    /// the binary opens an embedded registry.
    pub registry: Arc<dyn Registry>,
    /// What requests must authenticate (`--credentials`, `--authenticate_*`).
    pub auth: AuthConfig,
}

impl Config {
    /// Settings for a master advertising `hostname`, `ip`:`port`, everything else at Mesos's
    /// defaults.
    pub fn new(hostname: impl Into<String>, ip: Ipv4Addr, port: u16) -> Self {
        Config {
            hostname: hostname.into(),
            advertise_ip: ip,
            advertise_port: port,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            max_completed_frameworks: DEFAULT_MAX_COMPLETED_FRAMEWORKS,
            event_queue_max: DEFAULT_EVENT_QUEUE_MAX,
            root_submissions: true,
            allocation_interval: Duration::from_secs(1),
            work_dir: None,
            flags: Vec::new(),
            agent_ping_timeout: DEFAULT_AGENT_PING_TIMEOUT,
            max_agent_ping_timeouts: DEFAULT_MAX_AGENT_PING_TIMEOUTS,
            offer_timeout: None,
            status_update_retry_interval: DEFAULT_STATUS_UPDATE_RETRY_INTERVAL,
            max_completed_tasks_per_framework: DEFAULT_MAX_COMPLETED_TASKS_PER_FRAMEWORK,
            agent_reregister_timeout: DEFAULT_AGENT_REREGISTER_TIMEOUT,
            recovery_agent_removal_limit: 1.0,
            registry_max_agent_age: DEFAULT_REGISTRY_MAX_AGENT_AGE,
            registry: Arc::new(InMemoryRegistry::new()),
            auth: AuthConfig::default(),
        }
    }

    /// How long an agent may go without answering a ping (or without a stream) before it is
    /// removed: `agent_ping_timeout × max_agent_ping_timeouts`.
    pub fn agent_removal_timeout(&self) -> Duration {
        self.agent_ping_timeout
            .saturating_mul(self.max_agent_ping_timeouts.max(1))
    }

    /// Checks the settings that would make the master misbehave.
    pub fn validate(&self) -> Result<(), String> {
        if self.heartbeat_interval.is_zero() {
            return Err("the heartbeat interval must be positive".into());
        }
        if self.event_queue_max == 0 {
            return Err("the event queue bound must be positive".into());
        }
        if self.allocation_interval.is_zero() {
            return Err("--allocation_interval must be positive".into());
        }
        if !(0.0..=1.0).contains(&self.recovery_agent_removal_limit) {
            return Err("--recovery_agent_removal_limit must be within [0%-100%]".into());
        }
        if self.agent_ping_timeout.is_zero() {
            return Err("--agent_ping_timeout must be positive".into());
        }
        if self.max_agent_ping_timeouts == 0 {
            return Err("--max_agent_ping_timeouts must be positive".into());
        }
        if self.offer_timeout.is_some_and(|t| t.is_zero()) {
            return Err("--offer_timeout must be positive".into());
        }
        if self.status_update_retry_interval.is_zero() {
            return Err("--status_update_retry_interval must be positive".into());
        }
        self.auth.validate()?;
        Ok(())
    }
}

/// Parses a Mesos (stout) duration flag such as `1secs`, `500ms` or `2mins`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    mesoblk_proto::stout::parse_duration(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stout_durations_parse() {
        assert_eq!(parse_duration("1secs"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("0.5secs"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2mins"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1weeks"), Ok(Duration::from_secs(604_800)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5s").is_err());
        assert!(parse_duration("secs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn zero_intervals_are_refused() {
        let mut config = Config::new("h", Ipv4Addr::LOCALHOST, 5050);
        assert!(config.validate().is_ok());
        config.heartbeat_interval = Duration::ZERO;
        assert!(config.validate().is_err());
    }
}
