//! `POST /api/v1`: the operator API, checked in the order of Mesos's `Master::Http::api`
//! (method 405, `Content-Type` 400/415, body 400, validation 400, `Accept` 406), answering
//! `200 {"type":X,"<x>":{…}}` in the negotiated encoding.
//!
//! Implemented: GET_HEALTH, GET_FLAGS, GET_VERSION, GET_METRICS, GET_STATE, GET_AGENTS,
//! GET_FRAMEWORKS, GET_EXECUTORS, GET_OPERATIONS, GET_TASKS, GET_ROLES, GET_WEIGHTS,
//! UPDATE_WEIGHTS, GET_MASTER, GET_QUOTA, UPDATE_QUOTA, TEARDOWN, over the real agents, tasks,
//! executors and operations, and SUBSCRIBE: a chunked RecordIO stream in the negotiated
//! encoding (no `Mesos-Stream-Id`, as in Mesos) of SUBSCRIBED with GET_STATE, the master's
//! events (`crate::state::operator_events`) and HEARTBEAT every heartbeat interval. The other
//! calls (maintenance, volumes, files, logging) answer 501.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use mesoblk_proto::codec::ContentType;
use mesoblk_proto::mesos::v1::master::{
    call, event, response, Call, Event as MasterEvent, Response as MasterResponse,
};
use mesoblk_proto::mesos::v1::quota::QuotaStatus;
use mesoblk_proto::mesos::v1::{AgentId, Flag, FrameworkId, Metric, Role, WeightInfo};

use super::{decode_call, request_content_type, response_content_type, version_info};
use crate::error::ApiError;
use crate::state::operator_events::operator_event;
use crate::state::{epoch_secs, time_info, validation, Master, MasterHandle};
use crate::stream::EventStream;

