//! Model-based crash tests of the cache tier (issue #4's durability contract).
//!
//! Random interleavings of reads, writes, FUA writes, flushes, discards, write-zeroes, background
//! writeback steps, mode switches, clean shutdowns and crashes run against a [`CachedBackend`]
//! whose cache store and backing store are [`CrashStore`]s on one power supply. The cache is tiny
//! (12 slots for a 48-block device), so eviction, slot reuse, bypass and journal checkpoints
//! happen all the time. Crashes strike between requests or, through an armed power cut, in the
//! middle of one: between a data write and its journal record, inside a commit, inside a
//! checkpoint. Each crash keeps a random subset of the unflushed writes and may tear the write
//! in flight.
//!
//! The model keeps, per block, every value it may hold and the oldest one it may still show:
//! - between crashes, a read returns exactly the newest acknowledged value;
//! - after a crash and reopen, every block reads back a value at least as new as the newest one
//!   acknowledged before the last completed FLUSH (or FUA write of that block): nothing older
//!   ever replaces it; and the cache always reopens (a crash never makes it invalid);
//! - after a process crash (`kill -9` of the server: every completed store write stays, memory
//!   is lost) and a reopen that replays the uncommitted records too (ublk user recovery), every
//!   block reads back a value at least as new as the newest *acknowledged* write, flushed or
//!   not (the kernel re-sends a FLUSH that was in flight, so nothing less would do).

mod cache_support;

use std::sync::Arc;
use std::time::Duration;

use cache_support::{CrashChoice, CrashStore, Power};
use proptest::prelude::*;
use smol::block_on;
use ublk_target::backend::Backend;
use ublk_target::cache::{self, CacheConfig, CacheMode, CachedBackend, Replay, WritebackPolicy};
use ublk_target::qos::ManualClock;

const BLOCK: usize = 4096;

/// The sizes of one test setup.
#[derive(Clone, Copy, Debug)]
struct Shape {
    device_blocks: u64,
    store_blocks: u64,
    journal_blocks: u64,
    longest_io: u64,
}

/// 2 superblocks + 2 × 3 journal blocks + 12 data slots for a 48-block device.
const SMALL: Shape = Shape {
    device_blocks: 48,
    store_blocks: 20,
    journal_blocks: 3,
    longest_io: 6,
};

/// 2 superblocks + 2 × 5 journal blocks + 200 data slots: checkpoints span two journal blocks
/// and come every few commits.
const LARGE: Shape = Shape {
    device_blocks: 320,
    store_blocks: 212,
    journal_blocks: 5,
    longest_io: 48,
};

#[derive(Clone, Debug)]
enum Step {
    Write {
        block: u64,
        blocks: u64,
        fua: bool,
    },
    Read {
        block: u64,
        blocks: u64,
    },
    Flush,
    Discard {
        block: u64,
        blocks: u64,
    },
    WriteZeroes {
        block: u64,
        blocks: u64,
    },
    Writeback {
        advance_ms: u64,
    },
    SetMode(CacheMode),
    Shutdown,
    /// A crash; `recovery_cut` cuts the power again while the cache reopens.
    Crash {
        seed: u64,
        tear: bool,
        recovery_cut: Option<u64>,
    },
    /// The server process is killed between requests and the device recovered;
    /// `recovery_cut` cuts the power while the cache reopens.
    Kill {
        seed: u64,
        tear: bool,
        recovery_cut: Option<u64>,
    },
    /// The server process is killed at the `after_ops`-th next store operation.
    ArmKill {
        after_ops: u64,
        seed: u64,
    },
    /// The power fails at the `after_ops`-th next store operation; the crash keeps unflushed
    /// writes as `seed` decides.
    ArmPowerCut {
        after_ops: u64,
        seed: u64,
    },
    /// The `after_ops`-th next store operation fails with `EIO` (a write may leave part of
    /// its sectors, as `seed` decides) and the stores work again after it: the device carries
    /// on without a restart.
    ArmIoError {
        after_ops: u64,
        seed: u64,
    },
}

/// What an armed cut turns into once it fires.
#[derive(Clone, Copy, PartialEq)]
enum Cut {
    PowerFailure,
    Kill,
    IoError,
}

fn range(shape: Shape) -> impl Strategy<Value = (u64, u64)> {
    (0..shape.device_blocks).prop_flat_map(move |block| {
        let longest = (shape.device_blocks - block).min(shape.longest_io);
        (Just(block), 1..=longest)
    })
}

