//! Per-device I/O statistics: what a device has served, how fast, and how long QoS held it.
//!
//! Pure: no kernel, no I/O, no clock reads, no `unsafe`. This module owns the counters of one
//! device ([`DeviceStats`], with a [`QueueStats`] recorder per queue thread), the read-only copy
//! the rest of the system sees ([`StatsSnapshot`], serde-stable, written to files and printed as
//! JSON), and the arithmetic between two copies ([`StatsSnapshot::delta`],
//! [`StatsDelta::rates`]).
//!
//! # Recording
//!
//! Each queue thread takes its own recorder with [`DeviceStats::for_queue`] when it starts. It
//! calls [`QueueStats::start`] when it takes a request (the returned guard keeps it counted as
//! in flight until dropped), [`QueueStats::add_throttled`] if QoS made it wait, and
//! [`QueueStats::record_request`] (or [`QueueStats::record`]) once, after answering it. The
//! intended latency is from fetching the request to answering it, QoS wait included: that is
//! what the device's user sees. A queue's counters are written by its thread alone, so
//! recording is a handful of plain loads and stores on memory no other queue writes: no locked
//! instruction, no lock, no allocation, no syscall (`live` has the details). [`DeviceStats`]
//! has the same recording methods, with atomic additions, for recorders shared by threads.
//!
//! Per op type ([`Op`]) a device counts `ops` (every answered request, failed ones included),
//! `errors` (the failed ones) and `bytes` (the length of the successful ones; for DISCARD and
//! WRITE_ZEROES that is the range length, for FLUSH zero). A data-less WRITE is a flush (see
//! [`Request::is_flush`](crate::request::Request::is_flush)) and [`DeviceStats::record_request`] counts it as one.
//!
//! # Latency histogram
//!
//! Latencies are truncated to whole microseconds and kept in a log-linear histogram of
//! [`HISTOGRAM_BUCKETS`] buckets: values below `2 × HISTOGRAM_SUB_BUCKETS` µs (32 µs) have one
//! bucket each; above, every power of two `[2^k, 2^(k+1))` is cut into
//! [`HISTOGRAM_SUB_BUCKETS`] (16) equal buckets, up to [`LATENCY_US_MAX`] (2^27 − 1 µs, about
//! 134 s). A latency of zero (under 1 µs) lands in the first bucket; one above the range is
//! counted as [`LATENCY_US_MAX`], in the last bucket and in the sum.
//!
//! **Error bound.** [`LatencySnapshot::quantile`] returns the inclusive upper bound of the bucket
//! holding the exact quantile (the sample of rank `ceil(q × n)`, at least 1, in sorted order).
//! A bucket starting at `lo ≥ 2 × HISTOGRAM_SUB_BUCKETS` is `lo / HISTOGRAM_SUB_BUCKETS` wide or
//! narrower, so for an exact quantile `x` µs the answer `u` satisfies `x ≤ u` and
//! `u − x < x / 16` (it overestimates by less than 6.25%), and `u = x` when `x < 32`. Measured
//! against the untruncated latency the answer may also be up to 1 µs low. Latencies above the
//! range are reported as [`LATENCY_US_MAX`], an underestimate.
//!
//! A snapshot has three histograms: all requests, reads only and writes only (FLUSH, DISCARD
//! and WRITE_ZEROES are rare and appear only in the first). Each recorder keeps reads, writes
//! and the other ops apart and a snapshot adds the three up for the first: 3 × 384 counters,
//! 9 KiB per queue, and one histogram update per request.
//!
//! # Snapshots and consistency
//!
//! [`DeviceStats::snapshot`] reads every counter of every queue, each with one atomic load, and
//! adds them up. Every counter is exact (nothing is sampled or dropped; in-flight and throttled
//! time included), but a snapshot taken while requests complete is not a single instant:
//! counters read a moment apart may disagree by the requests recorded in between (for example
//! the histogram may hold a sample whose op count was read before it was added, or one queue's
//! in-flight count be read before a request started there and another's after it finished).
//! Two snapshots of the same `DeviceStats` never see a counter go back (a queue's counters stay
//! in the sum after it stops), which is what [`StatsSnapshot::delta`] relies on.
//!
//! # Panics
//!
//! [`LatencySnapshot::quantile`] panics if `q` is not in `0.0..=1.0` (NaN included), and
//! [`DeviceStats::start`] and [`QueueStats::start`] if more than 2^24 requests (ublk's 4096 queues × 4096 tags) are in
//! flight, which only a leaked guard can cause.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

use crate::request::Op;

mod live;

pub use live::{DeviceStats, InFlightGuard, QueueInFlightGuard, QueueStats};

/// log2 of [`HISTOGRAM_SUB_BUCKETS`].
const SUB_BITS: u32 = 4;
/// Linear buckets per power of two in the latency histogram; the relative error of a quantile
/// is below `1 / HISTOGRAM_SUB_BUCKETS`.
pub const HISTOGRAM_SUB_BUCKETS: u64 = 1 << SUB_BITS;
/// Latencies below `2^RANGE_BITS` µs have their own bucket range; above, they are clamped.
const RANGE_BITS: u32 = 27;
/// The largest latency the histogram tells apart, in microseconds (about 134 s). Larger ones are
/// counted as this value.
pub const LATENCY_US_MAX: u64 = (1 << RANGE_BITS) - 1;
/// Buckets in one latency histogram: `HISTOGRAM_SUB_BUCKETS` exact ones below it, then
/// `HISTOGRAM_SUB_BUCKETS` for each power of two from `2^SUB_BITS` to `2^(RANGE_BITS - 1)`.
pub const HISTOGRAM_BUCKETS: usize =
    HISTOGRAM_SUB_BUCKETS as usize * (RANGE_BITS - SUB_BITS + 1) as usize;

