//! Random interleavings of concurrent requests through one cache, checked against a reference
//! model. Every store and backing operation yields a random number of times, and a seeded
//! scheduler polls up to four requests in a random order, so writes, hits, misses, FLUSHes,
//! write-zeroes and writeback steps overlap in many ways, in every cache mode, with writes that
//! continue a sequential stream bypassing the cache. No timing: the interleaving is a function
//! of the seed.
//!
//! The model: a read of a block may return the data of any write that overlapped the read, or
//! of a *latest* write among those acknowledged before the read began (one that no other
//! acknowledged write started after); the initial zeroes only if none was. Whole blocks only:
//! a mix within a block, or data no write put there, fails. After everything completed, a
//! FLUSH and a reopen of the cache, each block must read back as the latest write left it, as
//! it read just before. And when the server is killed part-way (the stores keep every write
//! they completed) and the cache recovered, each block holds a latest write acknowledged before
//! the kill, or one that had not completed: group commit must not acknowledge a write before
//! its records, and those of the writes that superseded it, are on the store.

mod cache_support;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use cache_support::{CrashChoice, CrashStore, Power};
use proptest::prelude::*;
use smol::block_on;
use smol::future::poll_once;
use ublk_target::backend::{Backend, Capabilities, IoError, RamBackend};
use ublk_target::cache::{self, CacheConfig, CacheMode, CachedBackend, Replay, WritebackPolicy};
use ublk_target::qos::ManualClock;

const BLOCK: usize = 4096;
const BLOCKS: u64 = 24;
const DEVICE_BYTES: u64 = 1 << 20;
/// Two superblocks, two 6-block journal regions, 16 slots: fewer than the blocks used, so
/// writes reclaim, evict and fall back to the backing store.
const STORE_BLOCKS: u64 = 2 + 2 * 6 + 16;
const ACTIVE: usize = 4;

/// A seeded generator shared by the stores and the scheduler.
#[derive(Clone)]
struct Dice(Arc<Mutex<u64>>);

impl Dice {
    fn roll(&self, below: u64) -> u64 {
        let mut s = self.0.lock().unwrap();
        *s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut x = *s;
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (x ^ (x >> 31)) % below
    }
}

/// A store whose every operation first yields 0 to 3 times.
#[derive(Clone)]
struct Yielding<B = RamBackend> {
    ram: B,
    dice: Dice,
}

impl<B> Yielding<B> {
    async fn pause(&self) {
        for _ in 0..self.dice.roll(4) {
            smol::future::yield_now().await;
        }
    }
}

impl<B: Backend> Backend for Yielding<B> {
    fn size(&self) -> u64 {
        self.ram.size()
    }

    fn capabilities(&self) -> Capabilities {
        self.ram.capabilities()
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.pause().await;
        self.ram.read(offset, buf).await
    }

    async fn write(&self, offset: u64, buf: &[u8], fua: bool) -> Result<(), IoError> {
        self.pause().await;
        self.ram.write(offset, buf, fua).await
    }

    async fn flush(&self) -> Result<(), IoError> {
        self.pause().await;
        self.ram.flush().await
    }

    async fn discard(&self, offset: u64, len: u64) -> Result<(), IoError> {
        self.pause().await;
        self.ram.discard(offset, len).await
    }

    async fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<(), IoError> {
        self.pause().await;
        self.ram.write_zeroes(offset, len, unmap).await
    }
}

#[derive(Clone, Copy, Debug)]
enum Step {
    Write { block: u64, blocks: u64, fua: bool },
    Read { block: u64, blocks: u64 },
    Zero { block: u64 },
    Flush,
    Writeback,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => (0..BLOCKS, 1..=2u64, any::<bool>())
            .prop_map(|(block, blocks, fua)| Step::Write { block, blocks: blocks.min(BLOCKS - block), fua: fua && block % 3 == 0 }),
        5 => (0..BLOCKS, 1..=2u64)
            .prop_map(|(block, blocks)| Step::Read { block, blocks: blocks.min(BLOCKS - block) }),
        1 => (0..BLOCKS).prop_map(|block| Step::Zero { block }),
        1 => Just(Step::Flush),
        1 => Just(Step::Writeback),
    ]
}

