//! [`AttachedCache`]: one device server's cache, from opening the store to the orderly shutdown.
//!
//! Everything that takes the cache's lock while the device runs does so on the device's queue
//! thread: the requests, and a worker task beside them that runs background writeback and the
//! admin jobs (flush, mode change, detach) handed to it by the admin socket's threads. The
//! reason: a queue thread sleeps in `io_uring_enter` until its own ring has a completion, so a
//! request waiting for a lock held by another thread would not be woken when that thread lets go
//! (for up to the queue's idle timeout). On one thread, a released lock wakes its waiter at
//! once. That is also why a cached device has exactly one queue.
//!
//! Opening (before the device starts) and the final shutdown (after its queue is gone) run on
//! the server's main thread with private [`BlockingRing`]s.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::queue::{CacheEngine, CacheStore, Unregistered};
use super::{CacheSpec, CacheStoreShared, InvalidCacheChoice};
use crate::backend::{FileBackend, FileStore, Submitter};
use crate::cache::{
    self, CacheConfig, CacheError, CacheMode, CacheShared, CacheStatsSnapshot, CachedBackend,
    DrainReport, ModeChange, Replay,
};
use crate::qos::MonotonicClock;
use crate::sys::ring::BlockingRing;

/// Pause of the worker while writeback has work (one step writes at most one batch, and the
/// rate limit spreads batches out).
const WRITEBACK_BUSY_PAUSE: Duration = Duration::from_millis(10);
/// Pause while nothing is due; also how long an admin job waits at most to be picked up.
const WRITEBACK_IDLE_PAUSE: Duration = Duration::from_millis(100);
/// The window over which the writeback rate is measured.
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// Why a cache could not be attached or changed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AttachError {
    /// No private io_uring could be set up.
    #[error("cannot set up an io_uring for the cache: {0}")]
    Ring(#[source] std::io::Error),
    /// The store failed validation and the operator has not chosen what to do.
    #[error(
        "cache store failed validation: {0}; it was not used. Rerun with --cache-invalid \
         flush-valid (write back the dirty data named by the valid part of its journal, then \
         reformat it) or --cache-invalid discard (reformat it; its dirty data is lost)"
    )]
    Invalid(String),
    /// The store belongs to another backing store.
    #[error("{0}; rerun with --cache-invalid discard to reformat it")]
    WrongBacking(CacheError),
    /// The cache refused or failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The cache was detached from the device.
    #[error("the device's cache was detached")]
    Detached,
    /// The device stopped before the job ran.
    #[error("the device stopped before the cache request ran")]
    Stopped,
    /// The job did not finish in time.
    #[error("the cache request did not finish within {0:?}")]
    Timeout(Duration),
}

/// An admin job for the worker.
#[derive(Clone, Copy, Debug)]
enum JobKind {
    Flush,
    Mode(CacheMode),
    Detach,
}

/// What a job did.
#[derive(Debug)]
enum JobDone {
    Drained(DrainReport),
    Mode(ModeChange),
}

struct Job {
    kind: JobKind,
    reply: mpsc::Sender<Result<JobDone, AttachError>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("kind", &self.kind).finish()
    }
}

/// The cache section of a device's status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CacheReport {
    /// The cache store (a path, or `ram`).
    pub store: String,
    /// Counters (mode, hits and misses, dirty bytes, evictions, flush latency, ...).
    pub stats: CacheStatsSnapshot,
    /// Bytes written back per second over the last second.
    pub writeback_rate_bytes_per_sec: u64,
    /// Mean FLUSH latency in microseconds, once a FLUSH was served.
    pub mean_flush_latency_us: Option<u64>,
}

/// A device's cache: the shared engine state, its two stores, and the server's jobs around it.
#[derive(Debug)]
pub struct AttachedCache {
    shared: Arc<CacheShared>,
    backing: Arc<FileStore>,
    store: CacheStoreShared,
    detached: AtomicBool,
    writeback_rate: AtomicU64,
    /// Admin jobs waiting for the worker.
    jobs: Mutex<Vec<Job>>,
}

