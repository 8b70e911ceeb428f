//! Token buckets whose whole state is one `AtomicU64`, for groups shared by several processes:
//! the generic cell rate algorithm (GCRA) with debt. No locking, no clock, no `unsafe`: every
//! function takes the time, and the cells may live in memory other processes map too.
//!
//! # State
//!
//! A bucket of rate `r` units per second and capacity `C` units is one number `E`, its *fill
//! time*: the instant (in ticks of 1/16 ns on the group's clock) at which the bucket will be
//! full again. At time `T` the bucket holds
//!
//! ```text
//! level(T) = C - max(0, E - T) × r        (negative: debt)
//! ```
//!
//! so `E <= T` is a full bucket, and `τ = C / r` (in ticks) is how far ahead of `T` the fill time
//! may run before the bucket is empty. Charging `u` units at `T` is one compare-and-swap:
//!
//! ```text
//! E' = max(E, T) + u / r          (rounded up to a tick; the debt cap below aside)
//! wait = max(0, E' - T - τ)       (rounded up to a nanosecond: never early)
//! ```
//!
//! which is exactly [`super::bucket::Bucket`]'s debit-then-wait for a bucket that is not read
//! with stale timestamps (the differential test below checks it). Rates and capacities come from
//! the same [`super::limits::BucketSpec`] as in-process buckets.
//!
//! # Guarantees
//!
//! - **Never more than `r × window + C`** over a window starting full (E ≤ T₀): every charge
//!   moves `E` forward by at least its cost, and a request ready at `R` left `E' <= R + τ`, so
//!   the costs of everything ready by `T₀ + w` sum to at most `w + τ` ticks, i.e.
//!   `r × w + C` units. This holds whatever the interleaving of processes and threads and
//!   whatever their timestamps, because `E` is only ever moved by compare-and-swap.
//! - **Rounding is conservative**: costs round up and `τ` rounds down, to 1/16 ns. Per request
//!   that is at most 1/16 ns of the lane's rate, under 0.1% for any request worth more than
//!   64 ns (4 KiB at up to 64 GB/s, any ops limit up to 15 M ops/s).
//! - **FIFO**: a later charge lands behind every earlier one (in compare-and-swap order).
//! - **Debt is capped** at [`MAX_DEBT_NS`] of the bucket's rate past empty, as in-process: the
//!   excess is forgiven and reported, and `E` never moves backwards, so a caller with a stale
//!   timestamp cannot undo others' charges (it may be forgiven more, at the cap only).
//! - **Lock-free**: no step holds anything; a process that dies between two steps leaves every
//!   cell valid. The retry loops are bounded ([`MAX_CAS_ATTEMPTS`]); past the bound (only under
//!   pathological contention) a charge falls back to a single `fetch_max`, which may lose that
//!   one charge but never blocks and never moves `E` back.
//!
//! # Limits of the representation
//!
//! Ticks are `u64`: time saturates at 2^64 ticks (about 36 years of `CLOCK_MONOTONIC`, i.e. of
//! uptime). A bucket holding more than [`MAX_TAU_NS`] (one year) of its own rate is treated as
//! holding exactly one year's worth: stricter than asked, never looser.

use std::sync::atomic::{AtomicU64, Ordering};

use super::bucket::MAX_DEBT_NS;
use super::limits::{BucketSpec, MAX_RATE_PER_SEC};

/// Ticks per nanosecond: the resolution of fill times and costs.
pub(crate) const TICKS_PER_NS: u64 = 16;
/// Ticks per second.
const TICKS_PER_SEC: u128 = TICKS_PER_NS as u128 * 1_000_000_000;
/// The debt cap, in ticks.
pub(crate) const MAX_DEBT_TICKS: u64 = MAX_DEBT_NS * TICKS_PER_NS;
/// The longest a bucket may take to fill from empty: one year.
pub(crate) const MAX_TAU_NS: u64 = 365 * 24 * 3_600 * 1_000_000_000;
/// [`MAX_TAU_NS`] in ticks.
pub(crate) const MAX_TAU_TICKS: u64 = MAX_TAU_NS * TICKS_PER_NS;
/// Compare-and-swap attempts before a charge or a conversion falls back to one unconditional
/// step. Each failed attempt (spurious failures aside) means another charge succeeded, so this
/// is only reached under absurd contention (or a writer scribbling on the cell).
pub(crate) const MAX_CAS_ATTEMPTS: u32 = 1 << 16;

