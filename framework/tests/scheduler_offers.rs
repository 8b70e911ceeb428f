//! The scheduler driver against the real master with a registered agent (the master's own
//! test agent, speaking the agent protocol over HTTP): offers, LAUNCH, status updates with
//! implicit and explicit acknowledgements, KILL, reconciliation of known tasks, a failed
//! scheduler's successor taking over its running task with its framework id, DECLINE filters,
//! SUPPRESS/REVIVE kept across a resubscription, and a block disk's life through the `block`
//! helpers (CREATE_DISK, a task on the disk, DESTROY_DISK) with operation status
//! acknowledgements.

mod common;

use std::time::Duration;

use common::agent::{standard_resources, TaskScript, TestAgent};
use common::net::Proxy;
use common::recorder::{recorder, Seeing, Seen};
use common::{eventually, framework, TestMaster, WAIT};
use mesoblk_framework::backoff::BackoffPolicy;
use mesoblk_framework::block::{self, DiskKind};
use mesoblk_framework::operations::{refuse_seconds, scalar};
use mesoblk_framework::proto::mesos::v1::scheduler::call;
use mesoblk_framework::proto::mesos::v1::{
    AgentId, CommandInfo, FrameworkId, Offer, OperationState, Resource, TaskId, TaskInfo, TaskState,
};
use mesoblk_framework::scheduler::{SchedulerConfig, SchedulerDriver};

fn config(master: &str) -> SchedulerConfig {
    let mut config = SchedulerConfig::new(master);
    config.reconnect =
        BackoffPolicy::new(Duration::from_millis(50), Duration::from_millis(400), 200);
    config
}

async fn setup(implicit: bool) -> (TestMaster, TestAgent, SchedulerDriver, Seeing) {
    let master = TestMaster::start();
    let agent = TestAgent::start(&master.url(""), "agent-1", standard_resources()).await;
    let mut config = config(&master.endpoint());
    config.implicit_acknowledgements = implicit;
    let driver = SchedulerDriver::new(framework("offers-test", 60.0), config).expect("driver");
    let (scheduler, mut seen) = recorder();
    driver.start(scheduler).expect("start");
    seen.registered().await;
    (master, agent, driver, seen)
}

fn task(id: &str, agent: &AgentId, mut resources: Vec<Resource>) -> TaskInfo {
    resources.extend([scalar("cpus", 0.5), scalar("mem", 64.0)]);
    TaskInfo {
        name: id.into(),
        task_id: TaskId { value: id.into() },
        agent_id: agent.clone(),
        resources,
        command: Some(CommandInfo {
            value: Some("sleep 1000".into()),
            ..CommandInfo::default()
        }),
        ..TaskInfo::default()
    }
}

async fn launch(driver: &SchedulerDriver, offer: &Offer, tasks: Vec<TaskInfo>) {
    driver
        .launch_tasks(vec![offer.id.clone()], tasks, Some(refuse_seconds(0.0)))
        .await
        .expect("launch accepted");
}

async fn offer(seen: &mut Seeing) -> Offer {
    seen.offers().await.into_iter().next().expect("an offer")
}