impl AttachedCache {
    /// Opens (replays and validates) or formats the cache in `store` in front of `backing`.
    /// A store that fails validation is refused unless `spec.on_invalid` says what to do.
    /// `replay` is [`Replay::All`] only when recovering a quiesced device (the machine stayed
    /// up, so the records the last server wrote without a flush are all there).
    pub fn open(
        backing: Arc<FileStore>,
        store: CacheStoreShared,
        spec: &CacheSpec,
        replay: Replay,
    ) -> Result<Arc<AttachedCache>, AttachError> {
        let config = CacheConfig {
            mode: spec.mode,
            volatile_store: store.is_volatile(),
            ..CacheConfig::default()
        };
        let (backing_io, store_io) = offline_stores(&backing, &store)?;
        let shared = smol::block_on(open_with_choice(
            &backing_io,
            &store_io,
            &config,
            spec.on_invalid,
            replay,
        ))?;
        Ok(Arc::new(AttachedCache {
            shared,
            backing,
            store,
            detached: AtomicBool::new(false),
            writeback_rate: AtomicU64::new(0),
            jobs: Mutex::new(Vec::new()),
        }))
    }

    /// The cache engine as served through `ring`.
    pub fn engine<S: Submitter + Clone>(&self, ring: S) -> CacheEngine<S> {
        CachedBackend::new(
            Arc::clone(&self.shared),
            FileBackend::new(Arc::clone(&self.backing), ring.clone()),
            self.store.for_ring(Unregistered(ring)),
        )
    }

    /// The engine on private rings, for threads other than the queues'.
    fn offline(
        &self,
    ) -> Result<CachedBackend<FileBackend<BlockingRing>, OfflineStore>, AttachError> {
        let (backing, store) = offline_stores(&self.backing, &self.store)?;
        Ok(CachedBackend::new(Arc::clone(&self.shared), backing, store))
    }

    /// The backing store.
    pub fn backing(&self) -> &Arc<FileStore> {
        &self.backing
    }

    /// The device size: the backing store's.
    pub fn size(&self) -> u64 {
        self.shared.backing_size()
    }

    /// Whether the cache was detached (requests then go straight to the backing store).
    pub fn is_detached(&self) -> bool {
        self.detached.load(Ordering::Acquire)
    }

    /// The cache's status.
    pub fn report(&self) -> CacheReport {
        let stats = self.shared.stats();
        CacheReport {
            store: self.store.describe(),
            writeback_rate_bytes_per_sec: self.writeback_rate.load(Ordering::Relaxed),
            mean_flush_latency_us: stats
                .mean_flush_latency()
                .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
            stats,
        }
    }

    /// Writes back every dirty block and returns when the backing store holds them, flushed.
    pub fn flush(&self, timeout: Duration) -> Result<DrainReport, AttachError> {
        match self.request(JobKind::Flush, timeout)? {
            JobDone::Drained(report) => Ok(report),
            JobDone::Mode(change) => Ok(change.drained),
        }
    }

    /// Switches the mode; leaving writeback, returns once the dirty data is drained.
    pub fn set_mode(&self, mode: CacheMode, timeout: Duration) -> Result<ModeChange, AttachError> {
        match self.request(JobKind::Mode(mode), timeout)? {
            JobDone::Mode(change) => Ok(change),
            JobDone::Drained(drained) => Ok(ModeChange {
                from: mode,
                to: mode,
                drained,
            }),
        }
    }

    /// Drains the cache and takes it out of the device's I/O path: from then on requests go to
    /// the backing store. The store is shut down and reformatted empty, so a stale record
    /// naming it can never bring old cached blocks back.
    pub fn detach(&self, timeout: Duration) -> Result<DrainReport, AttachError> {
        match self.request(JobKind::Detach, timeout)? {
            JobDone::Drained(report) => Ok(report),
            JobDone::Mode(change) => Ok(change.drained),
        }
    }