const _: () = assert!(SUB_BITS >= 1 && SUB_BITS < RANGE_BITS && RANGE_BITS < 64);
// "About 100 s": the issue asks for at least that much range.
const _: () = assert!(LATENCY_US_MAX >= 100_000_000);
const _: () = assert!(bucket_index(0) == 0 && bucket_upper_us(0) == 0);
const _: () = assert!(bucket_index(LATENCY_US_MAX) == HISTOGRAM_BUCKETS - 1);
const _: () = assert!(bucket_upper_us(HISTOGRAM_BUCKETS - 1) == LATENCY_US_MAX);
const _: () = assert!(bucket_index(LATENCY_US_MAX + 1) == HISTOGRAM_BUCKETS - 1);
// The layout, checked bucket by bucket at compile time: buckets tile 0..=LATENCY_US_MAX without
// gaps, each bound maps back to its bucket, and each bucket is narrow enough for the error bound
// (exact below 2 × SUB; else width × SUB ≤ lower bound).
const _: () = {
    let mut index = 0;
    while index < HISTOGRAM_BUCKETS {
        let (lower, upper) = (bucket_lower_us(index), bucket_upper_us(index));
        assert!(bucket_index(lower) == index && bucket_index(upper) == index);
        assert!(index == 0 || lower == bucket_upper_us(index - 1) + 1);
        let width = upper - lower + 1;
        assert!(if lower < 2 * HISTOGRAM_SUB_BUCKETS {
            width == 1
        } else {
            width * HISTOGRAM_SUB_BUCKETS <= lower
        });
        index += 1;
    }
};

/// The histogram bucket of a latency of `us` microseconds (clamped to [`LATENCY_US_MAX`]).
const fn bucket_index(us: u64) -> usize {
    let v = if us > LATENCY_US_MAX {
        LATENCY_US_MAX
    } else {
        us
    };
    if v < HISTOGRAM_SUB_BUCKETS {
        return v as usize;
    }
    // v = m << shift with m in [SUB, 2 × SUB): the top SUB_BITS + 1 bits of v pick the bucket.
    let shift = 63 - v.leading_zeros() - SUB_BITS;
    (HISTOGRAM_SUB_BUCKETS * shift as u64 + (v >> shift)) as usize
}

/// The smallest latency, in microseconds, that falls in bucket `index`.
const fn bucket_lower_us(index: usize) -> u64 {
    let i = index as u64;
    if i < HISTOGRAM_SUB_BUCKETS {
        return i;
    }
    let shift = i / HISTOGRAM_SUB_BUCKETS - 1;
    (i % HISTOGRAM_SUB_BUCKETS + HISTOGRAM_SUB_BUCKETS) << shift
}

/// The largest latency, in microseconds, that falls in bucket `index`.
const fn bucket_upper_us(index: usize) -> u64 {
    let i = index as u64;
    if i < HISTOGRAM_SUB_BUCKETS {
        return i;
    }
    let shift = i / HISTOGRAM_SUB_BUCKETS - 1;
    ((i % HISTOGRAM_SUB_BUCKETS + HISTOGRAM_SUB_BUCKETS + 1) << shift) - 1
}

/// A latency in whole microseconds, clamped to the histogram's range.
fn latency_us(latency: Duration) -> u64 {
    // In u64 rather than through `as_micros`'s u128, which costs every request a few
    // instructions: below the bound neither the product nor the sum can overflow.
    let secs = latency.as_secs();
    if secs > LATENCY_US_MAX / 1_000_000 {
        return LATENCY_US_MAX;
    }
    (secs * 1_000_000 + u64::from(latency.subsec_micros())).min(LATENCY_US_MAX)
}

/// A duration in nanoseconds, saturating at `u64::MAX` (584 years).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The 1-based rank of the `q` quantile among `samples` sorted values: `ceil(q × samples)`,
/// at least 1.
fn quantile_rank(q: f64, samples: u64) -> u64 {
    debug_assert!(samples > 0 && (0.0..=1.0).contains(&q));
    // `as` saturates; the product is at most `samples`.
    let rank = (q * samples as f64).ceil() as u64;
    rank.clamp(1, samples)
}

/// Why two snapshots cannot be subtracted, or a serialised snapshot cannot be read back.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum StatsError {
    /// The "later" snapshot was taken before the "earlier" one.
    #[error(
        "the later snapshot (at {later_ns} ns) was taken before the earlier one ({earlier_ns} ns)"
    )]
    TimeWentBack {
        /// When the earlier snapshot was taken.
        earlier_ns: u64,
        /// When the later snapshot was taken.
        later_ns: u64,
    },
    /// A counter is smaller in the later snapshot: the two come from different
    /// [`DeviceStats`] (a restarted server, say), or are swapped.
    #[error("counter {counter} went back from {earlier} to {later}")]
    CounterWentBack {
        /// Which counter, as `field.subfield`.
        counter: &'static str,
        /// Its value in the earlier snapshot.
        earlier: u64,
        /// Its value in the later snapshot.
        later: u64,
    },
    /// A serialised histogram names a bucket bound this layout does not have, or lists bounds
    /// out of ascending order.
    #[error("histogram bucket bound {le_us} us is unknown or out of order")]
    BadBucket {
        /// The offending bound, microseconds.
        le_us: u64,
    },
    /// A serialised histogram's summary does not match its buckets.
    #[error("histogram field {field} says {stored} but its buckets give {computed}")]
    SummaryMismatch {
        /// The summary field.
        field: &'static str,
        /// The value read.
        stored: u64,
        /// The value the buckets give.
        computed: u64,
    },
}

