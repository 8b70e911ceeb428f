//! QoS groups shared by several processes: [`SharedGroup`], whose whole state is a small block
//! of `AtomicU64`s ([`SharedState`]) that every member maps (see `sys::shm` for the file).
//!
//! Everything here is safe code over `&SharedState`. It never assumes that the other users of
//! the block are well behaved: the words are read with atomics only, and whatever they hold,
//! no arithmetic here can panic, divide by zero or overflow. A scribbled block gives wrong
//! limits, never a crash; a block that fails validation at open is refused.
//!
//! # Layout (version 1)
//!
//! All fields are `u64` atomics, native endian, `#[repr(C)]`, [`STATE_BYTES`] in all:
//!
//! | field | words | meaning |
//! |---|---|---|
//! | `magic` | 1 | [`MAGIC`] once initialized; written last, so 0 means "creator died midway" |
//! | `version` | 1 | [`VERSION`] |
//! | `size_bytes` | 1 | [`STATE_BYTES`] |
//! | `boot_id` | 2 | the kernel boot id of the clock the fill times are on |
//! | `generation` | 1 | bumped by each limits change; `slots[generation % 2]` is current |
//! | `slots` | 2 × 52 | limits, double-buffered (below) |
//! | `cells` | 6 × 2 | per lane, the fill time of the sustained and of the peak bucket |
//!
//! A slot holds a [`QosLimits`] both as written (a presence mask and the raw numbers, for
//! [`SharedGroup::limits`]) and as the charging path needs it (rate and `τ` of every bucket,
//! computed by the writer): `[mask, raw × 24, iops_size, flush_cost, discard_cost,
//! derived × 24]`. At open both halves must agree, or the file is corrupt. The cells sit on
//! their own cache lines, away from the read-mostly slots.
//!
//! # Concurrency
//!
//! - **Charging** is lock-free: read the current slot (a seqlock-style check on `generation`,
//!   retried a bounded number of times), then one compare-and-swap per bucket (see
//!   [`super::gcra`]). A member that dies at any point leaves the block valid.
//! - **Changing limits** writes the *other* slot, then bumps `generation` (release), then
//!   converts each changed bucket's fill time so that it keeps its level (compare-and-swap, so
//!   concurrent charges are kept). Writers must be serialized by the region
//!   ([`SharedRegion::exclusive`]: a `flock(2)` on the file, which the kernel releases when its
//!   holder dies, so a dead writer never blocks the next one). A writer that dies before the
//!   bump leaves the limits untouched; after it, leaves the new limits with some buckets read
//!   at the new rate rather than converted: a bounded error on levels, never a wedge.
//! - A request admitted *while* the limits change may be charged under either the old or the
//!   new limits, against a bucket converted or not: an error of at most one request per thread
//!   admitting at that moment.
//!
//! # Clock
//!
//! Fill times are absolute times of the clock that feeds [`super::Limiter::admit`], which for
//! a shared group must be the same in every member: [`super::MonotonicClock`] reads
//! `CLOCK_MONOTONIC`, which all processes of a machine (and time namespace) share. It restarts at
//! boot, so the block records the boot id: the first member to open it after a reboot resets
//! every bucket to full (under the writer lock, before any member of the new boot charges).

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use thiserror::Error;

use super::bucket::{lane_charges, Charge};
use super::gcra::{self, BucketParams};
use super::limits::{BytesLimit, OpsLimit, QosError, QosLimits, LANES};
use super::nanos;
use super::prepaid::{prepay_batch, Prepaid, Refill};
use crate::request::Op;

/// The first word of an initialized block: `"mbqosgrp"`.
pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"mbqosgrp");
/// The layout version this build reads and writes.
pub(crate) const VERSION: u64 = 1;

/// Slot word indexes: the presence mask, then 4 raw words per limit (`per_sec`, `burst`,
/// `max_per_sec`, `max_length_ms`), the 3 cost words, then 4 derived words per lane (sustained
/// rate and τ, peak rate and τ; a rate of 0 means no such bucket).
const W_MASK: usize = 0;
const W_RAW: usize = 1;
const W_IOPS_SIZE: usize = W_RAW + 4 * LANES;
const W_FLUSH_COST: usize = W_IOPS_SIZE + 1;
const W_DISCARD_COST: usize = W_FLUSH_COST + 1;
const W_DERIVED: usize = W_DISCARD_COST + 1;
const SLOT_WORDS: usize = W_DERIVED + 4 * LANES;

