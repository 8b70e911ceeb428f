//! The cache store's metadata I/O: superblocks, reading and validating the journal on open,
//! appending records (uncommitted before a write completes, committed on a commit), and
//! checkpoints that compact the journal into the other region.
//!
//! Ordering rules (docs/cache.md, "Recovery"):
//! - journal blocks are written one at a time, in order; a commit flushes the store first and
//!   writes its blocks with FUA, so a damaged block followed by a committed one is damage, not a
//!   crash;
//! - uncommitted blocks (no flush, no FUA) survive a process crash, not a power cut: they are
//!   replayed only when recovering a device whose store was not power-cycled;
//! - a checkpoint writes the other region, flushes, then writes both superblock copies one after
//!   the other (FUA each): a crash leaves at least one copy describing a complete journal.

use std::sync::atomic::{AtomicU64, Ordering};

use libublk::helpers::IoBuf;

use super::layout::{
    decode_journal_block, encode_journal_block, Geometry, JournalBlock, JournalPosition, Record,
    Superblock, SuperblockProblem, CACHE_BLOCK, RECORDS_PER_BLOCK,
};
use crate::backend::{Backend, IoError};

/// A page-aligned buffer of one cache block (the store may use O_DIRECT).
pub(crate) fn block_buffer() -> IoBuf<u8> {
    let mut buf = IoBuf::<u8>::new(CACHE_BLOCK as usize);
    buf.zero_buf();
    buf
}

/// Both superblock copies as read, each decoded or rejected.
pub(crate) async fn read_superblocks<C: Backend>(
    store: &C,
) -> Result<[Result<Superblock, SuperblockProblem>; 2], IoError> {
    let mut buf = block_buffer();
    let mut copies = [Err(SuperblockProblem::Blank), Err(SuperblockProblem::Blank)];
    for (copy, slot) in copies.iter_mut().enumerate() {
        store
            .read(Geometry::superblock_offset(copy as u64), buf.as_mut_slice())
            .await?;
        *slot = Superblock::decode(buf.as_slice());
    }
    Ok(copies)
}

/// Why no superblock could be used.
#[derive(Debug)]
pub(crate) enum NoSuperblock {
    /// Neither copy has ever been written.
    Blank,
    /// At least one copy was a superblock once, and none is valid now.
    Invalid(String),
}

/// The valid copy with the highest generation.
pub(crate) fn choose_superblock(
    copies: &[Result<Superblock, SuperblockProblem>; 2],
) -> Result<Superblock, NoSuperblock> {
    let best = copies
        .iter()
        .filter_map(|c| c.as_ref().ok())
        .max_by_key(|sb| sb.generation);
    match best {
        Some(sb) => Ok(*sb),
        None if copies
            .iter()
            .all(|c| matches!(c, Err(SuperblockProblem::Blank))) =>
        {
            Err(NoSuperblock::Blank)
        }
        None => Err(NoSuperblock::Invalid(format!(
            "no valid superblock (copy 0: {}; copy 1: {})",
            copies[0].as_ref().expect_err("none valid"),
            copies[1].as_ref().expect_err("none valid"),
        ))),
    }
}

/// Writes `sb` to both superblock copies, one after the other, each durable before the next.
pub(crate) async fn write_superblocks<C: Backend>(
    store: &C,
    sb: &Superblock,
) -> Result<(), IoError> {
    let mut buf = block_buffer();
    sb.encode(buf.as_mut_slice());
    for copy in 0..2 {
        store
            .write(Geometry::superblock_offset(copy), buf.as_slice(), true)
            .await?;
    }
    Ok(())
}

/// A 64-bit id no earlier format or checkpoint of this store is likely to share.
fn fresh_id() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // splitmix64 finaliser over time, pid and a counter.
    let mut x = nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Formats an empty cache: both superblock copies are erased first, so a crash part-way leaves
/// either the old cache intact or no cache, never a mix.
pub(crate) async fn format_store<C: Backend>(
    store: &C,
    geometry: Geometry,
    backing_size: u64,
) -> Result<Superblock, IoError> {
    let zeroes = block_buffer();
    for copy in 0..2 {
        store
            .write(Geometry::superblock_offset(copy), zeroes.as_slice(), true)
            .await?;
    }
    let sb = Superblock {
        format_id: fresh_id(),
        generation: 1,
        geometry,
        backing_size,
        active_region: 0,
        epoch: fresh_id(),
        next_seq: 1,
        clean_shutdown: true,
    };
    write_superblocks(store, &sb).await?;
    Ok(sb)
}

/// How the live journal ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum JournalEnd {
    /// At a block never written in this epoch (or the region's end).
    Complete,
    /// At a damaged block no commit follows: a write a crash interrupted, never acknowledged
    /// (or, after a power cut, an uncommitted block the cut lost part of).
    TornTail,
    /// At damage that a crash cannot explain.
    Corrupt(String),
}