fn mode() -> impl Strategy<Value = CacheMode> {
    prop::sample::select(CacheMode::ALL.to_vec())
}

fn step(shape: Shape) -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (range(shape), any::<bool>()).prop_map(|((block, blocks), fua)| Step::Write { block, blocks, fua }),
        4 => range(shape).prop_map(|(block, blocks)| Step::Read { block, blocks }),
        3 => Just(Step::Flush),
        1 => range(shape).prop_map(|(block, blocks)| Step::Discard { block, blocks }),
        1 => range(shape).prop_map(|(block, blocks)| Step::WriteZeroes { block, blocks }),
        2 => (0..3000u64).prop_map(|advance_ms| Step::Writeback { advance_ms }),
        1 => mode().prop_map(Step::SetMode),
        1 => Just(Step::Shutdown),
        2 => (any::<u64>(), any::<bool>(), prop::option::of(0..12u64))
            .prop_map(|(seed, tear, recovery_cut)| Step::Crash { seed, tear, recovery_cut }),
        2 => (0..40u64, any::<u64>()).prop_map(|(after_ops, seed)| Step::ArmPowerCut { after_ops, seed }),
        2 => (any::<u64>(), any::<bool>(), prop::option::of(0..12u64))
            .prop_map(|(seed, tear, recovery_cut)| Step::Kill { seed, tear, recovery_cut }),
        2 => (0..40u64, any::<u64>()).prop_map(|(after_ops, seed)| Step::ArmKill { after_ops, seed }),
        2 => (0..40u64, any::<u64>()).prop_map(|(after_ops, seed)| Step::ArmIoError { after_ops, seed }),
    ]
}

/// Block contents that name their write: tag and block number up front, a pattern after.
fn contents(tag: u64, block: u64) -> Vec<u8> {
    let mut data: Vec<u8> = (0..BLOCK)
        .map(|i| (tag as u8) ^ (block as u8).wrapping_mul(3) ^ (i as u8))
        .collect();
    data[..8].copy_from_slice(&tag.to_le_bytes());
    data[8..16].copy_from_slice(&block.to_le_bytes());
    data
}

/// A short name for block contents in failure messages: the tag of a whole write, "zeroes",
/// or "mixed".
fn describe(data: &[u8], block: u64) -> String {
    if data.iter().all(|&b| b == 0) {
        return "zeroes".to_owned();
    }
    let tag = u64::from_le_bytes(data[..8].try_into().unwrap());
    if data == contents(tag, block).as_slice() {
        format!("tag {tag}")
    } else {
        "mixed sectors".to_owned()
    }
}

/// Per block: the contents it may hold, in order of writing, and the index of the oldest one it
/// may still show after a crash.
struct Model {
    versions: Vec<Vec<Vec<u8>>>,
    floor: Vec<usize>,
    /// Per block, the index of the newest acknowledged version.
    acked: Vec<usize>,
    next_tag: u64,
}

impl Model {
    fn new(blocks: u64) -> Self {
        Model {
            versions: vec![vec![vec![0; BLOCK]]; blocks as usize],
            floor: vec![0; blocks as usize],
            acked: vec![0; blocks as usize],
            next_tag: 1,
        }
    }

    /// Records a write of `tag` (0: zeroes) to `blocks` blocks from `block`; `acked`: it
    /// completed successfully.
    fn record(&mut self, block: u64, blocks: u64, tag: u64, acked: bool, durable: bool) {
        for b in block..block + blocks {
            let history = &mut self.versions[b as usize];
            history.push(if tag == 0 {
                vec![0; BLOCK]
            } else {
                contents(tag, b)
            });
            if acked {
                self.acked[b as usize] = history.len() - 1;
            }
            if durable {
                self.floor[b as usize] = history.len() - 1;
            }
        }
    }

    /// After a process crash and recovery: every acknowledged write must be back.
    fn killed(&mut self) {
        for (floor, acked) in self.floor.iter_mut().zip(&self.acked) {
            *floor = (*floor).max(*acked);
        }
    }

    fn flushed(&mut self) {
        for (floor, history) in self.floor.iter_mut().zip(&self.versions) {
            *floor = history.len() - 1;
        }
    }

    fn latest(&self, block: u64) -> &[u8] {
        self.versions[block as usize].last().unwrap()
    }

