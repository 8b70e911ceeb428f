//! Spare devices: ephemeral volumes whose device is started before any task asks for it.
//!
//! A device's start (ADD_DEV, the queue's ring, START_DEV with the kernel's partition scan) is
//! most of a launch's provisioning time, and on the kernels we target a device's size is fixed
//! before START_DEV, so it cannot be started before its size is known. A profile may therefore
//! name sizes to keep spares of (`"spares": [{"size": "1G", "count": 2}]`, see
//! [`SpareConfig`](super::config::SpareConfig)): a task launched on a slice of that profile's RAW
//! pool of exactly such a size, as a BLOCK disk, gets a spare's device as it is, and the agent
//! makes another one once no launch is under way ([`make_spares`], on the agent's spares
//! thread). A spare's server runs at the lowest CPU priority until it is claimed.
//!
//! A spare is a volume record with lifetime `Spare` (counted nowhere in the pool's capacity: it
//! is empty and no one holds it) whose device serves a fresh sparse file, so what a task gets
//! from a spare is what it would have got from a fresh start: zeroes, and a node it alone owns
//! after the hand-over. Claiming one turns its record into the task's ephemeral volume and checks
//! the capacity as a new ephemeral disk would. A spare whose server died is destroyed at the
//! claim, and the launch starts a device of its own.
//!
//! Nothing outlives the agent: a restarted agent's recovery destroys `Spare` records (they are
//! ephemeral) and stops their devices (no volume is attached to them), and an agent shutting
//! down destroys its spares ([`Storage::close_spares`]).

use std::sync::Mutex;

use ublk_target::daemon::DeviceRecord;
use ublk_target::sys::control::DeviceState;

use super::attach::{AttachRequest, PendingAttach};
use super::error::StorageError;
use super::manager::Storage;
use super::resources::PoolUsage;
use super::volume::{Lifetime, VolumeId, VolumeKind};
use crate::PROVISIONING;

/// The reservation's owner while a spare's device starts.
const SPARE_OWNER: &str = "(spare)";

/// A spare device ready for a task.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Spare {
    /// Its volume.
    pub volume_id: VolumeId,
    /// Its profile.
    pub profile: String,
    /// Its size in MB.
    pub mb: u64,
    /// Its device id.
    pub device_id: u32,
}

impl Storage {
    /// The spare devices ready now.
    pub fn spares(&self) -> Vec<Spare> {
        self.spares
            .iter()
            .map(|(id, device)| {
                let volume = &self.volumes[id];
                Spare {
                    volume_id: id.clone(),
                    profile: volume.profile.clone(),
                    mb: volume.size_mb(),
                    device_id: device.id,
                }
            })
            .collect()
    }

    /// Sets what [`Storage::request_spares`] wakes: the agent's spares thread.
    pub fn set_spares_signal(&mut self, signal: std::sync::mpsc::Sender<()>) {
        self.spares_signal = Some(signal);
    }

    /// Asks the spares thread to make whatever spares are missing.
    pub fn request_spares(&self) {
        if let Some(signal) = &self.spares_signal {
            let _ = signal.send(());
        }
    }

    /// A spare of `profile` and `mb` MB for `request`'s task, if there is one: its record
    /// becomes the task's ephemeral volume, reserved for the task, its device already live. `None` sends the
    /// launch down the usual way (no spare, not enough capacity, or only dead ones).
    pub(super) fn claim_spare(
        &mut self,
        request: &AttachRequest,
        profile: &str,
        mb: u64,
    ) -> Result<Option<PendingAttach>, StorageError> {
        loop {
            let Some(id) = self.spares.keys().find(|id| {
                let volume = &self.volumes[*id];
                volume.profile == profile && volume.size_mb() == mb
            }) else {
                return Ok(None);
            };
            let id = id.clone();
            let device = self.spares.remove(&id).expect("found above");
            if self.host.devices.probe(device.id).state != Some(DeviceState::Live) {
                tracing::warn!(volume = %id, device = device.id, "spare device no longer live; destroying it");
                self.destroy_spare(&id, device.id);
                continue;
            }
            let mut record = self.volumes[&id].clone();
            let pool = self
                .pool(&record.pool)
                .expect("spares live in configured pools");
            if PoolUsage::of(pool, self.volumes.values()).available_mb() < mb {
                self.spares.insert(id, device);
                return Ok(None);
            }
            if let Err(e) = self.host.devices.promote(&device) {
                tracing::warn!(volume = %id, device = device.id, error = %e, "cannot give a spare's server its priority back; destroying it");
                self.destroy_spare(&id, device.id);
                continue;
            }
            record.lifetime = Lifetime::Ephemeral {
                task_id: request.task_id.clone(),
            };
            if let Err(e) = self.records.save(&record) {
                self.spares.insert(id, device);
                return Err(e);
            }
            self.volumes.insert(id.clone(), record);
            tracing::debug!(target: PROVISIONING, task = %request.task_id, volume = %id, device = device.id, "spare claimed");
            return match self.begin_attach(&id, request) {
                Ok(pending) => Ok(Some(PendingAttach {
                    started: Some(device),
                    ..pending
                })),
                Err(e) => {
                    self.destroy_spare(&id, device.id);
                    Err(e)
                }
            };
        }
    }

