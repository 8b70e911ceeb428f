//! Time sources for the limiter. The limiter itself never reads a clock: callers pass `now`,
//! taken from one of these, so tests can drive time by hand.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A monotonic time source: time since an origin shared by every limiter fed from it.
///
/// All limiters that share a [`QosGroup`](super::QosGroup) must be fed from clocks with the same
/// origin; [`MonotonicClock`] guarantees that by using one origin per process.
pub trait Clock: Send + Sync {
    /// Time since the clock's origin. Never decreases.
    fn now(&self) -> Duration;
}

/// The process's monotonic clock (`std::time::Instant`), measured from a process-wide origin
/// fixed the first time any `MonotonicClock` is read, so every instance agrees.
#[derive(Clone, Copy, Debug, Default)]
pub struct MonotonicClock;

static ORIGIN: OnceLock<Instant> = OnceLock::new();

impl Clock for MonotonicClock {
    fn now(&self) -> Duration {
        ORIGIN.get_or_init(Instant::now).elapsed()
    }
}

/// A clock that moves only when told to, for deterministic tests. Shareable between threads.
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ns: AtomicU64,
}

impl ManualClock {
    /// A clock reading zero.
    pub fn new() -> ManualClock {
        ManualClock::default()
    }

    /// Moves the clock forward by `by` (saturating at `u64::MAX` nanoseconds, 584 years).
    pub fn advance(&self, by: Duration) {
        let by_ns = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let before = self.now_ns.load(Ordering::Relaxed);
        self.now_ns
            .store(before.saturating_add(by_ns), Ordering::Relaxed);
    }

    /// Sets the clock to `to`.
    ///
    /// # Panics
    /// If `to` is earlier than the current reading: a monotonic clock never goes back.
    pub fn set(&self, to: Duration) {
        let to_ns = u64::try_from(to.as_nanos()).unwrap_or(u64::MAX);
        let before = self.now_ns.swap(to_ns, Ordering::Relaxed);
        assert!(
            to_ns >= before,
            "ManualClock moved back from {before} ns to {to_ns} ns"
        );
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.now_ns.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_by_hand() {
        let c = ManualClock::new();
        assert_eq!(c.now(), Duration::ZERO);
        c.advance(Duration::from_millis(5));
        c.set(Duration::from_millis(7));
        assert_eq!(c.now(), Duration::from_millis(7));
        c.advance(Duration::MAX);
        assert_eq!(c.now(), Duration::from_nanos(u64::MAX));
    }

    #[test]
    fn monotonic_clocks_share_an_origin() {
        let a = MonotonicClock.now();
        let b = MonotonicClock.now();
        assert!(b >= a);
    }
}
