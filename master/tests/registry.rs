//! The registry through the real binary: a master killed with SIGKILL and restarted on the same
//! `--work_dir` keeps its UUID, its frameworks (live ones resubscribe by id, removed ones are
//! refused), weights and quotas; a corrupt or busy registry is a one-line startup error.

mod binary;
mod common;

use binary::MasterProcess;
use common::{resubscribe_body, subscribe_body, EventStream, JSON, WAIT};
use mesoblk_proto::codec::ContentType;
use mesoblk_proto::mesos::v1::scheduler::event;
use serde_json::Value;

async fn post(
    master: &MasterProcess,
    path: &str,
    headers: &[(&str, &str)],
    body: String,
) -> reqwest::Response {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let mut request = client.post(master.url(path)).body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    tokio::time::timeout(WAIT, request.send())
        .await
        .expect("answer in time")
        .expect("request")
}

async fn operator(master: &MasterProcess, body: &str) -> Value {
    let response = post(master, "/api/v1", &[("Content-Type", JSON)], body.into()).await;
    assert_eq!(response.status(), 200, "{body}");
    let text = response.text().await.expect("body");
    if text.is_empty() {
        return Value::Null;
    }
    serde_json::from_str(&text).expect("JSON answer")
}

async fn subscribe(master: &MasterProcess, body: &str) -> EventStream {
    let response = post(
        master,
        "/api/v1/scheduler",
        &[("Content-Type", JSON), ("Accept", JSON)],
        body.into(),
    )
    .await;
    assert_eq!(response.status(), 200);
    EventStream::new(response, ContentType::Json)
}

