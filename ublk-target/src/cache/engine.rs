//! The request path through the cache: [`CachedBackend`] serves reads, writes, FLUSH, FUA,
//! DISCARD and WRITE_ZEROES over a backing backend and a cache-store backend.
//!
//! The rules each method keeps (docs/cache.md, "Durability contract"):
//! - a write, discard or write-zeroes writes its journal records to the store (uncommitted, no
//!   flush) after its data and before it completes, so a server crash loses no acknowledged
//!   write;
//! - a journal commit first flushes the backing store if anything reached it since its last
//!   flush (so an invalidation is never durable before the backing write that superseded it),
//!   then flushes the cache store (so no record is durable before its data), then appends the
//!   records with FUA;
//! - a slot becomes reusable only once the record freeing it is committed (`index`);
//! - a block becomes clean only after the backing store was flushed with its data on it;
//! - a read miss waits for the backing store without holding the cache, and promotes what it
//!   read only if no write, discard or write-zeroes ran meanwhile (`CacheCore::changes`);
//! - cached writes and read hits do their data I/O without the cache held (`unlocked`); the
//!   paths here that hold it across I/O are the slow ones (commits, full caches, bypasses).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::index::{BlockState, CacheIndex, Entry};
use super::journal::JournalWriter;
use super::layout::{Geometry, Record, CACHE_BLOCK};
use super::policy::{SequentialDetector, WritebackThrottle};
use super::unlocked::InFlight;
use super::{CacheMode, CacheShared};
use crate::backend::{Backend, Capabilities, IoError};
use crate::request::Op;
use smol::lock::MutexGuard;

pub(crate) const BLOCK_BYTES: usize = CACHE_BLOCK as usize;
/// Uncommitted records that trigger a commit without a FLUSH (dm-writecache's autocommit): a
/// device that is never flushed must not grow its pending journal without bound.
const AUTOCOMMIT_RECORDS: usize = 1024;

/// The error for a request to a cache that was shut down.
pub(crate) fn shut_down(op: Op, offset: u64, len: u64) -> IoError {
    IoError {
        op,
        offset,
        len,
        errno: libc::ESHUTDOWN,
    }
}

/// The mutable state of a cache, behind [`CacheShared`]'s lock.
#[derive(Debug)]
pub(crate) struct CacheCore {
    pub(crate) mode: CacheMode,
    pub(crate) index: CacheIndex,
    pub(crate) geometry: Geometry,
    pub(crate) next_seq: u64,
    /// Every record with a sequence number up to this one is durable.
    pub(crate) committed_seq: u64,
    /// Something reached the backing store since its last flush.
    pub(crate) backing_unflushed: bool,
    /// Writes, discards and write-zeroes started so far. A read miss notes it before it lets
    /// go of the cache for its backing read; if it moved, what the read returned may be older
    /// than the device's contents and is not promoted.
    pub(crate) changes: u64,
    pub(crate) sequential: SequentialDetector,
    pub(crate) throttle: WritebackThrottle,
    /// Shut down in order: nothing more may change the store.
    pub(crate) closed: bool,
    /// Slots read without the lock, and by how many readers: not reused until they are done.
    pub(crate) pins: HashMap<u32, u32>,
    /// Blocks with writes running outside the lock.
    pub(crate) inflight: BTreeMap<u64, InFlight>,
}

impl CacheCore {
    pub(crate) fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }
}

/// A backend that serves a device from a cache store in front of a backing store. Build one per
/// queue from the device's [`CacheShared`] and that queue's backends.
#[derive(Debug)]
pub struct CachedBackend<B, C> {
    pub(crate) shared: Arc<CacheShared>,
    pub(crate) backing: B,
    pub(crate) store: C,
}

impl<B: Backend, C: Backend> CachedBackend<B, C> {
    /// Serves the cache `shared` with this queue's `backing` and cache `store` backends (the
    /// same stores [`open`](super::open) was given).
    pub fn new(shared: Arc<CacheShared>, backing: B, store: C) -> Self {
        CachedBackend {
            shared,
            backing,
            store,
        }
    }

    /// The cache's shared state (stats, size).
    pub fn shared(&self) -> &Arc<CacheShared> {
        &self.shared
    }

