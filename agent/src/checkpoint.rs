//! Checkpoints: what the agent writes so that, after its own restart, it finds the tasks it
//! started and the processes running them.
//!
//! # Layout
//!
//! Mesos's own layout, under the agent's `--work_dir` (every id is one path component made by
//! [`path_component`], so no id can climb out of its folder):
//!
//! ```text
//! <work_dir>/meta/slaves/<agent>/frameworks/<fw>/framework.info          FrameworkInfo (protobuf)
//!   .../executors/<ex>/executor.info                                     ExecutorInfo (protobuf)
//!   .../executors/<ex>/runs/<container>/run.json                         RunRecord (JSON)
//!   .../executors/<ex>/runs/<container>/launcher.status                  written by the launcher
//!   .../executors/<ex>/runs/<container>/tasks/<task>/task.info           TaskInfo (protobuf)
//! <work_dir>/meta/slaves/<agent>/status/                                 status updates (crate::status)
//! <work_dir>/slaves/<agent>/frameworks/<fw>/executors/<ex>/runs/<container>/   the sandbox
//! ```
//!
//! # Crash safety
//!
//! Every checkpoint file is replaced whole by [`write_atomically`]: the new content goes to a
//! temporary file in the same folder, is fsynced, renamed over the old file, and the folder is
//! fsynced. After a crash a file is either its old or its new version. Left-over temporary files
//! are ignored (and removed) by [`Checkpointer::scan`].
//!
//! # Order of writes for a launch
//!
//! framework.info, executor.info and task.info first, then run.json (phase `Launching`) as soon
//! as the launcher process exists and before it is allowed to start the task, so a restarted
//! agent always knows every process group it may have started; see `crate::executor`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use mesoblk_proto::mesos::v1::{ExecutorInfo, FrameworkInfo, TaskInfo};
use prost::Message;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The version of [`RunRecord`]'s JSON; a record with another version is unreadable.
pub const RUN_RECORD_FORMAT: u32 = 1;

/// Suffix of the temporary files [`write_atomically`] renames into place.
const TMP_SUFFIX: &str = ".tmp";

/// The most runs a scan recovers; more means the folder is not ours (bounds recovery).
const MAX_RUNS: usize = 100_000;

/// A checkpoint could not be written or read.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// A file or folder operation failed.
    #[error("cannot {action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint file exists but does not decode.
    #[error("checkpoint {path} is unreadable: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

impl CheckpointError {
    /// A closure turning an I/O error into [`CheckpointError::Io`].
    pub fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| CheckpointError::Io {
            action,
            path,
            source,
        }
    }
}

