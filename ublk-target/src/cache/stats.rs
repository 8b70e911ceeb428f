//! Cache counters: hits and misses, dirty data, writeback, evictions, flush latency.
//!
//! Relaxed atomics, updated by the engine while it holds the cache lock, read at any time by
//! [`CacheStats::snapshot`]. The snapshot is serde-stable: it is what the device's stats call and
//! `mesoblk-target list --json` will show under `cache`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::CacheMode;

/// Live counters of one cache.
#[derive(Debug, Default)]
pub struct CacheStats {
    read_hits: AtomicU64,
    read_misses: AtomicU64,
    write_hits: AtomicU64,
    write_misses: AtomicU64,
    bypassed: AtomicU64,
    promotions: AtomicU64,
    writeback_blocks: AtomicU64,
    evictions: AtomicU64,
    commits: AtomicU64,
    journal_writes: AtomicU64,
    journal_records: AtomicU64,
    checkpoints: AtomicU64,
    flushes: AtomicU64,
    flush_us_sum: AtomicU64,
    flush_us_max: AtomicU64,
    cached_blocks: AtomicU64,
    dirty_blocks: AtomicU64,
    capacity_blocks: AtomicU64,
    mode: AtomicU64,
    failed: std::sync::atomic::AtomicBool,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// A copy of a cache's counters. Byte figures are whole 4 KiB cache blocks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheStatsSnapshot {
    /// The mode in force.
    pub mode: CacheMode,
    /// Reads served entirely from the cache.
    pub read_hits: u64,
    /// Reads that needed the backing store for at least one block.
    pub read_misses: u64,
    /// Writes whose every block was already cached.
    pub write_hits: u64,
    /// Other writes.
    pub write_misses: u64,
    /// Requests the sequential cutoff sent to the backing store.
    pub bypassed: u64,
    /// Blocks copied into the cache on a read miss.
    pub promotions: u64,
    /// Bytes written back from the cache to the backing store.
    pub writeback_bytes: u64,
    /// Clean blocks evicted to make room.
    pub evictions: u64,
    /// Journal commits.
    pub commits: u64,
    /// Uncommitted journal writes before writes completed (each a group of requests' records).
    #[serde(default)]
    pub journal_writes: u64,
    /// Records those writes carried: `journal_records / journal_writes` is the mean group size.
    #[serde(default)]
    pub journal_records: u64,
    /// Journal checkpoints (compactions).
    pub checkpoints: u64,
    /// FLUSH requests served.
    pub flushes: u64,
    /// Their total latency, microseconds.
    pub flush_latency_us_sum: u64,
    /// The slowest one, microseconds.
    pub flush_latency_us_max: u64,
    /// Bytes of device data held in the cache.
    pub cached_bytes: u64,
    /// Bytes of it not yet on the backing store.
    pub dirty_bytes: u64,
    /// Capacity of the data area in bytes.
    pub capacity_bytes: u64,
    /// A store or backing-store I/O failed: the cache refuses every request until the device
    /// is recovered (docs/cache.md, "I/O errors").
    #[serde(default)]
    pub failed: bool,
}

fn mode_code(mode: CacheMode) -> u64 {
    match mode {
        CacheMode::Writeback => 0,
        CacheMode::Writethrough => 1,
        CacheMode::Writearound => 2,
        CacheMode::None => 3,
    }
}

fn mode_from_code(code: u64) -> CacheMode {
    match code {
        0 => CacheMode::Writeback,
        1 => CacheMode::Writethrough,
        2 => CacheMode::Writearound,
        _ => CacheMode::None,
    }
}

impl CacheStats {
    pub(crate) fn read(&self, hit: bool) {
        bump(
            if hit {
                &self.read_hits
            } else {
                &self.read_misses
            },
            1,
        );
    }

    pub(crate) fn write(&self, hit: bool) {
        bump(
            if hit {
                &self.write_hits
            } else {
                &self.write_misses
            },
            1,
        );
    }

    pub(crate) fn bypass(&self) {
        bump(&self.bypassed, 1);
    }

    pub(crate) fn promotion(&self) {
        bump(&self.promotions, 1);
    }

    pub(crate) fn written_back(&self, blocks: u64) {
        bump(&self.writeback_blocks, blocks);
    }

    pub(crate) fn eviction(&self) {
        bump(&self.evictions, 1);
    }

    pub(crate) fn commit(&self, checkpoint: bool) {
        bump(
            if checkpoint {
                &self.checkpoints
            } else {
                &self.commits
            },
            1,
        );
    }

    pub(crate) fn journal_write(&self, records: u64) {
        bump(&self.journal_writes, 1);
        bump(&self.journal_records, records);
    }

    pub(crate) fn flush(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        bump(&self.flushes, 1);
        bump(&self.flush_us_sum, us);
        self.flush_us_max.fetch_max(us, Ordering::Relaxed);
    }

    pub(crate) fn set_occupancy(&self, cached: u64, dirty: u64, capacity: u64) {
        self.cached_blocks.store(cached, Ordering::Relaxed);
        self.dirty_blocks.store(dirty, Ordering::Relaxed);
        self.capacity_blocks.store(capacity, Ordering::Relaxed);
    }

    /// Marks the cache failed; true the first time.
    pub(crate) fn fail(&self) -> bool {
        !self.failed.swap(true, Ordering::SeqCst)
    }

    pub(crate) fn has_failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    pub(crate) fn set_mode(&self, mode: CacheMode) {
        self.mode.store(mode_code(mode), Ordering::Relaxed);
    }

    /// Copies every counter.
    pub fn snapshot(&self) -> CacheStatsSnapshot {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let block = super::layout::CACHE_BLOCK;
        CacheStatsSnapshot {
            mode: mode_from_code(load(&self.mode)),
            read_hits: load(&self.read_hits),
            read_misses: load(&self.read_misses),
            write_hits: load(&self.write_hits),
            write_misses: load(&self.write_misses),
            bypassed: load(&self.bypassed),
            promotions: load(&self.promotions),
            writeback_bytes: load(&self.writeback_blocks) * block,
            evictions: load(&self.evictions),
            commits: load(&self.commits),
            journal_writes: load(&self.journal_writes),
            journal_records: load(&self.journal_records),
            checkpoints: load(&self.checkpoints),
            flushes: load(&self.flushes),
            flush_latency_us_sum: load(&self.flush_us_sum),
            flush_latency_us_max: load(&self.flush_us_max),
            cached_bytes: load(&self.cached_blocks) * block,
            dirty_bytes: load(&self.dirty_blocks) * block,
            capacity_bytes: load(&self.capacity_blocks) * block,
            failed: self.has_failed(),
        }
    }
}

impl CacheStatsSnapshot {
    /// Writeback rate in bytes per second between `earlier` and this snapshot, `elapsed` apart.
    pub fn writeback_rate(&self, earlier: &CacheStatsSnapshot, elapsed: Duration) -> f64 {
        if elapsed.is_zero() {
            return 0.0;
        }
        let bytes = self.writeback_bytes.saturating_sub(earlier.writeback_bytes);
        bytes as f64 / elapsed.as_secs_f64()
    }

    /// Mean FLUSH latency, if any FLUSH was served.
    pub fn mean_flush_latency(&self) -> Option<Duration> {
        (self.flushes > 0).then(|| Duration::from_micros(self.flush_latency_us_sum / self.flushes))
    }
}
