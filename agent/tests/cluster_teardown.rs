//! A framework recovered by a restarted master (the real `mesoblk-master` binary, SIGKILLed and
//! started again on the same port) is torn down, with the real agent binary and a pymesos
//! scheduler and custom executor: the TEARDOWN reaches the agent, whose executor is shut down
//! (its running task ends as TASK_FAILED, REASON_EXECUTOR_TERMINATED, as for any framework
//! shutdown), whether the executor still has a task or none left.

mod cluster_common;

use cluster_common::{executor_of, pymesos_executor_command, Agent, MasterProcess, Scheduler};
use serde_json::{json, Value};

/// A master, an agent and a scheduler whose custom executor `custom-<task>` runs `task`; the
/// master is then restarted and the scheduler has re-subscribed to the new one.
async fn recovered_framework(
    dir: &std::path::Path,
    task: &str,
) -> (MasterProcess, Agent, Scheduler) {
    let mut master = MasterProcess::start(cluster_common::free_port(), dir.join("master.log"));
    let agent = Agent::start(&master.address(), dir, &[]);
    let mut scheduler = Scheduler::start(&master.address());
    let executor = pymesos_executor_command();
    scheduler
        .launch_specs(vec![
            json!({"id": task, "command": executor, "executor": true}),
        ])
        .await;
    scheduler.update(task, "TASK_RUNNING").await;
    master.restart();
    // The agent re-registers (the framework becomes a recovered one), then pymesos
    // re-subscribes on its own time.
    let back = |state: &Value| {
        state["frameworks"][0]["connected"] == true && !state["slaves"][0]["id"].is_null()
    };
    let what = "the agent re-registered and the scheduler re-subscribed";
    master.wait_state(what, &agent, back).await;
    (master, agent, scheduler)
}

async fn wait_executor_gone(agent: &Agent, master: &MasterProcess, id: &str) {
    let what = format!(
        "the executor {id} shut down; master log:\n{}",
        master_log(master)
    );
    agent
        .wait_state(&what, |s| executor_of(s, id).is_none())
        .await;
}

fn master_log(master: &MasterProcess) -> String {
    std::fs::read_to_string(&master.log).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_framework_torn_down_has_its_running_task_ended_on_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let (master, agent, scheduler) = recovered_framework(dir.path(), "busy").await;
    // pymesos's stop() is a TEARDOWN.
    scheduler.stop().await;
    wait_executor_gone(&agent, &master, "custom-busy").await;
    let state = agent.get_json("/state").await;
    let completed = &state["completed_frameworks"][0]["completed_executors"][0]["completed_tasks"];
    assert_eq!(completed[0]["id"], "busy", "{state:#}");
    // Its terminal update, not the state it had when the framework went.
    assert_eq!(completed[0]["state"], "TASK_FAILED", "{state:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_framework_torn_down_has_its_idle_executor_shut_down_on_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let (master, agent, mut scheduler) = recovered_framework(dir.path(), "idle").await;
    scheduler.send(json!({"cmd": "kill", "id": "idle"})).await;
    scheduler.update("idle", "TASK_KILLED").await;
    // The executor runs on without a task until its framework goes.
    assert!(executor_of(&agent.get_json("/state").await, "custom-idle").is_some());
    scheduler.stop().await;
    wait_executor_gone(&agent, &master, "custom-idle").await;
}