/// `later - earlier` for a cumulative counter, or why not.
fn counter_sub(counter: &'static str, later: u64, earlier: u64) -> Result<u64, StatsError> {
    later
        .checked_sub(earlier)
        .ok_or(StatsError::CounterWentBack {
            counter,
            earlier,
            later,
        })
}

/// One op type's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpStats {
    /// Requests answered, failed ones included.
    pub ops: u64,
    /// Bytes of the successful requests (range length for DISCARD and WRITE_ZEROES).
    pub bytes: u64,
    /// Requests that failed.
    pub errors: u64,
}

impl OpStats {
    fn checked_sub(&self, earlier: &OpStats, name: [&'static str; 3]) -> Result<Self, StatsError> {
        Ok(OpStats {
            ops: counter_sub(name[0], self.ops, earlier.ops)?,
            bytes: counter_sub(name[1], self.bytes, earlier.bytes)?,
            errors: counter_sub(name[2], self.errors, earlier.errors)?,
        })
    }

    fn wrapping_add(&self, other: &OpStats) -> OpStats {
        OpStats {
            ops: self.ops.wrapping_add(other.ops),
            bytes: self.bytes.wrapping_add(other.bytes),
            errors: self.errors.wrapping_add(other.errors),
        }
    }
}

/// The cumulative counters of a device: in a [`StatsSnapshot`], since the device started; in a
/// [`StatsDelta`], during an interval.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// READ requests.
    pub read: OpStats,
    /// WRITE requests with data.
    pub write: OpStats,
    /// FLUSH requests and data-less writes.
    pub flush: OpStats,
    /// DISCARD requests.
    pub discard: OpStats,
    /// WRITE_ZEROES requests.
    pub write_zeroes: OpStats,
    /// Requests QoS made wait.
    pub throttled_ops: u64,
    /// Total time requests waited for QoS, nanoseconds (summed over requests, so it can grow
    /// faster than the clock).
    pub throttled_ns_total: u64,
    /// Latency of every request.
    pub latency: LatencySnapshot,
    /// Latency of READ requests.
    pub read_latency: LatencySnapshot,
    /// Latency of WRITE requests with data.
    pub write_latency: LatencySnapshot,
}

impl Counters {
    /// The counters of one op type.
    pub fn op(&self, op: Op) -> &OpStats {
        match op {
            Op::Read => &self.read,
            Op::Write => &self.write,
            Op::Flush => &self.flush,
            Op::Discard => &self.discard,
            Op::WriteZeroes => &self.write_zeroes,
        }
    }

    fn op_mut(&mut self, op: Op) -> &mut OpStats {
        match op {
            Op::Read => &mut self.read,
            Op::Write => &mut self.write,
            Op::Flush => &mut self.flush,
            Op::Discard => &mut self.discard,
            Op::WriteZeroes => &mut self.write_zeroes,
        }
    }

    /// The sum over all op types (its `bytes` include DISCARD and WRITE_ZEROES ranges).
    pub fn total(&self) -> OpStats {
        [&self.write, &self.flush, &self.discard, &self.write_zeroes]
            .into_iter()
            .fold(self.read, |sum, op| sum.wrapping_add(op))
    }

    fn checked_sub(&self, earlier: &Counters) -> Result<Counters, StatsError> {
        Ok(Counters {
            read: (self.read)
                .checked_sub(&earlier.read, ["read.ops", "read.bytes", "read.errors"])?,
            write: (self.write)
                .checked_sub(&earlier.write, ["write.ops", "write.bytes", "write.errors"])?,
            flush: (self.flush)
                .checked_sub(&earlier.flush, ["flush.ops", "flush.bytes", "flush.errors"])?,
            discard: self.discard.checked_sub(
                &earlier.discard,
                ["discard.ops", "discard.bytes", "discard.errors"],
            )?,
            write_zeroes: self.write_zeroes.checked_sub(
                &earlier.write_zeroes,
                [
                    "write_zeroes.ops",
                    "write_zeroes.bytes",
                    "write_zeroes.errors",
                ],
            )?,
            throttled_ops: counter_sub("throttled_ops", self.throttled_ops, earlier.throttled_ops)?,
            throttled_ns_total: counter_sub(
                "throttled_ns_total",
                self.throttled_ns_total,
                earlier.throttled_ns_total,
            )?,
            latency: self.latency.checked_sub(&earlier.latency, "latency")?,
            read_latency: (self.read_latency).checked_sub(&earlier.read_latency, "read_latency")?,
            write_latency: (self.write_latency)
                .checked_sub(&earlier.write_latency, "write_latency")?,
        })
    }
}

/// A copy of a device's statistics at one moment.
///
/// Serialised (JSON, in snapshot files and `mesoblk-target list --json`) as `taken_ns`,
/// `in_flight` and the fields of [`Counters`] side by side; histograms as described at
/// [`LatencySnapshot`]. Field names are stable; new fields may be added.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// When the snapshot was taken, on the clock passed to [`DeviceStats::snapshot`],
    /// nanoseconds.
    pub taken_ns: u64,
    /// Requests in flight when the snapshot was taken.
    pub in_flight: u64,
    /// Everything counted since the device started.
    #[serde(flatten)]
    pub counters: Counters,
}

