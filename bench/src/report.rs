//! The run's figures: what the sim measured itself (launch throughput and latencies), what the
//! master reports about itself (`allocator/mesos/allocation_run_ms` from `/metrics/snapshot`),
//! and the master's resident memory (`VmRSS` in `/proc/<pid>/status`), printed against the
//! targets of issue #5 and written as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::timeline::Sample;

/// Issue #5's targets.
pub(crate) const TARGET_ALLOCATION_P99_MS: f64 = 100.0;
/// Tasks per second from first launch to last TASK_RUNNING.
pub(crate) const TARGET_TASKS_PER_SEC: f64 = 2000.0;
/// Master RSS with every agent and task, MiB.
pub(crate) const TARGET_RSS_MIB: f64 = 2048.0;

/// Everything a run reports.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Report {
    /// Agents registered and subscribed.
    pub(crate) agents: usize,
    /// RUN_TASK events the agents received.
    pub(crate) run_tasks: u64,
    /// Frameworks run.
    pub(crate) frameworks: usize,
    /// Tasks that reached TASK_RUNNING.
    pub(crate) tasks_running: usize,
    /// Seconds to register and subscribe every agent.
    pub(crate) registration_secs: f64,
    /// Seconds from the first ACCEPT sent to the last TASK_RUNNING received.
    pub(crate) launch_secs: f64,
    /// Tasks per second over `launch_secs`.
    pub(crate) tasks_per_sec: f64,
    /// ACCEPT sent → TASK_RUNNING received, ms.
    pub running_latency_p50_ms: f64,
    /// ACCEPT sent → TASK_RUNNING received, ms.
    pub running_latency_p99_ms: f64,
    /// ACCEPT sent → the master's 202, ms.
    pub accept_p50_ms: f64,
    /// ACCEPT sent → the master's 202, ms.
    pub accept_p99_ms: f64,
    /// TASK_RUNNING updates the master sent again (not acknowledged in time).
    pub(crate) repeated_updates: u64,
    /// Framework streams that broke (the master disconnects a framework whose event queue
    /// fills up).
    pub(crate) disconnections: u64,
    /// DECLINE, SUPPRESS and ACKNOWLEDGE calls that failed.
    pub(crate) soft_call_failures: u64,
    /// OFFERS events the frameworks received.
    pub(crate) offer_events: u64,
    /// Offers in them.
    pub(crate) offers: u64,
    /// The master's allocation-cycle timer and counters, from `/metrics/snapshot`.
    pub(crate) master_metrics: BTreeMap<String, f64>,
    /// CPU seconds the master used from the frameworks' start to the last TASK_RUNNING.
    pub(crate) master_cpu_launch_secs: Option<f64>,
    /// CPU seconds the sim itself used over the same time.
    pub(crate) sim_cpu_launch_secs: f64,
    /// Seconds from the frameworks' start until the master held every task (staging or
    /// running), from the timeline.
    pub(crate) master_launched_all_secs: Option<f64>,
    /// ... until the master had every task's TASK_RUNNING.
    pub(crate) master_running_all_secs: Option<f64>,
    /// ... until the frameworks had every TASK_RUNNING.
    pub(crate) frameworks_running_all_secs: f64,
    /// The master's metrics once a second while launching.
    pub(crate) timeline: Vec<Sample>,
    /// The machine's one-minute load average when the tasks were all running (`/proc/loadavg`):
    /// other work shares the cores.
    pub(crate) load_average: Option<f64>,
    /// Master VmRSS with every agent registered (no tasks), MiB.
    pub(crate) rss_registered_mib: Option<f64>,
    /// Master VmRSS with every task running, MiB.
    pub(crate) rss_running_mib: Option<f64>,
}

pub(crate) use crate::stats::quantile_ms;

/// VmRSS of a process, MiB.
pub(crate) fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in {path}"))?;
    Ok(kib / 1024.0)
}

/// CPU time (user + system) a process has used so far, seconds (`/proc/<pid>/stat`).
pub(crate) fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The fields after the command (which may hold spaces) start after its closing parenthesis:
    // state is field 3, utime 14 and stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .with_context(|| format!("field {} of {path}", i + 3))
    };
    let per_sec = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?
        .filter(|t| *t > 0)
        .context("CLK_TCK")?;
    #[allow(clippy::cast_precision_loss)] // ticks per second are small.
    Ok((ticks(11)? + ticks(12)?) / per_sec as f64)
}

