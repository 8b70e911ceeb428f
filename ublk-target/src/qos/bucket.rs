//! Token buckets with debt: the arithmetic behind the limiter. No locking, no clock: every
//! method takes the current time in nanoseconds.
//!
//! Levels are kept in nano-units (10⁻⁹ of an op or a byte), so a rate in units per second is
//! exactly a rate in nano-units per nanosecond and a refill is one multiplication. Levels are
//! `i128`: capacities (at most `u64::MAX` units = 1.8e28 nano-units), debt floors (at most
//! `u64::MAX * MAX_DEBT_NS` = 6.6e31) and single costs (at most 1.8e28) all fit with room to
//! spare (`i128::MAX` is 1.7e38), and a refill is computed in `u128`, where `u64 * u64` cannot
//! overflow. So nothing here overflows for any `u64` rate, capacity, cost or time.

use super::limits::{BucketSpec, Class, Cost, LaneSpec, QosLimits, LANES};
use super::limits::{READ_BYTES, READ_OPS, TOTAL_BYTES, TOTAL_OPS, WRITE_BYTES, WRITE_OPS};
use super::prepaid::prepay_batch;
use crate::request::Op;

/// Nano-units per unit.
const NANO: i128 = 1_000_000_000;
/// How deep into debt a bucket may go, as time at its own refill rate: one hour. A charge that
/// would go deeper is forgiven the excess (and reported), so no caller is ever told to wait more
/// than this (plus any clock skew between threads).
pub(crate) const MAX_DEBT_NS: u64 = 3_600 * 1_000_000_000;

const _: () = assert!((u64::MAX as u128) * (MAX_DEBT_NS as u128) < i128::MAX as u128 / 4);
const _: () = assert!((u64::MAX as u128) * (NANO as u128) < i128::MAX as u128 / 4);
// A refill multiplies a u64 rate by a u64 interval in u128: (2^64 - 1)^2 < 2^128, no overflow.

/// The outcome of charging one bucket (or several: waits take the max, forgiveness adds up).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Charge {
    /// Nanoseconds from the caller's `now` until the debt this charge made is repaid; 0 when the
    /// bucket had the tokens.
    pub(crate) wait_ns: u64,
    /// Nano-units not charged because the debt floor was reached.
    pub(crate) forgiven_nano: u128,
}

impl Charge {
    pub(crate) fn merge(self, other: Charge) -> Charge {
        Charge {
            wait_ns: self.wait_ns.max(other.wait_ns),
            forgiven_nano: self.forgiven_nano.saturating_add(other.forgiven_nano),
        }
    }
}

/// One token bucket. Invariant: `floor_nano <= level_nano <= capacity_nano`.
#[derive(Clone, Debug)]
pub(crate) struct Bucket {
    /// Units per second, which is nano-units per nanosecond. At least 1.
    rate_per_sec: u64,
    /// Capacity, nano-units; positive.
    capacity_nano: i128,
    /// The deepest debt allowed, nano-units; negative: `-(rate * MAX_DEBT_NS)`.
    floor_nano: i128,
    /// Tokens at `last_ns`; negative is debt.
    level_nano: i128,
    /// When `level_nano` was last brought up to date. Never decreases.
    last_ns: u64,
}

impl Bucket {
    /// A full bucket.
    pub(crate) fn new(spec: BucketSpec, now_ns: u64) -> Bucket {
        assert!(
            spec.rate_per_sec >= 1,
            "a bucket needs a positive rate: {spec:?}"
        );
        assert!(
            spec.capacity >= 1,
            "a bucket needs a positive capacity: {spec:?}"
        );
        let capacity_nano = i128::from(spec.capacity) * NANO;
        let bucket = Bucket {
            rate_per_sec: spec.rate_per_sec,
            capacity_nano,
            floor_nano: -(i128::from(spec.rate_per_sec) * i128::from(MAX_DEBT_NS)),
            level_nano: capacity_nano,
            last_ns: now_ns,
        };
        bucket.check();
        bucket
    }

