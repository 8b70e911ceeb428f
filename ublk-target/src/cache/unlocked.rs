//! The parts of the request path that do their data I/O without the cache's lock: cached writes
//! (writeback, writethrough), writes around the cache to blocks it holds no copy of, and read
//! hits. docs/cache.md, "Concurrency", states the rules:
//!
//! - a write takes fresh slots (never one the index names, never one a reader has pinned) and
//!   its sequence numbers under the lock, writes its data, then takes the lock again and
//!   installs each block only if nothing newer (a later write, an invalidation) got there
//!   first; a block it does not install gives its slot straight back, since no record names it;
//! - a read hit pins the slots it reads, so no write may be handed them until it is done: a
//!   slot freed meanwhile still holds the data the reader saw in the index;
//! - a read miss never promotes a block that has a write in flight (that write's data is newer
//!   than what the backing store returned, whatever their sequence numbers say);
//! - a write around the cache counts as in flight too, and when it ends no read miss that
//!   overlapped it promotes; a writethrough write that cached the block meanwhile raced it on
//!   the backing store, so it drops that copy before it completes.

use std::time::Duration;

use super::engine::{CacheCore, CachedBackend, BLOCK_BYTES};
use super::index::{BlockState, Entry};
use super::layout::{Geometry, Record, CACHE_BLOCK};
use super::CacheMode;
use crate::backend::{Backend, IoError};
use crate::request::Op;

/// The writes to one block running outside the lock.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct InFlight {
    writes: u32,
    /// The sequence number of the last invalidation while they ran: data older than it must
    /// not be installed.
    floor: u64,
    /// Two writes that reach the backing store overlapped: the backing store holds whichever
    /// landed last, which their sequence numbers cannot tell, so a writethrough write
    /// invalidates the block instead of caching it.
    contended: bool,
}

/// Slots and sequence numbers a write reserved under the lock.
#[derive(Debug)]
pub(crate) struct Reservation {
    geometry: Geometry,
    first: u64,
    slots: Vec<u32>,
    first_seq: u64,
    state: BlockState,
    writethrough: bool,
}

impl CacheCore {
    /// A free slot nobody is reading: a reader outside the lock may still be reading a slot
    /// that was freed after it looked it up.
    pub(crate) fn free_slot(&mut self) -> Option<u32> {
        let mut skipped = Vec::new();
        let found = loop {
            match self.index.allocate() {
                Some(slot) if self.pinned(slot) => skipped.push(slot),
                other => break other,
            }
        };
        for slot in skipped.into_iter().rev() {
            self.index.unallocate(slot);
        }
        found
    }

    pub(crate) fn pinned(&self, slot: u32) -> bool {
        self.pins.contains_key(&slot)
    }

    fn pin(&mut self, slot: u32) {
        *self.pins.entry(slot).or_default() += 1;
    }

    fn unpin(&mut self, slot: u32) {
        if let Some(n) = self.pins.get_mut(&slot) {
            *n -= 1;
            if *n == 0 {
                self.pins.remove(&slot);
            }
        }
    }

    /// A write to the backing store of `first..end` with the lock held races the writes running
    /// outside it: see [`InFlight::contended`].
    pub(crate) fn contend(&mut self, first: u64, end: u64) {
        for (_, f) in self.inflight.range_mut(first..end) {
            f.contended = true;
        }
    }

    /// `block` was invalidated with sequence number `seq`: writes to it still running must not
    /// install older data.
    pub(crate) fn superseded(&mut self, block: u64, seq: u64) {
        if let Some(f) = self.inflight.get_mut(&block) {
            f.floor = f.floor.max(seq);
        }
    }

    /// Reserves fresh slots and sequence numbers for `count` blocks from `first`, or `None`
    /// if the free slots do not cover them without a commit (the caller takes the locked path).
    pub(crate) fn reserve(&mut self, first: u64, count: u64, now: Duration) -> Option<Reservation> {
        let mut slots = Vec::with_capacity(count as usize);
        for _ in 0..count {
            match self.free_slot() {
                Some(slot) => slots.push(slot),
                None => {
                    for slot in slots.into_iter().rev() {
                        self.index.unallocate(slot);
                    }
                    return None;
                }
            }
        }
        let first_seq = self.next_seq;
        self.next_seq += count;
        let writethrough = self.mode == CacheMode::Writethrough;
        for block in first..first + count {
            let f = self.inflight.entry(block).or_default();
            f.writes += 1;
            f.contended |= f.writes > 1 && writethrough;
        }
        if writethrough {
            // Set again when the write installs: a commit meanwhile may have flushed the
            // backing store before this write reached it.
            self.backing_unflushed = true;
        }
        let state = match writethrough {
            true => BlockState::WrittenBack,
            false => BlockState::Dirty { since: now },
        };
        Some(Reservation {
            geometry: self.geometry,
            first,
            slots,
            first_seq,
            state,
            writethrough,
        })
    }

