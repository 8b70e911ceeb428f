//! [`Storage`]: the agent's block pools, their volumes, and CREATE_DISK / DESTROY_DISK.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mesoblk_proto::mesos::v1::offer::operation::{self, CreateDisk, DestroyDisk};
use mesoblk_proto::mesos::v1::offer::Operation;
use mesoblk_proto::mesos::v1::resource::disk_info::source;
use mesoblk_proto::mesos::v1::{
    OperationId, OperationState, OperationStatus, Resource, ResourceProviderId,
    ResourceProviderInfo,
};
use ublk_target::daemon::DeviceRecord;

use super::config::{ProfileConfig, ResolvedPool, StorageConfig, MIB};
use super::error::StorageError;
use super::host::{DeviceControl, Host, MkfsFormatter, SystemMounter, UblkDevices};
use super::idle_servers::DEFAULT_IDLE_SERVERS;
use super::records::{sync_dir, RecordStore, UnreadableRecord};
use super::resources::{self, DiskClaim, PoolUsage};
use super::volume::{
    Lifetime, VolumeEvent, VolumeId, VolumeKind, VolumeRecord, VolumeState, RECORD_FORMAT,
};

/// Default folder for the agent's device records and server logs (separate from
/// `mesoblk-target`'s own default, so the agent only ever touches devices it started).
pub const DEFAULT_RUN_DIR: &str = "/run/mesoblk-agent/devices";

/// How the agent runs its storage (its flags, as opposed to the pools and profiles).
#[derive(Clone, Debug)]
pub struct StorageOptions {
    /// The agent's work dir; volume records live in `<work_dir>/storage`.
    pub work_dir: PathBuf,
    /// Folders block pools may live in (`--block_pool_dirs`, comma-separated on the command
    /// line). A pool outside all of them is refused at startup.
    pub block_pool_dirs: Vec<PathBuf>,
    /// Device records and server logs (default [`DEFAULT_RUN_DIR`]).
    pub run_dir: PathBuf,
    /// The `mesoblk-target` binary that serves devices (default: next to the agent's binary).
    pub target_exe: PathBuf,
    /// The mkfs programs.
    pub mkfs: MkfsFormatter,
    /// Device servers started ahead of their devices (`--block_idle_servers`).
    pub idle_servers: usize,
}

impl StorageOptions {
    /// Options with the defaults for everything but the work dir and the allow-list.
    pub fn new(work_dir: impl Into<PathBuf>, block_pool_dirs: Vec<PathBuf>) -> StorageOptions {
        StorageOptions {
            work_dir: work_dir.into(),
            block_pool_dirs,
            run_dir: DEFAULT_RUN_DIR.into(),
            target_exe: default_target_exe(),
            mkfs: MkfsFormatter::default(),
            idle_servers: DEFAULT_IDLE_SERVERS,
        }
    }
}

/// `mesoblk-target` next to the running executable (or on `PATH` if that cannot be found).
pub fn default_target_exe() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("mesoblk-target")))
        .unwrap_or_else(|| "mesoblk-target".into())
}

/// The agent's block storage: pools, profiles, volumes and their devices.
///
/// Open it with [`Storage::open`], then call [`Storage::recover`] once before anything else.
/// Methods that change volumes take `&mut self`: the agent serialises them (one lock).
pub struct Storage {
    pub(super) config: StorageConfig,
    pub(super) pools: Vec<ResolvedPool>,
    pub(super) provider_id: String,
    pub(super) records: RecordStore,
    pub(super) volumes: BTreeMap<VolumeId, VolumeRecord>,
    pub(super) unreadable: Vec<UnreadableRecord>,
    pub(super) host: Host,
    /// Volumes whose device is being started for a task (volume → task), outside the lock.
    pub(super) reserved: BTreeMap<VolumeId, String>,
    /// Spare devices ready for a task (see [`super::spares`]), by volume.
    pub(super) spares: BTreeMap<VolumeId, DeviceRecord>,
    /// Wakes the agent's spares thread.
    pub(super) spares_signal: Option<std::sync::mpsc::Sender<()>>,
    /// Set at shutdown: no spare is made or kept any more.
    pub(super) spares_closed: bool,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("pools", &self.pools)
            .field("provider_id", &self.provider_id)
            .field("volumes", &self.volumes)
            .finish_non_exhaustive()
    }
}