// Fill times stay representable: `T + τ + debt` leaves 35 years of clock below 2^64 ticks.
const _: () = assert!((MAX_TAU_TICKS as u128 + MAX_DEBT_TICKS as u128) < (u64::MAX as u128) / 16);
const _: () = assert!(MAX_DEBT_TICKS / TICKS_PER_NS == MAX_DEBT_NS);
// A cost in ticks is `units × TICKS_PER_SEC`, at most 2^64 × 2^34 = 2^98: no u128 overflow.
const _: () = assert!(TICKS_PER_SEC < 1 << 34);
// A level in unit-ticks is (τ - deficit) × rate with both bounded first (see
// `level_unit_ticks`): it fits in i128 with room to spare.
const _: () = assert!(
    (MAX_TAU_TICKS as u128 + MAX_DEBT_TICKS as u128) * (MAX_RATE_PER_SEC as u128)
        < i128::MAX as u128 / 4
);

/// `ns` in ticks, saturating.
pub(crate) fn ticks(ns: u64) -> u64 {
    ns.saturating_mul(TICKS_PER_NS)
}

/// `ticks` in nanoseconds, rounded up (a wait must never end early).
pub(crate) fn ns_ceil(ticks: u64) -> u64 {
    ticks.div_ceil(TICKS_PER_NS)
}

/// One bucket's parameters as the shared algorithm uses them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BucketParams {
    /// Units per second; at least 1.
    pub(crate) rate_per_sec: u64,
    /// Capacity as time at the rate, in ticks; at most [`MAX_TAU_TICKS`].
    pub(crate) tau_ticks: u64,
}

impl BucketParams {
    /// The parameters of a validated bucket spec: `τ = C / r`, rounded down, at most a year.
    pub(crate) fn from_spec(spec: BucketSpec) -> BucketParams {
        assert!(spec.rate_per_sec >= 1 && spec.capacity >= 1, "{spec:?}");
        let tau = u128::from(spec.capacity) * TICKS_PER_SEC / u128::from(spec.rate_per_sec);
        let params = BucketParams {
            rate_per_sec: spec.rate_per_sec,
            tau_ticks: u64::try_from(tau).unwrap_or(u64::MAX).min(MAX_TAU_TICKS),
        };
        assert!(params.tau_ticks <= MAX_TAU_TICKS);
        params
    }

    /// Parameters read back from memory another process may have scribbled on: `None` for a
    /// rate of 0 (no bucket), and `τ` clamped, so that no later arithmetic can divide by zero
    /// or overflow whatever the words hold.
    pub(crate) fn from_words(rate_per_sec: u64, tau_ticks: u64) -> Option<BucketParams> {
        (rate_per_sec != 0).then_some(BucketParams {
            rate_per_sec,
            tau_ticks: tau_ticks.min(MAX_TAU_TICKS),
        })
    }

    /// The capacity in units, `τ × r`, rounded down.
    pub(crate) fn capacity(self) -> u64 {
        let units = u128::from(self.tau_ticks.min(MAX_TAU_TICKS)) * u128::from(self.rate_per_sec)
            / TICKS_PER_SEC;
        u64::try_from(units).unwrap_or(u64::MAX)
    }

    /// What `units` cost, in ticks at this rate, rounded up.
    fn cost_ticks(self, units: u64) -> u128 {
        let rate = u128::from(self.rate_per_sec.max(1));
        (u128::from(units) * TICKS_PER_SEC).div_ceil(rate)
    }
}

/// The outcome of one charge to one bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Step {
    /// The fill time after the charge.
    pub(crate) next: u64,
    /// Ticks from the caller's `now` until the debt this charge made is repaid; 0 if none.
    pub(crate) wait_ticks: u64,
    /// Ticks of cost not charged because of the debt cap (or of time saturating).
    pub(crate) forgiven_ticks: u128,
}

