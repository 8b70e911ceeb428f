//! Kernel tier for custom executors: an executor in a real cgroup v2 group with `cpu.max` and
//! `memory.max` from its resources and its tasks', resized when a launch adds tasks, removed
//! when the executor ends; after an agent restart, the group of a recovered executor shrinks
//! as before it, `io.max` lines included (on the guest's loop devices, which need no backing
//! file for a limit). Needs root and cgroup v2 mounted writable at /sys/fs/cgroup (the qemu
//! guest of scripts/vm-run); fails, never skips, without them.

mod executor_api_common;

use std::path::Path;
use std::time::{Duration, Instant};

use executor_api_common::cgroup::*;
use executor_api_common::*;
use mesoblk_agent::executor::IoLimits;
use mesoblk_proto::resource::scalar;

const ROOT: &str = "/sys/fs/cgroup";

fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "{what} in time");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn need_root_and_cgroup_v2() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "kernel executor tests need root"
    );
    assert!(
        Path::new(ROOT).join("cgroup.controllers").exists(),
        "kernel executor tests need cgroup v2 at {ROOT}"
    );
}

#[test]
fn a_custom_executor_runs_in_its_cgroup_resized_by_its_tasks() {
    need_root_and_cgroup_v2();
    let dir = work_dir();
    let parent = format!("mesoblk-test-api-{}", std::process::id());
    let agent = cgroup_agent(dir.path(), Path::new(ROOT), &parent);
    let mut sleeper = executor("limited", "cat /proc/self/cgroup > cgroup; exec sleep 60");
    sleeper.resources = vec![scalar("cpus", 0.1), scalar("mem", 32.0)];
    let first = launch(
        false,
        sleeper.clone(),
        vec![task_with("t1", 0.4, 32.0)],
        &[],
    );
    agent.api.launch(first).unwrap();
    let summary = agent.api.executors().remove(0);
    let group = Path::new(ROOT).join(&parent).join(&summary.container_id);
    let name = format!("0::/{parent}/{}\n", summary.container_id);
    eventually("the executor to report its cgroup", || {
        std::fs::read_to_string(summary.sandbox.join("cgroup")).is_ok_and(|s| s == name)
    });
    assert_eq!(read(&group.join("cpu.max")), "50000 100000");
    assert_eq!(read(&group.join("memory.max")), "67108864");

    let second = launch(false, sleeper, vec![task_with("t2", 0.5, 64.0)], &[]);
    agent.api.launch(second).unwrap();
    assert_eq!(read(&group.join("cpu.max")), "100000 100000");
    assert_eq!(read(&group.join("memory.max")), "134217728");

    agent.api.shutdown_executor(FRAMEWORK, "limited").unwrap();
    agent.wait_no_executors();
    assert!(!group.exists(), "the executor's group is removed");
    drop(agent);
    std::fs::remove_dir(Path::new(ROOT).join(&parent)).unwrap();
}

/// `loop<n>`'s device number, with `riops` as its limit.
fn loop_device(n: u32, riops: u64) -> IoLimits {
    let path = format!("/sys/class/block/loop{n}/dev");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e} (the loop module makes loop0-7)"));
    let (major, minor) = text.trim().split_once(':').expect("MAJ:MIN");
    IoLimits {
        major: major.parse().unwrap(),
        minor: minor.parse().unwrap(),
        riops: Some(riops),
        ..Default::default()
    }
}

#[test]
fn a_recovered_executor_group_shrinks_as_before_the_restart() {
    need_root_and_cgroup_v2();
    let parent = format!("mesoblk-test-recovered-{}", std::process::id());
    let devices = [loop_device(0, 10), loop_device(1, 20), loop_device(2, 30)];
    recovered_group_shrinks_as_before_the_restart(Path::new(ROOT), &parent, devices);
    std::fs::remove_dir(Path::new(ROOT).join(&parent)).unwrap();
}
