//! Host tier: pools reported as RAW disks, CREATE_DISK / DESTROY_DISK with real sparse files
//! and records, capacity accounting across profiles, and every bad request failing cleanly.

mod storage_common;

use mesoblk_agent::storage::config::Filesystem;
use mesoblk_agent::storage::host::{Host, MkfsFormatter};
use mesoblk_agent::storage::testing::FAKE_FS_MARKER;
use mesoblk_agent::storage::volume::{VolumeId, VolumeState};
use mesoblk_agent::storage::{Storage, StorageConfig, StorageError};
use mesoblk_proto::mesos::v1::offer::operation::{self, DestroyDisk};
use mesoblk_proto::mesos::v1::offer::Operation;
use mesoblk_proto::mesos::v1::resource::disk_info::source;
use mesoblk_proto::mesos::v1::{value, OperationId, OperationState};
use proptest::prelude::*;
use storage_common::*;

#[test]
fn each_profile_offers_the_pools_capacity_as_a_raw_disk() {
    let fx = Fixture::new();
    let storage = fx.open();
    let (raws, volumes) = summary(&storage.resources());
    assert_eq!(
        raws,
        vec![("fast".into(), CAPACITY_MB), ("bulk".into(), CAPACITY_MB)]
    );
    assert!(volumes.is_empty());
    let r = &storage.resources()[0];
    assert_eq!(r.name, "disk");
    assert_eq!(r.r#type(), value::Type::Scalar);
    assert_eq!(r.provider_id.as_ref().unwrap().value, storage.provider_id());
    let source = r.disk.as_ref().unwrap().source.as_ref().unwrap();
    assert_eq!(source.vendor.as_deref(), Some("mesoblk"));
    assert_eq!(source.id, None);
    let info = storage.provider_info();
    assert_eq!(info.id.unwrap().value, storage.provider_id());
    let usage = &storage.pool_usage()[0];
    assert_eq!(usage.capacity_bytes, CAPACITY_MB * MB);
    assert_eq!(usage.dir, std::fs::canonicalize(&fx.pool_dir).unwrap());
}

#[test]
fn create_disk_makes_a_sparse_volume_and_every_profile_of_its_pool_shrinks() {
    let fx = Fixture::new();
    let mut storage = fx.open();
    let block = create(&mut storage, "fast", 256, source::Type::Block);
    let id = disk_id(&block);
    let source = block.disk.as_ref().unwrap().source.as_ref().unwrap();
    assert_eq!(source.r#type(), source::Type::Block);
    assert_eq!(source.profile.as_deref(), Some("fast"));
    assert_eq!(block.scalar.unwrap().value, 256.0);

    let backing = storage.pool_usage()[0].dir.join(format!("{id}.img"));
    assert_eq!(std::fs::metadata(&backing).unwrap().len(), 256 * MB);
    assert!(allocated_bytes(&backing) < MB, "backing file is not sparse");
    let record = storage
        .volume(&VolumeId::parse(&id).unwrap())
        .unwrap()
        .clone();
    assert_eq!(record.state, VolumeState::Ready);
    assert_eq!(record.filesystem, None);
    assert!(fx
        .work_dir
        .join(format!("storage/volumes/{id}.json"))
        .is_file());

    let (raws, volumes) = summary(&storage.resources());
    assert_eq!(
        raws,
        vec![
            ("fast".into(), CAPACITY_MB - 256),
            ("bulk".into(), CAPACITY_MB - 256)
        ]
    );
    assert_eq!(volumes, vec![(id, "BLOCK".into(), 256)]);
}

#[test]
fn a_mount_volume_is_formatted_once_at_creation() {
    let fx = Fixture::new();
    let mut storage = fx.open();
    let mount = create(&mut storage, "bulk", 300, source::Type::Mount);
    let id = VolumeId::parse(&disk_id(&mount)).unwrap();
    let record = storage.volume(&id).unwrap();
    assert_eq!(record.filesystem, Some(Filesystem::Xfs));
    assert_eq!(fx.fakes.formatter.formatted(), vec![record.backing.clone()]);
    let head = std::fs::read(&record.backing).unwrap();
    assert!(head.starts_with(FAKE_FS_MARKER));
    assert_eq!(
        &head[FAKE_FS_MARKER.len()..FAKE_FS_MARKER.len() + 3],
        b"xfs"
    );
}

#[test]
fn a_real_mkfs_ext4_formats_the_backing_file() {
    let fx = Fixture::new();
    let host = Host {
        formatter: Box::new(MkfsFormatter::default()),
        ..fx.fakes.host()
    };
    let mut storage = Storage::open_with(fx.config(), &fx.options(), host).unwrap();
    let mount = create(&mut storage, "fast", 64, source::Type::Mount);
    let record = storage
        .volume(&VolumeId::parse(&disk_id(&mount)).unwrap())
        .unwrap();
    let image = std::fs::read(&record.backing).unwrap();
    // The ext4 superblock sits at byte 1024; its magic 0xEF53 at offset 56, little-endian.
    assert_eq!(&image[1024 + 56..1024 + 58], &[0x53, 0xEF]);
    // Block size 4096: s_log_block_size (offset 24) is 2.
    assert_eq!(image[1024 + 24], 2);
}

#[test]
fn destroy_disk_returns_the_capacity_and_removes_everything() {
    let fx = Fixture::new();
    let mut storage = fx.open();
    let block = create(&mut storage, "fast", 512, source::Type::Block);
    let mount = create(&mut storage, "fast", 128, source::Type::Mount);
    let raw = destroy(&mut storage, &block);
    assert_eq!(raw, storage_common::raw(&storage, "fast", 512));
    let (raws, volumes) = summary(&storage.resources());
    assert_eq!(raws[0].1, CAPACITY_MB - 128);
    assert_eq!(volumes.len(), 1);
    destroy(&mut storage, &mount);
    let (raws, volumes) = summary(&storage.resources());
    assert_eq!(
        raws,
        vec![("fast".into(), CAPACITY_MB), ("bulk".into(), CAPACITY_MB)]
    );
    assert!(volumes.is_empty());
    fx.assert_nothing_left(0);
}

#[test]
fn a_retried_create_disk_returns_the_same_volume() {
    let fx = Fixture::new();
    let mut storage = fx.open();
    let op = create_op(&storage, "fast", 10, source::Type::Block);
    let first = storage.create_disk(&op, Some("op-1")).unwrap();
    let again = storage.create_disk(&op, Some("op-1")).unwrap();
    assert_eq!(first, again);
    assert_eq!(fx.pool_files().len(), 1);
    let other = storage.create_disk(&op, Some("op-2")).unwrap();
    assert_ne!(disk_id(&first[0]), disk_id(&other[0]));
}

#[test]
fn volumes_and_the_provider_id_survive_a_restart() {
    let fx = Fixture::new();
    let (provider, resources) = {
        let mut storage = fx.open();
        create(&mut storage, "fast", 100, source::Type::Block);
        create(&mut storage, "bulk", 300, source::Type::Mount);
        (storage.provider_id().to_owned(), storage.resources())
    };
    let storage = fx.open();
    assert_eq!(storage.provider_id(), provider);
    assert_eq!(storage.resources(), resources);
    assert_eq!(storage.volumes().count(), 2);
}

/// Runs a failing request and checks it left nothing behind.
fn refused(fx: &Fixture, storage: &mut Storage, op: &operation::CreateDisk, needle: &str) {
    let before = fx.pool_files().len();
    let err = storage.create_disk(op, None).expect_err(needle);
    let message = err.message();
    assert!(
        message.contains(needle),
        "expected {needle:?} in {message:?}"
    );
    fx.assert_nothing_left(before);
}

#[test]
fn bad_create_disks_fail_with_a_clear_message_and_leave_nothing() {
    let fx = Fixture::new();
    let mut storage = fx.open();
    let base = create_op(&storage, "fast", 100, source::Type::Block);

    let mut too_big = base.clone();
    too_big.source.scalar = Some(value::Scalar {
        value: (CAPACITY_MB + 1) as f64,
    });
    refused(
        &fx,
        &mut storage,
        &too_big,
        "has 2048 MB available; 2049 MB were asked for",
    );

    let unknown = create_op(&storage, "gold", 100, source::Type::Block);
    refused(
        &fx,
        &mut storage,
        &unknown,
        "unknown disk profile \"gold\" (this agent has: fast, bulk)",
    );

    let mut foreign = base.clone();
    foreign.source.provider_id.as_mut().unwrap().value = "elsewhere".into();
    refused(
        &fx,
        &mut storage,
        &foreign,
        "unknown resource provider \"elsewhere\"",
    );

    let path = create_op(&storage, "fast", 100, source::Type::Path);
    refused(
        &fx,
        &mut storage,
        &path,
        "target type PATH is not supported",
    );

    let mut fractional = base.clone();
    fractional.source.scalar = Some(value::Scalar { value: 10.5 });
    refused(
        &fx,
        &mut storage,
        &fractional,
        "10.5 MB is not a positive whole number",
    );

    let mut retarget = base.clone();
    retarget.target_profile = Some("bulk".into());
    refused(
        &fx,
        &mut storage,
        &retarget,
        "changing profiles is not supported",
    );

    fx.fakes
        .formatter
        .fail_with(Some("mkfs.ext4: no space left"));
    let mount = create_op(&storage, "fast", 100, source::Type::Mount);
    refused(&fx, &mut storage, &mount, "formatting volume vol-");
    refused(
        &fx,
        &mut storage,
        &mount,
        "as ext4 failed: mkfs.ext4: no space left",
    );
    fx.fakes.formatter.fail_with(None);

    // Capacity taken by another profile of the same pool.
    let big = create_op(&storage, "bulk", CAPACITY_MB - 50, source::Type::Block);
    storage.create_disk(&big, None).unwrap();
    refused(
        &fx,
        &mut storage,
        &base,
        "pool \"local\" (profile \"fast\") has 50 MB available",
    );
}

#[test]
fn a_failing_real_mkfs_fails_the_create_and_leaves_nothing() {
    let fx = Fixture::new();
    let host = Host {
        formatter: Box::new(MkfsFormatter {
            ext4: "false".into(),
            xfs: "/nonexistent/mkfs.xfs".into(),
        }),
        ..fx.fakes.host()
    };
    let mut storage = Storage::open_with(fx.config(), &fx.options(), host).unwrap();
    let ext4 = create_op(&storage, "fast", 16, source::Type::Mount);
    refused(&fx, &mut storage, &ext4, "false exited with exit status: 1");
    let xfs = create_op(&storage, "bulk", 16, source::Type::Mount);
    refused(&fx, &mut storage, &xfs, "cannot run /nonexistent/mkfs.xfs");
}

#[test]
fn bad_destroy_disks_are_refused() {
    let fx = Fixture::new();
    let mut storage = fx.open();
    let block = create(&mut storage, "fast", 64, source::Type::Block);
    let destroy_err = |storage: &mut Storage, source| {
        storage
            .destroy_disk(&DestroyDisk { source })
            .unwrap_err()
            .message()
    };
    let mut wrong_size = block.clone();
    wrong_size.scalar = Some(value::Scalar { value: 65.0 });
    assert!(destroy_err(&mut storage, wrong_size).contains("it has 64 MB, not 65 MB"));
    let mut unknown = block.clone();
    unknown.disk.as_mut().unwrap().source.as_mut().unwrap().id = Some("vol-nope".into());
    assert!(destroy_err(&mut storage, unknown).contains("no volume vol-nope on this agent"));
    let raw = storage_common::raw(&storage, "fast", 64);
    assert!(destroy_err(&mut storage, raw).contains("DESTROY_DISK needs a BLOCK or MOUNT disk"));
    assert_eq!(fx.pool_files().len(), 1);
}

#[test]
fn operations_report_finished_or_failed_statuses() {
    let fx = Fixture::new();
    let mut storage = fx.open();
    let create = Operation {
        r#type: Some(operation::Type::CreateDisk as i32),
        id: Some(OperationId {
            value: "op-1".into(),
        }),
        create_disk: Some(create_op(&storage, "fast", 32, source::Type::Block)),
        ..Operation::default()
    };
    let pending = storage.pending_status(&create);
    assert_eq!(pending.state(), OperationState::OperationPending);
    let status = storage.apply_operation(&create, Some("uuid-1"));
    assert_eq!(status.state(), OperationState::OperationFinished);
    assert_eq!(status.operation_id.unwrap().value, "op-1");
    assert_eq!(status.converted_resources.len(), 1);
    assert_eq!(
        status.resource_provider_id.unwrap().value,
        storage.provider_id()
    );

    let too_big = Operation {
        create_disk: Some(create_op(&storage, "fast", 99_999, source::Type::Block)),
        ..create.clone()
    };
    let status = storage.apply_operation(&too_big, Some("uuid-2"));
    assert_eq!(status.state(), OperationState::OperationFailed);
    assert!(status.message.unwrap().contains("MB available"));
    assert!(status.converted_resources.is_empty());

    let launch = Operation {
        r#type: Some(operation::Type::Launch as i32),
        ..Operation::default()
    };
    let status = storage.apply_operation(&launch, None);
    assert_eq!(status.state(), OperationState::OperationFailed);
    assert!(status
        .message
        .unwrap()
        .contains("LAUNCH is not a storage operation"));
}

#[test]
fn a_pool_outside_the_allowed_folders_stops_startup() {
    let fx = Fixture::new();
    let outside = fx.root.path().join("elsewhere");
    let config = StorageConfig::from_str(&format!(
        r#"{{"pools": [{{"name": "p", "dir": "{}", "size": "1G"}}],
            "profiles": [{{"name": "f", "pool": "p"}}]}}"#,
        outside.display()
    ))
    .unwrap();
    let err = Storage::open_with(config, &fx.options(), fx.fakes.host()).unwrap_err();
    assert!(matches!(err, StorageError::Config(_)), "{err}");
    assert!(
        err.message()
            .contains("is outside the allowed block pool folders"),
        "{}",
        err.message()
    );
    assert!(!outside.exists());
}

