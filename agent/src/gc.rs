//! Sandbox garbage collection, as Mesos's agent does it: the sandbox of an executor run that
//! ended (a command task's, a custom executor's) is deleted `--gc_delay` after the run ended,
//! a delay shortened as the work dir's disk fills (`--gc_disk_headroom`), checked every
//! `--disk_watch_interval`.
//!
//! A run's end is its sandbox folder's mtime: [`SandboxGc::pass`] reports the runs that ended
//! since the previous pass and the caller touches them, so a restarted agent (whose first pass
//! knows nothing) finds the same schedule in the mtimes, as Mesos's agent recovers its own.
//! The policy and the schedule are pure (time and disk usage are given); the filesystem side
//! ([`find_runs`], [`disk_usage`], [`touch`], [`remove_run`]) is separate.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How long ended sandboxes are kept.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GcPolicy {
    /// `--gc_delay` (Mesos: 1 week).
    pub delay: Duration,
    /// `--gc_disk_headroom` (Mesos: 0.1), in `[0, 1]`.
    pub disk_headroom: f64,
}

impl GcPolicy {
    /// Mesos's `_checkDiskUsage`: sandboxes older than
    /// `gc_delay × max(0, 1 − headroom − usage)` go, `usage` being the used fraction of the
    /// work dir's disk.
    pub fn max_age(&self, usage: f64) -> Duration {
        let factor = (1.0 - self.disk_headroom - usage).clamp(0.0, 1.0);
        self.delay.mul_f64(factor)
    }
}

/// What one pass found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pass {
    /// Runs that were in use at the previous pass and are not now: they ended now (the caller
    /// touches them so that the end survives a restart).
    pub ended: Vec<PathBuf>,
    /// Runs not in use that ended at least the policy's age ago: to delete.
    pub due: Vec<PathBuf>,
}

/// The schedule: which runs were in use at the previous pass.
#[derive(Debug)]
pub struct SandboxGc {
    policy: GcPolicy,
    in_use: BTreeSet<PathBuf>,
}

impl SandboxGc {
    /// A schedule that knows of no run yet (a first pass dates every ended run by its mtime).
    pub fn new(policy: GcPolicy) -> SandboxGc {
        SandboxGc {
            policy,
            in_use: BTreeSet::new(),
        }
    }

    /// One pass at `now`: `runs` are the sandboxes found with their mtimes, `in_use` those of
    /// running (or launching) executors, `usage` the disk's used fraction.
    pub fn pass(
        &mut self,
        runs: &[(PathBuf, SystemTime)],
        in_use: BTreeSet<PathBuf>,
        now: SystemTime,
        usage: f64,
    ) -> Pass {
        let max_age = self.policy.max_age(usage);
        let mut pass = Pass::default();
        for (run, mtime) in runs {
            if in_use.contains(run) {
                continue;
            }
            let ended_at = if self.in_use.contains(run) {
                pass.ended.push(run.clone());
                now
            } else {
                *mtime
            };
            // A mtime in the future (a clock step) counts as now.
            if now.duration_since(ended_at).unwrap_or_default() >= max_age {
                pass.due.push(run.clone());
            }
        }
        self.in_use = in_use;
        pass
    }
}

/// Every run sandbox under `work_dir` (`slaves/*/frameworks/*/executors/*/runs/*`, every agent
/// id's) with its mtime; unreadable folders are skipped.
pub fn find_runs(work_dir: &Path) -> Vec<(PathBuf, SystemTime)> {
    let mut level = vec![work_dir.join("slaves")];
    for child in ["frameworks", "executors", "runs"] {
        level = subdirs(&level).into_iter().map(|d| d.join(child)).collect();
    }
    subdirs(&level)
        .into_iter()
        .filter_map(|run| {
            let mtime = std::fs::symlink_metadata(&run).ok()?.modified().ok()?;
            Some((run, mtime))
        })
        .collect()
}

/// The real folders (not symlinks) in each of `dirs`.
fn subdirs(dirs: &[PathBuf]) -> Vec<PathBuf> {
    dirs.iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flat_map(|entries| entries.flatten())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

/// The used fraction of the disk holding `path` (0 when it cannot be read).
pub fn disk_usage(path: &Path) -> f64 {
    match nix::sys::statvfs::statvfs(path) {
        Ok(s) if s.blocks() > 0 => {
            let free = s.blocks_available() as f64 / s.blocks() as f64;
            (1.0 - free).clamp(0.0, 1.0)
        }
        _ => 0.0,
    }
}

/// Sets `dir`'s mtime to `now`: the run's end, for a restarted agent.
pub fn touch(dir: &Path, now: SystemTime) -> std::io::Result<()> {
    std::fs::File::open(dir)?.set_modified(now)
}

/// Why a run was not removed.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// Something is mounted under it (a MOUNT disk not released): deleting would reach into
    /// the volume.
    #[error("{} holds a mount ({})", .run.display(), .mount.display())]
    Mounted {
        /// The run.
        run: PathBuf,
        /// The mount point under it.
        mount: PathBuf,
    },
    /// The filesystem refused.
    #[error("cannot remove {}: {source}", .run.display())]
    Io {
        /// The run.
        run: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Deletes a run's sandbox, unless something is mounted under it.
pub fn remove_run(run: &Path) -> Result<(), GcError> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    remove_unmounted(run, &mountinfo)
}

/// [`remove_run`] against the mount table `mountinfo`.
fn remove_unmounted(run: &Path, mountinfo: &str) -> Result<(), GcError> {
    if let Some(mount) = mount_points(mountinfo).find(|m| m.starts_with(run)) {
        return Err(GcError::Mounted {
            run: run.to_path_buf(),
            mount,
        });
    }
    match std::fs::remove_dir_all(run) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(GcError::Io {
            run: run.to_path_buf(),
            source,
        }),
    }
}

