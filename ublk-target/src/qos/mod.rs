//! Per-device and per-group I/O throttling (QoS): token buckets that tell a queue thread how
//! long to hold a request before running it.
//!
//! Pure: no kernel, no I/O, no `unsafe`, and no clock reads outside [`MonotonicClock`] (a
//! [`SharedGroup`]'s memory is mapped by `sys::shm`; everything here only sees it as atomics).
//! The data path owns the waiting: before running a request it calls [`Limiter::admit`] with
//! the request's op, its length and the time from a [`Clock`], then awaits the [`Admission`]
//! while holding the request's tag, so a throttled device pushes back on blk-mq through tag
//! shortage; throttling is never an error.
//!
//! # What counts against which limit
//!
//! A [`QosLimits`] has up to six limits: `read_ops`, `write_ops`, `total_ops` ([`OpsLimit`])
//! and `read_bytes`, `write_bytes`, `total_bytes` ([`BytesLimit`]). A request is charged:
//!
//! | request | counts against | ops cost | bytes cost |
//! |---|---|---|---|
//! | READ of N bytes | `read_*`, `total_*` | 1, or `max(1, ceil(N / iops_size_bytes))` | N |
//! | WRITE of N > 0 bytes | `write_*`, `total_*` | as READ | N |
//! | FLUSH, or WRITE of 0 bytes | `total_ops` | `flush_cost_ops` (default 1) | 0 |
//! | DISCARD, WRITE_ZEROES | `write_*`, `total_*` | `discard_cost_ops` (default 1) | 0 (*) |
//!
//! DISCARD and WRITE_ZEROES move no data through the daemon, so by default their ops cost does
//! not depend on their length (no `iops_size_bytes` normalization) and they cost no bytes.
//! (*) With `discard_counts_bytes`, one of N bytes also costs N bytes.
//! A cost of 0 (a free op, or no bytes) neither pays nor waits behind other requests' debt.
//! A device's limits and its group's limits are separate [`QosLimits`], each with its own costs.
//!
//! # Buckets, bursts and debt
//!
//! Each limit with sustained rate `r` per second and `burst` B (default: `r` × 1 s) is:
//!
//! - without a peak rate: one bucket refilling at `r`, holding at most B. After an idle period
//!   B units pass at once, then `r` per second.
//! - with a peak rate `m` (`max_*_per_sec`, > `r`) and a burst length L (`max_length_ms`,
//!   default 1 s): two buckets, and a request needs both.
//!   - a *peak* bucket refilling at `m`, holding B;
//!   - a *sustained* bucket refilling at `r`, holding `B + (m − r) × L`.
//!
//!   After a long enough idle period B units pass at once, then `m` per second for exactly L,
//!   then `r` per second.
//!
//!   This differs from QEMU's `*-max`/`*-max-length` on purpose. QEMU sizes its main bucket
//!   `m × L` and drains it at `m − r` during a burst, so its bursts last `m / (m − r)` times
//!   longer than L; here L is exact. QEMU's second bucket (size `m / 10`) plays the role of the
//!   peak bucket here, whose size is B.
//!
//! Buckets start full. [`Limiter::admit`] **debits every bucket the request counts against
//! immediately**, going into debt if they lack tokens, and answers with the time until the
//! deepest debt it made is repaid ([`Admission::WaitFor`]), or [`Admission::Go`] if no bucket
//! went negative. Consequences:
//!
//! - order is FIFO per bucket: a later request waits behind earlier debt, so nothing starves;
//! - an I/O larger than a bucket is admitted and waits in proportion to its size, never
//!   forever;
//! - in steady state a bucket passes exactly its rate, whatever the number of waiters;
//! - a request is charged to all its buckets at admission, including those it does not wait
//!   for. Over any window starting from full buckets, a bucket of rate `r` and capacity C never
//!   lets more than `r × window + C` run; a sliding window can see more by at most what was
//!   charged to it by requests still waiting on another bucket (bounded by the queue depth).
//!
//! Debt is capped at one hour of a bucket's own rate (`MAX_DEBT_NS`): a charge that would go
//! deeper is forgiven the excess and counted in [`LimiterStats::debt_capped_ops`]. With the
//! data path's bounded queue depth this only happens under absurd settings (a queue's worth of
//! I/O needing more than an hour), and it bounds every wait.
//!
//! # Groups: in one process or across processes
//!
//! A device may belong to one group (one tenant), whose buckets it is charged to as well as its
//! own ([`GroupRef`]):
//!
//! - [`QosGroup`]: buckets behind a mutex, for devices served by one process.
//! - [`SharedGroup`]: for devices served by *different* processes (each device has its own
//!   server process, for crash isolation). Its buckets live in a small file that every member
//!   maps (`<run dir>/qos-groups/<name>.qos`, see `sys::shm`), one `AtomicU64` per bucket,
//!   charged with compare-and-swap: no lock in the data path, so a member that dies at any
//!   point cannot block the others. Same [`QosLimits`], same costs, debt, FIFO order, capped
//!   debt and live changes as in-process; the algorithm (GCRA with debt) and the small
//!   differences (1/16 ns rounding, toward stricter; bursts of at most a year of the rate;
//!   requests racing a limits change) are in `qos::gcra` and `qos::shared`. The first member
//!   creates the group with its limits, later ones join with the group's limits
//!   ([`GroupJoin`]); limits change only with [`SharedGroup::set_limits`], seen by every member
//!   at its next request.
//!
//! # Changing limits
//!
//! [`Limiter::set_limits`], [`QosGroup::set_limits`] and [`SharedGroup::set_limits`] act on
//! live limiters. A limit that stays keeps its current level, cut to the new capacity, and its
//! debt: lowering takes effect at once, and raising grants no tokens (the bucket then fills at
//! the new rate up to the new capacity). A limit that appears starts full; one that goes away
//! is dropped.
//!
//! # Concurrency and cost
//!
//! [`Limiter`], [`QosGroup`] and [`SharedGroup`] are `Send + Sync` and shared by the queue
//! threads of a device (and, for a group, of several devices). With no limit set and no group,
//! [`Limiter::admit`] is one relaxed atomic load and returns [`Admission::Go`] without locking
//! (a group adds one or two loads to learn it is unlimited). With limits, it takes the device's
//! mutex once (and a [`QosGroup`]'s once, never both at the same time) for a few integer
//! operations per bucket; a [`SharedGroup`] costs one compare-and-swap per bucket instead. A
//! timestamp taken before another thread's later one is handled: buckets never go back in
//! time, and the wait is measured from the caller's own `now`.
//!
//! The data path does not call [`Limiter::admit`] directly: each queue thread has a
//! [`QueueLimiter`], which takes tokens from the buckets a batch at a time while they are
//! plentiful, so that a request that is not throttled takes no lock and changes no shared
//! memory. Rates stay exact; a burst after idle may exceed the capacity by one batch per queue
//! (at most 1 ms of the rate and 1/64 of the capacity); see `qos::prepaid`.
//!
//! # Time
//!
//! `now` is a [`Duration`] since a [`Clock`]'s origin; every limiter sharing a group must read
//! the same origin. [`MonotonicClock`] is `CLOCK_MONOTONIC` itself, whose origin every process
//! of the machine shares, as a [`SharedGroup`] needs. Time saturates at `u64::MAX` nanoseconds
//! (in a [`SharedGroup`], at 2^60 ns, 36 years of uptime), and all bucket arithmetic is exact
//! integer math that cannot overflow for any `u64` rate, capacity, cost or idle gap.
//!
//! # Panics
//!
//! Only on a broken internal invariant (a bucket level outside `[floor, capacity]`), and in
//! [`ManualClock::set`] when told to go back in time. Invalid limits are rejected with
//! [`QosError`] before any bucket is built. Nothing a [`SharedGroup`]'s other members (or a
//! corrupted file) write can make this module panic: shared words are never trusted.

