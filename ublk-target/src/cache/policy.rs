//! The cache's pure policies, driven by an injected clock: which I/O bypasses the cache
//! (sequential cutoff) and how much dirty data background writeback may write now (watermarks,
//! maximum dirty age, rate limit).

use std::time::Duration;

/// Streams tracked at once by the sequential detector (bcache judges over recent I/Os too).
const TRACKED_STREAMS: usize = 16;
/// A stream idle this long is forgotten.
const STREAM_IDLE: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug)]
struct Stream {
    next_offset: u64,
    run_bytes: u64,
    last_seen: Duration,
}

/// Detects large sequential streams so they bypass the cache: caching a backup or a copy only
/// evicts data that is reused.
#[derive(Debug)]
pub struct SequentialDetector {
    cutoff: u64,
    streams: Vec<Stream>,
}

impl SequentialDetector {
    /// A detector that sends a stream to the backing store once it has run `cutoff` bytes
    /// (0 disables the cutoff).
    pub fn new(cutoff: u64) -> Self {
        SequentialDetector {
            cutoff,
            streams: Vec::with_capacity(TRACKED_STREAMS),
        }
    }

    /// Records an I/O of `len` bytes at `offset` and says whether it should bypass the cache:
    /// it continues a stream that had already run at least the cutoff.
    pub fn observe(&mut self, offset: u64, len: u64, now: Duration) -> bool {
        if self.cutoff == 0 {
            return false;
        }
        self.streams
            .retain(|s| now.saturating_sub(s.last_seen) < STREAM_IDLE);
        let end = offset.saturating_add(len);
        if let Some(stream) = self.streams.iter_mut().find(|s| s.next_offset == offset) {
            let bypass = stream.run_bytes >= self.cutoff;
            stream.run_bytes = stream.run_bytes.saturating_add(len);
            stream.next_offset = end;
            stream.last_seen = now;
            return bypass;
        }
        if self.streams.len() == TRACKED_STREAMS {
            let oldest = (0..self.streams.len())
                .min_by_key(|&i| self.streams[i].last_seen)
                .expect("full, so not empty");
            self.streams.swap_remove(oldest);
        }
        self.streams.push(Stream {
            next_offset: end,
            run_bytes: len,
            last_seen: now,
        });
        false
    }
}

/// When and how fast background writeback runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WritebackPolicy {
    /// Writeback starts when dirty blocks exceed this percentage of the cache.
    pub high_watermark_percent: u8,
    /// ... and continues until they drop to this percentage.
    pub low_watermark_percent: u8,
    /// Dirty data older than this is written back whatever the watermarks say.
    #[serde(rename = "max_dirty_age_ms", with = "duration_ms")]
    pub max_dirty_age: Duration,
    /// Bytes per second background writeback may write (foreground I/O keeps the rest).
    pub rate_bytes_per_sec: u64,
    /// Most blocks written back per step.
    pub batch_blocks: u32,
}

mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

impl Default for WritebackPolicy {
    /// dm-writecache's watermarks (50/45), a 30 s age limit (bcache's `writeback_delay`),
    /// 64 MiB/s, 64 blocks a step.
    fn default() -> Self {
        WritebackPolicy {
            high_watermark_percent: 50,
            low_watermark_percent: 45,
            max_dirty_age: Duration::from_secs(30),
            rate_bytes_per_sec: 64 << 20,
            batch_blocks: 64,
        }
    }
}

impl WritebackPolicy {
    /// Checks the policy's numbers; the message names the bad field.
    pub fn validate(&self) -> Result<(), String> {
        if self.low_watermark_percent > self.high_watermark_percent
            || self.high_watermark_percent > 100
        {
            return Err(format!(
                "writeback watermarks must satisfy low <= high <= 100 (got low {} high {})",
                self.low_watermark_percent, self.high_watermark_percent
            ));
        }
        if self.rate_bytes_per_sec == 0 || self.batch_blocks == 0 {
            return Err("writeback rate and batch must be positive".to_owned());
        }
        Ok(())
    }
}

