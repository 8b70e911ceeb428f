//! Custom executors with cgroups, against a folder that mimics a cgroup v2 hierarchy: the
//! executor's group gets `cpu.max` and `memory.max` from its resources plus its tasks', holds
//! the executor from its start, is resized when a launch adds tasks, and goes with the
//! executor.

mod executor_api_common;

use std::path::Path;
use std::time::Duration;

use executor_api_common::*;
use mesoblk_agent::executor::CgroupConfig;
use mesoblk_proto::mesos::v1::TaskInfo;
use mesoblk_proto::resource::scalar;

fn task_with(id: &str, cpus: f64, mem: f64) -> TaskInfo {
    let mut task = task(id, "x");
    task.resources = vec![scalar("cpus", cpus), scalar("mem", mem)];
    task
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_owned()
}

/// A folder with the files cgroup v2 offers at its root.
fn fake_hierarchy(dir: &Path) -> std::path::PathBuf {
    let root = dir.join("cgroup");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("cgroup.controllers"), "cpu io memory pids\n").unwrap();
    root
}

#[test]
fn an_executor_runs_in_its_group_sized_by_its_tasks_and_the_group_goes_with_it() {
    let dir = work_dir();
    let root = fake_hierarchy(dir.path());
    let agent = Agent::start(dir.path(), 0, |c| {
        c.cgroups = Some(CgroupConfig {
            root: root.clone(),
            parent: "mesoblk".into(),
            ..Default::default()
        });
        c.shutdown_grace = Duration::from_millis(200);
    });
    let mut sleeper = executor("limited", "exec sleep 60");
    sleeper.resources = vec![scalar("cpus", 0.1), scalar("mem", 32.0)];
    let first = launch(
        false,
        sleeper.clone(),
        vec![task_with("t1", 0.5, 96.0)],
        &[],
    );
    agent.api.launch(first).unwrap();
    let summary = agent.api.executors().remove(0);
    let group = root.join("mesoblk").join(&summary.container_id);
    assert_eq!(read(&group.join("cpu.max")), "60000 100000");
    assert_eq!(read(&group.join("memory.max")), (128u64 << 20).to_string());
    // The launcher was moved in before it started the executor.
    assert_eq!(read(&group.join("cgroup.procs")), summary.pid.to_string());

    // A second launch on the running executor resizes its group.
    let second = launch(false, sleeper, vec![task_with("t2", 1.0, 128.0)], &[]);
    agent.api.launch(second).unwrap();
    assert_eq!(agent.api.executors().len(), 1, "the same executor");
    assert_eq!(read(&group.join("cpu.max")), "160000 100000");
    assert_eq!(read(&group.join("memory.max")), (256u64 << 20).to_string());

    agent.api.shutdown_executor(FRAMEWORK, "limited").unwrap();
    agent.wait_no_executors();
    assert!(!group.exists(), "the executor's group is removed");
}

#[test]
fn without_cgroup_v2_executors_run_without_limits() {
    let dir = work_dir();
    let agent = Agent::start(dir.path(), 0, |c| {
        c.cgroups = Some(CgroupConfig {
            root: dir.path().join("no-cgroup-here"),
            ..Default::default()
        });
    });
    let launched = launch(
        false,
        executor("free", "exec sleep 60"),
        vec![task_with("t1", 0.5, 64.0)],
        &[],
    );
    agent.api.launch(launched).unwrap();
    assert_eq!(agent.api.executors().len(), 1, "started without a group");
    agent.api.shutdown_executor(FRAMEWORK, "free").unwrap();
    agent.wait_no_executors();
}