/// Block `block`'s contents as write `tag` leaves it (tag 0: zeroes).
fn pattern(tag: u32, block: u64) -> Vec<u8> {
    if tag == 0 {
        return vec![0; BLOCK];
    }
    let mut data = vec![tag as u8; BLOCK];
    data[..4].copy_from_slice(&tag.to_le_bytes());
    data[4..12].copy_from_slice(&block.to_le_bytes());
    data
}

/// A completed request: what it wrote (tag) or read, and when it began and ended (scheduler
/// steps).
#[derive(Debug)]
struct Done {
    step: Step,
    tag: u32,
    began: u64,
    ended: u64,
    read: Option<Vec<u8>>,
}

impl Done {
    fn writes(&self, block: u64) -> bool {
        match self.step {
            Step::Write {
                block: b, blocks, ..
            } => (b..b + blocks).contains(&block),
            Step::Zero { block: b } => b == block,
            _ => false,
        }
    }
}

/// The tags a read of `block` over `began..=ended` may see.
fn allowed(done: &[Done], block: u64, began: u64, ended: u64) -> Vec<u32> {
    let writes: Vec<&Done> = done.iter().filter(|d| d.writes(block)).collect();
    let before: Vec<&&Done> = writes.iter().filter(|w| w.ended < began).collect();
    let mut tags: Vec<u32> = before
        .iter()
        .filter(|w| !before.iter().any(|o| o.began > w.ended))
        .map(|w| w.tag)
        .collect();
    if before.is_empty() {
        tags.push(0);
    }
    tags.extend(
        writes
            .iter()
            .filter(|w| w.ended >= began && w.began <= ended)
            .map(|w| w.tag),
    );
    tags
}

type Cache<B = RamBackend> = CachedBackend<Yielding<B>, Yielding<B>>;

/// Serves one step: what a read returned, or the error (only ever after a kill).
async fn serve<B: Backend>(
    cache: &Cache<B>,
    clock: &ManualClock,
    step: Step,
    tag: u32,
) -> Result<Option<Vec<u8>>, IoError> {
    let at = |block: u64| block * BLOCK as u64;
    match step {
        Step::Write { block, blocks, fua } => {
            let data: Vec<u8> = (block..block + blocks)
                .flat_map(|b| pattern(tag, b))
                .collect();
            cache.write(at(block), &data, fua).await?;
        }
        Step::Read { block, blocks } => {
            let mut buf = vec![0; blocks as usize * BLOCK];
            cache.read(at(block), &mut buf).await?;
            return Ok(Some(buf));
        }
        Step::Zero { block } => {
            let len = BLOCK as u64;
            cache.write_zeroes(at(block), len, false).await?;
        }
        Step::Flush => cache.flush().await?,
        Step::Writeback => {
            clock.advance(Duration::from_secs(1));
            cache.writeback_step().await?;
        }
    }
    Ok(None)
}

type Running<'a> = (
    Pin<Box<dyn Future<Output = Result<Option<Vec<u8>>, IoError>> + 'a>>,
    Step,
    u32,
    u64,
);

