//! What an operator configures ([`QosLimits`]), how it is validated ([`QosError`]), and what one
//! request costs under it.
//!
//! Everything here is plain data: no clock, no locking. [`super::bucket`] turns a validated
//! [`QosLimits`] into token buckets.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::request::{Op, SECTOR_SIZE};

/// The highest sustained or peak rate accepted, in units (ops or bytes) per second: 2^50, about
/// 1.1e15. No device comes near it, and it keeps every product in the bucket math far from the
/// integer limits (see the compile-time checks below).
pub const MAX_RATE_PER_SEC: u64 = 1 << 50;
/// The longest burst (`max_length_ms`) accepted: one hour.
pub const MAX_BURST_LENGTH_MS: u64 = 3_600_000;
/// The largest burst (bucket capacity) accepted, in units: one hour at [`MAX_RATE_PER_SEC`].
pub const MAX_BURST: u64 = MAX_RATE_PER_SEC / 1000 * MAX_BURST_LENGTH_MS;
/// The smallest byte rate and byte burst accepted: one sector, the smallest I/O there is. A byte
/// bucket that cannot hold one sector would make every I/O wait.
pub const MIN_BYTES: u64 = SECTOR_SIZE;
/// The largest `iops_size_bytes` accepted: 1 GiB.
pub const MAX_IOPS_SIZE_BYTES: u64 = 1 << 30;
/// The largest per-op cost for FLUSH or DISCARD/WRITE_ZEROES, in ops.
pub const MAX_OP_COST_OPS: u64 = 1 << 20;
/// The burst length used when `max_*_per_sec` is set without `max_length_ms`: one second, as in
/// QEMU.
pub const DEFAULT_MAX_LENGTH_MS: u64 = 1000;
/// What a FLUSH (or a data-less WRITE) costs when `flush_cost_ops` is not set.
pub const DEFAULT_FLUSH_COST_OPS: u64 = 1;
/// What a DISCARD or WRITE_ZEROES costs when `discard_cost_ops` is not set.
pub const DEFAULT_DISCARD_COST_OPS: u64 = 1;

// The sustained bucket of a bursty limit holds `burst + (max - rate) * max_length`: both terms
// are bounded by MAX_BURST, so the sum fits in u64 without saturating.
const _: () = assert!(MAX_BURST as u128 * 2 <= u64::MAX as u128);
const _: () = assert!(MAX_BURST >= MAX_RATE_PER_SEC);
const _: () = assert!(MIN_BYTES >= 1 && MIN_BYTES <= MAX_IOPS_SIZE_BYTES);
const _: () = assert!(DEFAULT_MAX_LENGTH_MS <= MAX_BURST_LENGTH_MS);
const _: () = assert!(DEFAULT_FLUSH_COST_OPS <= MAX_OP_COST_OPS);
const _: () = assert!(DEFAULT_DISCARD_COST_OPS <= MAX_OP_COST_OPS);

/// An I/O-operations limit. Units: operations, after `iops_size_bytes` normalization.
///
/// See the [module documentation](super) for what `burst_ops`, `max_ops_per_sec` and
/// `max_length_ms` mean exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpsLimit {
    /// Sustained rate, in ops per second.
    pub ops_per_sec: u64,
    /// Ops that may pass at once after an idle period. Default: one second of `ops_per_sec`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst_ops: Option<u64>,
    /// Peak rate allowed during a burst, in ops per second; above `ops_per_sec`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ops_per_sec: Option<u64>,
    /// How long the peak rate may last, in milliseconds. Only with `max_ops_per_sec`; default
    /// [`DEFAULT_MAX_LENGTH_MS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length_ms: Option<u64>,
}

/// A throughput limit. Units: bytes.
///
/// See the [module documentation](super) for what `burst_bytes`, `max_bytes_per_sec` and
/// `max_length_ms` mean exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BytesLimit {
    /// Sustained rate, in bytes per second.
    pub bytes_per_sec: u64,
    /// Bytes that may pass at once after an idle period. Default: one second of
    /// `bytes_per_sec`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst_bytes: Option<u64>,
    /// Peak rate allowed during a burst, in bytes per second; above `bytes_per_sec`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes_per_sec: Option<u64>,
    /// How long the peak rate may last, in milliseconds. Only with `max_bytes_per_sec`; default
    /// [`DEFAULT_MAX_LENGTH_MS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length_ms: Option<u64>,
}

impl OpsLimit {
    /// A plain sustained limit with the default burst and no peak rate.
    pub fn per_sec(ops_per_sec: u64) -> OpsLimit {
        OpsLimit {
            ops_per_sec,
            burst_ops: None,
            max_ops_per_sec: None,
            max_length_ms: None,
        }
    }
}