    /// Hands a job to the worker and waits for its answer.
    fn request(&self, kind: JobKind, timeout: Duration) -> Result<JobDone, AttachError> {
        if self.is_detached() {
            return Err(AttachError::Detached);
        }
        let (reply, answer) = mpsc::channel();
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Job { kind, reply });
        match answer.recv_timeout(timeout) {
            Ok(result) => result,
            Err(mpsc::RecvTimeoutError::Timeout) => Err(AttachError::Timeout(timeout)),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(AttachError::Stopped),
        }
    }

    fn take_jobs(&self) -> Vec<Job> {
        std::mem::take(&mut *self.jobs.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The worker task of the device's queue: runs admin jobs and background writeback steps
    /// (watermarks, dirty age, rate limit) through `engine`, pausing with `sleep` (a timer on
    /// the queue's own ring), until `stopping` says the queue is going down.
    pub async fn run_worker<S, F, Fut>(
        &self,
        engine: &CacheEngine<S>,
        stopping: impl Fn() -> bool,
        sleep: F,
    ) where
        S: Submitter,
        F: Fn(Duration) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let mut sample = (Instant::now(), self.shared.stats());
        let mut failing = false;
        while !stopping() {
            for job in self.take_jobs() {
                let result = self.run_job(engine, job.kind).await;
                let _ = job.reply.send(result);
            }
            let busy = !self.is_detached() && self.writeback_step(engine, &mut failing).await;
            if sample.0.elapsed() >= RATE_WINDOW {
                let now = self.shared.stats();
                let rate = now.writeback_rate(&sample.1, sample.0.elapsed());
                self.writeback_rate.store(rate as u64, Ordering::Relaxed);
                sample = (Instant::now(), now);
            }
            sleep(if busy {
                WRITEBACK_BUSY_PAUSE
            } else {
                WRITEBACK_IDLE_PAUSE
            })
            .await;
        }
        for job in self.take_jobs() {
            let _ = job.reply.send(Err(AttachError::Stopped));
        }
    }

    /// One background writeback step; whether it wrote anything.
    async fn writeback_step<S: Submitter>(
        &self,
        engine: &CacheEngine<S>,
        failing: &mut bool,
    ) -> bool {
        match engine.writeback_step().await {
            Ok(report) => {
                *failing = false;
                report.blocks > 0
            }
            Err(e) => {
                // Logged once per run of failures, not at every step.
                if !*failing {
                    tracing::warn!(error = %e, "background writeback failed");
                }
                *failing = true;
                false
            }
        }
    }

    async fn run_job<S: Submitter>(
        &self,
        engine: &CacheEngine<S>,
        kind: JobKind,
    ) -> Result<JobDone, AttachError> {
        if self.is_detached() {
            return Err(AttachError::Detached);
        }
        match kind {
            JobKind::Flush => Ok(JobDone::Drained(
                engine.drain().await.map_err(CacheError::from)?,
            )),
            JobKind::Mode(mode) => Ok(JobDone::Mode(engine.set_mode(mode).await?)),
            JobKind::Detach => {
                // Mode none first: writes stop entering the cache and invalidate cached copies,
                // so it stays coherent while requests still in it finish; leaving writeback
                // drains it.
                let change = engine.set_mode(CacheMode::None).await?;
                self.detached.store(true, Ordering::Release);
                engine.shutdown().await.map_err(CacheError::from)?;
                cache::discard(&engine.backing, &engine.store).await?;
                tracing::info!(drained = change.drained.blocks, "cache detached");
                Ok(JobDone::Drained(change.drained))
            }
        }
    }

    /// Shuts the cache down in order, unless it was detached: dirty data stays in the store,
    /// durably, and clean blocks stay warm for the next open. For after the queue is gone.
    pub fn shutdown(&self) {
        if self.is_detached() {
            return;
        }
        let result = self
            .offline()
            .and_then(|engine| Ok(smol::block_on(engine.shutdown()).map_err(CacheError::from)?));
        match result {
            Ok(()) => tracing::info!("cache shut down"),
            Err(e) => tracing::error!(error = %e, "cache shutdown failed"),
        }
    }
}

/// The cache store on a private ring.
type OfflineStore = CacheStore<Unregistered<BlockingRing>>;

fn engine_backing(backing: &Arc<FileStore>) -> Result<FileBackend<BlockingRing>, AttachError> {
    let ring = BlockingRing::new().map_err(AttachError::Ring)?;
    Ok(FileBackend::new(Arc::clone(backing), ring))
}

fn offline_stores(
    backing: &Arc<FileStore>,
    store: &CacheStoreShared,
) -> Result<(FileBackend<BlockingRing>, OfflineStore), AttachError> {
    let ring = BlockingRing::new().map_err(AttachError::Ring)?;
    Ok((engine_backing(backing)?, store.for_ring(Unregistered(ring))))
}