impl StatsSnapshot {
    /// What happened between `earlier` and this snapshot, both of the same [`DeviceStats`].
    ///
    /// Fails if this snapshot is older, or if any counter went back: then the two come from
    /// different devices or server processes, and the caller should start over from this one.
    /// (A restarted server whose counters have all caught up is not detected; pair snapshots
    /// with the server's identity when that matters.)
    pub fn delta(&self, earlier: &StatsSnapshot) -> Result<StatsDelta, StatsError> {
        if self.taken_ns < earlier.taken_ns {
            return Err(StatsError::TimeWentBack {
                earlier_ns: earlier.taken_ns,
                later_ns: self.taken_ns,
            });
        }
        let delta = StatsDelta {
            interval_ns: self.taken_ns - earlier.taken_ns,
            in_flight: self.in_flight,
            counters: self.counters.checked_sub(&earlier.counters)?,
        };
        debug_assert!(delta.counters.latency.samples() <= self.counters.latency.samples());
        Ok(delta)
    }
}

/// What a device did between two snapshots ([`StatsSnapshot::delta`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsDelta {
    /// Time between the two snapshots, nanoseconds.
    pub interval_ns: u64,
    /// Requests in flight at the end of the interval.
    pub in_flight: u64,
    /// Everything counted during the interval; its histograms hold only the interval's
    /// samples, so their quantiles are the interval's.
    #[serde(flatten)]
    pub counters: Counters,
}

impl StatsDelta {
    /// Per-second rates over the interval; all zero if the interval is empty.
    pub fn rates(&self) -> IoRates {
        let c = &self.counters;
        let per_sec = |op: &OpStats| OpRates::new(op, self.interval_ns);
        IoRates {
            interval_ns: self.interval_ns,
            read: per_sec(&c.read),
            write: per_sec(&c.write),
            flush: per_sec(&c.flush),
            discard: per_sec(&c.discard),
            write_zeroes: per_sec(&c.write_zeroes),
            all: per_sec(&c.total()),
        }
    }
}

/// One op type's rates over an interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OpRates {
    /// Requests answered per second (IOPS), failed ones included.
    pub ops_per_sec: f64,
    /// Bytes of successful requests per second (bandwidth).
    pub bytes_per_sec: f64,
    /// Failed requests per second.
    pub errors_per_sec: f64,
}

impl OpRates {
    fn new(op: &OpStats, interval_ns: u64) -> OpRates {
        if interval_ns == 0 {
            return OpRates::default();
        }
        let per_sec = |count: u64| count as f64 * 1e9 / interval_ns as f64;
        OpRates {
            ops_per_sec: per_sec(op.ops),
            bytes_per_sec: per_sec(op.bytes),
            errors_per_sec: per_sec(op.errors),
        }
    }
}

/// IOPS and bandwidth over an interval ([`StatsDelta::rates`]).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct IoRates {
    /// The interval, nanoseconds.
    pub interval_ns: u64,
    /// READ rates.
    pub read: OpRates,
    /// WRITE rates.
    pub write: OpRates,
    /// FLUSH rates.
    pub flush: OpRates,
    /// DISCARD rates (bytes: ranges discarded).
    pub discard: OpRates,
    /// WRITE_ZEROES rates (bytes: ranges zeroed).
    pub write_zeroes: OpRates,
    /// All op types together (bytes include DISCARD and WRITE_ZEROES ranges; data bandwidth is
    /// `read.bytes_per_sec + write.bytes_per_sec`).
    pub all: OpRates,
}

/// A copy of one latency histogram (see the module docs for its layout and error bound).
///
/// Serialised as `samples`, `latency_us_sum`, `latency_us_p50`, `latency_us_p99`,
/// `latency_us_p999`, `latency_us_max` (all 0 when empty) and `buckets`: `[le_us, count]` pairs
/// for the non-empty buckets in ascending order, `le_us` being the bucket's largest value in
/// microseconds. Reading one back checks that the bounds exist in this layout and that the
/// summary fields agree with the buckets.
#[derive(Clone, PartialEq, Eq)]
pub struct LatencySnapshot {
    counts: Box<[u64; HISTOGRAM_BUCKETS]>,
    sum_us: u64,
}

impl fmt::Debug for LatencySnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LatencySnapshot")
            .field("samples", &self.samples())
            .field("sum_us", &self.sum_us)
            .field("buckets", &self.buckets().collect::<Vec<_>>())
            .finish()
    }
}

impl Default for LatencySnapshot {
    fn default() -> LatencySnapshot {
        LatencySnapshot {
            counts: Box::new([0; HISTOGRAM_BUCKETS]),
            sum_us: 0,
        }
    }
}

impl LatencySnapshot {
    /// Number of latencies recorded.
    pub fn samples(&self) -> u64 {
        self.counts.iter().fold(0, |sum, &c| sum.saturating_add(c))
    }

    /// Sum of the recorded latencies (each truncated and clamped), microseconds.
    pub fn sum_us(&self) -> u64 {
        self.sum_us
    }

    /// Mean latency, microseconds; `None` if nothing was recorded.
    pub fn mean_us(&self) -> Option<f64> {
        let samples = self.samples();
        (samples > 0).then(|| self.sum_us as f64 / samples as f64)
    }