    /// Ends a reserved write: installs each block that is still newest (when `ok`), gives the
    /// other slots back. Returns the blocks to invalidate (contended writethrough), and whether
    /// the cache was closed meanwhile.
    fn install(
        &mut self,
        r: &Reservation,
        ok: bool,
        pending: &mut Vec<Record>,
    ) -> (Vec<u64>, bool) {
        let closed = self.closed;
        let mut contended = Vec::new();
        for (n, &slot) in r.slots.iter().enumerate() {
            let block = r.first + n as u64;
            let seq = r.first_seq + n as u64;
            let (floor, raced) = self.finish_inflight(block);
            let old = self.index.get(block);
            let newest = seq > floor && old.is_none_or(|e| e.seq < seq);
            if raced && r.writethrough {
                contended.push(block);
            }
            if !(ok && newest && !closed && !(raced && r.writethrough)) {
                // Named by no record and read by nobody: free at once.
                self.index.unallocate(slot);
                continue;
            }
            let state = match (r.state, old.map(|e| e.state)) {
                (BlockState::Dirty { .. }, Some(BlockState::Dirty { since })) => {
                    BlockState::Dirty { since }
                }
                (state, _) => state,
            };
            self.index.insert(block, Entry { slot, seq, state });
            pending.push(Record::Map {
                block,
                slot,
                seq,
                dirty: state != BlockState::Clean,
            });
        }
        if r.writethrough {
            self.backing_unflushed = true;
        }
        (contended, closed)
    }

    /// Registers a write around the cache to blocks `first..end`, none of them cached.
    fn register_around(&mut self, first: u64, end: u64) {
        for block in first..end {
            self.inflight.entry(block).or_default().writes += 1;
        }
        self.backing_unflushed = true;
    }

    /// Ends a write around the cache: returns the blocks a writethrough write cached while it
    /// ran (their copies may be older than what the backing store ends up with).
    fn finish_around(&mut self, first: u64, end: u64) -> Vec<u64> {
        let raced = (first..end)
            .filter(|&block| self.finish_inflight(block).1 && self.index.get(block).is_some())
            .collect();
        // A read miss that overlapped the write may have read the data from before it.
        self.changes += 1;
        // A commit meanwhile may have flushed the backing store before this write reached it.
        self.backing_unflushed = true;
        raced
    }

    /// One write to `block` is done; returns the invalidation floor it must respect and whether
    /// it was contended.
    fn finish_inflight(&mut self, block: u64) -> (u64, bool) {
        let Some(f) = self.inflight.get_mut(&block) else {
            return (0, false);
        };
        let (floor, contended) = (f.floor, f.contended);
        f.writes -= 1;
        if f.writes == 0 {
            self.inflight.remove(&block);
        }
        (floor, contended)
    }
}

/// Runs of consecutive slots: (index of the first block, first slot, length).
fn slot_runs(slots: &[u32]) -> Vec<(usize, u32, usize)> {
    let mut runs: Vec<(usize, u32, usize)> = Vec::new();
    for (i, &slot) in slots.iter().enumerate() {
        match runs.last_mut() {
            Some((_, start, len)) if *start + *len as u32 == slot => *len += 1,
            _ => runs.push((i, slot, 1)),
        }
    }
    runs
}

