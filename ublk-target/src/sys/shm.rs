//! The file behind a [`SharedGroup`]: a QoS group whose buckets are shared by the server
//! processes of several devices (one tenant), each of which maps the same small file.
//!
//! A group named `NAME` lives at `<run dir>/qos-groups/NAME.qos` (see [`group_path`]): exactly
//! [`group_file_bytes`] bytes laid out as `qos::shared` documents (magic, version, generation,
//! double-buffered limits, one `AtomicU64` per bucket). [`open_group`]:
//!
//! 1. opens the file read-write (`O_NOFOLLOW`, mode 0600; created only when joining with
//!    limits, [`GroupJoin::CreateOrJoin`]);
//! 2. takes `flock(LOCK_EX)`, waiting at most [`LOCK_WAIT`]: creating, validating and changing
//!    limits are serialized by it, and the kernel drops it when its holder dies, so a crashed
//!    member never blocks the others. The data path never takes it;
//! 3. checks that it is a regular file of size 0 (new: `ftruncate` to size) or exactly the
//!    expected size, anything else being [`ShmError::SizeMismatch`];
//! 4. maps it `MAP_SHARED` and attaches: a new or half-created file is initialized with the
//!    limits given, an existing one must have the right magic, version, size and valid limits
//!    ([`ShmError::Group`] otherwise: a clear error, never a crash). The join rule (first
//!    member's limits win, later members join them) is [`GroupJoin`]'s.
//!
//! # Use
//!
//! A device server joins with `open_group(run_dir, name, GroupJoin::CreateOrJoin(&limits))`
//! (or [`GroupJoin::Existing`] when given only a group name), logs
//! [`Joined::JoinedWithOtherLimits`], and passes the group to its limiter:
//! `Limiter::new(&own, Some(group.into()), MonotonicClock.now())`. `set-qos --group NAME` opens
//! it with [`GroupJoin::Existing`] and calls [`SharedGroup::set_limits`]; every member sees the
//! new generation at its next request. A group file outlives its members (it is 1 KiB) and must
//! not be deleted while any runs: a member started afterwards would create a new file, hence a
//! second, separate budget. It may be removed once no device uses the group.
//!
//! # Safety
//!
//! The only `unsafe` here is the mapping itself: `mmap`, `munmap`, and viewing the mapping as a
//! `&SharedState`, a `#[repr(C)]` block of `AtomicU64` only. Every access to it, from this and
//! from other processes, is an atomic operation, which is as sound between processes sharing a
//! page as between threads. One hazard cannot be excluded from inside: a process that
//! *truncates* a mapped group file makes its members fault (SIGBUS) on their next access, as
//! with any shared mapping. Group files live in the run directory, which only mesoblk writes;
//! nothing in mesoblk truncates a file of the right size.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::num::NonZeroUsize;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};
use thiserror::Error;

use crate::qos::{
    GroupError, GroupJoin, Joined, QosError, SharedGroup, SharedRegion, SharedState, STATE_BYTES,
};

/// The run directory's subfolder holding group files.
pub const GROUPS_DIR: &str = "qos-groups";
/// The extension of a group file.
const EXTENSION: &str = "qos";
/// The longest group name, in bytes.
pub const MAX_NAME_BYTES: usize = 64;
/// How long [`open_group`] and a limits change wait for another process's lock. The lock is
/// held for microseconds; only a stopped (not dead) holder makes this expire.
pub const LOCK_WAIT: Duration = Duration::from_secs(2);
/// The pause between two attempts at the lock.
const LOCK_POLL: Duration = Duration::from_millis(1);
/// Where the kernel publishes the id of the current boot.
const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

const _: () = assert!(LOCK_WAIT.as_millis() / LOCK_POLL.as_millis() <= 10_000);
// A mapping of a whole number of pages would be wasteful for a block this small; it only needs
// to fit in one and be aligned as mmap aligns (to a page).
const _: () = assert!(STATE_BYTES <= 4096 && std::mem::align_of::<SharedState>() <= 4096);

