//! Golden tests against the examples in shared/docs/MESOS-COMPAT.md, the stout rules one by one,
//! and property tests (round trips; no input makes the decoders panic).

use proptest::prelude::*;
use prost_reflect::ReflectMessage;

use super::*;
use crate::codec::ContentType;
use crate::mesos::v1::scheduler::{call, event, Call, Event};
use crate::mesos::v1::{
    resource, task_status, value, AgentId, ExecutorId, Filters, FrameworkId, FrameworkInfo,
    Resource, TaskId, TaskState, TaskStatus, TimeInfo, Value as MesosValue,
};

/// JSON values compared with every number as f64, since the docs' examples write `2` where Mesos
/// writes `2.0`; everything else (keys, nesting, strings, enum names) must match exactly.
fn normalized(v: &serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Number(n) => serde_json::json!(n.as_f64().expect("finite")),
        serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(normalized).collect()),
        serde_json::Value::Object(o) => {
            serde_json::Value::Object(o.iter().map(|(k, v)| (k.clone(), normalized(v))).collect())
        }
        other => other.clone(),
    }
}

fn parse(text: &str) -> serde_json::Value {
    serde_json::from_str(text).expect("test JSON parses")
}

const DOC_SUBSCRIBE: &str = r#"{"type":"SUBSCRIBE","subscribe":{"framework_info":{"user":"foo","name":"Example HTTP Framework",
  "roles":["test1","test2"],"capabilities":[{"type":"MULTI_ROLE"}]},"suppressed_roles":["test2"]}}"#;

const DOC_OFFERS: &str = r#"{"type":"OFFERS","offers":{"offers":[{"id":{"value":"M-O12"},"framework_id":{"value":"M-0000"},
 "agent_id":{"value":"M-S3"},"hostname":"agent.host",
 "resources":[
  {"name":"cpus","type":"SCALAR","scalar":{"value":2},"role":"*"},
  {"name":"mem","type":"SCALAR","scalar":{"value":1024},"role":"*"},
  {"name":"disk","type":"SCALAR","scalar":{"value":2048},"role":"*",
   "disk":{"source":{"type":"MOUNT","mount":{"root":"/mnt/data"}}}},
  {"provider_id":{"value":"RP-1"},"name":"disk","type":"SCALAR","scalar":{"value":1024},
   "role":"storage-role-1","reservation":{"principal":"storage-service"},
   "disk":{"source":{"type":"RAW","vendor":"nas-service","id":"vol-19827509","profile":"fast-volume"}}}],
 "attributes":[{"name":"os","type":"TEXT","text":{"value":"ubuntu16.04"}}]}]}}"#;

const DOC_ACCEPT: &str = r#"{"framework_id":{"value":"12220-3440-12532-2345"},"type":"ACCEPT","accept":{
 "offer_ids":[{"value":"12220-3440-12532-O12"}],
 "operations":[{"type":"LAUNCH","launch":{"task_infos":[{"name":"My Task",
   "task_id":{"value":"my-task"},"agent_id":{"value":"12220-3440-12532-S1233"},
   "command":{"shell":true,"value":"sleep 1000"},
   "resources":[{"name":"cpus","type":"SCALAR","scalar":{"value":1.0},"role":"*"},
                {"name":"mem","type":"SCALAR","scalar":{"value":128.0},"role":"*"}]}]}}],
 "filters":{"refuse_seconds":5.0}}}"#;

