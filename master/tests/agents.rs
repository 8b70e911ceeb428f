//! The agent side end to end: agents lost and re-registered (RESCIND, TASK_LOST/UNREACHABLE,
//! FAILURE), offer timeouts, operations answered by the test agent (CREATE_DISK, DESTROY_DISK,
//! RESERVE) with UPDATE_OPERATION_STATUS, and the agent protocol's refusals.

mod common;

use std::time::Duration;

use common::agent::{standard_resources, TestAgent, PROVIDER};
use common::framework::Framework;
use common::*;
use mesoblk_proto::codec::ContentType;
use mesoblk_proto::mesoblk::agent::v1 as agent;
use mesoblk_proto::mesoblk::agent::v1::event::Type as AgentEvent;
use mesoblk_proto::mesos::v1::scheduler::event;
use mesoblk_proto::mesos::v1::{AgentId, OperationState};
use serde_json::{json, Value};

/// Launches a 1-cpu task from the next offer (returning the rest unfiltered) and waits for
/// TASK_RUNNING, acknowledging every update.
async fn run(fw: &mut Framework, master: &TestMaster, agent: &mut TestAgent, id: &str) {
    let offer = fw.offer().await;
    let task = json!({"name": id, "task_id": {"value": id}, "agent_id": offer["agent_id"],
        "command": {"value": "sleep 1000"},
        "resources": [{"name":"cpus","type":"SCALAR","scalar":{"value":1.0}}]});
    let body = json!({"type":"ACCEPT","accept":{"offer_ids":[offer["id"]],
        "operations":[{"type":"LAUNCH","launch":{"task_infos":[task]}}],"filters":{"refuse_seconds":0.0}}});
    assert_eq!(fw.call(master, body).await, 202);
    agent.next_of(AgentEvent::RunTask).await;
    loop {
        let status = fw.update().await;
        fw.ack(master, &status).await;
        if status["state"] == "TASK_RUNNING" {
            return;
        }
    }
}

fn resource_named<'a>(
    offer: &'a Value,
    name: &str,
    pred: impl Fn(&Value) -> bool,
) -> Option<&'a Value> {
    offer["resources"]
        .as_array()?
        .iter()
        .find(|r| r["name"] == name && pred(r))
}

async fn setup() -> (TestMaster, TestAgent) {
    let master = start_with(fast_config()).await;
    let agent = TestAgent::start(&master.url(""), "agent-1", standard_resources()).await;
    (master, agent)
}

