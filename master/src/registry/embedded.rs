//! [`EmbeddedRegistry`]: the registry in a local directory, with no server to run.
//!
//! # Layout of the directory (the binary uses `<work_dir>/registry`)
//! - `LOCK`: `flock`ed exclusively while a master has the registry open, so two masters never
//!   share one.
//! - `log.<generation>`: the current log (the highest generation); format in [`super::log`].
//! - `log.<generation>.tmp`: a compaction that had not finished; deleted at open, as are lower
//!   generations.
//!
//! # Commit (group commit)
//! [`Registry::apply`] validates and encodes its batch in the caller's thread, queues it, and
//! waits. Whoever finds no write in progress becomes the writer: it takes the queued batches
//! (up to a size bound), appends them as **one** record with one `write`, `fdatasync`s, then
//! applies them to the in-memory state and wakes the waiters whose batches are now durable.
//! Concurrent callers thus share one fsync, and the file only ever grows by whole records, each
//! durable before the next one starts: the premise of the torn-tail rule in [`super::log`].
//!
//! # Compaction
//! When the records appended since the file's snapshot outweigh the snapshot itself (and at
//! least [`EmbeddedOptions::compact_bytes_min`]), the writer, still holding the write turn,
//! writes `log.<g+1>.tmp` (header and a snapshot of the state, `seq` unchanged), fsyncs it,
//! renames it to `log.<g+1>`, fsyncs the directory, and only then appends to it and deletes
//! `log.<g>`.
//!
//! # Why a crash loses nothing acknowledged
//! - An acknowledged batch is in a record that was fsynced before the acknowledgement.
//! - Opening picks the highest generation. A renamed file is complete (fsynced before the
//!   rename), and it holds every acknowledged batch: the rename happens after the last record of
//!   the previous file was durable, and nothing is appended to the new file before the
//!   directory fsync makes the rename itself durable. If the rename was lost, nothing was
//!   appended to the new file and the previous file is still there, intact.
//! - Within a file, only the last record can be torn, and it was never acknowledged; it is
//!   detected by its checksum and cut off (then the truncation is fsynced before any append).
//! - A write or fsync error leaves the file's content unknown: the registry refuses every later
//!   batch and calls the failure hook (fail-stop), and the next open sorts the file out.
//!
//! The assumption underneath is the usual one: an fsynced byte stays written, and a write that
//! was not fsynced can only damage the bytes it was writing (not earlier, fsynced sectors).

use std::collections::VecDeque;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use tracing::{error, info, warn};

use super::log::{self, Record, FILE_BYTES_MAX, HEADER_BYTES, RECORD_BYTES_MAX};
use super::{Mutation, Registry, RegistryError, RegistrySnapshot};

/// Largest encoded batch one `apply` may hand in.
pub const BATCH_BYTES_MAX: usize = RECORD_BYTES_MAX / 4;
/// Bytes of batches a group commit takes at most (so a record stays under its bound).
const GROUP_BYTES_MAX: usize = RECORD_BYTES_MAX / 2;

const _: () = assert!(BATCH_BYTES_MAX <= GROUP_BYTES_MAX);
const _: () = assert!(GROUP_BYTES_MAX + 64 < RECORD_BYTES_MAX);

/// Tuning of the embedded store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddedOptions {
    /// Compact only once at least this many bytes were appended since the last snapshot.
    pub compact_bytes_min: u64,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            compact_bytes_min: 8 << 20,
        }
    }
}

/// Counters, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmbeddedStats {
    /// Records appended since open.
    pub records: u64,
    /// Batches in them (one per `apply` that wrote).
    pub batches: u64,
    /// Compactions since open.
    pub compactions: u64,
    /// Size of the current log file.
    pub log_bytes: u64,
    /// Generation of the current log file.
    pub generation: u64,
}

/// Called once when the registry fails (see the fail-stop rule of [`Registry`]).
pub type FailureHook = Box<dyn Fn(&RegistryError) + Send + Sync>;

