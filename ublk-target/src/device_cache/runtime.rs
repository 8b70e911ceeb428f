//! [`AttachedCache`]: one device server's cache, from opening the store to the orderly shutdown.
//!
//! Queue threads serve requests through their own rings ([`super::CachedQueue`]). Everything
//! else (opening, background writeback, the admin requests, shutdown) runs on ordinary threads
//! with a private [`BlockingRing`] each: a queue ring can only be driven by its own thread, and
//! these jobs must not stall a queue's other requests. The cache's async lock orders them with
//! the queues' requests.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::queue::{CacheEngine, CacheStore, Unregistered};
use super::{CacheSpec, CacheStoreShared, InvalidCacheChoice};
use crate::backend::{FileBackend, FileStore, Submitter};
use crate::cache::{
    self, CacheConfig, CacheError, CacheMode, CacheShared, CacheStatsSnapshot, CachedBackend,
    DrainReport, ModeChange,
};
use crate::qos::MonotonicClock;
use crate::sys::ring::BlockingRing;

/// Pause between background writeback steps while there is work (one step writes at most one
/// batch, and the rate limit spreads batches out).
const WRITEBACK_BUSY_PAUSE: Duration = Duration::from_millis(10);
/// Pause while nothing is due.
const WRITEBACK_IDLE_PAUSE: Duration = Duration::from_millis(200);
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
    stop: AtomicBool,
    writeback_rate: AtomicU64,
    /// Orders the admin requests that change the cache (mode changes, detach).
    changes: Mutex<()>,
}

impl AttachedCache {
    /// Opens (replays and validates) or formats the cache in `store` in front of `backing`.
    /// A store that fails validation is refused unless `spec.on_invalid` says what to do.
    pub fn open(
        backing: Arc<FileStore>,
        store: CacheStoreShared,
        spec: &CacheSpec,
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
        ))?;
        Ok(Arc::new(AttachedCache {
            shared,
            backing,
            store,
            detached: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            writeback_rate: AtomicU64::new(0),
            changes: Mutex::new(()),
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
    fn offline(&self) -> Result<CachedBackend<FileBackend<BlockingRing>, OfflineStore>, AttachError> {
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
    pub fn flush(&self) -> Result<DrainReport, AttachError> {
        let engine = self.attached_engine()?;
        Ok(smol::block_on(engine.drain()).map_err(CacheError::from)?)
    }

    /// Switches the mode; leaving writeback, returns once the dirty data is drained.
    pub fn set_mode(&self, mode: CacheMode) -> Result<ModeChange, AttachError> {
        let _change = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let engine = self.attached_engine()?;
        Ok(smol::block_on(engine.set_mode(mode))?)
    }

    /// Drains the cache and takes it out of the device's I/O path: from then on requests go to
    /// the backing store. The store is shut down and reformatted empty, so a stale record
    /// naming it can never bring old cached blocks back.
    pub fn detach(&self) -> Result<DrainReport, AttachError> {
        let _change = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let engine = self.attached_engine()?;
        // Mode none: writes stop entering the cache and invalidate cached copies, so the cache
        // stays coherent while requests still in it finish; leaving writeback drains it.
        let change = smol::block_on(engine.set_mode(CacheMode::None))?;
        self.detached.store(true, Ordering::Release);
        smol::block_on(async {
            engine.shutdown().await.map_err(CacheError::from)?;
            cache::discard(&engine_backing(&self.backing)?, &self.offline_store()?).await?;
            Ok::<_, AttachError>(())
        })?;
        tracing::info!(drained = change.drained.blocks, "cache detached");
        Ok(change.drained)
    }

    fn attached_engine(
        &self,
    ) -> Result<CachedBackend<FileBackend<BlockingRing>, OfflineStore>, AttachError> {
        if self.is_detached() {
            return Err(AttachError::Detached);
        }
        self.offline()
    }

    fn offline_store(&self) -> Result<OfflineStore, AttachError> {
        let ring = BlockingRing::new().map_err(AttachError::Ring)?;
        Ok(self.store.for_ring(Unregistered(ring)))
    }

    /// Starts background writeback (watermarks, dirty age, rate limit) on its own thread.
    pub fn start_writeback(self: &Arc<Self>) -> std::io::Result<JoinHandle<()>> {
        let cache = Arc::clone(self);
        std::thread::Builder::new()
            .name("cache-writeback".into())
            .spawn(move || cache.writeback_loop())
    }

    fn writeback_loop(&self) {
        let engine = match self.offline() {
            Ok(engine) => engine,
            Err(e) => {
                tracing::error!(error = %e, "no background writeback");
                return;
            }
        };
        let mut sample = (Instant::now(), self.shared.stats());
        let mut failing = false;
        while !self.stop.load(Ordering::Acquire) && !self.is_detached() {
            let busy = match smol::block_on(engine.writeback_step()) {
                Ok(report) => {
                    failing = false;
                    report.blocks > 0
                }
                Err(_) if self.is_detached() || self.stop.load(Ordering::Acquire) => break,
                Err(e) => {
                    // Logged once per run of failures, not at every step.
                    if !failing {
                        tracing::warn!(error = %e, "background writeback failed");
                    }
                    failing = true;
                    false
                }
            };
            if sample.0.elapsed() >= RATE_WINDOW {
                let now = self.shared.stats();
                let rate = now.writeback_rate(&sample.1, sample.0.elapsed());
                self.writeback_rate.store(rate as u64, Ordering::Relaxed);
                sample = (Instant::now(), now);
            }
            std::thread::sleep(if busy {
                WRITEBACK_BUSY_PAUSE
            } else {
                WRITEBACK_IDLE_PAUSE
            });
        }
    }

    /// Stops background writeback and, unless detached, shuts the cache down in order (dirty
    /// data stays in the store, durably; clean blocks stay warm for the next open).
    pub fn shutdown(&self, writeback: Option<JoinHandle<()>>) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = writeback {
            let _ = thread.join();
        }
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
) -> Result<Arc<CacheShared>, AttachError> {
    let clock = Arc::new(MonotonicClock);
    let refused = match cache::open_or_format(backing, store, config, clock.clone()).await {
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