    fn check(&self) {
        assert!(self.floor_nano < 0 && self.capacity_nano > 0);
        assert!(
            self.floor_nano <= self.level_nano && self.level_nano <= self.capacity_nano,
            "bucket level out of bounds: {self:?}"
        );
    }

    /// Adds the tokens earned since `last_ns`, up to the capacity. A `now_ns` earlier than
    /// `last_ns` (a timestamp taken by a thread that lost the race for the lock) earns nothing
    /// and does not move time back.
    fn refill(&mut self, now_ns: u64) {
        if now_ns <= self.last_ns {
            return;
        }
        let elapsed_ns = now_ns - self.last_ns;
        // Cannot overflow: (2^64 - 1)^2 < 2^128.
        let earned = u128::from(self.rate_per_sec) * u128::from(elapsed_ns);
        let room = u128::try_from(self.capacity_nano - self.level_nano).expect("level <= capacity");
        // `room` fits in i128 (it is at most capacity - floor), so the min does too.
        self.level_nano += i128::try_from(earned.min(room)).expect("at most room");
        self.last_ns = now_ns;
        self.check();
    }

    /// Takes `units` now, going into debt if needed, and says how long until the debt is repaid.
    pub(crate) fn charge(&mut self, units: u64, now_ns: u64) -> Charge {
        self.refill(now_ns);
        let wanted = self.level_nano - i128::from(units) * NANO;
        let level = wanted.max(self.floor_nano);
        self.level_nano = level;
        self.check();
        let forgiven_nano = u128::try_from(level - wanted).expect("level >= wanted");
        let wait_ns = if level >= 0 {
            0
        } else {
            // Debt is repaid at rate nano-units per ns; round up so the caller never wakes early.
            let debt = level.unsigned_abs();
            let repay_ns = debt.div_ceil(u128::from(self.rate_per_sec));
            let repay_ns = u64::try_from(repay_ns).expect("debt <= rate * MAX_DEBT_NS");
            assert!(repay_ns <= MAX_DEBT_NS);
            // `last_ns` is later than `now_ns` only when this caller's timestamp is stale.
            repay_ns.saturating_add(self.last_ns.saturating_sub(now_ns))
        };
        Charge {
            wait_ns,
            forgiven_nano,
        }
    }

    /// Whether the bucket holds `units` at `now_ns` (it is brought up to date first).
    fn holds(&mut self, units: u64, now_ns: u64) -> bool {
        self.refill(now_ns);
        self.level_nano >= i128::from(units) * NANO
    }

    /// Takes `units` that the bucket holds: never into debt. Call only after [`Bucket::holds`]
    /// said yes at the same `now_ns`.
    fn take_held(&mut self, units: u64) {
        self.level_nano -= i128::from(units) * NANO;
        assert!(self.level_nano >= 0, "take_held() of tokens not held");
        self.check();
    }

    /// The units a queue may take in advance from this bucket (see `qos::prepaid`).
    fn prepay_batch(&self) -> u64 {
        let capacity = u64::try_from(self.capacity_nano / NANO).expect("capacity is a u64");
        prepay_batch(self.rate_per_sec, capacity)
    }

    /// Adopts a new rate and capacity at `now_ns` without granting tokens: the level earned so
    /// far is kept, then cut to the new capacity (and any debt to the new floor).
    pub(crate) fn reconfigure(&mut self, spec: BucketSpec, now_ns: u64) {
        assert!(
            spec.rate_per_sec >= 1 && spec.capacity >= 1,
            "invalid spec {spec:?}"
        );
        self.refill(now_ns);
        let before = self.level_nano;
        self.rate_per_sec = spec.rate_per_sec;
        self.capacity_nano = i128::from(spec.capacity) * NANO;
        self.floor_nano = -(i128::from(spec.rate_per_sec) * i128::from(MAX_DEBT_NS));
        self.level_nano = before.clamp(self.floor_nano, self.capacity_nano);
        assert!(
            self.level_nano <= before.max(self.floor_nano),
            "reconfigure granted tokens"
        );
        self.check();
    }

