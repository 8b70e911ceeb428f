//! `/api/v1` (operator API) and the plain endpoints against the real router.

mod common;

use std::time::Duration;

use common::*;
use mesoblk_proto::codec::ContentType;
use mesoblk_proto::mesos::v1::master::{call, response, Call, Response};
use prost::Message as _;

const LONG: Duration = Duration::from_secs(600);

#[tokio::test]
async fn version_health_and_redirect() {
    let master = start(LONG).await;
    let response = reqwest::get(master.url("/version"))
        .await
        .expect("GET /version");
    assert_eq!(response.status(), 200);
    let version: serde_json::Value =
        serde_json::from_str(&response.text().await.expect("body")).expect("JSON");
    let text = version["version"].as_str().expect("version string");
    assert!(
        text.split('.').all(|n| n.parse::<u32>().is_ok()),
        "purely dotted integers: {text}"
    );
    assert!(version["build_time"].is_f64());
    assert!(version["build_date"].is_string() && version["build_user"].is_string());

    for path in ["/health", "/master/health"] {
        let response = reqwest::get(master.url(path)).await.expect("GET");
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.text().await.expect("body"), "");
    }

    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let response = client
        .get(master.url("/master/redirect"))
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 307);
    assert_eq!(response.headers()["Location"], "//test-master.local:5050");
}

