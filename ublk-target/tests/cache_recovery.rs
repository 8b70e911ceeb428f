//! Opening, refusing and recovering caches: corrupt journals and superblocks are refused with a
//! clear error naming both operator choices, and each choice does what it says; torn journal
//! tails are accepted; wrong or blank stores are named as such; clean shutdowns keep the warm
//! cache and crashes drop its clean part.

mod cache_support;

use std::sync::Arc;

use cache_support::{CrashChoice, CrashStore, Power};
use smol::block_on;
use ublk_target::backend::{Backend, RamBackend};
use ublk_target::cache::layout::Superblock;
use ublk_target::cache::{self, CacheConfig, CacheError, CacheMode, CachedBackend};
use ublk_target::qos::ManualClock;

const BLOCK: usize = 4096;
const DEVICE_BYTES: u64 = 1 << 20;

struct Rig {
    backing: RamBackend,
    store: CrashStore,
    clock: Arc<ManualClock>,
    config: CacheConfig,
}

impl Rig {
    fn new(mode: CacheMode) -> Rig {
        Rig::with_store_blocks(mode, 128)
    }

    fn with_store_blocks(mode: CacheMode, blocks: u64) -> Rig {
        let rig = Rig {
            backing: RamBackend::new(DEVICE_BYTES),
            store: CrashStore::new(blocks * BLOCK as u64, Power::new()),
            clock: Arc::new(ManualClock::new()),
            config: CacheConfig {
                mode,
                ..CacheConfig::default()
            },
        };
        block_on(cache::format(&rig.store, DEVICE_BYTES, Some(8))).expect("format");
        rig
    }

    fn open(&self) -> Result<CachedBackend<RamBackend, CrashStore>, CacheError> {
        let shared = block_on(cache::open(
            &self.backing,
            &self.store,
            &self.config,
            self.clock.clone(),
        ))?;
        Ok(CachedBackend::new(
            shared,
            self.backing.clone(),
            self.store.clone(),
        ))
    }

    fn superblock(&self) -> Superblock {
        [0, 1]
            .into_iter()
            .filter_map(|copy| {
                Superblock::decode(&self.store.peek(copy * BLOCK as u64, BLOCK)).ok()
            })
            .max_by_key(|sb| sb.generation)
            .expect("a valid superblock")
    }

    /// Byte offset of block `index` of the live journal.
    fn journal_block(&self, index: u64) -> u64 {
        let sb = self.superblock();
        sb.geometry.journal_offset(sb.active_region, index)
    }
}

fn pattern(block: u64, tag: u8) -> Vec<u8> {
    (0..BLOCK)
        .map(|i| tag ^ (block as u8) ^ (i as u8))
        .collect()
}

fn write_block<B: Backend>(b: &B, block: u64, tag: u8) {
    block_on(b.write(block * BLOCK as u64, &pattern(block, tag), false)).expect("write");
}

fn read_block<B: Backend>(b: &B, block: u64) -> Vec<u8> {
    let mut buf = vec![0; BLOCK];
    block_on(b.read(block * BLOCK as u64, &mut buf)).expect("read");
    buf
}

/// Three commits of dirty blocks: 0-1, then 10-11, then 20-21, each one write (its records in
/// an uncommitted journal block: 0, 2, 4) and a flush (an empty commit block: 1, 3, 5). The
/// checkpoint at open is empty.
fn three_commits(rig: &Rig) {
    let cache = rig.open().expect("open");
    for first in [0, 10, 20] {
        let data = [pattern(first, 1), pattern(first + 1, 1)].concat();
        block_on(cache.write(first * BLOCK as u64, &data, false)).expect("write");
        block_on(cache.flush()).expect("flush");
    }
}

#[test]
fn a_damaged_journal_block_is_refused_with_both_choices() {
    let rig = Rig::new(CacheMode::Writeback);
    three_commits(&rig);
    rig.store.corrupt(rig.journal_block(2) + 100, &[0xff; 8]);
    let err = rig.open().expect_err("refused");
    let message = err.to_string();
    assert!(matches!(err, CacheError::Invalid(_)), "{err:?}");
    for needle in [
        "journal block 2 fails its checksum but block 3 after it is valid",
        "It was not used",
        "cache::flush_valid",
        "cache::discard",
    ] {
        assert!(
            message.contains(needle),
            "{needle:?} missing from: {message}"
        );
    }
    // Refusing changed nothing: it is refused again, the same way.
    assert_eq!(rig.open().expect_err("still refused").to_string(), message);
    // The backing store never saw the dirty data.
    assert_eq!(read_block(&rig.backing, 0), vec![0; BLOCK]);

    // Choice 1: flush what is valid. The first commit (blocks 0-1) is before the damage.
    let report = block_on(cache::flush_valid(&rig.backing, &rig.store)).expect("flush_valid");
    assert_eq!(report.blocks_written_back, 2);
    assert!(report.journal_problem.unwrap().contains("journal block 2"));
    assert_eq!(read_block(&rig.backing, 0), pattern(0, 1));
    assert_eq!(read_block(&rig.backing, 1), pattern(1, 1));
    assert_eq!(
        read_block(&rig.backing, 10),
        vec![0; BLOCK],
        "past the damage: lost"
    );
    // The cache is empty and usable again.
    let cache = rig.open().expect("reformatted cache opens");
    assert_eq!(read_block(&cache, 1), pattern(1, 1));
    assert_eq!(cache.shared().stats().dirty_bytes, 0);
}

