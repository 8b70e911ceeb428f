//! Volume records on disk: `<work dir>/storage/volumes/<id>.json`, one per volume, plus the
//! resource provider's id in `<work dir>/storage/provider_id`.
//!
//! Every write is crash-safe: the new content goes to `<name>.tmp`, is fsynced, renamed over the
//! old file, and the folder is fsynced, so after a crash a record is either the old or the new
//! version, never a mix. Left-over `.tmp` files are removed on load.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::error::StorageError;
use super::volume::{VolumeId, VolumeRecord, RECORD_FORMAT};

/// A record that could not be loaded (kept on disk for an operator to look at).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnreadableRecord {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub reason: String,
}

/// The folder of volume records.
#[derive(Clone, Debug)]
pub struct RecordStore {
    root: PathBuf,
    volumes: PathBuf,
}

impl RecordStore {
    /// Opens (creating if needed) the records under `<work_dir>/storage`.
    pub fn open(work_dir: &Path) -> Result<RecordStore, StorageError> {
        let root = work_dir.join("storage");
        let volumes = root.join("volumes");
        std::fs::create_dir_all(&volumes).map_err(StorageError::io(
            "create the volume records folder",
            &volumes,
        ))?;
        Ok(RecordStore { root, volumes })
    }

    /// The folder holding volume records.
    pub fn dir(&self) -> &Path {
        &self.volumes
    }

    /// The record file of volume `id`.
    pub fn path(&self, id: &VolumeId) -> PathBuf {
        self.volumes.join(format!("{id}.json"))
    }

    /// Writes `record` atomically and durably.
    pub fn save(&self, record: &VolumeRecord) -> Result<(), StorageError> {
        debug_assert_eq!(record.format, RECORD_FORMAT);
        let json = serde_json::to_vec_pretty(record).expect("volume records always serialise");
        write_atomically(&self.path(&record.id), &json)
    }

    /// Removes volume `id`'s record durably; a missing record is fine.
    pub fn remove(&self, id: &VolumeId) -> Result<(), StorageError> {
        let path = self.path(id);
        match std::fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.volumes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StorageError::io("remove the volume record", &path)(e)),
        }
    }

    /// Every record, sorted by id, and the files that could not be read.
    pub fn load_all(&self) -> Result<(Vec<VolumeRecord>, Vec<UnreadableRecord>), StorageError> {
        let entries = std::fs::read_dir(&self.volumes)
            .map_err(StorageError::io("list the volume records", &self.volumes))?;
        let mut records = Vec::new();
        let mut unreadable = Vec::new();
        for entry in entries {
            let path = entry
                .map_err(StorageError::io("list the volume records", &self.volumes))?
                .path();
            match path.extension().and_then(|e| e.to_str()) {
                Some("json") => match read_record(&path) {
                    Ok(record) => records.push(record),
                    Err(reason) => unreadable.push(UnreadableRecord { path, reason }),
                },
                Some("tmp") => {
                    // An interrupted write: the real record (if any) is intact.
                    let _ = std::fs::remove_file(&path);
                }
                _ => {}
            }
        }
        records.sort_by(|a, b| a.id.cmp(&b.id));
        Ok((records, unreadable))
    }

    /// The resource provider's id: read, or made (a random UUID) and saved on first use, so the
    /// agent's disk resources keep their `provider_id` across restarts.
    pub fn provider_id(&self) -> Result<String, StorageError> {
        let path = self.root.join("provider_id");
        match std::fs::read_to_string(&path) {
            Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_owned()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StorageError::io("read the resource provider id", &path)(e)),
        }
        let id = uuid::Uuid::new_v4().to_string();
        write_atomically(&path, id.as_bytes())?;
        Ok(id)
    }
}

fn read_record(path: &Path) -> Result<VolumeRecord, String> {
    let text = std::fs::read(path).map_err(|e| e.to_string())?;
    let record: VolumeRecord = serde_json::from_slice(&text).map_err(|e| e.to_string())?;
    if record.format != RECORD_FORMAT {
        return Err(format!(
            "record format {} is not {RECORD_FORMAT}",
            record.format
        ));
    }
    let expected = format!("{}.json", record.id);
    if path.file_name().and_then(|n| n.to_str()) != Some(expected.as_str()) {
        return Err(format!("the record is for volume {}", record.id));
    }
    Ok(record)
}

/// Writes `bytes` to `path` through a fsynced temporary file, renames it into place and fsyncs
/// the folder.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    let tmp = path.with_extension("tmp");
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(StorageError::io("create", &tmp))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(StorageError::io("write", &tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(StorageError::io("rename into place", path))?;
    sync_dir(path.parent().expect("record paths have a folder"))
}

/// fsyncs a folder, so a rename or unlink in it is durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StorageError::io("sync the folder", dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::volume::{Lifetime, VolumeKind, VolumeState};

    fn record(id: &str) -> VolumeRecord {
        VolumeRecord {
            format: RECORD_FORMAT,
            id: VolumeId::parse(id).unwrap(),
            pool: "p".into(),
            profile: "f".into(),
            kind: VolumeKind::Block,
            filesystem: None,
            size_bytes: 1 << 20,
            backing: format!("/srv/{id}.img").into(),
            cache: None,
            lifetime: Lifetime::Persistent,
            state: VolumeState::Ready,
            resource: None,
            operation: None,
        }
    }

    #[test]
    fn records_are_saved_loaded_and_removed() {
        let work = tempfile::tempdir().unwrap();
        let store = RecordStore::open(work.path()).unwrap();
        store.save(&record("vol-b")).unwrap();
        store.save(&record("vol-a")).unwrap();
        let mut changed = record("vol-a");
        changed.state = VolumeState::Destroying;
        store.save(&changed).unwrap();
        // Debris of an interrupted write and a corrupt record.
        std::fs::write(store.dir().join("vol-c.tmp"), b"{").unwrap();
        std::fs::write(store.dir().join("vol-d.json"), b"{").unwrap();
        std::fs::write(
            store.dir().join("vol-e.json"),
            serde_json::to_vec(&record("vol-x")).unwrap(),
        )
        .unwrap();
        let (records, unreadable) = store.load_all().unwrap();
        assert_eq!(records, vec![changed, record("vol-b")]);
        assert_eq!(unreadable.len(), 2, "{unreadable:?}");
        assert!(unreadable
            .iter()
            .any(|u| u.reason.contains("for volume vol-x")));
        assert!(!store.dir().join("vol-c.tmp").exists());
        store.remove(&VolumeId::parse("vol-a").unwrap()).unwrap();
        store.remove(&VolumeId::parse("vol-a").unwrap()).unwrap();
        assert_eq!(store.load_all().unwrap().0, vec![record("vol-b")]);
    }

    #[test]
    fn the_provider_id_is_stable() {
        let work = tempfile::tempdir().unwrap();
        let first = RecordStore::open(work.path())
            .unwrap()
            .provider_id()
            .unwrap();
        let again = RecordStore::open(work.path())
            .unwrap()
            .provider_id()
            .unwrap();
        assert_eq!(first, again);
        assert_eq!(first.len(), 36);
    }
}