    /// The `q` quantile (0.5 for the median), microseconds: the largest value of the bucket that
    /// holds the sample of rank `ceil(q × samples)`. It is at least the exact quantile and less
    /// than `1 + 1 / HISTOGRAM_SUB_BUCKETS` times it. `None` if nothing was recorded.
    ///
    /// # Panics
    /// If `q` is not in `0.0..=1.0`.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        assert!((0.0..=1.0).contains(&q), "quantile {q} is not in 0..=1");
        let samples = self.samples();
        if samples == 0 {
            return None;
        }
        let rank = quantile_rank(q, samples);
        let mut seen = 0u64;
        for (index, &count) in self.counts.iter().enumerate() {
            seen = seen.saturating_add(count);
            if seen >= rank {
                return Some(bucket_upper_us(index));
            }
        }
        unreachable!("rank {rank} is at most the {samples} samples")
    }

    /// Median latency (see [`LatencySnapshot::quantile`]), microseconds; 0 if empty.
    pub fn latency_us_p50(&self) -> u64 {
        self.quantile(0.5).unwrap_or(0)
    }

    /// 99th percentile latency, microseconds; 0 if empty.
    pub fn latency_us_p99(&self) -> u64 {
        self.quantile(0.99).unwrap_or(0)
    }

    /// 99.9th percentile latency, microseconds; 0 if empty.
    pub fn latency_us_p999(&self) -> u64 {
        self.quantile(0.999).unwrap_or(0)
    }

    /// Upper bound of the highest non-empty bucket, microseconds; 0 if empty.
    pub fn latency_us_max(&self) -> u64 {
        self.quantile(1.0).unwrap_or(0)
    }

    /// The non-empty buckets, ascending, as (largest value in µs, count).
    pub fn buckets(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let pairs = self.counts.iter().enumerate();
        pairs
            .filter(|&(_, &count)| count > 0)
            .map(|(index, &count)| (bucket_upper_us(index), count))
    }

    fn checked_sub(
        &self,
        earlier: &LatencySnapshot,
        name: &'static str,
    ) -> Result<Self, StatsError> {
        let mut counts = Box::new([0; HISTOGRAM_BUCKETS]);
        for (index, delta) in counts.iter_mut().enumerate() {
            *delta = counter_sub(name, self.counts[index], earlier.counts[index])?;
        }
        Ok(LatencySnapshot {
            counts,
            sum_us: counter_sub(name, self.sum_us, earlier.sum_us)?,
        })
    }
}

/// How a [`LatencySnapshot`] looks serialised.
#[derive(Debug, Serialize, Deserialize)]
struct LatencyWire {
    samples: u64,
    latency_us_sum: u64,
    latency_us_p50: u64,
    latency_us_p99: u64,
    latency_us_p999: u64,
    latency_us_max: u64,
    buckets: Vec<(u64, u64)>,
}

impl From<&LatencySnapshot> for LatencyWire {
    fn from(h: &LatencySnapshot) -> LatencyWire {
        LatencyWire {
            samples: h.samples(),
            latency_us_sum: h.sum_us,
            latency_us_p50: h.latency_us_p50(),
            latency_us_p99: h.latency_us_p99(),
            latency_us_p999: h.latency_us_p999(),
            latency_us_max: h.latency_us_max(),
            buckets: h.buckets().collect(),
        }
    }
}

impl TryFrom<LatencyWire> for LatencySnapshot {
    type Error = StatsError;

    fn try_from(wire: LatencyWire) -> Result<LatencySnapshot, StatsError> {
        let mut counts = Box::new([0; HISTOGRAM_BUCKETS]);
        let mut previous_le_us = None;
        for &(le_us, count) in &wire.buckets {
            let index = bucket_index(le_us);
            let known = le_us <= LATENCY_US_MAX && bucket_upper_us(index) == le_us;
            if !known || previous_le_us.is_some_and(|previous| previous >= le_us) {
                return Err(StatsError::BadBucket { le_us });
            }
            counts[index] = count;
            previous_le_us = Some(le_us);
        }
        let histogram = LatencySnapshot {
            counts,
            sum_us: wire.latency_us_sum,
        };
        // Pair assertion: what was read must say what the writer computed from the buckets.
        let computed = LatencyWire::from(&histogram);
        let summary = |w: &LatencyWire| {
            [
                ("samples", w.samples),
                ("latency_us_p50", w.latency_us_p50),
                ("latency_us_p99", w.latency_us_p99),
                ("latency_us_p999", w.latency_us_p999),
                ("latency_us_max", w.latency_us_max),
            ]
        };
        for ((field, stored), (_, computed)) in summary(&wire).into_iter().zip(summary(&computed)) {
            if stored != computed {
                return Err(StatsError::SummaryMismatch {
                    field,
                    stored,
                    computed,
                });
            }
        }
        Ok(histogram)
    }
}

impl Serialize for LatencySnapshot {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        LatencyWire::from(self).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for LatencySnapshot {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = LatencyWire::deserialize(deserializer)?;
        LatencySnapshot::try_from(wire).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::request::Request;

    fn us(us: u64) -> Duration {
        Duration::from_micros(us)
    }

    /// The exact `q` quantile of `samples` (whole µs, clamped like the histogram clamps).
    fn exact_quantile(samples: &[u64], q: f64) -> u64 {
        let mut sorted: Vec<u64> = samples.iter().map(|&s| s.min(LATENCY_US_MAX)).collect();
        sorted.sort_unstable();
        let rank = quantile_rank(q, sorted.len() as u64);
        sorted[rank as usize - 1]
    }

