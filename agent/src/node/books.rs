//! The agent's task books: every task it accepted whose terminal update the scheduler has not
//! acknowledged yet, with its framework, kept in the work dir so a restarted agent can report
//! them when it re-registers (the master books their resources from them).
//!
//! Layout under `<work_dir>/meta/slaves/<agent>/books/`: `<fw>/framework.info`
//! (`FrameworkInfo`) and `<fw>/<task>.task` (`Task`, as the master was told about it), every id
//! encoded by [`path_component`]. Files are replaced atomically; a task's file goes when its
//! stream is complete. The task's state is not kept here: the status-update store has it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mesoblk_proto::mesos::v1::{FrameworkInfo, Task};
use prost::Message;

use crate::checkpoint::{
    create_dirs, decode_component, path_component, write_atomically, CheckpointError,
};
use crate::status::TaskKey;

const TASK_SUFFIX: &str = ".task";
const FRAMEWORK_FILE: &str = "framework.info";

/// The tasks and frameworks the agent keeps, in memory and on disk.
#[derive(Debug)]
pub struct TaskBooks {
    dir: PathBuf,
    frameworks: BTreeMap<String, FrameworkInfo>,
    tasks: BTreeMap<TaskKey, Task>,
}

impl TaskBooks {
    /// Opens (creating) the books in `dir` and reads them back; unreadable files are listed in
    /// the second value and left on disk.
    pub fn open(dir: &Path) -> Result<(TaskBooks, Vec<String>), CheckpointError> {
        create_dirs(dir)?;
        let mut books = TaskBooks {
            dir: dir.to_path_buf(),
            frameworks: BTreeMap::new(),
            tasks: BTreeMap::new(),
        };
        let mut problems = Vec::new();
        let entries = std::fs::read_dir(dir).map_err(CheckpointError::io("list", dir))?;
        for fw_dir in entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()) {
            books.load_framework(&fw_dir, &mut problems);
        }
        Ok((books, problems))
    }

    fn load_framework(&mut self, fw_dir: &Path, problems: &mut Vec<String>) {
        let Some(framework_id) = fw_dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(decode_component)
        else {
            return;
        };
        match read(&fw_dir.join(FRAMEWORK_FILE)) {
            Ok(info) => {
                self.frameworks.insert(framework_id.clone(), info);
            }
            Err(e) => problems.push(e),
        }
        let Ok(entries) = std::fs::read_dir(fw_dir) else {
            return;
        };
        for path in entries.flatten().map(|e| e.path()) {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let Some(task_id) = name.strip_suffix(TASK_SUFFIX).and_then(decode_component) else {
                continue;
            };
            match read::<Task>(&path) {
                Ok(task) => {
                    self.tasks
                        .insert(TaskKey::new(framework_id.clone(), task_id), task);
                }
                Err(e) => problems.push(e),
            }
        }
    }

    fn framework_dir(&self, framework_id: &str) -> PathBuf {
        self.dir.join(path_component(framework_id))
    }

    fn task_path(&self, key: &TaskKey) -> PathBuf {
        self.framework_dir(&key.framework_id)
            .join(format!("{}{TASK_SUFFIX}", path_component(&key.task_id)))
    }

    /// Books a task (and its framework) before it is launched.
    pub fn add(&mut self, framework: &FrameworkInfo, task: Task) -> Result<(), CheckpointError> {
        let key = TaskKey::new(task.framework_id.value.clone(), task.task_id.value.clone());
        let dir = self.framework_dir(&key.framework_id);
        create_dirs(&dir)?;
        write_atomically(&dir.join(FRAMEWORK_FILE), &framework.encode_to_vec())?;
        write_atomically(&self.task_path(&key), &task.encode_to_vec())?;
        self.frameworks
            .insert(key.framework_id.clone(), framework.clone());
        self.tasks.insert(key, task);
        Ok(())
    }

    /// Forgets a task (its terminal update was acknowledged); a framework without tasks goes
    /// too.
    pub fn remove(&mut self, key: &TaskKey) -> Result<(), CheckpointError> {
        self.tasks.remove(key);
        let path = self.task_path(key);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(CheckpointError::io("remove", &path)(e)),
        }
        if !self
            .tasks
            .keys()
            .any(|k| k.framework_id == key.framework_id)
        {
            self.frameworks.remove(&key.framework_id);
            let dir = self.framework_dir(&key.framework_id);
            let _ = std::fs::remove_dir_all(&dir);
        }
        Ok(())
    }

    /// A booked task.
    pub fn task(&self, key: &TaskKey) -> Option<&Task> {
        self.tasks.get(key)
    }

    /// Every booked task.
    pub fn tasks(&self) -> impl Iterator<Item = (&TaskKey, &Task)> {
        self.tasks.iter()
    }

    /// The frameworks of the booked tasks.
    pub fn frameworks(&self) -> impl Iterator<Item = (&String, &FrameworkInfo)> {
        self.frameworks.iter()
    }

    /// A booked framework.
    pub fn framework(&self, framework_id: &str) -> Option<&FrameworkInfo> {
        self.frameworks.get(framework_id)
    }
}

fn read<M: Message + Default>(path: &Path) -> Result<M, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    M::decode(bytes.as_slice()).map_err(|e| format!("{} is unreadable: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesoblk_proto::mesos::v1::{FrameworkId, TaskId};

    fn task(fw: &str, id: &str) -> Task {
        Task {
            name: id.into(),
            task_id: TaskId { value: id.into() },
            framework_id: FrameworkId { value: fw.into() },
            ..Default::default()
        }
    }

    #[test]
    fn books_survive_a_reopen_and_forget_finished_tasks() {
        let dir = tempfile::tempdir().unwrap();
        let framework = FrameworkInfo {
            name: "fw".into(),
            id: Some(FrameworkId {
                value: "f/1".into(),
            }),
            ..Default::default()
        };
        {
            let (mut books, problems) = TaskBooks::open(dir.path()).unwrap();
            assert!(problems.is_empty());
            books.add(&framework, task("f/1", "a")).unwrap();
            books.add(&framework, task("f/1", "../b")).unwrap();
        }
        let (mut books, problems) = TaskBooks::open(dir.path()).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(books.tasks().count(), 2);
        assert_eq!(books.framework("f/1"), Some(&framework));
        books.remove(&TaskKey::new("f/1", "a")).unwrap();
        books.remove(&TaskKey::new("f/1", "../b")).unwrap();
        assert!(books.framework("f/1").is_none());
        let (books, _) = TaskBooks::open(dir.path()).unwrap();
        assert_eq!(books.tasks().count(), 0);
    }
}