    /// This queue's cache-store backend (tests reach through it to the store they built).
    pub fn store_backend(&self) -> &C {
        &self.store
    }

    /// The first block and block count of a request, or the error for a range the cache cannot
    /// serve (the engine validated it against the 4 KiB block size this backend declares).
    fn blocks(&self, op: Op, offset: u64, len: u64) -> Result<(u64, u64), IoError> {
        let fail = |errno| IoError {
            op,
            offset,
            len,
            errno,
        };
        if offset % CACHE_BLOCK != 0 || len % CACHE_BLOCK != 0 {
            return Err(fail(libc::EINVAL));
        }
        match offset.checked_add(len) {
            Some(end) if end <= self.shared.backing_size => {
                Ok((offset / CACHE_BLOCK, len / CACHE_BLOCK))
            }
            _ => Err(fail(libc::EIO)),
        }
    }

    pub(crate) fn publish(&self, core: &CacheCore) {
        self.shared.stats.set_occupancy(
            core.index.len() as u64,
            core.index.unclean_count(),
            core.geometry.data_blocks,
        );
    }

    /// Flushes the backing store if it has unflushed writes, then declares the blocks written
    /// back before it clean.
    pub(crate) async fn flush_backing(&self, core: &mut CacheCore) -> Result<(), IoError> {
        if core.backing_unflushed {
            self.backing.flush().await?;
            core.backing_unflushed = false;
        }
        for block in core.index.take_written_back() {
            if let Some(entry) = core.index.get(block) {
                core.index.set_state(block, BlockState::Clean);
                self.shared.pending().append(Record::Clean {
                    block,
                    slot: entry.slot,
                    seq: entry.seq,
                });
            }
        }
        Ok(())
    }

    /// Makes every completed write durable and commits the index: the FLUSH path. The records
    /// are taken with the cache held, so the store flush covers the data each one names (a
    /// write appends its records only once its data is written).
    pub(crate) async fn commit(&self, core: &mut CacheCore) -> Result<(), IoError> {
        let id = self.shared.commits_started.fetch_add(1, Ordering::SeqCst) + 1;
        self.flush_backing(core).await?;
        let mut journal = self.shared.journal.lock().await;
        let mut records = self.shared.pending().take();
        let mut result = Ok(());
        if !records.is_empty() || journal.has_uncommitted_blocks() {
            result = self.commit_records(core, &mut journal, &mut records).await;
        }
        if !records.is_empty() {
            self.shared.pending().put_back(records);
        }
        if result.is_ok() {
            self.shared.commits_done.fetch_max(id, Ordering::SeqCst);
        }
        result
    }

    async fn commit_records(
        &self,
        core: &mut CacheCore,
        journal: &mut JournalWriter,
        records: &mut Vec<Record>,
    ) -> Result<(), IoError> {
        self.store.flush().await?;
        let checkpoint = journal.needs_checkpoint(records.len());
        if checkpoint {
            let snapshot = core.index.snapshot();
            journal
                .checkpoint(&self.store, &snapshot, records.len(), core.next_seq, false)
                .await?;
            records.clear();
        } else {
            journal.commit(&self.store, records).await?;
        }
        core.committed_seq = core.next_seq - 1;
        core.index.commit_done();
        self.shared.stats.commit(checkpoint);
        Ok(())
    }

    /// DISCARD (`unmap: None`) or WRITE_ZEROES of blocks `first..first + count` (the range
    /// `offset`, `len` checked by the caller): the cached copies are invalidated and the
    /// backing store does the zeroing.
    async fn zero_range(
        &self,
        op: Op,
        (first, count): (u64, u64),
        offset: u64,
        len: u64,
        unmap: Option<bool>,
    ) -> Result<(), IoError> {
        let mut core = self.shared.core.lock().await;
        if core.closed {
            return Err(shut_down(op, offset, len));
        }
        core.changes += 1;
        self.invalidate(&mut core, first, first + count);
        core.backing_unflushed = true;
        let mut result = match unmap {
            None => self.backing.discard(offset, len).await,
            Some(unmap) => self.backing.write_zeroes(offset, len, unmap).await,
        };
        if result.is_ok() {
            result = self.autocommit(&mut core).await;
        }
        if result.is_ok() {
            result = self.write_records(&mut core).await;
        }
        self.publish(&core);
        result
    }