    /// Tokens now held, nano-units (negative: debt). For tests and assertions.
    #[cfg(test)]
    pub(crate) fn level_nano(&self) -> i128 {
        self.level_nano
    }

    /// Capacity, nano-units.
    #[cfg(test)]
    pub(crate) fn capacity_nano(&self) -> i128 {
        self.capacity_nano
    }
}

/// The buckets of one limit: a request must be granted by both.
#[derive(Clone, Debug)]
pub(crate) struct Lane {
    pub(crate) sustained: Bucket,
    pub(crate) peak: Option<Bucket>,
}

impl Lane {
    fn new(spec: LaneSpec, now_ns: u64) -> Lane {
        Lane {
            sustained: Bucket::new(spec.sustained, now_ns),
            peak: spec.peak.map(|p| Bucket::new(p, now_ns)),
        }
    }

    fn charge(&mut self, units: u64, now_ns: u64) -> Charge {
        let sustained = self.sustained.charge(units, now_ns);
        match &mut self.peak {
            None => sustained,
            Some(peak) => sustained.merge(peak.charge(units, now_ns)),
        }
    }

    /// A new spec for the same limit: the sustained bucket keeps its level (cut to the new
    /// capacity); a peak bucket that stays keeps its level too, a new one starts full (it can only
    /// restrict: the sustained bucket still has to grant every request).
    fn reconfigure(&mut self, spec: LaneSpec, now_ns: u64) {
        self.sustained.reconfigure(spec.sustained, now_ns);
        self.peak = match (self.peak.take(), spec.peak) {
            (_, None) => None,
            (None, Some(p)) => Some(Bucket::new(p, now_ns)),
            (Some(mut b), Some(p)) => {
                b.reconfigure(p, now_ns);
                Some(b)
            }
        };
    }

    /// Takes `units` from every bucket of the lane if all of them hold that many now, else
    /// nothing: prepaid tokens never make debt.
    fn try_take(&mut self, units: u64, now_ns: u64) -> bool {
        let peak_holds = self.peak.as_mut().is_none_or(|p| p.holds(units, now_ns));
        if !(peak_holds && self.sustained.holds(units, now_ns)) {
            return false;
        }
        self.sustained.take_held(units);
        if let Some(peak) = &mut self.peak {
            peak.take_held(units);
        }
        true
    }

    /// The lane's prepay batch: the smallest of its buckets'.
    fn prepay_batch(&self) -> u64 {
        let sustained = self.sustained.prepay_batch();
        self.peak
            .as_ref()
            .map_or(sustained, |p| sustained.min(p.prepay_batch()))
    }
}

/// All the buckets of one device or group, and the limits they were built from.
#[derive(Clone, Debug)]
pub(crate) struct BucketSet {
    limits: QosLimits,
    /// Indexed by `READ_OPS`..`TOTAL_BYTES`.
    pub(crate) lanes: [Option<Lane>; LANES],
}

impl BucketSet {
    /// Full buckets for validated `limits`.
    pub(crate) fn new(limits: &QosLimits, now_ns: u64) -> BucketSet {
        BucketSet {
            limits: *limits,
            lanes: limits
                .lanes()
                .map(|spec| spec.map(|s| Lane::new(s, now_ns))),
        }
    }

    /// The limits the buckets follow.
    pub(crate) fn limits(&self) -> &QosLimits {
        &self.limits
    }

    /// Whether any bucket exists.
    pub(crate) fn is_limited(&self) -> bool {
        self.lanes.iter().any(Option::is_some)
    }

    /// Switches to validated `limits` at `now_ns`. A limit that stays keeps its level (cut to
    /// its new capacity); a new limit starts full; a removed one is dropped.
    pub(crate) fn reconfigure(&mut self, limits: &QosLimits, now_ns: u64) {
        let specs = limits.lanes();
        for (lane, spec) in self.lanes.iter_mut().zip(specs) {
            *lane = match (lane.take(), spec) {
                (_, None) => None,
                (None, Some(s)) => Some(Lane::new(s, now_ns)),
                (Some(mut l), Some(s)) => {
                    l.reconfigure(s, now_ns);
                    Some(l)
                }
            };
        }
        self.limits = *limits;
        assert_eq!(self.is_limited(), !limits.is_unlimited());
    }

