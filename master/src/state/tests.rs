//! The books' rules without HTTP: ids, failover generations, timers as effects, bounded queues.

use std::net::Ipv4Addr;
use std::time::Duration;

use mesoblk_proto::mesos::v1::scheduler::{call, event};
use mesoblk_proto::mesos::v1::{FrameworkId, FrameworkInfo};

use tokio::sync::mpsc;

use super::*;
use crate::stream::EventQueue;

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

fn next_type(events: &mut EventQueue<Event>) -> Option<event::Type> {
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

// ---- Agents, offers and status updates with injected time ------------------------------------

mod lifecycle {
    use mesoblk_proto::mesoblk::agent::v1 as agent;
    use mesoblk_proto::mesos::v1::offer::operation::{Launch, Type as OpType};
    use mesoblk_proto::mesos::v1::{
        offer, task_status, value, AgentId, AgentInfo, CommandInfo, Resource, TaskId, TaskInfo,
        TaskState, TaskStatus,
    };

    use super::*;

    fn cpus(x: f64) -> Resource {
        Resource {
            name: "cpus".into(),
            r#type: value::Type::Scalar as i32,
            scalar: Some(value::Scalar { value: x }),
            ..Default::default()
        }
    }

    fn drain(events: &mut EventQueue<Event>) -> Vec<Event> {
        std::iter::from_fn(|| events.try_recv().ok().map(|e| *e)).collect()
    }

    fn drain_agent(events: &mut EventQueue<agent::Event>) -> Vec<agent::event::Type> {
        std::iter::from_fn(|| events.try_recv().ok())
            .map(|e| e.r#type())
            .collect()
    }

    /// A master (1 s first retry, pings every `ping`, 3 missed remove an agent), one agent with
    /// 2 cpus and a framework holding its offer.
    fn cluster(
        ping: Duration,
    ) -> (
        Master,
        String,
        EventQueue<agent::Event>,
        String,
        EventQueue<Event>,
        String,
    ) {
        let mut config = Config::new("h", Ipv4Addr::LOCALHOST, 5050);
        config.status_update_retry_interval = Duration::from_secs(1);
        config.agent_ping_timeout = ping;
        config.max_agent_ping_timeouts = 3;
        let mut m = Master::new(config);
        let registered = m
            .register_agent(agent::RegisterAgent {
                agent_info: AgentInfo {
                    hostname: "a".into(),
                    resources: vec![cpus(2.0)],
                    ..Default::default()
                },
                endpoint: "http://10.0.0.2:5051".into(),
                ..Default::default()
            })
            .expect("registered");
        let agent_id = registered.agent_id.value;
        let (_, agent_events) = m
            .subscribe_agent(&agent::Subscribe {
                agent_id: AgentId {
                    value: agent_id.clone(),
                },
                secret: None,
            })
            .expect("stream");
        let mut subscription = m.subscribe(subscribe("f", None, 60.0));
        let framework_id = subscription.framework_id.clone().expect("subscribed");
        let offers: Vec<String> = drain(&mut subscription.events)
            .into_iter()
            .filter_map(|e| e.offers)
            .flat_map(|o| o.offers)
            .map(|o| o.id.value)
            .collect();
        assert_eq!(offers.len(), 1, "one offer of the one agent");
        let offer = offers[0].clone();
        (
            m,
            agent_id,
            agent_events,
            framework_id,
            subscription.events,
            offer,
        )
    }

    fn launch(m: &mut Master, framework_id: &str, agent_id: &str, offer: &str) {
        let task = TaskInfo {
            name: "t".into(),
            task_id: TaskId { value: "t".into() },
            agent_id: AgentId {
                value: agent_id.into(),
            },
            resources: vec![cpus(1.0)],
            command: Some(CommandInfo {
                value: Some("true".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        m.accept(
            framework_id,
            call::Accept {
                offer_ids: vec![mesoblk_proto::mesos::v1::OfferId {
                    value: offer.into(),
                }],
                operations: vec![offer::Operation {
                    r#type: Some(OpType::Launch as i32),
                    launch: Some(Launch {
                        task_infos: vec![task],
                    }),
                    ..Default::default()
                }],
                filters: None,
            },
        );
    }

    fn running(framework_id: &str, agent_id: &str, uuid: u8) -> agent::StatusUpdate {
        agent::StatusUpdate {
            framework_id: FrameworkId {
                value: framework_id.into(),
            },
            agent_id: AgentId {
                value: agent_id.into(),
            },
            status: TaskStatus {
                task_id: TaskId { value: "t".into() },
                state: TaskState::TaskRunning as i32,
                source: Some(task_status::Source::Executor as i32),
                uuid: Some(vec![uuid; 16]),
                ..Default::default()
            },
            latest_state: None,
        }
    }

    fn updates(events: &mut EventQueue<Event>) -> usize {
        drain(events)
            .iter()
            .filter(|e| e.r#type() == event::Type::Update)
            .count()
    }

    #[test]
    fn unacknowledged_updates_back_off_and_stop_at_the_acknowledgement() {
        let (mut m, agent_id, mut agent_events, framework_id, mut events, offer) =
            cluster(Duration::from_secs(3600));
        launch(&mut m, &framework_id, &agent_id, &offer);
        assert_eq!(
            drain_agent(&mut agent_events),
            [agent::event::Type::RunTask]
        );
        assert_eq!(
            m.tasks()[&(framework_id.clone(), "t".into())].task.state,
            TaskState::TaskStaging as i32
        );
        m.status_update(running(&framework_id, &agent_id, 7))
            .expect("accepted");
        let start = m.now();
        assert_eq!(updates(&mut events), 1);
        // A retransmission from the agent is not a new update.
        m.status_update(running(&framework_id, &agent_id, 7))
            .expect("accepted");
        assert_eq!(updates(&mut events), 1, "forwarded again, not queued twice");
        let at = |ms: u64| start + Duration::from_millis(ms);
        m.tick(at(500));
        assert_eq!(updates(&mut events), 0, "not due before the first interval");
        m.tick(at(1_100));
        assert_eq!(updates(&mut events), 1, "retried after 1 s");
        m.tick(at(2_500));
        assert_eq!(updates(&mut events), 0, "the backoff doubled to 2 s");
        m.tick(at(3_200));
        assert_eq!(updates(&mut events), 1);
        m.acknowledge(
            &framework_id,
            &call::Acknowledge {
                agent_id: AgentId {
                    value: agent_id.clone(),
                },
                task_id: TaskId { value: "t".into() },
                uuid: vec![7; 16],
            },
        );
        assert!(drain_agent(&mut agent_events).contains(&agent::event::Type::Acknowledge));
        m.tick(at(60_000));
        assert_eq!(
            updates(&mut events),
            0,
            "no retries after the acknowledgement"
        );
        m.status_update(running(&framework_id, &agent_id, 7))
            .expect("accepted");
        assert_eq!(updates(&mut events), 0);
        assert!(
            drain_agent(&mut agent_events).contains(&agent::event::Type::Acknowledge),
            "an acknowledged update sent again is acknowledged again"
        );
    }

    #[test]
    fn silent_agents_are_removed_after_the_ping_timeouts() {
        let (mut m, agent_id, mut agent_events, framework_id, mut events, offer) =
            cluster(Duration::from_millis(100));
        launch(&mut m, &framework_id, &agent_id, &offer);
        let start = m.now();
        m.tick(start);
        assert!(drain_agent(&mut agent_events).contains(&agent::event::Type::Ping));
        m.tick(start + Duration::from_millis(250));
        assert!(m.agents().contains_key(&agent_id), "not yet: 3 × 100 ms");
        m.pong(&agent::Pong {
            agent_id: AgentId {
                value: agent_id.clone(),
            },
            sequence: None,
        })
        .expect("known agent");
        let seen = m.now();
        m.tick(seen + Duration::from_millis(299));
        assert!(m.agents().contains_key(&agent_id), "the pong counted");
        m.tick(seen + Duration::from_millis(301));
        assert!(!m.agents().contains_key(&agent_id), "removed");
        assert!(drain_agent(&mut agent_events).contains(&agent::event::Type::Shutdown));
        let lost: Vec<Event> = drain(&mut events);
        let status = lost
            .iter()
            .find_map(|e| e.update.as_ref())
            .map(|u| u.status.clone())
            .expect("an update");
        assert_eq!(status.state, TaskState::TaskLost as i32);
        assert_eq!(
            status.reason,
            Some(task_status::Reason::AgentRemoved as i32)
        );
        assert!(lost.iter().any(|e| e.r#type() == event::Type::Failure));
        assert!(m.tasks().is_empty());
        m.allocator().check_invariants().expect("books balance");
    }
}
