//! The cache tier: a fast cache store (a file or block device) in front of a slower backing
//! store, served through the same [`Backend`](crate::backend::Backend) trait as any other
//! backend. docs/cache.md states the durability contract this module enforces, the on-disk
//! layout and the recovery procedure.
//!
//! # Pieces
//! - [`layout`]: superblocks, journal blocks and index records, checksummed (pure);
//! - `journal`: superblock and journal I/O, replay validation, commits and checkpoints;
//! - `index`: which device block is in which slot, dirty order, slot reuse (pure);
//! - [`twoq`]: 2Q replacement of clean blocks (pure);
//! - [`policy`]: sequential cutoff and the writeback controller (pure, injected clock);
//! - `engine`: [`CachedBackend`], the request path;
//! - `writeback`: background writeback steps, draining, live mode changes;
//! - `recovery`: [`open`], [`format`](fn@format), and the operator's two choices for a cache that fails
//!   validation, [`flush_valid`] and [`discard`];
//! - [`stats`]: counters and their snapshot.
//!
//! # How a device server uses it
//! ```text
//! let shared = cache::open_or_format(&backing, &store, &config, clock, Replay::Committed).await?;  // once
//! // per queue thread, with that queue's backends:
//! let backend = CachedBackend::new(Arc::clone(&shared), backing_q, store_q);
//! engine::execute(&backend, &request, buf).await;
//! // on a timer (from one thread): backend.writeback_step().await
//! // admin: backend.set_mode(mode).await, backend.drain().await, shared.stats()
//! ```
//! An `open` that fails with [`CacheError::Invalid`] must be shown to the operator, who then
//! calls [`flush_valid`] or [`discard`]; the cache is never used silently.
//!
//! Wiring note: a queue's `FileBackend` addresses the *backing* store's registered fixed file
//! when its submitter reports one (`Submitter::backing_slot`); the cache store's backend needs a
//! submitter that reports the cache store's own slot, or none.
//!
//! # Concurrency
//! All queues of a device share one [`CacheShared`]. Writes in writeback and writethrough mode
//! and read hits do their data I/O without its lock: a write reserves fresh slots and sequence
//! numbers under the lock, writes, and installs its index entries afterwards only where they
//! are still the newest; a read hit pins the slots it reads so they are not reused meanwhile.
//! Journal records of concurrent writes go to the store together (group commit) under the
//! journal's own lock. Everything else (commits, misses' promotion, invalidation, writeback)
//! runs with the lock held. docs/cache.md, "Concurrency", says why this is safe.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::backend::IoError;
use crate::qos::Clock;
use crate::request::Op;

mod crc;
mod engine;
mod index;
mod journal;
pub mod layout;
pub mod policy;
mod recovery;
pub mod stats;
pub mod twoq;
mod unlocked;
mod writeback;

pub use engine::CachedBackend;
pub use journal::Replay;
pub use layout::CACHE_BLOCK;
pub use policy::{WritebackPolicy, WritebackReason};
pub use recovery::{
    discard, flush_valid, format, open, open_or_format, open_replaying, RecoveryReport,
};
pub use stats::{CacheStats, CacheStatsSnapshot};
pub use writeback::{DrainReport, ModeChange, WritebackReport};

/// How writes use the cache (bcache's and Open CAS's modes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheMode {
    /// Writes complete in the cache and reach the backing store later.
    Writeback,
    /// Writes go to the backing store and the cache; reads are served from the cache.
    #[default]
    Writethrough,
    /// Writes go to the backing store only (invalidating cached copies); reads are cached.
    Writearound,
    /// Nothing new enters the cache; writes invalidate cached copies.
    None,
}

impl CacheMode {
    /// Every mode, for tests and help texts.
    pub const ALL: [CacheMode; 4] = [
        CacheMode::Writeback,
        CacheMode::Writethrough,
        CacheMode::Writearound,
        CacheMode::None,
    ];

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            CacheMode::Writeback => "writeback",
            CacheMode::Writethrough => "writethrough",
            CacheMode::Writearound => "writearound",
            CacheMode::None => "none",
        }
    }
}

impl std::str::FromStr for CacheMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CacheMode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                format!("unknown cache mode {s:?}: expected writeback, writethrough, writearound or none")
            })
    }
}

/// How a cache behaves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheConfig {
    /// The mode at open.
    pub mode: CacheMode,
    /// The cache store does not survive the process (RAM). Such a cache is formatted afresh at
    /// every open and never holds dirty data: writeback is refused.
    pub volatile_store: bool,
    /// Bytes a sequential stream runs before it bypasses the cache (0: never).
    pub sequential_cutoff: u64,
    /// Background writeback.
    pub writeback: WritebackPolicy,
}

impl Default for CacheConfig {
    /// Writethrough, a persistent store, bcache's 4 MiB sequential cutoff, default writeback.
    fn default() -> Self {
        CacheConfig {
            mode: CacheMode::default(),
            volatile_store: false,
            sequential_cutoff: 4 << 20,
            writeback: WritebackPolicy::default(),
        }
    }
}

/// A cache store that failed validation, and why. It was not used.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error(
    "cache store failed validation: {problem}. It was not used. Choose explicitly: flush the \
     valid part of its journal to the backing store (cache::flush_valid; the cache is then \
     reformatted), or discard it (cache::discard; any dirty data it held is lost)"
)]
pub struct InvalidCache {
    /// What is wrong, naming the superblock copy, journal block or record.
    pub problem: String,
}