mod bucket;
mod clock;
mod gcra;
mod limits;
mod prepaid;
#[cfg(test)]
mod prepaid_tests;
mod shared;
#[cfg(test)]
mod shared_tests;
#[cfg(test)]
pub(crate) mod sim;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use self::bucket::{BucketSet, Charge};
pub use self::clock::{CachedClock, Clock, ManualClock, MonotonicClock};
pub use self::limits::{
    BytesLimit, OpsLimit, QosError, QosLimits, DEFAULT_DISCARD_COST_OPS, DEFAULT_FLUSH_COST_OPS,
    DEFAULT_MAX_LENGTH_MS, MAX_BURST, MAX_BURST_LENGTH_MS, MAX_IOPS_SIZE_BYTES, MAX_OP_COST_OPS,
    MAX_RATE_PER_SEC, MIN_BYTES,
};
pub use self::prepaid::QueueLimiter;
pub use self::shared::{GroupError, GroupJoin, Joined, SharedGroup};
pub(crate) use self::shared::{SharedRegion, SharedState, STATE_BYTES};
use crate::request::Op;

/// What the limiter says about one request.
#[must_use = "a throttled request must wait before it runs"]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Run it now.
    Go,
    /// Hold it (and its tag) this long, then run it. Its tokens are already taken: do not ask
    /// again.
    WaitFor(Duration),
}

