//! The checkpoints of custom executors, and reading them back after an agent restart.
//!
//! Per run, next to the command executor's files (see `crate::checkpoint`):
//! `executor_api.json` ([`ExecutorRecord`]: the launcher's pid and start time), written before
//! the executor may start, and `tasks/<task>/task.info` + `task.io.json` (the `io.max` limits
//! of its devices, as written in the executor's group) + `task.state` (the last state its
//! executor reported). A task's folder goes when its terminal update arrives.
//!
//! A recovered task gets back its resources (in `task.info`) and its devices' limits, so the
//! group shrinks after a restart exactly as it does without: the ended task's devices lose
//! their lines. A task checkpointed without `task.io.json` (by an agent before it existed, or
//! with an unreadable one: logged) is recovered without limits, and its lines stay as written.

use std::path::{Path, PathBuf};

use mesoblk_proto::mesos::v1::{ExecutorInfo, FrameworkInfo, TaskInfo, TaskState};
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{
    create_dirs, unix_ms_now, write_atomically, CheckpointError, Checkpointer, RunId,
};
use crate::executor::IoLimits;

/// The version of [`ExecutorRecord`]'s JSON.
pub(super) const EXECUTOR_RECORD_FORMAT: u32 = 1;

const RECORD_FILE: &str = "executor_api.json";
const STATE_FILE: &str = "task.state";
const IO_FILE: &str = "task.io.json";

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
    /// Its tasks.
    pub tasks: Vec<RecoveredTask>,
}

/// One task of a recovered run.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct RecoveredTask {
    /// The task as launched.
    pub info: TaskInfo,
    /// The last state its executor reported (TASK_STAGING when it never reported on it).
    pub state: TaskState,
    /// Its devices' `io.max` limits (empty without `task.io.json`).
    pub io: Vec<IoLimits>,
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

/// Writes a task's `task.io.json` (its devices' limits `io`), then its `task.info`: a task
/// found after a crash has both, unless an older agent wrote it.
pub(super) fn write_task(
    checkpointer: &Checkpointer,
    run: &RunId,
    task: &TaskInfo,
    io: &[IoLimits],
) -> Result<(), CheckpointError> {
    let path = checkpointer
        .layout()
        .task_info_path(run, &task.task_id.value);
    let dir = path.parent().expect("task.info has a folder");
    create_dirs(dir)?;
    let json = serde_json::to_vec(io).map_err(|e| CheckpointError::Corrupt {
        path: dir.join(IO_FILE),
        reason: e.to_string(),
    })?;
    write_atomically(&dir.join(IO_FILE), &json)?;
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
        let io = read_io(&task_dir.join(IO_FILE));
        tasks.push(RecoveredTask {
            info: task,
            state,
            io,
        });
    }
    Ok(RecoveredExecutor {
        framework,
        executor,
        record,
        tasks,
    })
}

