//! The device-stats loop: every `--device_stats_interval` it asks the server of each attached
//! device for its figures and posts them to the master in one `DeviceStats` call, which the
//! dashboard shows. Rates are over the interval since the previous report of the same server
//! process; latency percentiles, errors, throttled time and cache hits are since the server
//! started; dirty bytes are the cache's now.
//!
//! Figures are best effort, like Mesos's resource statistics: a device whose server does not
//! answer is left out of that report, and a report the master does not take is not retried
//! (the next one supersedes it).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mesoblk_proto::mesoblk::agent::v1 as agent;
use mesoblk_proto::mesos::v1::{AgentId, FrameworkId, TaskId};
use ublk_target::admin::DeviceReport;
use ublk_target::stats::StatsSnapshot;

use super::{link, lock, Node};

/// One attached device, as storage knows it.
#[derive(Clone, Debug, PartialEq)]
struct Attached {
    volume_id: String,
    profile: String,
    device_id: u32,
    server_pid: u32,
    block_path: String,
    task_id: String,
}

/// Which server process a snapshot came from: rates are only taken between two snapshots of
/// the same one (a recovered server starts its counters again).
type ServerKey = (u32, u32);

/// Runs until the process ends; does nothing when the interval is zero.
pub(super) async fn run(node: Arc<Node>, client: reqwest::Client) {
    let interval = node.config.device_stats_interval;
    if interval.is_zero() {
        return;
    }
    let mut previous: BTreeMap<ServerKey, StatsSnapshot> = BTreeMap::new();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if !node.link_status().connected {
            continue;
        }
        let Some(agent_id) = node.agent_id().map(str::to_owned) else {
            continue;
        };
        let sampler = Arc::clone(&node);
        let Ok(samples) = tokio::task::spawn_blocking(move || sample(&sampler)).await else {
            continue;
        };
        let report = build_report(&node, agent_id, &samples, &mut previous);
        if let Err(e) = link::send(&node, &client, "/agent/v1/device_stats", &report).await {
            tracing::debug!(error = %e, "device stats not delivered");
        }
    }
}

/// Every attached device with its server's report (devices whose server did not answer are
/// left out). The servers are asked without the storage lock held.
fn sample(node: &Node) -> Vec<(Attached, DeviceReport)> {
    let (attached, devices) = {
        let storage = lock(&node.storage);
        (attached_devices(&storage), storage.device_control())
    };
    attached
        .into_iter()
        .filter_map(|a| devices.report(a.device_id).map(|report| (a, report)))
        .collect()
}

fn attached_devices(storage: &crate::storage::Storage) -> Vec<Attached> {
    storage
        .volumes()
        .filter_map(|volume| {
            let attachment = volume.state.attachment()?;
            Some(Attached {
                volume_id: volume.id.to_string(),
                profile: volume.profile.clone(),
                device_id: attachment.device_id,
                server_pid: attachment.server_pid,
                block_path: attachment.block_path.display().to_string(),
                task_id: attachment.task_id.clone(),
            })
        })
        .collect()
}

fn build_report(
    node: &Node,
    agent_id: String,
    samples: &[(Attached, DeviceReport)],
    previous: &mut BTreeMap<ServerKey, StatsSnapshot>,
) -> agent::DeviceStats {
    let frameworks = task_frameworks(node);
    let mut seen = BTreeMap::new();
    let devices = samples
        .iter()
        .map(|(attached, report)| {
            let key = (attached.device_id, attached.server_pid);
            let framework = frameworks.get(&attached.task_id).map(String::as_str);
            let device = device_entry(attached, framework, report, previous.get(&key));
            seen.insert(key, report.io.clone());
            device
        })
        .collect();
    *previous = seen;
    agent::DeviceStats {
        agent_id: AgentId { value: agent_id },
        timestamp: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()
            .as_ref()
            .map(Duration::as_secs_f64),
        devices,
    }
}

/// Task id → framework id, from the books.
fn task_frameworks(node: &Node) -> BTreeMap<String, String> {
    let Some(rt) = node.runtime() else {
        return BTreeMap::new();
    };
    lock(&rt.books)
        .tasks()
        .map(|(key, _)| (key.task_id.clone(), key.framework_id.clone()))
        .collect()
}