impl Admission {
    /// How long to wait: zero for [`Admission::Go`].
    pub fn wait(self) -> Duration {
        match self {
            Admission::Go => Duration::ZERO,
            Admission::WaitFor(d) => d,
        }
    }
}

/// Throttling counters of one [`Limiter`], cumulative since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimiterStats {
    /// Requests told to wait.
    pub throttled_ops: u64,
    /// Total time requests were told to wait (saturating), nanoseconds.
    pub throttled_ns: u64,
    /// Requests whose charge hit the debt cap somewhere and was partly forgiven.
    pub debt_capped_ops: u64,
}

/// A bucket set behind a mutex, with a lock-free "is anything limited" flag.
#[derive(Debug)]
struct Shared {
    /// Mirrors `state.is_limited()`; read without the lock. Relaxed is enough: a reader that
    /// misses a concurrent `set_limits` behaves as if it had run just before it.
    limited: AtomicBool,
    /// Bumped (under the lock) by every limits change, so that queues drop prepaid tokens.
    generation: AtomicU64,
    state: Mutex<BucketSet>,
}

impl Shared {
    fn new(limits: &QosLimits, now: Duration) -> Result<Shared, QosError> {
        limits.validate()?;
        let set = BucketSet::new(limits, nanos(now));
        Ok(Shared {
            limited: AtomicBool::new(set.is_limited()),
            generation: AtomicU64::new(0),
            state: Mutex::new(set),
        })
    }