/// Why a group file could not be opened.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ShmError {
    /// A name that is not a plain file name.
    #[error(
        "invalid QoS group name {name:?}: use 1 to {MAX_NAME_BYTES} letters, digits, '.', '_' \
         or '-', not starting with '.'"
    )]
    InvalidName {
        /// The name given.
        name: String,
    },
    /// The limits asked for are invalid; nothing was opened.
    #[error("invalid QoS group limits")]
    InvalidLimits(#[source] QosError),
    /// Joining, without limits, a group that nobody created.
    #[error("QoS group {name:?} does not exist ({path}); create it with `mesoblk-target set-qos --group {name} <limits>`")]
    NoSuchGroup {
        /// The group.
        name: String,
        /// Its file.
        path: PathBuf,
    },
    /// A system call failed.
    #[error("cannot {op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Something other than a regular file where the group file should be.
    #[error("{path} is not a regular file")]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// A file of the wrong size: another layout version, or not a group file at all.
    #[error("{path} is {found} bytes; a QoS group file of this version is {expected}")]
    SizeMismatch {
        /// The file.
        path: PathBuf,
        /// Its size.
        found: u64,
        /// The size of a group file.
        expected: u64,
    },
    /// A file whose contents are not a valid group of this version.
    #[error("{path} is not a usable QoS group file")]
    Group {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: GroupError,
    },
}

/// The size of every group file of this layout version.
pub fn group_file_bytes() -> u64 {
    STATE_BYTES as u64
}

/// The file of group `name` under `run_dir`, once `name` is checked to be a plain file name.
pub fn group_path(run_dir: &Path, name: &str) -> Result<PathBuf, ShmError> {
    let valid = (1..=MAX_NAME_BYTES).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !valid {
        return Err(ShmError::InvalidName {
            name: name.to_owned(),
        });
    }
    Ok(run_dir.join(GROUPS_DIR).join(format!("{name}.{EXTENSION}")))
}

/// Opens (and, with [`GroupJoin::CreateOrJoin`], creates) group `name` under `run_dir`, and
/// says whether this process created it, joined it, or joined it with other limits than it
/// asked for (the group's apply: log it). See the module documentation for the steps.
pub fn open_group(
    run_dir: &Path,
    name: &str,
    join: GroupJoin<'_>,
) -> Result<(SharedGroup, Joined), ShmError> {
    let path = group_path(run_dir, name)?;
    if let GroupJoin::CreateOrJoin(limits) = join {
        limits.validate().map_err(ShmError::InvalidLimits)?;
        let dir = path.parent().expect("group_path has a parent");
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_error("create", dir))?;
    }
    open_path(&path, name, join, boot_id()?)
}

/// [`open_group`] on an explicit path and boot id (tests simulate reboots with the latter).
fn open_path(
    path: &Path,
    name: &str,
    join: GroupJoin<'_>,
    boot_id: [u64; 2],
) -> Result<(SharedGroup, Joined), ShmError> {
    let create = match join {
        GroupJoin::Existing => false,
        GroupJoin::CreateOrJoin(limits) => {
            limits.validate().map_err(ShmError::InvalidLimits)?;
            true
        }
    };
    let no_such_group = || ShmError::NoSuchGroup {
        name: name.to_owned(),
        path: path.to_owned(),
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => no_such_group(),
            _ => io_error("open", path)(e),
        })?;
    let lock = lock_exclusive(&file).map_err(io_error("lock", path))?;
    let metadata = file.metadata().map_err(io_error("stat", path))?;
    if !metadata.is_file() {
        return Err(ShmError::NotAFile {
            path: path.to_owned(),
        });
    }
    match metadata.len() {
        0 if !create => return Err(no_such_group()),
        // New (or left empty by a creator that died before this point): zero-filled by the
        // kernel, which `attach` reads as "not initialized".
        0 => file
            .set_len(group_file_bytes())
            .map_err(io_error("resize", path))?,
        len if len == group_file_bytes() => {}
        found => {
            return Err(ShmError::SizeMismatch {
                path: path.to_owned(),
                found,
                expected: group_file_bytes(),
            })
        }
    }
    let mapping = GroupFile::map(file, path)?;
    let joined = mapping
        .state()
        .attach(boot_id, join)
        .map_err(|source| match source {
            GroupError::Uninitialized => no_such_group(),
            source => ShmError::Group {
                path: path.to_owned(),
                source,
            },
        })?;
    drop(lock);
    Ok((SharedGroup::from_region(Arc::new(mapping)), joined))
}

