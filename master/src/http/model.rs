//! `GET /master/state` (and `/master/state.json`): the master in Mesos's "model" JSON
//! (`src/master/readonly_handler.cpp`, `src/common/http.cpp`), which the Mesos web UI and older
//! tools read, with `?jsonp=<callback>` (MESOS-5911). Resources are summarised as
//! `{cpus, gpus, mem, disk, ports: "[31000-32000]"}`; agents are `slaves` with `pid`
//! `slave(1)@ip:port`; agents recovered from the registry that have not re-registered are
//! `recovered_slaves`.

use std::collections::BTreeMap;

use axum::extract::{Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use mesoblk_proto::json::to_json;
use mesoblk_proto::mesos::v1::{AgentInfo, Attribute, Resource, Task, TaskState};
use serde_json::{json, Map, Value};

use super::version_info;
use crate::allocator::{AgentId, Quantities, ResourceSet};
use crate::error::ApiError;
use crate::state::{convert, epoch_secs, Agent, Framework, Master, MasterHandle};

/// Cluster-wide scalar totals.
#[derive(Debug, Default)]
pub struct ResourceTotals {
    /// Every agent's total.
    pub total: Quantities,
    /// Allocated to frameworks (tasks, executors, pending operations).
    pub used: Quantities,
    /// In outstanding offers.
    pub offered: Quantities,
}

impl ResourceTotals {
    /// The totals of the master's agents.
    pub fn of(m: &Master) -> Self {
        let allocator = m.allocator();
        let mut totals = ResourceTotals::default();
        for offer in allocator.offers() {
            totals.offered.add_all(&offer.resources.quantities());
        }
        for id in m.agents().keys() {
            let id = AgentId(id.clone());
            let total = allocator
                .agent_total(&id)
                .map(ResourceSet::quantities)
                .unwrap_or_default();
            let available = allocator
                .agent_available(&id)
                .map(ResourceSet::quantities)
                .unwrap_or_default();
            totals.total.add_all(&total);
            let mut used = total;
            used.saturating_sub_all(&available);
            totals.used.add_all(&used);
        }
        totals.used.saturating_sub_all(&totals.offered);
        totals
    }
}

/// Answers `body` as JSON, or as `callback(body);` JavaScript when a JSONP callback is given
/// (only identifier characters, dots and brackets are accepted in it).
pub fn jsonp(body: String, callback: Option<&str>) -> Result<Response, ApiError> {
    let Some(callback) = callback else {
        return Ok((
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response());
    };
    let valid = !callback.is_empty()
        && callback
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '$' | '.' | '[' | ']'));
    if !valid {
        return Err(ApiError::bad_request("Invalid 'jsonp' callback"));
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/javascript"),
        )],
        format!("{callback}({body});"),
    )
        .into_response())
}

/// Mesos's `model(Resources)`: cpus, gpus, mem and disk always, other scalars when present,
/// ranges as `"[a-b, c-d]"`.
pub fn summary(resources: &[Resource]) -> Value {
    let mut out = Map::new();
    for name in ["cpus", "gpus", "mem", "disk"] {
        out.insert(name.into(), json!(0.0));
    }
    let mut ranges: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for resource in resources {
        if let Some(scalar) = &resource.scalar {
            let entry = out.entry(resource.name.clone()).or_insert(json!(0.0));
            *entry = json!(entry.as_f64().unwrap_or(0.0) + scalar.value);
        } else if let Some(r) = &resource.ranges {
            ranges
                .entry(resource.name.clone())
                .or_default()
                .extend(r.range.iter().map(|r| format!("{}-{}", r.begin, r.end)));
        }
    }
    for (name, parts) in ranges {
        out.insert(name, json!(format!("[{}]", parts.join(", "))));
    }
    Value::Object(out)
}

fn proto_json<M: prost_reflect::ReflectMessage>(message: &M) -> Value {
    serde_json::from_str(&to_json(message)).unwrap_or(Value::Null)
}

