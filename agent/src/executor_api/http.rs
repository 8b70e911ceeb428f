//! `POST /api/v1/executor`, answered as Mesos's agent answers it (`Http::executor`): not POST →
//! 405; no `Content-Type` → 400; neither JSON nor protobuf → 415; a body that does not decode
//! or a call that does not validate → 400; SUBSCRIBE without an acceptable media type → 406;
//! the agent still recovering ([`super::ExecutorApi::recover`] not called yet) → 503; an
//! unknown framework or executor → 400; SUBSCRIBE → 200 and a RecordIO stream of events in
//! the negotiated encoding; UPDATE, MESSAGE, HEARTBEAT → 202 with an empty body.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use mesoblk_proto::codec::ContentType;
use mesoblk_proto::mesos::v1::executor::{call, Call, Event};
use mesoblk_proto::mesos::v1::task_status::{Reason, Source};
use mesoblk_proto::mesos::v1::TaskState;
use mesoblk_proto::recordio;
use tokio::sync::mpsc;

use super::events;
use super::registry::{Connection, ExecutorEntry, ExecutorKey, Inner, Termination};
use super::ExecutorPhase;
use crate::status::status_uuid;

fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    (status, message.into()).into_response()
}

/// The endpoint's handler.
pub(super) async fn executor_endpoint(
    State(inner): State<Arc<Inner>>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if method != Method::POST {
        let mut response = refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("Expecting a 'POST' request, received '{method}'"),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    let Some(content_type) = headers.get(header::CONTENT_TYPE) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "Expecting 'Content-Type' to be present",
        );
    };
    let Some(content_type) = content_type
        .to_str()
        .ok()
        .and_then(ContentType::from_content_type)
    else {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Expecting 'Content-Type' of application/json or application/x-protobuf",
        );
    };
    let call: Call = match content_type.decode(&body) {
        Ok(call) => call,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("Failed to parse body into Call protobuf: {e}"),
            )
        }
    };
    if let Err(e) = validate(&call) {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("Failed to validate v1::executor::Call: {e}"),
        );
    }
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let encoding = ContentType::negotiate(accept);
    if call.r#type() == call::Type::Subscribe && encoding.is_none() {
        return refuse(
            StatusCode::NOT_ACCEPTABLE,
            "Expecting 'Accept' to allow application/json or application/x-protobuf",
        );
    }
    if !inner.recovered.load(Ordering::SeqCst) {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "Agent has not finished recovery",
        );
    }
    let key = ExecutorKey {
        framework_id: call.framework_id.value.clone(),
        executor_id: call.executor_id.value.clone(),
    };
    let mut registry = inner.lock();
    if !registry
        .executors
        .keys()
        .any(|k| k.framework_id == key.framework_id)
    {
        return refuse(StatusCode::BAD_REQUEST, "Framework cannot be found");
    }
    let connection_id = registry.next_connection;
    let Some(entry) = registry.executors.get_mut(&key) else {
        return refuse(StatusCode::BAD_REQUEST, "Executor cannot be found");
    };
    match call.r#type() {
        call::Type::Subscribe => {
            let (tx, rx) = mpsc::unbounded_channel();
            let subscribe = call.subscribe.unwrap_or_default();
            subscribe_executor(&inner, &key, entry, connection_id, tx, subscribe);
            registry.next_connection += 1;
            drop(registry);
            stream(encoding.unwrap_or(ContentType::Json), rx)
        }
        call::Type::Update => {
            let status = call.update.map(|u| u.status).unwrap_or_default();
            inner.executor_update(&key, entry, status);
            StatusCode::ACCEPTED.into_response()
        }
        call::Type::Message => {
            let data = call.message.map(|m| m.data).unwrap_or_default();
            inner.executor_message(&key, data);
            StatusCode::ACCEPTED.into_response()
        }
        call::Type::Heartbeat => StatusCode::ACCEPTED.into_response(),
        call::Type::Unknown => refuse(StatusCode::BAD_REQUEST, "Expecting 'type' to be present"),
    }
}

