//! What the storage manager needs from the machine, behind three small traits so that all of its
//! logic runs in host tests with the fakes of [`super::testing`]:
//!
//! - [`DeviceControl`]: device servers (start, probe, stop), implemented by [`UblkDevices`] with
//!   `ublk-target`'s daemon records and control commands;
//! - [`Mounter`]: mounting file systems, implemented by [`SystemMounter`] with `mount(2)`;
//! - [`Formatter`]: making file systems, implemented by [`MkfsFormatter`] with `mkfs.ext4` /
//!   `mkfs.xfs`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, MsFlags};
use ublk_target::admin::{self, AdminRequest, AdminResponse, DeviceReport};
use ublk_target::daemon::{self, DeviceRecord, RunDir};
use ublk_target::spec::DeviceSpec;
use ublk_target::sys::control::{self, ControlError, DeviceState};
use ublk_target::sys::device::StartMode;

use super::config::Filesystem;
use super::error::BoxError;
use super::idle_servers::IdleServers;

/// How long stopping a device waits for its server to exit.
const SERVER_EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// The nice value of a spare device's server until a task claims it: the lowest priority.
const SPARE_NICE: i32 = 19;
/// How many lines of mkfs's output go into an error message.
const MKFS_OUTPUT_LINES_MAX: usize = 5;

/// What the kernel and the run dir know about one device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceProbe {
    /// The kernel's state of the device; `None` when the kernel has no such device.
    pub state: Option<DeviceState>,
    /// The device's record in the run dir, if its server left one.
    pub record: Option<DeviceRecord>,
}

/// Device servers.
pub trait DeviceControl: Send + Sync {
    /// Starts a server for `spec` (with [`StartMode::Recover`], for the quiesced device
    /// `spec.id`) and returns once the device is live.
    fn start(&self, spec: &DeviceSpec, mode: StartMode) -> Result<DeviceRecord, BoxError>;
    /// What is known about device `id`.
    fn probe(&self, id: u32) -> DeviceProbe;
    /// Stops device `id`, waits for its server to exit, and makes sure the kernel forgot it. A
    /// device that does not exist is already stopped.
    fn stop(&self, id: u32) -> Result<(), BoxError>;
    /// The records of every device started through this control.
    fn records(&self) -> Vec<DeviceRecord>;
    /// The device server's QoS limits and I/O statistics, if it answers.
    fn report(&self, _id: u32) -> Option<DeviceReport> {
        None
    }
    /// Lets go of whatever is kept ahead of devices (idle servers), at agent shutdown.
    fn shutdown(&self) {}
    /// Starts a spare device (`storage::spares`): as [`DeviceControl::start`] with
    /// [`StartMode::Add`], but its server runs at the lowest CPU priority until
    /// [`DeviceControl::promote`], so making spares does not slow the launches beside it.
    fn start_spare(&self, spec: &DeviceSpec) -> Result<DeviceRecord, BoxError> {
        self.start(spec, StartMode::Add)
    }
    /// Gives a claimed spare's server the normal CPU priority back.
    fn promote(&self, _device: &DeviceRecord) -> Result<(), BoxError> {
        Ok(())
    }
}

/// Mounting file systems.
pub trait Mounter: Send + Sync {
    /// Mounts `device` (a `filesystem`) on the existing folder `target`, `nosuid,nodev`.
    fn mount(
        &self,
        device: &Path,
        target: &Path,
        filesystem: Filesystem,
        read_only: bool,
    ) -> std::io::Result<()>;
    /// Unmounts `target`.
    fn unmount(&self, target: &Path) -> std::io::Result<()>;
    /// Where `device` is mounted (in this process's mount namespace), deepest first.
    fn mounts_of(&self, device: &Path) -> Vec<PathBuf>;
}

/// Making file systems.
pub trait Formatter: Send + Sync {
    /// Formats the file or device at `path` as `filesystem`; the error is what mkfs said.
    fn format(&self, path: &Path, filesystem: Filesystem) -> Result<(), String>;
}

/// The machine's services, as the storage manager uses them.
pub struct Host {
    /// Device servers.
    pub devices: Arc<dyn DeviceControl>,
    /// Mounts.
    pub mounter: Box<dyn Mounter>,
    /// mkfs.
    pub formatter: Box<dyn Formatter>,
}

/// Device servers started as `<exe> serve` processes with records in a run dir.
#[derive(Clone, Debug)]
pub struct UblkDevices {
    exe: PathBuf,
    run_dir: RunDir,
    idle: Arc<IdleServers>,
}

impl UblkDevices {
    /// Devices served by the `mesoblk-target` binary `exe`, recorded in `run_dir`, with no
    /// idle servers.
    pub fn new(exe: impl Into<PathBuf>, run_dir: impl Into<PathBuf>) -> UblkDevices {
        UblkDevices::with_idle_servers(exe, run_dir, 0)
    }

