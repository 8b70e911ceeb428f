//! Kernel tier: the agent's storage on real ublk devices (root, `ublk_drv`; run in the qemu
//! guest by `scripts/test`). BLOCK and MOUNT volumes keep their data across detach and attach,
//! device nodes belong to the task's user only, ephemeral disks and failed requests leave
//! nothing, a spare device started ahead serves its task like a fresh one, and a restarted agent
//! finds its devices (recovering one whose server died) and stops its spares.
//!
//! Needs the `mesoblk-target` binary: `$MESOBLK_TARGET_BIN`, or `target/<profile>/mesoblk-target`
//! next to this test's `deps/` folder (`cargo build -p ublk-target`). Fails, never skips,
//! without it or without ublk.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mesoblk_agent::storage::config::MIB;
use mesoblk_agent::storage::host::MkfsFormatter;
use mesoblk_agent::storage::resources::raw_disk;
use mesoblk_agent::storage::volume::{VolumeId, VolumeState};
use mesoblk_agent::storage::{
    make_spares, AttachRequest, AttachedDevice, Spare, Storage, StorageConfig, StorageOptions,
    TaskDiskRequest, TaskDisks,
};
use mesoblk_proto::mesos::v1::offer::operation::{CreateDisk, DestroyDisk};
use mesoblk_proto::mesos::v1::resource::disk_info::source;
use mesoblk_proto::mesos::v1::Resource;
use ublk_target::sys::control::{self, DeviceState};

const TASK_UID: u32 = 1234;
const TASK_GID: u32 = 5678;
const POOL_MB: u64 = 768;

fn target_bin() -> PathBuf {
    let path = std::env::var_os("MESOBLK_TARGET_BIN").map_or_else(
        || {
            let exe = std::env::current_exe().expect("test executable path");
            // target/<profile>/deps/kernel_storage-<hash> → target/<profile>/mesoblk-target
            exe.parent()
                .and_then(Path::parent)
                .expect("test executable lives in target/<profile>/deps")
                .join("mesoblk-target")
        },
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "the device server binary {} is missing: build it with `cargo build -p ublk-target` \
         (or set MESOBLK_TARGET_BIN)",
        path.display()
    );
    path
}

fn require_ublk() {
    assert!(
        Path::new(control::CONTROL_PATH).exists(),
        "/dev/ublk-control is missing: kernel tests must run where ublk_drv is loaded (scripts/vm-run)"
    );
    let root = std::fs::metadata("/proc/self").map(|m| m.uid() == 0);
    assert_eq!(root.ok(), Some(true), "kernel tests must run as root");
}

/// A pool folder, work dir, run dir and sandboxes under one temporary folder, and a storage
/// manager on the real machine. Dropping it detaches whatever is still attached.
struct Agent {
    root: tempfile::TempDir,
    storage: Option<Storage>,
    mkfs: MkfsFormatter,
}

impl Agent {
    fn start() -> Agent {
        Self::start_with(MkfsFormatter::default())
    }

    fn start_with(mkfs: MkfsFormatter) -> Agent {
        require_ublk();
        let root = tempfile::tempdir().expect("temp dir");
        let mut agent = Agent {
            root,
            storage: None,
            mkfs,
        };
        agent.restart();
        agent
    }