/// One process's mapping of a group file.
#[derive(Debug)]
struct GroupFile {
    /// The start of a `MAP_SHARED`, read-write mapping of the whole file, [`STATE_BYTES`]
    /// long, page-aligned; unmapped in `drop`, before `file` is closed (the mapping does not
    /// need the descriptor; the order is just the obvious one).
    base: NonNull<SharedState>,
    /// Kept open for `flock(2)`: writers lock it.
    file: File,
    path: PathBuf,
    /// Serializes the writers of this handle's threads: a `flock(2)` lock belongs to the open
    /// file description, which they all share, so it only excludes other handles.
    writers: Mutex<()>,
}

// SAFETY: `GroupFile` is a mapping (a pointer) plus owned, thread-safe fields. The memory the
// pointer designates is only accessed through atomics (`SharedState` holds nothing else) and
// stays mapped until `drop`, which needs `&mut self`, so any thread may hold the handle.
unsafe impl Send for GroupFile {}
// SAFETY: as for `Send`: shared access hands out `&SharedState`, whose atomics are `Sync`.
unsafe impl Sync for GroupFile {}

impl GroupFile {
    /// Maps `file`, which the caller has checked (under the lock) to be [`STATE_BYTES`] long.
    fn map(file: File, path: &Path) -> Result<GroupFile, ShmError> {
        let len = NonZeroUsize::new(STATE_BYTES).expect("the state is not empty");
        let protection = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
        // SAFETY: a fresh mapping at an address of the kernel's choice (`None`), so no existing
        // memory is replaced; of a file opened read-write, for `STATE_BYTES`, which is its
        // size (checked by the caller under the lock), so no page lies past its end.
        let mapped = unsafe { mmap(None, len, protection, MapFlags::MAP_SHARED, &file, 0) };
        let base = mapped.map_err(|e| ShmError::Io {
            op: "map",
            path: path.to_owned(),
            source: e.into(),
        })?;
        let base = base.cast::<SharedState>();
        // mmap returns page-aligned memory; `SharedState` needs 64 bytes.
        assert!(base.as_ptr().is_aligned(), "mmap returned {base:?}");
        Ok(GroupFile {
            base,
            file,
            path: path.to_owned(),
            writers: Mutex::new(()),
        })
    }
}

impl Drop for GroupFile {
    fn drop(&mut self) {
        // SAFETY: `base` is the start of the `STATE_BYTES` mapping made by `map`, unmapped only
        // here, once. Every `&SharedState` borrows `self`, so none outlives this call.
        let unmapped = unsafe { munmap(self.base.cast(), STATE_BYTES) };
        if let Err(e) = unmapped {
            tracing::warn!(path = %self.path.display(), error = %e, "munmap of a QoS group");
        }
    }
}

impl SharedRegion for GroupFile {
    fn state(&self) -> &SharedState {
        // SAFETY:
        // - the pointer is valid and aligned for a `SharedState`: `map` mapped `STATE_BYTES`
        //   (its size) at a page boundary (checked against its 64-byte alignment);
        // - every byte pattern is a valid `SharedState`: it is `#[repr(C)]` and holds only
        //   `AtomicU64`s (zero-filled for a new file; anything for a scribbled one, which
        //   `qos::shared` never trusts);
        // - the reference borrows `self`, and the mapping lives until `drop`;
        // - other processes (and threads) write this memory concurrently, but every access on
        //   every side is an atomic operation through `SharedState`, never a plain read or
        //   write, so there is no data race; `&` (not `&mut`) is the right kind of reference
        //   for memory shared that way.
        unsafe { self.base.as_ref() }
    }

    fn path(&self) -> Option<&Path> {
        Some(&self.path)
    }

    fn exclusive(&self, f: &mut dyn FnMut(&SharedState)) -> io::Result<()> {
        let _thread = self.writers.lock().unwrap_or_else(PoisonError::into_inner);
        let _process = lock_exclusive(&self.file)?;
        f(self.state());
        Ok(())
    }
}

