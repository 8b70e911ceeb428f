//! Command executor with cgroups, against a folder that mimics a cgroup v2 hierarchy (the real
//! one is exercised by tests/kernel_executor.rs in the guest).

mod executor_common;

use std::time::Duration;

use executor_common::*;
use mesoblk_agent::executor::{CgroupConfig, IoLimits, TaskLaunch};
use mesoblk_proto::mesos::v1::TaskState::*;

#[test]
fn limits_are_written_and_the_launcher_is_moved_in() {
    let dir = work_dir();
    let root = dir.path().join("cgroup");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(
        root.join("cgroup.controllers"),
        "cpuset cpu io memory pids\n",
    )
    .unwrap();
    let mut cfg = config(dir.path());
    cfg.cgroups = Some(CgroupConfig {
        root: root.clone(),
        parent: "mesoblk".into(),
        ..Default::default()
    });
    let (exec, rx) = executor(cfg);
    let cgroups = exec.cgroups().expect("the fake hierarchy is usable");
    assert!(!cgroups.is_real());
    let mut task = shell_task("limited", "sleep 100");
    task.resources = vec![scalar("cpus", 0.25), scalar("mem", 128.0)];
    let info = exec
        .launch(TaskLaunch {
            framework: framework(false),
            task,
            io_limits: vec![IoLimits {
                major: 259,
                minor: 4,
                rbps: Some(1 << 20),
                wbps: Some(2 << 20),
                riops: Some(300),
                wiops: None,
            }],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(states(&[next(&rx), next(&rx)]), [TaskStarting, TaskRunning]);
    let cgroup = info.cgroup.clone().unwrap();
    assert_eq!(cgroup, root.join("mesoblk").join(&info.run.container_id));
    assert_eq!(read(cgroup.join("cpu.max")), "25000 100000");
    assert_eq!(read(cgroup.join("memory.max")), "134217728");
    assert_eq!(
        read(cgroup.join("io.max")),
        "259:4 rbps=1048576 wbps=2097152 riops=300 wiops=max\n"
    );
    assert_eq!(read(cgroup.join("cgroup.procs")), info.pid.to_string());
    assert_eq!(
        read(root.join("mesoblk/cgroup.subtree_control")),
        "+cpu +memory +io"
    );
    exec.kill(&key("limited"), Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(states(&until_terminal(&rx)), [TaskKilled]);
    eventually("the cgroup to be removed", || !cgroup.exists());
}

#[test]
fn without_cgroup_v2_tasks_run_without_limits() {
    let dir = work_dir();
    let mut cfg = config(dir.path());
    cfg.cgroups = Some(CgroupConfig {
        root: dir.path().join("no-cgroup-here"),
        ..Default::default()
    });
    let (exec, rx) = executor(cfg);
    assert!(exec.cgroups().is_none());
    let mut task = shell_task("free", "true");
    task.resources = vec![scalar("cpus", 1.0)];
    let info = exec
        .launch(TaskLaunch {
            framework: framework(false),
            task,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(info.cgroup, None);
    assert_eq!(*states(&until_terminal(&rx)).last().unwrap(), TaskFinished);
}