    /// The state, even if a thread panicked holding it: every update leaves the buckets
    /// consistent (the asserts run before anything is written back), so poisoning carries no
    /// information here.
    fn lock(&self) -> MutexGuard<'_, BucketSet> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_limited(&self) -> bool {
        self.limited.load(Ordering::Relaxed)
    }

    /// The number of limits changes so far. Relaxed, like `limited`: a queue that misses a
    /// concurrent change spends tokens as if it had run just before it.
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    fn charge(&self, op: Op, bytes: u64, now_ns: u64) -> Charge {
        self.lock().charge(op, bytes, now_ns)
    }

    fn set_limits(&self, limits: &QosLimits, now: Duration) -> Result<(), QosError> {
        limits.validate()?;
        let mut state = self.lock();
        state.reconfigure(limits, nanos(now));
        self.limited.store(state.is_limited(), Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn limits(&self) -> QosLimits {
        *self.lock().limits()
    }
}

/// Limits shared by several devices (one tenant). Cloning gives another handle to the same
/// buckets; pass one to each device's [`Limiter::new`].
#[derive(Clone, Debug)]
pub struct QosGroup {
    shared: Arc<Shared>,
}

impl QosGroup {
    /// A group with full buckets at `now`.
    pub fn new(limits: &QosLimits, now: Duration) -> Result<QosGroup, QosError> {
        Ok(QosGroup {
            shared: Arc::new(Shared::new(limits, now)?),
        })
    }

    /// Changes the group's limits at `now`; see the module documentation. On error nothing
    /// changes.
    pub fn set_limits(&self, limits: &QosLimits, now: Duration) -> Result<(), QosError> {
        self.shared.set_limits(limits, now)
    }

    /// The group's current limits.
    pub fn limits(&self) -> QosLimits {
        self.shared.limits()
    }
}

/// The group a device is in: in this process, or shared by several processes.
#[derive(Clone, Debug)]
pub enum GroupRef {
    /// A group whose members are all in this process.
    Local(QosGroup),
    /// A group whose members may be in other processes.
    Shared(SharedGroup),
}

impl From<QosGroup> for GroupRef {
    fn from(group: QosGroup) -> GroupRef {
        GroupRef::Local(group)
    }
}

impl From<SharedGroup> for GroupRef {
    fn from(group: SharedGroup) -> GroupRef {
        GroupRef::Shared(group)
    }
}

impl GroupRef {
    /// Changes the group's limits at `now`, for every member.
    pub fn set_limits(&self, limits: &QosLimits, now: Duration) -> Result<(), GroupError> {
        match self {
            GroupRef::Local(g) => g.set_limits(limits, now).map_err(GroupError::Limits),
            GroupRef::Shared(g) => g.set_limits(limits, now),
        }
    }

    /// The group's current limits (a shared group's can fail to read if scribbled on).
    pub fn limits(&self) -> Result<QosLimits, GroupError> {
        match self {
            GroupRef::Local(g) => Ok(g.limits()),
            GroupRef::Shared(g) => g.limits(),
        }
    }

    fn is_limited(&self) -> bool {
        match self {
            GroupRef::Local(g) => g.shared.is_limited(),
            GroupRef::Shared(g) => g.is_limited(),
        }
    }

    fn charge(&self, op: Op, bytes: u64, now_ns: u64) -> Charge {
        match self {
            GroupRef::Local(g) => g.shared.charge(op, bytes, now_ns),
            GroupRef::Shared(g) => g.charge(op, bytes, now_ns),
        }
    }
}

/// One device's throttle: its own buckets plus, optionally, its group's.
#[derive(Debug)]
pub struct Limiter {
    own: Shared,
    group: Option<GroupRef>,
    throttled_ops: AtomicU64,
    throttled_ns: AtomicU64,
    debt_capped_ops: AtomicU64,
}

impl Limiter {
    /// A limiter with full buckets at `now`, in `group` if given (`Some(group.into())` for
    /// either kind).
    pub fn new(
        limits: &QosLimits,
        group: Option<GroupRef>,
        now: Duration,
    ) -> Result<Limiter, QosError> {
        Ok(Limiter {
            own: Shared::new(limits, now)?,
            group,
            throttled_ops: AtomicU64::new(0),
            throttled_ns: AtomicU64::new(0),
            debt_capped_ops: AtomicU64::new(0),
        })
    }

    /// A limiter that limits nothing (until [`set_limits`](Self::set_limits)).
    pub fn unlimited() -> Limiter {
        Limiter::new(&QosLimits::default(), None, Duration::ZERO).expect("no limits are valid")
    }

    /// Charges one request of `op` and `bytes` (its length; ignored for FLUSH) at `now`, and says
    /// how long it must wait. The tokens are taken now, whatever the answer.
    pub fn admit(&self, op: Op, bytes: u64, now: Duration) -> Admission {
        let own = self.own.is_limited();
        let group = self.group.as_ref().filter(|g| g.is_limited());
        if !own && group.is_none() {
            return Admission::Go;
        }
        let now_ns = nanos(now);
        let mut charge = Charge::default();
        // One lock at a time, never nested: no lock order to get wrong.
        if own {
            charge = charge.merge(self.own.charge(op, bytes, now_ns));
        }
        if let Some(group) = group {
            charge = charge.merge(group.charge(op, bytes, now_ns));
        }
        self.account(charge)
    }

    /// Counts a request's charge in the stats and turns it into an admission.
    fn account(&self, charge: Charge) -> Admission {
        if charge.forgiven_nano > 0 {
            self.debt_capped_ops.fetch_add(1, Ordering::Relaxed);
        }
        if charge.wait_ns == 0 {
            return Admission::Go;
        }
        // Counted with fetch_add (not under a lock) because group and device are charged under
        // different locks; only throttled requests pay for it.
        self.throttled_ops.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .throttled_ns
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some(t.saturating_add(charge.wait_ns))
            });
        Admission::WaitFor(Duration::from_nanos(charge.wait_ns))
    }

    /// Changes this device's own limits at `now` while other threads keep admitting; see the
    /// module documentation. On error nothing changes. The group, if any, is unaffected.
    pub fn set_limits(&self, limits: &QosLimits, now: Duration) -> Result<(), QosError> {
        self.own.set_limits(limits, now)
    }

    /// This device's own current limits.
    pub fn limits(&self) -> QosLimits {
        self.own.limits()
    }

    /// The group this device is in.
    pub fn group(&self) -> Option<&GroupRef> {
        self.group.as_ref()
    }

    /// The throttling counters so far.
    pub fn stats(&self) -> LimiterStats {
        LimiterStats {
            throttled_ops: self.throttled_ops.load(Ordering::Relaxed),
            throttled_ns: self.throttled_ns.load(Ordering::Relaxed),
            debt_capped_ops: self.debt_capped_ops.load(Ordering::Relaxed),
        }
    }
}

/// `now` in nanoseconds, saturating at `u64::MAX` (584 years).
fn nanos(now: Duration) -> u64 {
    u64::try_from(now.as_nanos()).unwrap_or(u64::MAX)
}
