//! The QoS fast path: tokens a queue thread takes from its device's and its group's buckets in
//! advance, a batch at a time, so that a request that is not throttled touches no lock and no
//! shared bucket, only two atomic loads (have the device's, have the group's limits changed?)
//! and a few integer operations on memory no other thread writes.
//!
//! # How tokens are prepaid
//!
//! A [`QueueLimiter`] belongs to one queue thread and keeps, per bucket set (the device's own,
//! and its group's), a count of prepaid units per lane (`READ_OPS`..`TOTAL_BYTES`). A request
//! whose cost every limited lane of a set covers is paid from those counts. Otherwise it goes
//! the exact way, [`super::Limiter::admit`]'s (debit every bucket, wait until the debt is
//! repaid), and then, **only if that set did not make it wait**, each lane is topped up to its
//! batch from buckets that hold the tokens *without going into debt*: one lock (or one
//! compare-and-swap per bucket, for a shared group) per batch instead of per request.
//!
//! # What stays exact
//!
//! - Every prepaid unit is debited from the real buckets before it is spent, so the sustained
//!   rate of every bucket is exactly what it was: a queue spends no more than it took.
//! - Tokens are prepaid only from a bucket that holds them, never into debt, and never while
//!   the set is throttling: once a device or group is at its limit, every request takes the
//!   exact path (FIFO behind earlier debt, waits from the same arithmetic), after each queue
//!   has spent at most one batch per lane.
//! - A limits change (a new generation of the set) drops what a queue holds: lowering takes
//!   effect at the next request of each queue.
//!
//! What changes: units a queue took but has not spent are not available to other queues. Over
//! a window starting from full buckets, a bucket of rate `r` and capacity C now lets at most
//! `r × window + C + Q × batch` pass (Q queues holding a batch each from before the window),
//! with `batch = min(r × 1 ms, C / 64)` rounded down ([`prepay_batch`]); a limit below 1000
//! units per second is never prepaid, and a bucket smaller than 64 units neither.

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::Duration;

use super::bucket::{lane_charges, Charge};
use super::limits::{
    QosLimits, LANES, READ_BYTES, READ_OPS, TOTAL_BYTES, TOTAL_OPS, WRITE_BYTES, WRITE_OPS,
};
use super::{nanos, Admission, GroupRef, Limiter, Shared};
use crate::request::Op;

/// A batch is at most this fraction of a bucket's capacity...
const BATCH_CAPACITY_DIVISOR: u64 = 64;
/// ...and at most this fraction of a second's worth of its rate (1 ms).
const BATCH_RATE_DIVISOR: u64 = 1000;

/// What a queue holds on a lane without a limit: enough for any request.
const UNLIMITED_TOKENS: u64 = u64::MAX;

/// The units a queue may take in advance from a bucket of `rate_per_sec` and `capacity`.
pub(crate) fn prepay_batch(rate_per_sec: u64, capacity: u64) -> u64 {
    (rate_per_sec / BATCH_RATE_DIVISOR).min(capacity / BATCH_CAPACITY_DIVISOR)
}

/// What the exact path of one bucket set answers: the request's charge, and the tokens it
/// prepaid for the queue, under the limits of `generation`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Refill {
    /// The request's own charge.
    pub(crate) charge: Charge,
    /// The generation of the set's limits this refill follows.
    pub(crate) generation: u64,
    /// The cost settings of those limits (only the cost fields matter).
    pub(crate) costs: QosLimits,
    /// Per lane: `None` without a limit, else its batch.
    pub(crate) batches: [Option<u64>; LANES],
    /// Units prepaid per lane.
    pub(crate) granted: [u64; LANES],
}

/// One queue's prepaid tokens from one bucket set.
#[derive(Clone, Debug)]
pub(crate) struct Prepaid {
    /// The generation the tokens belong to; `None` until the first refill.
    generation: Option<u64>,
    /// Whether any lane has a limit.
    limited: bool,
    costs: QosLimits,
    batches: [Option<u64>; LANES],
    /// Units held per lane; [`UNLIMITED_TOKENS`] on a lane without a limit.
    tokens: [u64; LANES],
}

impl Prepaid {
    fn new() -> Prepaid {
        Prepaid {
            generation: None,
            limited: false,
            costs: QosLimits::default(),
            batches: [None; LANES],
            tokens: [0; LANES],
        }
    }

    /// Pays for a request from the tokens held, if they are of `generation` and cover every
    /// limited lane (a set without limits covers everything). False: take the exact path.
    #[inline]
    pub(crate) fn try_spend(&mut self, generation: u64, op: Op, bytes: u64) -> bool {
        if self.generation != Some(generation) {
            return false;
        }
        if !self.limited {
            return true;
        }
        match op {
            Op::Read => self.try_spend_data(READ_OPS, READ_BYTES, bytes),
            // A data-less write is a flush (`QosLimits::cost`).
            Op::Write if bytes > 0 => self.try_spend_data(WRITE_OPS, WRITE_BYTES, bytes),
            _ => self.try_spend_any(op, bytes),
        }
    }

