//! The master flags of agents, offers and tasks (Mesos's names), as a `clap` group the binary
//! flattens into its command line: `--agent_ping_timeout`, `--max_agent_ping_timeouts`,
//! `--offer_timeout`, `--max_completed_tasks_per_framework`, the recovery flags
//! `--agent_reregister_timeout`, `--recovery_agent_removal_limit` and `--registry_max_agent_age`,
//! and mesoblk's `--status_update_retry_interval`.

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
    /// After a restart, how long agents recovered from the registry have to re-register
    /// before they are marked unreachable. (Mesos refuses less than 10mins; mesoblk takes any
    /// positive value, for tests.)
    #[arg(long, default_value = "10mins", value_parser = parse_reregister_timeout)]
    pub agent_reregister_timeout: Duration,
    /// The largest share of recovered agents that may fail to re-register in time (e.g.
    /// `100%`); if more fail, the master exits instead of marking them unreachable.
    #[arg(long, default_value = "100%", value_parser = parse_percentage)]
    pub recovery_agent_removal_limit: f64,
    /// Unreachable and gone agents older than this are forgotten by the registry at start.
    #[arg(long, default_value = "2weeks", value_parser = parse_duration)]
    pub registry_max_agent_age: Duration,
}

fn parse_reregister_timeout(text: &str) -> Result<Duration, String> {
    let timeout = parse_duration(text)?;
    if timeout.is_zero() {
        return Err("must be positive".into());
    }
    Ok(timeout)
}

/// `NN%` with NN in [0, 100], as a fraction.
fn parse_percentage(text: &str) -> Result<f64, String> {
    let number = text
        .strip_suffix('%')
        .ok_or_else(|| format!("'{text}' is missing '%'"))?;
    let percent: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a percentage"))?;
    if !(0.0..=100.0).contains(&percent) {
        return Err(format!("'{text}' must be within [0%-100%]"));
    }
    Ok(percent / 100.0)
}

impl ClusterFlags {
    /// Puts the flags into `config` and its GET_FLAGS list.
    pub fn apply(&self, config: &mut Config) {
        config.agent_ping_timeout = self.agent_ping_timeout;
        config.max_agent_ping_timeouts = self.max_agent_ping_timeouts;
        config.offer_timeout = self.offer_timeout;
        config.status_update_retry_interval = self.status_update_retry_interval;
        config.max_completed_tasks_per_framework = self.max_completed_tasks_per_framework;
        config.agent_reregister_timeout = self.agent_reregister_timeout;
        config.recovery_agent_removal_limit = self.recovery_agent_removal_limit;
        config.registry_max_agent_age = self.registry_max_agent_age;
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
            (
                "agent_reregister_timeout".to_owned(),
                format!("{:?}", self.agent_reregister_timeout),
            ),
            (
                "recovery_agent_removal_limit".to_owned(),
                format!("{}%", self.recovery_agent_removal_limit * 100.0),
            ),
            (
                "registry_max_agent_age".to_owned(),
                format!("{:?}", self.registry_max_agent_age),
            ),
        ]);
        if let Some(timeout) = self.offer_timeout {
            config
                .flags
                .push(("offer_timeout".to_owned(), format!("{timeout:?}")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_percentage;

    #[test]
    fn percentages_parse_as_fractions() {
        assert_eq!(parse_percentage("100%"), Ok(1.0));
        assert_eq!(parse_percentage("12.5%"), Ok(0.125));
        for bad in ["50", "%", "-1%", "101%", "x%"] {
            assert!(parse_percentage(bad).is_err(), "{bad}");
        }
    }
}