/// A task's devices' limits; none when the file is missing (an older agent's checkpoint) or
/// unreadable (logged: the task is still recovered, its lines stay as written).
fn read_io(path: &Path) -> Vec<IoLimits> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot read a task's io limits");
            return Vec::new();
        }
    };
    serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        tracing::warn!(file = %path.display(), error = %e, "corrupt io limits of a task; ignored");
        Vec::new()
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

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use mesoblk_proto::mesos::v1::{ExecutorId, TaskId};
    use mesoblk_proto::resource::scalar;

    use super::*;
    use crate::checkpoint::Layout;
    use crate::executor_api::registry::ExecutorEntry;

    fn device(minor: u32, riops: u64) -> IoLimits {
        IoLimits {
            major: 259,
            minor,
            riops: Some(riops),
            ..Default::default()
        }
    }

    fn task(id: &str, cpus: f64) -> TaskInfo {
        TaskInfo {
            task_id: TaskId { value: id.into() },
            resources: vec![scalar("cpus", cpus)],
            ..Default::default()
        }
    }

    /// A run as `ExecutorApi::launch` checkpoints it: an executor with 0.1 cpus, t1 (0.5 cpus,
    /// device 259:1), t2 (1 cpu, device 259:2, reported running) and t3 (0.25 cpus, no device,
    /// checkpointed by an agent that wrote no `task.io.json`).
    fn checkpoint_run(checkpointer: &Checkpointer) -> RunId {
        let run = RunId {
            framework_id: "fw".into(),
            executor_id: "ex".into(),
            container_id: "c1".into(),
        };
        let executor = ExecutorInfo {
            executor_id: ExecutorId { value: "ex".into() },
            resources: vec![scalar("cpus", 0.1)],
            ..Default::default()
        };
        write_infos(checkpointer, &run, &FrameworkInfo::default(), &executor).unwrap();
        let mut record = ExecutorRecord::new(&run, 4242, 7, Path::new("/sandbox"));
        record.cgroup = Some("/sys/fs/cgroup/mesoblk/c1".into());
        write_record(checkpointer, &record).unwrap();
        write_task(checkpointer, &run, &task("t1", 0.5), &[device(1, 10)]).unwrap();
        write_task(checkpointer, &run, &task("t2", 1.0), &[device(2, 20)]).unwrap();
        write_task_state(checkpointer, &run, "t2", TaskState::TaskRunning).unwrap();
        write_task(checkpointer, &run, &task("t3", 0.25), &[]).unwrap();
        let t3 = checkpointer.layout().task_info_path(&run, "t3");
        std::fs::remove_file(t3.with_file_name(IO_FILE)).unwrap();
        run
    }

    #[test]
    fn a_recovered_executor_gets_back_its_tasks_devices_and_shrinks_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let checkpointer = Checkpointer::new(Layout::new(dir.path(), "S1"));
        let run = checkpoint_run(&checkpointer);
        let mut found = scan(&checkpointer).unwrap();
        assert_eq!(found.len(), 1);
        let recovered = found.remove(0);
        let io: Vec<(&str, TaskState, &[IoLimits])> = recovered
            .tasks
            .iter()
            .map(|t| (t.info.task_id.value.as_str(), t.state, t.io.as_slice()))
            .collect();
        assert_eq!(
            io,
            [
                ("t1", TaskState::TaskStaging, &[device(1, 10)][..]),
                ("t2", TaskState::TaskRunning, &[device(2, 20)][..]),
                ("t3", TaskState::TaskStaging, &[][..]),
            ]
        );

        let (_, mut entry) = ExecutorEntry::recovered(recovered, Instant::now());
        assert_eq!(entry.run, run);
        let limits = entry.limits();
        assert!((limits.cpus.unwrap() - 1.85).abs() < 1e-9);
        assert_eq!(limits.io, [device(1, 10), device(2, 20)]);

        // t1 ends: what the group is rewritten with (as `Inner::shrink` does) drops its cpus
        // and removes its device's line.
        let t1 = entry.tasks.get_mut("t1").unwrap();
        t1.state = TaskState::TaskFinished;
        let ended = t1.io.clone();
        let mut shrunk = entry.limits();
        crate::executor_api::cgroup::release(&mut shrunk, &ended);
        assert!((shrunk.cpus.unwrap() - 1.35).abs() < 1e-9);
        assert_eq!(shrunk.io, [device(2, 20), device(1, 10).unlimited()]);
    }

    #[test]
    fn an_unreadable_io_file_recovers_the_task_without_limits() {
        let dir = tempfile::tempdir().unwrap();
        let checkpointer = Checkpointer::new(Layout::new(dir.path(), "S1"));
        let run = checkpoint_run(&checkpointer);
        let t1 = checkpointer.layout().task_info_path(&run, "t1");
        std::fs::write(t1.with_file_name(IO_FILE), b"{not json").unwrap();
        let recovered = scan(&checkpointer).unwrap().remove(0);
        let t1 = &recovered.tasks[0];
        assert_eq!(t1.info.task_id.value, "t1");
        assert!(t1.io.is_empty());
        assert_eq!(recovered.tasks[1].io, [device(2, 20)]);
    }
}
