//! Requests racing through one cache whose data I/O runs outside its lock, with the
//! interleavings forced: a gated store parks chosen operations until the test releases them.
//! Nothing here depends on timing; each test fails if the request it parks holds the others up,
//! or if the race lets old or reused data through.

mod cache_support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use cache_support::gated::{Gated, Kind};
use cache_support::{CrashChoice, CrashStore, Power};
use smol::block_on;
use smol::future::poll_once;
use ublk_target::backend::{Backend, RamBackend};
use ublk_target::cache::{self, CacheConfig, CacheMode, CachedBackend, WritebackPolicy};
use ublk_target::qos::ManualClock;

const BLOCK: usize = 4096;
const DEVICE_BYTES: u64 = 4 << 20;
const STORE_BLOCKS: u64 = 80;
const JOURNAL_BLOCKS: u64 = 16;
/// Where the data area starts: two superblocks and two journal regions.
const DATA: u64 = (2 + 2 * JOURNAL_BLOCKS) * BLOCK as u64;
const JOURNAL: std::ops::Range<u64> = 2 * BLOCK as u64..DATA;
const SLOTS: std::ops::Range<u64> = DATA..STORE_BLOCKS * BLOCK as u64;

fn config(mode: CacheMode) -> CacheConfig {
    CacheConfig {
        mode,
        volatile_store: false,
        sequential_cutoff: 0,
        writeback: WritebackPolicy {
            high_watermark_percent: 90,
            low_watermark_percent: 80,
            max_dirty_age: Duration::from_secs(3600),
            rate_bytes_per_sec: 1 << 20,
            batch_blocks: 8,
        },
    }
}

type Cache<S> = CachedBackend<RamBackend, Gated<S>>;

fn open<S: Backend + Clone>(backing: &RamBackend, store: &S, mode: CacheMode) -> Cache<S> {
    let clock = Arc::new(ManualClock::new());
    let shared = block_on(cache::open(backing, store, &config(mode), clock)).expect("open");
    CachedBackend::new(shared, backing.clone(), Gated::new(store.clone()))
}

fn rig(mode: CacheMode) -> (RamBackend, RamBackend, Cache<RamBackend>) {
    let backing = RamBackend::new(DEVICE_BYTES);
    let store = RamBackend::new(STORE_BLOCKS * BLOCK as u64);
    block_on(cache::format(&store, DEVICE_BYTES, Some(JOURNAL_BLOCKS))).expect("format");
    let cache = open(&backing, &store, mode);
    (backing, store, cache)
}

fn tagged(tag: u8) -> Vec<u8> {
    vec![tag; BLOCK]
}

fn write(cache: &impl Backend, block: u64, tag: u8) {
    block_on(cache.write(block * BLOCK as u64, &tagged(tag), false)).expect("write");
}

fn read(cache: &impl Backend, block: u64) -> Vec<u8> {
    let mut buf = vec![0; BLOCK];
    block_on(cache.read(block * BLOCK as u64, &mut buf)).expect("read");
    buf
}

#[test]
fn a_read_during_a_writes_data_io_returns_the_old_data_and_is_not_held_up() {
    for mode in [CacheMode::Writeback, CacheMode::Writethrough] {
        let (_, _, cache) = rig(mode);
        write(&cache, 3, 1);
        let gate = cache.store_backend().trap(Kind::Write, SLOTS);
        let new = tagged(2);
        let mut writing = Box::pin(cache.write(3 * BLOCK as u64, &new, false));
        assert!(block_on(poll_once(&mut writing)).is_none());
        assert!(gate.parked(), "{mode:?}: parked in its data write");

        let mut buf = vec![0; BLOCK];
        let hit = block_on(poll_once(cache.read(3 * BLOCK as u64, &mut buf)));
        hit.expect("the read waited for the write").expect("read");
        assert_eq!(buf, tagged(1), "{mode:?}: the acknowledged data, whole");

        gate.open();
        block_on(writing).expect("write");
        assert_eq!(read(&cache, 3), tagged(2), "{mode:?}");
    }
}

