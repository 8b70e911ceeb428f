//! Sandbox garbage collection on the real agent binary with a tiny `--gc_delay`: a running
//! task's sandbox is kept however long it runs; once the task ended and its end was
//! acknowledged the sandbox is deleted, and `/files/browse` of it answers 404.

mod cluster_common;

use std::time::{Duration, Instant};

use cluster_common::{Agent, Master, Scheduler, WAIT};
use serde_json::Value;

/// The one run folder of `executor` (as `/files/browse` lists it).
async fn run_of(agent: &Agent, state: &Value, executor: &str) -> String {
    let runs = agent.work_dir.join(format!(
        "slaves/{}/frameworks/{}/executors/{executor}/runs",
        state["id"].as_str().unwrap(),
        state["frameworks"][0]["id"].as_str().unwrap()
    ));
    let listing = agent
        .get_json(&format!("/files/browse?path={}", runs.display()))
        .await;
    listing[0]["path"].as_str().expect("one run").to_owned()
}

/// Waits (bounded) until `/files/browse` of a sandbox answers 404.
async fn wait_gone(agent: &Agent, browse: &str) {
    let deadline = Instant::now() + WAIT;
    while agent.get(browse).await.0 != 404 {
        assert!(
            Instant::now() < deadline,
            "{browse} collected in time; agent log:\n{}",
            agent.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_tasks_sandbox_is_deleted_after_the_gc_delay() {
    let master = Master::start().await;
    let dir = tempfile::tempdir().unwrap();
    let flags: Vec<String> = ["--gc_delay", "1secs", "--disk_watch_interval", "100ms"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let agent = Agent::start(&master.address(), dir.path(), &flags);
    let mut scheduler = Scheduler::start(&master.address());
    let gate = dir.path().join("go");
    let short_command = format!("while [ ! -e {} ]; do sleep 0.05; done", gate.display());
    scheduler
        .launch(&[("long", "echo kept; sleep 1000"), ("short", &short_command)])
        .await;
    scheduler.update("long", "TASK_RUNNING").await;
    scheduler.update("short", "TASK_RUNNING").await;
    let state = agent
        .wait_state("both tasks in /state", |s| {
            s["frameworks"][0]["executors"]
                .as_array()
                .is_some_and(|e| e.len() == 2)
        })
        .await;
    let long = format!(
        "/files/browse?path={}",
        run_of(&agent, &state, "long").await
    );
    let short = format!(
        "/files/browse?path={}",
        run_of(&agent, &state, "short").await
    );
    std::fs::write(&gate, b"").unwrap();
    scheduler.update("short", "TASK_FINISHED").await;
    // The finished task's sandbox goes; the running one's, older than the delay by then, stays.
    wait_gone(&agent, &short).await;
    assert_eq!(agent.get(&long).await.0, 200, "{}", agent.log_text());

    scheduler
        .send(serde_json::json!({"cmd": "kill", "id": "long"}))
        .await;
    scheduler.update("long", "TASK_KILLED").await;
    wait_gone(&agent, &long).await;
    let run = long.trim_start_matches("/files/browse?path=");
    assert!(!std::path::Path::new(run).exists(), "{run} deleted");
    assert!(
        agent.log_text().contains("sandbox garbage-collected"),
        "{}",
        agent.log_text()
    );
    scheduler.stop().await;
}
