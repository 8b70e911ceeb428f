//! Host tier: a task's disks attached in three steps (reserve under the lock, start the devices
//! without it, record under it again), and what an agent killed between the steps leaves for
//! recovery (fake devices standing in for ublk).

mod storage_common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use mesoblk_agent::storage::error::BoxError;
use mesoblk_agent::storage::host::{DeviceControl, DeviceProbe, Host};
use mesoblk_agent::storage::volume::{VolumeId, VolumeState};
use mesoblk_agent::storage::{attach_task_shared, Storage, StorageError, TaskDiskRequest};
use mesoblk_proto::mesos::v1::resource::disk_info::source;
use mesoblk_proto::mesos::v1::Resource;
use storage_common::*;
use ublk_target::daemon::DeviceRecord;
use ublk_target::spec::DeviceSpec;
use ublk_target::sys::device::StartMode;

fn request<'a>(fx: &'a Fixture, task: &'a str, resources: &'a [Resource]) -> TaskDiskRequest<'a> {
    TaskDiskRequest {
        task_id: task,
        resources,
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
        sandbox: &fx.sandbox,
    }
}

/// Fake devices that note, at each start, whether the storage's lock was free.
struct LockWatchingDevices {
    inner: Arc<dyn DeviceControl>,
    storage: Arc<OnceLock<Arc<Mutex<Storage>>>>,
    starts_unlocked: Arc<AtomicUsize>,
    starts_locked: Arc<AtomicUsize>,
}

impl DeviceControl for LockWatchingDevices {
    fn start(&self, spec: &DeviceSpec, mode: StartMode) -> Result<DeviceRecord, BoxError> {
        let storage = self.storage.get().expect("storage set before any start");
        let counter = match storage.try_lock() {
            Ok(_) => &self.starts_unlocked,
            Err(_) => &self.starts_locked,
        };
        counter.fetch_add(1, Ordering::SeqCst);
        self.inner.start(spec, mode)
    }
    fn probe(&self, id: u32) -> DeviceProbe {
        self.inner.probe(id)
    }
    fn stop(&self, id: u32) -> Result<(), BoxError> {
        self.inner.stop(id)
    }
    fn records(&self) -> Vec<DeviceRecord> {
        self.inner.records()
    }
}

#[test]
fn devices_start_without_the_storage_lock() {
    let fx = Fixture::new();
    let cell = Arc::new(OnceLock::new());
    let (unlocked, locked) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let fake = fx.fakes.host();
    let host = Host {
        devices: Arc::new(LockWatchingDevices {
            inner: fake.devices,
            storage: Arc::clone(&cell),
            starts_unlocked: Arc::clone(&unlocked),
            starts_locked: Arc::clone(&locked),
        }),
        mounter: fake.mounter,
        formatter: fake.formatter,
    };
    let mut storage = Storage::open_with(fx.config(), &fx.options(), host).unwrap();
    storage.recover();
    let disk = raw(&storage, "fast", 64);
    let shared = Arc::new(Mutex::new(storage));
    cell.set(Arc::clone(&shared)).ok().unwrap();
    let disks = [disk.clone(), disk];
    let got = attach_task_shared(&shared, &request(&fx, "t1", &disks)).unwrap();
    assert_eq!(got.devices.len(), 2);
    assert_eq!(
        (
            unlocked.load(Ordering::SeqCst),
            locked.load(Ordering::SeqCst)
        ),
        (2, 0)
    );
    // The books were written under the lock: both volumes attached to t1.
    let storage = shared.lock().unwrap();
    let attached: Vec<_> = storage
        .volumes()
        .filter_map(|v| v.state.attachment().map(|a| a.task_id.clone()))
        .collect();
    assert_eq!(attached, vec!["t1".to_string(), "t1".to_string()]);
}

