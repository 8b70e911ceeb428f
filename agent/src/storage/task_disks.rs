//! A task's disks, attached in three steps so that the agent's storage lock is held only around
//! its books, never while a device server starts (the slowest part of a launch,
//! docs/benchmarks.md):
//!
//! 1. [`Storage::reserve_task`] (under the lock): checks the task's disks, creates its ephemeral
//!    volumes (record and sparse file) and reserves every volume for the task;
//! 2. [`TaskReservation::start_devices`] (without the lock): starts the device servers;
//! 3. [`Storage::finish_task`] (under the lock): records each attachment and hands each device
//!    over (chown, mount).
//!
//! [`attach_task_shared`] chains them for a `Mutex<Storage>`, so concurrent launches overlap
//! their device starts. All or nothing: when a step fails, the devices started are stopped,
//! whatever was attached is detached and the ephemeral volumes are destroyed. An agent killed
//! between the steps leaves ephemeral volumes `Ready` and devices no record claims; recovery
//! destroys the former and stops the latter (the reservations themselves are only in memory).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use mesoblk_proto::mesos::v1::Resource;
use ublk_target::daemon::DeviceRecord;

use super::attach::{
    check_inside, start_device, task_env, AttachRequest, AttachedDevice, PendingAttach,
    PlannedDisk, Target, TaskDiskRequest, TaskDisks,
};
use super::error::StorageError;
use super::host::DeviceControl;
use super::manager::Storage;
use super::resources;
use super::volume::{Lifetime, VolumeId, VolumeKind};
use crate::PROVISIONING;

/// A task's disks between [`Storage::reserve_task`] and [`Storage::finish_task`]: volumes
/// reserved, devices not started. Pass it to `finish_task` (or drop the task's disks with
/// [`Storage::abandon_task`]): its reservations end only there.
pub struct TaskReservation {
    task_id: String,
    sandbox: PathBuf,
    resources: Vec<Resource>,
    disks: Vec<(usize, PendingAttach)>,
    devices: Arc<dyn DeviceControl>,
}

impl std::fmt::Debug for TaskReservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskReservation")
            .field("task_id", &self.task_id)
            .field("disks", &self.disks)
            .finish_non_exhaustive()
    }
}

/// The outcome of [`TaskReservation::start_devices`], one per reserved disk, in order (the
/// starts stop at the first failure, so a failure is last).
pub type StartedDevices = Vec<Result<DeviceRecord, StorageError>>;

impl TaskReservation {
    /// The task.
    pub fn task_id(&self) -> &str {
        &self.task_id
    }

    /// The volumes reserved, in the order of the task's resources.
    pub fn volumes(&self) -> Vec<VolumeId> {
        self.disks.iter().map(|(_, p)| p.id.clone()).collect()
    }

    /// Starts the reserved volumes' device servers one after the other, stopping at the first
    /// failure. Call it without the storage lock.
    pub fn start_devices(&self) -> StartedDevices {
        let mut started = Vec::with_capacity(self.disks.len());
        for (_, pending) in &self.disks {
            let result = start_device(self.devices.as_ref(), pending);
            let failed = result.is_err();
            started.push(result);
            if failed {
                break;
            }
        }
        started
    }
}

impl Storage {
    /// Gives a task its disks: each persistent volume named in its resources is attached, each
    /// slice of a RAW pool becomes a fresh ephemeral volume (BLOCK, or MOUNT when the resource
    /// has `disk.volume`) that is destroyed when the task ends. All or nothing: on any error,
    /// whatever was attached is detached and every ephemeral volume made is destroyed. The
    /// three steps of the module docs, holding `self` throughout (see [`attach_task_shared`]).
    pub fn attach_task(
        &mut self,
        request: &TaskDiskRequest<'_>,
    ) -> Result<TaskDisks, StorageError> {
        let reservation = self.reserve_task(request)?;
        let started = reservation.start_devices();
        self.finish_task(reservation, started)
    }

    /// Step 1: checks a task's disks, makes its ephemeral volumes and reserves every volume.
    /// On failure nothing is left reserved or made.
    pub fn reserve_task(
        &mut self,
        request: &TaskDiskRequest<'_>,
    ) -> Result<TaskReservation, StorageError> {
        let plan = self.plan_task(request)?;
        let mut disks = Vec::with_capacity(plan.len());
        for disk in &plan {
            match self.reserve_planned(request, disk) {
                Ok(pending) => disks.push((disk.resource_index, pending)),
                Err(e) => {
                    // Claimed spares are already live.
                    let live = disks
                        .iter()
                        .filter_map(|(_, p)| p.started.clone())
                        .collect();
                    self.release_reserved(request.task_id, &disks, live);
                    return Err(e);
                }
            }
        }
        Ok(TaskReservation {
            task_id: request.task_id.to_owned(),
            sandbox: request.sandbox.to_owned(),
            resources: request.resources.to_vec(),
            disks,
            devices: self.device_control(),
        })
    }

