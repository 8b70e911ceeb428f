//! The books' rules without HTTP: ids, failover generations, timers as effects, bounded queues.

use std::net::Ipv4Addr;
use std::time::Duration;

use mesoblk_proto::mesos::v1::scheduler::{call, event};
use mesoblk_proto::mesos::v1::{FrameworkId, FrameworkInfo};

use super::*;

fn master() -> Master {
    Master::new(Config::new("h", Ipv4Addr::new(10, 0, 0, 1), 5050))
}

fn subscribe(name: &str, id: Option<&str>, failover_timeout: f64) -> call::Subscribe {
    call::Subscribe {
        framework_info: FrameworkInfo {
            user: "u".into(),
            name: name.into(),
            id: id.map(|v| FrameworkId { value: v.into() }),
            failover_timeout: Some(failover_timeout),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn next_type(events: &mut mpsc::Receiver<Event>) -> Option<event::Type> {
    events.try_recv().ok().map(|e| e.r#type())
}

#[test]
fn master_info_carries_the_address_as_mesos_does() {
    let m = master();
    assert_eq!(m.info().ip, u32::from_ne_bytes([10, 0, 0, 1]));
    assert_eq!(m.info().pid.as_deref(), Some("master@10.0.0.1:5050"));
    assert_eq!(m.info().port, 5050);
}

#[test]
fn new_frameworks_get_sequential_ids() {
    let mut m = master();
    let a = m.subscribe(subscribe("a", None, 0.0));
    let b = m.subscribe(subscribe("b", None, 0.0));
    assert_eq!(a.framework_id, Some(format!("{}-0000", m.info().id)));
    assert_eq!(b.framework_id, Some(format!("{}-0001", m.info().id)));
}

#[test]
fn a_disconnect_arms_a_timer_for_its_generation_only() {
    let mut m = master();
    let first = m.subscribe(subscribe("a", None, 30.0));
    let id = first.framework_id.clone().expect("subscribed");
    m.exited(&id, first.connection_id.expect("connection"));
    assert_eq!(
        m.take_effects(),
        vec![Effect::FailoverTimer {
            framework_id: id.clone(),
            generation: 0,
            timeout: Duration::from_secs(30)
        }]
    );
    // The framework comes back before the timer fires: the stale timer does nothing.
    let second = m.subscribe(subscribe("a", Some(&id), 30.0));
    assert_eq!(second.framework_id.as_deref(), Some(id.as_str()));
    m.failover_timeout_expired(&id, 0);
    assert!(m.frameworks().contains_key(&id));
    // A late close of the first stream is ignored too.
    m.exited(&id, first.connection_id.expect("connection"));
    assert!(m.take_effects().is_empty());
    assert!(m.frameworks()[&id].connection.is_some());
}

#[test]
fn failover_sends_error_to_the_old_stream_and_closes_it() {
    let mut m = master();
    let mut first = m.subscribe(subscribe("a", None, 30.0));
    let id = first.framework_id.clone().expect("subscribed");
    assert_eq!(next_type(&mut first.events), Some(event::Type::Subscribed));
    let mut second = m.subscribe(subscribe("a", Some(&id), 30.0));
    assert_eq!(next_type(&mut second.events), Some(event::Type::Subscribed));
    let error = first.events.try_recv().expect("ERROR");
    assert_eq!(
        error.error.map(|e| e.message).as_deref(),
        Some("Framework failed over")
    );
    assert!(matches!(
        first.events.try_recv(),
        Err(mpsc::error::TryRecvError::Disconnected)
    ));
}

#[test]
fn removed_frameworks_are_remembered_within_a_bound() {
    let mut config = Config::new("h", Ipv4Addr::LOCALHOST, 5050);
    config.max_completed_frameworks = 2;
    let mut m = Master::new(config);
    let ids: Vec<String> = (0..3)
        .map(|i| {
            m.subscribe(subscribe(&format!("f{i}"), None, 0.0))
                .framework_id
                .expect("subscribed")
        })
        .collect();
    for id in &ids {
        assert!(m.remove_framework(id));
    }
    assert_eq!(m.completed_frameworks().len(), 2);
    let mut again = m.subscribe(subscribe("f2", Some(&ids[2]), 0.0));
    let error = again.events.try_recv().expect("ERROR");
    assert_eq!(
        error.error.map(|e| e.message).as_deref(),
        Some("Framework has been removed")
    );
}

#[test]
fn a_full_queue_disconnects_the_subscriber() {
    let mut config = Config::new("h", Ipv4Addr::LOCALHOST, 5050);
    config.event_queue_max = 2;
    let mut m = Master::new(config);
    let subscription = m.subscribe(subscribe("slow", None, 5.0));
    let id = subscription.framework_id.clone().expect("subscribed");
    // SUBSCRIBED is queued; one more fits, the third overflows.
    m.send(&id, heartbeat_event());
    assert!(m.frameworks()[&id].connection.is_some());
    m.send(&id, heartbeat_event());
    assert!(m.frameworks()[&id].connection.is_none(), "disconnected");
    assert_eq!(m.take_effects().len(), 1, "failover timer armed");
}

#[test]
fn calls_are_authorized_in_mesos_order() {
    let mut m = master();
    let subscription = m.subscribe(subscribe("a", None, 5.0));
    let id = subscription.framework_id.clone().expect("subscribed");
    let status = |r: Result<(), ApiError>| r.err().map(|e| e.status.as_u16());
    assert_eq!(status(m.authorize_call("nope", None)), Some(400));
    assert_eq!(status(m.authorize_call(&id, None)), Some(400));
    assert_eq!(status(m.authorize_call(&id, Some("other"))), Some(400));
    assert_eq!(
        status(m.authorize_call(&id, Some(&subscription.stream_id))),
        None
    );
    m.exited(&id, subscription.connection_id.expect("connection"));
    assert_eq!(
        status(m.authorize_call(&id, Some(&subscription.stream_id))),
        Some(403)
    );
}