/// The first offer `pick` accepts; other offers are declined (unfiltered), so their resources
/// come back in later offers.
async fn offer_where(
    driver: &SchedulerDriver,
    seen: &mut Seeing,
    mut pick: impl FnMut(&Offer) -> bool,
) -> Offer {
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "no matching offer");
        let mut found = None;
        for offer in seen.offers().await {
            if found.is_none() && pick(&offer) {
                found = Some(offer);
            } else {
                driver
                    .decline(vec![offer.id], Some(refuse_seconds(0.0)))
                    .await
                    .expect("decline");
            }
        }
        if let Some(offer) = found {
            return offer;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn launched_tasks_report_updates_that_are_acknowledged_implicitly() {
    let (master, agent, driver, mut seen) = setup(true).await;
    let offer = offer(&mut seen).await;
    assert_eq!(offer.hostname, "agent-1");
    launch(
        &driver,
        &offer,
        vec![task("t1", &offer.agent_id, Vec::new())],
    )
    .await;
    let starting = seen.update().await;
    assert_eq!(starting.state(), TaskState::TaskStarting);
    assert_eq!(starting.uuid.as_ref().map(Vec::len), Some(16));
    let running = seen.update().await;
    assert_eq!(running.state(), TaskState::TaskRunning);
    eventually("the agent hears both acknowledgements", || {
        agent.unacknowledged() == 0
    })
    .await;
    let acks = master.calls_of(call::Type::Acknowledge);
    assert_eq!(acks.len(), 2);
    let ack = acks[0].acknowledge.as_ref().expect("body");
    assert_eq!(ack.task_id.value, "t1");
    assert_eq!(Some(&ack.uuid), starting.uuid.as_ref());
    assert_eq!(ack.agent_id, offer.agent_id);

    // Reconciliation of the known task answers its state, without a uuid (not acknowledged).
    let known = call::reconcile::Task {
        task_id: TaskId { value: "t1".into() },
        agent_id: Some(offer.agent_id.clone()),
    };
    driver
        .reconcile_tasks(vec![known])
        .await
        .expect("reconcile");
    let answer = seen.update().await;
    assert_eq!(answer.state(), TaskState::TaskRunning);
    assert_eq!(answer.uuid, None);
    driver.reconcile_tasks(Vec::new()).await.expect("implicit");
    assert_eq!(seen.update().await.task_id.value, "t1");

    // KILL reaches the agent; TASK_KILLED comes back and is acknowledged.
    driver
        .kill_task(TaskId { value: "t1".into() }, None, None)
        .await
        .expect("kill");
    let killed = seen.update().await;
    assert_eq!(killed.state(), TaskState::TaskKilled);
    eventually("the kill is acknowledged", || agent.unacknowledged() == 0).await;
    assert_eq!(master.calls_of(call::Type::Acknowledge).len(), 3);
    driver.stop(false).await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn explicit_acknowledgements_are_left_to_the_scheduler() {
    let (master, agent, driver, mut seen) = setup(false).await;
    let offer = offer(&mut seen).await;
    launch(
        &driver,
        &offer,
        vec![task("t1", &offer.agent_id, Vec::new())],
    )
    .await;
    let starting = seen.update().await;
    assert_eq!(starting.state(), TaskState::TaskStarting);
    // Unacknowledged, the master keeps retrying STARTING and holds RUNNING back.
    seen.none_for(
        Duration::from_millis(800),
        |s| matches!(s, Seen::Update(u) if u.state() != TaskState::TaskStarting),
    )
    .await;
    assert!(master.calls_of(call::Type::Acknowledge).is_empty());
    assert_eq!(agent.unacknowledged(), 2);

    assert!(driver
        .acknowledge_status_update(&starting)
        .await
        .expect("ack"));
    let running = seen
        .until("TASK_RUNNING", |s| match s {
            Seen::Update(u) if u.state() == TaskState::TaskRunning => Some(u),
            _ => None,
        })
        .await;
    assert!(driver
        .acknowledge_status_update(&running)
        .await
        .expect("ack"));
    eventually("the agent hears both acknowledgements", || {
        agent.unacknowledged() == 0
    })
    .await;
    // An update without a uuid needs no acknowledgement: nothing is sent.
    let mut reconciled = running.clone();
    reconciled.uuid = None;
    assert!(!driver
        .acknowledge_status_update(&reconciled)
        .await
        .expect("no-op"));
    assert_eq!(master.calls_of(call::Type::Acknowledge).len(), 2);
    driver.stop(false).await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_scheduler_is_succeeded_by_one_with_its_framework_id() {
    let (master, agent, driver, mut seen) = setup(true).await;
    let id = driver.framework_id().expect("an id");
    let offer = offer(&mut seen).await;
    launch(
        &driver,
        &offer,
        vec![task("t1", &offer.agent_id, Vec::new())],
    )
    .await;
    seen.until("TASK_RUNNING", |s| match s {
        Seen::Update(u) if u.state() == TaskState::TaskRunning => Some(()),
        _ => None,
    })
    .await;
    eventually("both updates acknowledged", || agent.unacknowledged() == 0).await;

    // The scheduler dies (no TEARDOWN): the master keeps the framework and its task.
    driver.abort().expect("abort");
    let deadline = tokio::time::Instant::now() + WAIT;
    while master.frameworks().await.0 != vec![(id.value.clone(), false)] {
        assert!(tokio::time::Instant::now() < deadline, "still connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A successor subscribing with the framework id takes over the running task.
    let mut info = framework("offers-test", 60.0);
    info.id = Some(FrameworkId {
        value: id.value.clone(),
    });
    let successor = SchedulerDriver::new(info, config(&master.endpoint())).expect("driver");
    let (scheduler, mut seen) = recorder();
    successor.start(scheduler).expect("start");
    assert_eq!(seen.registered().await, id.value);
    let t1 = call::reconcile::Task {
        task_id: TaskId { value: "t1".into() },
        agent_id: Some(offer.agent_id.clone()),
    };
    successor
        .reconcile_tasks(vec![t1])
        .await
        .expect("reconcile");
    let answer = seen
        .until("the reconciliation", |s| match s {
            Seen::Update(u) if u.uuid.is_none() => Some(u),
            _ => None,
        })
        .await;
    assert_eq!(answer.state(), TaskState::TaskRunning);
    successor
        .kill_task(TaskId { value: "t1".into() }, None, None)
        .await
        .expect("kill");
    let killed = seen
        .until("TASK_KILLED", |s| match s {
            Seen::Update(u) if u.state() == TaskState::TaskKilled => Some(u),
            _ => None,
        })
        .await;
    assert_eq!(killed.task_id.value, "t1");
    eventually("the kill is acknowledged", || agent.unacknowledged() == 0).await;
    assert!(master.calls_of(call::Type::Teardown).is_empty());
    let (registered, _) = master.frameworks().await;
    assert_eq!(registered, vec![(id.value, true)]);
    successor.stop(false).await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn decline_filters_and_suppression_survive_a_resubscription() {
    let master = TestMaster::start();
    let _agent = TestAgent::start(&master.url(""), "agent-1", standard_resources()).await;
    let proxy = Proxy::start(master.addr).await;
    let driver = SchedulerDriver::new(framework("suppress", 60.0), config(&proxy.addr.to_string()))
        .expect("driver");
    let (scheduler, mut seen) = recorder();
    driver.start(scheduler).expect("start");
    seen.registered().await;

    let offer = offer(&mut seen).await;
    driver
        .decline(vec![offer.id.clone()], Some(refuse_seconds(60.0)))
        .await
        .expect("decline");
    seen.none_for(Duration::from_millis(400), |s| matches!(s, Seen::Offers(_)))
        .await;
    driver.revive(Vec::new()).await.expect("revive");
    let offer = self::offer(&mut seen).await;

    driver.suppress(Vec::new()).await.expect("suppress");
    driver
        .decline(vec![offer.id.clone()], Some(refuse_seconds(0.0)))
        .await
        .expect("decline");
    seen.none_for(Duration::from_millis(400), |s| matches!(s, Seen::Offers(_)))
        .await;

    // The connection breaks; the resubscription names the suppressed role, so still no offers.
    proxy.cut();
    seen.until("reregistered", |s| {
        matches!(s, Seen::Reregistered).then_some(())
    })
    .await;
    let subscribes = master.calls_of(call::Type::Subscribe);
    let last = subscribes
        .last()
        .and_then(|c| c.subscribe.as_ref())
        .expect("body");
    assert_eq!(last.suppressed_roles, vec!["*".to_string()]);
    seen.none_for(Duration::from_millis(400), |s| matches!(s, Seen::Offers(_)))
        .await;
    driver.revive(Vec::new()).await.expect("revive");
    self::offer(&mut seen).await;
    driver.stop(false).await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_block_disk_is_created_used_and_destroyed() {
    let (master, agent, driver, mut seen) = setup(true).await;
    agent.behave(|b| b.script = TaskScript::Finish);

    // CREATE_DISK of a 1 GiB slice of the "fast" pool.
    let offer = offer(&mut seen).await;
    let slices = block::raw_slices(&offer, "fast", 1024.0, 1);
    assert_eq!(slices.len(), 1, "{offer:?}");
    let create = block::create_disk(slices[0].clone(), DiskKind::Block, "create-1");
    driver
        .accept(
            vec![offer.id.clone()],
            vec![create],
            Some(refuse_seconds(0.0)),
        )
        .await
        .expect("accept");
    let status = seen.operation().await;
    assert_eq!(status.state(), OperationState::OperationFinished);
    assert_eq!(
        status.operation_id.as_ref().map(|i| i.value.as_str()),
        Some("create-1")
    );
    eventually("the operation status is acknowledged", || {
        master
            .calls_of(call::Type::AcknowledgeOperationStatus)
            .len()
            == 1
    })
    .await;
    let ack = master.calls_of(call::Type::AcknowledgeOperationStatus)[0]
        .acknowledge_operation_status
        .clone()
        .expect("body");
    assert_eq!(ack.operation_id.value, "create-1");
    assert_eq!(Some(ack.uuid), status.uuid.map(|u| u.value));

    // The disk is offered; a task runs on it and finishes.
    let offer = offer_where(&driver, &mut seen, |o| {
        block::created_disks(o, DiskKind::Block).next().is_some()
    })
    .await;
    let disk = block::created_disks(&offer, DiskKind::Block)
        .next()
        .expect("disk")
        .clone();
    let disk_id = block::disk_id(&disk).expect("id").to_owned();
    let uses_disk = task(
        "on-disk",
        &offer.agent_id,
        vec![block::task_disk(&disk, None)],
    );
    launch(&driver, &offer, vec![uses_disk]).await;
    seen.until("TASK_FINISHED", |s| match s {
        Seen::Update(u) if u.state() == TaskState::TaskFinished => Some(()),
        Seen::Update(u) => {
            assert!(
                matches!(u.state(), TaskState::TaskStarting | TaskState::TaskRunning),
                "{u:?}"
            );
            None
        }
        _ => None,
    })
    .await;

    // Back in an offer, the disk is destroyed and the pool is whole again.
    let offer = offer_where(&driver, &mut seen, |o| {
        block::created_disks(o, DiskKind::Block).any(|d| block::disk_id(d) == Some(&disk_id))
    })
    .await;
    let disk = block::created_disks(&offer, DiskKind::Block)
        .next()
        .expect("disk")
        .clone();
    let destroy = block::destroy_disk(disk, "destroy-1");
    driver
        .accept(
            vec![offer.id.clone()],
            vec![destroy],
            Some(refuse_seconds(0.0)),
        )
        .await
        .expect("accept");
    let status = seen.operation().await;
    assert_eq!(status.state(), OperationState::OperationFinished);
    offer_where(&driver, &mut seen, |o| {
        block::raw_slices(o, "fast", 10240.0, 1).len() == 1
    })
    .await;
    driver.stop(false).await.expect("stop");
}
