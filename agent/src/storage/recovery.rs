//! After an agent restart: reconcile the volume records with the devices that still exist.
//!
//! Devices outlive the agent (each has its own server process), so a restarted agent finds:
//!
//! | record | device | what recovery does |
//! |---|---|---|
//! | Creating | – | removes the backing file and the record (the CREATE_DISK failed) |
//! | Destroying | – | finishes: removes the backing file and the record |
//! | Ready, persistent | – | nothing (reports a missing backing file) |
//! | Ready, ephemeral | – | destroyed (its launch, or its release, was interrupted) |
//! | Ready, spare | – | destroyed (its device, if it was made, is stopped as an orphan) |
//! | Attached(N) | N live, its record names this volume's file | nothing: still served |
//! | Attached(N) | N quiesced (its server died) | a new server takes over (`StartMode::Recover`) |
//! | Attached(N) | N absent (reboot), or dead | detached (Ready); an ephemeral volume is destroyed |
//! | Attached(N) | N serves another file | detached (N is not touched) |
//! | Attached(N) | N exists, no record of it | left attached, reported (cannot tell whose it is) |
//! | – | a device of ours no volume is attached to | stopped (an attach interrupted by the crash) |
//!
//! Mounts of devices that kept serving are not touched.

use serde::Serialize;
use ublk_target::spec::{BackendSpec, DeviceSpec};
use ublk_target::sys::control::DeviceState;
use ublk_target::sys::device::StartMode;

use super::manager::Storage;
use super::volume::{Attachment, VolumeEvent, VolumeId, VolumeRecord, VolumeState};

/// What [`Storage::recover`] found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RecoveryReport {
    /// Volume records loaded.
    pub volumes: usize,
    /// Attached volumes whose device kept serving: (volume, device id).
    pub still_attached: Vec<(VolumeId, u32)>,
    /// Attached volumes whose device got a new server: (volume, device id).
    pub recovered: Vec<(VolumeId, u32)>,
    /// Attached volumes whose device was gone, now detached: (volume, why).
    pub detached: Vec<(VolumeId, String)>,
    /// Volumes removed: unfinished creations, unfinished destructions, ephemeral volumes whose
    /// task's device is gone: (volume, why).
    pub removed: Vec<(VolumeId, String)>,
    /// Devices of this agent no volume was attached to, now stopped.
    pub stopped_devices: Vec<u32>,
    /// Things an operator should look at (nothing was changed for them).
    pub problems: Vec<String>,
}

impl Storage {
    /// Reconciles records and devices (see the module docs). Call once after
    /// [`Storage::open`], before anything else.
    pub fn recover(&mut self) -> RecoveryReport {
        let mut report = RecoveryReport {
            volumes: self.volumes.len(),
            ..RecoveryReport::default()
        };
        for bad in &self.unreadable {
            report.problems.push(format!(
                "unreadable volume record {}: {}",
                bad.path.display(),
                bad.reason
            ));
        }
        let records: Vec<VolumeRecord> = self.volumes.values().cloned().collect();
        for record in records {
            if self.pool(&record.pool).is_none() {
                report.problems.push(format!(
                    "volume {} is in pool {:?}, which is no longer configured; left alone",
                    record.id, record.pool
                ));
                continue;
            }
            self.recover_volume(record, &mut report);
        }
        self.stop_orphan_devices(&mut report);
        tracing::info!(?report, "storage recovered");
        report
    }

    fn recover_volume(&mut self, record: VolumeRecord, report: &mut RecoveryReport) {
        let id = record.id.clone();
        match &record.state {
            VolumeState::Creating => {
                self.discard_creating(&record);
                report
                    .removed
                    .push((id, "its creation was interrupted".into()));
            }
            VolumeState::Destroying => match self.destroy_volume(&id) {
                Ok(()) => report
                    .removed
                    .push((id, "its destruction was finished".into())),
                Err(e) => report.problems.push(e.message()),
            },
            // A task's volume is Ready only between its creation and its device's start, or
            // between its task's end and its destruction: either way no task uses it now.
            VolumeState::Ready if record.is_ephemeral() => match self.destroy_volume(&id) {
                Ok(()) => report.removed.push((
                    id,
                    "ephemeral, and not attached to its task (a launch or a release was \
                     interrupted)"
                        .into(),
                )),
                Err(e) => report.problems.push(e.message()),
            },
            VolumeState::Ready => {
                if !record.backing.is_file() {
                    report.problems.push(format!(
                        "volume {id}: backing file {} is missing",
                        record.backing.display()
                    ));
                }
            }
            VolumeState::Attached(attachment) => {
                let attachment = attachment.clone();
                self.recover_attachment(&record, &attachment, report);
            }
        }
    }