    /// After a crash: every 512-byte sector of every block is that sector of a version at
    /// least as new as the block's floor (a write in flight may survive torn, as on any disk).
    /// What was read becomes the truth.
    fn check_recovered(&mut self, image: &[u8]) -> Result<(), TestCaseError> {
        for (block, data) in image.chunks(BLOCK).enumerate() {
            let allowed = &self.versions[block][self.floor[block]..];
            for (n, sector) in data.chunks(512).enumerate() {
                let at = n * 512;
                prop_assert!(
                    allowed.iter().any(|v| &v[at..at + 512] == sector),
                    "block {block} sector {n} after the crash is older than its last flushed (after a kill: acknowledged) \
                     write: block holds {}; acceptable: {:?}",
                    describe(data, block as u64),
                    allowed
                        .iter()
                        .map(|v| describe(v, block as u64))
                        .collect::<Vec<_>>()
                );
            }
            self.versions[block] = vec![data.to_vec()];
            self.floor[block] = 0;
            self.acked[block] = 0;
        }
        Ok(())
    }
}

struct Rig {
    shape: Shape,
    power: Arc<Power>,
    backing: CrashStore,
    store: CrashStore,
    clock: Arc<ManualClock>,
    config: CacheConfig,
    cache: CachedBackend<CrashStore, CrashStore>,
}

impl Rig {
    fn new(mode: CacheMode, shape: Shape) -> Rig {
        let power = Power::new();
        let backing = CrashStore::new(shape.device_blocks * BLOCK as u64, Arc::clone(&power));
        let store = CrashStore::new(shape.store_blocks * BLOCK as u64, Arc::clone(&power));
        block_on(cache::format(
            &store,
            backing.size(),
            Some(shape.journal_blocks),
        ))
        .expect("format");
        let config = CacheConfig {
            mode,
            volatile_store: false,
            sequential_cutoff: 8 * BLOCK as u64,
            writeback: WritebackPolicy {
                high_watermark_percent: 50,
                low_watermark_percent: 25,
                max_dirty_age: Duration::from_secs(2),
                rate_bytes_per_sec: 1 << 30,
                batch_blocks: 4,
            },
        };
        let clock = Arc::new(ManualClock::new());
        let cache = Self::open(&backing, &store, &config, &clock);
        Rig {
            shape,
            power,
            backing,
            store,
            clock,
            config,
            cache,
        }
    }

    fn open(
        backing: &CrashStore,
        store: &CrashStore,
        config: &CacheConfig,
        clock: &Arc<ManualClock>,
    ) -> CachedBackend<CrashStore, CrashStore> {
        let shared = block_on(cache::open(backing, store, config, clock.clone()))
            .unwrap_or_else(|e| panic!("the cache must reopen after any crash: {e}"));
        CachedBackend::new(shared, backing.clone(), store.clone())
    }

    fn lose_power(&self, seed: u64, tear: bool) {
        self.backing.crash(&CrashChoice { seed, tear });
        self.store.crash(&CrashChoice {
            seed: seed.rotate_left(17) ^ 0x5555,
            tear,
        });
    }

    /// Power failure: both stores lose what the crash choice drops; the cache reopens. With
    /// `recovery_cut`, the power fails again during that reopen, and the cache reopens after.
    fn crash(&mut self, seed: u64, tear: bool, recovery_cut: Option<u64>) {
        self.lose_power(seed, tear);
        if let Some(after_ops) = recovery_cut {
            self.power.arm(after_ops);
            let reopened = block_on(cache::open(
                &self.backing,
                &self.store,
                &self.config,
                self.clock.clone(),
            ));
            match reopened {
                Ok(shared) => {
                    self.power.disarm();
                    self.cache =
                        CachedBackend::new(shared, self.backing.clone(), self.store.clone());
                    return;
                }
                Err(e) => assert!(self.power.is_out(), "open failed with the power on: {e}"),
            }
            self.lose_power(seed ^ 0xabcd, tear);
        }
        self.reopen();
    }

    /// An armed I/O error fired and the stores work again. The cache must have stopped
    /// (fail-stop: it refuses even a read); recovering the device as after a killed server
    /// (the failed write leaves what `seed` decides, every record is replayed) brings back
    /// every acknowledged write.
    fn after_io_error(&mut self, seed: u64, model: &mut Model) -> Result<(), TestCaseError> {
        self.power.disarm();
        prop_assert!(
            self.cache.shared().has_failed(),
            "a store I/O failed and the cache carries on"
        );
        prop_assert!(self.read(0, 1).is_none(), "a failed cache serves a read");
        prop_assert!(self.kill(seed, seed % 3 == 0, None));
        model.killed();
        Ok(())
    }