/// Why a cache could not be opened, recovered or changed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The store holds no cache yet.
    #[error("the cache store holds no mesoblk cache (no superblock); format it first")]
    NotFormatted,
    /// The store holds a cache that fails validation.
    #[error(transparent)]
    Invalid(#[from] InvalidCache),
    /// Nothing in the store can be trusted, so nothing can be flushed.
    #[error("nothing in the cache store can be recovered ({0}); only discard is possible")]
    NothingToRecover(String),
    /// The cache belongs to a different backing store.
    #[error(
        "the cache store was made for a backing store of {expected} bytes, but this one has \
         {actual}; attach the backing store it belongs to, or discard the cache"
    )]
    WrongBacking {
        /// Backing size recorded in the cache.
        expected: u64,
        /// Size of the backing store given.
        actual: u64,
    },
    /// The store cannot hold the layout.
    #[error("the cache store has {0} bytes, too small for a cache")]
    TooSmall(u64),
    /// The backing store is not a whole number of cache blocks.
    #[error("the backing store size {0} is not a multiple of the 4096-byte cache block")]
    BackingMisaligned(u64),
    /// Writeback on a store that does not survive the process.
    #[error(
        "a cache held only in memory cannot run in writeback mode: its dirty data would not \
         survive a crash; use writethrough"
    )]
    VolatileWriteback,
    /// A configuration value is out of range.
    #[error("invalid cache configuration: {0}")]
    Config(String),
    /// I/O on the cache or backing store failed.
    #[error("cache I/O failed: {0}")]
    Io(#[from] IoError),
}

/// The state of one cache, shared by every queue of its device.
///
/// Lock order: `writes`, then `core`, then `journal`; `pending` is a leaf (never held across an
/// await). A write appends its records under `core` and has them persisted under `journal`
/// alone, so journal writes never hold up the index.
pub struct CacheShared {
    core: smol::lock::Mutex<engine::CacheCore>,
    journal: smol::lock::Mutex<journal::JournalWriter>,
    pending: std::sync::Mutex<journal::PendingRecords>,
    /// Held shared by every write for its whole duration; a mode change or shutdown takes it
    /// exclusively to wait for the writes that run outside `core`.
    writes: smol::lock::RwLock<()>,
    /// Commits begun so far and the number of the last one that succeeded: a FLUSH is covered
    /// by any commit that began after it did.
    commits_started: std::sync::atomic::AtomicU64,
    commits_done: std::sync::atomic::AtomicU64,
    stats: CacheStats,
    clock: Arc<dyn Clock>,
    volatile_store: bool,
    backing_size: u64,
}

impl std::fmt::Debug for CacheShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheShared")
            .field("backing_size", &self.backing_size)
            .field("volatile_store", &self.volatile_store)
            .field("stats", &self.stats.snapshot())
            .finish_non_exhaustive()
    }
}

impl CacheShared {
    /// A copy of the cache's counters.
    pub fn stats(&self) -> CacheStatsSnapshot {
        self.stats.snapshot()
    }

    /// The device size: the backing store's.
    pub fn backing_size(&self) -> u64 {
        self.backing_size
    }

    fn now(&self) -> Duration {
        self.clock.now()
    }

    /// Whether an I/O error stopped the cache (docs/cache.md, "I/O errors (fail-stop)").
    pub fn has_failed(&self) -> bool {
        self.stats.has_failed()
    }

    /// Runs `work` (request `op` of `len` bytes at `offset`), or answers `EIO` without running
    /// it once the cache has failed; a failure of `work` stops the cache.
    ///
    /// Fail-stop, as dm-writecache: after a failed store or backing-store I/O the cache's
    /// memory may no longer match what its stores hold (a journal block half written, data
    /// installed whose record never landed), and carrying on could make a later commit
    /// durable over that gap. So the cache refuses every further request; `recover` rebuilds
    /// it from the stores, which keep every acknowledged write.
    async fn fail_stop<T>(
        &self,
        (op, offset, len): (Op, u64, u64),
        work: impl std::future::Future<Output = Result<T, IoError>>,
    ) -> Result<T, IoError> {
        if self.has_failed() {
            return Err(IoError {
                op,
                offset,
                len,
                errno: libc::EIO,
            });
        }
        let result = work.await;
        if let Err(e) = &result {
            if e.errno != libc::ESHUTDOWN && self.stats.fail() {
                tracing::error!(
                    op = ?e.op,
                    offset = e.offset,
                    errno = e.errno,
                    "cache I/O failed: the cache refuses every request until the device is recovered"
                );
            }
        }
        result
    }

    /// The pending records; a poisoned lock means a panic elsewhere already failed the device.
    fn pending(&self) -> std::sync::MutexGuard<'_, journal::PendingRecords> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_state_can_cross_queue_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<CacheShared>();
        shareable::<Arc<CacheShared>>();
    }

    #[test]
    fn the_config_round_trips_through_json_with_units_in_its_names() {
        let config = CacheConfig::default();
        let json = serde_json::to_value(&config).unwrap();
        assert_eq!(json["mode"], "writethrough");
        assert_eq!(json["writeback"]["max_dirty_age_ms"], 30_000);
        assert_eq!(serde_json::from_value::<CacheConfig>(json).unwrap(), config);
    }

    #[test]
    fn modes_parse_from_their_names() {
        for mode in CacheMode::ALL {
            assert_eq!(mode.name().parse::<CacheMode>(), Ok(mode));
        }
        let err = "fast".parse::<CacheMode>().unwrap_err();
        assert!(
            err.contains("writeback, writethrough, writearound or none"),
            "{err}"
        );
    }
}