    fn config(&self) -> StorageConfig {
        StorageConfig::from_str(&format!(
            r#"{{"pools": [{{"name": "local", "dir": "{}", "size": "{POOL_MB}M"}}],
                "profiles": [
                    {{"name": "fast", "pool": "local", "filesystem": "ext4", "depth": 64,
                      "qos": {{"total_ops": {{"ops_per_sec": 20000}}}},
                      "spares": [{{"size": "256M"}}]}}
                ]}}"#,
            self.root.path().join("pools/local").display()
        ))
        .expect("valid config")
    }

    fn options(&self) -> StorageOptions {
        StorageOptions {
            run_dir: self.root.path().join("run"),
            target_exe: target_bin(),
            mkfs: self.mkfs.clone(),
            ..StorageOptions::new(
                self.root.path().join("work"),
                vec![self.root.path().join("pools")],
            )
        }
    }

    /// Opens the storage as a (re)started agent would, returning what recovery reported.
    fn restart(&mut self) -> mesoblk_agent::storage::RecoveryReport {
        std::fs::create_dir_all(self.root.path().join("pools")).expect("mkdir pools");
        // Forget the old manager without detaching anything: devices outlive the agent.
        self.storage = None;
        let mut storage = Storage::open(self.config(), &self.options())
            .unwrap_or_else(|e| panic!("open storage: {}", e.message()));
        let report = storage.recover();
        self.storage = Some(storage);
        report
    }

    /// Makes the profile's spare devices, as the agent's spares thread does.
    fn make_spares(&mut self) -> Vec<Spare> {
        let shared = std::sync::Mutex::new(self.storage.take().expect("storage is open"));
        make_spares(&shared, || ());
        let storage = shared.into_inner().expect("not poisoned");
        let spares = storage.spares();
        self.storage = Some(storage);
        spares
    }

    fn storage(&mut self) -> &mut Storage {
        self.storage.as_mut().expect("storage is open")
    }

    fn sandbox(&self, name: &str) -> PathBuf {
        let dir = self.root.path().join("sandboxes").join(name);
        std::fs::create_dir_all(&dir).expect("mkdir sandbox");
        dir
    }

    fn pool_files(&self) -> usize {
        std::fs::read_dir(self.root.path().join("pools/local"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    fn create(&mut self, mb: u64, target: source::Type) -> Resource {
        let provider = self.storage().provider_id().to_owned();
        let op = CreateDisk {
            source: raw_disk(&provider, "fast", mb),
            target_type: target as i32,
            target_profile: None,
        };
        let mut converted = self
            .storage()
            .create_disk(&op, None)
            .unwrap_or_else(|e| panic!("create_disk: {}", e.message()));
        converted.remove(0)
    }

    fn attach(&mut self, id: &VolumeId, task: &str, mount: Option<PathBuf>) -> AttachedDevice {
        self.storage()
            .attach(
                id,
                &AttachRequest {
                    task_id: task.into(),
                    uid: TASK_UID,
                    gid: TASK_GID,
                    mount_path: mount,
                    read_only: false,
                },
            )
            .unwrap_or_else(|e| panic!("attach: {}", e.message()))
    }

    /// Attaches a task with one `mb` MB slice of the RAW pool.
    fn attach_raw(&mut self, task: &str, mb: u64) -> TaskDisks {
        let provider = self.storage().provider_id().to_owned();
        let sandbox = self.sandbox(task);
        let resources = [raw_disk(&provider, "fast", mb)];
        self.storage()
            .attach_task(&TaskDiskRequest {
                task_id: task,
                resources: &resources,
                uid: TASK_UID,
                gid: TASK_GID,
                sandbox: &sandbox,
            })
            .unwrap_or_else(|e| panic!("attach_task: {}", e.message()))
    }

    /// Ends task `task`'s use of its disks and checks `device` and every pool file are gone.
    fn detach_task_gone(&mut self, task: &str, device: &AttachedDevice) {
        self.storage()
            .detach_task(task)
            .unwrap_or_else(|e| panic!("detach_task: {}", e.message()));
        assert_device_gone(device);
        assert_eq!(self.pool_files(), 0);
    }

    fn detach(&mut self, id: &VolumeId) {
        self.storage()
            .detach(id)
            .unwrap_or_else(|e| panic!("detach: {}", e.message()));
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let Some(storage) = self.storage.as_mut() else {
            return;
        };
        let attached: Vec<VolumeId> = storage
            .volumes()
            .filter(|v| v.state.attachment().is_some())
            .map(|v| v.id.clone())
            .collect();
        for id in attached {
            if let Err(e) = storage.detach(&id) {
                eprintln!("cleanup: detach {id}: {}", e.message());
            }
        }
    }
}

fn volume_id(disk: &Resource) -> VolumeId {
    let id = disk
        .disk
        .as_ref()
        .and_then(|d| d.source.as_ref())
        .and_then(|s| s.id.clone());
    VolumeId::parse(&id.expect("disk id")).expect("volume id")
}

/// `len` bytes of a pattern that differs per `seed`.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect()
}

/// Runs `sh -c script` as the task's user; returns whether it succeeded, and its stderr.
fn as_user(uid: u32, gid: u32, script: &str) -> (bool, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .uid(uid)
        .gid(gid)
        .output()
        .expect("run sh");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn is_mounted(path: &Path) -> bool {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    mesoblk_agent::storage::host::parse_mountinfo(&mountinfo)
        .iter()
        .any(|m| m.mount_point == path)
}

fn assert_device_gone(device: &AttachedDevice) {
    assert!(
        !control::device_ids().contains(&device.device_id),
        "device {} still exists",
        device.device_id
    );
    assert!(
        !device.block_path.exists(),
        "{} still exists",
        device.block_path.display()
    );
}

const OFFSETS: [u64; 3] = [0, 100 * MIB, 256 * MIB - 64 * 1024];

fn write_patterns(node: &Path) {
    let mut dev = File::options()
        .write(true)
        .open(node)
        .expect("open device for writing");
    for (i, offset) in OFFSETS.iter().enumerate() {
        dev.seek(SeekFrom::Start(*offset)).unwrap();
        dev.write_all(&pattern(64 * 1024, i as u64 + 7))
            .expect("write");
    }
    dev.sync_all().expect("fsync device");
}

fn check_patterns(node: &Path) {
    let mut dev = File::open(node).expect("open device for reading");
    for (i, offset) in OFFSETS.iter().enumerate() {
        let mut buf = vec![0u8; 64 * 1024];
        dev.seek(SeekFrom::Start(*offset)).unwrap();
        dev.read_exact(&mut buf).expect("read");
        assert!(
            buf == pattern(64 * 1024, i as u64 + 7),
            "data at {offset} differs"
        );
    }
}

#[test]
fn a_block_volume_belongs_to_its_task_user_and_keeps_its_data() {
    let mut agent = Agent::start();
    let disk = agent.create(256, source::Type::Block);
    let id = volume_id(&disk);
    let device = agent.attach(&id, "t1", None);

    let meta = std::fs::metadata(&device.block_path).expect("device node");
    assert!(meta.file_type().is_block_device());
    assert_eq!((meta.uid(), meta.gid()), (TASK_UID, TASK_GID));
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(nix::sys::stat::major(meta.rdev()), device.device_number.0);
    let size = std::fs::read_to_string(format!("/sys/block/ublkb{}/size", device.device_id))
        .expect("sysfs size");
    assert_eq!(size.trim().parse::<u64>().unwrap() * 512, 256 * MIB);

    let node = device.block_path.display().to_string();
    let read_first_block = format!("dd if={node} of=/dev/null bs=4096 count=1 2>&1");
    let (ok, err) = as_user(TASK_UID, TASK_GID, &read_first_block);
    assert!(ok, "the task's user cannot read its device: {err}");
    let (ok, _) = as_user(TASK_UID + 1, TASK_GID + 1, &read_first_block);
    assert!(!ok, "another user can read the task's device");

    write_patterns(&device.block_path);
    agent.detach(&id);
    assert_device_gone(&device);
    assert_eq!(
        agent.storage().volume(&id).unwrap().state,
        VolumeState::Ready
    );

    let again = agent.attach(&id, "t2", None);
    check_patterns(&again.block_path);
    agent.detach(&id);

    let before = agent.storage().pool_usage()[0].available_mb();
    agent
        .storage()
        .destroy_disk(&DestroyDisk { source: disk })
        .unwrap_or_else(|e| panic!("destroy_disk: {}", e.message()));
    assert_eq!(agent.storage().pool_usage()[0].available_mb(), before + 256);
    assert_eq!(agent.pool_files(), 0);
}

#[test]
fn a_mount_volume_is_formatted_once_and_keeps_its_files() {
    let mut agent = Agent::start();
    let disk = agent.create(256, source::Type::Mount);
    let id = volume_id(&disk);
    let first = agent.sandbox("first").join("data");
    let device = agent.attach(&id, "t1", Some(first.clone()));
    assert!(is_mounted(&first), "{} is not mounted", first.display());
    let root = std::fs::metadata(&first).unwrap();
    assert_eq!((root.uid(), root.gid()), (TASK_UID, TASK_GID));
    std::fs::write(first.join("by-root.txt"), b"hello from root").unwrap();
    let (ok, err) = as_user(
        TASK_UID,
        TASK_GID,
        &format!(
            "echo 'hello from the task' > {}/by-task.txt && sync",
            first.display()
        ),
    );
    assert!(ok, "the task's user cannot write to its mount: {err}");

    agent.detach(&id);
    assert!(!is_mounted(&first));
    assert_device_gone(&device);

    let second = agent.sandbox("second").join("data");
    agent.attach(&id, "t2", Some(second.clone()));
    assert_eq!(
        std::fs::read(second.join("by-root.txt")).unwrap(),
        b"hello from root"
    );
    assert_eq!(
        std::fs::read_to_string(second.join("by-task.txt")).unwrap(),
        "hello from the task\n"
    );
    agent.detach(&id);
    agent
        .storage()
        .destroy_disk(&DestroyDisk { source: disk })
        .unwrap_or_else(|e| panic!("destroy_disk: {}", e.message()));
    assert_eq!(agent.pool_files(), 0);
}

#[test]
fn an_ephemeral_disk_lives_as_long_as_its_task() {
    let mut agent = Agent::start();
    let disks = agent.attach_raw("t1", 256);
    let device = disks.devices[0].clone();
    assert!(device.ephemeral);
    assert!(disks.env.contains(&(
        "MESOBLK_BLOCK_DEVICE".into(),
        device.block_path.display().to_string()
    )));
    write_patterns(&device.block_path);
    assert_eq!(agent.pool_files(), 1);
    agent.detach_task_gone("t1", &device);
    assert_eq!(agent.storage().volumes().count(), 0);
}

#[test]
fn bad_requests_leave_no_file_record_or_device() {
    let mut agent = Agent::start_with(MkfsFormatter {
        ext4: "/nonexistent/mkfs.ext4".into(),
        ..MkfsFormatter::default()
    });
    let devices_before = control::device_ids();
    let provider = agent.storage().provider_id().to_owned();
    let mount = CreateDisk {
        source: raw_disk(&provider, "fast", 64),
        target_type: source::Type::Mount as i32,
        target_profile: None,
    };
    let err = agent.storage().create_disk(&mount, None).unwrap_err();
    assert!(
        err.message().contains("cannot run /nonexistent/mkfs.ext4"),
        "{}",
        err.message()
    );
    let too_big = CreateDisk {
        source: raw_disk(&provider, "fast", POOL_MB + 1),
        target_type: source::Type::Block as i32,
        target_profile: None,
    };
    let err = agent.storage().create_disk(&too_big, None).unwrap_err();
    assert!(err.message().contains("MB available"), "{}", err.message());
    let sandbox = agent.sandbox("t1");
    let scratch = {
        let mut r = raw_disk(&provider, "fast", 16);
        r.disk.as_mut().unwrap().volume = Some(mesoblk_proto::mesos::v1::Volume {
            mode: mesoblk_proto::mesos::v1::volume::Mode::Rw as i32,
            container_path: "scratch".into(),
            host_path: None,
            source: None,
        });
        r
    };
    let block = raw_disk(&provider, "fast", 16);
    let err = agent
        .storage()
        .attach_task(&TaskDiskRequest {
            task_id: "t1",
            resources: &[block, scratch],
            uid: TASK_UID,
            gid: TASK_GID,
            sandbox: &sandbox,
        })
        .unwrap_err();
    assert!(err.message().contains("mkfs.ext4"), "{}", err.message());
    assert_eq!(agent.pool_files(), 0);
    assert_eq!(agent.storage().volumes().count(), 0);
    assert_eq!(
        control::device_ids(),
        devices_before,
        "a device was left behind"
    );
    let records = std::fs::read_dir(agent.root.path().join("work/storage/volumes")).unwrap();
    assert_eq!(records.count(), 0);
}

#[test]
fn a_restarted_agent_finds_its_devices_and_recovers_a_dead_server() {
    let mut agent = Agent::start();
    let disk = agent.create(256, source::Type::Block);
    let id = volume_id(&disk);
    let device = agent.attach(&id, "t1", None);
    write_patterns(&device.block_path);

    // The agent restarts; the device kept serving.
    let report = agent.restart();
    assert_eq!(
        report.still_attached,
        vec![(id.clone(), device.device_id)],
        "{report:?}"
    );
    check_patterns(&device.block_path);

    // The device's server dies; the next agent start recovers it.
    let pid = agent
        .storage()
        .volume(&id)
        .unwrap()
        .state
        .attachment()
        .unwrap()
        .server_pid;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the server");
    let deadline = Instant::now() + Duration::from_secs(20);
    while control::status(device.device_id).map(|s| s.state).ok() != Some(DeviceState::Quiesced) {
        assert!(Instant::now() < deadline, "device never quiesced");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Reap the dead server (it was our child).
    let _ = nix::sys::wait::waitpid(
        nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
        None,
    );
    let report = agent.restart();
    assert_eq!(
        report.recovered,
        vec![(id.clone(), device.device_id)],
        "{report:?}"
    );
    assert!(report.problems.is_empty(), "{report:?}");
    assert_eq!(
        control::status(device.device_id).unwrap().state,
        DeviceState::Live
    );
    let meta = std::fs::metadata(&device.block_path).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (TASK_UID, 0o600));
    check_patterns(&device.block_path);
    let new_pid = agent
        .storage()
        .volume(&id)
        .unwrap()
        .state
        .attachment()
        .unwrap()
        .server_pid;
    assert_ne!(new_pid, pid);

    agent.detach(&id);
    assert_device_gone(&device);
}

#[test]
fn a_spare_device_serves_its_task_like_a_fresh_one_and_a_restart_stops_the_spares() {
    let mut agent = Agent::start();
    let spares = agent.make_spares();
    assert_eq!(spares.len(), 1);
    let spare = spares[0].clone();
    assert_eq!(
        control::status(spare.device_id).map(|s| s.state).ok(),
        Some(DeviceState::Live),
        "started ahead"
    );
    assert_eq!(agent.pool_files(), 1);
    let pid = ublk_target::daemon::RunDir::new(agent.root.path().join("run"))
        .read(spare.device_id)
        .expect("the spare's record")
        .pid;
    assert_eq!(
        nice_values(pid),
        [19],
        "a spare's server yields the CPU to launches"
    );

    let disks = agent.attach_raw("t1", 256);
    let device = disks.devices[0].clone();
    assert_eq!(
        (device.device_id, &device.volume_id),
        (spare.device_id, &spare.volume_id)
    );
    let meta = std::fs::metadata(&device.block_path).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (TASK_UID, 0o600));
    assert_eq!(
        nice_values(pid),
        [0],
        "a claimed spare serves at the normal priority"
    );
    let mut first = vec![0xffu8; 64 * 1024];
    File::open(&device.block_path)
        .and_then(|mut f| f.read_exact(&mut first))
        .expect("read the fresh device");
    assert!(first.iter().all(|b| *b == 0), "a spare starts out zeroed");
    write_patterns(&device.block_path);
    check_patterns(&device.block_path);

    // The next spare is made; then the agent dies and restarts: the spare's record and device
    // are gone, the task's device keeps serving.
    let next = agent.make_spares();
    assert_eq!(next.len(), 1);
    assert_ne!(next[0].device_id, device.device_id);
    let report = agent.restart();
    assert_eq!(
        report.still_attached,
        vec![(device.volume_id.clone(), device.device_id)]
    );
    assert_eq!(
        report.stopped_devices,
        vec![next[0].device_id],
        "{report:?}"
    );
    assert!(!control::device_ids().contains(&next[0].device_id));
    assert!(agent.storage().spares().is_empty());
    check_patterns(&device.block_path);

    agent.detach_task_gone("t1", &device);
}

/// The distinct nice values of a process's threads (field 19 of `/proc/<pid>/task/<tid>/stat`).
fn nice_values(pid: u32) -> Vec<i64> {
    let mut values: Vec<i64> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the server runs")
        .flatten()
        .map(|task| {
            let stat = std::fs::read_to_string(task.path().join("stat")).expect("stat");
            // After the command name's closing parenthesis: state is field 3, nice field 19.
            let after = &stat[stat.rfind(')').expect("comm") + 2..];
            after
                .split(' ')
                .nth(16)
                .expect("nice")
                .parse()
                .expect("a number")
        })
        .collect();
    values.sort_unstable();
    values.dedup();
    values
}