impl Storage {
    /// Opens the storage of a real machine: checks the pools against the allow-list, that ublk
    /// is there and that `mesoblk-target` exists (when any pool is configured), and loads the
    /// volume records. Devices are not touched until [`Storage::recover`].
    pub fn open(config: StorageConfig, options: &StorageOptions) -> Result<Storage, StorageError> {
        if !config.pools.is_empty() {
            check_ublk(Path::new(ublk_target::sys::control::CONTROL_PATH))?;
            if !options.target_exe.is_file() {
                return Err(StorageError::TargetMissing {
                    path: options.target_exe.clone(),
                });
            }
        }
        let host = Host {
            devices: Arc::new(UblkDevices::with_idle_servers(
                &options.target_exe,
                &options.run_dir,
                // Without pools no device is ever started (and the binary may be missing).
                if config.pools.is_empty() {
                    0
                } else {
                    options.idle_servers
                },
            )),
            mounter: Box::new(SystemMounter),
            formatter: Box::new(options.mkfs.clone()),
        };
        Self::open_with(config, options, host)
    }

    /// Opens the storage with the given host services (fakes, in tests).
    pub fn open_with(
        config: StorageConfig,
        options: &StorageOptions,
        host: Host,
    ) -> Result<Storage, StorageError> {
        config.validate()?;
        let pools = config.resolve(&options.block_pool_dirs)?;
        let records = RecordStore::open(&options.work_dir)?;
        let provider_id = records.provider_id()?;
        let (loaded, unreadable) = records.load_all()?;
        for bad in &unreadable {
            tracing::warn!(path = %bad.path.display(), reason = %bad.reason, "unreadable volume record");
        }
        let volumes = loaded.into_iter().map(|r| (r.id.clone(), r)).collect();
        Ok(Storage {
            config,
            pools,
            provider_id,
            records,
            volumes,
            unreadable,
            host,
            reserved: BTreeMap::new(),
            spares: BTreeMap::new(),
            spares_signal: None,
            spares_closed: false,
        })
    }

    /// The resource provider id every disk resource carries.
    pub fn provider_id(&self) -> &str {
        &self.provider_id
    }

    /// The resource provider's description, for registration.
    pub fn provider_info(&self) -> ResourceProviderInfo {
        resources::provider_info(&self.provider_id)
    }

    /// The configuration in force.
    pub fn config(&self) -> &StorageConfig {
        &self.config
    }

    /// Every volume record, by id.
    pub fn volumes(&self) -> impl Iterator<Item = &VolumeRecord> {
        self.volumes.values()
    }

    /// Volume `id`'s record.
    pub fn volume(&self, id: &VolumeId) -> Option<&VolumeRecord> {
        self.volumes.get(id)
    }

    /// Records that could not be read at open (left on disk, never touched).
    pub fn unreadable_records(&self) -> &[UnreadableRecord] {
        &self.unreadable
    }

    /// How full each pool is.
    pub fn pool_usage(&self) -> Vec<PoolUsage> {
        self.pools
            .iter()
            .map(|pool| PoolUsage::of(pool, self.volumes.values()))
            .collect()
    }

    /// The device servers, to ask for their reports without holding the storage.
    pub fn device_control(&self) -> Arc<dyn DeviceControl> {
        Arc::clone(&self.host.devices)
    }

    /// The agent's disk resources: per profile, its pool's offerable capacity as a RAW disk
    /// (none when it is 0 MB), then every persistent volume that is ready or attached (see
    /// [`resources`](super::resources) for the accounting).
    pub fn resources(&self) -> Vec<Resource> {
        let mut out = Vec::new();
        for profile in &self.config.profiles {
            let Some(pool) = self.pool(&profile.pool) else {
                continue;
            };
            let mb = PoolUsage::of(pool, self.volumes.values()).offered_mb();
            if mb > 0 {
                out.push(resources::raw_disk(&self.provider_id, &profile.name, mb));
            }
        }
        for volume in self.volumes.values() {
            let reported = matches!(volume.state, VolumeState::Ready | VolumeState::Attached(_));
            if let (true, Some(json)) = (reported, &volume.resource) {
                match mesoblk_proto::json::from_json_value::<Resource>(json) {
                    Ok(resource) => out.push(resource),
                    Err(e) => {
                        tracing::warn!(volume = %volume.id, error = %e, "unreadable resource in record")
                    }
                }
            }
        }
        out
    }

