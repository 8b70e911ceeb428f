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

/// A clock read once per turn of a queue thread's event loop instead of once per use: every
/// request a turn starts or finishes is stamped with the time the turn began (right after its
/// completions were reaped), which spares the data path two clock reads per request (each an
/// emulated TSC read in a TCG guest). Latencies are then measured between the turns that saw a
/// request arrive and leave, and QoS admits at the turn's time; readings never go back.
/// One writer (the loop, through [`CachedClock::refresh`]); readers on the same thread.
#[derive(Debug, Default)]
pub struct CachedClock {
    now_ns: AtomicU64,
}

impl CachedClock {
    /// A clock holding `source`'s current reading.
    pub fn new(source: &impl Clock) -> CachedClock {
        let clock = CachedClock::default();
        clock.refresh(source);
        clock
    }

    /// Takes a new reading from `source`; kept only if it is not earlier than the last one.
    pub fn refresh(&self, source: &impl Clock) {
        let now_ns = u64::try_from(source.now().as_nanos()).unwrap_or(u64::MAX);
        // A load and a store, not a read-modify-write: the only writer is the caller's thread.
        if now_ns > self.now_ns.load(Ordering::Relaxed) {
            self.now_ns.store(now_ns, Ordering::Relaxed);
        }
    }
}

impl Clock for CachedClock {
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
    fn a_cached_clock_moves_only_when_refreshed_and_never_back() {
        let source = ManualClock::new();
        source.set(Duration::from_millis(3));
        let cached = CachedClock::new(&source);
        source.advance(Duration::from_millis(2));
        assert_eq!(cached.now(), Duration::from_millis(3), "not refreshed yet");
        cached.refresh(&source);
        assert_eq!(cached.now(), Duration::from_millis(5));
        cached.refresh(&ManualClock::new());
        assert_eq!(
            cached.now(),
            Duration::from_millis(5),
            "an earlier reading is ignored"
        );
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