/// `flock(LOCK_EX)` on `file`, retried for at most [`LOCK_WAIT`]. The lock is released when
/// the returned guard drops, or by the kernel if this process dies.
fn lock_exclusive(file: &File) -> io::Result<Flock<File>> {
    let attempts = LOCK_WAIT.as_millis() / LOCK_POLL.as_millis();
    for _ in 0..attempts {
        // A duplicate descriptor shares the open file description, hence the lock.
        match Flock::lock(file.try_clone()?, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((_, Errno::EWOULDBLOCK | Errno::EINTR)) => std::thread::sleep(LOCK_POLL),
            Err((_, errno)) => return Err(errno.into()),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("another process held the QoS group's lock for {LOCK_WAIT:?}"),
    ))
}

/// The current boot's id: fill times are on `CLOCK_MONOTONIC`, which restarts at boot.
fn boot_id() -> Result<[u64; 2], ShmError> {
    let path = Path::new(BOOT_ID_PATH);
    let text = std::fs::read_to_string(path).map_err(io_error("read", path))?;
    parse_boot_id(&text).ok_or_else(|| ShmError::Io {
        op: "parse",
        path: path.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidData, format!("not a UUID: {text:?}")),
    })
}

/// A UUID (`8-4-4-4-12` hex digits) as two words.
fn parse_boot_id(text: &str) -> Option<[u64; 2]> {
    let hex: String = text.trim().chars().filter(|&c| c != '-').collect();
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let id = u128::from_str_radix(&hex, 16).ok()?;
    Some([(id >> 64) as u64, id as u64])
}

