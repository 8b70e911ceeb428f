//! cgroup v2 limits for tasks: one cgroup per run, `<root>/<parent>/<container id>`, with
//! `cpu.max` from the task's cpus, `memory.max` from its mem, and `io.max` on each of its block
//! devices ([`IoLimits::from_qos`]: from the device's profile QoS; a device whose profile sets
//! no rate gets no `io.max` line).
//!
//! The root is injectable: by default `/sys/fs/cgroup`, in tests a temporary folder that
//! mimics it (a `cgroup.controllers` file). Writes use plain files, so against such a folder
//! they create files whose content tests read back; [`Cgroups::is_real`] tells the two apart
//! (the root's file system type is cgroup2), and only a real hierarchy is waited on and
//! `rmdir`ed (a fake one is removed recursively).
//!
//! Probing ([`Cgroups::probe`]) needs `<root>/cgroup.controllers` and the right to create
//! `<root>/<parent>`; it enables the `cpu`, `memory` and `io` controllers for the parent's
//! children (`+cpu +memory +io` in `cgroup.subtree_control` of the root and of the parent; the
//! parent never holds processes itself, as cgroup v2 requires). Controllers the kernel does not
//! offer are skipped, and so are the limits that need them (logged).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use ublk_target::qos::{BytesLimit, OpsLimit, QosLimits};

/// The cgroup v2 file system's magic number (`statfs`).
const CGROUP2_MAGIC: nix::sys::statfs::FsType = nix::sys::statfs::CGROUP2_SUPER_MAGIC;

/// The controllers the executor uses.
const WANTED: [&str; 3] = ["cpu", "memory", "io"];

/// The smallest `cpu.max` quota the kernel accepts, in µs.
pub const MIN_CPU_QUOTA_US: u64 = 1_000;

/// Where task cgroups go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupConfig {
    /// The cgroup v2 mount (default `/sys/fs/cgroup`).
    pub root: PathBuf,
    /// The agent's folder under the root, holding one cgroup per run (default `mesoblk`).
    pub parent: String,
    /// `cpu.max`'s period in µs (default 100 ms, the kernel's).
    pub cpu_period_us: u64,
    /// How long [`Cgroups::remove`] waits for a cgroup to empty.
    pub empty_timeout: Duration,
}

impl Default for CgroupConfig {
    fn default() -> CgroupConfig {
        CgroupConfig {
            root: PathBuf::from("/sys/fs/cgroup"),
            parent: "mesoblk".to_string(),
            cpu_period_us: 100_000,
            empty_timeout: Duration::from_secs(5),
        }
    }
}

/// Why cgroups are unavailable, or a cgroup operation failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CgroupError {
    /// No cgroup v2 hierarchy at the root.
    #[error("no cgroup v2 hierarchy at {root} ({root}/cgroup.controllers is missing)")]
    NotMounted {
        /// The root.
        root: PathBuf,
    },
    /// A cgroup file or folder operation failed.
    #[error("cannot {action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The cgroup still had processes after the timeout.
    #[error("cgroup {path} still has processes after {timeout:?}")]
    Busy {
        /// The cgroup.
        path: PathBuf,
        /// How long it was waited for.
        timeout: Duration,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError::Io {
        action,
        path,
        source,
    }
}

/// Block I/O limits on one device; `None` is unlimited (an all-`None` value, written, removes
/// the device's line from `io.max`). Serialized in custom executors' task checkpoints, so a
/// restarted agent knows which lines each task holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoLimits {
    /// The device's major number.
    pub major: u32,
    /// The device's minor number.
    pub minor: u32,
    /// Read bytes per second.
    pub rbps: Option<u64>,
    /// Write bytes per second.
    pub wbps: Option<u64>,
    /// Read operations per second.
    pub riops: Option<u64>,
    /// Write operations per second.
    pub wiops: Option<u64>,
}