async fn teardown(master: &MasterProcess, stream: &EventStream, framework_id: &str) {
    let body = format!(r#"{{"type":"TEARDOWN","framework_id":{{"value":"{framework_id}"}}}}"#);
    let response = post(
        master,
        "/api/v1/scheduler",
        &[
            ("Content-Type", JSON),
            ("Mesos-Stream-Id", &stream.stream_id),
        ],
        body,
    )
    .await;
    assert_eq!(response.status(), 202);
}

fn framework_ids(frameworks: &Value, key: &str) -> Vec<String> {
    frameworks["get_frameworks"][key]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|f| f["framework_info"]["id"]["value"].as_str())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// The master's UUID, from a new framework's id `<uuid>-<nnnn>`.
fn master_id_of(framework_id: &str) -> &str {
    framework_id
        .rsplit_once('-')
        .map(|(prefix, _)| prefix)
        .expect("framework ids are <master>-<n>")
}

/// Registers an agent through the agent protocol (protobuf); returns its id.
async fn register_agent(master: &MasterProcess, hostname: &str) -> String {
    use mesoblk_proto::mesoblk::agent::v1::{RegisterAgent, Registered};
    use mesoblk_proto::mesos::v1::AgentInfo;
    let register = RegisterAgent {
        agent_info: AgentInfo {
            hostname: hostname.into(),
            ..Default::default()
        },
        endpoint: "http://127.0.0.1:5051".into(),
        ..Default::default()
    };
    let body = prost::Message::encode_to_vec(&register);
    let client = reqwest::Client::new();
    let response = client
        .post(master.url("/agent/v1/register"))
        .header("Content-Type", common::PROTOBUF)
        .header("Accept", common::PROTOBUF)
        .body(body)
        .send()
        .await
        .expect("register");
    assert_eq!(response.status(), 200);
    let bytes = response.bytes().await.expect("body");
    let registered: Registered = prost::Message::decode(bytes.as_ref()).expect("Registered");
    registered.agent_id.value
}

#[tokio::test]
async fn a_killed_master_restarts_with_everything_it_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let work_dir = dir.path().join("work");
    let work_dir = work_dir.to_str().expect("utf-8 path");
    let mut first = MasterProcess::start("registry-first", &["--work_dir", work_dir]);

    // A live framework with a long failover timeout, and one that is torn down.
    let mut live_stream = subscribe(
        &first,
        &subscribe_body("survivor", r#","failover_timeout":3600"#),
    )
    .await;
    let live = live_stream.subscribed().await;
    let mut doomed_stream = subscribe(&first, &subscribe_body("doomed", "")).await;
    let doomed = doomed_stream.subscribed().await;
    teardown(&first, &doomed_stream, &doomed).await;
    let master_id = master_id_of(&live).to_string();
    let agent = register_agent(&first, "agent-before").await;
    assert_eq!(agent, format!("{master_id}-S0"));

    operator(
        &first,
        r#"{"type":"UPDATE_WEIGHTS","update_weights":{"weight_infos":[
            {"role":"web","weight":2.5},{"role":"batch","weight":0.5}]}}"#,
    )
    .await;
    operator(
        &first,
        r#"{"type":"UPDATE_QUOTA","update_quota":{"quota_configs":[
            {"role":"web","guarantees":{"cpus":{"value":4}},"limits":{"mem":{"value":4096}}}]}}"#,
    )
    .await;

    first.kill(); // SIGKILL: no shutdown path runs.
    drop(live_stream);
    drop(doomed_stream);
    let second = MasterProcess::start("registry-second", &["--work_dir", work_dir]);

    let weights = operator(&second, r#"{"type":"GET_WEIGHTS"}"#).await;
    let mut weights: Vec<(String, f64)> = weights["get_weights"]["weight_infos"]
        .as_array()
        .expect("weights")
        .iter()
        .map(|w| {
            (
                w["role"].as_str().expect("role").to_string(),
                w["weight"].as_f64().expect("weight"),
            )
        })
        .collect();
    weights.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        weights,
        vec![("batch".to_string(), 0.5), ("web".to_string(), 2.5)]
    );

    let quota = operator(&second, r#"{"type":"GET_QUOTA"}"#).await;
    let configs = &quota["get_quota"]["status"]["configs"];
    assert_eq!(configs[0]["role"], "web", "{quota}");
    assert_eq!(configs[0]["guarantees"]["cpus"]["value"], 4.0, "{quota}");
    assert_eq!(configs[0]["limits"]["mem"]["value"], 4096.0, "{quota}");

    let frameworks = operator(&second, r#"{"type":"GET_FRAMEWORKS"}"#).await;
    assert!(
        framework_ids(&frameworks, "completed_frameworks").contains(&doomed),
        "the torn-down framework is remembered: {frameworks}"
    );

    // The torn-down framework's id is refused.
    let mut refused = subscribe(&second, &resubscribe_body("doomed", &doomed, 0.0)).await;
    let events = refused.until_end().await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].r#type(), event::Type::Error);
    assert_eq!(
        events[0].error.as_ref().expect("error body").message,
        "Framework has been removed"
    );

    // The live one resubscribes with its id.
    let mut back = subscribe(&second, &resubscribe_body("survivor", &live, 3600.0)).await;
    assert_eq!(back.subscribed().await, live);

    // New ids keep the master's UUID and do not collide with stored ones.
    let mut fresh = subscribe(&second, &subscribe_body("fresh", "")).await;
    let fresh_id = fresh.subscribed().await;
    assert_eq!(master_id_of(&fresh_id), master_id);
    assert_ne!(fresh_id, live);
    assert_ne!(fresh_id, doomed);
    // So do agent ids: a new agent does not take the id of one admitted before the restart.
    let new_agent = register_agent(&second, "agent-after").await;
    assert_eq!(new_agent, format!("{master_id}-S1"));

    let frameworks = operator(&second, r#"{"type":"GET_FRAMEWORKS"}"#).await;
    let listed = framework_ids(&frameworks, "frameworks");
    assert!(
        listed.contains(&live) && listed.contains(&fresh_id),
        "{frameworks}"
    );
}

#[tokio::test]
async fn the_in_memory_registry_forgets_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let work_dir = dir.path().to_str().expect("utf-8 path");
    let args = ["--work_dir", work_dir, "--registry=in_memory"];
    let mut first = MasterProcess::start("registry-memory-1", &args);
    operator(
        &first,
        r#"{"type":"UPDATE_WEIGHTS","update_weights":{"weight_infos":[{"role":"web","weight":3}]}}"#,
    )
    .await;
    first.kill();
    let second = MasterProcess::start("registry-memory-2", &args);
    let weights = operator(&second, r#"{"type":"GET_WEIGHTS"}"#).await;
    assert!(
        weights["get_weights"]["weight_infos"]
            .as_array()
            .is_none_or(|w| w.is_empty()),
        "{weights}"
    );
    assert!(!dir.path().join("registry").exists());
}

#[test]
fn a_busy_or_corrupt_registry_is_a_one_line_startup_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let work_dir = dir.path().to_str().expect("utf-8 path");

    // Busy: another master holds the directory.
    let mut holder = MasterProcess::start("registry-holder", &["--work_dir", work_dir]);
    let (code, stderr) = binary::run_to_exit(&["--port", "0", "--work_dir", work_dir]);
    assert_ne!(code, 0);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("in use by another master"), "{stderr}");
    holder.kill();

    // Corrupt: damage the snapshot record of the log.
    let log = std::fs::read_dir(dir.path().join("registry"))
        .expect("registry directory")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("log.") && !n.ends_with(".tmp"))
        })
        .expect("a log file");
    let mut bytes = std::fs::read(&log).expect("read");
    bytes[30] ^= 0xFF;
    std::fs::write(&log, &bytes).expect("write");
    let (code, stderr) = binary::run_to_exit(&["--port", "0", "--work_dir", work_dir]);
    assert_ne!(code, 0);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("mesoblk-master: "), "{stderr}");
    assert!(stderr.contains(&log.display().to_string()), "{stderr}");
    assert!(stderr.contains("corrupt at byte offset"), "{stderr}");

    // Not a directory.
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").expect("write");
    let (code, stderr) =
        binary::run_to_exit(&["--port", "0", "--work_dir", file.to_str().expect("utf-8")]);
    assert_ne!(code, 0);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}