/// A registry in a directory. See the module docs.
pub struct EmbeddedRegistry {
    dir: PathBuf,
    options: EmbeddedOptions,
    inner: Mutex<Inner>,
    durable_changed: Condvar,
    failure_hook: Mutex<Option<FailureHook>>,
    _lock: Flock<File>,
}

impl fmt::Debug for EmbeddedRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `try_lock`: formatting must never wait for (or deadlock on) a commit in progress.
        let stats = self.inner.try_lock().ok().map(|inner| inner.stats);
        f.debug_struct("EmbeddedRegistry")
            .field("dir", &self.dir)
            .field("stats", &stats)
            .finish_non_exhaustive()
    }
}

/// A batch waiting for its record.
struct Pending {
    mutations: Vec<Mutation>,
    json: Vec<u8>,
}

struct Inner {
    /// The state as of the last durable record.
    state: RegistrySnapshot,
    /// `seq` of the last durable record.
    seq: u64,
    generation: u64,
    /// The current log, opened for appending.
    file: Arc<File>,
    path: PathBuf,
    log_bytes: u64,
    /// Size of the current file's header and snapshot.
    base_bytes: u64,
    pending: VecDeque<Pending>,
    /// Tickets handed out; the batches of tickets `durable + 1 ..= enqueued` are in `pending`
    /// or being written.
    enqueued: u64,
    durable: u64,
    flushing: bool,
    failed: Option<String>,
    stats: EmbeddedStats,
}

fn io_error(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RegistryError {
    let path = path.to_path_buf();
    move |source| RegistryError::Io { op, path, source }
}

fn log_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("log.{generation}"))
}

fn sync_dir(dir: &Path) -> Result<(), RegistryError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("fsync directory", dir))
}

fn lock_dir(dir: &Path) -> Result<Flock<File>, RegistryError> {
    let path = dir.join("LOCK");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_error("open", &path))?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        if errno == Errno::EWOULDBLOCK {
            RegistryError::Locked {
                path: dir.to_path_buf(),
            }
        } else {
            RegistryError::Io {
                op: "lock",
                path,
                source: errno.into(),
            }
        }
    })
}

/// A new log file: where a failure leaves things.
enum CreateError {
    /// Before the rename: the new file does not exist; the old one is still current.
    Harmless(RegistryError),
    /// After the rename: the new file may or may not survive a crash.
    Fatal(RegistryError),
}

/// Writes `log.<generation>` complete (header and `snapshot_record`) under a temporary name,
/// fsyncs it, renames it, fsyncs the directory; returns it opened for appending, and its size.
fn create_log_file(
    dir: &Path,
    generation: u64,
    snapshot_record: &[u8],
) -> Result<(File, PathBuf, u64), CreateError> {
    let path = log_path(dir, generation);
    let tmp = dir.join(format!("log.{generation}.tmp"));
    let written = (|| {
        let _ = fs::remove_file(&tmp);
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&tmp)
            .map_err(io_error("create", &tmp))?;
        file.write_all(&log::header())
            .and_then(|()| file.write_all(snapshot_record))
            .map_err(io_error("write", &tmp))?;
        file.sync_all().map_err(io_error("fsync", &tmp))?;
        fs::rename(&tmp, &path).map_err(io_error("rename", &tmp))?;
        Ok(file)
    })();
    let file = written.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        CreateError::Harmless(e)
    })?;
    sync_dir(dir).map_err(CreateError::Fatal)?;
    let bytes = (HEADER_BYTES + snapshot_record.len()) as u64;
    Ok((file, path, bytes))
}

/// What [`read_log`] recovered.
struct Recovered {
    state: RegistrySnapshot,
    seq: u64,
    base_bytes: u64,
    log_bytes: u64,
}

