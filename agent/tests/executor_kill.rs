//! Command executor: killing tasks (SIGTERM, SIGKILL after the grace period, the whole process
//! group, TASK_KILLING for frameworks that accept it).

mod executor_common;

use std::time::{Duration, Instant};

use executor_common::*;
use mesoblk_agent::executor::{KillError, TaskLaunch};
use mesoblk_proto::mesos::v1::TaskState::*;

#[test]
fn a_sleeping_task_is_killed_by_sigterm_well_within_its_grace_period() {
    let dir = work_dir();
    let (exec, rx) = executor(config(dir.path()));
    exec.launch(TaskLaunch {
        framework: framework(false),
        task: shell_task("sleepy", "exec sleep 100"),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(states(&[next(&rx), next(&rx)]), [TaskStarting, TaskRunning]);
    let asked = Instant::now();
    exec.kill(&key("sleepy"), Some(Duration::from_secs(10)))
        .unwrap();
    let updates = until_terminal(&rx);
    // No TASK_KILLING: the framework lacks TASK_KILLING_STATE.
    assert_eq!(states(&updates), [TaskKilled]);
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(
        updates[0].message.as_deref(),
        Some("Command terminated with signal Terminated")
    );
    assert_eq!(
        exec.kill(&key("sleepy"), None),
        Err(KillError::UnknownTask(key("sleepy")))
    );
}

#[test]
fn a_task_ignoring_sigterm_is_sigkilled_after_the_grace_period() {
    let dir = work_dir();
    let (exec, rx) = executor(config(dir.path()));
    let grace = Duration::from_millis(700);
    // The grace period comes from the task's kill policy.
    let task = with_grace(
        shell_task(
            "stubborn",
            "trap '' TERM; echo ready > ready; sleep 100; echo survived",
        ),
        grace,
    );
    let info = exec
        .launch(TaskLaunch {
            framework: framework(true),
            task,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(states(&[next(&rx), next(&rx)]), [TaskStarting, TaskRunning]);
    eventually("the trap to be set", || info.sandbox.join("ready").exists());
    let asked = Instant::now();
    exec.kill(&key("stubborn"), None).unwrap();
    let updates = until_terminal(&rx);
    let took = asked.elapsed();
    assert_eq!(states(&updates), [TaskKilling, TaskKilled]);
    assert!(
        took >= grace,
        "SIGKILL came before the grace period: {took:?}"
    );
    assert!(took < grace + Duration::from_secs(5), "{took:?}");
    assert_eq!(
        updates[1].message.as_deref(),
        Some("Command terminated with signal Killed")
    );
    assert!(!read(info.sandbox.join("stdout")).contains("survived"));
}

#[test]
fn a_later_kill_with_a_shorter_grace_period_brings_sigkill_forward() {
    let dir = work_dir();
    let (exec, rx) = executor(config(dir.path()));
    let info = exec
        .launch(TaskLaunch {
            framework: framework(false),
            task: shell_task("twice", "trap '' TERM; echo ready > ready; sleep 100"),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(states(&[next(&rx), next(&rx)]), [TaskStarting, TaskRunning]);
    eventually("the trap to be set", || info.sandbox.join("ready").exists());
    let asked = Instant::now();
    exec.kill(&key("twice"), Some(Duration::from_secs(60)))
        .unwrap();
    exec.kill(&key("twice"), Some(Duration::from_millis(100)))
        .unwrap();
    assert_eq!(states(&until_terminal(&rx)), [TaskKilled]);
    assert!(asked.elapsed() < Duration::from_secs(10));
}

#[test]
fn the_whole_process_group_is_killed() {
    let dir = work_dir();
    let (exec, rx) = executor(config(dir.path()));
    // The shell waits for a child that ignores SIGTERM in the background.
    let info = exec
        .launch(TaskLaunch {
            framework: framework(false),
            task: shell_task(
                "group",
                "(trap '' TERM; exec sleep 100) & echo $! > child; echo $$ > pid; wait",
            ),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(states(&[next(&rx), next(&rx)]), [TaskStarting, TaskRunning]);
    let child = pid_file(&info.sandbox, "child");
    let sh = pid_file(&info.sandbox, "pid");
    assert!(running(child) && running(sh));
    exec.kill(&key("group"), Some(Duration::from_millis(300)))
        .unwrap();
    assert_eq!(states(&until_terminal(&rx)), [TaskKilled]);
    eventually("every process of the task to be gone", || {
        !running(child) && !running(sh) && !running(info.pid)
    });
}
