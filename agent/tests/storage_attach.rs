//! Host tier: attaching volumes to tasks and detaching them, on fake devices and mounts — node
//! ownership and mode, mounts, environment, ephemeral disks, and rollback of failed attaches.

mod storage_common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;

use mesoblk_agent::storage::volume::{VolumeId, VolumeKind, VolumeState};
use mesoblk_agent::storage::{
    AttachRequest, Filesystem, Storage, StorageConfig, TaskDiskRequest, ENV_BLOCK_DEVICE,
    ENV_MOUNT_PATH,
};
use mesoblk_proto::mesos::v1::resource::disk_info::source;
use mesoblk_proto::mesos::v1::{task_status, value, volume, Resource, TaskState, Volume};
use storage_common::*;
use ublk_target::cache::CacheMode;
use ublk_target::device_cache::CacheStoreSpec;

/// The task's user: someone else than us when we can chown (root), else ourselves.
fn task_user() -> (u32, u32) {
    // /proc/self belongs to our effective user and group.
    let me = std::fs::metadata("/proc/self").unwrap();
    if me.uid() == 0 {
        (4321, 8765)
    } else {
        (me.uid(), me.gid())
    }
}

fn request(task: &str, mount_path: Option<PathBuf>) -> AttachRequest {
    let (uid, gid) = task_user();
    AttachRequest {
        task_id: task.into(),
        uid,
        gid,
        mount_path,
        read_only: false,
    }
}

fn with_container_path(mut disk: Resource, path: &str, mode: volume::Mode) -> Resource {
    disk.disk.as_mut().unwrap().volume = Some(Volume {
        mode: mode as i32,
        container_path: path.into(),
        host_path: None,
        source: None,
    });
    disk
}

fn label(resource: &Resource, key: &str) -> Option<String> {
    resource
        .disk
        .as_ref()?
        .source
        .as_ref()?
        .metadata
        .as_ref()?
        .labels
        .iter()
        .find(|l| l.key == key)
        .and_then(|l| l.value.clone())
}

#[test]
fn a_block_volume_is_served_to_its_task_user_only_and_detached_with_its_data() {
    let fx = Fixture::new();
    let mut storage = fx.open();
    let disk = create(&mut storage, "fast", 256, source::Type::Block);
    let id = VolumeId::parse(&disk_id(&disk)).unwrap();
    let device = storage.attach(&id, &request("t1", None)).unwrap();
    assert_eq!(device.kind, VolumeKind::Block);
    assert!(!device.ephemeral);
    assert_eq!(device.mount_path, None);

    let meta = std::fs::metadata(&device.block_path).unwrap();
    assert_eq!((meta.uid(), meta.gid()), task_user());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let started = &fx.fakes.devices.devices()[&device.device_id].record;
    let backing = storage.volume(&id).unwrap().backing.clone();
    let spec = &started.spec;
    assert_eq!(spec.size, Some(256 * MB));
    assert_eq!(spec.qos.total_ops.unwrap().ops_per_sec, 1000, "profile QoS");
    assert!(
        matches!(&spec.backend, ublk_target::spec::BackendSpec::File { path, .. } if *path == backing)
    );

    let attachment = storage
        .volume(&id)
        .unwrap()
        .state
        .attachment()
        .cloned()
        .unwrap();
    assert_eq!(attachment.task_id, "t1");
    assert_eq!(attachment.device_id, device.device_id);
    assert_eq!(storage.task_devices("t1"), vec![device.clone()]);

    // Attached volumes cannot be attached twice or destroyed.
    let twice = storage.attach(&id, &request("t2", None)).unwrap_err();
    assert!(twice
        .message()
        .contains("cannot attach a volume that is attached to task t1"));
    let destroy = storage
        .destroy_disk(&mesoblk_proto::mesos::v1::offer::operation::DestroyDisk {
            source: disk.clone(),
        })
        .unwrap_err();
    assert!(destroy
        .message()
        .contains("cannot destroy a volume that is attached"));

    storage.detach(&id).unwrap();
    assert_eq!(storage.volume(&id).unwrap().state, VolumeState::Ready);
    assert!(fx.fakes.devices.devices().is_empty());
    assert!(backing.is_file(), "data stays in the backing file");
    assert!(storage
        .detach(&id)
        .unwrap_err()
        .message()
        .contains("cannot detach"));
    // And again, for another task.
    storage.attach(&id, &request("t2", None)).unwrap();
    storage.detach_task("t2").unwrap();
    assert_eq!(storage.volume(&id).unwrap().state, VolumeState::Ready);
}

