//! Helpers of the executor cgroup tests (host ones against a folder that mimics cgroup v2, kernel
//! ones against /sys/fs/cgroup): an agent with executor cgroups, an executor played over the
//! real HTTP API, and the restart scenario both tiers run.

use std::path::Path;
use std::time::Duration;

use mesoblk_agent::executor::{CgroupConfig, IoLimits};
use mesoblk_proto::codec::ContentType;
use mesoblk_proto::mesos::v1::{TaskInfo, TaskState};
use mesoblk_proto::resource::scalar;

use super::*;

/// A task holding `cpus` and `mem` MB.
pub fn task_with(id: &str, cpus: f64, mem: f64) -> TaskInfo {
    let mut task = task(id, "x");
    task.resources = vec![scalar("cpus", cpus), scalar("mem", mem)];
    task
}

/// A cgroup file, trimmed.
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_owned()
}

/// An agent (recovering what `work` holds) putting executors in groups under
/// `<root>/<parent>`, with a short shutdown grace period.
pub fn cgroup_agent(work: &Path, root: &Path, parent: &str) -> Agent {
    Agent::start(work, 0, |c| {
        c.cgroups = Some(CgroupConfig {
            root: root.to_path_buf(),
            parent: parent.into(),
            ..Default::default()
        });
        c.shutdown_grace = Duration::from_millis(200);
        // Room for a loaded machine: the tests re-subscribe at once after a restart.
        c.reregistration_timeout = WAIT;
    })
}

/// A JSON call of executor `executor_id` of [`FRAMEWORK`].
pub fn call(executor_id: &str, kind: &str, extra: serde_json::Value) -> Vec<u8> {
    let mut body = serde_json::json!({
        "type": kind,
        "framework_id": {"value": FRAMEWORK},
        "executor_id": {"value": executor_id},
    });
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    serde_json::to_vec(&body).unwrap()
}

/// Subscribes as executor `executor_id` (listing `tasks` as unacknowledged, as a driver does
/// after an agent restart) and reads SUBSCRIBED; the stream stays open while it is kept.
pub fn subscribe(agent: &Agent, executor_id: &str, tasks: &[&str]) -> EventStream {
    let tasks: Vec<serde_json::Value> = tasks
        .iter()
        .map(|id| {
            serde_json::json!({"name": id, "task_id": {"value": id}, "agent_id": {"value": AGENT_ID}})
        })
        .collect();
    let body = call(
        executor_id,
        "SUBSCRIBE",
        serde_json::json!({"subscribe": {"unacknowledged_tasks": tasks}}),
    );
    let url = agent.url();
    agent.block_on(async {
        let mut stream = EventStream::open(&url, ContentType::Json, body).await;
        stream.next().await.expect("SUBSCRIBED");
        stream
    })
}

/// Executor `executor_id` reports `task_id` finished; the agent forwards it.
pub fn report_finished(agent: &Agent, executor_id: &str, task_id: &str) {
    let finished = call(
        executor_id,
        "UPDATE",
        serde_json::json!({"update": {"status": {
            "task_id": {"value": task_id},
            "state": "TASK_FINISHED",
            "source": "SOURCE_EXECUTOR",
            "uuid": "AAECAwQFBgcICQoLDA0ODw==",
            "timestamp": 1700000000,
        }}}),
    );
    let headers = [("content-type", "application/json")];
    let url = agent.url();
    let answer = agent.block_on(request(&url, reqwest::Method::POST, &headers, finished));
    assert_eq!(answer.status, 202);
    assert_eq!(state(&agent.next_update()), TaskState::TaskFinished);
}

/// The group's `io.max` lines, sorted (the kernel lists devices in its own order).
fn io_lines(group: &Path) -> Vec<String> {
    let mut lines: Vec<String> = read(&group.join("io.max"))
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

/// The lines `devices` give, sorted.
fn lines_of(devices: &[IoLimits]) -> Vec<String> {
    let mut lines: Vec<String> = devices
        .iter()
        .map(mesoblk_agent::executor::cgroup::io_max)
        .collect();
    lines.sort();
    lines
}

/// An executor holding three tasks, each with a device of `devices`, in a group under
/// `<root>/<parent>`; the agent restarts; the executor re-subscribes knowing only t1 and t2
/// (t3 is lost), then reports t1 finished. Each time the group shrinks as it does without a
/// restart: the ended task's cpus, mem and device line go.
pub fn recovered_group_shrinks_as_before_the_restart(
    root: &Path,
    parent: &str,
    devices: [IoLimits; 3],
) {
    let dir = work_dir();
    let agent = cgroup_agent(dir.path(), root, parent);
    let mut sleeper = executor("recovered", "exec sleep 60");
    sleeper.resources = vec![scalar("cpus", 0.1), scalar("mem", 32.0)];
    let tasks = vec![
        task_with("t1", 0.5, 96.0),
        task_with("t2", 1.0, 128.0),
        task_with("t3", 0.25, 32.0),
    ];
    let mut three = launch(false, sleeper, tasks, &[]);
    three.io_limits = ["t1", "t2", "t3"]
        .iter()
        .zip(devices)
        .map(|(id, device)| (id.to_string(), vec![device]))
        .collect();
    agent.api.launch(three).unwrap();
    let summary = agent.api.executors().remove(0);
    let group = root.join(parent).join(&summary.container_id);
    assert_eq!(read(&group.join("cpu.max")), "185000 100000");
    assert_eq!(io_lines(&group), lines_of(&devices));

    agent.crash();
    let agent = cgroup_agent(dir.path(), root, parent);
    assert_eq!(agent.recovered, 1);
    let _stream = subscribe(&agent, "recovered", &["t1", "t2"]);
    let lost = agent.next_update();
    assert_eq!(
        (lost.task_id.value.as_str(), state(&lost)),
        ("t3", TaskState::TaskLost)
    );
    assert_eq!(read(&group.join("cpu.max")), "160000 100000");
    assert_eq!(read(&group.join("memory.max")), (256u64 << 20).to_string());
    assert_eq!(io_lines(&group), lines_of(&devices[..2]));

    report_finished(&agent, "recovered", "t1");
    assert_eq!(read(&group.join("cpu.max")), "110000 100000");
    assert_eq!(read(&group.join("memory.max")), (160u64 << 20).to_string());
    assert_eq!(io_lines(&group), lines_of(&devices[1..2]));

    agent.api.shutdown_executor(FRAMEWORK, "recovered").unwrap();
    agent.wait_no_executors();
    assert!(!group.exists(), "the executor's group is removed");
}
