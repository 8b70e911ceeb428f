//! Host tier: spare devices (devices started ahead of their tasks) are made per profile and
//! size, claimed by matching BLOCK launches without a device start, made again, never counted
//! against the pool, and leave nothing behind when they die, the agent restarts or shuts down
//! (fake devices standing in for ublk).

mod storage_common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Mutex;

use mesoblk_agent::storage::volume::Lifetime;
use mesoblk_agent::storage::{
    attach_task_shared, make_spares, Storage, StorageConfig, TaskDiskRequest, TaskDisks,
};
use mesoblk_proto::mesos::v1::resource::disk_info::source;
use mesoblk_proto::mesos::v1::Resource;
use storage_common::*;

/// The fixture's pool with one profile, `fast`, keeping `spares` (a JSON list).
fn config(fx: &Fixture, spares: &str) -> StorageConfig {
    StorageConfig::from_str(&format!(
        r#"{{
            "pools": [{{"name": "local", "dir": "{}", "size": "{POOL_MB}M", "overcommit": {OVERCOMMIT}}}],
            "profiles": [{{"name": "fast", "pool": "local", "spares": {spares}}}]
        }}"#,
        fx.pool_dir.display()
    ))
    .expect("valid config")
}

fn shared(fx: &Fixture, spares: &str) -> Mutex<Storage> {
    Mutex::new(fx.open_config(config(fx, spares)))
}

fn launch(fx: &Fixture, storage: &Mutex<Storage>, task: &str, disks: &[Resource]) -> TaskDisks {
    try_launch(fx, storage, task, disks).expect("launch")
}

fn try_launch(
    fx: &Fixture,
    storage: &Mutex<Storage>,
    task: &str,
    disks: &[Resource],
) -> Result<TaskDisks, String> {
    let request = TaskDiskRequest {
        task_id: task,
        resources: disks,
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
        sandbox: &fx.sandbox,
    };
    attach_task_shared(storage, &request).map_err(|e| e.message())
}

fn raw_of(storage: &Mutex<Storage>, mb: u64) -> Resource {
    raw(&storage.lock().unwrap(), "fast", mb)
}

fn spare_devices(storage: &Mutex<Storage>) -> Vec<u32> {
    let storage = storage.lock().unwrap();
    storage.spares().iter().map(|s| s.device_id).collect()
}

fn adds(fx: &Fixture) -> usize {
    fx.fakes.devices.starts().0
}

#[test]
fn a_matching_block_launch_gets_a_spare_without_a_device_start_and_the_spare_is_made_again() {
    let fx = Fixture::new();
    let storage = shared(&fx, r#"[{"size": "64M", "count": 2}]"#);
    make_spares(&storage, || ());
    let spares = spare_devices(&storage);
    assert_eq!(spares.len(), 2);
    assert_eq!(adds(&fx), 2);
    {
        let storage = storage.lock().unwrap();
        let usage = &storage.pool_usage()[0];
        assert_eq!((usage.volumes, usage.spares), (0, 2));
        assert_eq!(usage.available_mb(), CAPACITY_MB, "spares hold no capacity");
        let (raws, _) = summary(&storage.resources());
        assert_eq!(raws, vec![("fast".to_string(), CAPACITY_MB)]);
    }
    assert_eq!(fx.pool_files().len(), 2);

    let disks = launch(&fx, &storage, "t1", &[raw_of(&storage, 64)]);
    assert_eq!(adds(&fx), 2, "the launch started no device");
    let device = &disks.devices[0];
    assert!(spares.contains(&device.device_id), "{device:?}");
    assert!(device.ephemeral);
    let mode = std::fs::metadata(&device.block_path)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "handed over like a fresh device");
    {
        let storage = storage.lock().unwrap();
        let volume = storage.volume(&device.volume_id).unwrap();
        assert_eq!(
            volume.lifetime,
            Lifetime::Ephemeral {
                task_id: "t1".into()
            }
        );
        assert_eq!(storage.spares().len(), 1);
        assert_eq!(storage.pool_usage()[0].available_mb(), CAPACITY_MB - 64);
    }

    // Made again (by the agent's spares thread, which the launch woke).
    make_spares(&storage, || ());
    assert_eq!(spare_devices(&storage).len(), 2);
    assert_eq!(adds(&fx), 3);

    // Another size, or a MOUNT disk, starts its own device.
    launch(&fx, &storage, "t2", &[raw_of(&storage, 32)]);
    assert_eq!(adds(&fx), 4);
    assert_eq!(spare_devices(&storage).len(), 2);

    // The task's end destroys the claimed spare like any ephemeral volume.
    storage.lock().unwrap().detach_task("t1").unwrap();
    storage.lock().unwrap().detach_task("t2").unwrap();
    assert!(!fx.fakes.devices.devices().contains_key(&device.device_id));
    assert_eq!(fx.pool_files().len(), 2, "only the spares' files are left");
}