#[test]
fn without_ublk_the_agent_refuses_block_pools() {
    let err = mesoblk_agent::storage::check_ublk(std::path::Path::new("/nonexistent/ublk-control"))
        .unwrap_err();
    assert!(err
        .message()
        .contains("configure no pools to run without block storage"));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random creates and destroys on two profiles of one pool: the pool folder holds exactly
    /// the volumes' files, each profile offers capacity minus what the volumes took, a request
    /// is refused exactly when it does not fit, and destroying everything gives it all back.
    #[test]
    fn capacity_is_shared_by_the_profiles_of_a_pool(
        steps in proptest::collection::vec((any::<bool>(), 1u64..900, any::<bool>(), any::<prop::sample::Index>()), 1..16)
    ) {
        let fx = Fixture::new();
        let mut storage = fx.open();
        let mut disks = Vec::new();
        let mut used = 0;
        for (create_step, mb, bulk, pick) in steps {
            if create_step || disks.is_empty() {
                let profile = if bulk { "bulk" } else { "fast" };
                let op = create_op(&storage, profile, mb, source::Type::Block);
                match storage.create_disk(&op, None) {
                    Ok(mut converted) => {
                        prop_assert!(used + mb <= CAPACITY_MB);
                        used += mb;
                        disks.push(converted.remove(0));
                    }
                    Err(e) => {
                        prop_assert!(used + mb > CAPACITY_MB, "{}", e.message());
                        let is_capacity = matches!(e, StorageError::InsufficientCapacity { .. });
                        prop_assert!(is_capacity);
                    }
                }
            } else {
                let disk = disks.remove(pick.index(disks.len()));
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let mb = disk.scalar.unwrap().value as u64;
                destroy(&mut storage, &disk);
                used -= mb;
            }
            let (raws, volumes) = summary(&storage.resources());
            let free = CAPACITY_MB - used;
            let expected: Vec<(String, u64)> = if free == 0 { vec![] } else {
                vec![("fast".into(), free), ("bulk".into(), free)]
            };
            prop_assert_eq!(raws, expected);
            prop_assert_eq!(volumes.len(), disks.len());
            prop_assert_eq!(fx.pool_files().len(), disks.len());
        }
        for disk in disks {
            destroy(&mut storage, &disk);
        }
        let (raws, _) = summary(&storage.resources());
        prop_assert_eq!(raws, vec![("fast".into(), CAPACITY_MB), ("bulk".into(), CAPACITY_MB)]);
        fx.assert_nothing_left(0);
    }
}