#[test]
fn two_writes_to_one_block_completing_out_of_order_leave_the_newer() {
    for mode in [CacheMode::Writeback, CacheMode::Writethrough] {
        let (backing, store, cache) = rig(mode);
        let first_gate = cache.store_backend().trap(Kind::Write, SLOTS);
        let (older, newer) = (tagged(1), tagged(2));
        let mut first = Box::pin(cache.write(5 * BLOCK as u64, &older, false));
        assert!(block_on(poll_once(&mut first)).is_none());
        assert!(first_gate.parked());
        let second_gate = cache.store_backend().trap(Kind::Write, SLOTS);
        let mut second = Box::pin(cache.write(5 * BLOCK as u64, &newer, false));
        assert!(block_on(poll_once(&mut second)).is_none());
        assert!(
            second_gate.parked(),
            "{mode:?}: both writes in their data I/O"
        );

        second_gate.open();
        block_on(second).expect("newer write");
        first_gate.open();
        block_on(first).expect("older write");
        assert_eq!(
            read(&cache, 5),
            newer,
            "{mode:?}: older data replaced newer"
        );

        block_on(cache.flush()).expect("flush");
        drop(cache);
        let reopened = open(&backing, &store, mode);
        assert_eq!(read(&reopened, 5), newer, "{mode:?}: after reopening");
    }
}

#[test]
fn a_flush_during_an_inflight_write_covers_the_acknowledged_ones_without_waiting() {
    let power = Power::new();
    let backing = RamBackend::new(DEVICE_BYTES);
    let store = CrashStore::new(STORE_BLOCKS * BLOCK as u64, Arc::clone(&power));
    block_on(cache::format(&store, DEVICE_BYTES, Some(JOURNAL_BLOCKS))).expect("format");
    let cache = open(&backing, &store, CacheMode::Writeback);
    write(&cache, 1, 1);
    let gate = cache.store_backend().trap(Kind::Write, SLOTS);
    let unacked = tagged(2);
    let mut writing = Box::pin(cache.write(2 * BLOCK as u64, &unacked, false));
    assert!(block_on(poll_once(&mut writing)).is_none());
    assert!(gate.parked());

    let flush = block_on(poll_once(cache.flush()));
    flush
        .expect("the FLUSH waited for a write it need not cover")
        .expect("flush");
    // Power fails with the write still parked: everything the FLUSH covered must be there.
    drop(writing);
    drop(cache);
    store.crash(&CrashChoice {
        seed: 7,
        tear: true,
    });
    let reopened = open(&backing, &store, CacheMode::Writeback);
    assert_eq!(
        read(&reopened, 1),
        tagged(1),
        "acknowledged before the FLUSH"
    );
    assert_eq!(read(&reopened, 2), vec![0; BLOCK], "never acknowledged");
}

#[test]
fn a_slot_a_hit_is_reading_is_not_reused_until_the_read_is_done() {
    let (_, _, cache) = rig(CacheMode::Writethrough);
    write(&cache, 9, 1);
    block_on(cache.flush()).expect("flush");
    // The hit parks before it reads its slot.
    let gate = cache.store_backend().trap(Kind::Read, SLOTS);
    let mut buf = vec![0; BLOCK];
    let mut reading = Box::pin(cache.read(9 * BLOCK as u64, &mut buf));
    assert!(block_on(poll_once(&mut reading)).is_none());
    assert!(gate.parked());

    // Meanwhile the block is overwritten (its slot freed by copy-on-write), the commit makes
    // that slot reusable, and new blocks want slots: the freed one is next in line.
    write(&cache, 9, 2);
    block_on(cache.flush()).expect("flush");
    for block in 20..24 {
        write(&cache, block, 3);
    }
    gate.open();
    block_on(reading).expect("read");
    assert_eq!(buf, tagged(1), "the slot was reused under the reader");
    assert_eq!(read(&cache, 9), tagged(2));
    for block in 20..24 {
        assert_eq!(read(&cache, block), tagged(3));
    }
}

