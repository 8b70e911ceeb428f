//! Shared fixture of the host-tier storage tests: a temporary root with an allowed pool folder,
//! a work dir, a fake device folder and a sandbox, and a storage manager on fake host services.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};

use mesoblk_agent::storage::config::MIB;
use mesoblk_agent::storage::resources::raw_disk;
use mesoblk_agent::storage::testing::FakeHost;
use mesoblk_agent::storage::{Storage, StorageConfig, StorageOptions};
use mesoblk_proto::mesos::v1::offer::operation::{CreateDisk, DestroyDisk};
use mesoblk_proto::mesos::v1::resource::disk_info::source;
use mesoblk_proto::mesos::v1::Resource;

/// Pool size in the default configuration, and its overcommit.
pub const POOL_MB: u64 = 1024;
pub const OVERCOMMIT: f64 = 2.0;
/// What the pool may hold: `POOL_MB × OVERCOMMIT`.
pub const CAPACITY_MB: u64 = 2048;

pub struct Fixture {
    pub root: tempfile::TempDir,
    pub allowed: PathBuf,
    pub pool_dir: PathBuf,
    pub work_dir: PathBuf,
    pub dev_dir: PathBuf,
    pub sandbox: PathBuf,
    pub fakes: FakeHost,
}

impl Fixture {
    pub fn new() -> Fixture {
        let root = tempfile::tempdir().expect("temp dir");
        let allowed = root.path().join("pools");
        let pool_dir = allowed.join("local");
        let work_dir = root.path().join("work");
        let dev_dir = root.path().join("dev");
        let sandbox = root.path().join("sandbox");
        for dir in [&allowed, &work_dir, &dev_dir, &sandbox] {
            std::fs::create_dir_all(dir).expect("mkdir");
        }
        let fakes = FakeHost::new(&dev_dir);
        Fixture {
            root,
            allowed,
            pool_dir,
            work_dir,
            dev_dir,
            sandbox,
            fakes,
        }
    }

    /// One pool (`local`, 1 GiB × 2) with two profiles: `fast` (ext4) and `bulk` (xfs).
    pub fn config(&self) -> StorageConfig {
        StorageConfig::from_str(&format!(
            r#"{{
                "pools": [{{"name": "local", "dir": "{}", "size": "{POOL_MB}M", "overcommit": {OVERCOMMIT}}}],
                "profiles": [
                    {{"name": "fast", "pool": "local", "qos": {{"total_ops": {{"ops_per_sec": 1000}}}}}},
                    {{"name": "bulk", "pool": "local", "filesystem": "xfs", "depth": 32}}
                ]
            }}"#,
            self.pool_dir.display()
        ))
        .expect("valid config")
    }

    pub fn options(&self) -> StorageOptions {
        StorageOptions::new(&self.work_dir, vec![self.allowed.clone()])
    }

    /// A storage manager on the fakes, recovered.
    pub fn open(&self) -> Storage {
        self.open_config(self.config())
    }

    pub fn open_config(&self, config: StorageConfig) -> Storage {
        let mut storage =
            Storage::open_with(config, &self.options(), self.fakes.host()).expect("open storage");
        storage.recover();
        storage
    }

    /// Files in the pool folder.
    pub fn pool_files(&self) -> Vec<PathBuf> {
        list(&self.pool_dir)
    }

    /// Files in the volume records folder.
    pub fn record_files(&self) -> Vec<PathBuf> {
        list(&self.work_dir.join("storage/volumes"))
    }

    /// Asserts a failed request left nothing: no backing file, no record, no device, no mount.
    pub fn assert_nothing_left(&self, volumes_before: usize) {
        assert_eq!(
            self.pool_files().len(),
            volumes_before,
            "{:?}",
            self.pool_files()
        );
        assert_eq!(
            self.record_files().len(),
            volumes_before,
            "{:?}",
            self.record_files()
        );
        assert!(self.fakes.devices.devices().is_empty(), "devices left");
        assert!(self.fakes.mounter.mounts().is_empty(), "mounts left");
    }
}

pub fn list(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

/// A RAW slice of `mb` MB of `profile` from this storage's provider.
pub fn raw(storage: &Storage, profile: &str, mb: u64) -> Resource {
    raw_disk(storage.provider_id(), profile, mb)
}

pub fn create_op(storage: &Storage, profile: &str, mb: u64, target: source::Type) -> CreateDisk {
    CreateDisk {
        source: raw(storage, profile, mb),
        target_type: target as i32,
        target_profile: None,
    }
}

/// Creates a volume and returns its converted resource.
pub fn create(storage: &mut Storage, profile: &str, mb: u64, target: source::Type) -> Resource {
    let op = create_op(storage, profile, mb, target);
    let mut converted = storage.create_disk(&op, None).expect("create_disk");
    assert_eq!(converted.len(), 1);
    converted.remove(0)
}

pub fn destroy(storage: &mut Storage, disk: &Resource) -> Resource {
    let mut converted = storage
        .destroy_disk(&DestroyDisk {
            source: disk.clone(),
        })
        .expect("destroy_disk");
    converted.remove(0)
}

/// The id of a BLOCK/MOUNT disk resource.
pub fn disk_id(disk: &Resource) -> String {
    disk.disk
        .as_ref()
        .and_then(|d| d.source.as_ref())
        .and_then(|s| s.id.clone())
        .expect("disk id")
}

/// (profile, MB) of a RAW disk.
pub type RawSummary = (String, u64);
/// (id, type, MB) of a BLOCK or MOUNT disk.
pub type VolumeSummary = (String, String, u64);

/// Every RAW disk in `resources`, and every other disk.
pub fn summary(resources: &[Resource]) -> (Vec<RawSummary>, Vec<VolumeSummary>) {
    let mut raws = Vec::new();
    let mut volumes = Vec::new();
    for r in resources {
        let source = r
            .disk
            .as_ref()
            .and_then(|d| d.source.as_ref())
            .expect("disk");
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let mb = r.scalar.expect("scalar").value as u64;
        if source.r#type() == source::Type::Raw {
            raws.push((source.profile.clone().expect("profile"), mb));
        } else {
            volumes.push((
                source.id.clone().expect("id"),
                source.r#type().as_str_name().to_owned(),
                mb,
            ));
        }
    }
    (raws, volumes)
}

/// Bytes actually allocated to a file (sparse files have few).
pub fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).expect("metadata").blocks() * 512
}

pub const MB: u64 = MIB;