/// Mask bits: bit `lane` says the limit exists; bit `M_OPTIONAL + 3 × lane + k - 1` says its
/// raw field `k` (1..=3) is set; then the three optional costs and `discard_counts_bytes`.
const M_LIMITS: u64 = (1 << LANES) - 1;
const M_OPTIONAL: usize = LANES;
const M_IOPS_SIZE: u64 = 1 << (M_OPTIONAL + 3 * LANES);
const M_FLUSH_COST: u64 = M_IOPS_SIZE << 1;
const M_DISCARD_COST: u64 = M_IOPS_SIZE << 2;
const M_COUNTS_BYTES: u64 = M_IOPS_SIZE << 3;
const M_KNOWN: u64 = (M_COUNTS_BYTES << 1) - 1;

/// How many times a reader retries a slot that changed under it before using what it read.
/// Writers are rare and serialized; a torn read can only mis-cost one request.
const MAX_READ_ATTEMPTS: u32 = 1000;

const _: () = assert!(SLOT_WORDS == 52);
const _: () = assert!(M_KNOWN == (1 << 28) - 1);
const _: () = assert!(STATE_BYTES % 64 == 0 && STATE_BYTES <= 4096);
const _: () = assert!(std::mem::align_of::<SharedState>() == 64);
// The header and slots are packed words; the cells start on the next cache line.
const _: () = assert!(std::mem::offset_of!(SharedState, cells) == (6 + 2 * SLOT_WORDS + 2) * 8);

/// The per-lane fill times, on their own cache lines: they are written on every admission,
/// the slots almost never.
#[repr(C, align(64))]
struct Cells([[AtomicU64; 2]; LANES]);

/// A shared group's whole state. Only atomics: any byte pattern is a valid value, and memory
/// that other processes write concurrently is sound to read through it (see `sys::shm`).
#[repr(C)]
pub(crate) struct SharedState {
    magic: AtomicU64,
    version: AtomicU64,
    size_bytes: AtomicU64,
    boot_id: [AtomicU64; 2],
    generation: AtomicU64,
    slots: [[AtomicU64; SLOT_WORDS]; 2],
    cells: Cells,
}

/// Bytes of a [`SharedState`]: the size of a group file.
pub(crate) const STATE_BYTES: usize = std::mem::size_of::<SharedState>();