fn io_error<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ShmError + 'a {
    move |source| ShmError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::process::{Command, Stdio};

    use super::*;
    use crate::qos::sim::{assert_near, clients, count, simulate};
    use crate::qos::{Admission, Clock, Limiter, ManualClock, OpsLimit, QosLimits};
    use crate::request::Op;

    const SEC: Duration = Duration::from_secs(1);
    const BOOT: [u64; 2] = [0x1234, 0x5678];

    fn ops_per_sec(per_sec: u64, burst: u64) -> QosLimits {
        QosLimits {
            total_ops: Some(OpsLimit {
                burst_ops: Some(burst),
                ..OpsLimit::per_sec(per_sec)
            }),
            ..QosLimits::default()
        }
    }

    fn member(group: &SharedGroup) -> Limiter {
        Limiter::new(
            &QosLimits::default(),
            Some(group.clone().into()),
            Duration::ZERO,
        )
        .unwrap()
    }

    /// Opens group "tenant" in `dir` with an explicit boot id.
    fn open(
        dir: &Path,
        join: GroupJoin<'_>,
        boot_id: [u64; 2],
    ) -> Result<(SharedGroup, Joined), ShmError> {
        let path = group_path(dir, "tenant").unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        open_path(&path, "tenant", join, boot_id)
    }

    #[test]
    fn two_mappings_share_one_budget() {
        let dir = tempfile::tempdir().unwrap();
        let limits = ops_per_sec(1000, 1000);
        let (first, joined) =
            open_group(dir.path(), "tenant", GroupJoin::CreateOrJoin(&limits)).unwrap();
        assert_eq!(joined, Joined::Created);
        // The second "process": its own descriptor, lock and mapping of the same file.
        let (second, joined) = open_group(dir.path(), "tenant", GroupJoin::Existing).unwrap();
        assert_eq!(joined, Joined::Joined);
        assert_eq!(second.limits().unwrap(), limits);
        let path = group_path(dir.path(), "tenant").unwrap();
        let metadata = std::fs::metadata(&path).unwrap();
        assert_eq!(metadata.len(), group_file_bytes());
        assert_eq!(metadata.permissions().mode() & 0o777, 0o600);
        assert_eq!(second.path(), Some(path.as_path()));

        let (a, b) = (member(&first), member(&second));
        let clock = ManualClock::new();
        let mut all = clients(&a, Op::Read, &[4096], 16);
        all.extend(clients(&b, Op::Write, &[4096], 16));
        let runs = simulate(&clock, &all, 12 * SEC);
        let (on_a, _) = count(&runs, 0..16, 2 * SEC, 12 * SEC);
        let (on_b, _) = count(&runs, 16..32, 2 * SEC, 12 * SEC);
        assert_near(
            on_a + on_b,
            10_000,
            0.01,
            "two mappings of a 1000 IOPS group",
        );
        assert_near(on_a, 5000, 0.05, "the first mapping's share");

        // A change through one mapping is a new generation for the other, at its next request.
        second
            .set_limits(&ops_per_sec(100, 100), clock.now())
            .unwrap();
        assert_eq!((first.generation(), second.generation()), (1, 1));
        assert_eq!(first.limits().unwrap(), ops_per_sec(100, 100));
        let start = clock.now();
        let runs = simulate(&clock, &all, start + 12 * SEC);
        let (ops, _) = count(&runs, 0..32, start + 2 * SEC, start + 12 * SEC);
        assert_near(ops, 1000, 0.01, "both mappings after lowering to 100 IOPS");

        // Dropping one mapping leaves the other working.
        drop((a, first));
        assert!(b.admit(Op::Read, 4096, clock.now()).wait() > Duration::ZERO);
    }

    #[test]
    fn threads_on_two_mappings_pass_exactly_the_burst() {
        let dir = tempfile::tempdir().unwrap();
        let join = GroupJoin::CreateOrJoin(&ops_per_sec(1, 1000));
        let (first, _) = open(dir.path(), join, BOOT).unwrap();
        let (second, _) = open(dir.path(), join, BOOT).unwrap();
        let go: usize = std::thread::scope(|s| {
            let threads: Vec<_> = (0..8)
                .map(|i| {
                    let l = member(if i % 2 == 0 { &first } else { &second });
                    s.spawn(move || {
                        (0..500)
                            .filter(|_| l.admit(Op::Read, 4096, SEC) == Admission::Go)
                            .count()
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).sum()
        });
        assert_eq!(go, 1000);
    }

    /// Set in the child processes of `two_processes_share_one_bucket`: the run directory.
    const CHILD_ENV: &str = "MESOBLK_TEST_SHM_CHILD_RUN_DIR";
    const PER_PROCESS: usize = 600;

    /// Admits `PER_PROCESS` reads at a fixed time, and counts those that did not wait.
    fn admit_at_fixed_time(group: &SharedGroup) -> usize {
        let l = member(group);
        (0..PER_PROCESS)
            .filter(|_| l.admit(Op::Read, 4096, SEC) == Admission::Go)
            .count()
    }

    #[test]
    fn two_processes_share_one_bucket() {
        if let Some(run_dir) = std::env::var_os(CHILD_ENV) {
            let (group, _) =
                open_group(Path::new(&run_dir), "tenant", GroupJoin::Existing).unwrap();
            println!("admitted-without-waiting={}", admit_at_fixed_time(&group));
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let join = GroupJoin::CreateOrJoin(&ops_per_sec(1, 1000));
        let (group, _) = open_group(dir.path(), "tenant", join).unwrap();
        let exe = std::env::current_exe().unwrap();
        let children: Vec<_> = (0..2)
            .map(|_| {
                Command::new(&exe)
                    .args(["--exact", "sys::shm::tests::two_processes_share_one_bucket"])
                    .args(["--nocapture", "--test-threads=1"])
                    .env(CHILD_ENV, dir.path())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let mut go = admit_at_fixed_time(&group);
        for child in children {
            let output = child.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout);
            // libtest prints the test's name on the same line, before the report.
            let report = stdout
                .lines()
                .find_map(|l| Some(l.split_once("admitted-without-waiting=")?.1));
            let Some(count) = report.filter(|_| output.status.success()) else {
                let stderr = String::from_utf8_lossy(&output.stderr);
                panic!("child failed ({}):\n{stdout}\n{stderr}", output.status);
            };
            go += count.parse::<usize>().unwrap();
        }
        // Three processes drew 1800 requests at one instant from a bucket of 1000.
        assert_eq!(go, 1000);
    }

    #[test]
    fn a_missing_group_is_an_error_without_limits() {
        let dir = tempfile::tempdir().unwrap();
        let err = open_group(dir.path(), "tenant", GroupJoin::Existing).unwrap_err();
        assert!(matches!(err, ShmError::NoSuchGroup { .. }), "{err}");
        assert!(err.to_string().contains("set-qos --group tenant"), "{err}");
        // An empty file (a creator that died before sizing it) is not a group either, and is
        // left for a creator.
        let path = group_path(dir.path(), "tenant").unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"").unwrap();
        let err = open(dir.path(), GroupJoin::Existing, BOOT).unwrap_err();
        assert!(matches!(err, ShmError::NoSuchGroup { .. }), "{err}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        // A sized, zero-filled file (a creator that died before writing the magic): the same.
        std::fs::write(&path, vec![0u8; STATE_BYTES]).unwrap();
        let err = open(dir.path(), GroupJoin::Existing, BOOT).unwrap_err();
        assert!(matches!(err, ShmError::NoSuchGroup { .. }), "{err}");
        let limits = ops_per_sec(10, 10);
        let (group, joined) = open(dir.path(), GroupJoin::CreateOrJoin(&limits), BOOT).unwrap();
        assert_eq!((joined, group.limits().unwrap()), (Joined::Created, limits));
    }

    #[test]
    fn later_members_join_with_the_groups_limits() {
        let dir = tempfile::tempdir().unwrap();
        let first = ops_per_sec(100, 100);
        let (group, _) = open(dir.path(), GroupJoin::CreateOrJoin(&first), BOOT).unwrap();
        let other = ops_per_sec(5, 5);
        let (_, joined) = open(dir.path(), GroupJoin::CreateOrJoin(&other), BOOT).unwrap();
        assert_eq!(joined, Joined::JoinedWithOtherLimits);
        assert_eq!(group.limits().unwrap(), first);
        let (_, joined) = open(dir.path(), GroupJoin::CreateOrJoin(&first), BOOT).unwrap();
        assert_eq!(joined, Joined::Joined);
        // Invalid limits are refused before anything is created or joined.
        let bad = ops_per_sec(0, 1);
        let err = open(dir.path(), GroupJoin::CreateOrJoin(&bad), BOOT).unwrap_err();
        assert!(matches!(err, ShmError::InvalidLimits(_)), "{err:?}");
        let err = open_group(dir.path(), "other", GroupJoin::CreateOrJoin(&bad)).unwrap_err();
        assert!(matches!(err, ShmError::InvalidLimits(_)), "{err:?}");
        assert!(!dir.path().join(GROUPS_DIR).join("other.qos").exists());
        assert!(group.set_limits(&bad, Duration::ZERO).is_err());
        assert_eq!(group.limits().unwrap(), first);
    }

    /// Writes `bytes` at `offset` of the group file.
    fn scribble(dir: &Path, offset: usize, bytes: &[u8]) {
        let path = group_path(dir, "tenant").unwrap();
        let mut content = std::fs::read(&path).unwrap();
        content[offset..offset + bytes.len()].copy_from_slice(bytes);
        std::fs::write(&path, content).unwrap();
    }

    #[test]
    fn corrupt_and_foreign_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let join = GroupJoin::CreateOrJoin(&ops_per_sec(100, 100));
        drop(open(dir.path(), join, BOOT).unwrap());
        let reopen = || open(dir.path(), GroupJoin::Existing, BOOT).unwrap_err();

        // Layout (see qos::shared): magic at 0, version at 8, the first slot's mask at 48.
        scribble(dir.path(), 8, &2u64.to_ne_bytes());
        let err = reopen();
        assert!(
            matches!(
                &err,
                ShmError::Group {
                    source: GroupError::BadVersion { found: 2, .. },
                    ..
                }
            ),
            "{err:?}"
        );
        scribble(dir.path(), 8, &1u64.to_ne_bytes());
        scribble(dir.path(), 48, &u64::MAX.to_ne_bytes());
        let err = reopen();
        assert!(
            matches!(
                &err,
                ShmError::Group {
                    source: GroupError::Corrupt { .. },
                    ..
                }
            ),
            "{err:?}"
        );
        scribble(dir.path(), 0, b"garbage!");
        let err = reopen();
        assert!(
            matches!(
                &err,
                ShmError::Group {
                    source: GroupError::BadMagic { .. },
                    ..
                }
            ),
            "{err:?}"
        );
        // The message names the file; the cause is in the source chain.
        let path = group_path(dir.path(), "tenant").unwrap();
        assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
        let source = std::error::Error::source(&err).unwrap().to_string();
        assert!(source.contains("not a mesoblk QoS group"), "{source}");

        // Wrong sizes, both ways: refused before mapping, and left as they were.
        for size in [100, STATE_BYTES + 8, 1 << 20] {
            std::fs::write(&path, vec![0xa5; size]).unwrap();
            let err = reopen();
            assert!(
                matches!(err, ShmError::SizeMismatch { found, .. } if found == size as u64),
                "{err:?}"
            );
            assert_eq!(std::fs::metadata(&path).unwrap().len(), size as u64);
            let err = open(dir.path(), join, BOOT).unwrap_err();
            assert!(matches!(err, ShmError::SizeMismatch { .. }), "{err:?}");
        }

        // Not a regular file, or a symbolic link: refused.
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert!(open(dir.path(), join, BOOT).is_err());
        std::fs::remove_dir(&path).unwrap();
        let elsewhere = dir.path().join("elsewhere.qos");
        std::fs::write(&elsewhere, vec![0u8; STATE_BYTES]).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        let err = open(dir.path(), join, BOOT).unwrap_err();
        assert!(matches!(err, ShmError::Io { op: "open", .. }), "{err:?}");
    }

    #[test]
    fn a_reboot_refills_the_buckets() {
        let dir = tempfile::tempdir().unwrap();
        let join = GroupJoin::CreateOrJoin(&ops_per_sec(10, 10));
        let (group, _) = open(dir.path(), join, BOOT).unwrap();
        // Ten days of uptime, deep in debt.
        let late = 10 * 86_400 * SEC;
        let l = member(&group);
        for _ in 0..100 {
            let _ = l.admit(Op::Read, 4096, late);
        }
        drop((l, group));
        // Same boot: the debt is still there.
        let (group, _) = open(dir.path(), GroupJoin::Existing, BOOT).unwrap();
        assert!(member(&group).admit(Op::Read, 4096, late).wait() > Duration::ZERO);
        drop(group);
        // A new boot, its clock back near zero: full buckets, not ten days of waiting.
        let (group, _) = open(dir.path(), GroupJoin::Existing, [1, 1]).unwrap();
        assert_eq!(member(&group).admit(Op::Read, 4096, SEC), Admission::Go);
    }

    #[test]
    fn names_must_be_plain_file_names() {
        let run = Path::new("/run/x");
        assert_eq!(
            group_path(run, "tenant-1.a_b").unwrap(),
            Path::new("/run/x/qos-groups/tenant-1.a_b.qos")
        );
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "../x",
            "a b",
            "é",
            long.as_str(),
        ] {
            let err = group_path(run, bad).unwrap_err();
            assert!(matches!(err, ShmError::InvalidName { .. }), "{bad:?}");
        }
        assert!(group_path(run, &"x".repeat(MAX_NAME_BYTES)).is_ok());
    }

    #[test]
    fn boot_ids_parse() {
        assert_eq!(
            parse_boot_id("0123abcd-0000-1111-2222-ffffeeeedddd\n"),
            Some([0x0123_abcd_0000_1111, 0x2222_ffff_eeee_dddd])
        );
        assert_eq!(parse_boot_id("not a uuid"), None);
        assert_eq!(parse_boot_id("+123abcd-0000-1111-2222-ffffeeeedddd"), None);
        assert!(boot_id().is_ok());
    }

    #[test]
    fn the_real_clock_works_across_mappings() {
        use crate::qos::MonotonicClock;
        let dir = tempfile::tempdir().unwrap();
        let (first, _) = open(
            dir.path(),
            GroupJoin::CreateOrJoin(&ops_per_sec(1, 3)),
            BOOT,
        )
        .unwrap();
        let (second, _) = open(dir.path(), GroupJoin::Existing, BOOT).unwrap();
        let (a, b) = (member(&first), member(&second));
        // 3 ops of burst, then 1 op per second: the 4th waits (up to a second), whoever asks.
        for l in [&a, &b, &a] {
            assert_eq!(l.admit(Op::Read, 4096, MonotonicClock.now()), Admission::Go);
        }
        let wait = b.admit(Op::Read, 4096, MonotonicClock.now()).wait();
        assert!(wait > Duration::ZERO && wait <= SEC, "{wait:?}");
    }
}
