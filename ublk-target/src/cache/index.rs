//! The in-memory cache index: which device blocks are cached in which slot, in which state, and
//! which slots may be reused. Pure; the engine does the I/O and journals every change.
//!
//! Slot reuse is the subtle part. A slot whose block was invalidated or superseded is still
//! named by committed journal records until the record that frees it is committed too; reusing it
//! earlier would let a crash replay an old record against new data. So released slots wait in
//! `pending_free` until [`CacheIndex::commit_done`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use super::layout::Record;
use super::twoq::TwoQ;

/// Where a cached block's data stands relative to the backing store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BlockState {
    /// Newer than the backing store, since `since` (the first unwritten change).
    Dirty {
        /// When the block first became dirty.
        since: Duration,
    },
    /// Written to the backing store, which has not been flushed since.
    WrittenBack,
    /// On the backing store and flushed: may be dropped at any time.
    Clean,
}

/// One cached block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The data slot.
    pub(crate) slot: u32,
    /// Sequence number of the data in the slot.
    pub(crate) seq: u64,
    /// Its state.
    pub(crate) state: BlockState,
}

/// The index of one cache.
#[derive(Debug)]
pub(crate) struct CacheIndex {
    entries: BTreeMap<u64, Entry>,
    /// Dirty blocks, oldest first: (dirty since, block).
    dirty: BTreeSet<(Duration, u64)>,
    written_back: BTreeSet<u64>,
    clean: TwoQ<u64>,
    free: Vec<u32>,
    pending_free: Vec<u32>,
}

impl CacheIndex {
    /// An empty index over `slots` data slots.
    pub(crate) fn new(slots: u32) -> Self {
        CacheIndex {
            entries: BTreeMap::new(),
            dirty: BTreeSet::new(),
            written_back: BTreeSet::new(),
            clean: TwoQ::new(slots as usize),
            // Popped from the end: hand out low slots first.
            free: (0..slots).rev().collect(),
            pending_free: Vec::new(),
        }
    }

    pub(crate) fn get(&self, block: u64) -> Option<Entry> {
        self.entries.get(&block).copied()
    }

    /// Cached blocks.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn dirty_count(&self) -> u64 {
        self.dirty.len() as u64
    }

    /// Blocks whose data may be newer than the flushed backing store (dirty or written back).
    pub(crate) fn unclean_count(&self) -> u64 {
        (self.dirty.len() + self.written_back.len()) as u64
    }

    pub(crate) fn oldest_dirty_since(&self) -> Option<Duration> {
        self.dirty.first().map(|&(since, _)| since)
    }

    /// Up to `limit` dirty blocks, oldest first, dirty since before `before` if given.
    pub(crate) fn oldest_dirty(&self, limit: u64, before: Option<Duration>) -> Vec<u64> {
        self.dirty
            .iter()
            .take_while(|(since, _)| before.is_none_or(|b| *since <= b))
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .map(|&(_, block)| block)
            .collect()
    }

    /// Cached blocks in `first..end`.
    pub(crate) fn blocks_in(&self, first: u64, end: u64) -> Vec<u64> {
        self.entries.range(first..end).map(|(&b, _)| b).collect()
    }

    /// Whether any block in `first..end` is cached.
    pub(crate) fn any_in(&self, first: u64, end: u64) -> bool {
        self.entries.range(first..end).next().is_some()
    }

    fn unlink(&mut self, block: u64, entry: &Entry) {
        match entry.state {
            BlockState::Dirty { since } => {
                self.dirty.remove(&(since, block));
            }
            BlockState::WrittenBack => {
                self.written_back.remove(&block);
            }
            BlockState::Clean => self.clean.remove(block),
        }
    }

    fn link(&mut self, block: u64, entry: &Entry) {
        match entry.state {
            BlockState::Dirty { since } => {
                self.dirty.insert((since, block));
            }
            BlockState::WrittenBack => {
                self.written_back.insert(block);
            }
            BlockState::Clean => self.clean.insert(block),
        }
    }

    /// Caches `entry` for `block`; a slot it replaces waits for the next commit.
    pub(crate) fn insert(&mut self, block: u64, entry: Entry) {
        if let Some(old) = self.entries.insert(block, entry) {
            self.unlink(block, &old);
            if old.slot != entry.slot {
                self.pending_free.push(old.slot);
            }
        }
        self.link(block, &entry);
    }

    /// Drops `block` from the cache; its slot waits for the next commit.
    pub(crate) fn remove(&mut self, block: u64) -> Option<Entry> {
        let old = self.entries.remove(&block)?;
        self.unlink(block, &old);
        self.pending_free.push(old.slot);
        Some(old)
    }

    /// Changes the state of a cached block.
    pub(crate) fn set_state(&mut self, block: u64, state: BlockState) {
        if let Some(mut entry) = self.entries.get(&block).copied() {
            self.unlink(block, &entry);
            entry.state = state;
            self.entries.insert(block, entry);
            self.link(block, &entry);
        }
    }

    /// Records a read hit for the replacement policy.
    pub(crate) fn touch(&mut self, block: u64) {
        if matches!(self.get(block), Some(e) if e.state == BlockState::Clean) {
            self.clean.touch(block);
        }
    }

    /// Blocks written back since the last backing flush; the caller has just flushed.
    pub(crate) fn take_written_back(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.written_back).into_iter().collect()
    }

    /// Whether some blocks wait for a backing flush to become clean.
    pub(crate) fn has_written_back(&self) -> bool {
        !self.written_back.is_empty()
    }

    /// The clean block to evict next (2Q), removed from the index.
    pub(crate) fn evict_one(&mut self) -> Option<(u64, Entry)> {
        let block = self.clean.pop_victim()?;
        let entry = self
            .entries
            .remove(&block)
            .expect("2Q holds only cached blocks");
        self.pending_free.push(entry.slot);
        Some((block, entry))
    }

    /// A free slot, if any is reusable now.
    pub(crate) fn allocate(&mut self) -> Option<u32> {
        self.free.pop()
    }

    /// Returns a slot [`allocate`](Self::allocate) handed out that was never used.
    pub(crate) fn unallocate(&mut self, slot: u32) {
        self.free.push(slot);
    }

    /// Drops every clean block (after a crash they may disagree with the backing store); their
    /// slots are free after the next commit. Returns how many.
    pub(crate) fn drop_clean(&mut self) -> u64 {
        let mut dropped = 0;
        while self.evict_one().is_some() {
            dropped += 1;
        }
        dropped
    }

    /// Slots that become free at the next commit.
    pub(crate) fn pending_free_len(&self) -> u64 {
        self.pending_free.len() as u64
    }

    /// The records freeing the pending slots are committed: they may be reused.
    pub(crate) fn commit_done(&mut self) {
        self.free.append(&mut self.pending_free);
    }

    /// Records describing the whole index, for a checkpoint.
    pub(crate) fn snapshot(&self) -> Vec<Record> {
        self.entries
            .iter()
            .map(|(&block, e)| Record::Map {
                block,
                slot: e.slot,
                seq: e.seq,
                dirty: e.state != BlockState::Clean,
            })
            .collect()
    }
}