/// Encodes an id (framework, executor, task, container, agent) as one path component.
///
/// ASCII letters, digits, `-` and `_` stay; `.` stays except in the first position (so `.` and
/// `..` cannot appear); every other byte becomes `%XX`. The empty id is `%`. The encoding is
/// injective and [`decode_component`] reverses it.
pub fn path_component(id: &str) -> String {
    if id.is_empty() {
        return "%".to_string();
    }
    let mut out = String::with_capacity(id.len());
    for (i, b) in id.bytes().enumerate() {
        let keep = b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (b == b'.' && i > 0);
        if keep {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    debug_assert!(!out.contains('/') && out != "." && out != "..");
    out
}

/// Reverses [`path_component`]; `None` for a name it cannot have produced.
pub fn decode_component(name: &str) -> Option<String> {
    if name == "%" {
        return Some(String::new());
    }
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = name.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Writes `bytes` to `path` atomically and durably (temporary file, fsync, rename, fsync of
/// the folder). The folder must exist.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let dir = path
        .parent()
        .expect("a checkpoint file has a parent folder");
    // Unique per call: two threads may replace the same file at once (two launches of one
    // framework both write its framework.info), and must not share a temporary file.
    static NEXT_TMP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let unique = NEXT_TMP.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tmp_name = path.file_name().expect("a file name").to_os_string();
    tmp_name.push(format!(".{}-{unique}{TMP_SUFFIX}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(CheckpointError::io("create", &tmp))?;
    file.write_all(bytes)
        .map_err(CheckpointError::io("write", &tmp))?;
    file.sync_all()
        .map_err(CheckpointError::io("fsync", &tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(CheckpointError::io("rename into place", path))?;
    sync_dir(dir)
}

/// Fsyncs a folder, making renames and new entries in it durable.
pub fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(CheckpointError::io("fsync folder", dir))
}

/// Creates `dir` and its parents; fsyncs the parent of the folder created last.
pub fn create_dirs(dir: &Path) -> Result<(), CheckpointError> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(CheckpointError::io("create folder", dir))?;
    match dir.parent() {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

/// Where the agent's checkpoints and sandboxes live (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    work_dir: PathBuf,
    agent_id: String,
}

/// The ids that name one run of one executor.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RunId {
    /// The framework.
    pub framework_id: String,
    /// The executor (for a command task, the task's id, as in Mesos).
    pub executor_id: String,
    /// The container: a random UUID per launch.
    pub container_id: String,
}

impl Layout {
    /// The layout of agent `agent_id` under `work_dir`.
    pub fn new(work_dir: impl Into<PathBuf>, agent_id: impl Into<String>) -> Layout {
        Layout {
            work_dir: work_dir.into(),
            agent_id: agent_id.into(),
        }
    }

    /// The agent's `--work_dir`.
    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    /// The agent's id.
    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }

    /// `<work_dir>/meta/slaves/<agent>`.
    pub fn agent_meta_dir(&self) -> PathBuf {
        self.work_dir
            .join("meta/slaves")
            .join(path_component(&self.agent_id))
    }

    /// Where the status-update store keeps its files.
    pub fn status_dir(&self) -> PathBuf {
        self.agent_meta_dir().join("status")
    }

    /// `.../frameworks/<fw>` under the meta folder.
    pub fn framework_meta_dir(&self, framework_id: &str) -> PathBuf {
        self.agent_meta_dir()
            .join("frameworks")
            .join(path_component(framework_id))
    }

    /// `.../frameworks/<fw>/executors/<ex>` under the meta folder.
    pub fn executor_meta_dir(&self, framework_id: &str, executor_id: &str) -> PathBuf {
        self.framework_meta_dir(framework_id)
            .join("executors")
            .join(path_component(executor_id))
    }

    /// `.../executors/<ex>/runs/<container>` under the meta folder.
    pub fn run_meta_dir(&self, run: &RunId) -> PathBuf {
        self.executor_meta_dir(&run.framework_id, &run.executor_id)
            .join("runs")
            .join(path_component(&run.container_id))
    }

    /// The run's `run.json`.
    pub fn run_record_path(&self, run: &RunId) -> PathBuf {
        self.run_meta_dir(run).join("run.json")
    }

    /// The file the launcher writes the task's exit status into.
    pub fn launcher_status_path(&self, run: &RunId) -> PathBuf {
        self.run_meta_dir(run).join("launcher.status")
    }

    /// The run's `tasks/<task>/task.info`.
    pub fn task_info_path(&self, run: &RunId, task_id: &str) -> PathBuf {
        self.run_meta_dir(run)
            .join("tasks")
            .join(path_component(task_id))
            .join("task.info")
    }

    /// The run's sandbox: `<work_dir>/slaves/<agent>/frameworks/<fw>/executors/<ex>/runs/<c>`.
    pub fn sandbox_dir(&self, run: &RunId) -> PathBuf {
        self.work_dir
            .join("slaves")
            .join(path_component(&self.agent_id))
            .join("frameworks")
            .join(path_component(&run.framework_id))
            .join("executors")
            .join(path_component(&run.executor_id))
            .join("runs")
            .join(path_component(&run.container_id))
    }
}

/// Where a run is in its life, as last checkpointed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum RunPhase {
    /// The launcher exists; the task may or may not have started.
    Launching,
    /// The task started and TASK_RUNNING was reported.
    Running,
    /// A kill was requested at `requested_unix_ms` with `grace_ms` before SIGKILL.
    Killing {
        /// When the kill was requested (wall clock, ms since the epoch).
        requested_unix_ms: u64,
        /// The grace period between SIGTERM and SIGKILL.
        grace_ms: u64,
    },
    /// The terminal status update was reported; nothing is left to watch.
    Terminated {
        /// The terminal state's Mesos name (`TASK_FINISHED`, ...).
        state: String,
    },
}

/// What the agent needs to find one run's process group again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Always [`RUN_RECORD_FORMAT`].
    pub format: u32,
    /// The run's ids.
    pub run: RunId,
    /// The task the run executes.
    pub task_id: String,
    /// The launcher's pid: the leader of the run's session and process group.
    pub pid: i32,
    /// The launcher's start time (`/proc/<pid>/stat` field 22, clock ticks since boot), to tell
    /// it from a later process that reused its pid.
    pub start_ticks: u64,
    /// The sandbox folder.
    pub sandbox: PathBuf,
    /// The run's cgroup, when it has one.
    pub cgroup: Option<PathBuf>,
    /// When the run was launched (wall clock, ms since the epoch).
    pub launched_unix_ms: u64,
    /// Where the run is.
    #[serde(flatten)]
    pub phase: RunPhase,
}

/// One run found by [`Checkpointer::scan`].
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointedRun {
    /// The framework.
    pub framework: FrameworkInfo,
    /// The executor.
    pub executor: ExecutorInfo,
    /// The task.
    pub task: TaskInfo,
    /// The run.
    pub record: RunRecord,
}

/// What [`Checkpointer::scan`] found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Every readable run, sorted by ids.
    pub runs: Vec<CheckpointedRun>,
    /// Checkpoint files that could not be read, with why (left on disk for an operator).
    pub unreadable: Vec<CheckpointError>,
}

/// Reads and writes the checkpoint files of one agent.
#[derive(Clone, Debug)]
pub struct Checkpointer {
    layout: Layout,
}

impl Checkpointer {
    /// The checkpoints of `layout`'s agent.
    pub fn new(layout: Layout) -> Checkpointer {
        Checkpointer { layout }
    }

    /// The layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Writes framework.info, executor.info and task.info of a run about to start.
    pub fn write_infos(
        &self,
        run: &RunId,
        framework: &FrameworkInfo,
        executor: &ExecutorInfo,
        task: &TaskInfo,
    ) -> Result<(), CheckpointError> {
        let fw_dir = self.layout.framework_meta_dir(&run.framework_id);
        create_dirs(&fw_dir)?;
        write_atomically(&fw_dir.join("framework.info"), &framework.encode_to_vec())?;
        let ex_dir = self
            .layout
            .executor_meta_dir(&run.framework_id, &run.executor_id);
        create_dirs(&ex_dir)?;
        write_atomically(&ex_dir.join("executor.info"), &executor.encode_to_vec())?;
        let task_path = self.layout.task_info_path(run, &task.task_id.value);
        create_dirs(task_path.parent().expect("task.info has a folder"))?;
        write_atomically(&task_path, &task.encode_to_vec())
    }

    /// Writes (replaces) a run's `run.json`.
    pub fn write_run(&self, record: &RunRecord) -> Result<(), CheckpointError> {
        assert_eq!(record.format, RUN_RECORD_FORMAT);
        assert!(record.pid > 0, "a run record names a real process");
        let path = self.layout.run_record_path(&record.run);
        create_dirs(path.parent().expect("run.json has a folder"))?;
        let json = serde_json::to_vec_pretty(record).expect("run records always serialise");
        write_atomically(&path, &json)
    }

    /// Removes a run's meta folder (and the executor's and framework's when they become empty).
    /// The sandbox is kept: it is garbage-collected separately, as in Mesos.
    pub fn remove_run(&self, run: &RunId) -> Result<(), CheckpointError> {
        let dir = self.layout.run_meta_dir(run);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(CheckpointError::io("remove", &dir)(e)),
        }
        let runs = dir.parent().expect("runs folder");
        let executor = runs.parent().expect("executor folder");
        if is_empty_dir(runs) {
            let _ = std::fs::remove_dir_all(executor);
        }
        // Best effort: the run is gone either way, and a scan ignores empty folders.
        let _ = sync_dir(executor.parent().expect("executors folder"));
        Ok(())
    }

    /// Every checkpointed run of this agent. A run whose files cannot all be read is listed in
    /// [`Scan::unreadable`] and left on disk.
    pub fn scan(&self) -> Result<Scan, CheckpointError> {
        let mut scan = Scan::default();
        let frameworks = self.layout.agent_meta_dir().join("frameworks");
        for fw_dir in list_dirs(&frameworks)? {
            let framework: FrameworkInfo = match read_proto(&fw_dir.join("framework.info")) {
                Ok(f) => f,
                Err(e) => {
                    scan.unreadable.push(e);
                    continue;
                }
            };
            for ex_dir in list_dirs(&fw_dir.join("executors"))? {
                let executor: ExecutorInfo = match read_proto(&ex_dir.join("executor.info")) {
                    Ok(e) => e,
                    Err(e) => {
                        scan.unreadable.push(e);
                        continue;
                    }
                };
                for run_dir in list_dirs(&ex_dir.join("runs"))? {
                    if scan.runs.len() >= MAX_RUNS {
                        return Err(CheckpointError::Corrupt {
                            path: frameworks,
                            reason: format!("more than {MAX_RUNS} runs"),
                        });
                    }
                    match read_run(&run_dir, &framework, &executor) {
                        Ok(Some(run)) => scan.runs.push(run),
                        Ok(None) => {}
                        Err(e) => scan.unreadable.push(e),
                    }
                }
            }
        }
        scan.runs.sort_by(|a, b| a.record.run.cmp(&b.record.run));
        Ok(scan)
    }
}