fn task_model(task: &Task, role: Option<&str>) -> Value {
    let state = TaskState::try_from(task.state).map_or("TASK_UNKNOWN", |s| s.as_str_name());
    let statuses: Vec<Value> = task
        .statuses
        .iter()
        .map(|s| {
            json!({
                "state": TaskState::try_from(s.state).map_or("TASK_UNKNOWN", |s| s.as_str_name()),
                "timestamp": s.timestamp.unwrap_or(0.0),
            })
        })
        .collect();
    let mut model = json!({
        "id": task.task_id.value,
        "name": task.name,
        "framework_id": task.framework_id.value,
        "executor_id": task.executor_id.as_ref().map_or("", |e| e.value.as_str()),
        "slave_id": task.agent_id.value,
        "state": state,
        "resources": summary(&task.resources),
        "statuses": statuses,
    });
    if let Some(role) = role {
        model["role"] = json!(role);
    }
    if let Some(user) = &task.user {
        model["user"] = json!(user);
    }
    if let Some(labels) = &task.labels {
        model["labels"] = proto_json(labels)["labels"].clone();
    }
    model
}

/// Attributes as Mesos's model shows them: name → text or scalar value.
fn attributes_model(attributes: &[Attribute]) -> Map<String, Value> {
    attributes
        .iter()
        .map(|a| {
            let value = proto_json(a);
            let shown = value
                .get("text")
                .and_then(|t| t.get("value"))
                .or_else(|| value.get("scalar").and_then(|s| s.get("value")))
                .cloned()
                .unwrap_or(Value::Null);
            (a.name.clone(), shown)
        })
        .collect()
}

/// An agent recovered from the registry that has not re-registered (Mesos's `SlaveInfo`
/// model in `recovered_slaves`): its last `AgentInfo`, whose resources include the volumes and
/// disks the registry holds.
fn recovered_agent_model(id: &str, info: &AgentInfo) -> Value {
    json!({
        "id": id,
        "hostname": info.hostname,
        "port": info.port.unwrap_or(5051),
        "resources": summary(&info.resources),
        "resources_full": info.resources.iter().map(proto_json).collect::<Vec<_>>(),
        "attributes": attributes_model(&info.attributes),
    })
}

