//! The executor driver against a fake agent endpoint (`common::fake_agent`; mesoblk's agent
//! does not serve `/api/v1/executor` yet): subscription, launches, reliable status updates
//! (resent until ACKNOWLEDGED, carried by resubscriptions with the unacknowledged tasks),
//! messages both ways, kill, SHUTDOWN, and losing the agent with and without checkpointing.

mod common;

use std::time::Duration;

use common::eventually;
use common::fake_agent::FakeAgent;
use mesoblk_framework::executor::{
    DriverStatus, Executor, ExecutorConfig, ExecutorDriver, ExecutorEnvironment, ExecutorError,
};
use mesoblk_framework::proto::mesos::v1::{
    task_status, AgentInfo, ExecutorInfo, FrameworkInfo, KillPolicy, TaskId, TaskInfo, TaskState,
    TaskStatus,
};
use mesoblk_framework::ContentType;
use tokio::sync::mpsc;

const FRAMEWORK: &str = "fw-0000";
const EXECUTOR: &str = "exec-1";

/// What the executor saw.
#[derive(Debug, Clone, PartialEq)]
enum Saw {
    Registered {
        executor: String,
        framework: String,
        agent: String,
    },
    Reregistered,
    Disconnected,
    Launched(String),
    Killed(String),
    Message(Vec<u8>),
    Shutdown,
}

/// An executor that runs every task at once (TASK_RUNNING), kills with TASK_KILLED, and on
/// shutdown kills what runs.
struct TestExecutor {
    tx: mpsc::UnboundedSender<Saw>,
    running: Vec<TaskId>,
}

fn status(task_id: &TaskId, state: TaskState) -> TaskStatus {
    TaskStatus {
        task_id: task_id.clone(),
        state: state as i32,
        ..TaskStatus::default()
    }
}

impl Executor for TestExecutor {
    async fn registered(
        &mut self,
        _: &ExecutorDriver,
        executor: &ExecutorInfo,
        framework: &FrameworkInfo,
        agent: &AgentInfo,
    ) {
        let _ = self.tx.send(Saw::Registered {
            executor: executor.executor_id.value.clone(),
            framework: framework.id.clone().unwrap_or_default().value,
            agent: agent.hostname.clone(),
        });
    }

    async fn reregistered(&mut self, _: &ExecutorDriver, _: &AgentInfo) {
        let _ = self.tx.send(Saw::Reregistered);
    }

    async fn disconnected(&mut self, _: &ExecutorDriver) {
        let _ = self.tx.send(Saw::Disconnected);
    }

    async fn launch_task(&mut self, driver: &ExecutorDriver, task: TaskInfo) {
        driver
            .send_status_update(status(&task.task_id, TaskState::TaskRunning))
            .expect("queued");
        self.running.push(task.task_id.clone());
        let _ = self.tx.send(Saw::Launched(task.task_id.value));
    }

    async fn kill_task(
        &mut self,
        driver: &ExecutorDriver,
        task_id: &TaskId,
        _: Option<&KillPolicy>,
    ) {
        self.running.retain(|t| t != task_id);
        driver
            .send_status_update(status(task_id, TaskState::TaskKilled))
            .expect("queued");
        let _ = self.tx.send(Saw::Killed(task_id.value.clone()));
    }

    async fn framework_message(&mut self, driver: &ExecutorDriver, data: &[u8]) {
        let _ = self.tx.send(Saw::Message(data.to_vec()));
        let mut echo = b"echo:".to_vec();
        echo.extend_from_slice(data);
        driver.send_framework_message(echo).await.expect("message");
    }

    async fn shutdown(&mut self, driver: &ExecutorDriver) {
        for task in self.running.drain(..) {
            let _ = driver.send_status_update(status(&task, TaskState::TaskKilled));
        }
        let _ = self.tx.send(Saw::Shutdown);
    }
}

struct Harness {
    agent: FakeAgent,
    driver: ExecutorDriver,
    saw: mpsc::UnboundedReceiver<Saw>,
}

impl Harness {
    async fn next(&mut self) -> Saw {
        tokio::time::timeout(common::WAIT, self.saw.recv())
            .await
            .expect("a callback in time")
            .expect("the executor is alive")
    }
}

