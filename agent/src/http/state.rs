//! `GET /state`: the agent as Mesos's agent `/state` shows it (`id`, `hostname`, `resources`,
//! `frameworks[].executors[].tasks[]`, ...), plus mesoblk's `volumes`, `spares` (spare devices
//! ready for a task; their volumes are not in `volumes`) and `pools`. Command
//! tasks each have their command executor; custom executors list their tasks, queued ones in
//! `queued_tasks`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use mesoblk_proto::mesos::v1::{value, Resource, Task, TaskState};
use serde_json::{json, Map, Value};

use crate::executor_api::ExecutorSummary;
use crate::node::Node;

/// Resources as Mesos's `/state` shows them: `{"cpus": 2, "ports": "[31000-32000]"}`.
pub(super) fn resource_summary(resources: &[Resource]) -> Value {
    let mut out = Map::new();
    for resource in resources {
        match resource.r#type() {
            value::Type::Scalar => {
                let x = resource.scalar.as_ref().map_or(0.0, |s| s.value);
                let total = out
                    .get(&resource.name)
                    .and_then(Value::as_f64)
                    .unwrap_or(0.0)
                    + x;
                out.insert(resource.name.clone(), json!(total));
            }
            value::Type::Ranges => {
                let ranges: Vec<String> = resource
                    .ranges
                    .iter()
                    .flat_map(|r| &r.range)
                    .map(|r| format!("{}-{}", r.begin, r.end))
                    .collect();
                out.insert(
                    resource.name.clone(),
                    json!(format!("[{}]", ranges.join(", "))),
                );
            }
            value::Type::Set => {
                let items = resource.set.iter().flat_map(|s| &s.item).cloned();
                out.insert(
                    resource.name.clone(),
                    json!(format!("{{{}}}", items.collect::<Vec<_>>().join(", "))),
                );
            }
            _ => {}
        }
    }
    Value::Object(out)
}

fn proto_json<M: prost_reflect::ReflectMessage>(message: &M) -> Value {
    serde_json::from_str(&mesoblk_proto::json::to_json(message)).unwrap_or(Value::Null)
}

fn task_json(task: &Task) -> Value {
    let state = TaskState::try_from(task.state).unwrap_or(TaskState::TaskUnknown);
    json!({
        "id": task.task_id.value,
        "name": task.name,
        "framework_id": task.framework_id.value,
        "executor_id": task.executor_id.as_ref().map_or(task.task_id.value.as_str(), |e| e.value.as_str()),
        "slave_id": task.agent_id.value,
        "state": state.as_str_name(),
        "resources": resource_summary(&task.resources),
        "statuses": task.statuses.iter().map(proto_json).collect::<Vec<_>>(),
        "user": task.user,
    })
}

/// A command task's executor (Mesos's command executor, one per task).
fn command_executor_json(task: &Task, sandbox: Option<&Path>) -> Value {
    let container = sandbox
        .and_then(Path::file_name)
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default();
    json!({
        "id": task.executor_id.as_ref().map_or(task.task_id.value.as_str(), |e| e.value.as_str()),
        "name": format!("Command Executor (Task: {})", task.task_id.value),
        "source": task.task_id.value,
        "container": container,
        "directory": sandbox.map(|s| s.display().to_string()).unwrap_or_default(),
        "resources": resource_summary(&task.resources),
        "tasks": [task_json(task)],
        "queued_tasks": [],
        "completed_tasks": [],
    })
}

/// A running custom executor: its resources are its own plus its tasks' (as in Mesos), its
/// tasks not sent to it yet are `queued_tasks`. `source` is deprecated in the protobuf but
/// Mesos's `/state` still shows it.
#[allow(deprecated)]
fn custom_executor_json(summary: &ExecutorSummary, tasks: &[Task]) -> Value {
    let mut resources = summary.info.resources.clone();
    resources.extend(tasks.iter().flat_map(|t| t.resources.iter().cloned()));
    let (queued, launched): (Vec<&Task>, Vec<&Task>) = tasks
        .iter()
        .partition(|t| summary.queued.contains(&t.task_id.value));
    json!({
        "id": summary.info.executor_id.value,
        "name": summary.info.name.clone().unwrap_or_default(),
        "source": summary.info.source.clone().unwrap_or_default(),
        "container": summary.container_id,
        "directory": summary.sandbox.display().to_string(),
        "resources": resource_summary(&resources),
        "tasks": launched.into_iter().map(task_json).collect::<Vec<_>>(),
        "queued_tasks": queued.into_iter().map(task_json).collect::<Vec<_>>(),
        "completed_tasks": [],
    })
}

