//! The dashboard: one HTML page and its script, compiled into the binary (no files to install),
//! served at `/` (and `/dashboard.js`). The page reads `/master/state` and `/metrics/snapshot`
//! like any other client; everything it shows comes from those documents.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

const PAGE: &str = include_str!("dashboard.html");
const SCRIPT: &str = include_str!("dashboard.js");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// `GET /`: the dashboard's page.
pub async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

/// `GET /dashboard.js`: the dashboard's script.
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}
