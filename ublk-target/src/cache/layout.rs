//! The on-disk layout of a cache store: where things are, and how superblocks, journal blocks and
//! index records are encoded and checked. Pure: no I/O.
//!
//! ```text
//! block 0, 1        superblock copies (identical in steady state; written one after the other)
//! region 0          journal_blocks blocks of journal
//! region 1          journal_blocks blocks of journal (the other half of the double buffer)
//! data area         data_blocks cache blocks ("slots"), each holding one 4 KiB device block
//! ```
//!
//! Every integer is little-endian. docs/cache.md describes the format for operators.

use super::crc::crc32c;

/// The cache's unit: one index entry caches this many bytes of the device.
pub const CACHE_BLOCK: u64 = 4096;
const BLOCK_BYTES: usize = CACHE_BLOCK as usize;
const SUPERBLOCK_COPIES: u64 = 2;
const SUPERBLOCK_MAGIC: &[u8; 8] = b"MBLKCSB\x01";
const JOURNAL_MAGIC: &[u8; 8] = b"MBLKCJB\x01";
/// The layout version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes of superblock covered by its checksum (the rest of the block is zero).
const SUPERBLOCK_BYTES: usize = 128;
const JOURNAL_HEADER_BYTES: usize = 64;
/// Journal block flag (header offset 40): written without a flush, not part of a commit.
const JOURNAL_UNCOMMITTED: u32 = 1;
const RECORD_BYTES: usize = 32;
/// Index records one journal block holds.
pub const RECORDS_PER_BLOCK: usize = (BLOCK_BYTES - JOURNAL_HEADER_BYTES) / RECORD_BYTES;
/// Journal blocks per region beyond two full checkpoints, by default: commits between
/// compactions (fewer on small stores, so they still have room for data).
const MAX_JOURNAL_HEADROOM: u64 = 64;

/// How a cache store is divided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Cache blocks in the data area.
    pub data_blocks: u64,
    /// Blocks in each of the two journal regions.
    pub journal_blocks: u64,
}

impl Geometry {
    /// Journal blocks a checkpoint of a full cache needs.
    pub fn checkpoint_blocks(data_blocks: u64) -> u64 {
        data_blocks.div_ceil(RECORDS_PER_BLOCK as u64).max(1)
    }

    /// The largest cache that fits in `store_bytes`. `journal_blocks` overrides the region size
    /// (at least a checkpoint plus two blocks); by default a region holds two checkpoints plus
    /// up to 64 blocks of commits (a sixteenth of the store at most). `None` if the store is
    /// too small for even one data block.
    pub fn plan(store_bytes: u64, journal_blocks: Option<u64>) -> Option<Geometry> {
        let available = (store_bytes / CACHE_BLOCK).checked_sub(SUPERBLOCK_COPIES)?;
        let headroom = (available / 16).clamp(2, MAX_JOURNAL_HEADROOM);
        let journal_for = |data: u64| {
            let minimum = Self::checkpoint_blocks(data) + 2;
            journal_blocks
                .unwrap_or(2 * Self::checkpoint_blocks(data) + headroom)
                .max(minimum)
        };
        let fits = |data: u64| data + 2 * journal_for(data) <= available;
        if !fits(1) {
            return None;
        }
        // `fits` is monotonic in `data`: binary search the largest data area that fits.
        let (mut low, mut high) = (1u64, available);
        while low < high {
            let mid = low + (high - low).div_ceil(2);
            if fits(mid) {
                low = mid;
            } else {
                high = mid - 1;
            }
        }
        Some(Geometry {
            data_blocks: low,
            journal_blocks: journal_for(low),
        })
    }

    /// Byte offset of superblock copy `copy` (0 or 1).
    pub fn superblock_offset(copy: u64) -> u64 {
        copy * CACHE_BLOCK
    }

    /// Byte offset of block `index` of journal region `region` (0 or 1).
    pub fn journal_offset(&self, region: u8, index: u64) -> u64 {
        (SUPERBLOCK_COPIES + u64::from(region) * self.journal_blocks + index) * CACHE_BLOCK
    }