impl BytesLimit {
    /// A plain sustained limit with the default burst and no peak rate.
    pub fn per_sec(bytes_per_sec: u64) -> BytesLimit {
        BytesLimit {
            bytes_per_sec,
            burst_bytes: None,
            max_bytes_per_sec: None,
            max_length_ms: None,
        }
    }
}

/// A device's or a group's limits. Every field is optional; an absent limit does not limit.
///
/// [`QosLimits::default()`] limits nothing. Which request counts against which limit, and at what
/// cost, is in the [module documentation](super).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QosLimits {
    /// Reads, in ops.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_ops: Option<OpsLimit>,
    /// Writes, discards and write-zeroes, in ops.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_ops: Option<OpsLimit>,
    /// Every request, flushes included, in ops.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_ops: Option<OpsLimit>,
    /// Bytes read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_bytes: Option<BytesLimit>,
    /// Bytes written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_bytes: Option<BytesLimit>,
    /// Bytes read or written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<BytesLimit>,
    /// Size normalization for ops limits (QEMU's `iops-size`): when set, a read or write of N
    /// bytes costs `max(1, ceil(N / iops_size_bytes))` ops instead of 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iops_size_bytes: Option<u64>,
    /// What a FLUSH costs, in ops against `total_ops` only; 0 makes flushes free. Default
    /// [`DEFAULT_FLUSH_COST_OPS`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flush_cost_ops: Option<u64>,
    /// What a DISCARD or WRITE_ZEROES costs, in ops against `write_ops` and `total_ops`, whatever
    /// its length; 0 makes them free. Default [`DEFAULT_DISCARD_COST_OPS`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discard_cost_ops: Option<u64>,
    /// Whether a DISCARD or WRITE_ZEROES of N bytes also costs N bytes against `write_bytes`
    /// and `total_bytes` (default: no, they cost no bytes). For backends where zeroing really
    /// writes (no hole punching) or where discards are expensive.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub discard_counts_bytes: bool,
}

/// Why a [`QosLimits`] was rejected. `limit` names the offending field (`"read_ops"`, ...).
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum QosError {
    /// A rate, burst, length, size or cost outside what is accepted.
    #[error("{limit}: {what} {value} is out of range ({min}..={max})")]
    OutOfRange {
        /// The limit it belongs to.
        limit: &'static str,
        /// The setting.
        what: &'static str,
        /// Its value.
        value: u64,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },
    /// A peak rate that is not above the sustained rate.
    #[error("{limit}: the peak rate {max_per_sec}/s is not above the sustained rate {per_sec}/s")]
    MaxNotAboveRate {
        /// The limit.
        limit: &'static str,
        /// The sustained rate, per second.
        per_sec: u64,
        /// The peak rate, per second.
        max_per_sec: u64,
    },
    /// `max_length_ms` without a peak rate, which would silently do nothing.
    #[error("{limit}: max_length_ms is set but there is no peak rate")]
    LengthWithoutMax {
        /// The limit.
        limit: &'static str,
    },
    /// A burst smaller than what the device's largest I/O costs: every such I/O would wait.
    #[error(
        "{limit}: a burst of {burst} is smaller than one {io_bytes}-byte I/O, which costs {cost}"
    )]
    BurstBelowIo {
        /// The limit.
        limit: &'static str,
        /// The burst, in the limit's units.
        burst: u64,
        /// What the largest I/O costs, in the same units.
        cost: u64,
        /// The largest I/O, in bytes.
        io_bytes: u64,
    },
}

/// Which class a request is charged to (besides the totals).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    /// `read_*` and `total_*`.
    Read,
    /// `write_*` and `total_*`.
    Write,
    /// `total_*` only (flushes).
    Other,
}

/// What one request costs under a set of limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cost {
    /// The class it is charged to.
    pub(crate) class: Class,
    /// Ops, normalized.
    pub(crate) ops: u64,
    /// Bytes.
    pub(crate) bytes: u64,
}

/// One token bucket: refill rate and capacity, in the same units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BucketSpec {
    /// Units per second, in `1..=MAX_RATE_PER_SEC` once validated.
    pub(crate) rate_per_sec: u64,
    /// Units, at least 1.
    pub(crate) capacity: u64,
}

/// The buckets one limit turns into: a sustained bucket and, with a peak rate, a peak bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LaneSpec {
    /// Refills at the sustained rate.
    pub(crate) sustained: BucketSpec,
    /// Refills at the peak rate.
    pub(crate) peak: Option<BucketSpec>,
}