#[test]
fn discard_drops_an_invalid_cache_and_its_dirty_data() {
    let rig = Rig::new(CacheMode::Writeback);
    three_commits(&rig);
    rig.store.corrupt(rig.journal_block(0) + 64, &[0x42; 32]);
    assert!(matches!(rig.open(), Err(CacheError::Invalid(_))));
    block_on(cache::discard(&rig.backing, &rig.store)).expect("discard");
    let cache = rig.open().expect("opens empty");
    for block in [0, 1, 10, 11, 20, 21] {
        assert_eq!(read_block(&cache, block), vec![0; BLOCK], "block {block}");
    }
}

#[test]
fn a_torn_last_commit_is_ignored_and_the_rest_kept() {
    let rig = Rig::new(CacheMode::Writeback);
    three_commits(&rig);
    // A torn write of the last commit's block: the header sector made it, a later one did not.
    // The records it seals (block 4, uncommitted) are not replayed on a fresh start.
    rig.store.corrupt(rig.journal_block(5) + 2048, &[0xee; 512]);
    let cache = rig
        .open()
        .expect("a torn tail is what a crash leaves: accepted");
    assert_eq!(read_block(&cache, 0), pattern(0, 1));
    assert_eq!(read_block(&cache, 11), pattern(11, 1));
    assert_eq!(
        read_block(&cache, 20),
        vec![0; BLOCK],
        "the torn commit's data is gone"
    );
    assert_eq!(cache.shared().stats().dirty_bytes, 4 * BLOCK as u64);
}

#[test]
fn one_damaged_superblock_copy_is_survived_two_are_not() {
    let rig = Rig::new(CacheMode::Writeback);
    three_commits(&rig);
    rig.store.corrupt(40, &[1, 2, 3]);
    let cache = rig.open().expect("the other copy serves");
    assert_eq!(read_block(&cache, 10), pattern(10, 1));
    drop(cache);
    // Opening rewrote both copies; damage both now.
    rig.store.corrupt(40, &[1, 2, 3]);
    rig.store.corrupt(BLOCK as u64 + 40, &[1, 2, 3]);
    let err = rig.open().expect_err("refused");
    assert!(
        err.to_string()
            .contains("copy 0: checksum mismatch; copy 1: checksum mismatch"),
        "{err}"
    );
    let err = block_on(cache::flush_valid(&rig.backing, &rig.store)).expect_err("nothing valid");
    assert!(matches!(err, CacheError::NothingToRecover(_)), "{err:?}");
    assert!(
        err.to_string().contains("only discard is possible"),
        "{err}"
    );
}

#[test]
fn blank_and_foreign_stores_are_named() {
    let rig = Rig::new(CacheMode::Writethrough);
    let blank = CrashStore::new(64 * BLOCK as u64, Power::new());
    let clock: Arc<ManualClock> = Arc::new(ManualClock::new());
    let err = block_on(cache::open(
        &rig.backing,
        &blank,
        &rig.config,
        clock.clone(),
    ))
    .expect_err("blank");
    assert!(matches!(err, CacheError::NotFormatted), "{err:?}");
    block_on(cache::open_or_format(
        &rig.backing,
        &blank,
        &rig.config,
        clock.clone(),
        cache::Replay::Committed,
    ))
    .expect("open_or_format formats a blank store");

    let other_backing = RamBackend::new(2 * DEVICE_BYTES);
    let err = block_on(cache::open(
        &other_backing,
        &rig.store,
        &rig.config,
        clock.clone(),
    ))
    .expect_err("wrong backing");
    assert!(
        matches!(err, CacheError::WrongBacking { expected, actual } if expected == DEVICE_BYTES && actual == 2 * DEVICE_BYTES),
        "{err:?}"
    );
    let tiny = RamBackend::new(BLOCK as u64);
    let err = block_on(cache::format(&tiny, DEVICE_BYTES, None)).expect_err("too small");
    assert!(matches!(err, CacheError::TooSmall(_)), "{err:?}");
}

