//! A task's environment and Mesos's duration strings (pure).
//!
//! Priority, lowest first (as Mesos's command executor): the agent's base environment (its own,
//! minus `MESOS_*` and `LIBPROCESS_*`, unless configured), then the `MESOS_*` variables of the
//! executor, then the extra variables the agent adds (the task's block device, ...), then the
//! task's own `CommandInfo.environment`. `PATH` gets the host default when nobody set it.

use std::collections::BTreeMap;
use std::time::Duration;

/// `PATH` when neither the base environment nor the task sets one (Mesos's host default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A duration as stout prints it (`5secs`, `100ms`, `2mins`, `1500ms`): the largest unit the
/// duration reaches, or the next smaller one when that one gives a whole number and the larger
/// does not. pymesos parses this for `MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD`.
pub fn stout_duration(d: Duration) -> String {
    const NS: u128 = 1;
    const US: u128 = 1_000;
    const MS: u128 = 1_000_000;
    const SECS: u128 = 1_000_000_000;
    const MINS: u128 = 60 * SECS;
    const HRS: u128 = 60 * MINS;
    const DAYS: u128 = 24 * HRS;
    const WEEKS: u128 = 7 * DAYS;
    const UNITS: [(u128, &str); 8] = [
        (NS, "ns"),
        (US, "us"),
        (MS, "ms"),
        (SECS, "secs"),
        (MINS, "mins"),
        (HRS, "hrs"),
        (DAYS, "days"),
        (WEEKS, "weeks"),
    ];
    let ns = d.as_nanos();
    // The bucket: the largest unit not larger than the duration.
    let bucket = UNITS.iter().rposition(|(u, _)| ns >= *u).unwrap_or(0);
    let (unit, name) = UNITS[bucket];
    if ns % unit == 0 || bucket == 0 {
        return format!("{}{name}", ns / unit);
    }
    let (smaller, smaller_name) = UNITS[bucket - 1];
    if ns % smaller == 0 {
        return format!("{}{smaller_name}", ns / smaller);
    }
    // Neither is whole: a decimal in the bucket's unit, as stout prints a double.
    let value = ns as f64 / unit as f64;
    format!("{}{name}", trim_float(value))
}

fn trim_float(v: f64) -> String {
    let s = format!("{v:.9}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The `MESOS_*` variables of a command task (see `crate::executor` for each one's meaning).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MesosEnv<'a> {
    /// `MESOS_FRAMEWORK_ID`.
    pub framework_id: &'a str,
    /// `MESOS_EXECUTOR_ID`.
    pub executor_id: &'a str,
    /// `MESOS_TASK_ID`.
    pub task_id: &'a str,
    /// `MESOS_SLAVE_ID` and `MESOS_AGENT_ID`.
    pub agent_id: &'a str,
    /// `MESOS_AGENT_ENDPOINT` (`ip:port`).
    pub agent_endpoint: &'a str,
    /// `MESOS_SANDBOX` and `MESOS_DIRECTORY`.
    pub sandbox: &'a str,
    /// `MESOS_CHECKPOINT`: `"1"` or `"0"`, as Mesos writes it.
    pub checkpoint: bool,
    /// `MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD`, in stout's format.
    pub shutdown_grace: Duration,
}

impl MesosEnv<'_> {
    /// The variables, sorted by name.
    pub fn vars(&self) -> Vec<(String, String)> {
        let pairs = [
            ("MESOS_AGENT_ENDPOINT", self.agent_endpoint.to_string()),
            ("MESOS_AGENT_ID", self.agent_id.to_string()),
            (
                "MESOS_CHECKPOINT",
                if self.checkpoint { "1" } else { "0" }.to_string(),
            ),
            ("MESOS_DIRECTORY", self.sandbox.to_string()),
            ("MESOS_EXECUTOR_ID", self.executor_id.to_string()),
            (
                "MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD",
                stout_duration(self.shutdown_grace),
            ),
            ("MESOS_FRAMEWORK_ID", self.framework_id.to_string()),
            ("MESOS_SANDBOX", self.sandbox.to_string()),
            ("MESOS_SLAVE_ID", self.agent_id.to_string()),
            ("MESOS_TASK_ID", self.task_id.to_string()),
        ];
        pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }
}

/// The agent's own environment as a task's base: without the agent's `MESOS_*` and
/// `LIBPROCESS_*` variables (Mesos's executor flags are not the task's business).
pub fn inherited_base() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| !k.starts_with("MESOS_") && !k.starts_with("LIBPROCESS_"))
        .collect()
}

/// Merges the layers, later ones winning (see the module docs), and sets `PATH` if missing.
pub fn merge(layers: &[&[(String, String)]]) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for layer in layers {
        for (k, v) in *layer {
            env.insert(k.clone(), v.clone());
        }
    }
    env.entry("PATH".to_string())
        .or_insert_with(|| DEFAULT_PATH.to_string());
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_like_stout() {
        let cases = [
            (Duration::from_secs(5), "5secs"),
            (Duration::from_secs(3), "3secs"),
            (Duration::from_millis(100), "100ms"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_secs(120), "2mins"),
            (Duration::from_secs(90), "90secs"),
            (Duration::from_secs(3600), "1hrs"),
            (Duration::from_secs(86400 * 10), "10days"),
            (Duration::from_secs(86400 * 14), "2weeks"),
            (Duration::from_nanos(1), "1ns"),
            (Duration::from_nanos(1500), "1500ns"),
            (Duration::ZERO, "0ns"),
            (Duration::from_nanos(1_500_000_001), "1.500000001secs"),
        ];
        for (d, want) in cases {
            assert_eq!(stout_duration(d), want, "{d:?}");
        }
    }

    #[test]
    fn later_layers_win_and_path_has_a_default() {
        let base = vec![("A".to_string(), "base".to_string())];
        let task = vec![("A".to_string(), "task".to_string())];
        let env = merge(&[&base, &task]);
        assert_eq!(env["A"], "task");
        assert_eq!(env["PATH"], DEFAULT_PATH);
        let with_path = vec![("PATH".to_string(), "/x".to_string())];
        assert_eq!(merge(&[&with_path])["PATH"], "/x");
    }

    #[test]
    fn mesos_variables_are_all_there() {
        let vars = MesosEnv {
            framework_id: "fw",
            executor_id: "ex",
            task_id: "t",
            agent_id: "S1",
            agent_endpoint: "127.0.0.1:5051",
            sandbox: "/sb",
            checkpoint: false,
            shutdown_grace: Duration::from_secs(5),
        }
        .vars();
        let get = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("MESOS_CHECKPOINT"), Some("0"));
        assert_eq!(get("MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD"), Some("5secs"));
        assert_eq!(get("MESOS_SANDBOX"), Some("/sb"));
        assert_eq!(get("MESOS_DIRECTORY"), Some("/sb"));
        assert_eq!(get("MESOS_TASK_ID"), Some("t"));
        assert_eq!(get("MESOS_AGENT_ENDPOINT"), Some("127.0.0.1:5051"));
    }
}