impl IoLimits {
    /// The limits of the device `major:minor` served with the profile QoS `qos`; `None` when the
    /// profile sets no rate (no `io.max` line) or the device number is unknown (0:0).
    ///
    /// `io.max` has no combined limit and no bursts, so it is a ceiling, never tighter than the
    /// device's own QoS (which the device's server enforces exactly): each direction gets the
    /// lower of its own and the total limit, each at its peak rate (`max_*_per_sec` when the
    /// profile allows bursts, else the sustained rate). `iops_size_bytes` has no equivalent:
    /// the kernel counts requests.
    pub fn from_qos(major: u32, minor: u32, qos: &QosLimits) -> Option<IoLimits> {
        let ops = |l: &Option<OpsLimit>| l.map(|l| l.max_ops_per_sec.unwrap_or(l.ops_per_sec));
        let bytes =
            |l: &Option<BytesLimit>| l.map(|l| l.max_bytes_per_sec.unwrap_or(l.bytes_per_sec));
        let lower = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let limits = IoLimits {
            major,
            minor,
            rbps: lower(bytes(&qos.read_bytes), bytes(&qos.total_bytes)),
            wbps: lower(bytes(&qos.write_bytes), bytes(&qos.total_bytes)),
            riops: lower(ops(&qos.read_ops), ops(&qos.total_ops)),
            wiops: lower(ops(&qos.write_ops), ops(&qos.total_ops)),
        };
        (major != 0 && !limits.is_unlimited()).then_some(limits)
    }

    /// The same device without limits: written, it removes the device's `io.max` line.
    pub fn unlimited(&self) -> IoLimits {
        IoLimits {
            major: self.major,
            minor: self.minor,
            ..IoLimits::default()
        }
    }

    /// Whether it limits nothing.
    pub fn is_unlimited(&self) -> bool {
        self.rbps.is_none() && self.wbps.is_none() && self.riops.is_none() && self.wiops.is_none()
    }

    /// `(major, minor)`.
    pub fn device(&self) -> (u32, u32) {
        (self.major, self.minor)
    }
}

/// A task's limits.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Limits {
    /// CPUs (fractions allowed).
    pub cpus: Option<f64>,
    /// Memory in MB.
    pub mem_mb: Option<f64>,
    /// Block I/O, one entry per device; an unlimited entry removes that device's line.
    pub io: Vec<IoLimits>,
}

/// `cpu.max` for `cpus` CPUs: `<quota> <period>`, quota = cpus × period (at least 1 ms).
pub fn cpu_max(cpus: f64, period_us: u64) -> String {
    assert!(cpus.is_finite() && cpus > 0.0, "cpus must be positive");
    let quota = (cpus * period_us as f64).round() as u64;
    format!("{} {period_us}", quota.max(MIN_CPU_QUOTA_US))
}

/// `memory.max` for `mem_mb` MB, in bytes.
pub fn memory_max(mem_mb: f64) -> String {
    assert!(mem_mb.is_finite() && mem_mb > 0.0, "mem must be positive");
    ((mem_mb * 1024.0 * 1024.0) as u64).to_string()
}

/// `io.max`'s line for one device: `MAJ:MIN rbps=N wbps=N riops=N wiops=N` (`max` = none).
pub fn io_max(io: &IoLimits) -> String {
    let v = |x: Option<u64>| x.map_or_else(|| "max".to_string(), |n| n.to_string());
    format!(
        "{}:{} rbps={} wbps={} riops={} wiops={}",
        io.major,
        io.minor,
        v(io.rbps),
        v(io.wbps),
        v(io.riops),
        v(io.wiops)
    )
}

/// A usable cgroup v2 parent for task cgroups.
#[derive(Clone, Debug)]
pub struct Cgroups {
    config: CgroupConfig,
    base: PathBuf,
    real: bool,
    controllers: Vec<String>,
}

