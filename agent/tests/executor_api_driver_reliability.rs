//! The framework crate's `ExecutorDriver` against the real executor API, for what a test must
//! see from inside the driver: status updates kept and resent until ACKNOWLEDGED and carried
//! by resubscriptions (with the unacknowledged tasks), SHUTDOWN, losing the agent with and
//! without checkpointing (recovery timeout), and the protobuf encoding.
//!
//! `executor_api_driver.rs` runs the driver as the executor process itself and can only watch
//! it through the agent. Here the agent launches a stand-in process (it saves the environment
//! the agent gave it, then sleeps) and the driver speaks for it from this test process, built
//! from that very environment, so the tests see its callbacks, its state and its errors.

mod executor_api_common;

use std::path::Path;
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::time::{Duration, Instant};

use executor_api_common::*;
use mesoblk_agent::executor_api::{AcknowledgeWhen, ExecutorApiConfig};
use mesoblk_framework::executor::{
    DriverStatus, Executor, ExecutorConfig, ExecutorDriver, ExecutorEnvironment, ExecutorError,
};
use mesoblk_framework::ContentType;
use mesoblk_proto::mesos::v1::executor::call;
use mesoblk_proto::mesos::v1::task_status::Source;
use mesoblk_proto::mesos::v1::{
    AgentInfo, ExecutorInfo, FrameworkInfo, KillPolicy, TaskId, TaskInfo, TaskState, TaskStatus,
};

const EXECUTOR: &str = "in-test";

/// The stand-in: the agent watches this process; the driver in the test does the talking.
const STAND_IN: &str = "env > env.tmp && mv env.tmp agent.env && exec sleep 300";

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
    Message(Vec<u8>),
    Shutdown,
}

/// Runs every task at once (TASK_RUNNING) unless its data is `quiet`, echoes messages, and on
/// shutdown kills what runs (TASK_KILLED).
struct TestExecutor {
    saw: Sender<Saw>,
    running: Vec<TaskId>,
}

fn status(task: &str, state: TaskState) -> TaskStatus {
    TaskStatus {
        task_id: TaskId { value: task.into() },
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
        let _ = self.saw.send(Saw::Registered {
            executor: executor.executor_id.value.clone(),
            framework: framework.id.clone().unwrap_or_default().value,
            agent: agent.id.clone().unwrap_or_default().value,
        });
    }

    async fn reregistered(&mut self, _: &ExecutorDriver, _: &AgentInfo) {
        let _ = self.saw.send(Saw::Reregistered);
    }

    async fn disconnected(&mut self, _: &ExecutorDriver) {
        let _ = self.saw.send(Saw::Disconnected);
    }

    async fn launch_task(&mut self, driver: &ExecutorDriver, task: TaskInfo) {
        if task.data.as_deref() != Some(b"quiet") {
            let running = status(&task.task_id.value, TaskState::TaskRunning);
            driver.send_status_update(running).expect("queued");
            self.running.push(task.task_id.clone());
        }
        let _ = self.saw.send(Saw::Launched(task.task_id.value));
    }

    // KILL is covered by executor_api_driver.rs.
    async fn kill_task(&mut self, _: &ExecutorDriver, _: &TaskId, _: Option<&KillPolicy>) {}

    async fn framework_message(&mut self, driver: &ExecutorDriver, data: &[u8]) {
        let _ = self.saw.send(Saw::Message(data.to_vec()));
        let echo = [b"echo:".as_slice(), data].concat();
        driver.send_framework_message(echo).await.expect("message");
    }

    async fn shutdown(&mut self, driver: &ExecutorDriver) {
        for task in self.running.drain(..) {
            let _ = driver.send_status_update(status(&task.value, TaskState::TaskKilled));
        }
        let _ = self.saw.send(Saw::Shutdown);
    }
}

/// A real agent, its stand-in executor process, and the driver speaking for it.
struct Harness {
    agent: Option<Agent>,
    dir: tempfile::TempDir,
    settings: fn(&mut ExecutorApiConfig),
    driver: ExecutorDriver,
    saw: Receiver<Saw>,
    pid: i32,
    runtime: tokio::runtime::Runtime,
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.driver.abort();
        let pid = nix::unistd::Pid::from_raw(self.pid);
        let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
    }
}

/// Short timers: quick resubscriptions, a 3 s recovery timeout, a 2 s shutdown grace period.
fn quick(config: &mut ExecutorApiConfig) {
    config.subscription_backoff_max = Duration::from_millis(50);
    config.recovery_timeout = Duration::from_secs(3);
    config.shutdown_grace = Duration::from_secs(2);
    config.reregistration_timeout = Duration::from_secs(20);
}