#[test]
fn an_eviction_while_a_hit_reads_the_evicted_slot_does_not_hand_it_out() {
    // 46 slots. Fill them with clean blocks, park a hit on the oldest, then write new blocks
    // until the cache must evict clean ones (the parked one first in 2Q's FIFO).
    let (_, _, cache) = rig(CacheMode::Writethrough);
    let slots = cache.shared().stats().capacity_bytes / BLOCK as u64;
    for block in 0..slots {
        write(&cache, block, 1);
    }
    block_on(cache.flush()).expect("flush");
    let gate = cache.store_backend().trap(Kind::Read, SLOTS);
    let mut buf = vec![0; BLOCK];
    let mut reading = Box::pin(cache.read(0, &mut buf));
    assert!(block_on(poll_once(&mut reading)).is_none());
    assert!(gate.parked());
    for block in 100..100 + slots {
        write(&cache, block, 4);
    }
    assert!(cache.shared().stats().evictions > 0);
    gate.open();
    block_on(reading).expect("read");
    assert_eq!(
        buf,
        tagged(1),
        "an evicted slot was reused under the reader"
    );
    for block in 100..100 + slots {
        assert_eq!(read(&cache, block), tagged(4), "block {block}");
    }
}

#[test]
fn concurrent_writes_share_one_journal_write() {
    let (_, _, cache) = rig(CacheMode::Writeback);
    let gate = cache.store_backend().trap(Kind::Write, JOURNAL);
    let data = tagged(6);
    let mut leader = Box::pin(cache.write(0, &data, false));
    assert!(block_on(poll_once(&mut leader)).is_none());
    assert!(gate.parked(), "the first write is in its journal write");
    let mut followers: Vec<_> = (1..5u64)
        .map(|block| Box::pin(cache.write(block * BLOCK as u64, &data, false)))
        .collect();
    for f in &mut followers {
        assert!(block_on(poll_once(f)).is_none(), "waits for the journal");
    }
    gate.open();
    block_on(leader).expect("leader");
    for f in followers {
        block_on(f).expect("follower");
    }
    let stats = cache.shared().stats();
    assert_eq!(
        (stats.journal_writes, stats.journal_records),
        (2, 5),
        "the four followers' records went in one write"
    );
}

#[test]
fn concurrent_flushes_share_a_commit_that_began_after_them() {
    let (_, _, cache) = rig(CacheMode::Writeback);
    write(&cache, 0, 1);
    let gate = cache.store_backend().trap(Kind::Flush, 0..1);
    let flushes = Arc::clone(&cache.store_backend().flushes);
    let mut first = Box::pin(cache.flush());
    assert!(block_on(poll_once(&mut first)).is_none());
    assert!(gate.parked(), "the first FLUSH is committing");
    // Queued behind it, in this order: a write, a FLUSH, another write, another FLUSH.
    let data = tagged(2);
    let mut write_a = Box::pin(cache.write(BLOCK as u64, &data, false));
    assert!(block_on(poll_once(&mut write_a)).is_none());
    let mut second = Box::pin(cache.flush());
    assert!(block_on(poll_once(&mut second)).is_none());
    let mut write_b = Box::pin(cache.write(2 * BLOCK as u64, &data, false));
    assert!(block_on(poll_once(&mut write_b)).is_none());
    let mut third = Box::pin(cache.flush());
    assert!(block_on(poll_once(&mut third)).is_none());

    gate.open();
    block_on(first).expect("first");
    block_on(write_a).expect("write a");
    let before = flushes.load(Ordering::SeqCst);
    block_on(second).expect("second");
    assert_eq!(
        flushes.load(Ordering::SeqCst) - before,
        1,
        "second commits a"
    );
    block_on(write_b).expect("write b");
    block_on(third).expect("third");
    // The third began before the second's commit did, so that commit covers everything
    // acknowledged before the third began; write b completed after: it need not be covered.
    assert_eq!(flushes.load(Ordering::SeqCst) - before, 1, "third shared");
    // A FLUSH begun after write b completed commits it.
    block_on(cache.flush()).expect("fourth");
    assert_eq!(flushes.load(Ordering::SeqCst) - before, 2);
}

