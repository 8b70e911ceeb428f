//! Metrics under Mesos's names (`master/elected`, `master/tasks_running`, `master/cpus_total`,
//! ...): `GET /metrics/snapshot` (a flat JSON object, with `?jsonp=`), Prometheus text at
//! `GET /metrics`, and the operator API's GET_METRICS.
//!
//! Gauges are computed from the books on each request; counters (`master/tasks_finished`,
//! `master/slave_registrations`, `allocator/mesos/allocation_runs`, ...) are kept by the master
//! as events happen, and so is the allocation-run timer `allocator/mesos/allocation_run_ms` with
//! its statistics (`crate::state::timer`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::SystemTime;

use axum::extract::{Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use mesoblk_proto::mesos::v1::TaskState;

use super::model::{jsonp, ResourceTotals};
use crate::state::{Master, MasterHandle};

/// Counters reported even before their first event.
const COUNTERS: &[&str] = &[
    "master/slave_registrations",
    "master/slave_reregistrations",
    "master/slave_removals",
    "master/recovery_slave_removals",
    "master/tasks_finished",
    "master/tasks_failed",
    "master/tasks_killed",
    "master/tasks_lost",
    "master/tasks_error",
    "master/tasks_dropped",
    "master/tasks_gone",
    "master/tasks_gone_by_operator",
    "master/valid_status_updates",
    "master/invalid_status_updates",
    "master/valid_status_update_acknowledgements",
    "master/invalid_status_update_acknowledgements",
    "master/messages_accept",
    "master/offers_sent",
    "master/offers_declined",
    "master/offers_rescinded",
    "master/operations_finished",
    "master/operations_failed",
    "master/operations_error",
    "allocator/mesos/allocation_runs",
];

#[allow(clippy::cast_precision_loss)] // counts and MB totals are far below 2^52.
fn count(n: usize) -> f64 {
    n as f64
}

/// Every metric, by name.
pub fn snapshot(m: &Master) -> BTreeMap<String, f64> {
    let mut out: BTreeMap<String, f64> = BTreeMap::new();
    let mut put = |name: &str, value: f64| {
        out.insert(name.to_owned(), value);
    };
    put("master/elected", 1.0);
    let uptime = SystemTime::now()
        .duration_since(m.start_time())
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    put("master/uptime_secs", uptime);
    let frameworks = m.frameworks().len();
    let connected = m
        .frameworks()
        .values()
        .filter(|f| f.connection.is_some())
        .count();
    let active = m.frameworks().values().filter(|f| f.active).count();
    put("master/frameworks_connected", count(connected));
    put(
        "master/frameworks_disconnected",
        count(frameworks - connected),
    );
    put("master/frameworks_active", count(active));
    put("master/frameworks_inactive", count(frameworks - active));
    let agents = m.agents().len();
    let live = m.agents().values().filter(|a| a.connected()).count();
    put("master/slaves_active", count(live));
    put("master/slaves_inactive", count(agents - live));
    put("master/slaves_connected", count(live));
    put("master/slaves_disconnected", count(agents - live));
    put("master/slaves_unreachable", count(m.removed_agents().len()));
    put(
        "master/outstanding_offers",
        count(m.allocator().counts().offers),
    );
    for (state, name) in [
        (TaskState::TaskStaging, "master/tasks_staging"),
        (TaskState::TaskStarting, "master/tasks_starting"),
        (TaskState::TaskRunning, "master/tasks_running"),
        (TaskState::TaskKilling, "master/tasks_killing"),
        (TaskState::TaskUnreachable, "master/tasks_unreachable"),
    ] {
        let n = m
            .tasks()
            .values()
            .filter(|t| t.task.state == state as i32)
            .count();
        put(name, count(n));
    }
    let totals = ResourceTotals::of(m);
    for name in ["cpus", "gpus", "mem", "disk"] {
        let total = totals.total.get(name).as_f64();
        let used = totals.used.get(name).as_f64();
        put(&format!("master/{name}_total"), total);
        put(&format!("master/{name}_used"), used);
        put(
            &format!("master/{name}_offered"),
            totals.offered.get(name).as_f64(),
        );
        put(
            &format!("master/{name}_percent"),
            if total > 0.0 { used / total } else { 0.0 },
        );
    }
    for name in COUNTERS {
        put(name, 0.0);
    }
    #[allow(clippy::cast_precision_loss)] // counters stay far below 2^52.
    for (name, value) in m.counters() {
        out.insert((*name).to_owned(), *value as f64);
    }
    out.extend(
        m.allocation_run()
            .metrics("allocator/mesos/allocation_run_ms", m.now()),
    );
    out
}

/// Query of `/metrics/snapshot`.
#[derive(Debug, serde::Deserialize)]
pub struct SnapshotQuery {
    /// JSONP callback.
    jsonp: Option<String>,
}

/// `GET /metrics/snapshot`.
pub async fn snapshot_handler(
    State(master): State<MasterHandle>,
    Query(query): Query<SnapshotQuery>,
) -> Response {
    let metrics = master.with(|m| snapshot(m));
    let body = serde_json::to_string(&metrics).unwrap_or_else(|_| "{}".into());
    match jsonp(body, query.jsonp.as_deref()) {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

/// A Prometheus metric name: `master/cpus_total` → `mesos_master_cpus_total`.
fn prometheus_name(name: &str) -> String {
    let mut out = String::from("mesos_");
    for c in name.chars() {
        out.push(if c.is_ascii_alphanumeric() { c } else { '_' });
    }
    out
}

/// The snapshot in the Prometheus text format (version 0.0.4).
pub fn prometheus(metrics: &BTreeMap<String, f64>) -> String {
    let mut out = String::new();
    for (name, value) in metrics {
        let name = prometheus_name(name);
        let _ = writeln!(out, "# TYPE {name} gauge");
        let _ = writeln!(out, "{name} {value}");
    }
    out
}

/// `GET /metrics`.
pub async fn prometheus_handler(State(master): State<MasterHandle>) -> Response {
    let metrics = master.with(|m| snapshot(m));
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        prometheus(&metrics),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_names_are_sanitised() {
        assert_eq!(
            prometheus_name("master/cpus_total"),
            "mesos_master_cpus_total"
        );
        let text = prometheus(&BTreeMap::from([("master/elected".to_owned(), 1.0)]));
        assert_eq!(
            text,
            "# TYPE mesos_master_elected gauge\nmesos_master_elected 1\n"
        );
    }
}
