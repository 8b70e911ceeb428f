//! Executor → scheduler messages: an agent posts an executor's MESSAGE to
//! `POST /agent/v1/framework_message` and the scheduler gets a MESSAGE event with the agent id,
//! executor id and data; refusals (unknown agent 403, bad body 400, not POST 405) and messages
//! for unknown frameworks (202, dropped and counted, as Mesos's master does).

mod common;

use common::agent::{standard_resources, TestAgent};
use common::framework::Framework;
use common::*;
use mesoblk_proto::codec::ContentType;
use mesoblk_proto::mesoblk::agent::v1 as agent;
use mesoblk_proto::mesos::v1::scheduler::event;
use mesoblk_proto::mesos::v1::{AgentId, ExecutorId, FrameworkId};
use serde_json::Value;

const PATH: &str = "/agent/v1/framework_message";

fn message(agent_id: &str, framework_id: &str, data: &[u8]) -> Vec<u8> {
    ContentType::Protobuf.encode(&agent::ExecutorMessage {
        agent_id: AgentId {
            value: agent_id.into(),
        },
        framework_id: FrameworkId {
            value: framework_id.into(),
        },
        executor_id: ExecutorId {
            value: "exec-1".into(),
        },
        data: data.to_vec(),
    })
}

async fn counter(master: &TestMaster, name: &str) -> f64 {
    let metrics: Value = serde_json::from_str(
        &reqwest::get(master.url("/metrics/snapshot"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    metrics[name].as_f64().unwrap_or(0.0)
}

#[tokio::test]
async fn executor_messages_reach_the_scheduler_as_message_events() {
    let master = start_with(fast_config()).await;
    let agent = TestAgent::start(&master.url(""), "agent-1", standard_resources()).await;
    let mut fw = Framework::subscribe(&master, "").await;
    let post = |body: Vec<u8>| master.post(PATH, &[("Content-Type", PROTOBUF)], body);

    let answer = post(message(&agent.id(), &fw.id, b"hello scheduler")).await;
    assert_eq!(answer.status(), 202);
    let event = fw.next(event::Type::Message).await;
    assert_eq!(event["message"]["agent_id"]["value"], agent.id());
    assert_eq!(event["message"]["executor_id"]["value"], "exec-1");
    // Mesos JSON: bytes in base64.
    assert_eq!(event["message"]["data"], "aGVsbG8gc2NoZWR1bGVy");
    assert_eq!(
        counter(&master, "master/valid_executor_to_framework_messages").await,
        1.0
    );

    // A message for a framework the master does not know is dropped.
    let answer = post(message(&agent.id(), "no-such-framework", b"x")).await;
    assert_eq!(answer.status(), 202);
    assert_eq!(
        counter(&master, "master/invalid_executor_to_framework_messages").await,
        1.0
    );

    // Refusals.
    assert_eq!(post(message("stranger", &fw.id, b"x")).await.status(), 403);
    assert_eq!(post(vec![0xff, 0xff]).await.status(), 400);
    let json = master
        .post(PATH, &[("Content-Type", "text/plain")], b"{}".to_vec())
        .await;
    assert_eq!(json.status(), 415);
    let get = reqwest::get(master.url(PATH)).await.unwrap();
    assert_eq!(get.status(), 405);
    assert!(fw
        .within(event::Type::Message, std::time::Duration::from_millis(300))
        .await
        .is_none());
}
