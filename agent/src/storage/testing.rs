//! Test doubles of the host services, for tests of the storage manager that run without ublk,
//! root or mounts. Each fake is a cheap handle on shared state: keep a clone to inspect what the
//! manager did or to inject failures.
//!
//! - [`FakeDevices`] "serves" a device by creating a regular file `ublkbN` in a folder (so
//!   ownership and permission changes can be checked) and keeps kernel-like states;
//! - [`FakeMounter`] remembers mounts;
//! - [`FakeFormatter`] writes a marker at the start of the file, or fails on request.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use ublk_target::daemon::DeviceRecord;
use ublk_target::spec::DeviceSpec;
use ublk_target::sys::control::DeviceState;
use ublk_target::sys::device::StartMode;

use super::config::Filesystem;
use super::error::BoxError;
use super::host::{DeviceControl, DeviceProbe, Formatter, Host, Mounter};

/// What [`FakeFormatter`] writes at offset 0 of a formatted file.
pub const FAKE_FS_MARKER: &[u8] = b"FAKEFS:";

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One fake device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeDevice {
    /// Its record (as a server would write it).
    pub record: DeviceRecord,
    /// Its state as the kernel would report it.
    pub state: DeviceState,
    /// Whether its record is still in the (fake) run dir.
    pub has_record: bool,
}

#[derive(Debug, Default)]
struct DevicesState {
    devices: BTreeMap<u32, FakeDevice>,
    next_pid: u32,
    fail_next_start: Option<String>,
    starts: usize,
    recoveries: usize,
}

/// Fake device servers: device `N`'s node is the regular file `<dir>/ublkbN`.
#[derive(Clone, Debug)]
pub struct FakeDevices {
    dir: PathBuf,
    state: Arc<Mutex<DevicesState>>,
}

impl FakeDevices {
    /// Devices whose nodes are created in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> FakeDevices {
        FakeDevices {
            dir: dir.into(),
            state: Arc::new(Mutex::new(DevicesState {
                next_pid: 1_000_000,
                ..DevicesState::default()
            })),
        }
    }

    /// Makes the next `start` fail with `message`.
    pub fn fail_next_start(&self, message: &str) {
        lock(&self.state).fail_next_start = Some(message.to_owned());
    }

    /// The devices that exist.
    pub fn devices(&self) -> BTreeMap<u32, FakeDevice> {
        lock(&self.state).devices.clone()
    }

    /// How many devices were started with [`StartMode::Add`] and [`StartMode::Recover`].
    pub fn starts(&self) -> (usize, usize) {
        let state = lock(&self.state);
        (state.starts, state.recoveries)
    }

    /// Simulates a server crash: the device is quiesced, waiting for recovery.
    pub fn kill_server(&self, id: u32) {
        if let Some(d) = lock(&self.state).devices.get_mut(&id) {
            d.state = DeviceState::Quiesced;
        }
    }

    /// Simulates a reboot: the device, its node and its record vanish.
    pub fn forget(&self, id: u32) {
        lock(&self.state).devices.remove(&id);
        let _ = std::fs::remove_file(self.node(id));
    }

    /// Adds a device as if someone else had started it on `backing`.
    pub fn add_foreign(&self, backing: &Path) -> u32 {
        let spec = DeviceSpec {
            backend: ublk_target::spec::BackendSpec::File {
                path: backing.to_owned(),
                direct_io: Default::default(),
            },
            size: None,
            id: None,
            queues: 1,
            depth: 1,
            max_io_bytes: 4096,
            qos: Default::default(),
            qos_group: None,
            cache: None,
        };
        self.start(&spec, StartMode::Add).expect("fake start").id
    }

    fn node(&self, id: u32) -> PathBuf {
        self.dir.join(format!("ublkb{id}"))
    }
}

impl DeviceControl for FakeDevices {
    fn start(&self, spec: &DeviceSpec, mode: StartMode) -> Result<DeviceRecord, BoxError> {
        let mut state = lock(&self.state);
        if let Some(message) = state.fail_next_start.take() {
            return Err(message.into());
        }
        state.next_pid += 1;
        let pid = state.next_pid;
        let id = match mode {
            StartMode::Add => (0..)
                .find(|id| !state.devices.contains_key(id))
                .unwrap_or(0),
            StartMode::Recover => {
                let id = spec.id.ok_or("recovery needs the device id")?;
                match state.devices.get(&id) {
                    Some(d) if d.state == DeviceState::Quiesced => id,
                    _ => return Err(format!("device {id} is not quiesced").into()),
                }
            }
        };
        let record = DeviceRecord {
            id,
            block_path: self.node(id),
            pid,
            spec: DeviceSpec {
                id: Some(id),
                ..spec.clone()
            },
        };
        if mode == StartMode::Add {
            std::fs::write(self.node(id), b"")?;
            state.starts += 1;
        } else {
            state.recoveries += 1;
        }
        state.devices.insert(
            id,
            FakeDevice {
                record: record.clone(),
                state: DeviceState::Live,
                has_record: true,
            },
        );
        Ok(record)
    }

    fn probe(&self, id: u32) -> DeviceProbe {
        let state = lock(&self.state);
        let device = state.devices.get(&id);
        DeviceProbe {
            state: device.map(|d| d.state),
            record: device.filter(|d| d.has_record).map(|d| d.record.clone()),
        }
    }

