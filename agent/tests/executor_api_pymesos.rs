//! The executor API with a real pymesos 0.3.15 `MesosExecutorDriver` executor
//! (`executor_api_pymesos.py`), started by the API from an ExecutorInfo: subscription,
//! LAUNCH, updates, ACKNOWLEDGED, framework messages both ways, KILL, SHUTDOWN, and an
//! executor that dies.

mod executor_api_common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use executor_api_common::*;
use mesoblk_agent::executor_api::{AcknowledgeWhen, ExecutorPhase};
use mesoblk_proto::mesos::v1::task_status::{Reason, Source};
use mesoblk_proto::mesos::v1::{ExecutorInfo, TaskState, TaskStatus};

fn pymesos_executor(id: &str) -> ExecutorInfo {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/executor_api_pymesos.py");
    let command = format!("exec {} {script}", venv_python().display());
    executor(id, &command)
}

fn uuid_hex(status: &TaskStatus) -> String {
    status
        .uuid
        .as_ref()
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Asks the executor a question by framework message; its answer, within [`WAIT`].
fn ask(agent: &Agent, executor_id: &str, question: &[u8]) -> Vec<u8> {
    agent
        .api
        .framework_message(FRAMEWORK, executor_id, question)
        .expect("the executor is connected");
    let reply = agent.next_message();
    assert_eq!(reply.framework_id, FRAMEWORK);
    assert_eq!(reply.executor_id, executor_id);
    reply.data
}

#[test]
fn pymesos_executor_with_mesos_acknowledgements() {
    pymesos_scenario(AcknowledgeWhen::Stored);
}

#[test]
fn pymesos_executor_with_scheduler_acknowledgements() {
    pymesos_scenario(AcknowledgeWhen::SchedulerAcknowledged);
}

/// Launch, updates, ACKNOWLEDGED (when `acknowledge` says), framework messages both ways, the
/// environment, KILL and SHUTDOWN.
fn pymesos_scenario(acknowledge: AcknowledgeWhen) {
    let dir = work_dir();
    let agent = Agent::start(dir.path(), 0, |c| {
        c.shutdown_grace = Duration::from_secs(2);
        c.acknowledge = acknowledge;
    });
    let launch = launch(
        false,
        pymesos_executor("py-1"),
        vec![task("finishes", "finish"), task("runs", "run")],
        &[("MESOBLK_BLOCK_DEVICE", "/dev/ublkb7")],
    );
    agent.api.launch(launch).expect("the executor starts");

    // Subscription, both LAUNCH events, and the executor's updates.
    let updates = agent.updates(3);
    let mut by_task: BTreeMap<String, Vec<TaskState>> = BTreeMap::new();
    for status in &updates {
        assert_eq!(status.source(), Source::Executor);
        assert_eq!(status.agent_id.as_ref().unwrap().value, AGENT_ID);
        assert_eq!(status.executor_id.as_ref().unwrap().value, "py-1");
        assert_eq!(status.uuid.as_ref().unwrap().len(), 16);
        by_task
            .entry(status.task_id.value.clone())
            .or_default()
            .push(state(status));
    }
    assert_eq!(
        by_task["finishes"],
        [TaskState::TaskRunning, TaskState::TaskFinished]
    );
    assert_eq!(by_task["runs"], [TaskState::TaskRunning]);
    let summary = &agent.api.executors()[0];
    assert_eq!(summary.phase, ExecutorPhase::Running);
    assert!(summary.connected);

    // ACKNOWLEDGED reaches pymesos with the exact 16 bytes: once stored (Mesos), or once the
    // scheduler acknowledged.
    let want: Vec<String> = updates.iter().map(uuid_hex).collect();
    let acked: Vec<String> = serde_json::from_slice(&ask(&agent, "py-1", b"acks?")).unwrap();
    let by_scheduler = acknowledge == AcknowledgeWhen::SchedulerAcknowledged;
    assert_eq!(
        acked,
        if by_scheduler {
            Vec::new()
        } else {
            want.clone()
        }
    );
    for status in &updates {
        let sent = agent
            .api
            .acknowledge(
                FRAMEWORK,
                &status.task_id.value,
                status.uuid.as_ref().unwrap(),
            )
            .expect("a known update");
        assert_eq!(
            sent, by_scheduler,
            "ACKNOWLEDGED sent now for {}",
            status.task_id.value
        );
    }
    let acked: Vec<String> = serde_json::from_slice(&ask(&agent, "py-1", b"acks?")).unwrap();
    assert_eq!(acked, want);
    // A second acknowledgement of the same update has nothing to forward.
    let again = agent
        .api
        .acknowledge(FRAMEWORK, "runs", updates[2].uuid.as_ref().unwrap())
        .unwrap();
    assert!(!again);

    // Framework messages both ways, and the executor's environment.
    assert_eq!(ask(&agent, "py-1", b"hello"), b"echo:hello");
    let env: BTreeMap<String, String> =
        serde_json::from_slice(&ask(&agent, "py-1", b"env?")).unwrap();
    let sandbox = &summary.sandbox;
    assert_eq!(env["MESOS_FRAMEWORK_ID"], FRAMEWORK);
    assert_eq!(env["MESOS_EXECUTOR_ID"], "py-1");
    assert_eq!(env["MESOS_AGENT_ENDPOINT"], agent.addr.to_string());
    assert_eq!(env["MESOS_SLAVE_ID"], AGENT_ID);
    assert_eq!(env["MESOS_AGENT_ID"], AGENT_ID);
    assert_eq!(env["MESOS_SANDBOX"], sandbox.to_str().unwrap());
    assert_eq!(env["MESOS_DIRECTORY"], sandbox.to_str().unwrap());
    assert_eq!(env["MESOS_CHECKPOINT"], "0");
    assert_eq!(env["MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD"], "2secs");
    assert_eq!(env["MESOS_RECOVERY_TIMEOUT"], "15mins");
    assert_eq!(env["MESOS_SUBSCRIPTION_BACKOFF_MAX"], "2secs");
    assert_eq!(env["MESOS_HTTP_COMMAND_EXECUTOR"], "0");
    assert_eq!(env["MESOBLK_BLOCK_DEVICE"], "/dev/ublkb7");
    assert!(sandbox.starts_with(dir.path()));

    // KILL.
    agent.api.kill(FRAMEWORK, "runs", None).unwrap();
    let killed = agent.next_update();
    assert_eq!(killed.task_id.value, "runs");
    assert_eq!(state(&killed), TaskState::TaskKilled);
    assert_eq!(killed.source(), Source::Executor);
    assert!(agent.api.kill(FRAMEWORK, "no-such-task", None).is_err());

    // SHUTDOWN: pymesos runs its shutdown callback and ends its process group.
    agent.api.shutdown_executor(FRAMEWORK, "py-1").unwrap();
    agent.wait_no_executors();
    assert_eq!(
        std::fs::read_to_string(sandbox.join("shutdown")).unwrap(),
        "shutdown\n"
    );
    // Every task was terminal: the agent reports nothing more.
    assert!(agent.updates.try_recv().is_err());
}

#[test]
fn an_executor_that_dies_fails_its_tasks() {
    let dir = work_dir();
    let agent = Agent::start(dir.path(), 0, |_| {});
    let tasks = vec![task("steady", "run"), task("crasher", "crash")];
    agent
        .api
        .launch(launch(false, pymesos_executor("py-dies"), tasks, &[]))
        .unwrap();
    let mut failed = BTreeMap::new();
    let deadline = Instant::now() + WAIT;
    while failed.len() < 2 {
        assert!(Instant::now() < deadline);
        let status = agent.next_update();
        if state(&status) == TaskState::TaskRunning {
            assert_eq!(status.source(), Source::Executor);
            continue;
        }
        assert_eq!(state(&status), TaskState::TaskFailed);
        assert_eq!(status.source(), Source::Agent);
        assert_eq!(status.reason(), Reason::ExecutorTerminated);
        assert_eq!(status.executor_id.as_ref().unwrap().value, "py-dies");
        failed.insert(status.task_id.value.clone(), status);
    }
    assert!(failed.contains_key("steady") && failed.contains_key("crasher"));
    agent.wait_no_executors();
}