/// A custom executor that does not run (not yet, or no more), listed for its booked tasks.
fn ended_executor_json(executor_id: &str, tasks: &[Task]) -> Value {
    let resources: Vec<Resource> = tasks.iter().flat_map(|t| t.resources.clone()).collect();
    json!({
        "id": executor_id,
        "name": "",
        "source": "",
        "container": "",
        "directory": "",
        "resources": resource_summary(&resources),
        "tasks": tasks.iter().map(task_json).collect::<Vec<_>>(),
        "queued_tasks": [],
        "completed_tasks": [],
    })
}

/// GET /state
pub(super) async fn state(State(node): State<Arc<Node>>) -> Json<Value> {
    let resources = node.total_resources();
    let mut frameworks: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut completed: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut infos = BTreeMap::new();
    if let Some(rt) = node.runtime() {
        let books = rt.books.lock().unwrap_or_else(|p| p.into_inner());
        for (id, info) in books.frameworks() {
            infos.insert(id.clone(), info.clone());
        }
    }
    let custom = node
        .runtime()
        .map(|rt| rt.executors.executors())
        .unwrap_or_default();
    let mut custom_tasks: BTreeMap<(String, String), Vec<Task>> = BTreeMap::new();
    for (task, sandbox) in node.tasks() {
        if let Some(executor_id) = &task.executor_id {
            let key = (task.framework_id.value.clone(), executor_id.value.clone());
            custom_tasks.entry(key).or_default().push(task);
            continue;
        }
        frameworks
            .entry(task.framework_id.value.clone())
            .or_default()
            .push(command_executor_json(&task, sandbox.as_deref()));
    }
    for summary in &custom {
        let framework_id = summary.framework.id.clone().unwrap_or_default().value;
        let key = (framework_id.clone(), summary.info.executor_id.value.clone());
        let tasks = custom_tasks.remove(&key).unwrap_or_default();
        frameworks
            .entry(framework_id)
            .or_default()
            .push(custom_executor_json(summary, &tasks));
    }
    // Tasks of a custom executor that does not run: still being started (disks attaching), or
    // ended with tasks whose end the scheduler has not acknowledged.
    for ((framework_id, executor_id), tasks) in custom_tasks {
        frameworks
            .entry(framework_id)
            .or_default()
            .push(ended_executor_json(&executor_id, &tasks));
    }
    for task in node.completed_tasks() {
        completed
            .entry(task.framework_id.value.clone())
            .or_default()
            .push(task_json(&task));
    }
    let framework_json = |id: &String, executors: Vec<Value>| {
        let info = infos.get(id);
        json!({
            "id": id,
            "name": info.map(|i| i.name.clone()).unwrap_or_default(),
            "user": info.map(|i| i.user.clone()).unwrap_or_default(),
            "checkpoint": info.map(|i| i.checkpoint()).unwrap_or(false),
            "executors": executors,
            "completed_executors": [],
        })
    };
    let frameworks: Vec<Value> = frameworks
        .iter()
        .map(|(id, executors)| framework_json(id, executors.clone()))
        .collect();
    let completed_frameworks: Vec<Value> = completed
        .into_iter()
        .map(|(id, tasks)| {
            json!({"id": id, "executors": [], "completed_executors": [{"completed_tasks": tasks}]})
        })
        .collect();
    let link = node.link_status();
    let (volumes, spares, pools) = {
        let storage = node.storage.lock().unwrap_or_else(|p| p.into_inner());
        let volumes: Vec<Value> = storage
            .volumes()
            .filter(|v| !v.is_spare())
            .map(|v| serde_json::to_value(v).unwrap_or(Value::Null))
            .collect();
        let spares = serde_json::to_value(storage.spares()).unwrap_or(Value::Null);
        let pools = serde_json::to_value(storage.pool_usage()).unwrap_or(Value::Null);
        (volumes, spares, pools)
    };
    let started = node
        .started
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "id": node.agent_id().unwrap_or_default(),
        "pid": format!("slave(1)@{}", node.config.endpoint.trim_start_matches("http://")),
        "hostname": node.config.hostname,
        "port": node.config.port,
        "start_time": started,
        "registered": link.connected,
        "master_hostname": link.master.as_ref().and_then(|m| m.hostname.clone()),
        "resources": resource_summary(&resources),
        "resources_full": resources.iter().map(proto_json).collect::<Vec<_>>(),
        "attributes": node.config.attributes.iter().map(proto_json).collect::<Vec<_>>(),
        "frameworks": frameworks,
        "completed_frameworks": completed_frameworks,
        "volumes": volumes,
        "spares": spares,
        "pools": pools,
        "flags": {
            "work_dir": node.config.work_dir.display().to_string(),
            "master": node.config.master_url,
            "port": node.config.port.to_string(),
            "hostname": node.config.hostname,
        },
    }))
}
