//! Kernel tier for executors: the command executor's tasks in real cgroup v2 groups with
//! `cpu.max`, `memory.max` and `io.max`; and a pymesos custom executor, launched through the real
//! master and agent binary, running a task on a real BLOCK disk (a ublk device it writes and
//! reads back) that the agent releases afterwards. Needs root and cgroup v2 mounted writable at
//! /sys/fs/cgroup (the qemu guest of scripts/vm-run), `/dev/ublk-control`, `mesoblk-target` next
//! to the agent binary and the scratch disk `$MESOBLK_TEST_DISK`; fails, never skips, without
//! them.

mod cluster_common;
mod executor_common;

use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use executor_common::*;
use mesoblk_agent::executor::{CgroupConfig, CommandExecutor, IoLimits, TaskLaunch, TaskUpdate};
use mesoblk_proto::mesos::v1::TaskState::*;

const ROOT: &str = "/sys/fs/cgroup";

/// An executor whose task cgroups go under a parent of this test's own.
fn cgroup_executor(dir: &Path, parent: &str) -> (CommandExecutor, Receiver<TaskUpdate>) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "kernel executor tests need root"
    );
    assert!(
        Path::new(ROOT).join("cgroup.controllers").exists(),
        "kernel executor tests need cgroup v2 at {ROOT}"
    );
    let mut cfg = config(dir);
    cfg.cgroups = Some(CgroupConfig {
        root: ROOT.into(),
        parent: parent.into(),
        ..Default::default()
    });
    let (exec, rx) = executor(cfg);
    let cgroups = exec.cgroups().expect("cgroup v2 is usable here");
    assert!(cgroups.is_real());
    (exec, rx)
}

/// The `MAJ:MIN` of some block device of this machine.
fn some_block_device() -> (u32, u32) {
    let mut devs: Vec<PathBuf> = std::fs::read_dir("/sys/block")
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    devs.sort();
    let dev = devs.first().expect("a block device");
    let text = read(dev.join("dev"));
    let (maj, min) = text.trim().split_once(':').unwrap();
    (maj.parse().unwrap(), min.parse().unwrap())
}

#[test]
fn tasks_run_inside_their_cgroup_with_its_limits() {
    let dir = work_dir();
    let parent = format!("mesoblk-test-{}", std::process::id());
    let (exec, rx) = cgroup_executor(dir.path(), &parent);
    let (major, minor) = some_block_device();
    let mut task = shell_task("limited", "cat /proc/self/cgroup > cgroup; sleep 100");
    task.resources = vec![scalar("cpus", 0.5), scalar("mem", 64.0)];
    let info = exec
        .launch(TaskLaunch {
            framework: framework(false),
            task,
            io_limits: vec![IoLimits {
                major,
                minor,
                rbps: Some(10 << 20),
                wiops: Some(100),
                ..Default::default()
            }],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(states(&[next(&rx), next(&rx)]), [TaskStarting, TaskRunning]);
    let cgroup = info.cgroup.clone().unwrap();
    let name = format!("0::/{parent}/{}\n", info.run.container_id);
    eventually("the task to report its cgroup", || {
        std::fs::read_to_string(info.sandbox.join("cgroup")).is_ok_and(|s| s == name)
    });
    assert_eq!(read(cgroup.join("cpu.max")), "50000 100000\n");
    assert_eq!(read(cgroup.join("memory.max")), "67108864\n");
    let io = read(cgroup.join("io.max"));
    assert!(
        io.contains(&format!(
            "{major}:{minor} rbps=10485760 wbps=max riops=max wiops=100"
        )),
        "{io}"
    );
    assert!(read(cgroup.join("cgroup.procs"))
        .lines()
        .any(|p| p == info.pid.to_string()));
    exec.kill(&key("limited"), Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(states(&until_terminal(&rx)), [TaskKilled]);
    eventually("the task's cgroup to be removed", || !cgroup.exists());
    drop(exec);
    std::fs::remove_dir(Path::new(ROOT).join(&parent)).unwrap();
}

#[test]
fn a_busy_task_is_throttled_to_its_cpus() {
    let dir = work_dir();
    let parent = format!("mesoblk-test-cpu-{}", std::process::id());
    let (exec, rx) = cgroup_executor(dir.path(), &parent);
    let mut task = shell_task("busy", "while :; do :; done");
    task.resources = vec![scalar("cpus", 0.1)];
    let info = exec
        .launch(TaskLaunch {
            framework: framework(false),
            task,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(states(&[next(&rx), next(&rx)]), [TaskStarting, TaskRunning]);
    let cgroup = info.cgroup.clone().unwrap();
    let stat_value = |name: &str| -> u64 {
        read(cgroup.join("cpu.stat"))
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap()
    };
    eventually("the task to be throttled", || {
        stat_value("nr_throttled ") > 2
    });
    exec.kill(&key("busy"), Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(states(&until_terminal(&rx)), [TaskKilled]);
    eventually("the task's cgroup to be removed", || !cgroup.exists());
    drop(exec);
    std::fs::remove_dir(Path::new(ROOT).join(&parent)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pymesos_custom_executor_runs_a_task_on_a_block_disk() {
    use cluster_common::pool::{agent_with_pool, scratch, task_end};
    use serde_json::json;

    let scratch = scratch();
    let master = cluster_common::Master::start().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_with_pool(&master, dir.path(), &scratch);
    let mut scheduler = cluster_common::Scheduler::start(&master.address());
    // pymesos's MesosExecutorDriver, started by the agent from the task's ExecutorInfo; the task
    // data `device` makes it verify the device its disk resource's labels name.
    let executor = cluster_common::pymesos_executor_command();
    scheduler
        .launch_specs(vec![
            json!({"id": "on-device", "command": executor, "executor": true,
                                  "data": "device", "mem": 128,
                                  "disk": {"mb": 64, "profile": "fast"}}),
        ])
        .await;
    let end = task_end(&mut scheduler, "on-device").await;
    assert_eq!(
        end["state"],
        "TASK_FINISHED",
        "{end}\n{}\nagent log:\n{}",
        scheduler.summary(),
        agent.log_text()
    );
    assert_eq!(end["source"], "SOURCE_EXECUTOR", "{end}");
    let message = end["message"].as_str().unwrap();
    let words: Vec<&str> = message.split(' ').collect();
    assert_eq!(words[0], "verified", "{message}");
    assert!(words[1].starts_with("/dev/ublkb"), "{message}");
    assert_eq!(
        words[2],
        (64u64 << 20).to_string(),
        "the whole 64 MiB: {message}"
    );
    // (An update the agent sent again before its acknowledgement shows twice.)
    let mut states = scheduler.states("on-device");
    states.dedup();
    assert_eq!(states, ["TASK_RUNNING", "TASK_FINISHED"]);

    // The terminal update released the device: no volume is left and the node is gone.
    agent
        .wait_state("the device released", |s| {
            s["pools"][0]["volumes"] == 0 && s["volumes"].as_array().is_some_and(Vec::is_empty)
        })
        .await;
    eventually("the device node to go away", || {
        !Path::new(words[1]).exists()
    });
    scheduler.stop().await;
}