#[test]
fn a_drain_waits_for_a_write_replacing_a_dirty_block_then_writes_the_new_data_back() {
    let (backing, _, cache) = rig(CacheMode::Writeback);
    write(&cache, 7, 1);
    let gate = cache.store_backend().trap(Kind::Write, SLOTS);
    let new = tagged(2);
    let mut writing = Box::pin(cache.write(7 * BLOCK as u64, &new, false));
    assert!(block_on(poll_once(&mut writing)).is_none());
    assert!(gate.parked());

    // The only dirty block is being replaced: the drain must neither write the old data back
    // under the write nor spin (a task that keeps yielding starves the queue thread's ring).
    let mut draining = Box::pin(cache.drain());
    assert!(
        block_on(poll_once(&mut draining)).is_none(),
        "waits for the write"
    );
    assert_eq!(
        read(&backing, 7),
        vec![0; BLOCK],
        "nothing written back yet"
    );
    gate.open();
    block_on(writing).expect("write");
    let report = block_on(draining).expect("drain");
    assert_eq!(report.blocks, 1);
    assert_eq!(read(&backing, 7), new, "the new data went back");
    assert_eq!(cache.shared().stats().dirty_bytes, 0);
}

/// A cache whose backing store can be parked, over a fresh store; `cutoff`: the sequential
/// cutoff in bytes (0: none).
fn rig_gated_backing(
    mode: CacheMode,
    cutoff: u64,
) -> (
    Gated<RamBackend>,
    CachedBackend<Gated<RamBackend>, RamBackend>,
) {
    let backing = Gated::new(RamBackend::new(DEVICE_BYTES));
    let store = RamBackend::new(STORE_BLOCKS * BLOCK as u64);
    block_on(cache::format(&store, DEVICE_BYTES, Some(JOURNAL_BLOCKS))).expect("format");
    let config = CacheConfig {
        sequential_cutoff: cutoff,
        ..config(mode)
    };
    let clock = Arc::new(ManualClock::new());
    let shared = block_on(cache::open(&backing, &store, &config, clock)).expect("open");
    let cache = CachedBackend::new(shared, backing.clone(), store);
    (backing, cache)
}

fn block_range(block: u64) -> std::ops::Range<u64> {
    block * BLOCK as u64..(block + 1) * BLOCK as u64
}

#[test]
fn a_write_around_the_cache_holds_up_no_other_request_and_leaves_no_stale_copy() {
    let (backing, cache) = rig_gated_backing(CacheMode::Writearound, 0);
    write(&cache, 3, 1);
    let gate = backing.trap(Kind::Write, block_range(3));
    let new = tagged(2);
    let mut writing = Box::pin(cache.write(3 * BLOCK as u64, &new, false));
    assert!(block_on(poll_once(&mut writing)).is_none());
    assert!(gate.parked(), "parked in its backing write");

    let other = tagged(5);
    let wrote = block_on(poll_once(cache.write(4 * BLOCK as u64, &other, false)));
    wrote.expect("a write elsewhere waited").expect("write");
    let mut buf = vec![0; BLOCK];
    let miss = block_on(poll_once(cache.read(4 * BLOCK as u64, &mut buf)));
    miss.expect("a read elsewhere waited").expect("read");
    assert_eq!(buf, other);
    // A miss on the block being written reads the old data, and must not cache it.
    let miss = block_on(poll_once(cache.read(3 * BLOCK as u64, &mut buf)));
    miss.expect("a read of the block waited").expect("read");
    assert_eq!(buf, tagged(1));

    gate.open();
    block_on(writing).expect("write");
    assert_eq!(read(&cache, 3), new, "a stale copy was promoted");
    assert_eq!(read(&cache, 4), other);
}

