//! Command executor: launches, exit statuses, environment, users, sandboxes, process groups,
//! and launches that cannot start.

mod executor_common;

use std::time::Duration;

use executor_common::*;
use mesoblk_agent::executor::{LaunchError, TaskLaunch};
use mesoblk_agent::status::status_uuid;
use mesoblk_proto::mesos::v1::task_status::{Reason, Source};
use mesoblk_proto::mesos::v1::{environment, Environment, ExecutorInfo, TaskState};
use TaskState::*;

#[test]
fn shell_command_exit_code_becomes_task_failed_and_stdout_lands_in_the_sandbox() {
    let dir = work_dir();
    let (exec, rx) = executor(config(dir.path()));
    let info = exec
        .launch(TaskLaunch {
            framework: framework(false),
            task: shell_task("t1", "echo hi; echo oops >&2; exit 3"),
            ..Default::default()
        })
        .unwrap();
    let updates = until_terminal(&rx);
    assert_eq!(states(&updates), [TaskStarting, TaskRunning, TaskFailed]);
    let failed = updates.last().unwrap();
    assert_eq!(
        failed.message.as_deref(),
        Some("Command exited with status 3")
    );
    assert_eq!(failed.source, Some(Source::Executor as i32));
    assert_eq!(failed.executor_id.as_ref().unwrap().value, "t1");
    assert_eq!(failed.agent_id.as_ref().unwrap().value, "S1");
    for u in &updates {
        assert_eq!(status_uuid(u).map(|b| b.len()), Some(16));
        assert!(u.timestamp.unwrap() > 1.0e9);
    }
    assert_eq!(read(info.sandbox.join("stdout")), "hi\n");
    assert_eq!(read(info.sandbox.join("stderr")), "oops\n");
    // Mesos's sandbox layout.
    let expected = dir
        .path()
        .join("work/slaves/S1/frameworks/fw-1/executors/t1/runs")
        .join(&info.run.container_id);
    assert_eq!(info.sandbox, expected);
    // The finished run's checkpoint is gone, its sandbox stays.
    eventually("the run to be forgotten", || exec.tasks().is_empty());
    let meta = dir
        .path()
        .join("work/meta/slaves/S1/frameworks/fw-1/executors/t1");
    eventually("the run checkpoint to be removed", || !meta.exists());
}

#[test]
fn exit_zero_is_task_finished() {
    let dir = work_dir();
    let (exec, rx) = executor(config(dir.path()));
    exec.launch(TaskLaunch {
        framework: framework(false),
        task: shell_task("ok", "true"),
        ..Default::default()
    })
    .unwrap();
    let updates = until_terminal(&rx);
    assert_eq!(states(&updates), [TaskStarting, TaskRunning, TaskFinished]);
    assert_eq!(
        updates[2].message.as_deref(),
        Some("Command exited with status 0")
    );
}