#[test]
fn a_reserved_volume_is_kept_from_other_launches_destroys_and_releases() {
    let fx = Fixture::new();
    let mut storage = fx.open();
    let disk = create(&mut storage, "fast", 32, source::Type::Block);
    let id = VolumeId::parse(&disk_id(&disk)).unwrap();
    let resources = [disk.clone()];
    let reservation = storage
        .reserve_task(&request(&fx, "t1", &resources))
        .unwrap();
    assert_eq!(reservation.volumes(), vec![id.clone()]);
    // Another task cannot have it, DESTROY_DISK is refused, and the task's own release (its
    // launcher died meanwhile) leaves it to the launch.
    let other = storage
        .attach_task(&request(&fx, "t2", &resources))
        .unwrap_err();
    assert!(
        other.message().contains("being attached to task t1"),
        "{}",
        other.message()
    );
    let destroy = mesoblk_proto::mesos::v1::offer::operation::DestroyDisk {
        source: disk.clone(),
    };
    assert!(matches!(
        storage.destroy_disk(&destroy),
        Err(StorageError::Transition { .. })
    ));
    storage.detach_task("t1").unwrap();
    assert_eq!(storage.volume(&id).unwrap().state, VolumeState::Ready);
    let started = reservation.start_devices();
    let disks = storage.finish_task(reservation, started).unwrap();
    assert_eq!(disks.devices[0].volume_id, id);
    assert!(storage.volume(&id).unwrap().state.attachment().is_some());
    storage.detach_task("t1").unwrap();
    // Released: the volume can be destroyed now.
    storage.destroy_disk(&destroy).unwrap();
}

#[test]
fn a_device_that_does_not_start_leaves_nothing_and_frees_the_reservations() {
    let fx = Fixture::new();
    let mut storage = fx.open();
    let persistent = create(&mut storage, "fast", 32, source::Type::Block);
    let resources = [raw(&storage, "fast", 64), persistent.clone()];
    let reservation = storage
        .reserve_task(&request(&fx, "t1", &resources))
        .unwrap();
    // The first device starts, the second does not.
    fx.fakes.devices.fail_next_start("no");
    let first = reservation.start_devices();
    assert_eq!(first.len(), 1, "stops at the first failure");
    let e = storage.finish_task(reservation, first).unwrap_err();
    assert!(e.message().contains("no"), "{}", e.message());
    fx.assert_nothing_left(1);
    // The persistent volume is free again.
    let again = [persistent];
    storage
        .attach_task(&request(&fx, "t2", &again))
        .expect("the volume's reservation ended");
}

#[test]
fn an_abandoned_reservation_stops_its_devices_and_destroys_its_volumes() {
    let fx = Fixture::new();
    let mut storage = fx.open();
    let resources = [raw(&storage, "fast", 64), raw(&storage, "fast", 16)];
    let reservation = storage
        .reserve_task(&request(&fx, "t1", &resources))
        .unwrap();
    let started = reservation.start_devices();
    assert_eq!(fx.fakes.devices.devices().len(), 2);
    storage.abandon_task(reservation, started);
    fx.assert_nothing_left(0);
    assert_eq!(storage.pool_usage()[0].available_mb(), CAPACITY_MB);
}

/// The agent is killed after step 1 (volumes made and reserved) or step 2 (devices live, not
/// recorded): a restarted agent's recovery leaves nothing of the launch.
#[test]
fn a_launch_interrupted_between_its_steps_leaves_nothing_after_a_restart() {
    for devices_started in [false, true] {
        let fx = Fixture::new();
        let kept = {
            let mut storage = fx.open();
            let kept = create(&mut storage, "fast", 32, source::Type::Block);
            let resources = [raw(&storage, "fast", 64), kept.clone()];
            let reservation = storage
                .reserve_task(&request(&fx, "t1", &resources))
                .unwrap();
            if devices_started {
                let started = reservation.start_devices();
                assert!(started.iter().all(Result::is_ok));
                assert_eq!(fx.fakes.devices.devices().len(), 2);
            }
            // Killed here: neither finish_task nor abandon_task runs.
            std::mem::forget(reservation);
            kept
        };
        assert_eq!(fx.pool_files().len(), 2, "the ephemeral volume was made");
        let mut storage = Storage::open_with(fx.config(), &fx.options(), fx.fakes.host()).unwrap();
        let report = storage.recover();
        assert_eq!(report.removed.len(), 1, "{report:?}");
        assert!(report.removed[0].1.contains("ephemeral"), "{report:?}");
        assert_eq!(
            report.stopped_devices.len(),
            if devices_started { 2 } else { 0 },
            "{report:?}"
        );
        assert!(report.problems.is_empty(), "{report:?}");
        fx.assert_nothing_left(1);
        assert_eq!(storage.pool_usage()[0].available_mb(), CAPACITY_MB - 32);
        // The persistent volume is Ready and can be attached again.
        let again = [kept];
        storage.attach_task(&request(&fx, "t2", &again)).unwrap();
    }
}
