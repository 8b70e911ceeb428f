//! The master flags of agents, offers and tasks (Mesos's names), as a `clap` group the binary
//! flattens into its command line: `--agent_ping_timeout`, `--max_agent_ping_timeouts`,
//! `--offer_timeout`, `--max_completed_tasks_per_framework`, and mesoblk's
//! `--status_update_retry_interval`.

use std::time::Duration;

use crate::config::{
    parse_duration, Config, DEFAULT_MAX_AGENT_PING_TIMEOUTS,
    DEFAULT_MAX_COMPLETED_TASKS_PER_FRAMEWORK,
};

/// Agent health, offer and task flags.
#[derive(Debug, Clone, clap::Args)]
#[command(rename_all = "snake_case")]
pub struct ClusterFlags {
    /// How often agents are pinged; an agent is removed after `--max_agent_ping_timeouts`
    /// unanswered pings, or that long without its stream.
    #[arg(long, default_value = "15secs", value_parser = parse_duration)]
    pub agent_ping_timeout: Duration,
    /// Unanswered pings before an agent is removed as unreachable.
    #[arg(long, default_value_t = DEFAULT_MAX_AGENT_PING_TIMEOUTS)]
    pub max_agent_ping_timeouts: u32,
    /// Offers older than this are rescinded (default: never).
    #[arg(long, value_parser = parse_duration)]
    pub offer_timeout: Option<Duration>,
    /// First retry of a status update the scheduler has not acknowledged (doubles up to 10
    /// minutes; mesoblk-specific).
    #[arg(long, default_value = "10secs", value_parser = parse_duration)]
    pub status_update_retry_interval: Duration,
    /// Terminal tasks remembered per framework.
    #[arg(long, default_value_t = DEFAULT_MAX_COMPLETED_TASKS_PER_FRAMEWORK)]
    pub max_completed_tasks_per_framework: usize,
}

impl ClusterFlags {
    /// Puts the flags into `config` and its GET_FLAGS list.
    pub fn apply(&self, config: &mut Config) {
        config.agent_ping_timeout = self.agent_ping_timeout;
        config.max_agent_ping_timeouts = self.max_agent_ping_timeouts;
        config.offer_timeout = self.offer_timeout;
        config.status_update_retry_interval = self.status_update_retry_interval;
        config.max_completed_tasks_per_framework = self.max_completed_tasks_per_framework;
        config.flags.extend([
            (
                "agent_ping_timeout".to_owned(),
                format!("{:?}", self.agent_ping_timeout),
            ),
            (
                "max_agent_ping_timeouts".to_owned(),
                self.max_agent_ping_timeouts.to_string(),
            ),
            (
                "status_update_retry_interval".to_owned(),
                format!("{:?}", self.status_update_retry_interval),
            ),
            (
                "max_completed_tasks_per_framework".to_owned(),
                self.max_completed_tasks_per_framework.to_string(),
            ),
        ]);
        if let Some(timeout) = self.offer_timeout {
            config
                .flags
                .push(("offer_timeout".to_owned(), format!("{timeout:?}")));
        }
    }
}