/// Runs `steps`, up to [`ACTIVE`] at a time, polled in the order `dice` picks. Every request
/// succeeds unless `killed` says the server is dead; one that failed counts as never ended
/// (it may or may not have taken effect). Returns the requests and the step at which `killed`
/// first said so.
fn interleave<B: Backend>(
    cache: &Cache<B>,
    clock: &ManualClock,
    steps: &[Step],
    dice: &Dice,
    killed: &dyn Fn() -> bool,
) -> (Vec<Done>, Option<u64>) {
    let mut running: Vec<Running<'_>> = Vec::new();
    let mut done = Vec::new();
    let mut next = 0;
    let mut now = 0u64;
    let mut idle = 0u32;
    let mut kill = None;
    while next < steps.len() || !running.is_empty() {
        now += 1;
        let start = next < steps.len() && (running.len() < ACTIVE && dice.roll(3) == 0);
        if start || running.is_empty() {
            let step = steps[next];
            // Write-zeroes leaves the zeroes pattern, tag 0.
            let tag = match step {
                Step::Zero { .. } => 0,
                _ => next as u32 + 1,
            };
            running.push((Box::pin(serve(cache, clock, step, tag)), step, tag, now));
            next += 1;
        }
        let pick = dice.roll(running.len() as u64) as usize;
        if let Poll::Ready(result) = poll(&mut running[pick].0) {
            let (_, step, tag, began) = running.swap_remove(pick);
            if kill.is_none() && killed() {
                kill = Some(now);
            }
            let (read, ended) = match result {
                Ok(read) => (read, now),
                Err(e) => {
                    assert!(killed(), "{step:?} failed with the server alive: {e}");
                    (None, u64::MAX)
                }
            };
            done.push(Done {
                step,
                tag,
                began,
                ended,
                read,
            });
            idle = 0;
        } else {
            idle += 1;
            assert!(idle < 100_000, "no request completes: deadlock");
        }
        if kill.is_none() && killed() {
            kill = Some(now);
        }
    }
    (done, kill)
}

fn poll<T>(f: &mut Pin<Box<dyn Future<Output = T> + '_>>) -> Poll<T> {
    match block_on(poll_once(f)) {
        Some(out) => Poll::Ready(out),
        None => Poll::Pending,
    }
}

fn check_reads(done: &[Done], kill: Option<u64>) -> Result<(), TestCaseError> {
    for d in done {
        if kill.is_some_and(|k| d.ended >= k) {
            continue; // read after the kill began: the request may have failed part-way
        }
        let (Step::Read { block, .. }, Some(data)) = (d.step, &d.read) else {
            continue;
        };
        for (n, got) in data.chunks(BLOCK).enumerate() {
            let b = block + n as u64;
            let ok = allowed(done, b, d.began, d.ended);
            prop_assert!(
                ok.iter().any(|&t| pattern(t, b) == got),
                "read {:?} of block {b} (steps {}..{}) returned {:?}, allowed tags {ok:?}",
                d.step,
                d.began,
                d.ended,
                &got[..12]
            );
        }
    }
    Ok(())
}

fn config(mode: CacheMode) -> CacheConfig {
    CacheConfig {
        mode,
        volatile_store: false,
        sequential_cutoff: 2 * BLOCK as u64,
        writeback: WritebackPolicy {
            high_watermark_percent: 25,
            low_watermark_percent: 10,
            max_dirty_age: Duration::from_secs(3),
            rate_bytes_per_sec: 1 << 30,
            batch_blocks: 4,
        },
    }
}

fn open<B: Backend + Clone>(
    backing: &Yielding<B>,
    store: &Yielding<B>,
    mode: CacheMode,
    clock: Arc<ManualClock>,
    replay: Replay,
) -> Cache<B> {
    let shared = block_on(cache::open_replaying(
        backing,
        store,
        &config(mode),
        clock,
        replay,
    ))
    .expect("open");
    CachedBackend::new(shared, backing.clone(), store.clone())
}