    /// CREATE_DISK: makes a volume of the source's size from its pool and returns the converted
    /// resources (a BLOCK or MOUNT disk with the new id). `operation_uuid`, when given, makes a
    /// retry of the same operation return the volume it already made.
    pub fn create_disk(
        &mut self,
        create: &CreateDisk,
        operation_uuid: Option<&str>,
    ) -> Result<Vec<Resource>, StorageError> {
        let DiskClaim::Raw { profile, mb, .. } =
            resources::classify(&create.source, &self.provider_id)?
        else {
            return Err(StorageError::BadDiskResource {
                reason: "CREATE_DISK needs a RAW disk from a pool (with a profile and no id)"
                    .into(),
            });
        };
        let kind = match create.target_type() {
            source::Type::Block => VolumeKind::Block,
            source::Type::Mount => VolumeKind::Mount,
            other => {
                return Err(StorageError::UnsupportedTarget {
                    target: other.as_str_name().to_owned(),
                })
            }
        };
        if let Some(target) = create.target_profile.as_deref() {
            if target != profile {
                return Err(StorageError::BadDiskResource {
                    reason: format!(
                        "target_profile {target:?} differs from the source's profile \
                         {profile:?}; changing profiles is not supported"
                    ),
                });
            }
        }
        let profile = self.profile(&profile)?.clone();
        if let Some(existing) = operation_uuid.and_then(|uuid| self.made_by(uuid)) {
            let resource =
                resources::volume_resource(&create.source, kind, &existing.id, &existing.pool);
            return Ok(vec![resource]);
        }
        let id = self.fresh_id(&profile);
        let resource = resources::volume_resource(&create.source, kind, &id, &profile.pool);
        let stored = serde_json::from_str(&mesoblk_proto::json::to_json(&resources::unallocated(
            &resource,
        )))
        .expect("Mesos JSON is JSON");
        let operation = operation_uuid.map(str::to_owned);
        self.create_volume(
            id,
            &profile,
            kind,
            mb,
            Lifetime::Persistent,
            Some(stored),
            operation,
        )?;
        Ok(vec![resource])
    }

    /// DESTROY_DISK: deletes a ready persistent volume and returns the converted resources (its
    /// size back as a slice of its RAW pool).
    pub fn destroy_disk(&mut self, destroy: &DestroyDisk) -> Result<Vec<Resource>, StorageError> {
        let DiskClaim::Volume { id, kind, mb, .. } =
            resources::classify(&destroy.source, &self.provider_id)?
        else {
            return Err(StorageError::BadDiskResource {
                reason: "DESTROY_DISK needs a BLOCK or MOUNT disk with an id".into(),
            });
        };
        let volume = self.checked_volume(&id, kind, mb)?;
        if volume.is_ephemeral() {
            return Err(StorageError::BadDiskResource {
                reason: format!("volume {id} belongs to a task and goes away with it"),
            });
        }
        let profile = volume.profile.clone();
        self.check_unreserved(&id, "destroy")?;
        self.destroy_volume(&id)?;
        Ok(vec![resources::pool_resource(&destroy.source, &profile)])
    }

    /// Applies a CREATE_DISK or DESTROY_DISK and says how it went, as the `OperationStatus` to
    /// report (`OPERATION_FINISHED` with the converted resources, or `OPERATION_FAILED` with a
    /// one-line message). The caller adds `uuid` and `agent_id`.
    pub fn apply_operation(
        &mut self,
        operation: &Operation,
        operation_uuid: Option<&str>,
    ) -> OperationStatus {
        let result = match (
            operation.r#type(),
            &operation.create_disk,
            &operation.destroy_disk,
        ) {
            (operation::Type::CreateDisk, Some(create), _) => {
                self.create_disk(create, operation_uuid)
            }
            (operation::Type::DestroyDisk, _, Some(destroy)) => self.destroy_disk(destroy),
            (other, _, _) => Err(StorageError::BadDiskResource {
                reason: format!(
                    "{} is not a storage operation (or lacks its body)",
                    other.as_str_name()
                ),
            }),
        };
        let (state, message, converted) = match result {
            Ok(converted) => (OperationState::OperationFinished, None, converted),
            Err(e) => {
                tracing::warn!(error = %e.message(), "storage operation failed");
                (e.operation_state(), Some(e.message()), Vec::new())
            }
        };
        OperationStatus {
            operation_id: operation.id.as_ref().map(|id| OperationId {
                value: id.value.clone(),
            }),
            state: state as i32,
            message,
            converted_resources: converted,
            uuid: None,
            agent_id: None,
            resource_provider_id: Some(ResourceProviderId {
                value: self.provider_id.clone(),
            }),
        }
    }

