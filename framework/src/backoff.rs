//! Bounded, jittered exponential backoff for reconnecting and retrying.
//!
//! Attempt `n` (counting from 0) waits a random time in `[c/2, c]`, where
//! `c = min(initial × 2ⁿ, max)` ("equal jitter": never less than half the ceiling, so a crowd of
//! clients spreads out without any of them hammering the server). After `attempts_max` attempts
//! the backoff is exhausted and the caller gives up. The random source is injectable
//! ([`BackoffPolicy::delay`] takes the random fraction) so the arithmetic is tested exactly.

use std::time::Duration;

/// How a driver waits between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// The ceiling of the first wait.
    pub initial: Duration,
    /// The largest ceiling; doubling stops here.
    pub max: Duration,
    /// Attempts before giving up (at least 1).
    pub attempts_max: u32,
}

impl BackoffPolicy {
    /// A policy; `initial` is raised to 1 ms and `max` to `initial`, `attempts_max` to 1, so
    /// every policy waits a positive time and tries at least once.
    pub fn new(initial: Duration, max: Duration, attempts_max: u32) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        BackoffPolicy {
            initial,
            max: max.max(initial),
            attempts_max: attempts_max.max(1),
        }
    }

    /// The ceiling of attempt `attempt` (0-based): `min(initial × 2^attempt, max)`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        // 2^31 × 1 ms is already 24 days; cap the exponent so the multiplication cannot overflow.
        let factor = 1u32 << attempt.min(31);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The wait before attempt `attempt`, given `unit` uniformly drawn from `[0, 1)`: a time in
    /// `[ceiling/2, ceiling]`.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let ceiling = self.ceiling(attempt);
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let half = ceiling / 2;
        half + (ceiling - half).mul_f64(unit)
    }
}

/// The attempt counter of one retry loop.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    policy: BackoffPolicy,
    attempt: u32,
}

impl Backoff {
    /// A fresh counter.
    pub(crate) fn new(policy: BackoffPolicy) -> Self {
        Backoff { policy, attempt: 0 }
    }

    /// The wait before the next attempt, or `None` once `attempts_max` waits were handed out.
    pub(crate) fn next_delay(&mut self) -> Option<Duration> {
        if self.attempt >= self.policy.attempts_max {
            return None;
        }
        let delay = self.policy.delay(self.attempt, fastrand::f64());
        self.attempt += 1;
        Some(delay)
    }

    /// Waits handed out since the last reset.
    pub(crate) fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Starts over (after a success).
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn ceilings_double_up_to_the_maximum() {
        let policy = BackoffPolicy::new(ms(100), ms(1000), 10);
        let ceilings: Vec<u64> = (0..6)
            .map(|n| policy.ceiling(n).as_millis() as u64)
            .collect();
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(policy.ceiling(u32::MAX), ms(1000));
    }

    #[test]
    fn delays_stay_within_half_and_full_ceiling() {
        let policy = BackoffPolicy::new(ms(100), ms(1000), 10);
        assert_eq!(policy.delay(0, 0.0), ms(50));
        assert_eq!(policy.delay(0, 1.0), ms(100));
        assert_eq!(policy.delay(3, 0.5), ms(600));
        assert_eq!(policy.delay(0, f64::NAN), ms(50));
        for n in 0..20 {
            let d = policy.delay(n, fastrand::f64());
            assert!(
                d >= policy.ceiling(n) / 2 && d <= policy.ceiling(n),
                "{d:?}"
            );
        }
    }

    #[test]
    fn attempts_are_bounded_and_reset() {
        let mut backoff = Backoff::new(BackoffPolicy::new(ms(1), ms(4), 3));
        assert!(backoff.next_delay().is_some());
        assert!(backoff.next_delay().is_some());
        assert!(backoff.next_delay().is_some());
        assert_eq!(backoff.next_delay(), None);
        assert_eq!(backoff.attempts(), 3);
        backoff.reset();
        assert!(backoff.next_delay().is_some());
    }

    #[test]
    fn degenerate_policies_are_raised() {
        let policy = BackoffPolicy::new(Duration::ZERO, Duration::ZERO, 0);
        assert_eq!(policy.initial, ms(1));
        assert_eq!(policy.max, ms(1));
        assert_eq!(policy.attempts_max, 1);
    }
}