fn environment(agent: &FakeAgent, checkpoint: bool) -> ExecutorEnvironment {
    let mut vars = vec![
        ("MESOS_AGENT_ENDPOINT".to_owned(), agent.endpoint()),
        ("MESOS_FRAMEWORK_ID".to_owned(), FRAMEWORK.to_owned()),
        ("MESOS_EXECUTOR_ID".to_owned(), EXECUTOR.to_owned()),
        (
            "MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD".to_owned(),
            "2secs".to_owned(),
        ),
        (
            "MESOS_SUBSCRIPTION_BACKOFF_MAX".to_owned(),
            "50ms".to_owned(),
        ),
        ("MESOS_RECOVERY_TIMEOUT".to_owned(), "3secs".to_owned()),
    ];
    vars.push((
        "MESOS_CHECKPOINT".to_owned(),
        if checkpoint { "1" } else { "0" }.to_owned(),
    ));
    ExecutorEnvironment::from_vars(vars).expect("environment")
}

async fn start(checkpoint: bool, config: ExecutorConfig) -> Harness {
    let agent = FakeAgent::start(FRAMEWORK, EXECUTOR).await;
    let driver = ExecutorDriver::new(environment(&agent, checkpoint), config).expect("driver");
    let (tx, saw) = mpsc::unbounded_channel();
    driver
        .start(TestExecutor {
            tx,
            running: Vec::new(),
        })
        .expect("start");
    let mut harness = Harness { agent, driver, saw };
    assert_eq!(
        harness.next().await,
        Saw::Registered {
            executor: EXECUTOR.into(),
            framework: FRAMEWORK.into(),
            agent: "fake-agent".into()
        }
    );
    harness
}

#[tokio::test(flavor = "multi_thread")]
async fn updates_are_kept_until_acknowledged_and_carried_by_resubscriptions() {
    let mut h = start(true, ExecutorConfig::default()).await;
    let first = &h.agent.subscribes()[0];
    assert!(first.unacknowledged_tasks.is_empty() && first.unacknowledged_updates.is_empty());

    assert!(h.agent.launch("t1"));
    assert_eq!(h.next().await, Saw::Launched("t1".into()));
    eventually("the update reaches the agent", || {
        h.agent.updates().len() == 1
    })
    .await;
    let update = h.agent.updates()[0].clone();
    assert_eq!(update.task_id.value, "t1");
    assert_eq!(update.state(), TaskState::TaskRunning);
    assert_eq!(update.uuid.as_ref().map(Vec::len), Some(16));
    assert_eq!(update.source(), task_status::Source::Executor);
    assert_eq!(
        update.executor_id.as_ref().map(|e| e.value.as_str()),
        Some(EXECUTOR)
    );
    assert!(update.timestamp.is_some_and(|t| t > 1.0e9));
    assert_eq!(h.driver.unacknowledged_updates(), 1);

    // The agent goes away before acknowledging: the resubscription carries task and update.
    h.agent.close_stream();
    assert_eq!(h.next().await, Saw::Disconnected);
    assert_eq!(h.next().await, Saw::Reregistered);
    let again = h.agent.subscribes()[1].clone();
    assert_eq!(again.unacknowledged_tasks.len(), 1);
    assert_eq!(again.unacknowledged_tasks[0].task_id.value, "t1");
    assert_eq!(again.unacknowledged_updates.len(), 1);
    assert_eq!(again.unacknowledged_updates[0].status, update);
    // ...and it is not POSTed again on that connection.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.agent.updates().len(), 1);

    // ACKNOWLEDGED releases it: the next resubscription carries nothing.
    assert!(h.agent.acknowledge(&update));
    assert!(h.driver.wait_acknowledged(common::WAIT).await);
    h.agent.close_stream();
    assert_eq!(h.next().await, Saw::Disconnected);
    assert_eq!(h.next().await, Saw::Reregistered);
    let last = h.agent.subscribes()[2].clone();
    assert!(last.unacknowledged_tasks.is_empty(), "{last:?}");
    assert!(last.unacknowledged_updates.is_empty(), "{last:?}");
    h.driver.stop().await.expect("stop");
    assert_eq!(h.driver.join().await.expect("join"), DriverStatus::Stopped);
}

