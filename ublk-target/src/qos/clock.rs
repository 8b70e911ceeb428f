//! Time sources for the limiter. The limiter itself never reads a clock: callers pass `now`,
//! taken from one of these, so tests can drive time by hand.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::time::{clock_gettime, ClockId};

/// A monotonic time source: time since an origin shared by every limiter fed from it.
///
/// All limiters that share a [`QosGroup`](super::QosGroup) or a
/// [`SharedGroup`](super::SharedGroup) must be fed from clocks with the same origin.
/// [`MonotonicClock`] reads the system-wide `CLOCK_MONOTONIC`, whose origin (boot) every process
/// of the machine agrees on, which is what a group shared by several processes needs.
pub trait Clock: Send + Sync {
    /// Time since the clock's origin. Never decreases.
    fn now(&self) -> Duration;
}

/// The machine's monotonic clock, `CLOCK_MONOTONIC`, read as the absolute time since its origin
/// (about boot), not since a per-process origin: readings from different processes of one
/// machine (in one time namespace) are comparable, so a [`SharedGroup`](super::SharedGroup)'s
/// buckets can hold timestamps taken by any of its members.
///
/// # Panics
/// If `clock_gettime(CLOCK_MONOTONIC)` fails, which Linux only does for an unknown clock id.
#[derive(Clone, Copy, Debug, Default)]
pub struct MonotonicClock;

impl Clock for MonotonicClock {
    fn now(&self) -> Duration {
        let now = clock_gettime(ClockId::CLOCK_MONOTONIC)
            .expect("CLOCK_MONOTONIC exists on every Linux kernel");
        Duration::from(now)
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
    fn the_monotonic_clock_is_the_raw_system_clock() {
        let a = MonotonicClock.now();
        let raw = Duration::from(clock_gettime(ClockId::CLOCK_MONOTONIC).unwrap());
        let b = MonotonicClock.now();
        // No per-process origin is subtracted: the reading is CLOCK_MONOTONIC itself, which every
        // process of the machine shares.
        assert!(a <= raw && raw <= b, "{a:?} <= {raw:?} <= {b:?}");
    }
}