/// Why background writeback wrote something.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WritebackReason {
    /// Dirty data is above the high watermark (and not yet down to the low one).
    Watermark,
    /// Some dirty data is older than the maximum age.
    Age,
}

/// The writeback controller's state: hysteresis between the watermarks and a token bucket.
#[derive(Debug)]
pub struct WritebackThrottle {
    policy: WritebackPolicy,
    draining: bool,
    tokens: u64,
    last_refill: Duration,
}

/// What the controller allows this step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WritebackPlan {
    /// Blocks to write back, oldest dirty first (0 = nothing now).
    pub blocks: u64,
    /// Only blocks dirty since before this instant qualify (age-driven writeback), or any
    /// dirty block (`None`, watermark-driven).
    pub dirty_before: Option<Duration>,
    /// Why.
    pub reason: Option<WritebackReason>,
}

impl WritebackThrottle {
    /// A controller starting at `now` with an empty token bucket.
    pub fn new(policy: WritebackPolicy, now: Duration) -> Self {
        WritebackThrottle {
            policy,
            draining: false,
            tokens: 0,
            last_refill: now,
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> WritebackPolicy {
        self.policy
    }

    fn burst_bytes(&self) -> u64 {
        u64::from(self.policy.batch_blocks) * super::layout::CACHE_BLOCK
    }

    fn refill(&mut self, now: Duration) {
        let elapsed = now.saturating_sub(self.last_refill);
        self.last_refill = self.last_refill.max(now);
        let earned =
            u128::from(self.policy.rate_bytes_per_sec) * elapsed.as_nanos() / 1_000_000_000;
        let earned = u64::try_from(earned).unwrap_or(u64::MAX);
        self.tokens = self.tokens.saturating_add(earned).min(self.burst_bytes());
    }

    /// Decides what to write back at `now`, given `dirty` of `capacity` blocks dirty and the
    /// time the oldest dirty block became dirty.
    pub fn plan(
        &mut self,
        now: Duration,
        dirty: u64,
        capacity: u64,
        oldest_dirty_since: Option<Duration>,
    ) -> WritebackPlan {
        self.refill(now);
        let percent = |p: u8| capacity * u64::from(p) / 100;
        if dirty > percent(self.policy.high_watermark_percent) {
            self.draining = true;
        }
        if dirty <= percent(self.policy.low_watermark_percent) {
            self.draining = false;
        }
        let affordable =
            (self.tokens / super::layout::CACHE_BLOCK).min(u64::from(self.policy.batch_blocks));
        let aged = oldest_dirty_since
            .is_some_and(|since| now.saturating_sub(since) >= self.policy.max_dirty_age);
        let (reason, wanted, dirty_before) = if self.draining {
            let above_low = dirty - percent(self.policy.low_watermark_percent);
            (Some(WritebackReason::Watermark), above_low, None)
        } else if aged {
            let cutoff = now.saturating_sub(self.policy.max_dirty_age);
            (Some(WritebackReason::Age), dirty, Some(cutoff))
        } else {
            (None, 0, None)
        };
        WritebackPlan {
            blocks: wanted.min(affordable),
            dirty_before,
            reason,
        }
    }

    /// Charges `blocks` written back against the token bucket.
    pub fn charge(&mut self, blocks: u64) {
        self.tokens = self
            .tokens
            .saturating_sub(blocks.saturating_mul(super::layout::CACHE_BLOCK));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::layout::CACHE_BLOCK;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_long_sequential_stream_bypasses_after_the_cutoff() {
        let mut d = SequentialDetector::new(1 << 20);
        let io = 128 << 10;
        let bypassed: Vec<bool> = (0..12u64)
            .map(|i| d.observe(i * io, io, MS * i as u32))
            .collect();
        // 8 × 128 KiB = 1 MiB ran before the 9th I/O.
        assert_eq!(bypassed.iter().position(|&b| b), Some(8));
        assert!(bypassed[8..].iter().all(|&b| b));
        // Random I/O never does.
        assert!(!d.observe(77 << 20, 4096, MS * 20));
    }

    #[test]
    fn streams_interleave_and_expire() {
        let mut d = SequentialDetector::new(64 << 10);
        let (a, b) = (0u64, 1 << 30);
        for i in 0..16u64 {
            d.observe(a + i * 4096, 4096, MS);
            d.observe(b + i * 4096, 4096, MS);
        }
        assert!(d.observe(a + 16 * 4096, 4096, MS), "stream a tracked");
        assert!(d.observe(b + 16 * 4096, 4096, MS), "stream b tracked");
        // After a pause the stream starts over.
        assert!(!d.observe(a + 17 * 4096, 4096, MS + STREAM_IDLE));
        assert!(!SequentialDetector::new(0).observe(0, 1 << 30, MS));
    }

    fn policy() -> WritebackPolicy {
        WritebackPolicy {
            high_watermark_percent: 50,
            low_watermark_percent: 40,
            max_dirty_age: Duration::from_secs(10),
            rate_bytes_per_sec: 100 * CACHE_BLOCK,
            batch_blocks: 1000,
        }
    }

    #[test]
    fn watermarks_have_hysteresis() {
        let mut t = WritebackThrottle::new(policy(), Duration::ZERO);
        let now = Duration::from_secs(100); // bucket full
        assert_eq!(t.plan(now, 50, 100, Some(now)).blocks, 0, "at high: idle");
        let plan = t.plan(now, 51, 100, Some(now));
        assert_eq!(
            (plan.blocks, plan.reason),
            (11, Some(WritebackReason::Watermark))
        );
        // Between the marks it keeps going until the low one.
        assert_eq!(t.plan(now, 45, 100, Some(now)).blocks, 5);
        assert_eq!(t.plan(now, 40, 100, Some(now)).blocks, 0);
        assert_eq!(
            t.plan(now, 45, 100, Some(now)).blocks,
            0,
            "stopped below high"
        );
    }

    #[test]
    fn old_dirty_data_is_written_back_whatever_the_watermarks() {
        let mut t = WritebackThrottle::new(policy(), Duration::ZERO);
        let now = Duration::from_secs(100);
        let young = t.plan(now, 3, 100, Some(now - Duration::from_secs(9)));
        assert_eq!(young.blocks, 0);
        let old = t.plan(now, 3, 100, Some(now - Duration::from_secs(10)));
        assert_eq!(old.reason, Some(WritebackReason::Age));
        assert_eq!(old.dirty_before, Some(now - Duration::from_secs(10)));
        assert_eq!(old.blocks, 3);
    }

    #[test]
    fn the_rate_limit_meters_blocks_by_the_clock() {
        let mut t = WritebackThrottle::new(policy(), Duration::ZERO);
        // 100 blocks/s: after 50 ms, 5 blocks.
        let plan = t.plan(MS * 50, 90, 100, None);
        assert_eq!(plan.blocks, 5);
        t.charge(plan.blocks);
        assert_eq!(t.plan(MS * 50, 90, 100, None).blocks, 0, "spent");
        assert_eq!(t.plan(MS * 60, 90, 100, None).blocks, 1);
        // Idle time accrues at most one batch.
        let mut t = WritebackThrottle::new(
            WritebackPolicy {
                batch_blocks: 8,
                ..policy()
            },
            Duration::ZERO,
        );
        assert_eq!(t.plan(Duration::from_secs(3600), 90, 100, None).blocks, 8);
    }

    #[test]
    fn bad_policies_are_named() {
        let bad = WritebackPolicy {
            low_watermark_percent: 60,
            ..policy()
        };
        assert!(bad.validate().unwrap_err().contains("low 60 high 50"));
        assert!(policy().validate().is_ok());
    }
}