#[tokio::test(flavor = "multi_thread")]
async fn accepted_updates_are_resent_while_unacknowledged() {
    let mut config = ExecutorConfig::default();
    config.resend.resend_initial = Duration::from_millis(100);
    config.resend.resend_max = Duration::from_millis(200);
    config.resend.resends_max = 2;
    let mut h = start(false, config).await;
    h.agent.launch("t1");
    assert_eq!(h.next().await, Saw::Launched("t1".into()));
    eventually("two resends", || h.agent.updates().len() == 3).await;
    let updates = h.agent.updates();
    assert!(
        updates.iter().all(|u| u.uuid == updates[0].uuid),
        "one update, resent"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.agent.updates().len(), 3, "resends are bounded");
    h.driver.abort().expect("abort");
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_and_kills_flow_both_ways() {
    let mut h = start(false, ExecutorConfig::default()).await;
    h.agent.launch("t1");
    assert_eq!(h.next().await, Saw::Launched("t1".into()));
    assert!(h.agent.message(b"ping"));
    assert_eq!(h.next().await, Saw::Message(b"ping".to_vec()));
    eventually("the echo", || {
        h.agent.messages() == vec![b"echo:ping".to_vec()]
    })
    .await;
    assert!(h.agent.kill("t1"));
    assert_eq!(h.next().await, Saw::Killed("t1".into()));
    eventually("TASK_KILLED", || {
        h.agent
            .updates()
            .iter()
            .any(|u| u.state() == TaskState::TaskKilled)
    })
    .await;
    // An executor may not send TASK_STAGING.
    assert!(matches!(
        h.driver.send_status_update(status(
            &TaskId { value: "t1".into() },
            TaskState::TaskStaging
        )),
        Err(ExecutorError::StagingUpdate)
    ));
    h.driver.abort().expect("abort");
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_kills_tasks_sends_their_updates_and_stops() {
    let mut h = start(false, ExecutorConfig::default()).await;
    h.agent.launch("t1");
    assert_eq!(h.next().await, Saw::Launched("t1".into()));
    assert!(h.agent.shutdown());
    assert_eq!(h.next().await, Saw::Shutdown);
    let status = tokio::time::timeout(common::WAIT, h.driver.join())
        .await
        .expect("join in time")
        .expect("join");
    assert_eq!(status, DriverStatus::Stopped);
    // The TASK_KILLED sent during shutdown went out before the driver stopped.
    assert!(h
        .agent
        .updates()
        .iter()
        .any(|u| u.task_id.value == "t1" && u.state() == TaskState::TaskKilled));
    assert!(matches!(
        h.driver.send_status_update(status_of("t1")),
        Err(ExecutorError::NotRunning)
    ));
}

fn status_of(task: &str) -> TaskStatus {
    status(&TaskId { value: task.into() }, TaskState::TaskRunning)
}

#[tokio::test(flavor = "multi_thread")]
async fn without_checkpointing_losing_the_agent_shuts_down() {
    let mut h = start(false, ExecutorConfig::default()).await;
    h.agent.close_stream();
    assert_eq!(h.next().await, Saw::Disconnected);
    assert_eq!(h.next().await, Saw::Shutdown);
    let status = tokio::time::timeout(common::WAIT, h.driver.join())
        .await
        .expect("join in time")
        .expect("join");
    assert_eq!(status, DriverStatus::Stopped);
    assert_eq!(h.agent.subscribes().len(), 1, "no resubscription");
}

#[tokio::test(flavor = "multi_thread")]
async fn checkpointing_executors_wait_for_the_agent_up_to_the_recovery_timeout() {
    let mut h = start(true, ExecutorConfig::default()).await;
    // The agent restarts and refuses subscriptions while recovering, then serves again.
    h.agent.refuse_subscriptions(true);
    h.agent.close_stream();
    assert_eq!(h.next().await, Saw::Disconnected);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Updates sent meanwhile are kept and delivered with the resubscription.
    let uuid = h
        .driver
        .send_status_update(status_of("t9"))
        .expect("queued");
    h.agent.refuse_subscriptions(false);
    assert_eq!(h.next().await, Saw::Reregistered);
    let subscribe = h.agent.subscribes().last().cloned().expect("subscribe");
    assert_eq!(
        subscribe.unacknowledged_updates[0].status.uuid,
        Some(uuid.clone())
    );

    // It stays away: after the 3 s recovery timeout the executor shuts down.
    let lost_at = tokio::time::Instant::now();
    h.agent.refuse_subscriptions(true);
    h.agent.close_stream();
    assert_eq!(h.next().await, Saw::Disconnected);
    assert_eq!(h.next().await, Saw::Shutdown);
    let waited = lost_at.elapsed();
    assert!(waited >= Duration::from_millis(2_900), "{waited:?}");
    assert!(waited < Duration::from_secs(6), "{waited:?}");
    let status = tokio::time::timeout(common::WAIT, h.driver.join())
        .await
        .expect("join in time")
        .expect("join");
    assert_eq!(status, DriverStatus::Stopped);
    assert!(h.agent.subscribes().len() > 3, "it kept trying");
}

#[tokio::test(flavor = "multi_thread")]
async fn protobuf_mode_works_the_same() {
    let mut config = ExecutorConfig::default();
    config.content_type = ContentType::Protobuf;
    let mut h = start(false, config).await;
    h.agent.launch("t1");
    assert_eq!(h.next().await, Saw::Launched("t1".into()));
    eventually("the update", || h.agent.updates().len() == 1).await;
    h.driver.stop().await.expect("stop");
    assert_eq!(h.driver.join().await.expect("join"), DriverStatus::Stopped);
}
