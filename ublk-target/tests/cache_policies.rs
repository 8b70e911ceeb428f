//! The cache's policies seen through the request path, on an injected clock: background
//! writeback between the watermarks at the rate limit, the maximum dirty age, draining on a
//! mode change, the sequential cutoff, scan-resistant eviction, and the stats that show them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use smol::block_on;
use ublk_target::backend::{Backend, Capabilities, IoError, RamBackend};
use ublk_target::cache::{
    self, CacheConfig, CacheMode, CachedBackend, WritebackPolicy, WritebackReason,
};
use ublk_target::qos::ManualClock;

const BLOCK: usize = 4096;
const DEVICE_BYTES: u64 = 4 << 20;
/// 64 blocks with 4-block journal regions: 54 data slots.
const STORE_BYTES: u64 = 64 * BLOCK as u64;
const SLOTS: u64 = 54;

struct Rig {
    backing: RamBackend,
    clock: Arc<ManualClock>,
    cache: CachedBackend<RamBackend, RamBackend>,
}

fn rig(config: CacheConfig) -> Rig {
    let rig = rig_sized(config, STORE_BYTES, 4);
    assert_eq!(
        rig.cache.shared().stats().capacity_bytes,
        SLOTS * BLOCK as u64
    );
    rig
}

/// A rig whose store has `store_bytes` and journal regions of `journal_blocks`.
fn rig_sized(config: CacheConfig, store_bytes: u64, journal_blocks: u64) -> Rig {
    let backing = RamBackend::new(DEVICE_BYTES);
    let store = RamBackend::new(store_bytes);
    block_on(cache::format(&store, DEVICE_BYTES, Some(journal_blocks))).expect("format");
    let clock = Arc::new(ManualClock::new());
    let shared = block_on(cache::open(&backing, &store, &config, clock.clone())).expect("open");
    Rig {
        cache: CachedBackend::new(shared, backing.clone(), store),
        backing,
        clock,
    }
}

fn config(mode: CacheMode) -> CacheConfig {
    CacheConfig {
        mode,
        volatile_store: false,
        sequential_cutoff: 0,
        writeback: WritebackPolicy {
            high_watermark_percent: 50,
            low_watermark_percent: 25,
            max_dirty_age: Duration::from_secs(60),
            rate_bytes_per_sec: 10 * BLOCK as u64,
            batch_blocks: 8,
        },
    }
}

fn data(block: u64) -> Vec<u8> {
    (0..BLOCK)
        .map(|i| (block as u8).wrapping_add(1) ^ (i as u8))
        .collect()
}

fn write(cache: &impl Backend, block: u64) {
    block_on(cache.write(block * BLOCK as u64, &data(block), false)).expect("write");
}

fn read(b: &impl Backend, block: u64) -> Vec<u8> {
    let mut buf = vec![0; BLOCK];
    block_on(b.read(block * BLOCK as u64, &mut buf)).expect("read");
    buf
}

fn on_backing(rig: &Rig, block: u64) -> bool {
    read(&rig.backing, block) == data(block)
}

#[test]
fn writeback_runs_between_the_watermarks_at_the_rate_limit() {
    let rig = rig(config(CacheMode::Writeback));
    for block in 0..40 {
        write(&rig.cache, block);
    }
    assert_eq!(rig.cache.shared().stats().dirty_bytes, 40 * BLOCK as u64);
    assert!(
        (0..40).all(|b| !on_backing(&rig, b)),
        "writeback keeps data in the cache"
    );

    let step = |advance_ms: u64| {
        rig.clock.advance(Duration::from_millis(advance_ms));
        block_on(rig.cache.writeback_step()).expect("step")
    };
    // 10 blocks/s: 100 ms earns one block; a second earns a full batch of 8.
    let first = step(100);
    assert_eq!(
        (first.blocks, first.reason),
        (1, Some(WritebackReason::Watermark))
    );
    assert_eq!(step(0).blocks, 0, "the bucket is empty");
    assert_eq!(step(1000).blocks, 8);
    assert_eq!(step(1000).blocks, 8);
    assert_eq!(step(1000).blocks, 8);
    // 15 dirty, low watermark 25% of 54 = 13: two more, then it rests.
    let last = step(1000);
    assert_eq!((last.blocks, last.dirty_blocks), (2, 13));
    assert_eq!(step(1000).blocks, 0, "below the low watermark");
    // Oldest first: blocks 0..27 are on the backing store, the rest still only cached.
    assert!((0..27).all(|b| on_backing(&rig, b)));
    assert!((27..40).all(|b| !on_backing(&rig, b)));

    // Past the maximum dirty age everything goes, still at the rate limit.
    let aged = step(60_000);
    assert_eq!((aged.blocks, aged.reason), (8, Some(WritebackReason::Age)));
    assert_eq!(step(1000).blocks, 5);
    assert!((0..40).all(|b| on_backing(&rig, b)));
    let stats = rig.cache.shared().stats();
    assert_eq!(stats.dirty_bytes, 0);
    assert_eq!(stats.writeback_bytes, 40 * BLOCK as u64);
    // Every block still reads back through the cache.
    assert!((0..40).all(|b| read(&rig.cache, b) == data(b)));
}