/// Applies the record at `offset` to what was recovered so far; `Err` is why the file is corrupt.
fn replay(recovered: &mut Option<Recovered>, offset: u64, record: Record) -> Result<(), String> {
    let Some(current) = recovered.as_mut() else {
        let Some(snapshot) = record.snapshot.filter(|_| record.batches.is_empty()) else {
            return Err("the first record is not a snapshot".into());
        };
        *recovered = Some(Recovered {
            state: snapshot,
            seq: record.seq,
            base_bytes: 0,
            log_bytes: 0,
        });
        return Ok(());
    };
    if record.snapshot.is_some() {
        return Err("a snapshot record after the first".into());
    }
    if record.seq != current.seq + 1 {
        return Err(format!(
            "record out of sequence: expected {}, found {}",
            current.seq + 1,
            record.seq
        ));
    }
    if current.base_bytes == 0 {
        current.base_bytes = offset;
    }
    for mutation in record.batches.into_iter().flatten() {
        mutation.apply_to(&mut current.state);
    }
    current.seq = record.seq;
    Ok(())
}

/// Replays `path`, truncating a torn tail. See the format's reading rule.
fn read_log(path: &Path) -> Result<Recovered, RegistryError> {
    let length = fs::metadata(path).map_err(io_error("stat", path))?.len();
    if length > FILE_BYTES_MAX {
        return Err(RegistryError::Corrupt {
            path: path.to_path_buf(),
            offset: FILE_BYTES_MAX,
            reason: format!("the file is larger than {FILE_BYTES_MAX} bytes"),
        });
    }
    let bytes = fs::read(path).map_err(io_error("read", path))?;
    let corrupt = |offset: u64, reason: String| RegistryError::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason,
    };
    let mut recovered: Option<Recovered> = None;
    let end = log::scan(path, &bytes, |offset, record| {
        replay(&mut recovered, offset, record).map_err(|reason| corrupt(offset, reason))
    })?;
    let Some(mut recovered) = recovered else {
        return Err(corrupt(
            HEADER_BYTES as u64,
            "no snapshot record (a log file is born complete, so a crash cannot explain this)"
                .into(),
        ));
    };
    if recovered.base_bytes == 0 {
        recovered.base_bytes = end.valid_end;
    }
    recovered.log_bytes = end.valid_end;
    if end.torn_bytes > 0 {
        warn!(
            file = %path.display(),
            offset = end.valid_end,
            bytes = end.torn_bytes,
            "registry log ends in a torn (never acknowledged) write; truncating it"
        );
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_error("open", path))?;
        file.set_len(end.valid_end)
            .map_err(io_error("truncate", path))?;
        file.sync_all().map_err(io_error("fsync", path))?;
    }
    Ok(recovered)
}