/// Reads one run folder; `None` when it has no run.json yet (the agent died before the
/// launcher existed, so there is no process to find).
fn read_run(
    run_dir: &Path,
    framework: &FrameworkInfo,
    executor: &ExecutorInfo,
) -> Result<Option<CheckpointedRun>, CheckpointError> {
    let record_path = run_dir.join("run.json");
    let bytes = match std::fs::read(&record_path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CheckpointError::io("read", &record_path)(e)),
    };
    let record: RunRecord =
        serde_json::from_slice(&bytes).map_err(|e| CheckpointError::Corrupt {
            path: record_path.clone(),
            reason: e.to_string(),
        })?;
    if record.format != RUN_RECORD_FORMAT || record.pid <= 0 {
        return Err(CheckpointError::Corrupt {
            path: record_path,
            reason: format!(
                "format {} or pid {} is not valid",
                record.format, record.pid
            ),
        });
    }
    let task_path = run_dir
        .join("tasks")
        .join(path_component(&record.task_id))
        .join("task.info");
    let task: TaskInfo = read_proto(&task_path)?;
    Ok(Some(CheckpointedRun {
        framework: framework.clone(),
        executor: executor.clone(),
        task,
        record,
    }))
}

fn read_proto<M: Message + Default>(path: &Path) -> Result<M, CheckpointError> {
    let bytes = std::fs::read(path).map_err(CheckpointError::io("read", path))?;
    M::decode(bytes.as_slice()).map_err(|e| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// The sub-folders of `dir` (none when it does not exist), removing left-over temporary files.
fn list_dirs(dir: &Path) -> Result<Vec<PathBuf>, CheckpointError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(CheckpointError::io("list", dir)(e)),
    };
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(CheckpointError::io("list", dir))?;
        let path = entry.path();
        if path.is_dir() {
            dirs.push(path);
        }
    }
    dirs.sort();
    Ok(dirs)
}