/// Opens the cache, applying the operator's choice if (and only if) it fails validation.
async fn open_with_choice(
    backing: &FileBackend<BlockingRing>,
    store: &OfflineStore,
    config: &CacheConfig,
    choice: Option<InvalidCacheChoice>,
    replay: Replay,
) -> Result<Arc<CacheShared>, AttachError> {
    let clock = Arc::new(MonotonicClock);
    let refused = match cache::open_or_format(backing, store, config, clock.clone(), replay).await {
        Ok(shared) => return Ok(shared),
        Err(e @ (CacheError::Invalid(_) | CacheError::WrongBacking { .. })) => e,
        Err(e) => return Err(e.into()),
    };
    match choice {
        None => Err(match refused {
            CacheError::Invalid(invalid) => AttachError::Invalid(invalid.problem),
            other => AttachError::WrongBacking(other),
        }),
        Some(InvalidCacheChoice::FlushValid) => {
            let report = cache::flush_valid(backing, store).await?;
            tracing::warn!(
                blocks = report.blocks_written_back,
                problem = report.journal_problem.as_deref().unwrap_or("none"),
                "invalid cache: its valid part was written back (operator's choice)"
            );
            Ok(cache::open(backing, store, config, clock).await?)
        }
        Some(InvalidCacheChoice::Discard) => {
            cache::discard(backing, store).await?;
            tracing::warn!("invalid cache discarded (operator's choice)");
            Ok(cache::open(backing, store, config, clock).await?)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::backend::file::DirectIo;
    use crate::backend::Backend;
    use crate::device_cache::CacheStoreSpec;

    fn file(path: &Path, bytes: u64) -> Arc<FileStore> {
        std::fs::File::create(path)
            .and_then(|f| f.set_len(bytes))
            .unwrap();
        Arc::new(FileStore::open(path, None, DirectIo::Disabled).unwrap())
    }

    /// The worker of a device queue, on a thread with a blocking ring; stops when told.
    fn start_worker(
        cache: &Arc<AttachedCache>,
        stop: &Arc<AtomicBool>,
    ) -> std::thread::JoinHandle<()> {
        let (cache, stop) = (Arc::clone(cache), Arc::clone(stop));
        std::thread::spawn(move || {
            let engine = cache.offline().unwrap();
            let sleep = |pause| async move { std::thread::sleep(pause) };
            smol::block_on(cache.run_worker(&engine, || stop.load(Ordering::Acquire), sleep));
        })
    }

    #[test]
    fn admin_jobs_run_on_the_worker_and_detach_leaves_the_data_on_the_backing_store() {
        let dir = tempfile::tempdir().unwrap();
        let backing = file(&dir.path().join("backing.img"), 8 << 20);
        let cache_path = dir.path().join("cache.img");
        let store = CacheStoreShared::File(file(&cache_path, 4 << 20));
        let spec = CacheSpec {
            store: CacheStoreSpec::Path { path: cache_path },
            size: None,
            mode: CacheMode::Writeback,
            on_invalid: None,
        };
        let cache =
            AttachedCache::open(Arc::clone(&backing), store, &spec, Replay::Committed).unwrap();
        let data = vec![0x5a_u8; 3 * 4096];
        let engine = cache.offline().unwrap();
        smol::block_on(engine.write(8192, &data, false)).unwrap();
        assert_eq!(cache.report().stats.dirty_bytes, 3 * 4096);

        let stop = Arc::new(AtomicBool::new(false));
        let worker = start_worker(&cache, &stop);
        let wait = Duration::from_secs(60);
        assert_eq!(cache.flush(wait).unwrap().blocks, 3);
        assert_eq!(cache.report().stats.dirty_bytes, 0);
        smol::block_on(engine.write(8192, &data[..4096], false)).unwrap();
        let change = cache.set_mode(CacheMode::Writethrough, wait).unwrap();
        assert_eq!(
            (change.from, change.to, change.drained.blocks),
            (CacheMode::Writeback, CacheMode::Writethrough, 1)
        );
        assert_eq!(cache.report().stats.mode, CacheMode::Writethrough);

        cache.detach(wait).unwrap();
        assert!(cache.is_detached());
        assert!(matches!(cache.flush(wait), Err(AttachError::Detached)));
        // The engine of a detached cache refuses requests (the queue then uses the backing).
        let refused = smol::block_on(engine.write(0, &data[..4096], false)).unwrap_err();
        assert_eq!(refused.errno, libc::ESHUTDOWN);
        stop.store(true, Ordering::Release);
        worker.join().unwrap();

        let on_backing = std::fs::read(backing.path()).unwrap();
        assert!(on_backing[8192..8192 + data.len()]
            .iter()
            .all(|&b| b == 0x5a));
        // The store was reformatted empty: reopening it finds a valid cache with nothing in it.
        let reopened = AttachedCache::open(
            backing,
            CacheStoreShared::File(Arc::new(
                FileStore::open(&dir.path().join("cache.img"), None, DirectIo::Disabled).unwrap(),
            )),
            &spec,
            Replay::Committed,
        )
        .unwrap();
        assert_eq!(reopened.report().stats.cached_bytes, 0);
    }

    /// Flips a byte inside journal block `index` of the active region of the cache in `path`.
    fn damage_journal_block(path: &Path, index: u64) {
        let mut bytes = std::fs::read(path).unwrap();
        let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        let (journal_blocks, region) = (word(40), u64::from(bytes[56]));
        let offset = ((2 + region * journal_blocks + index) * 4096 + 2048) as usize;
        bytes[offset] ^= 0xff;
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn an_invalid_cache_is_refused_and_flush_valid_saves_its_valid_part() {
        let dir = tempfile::tempdir().unwrap();
        let backing = file(&dir.path().join("backing.img"), 8 << 20);
        let cache_path = dir.path().join("cache.img");
        let store = || {
            let file = FileStore::open(&cache_path, None, DirectIo::Disabled).unwrap();
            CacheStoreShared::File(Arc::new(file))
        };
        file(&cache_path, 4 << 20);
        let mut spec = CacheSpec {
            store: CacheStoreSpec::Path {
                path: cache_path.clone(),
            },
            size: None,
            mode: CacheMode::Writeback,
            on_invalid: None,
        };
        {
            // Three commits of one dirty block each, then a crash: no shutdown. Journal blocks
            // 0 to 5: each write's uncommitted record, then the flush's commit (the opening
            // checkpoint of an empty cache takes no block).
            let cache =
                AttachedCache::open(Arc::clone(&backing), store(), &spec, Replay::Committed)
                    .unwrap();
            let engine = cache.offline().unwrap();
            for block in 0..3u8 {
                let data = vec![block + 1; 4096];
                smol::block_on(engine.write(u64::from(block) * 4096, &data, false)).unwrap();
                smol::block_on(engine.flush()).unwrap();
            }
        }
        damage_journal_block(&cache_path, 2);
        let refused = AttachedCache::open(Arc::clone(&backing), store(), &spec, Replay::Committed)
            .unwrap_err();
        let message = refused.to_string();
        assert!(message.contains("failed validation"), "{message}");
        assert!(message.contains("--cache-invalid flush-valid"), "{message}");
        assert!(
            std::fs::read(backing.path()).unwrap()[..3 * 4096]
                .iter()
                .all(|&b| b == 0),
            "a refused cache wrote to the backing store"
        );

        spec.on_invalid = Some(InvalidCacheChoice::FlushValid);
        let cache =
            AttachedCache::open(Arc::clone(&backing), store(), &spec, Replay::Committed).unwrap();
        assert_eq!(cache.report().stats.cached_bytes, 0, "not reformatted");
        let on_backing = std::fs::read(backing.path()).unwrap();
        // Block 0's record precedes the damage: written back. Blocks 1 and 2 are lost.
        assert!(on_backing[..4096].iter().all(|&b| b == 1));
        assert!(on_backing[4096..3 * 4096].iter().all(|&b| b == 0));
    }

    #[test]
    fn a_job_for_a_stopped_worker_is_answered() {
        let dir = tempfile::tempdir().unwrap();
        let backing = file(&dir.path().join("backing.img"), 8 << 20);
        let store = CacheStoreShared::Ram(crate::backend::RamBackend::new(2 << 20));
        let spec = CacheSpec {
            store: CacheStoreSpec::Ram,
            size: Some(2 << 20),
            mode: CacheMode::Writethrough,
            on_invalid: None,
        };
        let cache = AttachedCache::open(backing, store, &spec, Replay::Committed).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let worker = start_worker(&cache, &stop);
        let refused = cache
            .set_mode(CacheMode::Writeback, Duration::from_secs(60))
            .unwrap_err();
        assert!(refused.to_string().contains("writeback"), "{refused}");
        stop.store(true, Ordering::Release);
        worker.join().unwrap();
        // Nobody serves jobs any more: the request times out instead of hanging.
        let late = cache.flush(Duration::from_millis(50)).unwrap_err();
        assert!(matches!(late, AttachError::Timeout(_)), "{late}");
    }
}