#[test]
fn leaving_writeback_drains_dirty_data_and_says_so() {
    let rig = rig(config(CacheMode::Writeback));
    for block in 100..110 {
        write(&rig.cache, block);
    }
    let change = block_on(rig.cache.set_mode(CacheMode::Writethrough)).expect("mode change");
    assert_eq!(
        (change.from, change.to, change.drained.blocks),
        (CacheMode::Writeback, CacheMode::Writethrough, 10)
    );
    assert!((100..110).all(|b| on_backing(&rig, b)));
    assert_eq!(rig.cache.shared().stats().dirty_bytes, 0);
    assert_eq!(block_on(rig.cache.mode()), CacheMode::Writethrough);
    // Writethrough: on the backing store as soon as the write completes.
    write(&rig.cache, 200);
    assert!(on_backing(&rig, 200));
    let back = block_on(rig.cache.set_mode(CacheMode::Writeback)).expect("back");
    assert_eq!(back.drained.blocks, 0, "entering writeback drains nothing");
}

#[test]
fn a_long_sequential_stream_bypasses_the_cache() {
    let rig = rig(CacheConfig {
        sequential_cutoff: 16 * BLOCK as u64,
        ..config(CacheMode::Writeback)
    });
    for block in 300..332 {
        write(&rig.cache, block);
    }
    // The first 64 KiB are cached (dirty); after the cutoff the stream goes straight through.
    assert!((300..316).all(|b| !on_backing(&rig, b)));
    assert!((316..332).all(|b| on_backing(&rig, b)));
    let stats = rig.cache.shared().stats();
    assert_eq!(stats.bypassed, 16);
    assert_eq!(stats.dirty_bytes, 16 * BLOCK as u64);
    // Random I/O elsewhere is cached as usual.
    write(&rig.cache, 7);
    assert!(!on_backing(&rig, 7));
}

#[test]
fn a_scan_does_not_evict_the_hot_blocks() {
    let rig = rig(config(CacheMode::Writearound));
    let hot: Vec<u64> = (0..10).collect();
    // Seen once, pushed out by 54 others, seen again: now in 2Q's main list.
    for &b in &hot {
        read(&rig.cache, b);
    }
    for b in 100..154 {
        read(&rig.cache, b);
    }
    for &b in &hot {
        read(&rig.cache, b);
    }
    // A one-pass scan of 500 blocks, nine times the cache.
    for b in 200..700 {
        read(&rig.cache, b);
    }
    let before = rig.cache.shared().stats();
    for &b in &hot {
        assert_eq!(read(&rig.cache, b), vec![0; BLOCK]);
    }
    let after = rig.cache.shared().stats();
    assert_eq!(
        after.read_hits - before.read_hits,
        10,
        "every hot block survived"
    );
    assert!(
        after.evictions >= 500,
        "the scan did cycle through the cache"
    );
}

#[test]
fn stats_count_hits_misses_promotions_evictions_and_flushes() {
    let rig = rig(config(CacheMode::Writethrough));
    read(&rig.cache, 0); // miss, promoted
    read(&rig.cache, 0); // hit
    write(&rig.cache, 0); // hit
    write(&rig.cache, 1); // miss
    block_on(rig.cache.flush()).expect("flush");
    rig.clock.advance(Duration::from_millis(5));
    for b in 10..80 {
        read(&rig.cache, b);
    }
    let s = rig.cache.shared().stats();
    assert_eq!((s.read_hits, s.read_misses), (1, 71));
    assert_eq!((s.write_hits, s.write_misses), (1, 1));
    assert_eq!(s.promotions, 71);
    assert_eq!(s.flushes, 1);
    assert!(s.evictions >= 72 - SLOTS, "{s:?}");
    assert_eq!(s.cached_bytes, SLOTS * BLOCK as u64, "the cache is full");
    assert_eq!(s.mode, CacheMode::Writethrough);
    let json = serde_json::to_value(&s).expect("serialises");
    assert_eq!(json["mode"], "writethrough");
    assert_eq!(json["read_hits"], 1);
}

#[test]
fn a_device_that_is_never_flushed_still_commits_its_journal() {
    // Rewriting one uncommitted block never needs a slot. Each write's record goes to the
    // journal uncommitted; when the region is full, a commit (here a checkpoint) makes room,
    // so the journal never overflows without a FLUSH.
    let rig = rig(config(CacheMode::Writeback));
    for _ in 0..1100 {
        write(&rig.cache, 5);
    }
    let stats = rig.cache.shared().stats();
    assert_eq!(stats.flushes, 0);
    assert!(stats.commits >= 1, "{stats:?}");
}