/// The generations of the log files in `dir`, sorted; deletes unfinished compactions.
fn list_generations(dir: &Path) -> Result<Vec<u64>, RegistryError> {
    let mut generations = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error("list", dir))? {
        let entry = entry.map_err(io_error("list", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(generation) = name.strip_prefix("log.").and_then(|g| g.parse().ok()) {
            generations.push(generation);
        } else if name.starts_with("log.") && name.ends_with(".tmp") {
            let path = entry.path();
            fs::remove_file(&path).map_err(io_error("remove", &path))?;
        }
    }
    generations.sort_unstable();
    Ok(generations)
}

impl EmbeddedRegistry {
    /// Opens (creating if needed) the registry in `dir`. Fails when another process holds it,
    /// or when a file is corrupt or from an unknown format version (naming file and offset).
    pub fn open(dir: impl Into<PathBuf>, options: EmbeddedOptions) -> Result<Self, RegistryError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io_error("create directory", &dir))?;
        let lock = lock_dir(&dir)?;
        let generations = list_generations(&dir)?;
        let (inner, current) = match generations.last() {
            None => {
                let record = log::snapshot_record(0, &RegistrySnapshot::default())
                    .map_err(RegistryError::Invalid)?;
                let (file, path, bytes) = match create_log_file(&dir, 1, &record) {
                    Ok(created) => created,
                    Err(CreateError::Harmless(e) | CreateError::Fatal(e)) => return Err(e),
                };
                info!(dir = %dir.display(), "created an empty registry");
                (
                    Inner::new(RegistrySnapshot::default(), 0, 1, file, path, bytes, bytes),
                    1,
                )
            }
            Some(&generation) => {
                let path = log_path(&dir, generation);
                let recovered = read_log(&path)?;
                let file = OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .map_err(io_error("open", &path))?;
                info!(
                    file = %path.display(),
                    seq = recovered.seq,
                    bytes = recovered.log_bytes,
                    "recovered the registry"
                );
                let inner = Inner::new(
                    recovered.state,
                    recovered.seq,
                    generation,
                    file,
                    path,
                    recovered.base_bytes,
                    recovered.log_bytes,
                );
                (inner, generation)
            }
        };
        for &old in generations.iter().filter(|&&g| g < current) {
            let path = log_path(&dir, old);
            fs::remove_file(&path).map_err(io_error("remove", &path))?;
        }
        sync_dir(&dir)?;
        Ok(EmbeddedRegistry {
            dir,
            options,
            inner: Mutex::new(inner),
            durable_changed: Condvar::new(),
            failure_hook: Mutex::new(None),
            _lock: lock,
        })
    }

    /// Installs the function called (once) when the store fails; the binary's exits the
    /// process, so that no failed change is ever acknowledged. It must not call the registry.
    pub fn set_failure_hook(&self, hook: FailureHook) {
        *self
            .failure_hook
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(hook);
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The current log file.
    pub fn log_path(&self) -> PathBuf {
        self.lock().path.clone()
    }

    /// Counters.
    pub fn stats(&self) -> EmbeddedStats {
        self.lock().stats
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update of `Inner` is completed before anything that could panic, so a poisoned
        // lock still guards consistent data.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks the store failed, tells the hook, and wakes everyone.
    fn fail(&self, inner: &mut Inner, error: &RegistryError) {
        let reason = match std::error::Error::source(error) {
            Some(source) => format!("{error}: {source}"),
            None => error.to_string(),
        };
        error!(%reason, "the registry failed; refusing every further change");
        inner.failed = Some(reason);
        inner.flushing = false;
        self.durable_changed.notify_all();
        if let Some(hook) = self
            .failure_hook
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            hook(error);
        }
    }

    /// One group commit, by the caller that found no write in progress.
    fn flush<'a>(
        &'a self,
        mut inner: MutexGuard<'a, Inner>,
    ) -> Result<MutexGuard<'a, Inner>, RegistryError> {
        debug_assert!(!inner.flushing && !inner.pending.is_empty());
        inner.flushing = true;
        let mut taken = Vec::new();
        let mut taken_bytes = 0;
        while let Some(next) = inner.pending.front() {
            if !taken.is_empty() && taken_bytes + next.json.len() + 1 > GROUP_BYTES_MAX {
                break;
            }
            taken_bytes += next.json.len() + 1;
            taken.extend(inner.pending.pop_front());
        }
        let seq = inner.seq + 1;
        let last_ticket = inner.durable + taken.len() as u64;
        let (file, path) = (Arc::clone(&inner.file), inner.path.clone());
        drop(inner);

        let parts: Vec<&[u8]> = taken.iter().map(|p| p.json.as_slice()).collect();
        let record = log::batches_record(seq, &parts);
        let batches = parts.len() as u64;
        let written = (&*file)
            .write_all(&record)
            .map_err(io_error("append to", &path))
            .and_then(|()| file.sync_data().map_err(io_error("fsync", &path)));

        let mut inner = self.lock();
        if let Err(e) = written {
            self.fail(&mut inner, &e);
            return Err(e);
        }
        for pending in taken {
            for mutation in pending.mutations {
                mutation.apply_to(&mut inner.state);
            }
        }
        inner.seq = seq;
        inner.durable = last_ticket;
        inner.log_bytes += record.len() as u64;
        inner.stats.records += 1;
        inner.stats.batches += batches;
        inner.stats.log_bytes = inner.log_bytes;
        let appended = inner.log_bytes - inner.base_bytes;
        if appended >= self.options.compact_bytes_min && appended >= inner.base_bytes {
            inner = self.compact(inner)?;
        }
        inner.flushing = false;
        self.durable_changed.notify_all();
        Ok(inner)
    }

    /// Starts a new generation from a snapshot of the state (the caller holds the write turn).
    fn compact<'a>(
        &'a self,
        inner: MutexGuard<'a, Inner>,
    ) -> Result<MutexGuard<'a, Inner>, RegistryError> {
        let generation = inner.generation + 1;
        let record = log::snapshot_record(inner.seq, &inner.state);
        let old_path = inner.path.clone();
        drop(inner);
        let created = match record {
            Ok(record) => create_log_file(&self.dir, generation, &record),
            Err(reason) => Err(CreateError::Harmless(RegistryError::Invalid(reason))),
        };
        let mut inner = self.lock();
        match created {
            Ok((file, path, bytes)) => {
                inner.file = Arc::new(file);
                inner.path = path;
                inner.generation = generation;
                inner.base_bytes = bytes;
                inner.log_bytes = bytes;
                inner.stats.compactions += 1;
                inner.stats.generation = generation;
                inner.stats.log_bytes = bytes;
                if let Err(e) = fs::remove_file(&old_path) {
                    warn!(file = %old_path.display(), "cannot remove the compacted registry log: {e}");
                }
                Ok(inner)
            }
            Err(CreateError::Harmless(e)) => {
                warn!("registry compaction failed; the current log stays in use: {e}");
                Ok(inner)
            }
            Err(CreateError::Fatal(e)) => {
                self.fail(&mut inner, &e);
                Err(e)
            }
        }
    }
}