/// One device's entry. Without an earlier snapshot of the same server there are no rates.
fn device_entry(
    attached: &Attached,
    framework_id: Option<&str>,
    report: &DeviceReport,
    earlier: Option<&StatsSnapshot>,
) -> agent::device_stats::Device {
    let io = &report.io;
    let rates = earlier.and_then(|e| io.delta(e).ok()).map(|d| d.rates());
    let latency = &io.counters.latency;
    let total = io.counters.total();
    let cache = report.cache.as_ref().map(|c| &c.stats);
    agent::device_stats::Device {
        volume_id: attached.volume_id.clone(),
        device: Some(attached.block_path.clone()),
        profile: Some(attached.profile.clone()),
        framework_id: framework_id.map(|value| FrameworkId {
            value: value.to_owned(),
        }),
        task_id: Some(TaskId {
            value: attached.task_id.clone(),
        }),
        read_ops_per_second: rates.map(|r| r.read.ops_per_sec),
        write_ops_per_second: rates.map(|r| r.write.ops_per_sec),
        read_bytes_per_second: rates.map(|r| r.read.bytes_per_sec),
        write_bytes_per_second: rates.map(|r| r.write.bytes_per_sec),
        latency_p50_us: latency.quantile(0.5).map(|us| us as f64),
        latency_p99_us: latency.quantile(0.99).map(|us| us as f64),
        in_flight: Some(io.in_flight),
        throttled_seconds: Some(io.counters.throttled_ns_total as f64 / 1e9),
        errors: Some(total.errors),
        cache_read_hits: cache.map(|c| c.read_hits),
        cache_read_misses: cache.map(|c| c.read_misses),
        cache_dirty_bytes: cache.map(|c| c.dirty_bytes),
    }
}

#[cfg(test)]
mod tests {
    use ublk_target::qos::QosLimits;
    use ublk_target::request::Op;
    use ublk_target::stats::DeviceStats;

    use super::*;

    fn attached() -> Attached {
        Attached {
            volume_id: "vol-1".into(),
            profile: "fast".into(),
            device_id: 3,
            server_pid: 77,
            block_path: "/dev/ublkb3".into(),
            task_id: "task-1".into(),
        }
    }

    fn report(stats: &DeviceStats, at: Duration) -> DeviceReport {
        DeviceReport {
            qos: QosLimits::default(),
            io: stats.snapshot(at),
            cache: None,
        }
    }

    // Latencies under 32 µs have exact histogram buckets.
    #[test]
    fn rates_come_from_the_interval_and_percentiles_from_the_whole_life() {
        let stats = DeviceStats::new();
        stats.record(Op::Read, 4096, Duration::from_micros(20), true);
        let first = report(&stats, Duration::from_secs(10));
        for _ in 0..20 {
            stats.record(Op::Write, 8192, Duration::from_micros(30), true);
        }
        stats.record(Op::Write, 0, Duration::from_micros(10), false);
        let second = report(&stats, Duration::from_secs(12));

        let device = device_entry(&attached(), Some("fw-1"), &second, Some(&first.io));

        assert_eq!(device.read_ops_per_second, Some(0.0));
        assert_eq!(device.write_ops_per_second, Some(10.5));
        assert_eq!(device.write_bytes_per_second, Some(20.0 * 8192.0 / 2.0));
        assert_eq!(device.latency_p99_us, Some(30.0));
        assert_eq!(device.errors, Some(1));
        assert_eq!(
            device.framework_id.map(|f| f.value).as_deref(),
            Some("fw-1")
        );
        assert_eq!(device.device.as_deref(), Some("/dev/ublkb3"));
    }

    #[test]
    fn a_first_report_or_a_restarted_server_has_no_rates() {
        let stats = DeviceStats::new();
        stats.record(Op::Read, 4096, Duration::from_micros(20), true);
        let now = report(&stats, Duration::from_secs(5));
        assert_eq!(
            device_entry(&attached(), None, &now, None).read_ops_per_second,
            None
        );

        let older_server = DeviceStats::new();
        for _ in 0..5 {
            older_server.record(Op::Read, 4096, Duration::from_micros(20), true);
        }
        let before_restart = report(&older_server, Duration::from_secs(1));
        let device = device_entry(&attached(), None, &now, Some(&before_restart.io));
        assert_eq!(device.read_ops_per_second, None, "counters went back");
        assert_eq!(device.latency_p50_us, Some(20.0));
    }
}