    /// The same, keeping `idle` servers started ahead of their devices (see
    /// [`super::idle_servers`]); the pool fills in the background.
    pub fn with_idle_servers(
        exe: impl Into<PathBuf>,
        run_dir: impl Into<PathBuf>,
        idle: usize,
    ) -> UblkDevices {
        let exe = exe.into();
        let run_dir = RunDir::new(run_dir.into());
        let idle = IdleServers::new(exe.clone(), run_dir.clone(), idle);
        idle.refill();
        UblkDevices { exe, run_dir, idle }
    }

    /// How many idle servers wait now.
    pub fn idle_servers(&self) -> usize {
        self.idle.idle()
    }

    /// Hands `spec` to an idle server (at `nice`, when given) and returns once the device is
    /// live; then has the pool topped up.
    fn serve_on_idle(
        &self,
        spec: &DeviceSpec,
        nice: Option<i32>,
    ) -> Result<DeviceRecord, BoxError> {
        let started = self.idle.take().and_then(|server| {
            // Threads inherit their creator's nice value: the idle server has only its main
            // thread until it reads the spec, so its queue threads start at `nice` too.
            if let Some(nice) = nice {
                if let Err(e) = renice(server.pid(), nice) {
                    tracing::warn!(pid = server.pid(), error = %e, "cannot lower a device server's priority");
                }
            }
            server.serve(spec)
        });
        // Topped up only now, so the next server's exec does not compete with this start for
        // the CPU.
        self.idle.refill();
        Ok(started?)
    }
}

impl DeviceControl for UblkDevices {
    fn start(&self, spec: &DeviceSpec, mode: StartMode) -> Result<DeviceRecord, BoxError> {
        match mode {
            StartMode::Add => self.serve_on_idle(spec, None),
            StartMode::Recover => Ok(daemon::spawn(&self.exe, spec, mode, &self.run_dir)?),
        }
    }

    fn shutdown(&self) {
        self.idle.close();
    }

    fn start_spare(&self, spec: &DeviceSpec) -> Result<DeviceRecord, BoxError> {
        self.serve_on_idle(spec, Some(SPARE_NICE))
    }

    fn promote(&self, device: &DeviceRecord) -> Result<(), BoxError> {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", device.pid))?;
        for task in tasks {
            let tid = task?.file_name().to_string_lossy().parse::<u32>()?;
            renice(tid, 0)?;
        }
        Ok(())
    }

    fn probe(&self, id: u32) -> DeviceProbe {
        let state = if control::device_ids().contains(&id) {
            control::status(id).ok().map(|s| s.state)
        } else {
            None
        };
        DeviceProbe {
            state,
            record: self.run_dir.read(id),
        }
    }

    fn stop(&self, id: u32) -> Result<(), BoxError> {
        // Read before stopping: a server that exits cleanly removes its record.
        let pid = self.run_dir.read(id).map(|r| r.pid);
        match control::stop(id) {
            Ok(()) | Err(ControlError::UnknownDevice(_)) => {}
            Err(e) => return Err(e.into()),
        }
        if let Some(pid) = pid {
            wait_for_exit(pid, SERVER_EXIT_TIMEOUT)?;
        }
        // A server that exited cleanly deleted its device; one that had died left it behind.
        if control::device_ids().contains(&id) {
            match control::delete(id) {
                Ok(()) | Err(ControlError::UnknownDevice(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.run_dir.remove(id);
        let _ = std::fs::remove_file(self.run_dir.socket_path(id));
        Ok(())
    }

    fn records(&self) -> Vec<DeviceRecord> {
        let Ok(entries) = std::fs::read_dir(self.run_dir.path()) else {
            return Vec::new();
        };
        let mut ids: Vec<u32> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".json")?.parse().ok())
            .collect();
        ids.sort_unstable();
        ids.into_iter()
            .filter_map(|id| self.run_dir.read(id))
            .collect()
    }

    fn report(&self, id: u32) -> Option<DeviceReport> {
        match admin::ask(&self.run_dir.socket_path(id), &AdminRequest::Status) {
            Ok(AdminResponse::Status(report)) => Some(*report),
            _ => None,
        }
    }
}

/// Waits until process `pid` is gone (or a zombie), then reaps it if it is our child (servers
/// the agent started are its children until it restarts).
fn wait_for_exit(pid: u32, timeout: Duration) -> Result<(), BoxError> {
    let deadline = Instant::now() + timeout;
    while process_alive(pid) {
        if Instant::now() > deadline {
            return Err(format!("device server {pid} did not exit within {timeout:?}").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Ok(raw) = i32::try_from(pid) {
        let _ = nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(raw),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
    }
    Ok(())
}

/// Whether `pid` runs (zombies do not count).
pub fn process_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state is the first field after the parenthesised command name.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z" | "X") | None)
}

/// Mounts with `mount(2)`; finds mounts in `/proc/self/mountinfo`.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemMounter;

impl Mounter for SystemMounter {
    fn mount(
        &self,
        device: &Path,
        target: &Path,
        filesystem: Filesystem,
        read_only: bool,
    ) -> std::io::Result<()> {
        let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        if read_only {
            flags |= MsFlags::MS_RDONLY;
        }
        nix::mount::mount(
            Some(device),
            target,
            Some(filesystem.name()),
            flags,
            None::<&str>,
        )?;
        Ok(())
    }

    fn unmount(&self, target: &Path) -> std::io::Result<()> {
        nix::mount::umount2(target, MntFlags::empty())?;
        Ok(())
    }

    fn mounts_of(&self, device: &Path) -> Vec<PathBuf> {
        use std::os::unix::fs::MetadataExt;
        let Ok(meta) = std::fs::metadata(device) else {
            return Vec::new();
        };
        let rdev = meta.rdev();
        let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut found: Vec<PathBuf> = parse_mountinfo(&text)
            .into_iter()
            .filter(|m| (m.major, m.minor) == (major, minor))
            .map(|m| m.mount_point)
            .collect();
        // Deepest first, so nested mounts come off before their parents.
        found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        found
    }
}

/// One line of `/proc/<pid>/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountInfo {
    /// Device major number.
    pub major: u64,
    /// Device minor number.
    pub minor: u64,
    /// Where it is mounted.
    pub mount_point: PathBuf,
}

/// Parses `/proc/<pid>/mountinfo` (`id parent major:minor root mount-point ...`; spaces and
/// other special characters in paths are written as `\ooo` octal escapes). Malformed lines are
/// skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let (_, _, dev, _, mount_point) = (
                fields.next()?,
                fields.next()?,
                fields.next()?,
                fields.next()?,
                fields.next()?,
            );
            let (major, minor) = dev.split_once(':')?;
            Some(MountInfo {
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
                mount_point: PathBuf::from(unescape_octal(mount_point)),
            })
        })
        .collect()
}