// ---- In process: what the state layer writes. ----

#[tokio::test]
async fn removed_frameworks_in_the_registry_are_bounded_like_the_completed_list() {
    let mut config =
        mesoblk_master::Config::new("test-master.local", std::net::Ipv4Addr::LOCALHOST, 5050);
    config.max_completed_frameworks = 2;
    let master = common::start_with(config).await;
    let registry = master.handle.config().registry.clone();
    let mut ids = Vec::new();
    for n in 0..4 {
        let mut stream = master
            .subscribe(&subscribe_body(&format!("f{n}"), ""))
            .await;
        let id = stream.subscribed().await;
        let stored = registry.load().expect("loads");
        assert!(
            stored.frameworks.get(&id).is_some_and(|f| !f.removed),
            "stored before SUBSCRIBED was read"
        );
        let body = format!(r#"{{"type":"TEARDOWN","framework_id":{{"value":"{id}"}}}}"#);
        assert_eq!(master.call(&stream.stream_id, &body).await.status(), 202);
        ids.push(id);
    }
    let stored = registry.load().expect("loads");
    let removed: Vec<&String> = stored
        .frameworks
        .iter()
        .filter(|(_, f)| f.removed)
        .map(|(id, _)| id)
        .collect();
    assert_eq!(removed, vec![&ids[2], &ids[3]], "the oldest are forgotten");
    let completed: Vec<String> = master.handle.with(|m| {
        m.completed_frameworks()
            .iter()
            .filter_map(|c| c.info.id.as_ref().map(|id| id.value.clone()))
            .collect()
    });
    assert_eq!(completed, vec![ids[2].clone(), ids[3].clone()]);
}