    fn stop(&self, id: u32) -> Result<(), BoxError> {
        lock(&self.state).devices.remove(&id);
        let _ = std::fs::remove_file(self.node(id));
        Ok(())
    }

    fn records(&self) -> Vec<DeviceRecord> {
        lock(&self.state)
            .devices
            .values()
            .filter(|d| d.has_record)
            .map(|d| d.record.clone())
            .collect()
    }
}

#[derive(Debug, Default)]
struct MounterState {
    mounts: BTreeMap<PathBuf, (PathBuf, Filesystem, bool)>,
    busy: BTreeSet<PathBuf>,
    fail_mount: Option<String>,
}

/// Fake mounts: a map from mount point to device.
#[derive(Clone, Debug, Default)]
pub struct FakeMounter {
    state: Arc<Mutex<MounterState>>,
}

impl FakeMounter {
    /// Mount points and what is mounted there: (device, file system, read-only).
    pub fn mounts(&self) -> BTreeMap<PathBuf, (PathBuf, Filesystem, bool)> {
        lock(&self.state).mounts.clone()
    }

    /// Makes unmounting `target` fail with EBUSY (or succeed again with `false`). A mount
    /// point with another mount below it is busy too.
    pub fn set_busy(&self, target: &Path, busy: bool) {
        let mut state = lock(&self.state);
        if busy {
            state.busy.insert(target.to_owned());
        } else {
            state.busy.remove(target);
        }
    }

    /// Makes the next mount fail.
    pub fn fail_next_mount(&self, message: &str) {
        lock(&self.state).fail_mount = Some(message.to_owned());
    }
}

impl Mounter for FakeMounter {
    fn mount(
        &self,
        device: &Path,
        target: &Path,
        filesystem: Filesystem,
        read_only: bool,
    ) -> std::io::Result<()> {
        let mut state = lock(&self.state);
        if let Some(message) = state.fail_mount.take() {
            return Err(std::io::Error::other(message));
        }
        if !target.is_dir() {
            return Err(std::io::ErrorKind::NotFound.into());
        }
        if !device.exists() {
            return Err(std::io::Error::other("no such device"));
        }
        state.mounts.insert(
            target.to_owned(),
            (device.to_owned(), filesystem, read_only),
        );
        Ok(())
    }

    fn unmount(&self, target: &Path) -> std::io::Result<()> {
        let mut state = lock(&self.state);
        let nested = state
            .mounts
            .keys()
            .any(|other| other != target && other.starts_with(target));
        if state.busy.contains(target) || nested {
            return Err(std::io::Error::from_raw_os_error(nix::libc::EBUSY));
        }
        match state.mounts.remove(target) {
            Some(_) => Ok(()),
            None => Err(std::io::Error::from_raw_os_error(nix::libc::EINVAL)),
        }
    }

    fn mounts_of(&self, device: &Path) -> Vec<PathBuf> {
        lock(&self.state)
            .mounts
            .iter()
            .filter(|(_, (d, _, _))| d == device)
            .map(|(target, _)| target.clone())
            .collect()
    }
}

/// A formatter that writes [`FAKE_FS_MARKER`] and the file system's name at offset 0.
#[derive(Clone, Debug, Default)]
pub struct FakeFormatter {
    fail: Arc<Mutex<Option<String>>>,
    formatted: Arc<Mutex<Vec<PathBuf>>>,
}

impl FakeFormatter {
    /// Makes every format fail with `message` (or succeed again with `None`).
    pub fn fail_with(&self, message: Option<&str>) {
        *lock(&self.fail) = message.map(str::to_owned);
    }

    /// The files formatted so far.
    pub fn formatted(&self) -> Vec<PathBuf> {
        lock(&self.formatted).clone()
    }
}

impl Formatter for FakeFormatter {
    fn format(&self, path: &Path, filesystem: Filesystem) -> Result<(), String> {
        if let Some(message) = lock(&self.fail).clone() {
            return Err(message);
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| e.to_string())?;
        file.write_all(FAKE_FS_MARKER)
            .and_then(|()| file.write_all(filesystem.name().as_bytes()))
            .map_err(|e| e.to_string())?;
        lock(&self.formatted).push(path.to_owned());
        Ok(())
    }
}

/// A [`Host`] of fakes, with handles on each.
#[derive(Clone, Debug)]
pub struct FakeHost {
    /// The devices.
    pub devices: FakeDevices,
    /// The mounts.
    pub mounter: FakeMounter,
    /// mkfs.
    pub formatter: FakeFormatter,
}

impl FakeHost {
    /// Fakes whose device nodes live in `dev_dir`.
    pub fn new(dev_dir: impl Into<PathBuf>) -> FakeHost {
        FakeHost {
            devices: FakeDevices::new(dev_dir),
            mounter: FakeMounter::default(),
            formatter: FakeFormatter::default(),
        }
    }

    /// A [`Host`] sharing these fakes' state.
    pub fn host(&self) -> Host {
        Host {
            devices: Arc::new(self.devices.clone()),
            mounter: Box::new(self.mounter.clone()),
            formatter: Box::new(self.formatter.clone()),
        }
    }
}