async fn outstanding_offer(master: &TestMaster) -> Value {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let frameworks = master.operator(r#"{"type":"GET_FRAMEWORKS"}"#).await;
        let offer = &frameworks["get_frameworks"]["frameworks"][0]["offers"][0];
        if !offer.is_null() {
            return offer.clone();
        }
        assert!(std::time::Instant::now() < deadline, "an outstanding offer");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn a_lost_agent_rescinds_offers_and_loses_its_tasks() {
    let (master, mut agent) = setup().await;
    let mut fw = Framework::subscribe(&master, "").await;
    run(&mut fw, &master, &mut agent, "t").await;
    let offer = outstanding_offer(&master).await;
    agent.disconnect();
    let rescind = fw.next(event::Type::Rescind).await;
    assert_eq!(rescind["rescind"]["offer_id"], offer["id"]);
    // 4 × 150 ms without a stream or a pong: removed.
    let lost = fw.update().await;
    assert_eq!(lost["state"], "TASK_LOST");
    assert_eq!(lost["reason"], "REASON_AGENT_REMOVED");
    assert_eq!(lost["source"], "SOURCE_MASTER");
    assert_eq!(lost["message"], "health check timed out");
    assert_eq!(lost["agent_id"]["value"], agent.id());
    assert!(lost.get("uuid").is_none());
    let failure = fw.next(event::Type::Failure).await;
    assert_eq!(failure["failure"]["agent_id"]["value"], agent.id());
    let agents = master.operator(r#"{"type":"GET_AGENTS"}"#).await;
    assert!(agents["get_agents"].get("agents").is_none(), "{agents}");
    let body = json!({"type":"RECONCILE","reconcile":{"tasks":[{"task_id":{"value":"t"},"agent_id":{"value":agent.id()}}]}});
    fw.call(&master, body).await;
    let answer = fw.update().await;
    assert_eq!(answer["state"], "TASK_LOST");
    assert_eq!(answer["message"], "Reconciliation: Task is unreachable");
}

#[tokio::test]
async fn partition_aware_frameworks_see_unreachable_tasks_and_agents_that_stop_ponging_go() {
    let (master, mut agent) = setup().await;
    let mut fw =
        Framework::subscribe(&master, r#","capabilities":[{"type":"PARTITION_AWARE"}]"#).await;
    run(&mut fw, &master, &mut agent, "p").await;
    // The stream stays up, but pings go unanswered.
    agent.behave(|b| b.answer_pings = false);
    let unreachable = fw.update().await;
    assert_eq!(unreachable["state"], "TASK_UNREACHABLE");
    assert_eq!(unreachable["reason"], "REASON_AGENT_REMOVED");
    assert!(
        unreachable["unreachable_time"]["nanoseconds"]
            .as_i64()
            .unwrap()
            > 0
    );
    let shutdown = agent.next_of(AgentEvent::Shutdown).await;
    assert_eq!(
        shutdown.shutdown.unwrap().message.as_deref(),
        Some("health check timed out")
    );
    // It comes back: the partition-aware task is running again.
    assert_eq!(agent.reregister().await, 200);
    let tasks = master.operator(r#"{"type":"GET_TASKS"}"#).await;
    assert_eq!(tasks["get_tasks"]["tasks"][0]["task_id"]["value"], "p");
    assert_eq!(tasks["get_tasks"]["tasks"][0]["state"], "TASK_RUNNING");
}

#[tokio::test]
async fn an_agent_that_reregisters_in_time_keeps_its_tasks() {
    let (master, mut agent) = setup().await;
    let mut fw = Framework::subscribe(&master, "").await;
    run(&mut fw, &master, &mut agent, "keep").await;
    agent.disconnect();
    assert_eq!(agent.reregister().await, 200);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let tasks = master.operator(r#"{"type":"GET_TASKS"}"#).await;
    assert_eq!(
        tasks["get_tasks"]["tasks"][0]["state"], "TASK_RUNNING",
        "{tasks}"
    );
    let agents = master.operator(r#"{"type":"GET_AGENTS"}"#).await;
    assert_eq!(agents["get_agents"]["agents"][0]["active"], true);
    let metrics: Value = serde_json::from_str(
        &reqwest::get(master.url("/metrics/snapshot"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(metrics["master/slave_reregistrations"], 1.0);
    assert_eq!(metrics["master/tasks_lost"], 0.0);
}

#[tokio::test]
async fn a_removed_agent_coming_back_shuts_down_frameworks_told_their_tasks_were_lost() {
    let (master, mut agent) = setup().await;
    let mut fw = Framework::subscribe(&master, "").await;
    run(&mut fw, &master, &mut agent, "old").await;
    agent.disconnect();
    assert_eq!(fw.update().await["state"], "TASK_LOST");
    assert_eq!(agent.reregister().await, 200);
    let shutdown = agent.next_of(AgentEvent::ShutdownFramework).await;
    assert_eq!(
        shutdown.shutdown_framework.unwrap().framework_id.value,
        fw.id
    );
    let tasks = master.operator(r#"{"type":"GET_TASKS"}"#).await;
    assert!(tasks["get_tasks"].get("tasks").is_none(), "{tasks}");
}

#[tokio::test]
async fn offers_past_the_offer_timeout_are_rescinded() {
    let mut config = fast_config();
    config.offer_timeout = Some(Duration::from_millis(200));
    let master = start_with(config).await;
    let _agent = TestAgent::start(&master.url(""), "agent-1", standard_resources()).await;
    let mut fw = Framework::subscribe(&master, "").await;
    let offer = fw.offer().await;
    let rescind = fw.next(event::Type::Rescind).await;
    assert_eq!(rescind["rescind"]["offer_id"], offer["id"]);
    // And the resources come back in a new offer.
    assert_ne!(fw.offer().await["id"], offer["id"]);
}

fn create_disk(id: &str, source: &Value, target: &str) -> Value {
    json!({"type":"CREATE_DISK","id":{"value":id},"create_disk":{"source":source,"target_type":target}})
}

#[tokio::test]
async fn create_disk_and_destroy_disk_are_answered_by_the_agent() {
    let (master, mut agent) = setup().await;
    let mut fw = Framework::subscribe(&master, "").await;
    let offer = fw.offer().await;
    let mut source = resource_named(&offer, "disk", |_| true).unwrap().clone();
    source["scalar"]["value"] = json!(1024.0);
    let body = json!({"type":"ACCEPT","accept":{"offer_ids":[offer["id"]],
        "operations":[create_disk("op-1", &source, "BLOCK")],"filters":{"refuse_seconds":0.0}}});
    assert_eq!(fw.call(&master, body).await, 202);
    let apply = agent
        .next_of(AgentEvent::ApplyOperation)
        .await
        .apply_operation
        .unwrap();
    assert_eq!(apply.operation_info.id.unwrap().value, "op-1");
    let status = fw.operation().await;
    assert_eq!(status["state"], "OPERATION_FINISHED");
    assert_eq!(status["operation_id"]["value"], "op-1");
    assert_eq!(status["agent_id"]["value"], agent.id());
    assert_eq!(status["resource_provider_id"]["value"], PROVIDER);
    assert!(status["uuid"]["value"].is_string());
    let ack = json!({"type":"ACKNOWLEDGE_OPERATION_STATUS","acknowledge_operation_status":{
        "agent_id": status["agent_id"], "resource_provider_id": status["resource_provider_id"],
        "uuid": status["uuid"]["value"], "operation_id": status["operation_id"]}});
    assert_eq!(fw.call(&master, ack).await, 202);
    let acked = agent.next_of(AgentEvent::AcknowledgeOperationStatus).await;
    assert_eq!(
        acked.acknowledge_operation_status.unwrap().operation_uuid,
        apply.operation_uuid
    );
    // The new BLOCK disk is offered whole, next to the smaller pool.
    let is_block = |r: &Value| r["disk"]["source"]["type"] == "BLOCK";
    let offer = fw
        .offer_where(&master, |o| resource_named(o, "disk", is_block).is_some())
        .await;
    let block = resource_named(&offer, "disk", is_block).unwrap().clone();
    let pool = resource_named(&offer, "disk", |r| r["disk"]["source"]["type"] == "RAW").unwrap();
    assert_eq!(block["scalar"]["value"], 1024.0);
    assert_eq!(block["disk"]["source"]["id"], "vol-1");
    assert_eq!(
        block["disk"]["source"]["metadata"]["labels"][0]["value"],
        "/dev/ublkb1"
    );
    assert_eq!(pool["scalar"]["value"], 9216.0);
    // DESTROY_DISK gives the space back to the pool.
    let body = json!({"type":"ACCEPT","accept":{"offer_ids":[offer["id"]],"operations":[
        {"type":"DESTROY_DISK","id":{"value":"op-2"},"destroy_disk":{"source":block}}],"filters":{"refuse_seconds":0.0}}});
    fw.call(&master, body).await;
    assert_eq!(fw.operation().await["state"], "OPERATION_FINISHED");
    let whole = |r: &Value| r["disk"]["source"]["type"] == "RAW" && r["scalar"]["value"] == 10240.0;
    fw.offer_where(&master, |o| resource_named(o, "disk", whole).is_some())
        .await;
    let operations = master.operator(r#"{"type":"GET_OPERATIONS"}"#).await;
    assert_eq!(
        operations["get_operations"]["operations"][0]["info"]["id"]["value"],
        "op-2"
    );
}

#[tokio::test]
async fn failed_and_invalid_disk_operations() {
    let (master, agent) = setup().await;
    agent.behave(|b| b.operations = OperationState::OperationFailed);
    let mut fw = Framework::subscribe(&master, "").await;
    let offer = fw.offer().await;
    let pool = resource_named(&offer, "disk", |_| true).unwrap().clone();
    let cpus = resource_named(&offer, "cpus", |_| true).unwrap().clone();
    let body = json!({"type":"ACCEPT","accept":{"offer_ids":[offer["id"]],"operations":[
        create_disk("bad-source", &cpus, "BLOCK"),
        create_disk("bad-target", &pool, "RAW"),
        create_disk("fails", &pool, "MOUNT")],"filters":{"refuse_seconds":0.0}}});
    fw.call(&master, body).await;
    let mut seen = std::collections::BTreeMap::new();
    while seen.len() < 3 {
        let status = fw.operation().await;
        seen.insert(
            status["operation_id"]["value"].as_str().unwrap().to_owned(),
            status,
        );
    }
    assert_eq!(seen["bad-source"]["state"], "OPERATION_ERROR");
    assert!(
        seen["bad-source"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Invalid resource: Invalid resources: DiskInfo should not be set")
            || seen["bad-source"]["message"]
                .as_str()
                .unwrap()
                .contains("'source' is not managed by a resource provider"),
        "{}",
        seen["bad-source"]
    );
    assert_eq!(seen["bad-target"]["state"], "OPERATION_ERROR");
    assert!(seen["bad-target"]["message"]
        .as_str()
        .unwrap()
        .starts_with("'target_type' is neither MOUNT or BLOCK"));
    assert_eq!(seen["fails"]["state"], "OPERATION_FAILED");
    // The pool is whole again.
    let whole = |r: &Value| r["scalar"]["value"] == 10240.0;
    fw.offer_where(&master, |o| resource_named(o, "disk", whole).is_some())
        .await;
}

#[tokio::test]
async fn reserve_is_applied_at_once_and_confirmed_by_the_agent() {
    let (master, mut agent) = setup().await;
    let extra = r#","roles":["db"],"capabilities":[{"type":"MULTI_ROLE"},{"type":"RESERVATION_REFINEMENT"}]"#;
    let mut fw = Framework::subscribe(&master, extra).await;
    let offer = fw.offer().await;
    let reserved = json!({"name":"cpus","type":"SCALAR","scalar":{"value":1.0},
        "allocation_info":{"role":"db"},
        "reservations":[{"type":"DYNAMIC","role":"db","principal":"ops"}]});
    let body = json!({"type":"ACCEPT","accept":{"offer_ids":[offer["id"]],"operations":[
        {"type":"RESERVE","id":{"value":"r1"},"reserve":{"resources":[reserved]}}],"filters":{"refuse_seconds":0.0}}});
    fw.call(&master, body).await;
    agent.next_of(AgentEvent::ApplyOperation).await;
    assert_eq!(fw.operation().await["state"], "OPERATION_FINISHED");
    let reserved = |r: &Value| r.get("reservations").is_some();
    let offer = fw
        .offer_where(&master, |o| resource_named(o, "cpus", reserved).is_some())
        .await;
    let r = resource_named(&offer, "cpus", reserved).unwrap();
    assert_eq!(r["reservations"][0]["role"], "db");
    assert_eq!(r["scalar"]["value"], 1.0);
    let agents = master.operator(r#"{"type":"GET_AGENTS"}"#).await;
    let total = agents["get_agents"]["agents"][0]["total_resources"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        total
            .iter()
            .any(|r| r["name"] == "cpus" && r["reservations"][0]["principal"] == "ops"),
        "{total:?}"
    );
}

#[tokio::test]
async fn the_agent_protocol_refuses_bad_requests() {
    let (master, agent) = setup().await;
    let post = |path: &'static str, content_type: &'static str, body: Vec<u8>| {
        let master = &master;
        async move {
            master
                .post(path, &[("Content-Type", content_type)], body)
                .await
        }
    };
    let stranger = agent::Subscribe {
        agent_id: AgentId {
            value: "nobody".into(),
        },
        secret: None,
    };
    let response = post(
        "/agent/v1/subscribe",
        PROTOBUF,
        ContentType::Protobuf.encode(&stranger),
    )
    .await;
    assert_eq!(response.status(), 403);
    assert_eq!(
        post("/agent/v1/register", PROTOBUF, vec![0xff, 0xff])
            .await
            .status(),
        400
    );
    assert_eq!(
        post("/agent/v1/register", "text/plain", vec![])
            .await
            .status(),
        415
    );
    assert_eq!(
        reqwest::get(master.url("/agent/v1/register"))
            .await
            .unwrap()
            .status(),
        405
    );
    // RAW disks must come from a resource provider; an id must not be chosen by the agent.
    let mut raw = common::agent::raw_pool("fast", 10.0);
    raw.provider_id = None;
    let register = agent::RegisterAgent {
        agent_info: mesoblk_proto::mesos::v1::AgentInfo {
            hostname: "h".into(),
            resources: vec![raw],
            ..Default::default()
        },
        endpoint: "http://127.0.0.1:1".into(),
        ..Default::default()
    };
    let response = post(
        "/agent/v1/register",
        PROTOBUF,
        ContentType::Protobuf.encode(&register),
    )
    .await;
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("resource provider"));
    let reregister = agent::ReregisterAgent {
        agent: agent::RegisterAgent {
            endpoint: "http://127.0.0.1:1".into(),
            agent_info: mesoblk_proto::mesos::v1::AgentInfo {
                hostname: "h".into(),
                ..Default::default()
            },
            ..Default::default()
        },
        ..Default::default()
    };
    let response = post(
        "/agent/v1/reregister",
        PROTOBUF,
        ContentType::Protobuf.encode(&reregister),
    )
    .await;
    assert_eq!(response.status(), 400);
    // A status update must carry a 16-byte uuid.
    let mut update = agent::StatusUpdate::default();
    update.agent_id.value = agent.id();
    update.status.uuid = Some(vec![1, 2, 3]);
    let response = agent
        .post_raw(
            "/agent/v1/status_update",
            ContentType::Protobuf.encode(&update),
        )
        .await;
    assert_eq!(response.status(), 400);
    // JSON works too.
    let pong = format!(r#"{{"agent_id":{{"value":"{}"}}}}"#, agent.id());
    assert_eq!(
        post("/agent/v1/pong", JSON, pong.into_bytes())
            .await
            .status(),
        202
    );
}

#[tokio::test]
async fn arbitrary_bodies_never_break_the_agent_endpoints() {
    let (master, agent) = setup().await;
    // A fixed-seed generator: the same bytes every run, no dependency.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let paths = [
        "/agent/v1/register",
        "/agent/v1/reregister",
        "/agent/v1/subscribe",
        "/agent/v1/pong",
        "/agent/v1/status_update",
        "/agent/v1/operation_status",
    ];
    for round in 0..60 {
        let len = (next() % 96) as usize;
        let mut body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if round % 3 == 0 {
            // Valid framing with a plausible first field, to get past the outer layer.
            body.splice(0..0, [0x0a, 0x03, b'a', b'b', b'c']);
        }
        for path in paths {
            let content_type = if round % 2 == 0 { PROTOBUF } else { JSON };
            let response = master
                .post(path, &[("Content-Type", content_type)], body.clone())
                .await;
            let status = response.status().as_u16();
            assert!(
                (400..500).contains(&status) || status == 200 || status == 202,
                "{path} answered {status} to {body:?}"
            );
        }
    }
    // The master and the agent are still fine.
    assert_eq!(
        master.operator(r#"{"type":"GET_HEALTH"}"#).await["get_health"]["healthy"],
        true
    );
    let agents = master.operator(r#"{"type":"GET_AGENTS"}"#).await;
    assert_eq!(
        agents["get_agents"]["agents"][0]["agent_info"]["id"]["value"],
        agent.id()
    );
}
