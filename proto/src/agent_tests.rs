//! The agent protocol: messages round-trip through both encodings, keep their package names, and
//! no byte string makes a decoder panic.

use proptest::prelude::*;
use prost::Message as _;
use prost_reflect::ReflectMessage as _;

use crate::codec::ContentType;
use crate::mesoblk::agent::v1::{event, Event, RegisterAgent, ReregisterAgent, StatusUpdate};
use crate::mesos::v1::{
    resource, task_status, value, AgentId, AgentInfo, FrameworkId, Resource, ResourceProviderId,
    TaskId, TaskState, TaskStatus,
};

fn raw_pool(mb: f64) -> Resource {
    Resource {
        provider_id: Some(ResourceProviderId {
            value: "rp-1".into(),
        }),
        name: "disk".into(),
        r#type: value::Type::Scalar as i32,
        scalar: Some(value::Scalar { value: mb }),
        disk: Some(resource::DiskInfo {
            source: Some(resource::disk_info::Source {
                r#type: resource::disk_info::source::Type::Raw as i32,
                vendor: Some("mesoblk".into()),
                profile: Some("fast".into()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn register() -> RegisterAgent {
    RegisterAgent {
        agent_info: AgentInfo {
            hostname: "agent-1".into(),
            port: Some(5051),
            resources: vec![raw_pool(1024.0)],
            ..Default::default()
        },
        endpoint: "http://127.0.0.1:5051".into(),
        secret: Some("s3cret".into()),
        ..Default::default()
    }
}

#[test]
fn registration_round_trips_in_both_encodings() {
    let message = register();
    for encoding in [ContentType::Json, ContentType::Protobuf] {
        let bytes = encoding.encode(&message);
        let back: RegisterAgent = encoding.decode(&bytes).expect("decodes");
        assert_eq!(back, message, "{encoding:?}");
    }
    let json: serde_json::Value =
        serde_json::from_slice(&ContentType::Json.encode(&message)).expect("JSON");
    let disk = &json["agent_info"]["resources"][0];
    assert_eq!(disk["provider_id"]["value"], "rp-1");
    assert_eq!(disk["disk"]["source"]["type"], "RAW");
    assert_eq!(disk["disk"]["source"]["vendor"], "mesoblk");
}

#[test]
fn events_carry_their_body_under_the_type_name() {
    let event = Event {
        r#type: Some(event::Type::KillTask as i32),
        kill_task: Some(event::KillTask {
            framework_id: FrameworkId { value: "F".into() },
            task_id: TaskId { value: "t".into() },
            kill_policy: None,
        }),
        ..Default::default()
    };
    let json: serde_json::Value =
        serde_json::from_slice(&ContentType::Json.encode(&event)).expect("JSON");
    assert_eq!(json["type"], "KILL_TASK");
    assert_eq!(json["kill_task"]["task_id"]["value"], "t");
    assert_eq!(
        event.descriptor().full_name(),
        "mesoblk.agent.v1.Event",
        "our own package, not Mesos's"
    );
}

#[test]
fn a_status_update_without_its_status_is_refused() {
    let update = StatusUpdate {
        framework_id: FrameworkId { value: "F".into() },
        agent_id: AgentId { value: "S".into() },
        status: TaskStatus {
            task_id: TaskId { value: "t".into() },
            state: TaskState::TaskRunning as i32,
            source: Some(task_status::Source::Executor as i32),
            uuid: Some(vec![7; 16]),
            ..Default::default()
        },
        latest_state: None,
    };
    let bytes = update.encode_to_vec();
    let back: StatusUpdate = ContentType::Protobuf.decode(&bytes).expect("decodes");
    assert_eq!(back, update);
    // Field 3 (status) is required: a body with only the ids is an error, not a default.
    let mut only_ids = Vec::new();
    prost::encoding::message::encode(1, &update.framework_id, &mut only_ids);
    prost::encoding::message::encode(2, &update.agent_id, &mut only_ids);
    assert!(ContentType::Protobuf
        .decode::<StatusUpdate>(&only_ids)
        .is_err());
}

proptest! {
    #[test]
    fn agent_decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        for encoding in [ContentType::Json, ContentType::Protobuf] {
            let _ = encoding.decode::<RegisterAgent>(&bytes);
            let _ = encoding.decode::<ReregisterAgent>(&bytes);
            let _ = encoding.decode::<StatusUpdate>(&bytes);
            let _ = encoding.decode::<Event>(&bytes);
        }
    }

    #[test]
    fn registrations_round_trip(hostname in "[ -~]{1,16}", mb in 0u32..1_000_000, port in any::<i32>()) {
        let mut message = register();
        message.agent_info.hostname = hostname;
        message.agent_info.port = Some(port);
        message.agent_info.resources = vec![raw_pool(f64::from(mb))];
        for encoding in [ContentType::Json, ContentType::Protobuf] {
            let back: RegisterAgent = encoding.decode(&encoding.encode(&message)).expect("decodes");
            prop_assert_eq!(&back, &message);
        }
    }
}