    pub(crate) async fn autocommit(&self, core: &mut CacheCore) -> Result<(), IoError> {
        if self.shared.pending().len() >= AUTOCOMMIT_RECORDS {
            self.commit(core).await?;
        }
        Ok(())
    }

    /// Before a write, discard or write-zeroes completes: has its records written to the
    /// store, uncommitted, with the cache held (the slow paths).
    pub(crate) async fn write_records(&self, core: &mut CacheCore) -> Result<(), IoError> {
        let target = self.shared.pending().appended();
        self.persist(Some(core), target).await
    }

    /// Has every record up to number `target` written to the store, uncommitted (no flush),
    /// after the data they name. The kernel then holds both, so a crash of the server process
    /// loses no acknowledged write (`Replay::All` on recovery); a power cut may, as the FLUSH
    /// contract allows. Group commit: whoever gets the journal writes every pending record in
    /// one go, and those whose records it wrote find them persisted and return. A commit
    /// instead when the region has no room left. `core`: the cache, if the caller holds it.
    pub(crate) async fn persist(
        &self,
        core: Option<&mut CacheCore>,
        target: u64,
    ) -> Result<(), IoError> {
        let mut journal = self.shared.journal.lock().await;
        if journal.has_persisted(target) {
            return Ok(());
        }
        let mut records = self.shared.pending().take();
        if journal.uncommitted_needs_checkpoint(records.len()) {
            self.shared.pending().put_back(records);
            drop(journal);
            return match core {
                Some(core) => self.commit(core).await,
                None => self.commit(&mut *self.shared.core.lock().await).await,
            };
        }
        self.shared.stats.journal_write(records.len() as u64);
        let result = journal.write_uncommitted(&self.store, &mut records).await;
        if !records.is_empty() {
            self.shared.pending().put_back(records);
        }
        result
    }

    /// Evicts up to `want` clean blocks; their slots are free after the next commit.
    fn evict(&self, core: &mut CacheCore, want: u64) {
        for _ in 0..want {
            let Some((block, _)) = core.index.evict_one() else {
                break;
            };
            // No floor for writes running outside the lock: the evicted copy is older than
            // their data, or overlapped them (either may win then).
            let seq = core.take_seq();
            self.shared.pending().append(Record::Unmap { block, seq });
            self.shared.stats.eviction();
        }
    }

    /// Slots a commit made for space must reclaim, short of which the block goes to the backing
    /// store instead: a commit costs two flushes and FUA writes, so a cache full of dirty data
    /// must not commit once per block written (each copy-on-write frees one slot, which the
    /// next block would commit for).
    fn reclaim_shortfall(core: &CacheCore) -> u64 {
        let batch = (core.geometry.data_blocks / 64).max(1);
        batch.saturating_sub(core.index.pending_free_len())
    }

    /// A slot for new data: a free one, else one reclaimed by a commit once the slots waiting
    /// for it, topped up by evicting clean blocks, make a batch. `None` when no batch can be
    /// reclaimed (the cache is (nearly) all dirty): the caller writes to the backing store.
    async fn allocate(&self, core: &mut CacheCore) -> Result<Option<u32>, IoError> {
        if let Some(slot) = core.free_slot() {
            return Ok(Some(slot));
        }
        self.evict(core, Self::reclaim_shortfall(core));
        if Self::reclaim_shortfall(core) > 0 && core.index.has_written_back() {
            self.flush_backing(core).await?;
            self.evict(core, Self::reclaim_shortfall(core));
        }
        if Self::reclaim_shortfall(core) > 0 {
            return Ok(None);
        }
        self.commit(core).await?;
        Ok(core.free_slot())
    }

    /// Drops the cached copies of blocks `first..end`, and keeps writes to them that are still
    /// running outside the lock from installing their (now older) data.
    pub(crate) fn invalidate(&self, core: &mut CacheCore, first: u64, end: u64) {
        for block in core.index.blocks_in(first, end) {
            core.index.remove(block);
            let seq = core.take_seq();
            self.shared.pending().append(Record::Unmap { block, seq });
        }
        let running: Vec<u64> = core.inflight.range(first..end).map(|(&b, _)| b).collect();
        for block in running {
            let seq = core.take_seq();
            core.superseded(block, seq);
        }
    }

