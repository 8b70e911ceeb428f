//! `POST /api/v1/scheduler`, in the order Mesos's `Master::Http::scheduler` checks things:
//!
//! 1. method: anything but POST → 405;
//! 2. `Content-Type`: missing → 400, not exactly JSON or protobuf → 415;
//! 3. body: undecodable → 400 (`Failed to parse body into JSON: …`, `Failed to convert JSON
//!    into Call protobuf: …`, `Failed to parse body into Call protobuf`);
//! 4. call validation → 400 `Failed to validate scheduler::Call: …`;
//! 5. for SUBSCRIBE (and RECONCILE_OPERATIONS), `Accept` → 406 when neither type is acceptable;
//! 6. SUBSCRIBE with a `Mesos-Stream-Id` → 400; otherwise 200 with a chunked RecordIO stream,
//!    `Mesos-Stream-Id` and `Content-Type` from `Accept`;
//! 7. other calls: unknown framework → 400, not subscribed → 403, stream id missing or
//!    different → 400; then 202 with an empty body (UPDATE_FRAMEWORK: 200), UNKNOWN → 501.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use mesoblk_proto::mesos::v1::scheduler::{call, Call};
use tracing::debug;

use super::{decode_call, header_str, request_content_type, response_content_type};
use crate::error::ApiError;
use crate::state::MasterHandle;

/// The stream id header.
pub const MESOS_STREAM_ID: &str = "Mesos-Stream-Id";

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
        .map_err(|e| ApiError::bad_request(format!("Failed to validate scheduler::Call: {e}")))?;
    debug!(call = ?kind, "scheduler call");

    if kind == call::Type::Subscribe || kind == call::Type::ReconcileOperations {
        // Mesos negotiates only for calls whose answer has a body.
        response_content_type(headers)?;
    }
    if kind == call::Type::Subscribe {
        if headers.contains_key(MESOS_STREAM_ID) {
            return Err(ApiError::bad_request(
                "Subscribe calls should not include the 'Mesos-Stream-Id' header",
            ));
        }
        let accept = response_content_type(headers)?;
        let subscribe = call.subscribe.unwrap_or_default();
        let (stream_id, stream) = master.subscribe(subscribe, accept);
        let mut response = super::stream_response(stream, accept);
        if let Ok(value) = HeaderValue::from_str(&stream_id) {
            response.headers_mut().insert(MESOS_STREAM_ID, value);
        }
        return Ok(response);
    }

    let framework_id = call
        .framework_id
        .as_ref()
        .map(|id| id.value.clone())
        .unwrap_or_default();
    let stream_id = header_str(headers, MESOS_STREAM_ID).map(str::to_owned);
    // A header that is present but not text can never match a stream id.
    let stream_id = stream_id.or_else(|| headers.contains_key(MESOS_STREAM_ID).then(String::new));
    master.with(|m| {
        m.authorize_call(&framework_id, stream_id.as_deref())?;
        dispatch(m, &framework_id, kind, call)
    })
}

fn accepted() -> Response {
    StatusCode::ACCEPTED.into_response()
}

fn dispatch(
    m: &mut crate::state::Master,
    framework_id: &str,
    kind: call::Type,
    call: Call,
) -> Result<Response, ApiError> {
    use call::Type as T;
    match kind {
        T::Subscribe => Err(ApiError::bad_request("Unexpected 'SUBSCRIBE' call")),
        T::Teardown => {
            m.remove_framework(framework_id);
            Ok(accepted())
        }
        T::Accept => {
            m.accept(framework_id, call.accept.unwrap_or_default());
            Ok(accepted())
        }
        T::Decline => {
            m.decline(framework_id, &call.decline.unwrap_or_default());
            Ok(accepted())
        }
        T::AcceptInverseOffers => {
            m.accept_inverse_offers(
                framework_id,
                &call.accept_inverse_offers.unwrap_or_default(),
            );
            Ok(accepted())
        }
        T::DeclineInverseOffers => {
            m.decline_inverse_offers(
                framework_id,
                &call.decline_inverse_offers.unwrap_or_default(),
            );
            Ok(accepted())
        }
        T::Revive => {
            m.revive(framework_id, call.revive.as_ref());
            Ok(accepted())
        }
        T::Suppress => {
            m.suppress(framework_id, call.suppress.as_ref());
            Ok(accepted())
        }
        T::Kill => {
            m.kill(framework_id, &call.kill.unwrap_or_default());
            Ok(accepted())
        }
        T::Shutdown => {
            m.shutdown(framework_id, &call.shutdown.unwrap_or_default());
            Ok(accepted())
        }
        T::Acknowledge => {
            m.acknowledge(framework_id, &call.acknowledge.unwrap_or_default());
            Ok(accepted())
        }
        T::AcknowledgeOperationStatus => {
            let ack = call.acknowledge_operation_status.unwrap_or_default();
            m.acknowledge_operation_status(framework_id, &ack);
            Ok(accepted())
        }
        T::Reconcile => {
            m.reconcile(framework_id, call.reconcile.unwrap_or_default());
            Ok(accepted())
        }
        T::ReconcileOperations => {
            m.reconcile_operations(framework_id, call.reconcile_operations.unwrap_or_default());
            Ok(accepted())
        }
        T::Message => {
            m.message(framework_id, &call.message.unwrap_or_default());
            Ok(accepted())
        }
        T::Request => {
            m.request(framework_id, &call.request.unwrap_or_default());
            Ok(accepted())
        }
        T::UpdateFramework => {
            m.update_framework(call.update_framework.unwrap_or_default())?;
            Ok(StatusCode::OK.into_response())
        }
        T::Unknown => Err(ApiError::not_implemented("Received 'UNKNOWN' call")),
    }
}