#[test]
fn rewriting_a_cache_full_of_dirty_data_commits_once_per_batch_not_per_block() {
    // The power-cut test's stall: a cache full of committed dirty data, rewritten. Each
    // rewrite needs a fresh slot (copy-on-write) and frees the old one at the next commit, so
    // a commit made for space reclaimed one slot and the next block committed again: two
    // flushes and a FUA write per 4 KiB, behind which the file system's FLUSH waited minutes.
    // 666 slots (700 blocks less the superblocks and two 16-block journal regions): a commit
    // made for space must reclaim 666 / 64 = 10 slots, else the block goes to the backing store.
    let rig = rig_sized(config(CacheMode::Writeback), 700 * BLOCK as u64, 16);
    let slots = rig.cache.shared().stats().capacity_bytes / BLOCK as u64;
    assert_eq!(slots, 666);
    for block in 0..slots {
        write(&rig.cache, block);
    }
    block_on(rig.cache.flush()).expect("flush");
    let before = rig.cache.shared().stats();
    assert_eq!(
        before.dirty_bytes,
        slots * BLOCK as u64,
        "all dirty, all committed"
    );

    let rewritten: Vec<u8> = (0..256).flat_map(|b| data(b + 7)).collect();
    for piece in rewritten.chunks(64 * BLOCK) {
        let offset = (piece.as_ptr() as usize - rewritten.as_ptr() as usize) as u64;
        block_on(rig.cache.write(offset, piece, false)).expect("rewrite");
    }
    block_on(rig.cache.flush()).expect("flush");
    let after = rig.cache.shared().stats();
    let commits = after.commits - before.commits;
    assert!(
        commits <= 256 / 10 + 2,
        "{commits} commits for 256 rewritten blocks"
    );
    // Every rewritten block reads back new, from the cache or the backing store, and the
    // blocks not rewritten are still cached and dirty.
    for block in 0..256 {
        assert_eq!(read(&rig.cache, block), data(block + 7), "block {block}");
    }
    for block in 256..slots {
        assert_eq!(read(&rig.cache, block), data(block));
        assert!(!on_backing(&rig, block));
    }
}

/// A backing store that counts the writes it is sent (in `writes`, shared with the test).
struct CountingBacking {
    ram: RamBackend,
    writes: Arc<AtomicU64>,
}

impl Backend for CountingBacking {
    fn size(&self) -> u64 {
        self.ram.size()
    }

    fn capabilities(&self) -> Capabilities {
        self.ram.capabilities()
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.ram.read(offset, buf).await
    }

    async fn write(&self, offset: u64, buf: &[u8], fua: bool) -> Result<(), IoError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.ram.write(offset, buf, fua).await
    }

    async fn flush(&self) -> Result<(), IoError> {
        self.ram.flush().await
    }

    async fn discard(&self, offset: u64, len: u64) -> Result<(), IoError> {
        self.ram.discard(offset, len).await
    }

    async fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<(), IoError> {
        self.ram.write_zeroes(offset, len, unmap).await
    }
}

#[test]
fn a_write_that_finds_no_slot_goes_to_the_backing_store_in_one_piece() {
    // A cache full of dirty data sends new data to the backing store. Block by block, a 1 MiB
    // request cost 256 backing writes in a row while every other request waited for the lock.
    let ram = RamBackend::new(DEVICE_BYTES);
    let writes = Arc::new(AtomicU64::new(0));
    let backing = CountingBacking {
        ram: ram.clone(),
        writes: Arc::clone(&writes),
    };
    let store = RamBackend::new(STORE_BYTES);
    block_on(cache::format(&store, DEVICE_BYTES, Some(4))).expect("format");
    let clock = Arc::new(ManualClock::new());
    let config = config(CacheMode::Writeback);
    let shared = block_on(cache::open(&backing, &store, &config, clock)).expect("open");
    let cache = CachedBackend::new(shared, backing, store);
    for block in 0..SLOTS {
        write(&cache, block);
    }
    assert_eq!(cache.shared().stats().dirty_bytes, SLOTS * BLOCK as u64);
    let before = writes.load(Ordering::Relaxed);
    let new: Vec<u8> = (100..164).flat_map(data).collect();
    block_on(cache.write(100 * BLOCK as u64, &new, false)).expect("write");
    assert_eq!(writes.load(Ordering::Relaxed) - before, 1);
    for block in 100..164 {
        assert_eq!(read(&ram, block), data(block), "block {block}");
        assert_eq!(read(&cache, block), data(block), "block {block}");
    }
}