/// An index rebuilt from journal records, and the first sequence number not yet used.
#[derive(Debug)]
pub(crate) struct Replayed {
    pub(crate) index: CacheIndex,
    pub(crate) next_seq: u64,
    /// Why replay stopped early (the records from there on were not applied).
    pub(crate) problem: Option<String>,
}

/// Rebuilds an index by applying `records` in order, checking each one. Stops at the first
/// record that contradicts the layout or the records before it, and says why. Dirty blocks are
/// dated `now` (dirty age is not persisted).
pub(crate) fn replay(
    records: &[Record],
    slots: u32,
    backing_blocks: u64,
    first_seq: u64,
    now: Duration,
) -> Replayed {
    let mut index = CacheIndex::new(slots);
    let mut owner: HashMap<u32, u64> = HashMap::new();
    let mut next_seq = first_seq;
    let mut problem = None;
    for (n, record) in records.iter().enumerate() {
        if let Err(why) = apply(&mut index, &mut owner, *record, slots, backing_blocks, now) {
            problem = Some(format!("journal record {n} ({record:?}): {why}"));
            break;
        }
        let seq = match *record {
            Record::Map { seq, .. } | Record::Clean { seq, .. } | Record::Unmap { seq, .. } => seq,
        };
        next_seq = next_seq.max(seq + 1);
    }
    // Replay rebuilt the free list from scratch: every slot not owned is free now.
    index.free = (0..slots)
        .rev()
        .filter(|s| !owner.contains_key(s))
        .collect();
    index.pending_free.clear();
    Replayed {
        index,
        next_seq,
        problem,
    }
}