    async fn write_backing(
        &self,
        core: &mut CacheCore,
        offset: u64,
        data: &[u8],
        fua: bool,
    ) -> Result<(), IoError> {
        core.backing_unflushed = true;
        self.backing.write(offset, data, fua).await
    }

    /// Puts `data` in the cache as block `block`'s newest contents, in `state`. Returns false
    /// when no slot could be found (the caller sends the block to the backing store).
    async fn cache_block(
        &self,
        core: &mut CacheCore,
        block: u64,
        data: &[u8],
        state: BlockState,
    ) -> Result<bool, IoError> {
        let old = core.index.get(block);
        // Data whose record is not committed yet is named by nothing durable: overwrite it,
        // unless a reader outside the lock is reading that slot or a write outside the lock
        // is running for this block (it decides by sequence number which data is newest).
        let in_place = old
            .filter(|e| e.seq > core.committed_seq && !core.pinned(e.slot))
            .filter(|_| !core.inflight.contains_key(&block))
            .map(|e| e.slot);
        let slot = match in_place {
            Some(slot) => slot,
            None => match self.allocate(core).await? {
                Some(slot) => slot,
                None => return Ok(false),
            },
        };
        if let Err(e) = self
            .store
            .write(core.geometry.slot_offset(slot), data, false)
            .await
        {
            // The slot's contents are unknown now: nothing may point at them.
            self.invalidate(core, block, block + 1);
            if in_place.is_none() {
                core.index.unallocate(slot);
            }
            return Err(e);
        }
        let state = match (state, old.map(|e| e.state)) {
            (BlockState::Dirty { .. }, Some(BlockState::Dirty { since })) => {
                BlockState::Dirty { since }
            }
            _ => state,
        };
        let seq = core.take_seq();
        core.index.insert(block, Entry { slot, seq, state });
        self.shared.pending().append(Record::Map {
            block,
            slot,
            seq,
            dirty: state != BlockState::Clean,
        });
        Ok(true)
    }

    async fn write_locked(
        &self,
        core: &mut CacheCore,
        first: u64,
        data: &[u8],
        fua: bool,
        bypass: bool,
        now: Duration,
    ) -> Result<(), IoError> {
        let offset = first * CACHE_BLOCK;
        let end = first + (data.len() / BLOCK_BYTES) as u64;
        match core.mode {
            CacheMode::Writethrough if !bypass => {
                core.contend(first, end);
                self.write_backing(core, offset, data, fua).await?;
                for (block, chunk) in (first..).zip(data.chunks(BLOCK_BYTES)) {
                    if !self
                        .cache_block(core, block, chunk, BlockState::WrittenBack)
                        .await?
                    {
                        self.invalidate(core, block, block + 1);
                    }
                }
            }
            CacheMode::Writeback if !bypass => {
                let dirty = BlockState::Dirty { since: now };
                for (block, chunk) in (first..).zip(data.chunks(BLOCK_BYTES)) {
                    if !self.cache_block(core, block, chunk, dirty).await? {
                        // No slot: the cache is (nearly) full of dirty data. The rest of the
                        // request goes to the backing store in one write, not one per block.
                        let rest = &data[((block - first) as usize) * BLOCK_BYTES..];
                        self.invalidate(core, block, end);
                        self.write_backing(core, block * CACHE_BLOCK, rest, fua)
                            .await?;
                        break;
                    }
                }
            }
            // Writearound, none, or a sequential stream past the cutoff, over blocks with a
            // cached copy: the cache stays held until the backing write is done, since a commit
            // meanwhile could make the copy's invalidation durable before the data replacing it.
            _ => {
                self.invalidate(core, first, end);
                self.write_backing(core, offset, data, fua).await?;
            }
        }
        // What this write recorded must be committed before a FUA completes, even if another
        // write's journal write took those records (uncommitted) while this one waited on I/O.
        if fua {
            self.commit(core).await?;
        }
        Ok(())
    }

