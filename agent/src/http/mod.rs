//! The agent's own HTTP API, served on `--ip:--port`:
//!
//! | path | answer |
//! |---|---|
//! | `GET /state` (`/state.json`, `/slave(1)/state`) | the agent, its frameworks, executors and tasks, volumes and pools (Mesos's agent `/state` shape) |
//! | `GET /health` | 200 |
//! | `GET /metrics/snapshot` | Mesos agent metric names (`slave/tasks_running`, `slave/registered`, ...) |
//! | `GET /files/browse?path=` | a sandbox folder: `[{path, size, mode, mtime, nlink, uid, gid}]` |
//! | `GET /files/read?path=&offset=&length=` | part of a sandbox file: `{data, offset}` |
//! | `GET /version` | `{version}` |
//!
//! [`router`] builds the agent's routes; more (the executor API) merge in with
//! [`Router::merge`] on the same `Arc<Node>` state.

mod files;
mod metrics;
mod state;

use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};

use crate::node::Node;

/// Every route of the agent's HTTP API.
pub fn router(node: Arc<Node>) -> Router {
    routes().with_state(node)
}

/// The routes, before the state is supplied (to merge other route sets into).
pub fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/state", get(state::state))
        .route("/state.json", get(state::state))
        .route("/slave(1)/state", get(state::state))
        .route("/health", get(|| async { StatusCode::OK }))
        .route("/metrics/snapshot", get(metrics::snapshot))
        .route("/files/browse", get(files::browse))
        .route("/files/read", get(files::read))
        .route("/version", get(version))
}

async fn version() -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "build_user": "mesoblk",
    }))
}