#[test]
fn a_writethrough_copy_cached_while_a_bypassing_write_ran_is_dropped_when_it_ends() {
    // Cutoff one block: a write continuing a sequential stream bypasses the cache.
    let (backing, cache) = rig_gated_backing(CacheMode::Writethrough, BLOCK as u64);
    // Fill every slot with clean blocks (stride 2: no stream), so the next cached write takes
    // the path that holds the cache across its backing write.
    let slots = cache.shared().stats().capacity_bytes / BLOCK as u64;
    for n in 0..slots {
        write(&cache, 100 + 2 * n, 1);
    }
    block_on(cache.flush()).expect("flush");
    // Starts a stream that the write to block 1 continues, so that write bypasses the cache.
    write(&cache, 0, 1);
    let gate = backing.trap(Kind::Write, block_range(1));
    let bypassing = tagged(2);
    let mut around = Box::pin(cache.write(BLOCK as u64, &bypassing, false));
    assert!(block_on(poll_once(&mut around)).is_none());
    assert!(gate.parked(), "the bypassing write is in its backing write");

    // Not a stream's continuation: cached, and it lands on the backing store first.
    let cached = tagged(3);
    let wrote = block_on(poll_once(cache.write(BLOCK as u64, &cached, false)));
    wrote
        .expect("waited for the bypassing write")
        .expect("write");
    gate.open();
    block_on(around).expect("bypassing write");
    // The backing store holds the write that landed last; the cache must agree with it.
    assert_eq!(read(&backing, 1), bypassing);
    assert_eq!(read(&cache, 1), bypassing, "the cache kept an older copy");
}

#[test]
fn a_fua_write_commits_its_invalidation_even_when_another_write_persisted_it_meanwhile() {
    // Writeback with a one-block cutoff: the FUA write continues a stream, so it bypasses the
    // cache and, its block holding a dirty copy, takes the path that holds the cache across
    // the backing write.
    let power = Power::new();
    let backing = Gated::new(RamBackend::new(DEVICE_BYTES));
    let store = CrashStore::new(STORE_BLOCKS * BLOCK as u64, Arc::clone(&power));
    block_on(cache::format(&store, DEVICE_BYTES, Some(JOURNAL_BLOCKS))).expect("format");
    let config = CacheConfig {
        sequential_cutoff: BLOCK as u64,
        ..config(CacheMode::Writeback)
    };
    let open = |store: &CrashStore| {
        let clock = Arc::new(ManualClock::new());
        let shared = block_on(cache::open(&backing, store, &config, clock)).expect("open");
        CachedBackend::new(shared, backing.clone(), Gated::new(store.clone()))
    };
    let cache = open(&store);
    write(&cache, 7, 1);
    block_on(cache.flush()).expect("flush"); // block 7 dirty, committed
    write(&cache, 6, 1); // starts the stream block 7 continues

    // A write parks in its journal write, holding the journal; another queues behind it.
    let journal = cache.store_backend().trap(Kind::Write, JOURNAL);
    let data = tagged(5);
    let mut first = Box::pin(cache.write(20 * BLOCK as u64, &data, false));
    assert!(block_on(poll_once(&mut first)).is_none());
    assert!(journal.parked());
    let mut second = Box::pin(cache.write(30 * BLOCK as u64, &data, false));
    assert!(block_on(poll_once(&mut second)).is_none());

    // The FUA write drops block 7's copy (a record now pending) and parks in its backing write.
    let gate = backing.trap(Kind::Write, block_range(7));
    let new = tagged(2);
    let mut fua = Box::pin(cache.write(7 * BLOCK as u64, &new, true));
    assert!(block_on(poll_once(&mut fua)).is_none());
    assert!(gate.parked());
    // The queued write's journal write takes every pending record, the FUA write's included,
    // and writes them uncommitted.
    journal.open();
    block_on(first).expect("first");
    block_on(second).expect("second");
    gate.open();
    block_on(fua).expect("FUA write");

    drop(cache);
    store.crash(&CrashChoice {
        seed: 3,
        tear: false,
    });
    let reopened = open(&store);
    assert_eq!(
        read(&reopened, 7),
        new,
        "the FUA write was lost to the old dirty copy"
    );
}