#[test]
fn a_memory_only_cache_is_never_writeback() {
    let backing = RamBackend::new(DEVICE_BYTES);
    let store = RamBackend::new(64 * BLOCK as u64);
    let clock: Arc<ManualClock> = Arc::new(ManualClock::new());
    let volatile = |mode| CacheConfig {
        mode,
        volatile_store: true,
        ..CacheConfig::default()
    };
    let err = block_on(cache::open(
        &backing,
        &store,
        &volatile(CacheMode::Writeback),
        clock.clone(),
    ))
    .expect_err("refused");
    assert!(matches!(err, CacheError::VolatileWriteback), "{err:?}");
    assert!(err.to_string().contains("use writethrough"), "{err}");
    let shared = block_on(cache::open(
        &backing,
        &store,
        &volatile(CacheMode::Writethrough),
        clock,
    ))
    .expect("writethrough is fine");
    let cache = CachedBackend::new(shared, backing.clone(), store);
    assert!(matches!(
        block_on(cache.set_mode(CacheMode::Writeback)),
        Err(CacheError::VolatileWriteback)
    ));
    // Every write is on the backing store when it completes, so no volatile cache to declare.
    assert!(!cache.capabilities().volatile_cache);
    write_block(&cache, 3, 9);
    assert_eq!(read_block(&backing, 3), pattern(3, 9));
}

#[test]
fn a_clean_shutdown_keeps_the_warm_cache_and_a_crash_drops_it() {
    let rig = Rig::new(CacheMode::Writethrough);
    let cache = rig.open().expect("open");
    for block in 0..8 {
        write_block(&cache, block, 5);
    }
    block_on(cache.shutdown()).expect("shutdown");
    let mut buf = vec![0; BLOCK];
    let err = block_on(cache.read(0, &mut buf)).expect_err("closed");
    assert_eq!(err.errno, libc::ESHUTDOWN);

    let warm = rig.open().expect("reopen");
    for block in 0..8 {
        assert_eq!(read_block(&warm, block), pattern(block, 5));
    }
    assert_eq!(warm.shared().stats().read_hits, 8, "clean blocks kept");
    // No shutdown this time: as after a crash, clean blocks cannot be trusted.
    drop(warm);
    let cold = rig.open().expect("reopen after a crash");
    assert_eq!(read_block(&cold, 0), pattern(0, 5));
    let stats = cold.shared().stats();
    assert_eq!((stats.read_hits, stats.read_misses), (0, 1));
}

#[test]
fn blocks_of_a_checkpoint_that_never_took_effect_are_never_replayed() {
    // A checkpoint interrupted before its superblock switch leaves valid-looking blocks in the
    // other region. The next checkpoint into that region must not let them count as journal.
    let power = Power::new();
    let mut rig = Rig::with_store_blocks(CacheMode::Writeback, 400);
    rig.store = CrashStore::new(400 * BLOCK as u64, Arc::clone(&power));
    block_on(cache::format(&rig.store, DEVICE_BYTES, Some(8))).expect("format");
    let cache = rig.open().expect("open");
    // Eight writes and flushes (an uncommitted block and a commit block each) fill the 8-block
    // journal region once (the fifth write checkpoints) and leave block 7 next.
    for block in 240..248 {
        write_block(&cache, block, 1);
        block_on(cache.flush()).expect("flush");
    }
    // One write of 200 more dirty blocks: its records do not fit the region, so it commits
    // with a checkpoint of 208 records (two blocks), which the power cuts at its superblock
    // write (200 data writes, flush, 2 blocks, flush, superblock).
    let data: Vec<u8> = (0..200).flat_map(|block| pattern(block, 2)).collect();
    power.arm(204);
    block_on(cache.write(0, &data, false)).expect_err("power cut");
    drop(cache);
    rig.store.crash(&CrashChoice {
        seed: 1,
        tear: false,
    });
    // The old journal is intact: the eight committed blocks are back, the unflushed 200 are not.
    let cache = rig.open().expect("reopen after the cut");
    assert_eq!(read_block(&cache, 240), pattern(240, 1));
    drop(cache);
    // Reopening writes a one-block checkpoint into the region the cut left stale blocks in.
    let cache = rig
        .open()
        .expect("stale checkpoint blocks must not be replayed");
    assert_eq!(read_block(&cache, 247), pattern(247, 1));
    assert_eq!(
        read_block(&cache, 150),
        vec![0; BLOCK],
        "never flushed, never resurrected"
    );
}
