//! The executor API with the Rust framework crate's `ExecutorDriver` as a real executor
//! process, and agent restarts (re-subscription, recovery, lost tasks, re-registration
//! timeout).
//!
//! This test binary is also the executor: started with `MESOBLK_TEST_EXECUTOR=1` (as the
//! ExecutorInfo's command does) it runs [`TestExecutor`] under an `ExecutorDriver` built from
//! the environment the agent gave it, instead of the tests. Hence `harness = false`.

mod executor_api_common;

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::time::{Duration, Instant};

use executor_api_common::*;
use mesoblk_agent::checkpoint::{Layout, RunId};
use mesoblk_agent::executor::process::read_stat;
use mesoblk_agent::executor_api::{AcknowledgeWhen, ExecutorApiConfig, ExecutorPhase};
use mesoblk_framework::executor::{Executor, ExecutorDriver};
use mesoblk_proto::mesos::v1::task_status::{Reason, Source};
use mesoblk_proto::mesos::v1::{
    AgentInfo, ExecutorInfo, FrameworkInfo, KillPolicy, TaskId, TaskInfo, TaskState, TaskStatus,
};
use prost::Message;

const ROLE: &str = "MESOBLK_TEST_EXECUTOR";

/// The executor: TASK_RUNNING for every task (then TASK_FINISHED when its data is `finish`),
/// TASK_KILLED on kill, answers framework messages (`unacked?` → how many of its updates
/// wait for an acknowledgement, else `echo:` + the message), and notes `registered`,
/// `reregistered` and `shutdown` in the sandbox file `events`.
struct TestExecutor;

fn note(event: &str) {
    let sandbox = std::env::var("MESOS_SANDBOX").unwrap_or_else(|_| ".".into());
    let path = Path::new(&sandbox).join("events");
    let mut all = std::fs::read_to_string(&path).unwrap_or_default();
    all.push_str(event);
    all.push('\n');
    let _ = std::fs::write(path, all);
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
        _: &ExecutorInfo,
        _: &FrameworkInfo,
        _: &AgentInfo,
    ) {
        note("registered");
    }

    async fn reregistered(&mut self, _: &ExecutorDriver, _: &AgentInfo) {
        note("reregistered");
    }

    async fn launch_task(&mut self, driver: &ExecutorDriver, task: TaskInfo) {
        let _ = driver.send_status_update(status(&task.task_id, TaskState::TaskRunning));
        if task.data.as_deref() == Some(b"finish") {
            let _ = driver.send_status_update(status(&task.task_id, TaskState::TaskFinished));
        }
    }

    async fn kill_task(
        &mut self,
        driver: &ExecutorDriver,
        task_id: &TaskId,
        _: Option<&KillPolicy>,
    ) {
        let _ = driver.send_status_update(status(task_id, TaskState::TaskKilled));
    }

    async fn framework_message(&mut self, driver: &ExecutorDriver, data: &[u8]) {
        let reply = if data == b"unacked?" {
            driver.unacknowledged_updates().to_string().into_bytes()
        } else {
            [b"echo:".as_slice(), data].concat()
        };
        let _ = driver.send_framework_message(reply).await;
    }

    async fn shutdown(&mut self, _: &ExecutorDriver) {
        note("shutdown");
    }
}

fn run_executor() {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let outcome = runtime.block_on(async {
        let driver = ExecutorDriver::from_env()?;
        driver.run(TestExecutor).await
    });
    if let Err(e) = outcome {
        eprintln!("executor failed: {e}");
        std::process::exit(1);
    }
}

fn rust_executor(id: &str) -> ExecutorInfo {
    let me = std::env::current_exe().unwrap();
    let mut info = executor(id, &format!("exec {}", me.display()));
    let command = info.command.as_mut().unwrap();
    command.environment = Some(mesoblk_proto::mesos::v1::Environment {
        variables: vec![mesoblk_proto::mesos::v1::environment::Variable {
            name: ROLE.into(),
            value: Some("1".into()),
            ..Default::default()
        }],
    });
    info
}

fn ask(agent: &Agent, executor_id: &str, question: &[u8]) -> Vec<u8> {
    agent
        .api
        .framework_message(FRAMEWORK, executor_id, question)
        .expect("the executor is connected");
    agent.next_message().data
}