    /// [`Self::try_spend_any`] for a READ or a WRITE with data, the requests of the data path,
    /// without building the cost and its lane list: such a request pays its ops on `ops_lane`
    /// and `TOTAL_OPS` and its bytes on `bytes_lane` and `TOTAL_BYTES`. Paying 0 units (a READ
    /// of 0 bytes) always succeeds and changes nothing, as leaving the lane out would. The
    /// lanes without a limit hold [`UNLIMITED_TOKENS`] and are paid from like the others, as
    /// `try_spend_any` does.
    #[inline]
    fn try_spend_data(&mut self, ops_lane: usize, bytes_lane: usize, bytes: u64) -> bool {
        let ops = self.costs.data_ops(bytes);
        let t = &mut self.tokens;
        if t[ops_lane] < ops
            || t[TOTAL_OPS] < ops
            || t[bytes_lane] < bytes
            || t[TOTAL_BYTES] < bytes
        {
            return false;
        }
        t[ops_lane] -= ops;
        t[TOTAL_OPS] -= ops;
        t[bytes_lane] -= bytes;
        t[TOTAL_BYTES] -= bytes;
        true
    }

    /// Pays for any request from the tokens held (the generation is checked by the caller),
    /// each lane its charge from [`lane_charges`].
    pub(crate) fn try_spend_any(&mut self, op: Op, bytes: u64) -> bool {
        let mut left = self.tokens;
        for (lane, units) in lane_charges(&self.costs.cost(op, bytes)) {
            match left[lane].checked_sub(units) {
                Some(l) => left[lane] = l,
                None => return false,
            }
        }
        self.tokens = left;
        true
    }

    /// What the exact path prepays after charging a request (`charge`): if the request need
    /// not wait, each lane is topped up to its batch (what this queue holds under
    /// `generation`'s limits counting) with `try_take(lane, units)`, which takes units from
    /// the lane's buckets only if they hold them. Per lane, the units taken.
    pub(crate) fn top_up(
        &self,
        generation: u64,
        batches: &[Option<u64>; LANES],
        charge: Charge,
        mut try_take: impl FnMut(usize, u64) -> bool,
    ) -> [u64; LANES] {
        let mut granted = [0; LANES];
        if charge.wait_ns > 0 {
            return granted;
        }
        let same = self.generation == Some(generation);
        for (lane, batch) in batches.iter().enumerate() {
            let Some(batch) = batch else { continue };
            let held = if same { self.tokens[lane] } else { 0 };
            let want = batch.saturating_sub(held);
            if want > 0 && try_take(lane, want) {
                granted[lane] = want;
            }
        }
        granted
    }

    /// Keeps what a refill prepaid; tokens of an older generation are dropped.
    fn adopt(&mut self, refill: &Refill) {
        if self.generation != Some(refill.generation) {
            *self = Prepaid {
                generation: Some(refill.generation),
                limited: refill.batches.iter().any(Option::is_some),
                costs: refill.costs,
                batches: refill.batches,
                tokens: [0; LANES],
            };
        }
        for (lane, tokens) in self.tokens.iter_mut().enumerate() {
            *tokens = match self.batches[lane] {
                // A lane without a limit never runs short (refilled here in the unlikely case
                // that a queue spends 2^64 units of it).
                None => UNLIMITED_TOKENS,
                Some(_) => tokens.saturating_add(refill.granted[lane]),
            };
        }
    }
}

/// A queue's tokens from both sets.
#[derive(Debug)]
struct QueueTokens {
    own: Prepaid,
    group: Prepaid,
}

/// One queue thread's handle on its device's [`Limiter`]: the same admissions, with the fast
/// path described in the module documentation. Not `Sync`: one per queue thread.
#[derive(Debug)]
pub struct QueueLimiter {
    limiter: Arc<Limiter>,
    tokens: RefCell<QueueTokens>,
    /// Requests that took the exact path of a set.
    exact: Cell<u64>,
}

impl QueueLimiter {
    /// A queue's handle on `limiter`, holding no tokens yet.
    pub fn new(limiter: Arc<Limiter>) -> QueueLimiter {
        QueueLimiter {
            limiter,
            tokens: RefCell::new(QueueTokens {
                own: Prepaid::new(),
                group: Prepaid::new(),
            }),
            exact: Cell::new(0),
        }
    }

    /// The device's limiter.
    pub fn limiter(&self) -> &Arc<Limiter> {
        &self.limiter
    }

    /// Charges one request of `op` and `bytes` at `now`, as [`Limiter::admit`] does, from the
    /// tokens this queue holds when they cover it.
    #[inline]
    pub fn admit(&self, op: Op, bytes: u64, now: Duration) -> Admission {
        let mut tokens = self.tokens.borrow_mut();
        let own = tokens
            .own
            .try_spend(self.limiter.own.generation(), op, bytes);
        let group = match &self.limiter.group {
            None => true,
            Some(group) => tokens.group.try_spend(group.generation(), op, bytes),
        };
        if own && group {
            // Paid from prepaid tokens: no charge, so nothing to count or wait for.
            return Admission::Go;
        }
        self.admit_exact(&mut tokens, own, group, op, bytes, now)
    }