/// Mesos's `validation::executor::call::validate`.
fn validate(call: &Call) -> Result<(), String> {
    if call.framework_id.value.is_empty() {
        return Err("Expecting 'framework_id' to be present".into());
    }
    if call.executor_id.value.is_empty() {
        return Err("Expecting 'executor_id' to be present".into());
    }
    match call.r#type {
        None => return Err("Expecting 'type' to be present".into()),
        Some(t) if call::Type::try_from(t).is_err() => {
            return Err(format!("Unknown call type {t}"))
        }
        _ => {}
    }
    match call.r#type() {
        call::Type::Subscribe if call.subscribe.is_none() => {
            Err("Expecting 'subscribe' to be present".into())
        }
        call::Type::Message if call.message.is_none() => {
            Err("Expecting 'message' to be present".into())
        }
        call::Type::Update => {
            let status = &call
                .update
                .as_ref()
                .ok_or("Expecting 'update' to be present")?
                .status;
            if status.uuid.is_none() {
                return Err("Expecting 'uuid' to be present".into());
            }
            if status_uuid(status).is_none() {
                return Err("'uuid' is not a valid UUID (16 bytes)".into());
            }
            if let Some(id) = &status.executor_id {
                if id.value != call.executor_id.value {
                    return Err(format!(
                        "ExecutorID in Call: {} does not match ExecutorID in TaskStatus: {}",
                        call.executor_id.value, id.value
                    ));
                }
            }
            if status.source() != Source::Executor {
                return Err(format!(
                    "Received Call from executor {} of framework {} with invalid source, \
                     expecting 'SOURCE_EXECUTOR'",
                    call.executor_id.value, call.framework_id.value
                ));
            }
            if status.state() == TaskState::TaskStaging {
                return Err(format!(
                    "Received TASK_STAGING from executor {} of framework {} which is not allowed",
                    call.executor_id.value, call.framework_id.value
                ));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// A (re-)subscription (Mesos's `Slave::subscribe`).
fn subscribe_executor(
    inner: &Inner,
    key: &ExecutorKey,
    entry: &mut ExecutorEntry,
    connection_id: u64,
    events_tx: mpsc::UnboundedSender<Event>,
    subscribe: call::Subscribe,
) {
    let connection = Connection {
        events: events_tx,
        last_heartbeat: Instant::now(),
    };
    if entry.phase == ExecutorPhase::Terminating {
        // Mesos: an executor subscribing while it is being shut down is told to shut down.
        tracing::warn!(executor = %key, "subscription of a terminating executor: SHUTDOWN");
        let _ = connection.events.send(events::shutdown());
        return;
    }
    if entry.connection.is_some() {
        tracing::info!(executor = %key, "closing the executor's older connection");
    }
    let recovered = entry.phase == ExecutorPhase::Recovering;
    entry.connection = Some(connection);
    entry.phase = ExecutorPhase::Running;
    entry.subscribe_by = None;
    tracing::info!(executor = %key, connection = connection_id, recovered, "executor subscribed");
    let subscribed = events::subscribed(
        &entry.info,
        &entry.framework,
        &inner.config.agent_info,
        &entry.run.container_id,
    );
    entry.send(subscribed);
    if recovered {
        lose_unknown_tasks(inner, key, entry, &subscribe);
    }
    for work in std::mem::take(&mut entry.queued) {
        entry.deliver(&work);
    }
    for update in subscribe.unacknowledged_updates {
        if update.status.source() == Source::Executor && status_uuid(&update.status).is_some() {
            inner.executor_update(key, entry, update.status);
        }
    }
}

/// After an agent restart: tasks the agent launched, that the executor never reported on and
/// does not list as unacknowledged, never reached it (Mesos: "Task launched during agent
/// restart").
fn lose_unknown_tasks(
    inner: &Inner,
    key: &ExecutorKey,
    entry: &mut ExecutorEntry,
    subscribe: &call::Subscribe,
) {
    let known: Vec<&str> = subscribe
        .unacknowledged_tasks
        .iter()
        .map(|t| t.task_id.value.as_str())
        .collect();
    let lost = Termination {
        state: entry.lost_state(),
        reason: Reason::AgentRestarted,
        message: "Task launched during agent restart".to_string(),
    };
    let gone: Vec<String> = entry
        .tasks
        .iter()
        .filter(|(id, t)| {
            t.launched && t.state == TaskState::TaskStaging && !known.contains(&id.as_str())
        })
        .map(|(id, _)| id.clone())
        .collect();
    if gone.is_empty() {
        return;
    }
    let mut released = Vec::new();
    for task_id in gone {
        released.extend(entry.tasks.remove(&task_id).into_iter().flat_map(|t| t.io));
        inner.agent_update(&key.framework_id, &key.executor_id, &task_id, &lost);
        let _ = super::recovery::write_task_state(
            &inner.checkpointer,
            &entry.run,
            &task_id,
            lost.state,
        );
    }
    // As any end of a task: the group shrinks to the tasks left.
    inner.shrink(entry, &released);
}

/// The 200 response: the events as RecordIO frames, as long as the connection lives.
fn stream(encoding: ContentType, rx: mpsc::UnboundedReceiver<Event>) -> Response {
    let frames = futures::stream::unfold(rx, move |mut rx| async move {
        let event = rx.recv().await?;
        let frame = Bytes::from(recordio::encode(&encoding.encode(&event)));
        Some((Ok::<_, Infallible>(frame), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, encoding.as_str())
        .body(Body::from_stream(frames))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[cfg(test)]
mod tests {
    use mesoblk_proto::mesos::v1::{ExecutorId, FrameworkId, TaskId, TaskStatus};

    use super::*;

    /// A change to a valid status.
    type Edit = fn(&mut TaskStatus);

    fn update(edit: impl FnOnce(&mut TaskStatus)) -> Call {
        let mut status = TaskStatus {
            task_id: TaskId { value: "t".into() },
            state: TaskState::TaskRunning as i32,
            source: Some(Source::Executor as i32),
            uuid: Some(vec![7; 16]),
            ..TaskStatus::default()
        };
        edit(&mut status);
        Call {
            r#type: Some(call::Type::Update as i32),
            framework_id: FrameworkId { value: "f".into() },
            executor_id: ExecutorId { value: "e".into() },
            update: Some(call::Update { status }),
            ..Call::default()
        }
    }

    #[test]
    fn updates_are_validated_like_mesos() {
        assert_eq!(validate(&update(|_| {})), Ok(()));
        let refused: [(&str, Edit); 5] = [
            ("Expecting 'uuid'", |s| s.uuid = None),
            ("not a valid UUID", |s| s.uuid = Some(vec![1; 15])),
            ("does not match ExecutorID", |s| {
                s.executor_id = Some(ExecutorId { value: "x".into() })
            }),
            ("expecting 'SOURCE_EXECUTOR'", |s| {
                s.source = Some(Source::Agent as i32)
            }),
            ("TASK_STAGING", |s| s.state = TaskState::TaskStaging as i32),
        ];
        for (want, edit) in refused {
            let error = validate(&update(edit)).unwrap_err();
            assert!(error.contains(want), "{error:?} should say {want:?}");
        }
    }

    #[test]
    fn calls_need_ids_a_known_type_and_their_body() {
        let mut call = update(|_| {});
        call.framework_id.value.clear();
        assert!(validate(&call).unwrap_err().contains("framework_id"));
        let mut call = update(|_| {});
        call.r#type = Some(99);
        assert!(validate(&call).unwrap_err().contains("Unknown call type"));
        let mut call = update(|_| {});
        call.r#type = Some(call::Type::Message as i32);
        assert!(validate(&call).unwrap_err().contains("'message'"));
        call.r#type = Some(call::Type::Subscribe as i32);
        assert!(validate(&call).unwrap_err().contains("'subscribe'"));
        call.r#type = Some(call::Type::Heartbeat as i32);
        assert_eq!(validate(&call), Ok(()));
    }
}