/// Asks `unacked?` until the executor says 0 (bounded).
fn wait_all_acknowledged(agent: &Agent, executor_id: &str) {
    let deadline = Instant::now() + WAIT;
    while ask(agent, executor_id, b"unacked?") != b"0" {
        assert!(Instant::now() < deadline, "updates never acknowledged");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn events(sandbox: &Path) -> String {
    std::fs::read_to_string(sandbox.join("events")).unwrap_or_default()
}

fn scheduler_acks(config: &mut ExecutorApiConfig) {
    config.acknowledge = AcknowledgeWhen::SchedulerAcknowledged;
    // The executor waits up to MESOS_SUBSCRIPTION_BACKOFF_MAX (2 s) between resubscriptions:
    // the default 2 s to re-register after a restart made the restart test flaky.
    config.reregistration_timeout = Duration::from_secs(20);
}

fn rust_driver_runs_tasks_messages_kill_and_shutdown() {
    let dir = work_dir();
    let agent = Agent::start(dir.path(), 0, scheduler_acks);
    let tasks = vec![task("finishes", "finish"), task("runs", "run")];
    agent
        .api
        .launch(launch(false, rust_executor("rs-1"), tasks, &[]))
        .unwrap();
    let updates = agent.updates(3);
    let mut seen: Vec<(String, TaskState)> = updates
        .iter()
        .map(|s| (s.task_id.value.clone(), state(s)))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("finishes".into(), TaskState::TaskRunning),
            ("finishes".into(), TaskState::TaskFinished),
            ("runs".into(), TaskState::TaskRunning)
        ]
    );
    assert!(updates.iter().all(|s| s.source() == Source::Executor));
    // Not acknowledged yet: the driver holds them.
    assert_eq!(ask(&agent, "rs-1", b"unacked?"), b"3");
    for s in &updates {
        assert!(agent
            .api
            .acknowledge(FRAMEWORK, &s.task_id.value, s.uuid.as_ref().unwrap())
            .unwrap());
    }
    wait_all_acknowledged(&agent, "rs-1");
    assert_eq!(ask(&agent, "rs-1", b"ping"), b"echo:ping");
    agent.api.kill(FRAMEWORK, "runs", None).unwrap();
    let killed = agent.next_update();
    assert_eq!(
        (killed.task_id.value.as_str(), state(&killed)),
        ("runs", TaskState::TaskKilled)
    );
    let sandbox = agent.api.executors()[0].sandbox.clone();
    agent.api.shutdown_executor(FRAMEWORK, "rs-1").unwrap();
    agent.wait_no_executors();
    assert_eq!(events(&sandbox), "registered\nshutdown\n");
}

fn rust_driver_updates_are_acknowledged_once_stored_by_default() {
    let dir = work_dir();
    let agent = Agent::start(dir.path(), 0, |_| {});
    let tasks = vec![task("finishes", "finish")];
    agent
        .api
        .launch(launch(false, rust_executor("rs-3"), tasks, &[]))
        .unwrap();
    let updates = agent.updates(2);
    // No scheduler acknowledged anything, and the driver holds nothing.
    wait_all_acknowledged(&agent, "rs-3");
    for s in &updates {
        let sent = agent
            .api
            .acknowledge(FRAMEWORK, "finishes", s.uuid.as_ref().unwrap());
        assert_eq!(sent, Ok(false), "nothing left to tell the executor");
    }
    assert!(
        agent.api.executors()[0].tasks.is_empty(),
        "the finished task is done"
    );
    agent.api.shutdown_executor(FRAMEWORK, "rs-3").unwrap();
    agent.wait_no_executors();
}