impl Step {
    /// Nano-units forgiven (10⁻⁹ units, as [`super::bucket::Charge`] counts them), saturating.
    pub(crate) fn forgiven_nano(self, rate_per_sec: u64) -> u128 {
        // A tick at r units/s is r / 16 nano-units.
        self.forgiven_ticks
            .saturating_mul(u128::from(rate_per_sec))
            .div_ceil(u128::from(TICKS_PER_NS))
    }
}

/// The pure step: what charging `cost_ticks` at `now` does to a bucket whose fill time is `e`.
fn step(e: u64, now: u64, cost_ticks: u128, p: BucketParams) -> Step {
    let tau = p.tau_ticks.min(MAX_TAU_TICKS);
    let wanted = u128::from(e.max(now)) + cost_ticks;
    let cap = u128::from(now) + u128::from(tau) + u128::from(MAX_DEBT_TICKS);
    let capped = wanted.min(cap).min(u128::from(u64::MAX));
    // Never move the fill time back: a caller with a stale `now` must not undo others' debt.
    let next = u64::try_from(capped).unwrap_or(u64::MAX).max(e);
    let wait_ticks = next.saturating_sub(now).saturating_sub(tau);
    let step = Step {
        next,
        wait_ticks,
        forgiven_ticks: wanted.saturating_sub(u128::from(next)),
    };
    assert!(step.next >= e && (cost_ticks == 0 || step.next >= now));
    step
}

/// Charges `units` at `now` to the bucket whose fill time is `cell`, and says how long the
/// caller waits. Lock-free; see the module documentation.
pub(crate) fn charge(cell: &AtomicU64, units: u64, now: u64, p: BucketParams) -> Step {
    charge_bounded(cell, units, now, p, MAX_CAS_ATTEMPTS)
}

/// [`charge`] with an explicit attempt bound, so that tests can reach the fallback.
fn charge_bounded(
    cell: &AtomicU64,
    units: u64,
    now: u64,
    p: BucketParams,
    max_attempts: u32,
) -> Step {
    let cost = p.cost_ticks(units);
    // Relaxed is enough: the cell publishes nothing but itself, and compare-and-swap on one
    // location is totally ordered whatever the ordering argument.
    let mut seen = cell.load(Ordering::Relaxed);
    for _ in 0..max_attempts {
        let s = step(seen, now, cost, p);
        match cell.compare_exchange_weak(seen, s.next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return s,
            Err(actual) => seen = actual,
        }
    }
    fallback(cell, seen, now, cost, p)
}

/// One unconditional step from the fill time last `seen`: `fetch_max` never moves the fill time
/// back. If other charges moved it past ours meanwhile, this one is lost (reported as
/// forgiven, and the caller waits behind theirs): an undercount of one request, never a hang.
fn fallback(cell: &AtomicU64, seen: u64, now: u64, cost: u128, p: BucketParams) -> Step {
    let s = step(seen, now, cost, p);
    let before = cell.fetch_max(s.next, Ordering::Relaxed);
    if before <= s.next {
        return s;
    }
    let tau = p.tau_ticks.min(MAX_TAU_TICKS);
    Step {
        next: before,
        wait_ticks: before.saturating_sub(now).saturating_sub(tau),
        forgiven_ticks: cost,
    }
}

/// Takes `units` at `now` only if the bucket holds them (its fill time stays within `τ` of
/// `now`): prepaid tokens never make debt. One compare-and-swap, retried while other charges
/// move the cell; false if the bucket lacks the units or past [`MAX_CAS_ATTEMPTS`].
pub(crate) fn try_take(cell: &AtomicU64, units: u64, now: u64, p: BucketParams) -> bool {
    let cost = p.cost_ticks(units);
    // Capped at the largest fill time there is: past it (time saturated) nothing is taken.
    let limit =
        (u128::from(now) + u128::from(p.tau_ticks.min(MAX_TAU_TICKS))).min(u128::from(u64::MAX));
    let mut seen = cell.load(Ordering::Relaxed);
    for _ in 0..MAX_CAS_ATTEMPTS {
        let next = u128::from(seen.max(now)) + cost;
        if next > limit {
            return false;
        }
        let next = u64::try_from(next).expect("at most the limit, a u64");
        match cell.compare_exchange_weak(seen, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return true,
            Err(actual) => seen = actual,
        }
    }
    false
}