/// Axum handler.
pub async fn handle(
    State(master): State<MasterHandle>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match handle_call(&master, &method, &headers, &body) {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

fn handle_call(
    master: &MasterHandle,
    method: &Method,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    if method != Method::POST {
        return Err(ApiError::post_only(method.as_str()));
    }
    let content_type = request_content_type(headers)?;
    let call: Call = decode_call(content_type, body)?;
    let kind = validate(&call)
        .map_err(|e| ApiError::bad_request(format!("Failed to validate master::Call: {e}")))?;
    let accept = response_content_type(headers)?;
    tracing::info!(call = ?kind, "processing operator call");
    if kind == call::Type::Subscribe {
        return Ok(subscribe(master, accept));
    }
    master.with(|m| answer(m, kind, call, accept))
}

/// SUBSCRIBE: 200 and the subscriber's event stream, SUBSCRIBED first.
fn subscribe(master: &MasterHandle, accept: ContentType) -> Response {
    let (events, interval) = master.with(|m| {
        let interval = m.config().heartbeat_interval;
        let subscribed = MasterEvent {
            subscribed: Some(event::Subscribed {
                get_state: Some(get_state(m)),
                heartbeat_interval_seconds: Some(interval.as_secs_f64()),
            }),
            ..operator_event(event::Type::Subscribed)
        };
        (m.add_operator_subscriber(subscribed), interval)
    });
    let heartbeat = (interval, operator_event(event::Type::Heartbeat));
    let stream = EventStream::new(events, accept, Some(heartbeat), None).delay_first_heartbeat();
    super::stream_response(stream, accept)
}

fn reply(accept: ContentType, response: &MasterResponse) -> Response {
    let body = accept.encode(response);
    let mut http = Response::new(Body::from(body));
    http.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(accept.as_str()),
    );
    http
}

fn typed(kind: response::Type) -> MasterResponse {
    MasterResponse {
        r#type: Some(kind as i32),
        ..Default::default()
    }
}

fn answer(
    m: &mut Master,
    kind: call::Type,
    call: Call,
    accept: ContentType,
) -> Result<Response, ApiError> {
    use call::Type as T;
    use response::Type as R;
    let response = match kind {
        T::GetHealth => MasterResponse {
            get_health: Some(response::GetHealth { healthy: true }),
            ..typed(R::GetHealth)
        },
        T::GetFlags => MasterResponse {
            get_flags: Some(response::GetFlags {
                flags: m
                    .config()
                    .flags
                    .iter()
                    .map(|(name, value)| Flag {
                        name: name.clone(),
                        value: Some(value.clone()),
                    })
                    .collect(),
            }),
            ..typed(R::GetFlags)
        },
        T::GetVersion => MasterResponse {
            get_version: Some(response::GetVersion {
                version_info: version_info(),
            }),
            ..typed(R::GetVersion)
        },
        T::GetMetrics => MasterResponse {
            get_metrics: Some(response::GetMetrics {
                metrics: metrics(m),
            }),
            ..typed(R::GetMetrics)
        },
        T::GetState => MasterResponse {
            get_state: Some(get_state(m)),
            ..typed(R::GetState)
        },
        T::GetAgents => MasterResponse {
            get_agents: Some(get_agents(m)),
            ..typed(R::GetAgents)
        },
        T::GetFrameworks => MasterResponse {
            get_frameworks: Some(get_frameworks(m)),
            ..typed(R::GetFrameworks)
        },
        T::GetExecutors => MasterResponse {
            get_executors: Some(get_executors(m)),
            ..typed(R::GetExecutors)
        },
        T::GetOperations => MasterResponse {
            get_operations: Some(response::GetOperations {
                operations: m
                    .operations()
                    .values()
                    .map(|r| r.operation.clone())
                    .collect(),
            }),
            ..typed(R::GetOperations)
        },
        T::GetTasks => MasterResponse {
            get_tasks: Some(get_tasks(m)),
            ..typed(R::GetTasks)
        },
        T::GetRoles => MasterResponse {
            get_roles: Some(response::GetRoles { roles: roles(m) }),
            ..typed(R::GetRoles)
        },
        T::GetWeights => MasterResponse {
            get_weights: Some(response::GetWeights {
                weight_infos: m
                    .weights()
                    .iter()
                    .map(|(role, weight)| WeightInfo {
                        weight: *weight,
                        role: Some(role.clone()),
                    })
                    .collect(),
            }),
            ..typed(R::GetWeights)
        },
        T::UpdateWeights => {
            let infos = call.update_weights.unwrap_or_default().weight_infos;
            m.update_weights(
                infos
                    .into_iter()
                    .map(|w| (w.role.unwrap_or_default(), w.weight))
                    .collect(),
            )?;
            return Ok(StatusCode::OK.into_response());
        }
        T::GetMaster => {
            let now = epoch_secs(m.start_time());
            MasterResponse {
                get_master: Some(response::GetMaster {
                    master_info: Some(m.info().clone()),
                    start_time: Some(now),
                    elected_time: Some(now),
                }),
                ..typed(R::GetMaster)
            }
        }
        T::GetQuota => MasterResponse {
            get_quota: Some(response::GetQuota {
                status: QuotaStatus {
                    configs: m.quotas().values().cloned().collect(),
                    ..Default::default()
                },
            }),
            ..typed(R::GetQuota)
        },
        T::UpdateQuota => {
            m.update_quota(call.update_quota.unwrap_or_default().quota_configs)?;
            return Ok(StatusCode::OK.into_response());
        }
        T::Teardown => {
            let id = call
                .teardown
                .map(|t| t.framework_id.value)
                .unwrap_or_default();
            if !m.remove_framework(&id) {
                return Err(ApiError::bad_request(
                    "No framework found with specified ID",
                ));
            }
            return Ok(StatusCode::OK.into_response());
        }
        T::MarkAgentGone => {
            let id = call
                .mark_agent_gone
                .map(|c| c.agent_id.value)
                .unwrap_or_default();
            m.mark_agent_gone(&id)?;
            return Ok(StatusCode::OK.into_response());
        }
        T::Unknown => return Err(ApiError::not_implemented("Received 'UNKNOWN' call")),
        other => {
            return Err(ApiError::not_implemented(format!(
                "{} is not implemented by mesoblk yet",
                other.as_str_name()
            )))
        }
    };
    Ok(reply(accept, &response))
}

/// GET_FRAMEWORKS: registered frameworks (connected or not) with their offers and resources,
/// and the removed ones remembered.
pub fn get_frameworks(m: &Master) -> response::GetFrameworks {
    let frameworks = m
        .frameworks()
        .keys()
        .filter_map(|id| m.framework_view(id))
        .collect();
    let completed_frameworks = m
        .completed_frameworks()
        .iter()
        .map(|c| response::get_frameworks::Framework {
            framework_info: c.info.clone(),
            active: false,
            connected: false,
            recovered: false,
            registered_time: Some(time_info(c.registered_time)),
            unregistered_time: Some(time_info(c.unregistered_time)),
            ..Default::default()
        })
        .collect();
    response::GetFrameworks {
        frameworks,
        completed_frameworks,
        ..Default::default()
    }
}

/// GET_STATE: tasks, executors, frameworks and agents in one answer.
pub fn get_state(m: &Master) -> response::GetState {
    response::GetState {
        get_tasks: Some(get_tasks(m)),
        get_executors: Some(get_executors(m)),
        get_frameworks: Some(get_frameworks(m)),
        get_agents: Some(get_agents(m)),
    }
}

/// GET_AGENTS: every registered agent with its total, allocated and offered resources.
pub fn get_agents(m: &Master) -> response::GetAgents {
    let agents = m
        .agents()
        .keys()
        .filter_map(|id| m.agent_view(id))
        .collect();
    response::GetAgents {
        agents,
        recovered_agents: m.recovered_agents().values().cloned().collect(),
    }
}

/// GET_TASKS: live tasks, and every framework's completed ones.
pub fn get_tasks(m: &Master) -> response::GetTasks {
    let tasks = m.tasks().values().map(|r| r.task.clone()).collect();
    let mut completed_tasks: Vec<_> = m
        .frameworks()
        .values()
        .flat_map(|f| f.completed_tasks.iter().cloned())
        .collect();
    completed_tasks.extend(
        m.completed_frameworks()
            .iter()
            .flat_map(|f| f.completed_tasks.iter().cloned()),
    );
    #[allow(deprecated)]
    response::GetTasks {
        pending_tasks: Vec::new(),
        tasks,
        unreachable_tasks: Vec::new(),
        completed_tasks,
        orphan_tasks: Vec::new(),
    }
}

/// GET_EXECUTORS: the executors the master knows on its agents.
pub fn get_executors(m: &Master) -> response::GetExecutors {
    let executors = m
        .agents()
        .iter()
        .flat_map(|(id, agent)| {
            agent.executors.values().flat_map(move |by_id| {
                by_id
                    .values()
                    .map(move |e| response::get_executors::Executor {
                        executor_info: e.info.clone(),
                        agent_id: AgentId { value: id.clone() },
                    })
            })
        })
        .collect();
    #[allow(deprecated)]
    response::GetExecutors {
        executors,
        orphan_executors: Vec::new(),
    }
}

/// GET_ROLES: every role with a framework or a weight.
fn roles(m: &Master) -> Vec<Role> {
    let mut roles: std::collections::BTreeMap<String, Vec<FrameworkId>> =
        std::collections::BTreeMap::new();
    for (id, framework) in m.frameworks() {
        for role in validation::framework_roles(&framework.info) {
            roles
                .entry(role)
                .or_default()
                .push(FrameworkId { value: id.clone() });
        }
    }
    for role in m.weights().keys() {
        roles.entry(role.clone()).or_default();
    }
    roles
        .into_iter()
        .map(|(name, frameworks)| Role {
            weight: m.weights().get(&name).copied().unwrap_or(1.0),
            name,
            frameworks,
            resources: Vec::new(),
        })
        .collect()
}

/// GET_METRICS: the `/metrics/snapshot` values.
fn metrics(m: &Master) -> Vec<Metric> {
    super::metrics::snapshot(m)
        .into_iter()
        .map(|(name, value)| Metric {
            name,
            value: Some(value),
        })
        .collect()
}

/// Mesos's `validation::master::call::validate` for the calls that need a body.
pub fn validate(call: &Call) -> Result<call::Type, String> {
    use call::Type as T;
    let Some(kind) = call.r#type.and_then(|t| T::try_from(t).ok()) else {
        return Err("Expecting 'type' to be present".into());
    };
    let body = match kind {
        T::GetMetrics => Some((call.get_metrics.is_some(), "get_metrics")),
        T::SetLoggingLevel => Some((call.set_logging_level.is_some(), "set_logging_level")),
        T::ListFiles => Some((call.list_files.is_some(), "list_files")),
        T::ReadFile => Some((call.read_file.is_some(), "read_file")),
        T::UpdateWeights => Some((call.update_weights.is_some(), "update_weights")),
        T::ReserveResources => Some((call.reserve_resources.is_some(), "reserve_resources")),
        T::UnreserveResources => Some((call.unreserve_resources.is_some(), "unreserve_resources")),
        T::CreateVolumes => Some((call.create_volumes.is_some(), "create_volumes")),
        T::DestroyVolumes => Some((call.destroy_volumes.is_some(), "destroy_volumes")),
        T::GrowVolume => Some((call.grow_volume.is_some(), "grow_volume")),
        T::ShrinkVolume => Some((call.shrink_volume.is_some(), "shrink_volume")),
        T::StartMaintenance => Some((call.start_maintenance.is_some(), "start_maintenance")),
        T::StopMaintenance => Some((call.stop_maintenance.is_some(), "stop_maintenance")),
        T::DrainAgent => Some((call.drain_agent.is_some(), "drain_agent")),
        T::DeactivateAgent => Some((call.deactivate_agent.is_some(), "deactivate_agent")),
        T::ReactivateAgent => Some((call.reactivate_agent.is_some(), "reactivate_agent")),
        T::UpdateQuota => Some((call.update_quota.is_some(), "update_quota")),
        T::Teardown => Some((call.teardown.is_some(), "teardown")),
        T::MarkAgentGone => Some((call.mark_agent_gone.is_some(), "mark_agent_gone")),
        _ => None,
    };
    match body {
        Some((false, name)) => Err(format!("Expecting '{name}' to be present")),
        _ => Ok(kind),
    }
}
