//! `POST /api/v1/executor` on the wire: every refused request with its status code (and
//! nothing changed by it), SUBSCRIBE in both encodings with the queued LAUNCH, re-subscription
//! replacing a connection, heartbeats, and the registration timeout. The test plays the
//! executor itself over HTTP; the process the API started (`sleep`) never subscribes.

mod executor_api_common;

use std::time::{Duration, Instant};

use executor_api_common::*;
use mesoblk_agent::executor::process::read_stat;
use mesoblk_agent::executor_api::Work;
use mesoblk_proto::codec::ContentType;
use mesoblk_proto::mesos::v1::executor::{call, event, Call};
use mesoblk_proto::mesos::v1::task_status::{Reason, Source};
use mesoblk_proto::mesos::v1::{
    DurationInfo, ExecutorId, FrameworkId, KillPolicy, TaskGroupInfo, TaskId, TaskState, TaskStatus,
};
use prost::Message;
use reqwest::Method;
use serde_json::json;

const EXECUTOR: &str = "http-1";

/// A change to a JSON status.
type Edit = fn(&mut serde_json::Value);

fn call_json(kind: &str, extra: serde_json::Value) -> Vec<u8> {
    let mut body = json!({
        "type": kind,
        "framework_id": {"value": FRAMEWORK},
        "executor_id": {"value": EXECUTOR},
    });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    serde_json::to_vec(&body).unwrap()
}

/// An UPDATE of task `t1`: a valid executor update, then changed by `edit`.
fn update_json(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut status = json!({
        "task_id": {"value": "t1"},
        "state": "TASK_RUNNING",
        "source": "SOURCE_EXECUTOR",
        "uuid": "AAECAwQFBgcICQoLDA0ODw==",
        "timestamp": 1700000000,
    });
    edit(&mut status);
    call_json("UPDATE", json!({"update": {"status": status}}))
}

async fn post(url: &str, content_type: Option<&str>, body: Vec<u8>) -> Answer {
    let headers: Vec<(&str, &str)> = content_type
        .map(|c| ("content-type", c))
        .into_iter()
        .collect();
    request(url, Method::POST, &headers, body).await
}

const JSON: Option<&str> = Some("application/json");

/// The next event that is not a HEARTBEAT.
async fn skip_heartbeats(stream: &mut EventStream) -> mesoblk_proto::mesos::v1::executor::Event {
    loop {
        let event = stream.next().await.expect("an event");
        if event.r#type() != event::Type::Heartbeat {
            return event;
        }
    }
}

fn start_sleeper(agent: &Agent) {
    let launch = launch(
        false,
        executor(EXECUTOR, "exec sleep 60"),
        vec![task("t1", "x")],
        &[],
    );
    agent.api.launch(launch).expect("the executor starts");
}

