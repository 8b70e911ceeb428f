//! Moving dirty data to the backing store: background writeback steps (watermarks, age, rate
//! limit, all on the injected clock), draining, live mode changes and orderly shutdown.
//!
//! A step is a plain async call, so the device server decides when it runs (a timer on one
//! queue thread) and tests drive it deterministically with a manual clock. Each step holds the
//! cache lock only for its own small batch, so foreground requests wait at most one batch.

use serde::{Deserialize, Serialize};

use super::engine::{shut_down, CacheCore, CachedBackend};
use super::index::BlockState;
use super::journal::block_buffer;
use super::layout::CACHE_BLOCK;
use super::policy::WritebackReason;
use super::{CacheError, CacheMode};
use crate::backend::{Backend, IoError};
use crate::request::Op;

/// What one background writeback step did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WritebackReport {
    /// Blocks written back (and, the backing store flushed, declared clean).
    pub blocks: u64,
    /// Why it wrote, if it did.
    pub reason: Option<WritebackReason>,
    /// Dirty blocks left.
    pub dirty_blocks: u64,
}

/// What a drain did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainReport {
    /// Blocks written back.
    pub blocks: u64,
}

/// A completed mode change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModeChange {
    /// The mode before.
    pub from: CacheMode,
    /// The mode now.
    pub to: CacheMode,
    /// Dirty data written back before the change was complete (leaving writeback).
    pub drained: DrainReport,
}

impl<B: Backend, C: Backend> CachedBackend<B, C> {
    /// Writes `blocks` (dirty ones) to the backing store, flushes it, and declares them clean.
    async fn write_back(&self, core: &mut CacheCore, blocks: &[u64]) -> Result<u64, IoError> {
        let mut buf = block_buffer();
        let mut written = 0;
        for &block in blocks {
            let Some(entry) = core.index.get(block) else {
                continue;
            };
            // A write running outside the lock may be writing this block's newer data to the
            // backing store (writethrough, after leaving writeback): older data must not land
            // after it. That write supersedes the dirty copy anyway.
            let racing = core.inflight.contains_key(&block);
            if !matches!(entry.state, BlockState::Dirty { .. }) || racing {
                continue;
            }
            self.store
                .read(core.geometry.slot_offset(entry.slot), buf.as_mut_slice())
                .await?;
            core.backing_unflushed = true;
            self.backing
                .write(block * CACHE_BLOCK, buf.as_slice(), false)
                .await?;
            core.index.set_state(block, BlockState::WrittenBack);
            written += 1;
        }
        self.flush_backing(core).await?;
        self.shared.stats.written_back(written);
        Ok(written)
    }

    /// One step of background writeback at the clock's current time: writes back what the
    /// watermarks, the maximum dirty age and the rate limit allow now (possibly nothing).
    pub async fn writeback_step(&self) -> Result<WritebackReport, IoError> {
        self.shared
            .fail_stop((Op::Write, 0, 0), self.writeback_step_unchecked())
            .await
    }

    async fn writeback_step_unchecked(&self) -> Result<WritebackReport, IoError> {
        let mut core = self.shared.core.lock().await;
        if core.closed {
            return Err(shut_down(Op::Write, 0, 0));
        }
        let now = self.shared.now();
        let core = &mut *core;
        let plan = core.throttle.plan(
            now,
            core.index.dirty_count(),
            core.geometry.data_blocks,
            core.index.oldest_dirty_since(),
        );
        let blocks = core.index.oldest_dirty(plan.blocks, plan.dirty_before);
        let result = self.write_back(core, &blocks).await;
        if let Ok(written) = result {
            core.throttle.charge(written);
        }
        self.publish(core);
        Ok(WritebackReport {
            blocks: result?,
            reason: plan.reason.filter(|_| !blocks.is_empty()),
            dirty_blocks: core.index.dirty_count(),
        })
    }

    /// Writes back every block dirty when the drain started, batch by batch (foreground
    /// requests run between batches), ignoring the rate limit, then commits. When it returns,
    /// that data is on the flushed backing store.
    pub async fn drain(&self) -> Result<DrainReport, IoError> {
        self.shared
            .fail_stop((Op::Flush, 0, 0), self.drain_unchecked())
            .await
    }

    async fn drain_unchecked(&self) -> Result<DrainReport, IoError> {
        let started = self.shared.now();
        let mut report = DrainReport::default();
        loop {
            let mut core = self.shared.core.lock().await;
            if core.closed {
                return Err(shut_down(Op::Flush, 0, 0));
            }
            let batch = u64::from(core.throttle.policy().batch_blocks);
            let blocks = core.index.oldest_dirty(batch, Some(started));
            if blocks.is_empty() {
                self.commit(&mut core).await?;
                self.publish(&core);
                tracing::info!(blocks = report.blocks, "cache drained");
                return Ok(report);
            }
            let written = self.write_back(&mut core, &blocks).await?;
            report.blocks += written;
            self.publish(&core);
            drop(core);
            if written == 0 {
                // Only blocks that writes outside the lock are replacing: wait for those writes
                // (a wait, not a yield: the queue thread runs ready tasks before it reaps the
                // ring's completions, so a task that keeps yielding would starve them).
                drop(self.shared.writes.write().await);
            }
        }
    }

    /// Switches the cache mode on a live device. Leaving writeback, new writes stop creating
    /// dirty data at once and the existing dirty data is drained; the call returns when that is
    /// done.
    pub async fn set_mode(&self, mode: CacheMode) -> Result<ModeChange, CacheError> {
        if mode == CacheMode::Writeback && self.shared.volatile_store {
            return Err(CacheError::VolatileWriteback);
        }
        let from = {
            let mut core = self.shared.core.lock().await;
            let from = core.mode;
            core.mode = mode;
            self.shared.stats.set_mode(mode);
            from
        };
        // Writes that reserved their slots under the old mode may still install dirty data:
        // wait for them, so the drain below sees it.
        drop(self.shared.writes.write().await);
        tracing::info!(from = from.name(), to = mode.name(), "cache mode changing");
        let drained = if from == CacheMode::Writeback && mode != CacheMode::Writeback {
            self.drain().await?
        } else {
            DrainReport::default()
        };
        tracing::info!(
            to = mode.name(),
            blocks = drained.blocks,
            "cache mode changed"
        );
        Ok(ModeChange {
            from,
            to: mode,
            drained,
        })
    }

    /// The mode in force.
    pub async fn mode(&self) -> CacheMode {
        self.shared.core.lock().await.mode
    }

    /// Stops the cache in order: commits, flushes the backing store and marks the store as
    /// cleanly shut down, so the next open keeps its clean blocks. Dirty data stays in the
    /// cache (durably). Every later request fails with `ESHUTDOWN`.
    pub async fn shutdown(&self) -> Result<(), IoError> {
        self.shared
            .fail_stop((Op::Flush, 0, 0), self.shutdown_unchecked())
            .await
    }

    async fn shutdown_unchecked(&self) -> Result<(), IoError> {
        // No write is running outside the lock while the store is sealed.
        let _no_writes = self.shared.writes.write().await;
        let mut core = self.shared.core.lock().await;
        if core.closed {
            return Ok(());
        }
        self.commit(&mut core).await?;
        self.flush_backing(&mut core).await?;
        let snapshot = core.index.snapshot();
        let next_seq = core.next_seq;
        let mut journal = self.shared.journal.lock().await;
        let superseded = self.shared.pending().take().len();
        self.store.flush().await?;
        journal
            .checkpoint(&self.store, &snapshot, superseded, next_seq, true)
            .await?;
        core.closed = true;
        Ok(())
    }
}