    fn reopen(&mut self) {
        self.cache = Self::open(&self.backing, &self.store, &self.config, &self.clock);
    }

    /// The server is killed and the device recovered: the stores keep every completed write,
    /// and the cache reopens replaying its uncommitted records too. With `recovery_cut`, the
    /// power fails during that reopen (then the next start is a fresh one). Returns whether the
    /// recovery completed, i.e. whether every acknowledged write must be back.
    fn kill(&mut self, seed: u64, tear: bool, recovery_cut: Option<u64>) -> bool {
        let choice = |seed| CrashChoice { seed, tear };
        self.backing.process_crash(&choice(seed));
        self.store
            .process_crash(&choice(seed.rotate_left(17) ^ 0x5555));
        if let Some(after_ops) = recovery_cut {
            self.power.arm(after_ops);
        }
        let reopened = block_on(cache::open_replaying(
            &self.backing,
            &self.store,
            &self.config,
            self.clock.clone(),
            Replay::All,
        ));
        match reopened {
            Ok(shared) => {
                self.power.disarm();
                self.cache = CachedBackend::new(shared, self.backing.clone(), self.store.clone());
                true
            }
            Err(e) => {
                assert!(
                    self.power.is_out(),
                    "recovery failed with the power on: {e}"
                );
                self.lose_power(seed ^ 0xabcd, tear);
                self.reopen();
                false
            }
        }
    }

    fn read(&self, block: u64, blocks: u64) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; blocks as usize * BLOCK];
        block_on(self.cache.read(block * BLOCK as u64, &mut buf)).ok()?;
        Some(buf)
    }

    fn check_recovered(&self, model: &mut Model) -> Result<(), TestCaseError> {
        let image = self
            .read(0, self.shape.device_blocks)
            .expect("reads work after reopening");
        model.check_recovered(&image)
    }

    /// Without a crash since the last write, every block reads exactly its newest contents.
    fn check_exact(
        &self,
        model: &Model,
        block: u64,
        data: &[u8],
        when: &str,
    ) -> Result<(), TestCaseError> {
        for (b, got) in (block..).zip(data.chunks(BLOCK)) {
            prop_assert!(
                got == model.latest(b),
                "block {b} {when}: reads {} instead of {}",
                describe(got, b),
                describe(model.latest(b), b)
            );
        }
        Ok(())
    }
}

