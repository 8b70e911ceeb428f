//! `/api/v1/scheduler` against the real router on a loopback listener: every status-code rule of
//! MESOS-COMPAT.md §1, the RecordIO stream, heartbeats, failover, teardown and disconnection.

mod common;

use std::time::Duration;

use common::*;
use mesoblk_proto::codec::ContentType;
use mesoblk_proto::mesos::v1::scheduler::{call, event, Call};
use mesoblk_proto::mesos::v1::{task_status, FrameworkId, FrameworkInfo, TaskState};
use prost::Message as _;

const LONG: Duration = Duration::from_secs(600);

async fn status_and_body(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

#[tokio::test]
async fn non_post_is_405_with_allow() {
    let master = start(LONG).await;
    let response = reqwest::get(master.url("/api/v1/scheduler"))
        .await
        .expect("GET");
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["Allow"], "POST");
    assert!(response
        .text()
        .await
        .expect("body")
        .contains("Expecting one of { 'POST' }, but received 'GET'"));
}

#[tokio::test]
async fn content_type_is_required_and_exact() {
    let master = start(LONG).await;
    let body = subscribe_body("f", "");
    let (status, text) =
        status_and_body(master.post("/api/v1/scheduler", &[], body.clone()).await).await;
    assert_eq!(
        (status, text.as_str()),
        (400, "Expecting 'Content-Type' to be present")
    );
    for unsupported in [
        "text/plain",
        "application/json; charset=utf-8",
        "application/JSON",
    ] {
        let response = master
            .post(
                "/api/v1/scheduler",
                &[("Content-Type", unsupported)],
                body.clone(),
            )
            .await;
        let (status, text) = status_and_body(response).await;
        assert_eq!(status, 415, "{unsupported}");
        assert_eq!(
            text,
            "Expecting 'Content-Type' of application/json or application/x-protobuf"
        );
    }
}

