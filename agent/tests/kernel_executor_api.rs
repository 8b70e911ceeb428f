//! Kernel tier for custom executors: an executor in a real cgroup v2 group with `cpu.max` and
//! `memory.max` from its resources and its tasks', resized when a launch adds tasks, removed
//! when the executor ends. Needs root and cgroup v2 mounted writable at /sys/fs/cgroup (the qemu
//! guest of scripts/vm-run); fails, never skips, without them.

mod executor_api_common;

use std::path::Path;
use std::time::{Duration, Instant};

use executor_api_common::*;
use mesoblk_agent::executor::CgroupConfig;
use mesoblk_proto::mesos::v1::TaskInfo;
use mesoblk_proto::resource::scalar;

const ROOT: &str = "/sys/fs/cgroup";

fn task_with(id: &str, cpus: f64, mem: f64) -> TaskInfo {
    let mut task = task(id, "x");
    task.resources = vec![scalar("cpus", cpus), scalar("mem", mem)];
    task
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "{what} in time");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_custom_executor_runs_in_its_cgroup_resized_by_its_tasks() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "kernel executor tests need root"
    );
    assert!(
        Path::new(ROOT).join("cgroup.controllers").exists(),
        "kernel executor tests need cgroup v2 at {ROOT}"
    );
    let dir = work_dir();
    let parent = format!("mesoblk-test-api-{}", std::process::id());
    let agent = Agent::start(dir.path(), 0, |c| {
        c.cgroups = Some(CgroupConfig {
            root: ROOT.into(),
            parent: parent.clone(),
            ..Default::default()
        });
        c.shutdown_grace = Duration::from_millis(200);
    });
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
    assert_eq!(read(&group.join("cpu.max")), "50000 100000\n");
    assert_eq!(read(&group.join("memory.max")), "67108864\n");

    let second = launch(false, sleeper, vec![task_with("t2", 0.5, 64.0)], &[]);
    agent.api.launch(second).unwrap();
    assert_eq!(read(&group.join("cpu.max")), "100000 100000\n");
    assert_eq!(read(&group.join("memory.max")), "134217728\n");

    agent.api.shutdown_executor(FRAMEWORK, "limited").unwrap();
    agent.wait_no_executors();
    assert!(!group.exists(), "the executor's group is removed");
    drop(agent);
    std::fs::remove_dir(Path::new(ROOT).join(&parent)).unwrap();
}