fn agent_model(m: &Master, id: &str, agent: &Agent) -> Value {
    let allocator = m.allocator();
    let alloc_id = AgentId(id.to_owned());
    let total = allocator
        .agent_total(&alloc_id)
        .map(convert::to_protos)
        .unwrap_or_default();
    let available = allocator
        .agent_available(&alloc_id)
        .cloned()
        .unwrap_or_default();
    let mut offered = ResourceSet::new();
    for offer in allocator.offers().filter(|o| o.agent.0 == id) {
        let _ = offered.add(&offer.resources);
    }
    let used: Vec<Resource> = allocator
        .agent_total(&alloc_id)
        .and_then(|t| t.checked_sub(&available).ok())
        .and_then(|t| t.checked_sub(&offered).ok())
        .map(|s| convert::to_protos(&s))
        .unwrap_or_default();
    let offered = convert::to_protos(&offered);
    let mut reserved: BTreeMap<String, Vec<Resource>> = BTreeMap::new();
    let mut unreserved = Vec::new();
    for resource in &total {
        match resource.reservations.last().and_then(|r| r.role.clone()) {
            Some(role) => reserved.entry(role).or_default().push(resource.clone()),
            None => unreserved.push(resource.clone()),
        }
    }
    let attributes = attributes_model(&agent.info.attributes);
    let list = |rs: &[Resource]| Value::Array(rs.iter().map(proto_json).collect());
    json!({
        "id": id,
        "pid": agent.pid(),
        "hostname": agent.info.hostname,
        "port": agent.address.1,
        "registered_time": epoch_secs(agent.registered_time),
        "reregistered_time": agent.reregistered_time.map(epoch_secs),
        "resources": summary(&total),
        "used_resources": summary(&used),
        "offered_resources": summary(&offered),
        "reserved_resources": reserved.iter().map(|(r, v)| (r.clone(), summary(v))).collect::<Map<_, _>>(),
        "unreserved_resources": summary(&unreserved),
        "attributes": attributes,
        "active": agent.connected(),
        "deactivated": false,
        "version": agent.version.clone().unwrap_or_default(),
        "capabilities": agent.capabilities.iter().map(|c| c.r#type().as_str_name()).collect::<Vec<_>>(),
        "reserved_resources_full": reserved.iter().map(|(r, v)| (r.clone(), list(v))).collect::<Map<_, _>>(),
        "unreserved_resources_full": list(&unreserved),
        "used_resources_full": list(&used),
        "offered_resources_full": list(&offered),
        "endpoint": agent.endpoint,
        // mesoblk's own: the agent's last device report (`DeviceStats.devices`).
        "mesoblk_devices": m.agent_device_stats(id).and_then(|s| proto_json(s).get("devices").cloned()).unwrap_or(json!([])),
    })
}

fn framework_model(m: &Master, id: &str, framework: &Framework) -> Value {
    let info = &framework.info;
    let tasks: Vec<&crate::state::TaskRecord> = m
        .tasks()
        .range((id.to_owned(), String::new())..)
        .take_while(|(k, _)| k.0 == id)
        .map(|(_, r)| r)
        .collect();
    let mut used = Vec::new();
    for record in tasks.iter().filter(|r| !is_done(&r.task)) {
        used.extend(record.task.resources.iter().cloned());
    }
    let offers: Vec<Value> = m
        .allocator()
        .offers()
        .filter(|o| o.framework.0 == id)
        .map(|o| {
            json!({
                "id": m.offer_id(o.id),
                "framework_id": id,
                "slave_id": o.agent.0,
                "resources": summary(&convert::to_protos(&o.resources)),
                "allocation_info": {"role": o.role},
            })
        })
        .collect();
    let mut offered = Vec::new();
    for offer in m.allocator().offers().filter(|o| o.framework.0 == id) {
        offered.extend(convert::to_protos(&offer.resources));
    }
    #[allow(deprecated)]
    let role = info.role.clone().unwrap_or_else(|| "*".into());
    json!({
        "id": id,
        "name": info.name,
        "pid": "",
        "used_resources": summary(&used),
        "offered_resources": summary(&offered),
        "resources": summary(&used),
        "allocated_resources": summary(&used),
        "capabilities": info.capabilities.iter().map(|c| c.r#type().as_str_name()).collect::<Vec<_>>(),
        "hostname": info.hostname.clone().unwrap_or_default(),
        "webui_url": info.webui_url.clone().unwrap_or_default(),
        "active": framework.active,
        "connected": framework.connection.is_some(),
        "recovered": framework.recovered,
        "user": info.user,
        "failover_timeout": info.failover_timeout.unwrap_or(0.0),
        "checkpoint": info.checkpoint.unwrap_or(false),
        "registered_time": epoch_secs(framework.registered_time),
        "reregistered_time": framework.reregistered_time.map_or(epoch_secs(framework.registered_time), epoch_secs),
        "unregistered_time": 0.0,
        "principal": info.principal,
        "role": role,
        "roles": crate::state::validation::framework_roles(info),
        "tasks": tasks.iter().map(|r| task_model(&r.task, Some(&r.role))).collect::<Vec<_>>(),
        "unreachable_tasks": [],
        "completed_tasks": framework.completed_tasks.iter().map(|t| task_model(t, None)).collect::<Vec<_>>(),
        "offers": offers,
        "executors": executors_model(m, id),
    })
}

/// The framework's custom executors on its agents, as Mesos's `/master/state` lists them
/// (launched here, or reported by a re-registering agent).
fn executors_model(m: &Master, framework_id: &str) -> Vec<Value> {
    m.agents()
        .iter()
        .flat_map(|(agent_id, agent)| {
            agent
                .executors
                .get(framework_id)
                .into_iter()
                .flat_map(|by_id| by_id.values())
                .map(move |e| {
                    json!({
                        "executor_id": e.info.executor_id.value,
                        "name": e.info.name.clone().unwrap_or_default(),
                        "framework_id": framework_id,
                        "command": e.info.command.as_ref().map_or(Value::Null, proto_json),
                        "resources": summary(&e.info.resources),
                        "role": e.role,
                        "slave_id": agent_id,
                    })
                })
        })
        .collect()
}

fn is_done(task: &Task) -> bool {
    TaskState::try_from(task.state).is_ok_and(crate::state::tasks::is_terminal)
}

/// The `/master/state` object.
pub fn state(m: &Master) -> Value {
    let version = version_info();
    let info = m.info();
    let connected = m.agents().values().filter(|a| a.connected()).count();
    let leader = info.pid.clone().unwrap_or_default();
    let flags: Map<String, Value> = m
        .config()
        .flags
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let completed: Vec<Value> = m
        .completed_frameworks()
        .iter()
        .map(|c| {
            json!({
                "id": c.info.id.as_ref().map_or("", |i| i.value.as_str()),
                "name": c.info.name,
                "user": c.info.user,
                "active": false,
                "connected": false,
                "recovered": false,
                "registered_time": epoch_secs(c.registered_time),
                "unregistered_time": epoch_secs(c.unregistered_time),
                "tasks": [],
                "completed_tasks": c.completed_tasks.iter().map(|t| task_model(t, None)).collect::<Vec<_>>(),
                "offers": [],
                "executors": [],
                "used_resources": summary(&[]),
                "offered_resources": summary(&[]),
            })
        })
        .collect();
    json!({
        "version": version.version,
        "git_tag": version.git_tag,
        "build_date": version.build_date,
        "build_time": version.build_time,
        "build_user": version.build_user,
        "start_time": epoch_secs(m.start_time()),
        "elected_time": epoch_secs(m.start_time()),
        "id": info.id,
        "pid": leader,
        "hostname": info.hostname,
        "activated_slaves": connected,
        "deactivated_slaves": m.agents().len() - connected,
        "unreachable_slaves": m.removed_agents().len(),
        "leader": leader,
        "leader_info": proto_json(info),
        "flags": flags,
        "slaves": m.agents().iter().map(|(id, a)| agent_model(m, id, a)).collect::<Vec<_>>(),
        "recovered_slaves": m.recovered_agents().iter().map(|(id, info)| recovered_agent_model(id, info)).collect::<Vec<_>>(),
        "frameworks": m.frameworks().iter().map(|(id, f)| framework_model(m, id, f)).collect::<Vec<_>>(),
        "completed_frameworks": completed,
        "orphan_tasks": [],
        "unregistered_frameworks": [],
    })
}

/// Query of `/master/state`.
#[derive(Debug, serde::Deserialize)]
pub struct StateQuery {
    /// JSONP callback.
    jsonp: Option<String>,
}

/// `GET /master/state` and `/master/state.json`.
pub async fn state_handler(
    State(master): State<MasterHandle>,
    Query(query): Query<StateQuery>,
) -> Response {
    let body = master.with(|m| state(m)).to_string();
    jsonp(body, query.jsonp.as_deref()).unwrap_or_else(IntoResponse::into_response)
}

#[cfg(test)]
mod tests {
    use mesoblk_proto::mesos::v1::{value, Resource};

    use super::*;

    #[test]
    fn summaries_have_the_four_scalars_and_ranges_as_text() {
        let ports = Resource {
            name: "ports".into(),
            r#type: value::Type::Ranges as i32,
            ranges: Some(value::Ranges {
                range: vec![value::Range {
                    begin: 31000,
                    end: 32000,
                }],
            }),
            ..Default::default()
        };
        assert_eq!(
            summary(&[ports]),
            json!({"cpus":0.0,"gpus":0.0,"mem":0.0,"disk":0.0,"ports":"[31000-32000]"})
        );
    }

    #[test]
    fn jsonp_wraps_and_refuses_odd_callbacks() {
        assert!(jsonp("{}".into(), Some("angular.callbacks._0")).is_ok());
        assert!(jsonp("{}".into(), Some("alert(1)//")).is_err());
    }
}