/// Mesos's `validation::scheduler::call::validate`: the call's type, and the body and ids that
/// type needs.
pub fn validate(call: &Call) -> Result<call::Type, String> {
    use call::Type as T;
    let Some(kind) = call.r#type.and_then(|t| T::try_from(t).ok()) else {
        return Err("Expecting 'type' to be present".into());
    };
    if kind == T::Subscribe {
        let subscribe = call
            .subscribe
            .as_ref()
            .ok_or("Expecting 'subscribe' to be present")?;
        if subscribe.framework_info.id.clone().unwrap_or_default()
            != call.framework_id.clone().unwrap_or_default()
        {
            return Err("'framework_id' differs from 'subscribe.framework_info.id'".into());
        }
        return Ok(kind);
    }
    if call.framework_id.is_none() {
        return Err("Expecting 'framework_id' to be present".into());
    }
    let require = |present: bool, body: &str| {
        if present {
            Ok(())
        } else {
            Err(format!("Expecting '{body}' to be present"))
        }
    };
    match kind {
        T::Accept => require(call.accept.is_some(), "accept")?,
        T::Decline => require(call.decline.is_some(), "decline")?,
        T::AcceptInverseOffers => {
            require(
                call.accept_inverse_offers.is_some(),
                "accept_inverse_offers",
            )?;
        }
        T::DeclineInverseOffers => {
            require(
                call.decline_inverse_offers.is_some(),
                "decline_inverse_offers",
            )?;
        }
        T::Kill => require(call.kill.is_some(), "kill")?,
        T::Shutdown => require(call.shutdown.is_some(), "shutdown")?,
        T::Acknowledge => {
            let ack = call
                .acknowledge
                .as_ref()
                .ok_or("Expecting 'acknowledge' to be present")?;
            valid_uuid(&ack.uuid)?;
        }
        T::AcknowledgeOperationStatus => {
            let ack = call
                .acknowledge_operation_status
                .as_ref()
                .ok_or("Expecting 'acknowledge_operation_status' to be present")?;
            valid_uuid(&ack.uuid)?;
            if ack.agent_id.is_none() {
                return Err("Expecting 'agent_id' to be present".into());
            }
        }
        T::Reconcile => require(call.reconcile.is_some(), "reconcile")?,
        T::ReconcileOperations => {
            require(call.reconcile_operations.is_some(), "reconcile_operations")?
        }
        T::Message => require(call.message.is_some(), "message")?,
        T::Request => require(call.request.is_some(), "request")?,
        T::UpdateFramework => {
            let update = call
                .update_framework
                .as_ref()
                .ok_or("Expecting 'update_framework' to be present")?;
            if call.framework_id.clone().unwrap_or_default()
                != update.framework_info.id.clone().unwrap_or_default()
            {
                return Err(
                    "'framework_id' differs from 'update_framework.framework_info.id'".into(),
                );
            }
        }
        T::Subscribe | T::Teardown | T::Revive | T::Suppress | T::Unknown => {}
    }
    Ok(kind)
}

fn valid_uuid(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() == 16 {
        Ok(())
    } else {
        Err("Not a valid UUID".into())
    }
}