#[test]
fn bad_requests_are_refused_with_mesos_status_codes_and_change_nothing() {
    let dir = work_dir();
    let agent = Agent::start(dir.path(), 0, |_| {});
    start_sleeper(&agent);
    let url = agent.url();
    agent.block_on(async {
        let get = request(&url, Method::GET, &[], Vec::new()).await;
        assert_eq!(get.status, 405);
        let no_type = post(
            &url,
            None,
            call_json("MESSAGE", json!({"message": {"data": ""}})),
        )
        .await;
        assert_eq!(no_type.status, 400);
        let text = post(&url, Some("text/plain"), b"hi".to_vec()).await;
        assert_eq!(text.status, 415);
        let garbage = post(&url, JSON, b"{not json".to_vec()).await;
        assert_eq!(garbage.status, 400);
        let bad_proto = post(&url, Some("application/x-protobuf"), vec![0xff, 0xff, 0xff]).await;
        assert_eq!(bad_proto.status, 400);

        let mut other_fw: serde_json::Value =
            serde_json::from_slice(&call_json("HEARTBEAT", json!({}))).unwrap();
        other_fw["framework_id"]["value"] = json!("other-framework");
        let answer = post(&url, JSON, serde_json::to_vec(&other_fw).unwrap()).await;
        assert_eq!(answer.status, 400);
        assert_eq!(answer.body, b"Framework cannot be found");
        let mut other_ex = other_fw.clone();
        other_ex["framework_id"]["value"] = json!(FRAMEWORK);
        other_ex["executor_id"]["value"] = json!("other-executor");
        let answer = post(&url, JSON, serde_json::to_vec(&other_ex).unwrap()).await;
        assert_eq!(answer.status, 400);
        assert_eq!(answer.body, b"Executor cannot be found");

        let untyped =
            json!({"framework_id": {"value": FRAMEWORK}, "executor_id": {"value": EXECUTOR}});
        let answer = post(&url, JSON, serde_json::to_vec(&untyped).unwrap()).await;
        assert_eq!(answer.status, 400);
        let answer = post(&url, JSON, call_json("SUBSCRIBE", json!({}))).await;
        assert_eq!(answer.status, 400, "SUBSCRIBE without 'subscribe'");
        let answer = post(&url, JSON, call_json("MESSAGE", json!({}))).await;
        assert_eq!(answer.status, 400, "MESSAGE without 'message'");
        let answer = post(&url, JSON, call_json("UPDATE", json!({}))).await;
        assert_eq!(answer.status, 400, "UPDATE without 'update'");

        let bad_updates: [(&str, Edit); 5] = [
            ("no uuid", |s| {
                s.as_object_mut().unwrap().remove("uuid");
            }),
            ("short uuid", |s| s["uuid"] = json!("AAEC")),
            ("agent source", |s| s["source"] = json!("SOURCE_AGENT")),
            ("staging", |s| s["state"] = json!("TASK_STAGING")),
            ("other executor", |s| {
                s["executor_id"] = json!({"value": "someone-else"})
            }),
        ];
        for (what, edit) in bad_updates {
            let answer = post(&url, JSON, update_json(edit)).await;
            assert_eq!(
                answer.status,
                400,
                "{what}: {}",
                String::from_utf8_lossy(&answer.body)
            );
        }

        let subscribe = call_json("SUBSCRIBE", json!({"subscribe": {}}));
        let refused = request(
            &url,
            Method::POST,
            &[
                ("content-type", "application/json"),
                ("accept", "text/html"),
            ],
            subscribe,
        )
        .await;
        assert_eq!(refused.status, 406);
    });
    // Nothing reached the sinks, and the executor is still waiting for its subscription.
    assert!(agent.updates.try_recv().is_err());
    assert!(agent.messages.try_recv().is_err());
    let executors = agent.api.executors();
    assert_eq!(executors.len(), 1);
    assert!(!executors[0].connected);
    agent.api.shutdown_executor(FRAMEWORK, EXECUTOR).unwrap();
}