#[test]
fn each_spare_start_first_yields_to_launches() {
    let fx = Fixture::new();
    let storage = shared(&fx, r#"[{"size": "64M", "count": 2}]"#);
    // The devices started when each yield happened: one yield before each start, and a last
    // one before finding nothing more to make.
    let seen = Mutex::new(Vec::new());
    make_spares(&storage, || seen.lock().unwrap().push(adds(&fx)));
    assert_eq!(seen.into_inner().unwrap(), [0, 1, 2]);
}

#[test]
fn a_spare_whose_server_died_is_destroyed_and_the_launch_starts_its_own_device() {
    let fx = Fixture::new();
    let storage = shared(&fx, r#"[{"size": "64M"}]"#);
    make_spares(&storage, || ());
    let dead = storage.lock().unwrap().spares()[0].clone();
    fx.fakes.devices.kill_server(dead.device_id);
    let disks = launch(&fx, &storage, "t1", &[raw_of(&storage, 64)]);
    assert_ne!(disks.devices[0].volume_id, dead.volume_id);
    assert_eq!(adds(&fx), 2, "the launch started its own device");
    assert!(storage.lock().unwrap().volume(&dead.volume_id).is_none());
    assert!(spare_devices(&storage).is_empty());
    assert_eq!(fx.pool_files().len(), 1, "the dead spare's file is gone");
    assert_eq!(
        fx.fakes.devices.devices().len(),
        1,
        "the dead spare's device is gone"
    );
}

#[test]
fn spares_are_claimed_only_within_the_pools_capacity() {
    let fx = Fixture::new();
    let storage = shared(&fx, r#"[{"size": "1G", "count": 2}]"#);
    make_spares(&storage, || ());
    assert_eq!(spare_devices(&storage).len(), 2);
    // A persistent volume takes the whole pool: spares were never counted, so it fits.
    {
        let mut storage = storage.lock().unwrap();
        create(&mut storage, "fast", CAPACITY_MB, source::Type::Block);
    }
    let e = try_launch(&fx, &storage, "t1", &[raw_of(&storage, 1024)]).unwrap_err();
    assert!(e.contains("has 0 MB available"), "{e}");
    assert_eq!(
        spare_devices(&storage).len(),
        2,
        "the spares stay for later"
    );
    // With the pool full, no spare is made either.
    let before = adds(&fx);
    {
        let mut storage = storage.lock().unwrap();
        let spare = storage.spares()[0].clone();
        storage.close_spares();
        assert!(storage.volume(&spare.volume_id).is_none());
    }
    make_spares(&storage, || ());
    assert_eq!(adds(&fx), before);
}

#[test]
fn a_failed_launch_stops_the_spare_it_claimed() {
    let fx = Fixture::new();
    let storage = shared(&fx, r#"[{"size": "64M"}]"#);
    make_spares(&storage, || ());
    // The second disk does not fit: the whole launch fails after the first claimed the spare.
    let disks = [raw_of(&storage, 64), raw_of(&storage, CAPACITY_MB)];
    let e = try_launch(&fx, &storage, "t1", &disks).unwrap_err();
    assert!(e.contains("available"), "{e}");
    fx.assert_nothing_left(0);
}

#[test]
fn a_spare_that_does_not_start_leaves_nothing() {
    let fx = Fixture::new();
    let storage = shared(&fx, r#"[{"size": "64M"}]"#);
    fx.fakes.devices.fail_next_start("no ublk today");
    make_spares(&storage, || ());
    fx.assert_nothing_left(0);
    make_spares(&storage, || ());
    assert_eq!(
        spare_devices(&storage).len(),
        1,
        "the next request tries again"
    );
}

#[test]
fn a_restart_or_a_shutdown_leaves_no_spare_behind() {
    let fx = Fixture::new();
    let spares = r#"[{"size": "64M", "count": 2}, {"size": "16M"}]"#;
    let storage = shared(&fx, spares);
    make_spares(&storage, || ());
    assert_eq!(spare_devices(&storage).len(), 3);
    // The agent dies: its spares' devices keep running and their records stay.
    drop(storage);
    assert_eq!(fx.fakes.devices.devices().len(), 3);
    let mut restarted =
        Storage::open_with(config(&fx, spares), &fx.options(), fx.fakes.host()).unwrap();
    let report = restarted.recover();
    assert_eq!((report.removed.len(), report.stopped_devices.len()), (3, 3));
    fx.assert_nothing_left(0);

    let storage = Mutex::new(restarted);
    make_spares(&storage, || ());
    assert_eq!(spare_devices(&storage).len(), 3);
    storage.lock().unwrap().close_spares();
    fx.assert_nothing_left(0);
    make_spares(&storage, || ());
    fx.assert_nothing_left(0);
}
