//! The scheduler driver against the real master (`mesoblk_master::router` on a loopback port):
//! subscription in JSON and protobuf, heartbeats, reconnection after a master restart and after
//! missed heartbeats, failover with the framework id, TEARDOWN, leader redirects and 503s,
//! refusals, and acknowledgements of what the master sends without a uuid.

mod common;

use std::time::Duration;

use common::net::{dead_address, Proxy, Redirector};
use common::recorder::{recorder, Seen};
use common::{framework, test_config, TestMaster, WAIT};
use mesoblk_framework::backoff::BackoffPolicy;
use mesoblk_framework::proto::mesos::v1::scheduler::call;
use mesoblk_framework::proto::mesos::v1::{TaskId, TaskState};
use mesoblk_framework::scheduler::{DriverError, DriverStatus, SchedulerConfig, SchedulerDriver};
use mesoblk_framework::ContentType;

/// Settings for tests: fast reconnection, 3 missed 100 ms heartbeats.
fn config(master: &str) -> SchedulerConfig {
    let mut config = SchedulerConfig::new(master);
    config.reconnect =
        BackoffPolicy::new(Duration::from_millis(50), Duration::from_millis(400), 200);
    config.call_retry =
        BackoffPolicy::new(Duration::from_millis(20), Duration::from_millis(100), 3);
    config
}

fn driver(master: &str, failover_timeout: f64) -> SchedulerDriver {
    SchedulerDriver::new(framework("driver-test", failover_timeout), config(master))
        .expect("driver")
}