/// Gives back `units` that [`try_take`] took from the bucket (of a lane whose other bucket then
/// refused): the fill time moves back by their cost, which charges made since then do not
/// affect, since each moved it forward by its own cost. A bucket that filled up meanwhile just
/// stays full.
pub(crate) fn refund(cell: &AtomicU64, units: u64, p: BucketParams) {
    let cost = u64::try_from(p.cost_ticks(units)).unwrap_or(u64::MAX);
    let _ = cell.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |e| {
        Some(e.saturating_sub(cost))
    });
}

/// The level of a bucket with fill time `e` at `now`, in unit-ticks (units × ticks per second),
/// as a signed number: negative is debt.
fn level_unit_ticks(e: u64, now: u64, p: BucketParams) -> i128 {
    // Bound both factors before multiplying (see the compile-time check above). A deficit past
    // the debt cap, or a rate past the maximum, can only come from scribbled memory.
    let tau = p.tau_ticks.min(MAX_TAU_TICKS);
    let deficit = e.saturating_sub(now).min(tau + MAX_DEBT_TICKS);
    let rate = p.rate_per_sec.min(MAX_RATE_PER_SEC);
    (i128::from(tau) - i128::from(deficit)) * i128::from(rate)
}

/// The fill time that gives a bucket of `new` parameters the level a bucket of `old` ones has
/// with fill time `e` at `now`, cut to the new capacity and floor: a live limit change keeps
/// the level (and the debt) and never grants tokens. `old` of `None`: a new bucket, full.
pub(crate) fn convert(e: u64, now: u64, old: Option<BucketParams>, new: BucketParams) -> u64 {
    let Some(old) = old else {
        return 0;
    };
    let level = level_unit_ticks(e, now, old);
    let new_tau = new.tau_ticks.min(MAX_TAU_TICKS);
    let rate = i128::from(new.rate_per_sec.clamp(1, MAX_RATE_PER_SEC));
    // Floor division rounds the kept level down: the new deficit is never smaller than exact.
    let deficit = i128::from(new_tau) - level.div_euclid(rate);
    let deficit = deficit.clamp(0, i128::from(new_tau + MAX_DEBT_TICKS));
    let deficit = u64::try_from(deficit).expect("clamped to a u64 range");
    now.saturating_add(deficit)
}