#[test]
fn a_mount_volume_is_mounted_in_the_sandbox_and_owned_by_the_task() {
    let fx = Fixture::new();
    let mut storage = fx.open();
    let disk = create(&mut storage, "bulk", 300, source::Type::Mount);
    let id = VolumeId::parse(&disk_id(&disk)).unwrap();
    let target = fx.sandbox.join("data");
    let device = storage
        .attach(&id, &request("t1", Some(target.clone())))
        .unwrap();
    assert_eq!(device.mount_path.as_ref(), Some(&target));
    let mounts = fx.fakes.mounter.mounts();
    assert_eq!(
        mounts.get(&target),
        Some(&(device.block_path.clone(), Filesystem::Xfs, false))
    );
    let root = std::fs::metadata(&target).unwrap();
    assert_eq!((root.uid(), root.gid()), task_user());

    // A mount the task made of the device itself comes off too.
    let extra = fx.sandbox.join("extra");
    std::fs::create_dir_all(&extra).unwrap();
    use mesoblk_agent::storage::host::Mounter;
    fx.fakes
        .mounter
        .mount(&device.block_path, &extra, Filesystem::Xfs, true)
        .unwrap();
    storage.detach(&id).unwrap();
    assert!(fx.fakes.mounter.mounts().is_empty());
    assert!(fx.fakes.devices.devices().is_empty());
    // Formatted once: re-attaching does not format again.
    storage.attach(&id, &request("t2", Some(target))).unwrap();
    assert_eq!(fx.fakes.formatter.formatted().len(), 1);
}

#[test]
fn a_busy_mount_keeps_the_device_serving_until_it_can_be_unmounted() {
    let fx = Fixture::new();
    let mut storage = fx.open();
    let disk = create(&mut storage, "fast", 16, source::Type::Mount);
    let id = VolumeId::parse(&disk_id(&disk)).unwrap();
    let target = fx.sandbox.join("data");
    storage
        .attach(&id, &request("t1", Some(target.clone())))
        .unwrap();
    fx.fakes.mounter.set_busy(&target, true);
    let err = storage.detach(&id).unwrap_err();
    assert!(
        err.message().contains("cannot unmount volume"),
        "{}",
        err.message()
    );
    assert_eq!(
        fx.fakes.devices.devices().len(),
        1,
        "device must keep serving"
    );
    assert!(storage.volume(&id).unwrap().state.attachment().is_some());
    fx.fakes.mounter.set_busy(&target, false);
    storage.detach(&id).unwrap();
    assert!(fx.fakes.devices.devices().is_empty());
}

#[test]
fn a_task_gets_its_disks_in_its_environment_and_resources() {
    let fx = Fixture::new();
    let mut storage = fx.open();
    let block = create(&mut storage, "fast", 64, source::Type::Block);
    let mount = with_container_path(
        create(&mut storage, "fast", 32, source::Type::Mount),
        "db",
        volume::Mode::Rw,
    );
    let ephemeral = raw(&storage, "bulk", 100);
    let cpus = Resource {
        name: "cpus".into(),
        r#type: value::Type::Scalar as i32,
        scalar: Some(value::Scalar { value: 1.0 }),
        ..Resource::default()
    };
    let resources = vec![
        cpus.clone(),
        block.clone(),
        mount.clone(),
        ephemeral.clone(),
    ];
    let (uid, gid) = task_user();
    let disks = storage
        .attach_task(&TaskDiskRequest {
            task_id: "t1",
            resources: &resources,
            uid,
            gid,
            sandbox: &fx.sandbox,
        })
        .unwrap();
    assert_eq!(disks.devices.len(), 3);
    let [b, m, e] = [&disks.devices[0], &disks.devices[1], &disks.devices[2]];
    assert_eq!(
        (b.kind, m.kind, e.kind),
        (VolumeKind::Block, VolumeKind::Mount, VolumeKind::Block)
    );
    assert!(e.ephemeral && !b.ephemeral);
    assert_eq!(m.mount_path, Some(fx.sandbox.join("db")));

    let env: std::collections::BTreeMap<_, _> = disks.env.iter().cloned().collect();
    let path = |p: &PathBuf| p.display().to_string();
    assert_eq!(env[ENV_BLOCK_DEVICE], path(&b.block_path));
    assert_eq!(env[ENV_MOUNT_PATH], path(&fx.sandbox.join("db")));
    let var = |d: &mesoblk_agent::storage::AttachedDevice| {
        format!(
            "MESOBLK_DISK_{}",
            d.volume_id.as_str().to_uppercase().replace('-', "_")
        )
    };
    assert_eq!(env[&var(b)], path(&b.block_path));
    assert_eq!(env[&var(m)], path(&fx.sandbox.join("db")));
    assert_eq!(env[&format!("{}_DEVICE", var(m))], path(&m.block_path));
    assert_eq!(env[&var(e)], path(&e.block_path));

    assert_eq!(disks.resources[0], cpus);
    assert_eq!(
        label(&disks.resources[1], "path"),
        Some(path(&b.block_path))
    );
    assert_eq!(
        label(&disks.resources[1], "device_id"),
        Some(b.device_id.to_string())
    );
    assert_eq!(
        label(&disks.resources[2], "path"),
        Some(path(&fx.sandbox.join("db")))
    );
    assert_eq!(
        label(&disks.resources[2], "device"),
        Some(path(&m.block_path))
    );
    assert_eq!(
        label(&disks.resources[3], "device"),
        Some(path(&e.block_path))
    );

    // The ephemeral slice counts against the pool but stays in its offer.
    let usage = &storage.pool_usage()[0];
    assert_eq!(usage.available_mb(), CAPACITY_MB - 64 - 32 - 100);
    assert_eq!(usage.offered_mb(), CAPACITY_MB - 64 - 32);

    storage.detach_task("t1").unwrap();
    assert!(fx.fakes.devices.devices().is_empty());
    assert!(fx.fakes.mounter.mounts().is_empty());
    assert_eq!(storage.volumes().count(), 2, "the ephemeral volume is gone");
    assert!(storage.volumes().all(|v| v.state == VolumeState::Ready));
    assert_eq!(fx.pool_files().len(), 2);
    assert_eq!(storage.pool_usage()[0].available_mb(), CAPACITY_MB - 96);
}

