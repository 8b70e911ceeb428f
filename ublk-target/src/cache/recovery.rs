//! Opening a cache (replay and validation), formatting one, and the operator's two choices for
//! a cache that fails validation: [`flush_valid`] and [`discard`].

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::engine::CacheCore;
use super::index::{replay, Replayed};
use super::journal::{
    block_buffer, choose_superblock, format_store, read_journal, read_superblocks, JournalEnd,
    JournalWriter, NoSuperblock, Replay,
};
use super::layout::{Geometry, Superblock, CACHE_BLOCK};
use super::policy::{SequentialDetector, WritebackThrottle};
use super::stats::CacheStats;
use super::{CacheConfig, CacheError, CacheMode, CacheShared, InvalidCache};
use crate::backend::Backend;
use crate::qos::Clock;

fn check_backing(backing_size: u64) -> Result<(), CacheError> {
    if backing_size == 0 || backing_size % CACHE_BLOCK != 0 {
        return Err(CacheError::BackingMisaligned(backing_size));
    }
    Ok(())
}

/// Formats `store` as an empty cache for a backing store of `backing_size` bytes, using the
/// whole store. `journal_blocks` overrides the size of each journal region (tests use small
/// ones to exercise checkpoints). Anything the store held is gone.
pub async fn format<C: Backend>(
    store: &C,
    backing_size: u64,
    journal_blocks: Option<u64>,
) -> Result<Superblock, CacheError> {
    check_backing(backing_size)?;
    let geometry =
        Geometry::plan(store.size(), journal_blocks).ok_or(CacheError::TooSmall(store.size()))?;
    tracing::info!(
        data_blocks = geometry.data_blocks,
        journal_blocks = geometry.journal_blocks,
        "formatting cache store"
    );
    Ok(format_store(store, geometry, backing_size).await?)
}

/// The operator's choice to drop a cache that failed validation (or any cache): reformats it
/// for `backing`, losing any dirty data it held.
pub async fn discard<B: Backend, C: Backend>(backing: &B, store: &C) -> Result<(), CacheError> {
    tracing::warn!("discarding the cache store's contents; dirty data in it is lost");
    format(store, backing.size(), None).await.map(drop)
}

fn invalid(problem: impl Into<String>) -> CacheError {
    CacheError::Invalid(InvalidCache {
        problem: problem.into(),
    })
}

/// The superblock of a cache store that belongs to `backing`.
async fn superblock_for<B: Backend, C: Backend>(
    backing: &B,
    store: &C,
) -> Result<Result<Superblock, String>, CacheError> {
    let copies = read_superblocks(store).await?;
    let sb = match choose_superblock(&copies) {
        Ok(sb) => sb,
        Err(NoSuperblock::Blank) => return Err(CacheError::NotFormatted),
        Err(NoSuperblock::Invalid(problem)) => return Ok(Err(problem)),
    };
    if sb.backing_size != backing.size() {
        return Err(CacheError::WrongBacking {
            expected: sb.backing_size,
            actual: backing.size(),
        });
    }
    if sb.geometry.store_bytes() > store.size() {
        return Ok(Err(format!(
            "the superblock describes {} bytes of layout but the store has {}",
            sb.geometry.store_bytes(),
            store.size()
        )));
    }
    Ok(Ok(sb))
}

/// Opens the cache in `store` in front of `backing`: reads both superblocks, replays and checks
/// the committed journal, and compacts it into a fresh checkpoint. A cache that fails any check
/// is refused with [`CacheError::Invalid`]. A store that does not survive the process
/// ([`CacheConfig::volatile_store`]) is formatted afresh instead. For a store that may have
/// been power-cycled since it was last written (a fresh start); see [`open_replaying`].
pub async fn open<B: Backend, C: Backend>(
    backing: &B,
    store: &C,
    config: &CacheConfig,
    clock: Arc<dyn Clock>,
) -> Result<Arc<CacheShared>, CacheError> {
    open_replaying(backing, store, config, clock, Replay::Committed).await
}