    /// The documented bound: `exact ≤ reported`, equal below 32 µs, else less than 1/16 over.
    fn within_bound(exact: u64, reported: u64) -> bool {
        if exact < 2 * HISTOGRAM_SUB_BUCKETS {
            return reported == exact;
        }
        reported >= exact && (reported - exact) * HISTOGRAM_SUB_BUCKETS < exact
    }

    fn histogram_of(samples: &[u64]) -> LatencySnapshot {
        let stats = DeviceStats::new();
        for &s in samples {
            stats.record(Op::Read, 4096, us(s), true);
        }
        stats.snapshot(Duration::ZERO).counters.latency
    }

    #[test]
    fn bucket_edges() {
        assert_eq!(HISTOGRAM_BUCKETS, 384);
        assert_eq!(bucket_index(0), 0);
        assert_eq!(bucket_index(31), 31);
        assert_eq!((bucket_lower_us(32), bucket_upper_us(32)), (32, 33));
        assert_eq!(bucket_index(u64::MAX), HISTOGRAM_BUCKETS - 1);
        assert_eq!(latency_us(Duration::from_nanos(999)), 0);
        assert_eq!(latency_us(Duration::from_nanos(1_999)), 1);
        assert_eq!(latency_us(Duration::from_secs(1_000)), LATENCY_US_MAX);
        assert_eq!(latency_us(Duration::MAX), LATENCY_US_MAX);
        // Around the top of the range, as the u128 microsecond count clamped would give.
        for us in [
            LATENCY_US_MAX - 1,
            LATENCY_US_MAX,
            LATENCY_US_MAX + 1,
            134_999_999,
        ] {
            let latency = Duration::from_micros(us) + Duration::from_nanos(999);
            assert_eq!(latency_us(latency), us.min(LATENCY_US_MAX), "{us}");
        }
        assert_eq!(latency_us(Duration::from_secs(135)), LATENCY_US_MAX);
        // Zero goes to the first bucket, values above the range to the last.
        let h = histogram_of(&[0, LATENCY_US_MAX + 1, 10_000_000_000]);
        let buckets: Vec<_> = h.buckets().collect();
        assert_eq!(buckets, vec![(0, 1), (LATENCY_US_MAX, 2)]);
        assert_eq!(h.sum_us(), 2 * LATENCY_US_MAX);
    }

    #[test]
    fn counts_ops_bytes_and_errors_per_op_type() {
        let stats = DeviceStats::new();
        stats.record(Op::Read, 4096, us(10), true);
        stats.record(Op::Read, 8192, us(20), true);
        stats.record(Op::Read, 4096, us(30), false);
        stats.record(Op::Write, 65536, us(40), true);
        stats.record(Op::Discard, 1 << 20, us(50), true);
        stats.record(Op::WriteZeroes, 1 << 16, us(60), false);
        let req = |op, len| Request {
            op,
            offset: 0,
            len,
            fua: false,
            no_unmap: false,
        };
        stats.record_request(&req(Op::Flush, 0), us(70), true);
        // A data-less write is a flush; a write with data is a write.
        stats.record_request(&req(Op::Write, 0), us(80), true);
        stats.record_request(&req(Op::Write, 4096), us(90), true);
        stats.add_throttled(Duration::from_millis(3));
        stats.add_throttled(Duration::from_nanos(7));

        let c = stats.snapshot(us(1)).counters;
        let op = |ops, bytes, errors| OpStats { ops, bytes, errors };
        assert_eq!(c.read, op(3, 12288, 1));
        assert_eq!(c.write, op(2, 65536 + 4096, 0));
        assert_eq!(*c.op(Op::Flush), op(2, 0, 0));
        assert_eq!(c.discard, op(1, 1 << 20, 0));
        assert_eq!(c.write_zeroes, op(1, 0, 1));
        assert_eq!(c.total(), op(9, 12288 + 69632 + (1 << 20), 2));
        assert_eq!((c.throttled_ops, c.throttled_ns_total), (2, 3_000_007));
        assert_eq!(c.latency.samples(), 9);
        assert_eq!(c.latency.sum_us(), (1..=9).map(|i| i * 10).sum::<u64>());
        assert_eq!(
            (c.read_latency.samples(), c.write_latency.samples()),
            (3, 2)
        );
        assert_eq!(c.read_latency.mean_us(), Some(20.0));
        assert_eq!(c.write_latency.latency_us_max(), 91); // 90 is in bucket 88..=91
    }

    #[test]
    fn in_flight_follows_guards() {
        let stats = DeviceStats::new();
        assert_eq!(stats.in_flight(), 0);
        let a = stats.start();
        let b = stats.start();
        {
            let _c = stats.start();
            assert_eq!(stats.in_flight(), 3);
            assert_eq!(stats.snapshot(Duration::ZERO).in_flight, 3);
        }
        assert_eq!(stats.in_flight(), 2);
        drop(a);
        assert_eq!(stats.in_flight(), 1);
        // A guard may be moved to another thread and dropped there.
        std::thread::scope(|s| {
            s.spawn(move || drop(b));
        });
        assert_eq!(stats.in_flight(), 0);
    }

    #[test]
    fn empty_histogram_has_no_quantiles() {
        let h = LatencySnapshot::default();
        assert_eq!((h.samples(), h.quantile(0.5), h.mean_us()), (0, None, None));
        assert_eq!(
            (h.latency_us_p50(), h.latency_us_p999(), h.latency_us_max()),
            (0, 0, 0)
        );
    }

    #[test]
    #[should_panic(expected = "not in 0..=1")]
    fn quantile_outside_zero_one_panics() {
        histogram_of(&[1]).quantile(1.5);
    }

