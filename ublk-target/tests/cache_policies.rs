//! The cache's policies seen through the request path, on an injected clock: background
//! writeback between the watermarks at the rate limit, the maximum dirty age, draining on a
//! mode change, the sequential cutoff, scan-resistant eviction, and the stats that show them.

use std::sync::Arc;
use std::time::Duration;

use smol::block_on;
use ublk_target::backend::{Backend, RamBackend};
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
    let backing = RamBackend::new(DEVICE_BYTES);
    let store = RamBackend::new(STORE_BYTES);
    block_on(cache::format(&store, DEVICE_BYTES, Some(4))).expect("format");
    let clock = Arc::new(ManualClock::new());
    let shared = block_on(cache::open(&backing, &store, &config, clock.clone())).expect("open");
    assert_eq!(shared.stats().capacity_bytes, SLOTS * BLOCK as u64);
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