#[tokio::test]
async fn malformed_bodies_are_400_with_mesos_messages() {
    let master = start(LONG).await;
    let cases: [(&str, &str); 8] = [
        ("{", "Failed to parse body into JSON: "),
        ("[1]", "Failed to convert JSON into Call protobuf: Expecting a JSON object"),
        (r#"{"type":5}"#, "Failed to convert JSON into Call protobuf: Not expecting a JSON number for field 'type'"),
        (
            r#"{"type":"SUBSCRIBE","subscribe":{"framework_info":{"name":"x"}}}"#,
            "Failed to convert JSON into Call protobuf: Missing required fields: subscribe.framework_info.user",
        ),
        ("{}", "Failed to validate scheduler::Call: Expecting 'type' to be present"),
        (r#"{"type":"NOT_A_CALL"}"#, "Failed to validate scheduler::Call: Expecting 'type' to be present"),
        (r#"{"type":"TEARDOWN"}"#, "Failed to validate scheduler::Call: Expecting 'framework_id' to be present"),
        (
            r#"{"type":"ACKNOWLEDGE","framework_id":{"value":"F"},"acknowledge":{"agent_id":{"value":"S"},"task_id":{"value":"T"},"uuid":"AAEC"}}"#,
            "Failed to validate scheduler::Call: Not a valid UUID",
        ),
    ];
    for (body, want) in cases {
        let (status, text) =
            status_and_body(master.post_json("/api/v1/scheduler", body).await).await;
        assert_eq!(status, 400, "{body}");
        assert!(text.starts_with(want), "{body}: {text}");
    }
    let response = master
        .post(
            "/api/v1/scheduler",
            &[("Content-Type", PROTOBUF)],
            vec![0xff_u8, 0xff, 0xff],
        )
        .await;
    assert_eq!(
        status_and_body(response).await,
        (400, "Failed to parse body into Call protobuf".into())
    );
    // A SUBSCRIBE whose ids disagree.
    let body = r#"{"type":"SUBSCRIBE","framework_id":{"value":"A"},"subscribe":{"framework_info":{"user":"u","name":"n"}}}"#;
    let (status, text) = status_and_body(master.post_json("/api/v1/scheduler", body).await).await;
    assert_eq!(status, 400);
    assert_eq!(text, "Failed to validate scheduler::Call: 'framework_id' differs from 'subscribe.framework_info.id'");
}

#[tokio::test]
async fn unacceptable_accept_is_406_and_stream_id_on_subscribe_is_400() {
    let master = start(LONG).await;
    let body = subscribe_body("f", "");
    let response = master
        .post(
            "/api/v1/scheduler",
            &[("Content-Type", JSON), ("Accept", "text/html")],
            body.clone(),
        )
        .await;
    assert_eq!(
        status_and_body(response).await,
        (
            406,
            "Expecting 'Accept' to allow 'application/x-protobuf' or 'application/json'".into()
        )
    );
    let response = master
        .post(
            "/api/v1/scheduler",
            &[("Content-Type", JSON), ("Mesos-Stream-Id", "x")],
            body,
        )
        .await;
    assert_eq!(
        status_and_body(response).await,
        (
            400,
            "Subscribe calls should not include the 'Mesos-Stream-Id' header".into()
        )
    );
}

#[tokio::test]
async fn subscribe_streams_recordio_json_with_subscribed_first() {
    let master = start(LONG).await;
    let mut stream = master.subscribe(&subscribe_body("first", "")).await;
    let headers = stream.response.headers().clone();
    assert_eq!(headers["Content-Type"], JSON);
    assert_eq!(headers["Transfer-Encoding"], "chunked");
    assert!(headers.get("Content-Length").is_none());
    assert!(
        uuid::Uuid::parse_str(&stream.stream_id).is_ok(),
        "stream id is a UUID"
    );
    assert!(stream.stream_id.len() <= 128);

    let event = stream.next_event().await.expect("SUBSCRIBED");
    assert_eq!(event.r#type(), event::Type::Subscribed);
    let subscribed = event.subscribed.expect("body");
    let master_info = subscribed.master_info.expect("master_info");
    assert!(uuid::Uuid::parse_str(&master_info.id).is_ok());
    assert_eq!(
        subscribed.framework_id.value,
        format!("{}-0000", master_info.id)
    );
    assert_eq!(subscribed.heartbeat_interval_seconds, Some(600.0));
    assert_eq!(master_info.version.as_deref(), Some("1.11.0"));

    // RecordIO: "<decimal length>\n" then exactly that many bytes of JSON.
    let newline = stream
        .raw
        .iter()
        .position(|&b| b == b'\n')
        .expect("length line");
    let length: usize = std::str::from_utf8(&stream.raw[..newline])
        .expect("ascii")
        .parse()
        .expect("decimal");
    let record = &stream.raw[newline + 1..newline + 1 + length];
    let json: serde_json::Value = serde_json::from_slice(record).expect("record is JSON");
    assert_eq!(json["type"], "SUBSCRIBED");
    assert_eq!(json["subscribed"]["heartbeat_interval_seconds"], 600.0);

    // Mesos's heartbeater sends one right after SUBSCRIBED.
    let heartbeat = stream.next_event().await.expect("HEARTBEAT");
    assert_eq!(heartbeat.r#type(), event::Type::Heartbeat);

    // A second framework gets the next id.
    let mut other = master.subscribe(&subscribe_body("second", "")).await;
    assert_eq!(other.subscribed().await, format!("{}-0001", master_info.id));
}

#[tokio::test]
async fn the_default_heartbeat_interval_is_15_seconds() {
    let master = start_with(mesoblk_master::Config::new(
        "h",
        std::net::Ipv4Addr::LOCALHOST,
        5050,
    ))
    .await;
    let mut stream = master.subscribe(&subscribe_body("f", "")).await;
    let event = stream.next_event().await.expect("SUBSCRIBED");
    assert_eq!(
        event.subscribed.expect("body").heartbeat_interval_seconds,
        Some(15.0)
    );
}

#[tokio::test]
async fn heartbeats_arrive_every_interval() {
    let master = start(Duration::from_millis(100)).await;
    let mut stream = master.subscribe(&subscribe_body("f", "")).await;
    stream.subscribed().await;
    let started = std::time::Instant::now();
    for _ in 0..4 {
        let event = stream.next_event().await.expect("event");
        assert_eq!(event.r#type(), event::Type::Heartbeat);
    }
    // First immediately, then three intervals.
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(250), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
}

#[tokio::test]
async fn protobuf_subscription_streams_protobuf() {
    let master = start(LONG).await;
    let call = Call {
        r#type: Some(call::Type::Subscribe as i32),
        subscribe: Some(call::Subscribe {
            framework_info: FrameworkInfo {
                user: "u".into(),
                name: "proto".into(),
                ..Default::default()
            },
            ..Default::default()
        }),
        ..Default::default()
    };
    let response = master
        .post(
            "/api/v1/scheduler",
            &[("Content-Type", PROTOBUF), ("Accept", PROTOBUF)],
            call.encode_to_vec(),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["Content-Type"], PROTOBUF);
    let mut stream = EventStream::new(response, ContentType::Protobuf);
    let id = stream.subscribed().await;
    assert!(id.ends_with("-0000"));
}

#[tokio::test]
async fn calls_need_a_subscribed_framework_and_its_stream_id() {
    let master = start(LONG).await;
    let mut stream = master
        .subscribe(&subscribe_body("f", r#","failover_timeout":600"#))
        .await;
    let id = stream.subscribed().await;
    let revive = format!(r#"{{"type":"REVIVE","framework_id":{{"value":"{id}"}}}}"#);

    // Unknown framework: 400 before any stream id check.
    let unknown = r#"{"type":"REVIVE","framework_id":{"value":"nope"}}"#;
    let response = master.post_json("/api/v1/scheduler", unknown).await;
    assert_eq!(
        status_and_body(response).await,
        (400, "Framework cannot be found".into())
    );

    let response = master.post_json("/api/v1/scheduler", &revive).await;
    assert_eq!(
        status_and_body(response).await,
        (
            400,
            "All non-subscribe calls should include the 'Mesos-Stream-Id' header".into()
        )
    );
    let (status, text) = status_and_body(master.call("wrong", &revive).await).await;
    assert_eq!(status, 400);
    assert!(
        text.starts_with("The stream ID 'wrong' included in this request didn't match"),
        "{text}"
    );

    let response = master.call(&stream.stream_id, &revive).await;
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["Content-Length"], "0");
    assert_eq!(response.text().await.expect("body"), "");

    // Every other call type is validated and accepted.
    let agent = r#"{"value":"S1"}"#;
    for body in [
        r#""decline":{"offer_ids":[{"value":"O1"}],"filters":{"refuse_seconds":10}},"type":"DECLINE""#
            .to_string(),
        r#""accept":{"offer_ids":[{"value":"O1"}],"operations":[]},"type":"ACCEPT""#.into(),
        r#""type":"SUPPRESS","suppress":{"roles":["*"]}"#.into(),
        r#""type":"KILL","kill":{"task_id":{"value":"t"}}"#.into(),
        format!(
            r#""type":"SHUTDOWN","shutdown":{{"executor_id":{{"value":"e"}},"agent_id":{agent}}}"#
        ),
        format!(
            r#""type":"ACKNOWLEDGE","acknowledge":{{"agent_id":{agent},"task_id":{{"value":"t"}},"uuid":"AAECAwQFBgcICQoLDA0ODw=="}}"#
        ),
        format!(
            r#""type":"MESSAGE","message":{{"agent_id":{agent},"executor_id":{{"value":"e"}},"data":"aGk="}}"#
        ),
        r#""type":"REQUEST","request":{"requests":[]}"#.into(),
        r#""type":"ACCEPT_INVERSE_OFFERS","accept_inverse_offers":{"inverse_offer_ids":[]}"#.into(),
        r#""type":"DECLINE_INVERSE_OFFERS","decline_inverse_offers":{"inverse_offer_ids":[]}"#
            .into(),
    ] {
        let body = format!(r#"{{"framework_id":{{"value":"{id}"}},{body}}}"#);
        let response = master.call(&stream.stream_id, &body).await;
        assert_eq!(response.status(), 202, "{body}");
    }

    let update = format!(
        r#"{{"type":"UPDATE_FRAMEWORK","framework_id":{{"value":"{id}"}},"update_framework":{{"framework_info":{{"user":"tester","name":"renamed","id":{{"value":"{id}"}},"failover_timeout":600}}}}}}"#
    );
    assert_eq!(master.call(&stream.stream_id, &update).await.status(), 200);
    let changing_user = update.replace(r#""user":"tester""#, r#""user":"other""#);
    let (status, text) =
        status_and_body(master.call(&stream.stream_id, &changing_user).await).await;
    assert_eq!(status, 400);
    assert!(
        text.starts_with(
            "FrameworkInfo update is not valid: Updating 'FrameworkInfo.user' is unsupported"
        ),
        "{text}"
    );

    let explicit_unknown = format!(r#"{{"type":"UNKNOWN","framework_id":{{"value":"{id}"}}}}"#);
    assert_eq!(
        master
            .call(&stream.stream_id, &explicit_unknown)
            .await
            .status(),
        501
    );

    // Once the stream is gone the framework is registered but not subscribed: 403.
    drop(stream);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let response = master.call("any", &revive).await;
        if response.status() == 403 {
            assert_eq!(
                response.text().await.expect("body"),
                "Framework is not subscribed"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "disconnection noticed in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn teardown_closes_the_stream_and_forbids_the_id() {
    let master = start(LONG).await;
    let mut stream = master.subscribe(&subscribe_body("f", "")).await;
    let id = stream.subscribed().await;
    let teardown = format!(r#"{{"type":"TEARDOWN","framework_id":{{"value":"{id}"}}}}"#);
    let response = master.call(&stream.stream_id, &teardown).await;
    assert_eq!(response.status(), 202);
    assert!(stream.until_end().await.is_empty(), "the stream just ends");

    let frameworks = master.operator(r#"{"type":"GET_FRAMEWORKS"}"#).await;
    assert!(frameworks["get_frameworks"].get("frameworks").is_none());
    assert_eq!(
        frameworks["get_frameworks"]["completed_frameworks"][0]["framework_info"]["id"]["value"],
        id
    );

    let mut again = master.subscribe(&resubscribe_body("f", &id, 10.0)).await;
    let events = again.until_end().await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].r#type(), event::Type::Error);
    assert_eq!(
        events[0].error.as_ref().expect("error").message,
        "Framework has been removed"
    );
}

#[tokio::test]
async fn resubscribing_fails_the_old_stream_over() {
    let master = start(LONG).await;
    let mut first = master
        .subscribe(&subscribe_body("f", r#","failover_timeout":60"#))
        .await;
    let id = first.subscribed().await;
    let mut second = master.subscribe(&resubscribe_body("f", &id, 60.0)).await;
    assert_eq!(second.subscribed().await, id, "same framework id");

    let events = first.until_end().await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        events[0].error.as_ref().expect("ERROR").message,
        "Framework failed over"
    );

    let revive = format!(r#"{{"type":"REVIVE","framework_id":{{"value":"{id}"}}}}"#);
    assert_eq!(
        master.call(&first.stream_id, &revive).await.status(),
        400,
        "old stream id is stale"
    );
    assert_eq!(master.call(&second.stream_id, &revive).await.status(), 202);

    let frameworks = master.operator(r#"{"type":"GET_FRAMEWORKS"}"#).await;
    let framework = &frameworks["get_frameworks"]["frameworks"][0];
    assert_eq!(framework["connected"], true);
    assert!(framework.get("reregistered_time").is_some());
}

#[tokio::test]
async fn a_broken_stream_starts_the_failover_timer() {
    let master = start(LONG).await;
    let stream = master
        .subscribe(&subscribe_body("f", r#","failover_timeout":0.3"#))
        .await;
    drop(stream);
    // Disconnected first, then removed once failover_timeout has passed.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let frameworks = master.operator(r#"{"type":"GET_FRAMEWORKS"}"#).await;
        let removed = frameworks["get_frameworks"]
            .get("completed_frameworks")
            .is_some();
        if removed {
            assert!(frameworks["get_frameworks"].get("frameworks").is_none());
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "framework removed in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn resubscribing_within_the_timeout_keeps_the_framework() {
    let master = start(LONG).await;
    let mut stream = master
        .subscribe(&subscribe_body("f", r#","failover_timeout":1.5"#))
        .await;
    let id = stream.subscribed().await;
    drop(stream);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut again = master.subscribe(&resubscribe_body("f", &id, 1.5)).await;
    assert_eq!(again.subscribed().await, id);
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let frameworks = master.operator(r#"{"type":"GET_FRAMEWORKS"}"#).await;
    assert_eq!(
        frameworks["get_frameworks"]["frameworks"][0]["framework_info"]["id"]["value"],
        id
    );
    assert_eq!(
        frameworks["get_frameworks"]["frameworks"][0]["connected"],
        true
    );
}

#[tokio::test]
async fn invalid_framework_info_gets_an_error_event() {
    let master = start(LONG).await;
    let mut stream = master
        .subscribe(&subscribe_body("f", r#","roles":["a"]"#))
        .await;
    let events = stream.until_end().await;
    assert_eq!(
        events[0].error.as_ref().expect("ERROR").message,
        "'FrameworkInfo.roles' must not be set when the framework is not MULTI_ROLE capable"
    );
}

#[tokio::test]
async fn reconciling_unknown_tasks_answers_task_lost() {
    let master = start(LONG).await;
    let mut stream = master.subscribe(&subscribe_body("f", "")).await;
    let id = stream.subscribed().await;
    let reconcile = format!(
        r#"{{"type":"RECONCILE","framework_id":{{"value":"{id}"}},"reconcile":{{"tasks":[{{"task_id":{{"value":"t1"}}}},{{"task_id":{{"value":"t2"}},"agent_id":{{"value":"S9"}}}}]}}}}"#
    );
    assert_eq!(
        master.call(&stream.stream_id, &reconcile).await.status(),
        202
    );
    for (task, agent) in [("t1", None), ("t2", Some("S9"))] {
        let event = stream.next_non_heartbeat().await.expect("UPDATE");
        assert_eq!(event.r#type(), event::Type::Update);
        let status = event.update.expect("update").status;
        assert_eq!(status.task_id.value, task);
        assert_eq!(status.state(), TaskState::TaskLost);
        assert_eq!(status.source(), task_status::Source::Master);
        assert_eq!(status.reason(), task_status::Reason::Reconciliation);
        assert_eq!(
            status.message.as_deref(),
            Some("Reconciliation: Task is unknown")
        );
        assert_eq!(status.agent_id.map(|a| a.value).as_deref(), agent);
        assert!(
            status.uuid.is_none(),
            "master-generated updates need no acknowledgement"
        );
        assert!(status.timestamp.is_some());
    }
    // Implicit reconciliation with no known tasks says nothing; the stream stays quiet.
    let implicit =
        format!(r#"{{"type":"RECONCILE","framework_id":{{"value":"{id}"}},"reconcile":{{}}}}"#);
    assert_eq!(
        master.call(&stream.stream_id, &implicit).await.status(),
        202
    );
}

#[tokio::test]
async fn partition_aware_frameworks_get_task_unknown() {
    let master = start(LONG).await;
    let mut stream = master
        .subscribe(&subscribe_body(
            "f",
            r#","capabilities":[{"type":"PARTITION_AWARE"}]"#,
        ))
        .await;
    let id = stream.subscribed().await;
    let reconcile = format!(
        r#"{{"type":"RECONCILE","framework_id":{{"value":"{id}"}},"reconcile":{{"tasks":[{{"task_id":{{"value":"t1"}}}}]}}}}"#
    );
    assert_eq!(
        master.call(&stream.stream_id, &reconcile).await.status(),
        202
    );
    let event = stream.next_non_heartbeat().await.expect("UPDATE");
    assert_eq!(
        event.update.expect("update").status.state(),
        TaskState::TaskUnknown
    );
}

#[tokio::test]
async fn reconciling_unknown_operations_answers_operation_unknown() {
    let master = start(LONG).await;
    let mut stream = master.subscribe(&subscribe_body("f", "")).await;
    let id = stream.subscribed().await;
    let body = format!(
        r#"{{"type":"RECONCILE_OPERATIONS","framework_id":{{"value":"{id}"}},"reconcile_operations":{{"operations":[{{"operation_id":{{"value":"op"}}}}]}}}}"#
    );
    let response = master
        .post(
            "/api/v1/scheduler",
            &[
                ("Content-Type", JSON),
                ("Accept", JSON),
                ("Mesos-Stream-Id", &stream.stream_id),
            ],
            body,
        )
        .await;
    assert_eq!(response.status(), 202);
    let event = stream
        .next_non_heartbeat()
        .await
        .expect("UPDATE_OPERATION_STATUS");
    assert_eq!(event.r#type(), event::Type::UpdateOperationStatus);
    let status = event.update_operation_status.expect("body").status;
    assert_eq!(
        status.message.as_deref(),
        Some("Reconciliation: Operation is unknown and no 'agent_id' was provided")
    );
}

#[test]
fn framework_ids_compare_like_mesos() {
    // `validate` treats an unset id and an empty one alike, as protobuf's default instance does.
    let call = Call {
        r#type: Some(call::Type::Subscribe as i32),
        framework_id: Some(FrameworkId {
            value: String::new(),
        }),
        subscribe: Some(call::Subscribe::default()),
        ..Default::default()
    };
    assert!(mesoblk_master::http::scheduler::validate(&call).is_ok());
}
