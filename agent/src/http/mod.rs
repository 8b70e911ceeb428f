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
//! | `POST /api/v1/executor` | Mesos's executor API, for custom executors (`crate::executor_api`); 503 until the agent knows its id |

mod files;
mod metrics;
mod state;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use tower::ServiceExt as _;

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
        .route("/api/v1/executor", any(executor_api))
}

/// The executor API lives in the agent's runtime, which exists once the agent has an id; as
/// Mesos's agent while it recovers, the endpoint answers 503 until then.
async fn executor_api(State(node): State<Arc<Node>>, request: Request) -> Response {
    let Some(runtime) = node.runtime() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "Agent has not finished recovery",
        )
            .into_response();
    };
    match runtime.executors.routes().oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

async fn version() -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "build_user": "mesoblk",
    }))
}
