//! Helpers shared by the executor tests: a work dir, an executor wired to a channel, task
//! builders, and bounded waits for status updates.

#![allow(dead_code, unreachable_pub)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesoblk_agent::checkpoint::Layout;
use mesoblk_agent::executor::{CommandExecutor, ExecutorConfig, TaskUpdate};
use mesoblk_agent::status::{status_state, TaskKey};
use mesoblk_proto::mesos::v1::{
    framework_info, CommandInfo, DurationInfo, FrameworkId, FrameworkInfo, KillPolicy, TaskId,
    TaskInfo, TaskState, TaskStatus,
};
// Not every test binary that includes this module builds resources.
#[allow(unused_imports)]
pub use mesoblk_proto::resource::scalar;

/// The longest any single wait in these tests lasts.
pub const WAIT: Duration = Duration::from_secs(20);

pub const FRAMEWORK: &str = "fw-1";

/// A work dir every user can traverse (tasks may run as `nobody`).
pub fn work_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

pub fn config(dir: &Path) -> ExecutorConfig {
    let mut config = ExecutorConfig::new(
        Layout::new(dir.join("work"), "S1"),
        env!("CARGO_BIN_EXE_mesoblk-launcher"),
    );
    config.cgroups = None;
    config.poll_interval = Duration::from_millis(10);
    config.kill_grace = Duration::from_secs(10);
    config.launch_timeout = Duration::from_secs(10);
    config.agent_endpoint = "127.0.0.1:5051".into();
    config
}

pub fn executor(config: ExecutorConfig) -> (CommandExecutor, Receiver<TaskUpdate>) {
    let (tx, rx) = channel();
    let exec = CommandExecutor::new(config, Arc::new(tx)).unwrap();
    (exec, rx)
}

pub fn framework(killing_state: bool) -> FrameworkInfo {
    let capabilities = if killing_state {
        vec![framework_info::Capability {
            r#type: Some(framework_info::capability::Type::TaskKillingState as i32),
        }]
    } else {
        Vec::new()
    };
    FrameworkInfo {
        user: String::new(),
        name: "test".into(),
        id: Some(FrameworkId {
            value: FRAMEWORK.into(),
        }),
        checkpoint: Some(true),
        capabilities,
        ..Default::default()
    }
}

pub fn shell_task(id: &str, command: &str) -> TaskInfo {
    TaskInfo {
        name: id.into(),
        task_id: TaskId { value: id.into() },
        command: Some(CommandInfo {
            shell: Some(true),
            value: Some(command.into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn argv_task(id: &str, program: &str, args: &[&str]) -> TaskInfo {
    TaskInfo {
        name: id.into(),
        task_id: TaskId { value: id.into() },
        command: Some(CommandInfo {
            shell: Some(false),
            value: Some(program.into()),
            arguments: args.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn with_grace(mut task: TaskInfo, grace: Duration) -> TaskInfo {
    task.kill_policy = Some(KillPolicy {
        grace_period: Some(DurationInfo {
            nanoseconds: grace.as_nanos() as i64,
        }),
    });
    task
}

pub fn key(task: &str) -> TaskKey {
    TaskKey::new(FRAMEWORK, task)
}

/// The next update, within [`WAIT`].
pub fn next(rx: &Receiver<TaskUpdate>) -> TaskStatus {
    let update = rx.recv_timeout(WAIT).expect("a status update in time");
    assert_eq!(update.framework_id, FRAMEWORK);
    update.status
}

/// Updates until a terminal one (within [`WAIT`] overall); returns them all.
pub fn until_terminal(rx: &Receiver<TaskUpdate>) -> Vec<TaskStatus> {
    let deadline = Instant::now() + WAIT;
    let mut all = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let update = rx.recv_timeout(left).expect("a terminal update in time");
        let state = status_state(&update.status);
        all.push(update.status);
        if mesoblk_agent::status::is_terminal(state) {
            return all;
        }
    }
}

pub fn states(updates: &[TaskStatus]) -> Vec<TaskState> {
    updates.iter().map(status_state).collect()
}

pub fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path.as_ref())
        .unwrap_or_else(|e| panic!("read {}: {e}", path.as_ref().display()))
}

/// Waits (bounded) until `f` holds.
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether a process exists and is not a zombie.
pub fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        let state = s[s.rfind(')').unwrap() + 2..].chars().next().unwrap();
        state != 'Z' && state != 'X'
    })
}

/// Reads a pid a task wrote into its sandbox.
pub fn pid_file(sandbox: &Path, name: &str) -> i32 {
    let path: PathBuf = sandbox.join(name);
    eventually(&format!("{} to be written", path.display()), || {
        std::fs::read_to_string(&path).is_ok_and(|s| s.ends_with('\n'))
    });
    read(&path).trim().parse().unwrap()
}