    /// The status to report while an operation runs (`OPERATION_PENDING`).
    pub fn pending_status(&self, operation: &Operation) -> OperationStatus {
        OperationStatus {
            operation_id: operation.id.clone(),
            state: OperationState::OperationPending as i32,
            message: None,
            converted_resources: Vec::new(),
            uuid: None,
            agent_id: None,
            resource_provider_id: Some(ResourceProviderId {
                value: self.provider_id.clone(),
            }),
        }
    }

    pub(super) fn pool(&self, name: &str) -> Option<&ResolvedPool> {
        self.pools.iter().find(|p| p.config.name == name)
    }

    pub(super) fn profile(&self, name: &str) -> Result<&ProfileConfig, StorageError> {
        self.config
            .profile(name)
            .ok_or_else(|| StorageError::UnknownProfile {
                profile: name.to_owned(),
                known: self
                    .config
                    .profiles
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    fn made_by(&self, operation_uuid: &str) -> Option<&VolumeRecord> {
        self.volumes.values().find(|v| {
            v.operation.as_deref() == Some(operation_uuid)
                && matches!(v.state, VolumeState::Ready | VolumeState::Attached(_))
        })
    }

    /// The volume `id`, checked to be of `kind` and `mb` MB.
    pub(super) fn checked_volume(
        &self,
        id: &VolumeId,
        kind: VolumeKind,
        mb: u64,
    ) -> Result<&VolumeRecord, StorageError> {
        // A spare is nobody's volume until a launch claims it.
        let volume = self
            .volumes
            .get(id)
            .filter(|v| !v.is_spare())
            .ok_or_else(|| StorageError::UnknownVolume { id: id.to_string() })?;
        let mismatch = |reason: String| StorageError::VolumeMismatch {
            id: id.clone(),
            reason,
        };
        if volume.kind != kind {
            return Err(mismatch(format!(
                "it is a {:?} volume, not {kind:?}",
                volume.kind
            )));
        }
        if volume.size_mb() != mb {
            return Err(mismatch(format!(
                "it has {} MB, not {mb} MB",
                volume.size_mb()
            )));
        }
        Ok(volume)
    }

    pub(super) fn fresh_id(&self, profile: &ProfileConfig) -> VolumeId {
        let dir = self.pool(&profile.pool).map(|p| p.dir.clone());
        loop {
            let id = VolumeId::generate();
            let file_taken = dir
                .as_ref()
                .is_some_and(|d| d.join(format!("{id}.img")).exists());
            if !self.volumes.contains_key(&id) && !file_taken {
                return id;
            }
        }
    }

    /// Makes a volume: record (Creating), sparse backing file, mkfs for MOUNT volumes, record
    /// (Ready). On failure everything made is removed again.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn create_volume(
        &mut self,
        id: VolumeId,
        profile: &ProfileConfig,
        kind: VolumeKind,
        mb: u64,
        lifetime: Lifetime,
        resource: Option<serde_json::Value>,
        operation: Option<String>,
    ) -> Result<VolumeId, StorageError> {
        let pool = self
            .pool(&profile.pool)
            .expect("validated profiles name configured pools");
        let usage = PoolUsage::of(pool, self.volumes.values());
        if mb > usage.available_mb() {
            return Err(StorageError::InsufficientCapacity {
                pool: pool.config.name.clone(),
                profile: profile.name.clone(),
                requested_mb: mb,
                available_mb: usage.available_mb(),
            });
        }
        debug_assert!(
            mb > 0 && mb <= resources::DISK_MB_MAX,
            "sizes are checked on input"
        );
        let mut record = VolumeRecord {
            format: RECORD_FORMAT,
            id: id.clone(),
            pool: pool.config.name.clone(),
            profile: profile.name.clone(),
            kind,
            filesystem: (kind == VolumeKind::Mount).then_some(profile.filesystem),
            size_bytes: mb * MIB,
            backing: pool.dir.join(format!("{id}.img")),
            cache: self.cache_store_path(profile, &id),
            lifetime,
            state: VolumeState::Creating,
            resource,
            operation,
        };
        self.records.save(&record)?;
        self.volumes.insert(id.clone(), record.clone());
        let made = self.make_backing(&record).and_then(|()| {
            record
                .apply(VolumeEvent::Created)
                .expect("Creating → Ready is allowed");
            self.records.save(&record)
        });
        if let Err(e) = made {
            self.discard_creating(&record);
            return Err(e);
        }
        tracing::info!(volume = %id, pool = %record.pool, mb, kind = ?kind, "volume created");
        self.volumes.insert(id.clone(), record);
        let after = PoolUsage::of(
            pool_after(&self.pools, &profile.pool),
            self.volumes.values(),
        );
        debug_assert!(
            after.used_bytes() <= after.capacity_bytes,
            "pool overcommitted"
        );
        Ok(id)
    }

    /// Where a volume of `profile` keeps its cache store, if the profile has a cache.
    fn cache_store_path(&self, profile: &ProfileConfig, id: &VolumeId) -> Option<PathBuf> {
        profile.cache_mode()?;
        let pool = self.pool(profile.cache_pool.as_deref()?)?;
        Some(pool.dir.join(format!("{id}.cache")))
    }

    /// Makes a volume's files. Those of an ephemeral volume are not fsynced: nothing of it
    /// outlives a machine crash (its task dies with the machine and recovery destroys it, a
    /// missing file included), and on a busy pool disk those fsyncs were the slowest part of
    /// provisioning a task's device (docs/benchmarks.md). Its record is still written durably
    /// first, so a restarted agent always knows which files to remove.
    fn make_backing(&self, record: &VolumeRecord) -> Result<(), StorageError> {
        let path = &record.backing;
        let durable = !record.is_ephemeral();
        make_sparse_file(path, record.size_bytes, "backing file", durable)?;
        if let Some(cache) = &record.cache {
            let size = self
                .profile(&record.profile)?
                .cache_size
                .map_or(0, |size| size.0);
            // A blank store: the device server formats it on first use.
            make_sparse_file(cache, size, "cache store", durable)?;
            if durable {
                sync_dir(cache.parent().expect("cache stores live in a pool folder"))?;
            }
        }
        if let Some(filesystem) = record.filesystem {
            self.host
                .formatter
                .format(path, filesystem)
                .map_err(|message| StorageError::Mkfs {
                    volume: record.id.clone(),
                    filesystem: filesystem.name(),
                    message,
                })?;
            std::fs::File::open(path)
                .and_then(|f| f.sync_all())
                .map_err(StorageError::io("sync the formatted backing file", path))?;
        }
        if durable {
            sync_dir(path.parent().expect("backing files live in a pool folder"))?;
        }
        Ok(())
    }

    /// Removes what an unfinished creation left: the backing file, the cache store and the
    /// record.
    pub(super) fn discard_creating(&mut self, record: &VolumeRecord) {
        for path in std::iter::once(&record.backing).chain(&record.cache) {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(volume = %record.id, file = %path.display(), error = %e, "cannot remove")
                }
            }
        }
        if let Err(e) = self.records.remove(&record.id) {
            tracing::warn!(volume = %record.id, error = %e.message(), "cannot remove volume record");
        }
        self.volumes.remove(&record.id);
    }