    /// Byte offset of data slot `slot`.
    pub fn slot_offset(&self, slot: u32) -> u64 {
        (SUPERBLOCK_COPIES + 2 * self.journal_blocks + u64::from(slot)) * CACHE_BLOCK
    }

    /// Bytes of store the layout occupies.
    pub fn store_bytes(&self) -> u64 {
        (SUPERBLOCK_COPIES + 2 * self.journal_blocks + self.data_blocks) * CACHE_BLOCK
    }
}

/// The root of a cache store: its identity, geometry, and which journal region is live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// Random per format; every journal block carries it, so blocks of an earlier format never
    /// replay.
    pub format_id: u64,
    /// Grows by one per checkpoint; the valid copy with the highest generation wins.
    pub generation: u64,
    /// How the store is divided.
    pub geometry: Geometry,
    /// Size of the backing store this cache belongs to.
    pub backing_size: u64,
    /// The journal region holding the live journal (0 or 1).
    pub active_region: u8,
    /// Random per checkpoint; the live region's blocks carry it, so blocks of an earlier or
    /// interrupted checkpoint of the same region never replay.
    pub epoch: u64,
    /// The first sequence number not yet used when the checkpoint was written.
    pub next_seq: u64,
    /// Written by an orderly shutdown: every clean block matches the flushed backing store.
    /// After a crash it is false, and clean blocks are dropped at open (a backing write that
    /// superseded one may have survived the crash without its invalidation).
    pub clean_shutdown: bool,
}

/// Why a superblock copy was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SuperblockProblem {
    /// No magic: this block was never a superblock.
    Blank,
    /// The magic is there but the checksum does not match.
    BadChecksum,
    /// Written by a layout version this code does not read.
    UnknownVersion(u32),
    /// Checksummed but self-contradictory (for example a zero-sized data area).
    Inconsistent(&'static str),
}

impl std::fmt::Display for SuperblockProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SuperblockProblem::Blank => f.write_str("no superblock magic"),
            SuperblockProblem::BadChecksum => f.write_str("checksum mismatch"),
            SuperblockProblem::UnknownVersion(v) => write!(f, "unknown layout version {v}"),
            SuperblockProblem::Inconsistent(what) => write!(f, "inconsistent: {what}"),
        }
    }
}