    #[test]
    fn uniform_quantiles() {
        let samples: Vec<u64> = (1..=10_000).collect();
        let h = histogram_of(&samples);
        for (q, exact) in [
            (0.5, 5_000),
            (0.99, 9_900),
            (0.999, 9_990),
            (0.0, 1),
            (1.0, 10_000),
        ] {
            assert_eq!(exact_quantile(&samples, q), exact);
            let reported = h.quantile(q).unwrap();
            assert!(
                within_bound(exact, reported),
                "q {q}: {reported} vs {exact}"
            );
        }
        assert_eq!(h.latency_us_p50(), 5_119); // bucket 4864..=5119
        assert_eq!(h.mean_us(), Some(5_000.5));
    }

    #[test]
    fn bimodal_quantiles() {
        // 99% at 100 µs, 1% at 50 ms, interleaved.
        let samples: Vec<u64> = (0..10_000)
            .map(|i| if i % 100 == 0 { 50_000 } else { 100 })
            .collect();
        let h = histogram_of(&samples);
        assert!(within_bound(100, h.latency_us_p50()));
        assert!(within_bound(100, h.latency_us_p99()));
        assert!(within_bound(50_000, h.latency_us_p999()));
        assert_eq!(
            (h.latency_us_p50(), h.latency_us_p99(), h.latency_us_p999()),
            (103, 103, 51_199)
        );
    }