#[tokio::test]
async fn simple_calls_answer_in_mesos_shapes() {
    let master = start(LONG).await;
    let health = master.operator(r#"{"type":"GET_HEALTH"}"#).await;
    assert_eq!(
        health,
        serde_json::json!({"type":"GET_HEALTH","get_health":{"healthy":true}})
    );

    let version = master.operator(r#"{"type":"GET_VERSION"}"#).await;
    assert_eq!(version["type"], "GET_VERSION");
    assert_eq!(version["get_version"]["version_info"]["version"], "1.11.0");

    let agents = master.operator(r#"{"type":"GET_AGENTS"}"#).await;
    assert_eq!(
        agents,
        serde_json::json!({"type":"GET_AGENTS","get_agents":{}})
    );
    let tasks = master.operator(r#"{"type":"GET_TASKS"}"#).await;
    assert_eq!(
        tasks,
        serde_json::json!({"type":"GET_TASKS","get_tasks":{}})
    );

    let state = master.operator(r#"{"type":"GET_STATE"}"#).await;
    assert_eq!(
        state,
        serde_json::json!({"type":"GET_STATE","get_state":{"get_tasks":{},"get_executors":{},"get_frameworks":{},"get_agents":{}}})
    );

    let metrics = master
        .operator(r#"{"type":"GET_METRICS","get_metrics":{}}"#)
        .await;
    let names: Vec<&str> = metrics["get_metrics"]["metrics"]
        .as_array()
        .expect("metrics")
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert!(names.contains(&"master/elected"));

    let master_info = master.operator(r#"{"type":"GET_MASTER"}"#).await;
    assert_eq!(master_info["get_master"]["master_info"]["port"], 5050);
}

#[tokio::test]
async fn frameworks_appear_in_get_frameworks_and_get_state() {
    let master = start(LONG).await;
    let mut stream = master.subscribe(&subscribe_body("listed", "")).await;
    let id = stream.subscribed().await;
    let frameworks = master.operator(r#"{"type":"GET_FRAMEWORKS"}"#).await;
    let framework = &frameworks["get_frameworks"]["frameworks"][0];
    assert_eq!(framework["framework_info"]["id"]["value"], id);
    assert_eq!(framework["framework_info"]["name"], "listed");
    assert_eq!(framework["active"], true);
    assert_eq!(framework["connected"], true);
    assert_eq!(framework["recovered"], false);
    assert!(framework["registered_time"]["nanoseconds"].is_i64());

    let state = master.operator(r#"{"type":"GET_STATE"}"#).await;
    assert_eq!(
        state["get_state"]["get_frameworks"]["frameworks"][0]["framework_info"]["id"]["value"],
        id
    );

    let roles = master.operator(r#"{"type":"GET_ROLES"}"#).await;
    assert_eq!(roles["get_roles"]["roles"][0]["name"], "*");
    assert_eq!(roles["get_roles"]["roles"][0]["weight"], 1.0);

    // Operator TEARDOWN removes it and closes its stream.
    let body = format!(r#"{{"type":"TEARDOWN","teardown":{{"framework_id":{{"value":"{id}"}}}}}}"#);
    assert_eq!(master.post_json("/api/v1", &body).await.status(), 200);
    assert!(stream.until_end().await.is_empty());
    let response = master.post_json("/api/v1", &body).await;
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.text().await.expect("body"),
        "No framework found with specified ID"
    );
}

#[tokio::test]
async fn weights_and_quotas_round_trip() {
    let master = start(LONG).await;
    let update = r#"{"type":"UPDATE_WEIGHTS","update_weights":{"weight_infos":[{"role":"dev","weight":2.5}]}}"#;
    assert_eq!(master.post_json("/api/v1", update).await.status(), 200);
    let weights = master.operator(r#"{"type":"GET_WEIGHTS"}"#).await;
    assert_eq!(
        weights["get_weights"]["weight_infos"][0],
        serde_json::json!({"weight":2.5,"role":"dev"})
    );
    let bad = r#"{"type":"UPDATE_WEIGHTS","update_weights":{"weight_infos":[{"role":"dev","weight":-1}]}}"#;
    assert_eq!(master.post_json("/api/v1", bad).await.status(), 400);

    let quota = r#"{"type":"UPDATE_QUOTA","update_quota":{"quota_configs":[{"role":"dev","guarantees":{"cpus":{"value":1}},"limits":{"cpus":{"value":4}}}]}}"#;
    assert_eq!(master.post_json("/api/v1", quota).await.status(), 200);
    let quotas = master.operator(r#"{"type":"GET_QUOTA"}"#).await;
    assert_eq!(
        quotas["get_quota"]["status"]["configs"][0],
        serde_json::json!({"role":"dev","guarantees":{"cpus":{"value":1.0}},"limits":{"cpus":{"value":4.0}}})
    );
}

#[tokio::test]
async fn bad_requests_get_mesos_status_codes() {
    let master = start(LONG).await;
    let response = reqwest::get(master.url("/api/v1")).await.expect("GET");
    assert_eq!(response.status(), 405);
    assert_eq!(master.post("/api/v1", &[], "{}").await.status(), 400);
    assert_eq!(
        master
            .post("/api/v1", &[("Content-Type", "text/plain")], "{}")
            .await
            .status(),
        415
    );
    let response = master.post_json("/api/v1", "{nope").await;
    assert_eq!(response.status(), 400);
    assert!(response
        .text()
        .await
        .expect("body")
        .starts_with("Failed to parse body into JSON: "));
    let response = master
        .post_json("/api/v1", r#"{"type":"GET_METRICS"}"#)
        .await;
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.text().await.expect("body"),
        "Failed to validate master::Call: Expecting 'get_metrics' to be present"
    );
    let response = master
        .post(
            "/api/v1",
            &[("Content-Type", JSON), ("Accept", "text/html")],
            r#"{"type":"GET_HEALTH"}"#,
        )
        .await;
    assert_eq!(response.status(), 406);
    assert_eq!(
        master
            .post_json("/api/v1", r#"{"type":"UNKNOWN"}"#)
            .await
            .status(),
        501
    );
    assert_eq!(
        master
            .post_json("/api/v1", r#"{"type":"GET_MAINTENANCE_STATUS"}"#)
            .await
            .status(),
        501
    );
    let response = master
        .post("/api/v1", &[("Content-Type", PROTOBUF)], vec![0x08_u8])
        .await;
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn protobuf_in_and_out() {
    let master = start(LONG).await;
    let call = Call {
        r#type: Some(call::Type::GetHealth as i32),
        ..Default::default()
    };
    let response = master
        .post(
            "/api/v1",
            &[("Content-Type", PROTOBUF), ("Accept", PROTOBUF)],
            call.encode_to_vec(),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["Content-Type"], PROTOBUF);
    let body = response.bytes().await.expect("body");
    let answer: Response = ContentType::Protobuf
        .decode(&body)
        .expect("protobuf response");
    assert_eq!(answer.r#type(), response::Type::GetHealth);
    assert_eq!(answer.get_health.map(|h| h.healthy), Some(true));
}