#[test]
fn doc_subscribe_decodes() {
    let call: Call = from_json(DOC_SUBSCRIBE.as_bytes()).expect("decodes");
    assert_eq!(call.r#type(), call::Type::Subscribe);
    let subscribe = call.subscribe.expect("subscribe body");
    let info = subscribe.framework_info;
    assert_eq!(info.user, "foo");
    assert_eq!(info.name, "Example HTTP Framework");
    assert_eq!(info.roles, ["test1", "test2"]);
    assert_eq!(
        info.capabilities[0].r#type(),
        crate::mesos::v1::framework_info::capability::Type::MultiRole
    );
    assert_eq!(subscribe.suppressed_roles, ["test2"]);
    assert_eq!(
        info.failover_timeout, None,
        "an absent optional stays unset"
    );
}

#[test]
fn doc_subscribed_is_written_as_mesos_writes_it() {
    let event = Event {
        r#type: Some(event::Type::Subscribed as i32),
        subscribed: Some(event::Subscribed {
            framework_id: FrameworkId {
                value: "12220-3440-12532-2345".into(),
            },
            heartbeat_interval_seconds: Some(15.0),
            master_info: None,
        }),
        ..Default::default()
    };
    assert_eq!(
        to_json(&event),
        r#"{"type":"SUBSCRIBED","subscribed":{"framework_id":{"value":"12220-3440-12532-2345"},"heartbeat_interval_seconds":15.0}}"#
    );
}

#[test]
fn doc_offers_round_trip_with_nested_offers() {
    let event: Event = from_json(DOC_OFFERS.as_bytes()).expect("decodes");
    assert_eq!(event.r#type(), event::Type::Offers);
    let offers = &event.offers.as_ref().expect("offers body").offers;
    assert_eq!(offers.len(), 1);
    let raw = &offers[0].resources[3];
    assert_eq!(
        raw.provider_id.as_ref().map(|p| p.value.as_str()),
        Some("RP-1")
    );
    let source = raw
        .disk
        .as_ref()
        .and_then(|d| d.source.as_ref())
        .expect("source");
    assert_eq!(source.r#type(), resource::disk_info::source::Type::Raw);
    assert_eq!(source.profile.as_deref(), Some("fast-volume"));

    let written = to_json(&event);
    assert!(written.starts_with(r#"{"type":"OFFERS","offers":{"offers":[{"id":{"value":"M-O12"}"#));
    assert_eq!(normalized(&parse(&written)), normalized(&parse(DOC_OFFERS)));
    assert!(
        written.contains(r#""scalar":{"value":2.0}"#),
        "doubles keep a decimal point"
    );
}

#[test]
fn doc_accept_decodes_and_writes_explicit_defaults() {
    let call: Call = from_json(DOC_ACCEPT.as_bytes()).expect("decodes");
    let accept = call.accept.as_ref().expect("accept body");
    assert_eq!(
        accept.filters.as_ref().and_then(|f| f.refuse_seconds),
        Some(5.0)
    );
    let task = &accept.operations[0]
        .launch
        .as_ref()
        .expect("launch")
        .task_infos[0];
    assert_eq!(task.task_id.value, "my-task");
    assert_eq!(
        task.command.as_ref().and_then(|c| c.value.as_deref()),
        Some("sleep 1000")
    );
    assert_eq!(
        task.resources[1].scalar.as_ref().map(|s| s.value),
        Some(128.0)
    );
    // Everything in the example is either set or a default Mesos writes, so it round-trips.
    assert_eq!(
        normalized(&parse(&to_json(&call))),
        normalized(&parse(DOC_ACCEPT))
    );
}

#[test]
fn doc_error_event_is_nested() {
    let event = Event {
        r#type: Some(event::Type::Error as i32),
        error: Some(event::Error {
            message: "Framework failed over".into(),
        }),
        ..Default::default()
    };
    assert_eq!(
        to_json(&event),
        r#"{"type":"ERROR","error":{"message":"Framework failed over"}}"#
    );
}

#[test]
fn doc_request_call_is_nested() {
    let body = r#"{"framework_id":{"value":"F"},"type":"REQUEST","request":{"requests":[{"agent_id":{"value":"S1"}}]}}"#;
    let call: Call = from_json(body.as_bytes()).expect("decodes");
    assert_eq!(
        call.request.expect("request").requests[0]
            .agent_id
            .as_ref()
            .map(|a| a.value.as_str()),
        Some("S1")
    );
}

#[test]
fn doc_update_uses_enum_names_floats_and_base64_uuid() {
    let uuid: Vec<u8> = (0u8..16).collect();
    let event = Event {
        r#type: Some(event::Type::Update as i32),
        update: Some(event::Update {
            status: TaskStatus {
                task_id: TaskId {
                    value: "my-task".into(),
                },
                state: TaskState::TaskRunning as i32,
                source: Some(task_status::Source::Executor as i32),
                agent_id: Some(AgentId {
                    value: "M-S3".into(),
                }),
                executor_id: Some(ExecutorId {
                    value: "my-task".into(),
                }),
                timestamp: Some(1_712_345_678.9),
                uuid: Some(uuid.clone()),
                ..Default::default()
            },
        }),
        ..Default::default()
    };
    let written = to_json(&event);
    assert_eq!(
        written,
        r#"{"type":"UPDATE","update":{"status":{"task_id":{"value":"my-task"},"state":"TASK_RUNNING","source":"SOURCE_EXECUTOR","agent_id":{"value":"M-S3"},"executor_id":{"value":"my-task"},"timestamp":1712345678.9,"uuid":"AAECAwQFBgcICQoLDA0ODw=="}}}"#
    );
    let back: Event = from_json(written.as_bytes()).expect("decodes");
    assert_eq!(back, event);
}

#[test]
fn explicit_defaults_are_written_unless_deprecated() {
    assert_eq!(to_json(&Filters::default()), r#"{"refuse_seconds":5.0}"#);
    let info = FrameworkInfo {
        user: "u".into(),
        name: "n".into(),
        ..Default::default()
    };
    // failover_timeout and checkpoint have defaults; role's default is deprecated.
    assert_eq!(
        to_json(&info),
        r#"{"user":"u","name":"n","failover_timeout":0.0,"checkpoint":false}"#
    );
    let cpus = Resource {
        name: "cpus".into(),
        r#type: value::Type::Scalar as i32,
        scalar: Some(value::Scalar { value: 1.5 }),
        ..Default::default()
    };
    assert_eq!(
        to_json(&cpus),
        r#"{"name":"cpus","type":"SCALAR","scalar":{"value":1.5}}"#
    );
}

#[test]
fn sixty_four_bit_integers_are_numbers() {
    let t = TimeInfo {
        nanoseconds: i64::MAX,
    };
    assert_eq!(to_json(&t), r#"{"nanoseconds":9223372036854775807}"#);
    let ranges = MesosValue {
        r#type: value::Type::Ranges as i32,
        ranges: Some(value::Ranges {
            range: vec![value::Range {
                begin: 31000,
                end: u64::MAX,
            }],
        }),
        ..Default::default()
    };
    let written = to_json(&ranges);
    assert_eq!(
        written,
        r#"{"type":"RANGES","ranges":{"range":[{"begin":31000,"end":18446744073709551615}]}}"#
    );
    assert_eq!(
        from_json::<MesosValue>(written.as_bytes()).expect("decodes"),
        ranges
    );
    // Numbers given as strings are accepted too, as stout does.
    let t: TimeInfo = from_json(br#"{"nanoseconds":"42"}"#).expect("decodes");
    assert_eq!(t.nanoseconds, 42);
}

#[test]
fn doubles_print_like_stout() {
    for (x, want) in [
        (2.0, "2.0"),
        (15.0, "15.0"),
        (0.1, "0.1"),
        (0.1 + 0.2, "0.3"),
        (-1.5, "-1.5"),
        (1_712_345_678.9, "1712345678.9"),
        (0.0005, "0.0005"),
        (1e20, "1.00000000000000e+20"),
        (1e-5, "1.00000000000000e-05"),
        (123_456_789_012_345_680.0, "1.23456789012346e+17"),
        (0.0, "0.0"),
        (f64::NAN, "null"),
        (f64::INFINITY, "\"Infinity\""),
        (f64::NEG_INFINITY, "\"-Infinity\""),
    ] {
        assert_eq!(format_double(x), want, "{x}");
    }
}

#[test]
fn strings_escape_like_stout() {
    let id = FrameworkId {
        value: "a/b\"c\\\n\u{1}é".into(),
    };
    assert_eq!(to_json(&id), r#"{"value":"a\/b\"c\\\n\u0001é"}"#);
    assert_eq!(
        from_json::<FrameworkId>(to_json(&id).as_bytes()).expect("decodes"),
        id
    );
}

#[test]
fn bytes_are_base64_with_lenient_padding() {
    for text in ["AAEC", "AAECAw==", "AAECAw", "AAECAw="] {
        let body =
            format!(r#"{{"agent_id":{{"value":"S"}},"task_id":{{"value":"T"}},"uuid":"{text}"}}"#);
        let ack: call::Acknowledge = from_json(body.as_bytes()).expect("decodes");
        assert!(ack.uuid.starts_with(&[0, 1, 2]), "{text}");
    }
    let bad = br#"{"agent_id":{"value":"S"},"task_id":{"value":"T"},"uuid":"!!"}"#;
    let err = from_json::<call::Acknowledge>(bad).expect_err("rejected");
    assert!(
        err.to_string()
            .starts_with("Failed to base64 decode bytes field 'uuid'"),
        "{err}"
    );
}

#[test]
fn unknown_fields_are_ignored_and_null_is_unset() {
    let body = br#"{"type":"TEARDOWN","framework_id":{"value":"F","extra":1},"whatever":[1,2],"subscribe":null}"#;
    let call: Call = from_json(body).expect("decodes");
    assert_eq!(call.r#type(), call::Type::Teardown);
    assert!(call.subscribe.is_none());
}

#[test]
fn unknown_enum_names_follow_proto2() {
    // Optional enum: dropped, the field stays unset.
    let call: Call = from_json(br#"{"type":"NO_SUCH_CALL"}"#).expect("decodes");
    assert_eq!(call.r#type, None);
    // Required enum: an error.
    let err = from_json::<Resource>(br#"{"name":"cpus","type":"VECTOR"}"#).expect_err("rejected");
    assert_eq!(err.to_string(), "Failed to find enum for 'VECTOR'");
}

#[test]
fn missing_required_fields_are_listed_with_paths() {
    let err =
        from_json::<Call>(br#"{"type":"SUBSCRIBE","subscribe":{"framework_info":{"name":"x"}}}"#)
            .expect_err("rejected");
    assert_eq!(
        err.to_string(),
        "Missing required fields: subscribe.framework_info.user"
    );
    let err =
        from_json::<Call>(br#"{"type":"DECLINE","decline":{"offer_ids":[{"value":"a"},{}]}}"#)
            .expect_err("rejected");
    assert_eq!(
        err.to_string(),
        "Missing required fields: decline.offer_ids[1].value"
    );
}

#[test]
fn shape_mismatches_are_errors_in_stouts_words() {
    let cases: [(&[u8], &str); 6] = [
        (b"[]", "Expecting a JSON object"),
        (
            br#"{"type":["SUBSCRIBE"]}"#,
            "Not expecting a JSON array for field 'type'",
        ),
        (
            br#"{"framework_id":"F"}"#,
            "Not expecting a JSON string for field 'framework_id'",
        ),
        (
            br#"{"framework_id":{"value":1}}"#,
            "Not expecting a JSON number for field 'value'",
        ),
        (
            br#"{"framework_id":[{"value":"a"}]}"#,
            "Not expecting a JSON array for field 'framework_id'",
        ),
        (
            br#"{"type":true}"#,
            "Not expecting a JSON boolean for field 'type'",
        ),
    ];
    for (body, want) in cases {
        let err = from_json::<Call>(body).expect_err("rejected");
        assert_eq!(err.to_string(), want, "{}", String::from_utf8_lossy(body));
    }
    assert!(matches!(
        from_json::<Call>(b"{\"type\":"),
        Err(JsonError::Syntax(_))
    ));
}

#[test]
fn maps_are_objects() {
    let body = br#"{"role":"r","guarantees":{"cpus":{"value":1.5},"mem":{"value":64}}}"#;
    let config: crate::mesos::v1::quota::QuotaConfig = from_json(body).expect("decodes");
    assert_eq!(config.guarantees["mem"].value, 64.0);
    assert_eq!(
        to_json(&config),
        r#"{"role":"r","guarantees":{"cpus":{"value":1.5},"mem":{"value":64.0}}}"#
    );
}

#[test]
fn protobuf_decoding_checks_required_fields_and_closed_enums() {
    use prost::Message;
    let call = Call {
        r#type: Some(999),
        ..Default::default()
    };
    let decoded: Call = ContentType::Protobuf
        .decode(&call.encode_to_vec())
        .expect("decodes");
    assert_eq!(
        decoded.r#type, None,
        "an unknown enum number is dropped, as in C++ proto2"
    );

    // A DECLINE whose OfferID lacks its required `value`: field 5 { field 1 { } }.
    let body = [0x2a, 0x02, 0x0a, 0x00];
    let err = ContentType::Protobuf
        .decode::<Call>(&body)
        .expect_err("rejected");
    assert!(
        err.to_string().contains("decline.offer_ids[0].value"),
        "{err}"
    );
    assert!(ContentType::Protobuf.decode::<Call>(&[0xff, 0xff]).is_err());
}

#[test]
fn descriptor_names_are_mesos_names() {
    assert_eq!(
        Event::default().descriptor().full_name(),
        "mesos.v1.scheduler.Event"
    );
    assert_eq!(
        crate::mesos::v1::master::Response::default()
            .descriptor()
            .full_name(),
        "mesos.v1.master.Response"
    );
}

// ---- Properties -------------------------------------------------------------------------------

fn id_string() -> impl Strategy<Value = String> {
    "[ -~é\u{1}\n]{0,12}"
}

/// Doubles that survive stout's 15 significant digits.
fn short_double() -> impl Strategy<Value = f64> {
    (-1_000_000i64..1_000_000, 0u32..4).prop_map(|(n, scale)| n as f64 / 10f64.powi(scale as i32))
}

#[allow(deprecated)] // `role` is the pre-refinement field Mesos still reads and writes.
fn resource() -> impl Strategy<Value = Resource> {
    (
        id_string(),
        short_double(),
        proptest::option::of(id_string()),
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(|(name, x, role, end, shared)| Resource {
            name,
            r#type: if shared {
                value::Type::Ranges
            } else {
                value::Type::Scalar
            } as i32,
            scalar: Some(value::Scalar { value: x }),
            ranges: Some(value::Ranges {
                range: vec![value::Range {
                    begin: end / 2,
                    end,
                }],
            }),
            role,
            shared: shared.then(resource::SharedInfo::default),
            ..Default::default()
        })
}

fn call_strategy() -> impl Strategy<Value = Call> {
    (
        id_string(),
        proptest::collection::vec(resource(), 0..4),
        proptest::option::of(short_double()),
        proptest::collection::vec(any::<u8>(), 0..20),
        0i32..20,
    )
        .prop_map(|(id, resources, refuse, data, ty)| Call {
            framework_id: Some(FrameworkId { value: id.clone() }),
            r#type: Some(ty),
            request: Some(call::Request {
                requests: vec![crate::mesos::v1::Request {
                    agent_id: None,
                    resources,
                }],
            }),
            decline: Some(call::Decline {
                offer_ids: vec![crate::mesos::v1::OfferId { value: id.clone() }],
                filters: Some(Filters {
                    refuse_seconds: refuse,
                }),
            }),
            message: Some(call::Message {
                agent_id: AgentId { value: id.clone() },
                executor_id: ExecutorId { value: id },
                data,
            }),
            ..Default::default()
        })
}

/// What the decoders see after a JSON round trip: explicit defaults become set fields, unknown
/// enum numbers are dropped.
fn as_mesos_sees_it(mut call: Call) -> Call {
    if call
        .r#type
        .is_some_and(|t| call::Type::try_from(t).is_err())
    {
        call.r#type = None;
    }
    if let Some(f) = call.decline.as_mut().and_then(|d| d.filters.as_mut()) {
        f.refuse_seconds = Some(f.refuse_seconds.unwrap_or(5.0));
    }
    call
}

proptest! {
    // Bounded: a few thousand inputs in well under a second per property.
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn json_round_trips(call in call_strategy()) {
        let json = to_json(&call);
        let back: Call = from_json(json.as_bytes()).expect("own output decodes");
        prop_assert_eq!(back, as_mesos_sees_it(call));
    }

    #[test]
    fn protobuf_round_trips(call in call_strategy()) {
        let bytes = ContentType::Protobuf.encode(&call);
        let back: Call = ContentType::Protobuf.decode(&bytes).expect("own output decodes");
        let mut want = call;
        if want.r#type.is_some_and(|t| call::Type::try_from(t).is_err()) {
            want.r#type = None;
        }
        prop_assert_eq!(back, want);
    }

    /// Bounded fuzzing of the call decoders: any bytes, in either encoding, give a value or an
    /// error, never a panic.
    #[test]
    fn decoders_never_panic_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = ContentType::Json.decode::<Call>(&bytes);
        let _ = ContentType::Protobuf.decode::<Call>(&bytes);
        let _ = ContentType::Protobuf.decode::<crate::mesos::v1::master::Call>(&bytes);
    }

    /// JSON-shaped input built from Mesos's own field and enum names, so the fuzzer reaches deep
    /// into the message tree instead of stopping at the first unknown key; whatever decodes must
    /// survive a write/read cycle unchanged.
    #[test]
    fn decoders_never_panic_on_json_like_input(value in json_like()) {
        let text = value.to_string();
        if let Ok(call) = ContentType::Json.decode::<Call>(text.as_bytes()) {
            // What the master accepted, it can write and read back to the same bytes.
            let written = to_json(&call);
            let again: Call = from_json(written.as_bytes()).expect("own output decodes");
            prop_assert_eq!(to_json(&again), written);
        }
        let _ = ContentType::Json.decode::<Event>(text.as_bytes());
        let _ = ContentType::Json.decode::<crate::mesos::v1::master::Call>(text.as_bytes());
    }
}

fn json_like() -> impl Strategy<Value = serde_json::Value> {
    const KEYS: &[&str] = &[
        "type",
        "framework_id",
        "value",
        "subscribe",
        "framework_info",
        "user",
        "name",
        "accept",
        "offer_ids",
        "operations",
        "launch",
        "task_infos",
        "task_id",
        "agent_id",
        "resources",
        "scalar",
        "ranges",
        "range",
        "begin",
        "end",
        "disk",
        "source",
        "filters",
        "refuse_seconds",
        "uuid",
        "data",
        "acknowledge",
        "reconcile",
        "tasks",
        "capabilities",
        "roles",
        "limits",
        "offer_constraints",
        "role_constraints",
        "groups",
        "attribute_constraints",
        "selector",
        "predicate",
        "text_equals",
        "reservations",
        "labels",
        "quota_configs",
        "guarantees",
        "update_quota",
        "get_metrics",
        "timeout",
        "nanoseconds",
        "failover_timeout",
        "kill",
    ];
    const SCALARS: &[&str] = &[
        "SUBSCRIBE",
        "ACCEPT",
        "LAUNCH",
        "SCALAR",
        "RANGES",
        "MULTI_ROLE",
        "RAW",
        "BLOCK",
        "Infinity",
        "-Infinity",
        "1e400",
        "-1",
        "18446744073709551616",
        "true",
        "AAEC",
        "==",
    ];
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        any::<u64>().prop_map(|n| serde_json::json!(n)),
        any::<f64>().prop_map(|x| serde_json::json!(x)),
        proptest::sample::select(SCALARS).prop_map(|s| serde_json::json!(s)),
        "[a-z]{0,4}".prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            proptest::collection::btree_map(proptest::sample::select(KEYS), inner, 0..5).prop_map(
                |m| serde_json::Value::Object(
                    m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
                )
            ),
        ]
    })
}