    /// The rest of [`Self::admit`] once a set's tokens did not cover the request (`own_paid`
    /// and `group_paid`: whether each set's did): that set's exact path, its refill, the
    /// accounting. Out of line so that the prepaid case stays small.
    #[inline(never)]
    fn admit_exact(
        &self,
        tokens: &mut QueueTokens,
        own_paid: bool,
        group_paid: bool,
        op: Op,
        bytes: u64,
        now: Duration,
    ) -> Admission {
        let mut charge = Charge::default();
        let own = &self.limiter.own;
        if !own_paid {
            let refill = own.charge_prepaying(op, bytes, nanos(now), &tokens.own);
            self.exact.set(self.exact.get() + 1);
            charge = charge.merge(refill.charge);
            tokens.own.adopt(&refill);
        }
        if let Some(group) = &self.limiter.group {
            if !group_paid {
                let refill = group.charge_prepaying(op, bytes, nanos(now), &tokens.group);
                self.exact.set(self.exact.get() + 1);
                charge = charge.merge(refill.charge);
                tokens.group.adopt(&refill);
            }
        }
        self.limiter.account(charge)
    }

    /// How many times a set's exact path ran (with the lock, or on the shared buckets): once
    /// per request and set while throttling, about once per batch otherwise.
    pub fn exact_path_count(&self) -> u64 {
        self.exact.get()
    }
}

impl GroupRef {
    fn generation(&self) -> u64 {
        match self {
            GroupRef::Local(g) => g.shared.generation(),
            GroupRef::Shared(g) => g.generation(),
        }
    }

    fn charge_prepaying(&self, op: Op, bytes: u64, now_ns: u64, held: &Prepaid) -> Refill {
        match self {
            GroupRef::Local(g) => g.shared.charge_prepaying(op, bytes, now_ns, held),
            GroupRef::Shared(g) => g.charge_prepaying(op, bytes, now_ns, held),
        }
    }
}

impl Shared {
    /// The exact path: charges the request, then, if it need not wait, tops up `held` to a
    /// batch per lane from buckets that hold the tokens. One lock.
    pub(crate) fn charge_prepaying(
        &self,
        op: Op,
        bytes: u64,
        now_ns: u64,
        held: &Prepaid,
    ) -> Refill {
        let mut set = self.lock();
        let generation = self.generation();
        let charge = if set.is_limited() {
            set.charge(op, bytes, now_ns)
        } else {
            Charge::default()
        };
        let batches = set.prepay_batches();
        let granted = held.top_up(generation, &batches, charge, |lane, units| {
            set.try_take(lane, units, now_ns)
        });
        Refill {
            charge,
            generation,
            costs: *set.limits(),
            batches,
            granted,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn op_strategy() -> impl Strategy<Value = Op> {
        prop_oneof![
            Just(Op::Read),
            Just(Op::Write),
            Just(Op::Flush),
            Just(Op::Discard),
            Just(Op::WriteZeroes),
        ]
    }

    /// A lane's tokens: near a request's cost (so both outcomes happen), or unlimited.
    fn tokens_strategy() -> impl Strategy<Value = u64> {
        prop_oneof![0u64..16, 0u64..20_000, Just(UNLIMITED_TOKENS)]
    }

    proptest! {
        /// The data path's shortcut for READ and WRITE pays exactly what the general lane
        /// walk pays, and fails exactly when it fails, leaving the tokens as they were.
        #[test]
        fn the_data_shortcut_spends_like_the_lane_walk(
            op in op_strategy(),
            bytes in prop_oneof![Just(0u64), 1u64..20_000],
            tokens in prop::array::uniform6(tokens_strategy()),
            iops_size in prop::option::of(1u64..8192),
            flush_cost in prop::option::of(0u64..3),
            discard_cost in prop::option::of(0u64..3),
            discard_counts_bytes: bool,
        ) {
            let costs = QosLimits {
                iops_size_bytes: iops_size,
                flush_cost_ops: flush_cost,
                discard_cost_ops: discard_cost,
                discard_counts_bytes,
                ..QosLimits::default()
            };
            let held = Prepaid {
                generation: Some(3),
                limited: true,
                costs,
                batches: [Some(1); LANES],
                tokens,
            };
            let (mut fast, mut walk) = (held.clone(), held.clone());
            let paid = fast.try_spend(3, op, bytes);
            prop_assert_eq!(paid, walk.try_spend_any(op, bytes));
            prop_assert_eq!(fast.tokens, walk.tokens);
            if !paid {
                prop_assert_eq!(fast.tokens, held.tokens);
            }
            prop_assert!(!held.clone().try_spend(4, op, bytes), "another generation never pays");
        }
    }
}