impl Inner {
    fn new(
        state: RegistrySnapshot,
        seq: u64,
        generation: u64,
        file: File,
        path: PathBuf,
        base_bytes: u64,
        log_bytes: u64,
    ) -> Self {
        Inner {
            state,
            seq,
            generation,
            file: Arc::new(file),
            path,
            log_bytes,
            base_bytes,
            pending: VecDeque::new(),
            enqueued: 0,
            durable: 0,
            flushing: false,
            failed: None,
            stats: EmbeddedStats {
                log_bytes,
                generation,
                ..EmbeddedStats::default()
            },
        }
    }
}

impl Registry for EmbeddedRegistry {
    fn apply(&self, batch: Vec<Mutation>) -> Result<(), RegistryError> {
        if batch.is_empty() {
            return Ok(());
        }
        for mutation in &batch {
            mutation.validate().map_err(RegistryError::Invalid)?;
        }
        let json = serde_json::to_vec(&batch).map_err(|e| RegistryError::Invalid(e.to_string()))?;
        if json.len() > BATCH_BYTES_MAX {
            return Err(RegistryError::Invalid(format!(
                "the batch takes {} bytes, more than {BATCH_BYTES_MAX}",
                json.len()
            )));
        }
        let mut inner = self.lock();
        if let Some(reason) = &inner.failed {
            return Err(RegistryError::Failed(reason.clone()));
        }
        inner.enqueued += 1;
        let ticket = inner.enqueued;
        inner.pending.push_back(Pending {
            mutations: batch,
            json,
        });
        loop {
            if inner.durable >= ticket {
                return Ok(());
            }
            if let Some(reason) = &inner.failed {
                return Err(RegistryError::Failed(reason.clone()));
            }
            inner = if inner.flushing {
                self.durable_changed
                    .wait(inner)
                    .unwrap_or_else(PoisonError::into_inner)
            } else {
                self.flush(inner)?
            };
        }
    }

    fn load(&self) -> Result<RegistrySnapshot, RegistryError> {
        Ok(self.lock().state.clone())
    }
}