/// Which journal records to replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replay {
    /// Only those a commit made durable: after a power cut, an uncommitted record may have
    /// survived without the data it names.
    Committed,
    /// Also the uncommitted records after the last commit: for a store that was not
    /// power-cycled since they were written (the server process died, the machine did not), so
    /// every completed write, data before record, is still there.
    All,
}

/// The live journal's records, in order, up to where it ends.
#[derive(Debug)]
pub(crate) struct JournalRead {
    pub(crate) records: Vec<Record>,
    /// Blocks read before the journal ended.
    pub(crate) blocks: u64,
    pub(crate) end: JournalEnd,
}

/// Reads and checks the live journal region described by `sb`, keeping the records `replay`
/// asks for.
pub(crate) async fn read_journal<C: Backend>(
    store: &C,
    sb: &Superblock,
    replay: Replay,
) -> Result<JournalRead, IoError> {
    let geo = sb.geometry;
    let mut buf = block_buffer();
    let mut records = Vec::new();
    // Records up to the end of the last committed block.
    let mut committed = 0;
    let mut index = 0;
    let end = loop {
        if index == geo.journal_blocks {
            break JournalEnd::Complete;
        }
        match read_block(store, sb, index, &mut buf).await? {
            JournalBlock::Valid(found) => {
                records.extend(found);
                committed = records.len();
            }
            JournalBlock::Uncommitted(found) => records.extend(found),
            JournalBlock::Stale => break JournalEnd::Complete,
            JournalBlock::BadRecord(n) => {
                break JournalEnd::Corrupt(format!(
                    "journal block {index} has a valid checksum but an undecodable record {n}"
                ))
            }
            JournalBlock::Damaged => break damaged_end(store, sb, index, replay, &mut buf).await?,
        }
        index += 1;
    };
    if replay == Replay::Committed {
        records.truncate(committed);
    }
    Ok(JournalRead {
        records,
        blocks: index,
        end,
    })
}

async fn read_block<C: Backend>(
    store: &C,
    sb: &Superblock,
    index: u64,
    buf: &mut IoBuf<u8>,
) -> Result<JournalBlock, IoError> {
    let position = JournalPosition {
        format_id: sb.format_id,
        epoch: sb.epoch,
        index,
    };
    let offset = sb.geometry.journal_offset(sb.active_region, index);
    store.read(offset, buf.as_mut_slice()).await?;
    Ok(decode_journal_block(position, buf.as_slice()))
}

/// Whether the damaged block `index` is the torn end of the journal or damage. Journal writes
/// are serialised, so after a process crash only the last one can be torn: any valid block
/// after it means damage. After a power cut, uncommitted blocks may survive in any order, but a
/// commit flushes the store first, so a damaged block followed by a committed one is damage.
async fn damaged_end<C: Backend>(
    store: &C,
    sb: &Superblock,
    index: u64,
    replay: Replay,
    buf: &mut IoBuf<u8>,
) -> Result<JournalEnd, IoError> {
    for later in index + 1..sb.geometry.journal_blocks {
        let contradicts = match read_block(store, sb, later, buf).await? {
            JournalBlock::Valid(_) => true,
            JournalBlock::Uncommitted(_) => replay == Replay::All,
            JournalBlock::Stale | JournalBlock::Damaged | JournalBlock::BadRecord(_) => false,
        };
        if contradicts {
            return Ok(JournalEnd::Corrupt(format!(
                "journal block {index} fails its checksum but block {later} after it is \
                 valid: damage, not a torn write"
            )));
        }
    }
    Ok(JournalEnd::TornTail)
}

/// Records appended since the last journal write, in sequence order. A leaf lock: appended
/// under the cache's lock, taken by whoever writes the journal, never held across an await.
#[derive(Debug, Default)]
pub(crate) struct PendingRecords {
    records: Vec<Record>,
    /// Records ever appended: a write waits until the journal has persisted this many.
    appended: u64,
}

impl PendingRecords {
    /// Appends `record`; returns how many records were ever appended, this one included.
    pub(crate) fn append(&mut self, record: Record) -> u64 {
        self.records.push(record);
        self.appended += 1;
        self.appended
    }

    pub(crate) fn appended(&self) -> u64 {
        self.appended
    }

    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    /// Takes every pending record, for a journal write.
    pub(crate) fn take(&mut self) -> Vec<Record> {
        std::mem::take(&mut self.records)
    }

    /// Puts back records a failed journal write did not persist, ahead of those appended since
    /// (they are older).
    pub(crate) fn put_back(&mut self, mut records: Vec<Record>) {
        records.append(&mut self.records);
        self.records = records;
    }
}

/// Appends records to the live journal. One writer at a time (its own async lock): journal
/// blocks are written one after the other, so after a process crash only the last can be torn.
#[derive(Debug)]
pub(crate) struct JournalWriter {
    sb: Superblock,
    next_index: u64,
    /// Uncommitted blocks were written since the last commit: the next commit must mark them
    /// committed even if no record is pending.
    uncommitted: bool,
    /// Records persisted so far (in a journal block, or superseded by a checkpoint), counted
    /// like [`PendingRecords::append`]'s result.
    persisted: u64,
}