fn put_u64(buf: &mut [u8], at: usize, value: u64) {
    buf[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

fn put_u32(buf: &mut [u8], at: usize, value: u32) {
    buf[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn get_u64(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
}

fn get_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}

impl Superblock {
    /// Encodes into one cache block.
    pub fn encode(&self, out: &mut [u8]) {
        let out = &mut out[..BLOCK_BYTES];
        out.fill(0);
        out[..8].copy_from_slice(SUPERBLOCK_MAGIC);
        put_u32(out, 8, FORMAT_VERSION);
        put_u32(out, 12, CACHE_BLOCK as u32);
        put_u64(out, 16, self.format_id);
        put_u64(out, 24, self.generation);
        put_u64(out, 32, self.geometry.data_blocks);
        put_u64(out, 40, self.geometry.journal_blocks);
        put_u64(out, 48, self.backing_size);
        out[56] = self.active_region;
        out[57] = u8::from(self.clean_shutdown);
        put_u64(out, 64, self.epoch);
        put_u64(out, 72, self.next_seq);
        let crc = crc32c(&out[..SUPERBLOCK_BYTES - 4]);
        put_u32(out, SUPERBLOCK_BYTES - 4, crc);
    }

    /// Decodes and checks one superblock copy.
    pub fn decode(block: &[u8]) -> Result<Superblock, SuperblockProblem> {
        if block.len() < BLOCK_BYTES || &block[..8] != SUPERBLOCK_MAGIC {
            return Err(SuperblockProblem::Blank);
        }
        if crc32c(&block[..SUPERBLOCK_BYTES - 4]) != get_u32(block, SUPERBLOCK_BYTES - 4) {
            return Err(SuperblockProblem::BadChecksum);
        }
        let version = get_u32(block, 8);
        if version != FORMAT_VERSION {
            return Err(SuperblockProblem::UnknownVersion(version));
        }
        if u64::from(get_u32(block, 12)) != CACHE_BLOCK {
            return Err(SuperblockProblem::Inconsistent("block size is not 4096"));
        }
        let sb = Superblock {
            format_id: get_u64(block, 16),
            generation: get_u64(block, 24),
            geometry: Geometry {
                data_blocks: get_u64(block, 32),
                journal_blocks: get_u64(block, 40),
            },
            backing_size: get_u64(block, 48),
            active_region: block[56],
            epoch: get_u64(block, 64),
            next_seq: get_u64(block, 72),
            clean_shutdown: block[57] == 1,
        };
        if block[57] > 1 {
            return Err(SuperblockProblem::Inconsistent(
                "shutdown flag is not 0 or 1",
            ));
        }
        let geo = sb.geometry;
        if geo.data_blocks == 0 || geo.data_blocks > u64::from(u32::MAX) {
            return Err(SuperblockProblem::Inconsistent(
                "data area size out of range",
            ));
        }
        if geo.journal_blocks < Geometry::checkpoint_blocks(geo.data_blocks) + 2 {
            return Err(SuperblockProblem::Inconsistent(
                "journal regions too small for a checkpoint",
            ));
        }
        if sb.active_region > 1 {
            return Err(SuperblockProblem::Inconsistent(
                "active region is not 0 or 1",
            ));
        }
        if sb.backing_size == 0 || sb.backing_size % CACHE_BLOCK != 0 {
            return Err(SuperblockProblem::Inconsistent(
                "backing size is not a positive multiple of 4096",
            ));
        }
        Ok(sb)
    }
}

/// One change to the cache index. Records are applied in journal order on replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    /// Device block `block`'s newest data (write `seq`) is in `slot`. `dirty`: it may not be
    /// on the backing store yet.
    Map {
        /// Device block number (byte offset / 4096).
        block: u64,
        /// Data slot.
        slot: u32,
        /// Sequence number of the data.
        seq: u64,
        /// Whether the data may be newer than the backing store.
        dirty: bool,
    },
    /// The data of write `seq` of `block` (in `slot`) is on the backing store, which has been
    /// flushed since.
    Clean {
        /// Device block number.
        block: u64,
        /// Data slot.
        slot: u32,
        /// Sequence number of the data now on the backing store.
        seq: u64,
    },
    /// Block `block` is no longer cached (invalidated, evicted, or superseded on the backing
    /// store); its slot is free once this record is committed.
    Unmap {
        /// Device block number.
        block: u64,
        /// Sequence number of the invalidation.
        seq: u64,
    },
}

const KIND_MAP: u8 = 1;
const KIND_CLEAN: u8 = 2;
const KIND_UNMAP: u8 = 3;
const FLAG_DIRTY: u8 = 1;

impl Record {
    fn encode(&self, out: &mut [u8]) {
        out[..RECORD_BYTES].fill(0);
        let (kind, flags, block, slot, seq) = match *self {
            Record::Map {
                block,
                slot,
                seq,
                dirty,
            } => (
                KIND_MAP,
                if dirty { FLAG_DIRTY } else { 0 },
                block,
                slot,
                seq,
            ),
            Record::Clean { block, slot, seq } => (KIND_CLEAN, 0, block, slot, seq),
            Record::Unmap { block, seq } => (KIND_UNMAP, 0, block, 0, seq),
        };
        out[0] = kind;
        out[1] = flags;
        put_u32(out, 4, slot);
        put_u64(out, 8, block);
        put_u64(out, 16, seq);
    }

    fn decode(raw: &[u8]) -> Option<Record> {
        let (block, slot, seq) = (get_u64(raw, 8), get_u32(raw, 4), get_u64(raw, 16));
        match (raw[0], raw[1]) {
            (KIND_MAP, flags) if flags & !FLAG_DIRTY == 0 => Some(Record::Map {
                block,
                slot,
                seq,
                dirty: flags & FLAG_DIRTY != 0,
            }),
            (KIND_CLEAN, 0) => Some(Record::Clean { block, slot, seq }),
            (KIND_UNMAP, 0) if slot == 0 => Some(Record::Unmap { block, seq }),
            _ => None,
        }
    }
}

/// Which journal block a block is supposed to be: a block that does not carry this identity is
/// not part of the live journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalPosition {
    /// The format it belongs to.
    pub format_id: u64,
    /// The epoch of the live region.
    pub epoch: u64,
    /// Its index within the region.
    pub index: u64,
}

/// What a journal block turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JournalBlock {
    /// A complete block of this journal with these records, written by a commit (after a
    /// flush of the store: everything before it is durable).
    Valid(Vec<Record>),
    /// A complete block written without a flush before the write it records completed: the
    /// kernel holds it, but a power cut may lose it (or blocks before it).
    Uncommitted(Vec<Record>),
    /// Not written in this epoch: the journal ends before it.
    Stale,
    /// Written in this epoch at this position, but its checksum fails: torn or damaged.
    Damaged,
    /// Checksummed, but holding a record this code cannot decode.
    BadRecord(usize),
}