fn run(mode: CacheMode, shape: Shape, steps: &[Step]) -> Result<(), TestCaseError> {
    let mut rig = Rig::new(mode, shape);
    let mut model = Model::new(shape.device_blocks);
    let mut cut_seed = 0;
    let mut cut = Cut::PowerFailure;
    for step in steps {
        let ok = match *step {
            Step::Write { block, blocks, fua } => {
                let tag = model.next_tag;
                model.next_tag += 1;
                let data: Vec<u8> = (block..block + blocks)
                    .flat_map(|b| contents(tag, b))
                    .collect();
                let ok = block_on(rig.cache.write(block * BLOCK as u64, &data, fua)).is_ok();
                model.record(block, blocks, tag, ok, ok && fua);
                ok
            }
            Step::Read { block, blocks } => match rig.read(block, blocks) {
                Some(data) => {
                    rig.check_exact(&model, block, &data, "between crashes")?;
                    true
                }
                None => false,
            },
            Step::Flush => {
                let ok = block_on(rig.cache.flush()).is_ok();
                if ok {
                    model.flushed();
                }
                ok
            }
            Step::Discard { block, blocks } => {
                let ok = block_on(
                    rig.cache
                        .discard(block * BLOCK as u64, blocks * BLOCK as u64),
                )
                .is_ok();
                model.record(block, blocks, 0, ok, false);
                ok
            }
            Step::WriteZeroes { block, blocks } => {
                let len = blocks * BLOCK as u64;
                let ok = block_on(rig.cache.write_zeroes(block * BLOCK as u64, len, true)).is_ok();
                model.record(block, blocks, 0, ok, false);
                ok
            }
            Step::Writeback { advance_ms } => {
                rig.clock.advance(Duration::from_millis(advance_ms));
                block_on(rig.cache.writeback_step()).is_ok()
            }
            Step::SetMode(mode) => block_on(rig.cache.set_mode(mode)).is_ok(),
            Step::Shutdown => {
                if block_on(rig.cache.shutdown()).is_ok() {
                    // An orderly stop is a completed flush of everything.
                    model.flushed();
                    rig.power.disarm();
                    rig.reopen();
                    let data = rig
                        .read(0, shape.device_blocks)
                        .expect("reads after reopen");
                    rig.check_exact(&model, 0, &data, "after a clean stop")?;
                    true
                } else {
                    false
                }
            }
            Step::Crash {
                seed,
                tear,
                recovery_cut,
            } => {
                rig.crash(seed, tear, recovery_cut);
                rig.check_recovered(&mut model)?;
                true
            }
            Step::Kill {
                seed,
                tear,
                recovery_cut,
            } => {
                if rig.kill(seed, tear, recovery_cut) {
                    model.killed();
                }
                rig.check_recovered(&mut model)?;
                true
            }
            Step::ArmPowerCut { after_ops, seed }
            | Step::ArmKill { after_ops, seed }
            | Step::ArmIoError { after_ops, seed } => {
                rig.power.arm(after_ops);
                cut_seed = seed;
                cut = match step {
                    Step::ArmKill { .. } => Cut::Kill,
                    Step::ArmIoError { .. } => Cut::IoError,
                    _ => Cut::PowerFailure,
                };
                true
            }
        };
        if !ok {
            prop_assert!(rig.power.is_out(), "{step:?} failed with the power on");
            match cut {
                Cut::Kill => {
                    rig.kill(cut_seed, cut_seed % 3 == 0, None);
                    model.killed();
                }
                Cut::PowerFailure => rig.crash(cut_seed, true, None),
                Cut::IoError => rig.after_io_error(cut_seed, &mut model)?,
            }
            rig.check_recovered(&mut model)?;
        } else if cut == Cut::IoError && rig.power.is_out() {
            // The step's last store operation failed and the step did not report it.
            rig.after_io_error(cut_seed, &mut model)?;
            rig.check_recovered(&mut model)?;
        }
    }
    // The end of the run is one more crash, at whatever point the steps left things.
    rig.crash(0xfeed, true, None);
    rig.check_recovered(&mut model)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn flushed_writes_survive_any_crash(
        mode in mode(),
        steps in prop::collection::vec(step(SMALL), 1..60),
    ) {
        run(mode, SMALL, &steps)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn flushed_writes_survive_any_crash_with_multi_block_checkpoints(
        mode in mode(),
        steps in prop::collection::vec(step(LARGE), 1..60),
    ) {
        run(mode, LARGE, &steps)?;
    }
}

/// Runs `prefix`, then `suffix` with the power failing (`kill`: the server process killed) at
/// its first, second, ... operation (with and without tearing the write in flight, and several
/// choices of surviving unflushed writes), until a run completes without a cut.
fn cut_everywhere(mode: CacheMode, kill: bool, prefix: &[Step], suffix: &[Step]) {
    let arm = |after_ops, seed| match kill {
        true => Step::ArmKill { after_ops, seed },
        false => Step::ArmPowerCut { after_ops, seed },
    };
    for (tear, seed) in [false, true]
        .into_iter()
        .flat_map(|t| (0..4u64).map(move |s| (t, s)))
    {
        for after_ops in 0.. {
            let mut steps = prefix.to_vec();
            steps.push(arm(after_ops, seed * 1000 + after_ops));
            steps.extend_from_slice(suffix);
            let (seed, recovery_cut) = (seed * 1000 + after_ops + 1, None);
            steps.push(match kill {
                true => Step::Kill {
                    seed,
                    tear,
                    recovery_cut,
                },
                false => Step::Crash {
                    seed,
                    tear,
                    recovery_cut,
                },
            });
            run(mode, SMALL, &steps).unwrap_or_else(|e| {
                panic!("{mode:?}, kill {kill}, cut at operation {after_ops} of {suffix:?}: {e}")
            });
            // A cut beyond the last operation never fires: every point was covered.
            if after_ops > 200 {
                panic!("scenario never completed");
            }
            let mut probe = prefix.to_vec();
            probe.push(arm(after_ops, seed));
            probe.extend_from_slice(suffix);
            if !cuts_in(mode, &probe) {
                break;
            }
        }
    }
}

/// Whether the armed power cut fires during `steps`.
fn cuts_in(mode: CacheMode, steps: &[Step]) -> bool {
    let mut rig = Rig::new(mode, SMALL);
    let mut model = Model::new(SMALL.device_blocks);
    for step in steps {
        if let Step::ArmPowerCut { after_ops, .. } | Step::ArmKill { after_ops, .. } = step {
            rig.power.arm(*after_ops);
            continue;
        }
        let _ = apply_simple(&mut rig, &mut model, step);
        if rig.power.is_out() {
            return true;
        }
    }
    false
}

/// Issues one I/O step without checking (for probing where a cut lands).
fn apply_simple(rig: &mut Rig, model: &mut Model, step: &Step) -> bool {
    let at = |block: u64| block * BLOCK as u64;
    match *step {
        Step::Write { block, blocks, fua } => {
            let tag = model.next_tag;
            model.next_tag += 1;
            let data: Vec<u8> = (block..block + blocks)
                .flat_map(|b| contents(tag, b))
                .collect();
            block_on(rig.cache.write(at(block), &data, fua)).is_ok()
        }
        Step::Flush => block_on(rig.cache.flush()).is_ok(),
        Step::Discard { block, blocks } => {
            block_on(rig.cache.discard(at(block), blocks * BLOCK as u64)).is_ok()
        }
        Step::Writeback { advance_ms } => {
            rig.clock.advance(Duration::from_millis(advance_ms));
            block_on(rig.cache.writeback_step()).is_ok()
        }
        _ => unreachable!("scenarios use writes, flushes, discards and writeback only"),
    }
}

const fn write(block: u64, blocks: u64, fua: bool) -> Step {
    Step::Write { block, blocks, fua }
}

#[test]
fn a_power_cut_at_every_point_of_a_fua_write_and_a_flush() {
    for mode in CacheMode::ALL {
        cut_everywhere(
            mode,
            false,
            &[write(1, 4, false), Step::Flush],
            &[write(3, 3, true), write(20, 6, false), Step::Flush],
        );
    }
}

#[test]
fn a_power_cut_at_every_point_of_a_discard_over_dirty_data() {
    // The backing store holds an older version (written back), the cache a newer flushed one;
    // the discard's invalidation must never become durable without the discard itself.
    cut_everywhere(
        CacheMode::Writeback,
        false,
        &[
            write(2, 2, false),
            Step::Flush,
            Step::Writeback { advance_ms: 10_000 },
            write(2, 2, false),
            Step::Flush,
        ],
        &[
            Step::Discard {
                block: 2,
                blocks: 2,
            },
            Step::Flush,
        ],
    );
}

#[test]
fn a_power_cut_at_every_point_of_a_bypass_over_dirty_data() {
    // Twelve dirty flushed blocks fill the cache; rewriting one finds no slot and goes to the
    // backing store, invalidating the cached copy. That invalidation must not outlive the
    // backing write in a crash, or the block would fall back to the older backing contents.
    cut_everywhere(
        CacheMode::Writeback,
        false,
        &[write(0, 6, false), write(6, 6, false), Step::Flush],
        &[write(0, 1, false), Step::Flush],
    );
}

#[test]
fn a_server_killed_at_every_point_keeps_every_acknowledged_write() {
    // Unflushed writes, overwrites of uncommitted blocks, a discard and a FUA write, with the
    // server killed at each store operation: after recovery every acknowledged write is back,
    // although nothing after the prefix's FLUSH was flushed when the server died.
    for mode in CacheMode::ALL {
        cut_everywhere(
            mode,
            true,
            &[write(1, 4, false), Step::Flush, write(2, 1, false)],
            &[
                write(2, 2, false),
                write(20, 6, false),
                Step::Discard {
                    block: 21,
                    blocks: 2,
                },
                write(30, 1, true),
                write(3, 2, false),
                Step::Flush,
                write(4, 1, false),
            ],
        );
    }
}

#[test]
fn a_power_cut_after_unflushed_overwrites_keeps_the_flushed_versions() {
    // Overwrites of flushed blocks go to new slots, with uncommitted records. A power cut may
    // keep such a record and lose the data it names: a fresh start must not replay it.
    cut_everywhere(
        CacheMode::Writeback,
        false,
        &[write(1, 3, false), Step::Flush],
        &[write(1, 3, false), write(2, 1, false), write(3, 1, false)],
    );
}
