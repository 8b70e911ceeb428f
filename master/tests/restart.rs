//! Agents across a master restart, through the real binary killed with SIGKILL and restarted on
//! the same port and `--work_dir`, with the test agent and scheduler over real HTTP: admitted
//! agents are listed as recovered (with their persistent volumes and created disks) until they
//! re-register and their tasks reconcile; one that never comes back is marked unreachable after
//! `--agent_reregister_timeout`; an agent marked gone (MARK_AGENT_GONE) loses its tasks as
//! TASK_GONE_BY_OPERATOR and is refused, also by the next master. (Frameworks, weights and quotas
//! across a restart: `tests/registry.rs`.)

mod binary;
mod common;

use std::net::{Ipv4Addr, SocketAddr};

use binary::MasterProcess;
use common::agent::{scalar, standard_resources, TestAgent};
use common::framework::Framework;
use common::Endpoint;
use mesoblk_proto::mesoblk::agent::v1::event::Type as AgentEvent;
use mesoblk_proto::mesos::v1::resource::ReservationInfo;
use mesoblk_proto::mesos::v1::scheduler::event;
use mesoblk_proto::mesos::v1::{resource, Resource};
use serde_json::{json, Value};

/// A framework in role `db` that is PARTITION_AWARE and survives an hour without its master.
const FRAMEWORK: &str = r#","roles":["db"],"failover_timeout":3600,"capabilities":[{"type":"MULTI_ROLE"},{"type":"PARTITION_AWARE"},{"type":"RESERVATION_REFINEMENT"}]"#;

fn endpoint(master: &MasterProcess) -> Endpoint {
    Endpoint {
        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, master.port)),
    }
}

/// The standard test machine plus 2 GiB of plain disk statically reserved to `db`.
fn resources() -> Vec<Resource> {
    let mut disk = scalar("disk", 2048.0);
    disk.reservations = vec![ReservationInfo {
        r#type: Some(resource::reservation_info::Type::Static as i32),
        role: Some("db".into()),
        ..Default::default()
    }];
    let mut all = standard_resources();
    all.push(disk);
    all
}

fn find(resources: &Value, pred: impl Fn(&Value) -> bool) -> Option<&Value> {
    resources.as_array()?.iter().find(|r| pred(r))
}

fn is_volume(id: &str) -> impl Fn(&Value) -> bool + '_ {
    move |r| r["disk"]["persistence"]["id"] == id
}

fn is_disk(id: &str) -> impl Fn(&Value) -> bool + '_ {
    move |r| r["disk"]["source"]["id"] == id
}

/// Launches `task` (1 cpu) and creates volume `vol-a` and a 1 GiB MOUNT disk in one ACCEPT;
/// waits for the task to run and the disk to be created.
async fn launch_and_create(master: &Endpoint, fw: &mut Framework, agent: &TestAgent) {
    let offer = fw.offer().await;
    let resources = &offer["resources"];
    let reserved = find(resources, |r| {
        r["name"] == "disk" && r["reservations"][0]["role"] == "db"
    })
    .expect("the reserved disk")
    .clone();
    let mut volume = reserved.clone();
    volume["disk"] =
        json!({"persistence":{"id":"vol-a"},"volume":{"container_path":"data","mode":"RW"}});
    let mut pool = find(resources, |r| r["disk"]["source"]["type"] == "RAW")
        .expect("the pool")
        .clone();
    pool["scalar"]["value"] = json!(1024.0);
    let mut cpus = find(resources, |r| r["name"] == "cpus")
        .expect("cpus")
        .clone();
    cpus["scalar"]["value"] = json!(1.0);
    let task = json!({"name":"t1","task_id":{"value":"t1"},"agent_id":{"value":agent.id()},
        "resources":[cpus],"command":{"value":"sleep 1000"}});
    let body = json!({"type":"ACCEPT","accept":{"offer_ids":[offer["id"]],"operations":[
        {"type":"CREATE","create":{"volumes":[volume]}},
        {"type":"CREATE_DISK","id":{"value":"op-disk"},"create_disk":{"source":pool,"target_type":"MOUNT"}},
        {"type":"LAUNCH","launch":{"task_infos":[task]}}],
        "filters":{"refuse_seconds":0.0}}});
    assert_eq!(fw.call(master, body).await, 202);
    assert_eq!(fw.operation().await["state"], "OPERATION_FINISHED");
    loop {
        let status = fw.update().await;
        fw.ack(master, &status).await;
        if status["state"] == "TASK_RUNNING" {
            break;
        }
    }
}

