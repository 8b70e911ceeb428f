//! The operator API's SUBSCRIBE (`POST /api/v1`) against the real router: SUBSCRIBED with the
//! state, then FRAMEWORK_*, AGENT_*, TASK_* events as a test agent and a scheduler change the
//! cluster, HEARTBEATs, protobuf streams, and authentication. JSON events are read as the raw
//! JSON the master wrote, as operator clients (pymesos's `MesosOperatorMasterDriver`) see it.

mod common;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use common::agent::{standard_resources, TestAgent};
use common::framework::Framework;
use common::*;
use mesoblk_master::auth::{AuthConfig, Credentials};
use mesoblk_master::Config;
use mesoblk_proto::codec::ContentType;
use mesoblk_proto::mesos::v1::master::{event, Event};
use serde_json::{json, Value};

const SUBSCRIBE: &str = r#"{"type":"SUBSCRIBE"}"#;

/// An operator subscription read as Mesos JSON.
struct Operator {
    stream: EventStream,
}

impl Operator {
    async fn subscribe(master: &TestMaster) -> Operator {
        let response = master
            .post(
                "/api/v1",
                &[("Content-Type", JSON), ("Accept", JSON)],
                SUBSCRIBE,
            )
            .await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["Content-Type"], JSON);
        assert!(
            response.headers().get("Mesos-Stream-Id").is_none(),
            "Mesos hands out no stream id to operators"
        );
        Operator {
            stream: EventStream::operator(response, ContentType::Json),
        }
    }

    async fn next(&mut self) -> Value {
        let record = self.stream.next_record().await.expect("the stream is open");
        serde_json::from_slice(&record).expect("each record is one JSON event")
    }

    /// Skips events until one of `kind` (e.g. "TASK_ADDED").
    async fn next_of(&mut self, kind: &str) -> Value {
        loop {
            let event = self.next().await;
            if event["type"] == kind {
                return event;
            }
        }
    }

    /// The next TASK_UPDATED to `state`.
    async fn task_updated_to(&mut self, state: &str) -> Value {
        loop {
            let event = self.next_of("TASK_UPDATED").await;
            if event["task_updated"]["state"] == state {
                return event;
            }
        }
    }
}

fn launch_one(offer: &Value, task_id: &str) -> Value {
    let scalar = |name: &str, x: f64| json!({"name": name, "type": "SCALAR", "scalar": {"value": x}, "role": "*"});
    json!({"type":"ACCEPT","accept":{"offer_ids":[offer["id"]],"operations":[{"type":"LAUNCH",
        "launch":{"task_infos":[{"name": task_id, "task_id": {"value": task_id},
        "agent_id": offer["agent_id"], "command": {"shell": true, "value": "sleep 1000"},
        "resources": [scalar("cpus", 1.0), scalar("mem", 128.0)]}]}}],
        "filters":{"refuse_seconds":0.0}}})
}

#[tokio::test]
async fn subscribers_see_the_state_then_every_change() {
    let master = start_with(fast_config()).await;
    let mut agent = TestAgent::start(&master.url(""), "agent-1", standard_resources()).await;
    let mut operator = Operator::subscribe(&master).await;

    let subscribed = operator.next().await;
    assert_eq!(subscribed["type"], "SUBSCRIBED", "{subscribed}");
    assert_eq!(
        subscribed["subscribed"]["heartbeat_interval_seconds"],
        600.0
    );
    let state = &subscribed["subscribed"]["get_state"];
    let agents = state["get_agents"]["agents"].as_array().expect("agents");
    assert_eq!(agents.len(), 1, "{state}");
    assert_eq!(agents[0]["agent_info"]["id"]["value"], agent.id());
    assert_eq!(agents[0]["agent_info"]["hostname"], "agent-1");
    assert!(
        state["get_frameworks"].get("frameworks").is_none(),
        "{state}"
    );

    let mut fw = Framework::subscribe(&master, "").await;
    let added = operator.next_of("FRAMEWORK_ADDED").await;
    let framework = &added["framework_added"]["framework"];
    assert_eq!(framework["framework_info"]["id"]["value"], fw.id);
    assert_eq!(framework["framework_info"]["name"], "tester");
    assert_eq!(framework["connected"], true);

    let offer = fw.offer().await;
    assert_eq!(fw.call(&master, launch_one(&offer, "t1")).await, 202);
    let added = operator.next_of("TASK_ADDED").await;
    let task = &added["task_added"]["task"];
    assert_eq!(task["task_id"]["value"], "t1");
    assert_eq!(task["framework_id"]["value"], fw.id);
    assert_eq!(task["agent_id"]["value"], agent.id());
    assert_eq!(task["state"], "TASK_STAGING");
    let running = operator.task_updated_to("TASK_RUNNING").await;
    let updated = &running["task_updated"];
    assert_eq!(updated["framework_id"]["value"], fw.id);
    assert_eq!(updated["status"]["task_id"]["value"], "t1");
    assert_eq!(updated["status"]["state"], "TASK_RUNNING");

    let second = TestAgent::start(&master.url(""), "agent-2", standard_resources()).await;
    let added = operator.next_of("AGENT_ADDED").await;
    let info = &added["agent_added"]["agent"]["agent_info"];
    assert_eq!(info["id"]["value"], second.id());
    assert_eq!(info["hostname"], "agent-2");

    assert_eq!(fw.call(&master, json!({"type":"TEARDOWN"})).await, 202);
    let killed = operator.task_updated_to("TASK_KILLED").await;
    assert_eq!(killed["task_updated"]["status"]["task_id"]["value"], "t1");
    let removed = operator.next_of("FRAMEWORK_REMOVED").await;
    assert_eq!(
        removed["framework_removed"]["framework_info"]["id"]["value"],
        fw.id
    );

    // An agent that stops answering pings is removed (fast_config: 4 × 150 ms).
    agent.disconnect();
    let removed = operator.next_of("AGENT_REMOVED").await;
    assert_eq!(removed["agent_removed"]["agent_id"]["value"], agent.id());
}

