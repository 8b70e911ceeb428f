//! Custom executors with cgroups, against a folder that mimics a cgroup v2 hierarchy: the
//! executor's group gets `cpu.max` and `memory.max` from its resources plus its tasks' (and an
//! `io.max` line per device of its tasks), holds the executor from its start, grows when a
//! launch adds tasks, shrinks when one of its tasks ends (after an agent restart too), and goes
//! with the executor.

mod executor_api_common;

use std::path::Path;

use executor_api_common::cgroup::*;
use executor_api_common::*;
use mesoblk_agent::executor::{CgroupConfig, IoLimits};
use mesoblk_proto::resource::scalar;

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
    let agent = cgroup_agent(dir.path(), &root, "mesoblk");
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

fn device(minor: u32, riops: u64) -> IoLimits {
    IoLimits {
        major: 259,
        minor,
        riops: Some(riops),
        ..Default::default()
    }
}

#[test]
fn an_executor_group_shrinks_to_its_remaining_tasks_when_one_ends() {
    let dir = work_dir();
    let root = fake_hierarchy(dir.path());
    let agent = cgroup_agent(dir.path(), &root, "mesoblk");
    let mut sleeper = executor("shrinking", "exec sleep 60");
    sleeper.resources = vec![scalar("cpus", 0.1), scalar("mem", 32.0)];
    let mut both = launch(
        false,
        sleeper,
        vec![task_with("t1", 0.5, 96.0), task_with("t2", 1.0, 128.0)],
        &[],
    );
    both.io_limits = [
        ("t1".to_string(), vec![device(1, 10)]),
        ("t2".to_string(), vec![device(2, 20)]),
    ]
    .into();
    agent.api.launch(both).unwrap();
    let summary = agent.api.executors().remove(0);
    let group = root.join("mesoblk").join(&summary.container_id);
    assert_eq!(read(&group.join("cpu.max")), "160000 100000");
    assert_eq!(read(&group.join("memory.max")), (256u64 << 20).to_string());
    assert_eq!(
        read(&group.join("io.max")),
        "259:1 rbps=max wbps=max riops=10 wiops=max\n\
         259:2 rbps=max wbps=max riops=20 wiops=max"
    );

    // The executor reports t1 finished.
    let _stream = subscribe(&agent, "shrinking", &[]);
    report_finished(&agent, "shrinking", "t1");
    // What is left: the executor and t2; t1's device has no line any more.
    assert_eq!(read(&group.join("cpu.max")), "110000 100000");
    assert_eq!(read(&group.join("memory.max")), (160u64 << 20).to_string());
    assert_eq!(
        read(&group.join("io.max")),
        "259:2 rbps=max wbps=max riops=20 wiops=max"
    );

    agent.api.shutdown_executor(FRAMEWORK, "shrinking").unwrap();
    agent.wait_no_executors();
    assert!(!group.exists(), "the executor's group is removed");
}

#[test]
fn a_recovered_executor_group_shrinks_as_before_the_restart() {
    let dir = work_dir();
    let root = fake_hierarchy(dir.path());
    recovered_group_shrinks_as_before_the_restart(
        &root,
        "mesoblk",
        [device(1, 10), device(2, 20), device(3, 30)],
    );
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