/// Applies [`convert`] to a cell with compare-and-swap, so that concurrent charges are kept.
/// Past [`MAX_CAS_ATTEMPTS`] the cell is left as it is (its level is then read at the new
/// rate: a bounded error, never a hang).
pub(crate) fn reconfigure(
    cell: &AtomicU64,
    now: u64,
    old: Option<BucketParams>,
    new: BucketParams,
) {
    let mut seen = cell.load(Ordering::Relaxed);
    for _ in 0..MAX_CAS_ATTEMPTS {
        let next = convert(seen, now, old, new);
        match cell.compare_exchange_weak(seen, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return,
            Err(actual) => seen = actual,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use proptest::prelude::*;

    use super::super::bucket::Bucket;
    use super::*;

    const SEC_NS: u64 = 1_000_000_000;

    fn params(rate_per_sec: u64, capacity: u64) -> BucketParams {
        BucketParams::from_spec(BucketSpec {
            rate_per_sec,
            capacity,
        })
    }

    /// Charges `units` at `now_ns` and returns the wait in nanoseconds.
    fn wait_ns(cell: &AtomicU64, units: u64, now_ns: u64, p: BucketParams) -> u64 {
        ns_ceil(charge(cell, units, ticks(now_ns), p).wait_ticks)
    }

    #[test]
    fn debt_is_repaid_at_the_rate() {
        let p = params(1000, 10);
        let cell = AtomicU64::new(0);
        for _ in 0..10 {
            assert_eq!(wait_ns(&cell, 1, 0, p), 0);
        }
        assert_eq!(wait_ns(&cell, 1, 0, p), SEC_NS / 1000);
        assert_eq!(wait_ns(&cell, 1, 0, p), 2 * SEC_NS / 1000);
        // Half a millisecond later the debt is 1.5 ops.
        assert_eq!(wait_ns(&cell, 0, SEC_NS / 2000, p), 3 * SEC_NS / 2000);
        // Idle for long: full again, and no more than full.
        let go = (0..100)
            .take_while(|_| wait_ns(&cell, 1, 100 * SEC_NS, p) == 0)
            .count();
        assert_eq!(go, 10);
    }

    #[test]
    fn try_take_never_makes_debt_and_refund_undoes_it() {
        let p = params(1000, 10);
        let cell = AtomicU64::new(0);
        let now = ticks(SEC_NS);
        assert!(try_take(&cell, 6, now, p));
        assert!(!try_take(&cell, 5, now, p), "only 4 left");
        assert!(try_take(&cell, 4, now, p));
        // Empty, not in debt: the next charge waits one op, not more.
        assert_eq!(wait_ns(&cell, 1, SEC_NS, p), SEC_NS / 1000);
        refund(&cell, 1, p);
        refund(&cell, 10, p);
        assert_eq!(cell.load(Ordering::Relaxed), now);
        let go = (0..20)
            .take_while(|_| wait_ns(&cell, 1, SEC_NS, p) == 0)
            .count();
        assert_eq!(go, 10, "full again after the refunds");
        // At saturated time nothing can be taken, and nothing panics.
        let scribbled = AtomicU64::new(u64::MAX);
        assert!(!try_take(&scribbled, 1, u64::MAX, p));
        assert!(!try_take(&AtomicU64::new(0), u64::MAX, u64::MAX, p));
        refund(&scribbled, u64::MAX, p);
    }

    #[test]
    fn an_io_bigger_than_the_bucket_waits_proportionally() {
        let cell = AtomicU64::new(0);
        assert_eq!(wait_ns(&cell, 1 << 20, 0, params(4096, 4096)), 255 * SEC_NS);
    }

    #[test]
    fn debt_is_capped_and_the_excess_forgiven() {
        let p = params(1, 1);
        let cell = AtomicU64::new(0);
        let s = charge(&cell, u64::MAX, 0, p);
        assert_eq!(s.wait_ticks, MAX_DEBT_TICKS);
        assert_eq!(s.next, p.tau_ticks + MAX_DEBT_TICKS);
        assert!(s.forgiven_ticks > 0 && s.forgiven_nano(1) > 0);
        // At the cap, a further charge is forgiven entirely and the wait stays bounded.
        let s = charge(&cell, 1, 0, p);
        assert_eq!(
            (s.wait_ticks, s.forgiven_ticks),
            (MAX_DEBT_TICKS, TICKS_PER_SEC)
        );
    }

    #[test]
    fn a_stale_timestamp_never_moves_the_fill_time_back() {
        let p = params(1000, 1);
        let cell = AtomicU64::new(0);
        let t_ns = 7200 * SEC_NS;
        assert_eq!(wait_ns(&cell, 1, t_ns, p), 0);
        // A thread that read the clock 1 ms earlier lands behind the first charge, and waits
        // from its own `now`.
        assert_eq!(
            wait_ns(&cell, 1, t_ns - SEC_NS / 1000, p),
            2 * SEC_NS / 1000
        );
        let e = cell.load(Ordering::Relaxed);
        // A timestamp two hours old, whose debt cap lies before the fill time: its charge is
        // forgiven rather than allowed to pull the fill time back.
        let s = charge(&cell, 5, 0, p);
        assert_eq!((s.next, s.forgiven_ticks), (e, 5 * TICKS_PER_SEC / 1000));
        assert_eq!(cell.load(Ordering::Relaxed), e);
    }

    #[test]
    fn huge_values_saturate_instead_of_overflowing() {
        let p = params(u64::MAX, u64::MAX);
        let cell = AtomicU64::new(0);
        assert_eq!(charge(&cell, u64::MAX, 0, p).wait_ticks, 0);
        assert_eq!(ns_ceil(charge(&cell, u64::MAX, 0, p).wait_ticks), SEC_NS);
        let s = charge(&cell, u64::MAX, u64::MAX, p);
        assert_eq!(s.next, u64::MAX);
        let slow = params(1, u64::MAX);
        assert_eq!(slow.tau_ticks, MAX_TAU_TICKS);
        let cell = AtomicU64::new(u64::MAX);
        let s = charge(&cell, u64::MAX, u64::MAX, slow);
        assert_eq!(s.next, u64::MAX);
        // Scribbled words: rate 0 is "no bucket", a huge tau is clamped.
        assert_eq!(BucketParams::from_words(0, 5), None);
        let scribbled = BucketParams::from_words(1, u64::MAX).unwrap();
        assert_eq!(scribbled.tau_ticks, MAX_TAU_TICKS);
        let _ = charge(&AtomicU64::new(u64::MAX - 1), u64::MAX, 3, scribbled);
        let _ = convert(u64::MAX, 0, Some(scribbled), params(1, 1));
        let _ = convert(0, u64::MAX, Some(params(u64::MAX, u64::MAX)), scribbled);
    }

    #[test]
    fn the_fallback_never_moves_the_fill_time_back() {
        let p = params(1000, 1000);
        let cell = AtomicU64::new(0);
        // Zero attempts: straight to the fallback, which then behaves as one step.
        let s = charge_bounded(&cell, 2000, 0, p, 0);
        assert_eq!(cell.load(Ordering::Relaxed), s.next);
        assert_eq!(ns_ceil(s.wait_ticks), SEC_NS);
        // A fallback from a stale view (it saw 0, others have moved the cell far ahead) loses
        // its own charge and waits behind theirs; theirs stay.
        let far = s.next + ticks(10 * SEC_NS);
        cell.store(far, Ordering::Relaxed);
        let lost = fallback(&cell, 0, 0, p.cost_ticks(1), p);
        assert_eq!(cell.load(Ordering::Relaxed), far);
        assert_eq!(lost.next, far);
        assert_eq!(lost.forgiven_ticks, p.cost_ticks(1));
        assert_eq!(lost.wait_ticks, far - p.tau_ticks);
    }

    #[test]
    fn converting_keeps_the_level_and_never_grants() {
        let old = params(100, 100);
        // Empty bucket (fill time 1 s ahead), rate raised tenfold: still empty.
        let e = convert(SEC_NS * TICKS_PER_NS, 0, Some(old), params(1000, 1000));
        assert_eq!(e, SEC_NS * TICKS_PER_NS);
        // Full bucket, capacity raised: keeps 100 of the new 1000.
        let new = params(1000, 1000);
        let e = convert(0, 0, Some(old), new);
        let cell = AtomicU64::new(e);
        let go = (0..2000)
            .take_while(|_| charge(&cell, 1, 0, new).wait_ticks == 0)
            .count();
        assert_eq!(go, 100);
        // Full bucket, capacity lowered: cut to the new capacity.
        let small = params(10, 10);
        let cell = AtomicU64::new(convert(0, 0, Some(old), small));
        let go = (0..2000)
            .take_while(|_| charge(&cell, 1, 0, small).wait_ticks == 0)
            .count();
        assert_eq!(go, 10);
        // Debt is kept: 50 ops of debt at 100/s is 0.5 s; at 10/s it is 5 s.
        let in_debt = old.tau_ticks + SEC_NS * TICKS_PER_NS / 2;
        let e = convert(in_debt, 0, Some(old), small);
        assert_eq!(e, small.tau_ticks + 5 * SEC_NS * TICKS_PER_NS);
        // A new bucket starts full.
        assert_eq!(convert(u64::MAX, 7, None, small), 0);
    }

    #[test]
    fn concurrent_charges_are_all_counted_in_fifo_order() {
        // 8 threads × 1000 charges of 1 op at 1000/s, burst 100, all at time 0: whatever the
        // interleaving, the fill time ends at exactly 8000 ms and the waits are exactly the
        // FIFO ones, k ms for the k-th op past the burst.
        let p = params(1000, 100);
        let cell = AtomicU64::new(0);
        let mut waits: Vec<u64> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        (0..1000)
                            .map(|_| wait_ns(&cell, 1, 0, p))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            threads
                .into_iter()
                .flat_map(|t| t.join().unwrap())
                .collect()
        });
        assert_eq!(cell.load(Ordering::Relaxed), ticks(8 * SEC_NS));
        waits.sort_unstable();
        let expected: Vec<u64> = (1..=8000u64)
            .map(|k| k.saturating_sub(100) * SEC_NS / 1000)
            .collect();
        assert_eq!(waits, expected);
    }

    /// A rate that divides 16e9 (2^a × 5^b): costs and τ are then exact in ticks.
    fn exact_rate() -> impl Strategy<Value = u64> {
        (0..=13u32, 0..=9u32).prop_map(|(a, b)| 2u64.pow(a) * 5u64.pow(b))
    }

    fn step_strategy() -> impl Strategy<Value = (u64, u64)> {
        let units = prop_oneof![0..=16u64, 0..=1u64 << 30];
        let advance_ns = prop_oneof![Just(0u64), 0..=SEC_NS / 100, 0..=100 * SEC_NS];
        (units, advance_ns)
    }

    proptest! {
        /// With exact rates and a non-decreasing clock, a GCRA cell and an in-process bucket
        /// give the same waits and forgive at the same charges.
        #[test]
        fn the_cell_matches_the_in_process_bucket(
            rate_per_sec in exact_rate(),
            capacity in prop_oneof![1..=1000u64, 1..=1u64 << 30],
            steps in proptest::collection::vec(step_strategy(), 1..200),
        ) {
            let spec = BucketSpec { rate_per_sec, capacity };
            let p = BucketParams::from_spec(spec);
            prop_assume!(p.tau_ticks < MAX_TAU_TICKS);
            let mut bucket = Bucket::new(spec, 0);
            let cell = AtomicU64::new(0);
            let mut now_ns = 0u64;
            for (units, advance_ns) in steps {
                now_ns += advance_ns;
                let expected = bucket.charge(units, now_ns);
                let got = charge(&cell, units, ticks(now_ns), p);
                prop_assert_eq!(ns_ceil(got.wait_ticks), expected.wait_ns);
                prop_assert_eq!(got.forgiven_ticks > 0, expected.forgiven_nano > 0);
            }
        }

        /// For any rate, capacity, sequence and (even stale) timestamps, what is ready by any
        /// time T never exceeds `rate × T + capacity` plus what the cap forgave, and waits are
        /// bounded by the debt cap (plus the caller's staleness).
        #[test]
        fn the_cell_never_grants_more_than_rate_and_capacity(
            rate_per_sec in prop_oneof![1..=1000u64, 1..=u64::MAX],
            capacity in prop_oneof![1..=1000u64, 1..=u64::MAX],
            steps in proptest::collection::vec(
                (prop_oneof![0..=16u64, any::<u64>()], 0..=SEC_NS, 0..=SEC_NS / 1000),
                1..200,
            ),
        ) {
            let p = params(rate_per_sec, capacity);
            let cell = AtomicU64::new(0);
            let mut clock_ns = 0u64;
            // (ready tick, cost in ticks) of every charge; a cost counts fully even if forgiven
            // in part, and the forgiven part is added to the allowance.
            let mut ready = Vec::new();
            let mut forgiven = 0u128;
            for (units, advance_ns, stale_ns) in steps {
                clock_ns += advance_ns;
                let now = ticks(clock_ns.saturating_sub(stale_ns));
                let s = charge(&cell, units, now, p);
                prop_assert!(s.wait_ticks <= p.tau_ticks.max(MAX_DEBT_TICKS) + MAX_DEBT_TICKS);
                forgiven += s.forgiven_ticks;
                ready.push((u128::from(now) + u128::from(s.wait_ticks), p.cost_ticks(units)));
            }
            ready.sort_unstable();
            let mut used = 0u128;
            for (at, cost) in ready {
                used += cost;
                prop_assert!(used <= at + u128::from(p.tau_ticks) + forgiven, "{used} > {at}");
            }
        }
    }
}