fn apply(
    index: &mut CacheIndex,
    owner: &mut HashMap<u32, u64>,
    record: Record,
    slots: u32,
    backing_blocks: u64,
    now: Duration,
) -> Result<(), String> {
    let check_block = |block: u64| {
        if block >= backing_blocks {
            return Err(format!(
                "block {block} is beyond the backing store's {backing_blocks} blocks"
            ));
        }
        Ok(())
    };
    match record {
        Record::Map {
            block,
            slot,
            seq,
            dirty,
        } => {
            check_block(block)?;
            if slot >= slots {
                return Err(format!("slot {slot} is beyond the {slots} data slots"));
            }
            if let Some(old) = index.get(block) {
                if old.seq >= seq {
                    return Err(format!(
                        "sequence {seq} is not newer than the {} already mapped",
                        old.seq
                    ));
                }
                owner.remove(&old.slot);
            }
            if let Some(other) = owner.get(&slot) {
                return Err(format!("slot {slot} already holds block {other}"));
            }
            owner.insert(slot, block);
            let state = if dirty {
                BlockState::Dirty { since: now }
            } else {
                BlockState::Clean
            };
            index.insert(block, Entry { slot, seq, state });
        }
        Record::Clean { block, slot, seq } => {
            check_block(block)?;
            // A Clean for data that was superseded since is harmless: the newer mapping stays.
            if matches!(index.get(block), Some(e) if e.slot == slot && e.seq == seq) {
                index.set_state(block, BlockState::Clean);
            }
        }
        Record::Unmap { block, seq } => {
            check_block(block)?;
            if let Some(old) = index.get(block) {
                if old.seq >= seq {
                    return Err(format!(
                        "invalidation {seq} is not newer than the mapped {}",
                        old.seq
                    ));
                }
                owner.remove(&old.slot);
                index.remove(block);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(block: u64, slot: u32, seq: u64, dirty: bool) -> Record {
        Record::Map {
            block,
            slot,
            seq,
            dirty,
        }
    }

    #[test]
    fn replay_applies_records_in_order() {
        let records = [
            map(10, 0, 1, true),
            map(11, 1, 2, true),
            map(10, 2, 3, true),
            Record::Clean {
                block: 11,
                slot: 1,
                seq: 2,
            },
            Record::Unmap { block: 10, seq: 4 },
            map(12, 0, 5, false),
        ];
        let r = replay(&records, 4, 100, 1, Duration::ZERO);
        assert_eq!(r.problem, None);
        assert_eq!(r.next_seq, 6);
        assert_eq!(r.index.get(10), None);
        assert_eq!(r.index.get(11).unwrap().state, BlockState::Clean);
        assert_eq!(r.index.get(12).unwrap().slot, 0);
        assert_eq!(r.index.dirty_count(), 0);
        let mut index = r.index;
        let mut free: Vec<u32> = std::iter::from_fn(|| index.allocate()).collect();
        free.sort();
        assert_eq!(free, vec![2, 3]);
    }

    #[test]
    fn replay_refuses_contradictions_and_keeps_the_valid_prefix() {
        let cases: [(Record, &str); 5] = [
            (map(1, 9, 5, true), "slot 9 is beyond"),
            (map(1000, 1, 5, true), "beyond the backing store"),
            (map(1, 1, 1, true), "not newer"),
            (map(2, 0, 6, true), "slot 0 already holds block 1"),
            (Record::Unmap { block: 1, seq: 1 }, "not newer"),
        ];
        for (bad, why) in cases {
            let r = replay(&[map(1, 0, 2, true), bad], 4, 100, 1, Duration::ZERO);
            let problem = r.problem.expect("refused");
            assert!(
                problem.contains("journal record 1") && problem.contains(why),
                "{problem}"
            );
            assert_eq!(r.index.get(1).unwrap().slot, 0, "the prefix is applied");
        }
    }

    #[test]
    fn slots_freed_by_uncommitted_records_are_not_reused() {
        let mut index = CacheIndex::new(2);
        let a = index.allocate().unwrap();
        index.insert(
            7,
            Entry {
                slot: a,
                seq: 1,
                state: BlockState::Clean,
            },
        );
        let b = index.allocate().unwrap();
        index.insert(
            7,
            Entry {
                slot: b,
                seq: 2,
                state: BlockState::Dirty {
                    since: Duration::ZERO,
                },
            },
        );
        assert_eq!(index.allocate(), None, "slot {a} waits for the commit");
        index.commit_done();
        assert_eq!(index.allocate(), Some(a));
    }

    #[test]
    fn only_clean_blocks_are_evicted() {
        let mut index = CacheIndex::new(4);
        for (block, state) in [
            (
                1,
                BlockState::Dirty {
                    since: Duration::ZERO,
                },
            ),
            (2, BlockState::WrittenBack),
            (3, BlockState::Clean),
        ] {
            let slot = index.allocate().unwrap();
            index.insert(
                block,
                Entry {
                    slot,
                    seq: block,
                    state,
                },
            );
        }
        assert_eq!(index.evict_one().map(|(b, _)| b), Some(3));
        assert_eq!(index.evict_one(), None);
        assert_eq!(index.unclean_count(), 2);
        assert_eq!(index.take_written_back(), vec![2]);
    }
}
