//! The real agent binary with the real master and a pymesos scheduler: command tasks finish,
//! fail and get killed; a pymesos custom executor runs a task and exchanges framework messages;
//! the agent's HTTP API shows them;
//! a `kill -9` of the agent leaves a running task running, and the restarted agent re-registers
//! with the same id and reports the task's end; an agent the operator marked gone is refused
//! and exits.

mod cluster_common;

use cluster_common::{
    executor_of, executors_of, pymesos_executor_command, Agent, Master, Scheduler,
};
use serde_json::Value;

fn tasks_of(state: &Value) -> Vec<Value> {
    executors_of(state)
        .into_iter()
        .flat_map(|e| e["tasks"].as_array().cloned().unwrap_or_default())
        .collect()
}

fn task_state(state: &Value, id: &str) -> Option<String> {
    tasks_of(state)
        .iter()
        .find(|t| t["id"] == id)
        .and_then(|t| t["state"].as_str().map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_tasks_finish_fail_get_killed_and_show_in_the_agent_api() {
    let master = Master::start().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&master.address(), dir.path(), &[]);
    let mut scheduler = Scheduler::start(&master.address());

    scheduler
        .launch(&[
            ("hello", "echo hello-from-the-agent"),
            ("oops", "echo oops >&2; exit 3"),
            ("long", "sleep 1000"),
        ])
        .await;
    let finished = scheduler.update("hello", "TASK_FINISHED").await;
    assert_eq!(
        scheduler.states("hello"),
        ["TASK_STARTING", "TASK_RUNNING", "TASK_FINISHED"]
    );
    let failed = scheduler.update("oops", "TASK_FAILED").await;
    assert_eq!(failed["message"], "Command exited with status 3");
    scheduler.update("long", "TASK_RUNNING").await;

    let state = agent
        .wait_state("the long task running", |s| {
            task_state(s, "long").as_deref() == Some("TASK_RUNNING")
        })
        .await;
    assert_eq!(state["id"], finished["agent_id"], "{state:#}");
    assert_eq!(state["hostname"], "127.0.0.1");
    assert_eq!(state["resources"]["cpus"], 4.0);
    assert_eq!(state["resources"]["ports"], "[31000-32000]");
    assert_eq!(state["attributes"][0]["name"], "rack", "{state:#}");
    assert_eq!(state["attributes"][0]["text"]["value"], "r1");
    assert_eq!(state["attributes"][1]["scalar"]["value"], 3.0);
    let long = tasks_of(&state)
        .into_iter()
        .find(|t| t["id"] == "long")
        .unwrap();
    assert_eq!(long["resources"]["cpus"], 0.1);

    // The finished task's stdout, found through /files/browse and read through /files/read.
    let agent_id = state["id"].as_str().unwrap();
    let framework_id = state["frameworks"][0]["id"].as_str().unwrap();
    let runs = agent.work_dir.join(format!(
        "slaves/{agent_id}/frameworks/{framework_id}/executors/hello/runs"
    ));
    let listing = agent
        .get_json(&format!("/files/browse?path={}", runs.display()))
        .await;
    let run = listing[0]["path"].as_str().expect("one run").to_owned();
    assert!(
        listing[0]["mode"].as_str().unwrap().starts_with('d'),
        "{listing}"
    );
    let read = agent
        .get_json(&format!(
            "/files/read?path={run}/stdout&offset=0&length=100"
        ))
        .await;
    assert_eq!(read["data"], "hello-from-the-agent\n");
    assert_eq!(read["offset"], 0);
    let size = agent
        .get_json(&format!("/files/read?path={run}/stdout&offset=-1"))
        .await;
    assert_eq!(size["offset"], 21);
    // Nothing outside the sandboxes is served.
    assert_eq!(
        agent.get("/files/read?path=/etc/passwd&offset=0").await.0,
        404
    );
    assert_eq!(agent.get("/files/browse").await.0, 400);
    assert_eq!(
        agent
            .get(&format!("/files/read?path={run}/stdout&offset=x"))
            .await
            .0,
        400
    );

    scheduler
        .send(serde_json::json!({"cmd": "kill", "id": "long"}))
        .await;
    let killed = scheduler.update("long", "TASK_KILLED").await;
    assert_eq!(killed["agent_id"], agent_id);

    // A task for a custom executor: pymesos's MesosExecutorDriver, started by the agent,
    // runs it and talks to the scheduler through framework messages both ways.
    let executor = pymesos_executor_command();
    scheduler
        .launch_specs(vec![serde_json::json!({
            "id": "custom", "command": executor, "executor": true
        })])
        .await;
    scheduler.update("custom", "TASK_RUNNING").await;
    // /state lists the custom executor with its container, sandbox and task.
    let state = agent.get_json("/state").await;
    let custom = executor_of(&state, "custom-custom").expect("the custom executor in /state");
    let container = custom["container"].as_str().unwrap();
    assert!(!container.is_empty(), "{custom:#}");
    assert!(
        custom["directory"]
            .as_str()
            .unwrap()
            .ends_with(&format!("executors/custom-custom/runs/{container}")),
        "{custom:#}"
    );
    assert_eq!(custom["tasks"][0]["id"], "custom", "{custom:#}");
    assert_eq!(custom["queued_tasks"], serde_json::json!([]));
    assert!(
        custom["resources"]["cpus"].as_f64().unwrap() > 0.0,
        "{custom:#}"
    );
    scheduler
        .send(
            serde_json::json!({"cmd": "message", "executor_id": "custom-custom",
            "agent_id": agent_id, "data": "ping"}),
        )
        .await;
    let reply = scheduler
        .wait_for("the executor's reply", |e| e["event"] == "message")
        .await;
    assert_eq!(reply["data"], "echo:ping");
    assert_eq!(reply["executor_id"], "custom-custom");
    scheduler
        .send(serde_json::json!({"cmd": "kill", "id": "custom"}))
        .await;
    scheduler.update("custom", "TASK_KILLED").await;

    assert_eq!(agent.get("/health").await.0, 200);
    let version = agent.get_json("/version").await;
    assert!(version["version"].is_string());
    let metrics = agent.get_json("/metrics/snapshot").await;
    assert_eq!(metrics["slave/registered"], 1);
    assert_eq!(metrics["slave/tasks_finished"], 1, "{metrics:#}");
    assert_eq!(metrics["slave/tasks_failed"], 1);
    assert_eq!(metrics["slave/tasks_killed"], 2);
    assert_eq!(metrics["slave/cpus_total"], 4.0);
    // Acknowledged tasks leave the books and show as completed.
    let state = agent
        .wait_state("every task completed", |s| tasks_of(s).is_empty())
        .await;
    let completed: Vec<&str> = state["completed_frameworks"][0]["completed_executors"][0]
        ["completed_tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["id"].as_str())
        .collect();
    for id in ["hello", "oops", "long", "custom"] {
        assert!(completed.contains(&id), "{id} in {completed:?}");
    }
    scheduler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_outlives_a_kill_9_of_the_agent_and_its_end_is_reported_after_restart() {
    let master = Master::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("go");
    let mut agent = Agent::start(&master.address(), dir.path(), &[]);
    let mut scheduler = Scheduler::start(&master.address());
    let command = format!(
        "while [ ! -e {} ]; do sleep 0.05; done; echo released",
        gate.display()
    );
    scheduler.launch(&[("survivor", &command)]).await;
    let running = scheduler.update("survivor", "TASK_RUNNING").await;
    let agent_id = running["agent_id"].as_str().unwrap().to_owned();

    agent.kill9();
    agent.restart();
    let state = agent
        .wait_state("the task recovered and the agent re-registered", |s| {
            s["registered"] == true && task_state(s, "survivor").as_deref() == Some("TASK_RUNNING")
        })
        .await;
    assert_eq!(state["id"], agent_id.as_str(), "the same agent id");
    assert!(
        agent.log_text().contains("re-attached to a running task"),
        "{}",
        agent.log_text()
    );

    std::fs::write(&gate, b"").unwrap();
    let finished = scheduler.update("survivor", "TASK_FINISHED").await;
    assert_eq!(finished["agent_id"], agent_id.as_str());
    assert!(
        !scheduler
            .states("survivor")
            .contains(&"TASK_LOST".to_string()),
        "{:?}",
        scheduler.states("survivor")
    );
    scheduler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_master_restart_the_agent_re_registers_with_its_running_task() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = cluster_common::MasterProcess::start(
        cluster_common::free_port(),
        dir.path().join("master.log"),
    );
    let gate = dir.path().join("go");
    let agent = Agent::start(&master.address(), dir.path(), &[]);
    let mut scheduler = Scheduler::start(&master.address());
    let command = format!("while [ ! -e {} ]; do sleep 0.05; done", gate.display());
    scheduler.launch(&[("steady", &command)]).await;
    let running = scheduler.update("steady", "TASK_RUNNING").await;
    let agent_id = running["agent_id"].as_str().unwrap().to_owned();

    // A new master knows nothing: the agent's calls get 403 and it re-registers with its task.
    master.restart();
    let registered = |state: &Value| {
        let agents: Vec<&str> = state["slaves"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["id"].as_str())
            .collect();
        agents == [agent_id.as_str()]
    };
    let what = "the agent re-registered with the new master";
    master.wait_state(what, &agent, registered).await;
    assert_eq!(
        task_state(&agent.get_json("/state").await, "steady").as_deref(),
        Some("TASK_RUNNING")
    );
    std::fs::write(&gate, b"").unwrap();
    let finished = scheduler.update("steady", "TASK_FINISHED").await;
    assert_eq!(finished["agent_id"], agent_id.as_str());
    scheduler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_down_framework_has_its_tasks_killed_and_forgotten() {
    let master = Master::start().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&master.address(), dir.path(), &[]);
    let mut scheduler = Scheduler::start(&master.address());
    scheduler.launch(&[("orphan", "sleep 1000")]).await;
    scheduler.update("orphan", "TASK_RUNNING").await;
    // pymesos's stop() tears the framework down: the master shuts it down on the agent.
    scheduler.stop().await;
    let state = agent
        .wait_state("the task killed and forgotten", |s| {
            tasks_of(s).is_empty() && !s["completed_frameworks"].as_array().unwrap().is_empty()
        })
        .await;
    let completed = &state["completed_frameworks"][0]["completed_executors"][0]["completed_tasks"];
    assert_eq!(completed[0]["id"], "orphan", "{state:#}");
    assert_eq!(completed[0]["state"], "TASK_KILLED");
    let metrics = agent.get_json("/metrics/snapshot").await;
    assert_eq!(metrics["slave/tasks_killed"], 1);
    assert_eq!(metrics["slave/executors_running"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_present_the_shared_secret_when_the_master_asks_for_one() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let secret = secret.to_str().unwrap().to_owned();
    let master = cluster_common::MasterProcess::start_with(
        cluster_common::free_port(),
        dir.path().join("master.log"),
        &["--authenticate_agents", "--agent_secret_file", &secret],
    );
    let with = tempfile::tempdir().unwrap();
    let agent = Agent::start(
        &master.address(),
        with.path(),
        &["--agent_secret_file".to_string(), secret.clone()],
    );
    agent
        .wait_state("registered with the secret", |s| s["registered"] == true)
        .await;
    let without = tempfile::tempdir().unwrap();
    let stranger = Agent::start(&master.address(), without.path(), &[]);
    // Bounded pause: the stranger keeps trying and keeps being refused.
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    let state = stranger.get_json("/state").await;
    assert_eq!(state["registered"], false, "{}", stranger.log_text());
    assert_eq!(state["id"], "");
    assert!(
        stranger.log_text().contains("401"),
        "{}",
        stranger.log_text()
    );
    let slaves = master.get_json("/master/state").await["slaves"].clone();
    assert_eq!(slaves.as_array().map(Vec::len), Some(1), "{slaves:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_master_stops_answering_gives_up_the_stream_and_re_registers() {
    let dir = tempfile::tempdir().unwrap();
    let master = cluster_common::MasterProcess::start(
        cluster_common::free_port(),
        dir.path().join("master.log"),
    );
    let agent = Agent::start(&master.address(), dir.path(), &[]);
    agent
        .wait_state("registered", |s| s["registered"] == true)
        .await;
    // A frozen master keeps the connection open but sends no PING.
    master.signal(nix::sys::signal::Signal::SIGSTOP);
    let frozen = agent
        .wait_state("the silent stream given up", |s| s["registered"] == false)
        .await;
    master.signal(nix::sys::signal::Signal::SIGCONT);
    let back = agent
        .wait_state("registered again", |s| s["registered"] == true)
        .await;
    assert_eq!(back["id"], frozen["id"]);
    assert!(
        agent.log_text().contains("no PING for"),
        "{}",
        agent.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_master_learns_the_custom_executors_from_the_re_registration() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = cluster_common::MasterProcess::start(
        cluster_common::free_port(),
        dir.path().join("master.log"),
    );
    let agent = Agent::start(&master.address(), dir.path(), &[]);
    let mut scheduler = Scheduler::start(&master.address());
    let executor = pymesos_executor_command();
    scheduler
        .launch_specs(vec![serde_json::json!({
            "id": "kept", "command": executor, "executor": true
        })])
        .await;
    scheduler.update("kept", "TASK_RUNNING").await;

    // A new master knows nothing; the agent re-registers with its executor and task.
    master.restart();
    let client = reqwest::Client::new();
    let url = format!("http://{}/api/v1", master.address());
    let deadline = std::time::Instant::now() + cluster_common::WAIT;
    let listed = loop {
        let answer = client
            .post(&url)
            .header("Content-Type", "application/json")
            .header("Accept", "application/json")
            .body(r#"{"type": "GET_EXECUTORS"}"#)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status);
        if let Ok(answer) = answer {
            let body: Value =
                serde_json::from_str(&answer.text().await.expect("a body")).expect("JSON");
            let executors = body["get_executors"]["executors"].clone();
            if executors.as_array().is_some_and(|e| !e.is_empty()) {
                break executors;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new master lists the executor; agent log:\n{}",
            agent.log_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let info = &listed[0]["executor_info"];
    assert_eq!(info["executor_id"]["value"], "custom-kept", "{listed:#}");
    assert!(info["framework_id"]["value"].is_string(), "{listed:#}");
    let state = master.get_json("/master/state").await;
    let executors = &state["frameworks"][0]["executors"];
    assert_eq!(executors[0]["executor_id"], "custom-kept", "{state:#}");
    assert_eq!(
        executors[0]["slave_id"], state["slaves"][0]["id"],
        "{state:#}"
    );
    assert_eq!(executors[0]["framework_id"], info["framework_id"]["value"]);
    // pymesos re-subscribes to the new master on its own time; a kill sent before is lost.
    let subscribed = |state: &Value| state["frameworks"][0]["connected"] == true;
    master
        .wait_state("the scheduler re-subscribed", &agent, subscribed)
        .await;
    scheduler
        .send(serde_json::json!({"cmd": "kill", "id": "kept"}))
        .await;
    scheduler.update("kept", "TASK_KILLED").await;
    scheduler.stop().await;
    // The teardown of this recovered framework reaches the agent, which shuts the idle
    // executor down.
    agent
        .wait_state("the executor shut down", |s| {
            executor_of(s, "custom-kept").is_none()
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_marked_gone_is_refused_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let master = cluster_common::MasterProcess::start(
        cluster_common::free_port(),
        dir.path().join("master.log"),
    );
    let mut agent = Agent::start(&master.address(), dir.path(), &[]);
    let registered = agent
        .wait_state("registered", |s| s["registered"] == true)
        .await;
    let agent_id = registered["id"].as_str().unwrap().to_owned();
    agent.kill9();
    let body = serde_json::json!({"type":"MARK_AGENT_GONE",
        "mark_agent_gone":{"agent_id":{"value":agent_id}}});
    let response = reqwest::Client::new()
        .post(format!("http://{}/api/v1", master.address()))
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // Restarted, it re-registers with its id, is refused for good, and stops.
    let status = agent.restart_until_exit();
    assert!(!status.success(), "{status}");
    let log = agent.log_text();
    assert!(log.contains("marked gone"), "{log}");
}