impl Cgroups {
    /// Checks that cgroup v2 is usable at `config.root`, creates the parent and enables the
    /// controllers for it.
    pub fn probe(config: CgroupConfig) -> Result<Cgroups, CgroupError> {
        let controllers_file = config.root.join("cgroup.controllers");
        let offered = match std::fs::read_to_string(&controllers_file) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CgroupError::NotMounted { root: config.root });
            }
            Err(e) => return Err(io_err("read", &controllers_file)(e)),
        };
        let real = nix::sys::statfs::statfs(&config.root)
            .is_ok_and(|s| s.filesystem_type() == CGROUP2_MAGIC);
        let controllers: Vec<String> = WANTED
            .iter()
            .filter(|c| offered.split_whitespace().any(|o| o == **c))
            .map(|c| c.to_string())
            .collect();
        assert!(!config.parent.is_empty() && !config.parent.contains('/'));
        let base = config.root.join(&config.parent);
        if !base.is_dir() {
            std::fs::create_dir(&base).map_err(io_err("create", &base))?;
        }
        let cgroups = Cgroups {
            config,
            base,
            real,
            controllers,
        };
        cgroups.enable_controllers(&cgroups.config.root)?;
        cgroups.enable_controllers(&cgroups.base)?;
        Ok(cgroups)
    }

    /// Whether the root is a real cgroup v2 mount (not a test folder).
    pub fn is_real(&self) -> bool {
        self.real
    }

    /// The parent of task cgroups.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// The controllers enabled for task cgroups.
    pub fn controllers(&self) -> &[String] {
        &self.controllers
    }

    fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }

    fn enable_controllers(&self, group: &Path) -> Result<(), CgroupError> {
        if self.controllers.is_empty() {
            return Ok(());
        }
        let all: Vec<String> = self.controllers.iter().map(|c| format!("+{c}")).collect();
        let file = group.join("cgroup.subtree_control");
        if write_file(&file, &all.join(" ")).is_ok() {
            return Ok(());
        }
        // One at a time, so one refused controller does not cost the others.
        for c in &all {
            if let Err(e) = write_file(&file, c) {
                tracing::warn!(error = %e, controller = %c, "cannot enable a cgroup controller");
            }
        }
        Ok(())
    }

    /// Creates the cgroup `name` with `limits`; returns its path.
    pub fn create(&self, name: &str, limits: &Limits) -> Result<PathBuf, CgroupError> {
        assert!(!name.is_empty() && !name.contains('/') && name != "." && name != "..");
        let path = self.base.join(name);
        std::fs::create_dir(&path).map_err(io_err("create", &path))?;
        if let Err(e) = self.write_limits(&path, limits) {
            let _ = self.remove(&path);
            return Err(e);
        }
        Ok(path)
    }

    /// Sets the limits of the cgroup at `path` again (an executor that got more tasks).
    pub fn update(&self, path: &Path, limits: &Limits) -> Result<(), CgroupError> {
        assert!(path.starts_with(&self.base) && path != self.base);
        self.write_limits(path, limits)
    }

    fn write_limits(&self, path: &Path, limits: &Limits) -> Result<(), CgroupError> {
        let wanted = [
            (
                "cpu",
                "cpu.max",
                limits
                    .cpus
                    .filter(|c| *c > 0.0)
                    .map(|c| cpu_max(c, self.config.cpu_period_us)),
            ),
            (
                "memory",
                "memory.max",
                limits.mem_mb.filter(|m| *m > 0.0).map(memory_max),
            ),
        ];
        for (controller, file, value) in wanted {
            let Some(value) = value else { continue };
            if !self.has(controller) {
                tracing::warn!(
                    controller,
                    "cgroup controller unavailable; limit not applied"
                );
                continue;
            }
            write_file(&path.join(file), &value)?;
        }
        self.write_io(path, &limits.io)
    }

    /// Writes one `io.max` line per device (the kernel takes one per write). Removing the line
    /// of a device that is gone fails harmlessly: the kernel dropped it with the device.
    fn write_io(&self, path: &Path, io: &[IoLimits]) -> Result<(), CgroupError> {
        if io.is_empty() {
            return Ok(());
        }
        if !self.has("io") {
            tracing::warn!(
                controller = "io",
                "cgroup controller unavailable; limit not applied"
            );
            return Ok(());
        }
        let file = path.join("io.max");
        for limits in io {
            let written = if self.real {
                write_file(&file, &io_max(limits))
            } else {
                merge_io_line(&file, limits)
            };
            match written {
                Ok(()) => {}
                Err(e) if limits.is_unlimited() => {
                    tracing::debug!(error = %e, "io.max line of a gone device not removed");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Moves process `pid` into the cgroup at `path`.
    pub fn add_process(&self, path: &Path, pid: i32) -> Result<(), CgroupError> {
        assert!(pid > 0);
        write_file(&path.join("cgroup.procs"), &pid.to_string())
    }

    /// Kills every process in the cgroup (`cgroup.kill`, Linux 5.14+; a no-op elsewhere and in
    /// a test folder).
    pub fn kill_all(&self, path: &Path) {
        if !self.real {
            return;
        }
        if let Err(e) = write_file(&path.join("cgroup.kill"), "1") {
            tracing::debug!(error = %e, "cgroup.kill failed");
        }
    }

    /// Kills what is left in the cgroup, waits for it to empty, and removes it. A cgroup that is
    /// already gone is fine.
    pub fn remove(&self, path: &Path) -> Result<(), CgroupError> {
        assert!(path.starts_with(&self.base) && path != self.base);
        if !path.exists() {
            return Ok(());
        }
        if !self.real {
            return std::fs::remove_dir_all(path).map_err(io_err("remove", path));
        }
        self.kill_all(path);
        let deadline = Instant::now() + self.config.empty_timeout;
        while populated(path) {
            if Instant::now() >= deadline {
                return Err(CgroupError::Busy {
                    path: path.to_path_buf(),
                    timeout: self.config.empty_timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        match std::fs::remove_dir(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", path)(e)),
        }
    }
}

/// Whether a real cgroup still has processes (`populated 1` in `cgroup.events`).
fn populated(path: &Path) -> bool {
    std::fs::read_to_string(path.join("cgroup.events"))
        .is_ok_and(|events| events.lines().any(|l| l.trim() == "populated 1"))
}

/// In a test folder, keeps `io.max` as the kernel shows it: one line per limited device, a
/// device's new line replacing its old one, an unlimited device left out.
fn merge_io_line(file: &Path, limits: &IoLimits) -> Result<(), CgroupError> {
    let old = match std::fs::read_to_string(file) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io_err("read", file)(e)),
    };
    let device = format!("{}:{} ", limits.major, limits.minor);
    let mut lines: Vec<String> = old
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with(&device))
        .map(str::to_owned)
        .collect();
    if !limits.is_unlimited() {
        lines.push(io_max(limits));
    }
    let mut text = lines.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    write_file(file, &text)
}

/// Writes a cgroup file the way `echo value > file` does.
fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(io_err("write", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_lines() {
        assert_eq!(cpu_max(0.5, 100_000), "50000 100000");
        assert_eq!(cpu_max(2.0, 100_000), "200000 100000");
        assert_eq!(cpu_max(0.001, 100_000), "1000 100000");
        assert_eq!(memory_max(64.0), "67108864");
        assert_eq!(
            io_max(&IoLimits {
                major: 259,
                minor: 3,
                rbps: Some(1_048_576),
                wiops: Some(100),
                ..Default::default()
            }),
            "259:3 rbps=1048576 wbps=max riops=max wiops=100"
        );
    }

    #[test]
    fn io_limits_come_from_the_profile_qos() {
        let qos: QosLimits = serde_json::from_value(serde_json::json!({
            "read_ops": {"ops_per_sec": 500},
            "write_ops": {"ops_per_sec": 200, "max_ops_per_sec": 400},
            "total_ops": {"ops_per_sec": 300},
            "write_bytes": {"bytes_per_sec": 1048576},
        }))
        .unwrap();
        let io = IoLimits::from_qos(259, 2, &qos).unwrap();
        // Each direction: the lower of its own (peak) rate and the total rate.
        assert_eq!(
            io_max(&io),
            "259:2 rbps=max wbps=1048576 riops=300 wiops=300"
        );
        let bytes: QosLimits = serde_json::from_value(serde_json::json!({
            "total_bytes": {"bytes_per_sec": 4096, "max_bytes_per_sec": 8192},
        }))
        .unwrap();
        assert_eq!(
            io_max(&IoLimits::from_qos(259, 0, &bytes).unwrap()),
            "259:0 rbps=8192 wbps=8192 riops=max wiops=max"
        );
        // No rate in the profile, or an unknown device: no line.
        assert_eq!(IoLimits::from_qos(259, 2, &QosLimits::default()), None);
        assert_eq!(IoLimits::from_qos(0, 0, &qos), None);
        assert_eq!(
            io_max(&io.unlimited()),
            "259:2 rbps=max wbps=max riops=max wiops=max"
        );
    }

    #[test]
    fn io_lines_are_replaced_and_removed_per_device() {
        let root = fake_root("io");
        let cg = Cgroups::probe(CgroupConfig {
            root: root.path().into(),
            ..Default::default()
        })
        .unwrap();
        let dev = |minor, riops| IoLimits {
            major: 259,
            minor,
            riops: Some(riops),
            ..Default::default()
        };
        let io = |io: Vec<IoLimits>| Limits {
            io,
            ..Default::default()
        };
        let path = cg.create("c", &io(vec![dev(1, 10), dev(2, 20)])).unwrap();
        let read = || std::fs::read_to_string(path.join("io.max")).unwrap();
        assert_eq!(
            read(),
            "259:1 rbps=max wbps=max riops=10 wiops=max\n\
             259:2 rbps=max wbps=max riops=20 wiops=max\n"
        );
        cg.update(&path, &io(vec![dev(2, 30), dev(1, 10).unlimited()]))
            .unwrap();
        assert_eq!(read(), "259:2 rbps=max wbps=max riops=30 wiops=max\n");
    }

    fn fake_root(controllers: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.controllers"), controllers).unwrap();
        dir
    }

    #[test]
    fn writes_against_a_fake_hierarchy() {
        let root = fake_root("cpuset cpu io memory pids\n");
        let cg = Cgroups::probe(CgroupConfig {
            root: root.path().into(),
            ..Default::default()
        })
        .unwrap();
        assert!(!cg.is_real());
        assert_eq!(cg.controllers(), ["cpu", "memory", "io"]);
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        assert_eq!(
            read(&root.path().join("cgroup.subtree_control")),
            "+cpu +memory +io"
        );
        assert_eq!(
            read(&root.path().join("mesoblk/cgroup.subtree_control")),
            "+cpu +memory +io"
        );
        let limits = Limits {
            cpus: Some(1.5),
            mem_mb: Some(32.0),
            io: vec![IoLimits {
                major: 7,
                minor: 1,
                wbps: Some(10),
                ..Default::default()
            }],
        };
        let path = cg.create("c1", &limits).unwrap();
        assert_eq!(path, root.path().join("mesoblk/c1"));
        assert_eq!(read(&path.join("cpu.max")), "150000 100000");
        assert_eq!(read(&path.join("memory.max")), "33554432");
        assert_eq!(
            read(&path.join("io.max")),
            "7:1 rbps=max wbps=10 riops=max wiops=max\n"
        );
        cg.add_process(&path, 1234).unwrap();
        assert_eq!(read(&path.join("cgroup.procs")), "1234");
        cg.remove(&path).unwrap();
        assert!(!path.exists());
        cg.remove(&path).unwrap();
    }

    #[test]
    fn missing_controllers_skip_their_limits() {
        let root = fake_root("cpu pids");
        let cg = Cgroups::probe(CgroupConfig {
            root: root.path().into(),
            ..Default::default()
        })
        .unwrap();
        let path = cg
            .create(
                "c",
                &Limits {
                    cpus: Some(1.0),
                    mem_mb: Some(1.0),
                    io: Vec::new(),
                },
            )
            .unwrap();
        assert!(path.join("cpu.max").exists());
        assert!(!path.join("memory.max").exists());
    }

    #[test]
    fn no_hierarchy_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let err = Cgroups::probe(CgroupConfig {
            root: dir.path().join("nope"),
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(err, CgroupError::NotMounted { .. }));
        assert!(err.to_string().contains("cgroup.controllers"));
    }
}
