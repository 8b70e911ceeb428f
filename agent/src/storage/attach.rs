//! Serving volumes to tasks: attach (start a device, hand it to the task's user, mount it) and
//! detach (unmount, flush, stop the device; the data stays in the backing file).
//!
//! Order of an attach, and what a failure at each step undoes:
//! 1. the device server starts ([`DeviceControl::start`](super::host::DeviceControl::start));
//! 2. the record becomes `Attached` (so a crash from here on is found by recovery);
//! 3. `/dev/ublkbN` is chowned to the task's uid/gid, mode 0600;
//! 4. MOUNT: the mount point is created and the file system mounted (`nosuid,nodev`, read-only
//!    for RO volumes), and its root folder chowned to the task's user.
//!
//! A failure in 2–4 unmounts, stops the device and puts the record back to `Ready`.
//!
//! A detach unmounts the volume's mount and any mount the task made of the device itself,
//! fsyncs the device, stops it and waits for its server, then records `Ready`. An unmount that
//! stays busy fails the detach and leaves the device serving: stopping it under a mounted file
//! system would lose data.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mesoblk_proto::mesos::v1::Resource;
use serde::Serialize;
use ublk_target::daemon::DeviceRecord;
use ublk_target::spec::{BackendSpec, DeviceSpec};
use ublk_target::sys::device::StartMode;

use super::error::StorageError;
use super::host::DeviceControl;
use super::manager::Storage;
use super::resources::{self, DiskClaim};
use super::volume::{
    Attachment, Lifetime, TransitionError, VolumeEvent, VolumeId, VolumeKind, VolumeRecord,
    VolumeState,
};
use crate::PROVISIONING;

/// How often a busy unmount is retried, and how long to wait between tries.
const UNMOUNT_ATTEMPTS: u32 = 20;
const UNMOUNT_RETRY_DELAY: Duration = Duration::from_millis(50);

/// Environment variable naming a task's first BLOCK device.
pub const ENV_BLOCK_DEVICE: &str = "MESOBLK_BLOCK_DEVICE";
/// Environment variable naming a task's first MOUNT disk's mount point.
pub const ENV_MOUNT_PATH: &str = "MESOBLK_MOUNT_PATH";
/// Prefix of the per-volume variables: `MESOBLK_DISK_<ID>` is the device (BLOCK) or the mount
/// point (MOUNT); `MESOBLK_DISK_<ID>_DEVICE` is always the device.
pub const ENV_DISK_PREFIX: &str = "MESOBLK_DISK_";

/// Who a volume is attached for, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachRequest {
    /// The task.
    pub task_id: String,
    /// The task's user: owner of the device node (and of a mount's root folder).
    pub uid: u32,
    /// The task's group.
    pub gid: u32,
    /// Where to mount a MOUNT volume (required for those, ignored for BLOCK ones).
    pub mount_path: Option<PathBuf>,
    /// Mount read-only.
    pub read_only: bool,
}

/// A volume being served to a task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AttachedDevice {
    /// The volume.
    pub volume_id: VolumeId,
    /// BLOCK or MOUNT.
    pub kind: VolumeKind,
    /// Whether the volume is destroyed when the task ends.
    pub ephemeral: bool,
    /// Its ublk device id.
    pub device_id: u32,
    /// `/dev/ublkbN`.
    pub block_path: PathBuf,
    /// The device's major and minor numbers (for cgroup `io.max`); 0:0 when unknown.
    pub device_number: (u64, u64),
    /// Where a MOUNT volume is mounted.
    pub mount_path: Option<PathBuf>,
}

/// A task's disks, as [`Storage::attach_task`] is asked for them.
#[derive(Clone, Copy, Debug)]
pub struct TaskDiskRequest<'a> {
    /// The task.
    pub task_id: &'a str,
    /// The task's resources (everything that is not one of this agent's block disks is
    /// ignored).
    pub resources: &'a [Resource],
    /// The task's user.
    pub uid: u32,
    /// The task's group.
    pub gid: u32,
    /// The task's sandbox: MOUNT disks are mounted at `<sandbox>/<container path>`.
    pub sandbox: &'a Path,
}

/// What a task got.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaskDisks {
    /// Its devices, in the order of its resources.
    pub devices: Vec<AttachedDevice>,
    /// Environment variables for the task (see [`ENV_BLOCK_DEVICE`], [`ENV_MOUNT_PATH`],
    /// [`ENV_DISK_PREFIX`]).
    pub env: Vec<(String, String)>,
    /// The task's resources with each disk's attachment in its metadata (`path`, `device`,
    /// `device_id`): for the task's view (`/state`, the executor), not for the master's books.
    pub resources: Vec<Resource>,
}