impl<B: Backend, C: Backend> CachedBackend<B, C> {
    /// The rest of a write whose slots `r` reserved, without the lock: the data (backing store
    /// first in writethrough), then the index and the records, then the journal write.
    pub(crate) async fn write_reserved(
        &self,
        r: Reservation,
        data: &[u8],
        fua: bool,
    ) -> Result<(), IoError> {
        let offset = r.first * CACHE_BLOCK;
        let mut result = Ok(());
        if r.writethrough {
            result = self.backing.write(offset, data, fua).await;
        }
        if result.is_ok() {
            result = self.write_slots(r.geometry, &r.slots, data).await;
        }
        let mut core = self.shared.core.lock().await;
        let mut records = Vec::new();
        let (contended, closed) = core.install(&r, result.is_ok(), &mut records);
        // Everything appended so far, not only this write's records: a newer write or an
        // invalidation that superseded this one must be as durable as this one's completion.
        let target = {
            let mut pending = self.shared.pending();
            records.into_iter().for_each(|rec| {
                pending.append(rec);
            });
            pending.appended()
        };
        for block in contended {
            self.invalidate(&mut core, block, block + 1);
        }
        if result.is_err() && !closed {
            // What the store or backing store holds for these blocks is unknown now: no older
            // cached copy may be served in its place.
            let end = r.first + r.slots.len() as u64;
            self.invalidate(&mut core, r.first, end);
        }
        if closed {
            result = Err(super::engine::shut_down(
                Op::Write,
                offset,
                data.len() as u64,
            ));
        }
        if result.is_ok() && fua {
            result = self.commit(&mut core).await;
        } else if result.is_ok() {
            result = self.autocommit(&mut core).await;
        }
        self.publish(&core);
        drop(core);
        if result.is_ok() && !fua {
            result = self.persist(None, target).await;
        }
        result
    }

    /// Starts a write around the cache (writearound, none, a bypassing sequential stream) to
    /// blocks `first..end`, none of which is cached: writes to them still running outside the
    /// lock must not install their (older) data, and no read miss may promote meanwhile.
    pub(crate) fn begin_around(&self, core: &mut CacheCore, first: u64, end: u64) {
        self.invalidate(core, first, end);
        core.register_around(first, end);
    }

    /// The rest of a write begun by [`Self::begin_around`]: the backing write without the lock.
    pub(crate) async fn write_around(
        &self,
        first: u64,
        data: &[u8],
        fua: bool,
    ) -> Result<(), IoError> {
        let offset = first * CACHE_BLOCK;
        let end = first + (data.len() / BLOCK_BYTES) as u64;
        let mut result = self.backing.write(offset, data, fua).await;
        let mut core = self.shared.core.lock().await;
        let raced = core.finish_around(first, end);
        for &block in &raced {
            self.invalidate(&mut core, block, block + 1);
        }
        if core.closed {
            result = result.and(Err(super::engine::shut_down(
                Op::Write,
                offset,
                data.len() as u64,
            )));
        }
        // Only the dropped copies were recorded: they must be as durable as this write.
        if result.is_ok() && !raced.is_empty() {
            result = match fua {
                true => self.commit(&mut core).await,
                false => self.write_records(&mut core).await,
            };
        }
        self.publish(&core);
        result
    }

    /// One store write per block, as the locked path does: crash tests count store operations.
    async fn write_slots(
        &self,
        geometry: Geometry,
        slots: &[u32],
        data: &[u8],
    ) -> Result<(), IoError> {
        for (&slot, chunk) in slots.iter().zip(data.chunks(BLOCK_BYTES)) {
            self.store
                .write(geometry.slot_offset(slot), chunk, false)
                .await?;
        }
        Ok(())
    }

    /// Reads the cached blocks `entries` (consecutive device blocks) into `out` without the
    /// lock, their slots pinned meanwhile. Takes and returns the guard.
    pub(crate) async fn read_hits<'a>(
        &'a self,
        mut core: smol::lock::MutexGuard<'a, CacheCore>,
        first: u64,
        slots: &[u32],
        out: &mut [u8],
    ) -> (smol::lock::MutexGuard<'a, CacheCore>, Result<(), IoError>) {
        for &slot in slots {
            core.pin(slot);
        }
        let geometry = core.geometry;
        drop(core);
        let mut result = Ok(());
        for (i, slot, len) in slot_runs(slots) {
            let chunk = &mut out[i * BLOCK_BYTES..(i + len) * BLOCK_BYTES];
            result = self.store.read(geometry.slot_offset(slot), chunk).await;
            if result.is_err() {
                break;
            }
        }
        let mut core = self.shared.core.lock().await;
        for (n, &slot) in slots.iter().enumerate() {
            core.unpin(slot);
            core.index.touch(first + n as u64);
        }
        (core, result)
    }
}