    /// Copies a block just read from the backing store into the cache.
    async fn promote(&self, core: &mut CacheCore, block: u64, data: &[u8]) -> Result<(), IoError> {
        // What the backing store returned is only known to survive a crash once it was flushed.
        let state = if core.backing_unflushed {
            BlockState::WrittenBack
        } else {
            BlockState::Clean
        };
        // A write running outside the lock reserved an older sequence number than this copy
        // would get, yet its data is newer: leave the block to it.
        let free = core.index.get(block).is_none() && !core.inflight.contains_key(&block);
        if free && self.cache_block(core, block, data, state).await? {
            self.shared.stats.promotion();
        }
        Ok(())
    }

    /// Serves a read run by run: each run of hits from the store, its slots pinned, and each
    /// run of misses from the backing store, both without the cache held (so other requests go
    /// on meanwhile); misses are promoted afterwards unless a change ran in between. Returns the guard and whether every block hit.
    async fn read_blocks<'a>(
        &'a self,
        mut core: MutexGuard<'a, CacheCore>,
        first: u64,
        buf: &mut [u8],
        promote: bool,
    ) -> (MutexGuard<'a, CacheCore>, Result<bool, IoError>) {
        let count = buf.len() / BLOCK_BYTES;
        let mut all_hit = true;
        let mut i = 0;
        while i < count {
            if core.closed {
                let offset = first * CACHE_BLOCK;
                return (core, Err(shut_down(Op::Read, offset, buf.len() as u64)));
            }
            let block = first + i as u64;
            let mut slots = Vec::new();
            while let Some(entry) = core.index.get(first + (i + slots.len()) as u64) {
                slots.push(entry.slot);
                if i + slots.len() == count {
                    break;
                }
            }
            if !slots.is_empty() {
                let out = &mut buf[i * BLOCK_BYTES..(i + slots.len()) * BLOCK_BYTES];
                let read;
                (core, read) = self.read_hits(core, block, &slots, out).await;
                if let Err(e) = read {
                    return (core, Err(e));
                }
                i += slots.len();
                continue;
            }
            all_hit = false;
            let mut run_end = i + 1;
            while run_end < count && core.index.get(first + run_end as u64).is_none() {
                run_end += 1;
            }
            let run = &mut buf[i * BLOCK_BYTES..run_end * BLOCK_BYTES];
            let changes = core.changes;
            drop(core);
            let read = self.backing.read(block * CACHE_BLOCK, run).await;
            core = self.shared.core.lock().await;
            if let Err(e) = read {
                return (core, Err(e));
            }
            let current = core.changes == changes && core.mode != CacheMode::None;
            if promote && current && !core.closed {
                for (n, chunk) in run.chunks(BLOCK_BYTES).enumerate() {
                    if let Err(e) = self.promote(&mut core, block + n as u64, chunk).await {
                        return (core, Err(e));
                    }
                }
            }
            i = run_end;
        }
        (core, Ok(all_hit))
    }
}

/// The requests themselves; [`Backend`]'s methods check the range and run them through
/// [`CacheShared::fail_stop`].
impl<B: Backend, C: Backend> CachedBackend<B, C> {
    async fn zero_checked(
        &self,
        op: Op,
        offset: u64,
        len: u64,
        unmap: Option<bool>,
    ) -> Result<(), IoError> {
        let blocks = self.blocks(op, offset, len)?;
        self.shared
            .fail_stop(
                (op, offset, len),
                self.zero_range(op, blocks, offset, len, unmap),
            )
            .await
    }

    /// A read of `buf.len()` bytes at `offset`, from block `first` (checked by the caller).
    async fn serve_read(&self, first: u64, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let mut core = self.shared.core.lock().await;
        if core.closed {
            return Err(shut_down(Op::Read, offset, buf.len() as u64));
        }
        let bypass = core
            .sequential
            .observe(offset, buf.len() as u64, self.shared.now());
        if bypass {
            self.shared.stats.bypass();
        }
        let promote = !bypass && core.mode != CacheMode::None;
        let (mut core, result) = self.read_blocks(core, first, buf, promote).await;
        if let Ok(hit) = result {
            self.shared.stats.read(hit);
        }
        let result = match result {
            Ok(_) => self.autocommit(&mut core).await,
            Err(e) => Err(e),
        };
        self.publish(&core);
        result
    }