/// One disk of a task, checked and located before anything is made.
pub(super) struct PlannedDisk {
    pub(super) resource_index: usize,
    pub(super) target: Target,
    pub(super) mount_path: Option<PathBuf>,
    pub(super) read_only: bool,
}

pub(super) enum Target {
    Existing(VolumeId),
    Ephemeral {
        profile: String,
        mb: u64,
        kind: VolumeKind,
    },
}

/// An attach between its halves: the volume is reserved for the task and its device's spec is
/// ready, but no server runs yet. Starting the server is the slow part, so it happens without
/// the storage lock ([`start_device`]); the reservation keeps other launches, DESTROY_DISK and
/// `detach_task` away from the volume meanwhile. It lives only in memory: a restarted agent finds
/// the volume `Ready` (an ephemeral one is destroyed by recovery) and the device, if it started,
/// unclaimed (recovery stops it).
#[derive(Clone, Debug)]
pub(super) struct PendingAttach {
    pub(super) id: VolumeId,
    pub(super) request: AttachRequest,
    pub(super) mount_path: Option<PathBuf>,
    pub(super) spec: DeviceSpec,
    /// The device, when it already serves the volume (a claimed spare).
    pub(super) started: Option<DeviceRecord>,
}

impl Storage {
    /// Starts a device for a ready volume and hands it to a task (see the module docs).
    pub fn attach(
        &mut self,
        id: &VolumeId,
        request: &AttachRequest,
    ) -> Result<AttachedDevice, StorageError> {
        let pending = self.begin_attach(id, request)?;
        match start_device(self.host.devices.as_ref(), &pending) {
            Ok(device) => self.commit_attach(&pending, device),
            Err(e) => {
                self.reserved.remove(id);
                Err(e)
            }
        }
    }

    /// The first half of an attach: checks the volume may be attached and reserves it.
    pub(super) fn begin_attach(
        &mut self,
        id: &VolumeId,
        request: &AttachRequest,
    ) -> Result<PendingAttach, StorageError> {
        let volume = self
            .volumes
            .get(id)
            .ok_or_else(|| StorageError::UnknownVolume { id: id.to_string() })?;
        self.check_unreserved(id, "attach")?;
        let mount_path = attachable(volume, request)?;
        let spec = self.profile(&volume.profile)?.device_spec(
            &volume.backing,
            volume.size_bytes,
            volume.cache.as_deref(),
        );
        self.reserved.insert(id.clone(), request.task_id.clone());
        Ok(PendingAttach {
            id: id.clone(),
            request: request.clone(),
            mount_path,
            spec,
            started: None,
        })
    }

    /// Fails when another launch has reserved volume `id` (its device is starting).
    pub(super) fn check_unreserved(
        &self,
        id: &VolumeId,
        event: &'static str,
    ) -> Result<(), StorageError> {
        match self.reserved.get(id) {
            None => Ok(()),
            Some(task) => Err(StorageError::Transition {
                id: id.clone(),
                source: TransitionError {
                    state: format!("being attached to task {task}"),
                    event,
                },
            }),
        }
    }

    /// The second half of an attach, once `device` serves the volume: records the attachment
    /// and hands the device over. The reservation ends either way; on failure the device is
    /// stopped and the volume is `Ready` again.
    pub(super) fn commit_attach(
        &mut self,
        pending: &PendingAttach,
        device: DeviceRecord,
    ) -> Result<AttachedDevice, StorageError> {
        let id = &pending.id;
        let request = &pending.request;
        self.reserved.remove(id);
        let attachment = Attachment {
            task_id: request.task_id.clone(),
            device_id: device.id,
            server_pid: device.pid,
            block_path: device.block_path,
            mount_path: pending.mount_path.clone(),
            uid: request.uid,
            gid: request.gid,
        };
        // The reservation kept everyone else away from the volume; this is only a safeguard.
        let volume = match self.volumes.get(id) {
            Some(v) if attachable(v, request).is_ok() => v.clone(),
            _ => {
                self.undo_attach(id, &attachment);
                return Err(StorageError::UnknownVolume { id: id.to_string() });
            }
        };
        let mut record = volume.clone();
        record
            .apply(VolumeEvent::Attach(attachment.clone()))
            .expect("attachable() checked the transition");
        let attached = self.records.save(&record).and_then(|()| {
            tracing::debug!(target: PROVISIONING, task = %request.task_id, volume = %id, "attachment recorded");
            self.hand_over(id, &attachment, request.read_only)
        });
        if let Err(e) = attached {
            self.undo_attach(id, &attachment);
            // The record on disk may say Attached: put it back.
            if let Err(save) = self.records.save(&volume) {
                tracing::warn!(volume = %id, error = %save.message(), "cannot restore volume record");
            }
            return Err(e);
        }
        tracing::debug!(target: PROVISIONING, task = %request.task_id, volume = %id, "device handed over");
        tracing::info!(volume = %id, device = attachment.device_id, task = %request.task_id, "volume attached");
        let device = AttachedDevice::new(&record, &attachment);
        self.volumes.insert(id.clone(), record);
        Ok(device)
    }