/// [`open`], replaying the records `which` names. [`Replay::All`] also replays the records
/// written after the last commit, so every write the previous server acknowledged is back: only
/// for a store that was not power-cycled since (ublk user recovery of a quiesced device).
pub async fn open_replaying<B: Backend, C: Backend>(
    backing: &B,
    store: &C,
    config: &CacheConfig,
    clock: Arc<dyn Clock>,
    which: Replay,
) -> Result<Arc<CacheShared>, CacheError> {
    check_backing(backing.size())?;
    config.writeback.validate().map_err(CacheError::Config)?;
    if config.volatile_store {
        if config.mode == CacheMode::Writeback {
            return Err(CacheError::VolatileWriteback);
        }
        format(store, backing.size(), None).await?;
    }
    let sb = superblock_for(backing, store).await?.map_err(invalid)?;
    let journal = read_journal(store, &sb, which).await?;
    match &journal.end {
        JournalEnd::Corrupt(problem) => return Err(invalid(problem.clone())),
        JournalEnd::TornTail => {
            tracing::info!(
                block = journal.blocks,
                "journal ends in a torn commit; ignored"
            )
        }
        JournalEnd::Complete => {}
    }
    let now = clock.now();
    let slots = u32::try_from(sb.geometry.data_blocks).expect("checked by the superblock");
    let Replayed {
        mut index,
        next_seq,
        problem,
    } = replay(
        &journal.records,
        slots,
        backing.size() / CACHE_BLOCK,
        sb.next_seq,
        now,
    );
    if let Some(problem) = problem {
        return Err(invalid(problem));
    }
    if !sb.clean_shutdown {
        let dropped = index.drop_clean();
        tracing::info!(
            dropped,
            "cache was not shut down cleanly: clean blocks dropped"
        );
    }
    let mut writer = JournalWriter::new(sb, journal.blocks);
    // A fresh checkpoint: compacts the journal, forgets any torn tail, and records that the
    // cache is in use (not cleanly shut down) from now on. The backing store is flushed first:
    // the checkpoint commits replayed invalidations, and the backing writes that superseded
    // those copies (and any other the last server acknowledged) must not be lost after it.
    backing.flush().await?;
    store.flush().await?;
    writer
        .checkpoint(store, &index.snapshot(), 0, next_seq, false)
        .await?;
    index.commit_done();
    tracing::info!(
        cached = index.len(),
        dirty = index.dirty_count(),
        "cache opened"
    );
    let stats = CacheStats::default();
    stats.set_mode(config.mode);
    let core = CacheCore {
        mode: config.mode,
        geometry: sb.geometry,
        next_seq,
        committed_seq: next_seq - 1,
        backing_unflushed: false,
        changes: 0,
        sequential: SequentialDetector::new(config.sequential_cutoff),
        throttle: WritebackThrottle::new(config.writeback, now),
        closed: false,
        index,
        pins: Default::default(),
        inflight: Default::default(),
    };
    stats.set_occupancy(
        core.index.len() as u64,
        core.index.unclean_count(),
        sb.geometry.data_blocks,
    );
    Ok(Arc::new(CacheShared {
        core: smol::lock::Mutex::new(core),
        journal: smol::lock::Mutex::new(writer),
        pending: Default::default(),
        writes: smol::lock::RwLock::new(()),
        commits_started: Default::default(),
        commits_done: Default::default(),
        stats,
        clock,
        volatile_store: config.volatile_store,
        backing_size: backing.size(),
    }))
}

/// [`open_replaying`], formatting the store first if it holds no cache at all. A store holding
/// an invalid cache is still refused: only the operator may decide to lose it.
pub async fn open_or_format<B: Backend, C: Backend>(
    backing: &B,
    store: &C,
    config: &CacheConfig,
    clock: Arc<dyn Clock>,
    which: Replay,
) -> Result<Arc<CacheShared>, CacheError> {
    match open_replaying(backing, store, config, Arc::clone(&clock), which).await {
        Err(CacheError::NotFormatted) => {
            format(store, backing.size(), None).await?;
            open(backing, store, config, clock).await
        }
        other => other,
    }
}

/// What [`flush_valid`] recovered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryReport {
    /// Dirty blocks written from the cache to the backing store.
    pub blocks_written_back: u64,
    /// Where the valid part of the journal ended and why, if it did not end normally.
    pub journal_problem: Option<String>,
}

/// The operator's choice to save what can be saved from a cache that failed validation: the
/// dirty blocks named by the valid part of its journal (everything before the first damaged or
/// contradictory record) are written to the backing store, the backing store is flushed, and
/// the cache is reformatted empty. Blocks whose only record was past the damage are lost.
pub async fn flush_valid<B: Backend, C: Backend>(
    backing: &B,
    store: &C,
) -> Result<RecoveryReport, CacheError> {
    check_backing(backing.size())?;
    let sb = superblock_for(backing, store)
        .await?
        .map_err(CacheError::NothingToRecover)?;
    // Committed records only: the operator may run this after a power cut.
    let journal = read_journal(store, &sb, Replay::Committed).await?;
    let mut journal_problem = match journal.end {
        JournalEnd::Corrupt(problem) => Some(problem),
        JournalEnd::Complete | JournalEnd::TornTail => None,
    };
    let slots = u32::try_from(sb.geometry.data_blocks).expect("checked by the superblock");
    let replayed = replay(
        &journal.records,
        slots,
        backing.size() / CACHE_BLOCK,
        sb.next_seq,
        std::time::Duration::ZERO,
    );
    journal_problem = journal_problem.or(replayed.problem);
    let mut buf = block_buffer();
    let mut written = 0;
    for block in replayed.index.oldest_dirty(u64::MAX, None) {
        let entry = replayed.index.get(block).expect("dirty blocks are cached");
        store
            .read(sb.geometry.slot_offset(entry.slot), buf.as_mut_slice())
            .await?;
        backing
            .write(block * CACHE_BLOCK, buf.as_slice(), false)
            .await?;
        written += 1;
    }
    backing.flush().await?;
    format_store(store, sb.geometry, backing.size()).await?;
    tracing::warn!(
        written,
        problem = journal_problem.as_deref().unwrap_or("none"),
        "cache flushed to the backing store and reformatted"
    );
    Ok(RecoveryReport {
        blocks_written_back: written,
        journal_problem,
    })
}