    fn reserve_planned(
        &mut self,
        request: &TaskDiskRequest<'_>,
        disk: &PlannedDisk,
    ) -> Result<PendingAttach, StorageError> {
        let attach = AttachRequest {
            task_id: request.task_id.to_owned(),
            uid: request.uid,
            gid: request.gid,
            mount_path: disk.mount_path.clone(),
            read_only: disk.read_only,
        };
        let id = match &disk.target {
            Target::Existing(id) => id.clone(),
            Target::Ephemeral { profile, mb, kind } => {
                if *kind == VolumeKind::Block {
                    if let Some(pending) = self.claim_spare(&attach, profile, *mb)? {
                        return Ok(pending);
                    }
                }
                let profile = self.profile(profile)?.clone();
                let lifetime = Lifetime::Ephemeral {
                    task_id: request.task_id.to_owned(),
                };
                let started = Instant::now();
                let id = VolumeId::generate();
                let id = self.create_volume(id, &profile, *kind, *mb, lifetime, None, None)?;
                tracing::debug!(target: PROVISIONING, task = %request.task_id, volume = %id, ms = started.elapsed().as_millis(), "volume created");
                id
            }
        };
        self.begin_attach(&id, &attach)
    }

    /// Step 3: records the attachments of the devices started in step 2 and hands them over.
    /// If a device did not start, or a hand-over fails, everything is undone and the first
    /// error returned.
    pub fn finish_task(
        &mut self,
        reservation: TaskReservation,
        started: StartedDevices,
    ) -> Result<TaskDisks, StorageError> {
        let task_id = reservation.task_id.clone();
        let mut live = Vec::with_capacity(started.len());
        let mut failure = None;
        for result in started {
            match result {
                Ok(device) => live.push(device),
                Err(e) => failure = Some(e),
            }
        }
        if failure.is_none() && live.len() < reservation.disks.len() {
            failure = Some(StorageError::BadDiskResource {
                reason: "not every reserved disk was started".into(),
            });
        }
        if let Some(e) = failure {
            self.release_reserved(&task_id, &reservation.disks, live);
            return Err(e);
        }
        let mut devices: Vec<AttachedDevice> = Vec::with_capacity(live.len());
        let mut live = live.into_iter();
        for (index, (_, pending)) in reservation.disks.iter().enumerate() {
            let device = live.next().expect("one live device per disk");
            // Again, now that earlier disks may have been mounted in the sandbox.
            let inside = match &pending.mount_path {
                Some(target) => check_inside(&reservation.sandbox, target),
                None => Ok(()),
            };
            // commit_attach ends the reservation and undoes its own work when it fails.
            let committed = match inside {
                Ok(()) => self.commit_attach(pending, device),
                Err(e) => {
                    self.reserved.remove(&pending.id);
                    self.stop_unclaimed(&pending.id, &device);
                    Err(e)
                }
            };
            match committed {
                Ok(attached) => devices.push(attached),
                Err(e) => {
                    let rest = reservation.disks[index + 1..].to_vec();
                    self.release_reserved(&task_id, &rest, live.collect());
                    return Err(e);
                }
            }
        }
        let mut resources = reservation.resources;
        for ((resource_index, _), device) in reservation.disks.iter().zip(&devices) {
            if let Some(attachment) = self.volumes[&device.volume_id].state.attachment() {
                resources[*resource_index] =
                    resources::attached_view(&resources[*resource_index], attachment);
            }
        }
        Ok(TaskDisks {
            env: task_env(&devices),
            devices,
            resources,
        })
    }

    /// Drops a reservation without attaching anything (the launch was given up): its devices
    /// that `started` are stopped, its ephemeral volumes destroyed.
    pub fn abandon_task(&mut self, reservation: TaskReservation, started: StartedDevices) {
        let live = started.into_iter().filter_map(Result::ok).collect();
        self.release_reserved(&reservation.task_id, &reservation.disks, live);
    }

    /// Ends the reservations of `disks`, stops the devices of `live` (started for them, not
    /// recorded), then releases whatever the task has (ephemeral volumes, attachments).
    fn release_reserved(
        &mut self,
        task_id: &str,
        disks: &[(usize, PendingAttach)],
        live: Vec<DeviceRecord>,
    ) {
        for ((_, pending), device) in disks.iter().zip(live) {
            self.stop_unclaimed(&pending.id, &device);
        }
        for (_, pending) in disks {
            self.reserved.remove(&pending.id);
        }
        self.cleanup_task(task_id);
    }

    /// Stops a device started for volume `id` whose attachment was never recorded.
    fn stop_unclaimed(&self, id: &VolumeId, device: &DeviceRecord) {
        if let Err(e) = self.host.devices.stop(device.id) {
            tracing::warn!(volume = %id, device = device.id, error = %e, "cannot stop the device of a failed launch");
        }
    }

    fn cleanup_task(&mut self, task_id: &str) {
        if let Err(cleanup) = self.detach_task(task_id) {
            tracing::warn!(task = %task_id, error = %cleanup.message(), "cleanup after a failed attach");
        }
    }
}

fn lock(storage: &Mutex<Storage>) -> MutexGuard<'_, Storage> {
    storage
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// [`Storage::attach_task`] for a shared storage: the lock is taken for steps 1 and 3 only, so
/// the device servers of concurrent launches start side by side.
pub fn attach_task_shared(
    storage: &Mutex<Storage>,
    request: &TaskDiskRequest<'_>,
) -> Result<TaskDisks, StorageError> {
    let reservation = {
        let mut storage = lock(storage);
        tracing::debug!(target: PROVISIONING, task = %request.task_id, "storage lock taken");
        storage.reserve_task(request)?
    };
    let started = reservation.start_devices();
    let mut storage = lock(storage);
    tracing::debug!(target: PROVISIONING, task = %request.task_id, "storage lock taken again");
    let disks = storage.finish_task(reservation, started);
    // Replaces a spare this launch claimed, now that its device no longer competes with it.
    storage.request_spares();
    disks
}