    /// A write of `buf` at `offset`, blocks `first..first + count` (checked by the caller).
    async fn serve_write(
        &self,
        (first, count): (u64, u64),
        offset: u64,
        buf: &[u8],
        fua: bool,
    ) -> Result<(), IoError> {
        let _writing = self.shared.writes.read().await;
        let mut core = self.shared.core.lock().await;
        if core.closed {
            return Err(shut_down(Op::Write, offset, buf.len() as u64));
        }
        core.changes += 1;
        let now = self.shared.now();
        let bypass = core.sequential.observe(offset, buf.len() as u64, now);
        if bypass {
            self.shared.stats.bypass();
        }
        let hit = (first..first + count).all(|b| core.index.get(b).is_some());
        self.shared.stats.write(hit);
        let cached = matches!(core.mode, CacheMode::Writeback | CacheMode::Writethrough);
        if cached && !bypass {
            if let Some(reservation) = core.reserve(first, count, now) {
                drop(core);
                return self.write_reserved(reservation, buf, fua).await;
            }
        } else if !core.index.any_in(first, first + count) {
            self.begin_around(&mut core, first, first + count);
            drop(core);
            return self.write_around(first, buf, fua).await;
        }
        let mut result = self
            .write_locked(&mut core, first, buf, fua, bypass, now)
            .await;
        if result.is_ok() {
            result = self.autocommit(&mut core).await;
        }
        if result.is_ok() {
            result = self.write_records(&mut core).await;
        }
        self.publish(&core);
        result
    }

    async fn serve_flush(&self) -> Result<(), IoError> {
        let started = self.shared.now();
        let begun = self.shared.commits_started.load(Ordering::SeqCst);
        let mut core = self.shared.core.lock().await;
        if core.closed {
            return Err(shut_down(Op::Flush, 0, 0));
        }
        // A commit that began after this FLUSH did covers every write acknowledged before it
        // (their records were appended, their data written, before the commit took them):
        // concurrent FLUSHes share it.
        let covered = self.shared.commits_done.load(Ordering::SeqCst) > begun;
        let result = match covered {
            true => Ok(()),
            false => self.commit(&mut core).await,
        };
        self.publish(&core);
        if result.is_ok() {
            self.shared
                .stats
                .flush(self.shared.now().saturating_sub(started));
        }
        result
    }
}

impl<B: Backend, C: Backend> Backend for CachedBackend<B, C> {
    fn size(&self) -> u64 {
        self.shared.backing_size
    }

    /// 4 KiB blocks (the cache's unit). A volatile write cache unless both the backing store and
    /// the cache store keep completed writes without a flush: the cache's index is committed on
    /// FLUSH, so the kernel must send one.
    fn capabilities(&self) -> Capabilities {
        let backing = self.backing.capabilities();
        Capabilities {
            volatile_cache: backing.volatile_cache || !self.shared.volatile_store,
            logical_block_size: CACHE_BLOCK as u32,
            stores_data: backing.stores_data,
        }
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let len = buf.len() as u64;
        let (first, _) = self.blocks(Op::Read, offset, len)?;
        self.shared
            .fail_stop((Op::Read, offset, len), self.serve_read(first, offset, buf))
            .await
    }

    async fn write(&self, offset: u64, buf: &[u8], fua: bool) -> Result<(), IoError> {
        let len = buf.len() as u64;
        let blocks = self.blocks(Op::Write, offset, len)?;
        self.shared
            .fail_stop(
                (Op::Write, offset, len),
                self.serve_write(blocks, offset, buf, fua),
            )
            .await
    }

    async fn flush(&self) -> Result<(), IoError> {
        self.shared
            .fail_stop((Op::Flush, 0, 0), self.serve_flush())
            .await
    }

    async fn discard(&self, offset: u64, len: u64) -> Result<(), IoError> {
        self.zero_checked(Op::Discard, offset, len, None).await
    }

    async fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<(), IoError> {
        self.zero_checked(Op::WriteZeroes, offset, len, Some(unmap))
            .await
    }
}
