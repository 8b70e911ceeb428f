//! Requests that overlap in time through one cache: a read miss waits for the backing store
//! without holding the cache, so other requests go on meanwhile, and what it read is promoted
//! only if nothing changed the device in between (else a stale copy would shadow a newer
//! write).

mod cache_support;

use std::sync::Arc;
use std::time::Duration;

use cache_support::gated::{Gated, Kind};
use smol::block_on;
use smol::future::poll_once;
use ublk_target::backend::{Backend, RamBackend};
use ublk_target::cache::{self, CacheConfig, CacheMode, CachedBackend, WritebackPolicy};
use ublk_target::qos::ManualClock;

const BLOCK: usize = 4096;
const DEVICE_BYTES: u64 = 4 << 20;
const STORE_BYTES: u64 = 64 * BLOCK as u64;

struct Rig {
    cache: CachedBackend<Gated<RamBackend>, RamBackend>,
    backing: Gated<RamBackend>,
}

fn rig(mode: CacheMode) -> Rig {
    let inner = RamBackend::new(DEVICE_BYTES);
    let store = RamBackend::new(STORE_BYTES);
    block_on(cache::format(&store, DEVICE_BYTES, Some(4))).expect("format");
    let config = CacheConfig {
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
    };
    let clock = Arc::new(ManualClock::new());
    let shared = block_on(cache::open(&inner, &store, &config, clock)).expect("open");
    let backing = Gated::new(inner);
    Rig {
        cache: CachedBackend::new(shared, backing.clone(), store),
        backing,
    }
}

fn read(cache: &impl Backend, block: u64) -> Vec<u8> {
    let mut buf = vec![0; BLOCK];
    block_on(cache.read(block * BLOCK as u64, &mut buf)).expect("read");
    buf
}

/// Starts a read of `block` that misses and parks once its backing read is done (what it read
/// may be outdated by the time it completes); `during` runs while it waits; then the read
/// completes. Returns what it read.
fn parked_miss(rig: &Rig, block: u64, during: impl FnOnce()) -> Vec<u8> {
    let mut buf = vec![0; BLOCK];
    let gate = rig.backing.trap_after(Kind::Read, 0..DEVICE_BYTES);
    {
        let mut miss = Box::pin(rig.cache.read(block * BLOCK as u64, &mut buf));
        assert!(
            block_on(poll_once(&mut miss)).is_none(),
            "parked in the backing read"
        );
        assert!(gate.parked());
        during();
        gate.open();
        block_on(miss).expect("read");
    }
    buf
}

#[test]
fn a_write_completes_while_a_read_miss_waits_for_the_backing_store() {
    for mode in [CacheMode::Writeback, CacheMode::Writethrough] {
        let rig = rig(mode);
        let new = vec![7u8; BLOCK];
        let old = parked_miss(&rig, 3, || {
            let write = block_on(poll_once(rig.cache.write(3 * BLOCK as u64, &new, false)));
            assert!(
                write.is_some(),
                "{mode:?}: the write waited for the read miss"
            );
            write.unwrap().expect("write");
        });
        // The read overlapped the write: either contents are allowed. Not promoted: the block
        // now reads back as the write left it, from the cache.
        assert!(old == vec![0; BLOCK] || old == new, "{mode:?}");
        assert_eq!(
            read(&rig.cache, 3),
            new,
            "{mode:?}: the stale miss shadowed the write"
        );
        assert_eq!(rig.cache.shared().stats().promotions, 0, "{mode:?}");
    }
}

#[test]
fn a_discard_during_a_read_miss_keeps_the_stale_data_out_of_the_cache() {
    let rig = rig(CacheMode::Writearound);
    block_on(rig.cache.write(0, &[9u8; BLOCK], false)).expect("write");
    parked_miss(&rig, 0, || {
        let discard = block_on(poll_once(rig.cache.discard(0, BLOCK as u64)));
        discard.expect("not held up").expect("discard");
    });
    // The parked read returned the data from before the discard; promoted, it would come back.
    assert_eq!(read(&rig.cache, 0), vec![0; BLOCK]);
    assert_eq!(
        rig.cache.shared().stats().promotions,
        1,
        "the second read, not the first"
    );
}

#[test]
fn a_read_miss_with_nothing_in_between_is_promoted() {
    let rig = rig(CacheMode::Writethrough);
    block_on(rig.cache.write(0, &[6u8; BLOCK], false)).expect("write"); // cached
    let other = parked_miss(&rig, 1, || {
        let mut buf = vec![0; BLOCK];
        let hit = block_on(poll_once(rig.cache.read(0, &mut buf)));
        hit.expect("a hit is served meanwhile").expect("read");
        assert_eq!(buf, vec![6u8; BLOCK]);
    });
    assert_eq!(other, vec![0; BLOCK]);
    let stats = rig.cache.shared().stats();
    assert_eq!(stats.promotions, 1);
    read(&rig.cache, 1);
    assert_eq!(rig.cache.shared().stats().read_hits, stats.read_hits + 1);
}