#[tokio::test]
async fn a_framework_that_disconnects_is_updated_not_removed() {
    let master = start_with(fast_config()).await;
    let mut operator = Operator::subscribe(&master).await;
    assert_eq!(operator.next().await["type"], "SUBSCRIBED");
    let fw = Framework::subscribe(&master, r#","failover_timeout":600"#).await;
    let id = fw.id.clone();
    operator.next_of("FRAMEWORK_ADDED").await;
    drop(fw);
    let updated = operator.next_of("FRAMEWORK_UPDATED").await;
    let framework = &updated["framework_updated"]["framework"];
    assert_eq!(framework["framework_info"]["id"]["value"], id);
    assert_eq!(framework["connected"], false);
    assert_eq!(framework["active"], false);
}

#[tokio::test]
async fn protobuf_subscribers_get_protobuf_records() {
    let master = start_with(fast_config()).await;
    let agent = TestAgent::start(&master.url(""), "agent-1", standard_resources()).await;
    let response = master
        .post(
            "/api/v1",
            &[("Content-Type", JSON), ("Accept", PROTOBUF)],
            SUBSCRIBE,
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["Content-Type"], PROTOBUF);
    let mut stream = EventStream::operator(response, ContentType::Protobuf);
    let next = |record: Vec<u8>| -> Event {
        ContentType::Protobuf
            .decode(&record)
            .expect("a protobuf master::Event")
    };

    let subscribed = next(stream.next_record().await.expect("SUBSCRIBED"));
    assert_eq!(subscribed.r#type(), event::Type::Subscribed);
    let body = subscribed.subscribed.expect("subscribed body");
    assert_eq!(body.heartbeat_interval_seconds, Some(600.0));
    let agents = body
        .get_state
        .and_then(|s| s.get_agents)
        .expect("get_agents")
        .agents;
    assert_eq!(agents.len(), 1);
    assert_eq!(
        agents[0].agent_info.id.as_ref().map(|i| i.value.clone()),
        Some(agent.id())
    );

    let fw = Framework::subscribe(&master, "").await;
    let added = loop {
        let event = next(stream.next_record().await.expect("an event"));
        if event.r#type() == event::Type::FrameworkAdded {
            break event;
        }
    };
    let framework = added.framework_added.expect("body").framework;
    assert_eq!(
        framework.framework_info.id.map(|i| i.value),
        Some(fw.id.clone())
    );
}

#[tokio::test]
async fn heartbeats_follow_at_the_configured_interval() {
    let mut config = fast_config();
    config.heartbeat_interval = Duration::from_millis(50);
    let master = start_with(config).await;
    let mut operator = Operator::subscribe(&master).await;
    let subscribed = operator.next().await;
    assert_eq!(subscribed["type"], "SUBSCRIBED");
    assert_eq!(subscribed["subscribed"]["heartbeat_interval_seconds"], 0.05);
    // Nothing else happens on this master, so the next events are heartbeats.
    for _ in 0..2 {
        assert_eq!(operator.next().await, json!({"type":"HEARTBEAT"}));
    }
}

#[tokio::test]
async fn subscribe_needs_credentials_when_readwrite_is_on() {
    let mut config = Config::new("test-master.local", Ipv4Addr::LOCALHOST, 5050);
    config.auth = AuthConfig {
        credentials: Some(Arc::new(
            Credentials::parse("alice wonderland\n").expect("parses"),
        )),
        readwrite: true,
        ..AuthConfig::default()
    };
    let master = start_with(config).await;
    let refused = master
        .post(
            "/api/v1",
            &[("Content-Type", JSON), ("Accept", JSON)],
            SUBSCRIBE,
        )
        .await;
    assert_eq!(refused.status(), 401);
    let wrong = format!("Basic {}", STANDARD.encode("alice:wrong"));
    let refused = master
        .post(
            "/api/v1",
            &[("Content-Type", JSON), ("Authorization", &wrong)],
            SUBSCRIBE,
        )
        .await;
    assert_eq!(refused.status(), 401);

    let good = format!("Basic {}", STANDARD.encode("alice:wonderland"));
    let response = master
        .post(
            "/api/v1",
            &[("Content-Type", JSON), ("Authorization", &good)],
            SUBSCRIBE,
        )
        .await;
    assert_eq!(response.status(), 200);
    let mut stream = EventStream::operator(response, ContentType::Json);
    let record = stream.next_record().await.expect("SUBSCRIBED");
    let event: Value = serde_json::from_slice(&record).expect("JSON");
    assert_eq!(event["type"], "SUBSCRIBED");
}

#[tokio::test]
async fn bad_subscribe_requests_are_refused_like_other_calls() {
    let master = start_with(fast_config()).await;
    let unacceptable = master
        .post(
            "/api/v1",
            &[("Content-Type", JSON), ("Accept", "text/html")],
            SUBSCRIBE,
        )
        .await;
    assert_eq!(unacceptable.status(), 406);
    let get = reqwest::get(master.url("/api/v1")).await.expect("GET");
    assert_eq!(get.status(), 405);
    assert_eq!(master.handle.with(|m| m.operator_subscriber_count()), 0);
}