fn unescape_octal(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match escaped {
            Some(d) => {
                let value = d.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs `mkfs.ext4` / `mkfs.xfs` (or the programs configured in their place).
///
/// Arguments: ext4 `-q -F -b 4096 -E nodiscard PATH`, xfs `-q -f -K -b size=4096 -s size=4096
/// PATH`. The 4096-byte block and sector sizes keep the file system mountable whatever logical
/// block size the device ends up with (the backing store's direct-I/O alignment, 512 to 4096).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MkfsFormatter {
    /// The ext4 mkfs program.
    pub ext4: PathBuf,
    /// The XFS mkfs program.
    pub xfs: PathBuf,
}

impl Default for MkfsFormatter {
    fn default() -> Self {
        MkfsFormatter {
            ext4: "mkfs.ext4".into(),
            xfs: "mkfs.xfs".into(),
        }
    }
}

impl Formatter for MkfsFormatter {
    fn format(&self, path: &Path, filesystem: Filesystem) -> Result<(), String> {
        let (program, args): (&Path, &[&str]) = match filesystem {
            Filesystem::Ext4 => (&self.ext4, &["-q", "-F", "-b", "4096", "-E", "nodiscard"]),
            Filesystem::Xfs => (
                &self.xfs,
                &["-q", "-f", "-K", "-b", "size=4096", "-s", "size=4096"],
            ),
        };
        let output = Command::new(program)
            .args(args)
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
        if output.status.success() {
            return Ok(());
        }
        let mut said = String::from_utf8_lossy(&output.stderr).into_owned();
        said.push_str(&String::from_utf8_lossy(&output.stdout));
        let lines: Vec<&str> = said
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .take(MKFS_OUTPUT_LINES_MAX)
            .collect();
        Err(format!(
            "{} exited with {}{}{}",
            program.display(),
            output.status,
            if lines.is_empty() { "" } else { ": " },
            lines.join(" / ")
        ))
    }
}

/// Sets the nice value of one thread (`setpriority(PRIO_PROCESS, tid)` acts on a thread).
fn renice(tid: u32, nice: i32) -> std::io::Result<()> {
    let pid = i32::try_from(tid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| std::io::Error::other(format!("bad thread id {tid}")))?;
    rustix::process::setpriority_process(Some(pid), nice).map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_are_parsed_with_escapes() {
        let text = "\
22 1 259:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
98 22 259:3 / /srv/sand\\040box/data rw,nosuid - ext4 /dev/ublkb3 rw
bogus line
";
        let mounts = parse_mountinfo(text);
        assert_eq!(mounts.len(), 2);
        assert_eq!(
            mounts[1],
            MountInfo {
                major: 259,
                minor: 3,
                mount_point: "/srv/sand box/data".into(),
            }
        );
    }

    #[test]
    fn a_failing_mkfs_reports_what_it_said() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("v.img");
        std::fs::File::create(&file)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let missing = MkfsFormatter {
            ext4: "/nonexistent/mkfs.ext4".into(),
            ..MkfsFormatter::default()
        };
        let err = missing.format(&file, Filesystem::Ext4).unwrap_err();
        assert!(
            err.starts_with("cannot run /nonexistent/mkfs.ext4"),
            "{err}"
        );
        let failing = MkfsFormatter {
            ext4: "false".into(),
            ..MkfsFormatter::default()
        };
        let err = failing.format(&file, Filesystem::Ext4).unwrap_err();
        assert!(err.contains("exited with exit status: 1"), "{err}");
    }

    #[test]
    fn process_liveness_is_read_from_proc() {
        assert!(process_alive(std::process::id()));
        assert!(!process_alive(u32::MAX));
    }
}
