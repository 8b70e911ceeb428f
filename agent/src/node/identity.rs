//! The agent's id, checkpointed in `<work_dir>/meta/slaves/latest` (Mesos's path; here a file
//! holding the id) so that a restarted agent re-registers as the same agent and finds its tasks.

use std::path::{Path, PathBuf};

use crate::checkpoint::{create_dirs, write_atomically, CheckpointError};

fn id_path(work_dir: &Path) -> PathBuf {
    work_dir.join("meta/slaves/latest")
}

/// The id of the agent that last ran in `work_dir`, if any.
pub fn load(work_dir: &Path) -> Result<Option<String>, CheckpointError> {
    let path = id_path(work_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => Ok(Some(text.trim().to_owned())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CheckpointError::io("read", &path)(e)),
    }
}

/// Records the agent's id.
pub fn store(work_dir: &Path, agent_id: &str) -> Result<(), CheckpointError> {
    let path = id_path(work_dir);
    create_dirs(path.parent().expect("the id file has a folder"))?;
    write_atomically(&path, agent_id.as_bytes())
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_id_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(super::load(dir.path()).unwrap(), None);
        super::store(dir.path(), "M-S1").unwrap();
        assert_eq!(super::load(dir.path()).unwrap().as_deref(), Some("M-S1"));
    }
}