fn is_empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none())
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use mesoblk_proto::mesos::v1::{ExecutorId, FrameworkId, TaskId};
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn path_components_cannot_escape() {
        assert_eq!(path_component("task-1_a.b"), "task-1_a.b");
        assert_eq!(path_component("."), "%2E");
        assert_eq!(path_component(".."), "%2E.");
        assert_eq!(path_component("a/b"), "a%2Fb");
        assert_eq!(path_component(""), "%");
        assert_eq!(path_component("é"), "%C3%A9");
    }

    proptest! {
        #[test]
        fn path_component_round_trips(id in ".{0,40}") {
            let name = path_component(&id);
            prop_assert!(!name.contains('/'));
            prop_assert!(name != "." && name != "..");
            prop_assert_eq!(decode_component(&name), Some(id));
        }
    }

    fn ids() -> RunId {
        RunId {
            framework_id: "fw-1".into(),
            executor_id: "task/1".into(),
            container_id: "c1".into(),
        }
    }

    fn record(run: RunId) -> RunRecord {
        RunRecord {
            format: RUN_RECORD_FORMAT,
            run,
            task_id: "task/1".into(),
            pid: 4242,
            start_ticks: 99,
            sandbox: "/tmp/sandbox".into(),
            cgroup: None,
            launched_unix_ms: 1,
            phase: RunPhase::Killing {
                requested_unix_ms: 5,
                grace_ms: 3000,
            },
        }
    }

    #[test]
    fn infos_and_runs_round_trip_through_a_scan() {
        let dir = tempfile::tempdir().unwrap();
        let cp = Checkpointer::new(Layout::new(dir.path(), "agent-1"));
        let run = ids();
        let framework = FrameworkInfo {
            user: "root".into(),
            name: "fw".into(),
            id: Some(FrameworkId {
                value: "fw-1".into(),
            }),
            ..Default::default()
        };
        let executor = ExecutorInfo {
            executor_id: ExecutorId {
                value: "task/1".into(),
            },
            ..Default::default()
        };
        let task = TaskInfo {
            name: "t".into(),
            task_id: TaskId {
                value: "task/1".into(),
            },
            ..Default::default()
        };
        cp.write_infos(&run, &framework, &executor, &task).unwrap();
        // No run.json yet: nothing to recover.
        assert!(cp.scan().unwrap().runs.is_empty());
        cp.write_run(&record(run.clone())).unwrap();
        let scan = cp.scan().unwrap();
        assert!(scan.unreadable.is_empty());
        assert_eq!(scan.runs.len(), 1);
        assert_eq!(scan.runs[0].framework, framework);
        assert_eq!(scan.runs[0].task, task);
        assert_eq!(scan.runs[0].record, record(run.clone()));

        // A corrupt run.json is reported, not fatal.
        std::fs::write(cp.layout().run_record_path(&run), b"{not json").unwrap();
        let scan = cp.scan().unwrap();
        assert!(scan.runs.is_empty());
        assert_eq!(scan.unreadable.len(), 1);

        cp.remove_run(&run).unwrap();
        assert!(!cp.layout().run_meta_dir(&run).exists());
        assert!(cp.scan().unwrap().unreadable.is_empty());
    }

    #[test]
    fn atomic_writes_replace_whole_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert!(!dir.path().join("f.tmp").exists());
    }

    #[test]
    fn sandbox_layout_is_mesos_like() {
        let layout = Layout::new("/w", "S1");
        assert_eq!(
            layout.sandbox_dir(&ids()),
            PathBuf::from("/w/slaves/S1/frameworks/fw-1/executors/task%2F1/runs/c1")
        );
        assert_eq!(
            layout.task_info_path(&ids(), "task/1"),
            PathBuf::from(
                "/w/meta/slaves/S1/frameworks/fw-1/executors/task%2F1/runs/c1/tasks/task%2F1/task.info"
            )
        );
    }
}