    /// Chowns the node and mounts (steps 3 and 4 of an attach).
    fn hand_over(
        &self,
        id: &VolumeId,
        attachment: &Attachment,
        read_only: bool,
    ) -> Result<(), StorageError> {
        let node = &attachment.block_path;
        let owner = |path: &Path| {
            std::os::unix::fs::chown(path, Some(attachment.uid), Some(attachment.gid))
                .map_err(StorageError::io("chown", path))
        };
        owner(node)?;
        std::fs::set_permissions(node, std::fs::Permissions::from_mode(0o600))
            .map_err(StorageError::io("chmod 0600", node))?;
        let Some(target) = &attachment.mount_path else {
            return Ok(());
        };
        let filesystem = self.volumes[id]
            .filesystem
            .expect("MOUNT volumes have a file system");
        std::fs::create_dir_all(target)
            .map_err(StorageError::io("create the mount point", target))?;
        self.host
            .mounter
            .mount(node, target, filesystem, read_only)
            .map_err(|source| StorageError::Mount {
                volume: id.clone(),
                action: "mount",
                target: target.clone(),
                source,
            })?;
        if !read_only {
            if let Err(e) = owner(target) {
                let _ = self.host.mounter.unmount(target);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Best-effort undo of a partial attach: unmount, stop the device.
    fn undo_attach(&self, id: &VolumeId, attachment: &Attachment) {
        if let Some(target) = &attachment.mount_path {
            if self
                .host
                .mounter
                .mounts_of(&attachment.block_path)
                .contains(target)
            {
                let _ = self.host.mounter.unmount(target);
            }
        }
        if let Err(e) = self.host.devices.stop(attachment.device_id) {
            tracing::warn!(volume = %id, device = attachment.device_id, error = %e, "cannot stop device");
        }
    }

    /// Stops serving an attached volume (see the module docs); its data stays.
    pub fn detach(&mut self, id: &VolumeId) -> Result<(), StorageError> {
        let mut record = self
            .volumes
            .get(id)
            .cloned()
            .ok_or_else(|| StorageError::UnknownVolume { id: id.to_string() })?;
        let Some(attachment) = record.state.attachment().cloned() else {
            return Err(StorageError::Transition {
                id: id.clone(),
                source: record
                    .state
                    .apply(VolumeEvent::Detach)
                    .expect_err("only attached volumes detach"),
            });
        };
        self.release_device(id, &attachment)?;
        record
            .apply(VolumeEvent::Detach)
            .expect("attached volumes detach");
        self.records.save(&record)?;
        self.volumes.insert(id.clone(), record);
        tracing::info!(volume = %id, device = attachment.device_id, "volume detached");
        Ok(())
    }

    /// Unmounts, flushes and stops an attachment's device. A device id that now belongs to
    /// another backing file (it was reused after a reboot) is left alone.
    pub(super) fn release_device(
        &self,
        id: &VolumeId,
        attachment: &Attachment,
    ) -> Result<(), StorageError> {
        let node = &attachment.block_path;
        // The volume's own mount, and any mount the task made of the device itself (deepest
        // first).
        for target in self.host.mounter.mounts_of(node) {
            self.unmount_retrying(id, &target)?;
        }
        let backing = &self.volumes[id].backing;
        let probe = self.host.devices.probe(attachment.device_id);
        let foreign = probe
            .record
            .as_ref()
            .is_some_and(|r| match &r.spec.backend {
                BackendSpec::File { path, .. } => path != backing,
                _ => true,
            });
        if foreign {
            tracing::warn!(volume = %id, device = attachment.device_id, "device id now serves something else; not stopping it");
            return Ok(());
        }
        if probe.state.is_some() {
            // Push the page cache of a task that wrote to the node without fsync.
            if let Err(e) = std::fs::File::open(node).and_then(|f| f.sync_all()) {
                tracing::warn!(volume = %id, error = %e, "fsync of the device before stopping it failed");
            }
        }
        self.host
            .devices
            .stop(attachment.device_id)
            .map_err(|source| StorageError::Device {
                volume: id.clone(),
                action: "stop",
                source,
            })
    }

    fn unmount_retrying(&self, id: &VolumeId, target: &Path) -> Result<(), StorageError> {
        let mut attempt = 1;
        loop {
            match self.host.mounter.unmount(target) {
                Ok(()) => return Ok(()),
                Err(e)
                    if e.raw_os_error() == Some(nix::libc::EBUSY) && attempt < UNMOUNT_ATTEMPTS =>
                {
                    attempt += 1;
                    std::thread::sleep(UNMOUNT_RETRY_DELAY);
                }
                Err(source) => {
                    return Err(StorageError::Mount {
                        volume: id.clone(),
                        action: "unmount",
                        target: target.to_owned(),
                        source,
                    })
                }
            }
        }
    }

    /// Checks a task's disks and where they go, without making anything.
    pub(super) fn plan_task(
        &self,
        request: &TaskDiskRequest<'_>,
    ) -> Result<Vec<PlannedDisk>, StorageError> {
        let mut plan: Vec<PlannedDisk> = Vec::new();
        for (index, resource) in request.resources.iter().enumerate() {
            let (target, container_path, read_only) =
                match resources::classify(resource, &self.provider_id)? {
                    DiskClaim::Other => continue,
                    DiskClaim::Volume {
                        id,
                        kind,
                        mb,
                        container_path,
                        read_only,
                    } => {
                        self.checked_volume(&id, kind, mb)?;
                        if plan
                            .iter()
                            .any(|p| matches!(&p.target, Target::Existing(other) if *other == id))
                        {
                            return Err(StorageError::BadDiskResource {
                                reason: format!("volume {id} is listed twice"),
                            });
                        }
                        let path = (kind == VolumeKind::Mount)
                            .then(|| container_path.unwrap_or_else(|| id.to_string()));
                        (Target::Existing(id), path, read_only)
                    }
                    DiskClaim::Raw {
                        profile,
                        mb,
                        container_path,
                        read_only,
                    } => {
                        self.profile(&profile)?;
                        let kind = if container_path.is_some() {
                            VolumeKind::Mount
                        } else {
                            VolumeKind::Block
                        };
                        (
                            Target::Ephemeral { profile, mb, kind },
                            container_path,
                            read_only,
                        )
                    }
                };
            let mount_path = container_path
                .map(|path| resources::mount_target(request.sandbox, &path))
                .transpose()?;
            if let Some(target) = &mount_path {
                check_inside(request.sandbox, target)?;
            }
            plan.push(PlannedDisk {
                resource_index: index,
                target,
                mount_path,
                read_only,
            });
        }
        Ok(plan)
    }

    /// Ends a task's use of its disks: detaches every volume attached to it and destroys its
    /// ephemeral volumes. Carries on past failures and returns the first one; a volume whose
    /// detach failed is neither destroyed nor forgotten, so a later call can finish. A volume
    /// whose device is still starting for the task is left to the launch that reserved it
    /// (it undoes its own work when it fails).
    pub fn detach_task(&mut self, task_id: &str) -> Result<(), StorageError> {
        let mut mine: Vec<(VolumeId, bool, bool, usize)> = self
            .volumes
            .values()
            .filter(|v| !self.reserved.contains_key(&v.id))
            .filter_map(|v| {
                let attachment = v.state.attachment().filter(|a| a.task_id == task_id);
                let ephemeral =
                    matches!(&v.lifetime, Lifetime::Ephemeral { task_id: t } if t == task_id);
                let depth = attachment
                    .and_then(|a| a.mount_path.as_ref())
                    .map_or(0, |m| m.components().count());
                (attachment.is_some() || ephemeral)
                    .then(|| (v.id.clone(), attachment.is_some(), ephemeral, depth))
            })
            .collect();
        // Mounts nested in another disk's mount come off first.
        mine.sort_by_key(|(_, _, _, depth)| std::cmp::Reverse(*depth));
        let mut first_error = None;
        for (id, attached, ephemeral, _) in mine {
            let detached = if attached { self.detach(&id) } else { Ok(()) };
            let result = detached.and_then(|()| {
                let ready = self.volumes.get(&id).is_some_and(|v| {
                    matches!(v.state, VolumeState::Ready | VolumeState::Destroying)
                });
                if ephemeral && ready {
                    self.destroy_volume(&id)
                } else {
                    Ok(())
                }
            });
            if let Err(e) = result {
                tracing::warn!(task = %task_id, volume = %id, error = %e.message(), "cannot release volume");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The devices attached to `task_id`.
    pub fn task_devices(&self, task_id: &str) -> Vec<AttachedDevice> {
        self.volumes
            .values()
            .filter_map(|v| {
                let a = v.state.attachment().filter(|a| a.task_id == task_id)?;
                Some(AttachedDevice::new(v, a))
            })
            .collect()
    }
}

impl AttachedDevice {
    fn new(record: &VolumeRecord, attachment: &Attachment) -> AttachedDevice {
        AttachedDevice {
            volume_id: record.id.clone(),
            kind: record.kind,
            ephemeral: record.is_ephemeral(),
            device_id: attachment.device_id,
            block_path: attachment.block_path.clone(),
            device_number: device_number(&attachment.block_path),
            mount_path: attachment.mount_path.clone(),
        }
    }
}

/// Starts the device server of a pending attach and returns once the device is live (the slow
/// part of an attach: call it without the storage lock).
pub(super) fn start_device(
    devices: &dyn DeviceControl,
    pending: &PendingAttach,
) -> Result<DeviceRecord, StorageError> {
    if let Some(device) = &pending.started {
        return Ok(device.clone());
    }
    let started = Instant::now();
    let device = devices
        .start(&pending.spec, StartMode::Add)
        .map_err(|source| StorageError::Device {
            volume: pending.id.clone(),
            action: "start",
            source,
        })?;
    tracing::debug!(target: PROVISIONING, task = %pending.request.task_id, volume = %pending.id, device = device.id, ms = started.elapsed().as_millis(), "device live");
    Ok(device)
}

/// Where a volume would be mounted, if it may be attached for `request` at all (checked before
/// anything is started).
fn attachable(
    volume: &VolumeRecord,
    request: &AttachRequest,
) -> Result<Option<PathBuf>, StorageError> {
    volume
        .state
        .apply(VolumeEvent::Attach(placeholder(request)))
        .map_err(|source| StorageError::Transition {
            id: volume.id.clone(),
            source,
        })?;
    match volume.kind {
        VolumeKind::Block => Ok(None),
        VolumeKind::Mount => {
            request
                .mount_path
                .clone()
                .map(Some)
                .ok_or_else(|| StorageError::BadDiskResource {
                    reason: format!("MOUNT volume {} needs a mount path", volume.id),
                })
        }
    }
}

fn placeholder(request: &AttachRequest) -> Attachment {
    Attachment {
        task_id: request.task_id.clone(),
        device_id: 0,
        server_pid: 0,
        block_path: PathBuf::new(),
        mount_path: None,
        uid: request.uid,
        gid: request.gid,
    }
}

/// Refuses a mount point that (through symlinks already in the sandbox) leads outside it. Only
/// what exists is resolved, so nothing is created outside the sandbox to find out.
pub(super) fn check_inside(sandbox: &Path, target: &Path) -> Result<(), StorageError> {
    let canonical = |p: &Path| std::fs::canonicalize(p).map_err(StorageError::io("resolve", p));
    let sandbox = canonical(sandbox)?;
    let existing = target
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or_else(|| Path::new("/"));
    if canonical(existing)?.starts_with(&sandbox) {
        Ok(())
    } else {
        Err(StorageError::BadContainerPath {
            path: target.display().to_string(),
        })
    }
}

fn device_number(node: &Path) -> (u64, u64) {
    std::fs::metadata(node).map_or((0, 0), |m| {
        let rdev = m.rdev();
        (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev))
    })
}

/// The environment variables naming a task's devices.
pub fn task_env(devices: &[AttachedDevice]) -> Vec<(String, String)> {
    let mut env = Vec::new();
    if let Some(first) = devices.iter().find(|d| d.kind == VolumeKind::Block) {
        env.push((
            ENV_BLOCK_DEVICE.to_owned(),
            first.block_path.display().to_string(),
        ));
    }
    if let Some(path) = devices.iter().find_map(|d| d.mount_path.as_ref()) {
        env.push((ENV_MOUNT_PATH.to_owned(), path.display().to_string()));
    }
    for device in devices {
        let name = format!("{ENV_DISK_PREFIX}{}", device.volume_id.env_suffix());
        let node = device.block_path.display().to_string();
        let main = device
            .mount_path
            .as_ref()
            .map_or_else(|| node.clone(), |m| m.display().to_string());
        env.push((name.clone(), main));
        if device.mount_path.is_some() {
            env.push((format!("{name}_DEVICE"), node));
        }
    }
    env
}