    #[test]
    fn four_threads_give_exact_totals() {
        const THREADS: u64 = 4;
        const PER_THREAD: u64 = 100_000;
        let stats = DeviceStats::new();
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let stats = &stats;
                s.spawn(move || {
                    for i in 0..PER_THREAD {
                        let _guard = stats.start();
                        let op = if i % 2 == 0 { Op::Read } else { Op::Write };
                        stats.record(op, 4096, us(t * 1000 + i % 1000), i % 10 != 0);
                        if i % 100 == 0 {
                            stats.add_throttled(Duration::from_nanos(5));
                        }
                    }
                });
            }
        });
        let snap = stats.snapshot(Duration::ZERO);
        let c = &snap.counters;
        let n = THREADS * PER_THREAD;
        assert_eq!(snap.in_flight, 0);
        assert_eq!(c.total().ops, n);
        assert_eq!((c.read.ops, c.write.ops), (n / 2, n / 2));
        assert_eq!(c.total().errors, n / 10);
        assert_eq!(c.total().bytes, (n - n / 10) * 4096);
        assert_eq!(
            (c.throttled_ops, c.throttled_ns_total),
            (n / 100, 5 * n / 100)
        );
        assert_eq!(c.latency.samples(), n);
        assert_eq!(c.read_latency.samples() + c.write_latency.samples(), n);
        // Each thread's latencies: t ms + 0..1000 µs, each 100 times.
        let per_thread_sum = |t: u64| 100 * (1000 * (t * 1000) + 999 * 1000 / 2);
        assert_eq!(
            c.latency.sum_us(),
            (0..THREADS).map(per_thread_sum).sum::<u64>()
        );
    }

    fn sample_snapshot(now_ms: u64, scale: u64) -> StatsSnapshot {
        let stats = DeviceStats::new();
        for i in 0..100 * scale {
            stats.record(Op::Read, 4096, us(100 + i % 50), true);
        }
        stats.record(Op::Write, 1 << 16, Duration::from_millis(5), true);
        stats.record(Op::WriteZeroes, 1 << 20, us(3), false);
        stats.add_throttled(Duration::from_micros(250));
        let _held = stats.start();
        stats.snapshot(Duration::from_millis(now_ms))
    }

    #[test]
    fn snapshot_serde_round_trip() {
        let snap = sample_snapshot(1_500, 1);
        let json = serde_json::to_string(&snap).unwrap();
        for name in [
            "\"taken_ns\":1500000000",
            "\"in_flight\":1",
            "\"throttled_ns_total\":250000",
            "\"write_zeroes\":{\"ops\":1,\"bytes\":0,\"errors\":1}",
            "\"read_latency\":{\"samples\":100,",
            "\"latency_us_p99\":",
            "\"latency_us_p999\":",
            "\"buckets\":[[",
        ] {
            assert!(json.contains(name), "{name} missing from {json}");
        }
        let back: StatsSnapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(back, snap);
        assert_eq!(serde_json::to_string(&back).unwrap(), json);
    }

    #[test]
    fn reading_back_checks_histograms() {
        let h = histogram_of(&[5, 40, 40, 1000]);
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(
            json,
            "{\"samples\":4,\"latency_us_sum\":1085,\"latency_us_p50\":41,\"latency_us_p99\":1023,\
             \"latency_us_p999\":1023,\"latency_us_max\":1023,\"buckets\":[[5,1],[41,2],[1023,1]]}"
        );
        let rejected = |json: &str| serde_json::from_str::<LatencySnapshot>(json).is_err();
        assert!(rejected(&json.replace("\"samples\":4", "\"samples\":5")));
        assert!(rejected(
            &json.replace("\"latency_us_p50\":41", "\"latency_us_p50\":40")
        ));
        // 40 is not a bucket's upper bound; nor is anything past the range.
        assert!(rejected(&json.replace("[41,2]", "[40,2]")));
        assert!(rejected(&json.replace("[1023,1]", "[268435455,1]")));
        // Out of order.
        assert!(rejected(&json.replace("[[5,1],[41,2]", "[[41,2],[5,1]")));
    }

    #[test]
    fn delta_and_rates_between_snapshots() {
        let stats = DeviceStats::new();
        for _ in 0..1000 {
            stats.record(Op::Read, 4096, us(100), true);
        }
        let earlier = stats.snapshot(Duration::from_secs(10));
        for _ in 0..2000 {
            stats.record(Op::Read, 4096, Duration::from_millis(2), true);
        }
        for _ in 0..500 {
            stats.record(Op::Write, 1 << 16, us(40), true);
        }
        stats.record(Op::Write, 1 << 16, us(40), false);
        stats.add_throttled(Duration::from_millis(1));
        let later = stats.snapshot(Duration::from_millis(12_000));

        let delta = later.delta(&earlier).unwrap();
        assert_eq!(delta.interval_ns, 2_000_000_000);
        let c = &delta.counters;
        assert_eq!(
            c.read,
            OpStats {
                ops: 2000,
                bytes: 2000 * 4096,
                errors: 0
            }
        );
        assert_eq!(
            c.write,
            OpStats {
                ops: 501,
                bytes: 500 << 16,
                errors: 1
            }
        );
        assert_eq!((c.throttled_ops, c.throttled_ns_total), (1, 1_000_000));
        // The interval's histogram holds only the interval's reads: no 100 µs sample left.
        assert_eq!(c.read_latency.samples(), 2000);
        assert!(within_bound(2000, c.read_latency.quantile(0.0).unwrap()));
        assert!(within_bound(40, c.write_latency.latency_us_p999()));

        let rates = delta.rates();
        assert_eq!(rates.read.ops_per_sec, 1000.0);
        assert_eq!(rates.read.bytes_per_sec, 1000.0 * 4096.0);
        assert_eq!(rates.write.ops_per_sec, 250.5);
        assert_eq!(rates.write.bytes_per_sec, 250.0 * 65536.0);
        assert_eq!(rates.write.errors_per_sec, 0.5);
        assert_eq!(rates.all.ops_per_sec, 1250.5);
        assert_eq!(rates.flush, OpRates::default());
        let json = serde_json::to_string(&rates).unwrap();
        assert_eq!(serde_json::from_str::<IoRates>(&json).unwrap(), rates);

        // A snapshot minus itself is empty, with zero rates.
        let nothing = later.delta(&later).unwrap();
        assert_eq!(nothing.counters.total(), OpStats::default());
        assert_eq!(nothing.rates().all, OpRates::default());
    }

    #[test]
    fn delta_refuses_swapped_or_foreign_snapshots() {
        let earlier = sample_snapshot(1_000, 1);
        let later = sample_snapshot(2_000, 2);
        assert!(later.delta(&earlier).is_ok());
        assert_eq!(
            earlier.delta(&later),
            Err(StatsError::TimeWentBack {
                earlier_ns: 2_000_000_000,
                later_ns: 1_000_000_000
            })
        );
        // A restarted server: fresh counters, later clock.
        let restarted = sample_snapshot(3_000, 1);
        assert_eq!(
            restarted.delta(&later),
            Err(StatsError::CounterWentBack {
                counter: "read.ops",
                earlier: 200,
                later: 100
            })
        );
    }

    #[test]
    fn device_stats_are_send_and_sync() {
        fn shareable<T: Send + Sync>() {}
        shareable::<DeviceStats>();
        shareable::<StatsSnapshot>();
    }

    /// Latencies spread over every power of two of the range and a bit beyond, with a random
    /// sub-microsecond part that recording truncates.
    fn latency_samples() -> impl Strategy<Value = Vec<(u64, u32)>> {
        let one = (0u32..=RANGE_BITS + 1, any::<u64>(), 0u32..1000)
            .prop_map(|(bits, r, ns)| (r & ((1u64 << bits) - 1), ns));
        prop::collection::vec(one, 1..400)
    }

    proptest! {
        /// Whatever the samples, every quantile is within the documented bound of the exact one.
        #[test]
        fn quantiles_within_error_bound(samples in latency_samples(), q in 0.0f64..=1.0) {
            let stats = DeviceStats::new();
            for &(us, ns) in &samples {
                let latency = Duration::from_micros(us) + Duration::from_nanos(u64::from(ns));
                stats.record(Op::Write, 0, latency, true);
            }
            let h = stats.snapshot(Duration::ZERO).counters.write_latency;
            let whole_us: Vec<u64> = samples.iter().map(|&(us, _)| us).collect();
            for q in [q, 0.0, 0.5, 0.99, 0.999, 1.0] {
                let exact = exact_quantile(&whole_us, q);
                let reported = h.quantile(q).unwrap();
                prop_assert!(within_bound(exact, reported), "q {}: {} vs {}", q, reported, exact);
            }
        }

        /// The histogram of a delta is the histogram of the samples recorded in between.
        #[test]
        fn delta_histogram_is_the_later_samples(
            before in latency_samples(),
            after in latency_samples(),
        ) {
            let stats = DeviceStats::new();
            let record = |samples: &[(u64, u32)]| {
                for &(us, _) in samples {
                    stats.record(Op::Read, 512, Duration::from_micros(us), true);
                }
            };
            record(&before);
            let earlier = stats.snapshot(Duration::from_secs(1));
            record(&after);
            let later = stats.snapshot(Duration::from_secs(2));
            let delta = later.delta(&earlier).unwrap();
            let after_us: Vec<u64> = after.iter().map(|&(us, _)| us).collect();
            prop_assert_eq!(&delta.counters.latency, &histogram_of(&after_us));
            prop_assert_eq!(delta.counters.read.ops, after.len() as u64);
        }
    }
}
