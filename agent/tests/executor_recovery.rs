//! Command executor across agent restarts: a first executor starts tasks and is dropped (the
//! agent dies, its tasks keep running); a second one recovers them from the same work dir.

mod executor_common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use executor_common::*;
use mesoblk_agent::checkpoint::{Checkpointer, Layout, RunPhase};
use mesoblk_agent::executor::{CommandExecutor, TaskLaunch};
use mesoblk_agent::status::{status_state, status_uuid, Backoff, StatusUpdateStore};
use mesoblk_proto::mesos::v1::task_status::{Reason, Source};
use mesoblk_proto::mesos::v1::TaskState::{self, *};

fn recover(
    config: mesoblk_agent::executor::ExecutorConfig,
) -> (
    CommandExecutor,
    mesoblk_agent::executor::Recovery,
    std::sync::mpsc::Receiver<mesoblk_agent::executor::TaskUpdate>,
) {
    let (tx, rx) = std::sync::mpsc::channel();
    let (exec, recovery) = CommandExecutor::recover(config, Arc::new(tx)).unwrap();
    (exec, recovery, rx)
}

#[test]
fn a_running_task_survives_the_agent_and_is_killed_through_the_recovered_executor() {
    let dir = work_dir();
    let cfg = config(dir.path());
    let (first, rx) = executor(cfg.clone());
    let info = first
        .launch(TaskLaunch {
            framework: framework(true),
            task: shell_task("long", "echo $$ > pid; sleep 100"),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(states(&[next(&rx), next(&rx)]), [TaskStarting, TaskRunning]);
    let sh = pid_file(&info.sandbox, "pid");
    drop(first); // The agent dies.
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        running(info.pid) && running(sh),
        "the task outlives its agent"
    );
    assert!(rx.try_recv().is_err(), "nothing was reported for it");

    let (second, recovery, rx) = recover(cfg);
    assert_eq!(recovery.reattached, vec![key("long")]);
    assert!(recovery.ended.is_empty() && recovery.unreadable.is_empty());
    let task = second.task(&key("long")).unwrap();
    assert_eq!(task.pid, info.pid);
    assert_eq!(task.state, TaskRunning);
    assert!(
        rx.try_recv().is_err(),
        "a running task is not reported again"
    );

    second
        .kill(&key("long"), Some(Duration::from_secs(5)))
        .unwrap();
    let updates = until_terminal(&rx);
    assert_eq!(states(&updates), [TaskKilling, TaskKilled]);
    eventually("the task's processes to be gone", || !running(sh));
}

#[test]
fn a_task_that_exits_after_recovery_reports_its_real_exit_code() {
    let dir = work_dir();
    let cfg = config(dir.path());
    let (first, rx) = executor(cfg.clone());
    let info = first
        .launch(TaskLaunch {
            framework: framework(false),
            task: shell_task("later", "while [ ! -e go ]; do sleep 0.02; done; exit 7"),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(states(&[next(&rx), next(&rx)]), [TaskStarting, TaskRunning]);
    drop(first);
    let (_second, recovery, rx) = recover(cfg);
    assert_eq!(recovery.reattached, vec![key("later")]);
    std::fs::write(info.sandbox.join("go"), "").unwrap();
    let updates = until_terminal(&rx);
    assert_eq!(states(&updates), [TaskFailed]);
    assert_eq!(
        updates[0].message.as_deref(),
        Some("Command exited with status 7")
    );
    assert!(info.sandbox.exists());
}

#[test]
fn a_task_that_ended_while_the_agent_was_away_is_reported_on_recovery() {
    let dir = work_dir();
    let cfg = config(dir.path());
    let (first, rx) = executor(cfg.clone());
    let info = first
        .launch(TaskLaunch {
            framework: framework(false),
            task: shell_task("quick", "while [ ! -e go ]; do sleep 0.02; done; exit 0"),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(states(&[next(&rx), next(&rx)]), [TaskStarting, TaskRunning]);
    drop(first);
    std::fs::write(info.sandbox.join("go"), "").unwrap();
    eventually("the launcher to end", || !running(info.pid));
    let (second, recovery, rx) = recover(cfg);
    assert_eq!(recovery.ended, vec![key("quick")]);
    // Reported before `recover` returned.
    let update = rx
        .try_recv()
        .expect("the terminal update is already there")
        .status;
    assert_eq!(status_state(&update), TaskFinished);
    assert!(second.tasks().is_empty());
    let meta = dir
        .path()
        .join("work/meta/slaves/S1/frameworks/fw-1/executors/quick");
    assert!(!meta.exists());
}

#[test]
fn a_vanished_process_group_is_task_failed_executor_terminated() {
    let dir = work_dir();
    let cfg = config(dir.path());
    let (first, rx) = executor(cfg.clone());
    let info = first
        .launch(TaskLaunch {
            framework: framework(false),
            task: shell_task("vanish", "sleep 100"),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(states(&[next(&rx), next(&rx)]), [TaskStarting, TaskRunning]);
    drop(first);
    // Everything dies with the machine's agent (say, an OOM kill of the whole group).
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(info.pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    eventually("the group to die", || !running(info.pid));
    let (_second, recovery, rx) = recover(cfg);
    assert_eq!(recovery.ended, vec![key("vanish")]);
    let update = next(&rx);
    assert_eq!(status_state(&update), TaskFailed);
    assert_eq!(update.reason, Some(Reason::ExecutorTerminated as i32));
    assert_eq!(update.source, Some(Source::Agent as i32));
    assert!(update
        .message
        .as_deref()
        .unwrap()
        .starts_with("Abnormal executor termination"));
}

#[test]
fn a_kill_in_progress_continues_after_the_restart() {
    let dir = work_dir();
    let cfg = config(dir.path());
    let (first, rx) = executor(cfg.clone());
    let info = first
        .launch(TaskLaunch {
            framework: framework(false),
            task: shell_task("stubborn", "trap '' TERM; echo ready > ready; sleep 100"),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(states(&[next(&rx), next(&rx)]), [TaskStarting, TaskRunning]);
    eventually("the trap to be set", || info.sandbox.join("ready").exists());
    let asked = Instant::now();
    first
        .kill(&key("stubborn"), Some(Duration::from_millis(800)))
        .unwrap();
    drop(first); // Dies before the grace period ends.
    assert!(running(info.pid));
    let (_second, recovery, rx) = recover(cfg);
    assert_eq!(recovery.reattached, vec![key("stubborn")]);
    let updates = until_terminal(&rx);
    assert_eq!(states(&updates), [TaskKilled]);
    let took = asked.elapsed();
    assert!(took >= Duration::from_millis(800), "{took:?}");
    assert!(took < Duration::from_secs(8), "{took:?}");
}

#[test]
fn a_run_checkpointed_before_task_running_reports_it_on_recovery() {
    let dir = work_dir();
    let cfg = config(dir.path());
    let (first, rx) = executor(cfg.clone());
    let info = first
        .launch(TaskLaunch {
            framework: framework(false),
            task: shell_task("unreported", "sleep 100"),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(states(&[next(&rx), next(&rx)]), [TaskStarting, TaskRunning]);
    drop(first);
    // As if the agent died after the launcher started the task, before TASK_RUNNING.
    let checkpointer = Checkpointer::new(Layout::new(dir.path().join("work"), "S1"));
    let mut run = checkpointer.scan().unwrap().runs.remove(0).record;
    assert_eq!(run.phase, RunPhase::Running);
    run.phase = RunPhase::Launching;
    checkpointer.write_run(&run).unwrap();

    let (second, recovery, rx) = recover(cfg);
    assert_eq!(recovery.reattached, vec![key("unreported")]);
    assert_eq!(status_state(&next(&rx)), TaskRunning);
    second
        .kill(&key("unreported"), Some(Duration::ZERO))
        .unwrap();
    assert_eq!(states(&until_terminal(&rx)), [TaskKilled]);
    assert!(!running(info.pid));
}

#[test]
fn pending_status_updates_and_tasks_both_survive_an_agent_restart() {
    let dir = work_dir();
    let cfg = config(dir.path());
    let status_dir = cfg.layout.status_dir();
    let backoff = Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(400),
    };
    let pending_states = |store: &StatusUpdateStore| -> Vec<TaskState> {
        store
            .stream(&key("both"))
            .map(|s| s.pending().map(status_state).collect())
            .unwrap_or_default()
    };

    let (store, _) = StatusUpdateStore::open(&status_dir, backoff).unwrap();
    let store = Arc::new(Mutex::new(store));
    let first = CommandExecutor::new(cfg.clone(), store.clone()).unwrap();
    first
        .launch(TaskLaunch {
            framework: framework(false),
            task: shell_task("both", "sleep 100"),
            ..Default::default()
        })
        .unwrap();
    {
        let mut s = store.lock().unwrap();
        // The master got TASK_STARTING and the scheduler acknowledged it.
        let sent = s.due(Instant::now());
        assert_eq!(sent.len(), 1);
        assert_eq!(status_state(&sent[0].status), TaskStarting);
        assert_eq!(sent[0].latest_state, TaskRunning);
        let uuid = status_uuid(&sent[0].status).unwrap();
        s.acknowledge(&key("both"), &uuid).unwrap();
        assert_eq!(pending_states(&s), [TaskRunning]);
    }
    drop(first);
    drop(store); // The agent dies.

    let (store, report) = StatusUpdateStore::open(&status_dir, backoff).unwrap();
    assert_eq!((report.streams, report.pending), (1, 1));
    assert_eq!(pending_states(&store), [TaskRunning]);
    let store = Arc::new(Mutex::new(store));
    let (second, recovery) = CommandExecutor::recover(cfg, store.clone()).unwrap();
    assert_eq!(recovery.reattached, vec![key("both")]);
    second
        .kill(&key("both"), Some(Duration::from_secs(5)))
        .unwrap();
    eventually("TASK_KILLED to be stored", || {
        pending_states(&store.lock().unwrap()) == [TaskRunning, TaskKilled]
    });
    // Sent in order, one at a time.
    let mut s = store.lock().unwrap();
    let sent = s.due(Instant::now());
    assert_eq!(sent.len(), 1);
    assert_eq!(status_state(&sent[0].status), TaskRunning);
    assert_eq!(sent[0].latest_state, TaskKilled);
}
