//! Host tier: an agent restart reconciles volume records with the devices that outlived it
//! (fake devices standing in for ublk).

mod storage_common;

use mesoblk_agent::storage::volume::{VolumeId, VolumeState};
use mesoblk_agent::storage::{AttachRequest, Storage};
use mesoblk_proto::mesos::v1::resource::disk_info::source;
use storage_common::*;
use ublk_target::sys::control::DeviceState;

fn attach(storage: &mut Storage, id: &VolumeId, task: &str) -> u32 {
    storage
        .attach(
            id,
            &AttachRequest {
                task_id: task.into(),
                uid: 0,
                gid: 0,
                mount_path: None,
                read_only: false,
            },
        )
        .map(|d| d.device_id)
        .unwrap_or_else(|e| panic!("attach: {}", e.message()))
}

fn new_volume(storage: &mut Storage, mb: u64) -> VolumeId {
    VolumeId::parse(&disk_id(&create(storage, "fast", mb, source::Type::Block))).unwrap()
}

/// Edits a volume's record on disk as a crash at the wrong moment would have left it.
fn rewrite_record(fx: &Fixture, id: &VolumeId, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = fx.work_dir.join(format!("storage/volumes/{id}.json"));
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
}

#[test]
fn interrupted_creations_are_undone_and_destructions_finished() {
    let fx = Fixture::new();
    let (creating, destroying, ready) = {
        let mut storage = fx.open();
        (
            new_volume(&mut storage, 10),
            new_volume(&mut storage, 20),
            new_volume(&mut storage, 30),
        )
    };
    rewrite_record(&fx, &creating, |r| {
        r["state"] = serde_json::json!({"type": "creating"})
    });
    rewrite_record(&fx, &destroying, |r| {
        r["state"] = serde_json::json!({"type": "destroying"})
    });
    let mut storage = Storage::open_with(fx.config(), &fx.options(), fx.fakes.host()).unwrap();
    // Before recovery, a volume being created is not reported but holds its capacity.
    let (_, volumes) = summary(&storage.resources());
    assert_eq!(volumes.len(), 1);
    let report = storage.recover();
    assert_eq!(report.volumes, 3);
    let removed: Vec<&VolumeId> = report.removed.iter().map(|(id, _)| id).collect();
    assert!(
        removed.contains(&&creating) && removed.contains(&&destroying),
        "{report:?}"
    );
    assert_eq!(
        storage.volumes().map(|v| v.id.clone()).collect::<Vec<_>>(),
        vec![ready]
    );
    assert_eq!(fx.pool_files().len(), 1);
    assert_eq!(fx.record_files().len(), 1);
    assert_eq!(storage.pool_usage()[0].available_mb(), CAPACITY_MB - 30);
    assert!(report.problems.is_empty(), "{report:?}");
}

#[test]
fn devices_that_kept_serving_stay_and_crashed_servers_are_replaced() {
    let fx = Fixture::new();
    let (live, crashed) = {
        let mut storage = fx.open();
        let live = new_volume(&mut storage, 10);
        let crashed = new_volume(&mut storage, 10);
        attach(&mut storage, &live, "t1");
        let device = attach(&mut storage, &crashed, "t2");
        fx.fakes.devices.kill_server(device);
        (live, crashed)
    };
    let mut storage = Storage::open_with(fx.config(), &fx.options(), fx.fakes.host()).unwrap();
    let report = storage.recover();
    assert_eq!(report.still_attached.len(), 1, "{report:?}");
    assert_eq!(report.still_attached[0].0, live);
    assert_eq!(report.recovered.len(), 1, "{report:?}");
    assert_eq!(report.recovered[0].0, crashed);
    assert_eq!(fx.fakes.devices.starts(), (2, 1));
    let devices = fx.fakes.devices.devices();
    assert!(devices.values().all(|d| d.state == DeviceState::Live));
    // The new server's pid is recorded.
    let attachment = storage
        .volume(&crashed)
        .unwrap()
        .state
        .attachment()
        .cloned()
        .unwrap();
    assert_eq!(
        attachment.server_pid,
        devices[&attachment.device_id].record.pid
    );
    // And the task can still be ended normally.
    storage.detach_task("t2").unwrap();
    assert_eq!(storage.volume(&crashed).unwrap().state, VolumeState::Ready);
}