fn unknown_task(id: &str) -> call::reconcile::Task {
    call::reconcile::Task {
        task_id: TaskId { value: id.into() },
        agent_id: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn subscribes_registers_and_heartbeats_keep_it_connected() {
    let master = TestMaster::start();
    let driver = driver(&master.endpoint(), 60.0);
    let (scheduler, mut seen) = recorder();
    driver.start(scheduler).expect("start");
    let id = seen.registered().await;
    assert!(!id.is_empty());
    assert_eq!(driver.framework_id().map(|f| f.value), Some(id.clone()));
    assert!(driver.is_subscribed());
    assert_eq!(driver.status(), DriverStatus::Running);
    let (registered, _) = master.frameworks().await;
    assert_eq!(registered, vec![(id.clone(), true)]);

    // Heartbeats every 100 ms: 1.5 s of silence otherwise would be 5 missed intervals.
    seen.none_for(Duration::from_millis(1_500), |s| {
        matches!(s, Seen::Disconnected | Seen::Reregistered | Seen::Error(_))
    })
    .await;
    assert_eq!(master.call_types(), vec![call::Type::Subscribe]);

    // A second start is refused; the running driver is untouched.
    let (again, _) = recorder();
    assert!(matches!(
        driver.start(again),
        Err(DriverError::AlreadyStarted)
    ));
    driver.abort().expect("abort");
    assert_eq!(driver.join().await.expect("join"), DriverStatus::Aborted);
}

#[tokio::test(flavor = "multi_thread")]
async fn protobuf_mode_subscribes_and_calls() {
    let master = TestMaster::start();
    let mut config = config(&master.endpoint());
    config.content_type = ContentType::Protobuf;
    let driver = SchedulerDriver::new(framework("protobuf", 60.0), config).expect("driver");
    let (scheduler, mut seen) = recorder();
    driver.start(scheduler).expect("start");
    seen.registered().await;
    driver
        .reconcile_tasks(vec![unknown_task("ghost")])
        .await
        .expect("reconcile");
    let update = seen.update().await;
    assert_eq!(update.task_id.value, "ghost");
    assert_eq!(update.state(), TaskState::TaskLost);
    // The master decoded both calls from protobuf bodies.
    assert_eq!(
        master.call_types(),
        vec![call::Type::Subscribe, call::Type::Reconcile]
    );
    driver.stop(false).await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn updates_without_uuid_are_not_acknowledged() {
    let master = TestMaster::start();
    let driver = driver(&master.endpoint(), 60.0);
    let (scheduler, mut seen) = recorder();
    driver.start(scheduler).expect("start");
    seen.registered().await;
    driver
        .reconcile_tasks(vec![unknown_task("t1"), unknown_task("t2")])
        .await
        .expect("reconcile");
    for _ in 0..2 {
        let update = seen.update().await;
        assert_eq!(update.state(), TaskState::TaskLost);
        assert_eq!(update.uuid, None, "reconciliation answers carry no uuid");
    }
    seen.none_for(Duration::from_millis(300), |_| false).await;
    assert!(master.calls_of(call::Type::Acknowledge).is_empty());

    // Explicit acknowledgement is refused on a driver that acknowledges by itself.
    let status = mesoblk_framework::proto::mesos::v1::TaskStatus::default();
    assert!(matches!(
        driver.acknowledge_status_update(&status).await,
        Err(DriverError::ImplicitAcknowledgements)
    ));
    driver.abort().expect("abort");
}

#[tokio::test(flavor = "multi_thread")]
async fn master_restart_disconnects_then_reregisters_with_the_same_id() {
    let master = TestMaster::start();
    let driver = driver(&master.endpoint(), 60.0);
    let (scheduler, mut seen) = recorder();
    driver.start(scheduler).expect("start");
    let id = seen.registered().await;

    let addr = master.kill();
    seen.until("disconnected", |s| {
        matches!(s, Seen::Disconnected).then_some(())
    })
    .await;
    assert!(!driver.is_subscribed());
    assert!(matches!(
        driver.reconcile_tasks(Vec::new()).await,
        Err(DriverError::NotSubscribed)
    ));
    // Let a few attempts fail against the dead port before the master comes back.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let master = TestMaster::start_with(test_config(), addr);
    seen.until("reregistered", |s| {
        matches!(s, Seen::Reregistered).then_some(())
    })
    .await;
    assert_eq!(driver.framework_id().map(|f| f.value), Some(id.clone()));
    let resubscribe = master.calls_of(call::Type::Subscribe);
    assert_eq!(resubscribe.len(), 1);
    let info = &resubscribe[0]
        .subscribe
        .as_ref()
        .expect("body")
        .framework_info;
    assert_eq!(
        info.id.as_ref().map(|i| i.value.as_str()),
        Some(id.as_str())
    );
    assert_eq!(resubscribe[0].framework_id, info.id);
    let (registered, _) = master.frameworks().await;
    assert_eq!(registered, vec![(id, true)]);
    driver.stop(false).await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn missed_heartbeats_count_as_a_lost_connection() {
    let master = TestMaster::start();
    let proxy = Proxy::start(master.addr).await;
    let driver = driver(&proxy.addr.to_string(), 60.0);
    let (scheduler, mut seen) = recorder();
    driver.start(scheduler).expect("start");
    let id = seen.registered().await;

    // The stream stays open but goes silent: 3 × 100 ms later the driver gives up on it.
    let frozen_at = tokio::time::Instant::now();
    proxy.freeze();
    seen.until("disconnected", |s| {
        matches!(s, Seen::Disconnected).then_some(())
    })
    .await;
    let noticed = frozen_at.elapsed();
    // The silence started with the last heartbeat, up to one interval before the freeze.
    assert!(noticed >= Duration::from_millis(150), "{noticed:?}");
    assert!(noticed < Duration::from_secs(3), "{noticed:?}");
    seen.until("reregistered", |s| {
        matches!(s, Seen::Reregistered).then_some(())
    })
    .await;
    // The same master failed the framework over to the new stream.
    assert_eq!(master.calls_of(call::Type::Subscribe).len(), 2);
    let (registered, _) = master.frameworks().await;
    assert_eq!(registered, vec![(id, true)]);
    driver.abort().expect("abort");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_connection_is_resubscribed_at_once() {
    let master = TestMaster::start();
    let proxy = Proxy::start(master.addr).await;
    let driver = driver(&proxy.addr.to_string(), 60.0);
    let (scheduler, mut seen) = recorder();
    driver.start(scheduler).expect("start");
    seen.registered().await;
    proxy.cut();
    seen.until("disconnected", |s| {
        matches!(s, Seen::Disconnected).then_some(())
    })
    .await;
    seen.until("reregistered", |s| {
        matches!(s, Seen::Reregistered).then_some(())
    })
    .await;
    driver.abort().expect("abort");
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_without_failover_tears_the_framework_down() {
    let master = TestMaster::start();
    let driver = driver(&master.endpoint(), 60.0);
    let (scheduler, mut seen) = recorder();
    driver.start(scheduler).expect("start");
    let id = seen.registered().await;
    driver.stop(false).await.expect("TEARDOWN accepted");
    assert_eq!(driver.join().await.expect("join"), DriverStatus::Stopped);
    assert_eq!(master.calls_of(call::Type::Teardown).len(), 1);
    let (registered, completed) = master.frameworks().await;
    assert!(registered.is_empty(), "{registered:?}");
    assert_eq!(completed, vec![id.clone()]);
    // No callback after stop, and calls are refused.
    seen.none_for(Duration::from_millis(300), |s| {
        !matches!(s, Seen::Update(_))
    })
    .await;
    assert!(matches!(
        driver.decline(Vec::new(), None).await,
        Err(DriverError::NotRunning)
    ));
    assert!(matches!(
        driver.stop(false).await,
        Err(DriverError::NotRunning)
    ));

    // The removed framework's id is refused: `error`, then `join` reports it.
    let mut info = framework("driver-test", 60.0);
    info.id = Some(mesoblk_framework::proto::mesos::v1::FrameworkId { value: id });
    let again = SchedulerDriver::new(info, config(&master.endpoint())).expect("driver");
    let (scheduler, mut seen) = recorder();
    again.start(scheduler).expect("start");
    let message = seen
        .until("error", |s| match s {
            Seen::Error(message) => Some(message),
            _ => None,
        })
        .await;
    assert!(message.contains("removed"), "{message}");
    let result = tokio::time::timeout(WAIT, again.join())
        .await
        .expect("join in time");
    assert!(matches!(result, Err(DriverError::Refused(_))), "{result:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_with_failover_keeps_the_framework_for_a_successor() {
    let master = TestMaster::start();
    let driver = driver(&master.endpoint(), 60.0);
    let (scheduler, mut seen) = recorder();
    driver.start(scheduler).expect("start");
    let id = seen.registered().await;
    driver.stop(true).await.expect("stop");
    assert_eq!(driver.join().await.expect("join"), DriverStatus::Stopped);
    assert!(master.calls_of(call::Type::Teardown).is_empty());
    let deadline = tokio::time::Instant::now() + WAIT;
    while master.frameworks().await.0 != vec![(id.clone(), false)] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the master keeps it disconnected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A new driver with the id takes over the framework.
    let mut info = framework("driver-test", 60.0);
    info.id = Some(mesoblk_framework::proto::mesos::v1::FrameworkId { value: id.clone() });
    let successor = SchedulerDriver::new(info, config(&master.endpoint())).expect("driver");
    let (scheduler, mut seen) = recorder();
    successor.start(scheduler).expect("start");
    assert_eq!(seen.registered().await, id);
    let (registered, _) = master.frameworks().await;
    assert_eq!(registered, vec![(id, true)]);
    successor.stop(false).await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn follows_leader_redirects_and_retries_unavailable() {
    let master = TestMaster::start();
    let redirector = Redirector::start(master.addr, 2).await;
    let driver = driver(&redirector.addr.to_string(), 60.0);
    let (scheduler, mut seen) = recorder();
    driver.start(scheduler).expect("start");
    seen.registered().await;
    // Two 503s (each a failed attempt, retried after a backoff), then a 307 to the master.
    assert_eq!(
        redirector
            .requests
            .load(std::sync::atomic::Ordering::SeqCst),
        3
    );
    assert_eq!(
        driver.master_url(),
        format!("http://{}/api/v1/scheduler", master.addr)
    );
    // Calls go to the leader directly.
    driver
        .reconcile_tasks(vec![unknown_task("x")])
        .await
        .expect("reconcile");
    seen.update().await;
    assert_eq!(
        redirector
            .requests
            .load(std::sync::atomic::Ordering::SeqCst),
        3
    );
    assert_eq!(master.calls_of(call::Type::Reconcile).len(), 1);
    driver.stop(false).await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn reconnection_is_bounded() {
    let mut config = config(&dead_address().to_string());
    config.reconnect = BackoffPolicy::new(Duration::from_millis(10), Duration::from_millis(20), 3);
    config.connect_timeout = Duration::from_millis(500);
    let driver = SchedulerDriver::new(framework("nowhere", 0.0), config).expect("driver");
    let (scheduler, mut seen) = recorder();
    driver.start(scheduler).expect("start");
    let message = seen
        .until("error", |s| match s {
            Seen::Error(message) => Some(message),
            _ => None,
        })
        .await;
    assert!(message.contains("gave up"), "{message}");
    let result = tokio::time::timeout(WAIT, driver.join())
        .await
        .expect("join in time");
    assert!(
        matches!(
            result,
            Err(DriverError::ReconnectExhausted { attempts: 3, .. })
        ),
        "{result:?}"
    );
    assert_eq!(driver.status(), DriverStatus::Aborted);
}

#[tokio::test(flavor = "multi_thread")]
async fn configuration_errors_are_typed() {
    assert!(matches!(
        SchedulerDriver::new(framework("x", 0.0), SchedulerConfig::new("ftp://master")),
        Err(DriverError::Config(_))
    ));
    let driver = driver("127.0.0.1:1", 0.0);
    assert!(matches!(driver.join().await, Err(DriverError::NotRunning)));
    assert!(matches!(driver.abort(), Err(DriverError::NotRunning)));
    let outside = std::thread::spawn(move || {
        let (scheduler, _) = recorder();
        matches!(driver.start(scheduler), Err(DriverError::NoRuntime))
    });
    assert!(outside.join().expect("thread"));
}