fn rust_driver_resubscribes_after_an_agent_restart() {
    let dir = work_dir();
    let agent = Agent::start(dir.path(), 0, scheduler_acks);
    let port = agent.addr.port();
    agent
        .api
        .launch(launch(
            true,
            rust_executor("rs-2"),
            vec![task("t1", "run")],
            &[],
        ))
        .unwrap();
    let running = agent.next_update();
    assert_eq!(state(&running), TaskState::TaskRunning);
    let summary = agent.api.executors().remove(0);
    agent.crash();

    // The agent had checkpointed a second task it never got to send.
    let layout = Layout::new(dir.path(), AGENT_ID);
    let run = RunId {
        framework_id: FRAMEWORK.into(),
        executor_id: "rs-2".into(),
        container_id: summary.container_id.clone(),
    };
    let lost_path = layout.task_info_path(&run, "never-sent");
    std::fs::create_dir_all(lost_path.parent().unwrap()).unwrap();
    std::fs::write(&lost_path, task("never-sent", "run").encode_to_vec()).unwrap();

    let agent = Agent::start(dir.path(), port, scheduler_acks);
    assert_eq!(agent.recovered, 1);
    assert_eq!(agent.api.executors()[0].phase, ExecutorPhase::Recovering);
    let mut lost = None;
    let mut resent = None;
    while lost.is_none() || resent.is_none() {
        let status = agent.next_update();
        match status.task_id.value.as_str() {
            "never-sent" => lost = Some(status),
            "t1" => resent = Some(status),
            other => panic!("unexpected update for {other}"),
        }
    }
    let lost = lost.unwrap();
    assert_eq!(state(&lost), TaskState::TaskLost);
    assert_eq!(lost.reason(), Reason::AgentRestarted);
    assert_eq!(lost.source(), Source::Agent);
    let resent = resent.unwrap();
    assert_eq!(
        resent.uuid, running.uuid,
        "the unacknowledged update is resent"
    );
    assert_eq!(agent.api.executors()[0].phase, ExecutorPhase::Running);
    assert!(agent
        .api
        .acknowledge(FRAMEWORK, "t1", resent.uuid.as_ref().unwrap())
        .unwrap());
    wait_all_acknowledged(&agent, "rs-2");
    assert_eq!(events(&summary.sandbox), "registered\nreregistered\n");
    agent.api.shutdown_executor(FRAMEWORK, "rs-2").unwrap();
    agent.wait_no_executors();
}

fn an_executor_that_does_not_resubscribe_after_a_restart_is_killed() {
    let dir = work_dir();
    let agent = Agent::start(dir.path(), 0, |_| {});
    agent
        .api
        .launch(launch(
            true,
            executor("silent", "exec sleep 60"),
            vec![task("t1", "x")],
            &[],
        ))
        .unwrap();
    let pid = agent.api.executors()[0].pid;
    agent.crash();
    let agent = Agent::start(dir.path(), 0, |c| {
        c.reregistration_timeout = Duration::from_millis(300)
    });
    assert_eq!(agent.recovered, 1);
    let failed = agent.next_update();
    assert_eq!(failed.task_id.value, "t1");
    assert_eq!(state(&failed), TaskState::TaskFailed);
    assert_eq!(failed.reason(), Reason::ExecutorReregistrationTimeout);
    assert_eq!(failed.source(), Source::Agent);
    agent.wait_no_executors();
    let stat = read_stat(pid);
    assert!(
        stat.is_none_or(|s| s.state == 'Z'),
        "the executor's group is gone: {stat:?}"
    );
    // Nothing is left to recover.
    let again = Agent::start(dir.path(), 0, |_| {});
    assert_eq!(again.recovered, 0);
}

fn main() {
    if std::env::var_os(ROLE).is_some() {
        run_executor();
        return;
    }
    let tests: [(&str, fn()); 4] = [
        (
            "rust_driver_updates_are_acknowledged_once_stored_by_default",
            rust_driver_updates_are_acknowledged_once_stored_by_default,
        ),
        (
            "rust_driver_runs_tasks_messages_kill_and_shutdown",
            rust_driver_runs_tasks_messages_kill_and_shutdown,
        ),
        (
            "rust_driver_resubscribes_after_an_agent_restart",
            rust_driver_resubscribes_after_an_agent_restart,
        ),
        (
            "an_executor_that_does_not_resubscribe_after_a_restart_is_killed",
            an_executor_that_does_not_resubscribe_after_a_restart_is_killed,
        ),
    ];
    if std::env::args().any(|a| a == "--list") {
        for (name, _) in tests {
            println!("{name}: test");
        }
        return;
    }
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let (mut passed, mut failed) = (0, 0);
    for (name, test) in tests {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(test));
        println!(
            "test {name} ... {}",
            if outcome.is_ok() { "ok" } else { "FAILED" }
        );
        failed += usize::from(outcome.is_err());
        passed += usize::from(outcome.is_ok());
    }
    println!("test result: {passed} passed; {failed} failed");
    if failed > 0 {
        eprintln!("{failed} test(s) failed");
        std::process::exit(1);
    }
}