async fn get_agents(master: &Endpoint) -> Value {
    master.operator(r#"{"type":"GET_AGENTS"}"#).await["get_agents"].clone()
}

async fn state(master: &MasterProcess) -> Value {
    let text = reqwest::get(master.url("/master/state"))
        .await
        .expect("GET /master/state")
        .text()
        .await
        .expect("body");
    serde_json::from_str(&text).expect("JSON")
}

async fn reconcile(master: &Endpoint, fw: &mut Framework, agent_id: &str) -> Value {
    let body = json!({"type":"RECONCILE","reconcile":{"tasks":[
        {"task_id":{"value":"t1"},"agent_id":{"value":agent_id}}]}});
    assert_eq!(fw.call(master, body).await, 202);
    fw.update().await
}

#[tokio::test]
async fn agents_volumes_disks_and_tasks_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let work_dir = dir.path().to_str().expect("utf-8 path");
    let args = ["--work_dir", work_dir, "--allocation_interval=50ms"];
    let mut first = MasterProcess::start("restart-keep-1", &args);
    let master = endpoint(&first);
    let mut agent = TestAgent::start(&first.url(""), "agent-a", resources()).await;
    let mut fw = Framework::subscribe(&master, FRAMEWORK).await;
    launch_and_create(&master, &mut fw, &agent).await;
    // What a real agent would report when it re-registers: its total as it is now.
    let before = get_agents(&master).await;
    let total = before["agents"][0]["total_resources"].clone();
    assert!(find(&total, is_volume("vol-a")).is_some(), "{total}");
    assert!(find(&total, is_disk("vol-1")).is_some(), "{total}");
    let reported: Vec<Resource> = total
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| mesoblk_proto::json::from_json(r.to_string().as_bytes()).expect("a Resource"))
        .collect();
    agent.report_resources(reported.clone());

    let framework_id = fw.id.clone();
    first.kill();
    drop(fw);
    let second = MasterProcess::start_on("restart-keep-2", first.port, &args);

    // Before the agent is back: listed as recovered, volume and disk included, not registered.
    let agents = get_agents(&master).await;
    assert!(agents.get("agents").is_none(), "{agents}");
    let recovered = &agents["recovered_agents"][0];
    assert_eq!(recovered["id"]["value"], agent.id(), "{agents}");
    assert!(
        find(&recovered["resources"], is_volume("vol-a")).is_some(),
        "{agents}"
    );
    assert!(
        find(&recovered["resources"], is_disk("vol-1")).is_some(),
        "{agents}"
    );
    let model = state(&second).await;
    assert_eq!(model["recovered_slaves"][0]["id"], agent.id(), "{model}");

    // The framework resubscribes by id; a task on the recovered agent is not reconciled yet,
    // the agent re-registers with its task, and then it is.
    let mut fw = Framework::resubscribe(&master, &framework_id, FRAMEWORK).await;
    assert_eq!(agent.reregister().await, 200);
    let status = reconcile(&master, &mut fw, &agent.id()).await;
    assert_eq!(status["state"], "TASK_RUNNING", "{status}");
    assert_eq!(status["reason"], "REASON_RECONCILIATION");
    let agents = get_agents(&master).await;
    assert!(agents.get("recovered_agents").is_none(), "{agents}");
    let total = &agents["agents"][0]["total_resources"];
    assert!(find(total, is_volume("vol-a")).is_some(), "{agents}");
    assert!(find(total, is_disk("vol-1")).is_some(), "{agents}");
    assert!(
        !second.log_text().contains("the registry has a"),
        "the agent's report matches the registry: {}",
        second.log_text()
    );

    // An agent that comes back without its volume wins, and the master says so.
    let without: Vec<Resource> = reported
        .into_iter()
        .filter(|r| {
            r.disk
                .as_ref()
                .and_then(|d| d.persistence.as_ref())
                .is_none()
        })
        .collect();
    agent.report_resources(without);
    agent.disconnect();
    assert_eq!(agent.reregister().await, 200);
    let agents = get_agents(&master).await;
    let total = &agents["agents"][0]["total_resources"];
    assert!(find(total, is_volume("vol-a")).is_none(), "{agents}");
    assert!(
        second
            .log_text()
            .contains("the registry has a persistent volume the agent does not report"),
        "{}",
        second.log_text()
    );
}

