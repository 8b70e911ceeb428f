//! `GET /metrics/snapshot`: Mesos agent metric names (`slave/...`), plus `mesoblk/...` for
//! block storage.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use mesoblk_proto::mesos::v1::{Resource, TaskState};
use serde_json::{json, Value};

use crate::node::Node;

fn scalar_sum(resources: &[Resource], name: &str) -> f64 {
    resources
        .iter()
        .filter(|r| r.name == name)
        .filter_map(|r| r.scalar.as_ref().map(|s| s.value))
        .sum()
}

/// GET /metrics/snapshot
pub(super) async fn snapshot(State(node): State<Arc<Node>>) -> Json<Value> {
    let tasks = node.tasks();
    let count = |state: TaskState| {
        tasks
            .iter()
            .filter(|(t, _)| t.state == state as i32)
            .count()
    };
    let live: Vec<&Resource> = tasks
        .iter()
        .filter(|(t, _)| {
            !crate::status::is_terminal(
                TaskState::try_from(t.state).unwrap_or(TaskState::TaskUnknown),
            )
        })
        .flat_map(|(t, _)| &t.resources)
        .collect();
    let live: Vec<Resource> = live.into_iter().cloned().collect();
    let total = node.total_resources();
    let mut m: BTreeMap<String, Value> = BTreeMap::new();
    for (name, state) in [
        ("staging", TaskState::TaskStaging),
        ("starting", TaskState::TaskStarting),
        ("running", TaskState::TaskRunning),
        ("killing", TaskState::TaskKilling),
    ] {
        m.insert(format!("slave/tasks_{name}"), json!(count(state)));
    }
    for (name, state) in [
        ("finished", TaskState::TaskFinished),
        ("failed", TaskState::TaskFailed),
        ("killed", TaskState::TaskKilled),
        ("lost", TaskState::TaskLost),
        ("error", TaskState::TaskError),
        ("gone", TaskState::TaskGone),
        ("dropped", TaskState::TaskDropped),
    ] {
        m.insert(
            format!("slave/tasks_{name}"),
            json!(node.counters.ended(state)),
        );
    }
    let running = node.runtime().map_or(0, |rt| rt.executor.tasks().len());
    let frameworks: std::collections::BTreeSet<&str> = tasks
        .iter()
        .map(|(t, _)| t.framework_id.value.as_str())
        .collect();
    let uptime = node.started.elapsed().map_or(0.0, |d| d.as_secs_f64());
    let link = node.link_status();
    m.insert(
        "slave/registered".into(),
        json!(if link.connected { 1 } else { 0 }),
    );
    m.insert("slave/uptime_secs".into(), json!(uptime));
    m.insert("slave/executors_running".into(), json!(running));
    m.insert("slave/frameworks_active".into(), json!(frameworks.len()));
    m.insert(
        "slave/valid_status_updates".into(),
        json!(node.counters.status_updates_sent.load(Ordering::Relaxed)),
    );
    for name in ["cpus", "mem", "disk"] {
        let used = scalar_sum(&live, name);
        let total = scalar_sum(&total, name);
        m.insert(format!("slave/{name}_total"), json!(total));
        m.insert(format!("slave/{name}_used"), json!(used));
        let percent = if total > 0.0 { used / total } else { 0.0 };
        m.insert(format!("slave/{name}_percent"), json!(percent));
    }
    let (pools, volumes, attached, spares) = {
        let storage = node.storage.lock().unwrap_or_else(|p| p.into_inner());
        let attached = storage
            .volumes()
            .filter(|v| v.state.attachment().is_some())
            .count();
        (
            storage.pool_usage().len(),
            storage.volumes().filter(|v| !v.is_spare()).count(),
            attached,
            storage.spares().len(),
        )
    };
    m.insert(
        "mesoblk/registrations".into(),
        json!(node.counters.registrations.load(Ordering::Relaxed)),
    );
    m.insert(
        "mesoblk/master_events".into(),
        json!(node.counters.events.load(Ordering::Relaxed)),
    );
    m.insert("mesoblk/pools".into(), json!(pools));
    m.insert("mesoblk/volumes".into(), json!(volumes));
    m.insert("mesoblk/devices_attached".into(), json!(attached));
    m.insert("mesoblk/spare_devices".into(), json!(spares));
    Json(json!(m))
}