/// Encodes a journal block at `pos` holding `records` (at most [`RECORDS_PER_BLOCK`]);
/// `committed: false` marks it as written without a flush (see [`JournalBlock::Uncommitted`]).
pub fn encode_journal_block(
    pos: JournalPosition,
    records: &[Record],
    committed: bool,
    out: &mut [u8],
) {
    assert!(records.len() <= RECORDS_PER_BLOCK, "journal block overflow");
    let out = &mut out[..BLOCK_BYTES];
    out.fill(0);
    out[..8].copy_from_slice(JOURNAL_MAGIC);
    put_u64(out, 8, pos.format_id);
    put_u64(out, 16, pos.epoch);
    put_u64(out, 24, pos.index);
    put_u32(out, 32, records.len() as u32);
    put_u32(out, 40, if committed { 0 } else { JOURNAL_UNCOMMITTED });
    for (i, record) in records.iter().enumerate() {
        let at = JOURNAL_HEADER_BYTES + i * RECORD_BYTES;
        record.encode(&mut out[at..at + RECORD_BYTES]);
    }
    let crc = crc32c(out);
    put_u32(out, 36, crc);
}

/// Decodes the block read from `pos`.
pub fn decode_journal_block(pos: JournalPosition, block: &[u8]) -> JournalBlock {
    let same_identity = block.len() >= BLOCK_BYTES
        && &block[..8] == JOURNAL_MAGIC
        && get_u64(block, 8) == pos.format_id
        && get_u64(block, 16) == pos.epoch
        && get_u64(block, 24) == pos.index;
    if !same_identity {
        return JournalBlock::Stale;
    }
    let mut copy = block[..BLOCK_BYTES].to_vec();
    let stored = get_u32(&copy, 36);
    put_u32(&mut copy, 36, 0);
    let count = get_u32(&copy, 32) as usize;
    if crc32c(&copy) != stored || count > RECORDS_PER_BLOCK {
        return JournalBlock::Damaged;
    }
    let mut records = Vec::with_capacity(count);
    for i in 0..count {
        let at = JOURNAL_HEADER_BYTES + i * RECORD_BYTES;
        match Record::decode(&copy[at..at + RECORD_BYTES]) {
            Some(record) => records.push(record),
            None => return JournalBlock::BadRecord(i),
        }
    }
    if get_u32(&copy, 40) & JOURNAL_UNCOMMITTED != 0 {
        JournalBlock::Uncommitted(records)
    } else {
        JournalBlock::Valid(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_fit_their_store_and_leave_room_for_a_checkpoint() {
        assert_eq!(Geometry::plan(10 * CACHE_BLOCK, None), None);
        for store in [
            11 * CACHE_BLOCK,
            64 * CACHE_BLOCK,
            1 << 20,
            64 << 20,
            10 << 30,
        ] {
            let geo = Geometry::plan(store, None).expect("fits");
            assert!(geo.store_bytes() <= store);
            assert!(geo.journal_blocks >= 2 * Geometry::checkpoint_blocks(geo.data_blocks));
            // Not wasteful: growing the data area by one block can grow each journal region by
            // two (one more checkpoint block, counted twice), so at most 5 blocks stay unused.
            assert!(
                store - geo.store_bytes() < 6 * CACHE_BLOCK,
                "{store}: {geo:?}"
            );
        }
        assert_eq!(Geometry::plan(CACHE_BLOCK, None), None);
        let small = Geometry::plan(1 << 20, Some(3)).unwrap();
        assert_eq!(small.journal_blocks, 4, "raised to checkpoint + 2");
    }

    #[test]
    fn superblock_round_trips_and_detects_damage() {
        let sb = Superblock {
            format_id: 0xdead_beef,
            generation: 7,
            geometry: Geometry {
                data_blocks: 100,
                journal_blocks: 8,
            },
            backing_size: 1 << 30,
            active_region: 1,
            epoch: 3,
            next_seq: 99,
            clean_shutdown: true,
        };
        let mut block = vec![0u8; BLOCK_BYTES];
        sb.encode(&mut block);
        assert_eq!(Superblock::decode(&block), Ok(sb));
        block[30] ^= 4;
        assert_eq!(
            Superblock::decode(&block),
            Err(SuperblockProblem::BadChecksum)
        );
        assert_eq!(
            Superblock::decode(&[0u8; BLOCK_BYTES]),
            Err(SuperblockProblem::Blank)
        );
    }

    #[test]
    fn journal_blocks_round_trip_and_know_their_place() {
        let pos = JournalPosition {
            format_id: 5,
            epoch: 2,
            index: 9,
        };
        let records = vec![
            Record::Map {
                block: 1,
                slot: 2,
                seq: 3,
                dirty: true,
            },
            Record::Clean {
                block: 1,
                slot: 2,
                seq: 3,
            },
            Record::Unmap { block: 1, seq: 4 },
        ];
        let mut block = vec![0u8; BLOCK_BYTES];
        encode_journal_block(pos, &records, false, &mut block);
        assert_eq!(
            decode_journal_block(pos, &block),
            JournalBlock::Uncommitted(records.to_vec())
        );
        encode_journal_block(pos, &records, true, &mut block);
        assert_eq!(
            decode_journal_block(pos, &block),
            JournalBlock::Valid(records.to_vec())
        );
        let elsewhere = JournalPosition { index: 10, ..pos };
        assert_eq!(decode_journal_block(elsewhere, &block), JournalBlock::Stale);
        let older = JournalPosition { epoch: 1, ..pos };
        assert_eq!(decode_journal_block(older, &block), JournalBlock::Stale);
        // A torn write: the header sector is new, a later sector is not.
        block[2048..2560].fill(0xee);
        assert_eq!(decode_journal_block(pos, &block), JournalBlock::Damaged);
    }

    #[test]
    fn a_checksummed_unknown_record_is_reported() {
        let pos = JournalPosition {
            format_id: 1,
            epoch: 1,
            index: 0,
        };
        let mut block = vec![0u8; BLOCK_BYTES];
        encode_journal_block(pos, &[Record::Unmap { block: 0, seq: 1 }], true, &mut block);
        block[JOURNAL_HEADER_BYTES] = 9;
        put_u32(&mut block, 36, 0);
        let crc = crc32c(&block);
        put_u32(&mut block, 36, crc);
        assert_eq!(
            decode_journal_block(pos, &block),
            JournalBlock::BadRecord(0)
        );
    }
}