/// The mount points of a `/proc/self/mountinfo` text (field 5, octal escapes decoded).
fn mount_points(mountinfo: &str) -> impl Iterator<Item = PathBuf> + '_ {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_octal(field)))
}

/// `\040` → space, as the kernel escapes mount points.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes.get(i + 1..i + 4).filter(|_| bytes[i] == b'\\');
        match escaped.and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok()) {
            Some(byte) => {
                out.push(byte);
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

#[cfg(test)]
mod tests {
    use super::*;

    const WEEK: Duration = Duration::from_secs(7 * 86_400);
    const HOUR: Duration = Duration::from_secs(3_600);

    fn policy(headroom: f64) -> GcPolicy {
        GcPolicy {
            delay: WEEK,
            disk_headroom: headroom,
        }
    }

    fn set(paths: &[&str]) -> BTreeSet<PathBuf> {
        paths.iter().map(PathBuf::from).collect()
    }

    #[test]
    fn the_delay_shrinks_as_the_disk_fills() {
        assert_eq!(policy(0.0).max_age(0.0), WEEK);
        assert_eq!(policy(0.1).max_age(0.4), WEEK.mul_f64(0.5));
        assert_eq!(policy(0.1).max_age(0.9), Duration::ZERO);
        assert_eq!(policy(0.5).max_age(0.99), Duration::ZERO);
    }

    #[test]
    fn a_run_is_deleted_a_delay_after_it_ended_never_while_in_use() {
        let t0 = SystemTime::UNIX_EPOCH + WEEK * 100;
        let mut gc = SandboxGc::new(policy(0.0));
        let runs = vec![(PathBuf::from("a"), t0), (PathBuf::from("b"), t0)];
        // In use: never due, however old its mtime.
        let pass = gc.pass(&runs, set(&["a", "b"]), t0 + WEEK * 2, 0.0);
        assert_eq!(pass, Pass::default());
        // `a` ended now (its old mtime does not count); `b` runs on.
        let ended_at = t0 + WEEK * 3;
        let pass = gc.pass(&runs, set(&["b"]), ended_at, 0.0);
        assert_eq!(pass.ended, [PathBuf::from("a")]);
        assert!(pass.due.is_empty());
        // The caller touched `a`: its mtime is its end from now on.
        let runs = vec![(PathBuf::from("a"), ended_at), (PathBuf::from("b"), t0)];
        let pass = gc.pass(&runs, set(&["b"]), ended_at + WEEK - HOUR, 0.0);
        assert_eq!(pass, Pass::default());
        let pass = gc.pass(&runs, set(&["b"]), ended_at + WEEK, 0.0);
        assert_eq!(pass.due, [PathBuf::from("a")]);
    }

    #[test]
    fn a_restarted_agent_dates_ended_runs_by_their_mtimes() {
        let now = SystemTime::UNIX_EPOCH + WEEK * 100;
        let runs = vec![
            (PathBuf::from("old"), now - WEEK - HOUR),
            (PathBuf::from("recent"), now - HOUR),
            (PathBuf::from("future"), now + HOUR),
        ];
        let mut gc = SandboxGc::new(policy(0.0));
        let pass = gc.pass(&runs, BTreeSet::new(), now, 0.0);
        assert!(pass.ended.is_empty());
        assert_eq!(pass.due, [PathBuf::from("old")]);
        // A fuller disk takes the recent one too (an hour is above a week × 0.005).
        let pass = gc.pass(&runs, BTreeSet::new(), now, 0.995);
        assert_eq!(pass.due, [PathBuf::from("old"), PathBuf::from("recent")]);
        // A full one takes every ended run, even one dated in the future.
        let pass = gc.pass(&runs, BTreeSet::new(), now, 1.0);
        assert_eq!(pass.due.len(), 3);
    }

    #[test]
    fn runs_are_found_and_removed_unless_mounted() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir
            .path()
            .join("slaves/S1/frameworks/f/executors/e/runs/c1");
        std::fs::create_dir_all(run.join("sub")).unwrap();
        std::fs::write(run.join("stdout"), "x").unwrap();
        std::fs::create_dir_all(dir.path().join("slaves/S1/frameworks/f/executors/e/runs"))
            .unwrap();
        let found = find_runs(dir.path());
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, run);
        let then = SystemTime::UNIX_EPOCH + WEEK;
        touch(&run, then).unwrap();
        assert_eq!(find_runs(dir.path())[0].1, then);
        remove_run(&run).unwrap();
        assert!(!run.exists());
        assert!(find_runs(dir.path()).is_empty());
        remove_run(&run).expect("a run already gone is fine");
        // A run holding a mount point (a MOUNT disk not released) is left alone.
        std::fs::create_dir_all(run.join("disk")).unwrap();
        let mountinfo = format!(
            "36 35 98:0 / {} rw - ext4 /dev/ublkb0 rw\n",
            run.join("disk").display()
        );
        assert!(matches!(
            remove_unmounted(&run, &mountinfo),
            Err(GcError::Mounted { .. })
        ));
        assert!(run.join("disk").exists());
        remove_unmounted(&run, "").unwrap();
        assert!(!run.exists());
    }

    #[test]
    fn mount_points_are_unescaped() {
        let info = "36 35 98:0 /mnt1 /mnt/a\\040b rw,noatime master:1 - ext3 /dev/root rw\n";
        assert_eq!(
            mount_points(info).collect::<Vec<_>>(),
            [PathBuf::from("/mnt/a b")]
        );
    }
}