    /// Destroys a ready volume (or finishes destroying one): record (Destroying), backing file
    /// removed, record removed.
    pub(super) fn destroy_volume(&mut self, id: &VolumeId) -> Result<(), StorageError> {
        let mut record = self
            .volumes
            .get(id)
            .cloned()
            .ok_or_else(|| StorageError::UnknownVolume { id: id.to_string() })?;
        if record.state != VolumeState::Destroying {
            record
                .apply(VolumeEvent::Destroy)
                .map_err(|source| StorageError::Transition {
                    id: id.clone(),
                    source,
                })?;
            self.records.save(&record)?;
            self.volumes.insert(id.clone(), record.clone());
        }
        for path in std::iter::once(&record.backing).chain(&record.cache) {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StorageError::io("remove a volume file", path)(e)),
            }
            if let Some(dir) = path.parent() {
                sync_dir(dir)?;
            }
        }
        self.records.remove(id)?;
        self.volumes.remove(id);
        tracing::info!(volume = %id, "volume destroyed");
        Ok(())
    }
}

fn pool_after<'a>(pools: &'a [ResolvedPool], name: &str) -> &'a ResolvedPool {
    pools
        .iter()
        .find(|p| p.config.name == name)
        .expect("the pool exists")
}

/// Fails unless the ublk control node exists.
pub fn check_ublk(control: &Path) -> Result<(), StorageError> {
    if control.exists() {
        Ok(())
    } else {
        Err(StorageError::UblkUnavailable {
            control: control.to_owned(),
        })
    }
}

/// Creates `path` (it must not exist) as a sparse file of `size` bytes, fsynced when `durable`.
fn make_sparse_file(
    path: &Path,
    size: u64,
    what: &'static str,
    durable: bool,
) -> Result<(), StorageError> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(StorageError::io(format!("create the {what}"), path))?;
    file.set_len(size)
        .and_then(|()| if durable { file.sync_all() } else { Ok(()) })
        .map_err(StorageError::io(format!("size the {what}"), path))
}