#[test]
fn an_ephemeral_disk_with_a_container_path_is_a_formatted_mount() {
    let fx = Fixture::new();
    let mut storage = fx.open();
    let scratch = with_container_path(raw(&storage, "fast", 20), "scratch", volume::Mode::Ro);
    let (uid, gid) = task_user();
    let disks = storage
        .attach_task(&TaskDiskRequest {
            task_id: "t1",
            resources: &[scratch],
            uid,
            gid,
            sandbox: &fx.sandbox,
        })
        .unwrap();
    let device = &disks.devices[0];
    assert_eq!(device.kind, VolumeKind::Mount);
    assert_eq!(fx.fakes.formatter.formatted().len(), 1);
    let target = fx.sandbox.join("scratch");
    assert_eq!(
        fx.fakes.mounter.mounts()[&target],
        (device.block_path.clone(), Filesystem::Ext4, true)
    );
    storage.detach_task("t1").unwrap();
    fx.assert_nothing_left(0);
}

/// Launches a task that must fail; checks its message, that it is a TASK_ERROR, and that
/// nothing it made is left.
fn launch_fails(
    fx: &Fixture,
    storage: &mut Storage,
    resources: &[Resource],
    needle: &str,
    reason: task_status::Reason,
) {
    let before = fx.pool_files().len();
    let (uid, gid) = task_user();
    let err = storage
        .attach_task(&TaskDiskRequest {
            task_id: "doomed",
            resources,
            uid,
            gid,
            sandbox: &fx.sandbox,
        })
        .expect_err(needle);
    assert!(
        err.message().contains(needle),
        "expected {needle:?} in {:?}",
        err.message()
    );
    assert_eq!(err.task_outcome(), (TaskState::TaskError, reason));
    fx.assert_nothing_left(before);
    assert!(storage.volumes().all(|v| v.state == VolumeState::Ready));
}