#[tokio::test]
async fn an_agent_that_does_not_come_back_in_time_is_marked_unreachable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let work_dir = dir.path().to_str().expect("utf-8 path");
    let args = [
        "--work_dir",
        work_dir,
        "--allocation_interval=50ms",
        "--agent_reregister_timeout=2secs",
    ];
    let mut first = MasterProcess::start("restart-late-1", &args);
    let master = endpoint(&first);
    let mut agent = TestAgent::start(&first.url(""), "agent-late", resources()).await;
    let fw = Framework::subscribe(&master, FRAMEWORK).await;
    let framework_id = fw.id.clone();
    first.kill();
    drop(fw);
    agent.disconnect();
    let second = MasterProcess::start_on("restart-late-2", first.port, &args);

    let flags = master.operator(r#"{"type":"GET_FLAGS"}"#).await;
    let listed = flags["get_flags"]["flags"]
        .as_array()
        .expect("flags")
        .iter()
        .any(|f| f["name"] == "agent_reregister_timeout" && f["value"] == "2s");
    assert!(listed, "{flags}");
    let mut fw = Framework::resubscribe(&master, &framework_id, FRAMEWORK).await;
    // The deadline passes: the framework hears the agent is lost, and a task on it is
    // unreachable (the framework is PARTITION_AWARE).
    let failure = fw.next(event::Type::Failure).await;
    assert_eq!(failure["failure"]["agent_id"]["value"], agent.id());
    let status = reconcile(&master, &mut fw, &agent.id()).await;
    assert_eq!(status["state"], "TASK_UNREACHABLE", "{status}");
    assert!(
        status["unreachable_time"]["nanoseconds"].is_number(),
        "{status}"
    );
    let model = state(&second).await;
    assert_eq!(model["unreachable_slaves"], 1, "{model}");
    assert_eq!(model["recovered_slaves"], json!([]), "{model}");
    assert!(second.log_text().contains("marking it unreachable"));

    // An unreachable agent may still come back.
    assert_eq!(agent.reregister().await, 200);
    let agents = get_agents(&master).await;
    assert_eq!(agents["agents"][0]["agent_info"]["id"]["value"], agent.id());
}

#[tokio::test]
async fn a_gone_agent_loses_its_tasks_and_is_refused_by_every_later_master() {
    let dir = tempfile::tempdir().expect("tempdir");
    let work_dir = dir.path().to_str().expect("utf-8 path");
    let args = ["--work_dir", work_dir, "--allocation_interval=50ms"];
    let mut first = MasterProcess::start("restart-gone-1", &args);
    let master = endpoint(&first);
    let mut agent = TestAgent::start(&first.url(""), "agent-gone", resources()).await;
    let mut fw = Framework::subscribe(&master, FRAMEWORK).await;
    launch_and_create(&master, &mut fw, &agent).await;

    let unknown = master
        .post_json(
            "/api/v1",
            r#"{"type":"MARK_AGENT_GONE","mark_agent_gone":{"agent_id":{"value":"nobody"}}}"#,
        )
        .await;
    assert_eq!(unknown.status(), 404);
    let body = format!(
        r#"{{"type":"MARK_AGENT_GONE","mark_agent_gone":{{"agent_id":{{"value":"{}"}}}}}}"#,
        agent.id()
    );
    assert_eq!(master.post_json("/api/v1", &body).await.status(), 200);
    let status = fw.update().await;
    assert_eq!(status["state"], "TASK_GONE_BY_OPERATOR", "{status}");
    assert_eq!(status["reason"], "REASON_AGENT_REMOVED_BY_OPERATOR");
    let shutdown = agent.next_of(AgentEvent::Shutdown).await;
    assert!(shutdown.shutdown.is_some());
    assert_eq!(agent.reregister().await, 410);
    // Marking it again is fine.
    assert_eq!(master.post_json("/api/v1", &body).await.status(), 200);

    let framework_id = fw.id.clone();
    first.kill();
    drop(fw);
    let _second = MasterProcess::start_on("restart-gone-2", first.port, &args);
    assert_eq!(agent.reregister().await, 410);
    let agents = get_agents(&master).await;
    assert_eq!(agents, json!({}), "neither registered nor recovered");
    let mut fw = Framework::resubscribe(&master, &framework_id, FRAMEWORK).await;
    let status = reconcile(&master, &mut fw, &agent.id()).await;
    assert_eq!(status["state"], "TASK_GONE_BY_OPERATOR", "{status}");
}