impl JournalWriter {
    /// A writer appending at block `next_index` of the journal `sb` describes.
    pub(crate) fn new(sb: Superblock, next_index: u64) -> Self {
        JournalWriter {
            sb,
            next_index,
            uncommitted: false,
            persisted: 0,
        }
    }

    /// Whether the record numbered `target` (and every one before it) is persisted.
    pub(crate) fn has_persisted(&self, target: u64) -> bool {
        self.persisted >= target
    }

    /// Uncommitted blocks wait for a commit to seal them.
    pub(crate) fn has_uncommitted_blocks(&self) -> bool {
        self.uncommitted
    }

    /// Whether a commit of `records` records would overflow the region (a checkpoint is due).
    /// A commit writes the records, or one empty block that seals the uncommitted ones.
    pub(crate) fn needs_checkpoint(&self, records: usize) -> bool {
        let needed = records
            .div_ceil(RECORDS_PER_BLOCK)
            .max(usize::from(self.uncommitted)) as u64;
        self.next_index + needed > self.sb.geometry.journal_blocks
    }

    /// Whether writing `records` records uncommitted would leave no block for the commit that
    /// seals them.
    pub(crate) fn uncommitted_needs_checkpoint(&self, records: usize) -> bool {
        let needed = records.div_ceil(RECORDS_PER_BLOCK) as u64 + 1;
        self.next_index + needed > self.sb.geometry.journal_blocks
    }

    /// Writes `records`, each block with FUA, or one empty block if there are none (so that the
    /// uncommitted blocks before it count as committed). The caller has flushed the store, so
    /// the data and the uncommitted blocks are durable. Drops from `records` what it wrote.
    pub(crate) async fn commit<C: Backend>(
        &mut self,
        store: &C,
        records: &mut Vec<Record>,
    ) -> Result<(), IoError> {
        if records.is_empty() && self.uncommitted {
            self.write_block(store, records, 0, true).await?;
        }
        while !records.is_empty() {
            let take = records.len().min(RECORDS_PER_BLOCK);
            self.write_block(store, records, take, true).await?;
        }
        self.uncommitted = false;
        Ok(())
    }

    /// Writes `records` without FUA, marked uncommitted: the kernel then holds them, so they
    /// survive the server process (not a power cut). The caller wrote the data they name first.
    /// Drops from `records` what it wrote.
    pub(crate) async fn write_uncommitted<C: Backend>(
        &mut self,
        store: &C,
        records: &mut Vec<Record>,
    ) -> Result<(), IoError> {
        while !records.is_empty() {
            let take = records.len().min(RECORDS_PER_BLOCK);
            self.write_block(store, records, take, false).await?;
            self.uncommitted = true;
        }
        Ok(())
    }

    /// Writes the first `take` of `records` as the next block and drops them.
    async fn write_block<C: Backend>(
        &mut self,
        store: &C,
        records: &mut Vec<Record>,
        take: usize,
        committed: bool,
    ) -> Result<(), IoError> {
        let mut buf = block_buffer();
        let position = JournalPosition {
            format_id: self.sb.format_id,
            epoch: self.sb.epoch,
            index: self.next_index,
        };
        encode_journal_block(position, &records[..take], committed, buf.as_mut_slice());
        let offset = self
            .sb
            .geometry
            .journal_offset(self.sb.active_region, self.next_index);
        store.write(offset, buf.as_slice(), committed).await?;
        self.next_index += 1;
        records.drain(..take);
        self.persisted += take as u64;
        Ok(())
    }

    /// Writes `snapshot` (the whole index) as a new journal in the other region and switches
    /// to it; the `superseded` pending records the caller took are described by the snapshot. The caller has made the data the
    /// snapshot describes durable, and with `clean_shutdown` also flushed the backing store
    /// and stopped serving.
    pub(crate) async fn checkpoint<C: Backend>(
        &mut self,
        store: &C,
        snapshot: &[Record],
        superseded: usize,
        next_seq: u64,
        clean_shutdown: bool,
    ) -> Result<(), IoError> {
        let next = Superblock {
            generation: self.sb.generation + 1,
            active_region: 1 - self.sb.active_region,
            // Random, not the next number: a checkpoint a crash interrupted before its
            // superblock switch left blocks in that region, and the retry after recovery must
            // not find them carrying its own epoch.
            epoch: fresh_id(),
            next_seq,
            clean_shutdown,
            ..self.sb
        };
        let mut buf = block_buffer();
        let mut index = 0u64;
        for chunk in snapshot.chunks(RECORDS_PER_BLOCK) {
            let position = JournalPosition {
                format_id: next.format_id,
                epoch: next.epoch,
                index,
            };
            encode_journal_block(position, chunk, true, buf.as_mut_slice());
            let offset = next.geometry.journal_offset(next.active_region, index);
            store.write(offset, buf.as_slice(), false).await?;
            index += 1;
        }
        store.flush().await?;
        write_superblocks(store, &next).await?;
        self.sb = next;
        self.next_index = index;
        self.persisted += superseded as u64;
        self.uncommitted = false;
        Ok(())
    }
}
