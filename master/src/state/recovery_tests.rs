//! Recovery of agents, volumes and disks from the registry, the re-registration deadline and
//! MARK_AGENT_GONE, on the books without HTTP (time injected through `tick`).

use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime};

use mesoblk_proto::mesoblk::agent::v1 as agent;
use mesoblk_proto::mesos::v1::resource::{disk_info, DiskInfo, ReservationInfo};
use mesoblk_proto::mesos::v1::scheduler::{call, event, Event};
use mesoblk_proto::mesos::v1::{
    framework_info, resource, AgentId, AgentInfo, FrameworkInfo, OperationId, OperationState,
    Resource, TaskId, TaskState,
};
use tokio::sync::mpsc;

use super::*;
use crate::registry::{epoch_secs, AgentState, InMemoryRegistry, Mutation, Registry};
use mesoblk_proto::resource::scalar;

const DAY: Duration = Duration::from_secs(24 * 3600);

/// A persistent volume `id` of `mb`, reserved to role `web`.
fn volume(id: &str, mb: f64) -> Resource {
    Resource {
        reservations: vec![ReservationInfo {
            r#type: Some(resource::reservation_info::Type::Static as i32),
            role: Some("web".into()),
            ..Default::default()
        }],
        disk: Some(DiskInfo {
            persistence: Some(disk_info::Persistence {
                id: id.into(),
                ..Default::default()
            }),
            volume: Some(mesoblk_proto::mesos::v1::Volume {
                container_path: "data".into(),
                mode: mesoblk_proto::mesos::v1::volume::Mode::Rw as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..scalar("disk", mb)
    }
}

fn info(hostname: &str, resources: Vec<Resource>) -> AgentInfo {
    AgentInfo {
        hostname: hostname.into(),
        resources,
        ..Default::default()
    }
}

/// A registry as a previous master left it, and a master (re-registration timeout `timeout`)
/// recovered from it.
fn recovered(registry: Arc<InMemoryRegistry>, timeout: Duration, limit: f64) -> Master {
    let mut config = Config::new("h", Ipv4Addr::LOCALHOST, 5050);
    config.agent_reregister_timeout = timeout;
    config.recovery_agent_removal_limit = limit;
    config.registry = registry.clone();
    let snapshot = crate::registry::recover(registry.as_ref()).expect("recovers");
    let mut m = Master::new(config);
    m.recover(&snapshot);
    m
}

fn admit(registry: &InMemoryRegistry, id: &str, resources: Vec<Resource>) {
    registry
        .apply(vec![Mutation::AdmitAgent {
            agent_id: id.into(),
            info: info(id, resources),
        }])
        .expect("stored");
}

fn reregistration(id: &str, resources: Vec<Resource>) -> agent::ReregisterAgent {
    let mut info = info(id, resources);
    info.id = Some(AgentId { value: id.into() });
    agent::ReregisterAgent {
        agent: agent::RegisterAgent {
            agent_info: info,
            endpoint: "http://10.0.0.2:5051".into(),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn stored_state(registry: &InMemoryRegistry, id: &str) -> Option<AgentState> {
    registry
        .load()
        .expect("loads")
        .agents
        .get(id)
        .map(|a| a.state)
}

fn partition_aware_framework(m: &mut Master) -> (String, mpsc::Receiver<Event>) {
    let subscription = m.subscribe(call::Subscribe {
        framework_info: FrameworkInfo {
            user: "u".into(),
            name: "f".into(),
            roles: vec!["web".into()],
            capabilities: vec![
                framework_info::Capability {
                    r#type: Some(framework_info::capability::Type::PartitionAware as i32),
                },
                framework_info::Capability {
                    r#type: Some(framework_info::capability::Type::MultiRole as i32),
                },
            ],
            ..Default::default()
        },
        ..Default::default()
    });
    let id = subscription.framework_id.expect("subscribed");
    (id, subscription.events)
}

fn reconcile_one(m: &mut Master, framework_id: &str, agent_id: &str) {
    m.reconcile(
        framework_id,
        call::Reconcile {
            tasks: vec![call::reconcile::Task {
                task_id: TaskId { value: "t".into() },
                agent_id: Some(AgentId {
                    value: agent_id.into(),
                }),
            }],
        },
    );
}

/// RECONCILE_OPERATIONS of an unknown operation on `agent_id`: the state answered.
fn reconcile_operation(
    m: &mut Master,
    framework_id: &str,
    agent_id: &str,
    events: &mut mpsc::Receiver<Event>,
) -> OperationState {
    m.reconcile_operations(
        framework_id,
        call::ReconcileOperations {
            operations: vec![call::reconcile_operations::Operation {
                operation_id: OperationId { value: "op".into() },
                agent_id: Some(AgentId {
                    value: agent_id.into(),
                }),
                resource_provider_id: None,
            }],
        },
    );
    let answers: Vec<OperationState> = std::iter::from_fn(|| events.try_recv().ok())
        .filter_map(|e| e.update_operation_status)
        .map(|u| u.status.state())
        .collect();
    assert_eq!(answers.len(), 1, "{answers:?}");
    answers[0]
}

fn updates(events: &mut mpsc::Receiver<Event>) -> Vec<TaskState> {
    std::iter::from_fn(|| events.try_recv().ok())
        .filter(|e| e.r#type() == event::Type::Update)
        .filter_map(|e| e.update.map(|u| u.status.state()))
        .collect()
}

#[test]
fn recovery_sorts_agents_and_forgets_old_ones() {
    let registry = Arc::new(InMemoryRegistry::new());
    admit(
        &registry,
        "M-S0",
        vec![scalar("cpus", 2.0), volume("v1", 64.0)],
    );
    let recent = epoch_secs(SystemTime::now() - DAY);
    let old = epoch_secs(SystemTime::now() - 30 * DAY);
    let mark = |id: &str, gone: bool, time_secs: f64| {
        let agent_id = id.to_owned();
        let mutation = if gone {
            Mutation::MarkAgentGone {
                agent_id,
                time_secs,
            }
        } else {
            Mutation::MarkAgentUnreachable {
                agent_id,
                time_secs,
            }
        };
        registry.apply(vec![mutation]).expect("stored");
    };
    mark("M-S1", false, recent);
    mark("M-S2", true, recent);
    mark("M-S3", false, old);
    mark("M-S4", true, old);
    registry
        .put_volume("M-S3", "v3", &volume("v3", 1.0))
        .expect("stored");
    let m = recovered(registry.clone(), Duration::from_secs(600), 1.0);

    assert_eq!(
        m.recovered_agents().keys().collect::<Vec<_>>(),
        vec!["M-S0"]
    );
    assert!(m.agents().is_empty(), "recovered agents are not registered");
    assert!(m.removed_agent_time("M-S1").is_some());
    assert!(m.gone_agents().contains_key("M-S2"));
    // Older than --registry_max_agent_age (2 weeks): forgotten, with their volumes.
    assert!(m.removed_agent_time("M-S3").is_none());
    assert!(!m.gone_agents().contains_key("M-S4"));
    let stored = registry.load().expect("loads");
    assert!(!stored.agents.contains_key("M-S3") && !stored.agents.contains_key("M-S4"));
    assert!(!stored.volumes.contains_key("M-S3"));
}

#[test]
fn recovered_agents_that_do_not_come_back_in_time_become_unreachable() {
    let registry = Arc::new(InMemoryRegistry::new());
    admit(&registry, "M-S0", vec![scalar("cpus", 2.0)]);
    admit(&registry, "M-S1", vec![scalar("cpus", 2.0)]);
    let mut m = recovered(registry.clone(), Duration::from_secs(60), 1.0);
    let (framework_id, mut events) = partition_aware_framework(&mut m);
    m.reregister_agent(reregistration("M-S1", vec![scalar("cpus", 2.0)]))
        .expect("re-registered");
    assert!(!m.recovered_agents().contains_key("M-S1"));

    // While recovered, a task on it is not reconciled (as Mesos: no answer yet), and an
    // operation on it is recovering.
    reconcile_one(&mut m, &framework_id, "M-S0");
    assert!(updates(&mut events).is_empty());
    assert_eq!(
        reconcile_operation(&mut m, &framework_id, "M-S0", &mut events),
        OperationState::OperationRecovering
    );

    m.tick(Duration::from_secs(59));
    assert!(m.recovered_agents().contains_key("M-S0"), "not yet");
    m.tick(Duration::from_secs(61));
    assert!(m.recovered_agents().is_empty());
    assert!(m.removed_agent_time("M-S0").is_some());
    assert!(matches!(
        stored_state(&registry, "M-S0"),
        Some(AgentState::Unreachable { .. })
    ));
    assert_eq!(stored_state(&registry, "M-S1"), Some(AgentState::Admitted));
    let failures: Vec<Event> = std::iter::from_fn(|| events.try_recv().ok())
        .filter(|e| e.r#type() == event::Type::Failure)
        .collect();
    assert_eq!(failures.len(), 1, "the framework hears the agent is lost");

    reconcile_one(&mut m, &framework_id, "M-S0");
    assert_eq!(updates(&mut events), vec![TaskState::TaskUnreachable]);
    assert_eq!(m.counters().get("master/recovery_slave_removals"), Some(&1));
}

#[test]
fn too_many_missing_agents_stop_the_master() {
    let registry = Arc::new(InMemoryRegistry::new());
    admit(&registry, "M-S0", vec![scalar("cpus", 2.0)]);
    admit(&registry, "M-S1", vec![scalar("cpus", 2.0)]);
    let mut m = recovered(registry.clone(), Duration::from_secs(60), 0.4);
    m.take_effects();
    m.tick(Duration::from_secs(61));
    let effects = m.take_effects();
    assert!(
        matches!(&effects[..], [Effect::Exit { message }] if message.contains("removal limit")),
        "{effects:?}"
    );
    // Nothing was marked: the next master starts from the same registry.
    assert_eq!(stored_state(&registry, "M-S0"), Some(AgentState::Admitted));
}

#[test]
fn the_agents_report_wins_over_the_stored_volumes() {
    let registry = Arc::new(InMemoryRegistry::new());
    admit(
        &registry,
        "M-S0",
        vec![
            scalar("cpus", 2.0),
            volume("kept", 10.0),
            volume("lost", 5.0),
        ],
    );
    registry
        .apply(vec![
            Mutation::PutVolume {
                agent_id: "M-S0".into(),
                volume_id: "kept".into(),
                resource: volume("kept", 10.0),
            },
            Mutation::PutVolume {
                agent_id: "M-S0".into(),
                volume_id: "lost".into(),
                resource: volume("lost", 5.0),
            },
        ])
        .expect("stored");
    let mut m = recovered(registry.clone(), Duration::from_secs(600), 1.0);
    let listed = &m.recovered_agents()["M-S0"].resources;
    assert!(
        listed.contains(&volume("lost", 5.0)),
        "listed before it re-registers"
    );
    assert_eq!(m.stored_volumes("M-S0").map(|v| v.len()), Some(2));

    let reported = vec![
        scalar("cpus", 2.0),
        volume("kept", 10.0),
        volume("new", 1.0),
    ];
    m.reregister_agent(reregistration("M-S0", reported))
        .expect("re-registered");
    let stored = registry.load().expect("loads");
    let ids: Vec<&String> = stored.volumes["M-S0"].keys().collect();
    assert_eq!(ids, vec!["kept", "new"]);
    let admitted = stored.agents["M-S0"].info.as_ref().expect("info");
    assert!(admitted.resources.contains(&volume("new", 1.0)));
}

#[test]
fn a_gone_agent_is_stored_first_and_refused_for_good() {
    let registry = Arc::new(InMemoryRegistry::new());
    admit(&registry, "M-S0", vec![scalar("cpus", 2.0)]);
    let mut m = recovered(registry.clone(), Duration::from_secs(600), 1.0);
    let (framework_id, mut events) = partition_aware_framework(&mut m);
    m.reregister_agent(reregistration("M-S0", vec![scalar("cpus", 2.0)]))
        .expect("re-registered");
    let (_, mut agent_events) = m
        .subscribe_agent(&agent::Subscribe {
            agent_id: AgentId {
                value: "M-S0".into(),
            },
            secret: None,
        })
        .expect("stream");

    assert_eq!(
        m.mark_agent_gone("M-S9").map_err(|e| e.status.as_u16()),
        Err(404)
    );
    m.mark_agent_gone("M-S0").expect("marked gone");
    assert!(m.agents().is_empty());
    assert!(matches!(
        stored_state(&registry, "M-S0"),
        Some(AgentState::Gone { .. })
    ));
    let shutdown = std::iter::from_fn(|| agent_events.try_recv().ok())
        .any(|e| e.r#type() == agent::event::Type::Shutdown);
    assert!(shutdown, "a connected gone agent is told to shut down");
    m.mark_agent_gone("M-S0").expect("gone twice is fine");

    let refused = m
        .reregister_agent(reregistration("M-S0", vec![scalar("cpus", 2.0)]))
        .expect_err("refused");
    assert_eq!(refused.status.as_u16(), 410);
    assert!(
        refused.message.contains("marked gone"),
        "{}",
        refused.message
    );

    updates(&mut events);
    reconcile_one(&mut m, &framework_id, "M-S0");
    assert_eq!(updates(&mut events), vec![TaskState::TaskGoneByOperator]);
    assert_eq!(
        reconcile_operation(&mut m, &framework_id, "M-S0", &mut events),
        OperationState::OperationGoneByOperator
    );

    // Gone survives a restart.
    let m = recovered(registry, Duration::from_secs(600), 1.0);
    assert!(m.gone_agents().contains_key("M-S0"));
    assert!(m.recovered_agents().is_empty());
}