#[test]
fn subscribe_streams_events_and_calls_are_accepted() {
    let dir = work_dir();
    let agent = Agent::start(dir.path(), 0, |c| {
        c.heartbeat_interval = Duration::from_millis(300);
        c.shutdown_grace = Duration::from_millis(300);
    });
    start_sleeper(&agent);
    let url = agent.url();
    agent.block_on(async {
        // Protobuf: SUBSCRIBED, then the queued task.
        let subscribe = Call {
            r#type: Some(call::Type::Subscribe as i32),
            framework_id: FrameworkId {
                value: FRAMEWORK.into(),
            },
            executor_id: ExecutorId {
                value: EXECUTOR.into(),
            },
            subscribe: Some(call::Subscribe::default()),
            ..Call::default()
        };
        let mut proto =
            EventStream::open(&url, ContentType::Protobuf, subscribe.encode_to_vec()).await;
        let subscribed = proto.next().await.unwrap();
        assert_eq!(subscribed.r#type(), event::Type::Subscribed);
        let info = subscribed.subscribed.unwrap();
        assert_eq!(info.executor_info.executor_id.value, EXECUTOR);
        assert_eq!(info.framework_info.id.unwrap().value, FRAMEWORK);
        assert_eq!(info.agent_info.id.unwrap().value, AGENT_ID);
        assert!(!info.container_id.unwrap().value.is_empty());
        let launched = proto.next().await.unwrap();
        assert_eq!(launched.r#type(), event::Type::Launch);
        assert_eq!(launched.launch.unwrap().task.task_id.value, "t1");

        // A re-subscription in JSON replaces the first connection, which ends.
        let resubscribe = call_json(
            "SUBSCRIBE",
            json!({"subscribe": {"unacknowledged_tasks": [{"name": "t1", "task_id": {"value": "t1"},
                "agent_id": {"value": AGENT_ID}}]}}),
        );
        let mut stream = EventStream::open(&url, ContentType::Json, resubscribe).await;
        assert_eq!(
            stream.next().await.unwrap().r#type(),
            event::Type::Subscribed
        );
        assert!(proto.next().await.is_none(), "the older stream ends");

        // UPDATE, MESSAGE and HEARTBEAT calls: 202, empty body.
        let update = post(&url, JSON, update_json(|_| {})).await;
        assert_eq!((update.status, update.body.len()), (202, 0));
        let message = post(
            &url,
            JSON,
            call_json("MESSAGE", json!({"message": {"data": "aGk="}})),
        )
        .await;
        assert_eq!((message.status, message.body.len()), (202, 0));
        let heartbeat = post(&url, JSON, call_json("HEARTBEAT", json!({}))).await;
        assert_eq!((heartbeat.status, heartbeat.body.len()), (202, 0));

        // As Mesos: the update is acknowledged once stored, before any scheduler saw it.
        let ack = stream.next().await.unwrap();
        assert_eq!(ack.r#type(), event::Type::Acknowledged);
        let ack = ack.acknowledged.unwrap();
        assert_eq!(ack.task_id.value, "t1");
        assert_eq!(ack.uuid, (0u8..16).collect::<Vec<u8>>());

        // The agent heartbeats the stream.
        assert_eq!(
            stream.next().await.unwrap().r#type(),
            event::Type::Heartbeat
        );

        // A subscribed executor gets later launches, kills (with their policy) and scheduler
        // messages at once.
        let more = launch(
            false,
            executor(EXECUTOR, "unused"),
            vec![task("t2", "y")],
            &[],
        );
        agent.api.launch(more).unwrap();
        let policy = KillPolicy {
            grace_period: Some(DurationInfo {
                nanoseconds: 2_000_000_000,
            }),
        };
        agent.api.kill(FRAMEWORK, "t2", Some(policy)).unwrap();
        agent
            .api
            .framework_message(FRAMEWORK, EXECUTOR, b"from the scheduler")
            .unwrap();
        let launched = skip_heartbeats(&mut stream).await.launch.unwrap().task;
        assert_eq!(launched.task_id.value, "t2");
        let kill = skip_heartbeats(&mut stream).await.kill.unwrap();
        assert_eq!(
            (kill.task_id.value.as_str(), kill.kill_policy),
            ("t2", Some(policy))
        );
        let message = skip_heartbeats(&mut stream).await.message.unwrap();
        assert_eq!(message.data, b"from the scheduler");
    });
    let update = agent.next_update();
    assert_eq!(update.task_id.value, "t1");
    assert_eq!(state(&update), TaskState::TaskRunning);
    assert_eq!(update.agent_id.unwrap().value, AGENT_ID);
    assert_eq!(update.executor_id.unwrap().value, EXECUTOR);
    assert_eq!(update.uuid.unwrap(), (0u8..16).collect::<Vec<u8>>());
    let message = agent.next_message();
    assert_eq!(message.data, b"hi");
    assert_eq!(message.executor_id, EXECUTOR);
    agent.api.shutdown_executor(FRAMEWORK, EXECUTOR).unwrap();
    agent.wait_no_executors();
}

#[test]
fn an_executor_that_never_subscribes_is_killed_and_its_tasks_fail() {
    let dir = work_dir();
    let agent = Agent::start(dir.path(), 0, |c| {
        c.registration_timeout = Duration::from_millis(500);
    });
    let started = Instant::now();
    start_sleeper(&agent);
    let pid = agent.api.executors()[0].pid;
    let status: TaskStatus = agent.next_update();
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert_eq!(status.task_id, TaskId { value: "t1".into() });
    assert_eq!(state(&status), TaskState::TaskFailed);
    assert_eq!(status.reason(), Reason::ExecutorRegistrationTimeout);
    assert_eq!(status.source(), Source::Agent);
    assert_eq!(status.message(), "Executor did not register within 500ms");
    agent.wait_no_executors();
    // The whole process group is gone.
    assert_eq!(read_stat(pid), None);
}

#[test]
fn killing_a_queued_task_ends_it_and_shuts_an_idle_executor_down() {
    let dir = work_dir();
    let agent = Agent::start(dir.path(), 0, |_| {});
    start_sleeper(&agent);
    agent.api.kill(FRAMEWORK, "t1", None).unwrap();
    let status = agent.next_update();
    assert_eq!(state(&status), TaskState::TaskKilled);
    assert_eq!(status.reason(), Reason::TaskKilledDuringLaunch);
    assert_eq!(status.source(), Source::Agent);
    agent.wait_no_executors();
    assert!(
        agent.updates.try_recv().is_err(),
        "no TASK_FAILED for a killed task"
    );
}

#[test]
fn until_recovery_ran_every_call_answers_503() {
    let dir = work_dir();
    let agent = Agent::start_recovering(dir.path(), 0, false, |_| {});
    let url = agent.url();
    agent.block_on(async {
        let subscribe = call_json("SUBSCRIBE", json!({"subscribe": {}}));
        let answer = post(&url, JSON, subscribe).await;
        assert_eq!(answer.status, 503);
        assert_eq!(answer.body, b"Agent has not finished recovery");
    });
    assert_eq!(agent.api.recover().unwrap(), 0);
    agent.block_on(async {
        let answer = post(&url, JSON, call_json("HEARTBEAT", json!({}))).await;
        assert_eq!(answer.status, 400, "recovered: now the executor is unknown");
    });
}

fn group(ids: &[&str]) -> Work {
    Work::Group(TaskGroupInfo {
        tasks: ids.iter().map(|id| task(id, "x")).collect(),
    })
}

#[test]
fn task_groups_go_out_whole_and_a_framework_shutdown_ends_its_executors() {
    let dir = work_dir();
    let agent = Agent::start(dir.path(), 0, |c| {
        c.shutdown_grace = Duration::from_millis(300)
    });
    let sleeper = executor(EXECUTOR, "exec sleep 60");
    let mut first = launch(false, sleeper.clone(), Vec::new(), &[]);
    first.work = group(&["g1a", "g1b"]);
    agent.api.launch(first).unwrap();
    let mut second = launch(false, sleeper, Vec::new(), &[]);
    second.work = group(&["g2a", "g2b"]);
    agent.api.launch(second).unwrap();
    let other = launch(
        false,
        executor("http-2", "exec sleep 60"),
        vec![task("c", "x")],
        &[],
    );
    agent.api.launch(other).unwrap();

    // Killing one task of a queued group ends the whole group.
    agent.api.kill(FRAMEWORK, "g2a", None).unwrap();
    let mut killed: Vec<String> = agent
        .updates(2)
        .iter()
        .inspect(|s| assert_eq!(state(s), TaskState::TaskKilled))
        .map(|s| s.task_id.value.clone())
        .collect();
    killed.sort();
    assert_eq!(killed, ["g2a", "g2b"]);

    let url = agent.url();
    let subscribe = call_json("SUBSCRIBE", json!({"subscribe": {}}));
    let mut stream = agent.block_on(async {
        let mut stream = EventStream::open(&url, ContentType::Json, subscribe).await;
        assert_eq!(
            stream.next().await.unwrap().r#type(),
            event::Type::Subscribed
        );
        let launch = stream.next().await.unwrap();
        assert_eq!(launch.r#type(), event::Type::LaunchGroup);
        let ids: Vec<String> = launch
            .launch_group
            .unwrap()
            .task_group
            .tasks
            .into_iter()
            .map(|t| t.task_id.value)
            .collect();
        assert_eq!(ids, ["g1a", "g1b"]);
        stream
    });

    agent.api.shutdown_framework(FRAMEWORK);
    agent.block_on(async {
        assert_eq!(stream.next().await.unwrap().r#type(), event::Type::Shutdown);
    });
    let mut failed: Vec<String> = agent
        .updates(3)
        .iter()
        .inspect(|s| {
            assert_eq!(state(s), TaskState::TaskFailed);
            assert_eq!(s.reason(), Reason::ExecutorTerminated);
        })
        .map(|s| s.task_id.value.clone())
        .collect();
    failed.sort();
    assert_eq!(failed, ["c", "g1a", "g1b"]);
    agent.wait_no_executors();
}