fn scheduler_acks(config: &mut ExecutorApiConfig) {
    quick(config);
    config.acknowledge = AcknowledgeWhen::SchedulerAcknowledged;
}

/// The `MESOS_*` variables the stand-in was started with (bounded wait).
fn agent_env(sandbox: &Path) -> Vec<(String, String)> {
    let deadline = Instant::now() + WAIT;
    let text = loop {
        if let Ok(text) = std::fs::read_to_string(sandbox.join("agent.env")) {
            break text;
        }
        assert!(Instant::now() < deadline, "the stand-in never started");
        std::thread::sleep(Duration::from_millis(20));
    };
    text.lines()
        .filter_map(|line| line.split_once('='))
        .filter(|(k, _)| k.starts_with("MESOS_"))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

impl Harness {
    /// Launches the stand-in with `tasks` (for a checkpointing framework or not) on an agent
    /// configured by `settings`, starts the driver with `config`, and waits for `registered`.
    fn start(
        checkpoint: bool,
        tasks: Vec<TaskInfo>,
        settings: fn(&mut ExecutorApiConfig),
        config: ExecutorConfig,
    ) -> Harness {
        let dir = work_dir();
        let agent = Agent::start(dir.path(), 0, settings);
        let info = executor(EXECUTOR, STAND_IN);
        agent
            .api
            .launch(launch(checkpoint, info, tasks, &[]))
            .expect("launch");
        let summary = agent.api.executors().remove(0);
        let env = ExecutorEnvironment::from_vars(agent_env(&summary.sandbox)).expect("env");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let driver = ExecutorDriver::new(env, config).expect("driver");
        let (tx, saw) = channel();
        {
            let _guard = runtime.enter();
            let executor = TestExecutor {
                saw: tx,
                running: Vec::new(),
            };
            driver.start(executor).expect("start");
        }
        let h = Harness {
            agent: Some(agent),
            dir,
            settings,
            driver,
            saw,
            pid: summary.pid,
            runtime,
        };
        let registered = Saw::Registered {
            executor: EXECUTOR.into(),
            framework: FRAMEWORK.into(),
            agent: AGENT_ID.into(),
        };
        assert_eq!(h.next(), registered);
        h
    }

    fn agent(&self) -> &Agent {
        self.agent.as_ref().expect("an agent")
    }

    /// The next callback, within [`WAIT`].
    fn next(&self) -> Saw {
        self.saw.recv_timeout(WAIT).expect("a callback in time")
    }

    /// Crashes the agent and starts a new one on its port and work dir; it recovers its
    /// executors (and serves) only when `recover`.
    fn restart(&mut self, recover: bool) {
        let old = self.agent.take().expect("an agent");
        let port = old.addr.port();
        old.crash();
        let agent = Agent::start_recovering(self.dir.path(), port, recover, self.settings);
        self.agent = Some(agent);
    }

    /// Waits (bounded) for the driver to stop by itself.
    fn join(&self) -> DriverStatus {
        let join = async { tokio::time::timeout(WAIT, self.driver.join()).await };
        self.runtime
            .block_on(join)
            .expect("join in time")
            .expect("join")
    }

    fn stop(&self) {
        self.runtime.block_on(self.driver.stop()).expect("stop");
        assert_eq!(self.join(), DriverStatus::Stopped);
    }

    /// Asserts that the agent got no other status update (nothing is sent after the fact:
    /// each of the agent's own updates goes out while it handles the call that causes it).
    fn no_more_updates(&self) {
        match self.agent().updates.try_recv() {
            Err(TryRecvError::Empty) => {}
            other => panic!("unexpected update: {other:?}"),
        }
    }
}

fn task_ids(subscribe: &call::Subscribe) -> Vec<String> {
    let mut ids: Vec<String> = subscribe
        .unacknowledged_tasks
        .iter()
        .map(|t| t.task_id.value.clone())
        .collect();
    ids.sort();
    ids
}

fn launched(h: &Harness, n: usize) -> Vec<String> {
    let mut ids: Vec<String> = (0..n)
        .map(|_| match h.next() {
            Saw::Launched(id) => id,
            other => panic!("expected a launch, saw {other:?}"),
        })
        .collect();
    ids.sort();
    ids
}

#[test]
fn updates_are_kept_until_acknowledged_and_carried_by_resubscriptions() {
    let tasks = vec![task("t1", "run"), task("quiet", "quiet")];
    let mut h = Harness::start(true, tasks, scheduler_acks, ExecutorConfig::default());
    assert_eq!(launched(&h, 2), ["quiet", "t1"]);
    let first = h.agent().subscribes().remove(0);
    assert!(task_ids(&first).is_empty() && first.unacknowledged_updates.is_empty());
    let update = h.agent().next_update();
    assert_eq!(update.task_id.value, "t1");
    assert_eq!(state(&update), TaskState::TaskRunning);
    assert_eq!(update.uuid.as_ref().map(Vec::len), Some(16));
    assert_eq!(update.source(), Source::Executor);
    assert_eq!(
        update.executor_id.clone().unwrap_or_default().value,
        EXECUTOR
    );
    assert!(update.timestamp.is_some_and(|t| t > 1.0e9));
    assert_eq!(h.driver.unacknowledged_updates(), 1);

    // The agent restarts before the scheduler acknowledged: the resubscription carries both
    // tasks (so the quiet one, never reported on, is not lost) and the update.
    h.restart(true);
    assert_eq!(h.next(), Saw::Disconnected);
    assert_eq!(h.next(), Saw::Reregistered);
    let again = h.agent().subscribes().remove(0);
    assert_eq!(task_ids(&again), ["quiet", "t1"]);
    assert_eq!(again.unacknowledged_updates.len(), 1);
    assert_eq!(again.unacknowledged_updates[0].status.uuid, update.uuid);
    assert_eq!(h.agent().next_update().uuid, update.uuid, "taken again");
    h.no_more_updates();
    let tasks = &h.agent().api.executors()[0].tasks;
    assert!(tasks.iter().any(|(t, _)| t.task_id.value == "quiet"));
    // ...and the update is not POSTed again on that connection.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(h.agent().count(call::Type::Update), 0);

    // The acknowledgement releases it: the next resubscription carries only the quiet task.
    let uuid = update.uuid.clone().unwrap();
    assert_eq!(h.agent().api.acknowledge(FRAMEWORK, "t1", &uuid), Ok(true));
    assert!(h.runtime.block_on(h.driver.wait_acknowledged(WAIT)));
    h.restart(true);
    assert_eq!(h.next(), Saw::Disconnected);
    assert_eq!(h.next(), Saw::Reregistered);
    let last = h.agent().subscribes().remove(0);
    assert_eq!(task_ids(&last), ["quiet"]);
    assert!(last.unacknowledged_updates.is_empty(), "{last:?}");
    h.stop();
}

#[test]
fn accepted_updates_are_resent_while_unacknowledged() {
    let mut config = ExecutorConfig::default();
    config.resend.resend_initial = Duration::from_millis(100);
    config.resend.resend_max = Duration::from_millis(200);
    config.resend.resends_max = 2;
    let h = Harness::start(false, vec![task("t1", "run")], scheduler_acks, config);
    assert_eq!(launched(&h, 1), ["t1"]);
    let updates = h.agent().updates(3);
    assert!(
        updates.iter().all(|u| u.uuid == updates[0].uuid),
        "one update, resent twice: {updates:?}"
    );
    std::thread::sleep(Duration::from_millis(600));
    h.no_more_updates();
    assert_eq!(
        h.agent().count(call::Type::Update),
        3,
        "resends are bounded"
    );
    let uuid = updates[0].uuid.clone().unwrap();
    assert_eq!(h.agent().api.acknowledge(FRAMEWORK, "t1", &uuid), Ok(true));
    assert!(h.runtime.block_on(h.driver.wait_acknowledged(WAIT)));
    h.stop();
}

#[test]
fn shutdown_kills_tasks_sends_their_updates_and_stops() {
    let h = Harness::start(false, vec![task("t1", "run")], quick, Default::default());
    assert_eq!(launched(&h, 1), ["t1"]);
    assert_eq!(state(&h.agent().next_update()), TaskState::TaskRunning);
    // An executor may not send TASK_STAGING.
    let staging = status("t1", TaskState::TaskStaging);
    assert!(matches!(
        h.driver.send_status_update(staging),
        Err(ExecutorError::StagingUpdate)
    ));
    h.agent()
        .api
        .shutdown_executor(FRAMEWORK, EXECUTOR)
        .unwrap();
    assert_eq!(h.next(), Saw::Shutdown);
    assert_eq!(h.join(), DriverStatus::Stopped);
    // The TASK_KILLED sent during the shutdown reached the agent before the driver stopped.
    let killed = h.agent().next_update();
    assert_eq!(
        (
            killed.task_id.value.as_str(),
            state(&killed),
            killed.source()
        ),
        ("t1", TaskState::TaskKilled, Source::Executor)
    );
    let running = status("t1", TaskState::TaskRunning);
    assert!(matches!(
        h.driver.send_status_update(running),
        Err(ExecutorError::NotRunning)
    ));
    // The agent ends the stand-in after the grace period; the killed task needs no update.
    h.agent().wait_no_executors();
    h.no_more_updates();
}

#[test]
fn without_checkpointing_losing_the_agent_shuts_down() {
    let mut h = Harness::start(false, vec![task("t1", "run")], quick, Default::default());
    assert_eq!(launched(&h, 1), ["t1"]);
    // The agent restarts at once (answering 503 while it recovers): the driver must not try.
    h.restart(false);
    assert_eq!(h.next(), Saw::Disconnected);
    assert_eq!(h.next(), Saw::Shutdown);
    assert_eq!(h.join(), DriverStatus::Stopped);
    assert!(!h.driver.is_subscribed());
    assert!(h.agent().subscribes().is_empty(), "no resubscription");
}

#[test]
fn checkpointing_executors_wait_for_the_agent_up_to_the_recovery_timeout() {
    let mut h = Harness::start(true, vec![task("t1", "run")], quick, Default::default());
    assert_eq!(launched(&h, 1), ["t1"]);
    assert_eq!(state(&h.agent().next_update()), TaskState::TaskRunning);
    assert!(h.runtime.block_on(h.driver.wait_acknowledged(WAIT)));
    // The agent restarts and answers 503 while it recovers.
    h.restart(false);
    assert_eq!(h.next(), Saw::Disconnected);
    let refused = |h: &Harness| h.agent().subscribes().len();
    wait_until("a refused resubscription", || refused(&h) >= 1);
    // An update sent meanwhile is kept and delivered with the resubscription.
    let finished = status("t1", TaskState::TaskFinished);
    let uuid = h.driver.send_status_update(finished).expect("queued");
    // A SUBSCRIBE already on its way was built without the update; the second one to arrive
    // after this point was built after the first's refusal, so it carries it.
    let before = refused(&h);
    wait_until("two more refused resubscriptions", || {
        refused(&h) >= before + 2
    });
    assert_eq!(h.agent().api.recover().expect("recover"), 1);
    assert_eq!(h.next(), Saw::Reregistered);
    let subscribe = h.agent().subscribes().pop().expect("subscribe");
    let carried: Vec<_> = subscribe
        .unacknowledged_updates
        .iter()
        .map(|u| &u.status.uuid)
        .collect();
    assert_eq!(carried, [&Some(uuid.clone())]);
    let delivered = h.agent().next_update();
    assert_eq!(delivered.uuid, Some(uuid));
    assert_eq!(state(&delivered), TaskState::TaskFinished);

    // Then it stays away: after the 3 s recovery timeout the executor shuts down.
    let lost_at = Instant::now();
    h.restart(false);
    assert_eq!(h.next(), Saw::Disconnected);
    assert_eq!(h.next(), Saw::Shutdown);
    let waited = lost_at.elapsed();
    assert!(waited >= Duration::from_millis(2_900), "{waited:?}");
    assert_eq!(h.join(), DriverStatus::Stopped);
    assert!(refused(&h) > 1, "it kept trying");
}

#[test]
fn protobuf_mode_works_the_same() {
    let mut config = ExecutorConfig::default();
    config.content_type = ContentType::Protobuf;
    let h = Harness::start(false, vec![task("t1", "run")], quick, config);
    assert_eq!(launched(&h, 1), ["t1"]);
    assert_eq!(state(&h.agent().next_update()), TaskState::TaskRunning);
    let agent = h.agent();
    agent
        .api
        .framework_message(FRAMEWORK, EXECUTOR, b"ping")
        .unwrap();
    assert_eq!(h.next(), Saw::Message(b"ping".to_vec()));
    assert_eq!(agent.next_message().data, b"echo:ping");
    let calls = agent.calls.lock().unwrap().clone();
    let kinds: Vec<call::Type> = calls.iter().map(|(_, c)| c.r#type()).collect();
    for kind in [
        call::Type::Subscribe,
        call::Type::Update,
        call::Type::Message,
    ] {
        assert!(kinds.contains(&kind), "no {kind:?} in {kinds:?}");
    }
    assert!(
        calls.iter().all(|(e, _)| *e == ContentType::Protobuf),
        "{calls:?}"
    );
    h.stop();
}

/// Polls `condition` every 20 ms until it holds, for at most [`WAIT`].
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