    /// Per lane, `None` without a limit, else the units a queue may take in advance.
    pub(crate) fn prepay_batches(&self) -> [Option<u64>; LANES] {
        self.lanes
            .each_ref()
            .map(|lane| lane.as_ref().map(Lane::prepay_batch))
    }

    /// Takes `units` from `lane` in advance if its buckets hold them now; see
    /// [`Lane::try_take`]. False for a lane without a limit.
    pub(crate) fn try_take(&mut self, lane: usize, units: u64, now_ns: u64) -> bool {
        self.lanes[lane]
            .as_mut()
            .is_some_and(|l| l.try_take(units, now_ns))
    }

    /// Charges one request to every bucket it counts against.
    pub(crate) fn charge(&mut self, op: Op, bytes: u64, now_ns: u64) -> Charge {
        let cost = self.limits.cost(op, bytes);
        let mut total = Charge::default();
        for (index, units) in lane_charges(&cost) {
            if let Some(lane) = self.lanes[index].as_mut() {
                total = total.merge(lane.charge(units, now_ns));
            }
        }
        total
    }
}

/// The lanes (`READ_OPS`..`TOTAL_BYTES`) a request of `cost` is charged to, with the units each
/// pays; the same for in-process and shared buckets. A free request (cost 0) neither pays nor
/// queues behind others' debt, so zero charges are left out.
pub(crate) fn lane_charges(cost: &Cost) -> impl Iterator<Item = (usize, u64)> {
    let (ops_lane, bytes_lane) = match cost.class {
        Class::Read => (Some(READ_OPS), Some(READ_BYTES)),
        Class::Write => (Some(WRITE_OPS), Some(WRITE_BYTES)),
        Class::Other => (None, None),
    };
    let charges: [(Option<usize>, u64); 4] = [
        (ops_lane, cost.ops),
        (Some(TOTAL_OPS), cost.ops),
        (bytes_lane, cost.bytes),
        (Some(TOTAL_BYTES), cost.bytes),
    ];
    charges
        .into_iter()
        .filter_map(|(index, units)| Some((index?, units)).filter(|&(_, u)| u > 0))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn bucket(rate_per_sec: u64, capacity: u64) -> Bucket {
        Bucket::new(
            BucketSpec {
                rate_per_sec,
                capacity,
            },
            0,
        )
    }

    #[test]
    fn debt_is_repaid_at_the_rate() {
        let mut b = bucket(1000, 10);
        for _ in 0..10 {
            assert_eq!(b.charge(1, 0).wait_ns, 0);
        }
        // The 11th op is 1 op in debt: 1 ms at 1000/s; the 12th waits behind it.
        assert_eq!(b.charge(1, 0).wait_ns, SEC / 1000);
        assert_eq!(b.charge(1, 0).wait_ns, 2 * SEC / 1000);
        // Half a millisecond later the debt is 1.5 ops.
        assert_eq!(b.charge(0, SEC / 2000).wait_ns, 3 * SEC / 2000);
    }

    #[test]
    fn an_io_bigger_than_the_bucket_waits_proportionally() {
        let mut b = bucket(4096, 4096);
        // 1 MiB at 4 KiB/s from a full 4 KiB bucket: 255 s of debt.
        assert_eq!(b.charge(1 << 20, 0).wait_ns, 255 * SEC);
    }

    #[test]
    fn debt_is_capped_and_the_excess_forgiven() {
        let mut b = bucket(1, 1);
        let c = b.charge(u64::MAX, 0);
        assert_eq!(c.wait_ns, MAX_DEBT_NS);
        let max_debt_ops = u128::from(MAX_DEBT_NS / SEC);
        assert_eq!(
            c.forgiven_nano,
            (u128::from(u64::MAX) - 1 - max_debt_ops) * NANO as u128
        );
        assert_eq!(b.level_nano(), -(max_debt_ops as i128) * NANO);
    }

    #[test]
    fn a_stale_timestamp_waits_from_its_own_time() {
        let mut b = bucket(1000, 1);
        assert_eq!(b.charge(1, 10 * SEC).wait_ns, 0);
        // A thread that read the clock 1 ms earlier and got the lock later: the bucket does not
        // go back in time, and the wait is measured from the caller's own `now`.
        assert_eq!(b.charge(1, 10 * SEC - SEC / 1000).wait_ns, 2 * SEC / 1000);
    }

    #[test]
    fn huge_rates_and_gaps_saturate() {
        let mut b = bucket(u64::MAX, u64::MAX);
        assert_eq!(b.charge(u64::MAX, 0).wait_ns, 0);
        // u64::MAX units of debt at u64::MAX units per second: one second.
        assert_eq!(b.charge(u64::MAX, 0).wait_ns, SEC);
        assert_eq!(b.charge(u64::MAX, u64::MAX).wait_ns, 0);
        assert_eq!(
            b.level_nano(),
            b.capacity_nano() - i128::from(u64::MAX) * NANO
        );
        let mut slow = bucket(1, 1);
        assert_eq!(slow.charge(1, u64::MAX).wait_ns, 0);
        assert_eq!(slow.level_nano(), 0);
    }

    #[test]
    fn reconfigure_never_grants_tokens() {
        let mut b = bucket(100, 100);
        assert_eq!(b.charge(100, 0).wait_ns, 0);
        b.reconfigure(
            BucketSpec {
                rate_per_sec: 1000,
                capacity: 1000,
            },
            0,
        );
        assert_eq!(b.level_nano(), 0);
        // Idle for long: full at the new capacity, not beyond.
        b.reconfigure(
            BucketSpec {
                rate_per_sec: 10,
                capacity: 10,
            },
            100 * SEC,
        );
        assert_eq!(b.level_nano(), 10 * NANO);
    }

    /// One step of the random sequence: a charge of `units` after `advance_ns`.
    fn step() -> impl Strategy<Value = (u64, u64)> {
        let units = prop_oneof![0..=16u64, 0..=1u64 << 40, any::<u64>()];
        let advance_ns = prop_oneof![Just(0u64), 0..=SEC, any::<u64>()];
        (units, advance_ns)
    }

    proptest! {
        /// For any rate, capacity and sequence (with huge values and gaps), the level stays in
        /// bounds, ready times never go back, and what has been granted by any ready time T
        /// never exceeds `rate * T + capacity` plus what the debt cap forgave.
        #[test]
        fn bucket_never_grants_more_than_rate_and_capacity(
            rate_per_sec in prop_oneof![1..=1000u64, 1..=MAX_DEBT_NS, 1..=u64::MAX],
            capacity in prop_oneof![1..=1000u64, 1..=u64::MAX],
            steps in proptest::collection::vec(step(), 1..200),
        ) {
            let mut b = bucket(rate_per_sec, capacity);
            let mut now_ns = 0u64;
            let mut granted_nano = 0u128;
            let mut forgiven_nano = 0u128;
            let mut last_ready_ns = 0u128;
            for (units, advance_ns) in steps {
                now_ns = now_ns.saturating_add(advance_ns);
                let c = b.charge(units, now_ns);
                prop_assert!(b.level_nano() <= b.capacity_nano());
                prop_assert!(c.wait_ns <= MAX_DEBT_NS);
                granted_nano += u128::from(units) * NANO as u128;
                forgiven_nano += c.forgiven_nano;
                // In u128: exact even when `now_ns` has saturated at u64::MAX.
                let ready_ns = u128::from(now_ns) + u128::from(c.wait_ns);
                prop_assert!(ready_ns >= last_ready_ns || units == 0);
                if units == 0 {
                    continue;
                }
                last_ready_ns = ready_ns;
                let allowed = u128::from(rate_per_sec)
                    .saturating_mul(ready_ns)
                    .saturating_add(u128::from(capacity) * NANO as u128)
                    .saturating_add(forgiven_nano);
                prop_assert!(granted_nano <= allowed, "{granted_nano} > {allowed}");
            }
        }
    }
}
