//! Agents, offers and tasks end to end: the real router on a loopback listener, a Rust test agent
//! speaking the agent protocol over HTTP, and schedulers speaking `/api/v1/scheduler` JSON.
//! Offers arrive (legacy format without MULTI_ROLE), LAUNCH runs a task, updates are retried
//! until acknowledged, DECLINE filters, SUPPRESS/REVIVE, KILL, RECONCILE and TEARDOWN behave as
//! in Mesos.

mod common;

use std::time::Duration;

use common::agent::{standard_resources, TaskScript, TestAgent};
use common::framework::Framework;
use common::*;
use mesoblk_proto::mesoblk::agent::v1::event::Type as AgentEvent;
use mesoblk_proto::mesos::v1::scheduler::event;
use mesoblk_proto::mesos::v1::TaskState;
use serde_json::{json, Value};

fn scalar(name: &str, x: f64) -> Value {
    json!({"name": name, "type": "SCALAR", "scalar": {"value": x}, "role": "*"})
}

fn task(id: &str, agent: &Value, resources: Vec<Value>) -> Value {
    json!({"name": id, "task_id": {"value": id}, "agent_id": agent,
           "command": {"shell": true, "value": "sleep 1000"}, "resources": resources})
}

fn accept(offer_ids: Vec<Value>, operations: Vec<Value>, refuse: f64) -> Value {
    json!({"type":"ACCEPT","accept":{"offer_ids": offer_ids, "operations": operations,
           "filters": {"refuse_seconds": refuse}}})
}

fn launch(tasks: Vec<Value>) -> Value {
    json!({"type": "LAUNCH", "launch": {"task_infos": tasks}})
}

async fn setup() -> (TestMaster, TestAgent) {
    let master = start_with(fast_config()).await;
    let agent = TestAgent::start(&master.url(""), "agent-1", standard_resources()).await;
    (master, agent)
}