#[test]
fn argv_mode_passes_arguments_verbatim() {
    let dir = work_dir();
    let (exec, rx) = executor(config(dir.path()));
    // arguments[0] is argv[0], as in Mesos; no shell touches the `$HOME` or the spaces.
    let task = argv_task(
        "argv",
        "/bin/sh",
        &[
            "my-name",
            "-c",
            "echo \"$0|$1|$2\"; tr '\\0' ' ' < /proc/$$/cmdline",
            "zero",
            "a b",
            "$HOME",
        ],
    );
    let info = exec
        .launch(TaskLaunch {
            framework: framework(false),
            task,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(*states(&until_terminal(&rx)).last().unwrap(), TaskFinished);
    let out = read(info.sandbox.join("stdout"));
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("zero|a b|$HOME"));
    assert!(lines.next().unwrap().starts_with("my-name -c "), "{out}");
}

#[test]
fn environment_has_mesos_variables_extras_and_the_tasks_own() {
    let dir = work_dir();
    let mut cfg = config(dir.path());
    cfg.base_env = Some(vec![
        ("FROM_BASE".into(), "base".into()),
        ("OVERRIDDEN".into(), "base".into()),
    ]);
    cfg.shutdown_grace = Duration::from_secs(7);
    let (exec, rx) = executor(cfg);
    let mut task = shell_task("env-task", "env | sort");
    task.command.as_mut().unwrap().environment = Some(Environment {
        variables: vec![environment::Variable {
            name: "OVERRIDDEN".into(),
            value: Some("task".into()),
            ..Default::default()
        }],
    });
    let mut fw = framework(false);
    fw.checkpoint = Some(false);
    let info = exec
        .launch(TaskLaunch {
            framework: fw,
            task,
            extra_env: vec![("MESOBLK_BLOCK_DEVICE".into(), "/dev/ublkb7".into())],
            io_limits: Vec::new(),
            container_id: Some("chosen-by-the-agent".into()),
        })
        .unwrap();
    assert_eq!(*states(&until_terminal(&rx)).last().unwrap(), TaskFinished);
    assert!(info.sandbox.ends_with("runs/chosen-by-the-agent"));
    let out = read(info.sandbox.join("stdout"));
    let sandbox = info.sandbox.to_str().unwrap();
    for line in [
        format!("MESOS_SANDBOX={sandbox}"),
        format!("MESOS_DIRECTORY={sandbox}"),
        "MESOS_TASK_ID=env-task".into(),
        "MESOS_FRAMEWORK_ID=fw-1".into(),
        "MESOS_EXECUTOR_ID=env-task".into(),
        "MESOS_AGENT_ENDPOINT=127.0.0.1:5051".into(),
        "MESOS_SLAVE_ID=S1".into(),
        "MESOS_CHECKPOINT=0".into(),
        "MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD=7secs".into(),
        "MESOBLK_BLOCK_DEVICE=/dev/ublkb7".into(),
        "FROM_BASE=base".into(),
        "OVERRIDDEN=task".into(),
        format!("PATH={}", mesoblk_agent::executor::env::DEFAULT_PATH),
        format!("PWD={sandbox}"),
    ] {
        assert!(
            out.lines().any(|l| l == line),
            "missing {line:?} in:\n{out}"
        );
    }
}

#[test]
fn tasks_run_in_their_own_session_and_process_group() {
    let dir = work_dir();
    let (exec, rx) = executor(config(dir.path()));
    let info = exec
        .launch(TaskLaunch {
            framework: framework(false),
            task: shell_task("pg", "echo $$ > pid; sleep 100"),
            ..Default::default()
        })
        .unwrap();
    let sh = pid_file(&info.sandbox, "pid");
    let stat = mesoblk_agent::executor::process::read_stat(sh).unwrap();
    let me = mesoblk_agent::executor::process::read_stat(std::process::id() as i32).unwrap();
    // The launcher leads the session and the group; the test (the "agent") is in neither.
    assert_eq!(stat.pgrp, info.pid);
    assert_eq!(stat.session, info.pid);
    assert_ne!(stat.pgrp, me.pgrp);
    assert_ne!(stat.session, me.session);
    // The task's stdin is /dev/null, not a pipe from the agent.
    let stdin = std::fs::read_link(format!("/proc/{sh}/fd/0")).unwrap();
    assert_eq!(stdin, std::path::Path::new("/dev/null"));
    exec.kill(&key("pg"), Some(Duration::from_secs(5))).unwrap();
    assert_eq!(*states(&until_terminal(&rx)).last().unwrap(), TaskKilled);
}

#[test]
fn leftover_children_are_killed_when_the_command_exits() {
    let dir = work_dir();
    let (exec, rx) = executor(config(dir.path()));
    let info = exec
        .launch(TaskLaunch {
            framework: framework(false),
            task: shell_task("bg", "sleep 100 & echo $! > bg; exit 0"),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(*states(&until_terminal(&rx)).last().unwrap(), TaskFinished);
    let bg = pid_file(&info.sandbox, "bg");
    eventually("the background child to be killed", || !running(bg));
}

#[test]
fn a_missing_binary_in_argv_mode_fails_the_task_and_leaves_nothing_running() {
    let dir = work_dir();
    let (exec, rx) = executor(config(dir.path()));
    let err = exec
        .launch(TaskLaunch {
            framework: framework(false),
            task: argv_task("nobin", "/nonexistent/program", &["program"]),
            ..Default::default()
        })
        .unwrap_err();
    assert!(matches!(err, LaunchError::Command(_)), "{err:?}");
    assert!(err.to_string().contains("No such file"), "{err}");
    let updates = until_terminal(&rx);
    assert_eq!(states(&updates), [TaskStarting, TaskFailed]);
    let failed = updates.last().unwrap();
    assert_eq!(failed.reason, Some(Reason::CommandExecutorFailed as i32));
    assert!(failed
        .message
        .as_deref()
        .unwrap()
        .contains("cannot start /nonexistent/program"));
    assert!(exec.tasks().is_empty());
    let runs = dir
        .path()
        .join("work/meta/slaves/S1/frameworks/fw-1/executors/nobin");
    assert!(!runs.exists(), "the failed run's checkpoint is removed");
}

#[test]
fn a_missing_user_fails_the_task_with_a_clear_message() {
    let dir = work_dir();
    let (exec, rx) = executor(config(dir.path()));
    let mut fw = framework(false);
    fw.user = "mesoblk-no-such-user".into();
    let err = exec
        .launch(TaskLaunch {
            framework: fw,
            task: shell_task("nouser", "true"),
            ..Default::default()
        })
        .unwrap_err();
    assert!(matches!(err, LaunchError::UnknownUser { .. }), "{err:?}");
    let update = next(&rx);
    assert_eq!(status_state_of(&update), TaskFailed);
    assert_eq!(update.reason, Some(Reason::ContainerLaunchFailed as i32));
    assert_eq!(update.source, Some(Source::Agent as i32));
    assert_eq!(
        update.message.as_deref(),
        Some("user \"mesoblk-no-such-user\" does not exist on this agent")
    );
    assert!(
        !dir.path().join("work/slaves").exists(),
        "no sandbox is made"
    );
}

fn status_state_of(s: &mesoblk_proto::mesos::v1::TaskStatus) -> TaskState {
    mesoblk_agent::status::status_state(s)
}

#[test]
fn tasks_run_as_their_user_when_the_agent_is_root() {
    if !nix::unistd::geteuid().is_root() {
        // This machine and CI run as root; say so loudly elsewhere rather than pass silently.
        panic!("this test needs root to switch users");
    }
    let dir = work_dir();
    let (exec, rx) = executor(config(dir.path()));
    let mut task = shell_task("asuser", "id -un; id -u; touch mine");
    task.command.as_mut().unwrap().user = Some("nobody".into());
    let info = exec
        .launch(TaskLaunch {
            framework: framework(false),
            task,
            ..Default::default()
        })
        .unwrap();
    let updates = until_terminal(&rx);
    assert_eq!(
        *states(&updates).last().unwrap(),
        TaskFinished,
        "{updates:?}"
    );
    assert_eq!(read(info.sandbox.join("stdout")), "nobody\n65534\n");
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(info.sandbox.join("mine")).unwrap();
    assert_eq!(meta.uid(), 65534);
    assert_eq!(std::fs::metadata(&info.sandbox).unwrap().uid(), 65534);
}

#[test]
fn malformed_tasks_are_task_error_and_custom_executors_are_refused() {
    let dir = work_dir();
    let (exec, rx) = executor(config(dir.path()));
    let mut task = shell_task("bad", "true");
    task.command = None;
    let err = exec
        .launch(TaskLaunch {
            framework: framework(false),
            task,
            ..Default::default()
        })
        .unwrap_err();
    assert!(matches!(err, LaunchError::InvalidTask(_)));
    let update = next(&rx);
    assert_eq!(status_state_of(&update), TaskError);
    assert_eq!(update.reason, Some(Reason::TaskInvalid as i32));

    let mut custom = shell_task("custom", "true");
    custom.executor = Some(ExecutorInfo::default());
    let err = exec
        .launch(TaskLaunch {
            framework: framework(false),
            task: custom,
            ..Default::default()
        })
        .unwrap_err();
    assert!(matches!(err, LaunchError::NotACommandTask(_)));
    assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
}

#[test]
fn a_second_launch_of_a_running_task_is_refused_without_updates() {
    let dir = work_dir();
    let (exec, rx) = executor(config(dir.path()));
    let launch = TaskLaunch {
        framework: framework(false),
        task: shell_task("twice", "sleep 100"),
        ..Default::default()
    };
    exec.launch(launch.clone()).unwrap();
    assert_eq!(status_state_of(&next(&rx)), TaskStarting);
    assert_eq!(status_state_of(&next(&rx)), TaskRunning);
    assert!(matches!(
        exec.launch(launch),
        Err(LaunchError::AlreadyRunning(_))
    ));
    assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
    exec.kill(&key("twice"), Some(Duration::ZERO)).unwrap();
    assert_eq!(*states(&until_terminal(&rx)).last().unwrap(), TaskKilled);
}

#[test]
fn a_missing_launcher_fails_the_task() {
    let dir = work_dir();
    let mut cfg = config(dir.path());
    cfg.launcher = dir.path().join("no-launcher");
    let (exec, rx) = executor(cfg);
    let err = exec
        .launch(TaskLaunch {
            framework: framework(false),
            task: shell_task("nolauncher", "true"),
            ..Default::default()
        })
        .unwrap_err();
    assert!(matches!(err, LaunchError::Launcher { .. }));
    let update = next(&rx);
    assert_eq!(status_state_of(&update), TaskFailed);
    assert!(update
        .message
        .as_deref()
        .unwrap()
        .starts_with("cannot start the launcher"));
}