    /// The next spare to make, if a profile wants one more: its volume is created and reserved
    /// (steps as [`Storage::reserve_task`]'s). `None` when every profile has its spares, the
    /// pool has no room, or the spares are closed.
    fn next_spare(&mut self) -> Option<Result<PendingAttach, StorageError>> {
        if self.spares_closed {
            return None;
        }
        let (profile, mb) = self.config.profiles.iter().find_map(|profile| {
            profile.spares.iter().find_map(|spare| {
                let mb = spare.size.0 / super::config::MIB;
                let have = self
                    .volumes
                    .values()
                    .filter(|v| v.is_spare() && v.profile == profile.name && v.size_mb() == mb)
                    .count();
                let pool = self.pool(&profile.pool)?;
                let room = PoolUsage::of(pool, self.volumes.values()).available_mb() >= mb;
                (have < spare.count as usize && room).then(|| (profile.clone(), mb))
            })
        })?;
        let id = self.fresh_id(&profile);
        let made = self
            .create_volume(
                id,
                &profile,
                VolumeKind::Block,
                mb,
                Lifetime::Spare,
                None,
                None,
            )
            .and_then(|id| {
                let request = AttachRequest {
                    task_id: SPARE_OWNER.into(),
                    uid: 0,
                    gid: 0,
                    mount_path: None,
                    read_only: false,
                };
                self.begin_attach(&id, &request)
                    .inspect_err(|_| self.discard_spare_volume(&id))
            });
        Some(made)
    }

    /// Keeps a spare whose device started (or cleans up after one that did not). A spare that
    /// started after [`Storage::close_spares`] is stopped again.
    fn keep_spare(
        &mut self,
        pending: &PendingAttach,
        started: Result<DeviceRecord, StorageError>,
    ) -> Result<(), StorageError> {
        self.reserved.remove(&pending.id);
        match started {
            Ok(device) if !self.spares_closed => {
                tracing::info!(volume = %pending.id, device = device.id, "spare device ready");
                self.spares.insert(pending.id.clone(), device);
                Ok(())
            }
            Ok(device) => {
                self.destroy_spare(&pending.id, device.id);
                Ok(())
            }
            Err(e) => {
                self.discard_spare_volume(&pending.id);
                Err(e)
            }
        }
    }

    /// Stops every spare and destroys its volume; no more are made (agent shutdown).
    pub fn close_spares(&mut self) {
        self.spares_closed = true;
        for (id, device) in std::mem::take(&mut self.spares) {
            self.destroy_spare(&id, device.id);
        }
    }

    fn destroy_spare(&mut self, id: &VolumeId, device: u32) {
        if let Err(e) = self.host.devices.stop(device) {
            tracing::warn!(volume = %id, device, error = %e, "cannot stop a spare device");
        }
        self.discard_spare_volume(id);
    }

    fn discard_spare_volume(&mut self, id: &VolumeId) {
        if let Err(e) = self.destroy_volume(id) {
            tracing::warn!(volume = %id, error = %e.message(), "cannot destroy a spare volume");
        }
    }
}

fn lock(storage: &Mutex<Storage>) -> std::sync::MutexGuard<'_, Storage> {
    storage
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Makes the spares the profiles want, one at a time, each device started without the storage
/// lock and after `yield_to_launches` returns (the agent waits there until no launch is under
/// way). Stops at the first failure (logged): the next [`Storage::request_spares`] tries again.
/// Call it from one thread only.
pub fn make_spares(storage: &Mutex<Storage>, yield_to_launches: impl Fn()) {
    loop {
        yield_to_launches();
        let pending = match lock(storage).next_spare() {
            None => return,
            Some(Ok(pending)) => pending,
            Some(Err(e)) => {
                tracing::warn!(error = %e.message(), "cannot make a spare volume");
                return;
            }
        };
        let devices = lock(storage).device_control();
        let started = devices
            .start_spare(&pending.spec)
            .map_err(|source| StorageError::Device {
                volume: pending.id.clone(),
                action: "start",
                source,
            });
        if let Err(e) = lock(storage).keep_spare(&pending, started) {
            tracing::warn!(volume = %pending.id, error = %e.message(), "cannot start a spare device");
            return;
        }
    }
}