/// The unit-free view of an [`OpsLimit`] or a [`BytesLimit`].
#[derive(Clone, Copy, Debug)]
struct Generic {
    name: &'static str,
    /// The smallest meaningful rate and burst: one op, or one sector.
    min: u64,
    per_sec: u64,
    burst: Option<u64>,
    max_per_sec: Option<u64>,
    max_length_ms: Option<u64>,
}

impl From<(&'static str, &OpsLimit)> for Generic {
    fn from((name, l): (&'static str, &OpsLimit)) -> Generic {
        Generic {
            name,
            min: 1,
            per_sec: l.ops_per_sec,
            burst: l.burst_ops,
            max_per_sec: l.max_ops_per_sec,
            max_length_ms: l.max_length_ms,
        }
    }
}

impl From<(&'static str, &BytesLimit)> for Generic {
    fn from((name, l): (&'static str, &BytesLimit)) -> Generic {
        Generic {
            name,
            min: MIN_BYTES,
            per_sec: l.bytes_per_sec,
            burst: l.burst_bytes,
            max_per_sec: l.max_bytes_per_sec,
            max_length_ms: l.max_length_ms,
        }
    }
}

fn range(
    limit: &'static str,
    what: &'static str,
    value: u64,
    min: u64,
    max: u64,
) -> Result<(), QosError> {
    if (min..=max).contains(&value) {
        return Ok(());
    }
    Err(QosError::OutOfRange {
        limit,
        what,
        value,
        min,
        max,
    })
}

impl Generic {
    fn validate(&self) -> Result<(), QosError> {
        let name = self.name;
        range(
            name,
            "rate per second",
            self.per_sec,
            self.min,
            MAX_RATE_PER_SEC,
        )?;
        if let Some(burst) = self.burst {
            range(name, "burst", burst, self.min, MAX_BURST)?;
        }
        match (self.max_per_sec, self.max_length_ms) {
            (None, Some(_)) => return Err(QosError::LengthWithoutMax { limit: name }),
            (None, None) => {}
            (Some(max_per_sec), length_ms) => {
                range(
                    name,
                    "peak rate per second",
                    max_per_sec,
                    self.min,
                    MAX_RATE_PER_SEC,
                )?;
                if max_per_sec <= self.per_sec {
                    return Err(QosError::MaxNotAboveRate {
                        limit: name,
                        per_sec: self.per_sec,
                        max_per_sec,
                    });
                }
                let length_ms = length_ms.unwrap_or(DEFAULT_MAX_LENGTH_MS);
                range(name, "max_length_ms", length_ms, 1, MAX_BURST_LENGTH_MS)?;
            }
        }
        Ok(())
    }

    /// The buckets of a validated limit: see the module documentation for the formulas.
    fn lane(&self) -> LaneSpec {
        assert!(
            self.validate().is_ok(),
            "lane() of an invalid limit {self:?}"
        );
        let burst = self.burst.unwrap_or(self.per_sec);
        let lane = match self.max_per_sec {
            None => LaneSpec {
                sustained: BucketSpec {
                    rate_per_sec: self.per_sec,
                    capacity: burst,
                },
                peak: None,
            },
            Some(max_per_sec) => {
                let length_ms = self.max_length_ms.unwrap_or(DEFAULT_MAX_LENGTH_MS);
                // Exact in u128: (max - rate) * length_ms <= 2^50 * 3.6e6 < 2^72.
                let extra = u128::from(max_per_sec - self.per_sec) * u128::from(length_ms) / 1000;
                let extra = u64::try_from(extra).expect("bounded by MAX_BURST");
                LaneSpec {
                    sustained: BucketSpec {
                        rate_per_sec: self.per_sec,
                        capacity: burst + extra,
                    },
                    peak: Some(BucketSpec {
                        rate_per_sec: max_per_sec,
                        capacity: burst,
                    }),
                }
            }
        };
        assert!(lane.sustained.capacity >= self.min);
        assert!(lane
            .peak
            .is_none_or(|p| p.capacity <= lane.sustained.capacity));
        lane
    }
}

/// Index of each limit in [`QosLimits::lanes`] and in the bucket set.
pub(crate) const READ_OPS: usize = 0;
pub(crate) const WRITE_OPS: usize = 1;
pub(crate) const TOTAL_OPS: usize = 2;
pub(crate) const READ_BYTES: usize = 3;
pub(crate) const WRITE_BYTES: usize = 4;
pub(crate) const TOTAL_BYTES: usize = 5;
/// How many limits (lanes) a [`QosLimits`] has.
pub(crate) const LANES: usize = 6;

impl QosLimits {
    /// Whether no rate limit is set (costs alone limit nothing).
    pub fn is_unlimited(&self) -> bool {
        self.generics().iter().all(Option::is_none)
    }

    /// Checks every setting: rates in `1..=MAX_RATE_PER_SEC` (bytes: from one sector), bursts
    /// of at least one op or one sector, peak rates above their sustained rate, burst lengths
    /// in `1..=MAX_BURST_LENGTH_MS` ms, `iops_size_bytes` in `MIN_BYTES..=MAX_IOPS_SIZE_BYTES`,
    /// op costs at most [`MAX_OP_COST_OPS`].
    pub fn validate(&self) -> Result<(), QosError> {
        for g in self.generics().iter().flatten() {
            g.validate()?;
        }
        if let Some(size) = self.iops_size_bytes {
            range(
                "iops_size_bytes",
                "size",
                size,
                MIN_BYTES,
                MAX_IOPS_SIZE_BYTES,
            )?;
        }
        if let Some(cost) = self.flush_cost_ops {
            range("flush_cost_ops", "cost", cost, 0, MAX_OP_COST_OPS)?;
        }
        if let Some(cost) = self.discard_cost_ops {
            range("discard_cost_ops", "cost", cost, 0, MAX_OP_COST_OPS)?;
        }
        Ok(())
    }

    /// [`validate`](Self::validate), and also checks that every burst holds the device's largest
    /// read or write (`max_io_bytes`, after `iops_size_bytes` normalization for ops limits).
    /// A smaller burst still works (the I/O waits for the debt it creates) but can never pass
    /// without waiting, which is almost certainly a configuration mistake.
    pub fn validate_for_max_io(&self, max_io_bytes: u64) -> Result<(), QosError> {
        self.validate()?;
        let io_ops = self.cost(Op::Read, max_io_bytes).ops;
        for (i, g) in self.generics().iter().enumerate() {
            let Some(g) = g else { continue };
            let cost = if i < READ_BYTES { io_ops } else { max_io_bytes };
            // The peak bucket is the smaller one; it holds `burst`.
            let burst = g.burst.unwrap_or(g.per_sec);
            if burst < cost {
                return Err(QosError::BurstBelowIo {
                    limit: g.name,
                    burst,
                    cost,
                    io_bytes: max_io_bytes,
                });
            }
        }
        Ok(())
    }

    fn generics(&self) -> [Option<Generic>; LANES] {
        let ops = |name, l: &Option<OpsLimit>| l.as_ref().map(|l| Generic::from((name, l)));
        let bytes = |name, l: &Option<BytesLimit>| l.as_ref().map(|l| Generic::from((name, l)));
        [
            ops("read_ops", &self.read_ops),
            ops("write_ops", &self.write_ops),
            ops("total_ops", &self.total_ops),
            bytes("read_bytes", &self.read_bytes),
            bytes("write_bytes", &self.write_bytes),
            bytes("total_bytes", &self.total_bytes),
        ]
    }

    /// The buckets of each limit, indexed by `READ_OPS`..`TOTAL_BYTES`. Only for validated
    /// limits (asserted).
    pub(crate) fn lanes(&self) -> [Option<LaneSpec>; LANES] {
        self.generics().map(|g| g.map(|g| g.lane()))
    }

    /// The ops cost of a READ or WRITE of `bytes` (normalized by `iops_size_bytes`).
    #[inline]
    pub(crate) fn data_ops(&self, bytes: u64) -> u64 {
        match self.iops_size_bytes {
            None => 1,
            Some(size) => {
                assert!(size > 0, "iops_size_bytes validated");
                bytes.div_ceil(size).max(1)
            }
        }
    }

    /// What one request costs; see the module documentation for the table. `bytes` is the
    /// request's length (ignored for FLUSH).
    pub(crate) fn cost(&self, op: Op, bytes: u64) -> Cost {
        let normalized = self.data_ops(bytes);
        let flush = || Cost {
            class: Class::Other,
            ops: self.flush_cost_ops.unwrap_or(DEFAULT_FLUSH_COST_OPS),
            bytes: 0,
        };
        let cost = match op {
            Op::Read => Cost {
                class: Class::Read,
                ops: normalized,
                bytes,
            },
            // A data-less write is a PREFLUSH the block layer did not split off: a flush.
            Op::Write if bytes == 0 => flush(),
            Op::Write => Cost {
                class: Class::Write,
                ops: normalized,
                bytes,
            },
            Op::Flush => flush(),
            Op::Discard | Op::WriteZeroes => Cost {
                class: Class::Write,
                ops: self.discard_cost_ops.unwrap_or(DEFAULT_DISCARD_COST_OPS),
                bytes: if self.discard_counts_bytes { bytes } else { 0 },
            },
        };
        assert!(cost.class != Class::Other || cost.bytes == 0);
        cost
    }
}