/// The one-minute load average, if readable.
pub(crate) fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Every metric of the master's `/metrics/snapshot`.
pub(crate) async fn snapshot(master_url: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let url = format!("{master_url}/metrics/snapshot");
    let response = reqwest::Client::new()
        .get(&url)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let body = response.bytes().await?;
    serde_json::from_slice(&body).with_context(|| format!("parsing {url}"))
}

/// The allocator's metrics (`allocator/mesos/...`) from the master's `/metrics/snapshot`.
pub(crate) async fn allocator_metrics(master_url: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    Ok(snapshot(master_url)
        .await?
        .into_iter()
        .filter(|(k, _)| k.starts_with("allocator/mesos/"))
        .collect())
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT MET"
    }
}

impl Report {
    /// A metric of the master, if it reported it.
    pub(crate) fn metric(&self, suffix: &str) -> Option<f64> {
        self.master_metrics
            .get(&format!("allocator/mesos/{suffix}"))
            .copied()
    }

    /// The figures and the targets, as text.
    pub(crate) fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "agents {}, frameworks {}, tasks running {} (registration {:.1} s)",
            self.agents, self.frameworks, self.tasks_running, self.registration_secs
        );
        let p50 = self.metric("allocation_run_ms/p50");
        let p99 = self.metric("allocation_run_ms/p99");
        let runs = self.metric("allocation_runs").unwrap_or(0.0);
        let fmt = |x: Option<f64>| x.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2}"));
        let _ = writeln!(
            out,
            "allocation run ms: p50 {} p99 {} max {} over {} runs (window {}) — target p99 < {TARGET_ALLOCATION_P99_MS}: {}",
            fmt(p50),
            fmt(p99),
            fmt(self.metric("allocation_run_ms/max")),
            runs,
            fmt(self.metric("allocation_run_ms/count")),
            verdict(p99.is_some_and(|p| p < TARGET_ALLOCATION_P99_MS)),
        );
        let _ = writeln!(
            out,
            "launch → TASK_RUNNING: {:.0} tasks/s over {:.2} s — target ≥ {TARGET_TASKS_PER_SEC}: {}",
            self.tasks_per_sec,
            self.launch_secs,
            verdict(self.tasks_per_sec >= TARGET_TASKS_PER_SEC),
        );
        let _ = writeln!(
            out,
            "  latency ms: p50 {:.1} p99 {:.1}; ACCEPT answered ms: p50 {:.1} p99 {:.1}; {} offers in {} OFFERS events; {} updates resent; {} framework disconnections, {} failed DECLINE/SUPPRESS/ACKNOWLEDGE",
            self.running_latency_p50_ms,
            self.running_latency_p99_ms,
            self.accept_p50_ms,
            self.accept_p99_ms,
            self.offers,
            self.offer_events,
            self.repeated_updates,
            self.disconnections,
            self.soft_call_failures,
        );
        let _ = writeln!(
            out,
            "  legs, s after the frameworks started: master held every task {}, master had every TASK_RUNNING {}, frameworks had every TASK_RUNNING {:.1}",
            fmt(self.master_launched_all_secs),
            fmt(self.master_running_all_secs),
            self.frameworks_running_all_secs,
        );
        let _ = writeln!(
            out,
            "  CPU s while launching: master {}, sim {:.1} (machine: {} cores, load average {})",
            fmt(self.master_cpu_launch_secs),
            self.sim_cpu_launch_secs,
            std::thread::available_parallelism().map_or(0, std::num::NonZeroUsize::get),
            fmt(self.load_average),
        );
        let _ = writeln!(
            out,
            "master RSS MiB: {} with agents only, {} with every task running — target < {TARGET_RSS_MIB}: {}",
            fmt(self.rss_registered_mib),
            fmt(self.rss_running_mib),
            verdict(self.rss_running_mib.is_some_and(|r| r < TARGET_RSS_MIB)),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_take_the_nearest_rank() {
        let mut samples: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        assert_eq!(quantile_ms(&mut samples, 0.5), 50.0);
        assert_eq!(quantile_ms(&mut samples, 0.99), 99.0);
        assert_eq!(quantile_ms(&mut samples, 1.0), 100.0);
        assert_eq!(quantile_ms(&mut [], 0.5), 0.0);
    }

    #[test]
    fn rss_and_cpu_of_this_process_are_read() {
        let rss = rss_mib(std::process::id()).expect("VmRSS");
        assert!(rss > 0.0 && rss < 1_000_000.0, "{rss}");
        let before = cpu_secs(std::process::id()).expect("CPU time");
        let spin = std::time::Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < Duration::from_millis(100) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let after = cpu_secs(std::process::id()).expect("CPU time");
        assert!(after > before, "{before} → {after}");
    }
}
