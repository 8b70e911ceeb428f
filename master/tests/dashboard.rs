//! The dashboard at `/`: the page and script are served, and the script's `render` (run under
//! node, on the `/master/state` and `/metrics/snapshot` of a real master with a test agent and
//! a framework running a task) shows the agent, its block pool, the framework, the task and the
//! agent's device report.

mod common;

use std::process::Command;

use common::agent::{standard_resources, TestAgent};
use common::framework::Framework;
use common::{fast_config, start_with, TestMaster};
use mesoblk_proto::mesoblk::agent::v1 as agent;
use mesoblk_proto::mesos::v1::{AgentId, TaskId};
use prost::Message;
use serde_json::{json, Value};

async fn get(master: &TestMaster, path: &str) -> reqwest::Response {
    let response = reqwest::get(master.url(path)).await.expect("GET");
    assert_eq!(response.status(), 200, "GET {path}");
    response
}

async fn content_type_and_body(master: &TestMaster, path: &str) -> (String, String) {
    let response = get(master, path).await;
    let content_type = response.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .to_owned();
    (content_type, response.text().await.expect("body"))
}

/// Runs the served script's `render(state, metrics)` under node and returns its HTML.
fn render(script: &str, state: &Value, metrics: &Value) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("dashboard.js");
    std::fs::write(&path, script).expect("write script");
    let program = format!(
        "const {{render}} = require({path:?}); process.stdout.write(render({state}, {metrics}));",
        path = path.display().to_string()
    );
    let out = Command::new("node")
        .arg("-e")
        .arg(program)
        .output()
        .expect("node runs (scripts/setup installs nodejs)");
    assert!(
        out.status.success(),
        "render failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_agents_pools_frameworks_and_tasks() {
    let master = start_with(fast_config()).await;
    let test_agent =
        TestAgent::start(&master.url(""), "dash-agent.local", standard_resources()).await;
    let mut framework = Framework::subscribe(&master, "").await;

    let (page_type, page) = content_type_and_body(&master, "/").await;
    assert!(page_type.starts_with("text/html"), "{page_type}");
    assert!(page.contains(r#"<script src="/dashboard.js">"#), "{page}");
    let (script_type, script) = content_type_and_body(&master, "/dashboard.js").await;
    assert!(script_type.starts_with("text/javascript"), "{script_type}");

    let offer = framework.offer().await;
    let task = json!({"name":"dash-task","task_id":{"value":"dash-task-1"},"agent_id":offer["agent_id"],
        "resources":[{"name":"cpus","type":"SCALAR","scalar":{"value":0.5}},
                     {"name":"mem","type":"SCALAR","scalar":{"value":64.0}}],
        "command":{"value":"sleep 100"}});
    let accept = json!({"type":"ACCEPT","accept":{"offer_ids":[offer["id"]],
        "operations":[{"type":"LAUNCH","launch":{"task_infos":[task]}}]}});
    assert_eq!(framework.call(&master, accept).await, 202);
    loop {
        let status = framework.update().await;
        // The agent sends a task's next update only once the previous one is acknowledged.
        framework.ack(&master, &status).await;
        if status["state"] == "TASK_RUNNING" {
            break;
        }
    }

    let report = agent::DeviceStats {
        agent_id: AgentId {
            value: test_agent.id(),
        },
        timestamp: None,
        devices: vec![agent::device_stats::Device {
            volume_id: "vol-0123456789abcdef".into(),
            device: Some("/dev/ublkb7".into()),
            profile: Some("fast".into()),
            task_id: Some(TaskId {
                value: "dash-task-1".into(),
            }),
            read_ops_per_second: Some(1234.0),
            latency_p99_us: Some(456.0),
            ..Default::default()
        }],
    };
    let response = test_agent
        .post_raw("/agent/v1/device_stats", report.encode_to_vec())
        .await;
    assert_eq!(response.status(), 202);

    let state: Value =
        serde_json::from_str(&content_type_and_body(&master, "/master/state").await.1)
            .expect("state JSON");
    let metrics: Value =
        serde_json::from_str(&content_type_and_body(&master, "/metrics/snapshot").await.1)
            .expect("metrics JSON");
    let html = render(&script, &state, &metrics);
    for expected in [
        "dash-agent.local",
        test_agent.id().as_str(),
        "fast: 10.0 GB free",
        framework.id.as_str(),
        "dash-task-1",
        "TASK_RUNNING",
        "0.5 / 4.0",
        "/dev/ublkb7",
        "vol-0123456789abcdef",
        "1234 / 0",
        "456 us",
    ] {
        assert!(
            html.contains(expected),
            "{expected:?} missing from the dashboard:\n{html}"
        );
    }
}

#[test]
fn markup_in_names_is_escaped() {
    let script = include_str!("../src/http/dashboard.js");
    let state = json!({"hostname":"m","version":"1","start_time":0,
        "slaves":[{"id":"a1","hostname":"<b>evil</b>","active":true,"resources":{},"used_resources":{}}],
        "frameworks":[]});
    let html = render(script, &state, &json!({}));
    assert!(html.contains("&lt;b&gt;evil&lt;/b&gt;"), "{html}");
    assert!(!html.contains("<b>evil"), "{html}");
}

#[tokio::test(flavor = "multi_thread")]
async fn device_reports_are_checked() {
    let master = start_with(fast_config()).await;
    let test_agent =
        TestAgent::start(&master.url(""), "dash-agent.local", standard_resources()).await;
    let stranger = agent::DeviceStats {
        agent_id: AgentId {
            value: "no-such-agent".into(),
        },
        ..Default::default()
    };
    let response = test_agent
        .post_raw("/agent/v1/device_stats", stranger.encode_to_vec())
        .await;
    assert_eq!(response.status(), 403);
    let response = test_agent
        .post_raw("/agent/v1/device_stats", b"\xff\xff\xff".to_vec())
        .await;
    assert_eq!(response.status(), 400);
    let too_many = agent::DeviceStats {
        agent_id: AgentId {
            value: test_agent.id(),
        },
        devices: vec![agent::device_stats::Device::default(); 10_001],
        ..Default::default()
    };
    let response = test_agent
        .post_raw("/agent/v1/device_stats", too_many.encode_to_vec())
        .await;
    assert_eq!(response.status(), 400);
    let state: Value =
        serde_json::from_str(&content_type_and_body(&master, "/master/state").await.1)
            .expect("JSON");
    assert_eq!(state["slaves"][0]["mesoblk_devices"], json!([]));
}
