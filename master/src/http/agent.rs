//! The agent protocol's HTTP side (`proto/mesoblk/agent/v1/agent.proto` documents it):
//!
//! | path | body | answer |
//! |---|---|---|
//! | `POST /agent/v1/register` | `RegisterAgent` | 200 `Registered` |
//! | `POST /agent/v1/reregister` | `ReregisterAgent` | 200 `Registered` |
//! | `POST /agent/v1/subscribe` | `Subscribe` | 200, chunked RecordIO of `Event` |
//! | `POST /agent/v1/pong` | `Pong` | 202 |
//! | `POST /agent/v1/status_update` | `StatusUpdate` | 202 |
//! | `POST /agent/v1/operation_status` | `OperationStatusUpdate` | 202 |
//! | `POST /agent/v1/device_stats` | `DeviceStats` | 202 |
//! | `POST /agent/v1/framework_message` | `ExecutorMessage` | 202 |
//!
//! Bodies are protobuf or JSON by `Content-Type` (400 without, 415 for anything else); answers
//! follow `Accept` (406 when neither fits). Other methods get 405, undecodable bodies 400, a
//! message naming an agent the master does not know 403 (the agent then registers again).

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use mesoblk_proto::codec::{ContentType, DecodeError};
use mesoblk_proto::mesoblk::agent::v1 as agent;
use prost_reflect::ReflectMessage;

use super::{request_content_type, response_content_type};
use crate::error::ApiError;
use crate::state::MasterHandle;

/// The agent protocol's routes.
pub fn routes() -> Router<MasterHandle> {
    Router::new()
        .route("/agent/v1/register", any(register))
        .route("/agent/v1/reregister", any(reregister))
        .route("/agent/v1/subscribe", any(subscribe))
        .route("/agent/v1/pong", any(pong))
        .route("/agent/v1/status_update", any(status_update))
        .route("/agent/v1/operation_status", any(operation_status))
        .route("/agent/v1/device_stats", any(device_stats))
        .route("/agent/v1/framework_message", any(framework_message))
}

/// Checks the method and decodes the body as `M`, with the status codes of the module docs.
fn decode<M: ReflectMessage + Default>(
    method: &Method,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<M, ApiError> {
    if method != Method::POST {
        return Err(ApiError::post_only(method.as_str()));
    }
    let content_type = request_content_type(headers)?;
    let name = M::default().descriptor().name().to_owned();
    content_type.decode(body).map_err(|e| {
        let detail = match e {
            DecodeError::Json(e) => e.to_string(),
            DecodeError::Protobuf(e) => e,
            other => other.to_string(),
        };
        ApiError::bad_request(format!("Failed to parse body into {name}: {detail}"))
    })
}

fn reply<M: ReflectMessage>(accept: ContentType, message: &M) -> Response {
    let mut response = Response::new(Body::from(accept.encode(message)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(accept.as_str()),
    );
    response
}

fn answer(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(IntoResponse::into_response)
}

/// A message the master takes and answers with 202 Accepted: decoded as `M`, applied by
/// `apply`.
fn accepted<M: ReflectMessage + Default>(
    master: &MasterHandle,
    method: &Method,
    headers: &HeaderMap,
    body: &[u8],
    apply: impl FnOnce(&mut crate::state::Master, M) -> Result<(), ApiError>,
) -> Response {
    answer((|| {
        let message: M = decode(method, headers, body)?;
        master.with(|m| apply(m, message))?;
        Ok(StatusCode::ACCEPTED.into_response())
    })())
}

async fn register(
    State(master): State<MasterHandle>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    answer((|| {
        let message: agent::RegisterAgent = decode(&method, &headers, &body)?;
        let accept = response_content_type(&headers)?;
        let registered = master.with(|m| m.register_agent(message))?;
        Ok(reply(accept, &registered))
    })())
}

async fn reregister(
    State(master): State<MasterHandle>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    answer((|| {
        let message: agent::ReregisterAgent = decode(&method, &headers, &body)?;
        let accept = response_content_type(&headers)?;
        let registered = master.with(|m| m.reregister_agent(message))?;
        Ok(reply(accept, &registered))
    })())
}

async fn subscribe(
    State(master): State<MasterHandle>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    answer((|| {
        let message: agent::Subscribe = decode(&method, &headers, &body)?;
        let accept = response_content_type(&headers)?;
        let stream = master.subscribe_agent(&message, accept)?;
        Ok(super::stream_response(stream, accept))
    })())
}

async fn pong(
    State(master): State<MasterHandle>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    accepted(
        &master,
        &method,
        &headers,
        &body,
        |m, message: agent::Pong| m.pong(&message),
    )
}

async fn status_update(
    State(master): State<MasterHandle>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    accepted(
        &master,
        &method,
        &headers,
        &body,
        |m, message: agent::StatusUpdate| m.status_update(message),
    )
}

async fn operation_status(
    State(master): State<MasterHandle>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    accepted(
        &master,
        &method,
        &headers,
        &body,
        |m, message: agent::OperationStatusUpdate| m.operation_status(message),
    )
}

async fn device_stats(
    State(master): State<MasterHandle>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    accepted(
        &master,
        &method,
        &headers,
        &body,
        |m, message: agent::DeviceStats| m.device_stats(message),
    )
}

async fn framework_message(
    State(master): State<MasterHandle>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    accepted(
        &master,
        &method,
        &headers,
        &body,
        |m, message: agent::ExecutorMessage| m.executor_message(message),
    )
}
