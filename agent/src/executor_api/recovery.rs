//! The checkpoints of custom executors, and reading them back after an agent restart.
//!
//! Per run, next to the command executor's files (see `crate::checkpoint`):
//! `executor_api.json` ([`ExecutorRecord`]: the launcher's pid and start time), written before
//! the executor may start, and `tasks/<task>/task.info` + `task.state` (the last state its
//! executor reported). A task's folder goes when its terminal update arrives.

use std::path::{Path, PathBuf};

use mesoblk_proto::mesos::v1::{ExecutorInfo, FrameworkInfo, TaskInfo, TaskState};
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{
    create_dirs, unix_ms_now, write_atomically, CheckpointError, Checkpointer, RunId,
};

/// The version of [`ExecutorRecord`]'s JSON.
pub(super) const EXECUTOR_RECORD_FORMAT: u32 = 1;

const RECORD_FILE: &str = "executor_api.json";
const STATE_FILE: &str = "task.state";

/// What finds a custom executor's process group again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ExecutorRecord {
    /// Always [`EXECUTOR_RECORD_FORMAT`].
    pub format: u32,
    /// The run.
    pub run: RunId,
    /// The launcher's pid (the group's id).
    pub pid: i32,
    /// The launcher's start time.
    pub start_ticks: u64,
    /// The sandbox.
    pub sandbox: PathBuf,
    /// When it was launched (ms since the epoch).
    pub launched_unix_ms: u64,
    /// Its cgroup, if it has one (absent in records written before executors had cgroups).
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
}

impl ExecutorRecord {
    /// The record of a launcher just spawned.
    pub(super) fn new(run: &RunId, pid: i32, start_ticks: u64, sandbox: &Path) -> ExecutorRecord {
        ExecutorRecord {
            format: EXECUTOR_RECORD_FORMAT,
            run: run.clone(),
            pid,
            start_ticks,
            sandbox: sandbox.to_path_buf(),
            launched_unix_ms: unix_ms_now(),
            cgroup: None,
        }
    }
}

/// One run found again, with its tasks and their last reported states.
#[derive(Clone, Debug)]
pub(super) struct RecoveredExecutor {
    /// Its framework.
    pub framework: FrameworkInfo,
    /// The executor.
    pub executor: ExecutorInfo,
    /// Its process.
    pub record: ExecutorRecord,
    /// Its tasks (TASK_STAGING when the executor never reported on one).
    pub tasks: Vec<(TaskInfo, TaskState)>,
}

/// Writes `framework.info` and `executor.info`.
pub(super) fn write_infos(
    checkpointer: &Checkpointer,
    run: &RunId,
    framework: &FrameworkInfo,
    executor: &ExecutorInfo,
) -> Result<(), CheckpointError> {
    let layout = checkpointer.layout();
    let fw_dir = layout.framework_meta_dir(&run.framework_id);
    create_dirs(&fw_dir)?;
    write_atomically(&fw_dir.join("framework.info"), &framework.encode_to_vec())?;
    let ex_dir = layout.executor_meta_dir(&run.framework_id, &run.executor_id);
    create_dirs(&ex_dir)?;
    write_atomically(&ex_dir.join("executor.info"), &executor.encode_to_vec())
}

/// Writes the run's `executor_api.json`.
pub(super) fn write_record(
    checkpointer: &Checkpointer,
    record: &ExecutorRecord,
) -> Result<(), CheckpointError> {
    let dir = checkpointer.layout().run_meta_dir(&record.run);
    create_dirs(&dir)?;
    let json = serde_json::to_vec_pretty(record).map_err(|e| CheckpointError::Corrupt {
        path: dir.join(RECORD_FILE),
        reason: e.to_string(),
    })?;
    write_atomically(&dir.join(RECORD_FILE), &json)
}

/// Writes a task's `task.info`.
pub(super) fn write_task(
    checkpointer: &Checkpointer,
    run: &RunId,
    task: &TaskInfo,
) -> Result<(), CheckpointError> {
    let path = checkpointer
        .layout()
        .task_info_path(run, &task.task_id.value);
    create_dirs(path.parent().expect("task.info has a folder"))?;
    write_atomically(&path, &task.encode_to_vec())
}

/// Writes the last state a task's executor reported; a terminal state removes the task.
pub(super) fn write_task_state(
    checkpointer: &Checkpointer,
    run: &RunId,
    task_id: &str,
    state: TaskState,
) -> Result<(), CheckpointError> {
    let info = checkpointer.layout().task_info_path(run, task_id);
    let dir = info.parent().expect("task.info has a folder");
    if crate::status::is_terminal(state) {
        return match std::fs::remove_dir_all(dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CheckpointError::io("remove", dir)(e)),
        };
    }
    write_atomically(&dir.join(STATE_FILE), state.as_str_name().as_bytes())
}

/// Every custom-executor run checkpointed under `checkpointer`'s layout. Unreadable runs are
/// logged and skipped (left on disk for an operator).
pub(super) fn scan(checkpointer: &Checkpointer) -> Result<Vec<RecoveredExecutor>, CheckpointError> {
    let frameworks = checkpointer.layout().agent_meta_dir().join("frameworks");
    let mut found = Vec::new();
    for fw_dir in list_dirs(&frameworks)? {
        for ex_dir in list_dirs(&fw_dir.join("executors"))? {
            for run_dir in list_dirs(&ex_dir.join("runs"))? {
                if !run_dir.join(RECORD_FILE).exists() {
                    continue;
                }
                match read_run(&fw_dir, &ex_dir, &run_dir) {
                    Ok(run) => found.push(run),
                    Err(e) => {
                        tracing::error!(run = %run_dir.display(), error = %e, "cannot recover an executor")
                    }
                }
            }
        }
    }
    Ok(found)
}

fn read_run(
    fw_dir: &Path,
    ex_dir: &Path,
    run_dir: &Path,
) -> Result<RecoveredExecutor, CheckpointError> {
    let framework: FrameworkInfo = read_proto(&fw_dir.join("framework.info"))?;
    let executor: ExecutorInfo = read_proto(&ex_dir.join("executor.info"))?;
    let path = run_dir.join(RECORD_FILE);
    let bytes = std::fs::read(&path).map_err(CheckpointError::io("read", &path))?;
    let record: ExecutorRecord =
        serde_json::from_slice(&bytes).map_err(|e| CheckpointError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    if record.format != EXECUTOR_RECORD_FORMAT || record.pid <= 0 {
        return Err(CheckpointError::Corrupt {
            path,
            reason: format!(
                "format {} or pid {} is not valid",
                record.format, record.pid
            ),
        });
    }
    let mut tasks = Vec::new();
    for task_dir in list_dirs(&run_dir.join("tasks"))? {
        let task: TaskInfo = read_proto(&task_dir.join("task.info"))?;
        let state = std::fs::read_to_string(task_dir.join(STATE_FILE))
            .ok()
            .and_then(|s| TaskState::from_str_name(s.trim()))
            .unwrap_or(TaskState::TaskStaging);
        tasks.push((task, state));
    }
    Ok(RecoveredExecutor {
        framework,
        executor,
        record,
        tasks,
    })
}

fn read_proto<M: Message + Default>(path: &Path) -> Result<M, CheckpointError> {
    let bytes = std::fs::read(path).map_err(CheckpointError::io("read", path))?;
    M::decode(bytes.as_slice()).map_err(|e| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn list_dirs(dir: &Path) -> Result<Vec<PathBuf>, CheckpointError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(CheckpointError::io("list", dir)(e)),
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    Ok(dirs)
}