fn run(mode: CacheMode, steps: &[Step], seed: u64) -> Result<(), TestCaseError> {
    let dice = Dice(Arc::new(Mutex::new(seed)));
    let backing = Yielding {
        ram: RamBackend::new(DEVICE_BYTES),
        dice: dice.clone(),
    };
    let store = Yielding {
        ram: RamBackend::new(STORE_BLOCKS * BLOCK as u64),
        dice: dice.clone(),
    };
    block_on(cache::format(&store, DEVICE_BYTES, Some(6))).expect("format");
    let clock = Arc::new(ManualClock::new());
    let cache = open(
        &backing,
        &store,
        mode,
        Arc::clone(&clock),
        Replay::Committed,
    );
    let (done, _) = interleave(&cache, &clock, steps, &dice, &|| false);
    check_reads(&done, None)?;

    // Quiet now: each block holds one of its latest writes, the same before and after a reopen.
    block_on(cache.flush()).expect("flush");
    let end = done.iter().map(|d| d.ended).max().unwrap_or(0) + 1;
    let mut settled = Vec::new();
    for block in 0..BLOCKS {
        let mut got = vec![0; BLOCK];
        block_on(cache.read(block * BLOCK as u64, &mut got)).expect("read");
        let ok = allowed(&done, block, end, end);
        prop_assert!(
            ok.iter().any(|&t| pattern(t, block) == got),
            "block {block} settled on {:?}, allowed tags {ok:?}",
            &got[..12]
        );
        settled.push(got);
    }
    drop(cache);
    let reopened = open(&backing, &store, mode, clock, Replay::Committed);
    for (block, want) in (0..BLOCKS).zip(settled) {
        let mut got = vec![0; BLOCK];
        block_on(reopened.read(block * BLOCK as u64, &mut got)).expect("read");
        prop_assert_eq!(&got[..12], &want[..12], "block {} after reopening", block);
        prop_assert!(got == want, "block {} after reopening", block);
    }
    Ok(())
}

/// Runs `steps` until the server is killed after `cut` store operations, then recovers.
fn run_killed(mode: CacheMode, steps: &[Step], seed: u64, cut: u64) -> Result<(), TestCaseError> {
    let dice = Dice(Arc::new(Mutex::new(seed)));
    let power = Power::new();
    let crash_backing = CrashStore::new(DEVICE_BYTES, Arc::clone(&power));
    let crash_store = CrashStore::new(STORE_BLOCKS * BLOCK as u64, Arc::clone(&power));
    let backing = Yielding {
        ram: crash_backing.clone(),
        dice: dice.clone(),
    };
    let store = Yielding {
        ram: crash_store.clone(),
        dice: dice.clone(),
    };
    block_on(cache::format(&store, DEVICE_BYTES, Some(6))).expect("format");
    let clock = Arc::new(ManualClock::new());
    let cache = open(
        &backing,
        &store,
        mode,
        Arc::clone(&clock),
        Replay::Committed,
    );
    power.arm(cut);
    let (done, kill) = interleave(&cache, &clock, steps, &dice, &|| power.is_out());
    check_reads(&done, kill)?;
    drop(cache);
    // The write in flight happens or not, untorn: a torn 4 KiB block is the store's doing, and
    // the model checks whole blocks.
    let choice = |seed| CrashChoice { seed, tear: false };
    crash_backing.process_crash(&choice(seed));
    crash_store.process_crash(&choice(seed ^ 0x5555));
    let recovered = open(&backing, &store, mode, clock, Replay::All);
    let kill = kill.unwrap_or(u64::MAX - 1);
    for block in 0..BLOCKS {
        let mut got = vec![0; BLOCK];
        block_on(recovered.read(block * BLOCK as u64, &mut got)).expect("read");
        let ok = allowed(&done, block, kill, u64::MAX);
        prop_assert!(
            ok.iter().any(|&t| pattern(t, block) == got),
            "block {block} recovered as {:?}, allowed tags {ok:?} (killed at step {kill})",
            &got[..12]
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn a_killed_server_keeps_every_write_acknowledged_before_the_kill(
        mode in prop::sample::select(CacheMode::ALL.to_vec()),
        steps in proptest::collection::vec(step(), 1..48),
        seed in any::<u64>(),
        cut in 0..160u64,
    ) {
        run_killed(mode, &steps, seed, cut)?;
    }

    #[test]
    fn concurrent_requests_read_whole_acknowledged_versions(
        mode in prop::sample::select(CacheMode::ALL.to_vec()),
        steps in proptest::collection::vec(step(), 1..48),
        seed in any::<u64>(),
    ) {
        run(mode, &steps, seed)?;
    }
}