#[test]
fn volumes_whose_device_vanished_are_detached_and_ephemeral_ones_destroyed() {
    let fx = Fixture::new();
    let persistent = {
        let mut storage = fx.open();
        let persistent = new_volume(&mut storage, 10);
        let device = attach(&mut storage, &persistent, "t1");
        let slice = raw(&storage, "fast", 50);
        let disks = storage
            .attach_task(&mesoblk_agent::storage::TaskDiskRequest {
                task_id: "t2",
                resources: &[slice],
                uid: 0,
                gid: 0,
                sandbox: &fx.sandbox,
            })
            .unwrap();
        // A reboot: every device is gone.
        fx.fakes.devices.forget(device);
        fx.fakes.devices.forget(disks.devices[0].device_id);
        persistent
    };
    let storage = fx.open();
    assert_eq!(
        storage.volume(&persistent).unwrap().state,
        VolumeState::Ready
    );
    assert_eq!(
        storage.volumes().count(),
        1,
        "the ephemeral volume is destroyed"
    );
    assert_eq!(fx.pool_files().len(), 1);
    assert_eq!(storage.pool_usage()[0].available_mb(), CAPACITY_MB - 10);
}

/// An ephemeral volume's files are not fsynced when made (manager.rs): a crash may lose them, and
/// recovery must then destroy the volume all the same.
#[test]
fn an_ephemeral_volume_whose_backing_file_a_crash_lost_is_destroyed() {
    let fx = Fixture::new();
    {
        let mut storage = fx.open();
        let slice = raw(&storage, "fast", 50);
        let disks = storage
            .attach_task(&mesoblk_agent::storage::TaskDiskRequest {
                task_id: "t1",
                resources: &[slice],
                uid: 0,
                gid: 0,
                sandbox: &fx.sandbox,
            })
            .unwrap();
        let volume = storage.volume(&disks.devices[0].volume_id).unwrap();
        std::fs::remove_file(&volume.backing).unwrap();
        fx.fakes.devices.forget(disks.devices[0].device_id);
    }
    let storage = fx.open();
    assert_eq!(
        storage.volumes().count(),
        0,
        "the ephemeral volume is destroyed"
    );
    assert!(fx.pool_files().is_empty());
    assert_eq!(storage.pool_usage()[0].available_mb(), CAPACITY_MB);
}

#[test]
fn orphan_devices_are_stopped_and_foreign_ones_left_alone() {
    let fx = Fixture::new();
    let (volume, backing) = {
        let mut storage = fx.open();
        let volume = new_volume(&mut storage, 10);
        let backing = storage.volume(&volume).unwrap().backing.clone();
        (volume, backing)
    };
    // A crash between starting a device and recording the attachment.
    let orphan = fx.fakes.devices.add_foreign(&backing);
    // Someone else's device on a file outside the pools.
    let foreign_file = fx.root.path().join("foreign.img");
    std::fs::write(&foreign_file, b"").unwrap();
    let foreign = fx.fakes.devices.add_foreign(&foreign_file);
    let mut storage = Storage::open_with(fx.config(), &fx.options(), fx.fakes.host()).unwrap();
    let report = storage.recover();
    assert_eq!(report.stopped_devices, vec![orphan]);
    let left: Vec<u32> = fx.fakes.devices.devices().keys().copied().collect();
    assert_eq!(left, vec![foreign]);
    assert_eq!(storage.volume(&volume).unwrap().state, VolumeState::Ready);
}

#[test]
fn a_reused_device_id_is_not_mistaken_for_the_volumes_device() {
    let fx = Fixture::new();
    let volume = {
        let mut storage = fx.open();
        let volume = new_volume(&mut storage, 10);
        let device = attach(&mut storage, &volume, "t1");
        fx.fakes.devices.forget(device);
        volume
    };
    // After a reboot someone else got the same device id.
    let foreign_file = fx.root.path().join("foreign.img");
    std::fs::write(&foreign_file, b"").unwrap();
    let foreign = fx.fakes.devices.add_foreign(&foreign_file);
    let storage = fx.open();
    assert_eq!(storage.volume(&volume).unwrap().state, VolumeState::Ready);
    assert!(fx.fakes.devices.devices().contains_key(&foreign));
}

#[test]
fn unreadable_records_are_reported_and_kept() {
    let fx = Fixture::new();
    drop(fx.open());
    let bad = fx.work_dir.join("storage/volumes/vol-bad.json");
    std::fs::write(&bad, b"{not json").unwrap();
    let mut storage = Storage::open_with(fx.config(), &fx.options(), fx.fakes.host()).unwrap();
    let report = storage.recover();
    assert_eq!(report.problems.len(), 1);
    assert!(
        report.problems[0].contains("unreadable volume record"),
        "{report:?}"
    );
    assert!(bad.is_file());
}
