//! What the agent tells an executor through its environment (Mesos's
//! `Slave::executorEnvironment`), parsed and checked.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `MESOS_AGENT_ENDPOINT` | the agent's `ip:port` (required) | |
//! | `MESOS_FRAMEWORK_ID` | the framework (required) | |
//! | `MESOS_EXECUTOR_ID` | this executor (required) | |
//! | `MESOS_CHECKPOINT` | `1` when the framework checkpoints (Mesos's test: exactly `"1"`) | off |
//! | `MESOS_RECOVERY_TIMEOUT` | how long to wait for a restarting agent (checkpointing only) | 15mins |
//! | `MESOS_SUBSCRIPTION_BACKOFF_MAX` | longest wait between resubscription attempts | 2secs |
//! | `MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD` | time allowed to shut down | 5secs |
//! | `MESOS_SANDBOX` / `MESOS_DIRECTORY` | the sandbox (inside / outside a container) | |
//! | `MESOS_SLAVE_ID` | the agent's id | |
//! | `MESOS_EXECUTOR_AUTHENTICATION_TOKEN` | a bearer token for the agent's API | |
//!
//! Durations are in stout's form ([`mesoblk_proto::stout`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use mesoblk_proto::mesos::v1::{AgentId, ExecutorId, FrameworkId};

use mesoblk_proto::stout::{parse_duration, DurationError};

/// The agent's endpoint.
pub const MESOS_AGENT_ENDPOINT: &str = "MESOS_AGENT_ENDPOINT";
/// The framework id.
pub const MESOS_FRAMEWORK_ID: &str = "MESOS_FRAMEWORK_ID";
/// The executor id.
pub const MESOS_EXECUTOR_ID: &str = "MESOS_EXECUTOR_ID";
/// Whether the framework checkpoints.
pub const MESOS_CHECKPOINT: &str = "MESOS_CHECKPOINT";
/// The agent's recovery timeout.
pub const MESOS_RECOVERY_TIMEOUT: &str = "MESOS_RECOVERY_TIMEOUT";
/// The longest backoff between resubscriptions.
pub const MESOS_SUBSCRIPTION_BACKOFF_MAX: &str = "MESOS_SUBSCRIPTION_BACKOFF_MAX";
/// The shutdown grace period.
pub const MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD: &str = "MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD";
/// The sandbox as the executor sees it.
pub const MESOS_SANDBOX: &str = "MESOS_SANDBOX";
/// The sandbox as the agent sees it.
pub const MESOS_DIRECTORY: &str = "MESOS_DIRECTORY";
/// The agent's id.
pub const MESOS_SLAVE_ID: &str = "MESOS_SLAVE_ID";
/// The bearer token for the agent's executor API.
pub const MESOS_EXECUTOR_AUTHENTICATION_TOKEN: &str = "MESOS_EXECUTOR_AUTHENTICATION_TOKEN";

/// Mesos's `RECOVERY_TIMEOUT`.
pub const DEFAULT_RECOVERY_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Mesos's default `--executor_reregistration_timeout`, given as the backoff maximum.
pub const DEFAULT_SUBSCRIPTION_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Mesos's `DEFAULT_EXECUTOR_SHUTDOWN_GRACE_PERIOD`.
pub const DEFAULT_SHUTDOWN_GRACE_PERIOD: Duration = Duration::from_secs(5);

/// Why the environment is not an executor's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvError {
    /// A required variable is missing or empty.
    #[error("{0} is not set (is this process started by a Mesos agent?)")]
    Missing(&'static str),
    /// A duration variable does not parse.
    #[error("{name} is not a duration")]
    Duration {
        /// The variable.
        name: &'static str,
        /// Why.
        #[source]
        source: DurationError,
    },
}

/// An executor's environment, see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExecutorEnvironment {
    /// The agent's `host:port` (the executor API is `/api/v1/executor` there).
    pub agent_endpoint: String,
    /// The framework.
    pub framework_id: FrameworkId,
    /// This executor.
    pub executor_id: ExecutorId,
    /// Whether the framework checkpoints: then a restarting agent is waited for (up to
    /// `recovery_timeout`) instead of shutting down.
    pub checkpoint: bool,
    /// How long to keep trying to resubscribe after losing the agent (checkpointing only).
    pub recovery_timeout: Duration,
    /// Longest wait between resubscription attempts.
    pub subscription_backoff_max: Duration,
    /// Time allowed to shut down.
    pub shutdown_grace_period: Duration,
    /// The sandbox (`MESOS_SANDBOX`, else `MESOS_DIRECTORY`).
    pub sandbox: Option<PathBuf>,
    /// The agent's id.
    pub agent_id: Option<AgentId>,
    /// Bearer token for the agent's API.
    pub authentication_token: Option<String>,
}

impl ExecutorEnvironment {
    /// From the current process's environment.
    pub fn from_process() -> Result<Self, EnvError> {
        Self::from_vars(std::env::vars())
    }

