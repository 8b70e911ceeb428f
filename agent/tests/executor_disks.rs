//! Command executor: a launch that starts its launcher while the task's disks are still being
//! attached, and lets it start the task once they are there (or tears it down when they fail).

mod executor_common;

use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender};

use executor_common::*;
use mesoblk_agent::executor::{
    CommandExecutor, DiskGrant, LaunchError, RunInfo, TaskLaunch, TaskUpdate,
};
use mesoblk_proto::mesos::v1::task_status::Reason;
use mesoblk_proto::mesos::v1::{environment, Environment, TaskState};
use TaskState::*;

const CONTAINER: &str = "c0ffee00-0000-4000-8000-000000000001";

type Gate = SyncSender<Result<DiskGrant, String>>;

fn sandbox(dir: &Path, task: &str) -> PathBuf {
    dir.join(format!(
        "work/slaves/S1/frameworks/fw-1/executors/{task}/runs/{CONTAINER}"
    ))
}

/// The pids of the processes whose working folder is `dir` (the launcher's is the sandbox).
fn processes_in(dir: &Path) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == dir))
        .filter(|pid| running(*pid))
        .collect()
}

/// Starts a gated launch of `task` on another thread and waits for its TASK_STARTING: by then
/// the launcher runs and waits for the disks. Returns the gate, the launch's thread and the
/// launcher's pid.
fn start_gated(
    exec: &'static CommandExecutor,
    rx: &std::sync::mpsc::Receiver<TaskUpdate>,
    dir: &Path,
    task: mesoblk_proto::mesos::v1::TaskInfo,
) -> (
    Gate,
    std::thread::JoinHandle<Result<RunInfo, LaunchError>>,
    i32,
) {
    let id = task.task_id.value.clone();
    let (gate, disks) = sync_channel(1);
    let launch = TaskLaunch {
        framework: framework(false),
        task,
        container_id: Some(CONTAINER.into()),
        ..Default::default()
    };
    let handle = std::thread::spawn(move || exec.launch_with_disks(launch, disks));
    let starting = next(rx);
    assert_eq!(mesoblk_agent::status::status_state(&starting), TaskStarting);
    let launchers = processes_in(&sandbox(dir, &id));
    assert_eq!(launchers.len(), 1, "the launcher waits: {launchers:?}");
    (gate, handle, launchers[0])
}

fn leak(exec: CommandExecutor) -> &'static CommandExecutor {
    Box::leak(Box::new(exec))
}

#[test]
fn the_task_starts_once_its_disks_arrive_with_their_variables() {
    let dir = work_dir();
    let (exec, rx) = executor(config(dir.path()));
    let exec = leak(exec);
    let mut task = shell_task(
        "disk",
        "echo \"$MESOBLK_BLOCK_DEVICE $MESOBLK_DISK_VOL_1 $OWN\" > out",
    );
    // The task's own variables win over the disks'.
    task.command.as_mut().unwrap().environment = Some(Environment {
        variables: vec![environment::Variable {
            name: "OWN".into(),
            value: Some("mine".into()),
            ..Default::default()
        }],
    });
    {
        let (gate, handle, launcher) = start_gated(exec, &rx, dir.path(), task);
        let out = sandbox(dir.path(), "disk").join("out");
        assert!(!out.exists(), "the task must wait for its disks");
        gate.send(Ok(DiskGrant {
            env: vec![
                ("MESOBLK_BLOCK_DEVICE".into(), "/dev/ublkb7".into()),
                ("MESOBLK_DISK_VOL_1".into(), "/dev/ublkb7".into()),
                ("OWN".into(), "theirs".into()),
            ],
            io_limits: Vec::new(),
        }))
        .unwrap();
        let info = handle.join().unwrap().unwrap();
        assert_eq!(info.pid, launcher);
        let updates = until_terminal(&rx);
        assert_eq!(states(&updates), [TaskRunning, TaskFinished]);
        assert_eq!(read(out), "/dev/ublkb7 /dev/ublkb7 mine\n");
    }
}

#[test]
fn disks_that_fail_end_the_task_in_task_error_and_tear_the_launcher_down() {
    for (task_id, failure) in [
        ("refused", Some("device start failed: no ublk")),
        ("given-up", None),
    ] {
        let dir = work_dir();
        let (exec, rx) = executor(config(dir.path()));
        let exec = leak(exec);
        let task = shell_task(task_id, "touch started");
        {
            let (gate, handle, launcher) = start_gated(exec, &rx, dir.path(), task);
            match failure {
                Some(message) => gate.send(Err(message.into())).unwrap(),
                None => drop(gate),
            }
            let err = handle.join().unwrap().unwrap_err();
            assert!(matches!(err, LaunchError::Disks(_)), "{err:?}");
            let update = next(&rx);
            assert_eq!(mesoblk_agent::status::status_state(&update), TaskError);
            assert_eq!(update.reason, Some(Reason::TaskInvalid as i32));
            let message = update.message.unwrap_or_default();
            match failure {
                Some(expected) => assert_eq!(message, expected),
                None => assert!(message.contains("gave up"), "{message}"),
            }
            // Nothing left: no launcher, no task, no run checkpoint, no tracked task.
            assert!(!running(launcher), "launcher {launcher} still runs");
            let sandbox = sandbox(dir.path(), task_id);
            assert!(processes_in(&sandbox).is_empty());
            assert!(!sandbox.join("started").exists());
            assert!(exec.tasks().is_empty());
            let meta = dir.path().join(format!(
                "work/meta/slaves/S1/frameworks/fw-1/executors/{task_id}"
            ));
            assert!(!meta.exists(), "{} left", meta.display());
        }
    }
}
