//! The master's HTTP surface, built by [`router`].
//!
//! | path | what |
//! |---|---|
//! | `GET /` | the dashboard ([`dashboard`]) |
//! | `POST /api/v1/scheduler` | scheduler API ([`scheduler`]) |
//! | `POST /api/v1` | operator API ([`operator`]) |
//! | `GET /version` | `{"version":"1.11.0","build_date",...}` |
//! | `GET /health`, `/master/health` | 200, empty |
//! | `/master/redirect` | 307 to `//<hostname>:<port>` (this master is always the leader) |
//! | `GET /master/state`, `/master/state.json` | Mesos's "model" JSON, `?jsonp=` ([`model`]) |
//! | `GET /metrics/snapshot`, `/metrics` | Mesos metric names; Prometheus text ([`metrics`]) |
//! | `POST /agent/v1/...` | the agent protocol ([`agent`]) |
//!
//! Request bodies are limited to [`BODY_BYTES_MAX`].

pub mod agent;
pub mod dashboard;
pub mod metrics;
pub mod model;
pub mod operator;
pub mod scheduler;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use mesoblk_proto::codec::{ContentType, DecodeError};
use mesoblk_proto::json::{quote, JsonError};
use mesoblk_proto::mesos::v1::VersionInfo;

use crate::config::MESOS_VERSION;
use crate::error::ApiError;
use crate::state::MasterHandle;

/// Largest request body accepted (Mesos caps protobuf messages at 64 MiB).
pub const BODY_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The router over the real master state.
pub fn router(master: MasterHandle) -> Router {
    Router::new()
        .route("/", get(dashboard::page))
        .route("/dashboard.js", get(dashboard::script))
        .route("/api/v1/scheduler", any(scheduler::handle))
        .route("/api/v1", any(operator::handle))
        .route("/version", get(version))
        .route("/health", get(health))
        .route("/master/health", get(health))
        .route("/master/redirect", any(redirect))
        .route(
            "/master/redirect/{*rest}",
            any(|| async { StatusCode::NOT_FOUND }),
        )
        .route("/master/state", get(model::state_handler))
        .route("/master/state.json", get(model::state_handler))
        .route("/metrics/snapshot", get(metrics::snapshot_handler))
        .route("/metrics", get(metrics::prometheus_handler))
        .merge(agent::routes())
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        // Outermost: authentication runs before anything else looks at the request (`crate::auth`).
        .layer(axum::middleware::from_fn_with_state(
            crate::auth::AuthState::new(&master),
            crate::auth::authenticate,
        ))
        .with_state(master)
}

/// The build this master reports (Mesos's `version()`).
pub fn version_info() -> VersionInfo {
    let build_time: f64 = env!("MESOBLK_BUILD_TIME").parse().unwrap_or(0.0);
    VersionInfo {
        version: MESOS_VERSION.into(),
        build_date: Some(format_date(build_time)),
        build_time: Some(build_time),
        build_user: Some(env!("MESOBLK_BUILD_USER").into()),
        git_sha: None,
        git_branch: None,
        git_tag: Some(format!("mesoblk-{}", env!("CARGO_PKG_VERSION"))),
    }
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) for seconds since the epoch.
fn format_date(secs: f64) -> String {
    #[allow(clippy::cast_possible_truncation)] // build times are far inside i64.
    let secs = secs as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

async fn version() -> Response {
    let info = version_info();
    // Mesos's `/version` is a flat object, not a `VersionInfo` message.
    let mut body = format!("{{\"version\":{}", quote(&info.version));
    if let Some(tag) = &info.git_tag {
        body.push_str(&format!(",\"git_tag\":{}", quote(tag)));
    }
    body.push_str(&format!(
        ",\"build_date\":{},\"build_time\":{},\"build_user\":{}}}",
        quote(info.build_date.as_deref().unwrap_or("")),
        mesoblk_proto::json::format_double(info.build_time.unwrap_or(0.0)),
        quote(info.build_user.as_deref().unwrap_or(""))
    ));
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

async fn health() -> StatusCode {
    StatusCode::OK
}

async fn redirect(State(master): State<MasterHandle>) -> Response {
    let (hostname, _, port) = master.advertised();
    let location = format!("//{hostname}:{port}");
    match HeaderValue::from_str(&location) {
        Ok(value) => (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, value)]).into_response(),
        Err(_) => ApiError::service_unavailable("No leader elected").into_response(),
    }
}

/// The value of a header, if present and text.
fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// All `Accept` values joined, as libprocess sees one header.
fn accept_header(headers: &HeaderMap) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

/// The request's body encoding: 400 without `Content-Type`, 415 for anything but the two Mesos
/// types (compared exactly).
fn request_content_type(headers: &HeaderMap) -> Result<ContentType, ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(ApiError::bad_request(
            "Expecting 'Content-Type' to be present",
        ));
    };
    value
        .to_str()
        .ok()
        .and_then(ContentType::from_content_type)
        .ok_or_else(|| {
            ApiError::unsupported_media_type(
                "Expecting 'Content-Type' of application/json or application/x-protobuf",
            )
        })
}

/// Decodes a call body, with Mesos's 400 messages.
fn decode_call<M: prost_reflect::ReflectMessage + Default>(
    content_type: ContentType,
    body: &[u8],
) -> Result<M, ApiError> {
    content_type.decode(body).map_err(|e| match e {
        DecodeError::Json(JsonError::Syntax(detail)) => {
            ApiError::bad_request(format!("Failed to parse body into JSON: {detail}"))
        }
        DecodeError::Json(detail) => ApiError::bad_request(format!(
            "Failed to convert JSON into Call protobuf: {detail}"
        )),
        DecodeError::Protobuf(detail) => {
            tracing::debug!(%detail, "undecodable protobuf call");
            ApiError::bad_request("Failed to parse body into Call protobuf")
        }
        other => ApiError::bad_request(format!("Failed to parse body into Call protobuf: {other}")),
    })
}

/// The response encoding from `Accept`, or 406.
/// A chunked response carrying a subscriber's event stream in `accept`'s content type.
fn stream_response<E>(stream: crate::stream::EventStream<E>, accept: ContentType) -> Response
where
    crate::stream::EventStream<E>:
        futures::Stream<Item = Result<bytes::Bytes, std::convert::Infallible>> + Send + 'static,
{
    let mut response = Response::new(axum::body::Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(accept.as_str()),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn response_content_type(headers: &HeaderMap) -> Result<ContentType, ApiError> {
    ContentType::negotiate(accept_header(headers).as_deref()).ok_or_else(|| {
        ApiError::not_acceptable(
            "Expecting 'Accept' to allow 'application/x-protobuf' or 'application/json'",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_format_as_utc() {
        assert_eq!(format_date(0.0), "1970-01-01 00:00:00");
        assert_eq!(format_date(1_724_425_140.0), "2024-08-23 14:59:00");
    }

    #[test]
    fn the_version_is_purely_dotted_integers() {
        assert!(version_info()
            .version
            .split('.')
            .all(|n| n.parse::<u32>().is_ok()));
    }
}