    fn recover_attachment(
        &mut self,
        record: &VolumeRecord,
        attachment: &Attachment,
        report: &mut RecoveryReport,
    ) {
        let id = &record.id;
        let device = attachment.device_id;
        let probe = self.host.devices.probe(device);
        let serves_this = probe.record.as_ref().map(|r| serves(&r.spec, record));
        match (probe.state, serves_this) {
            (Some(DeviceState::Live), Some(true)) => {
                report.still_attached.push((id.clone(), device));
            }
            (Some(DeviceState::Quiesced), Some(true)) => {
                let spec = DeviceSpec {
                    id: Some(device),
                    ..probe.record.expect("checked above").spec
                };
                match self.host.devices.start(&spec, StartMode::Recover) {
                    Ok(started) => {
                        let mut updated = record.clone();
                        if let VolumeState::Attached(a) = &mut updated.state {
                            a.server_pid = started.pid;
                        }
                        match self.records.save(&updated) {
                            Ok(()) => {
                                self.volumes.insert(id.clone(), updated);
                            }
                            Err(e) => report.problems.push(e.message()),
                        }
                        report.recovered.push((id.clone(), device));
                    }
                    Err(e) => report.problems.push(format!(
                        "volume {id}: device {device} could not be recovered: {e}"
                    )),
                }
            }
            (Some(_), None) => report.problems.push(format!(
                "volume {id}: device {device} exists but has no record in the run dir; left \
                 attached"
            )),
            (None, _) => self.forget_attachment(record, "its device is gone", report),
            (Some(_), Some(false)) => {
                self.forget_attachment(record, "its device id serves another file now", report)
            }
            (Some(state), Some(true)) => {
                // Dead or failing: nothing can be served through it any more.
                if let Err(e) = self.host.devices.stop(device) {
                    report.problems.push(format!(
                        "volume {id}: cannot stop device {device} ({state:?}): {e}"
                    ));
                    return;
                }
                self.forget_attachment(record, "its device was not serving", report);
            }
        }
    }

    /// Records a volume whose device is gone as detached; destroys it if it was ephemeral.
    fn forget_attachment(&mut self, record: &VolumeRecord, why: &str, report: &mut RecoveryReport) {
        let mut updated = record.clone();
        updated
            .apply(VolumeEvent::Detach)
            .expect("attached volumes detach");
        if let Err(e) = self.records.save(&updated) {
            report.problems.push(e.message());
            return;
        }
        self.volumes.insert(record.id.clone(), updated);
        if record.is_ephemeral() {
            match self.destroy_volume(&record.id) {
                Ok(()) => report
                    .removed
                    .push((record.id.clone(), format!("ephemeral, and {why}"))),
                Err(e) => report.problems.push(e.message()),
            }
        } else {
            report.detached.push((record.id.clone(), why.to_owned()));
        }
    }

    /// Stops devices started by this agent (their records are in its run dir) that serve a
    /// file of one of its pools while no volume is attached to them.
    fn stop_orphan_devices(&mut self, report: &mut RecoveryReport) {
        for device in self.host.devices.records() {
            let BackendSpec::File { path, .. } = &device.spec.backend else {
                continue;
            };
            let in_pool = path
                .parent()
                .is_some_and(|dir| self.pools.iter().any(|p| p.dir == dir));
            let claimed = self.volumes.values().any(|v| {
                v.state
                    .attachment()
                    .is_some_and(|a| a.device_id == device.id && &v.backing == path)
            });
            if !in_pool || claimed {
                continue;
            }
            match self.host.devices.stop(device.id) {
                Ok(()) => report.stopped_devices.push(device.id),
                Err(e) => report.problems.push(format!(
                    "cannot stop orphan device {} ({}): {e}",
                    device.id,
                    path.display()
                )),
            }
        }
    }
}

/// Whether a device spec serves this volume's backing file.
fn serves(spec: &DeviceSpec, record: &VolumeRecord) -> bool {
    matches!(&spec.backend, BackendSpec::File { path, .. } if *path == record.backing)
}