#[tokio::test]
async fn offers_reach_legacy_frameworks_in_the_pre_multi_role_format() {
    let (master, agent) = setup().await;
    let mut fw = Framework::subscribe(&master, "").await;
    let offer = fw.offer().await;
    let master_id = master.handle.with(|m| m.info().id.clone());
    assert_eq!(agent.id(), format!("{master_id}-S0"));
    assert!(offer["id"]["value"]
        .as_str()
        .unwrap()
        .starts_with(&format!("{master_id}-O")));
    assert_eq!(offer["agent_id"]["value"], agent.id());
    assert_eq!(offer["framework_id"]["value"], fw.id);
    assert_eq!(offer["hostname"], "agent-1");
    assert!(offer.get("allocation_info").is_none(), "{offer}");
    let resources = offer["resources"].as_array().unwrap();
    assert_eq!(resources.len(), 4, "{offer}");
    for resource in resources {
        assert_eq!(resource["role"], "*", "{resource}");
        assert!(resource.get("allocation_info").is_none(), "{resource}");
        assert!(resource.get("reservations").is_none(), "{resource}");
    }
    let find = |name: &str| {
        resources
            .iter()
            .find(|r| r["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(find("cpus")["scalar"]["value"], 4.0);
    assert_eq!(
        find("ports")["ranges"]["range"][0],
        json!({"begin":31000,"end":32000})
    );
    let disk = find("disk");
    assert_eq!(disk["provider_id"]["value"], common::agent::PROVIDER);
    assert_eq!(
        disk["disk"]["source"],
        json!({"type":"RAW","vendor":"mesoblk","profile":"fast"})
    );
}

#[tokio::test]
async fn multi_role_frameworks_get_allocation_info() {
    let (master, _agent) = setup().await;
    let extra = r#","roles":["web"],"capabilities":[{"type":"MULTI_ROLE"}]"#;
    let mut fw = Framework::subscribe(&master, extra).await;
    let offer = fw.offer().await;
    assert_eq!(offer["allocation_info"], json!({"role":"web"}));
    for resource in offer["resources"].as_array().unwrap() {
        assert_eq!(resource["allocation_info"], json!({"role":"web"}));
        assert_eq!(
            resource["role"], "*",
            "pre-refinement format without RESERVATION_REFINEMENT"
        );
    }
}

#[tokio::test]
async fn a_launched_task_runs_and_unacknowledged_updates_are_retried() {
    let (master, mut agent) = setup().await;
    let mut fw = Framework::subscribe(&master, "").await;
    let offer = fw.offer().await;
    let t = task(
        "t1",
        &offer["agent_id"],
        vec![scalar("cpus", 1.0), scalar("mem", 128.0)],
    );
    assert_eq!(
        fw.call(
            &master,
            accept(vec![offer["id"].clone()], vec![launch(vec![t])], 0.0)
        )
        .await,
        202
    );
    let run = agent.next_of(AgentEvent::RunTask).await;
    let run = run.run_task.unwrap();
    assert_eq!(run.task.task_id.value, "t1");
    assert_eq!(run.framework.id.unwrap().value, fw.id);
    assert_eq!(run.launch_executor, Some(true));

    let starting = fw.update().await;
    assert_eq!(starting["state"], "TASK_STARTING");
    assert_eq!(
        starting["agent_id"]["value"],
        agent.id(),
        "agent_id accompanies uuid"
    );
    assert!(starting["uuid"].is_string() && starting["timestamp"].is_f64());
    assert_eq!(starting["source"], "SOURCE_EXECUTOR");
    // Not acknowledged: the same update comes again.
    let again = fw.update().await;
    assert_eq!(again["uuid"], starting["uuid"]);
    fw.ack(&master, &starting).await;
    let running = fw.update().await;
    assert_eq!(running["state"], "TASK_RUNNING");
    fw.ack(&master, &running).await;
    // Both acknowledgements reach the agent, and the retries stop.
    agent.next_of(AgentEvent::Acknowledge).await;
    agent.next_of(AgentEvent::Acknowledge).await;
    assert_eq!(agent.unacknowledged(), 0);
    assert!(fw
        .within(event::Type::Update, Duration::from_millis(900))
        .await
        .is_none());

    let tasks = master.operator(r#"{"type":"GET_TASKS"}"#).await;
    assert_eq!(tasks["get_tasks"]["tasks"][0]["state"], "TASK_RUNNING");
    assert_eq!(
        tasks["get_tasks"]["tasks"][0]["agent_id"]["value"],
        agent.id()
    );
    let metrics: Value = serde_json::from_str(
        &reqwest::get(master.url("/metrics/snapshot"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(metrics["master/tasks_running"], 1.0);
    assert_eq!(metrics["master/slaves_active"], 1.0);
    assert_eq!(metrics["master/cpus_total"], 4.0);
    assert!(metrics["master/cpus_used"].as_f64().unwrap() >= 1.0);
}

#[tokio::test]
async fn a_finished_task_returns_its_resources() {
    let (master, agent) = setup().await;
    agent.behave(|b| b.script = TaskScript::Finish);
    let mut fw = Framework::subscribe(&master, "").await;
    let offer = fw.offer().await;
    let t = task(
        "done",
        &offer["agent_id"],
        vec![scalar("cpus", 4.0), scalar("mem", 128.0)],
    );
    fw.call(
        &master,
        accept(vec![offer["id"].clone()], vec![launch(vec![t])], 0.0),
    )
    .await;
    for want in ["TASK_STARTING", "TASK_RUNNING", "TASK_FINISHED"] {
        let status = fw.update().await;
        assert_eq!(status["state"], want);
        fw.ack(&master, &status).await;
    }
    // All 4 cpus are offered again once the task is over (the OFFERS events went by while the
    // updates were read, so ask the operator API).
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let frameworks = master.operator(r#"{"type":"GET_FRAMEWORKS"}"#).await;
        let offered = &frameworks["get_frameworks"]["frameworks"][0]["offered_resources"];
        let cpus: f64 = offered
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["name"] == "cpus")
            .map(|r| r["scalar"]["value"].as_f64().unwrap())
            .sum();
        if cpus == 4.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "cpus offered again: {frameworks}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tasks = master.operator(r#"{"type":"GET_TASKS"}"#).await;
    assert!(tasks["get_tasks"].get("tasks").is_none(), "{tasks}");
    assert_eq!(
        tasks["get_tasks"]["completed_tasks"][0]["state"],
        "TASK_FINISHED"
    );
}

#[tokio::test]
async fn invalid_accepts_end_as_mesos_says() {
    let (master, _agent) = setup().await;
    let mut fw = Framework::subscribe(&master, "").await;
    let offer = fw.offer().await;
    let agent_id = offer["agent_id"].clone();
    let small = || vec![scalar("cpus", 0.5), scalar("mem", 64.0)];

    // An offer that does not exist: TASK_LOST with REASON_INVALID_OFFERS.
    let bogus = json!({"value": "no-such-offer"});
    fw.call(
        &master,
        accept(
            vec![bogus],
            vec![launch(vec![task("a", &agent_id, small())])],
            0.0,
        ),
    )
    .await;
    let lost = fw.update().await;
    assert_eq!(lost["state"], "TASK_LOST");
    assert_eq!(lost["reason"], "REASON_INVALID_OFFERS");
    assert_eq!(lost["source"], "SOURCE_MASTER");
    assert_eq!(
        lost["message"],
        "Task launched with invalid offers: Offer no-such-offer is no longer valid"
    );
    assert!(lost.get("uuid").is_none());

    // Too much, a wrong agent and a duplicate id in one ACCEPT: one TASK_ERROR each.
    let ops = vec![launch(vec![
        task(
            "big",
            &agent_id,
            vec![scalar("cpus", 64.0), scalar("mem", 64.0)],
        ),
        task("elsewhere", &json!({"value": "other-agent"}), small()),
        task("ok", &agent_id, small()),
        task("ok", &agent_id, small()),
        json!({"name":"none","task_id":{"value":"none"},"agent_id":agent_id,"resources":small()}),
    ])];
    fw.call(&master, accept(vec![offer["id"].clone()], ops, 0.0))
        .await;
    let mut errors = std::collections::BTreeMap::new();
    while errors.len() < 4 {
        let status = fw.update().await;
        if status["state"] == "TASK_ERROR" {
            assert_eq!(status["reason"], "REASON_TASK_INVALID");
            errors.insert(
                status["task_id"]["value"].as_str().unwrap().to_owned(),
                status["message"].as_str().unwrap().to_owned(),
            );
        }
    }
    assert!(errors["big"].starts_with("Total resources cpus(allocated: *):64; mem(allocated: *):64 required by task and its executor is more than available"), "{}", errors["big"]);
    assert!(errors["elsewhere"].starts_with("Task uses invalid agent other-agent while agent"));
    assert_eq!(errors["ok"], "Task has duplicate ID: ok");
    assert_eq!(
        errors["none"],
        "Task should have at least one (but not both) of CommandInfo or ExecutorInfo present"
    );
}

#[tokio::test]
async fn invalid_offers_drop_tasks_of_partition_aware_frameworks_and_fail_operations() {
    let (master, _agent) = setup().await;
    let extra = r#","capabilities":[{"type":"PARTITION_AWARE"}]"#;
    let mut fw = Framework::subscribe(&master, extra).await;
    let offer = fw.offer().await;
    let t = task("x", &offer["agent_id"], vec![scalar("cpus", 1.0)]);
    let reserve = json!({"type":"RESERVE","id":{"value":"op-1"},"reserve":{"resources":[]}});
    let ids = vec![offer["id"].clone(), offer["id"].clone()];
    fw.call(&master, accept(ids, vec![launch(vec![t]), reserve], 0.0))
        .await;
    let dropped = fw.update().await;
    assert_eq!(dropped["state"], "TASK_DROPPED");
    assert!(dropped["message"]
        .as_str()
        .unwrap()
        .contains("Duplicate offer"));
    let op = fw.next(event::Type::UpdateOperationStatus).await["update_operation_status"]["status"]
        .clone();
    assert_eq!(op["state"], "OPERATION_ERROR");
    assert_eq!(op["operation_id"]["value"], "op-1");
}

#[tokio::test]
async fn decline_filters_for_refuse_seconds_and_revive_clears_them() {
    let (master, _agent) = setup().await;
    let mut fw = Framework::subscribe(&master, "").await;
    let offer = fw.offer().await;
    let decline = json!({"type":"DECLINE","decline":{"offer_ids":[offer["id"]],"filters":{"refuse_seconds":1.0}}});
    assert_eq!(fw.call(&master, decline).await, 202);
    let started = std::time::Instant::now();
    let again = fw.offer().await;
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "filtered for about a second"
    );
    let decline = json!({"type":"DECLINE","decline":{"offer_ids":[again["id"]],"filters":{"refuse_seconds":3600.0}}});
    fw.call(&master, decline).await;
    assert!(fw
        .within(event::Type::Offers, Duration::from_millis(500))
        .await
        .is_none());
    assert_eq!(fw.call(&master, json!({"type":"REVIVE"})).await, 202);
    fw.offer().await;
}

#[tokio::test]
async fn suppress_stops_offers_until_revive() {
    let (master, _agent) = setup().await;
    let mut fw = Framework::subscribe(&master, "").await;
    let offer = fw.offer().await;
    assert_eq!(fw.call(&master, json!({"type":"SUPPRESS"})).await, 202);
    let decline = json!({"type":"DECLINE","decline":{"offer_ids":[offer["id"]],"filters":{"refuse_seconds":0.0}}});
    fw.call(&master, decline).await;
    assert!(fw
        .within(event::Type::Offers, Duration::from_millis(500))
        .await
        .is_none());
    assert_eq!(
        fw.call(&master, json!({"type":"REVIVE","revive":{"roles":["*"]}}))
            .await,
        202
    );
    fw.offer().await;
}

async fn running_task(
    master: &TestMaster,
    fw: &mut Framework,
    agent: &mut TestAgent,
    id: &str,
) -> Value {
    let offer = fw.offer().await;
    let t = task(
        id,
        &offer["agent_id"],
        vec![scalar("cpus", 1.0), scalar("mem", 128.0)],
    );
    fw.call(
        master,
        accept(vec![offer["id"].clone()], vec![launch(vec![t])], 0.0),
    )
    .await;
    agent.next_of(AgentEvent::RunTask).await;
    loop {
        let status = fw.update().await;
        fw.ack(master, &status).await;
        if status["state"] == "TASK_RUNNING" {
            return status;
        }
    }
}

#[tokio::test]
async fn kill_reaches_the_agent_and_unknown_tasks_are_reconciled() {
    let (master, mut agent) = setup().await;
    let mut fw = Framework::subscribe(&master, "").await;
    running_task(&master, &mut fw, &mut agent, "k").await;
    // pymesos sends only the task id.
    assert_eq!(
        fw.call(
            &master,
            json!({"type":"KILL","kill":{"task_id":{"value":"k"}}})
        )
        .await,
        202
    );
    let kill = agent.next_of(AgentEvent::KillTask).await.kill_task.unwrap();
    assert_eq!(
        (
            kill.task_id.value.as_str(),
            kill.framework_id.value.as_str()
        ),
        ("k", fw.id.as_str())
    );
    let killed = fw.update().await;
    assert_eq!(killed["state"], "TASK_KILLED");
    fw.ack(&master, &killed).await;
    fw.call(
        &master,
        json!({"type":"KILL","kill":{"task_id":{"value":"ghost"}}}),
    )
    .await;
    let lost = fw.update().await;
    assert_eq!(
        (lost["task_id"]["value"].as_str(), lost["state"].as_str()),
        (Some("ghost"), Some("TASK_LOST"))
    );
    assert_eq!(lost["reason"], "REASON_RECONCILIATION");
}

#[tokio::test]
async fn reconcile_answers_from_the_books() {
    let (master, mut agent) = setup().await;
    let mut fw = Framework::subscribe(&master, "").await;
    running_task(&master, &mut fw, &mut agent, "r").await;
    fw.call(
        &master,
        json!({"type":"RECONCILE","reconcile":{"tasks":[]}}),
    )
    .await;
    let implicit = fw.update().await;
    assert_eq!(implicit["state"], "TASK_RUNNING");
    assert_eq!(implicit["reason"], "REASON_RECONCILIATION");
    assert_eq!(implicit["message"], "Reconciliation: Latest task state");
    assert!(
        implicit.get("uuid").is_none(),
        "reconciliation is not acknowledged"
    );
    let body = json!({"type":"RECONCILE","reconcile":{"tasks":[
        {"task_id":{"value":"r"}},
        {"task_id":{"value":"nope"},"agent_id":{"value": agent.id()}},
        {"task_id":{"value":"gone"}}]}});
    fw.call(&master, body).await;
    let known = fw.update().await;
    assert_eq!(
        (known["task_id"]["value"].as_str(), known["state"].as_str()),
        (Some("r"), Some("TASK_RUNNING"))
    );
    let on_agent = fw.update().await;
    assert_eq!(
        on_agent["message"],
        "Reconciliation: Task is unknown to the agent"
    );
    assert_eq!(on_agent["state"], "TASK_LOST");
    let unknown = fw.update().await;
    assert_eq!(unknown["message"], "Reconciliation: Task is unknown");
}

#[tokio::test]
async fn teardown_kills_the_frameworks_tasks_on_their_agents() {
    let (master, mut agent) = setup().await;
    let mut fw = Framework::subscribe(&master, "").await;
    running_task(&master, &mut fw, &mut agent, "td").await;
    assert_eq!(fw.call(&master, json!({"type":"TEARDOWN"})).await, 202);
    let shutdown = agent.next_of(AgentEvent::ShutdownFramework).await;
    assert_eq!(
        shutdown.shutdown_framework.unwrap().framework_id.value,
        fw.id
    );
    let tasks = master.operator(r#"{"type":"GET_TASKS"}"#).await;
    let completed = &tasks["get_tasks"]["completed_tasks"][0];
    assert_eq!(completed["state"], "TASK_KILLED");
    assert_eq!(
        completed["statuses"].as_array().unwrap().last().unwrap()["reason"],
        "REASON_FRAMEWORK_REMOVED"
    );
    // Its resources are free again: a new framework gets all four cpus.
    let mut other = Framework::subscribe(&master, "").await;
    let offer = other.offer().await;
    let cpus = offer["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "cpus")
        .unwrap()["scalar"]["value"]
        .clone();
    assert_eq!(cpus, 4.0);
}

#[tokio::test]
async fn state_endpoints_report_agents_and_tasks() {
    let (master, mut agent) = setup().await;
    let mut fw = Framework::subscribe(&master, "").await;
    running_task(&master, &mut fw, &mut agent, "s").await;
    for path in ["/master/state", "/master/state.json"] {
        let state: Value = serde_json::from_str(
            &reqwest::get(master.url(path))
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        )
        .unwrap();
        let slave = &state["slaves"][0];
        assert_eq!(slave["id"], agent.id());
        assert_eq!(slave["pid"], "slave(1)@127.0.0.1:5051");
        assert_eq!(slave["resources"]["cpus"], 4.0);
        assert_eq!(slave["resources"]["ports"], "[31000-32000]");
        assert_eq!(slave["used_resources"]["cpus"], 1.0);
        assert_eq!(state["activated_slaves"], 1);
        let framework = &state["frameworks"][0];
        assert_eq!(framework["id"], fw.id);
        assert_eq!(framework["tasks"][0]["state"], "TASK_RUNNING");
        assert_eq!(framework["tasks"][0]["slave_id"], agent.id());
    }
    let response = reqwest::get(master.url("/master/state?jsonp=cb"))
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/javascript");
    let text = response.text().await.unwrap();
    assert!(text.starts_with("cb({") && text.ends_with("});"));
    let prometheus = reqwest::get(master.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        prometheus.contains("\nmesos_master_tasks_running 1\n"),
        "{prometheus}"
    );
    let agents = master.operator(r#"{"type":"GET_AGENTS"}"#).await;
    let listed = &agents["get_agents"]["agents"][0];
    assert_eq!(listed["agent_info"]["id"]["value"], agent.id());
    assert_eq!(listed["active"], true);
    assert_eq!(listed["total_resources"].as_array().unwrap().len(), 4);
    let state = master.operator(r#"{"type":"GET_STATE"}"#).await;
    assert_eq!(
        state["get_state"]["get_tasks"]["tasks"][0]["task_id"]["value"],
        "s"
    );
    let _ = TaskState::TaskRunning;
}

#[tokio::test]
async fn task_groups_and_custom_executors_launch_with_their_executor() {
    let (master, mut agent) = setup().await;
    let mut fw = Framework::subscribe(&master, "").await;
    let offer = fw.offer().await;
    let executor = json!({"type":"DEFAULT","executor_id":{"value":"group-exec"},
        "framework_id":{"value": fw.id},
        "resources":[scalar("cpus", 0.1), scalar("mem", 32.0), scalar("disk", 0.0)]});
    let tasks = vec![
        task("g1", &offer["agent_id"], vec![scalar("cpus", 0.5)]),
        task("g2", &offer["agent_id"], vec![scalar("cpus", 0.5)]),
    ];
    let tasks: Vec<Value> = tasks
        .into_iter()
        .map(|mut t| {
            t.as_object_mut().unwrap().remove("command");
            t
        })
        .collect();
    let group = json!({"type":"LAUNCH_GROUP","launch_group":{"executor":executor,"task_group":{"tasks":tasks}}});
    // An executor with too little: the whole group is rejected.
    let bad_executor = json!({"type":"DEFAULT","executor_id":{"value":"tiny"},
        "framework_id":{"value": fw.id}, "resources":[scalar("cpus", 0.001)]});
    let bad = json!({"type":"LAUNCH_GROUP","launch_group":{"executor":bad_executor,"task_group":{"tasks":[
        {"name":"b","task_id":{"value":"b"},"agent_id":offer["agent_id"],"resources":[scalar("cpus", 0.5)]}]}}});
    fw.call(
        &master,
        accept(vec![offer["id"].clone()], vec![group, bad], 0.0),
    )
    .await;
    let run = agent
        .next_of(AgentEvent::RunTaskGroup)
        .await
        .run_task_group
        .unwrap();
    assert_eq!(run.executor.executor_id.value, "group-exec");
    assert_eq!(run.task_group.tasks.len(), 2);
    assert_eq!(run.launch_executor, Some(true));
    assert!(
        run.task_group.tasks.iter().all(|t| t.executor.is_some()),
        "tasks carry the executor"
    );
    let mut states = std::collections::BTreeMap::new();
    while states.len() < 3 {
        let status = fw.update().await;
        states.insert(
            status["task_id"]["value"].as_str().unwrap().to_owned(),
            status.clone(),
        );
        fw.ack(&master, &status).await;
    }
    assert_eq!(states["b"]["state"], "TASK_ERROR");
    assert_eq!(states["b"]["reason"], "REASON_TASK_GROUP_INVALID");
    assert!(
        states["b"]["message"]
            .as_str()
            .unwrap()
            .contains("uses less CPUs"),
        "{}",
        states["b"]
    );
    let executors = master.operator(r#"{"type":"GET_EXECUTORS"}"#).await;
    assert_eq!(
        executors["get_executors"]["executors"][0]["executor_info"]["executor_id"]["value"],
        "group-exec"
    );
}

#[tokio::test]
async fn a_failover_timeout_kills_the_frameworks_tasks() {
    let (master, mut agent) = setup().await;
    let mut fw = Framework::subscribe(&master, r#","failover_timeout":0.2"#).await;
    let offer = fw.offer().await;
    let t = task("f", &offer["agent_id"], vec![scalar("cpus", 1.0)]);
    fw.call(
        &master,
        accept(vec![offer["id"].clone()], vec![launch(vec![t])], 0.0),
    )
    .await;
    agent.next_of(AgentEvent::RunTask).await;
    drop(fw);
    let shutdown = agent.next_of(AgentEvent::ShutdownFramework).await;
    assert!(shutdown.shutdown_framework.is_some());
    let frameworks = master.operator(r#"{"type":"GET_FRAMEWORKS"}"#).await;
    let completed = &frameworks["get_frameworks"]["completed_frameworks"][0];
    assert_eq!(completed["framework_info"]["failover_timeout"], 0.2);
    let tasks = master.operator(r#"{"type":"GET_TASKS"}"#).await;
    assert_eq!(
        tasks["get_tasks"]["completed_tasks"][0]["state"],
        "TASK_KILLED"
    );
}