impl fmt::Debug for SharedState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedState")
            .field("magic", &self.magic.load(Ordering::Relaxed))
            .field("generation", &self.generation.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Why a group could not be created, joined, read or changed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum GroupError {
    /// The limits asked for are invalid.
    #[error("invalid group limits")]
    Limits(#[source] QosError),
    /// Joining without limits a group that nobody created (or whose creator died midway).
    #[error("the group does not exist yet: give its limits to create it")]
    Uninitialized,
    /// Not a group file.
    #[error("not a mesoblk QoS group (magic {found:#018x})")]
    BadMagic {
        /// The first word found.
        found: u64,
    },
    /// A group file of another layout version.
    #[error("QoS group layout version {found}; this build reads version {expected}")]
    BadVersion {
        /// The version found.
        found: u64,
        /// The version this build reads.
        expected: u64,
    },
    /// A group file whose words are inconsistent.
    #[error("corrupt QoS group: {what}")]
    Corrupt {
        /// What is wrong.
        what: &'static str,
    },
    /// A group file whose limits do not validate.
    #[error("corrupt QoS group: its stored limits are invalid")]
    CorruptLimits(#[source] QosError),
    /// The lock that serializes writers could not be taken.
    #[error("could not lock the group against other writers")]
    Lock(#[source] io::Error),
}

/// How a member joins a shared group.
///
/// The rule: **the first member creates the group with its limits; later members join with the
/// group's current limits**, whatever they asked for ([`Joined::JoinedWithOtherLimits`] says so,
/// for a warning). Limits change only through [`SharedGroup::set_limits`] (`set-qos --group`),
/// so a member restarting (crash recovery) with the limits of its original spec never reverts
/// such a live change. In CLI terms: `--qos-group NAME` alone is [`GroupJoin::Existing`];
/// `--qos-group NAME` with group limits is [`GroupJoin::CreateOrJoin`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupJoin<'a> {
    /// Join an existing group with its limits; [`GroupError::Uninitialized`] if none exists.
    Existing,
    /// Create the group with these limits if it does not exist, else join it with its own.
    CreateOrJoin(&'a QosLimits),
}

/// What joining a group did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Joined {
    /// This member created the group, with its limits.
    Created,
    /// Joined an existing group (with the limits asked for, if any were).
    Joined,
    /// Joined an existing group whose limits ([`SharedGroup::limits`]) differ from those asked
    /// for. The group's apply; the caller should say so.
    JoinedWithOtherLimits,
}

/// The buckets of one slot, as charging needs them: per lane, sustained then peak (a peak only
/// with a sustained bucket), and the cost settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct View {
    limited: bool,
    costs: QosLimits,
    buckets: [[Option<BucketParams>; 2]; LANES],
}

impl View {
    /// Reads a view from slot words, whatever they hold (see [`BucketParams::from_words`]).
    fn read(word: &dyn Fn(usize) -> u64) -> View {
        let mask = word(W_MASK);
        let optional = |bit: u64, w: usize| (mask & bit != 0).then(|| word(w));
        let costs = QosLimits {
            // 0 would divide by zero in `cost`; a valid slot never holds it.
            iops_size_bytes: optional(M_IOPS_SIZE, W_IOPS_SIZE).filter(|&s| s > 0),
            flush_cost_ops: optional(M_FLUSH_COST, W_FLUSH_COST),
            discard_cost_ops: optional(M_DISCARD_COST, W_DISCARD_COST),
            discard_counts_bytes: mask & M_COUNTS_BYTES != 0,
            ..QosLimits::default()
        };
        let buckets = std::array::from_fn(|lane| {
            let at = |k: usize| word(W_DERIVED + 4 * lane + k);
            let sustained = BucketParams::from_words(at(0), at(1));
            let peak = sustained.and(BucketParams::from_words(at(2), at(3)));
            [sustained, peak]
        });
        View {
            limited: mask & M_LIMITS != 0,
            costs,
            buckets,
        }
    }
}

/// The raw fields of each limit: `[per_sec, burst, max_per_sec, max_length_ms]`.
fn raw_fields(limits: &QosLimits) -> [Option<[Option<u64>; 4]>; LANES] {
    let ops = |l: &Option<OpsLimit>| {
        l.map(|l| {
            [
                Some(l.ops_per_sec),
                l.burst_ops,
                l.max_ops_per_sec,
                l.max_length_ms,
            ]
        })
    };
    let bytes = |l: &Option<BytesLimit>| {
        l.map(|l| {
            let per_sec = Some(l.bytes_per_sec);
            [per_sec, l.burst_bytes, l.max_bytes_per_sec, l.max_length_ms]
        })
    };
    [
        ops(&limits.read_ops),
        ops(&limits.write_ops),
        ops(&limits.total_ops),
        bytes(&limits.read_bytes),
        bytes(&limits.write_bytes),
        bytes(&limits.total_bytes),
    ]
}

/// The slot words of validated `limits`.
fn encode(limits: &QosLimits) -> [u64; SLOT_WORDS] {
    assert!(limits.validate().is_ok(), "encode() of invalid {limits:?}");
    let mut w = [0u64; SLOT_WORDS];
    let mut mask = 0u64;
    for (lane, fields) in raw_fields(limits).iter().enumerate() {
        let Some(fields) = fields else { continue };
        mask |= 1 << lane;
        for (k, value) in fields.iter().enumerate() {
            let Some(value) = value else { continue };
            w[W_RAW + 4 * lane + k] = *value;
            if k > 0 {
                mask |= 1 << (M_OPTIONAL + 3 * lane + k - 1);
            }
        }
    }
    let costs = [
        (M_IOPS_SIZE, W_IOPS_SIZE, limits.iops_size_bytes),
        (M_FLUSH_COST, W_FLUSH_COST, limits.flush_cost_ops),
        (M_DISCARD_COST, W_DISCARD_COST, limits.discard_cost_ops),
    ];
    for (bit, index, value) in costs {
        if let Some(value) = value {
            mask |= bit;
            w[index] = value;
        }
    }
    if limits.discard_counts_bytes {
        mask |= M_COUNTS_BYTES;
    }
    for (lane, spec) in limits.lanes().iter().enumerate() {
        let Some(spec) = spec else { continue };
        let buckets = [Some(spec.sustained), spec.peak];
        for (b, bucket) in buckets.iter().enumerate() {
            let Some(bucket) = bucket else { continue };
            let params = BucketParams::from_spec(*bucket);
            w[W_DERIVED + 4 * lane + 2 * b] = params.rate_per_sec;
            w[W_DERIVED + 4 * lane + 2 * b + 1] = params.tau_ticks;
        }
    }
    w[W_MASK] = mask;
    assert_eq!(mask & !M_KNOWN, 0);
    assert_eq!(mask & M_LIMITS == 0, limits.is_unlimited());
    w
}

/// The limits in slot words, checked: known mask bits only, valid limits, and every other word
/// (derived parameters, unused fields) exactly what [`encode`] writes for them.
fn decode(w: &[u64; SLOT_WORDS]) -> Result<QosLimits, GroupError> {
    let mask = w[W_MASK];
    if mask & !M_KNOWN != 0 {
        return Err(GroupError::Corrupt {
            what: "unknown flags in the limits",
        });
    }
    let field = |lane: usize, k: usize| {
        let set = k == 0 || mask & (1 << (M_OPTIONAL + 3 * lane + k - 1)) != 0;
        set.then_some(w[W_RAW + 4 * lane + k])
    };
    let present = |lane: usize| mask & (1 << lane) != 0;
    let ops = |lane: usize| {
        present(lane).then(|| OpsLimit {
            ops_per_sec: w[W_RAW + 4 * lane],
            burst_ops: field(lane, 1),
            max_ops_per_sec: field(lane, 2),
            max_length_ms: field(lane, 3),
        })
    };
    let bytes = |lane: usize| {
        present(lane).then(|| BytesLimit {
            bytes_per_sec: w[W_RAW + 4 * lane],
            burst_bytes: field(lane, 1),
            max_bytes_per_sec: field(lane, 2),
            max_length_ms: field(lane, 3),
        })
    };
    let optional = |bit: u64, index: usize| (mask & bit != 0).then_some(w[index]);
    let limits = QosLimits {
        read_ops: ops(0),
        write_ops: ops(1),
        total_ops: ops(2),
        read_bytes: bytes(3),
        write_bytes: bytes(4),
        total_bytes: bytes(5),
        iops_size_bytes: optional(M_IOPS_SIZE, W_IOPS_SIZE),
        flush_cost_ops: optional(M_FLUSH_COST, W_FLUSH_COST),
        discard_cost_ops: optional(M_DISCARD_COST, W_DISCARD_COST),
        discard_counts_bytes: mask & M_COUNTS_BYTES != 0,
    };
    limits.validate().map_err(GroupError::CorruptLimits)?;
    if encode(&limits) != *w {
        return Err(GroupError::Corrupt {
            what: "the bucket parameters do not match the limits",
        });
    }
    Ok(limits)
}

impl SharedState {
    /// An all-zero (uninitialized) state on the heap, for groups that live in one process.
    pub(crate) fn zeroed() -> Box<SharedState> {
        let word = |_| AtomicU64::new(0);
        Box::new(SharedState {
            magic: AtomicU64::new(0),
            version: AtomicU64::new(0),
            size_bytes: AtomicU64::new(0),
            boot_id: std::array::from_fn(word),
            generation: AtomicU64::new(0),
            slots: std::array::from_fn(|_| std::array::from_fn(word)),
            cells: Cells(std::array::from_fn(|_| std::array::from_fn(word))),
        })
    }

    /// Validates the block (or initializes it, for a creator) and joins it. The caller must
    /// hold the writer lock: initialization and the reboot reset are writes.
    pub(crate) fn attach(
        &self,
        boot_id: [u64; 2],
        join: GroupJoin<'_>,
    ) -> Result<Joined, GroupError> {
        if let GroupJoin::CreateOrJoin(limits) = join {
            limits.validate().map_err(GroupError::Limits)?;
        }
        let magic = self.magic.load(Ordering::Acquire);
        if magic == 0 {
            let GroupJoin::CreateOrJoin(limits) = join else {
                return Err(GroupError::Uninitialized);
            };
            self.initialize(limits, boot_id);
            return Ok(Joined::Created);
        }
        if magic != MAGIC {
            return Err(GroupError::BadMagic { found: magic });
        }
        let version = self.version.load(Ordering::Relaxed);
        if version != VERSION {
            return Err(GroupError::BadVersion {
                found: version,
                expected: VERSION,
            });
        }
        if self.size_bytes.load(Ordering::Relaxed) != STATE_BYTES as u64 {
            return Err(GroupError::Corrupt {
                what: "the recorded size is not this layout's",
            });
        }
        let current = self.limits()?;
        let recorded = self.boot_id.each_ref().map(|w| w.load(Ordering::Relaxed));
        if recorded != boot_id {
            // Fill times from another boot are on another clock: nobody of that boot is alive,
            // and nobody of this one has charged yet (they all attach under this lock first).
            self.reset_cells();
            for (word, id) in self.boot_id.iter().zip(boot_id) {
                word.store(id, Ordering::Relaxed);
            }
        }
        Ok(match join {
            GroupJoin::CreateOrJoin(requested) if *requested != current => {
                Joined::JoinedWithOtherLimits
            }
            _ => Joined::Joined,
        })
    }

    /// Writes every word of a fresh group, `magic` last: a creator that dies before that leaves
    /// a block that the next creator initializes again.
    fn initialize(&self, limits: &QosLimits, boot_id: [u64; 2]) {
        self.version.store(VERSION, Ordering::Relaxed);
        self.size_bytes.store(STATE_BYTES as u64, Ordering::Relaxed);
        for (word, id) in self.boot_id.iter().zip(boot_id) {
            word.store(id, Ordering::Relaxed);
        }
        self.generation.store(0, Ordering::Relaxed);
        let words = encode(limits);
        for (cell, value) in self.slots[0].iter().zip(words) {
            cell.store(value, Ordering::Relaxed);
        }
        for cell in &self.slots[1] {
            cell.store(0, Ordering::Relaxed);
        }
        self.reset_cells();
        self.magic.store(MAGIC, Ordering::Release);
    }

    /// Every bucket full (a fill time of 0 is in everyone's past).
    fn reset_cells(&self) {
        for cell in self.cells.0.iter().flatten() {
            cell.store(0, Ordering::Relaxed);
        }
    }

    /// The current slot, read by `read` consistently, with its generation: retried while a
    /// writer moves the generation under it, at most [`MAX_READ_ATTEMPTS`] times.
    fn read_current<T>(&self, read: impl Fn(&[AtomicU64; SLOT_WORDS]) -> T) -> (u64, T) {
        for _ in 0..MAX_READ_ATTEMPTS {
            let generation = self.generation.load(Ordering::Acquire);
            let value = read(&self.slots[slot_index(generation)]);
            // Pairs with the writer's release fence before its slot stores: if `read` saw any
            // store of a later writer, the generation below is that writer's or later.
            fence(Ordering::Acquire);
            if self.generation.load(Ordering::Relaxed) == generation {
                return (generation, value);
            }
        }
        let generation = self.generation.load(Ordering::Acquire);
        (generation, read(&self.slots[slot_index(generation)]))
    }

    /// The current view and its generation.
    fn view(&self) -> (u64, View) {
        self.read_current(|slot| View::read(&|i| slot[i].load(Ordering::Relaxed)))
    }

    /// Whether any limit is set; two loads.
    pub(crate) fn is_limited(&self) -> bool {
        let generation = self.generation.load(Ordering::Acquire);
        self.slots[slot_index(generation)][W_MASK].load(Ordering::Relaxed) & M_LIMITS != 0
    }

    /// The current limits, validated.
    pub(crate) fn limits(&self) -> Result<QosLimits, GroupError> {
        let (_, words) =
            self.read_current(|slot| slot.each_ref().map(|w| w.load(Ordering::Relaxed)));
        decode(&words)
    }

    /// The number of limit changes since the group was created.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Charges one request at `now_ticks` to every bucket it counts against.
    pub(crate) fn charge(&self, op: Op, bytes: u64, now_ticks: u64) -> Charge {
        let (_, view) = self.view();
        self.charge_view(&view, op, bytes, now_ticks)
    }

    fn charge_view(&self, view: &View, op: Op, bytes: u64, now_ticks: u64) -> Charge {
        if !view.limited {
            return Charge::default();
        }
        let cost = view.costs.cost(op, bytes);
        let mut total = Charge::default();
        for (lane, units) in lane_charges(&cost) {
            for (cell, params) in self.cells.0[lane].iter().zip(view.buckets[lane]) {
                let Some(p) = params else { continue };
                let step = gcra::charge(cell, units, now_ticks, p);
                total = total.merge(Charge {
                    wait_ns: gcra::ns_ceil(step.wait_ticks),
                    forgiven_nano: step.forgiven_nano(p.rate_per_sec),
                });
            }
        }
        total
    }

    /// [`SharedState::charge`], then, if the request need not wait, tops up `held` to a batch
    /// per lane from buckets that hold the tokens (see `qos::prepaid`).
    pub(crate) fn charge_prepaying(
        &self,
        op: Op,
        bytes: u64,
        now_ticks: u64,
        held: &Prepaid,
    ) -> Refill {
        let (generation, view) = self.view();
        let charge = self.charge_view(&view, op, bytes, now_ticks);
        let batches = view.buckets.map(|[sustained, peak]| {
            let batch = |p: BucketParams| prepay_batch(p.rate_per_sec, p.capacity());
            sustained.map(|s| peak.map_or(batch(s), |p| batch(s).min(batch(p))))
        });
        let granted = held.top_up(generation, &batches, charge, |lane, units| {
            self.try_take(lane, &view, units, now_ticks)
        });
        Refill {
            charge,
            generation,
            costs: view.costs,
            batches,
            granted,
        }
    }

    /// Takes `units` from every bucket of `lane` if each holds them, else from none.
    fn try_take(&self, lane: usize, view: &View, units: u64, now_ticks: u64) -> bool {
        let [sustained_cell, peak_cell] = &self.cells.0[lane];
        let [Some(sustained), peak] = view.buckets[lane] else {
            return false;
        };
        if !gcra::try_take(sustained_cell, units, now_ticks, sustained) {
            return false;
        }
        match peak {
            Some(p) if !gcra::try_take(peak_cell, units, now_ticks, p) => {
                gcra::refund(sustained_cell, units, sustained);
                false
            }
            _ => true,
        }
    }

    /// Changes the limits at `now_ticks`; see the module documentation. The caller must hold
    /// the writer lock.
    pub(crate) fn set_limits(&self, limits: &QosLimits, now_ticks: u64) -> Result<(), GroupError> {
        limits.validate().map_err(GroupError::Limits)?;
        let generation = self.generation.load(Ordering::Acquire);
        let old = View::read(&|i| self.slots[slot_index(generation)][i].load(Ordering::Relaxed));
        let words = encode(limits);
        let next = generation.wrapping_add(1);
        // Orders the generation this writer read (and so every earlier writer's stores) before
        // its slot stores, for readers that see one of them (see `read_current`).
        fence(Ordering::Release);
        for (cell, value) in self.slots[slot_index(next)].iter().zip(words) {
            cell.store(value, Ordering::Relaxed);
        }
        self.generation.store(next, Ordering::Release);
        let new = View::read(&|i| words[i]);
        for (lane, cells) in self.cells.0.iter().enumerate() {
            for (b, cell) in cells.iter().enumerate() {
                match (old.buckets[lane][b], new.buckets[lane][b]) {
                    // Gone: reset, so that a limit added later starts full.
                    (_, None) => cell.store(0, Ordering::Relaxed),
                    (before, Some(after)) if before == Some(after) => {}
                    (before, Some(after)) => gcra::reconfigure(cell, now_ticks, before, after),
                }
            }
        }
        Ok(())
    }
}

fn slot_index(generation: u64) -> usize {
    usize::from(generation % 2 == 1)
}

/// Where a [`SharedState`] lives, and how its writers are kept apart.
pub(crate) trait SharedRegion: Send + Sync + fmt::Debug {
    /// The state, attached (validated) before the region was handed to a [`SharedGroup`].
    fn state(&self) -> &SharedState;

    /// The file the state is mapped from, if any.
    fn path(&self) -> Option<&Path>;

    /// Runs `f` while no other writer of this state runs, in any process.
    fn exclusive(&self, f: &mut dyn FnMut(&SharedState)) -> io::Result<()>;
}

/// A group that lives in this process's memory, for tests and single-process use.
#[derive(Debug)]
struct InMemory {
    state: Box<SharedState>,
    writers: Mutex<()>,
}

impl SharedRegion for InMemory {
    fn state(&self) -> &SharedState {
        &self.state
    }

    fn path(&self) -> Option<&Path> {
        None
    }

    fn exclusive(&self, f: &mut dyn FnMut(&SharedState)) -> io::Result<()> {
        let _writer = self.writers.lock().unwrap_or_else(PoisonError::into_inner);
        f(&self.state);
        Ok(())
    }
}

/// Limits shared by several devices (one tenant) **across processes**: the buckets live in
/// memory that every member maps (`sys::shm::open_group`), and are charged lock-free.
/// Cloning gives another handle to the same buckets; pass one to each device's
/// [`super::Limiter::new`] (through [`super::GroupRef`]).
///
/// Semantics are those of [`super::QosGroup`] (same [`QosLimits`], same costs, debt, FIFO,
/// capped debt, live changes that keep levels), with the differences listed in the
/// documentation of `qos::gcra` (1/16 ns rounding, one year of burst at most) and of this
/// module (requests racing a limits change).
#[derive(Clone, Debug)]
pub struct SharedGroup {
    region: Arc<dyn SharedRegion>,
}

impl SharedGroup {
    /// A group over an attached region.
    pub(crate) fn from_region(region: Arc<dyn SharedRegion>) -> SharedGroup {
        SharedGroup { region }
    }

    /// A group in this process's memory, with full buckets: the shared algorithm without a
    /// file (for tests, and wherever one process is enough).
    pub fn in_memory(limits: &QosLimits) -> Result<SharedGroup, GroupError> {
        let state = SharedState::zeroed();
        let joined = state.attach([0, 0], GroupJoin::CreateOrJoin(limits))?;
        assert_eq!(joined, Joined::Created);
        Ok(SharedGroup::from_region(Arc::new(InMemory {
            state,
            writers: Mutex::new(()),
        })))
    }

    /// Changes the group's limits at `now`, for every member in every process; see the module
    /// documentation. On a validation error nothing changes.
    pub fn set_limits(&self, limits: &QosLimits, now: Duration) -> Result<(), GroupError> {
        limits.validate().map_err(GroupError::Limits)?;
        let mut outcome = Ok(());
        self.region
            .exclusive(&mut |state| outcome = state.set_limits(limits, gcra::ticks(nanos(now))))
            .map_err(GroupError::Lock)?;
        outcome
    }

    /// The group's current limits; an error only if another process scribbled on them.
    pub fn limits(&self) -> Result<QosLimits, GroupError> {
        self.region.state().limits()
    }

    /// The group's file (`None` for [`SharedGroup::in_memory`]).
    pub fn path(&self) -> Option<&Path> {
        self.region.path()
    }

    /// How many times the limits changed since the group was created: a member sees a change
    /// as a new generation.
    pub fn generation(&self) -> u64 {
        self.region.state().generation()
    }

    pub(crate) fn is_limited(&self) -> bool {
        self.region.state().is_limited()
    }

    pub(crate) fn charge(&self, op: Op, bytes: u64, now_ns: u64) -> Charge {
        self.region.state().charge(op, bytes, gcra::ticks(now_ns))
    }

    pub(crate) fn charge_prepaying(
        &self,
        op: Op,
        bytes: u64,
        now_ns: u64,
        held: &Prepaid,
    ) -> Refill {
        let state = self.region.state();
        state.charge_prepaying(op, bytes, gcra::ticks(now_ns), held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qos::limits::{MAX_BURST, MAX_BURST_LENGTH_MS, MAX_RATE_PER_SEC, MIN_BYTES};

    fn every_field() -> QosLimits {
        QosLimits {
            read_ops: Some(OpsLimit {
                burst_ops: Some(MAX_BURST),
                max_ops_per_sec: Some(MAX_RATE_PER_SEC),
                max_length_ms: Some(MAX_BURST_LENGTH_MS),
                ..OpsLimit::per_sec(MAX_RATE_PER_SEC - 1)
            }),
            write_ops: Some(OpsLimit::per_sec(1)),
            total_ops: Some(OpsLimit {
                max_ops_per_sec: Some(2000),
                ..OpsLimit::per_sec(1000)
            }),
            read_bytes: Some(BytesLimit {
                burst_bytes: Some(MIN_BYTES),
                ..BytesLimit::per_sec(MIN_BYTES)
            }),
            write_bytes: None,
            total_bytes: Some(BytesLimit {
                max_bytes_per_sec: Some(2 << 20),
                max_length_ms: Some(1),
                ..BytesLimit::per_sec(1 << 20)
            }),
            iops_size_bytes: Some(4096),
            flush_cost_ops: Some(0),
            discard_cost_ops: Some(7),
            discard_counts_bytes: true,
        }
    }

    #[test]
    fn limits_round_trip_through_a_slot() {
        for limits in [QosLimits::default(), every_field()] {
            assert_eq!(decode(&encode(&limits)).unwrap(), limits);
        }
    }

    #[test]
    fn a_scribbled_slot_is_refused_not_trusted() {
        let good = encode(&every_field());
        // Every single-word change is either refused or decodes to what it says; none panics.
        for i in 0..SLOT_WORDS {
            for value in [0, 1, u64::MAX, good[i] ^ 1, good[i].wrapping_add(1 << 40)] {
                let mut w = good;
                w[i] = value;
                if let Ok(limits) = decode(&w) {
                    assert_eq!(encode(&limits), w);
                }
                let view = View::read(&|k| w[k]);
                let state = SharedState::zeroed();
                state
                    .attach([0, 0], GroupJoin::CreateOrJoin(&every_field()))
                    .unwrap();
                for (cell, word) in state.slots[0].iter().zip(w) {
                    cell.store(word, Ordering::Relaxed);
                }
                assert_eq!(state.view().1, view);
                for op in [Op::Read, Op::Write, Op::Flush, Op::Discard] {
                    let _ = state.charge(op, 1 << 20, 1 << 40);
                }
            }
        }
        let mut w = good;
        w[W_MASK] |= 1 << 40;
        assert!(matches!(decode(&w), Err(GroupError::Corrupt { .. })));
        let mut w = good;
        w[W_DERIVED] += 1;
        assert!(matches!(decode(&w), Err(GroupError::Corrupt { .. })));
        let mut w = good;
        w[W_RAW + 4] = 0; // write_ops at 0/s
        assert!(matches!(decode(&w), Err(GroupError::CorruptLimits(_))));
    }

    #[test]
    fn attaching_checks_magic_version_size_and_limits() {
        let limits = every_field();
        let state = SharedState::zeroed();
        assert!(matches!(
            state.attach([1, 2], GroupJoin::Existing),
            Err(GroupError::Uninitialized)
        ));
        let bad = QosLimits {
            read_ops: Some(OpsLimit::per_sec(0)),
            ..QosLimits::default()
        };
        assert!(matches!(
            state.attach([1, 2], GroupJoin::CreateOrJoin(&bad)),
            Err(GroupError::Limits(_))
        ));
        let create = GroupJoin::CreateOrJoin(&limits);
        assert_eq!(state.attach([1, 2], create).unwrap(), Joined::Created);
        assert_eq!(state.attach([1, 2], create).unwrap(), Joined::Joined);
        assert_eq!(
            state.attach([1, 2], GroupJoin::Existing).unwrap(),
            Joined::Joined
        );
        let other = GroupJoin::CreateOrJoin(&QosLimits::default());
        assert_eq!(
            state.attach([1, 2], other).unwrap(),
            Joined::JoinedWithOtherLimits
        );
        assert_eq!(state.limits().unwrap(), limits);
        state.version.store(2, Ordering::Relaxed);
        assert!(matches!(
            state.attach([1, 2], create),
            Err(GroupError::BadVersion {
                found: 2,
                expected: 1
            })
        ));
        state.version.store(VERSION, Ordering::Relaxed);
        state.size_bytes.store(8, Ordering::Relaxed);
        assert!(matches!(
            state.attach([1, 2], create),
            Err(GroupError::Corrupt { .. })
        ));
        state
            .size_bytes
            .store(STATE_BYTES as u64, Ordering::Relaxed);
        state
            .magic
            .store(u64::from_le_bytes(*b"notqosgp"), Ordering::Relaxed);
        let err = state.attach([1, 2], create).unwrap_err();
        assert!(matches!(err, GroupError::BadMagic { .. }));
        assert!(err.to_string().contains("not a mesoblk QoS group"), "{err}");
    }

    #[test]
    fn a_creator_that_died_midway_is_recreated() {
        let state = SharedState::zeroed();
        // Everything but the magic written, and garbage in the cells.
        state.version.store(VERSION, Ordering::Relaxed);
        state.cells.0[2][0].store(u64::MAX, Ordering::Relaxed);
        state.slots[0][W_MASK].store(u64::MAX, Ordering::Relaxed);
        let limits = QosLimits {
            total_ops: Some(OpsLimit::per_sec(10)),
            ..QosLimits::default()
        };
        let joined = state.attach([0, 0], GroupJoin::CreateOrJoin(&limits));
        assert_eq!(joined.unwrap(), Joined::Created);
        assert_eq!(state.limits().unwrap(), limits);
        assert_eq!(state.charge(Op::Read, 4096, 0).wait_ns, 0);
    }

    #[test]
    fn a_new_boot_refills_every_bucket() {
        let limits = QosLimits {
            total_ops: Some(OpsLimit::per_sec(10)),
            ..QosLimits::default()
        };
        let state = SharedState::zeroed();
        state
            .attach([7, 7], GroupJoin::CreateOrJoin(&limits))
            .unwrap();
        // Deep in debt at an uptime of 10 days.
        let late = gcra::ticks(10 * 86_400 * 1_000_000_000);
        for _ in 0..100 {
            let _ = state.charge(Op::Read, 4096, late);
        }
        // The same boot: still in debt a minute into... the same clock.
        state.attach([7, 7], GroupJoin::Existing).unwrap();
        assert!(state.charge(Op::Read, 4096, late).wait_ns > 0);
        // After a reboot the clock restarts near 0: without the reset this would wait 10 days.
        state.attach([8, 8], GroupJoin::Existing).unwrap();
        assert_eq!(state.charge(Op::Read, 4096, gcra::ticks(60)).wait_ns, 0);
    }
}