    /// From the given variables (the process's, or a test's).
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self, EnvError> {
        let vars: BTreeMap<String, String> = vars
            .into_iter()
            .filter(|(k, v)| k.starts_with("MESOS_") && !v.is_empty())
            .collect();
        let required = |name: &'static str| vars.get(name).cloned().ok_or(EnvError::Missing(name));
        let duration = |name: &'static str, default: Duration| match vars.get(name) {
            None => Ok(default),
            Some(text) => {
                parse_duration(text).map_err(|source| EnvError::Duration { name, source })
            }
        };
        Ok(ExecutorEnvironment {
            agent_endpoint: required(MESOS_AGENT_ENDPOINT)?,
            framework_id: FrameworkId {
                value: required(MESOS_FRAMEWORK_ID)?,
            },
            executor_id: ExecutorId {
                value: required(MESOS_EXECUTOR_ID)?,
            },
            checkpoint: vars.get(MESOS_CHECKPOINT).is_some_and(|v| v == "1"),
            recovery_timeout: duration(MESOS_RECOVERY_TIMEOUT, DEFAULT_RECOVERY_TIMEOUT)?,
            subscription_backoff_max: duration(
                MESOS_SUBSCRIPTION_BACKOFF_MAX,
                DEFAULT_SUBSCRIPTION_BACKOFF_MAX,
            )?,
            shutdown_grace_period: duration(
                MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD,
                DEFAULT_SHUTDOWN_GRACE_PERIOD,
            )?,
            sandbox: vars
                .get(MESOS_SANDBOX)
                .or_else(|| vars.get(MESOS_DIRECTORY))
                .map(PathBuf::from),
            agent_id: vars
                .get(MESOS_SLAVE_ID)
                .map(|v| AgentId { value: v.clone() }),
            authentication_token: vars.get(MESOS_EXECUTOR_AUTHENTICATION_TOKEN).cloned(),
        })
    }

    /// An environment for an executor of `framework_id`/`executor_id` on the agent at
    /// `agent_endpoint`, with Mesos's defaults (no checkpointing): for tests and for executors
    /// started by hand.
    pub fn new(agent_endpoint: &str, framework_id: &str, executor_id: &str) -> Self {
        ExecutorEnvironment {
            agent_endpoint: agent_endpoint.to_owned(),
            framework_id: FrameworkId {
                value: framework_id.to_owned(),
            },
            executor_id: ExecutorId {
                value: executor_id.to_owned(),
            },
            checkpoint: false,
            recovery_timeout: DEFAULT_RECOVERY_TIMEOUT,
            subscription_backoff_max: DEFAULT_SUBSCRIPTION_BACKOFF_MAX,
            shutdown_grace_period: DEFAULT_SHUTDOWN_GRACE_PERIOD,
            sandbox: None,
            agent_id: None,
            authentication_token: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    const BASE: [(&str, &str); 3] = [
        (MESOS_AGENT_ENDPOINT, "10.0.0.1:5051"),
        (MESOS_FRAMEWORK_ID, "f-0000"),
        (MESOS_EXECUTOR_ID, "e1"),
    ];

    #[test]
    fn reads_what_the_agent_sets() {
        let mut all = vars(&BASE);
        all.extend(vars(&[
            (MESOS_CHECKPOINT, "1"),
            (MESOS_RECOVERY_TIMEOUT, "15mins"),
            (MESOS_SUBSCRIPTION_BACKOFF_MAX, "2secs"),
            (MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD, "3secs"),
            (MESOS_DIRECTORY, "/var/lib/mesos/sandbox"),
            (MESOS_SANDBOX, "/mnt/mesos/sandbox"),
            (MESOS_SLAVE_ID, "S1"),
            ("PATH", "/bin"),
        ]));
        let env = ExecutorEnvironment::from_vars(all).expect("environment");
        assert_eq!(env.agent_endpoint, "10.0.0.1:5051");
        assert_eq!(env.framework_id.value, "f-0000");
        assert_eq!(env.executor_id.value, "e1");
        assert!(env.checkpoint);
        assert_eq!(env.recovery_timeout, Duration::from_secs(900));
        assert_eq!(env.subscription_backoff_max, Duration::from_secs(2));
        assert_eq!(env.shutdown_grace_period, Duration::from_secs(3));
        assert_eq!(env.sandbox, Some("/mnt/mesos/sandbox".into()));
        assert_eq!(env.agent_id.map(|a| a.value), Some("S1".into()));
    }

    #[test]
    fn defaults_and_checkpoint_follow_mesos() {
        let env = ExecutorEnvironment::from_vars(vars(&BASE)).expect("environment");
        assert!(!env.checkpoint);
        assert_eq!(env.shutdown_grace_period, DEFAULT_SHUTDOWN_GRACE_PERIOD);
        assert_eq!(env.recovery_timeout, DEFAULT_RECOVERY_TIMEOUT);
        let mut zero = vars(&BASE);
        zero.extend(vars(&[(MESOS_CHECKPOINT, "0")]));
        assert!(
            !ExecutorEnvironment::from_vars(zero)
                .expect("env")
                .checkpoint
        );
    }

    #[test]
    fn missing_or_bad_variables_are_errors() {
        assert_eq!(
            ExecutorEnvironment::from_vars(vars(&BASE[1..])),
            Err(EnvError::Missing(MESOS_AGENT_ENDPOINT))
        );
        let mut bad = vars(&BASE);
        bad.extend(vars(&[(MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD, "5s")]));
        assert!(matches!(
            ExecutorEnvironment::from_vars(bad),
            Err(EnvError::Duration {
                name: MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD,
                ..
            })
        ));
    }
}