#[test]
fn bad_task_disks_are_task_errors_and_leave_nothing() {
    let fx = Fixture::new();
    let mut storage = fx.open();
    let block = create(&mut storage, "fast", 64, source::Type::Block);
    let invalid = task_status::Reason::TaskInvalid;
    let failed = task_status::Reason::ContainerLaunchFailed;

    let too_big = raw(&storage, "fast", CAPACITY_MB);
    launch_fails(
        &fx,
        &mut storage,
        &[block.clone(), too_big],
        "1984 MB available; 2048 MB were asked for",
        invalid,
    );
    let unknown = raw(&storage, "gold", 1);
    launch_fails(
        &fx,
        &mut storage,
        &[unknown],
        "unknown disk profile \"gold\"",
        invalid,
    );
    let escape = with_container_path(raw(&storage, "fast", 1), "../../etc", volume::Mode::Rw);
    launch_fails(
        &fx,
        &mut storage,
        &[escape],
        "must be a relative path inside the sandbox",
        invalid,
    );
    launch_fails(
        &fx,
        &mut storage,
        &[block.clone(), block.clone()],
        "is listed twice",
        invalid,
    );
    let mut wrong_type = block.clone();
    wrong_type
        .disk
        .as_mut()
        .unwrap()
        .source
        .as_mut()
        .unwrap()
        .r#type = source::Type::Mount as i32;
    launch_fails(
        &fx,
        &mut storage,
        &[wrong_type],
        "it is a Block volume, not Mount",
        invalid,
    );

    // A symlink planted in the sandbox that leads outside it.
    std::os::unix::fs::symlink(fx.root.path(), fx.sandbox.join("out")).unwrap();
    let through_link = with_container_path(raw(&storage, "fast", 1), "out/x", volume::Mode::Rw);
    launch_fails(
        &fx,
        &mut storage,
        &[block.clone(), through_link],
        "must be a relative path inside",
        invalid,
    );
    assert!(
        !fx.root.path().join("x").exists(),
        "created a folder outside the sandbox"
    );
    std::fs::remove_file(fx.sandbox.join("out")).unwrap();

    // Host failures after some disks were already attached: everything is rolled back.
    fx.fakes.formatter.fail_with(Some("mkfs exploded"));
    let scratch = with_container_path(raw(&storage, "fast", 8), "scratch", volume::Mode::Rw);
    launch_fails(
        &fx,
        &mut storage,
        &[block.clone(), scratch.clone()],
        "mkfs exploded",
        failed,
    );
    fx.fakes.formatter.fail_with(None);
    fx.fakes.devices.fail_next_start("no ublk today");
    let slice = raw(&storage, "bulk", 8);
    launch_fails(
        &fx,
        &mut storage,
        &[slice],
        "cannot start the device of volume",
        failed,
    );
    fx.fakes.mounter.fail_next_mount("mount refused");
    launch_fails(
        &fx,
        &mut storage,
        &[block.clone(), scratch],
        "cannot mount volume",
        failed,
    );
}

#[test]
fn nested_mounts_come_off_innermost_first() {
    let fx = Fixture::new();
    let mut storage = fx.open();
    // Ids are random, so whichever sorts first, the inner mount must come off first.
    let outer = with_container_path(raw(&storage, "fast", 8), "data", volume::Mode::Rw);
    let inner = with_container_path(raw(&storage, "fast", 8), "data/inner", volume::Mode::Rw);
    let (uid, gid) = task_user();
    let disks = storage
        .attach_task(&TaskDiskRequest {
            task_id: "t1",
            resources: &[outer, inner],
            uid,
            gid,
            sandbox: &fx.sandbox,
        })
        .unwrap();
    assert_eq!(disks.devices.len(), 2);
    assert_eq!(fx.fakes.mounter.mounts().len(), 2);
    storage.detach_task("t1").unwrap();
    fx.assert_nothing_left(0);
}

#[test]
fn the_storage_manager_can_be_shared_between_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Storage>();
}

#[test]
fn a_cached_profile_serves_each_volume_through_its_own_cache_store() {
    let fx = Fixture::new();
    let cache_dir = fx.allowed.join("nvme");
    let config = StorageConfig::from_str(&format!(
        r#"{{
            "pools": [{{"name": "local", "dir": "{}", "size": "1024M"}},
                      {{"name": "nvme", "dir": "{}", "size": "256M"}}],
            "profiles": [{{"name": "cached", "pool": "local", "cache": "writeback",
                           "cache_pool": "nvme", "cache_size": "64M"}}]
        }}"#,
        fx.pool_dir.display(),
        cache_dir.display()
    ))
    .unwrap();
    let mut storage = fx.open_config(config);
    let disk = create(&mut storage, "cached", 256, source::Type::Block);
    let id = VolumeId::parse(&disk_id(&disk)).unwrap();
    let store = std::fs::canonicalize(&cache_dir)
        .unwrap()
        .join(format!("{id}.cache"));
    assert_eq!(std::fs::metadata(&store).unwrap().len(), 64 * MB);

    let device = storage.attach(&id, &request("t1", None)).unwrap();
    let served = fx.fakes.devices.devices()[&device.device_id]
        .record
        .spec
        .clone();
    let cache = served.cache.expect("the device has a cache");
    assert_eq!(cache.mode, CacheMode::Writeback);
    assert!(
        matches!(&cache.store, CacheStoreSpec::Path { path } if *path == store),
        "{cache:?}"
    );

    storage.detach_task("t1").unwrap();
    assert!(
        store.is_file(),
        "the store outlives the device (dirty data)"
    );
    destroy(&mut storage, &disk);
    assert!(
        !store.exists(),
        "destroying the volume removes its cache store"
    );
}
