//! A metrics timer in the manner of libprocess's `process::metrics::Timer<Milliseconds>`: it
//! keeps the durations recorded over a recent window and reports, under `<name>_ms`, the last
//! one and the window's statistics (`/count`, `/min`, `/max`, `/p50`, `/p90`, `/p95`, `/p99`,
//! `/p999`, `/p9999`; percentiles interpolated linearly between the sorted samples, and only once
//! there are two samples, as `process::Statistics` does).
//!
//! The master times its allocation runs with one (`allocator/mesos/allocation_run_ms`, a one-hour
//! window like Mesos's). Unlike libprocess's time series, which thins old samples out when it is
//! full, a full window here drops its oldest sample: the statistics describe the most recent
//! [`TIMER_CAPACITY`] runs.

use std::collections::VecDeque;
use std::time::Duration;

/// Samples a timer keeps at most (libprocess's `TIME_SERIES_CAPACITY`).
pub const TIMER_CAPACITY: usize = 1000;

/// The percentiles reported, as (suffix, fraction), in libprocess's order.
const PERCENTILES: [(&str, f64); 6] = [
    ("p50", 0.5),
    ("p90", 0.9),
    ("p95", 0.95),
    ("p99", 0.99),
    ("p999", 0.999),
    ("p9999", 0.9999),
];

/// Durations recorded over a window, with their statistics. Times are the master's clock
/// ([`super::Master::now`]).
#[derive(Debug, Clone)]
pub struct Timer {
    window: Duration,
    capacity: usize,
    /// (when recorded, milliseconds), oldest first.
    samples: VecDeque<(Duration, f64)>,
}

impl Timer {
    /// A timer keeping at most `capacity` samples, none older than `window`.
    pub fn new(window: Duration, capacity: usize) -> Self {
        Timer {
            window,
            capacity: capacity.max(2),
            samples: VecDeque::new(),
        }
    }

    /// Records that something took `took`, finishing at `now`.
    pub fn record(&mut self, now: Duration, took: Duration) {
        self.expire(now);
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back((now, took.as_secs_f64() * 1000.0));
    }

    fn expire(&mut self, now: Duration) {
        let oldest = now.saturating_sub(self.window);
        while self.samples.front().is_some_and(|(at, _)| *at < oldest) {
            self.samples.pop_front();
        }
    }

    /// The metrics under `name` (for example `allocator/mesos/allocation_run_ms`): nothing before
    /// the first sample, the last value alone while the window holds one sample, then the
    /// statistics of the window as of `now` too.
    pub fn metrics(&self, name: &str, now: Duration) -> Vec<(String, f64)> {
        let Some(&(_, last)) = self.samples.back() else {
            return Vec::new();
        };
        let mut out = vec![(name.to_owned(), last)];
        let oldest = now.saturating_sub(self.window);
        let mut values: Vec<f64> = self
            .samples
            .iter()
            .filter(|(at, _)| *at >= oldest)
            .map(|(_, ms)| *ms)
            .collect();
        if values.len() < 2 {
            return out;
        }
        values.sort_by(f64::total_cmp);
        let mut put = |suffix: &str, value: f64| out.push((format!("{name}/{suffix}"), value));
        #[allow(clippy::cast_precision_loss)] // at most TIMER_CAPACITY samples.
        put("count", values.len() as f64);
        put("min", values[0]);
        put("max", values[values.len() - 1]);
        for (suffix, fraction) in PERCENTILES {
            put(suffix, percentile(&values, fraction));
        }
        out
    }
}

/// The `fraction` percentile of at least two sorted values, interpolated linearly.
#[allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)] // positions are small, non-negative and below len - 1.
fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    let position = fraction * (sorted.len() - 1) as f64;
    let index = (position.floor() as usize).min(sorted.len() - 2);
    let delta = position - index as f64;
    sorted[index] + delta * (sorted[index + 1] - sorted[index])
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME: &str = "allocator/mesos/allocation_run_ms";

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn get(metrics: &[(String, f64)], suffix: &str) -> Option<f64> {
        let key = if suffix.is_empty() {
            NAME.to_owned()
        } else {
            format!("{NAME}/{suffix}")
        };
        metrics.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    #[test]
    fn nothing_before_the_first_sample_and_no_statistics_with_one() {
        let mut timer = Timer::new(Duration::from_secs(3600), TIMER_CAPACITY);
        assert!(timer.metrics(NAME, ms(0)).is_empty());
        timer.record(ms(10), ms(7));
        let metrics = timer.metrics(NAME, ms(10));
        assert_eq!(metrics, vec![(NAME.to_owned(), 7.0)]);
    }

    #[test]
    fn statistics_interpolate_between_sorted_samples() {
        let mut timer = Timer::new(Duration::from_secs(3600), TIMER_CAPACITY);
        // 1..=100 ms, recorded out of order.
        for (i, took) in (1..=100u64).rev().enumerate() {
            timer.record(Duration::from_secs(i as u64), ms(took));
        }
        let m = timer.metrics(NAME, Duration::from_secs(100));
        assert_eq!(get(&m, ""), Some(1.0), "the last value recorded");
        assert_eq!(get(&m, "count"), Some(100.0));
        assert_eq!(get(&m, "min"), Some(1.0));
        assert_eq!(get(&m, "max"), Some(100.0));
        // position = p × 99 over values 1..=100: p50 → 50.5, p90 → 90.1, p99 → 99.01.
        let close = |suffix: &str, want: f64| {
            let got = get(&m, suffix).unwrap_or(f64::NAN);
            assert!((got - want).abs() < 1e-9, "{suffix}: {got} != {want}");
        };
        close("p50", 50.5);
        close("p90", 90.1);
        close("p95", 95.05);
        close("p99", 99.01);
        close("p999", 99.901);
        close("p9999", 99.9901);
    }

    #[test]
    fn the_window_forgets_old_samples_and_capacity_drops_the_oldest() {
        let mut timer = Timer::new(Duration::from_secs(60), 3);
        timer.record(Duration::from_secs(0), ms(1000));
        timer.record(Duration::from_secs(30), ms(2));
        timer.record(Duration::from_secs(61), ms(4));
        let m = timer.metrics(NAME, Duration::from_secs(61));
        assert_eq!(
            get(&m, "count"),
            Some(2.0),
            "the sample at 0 s left the window"
        );
        assert_eq!(get(&m, "max"), Some(4.0));
        for took in [5, 6, 7] {
            timer.record(Duration::from_secs(62), ms(took));
        }
        let m = timer.metrics(NAME, Duration::from_secs(62));
        assert_eq!(get(&m, "count"), Some(3.0));
        assert_eq!(get(&m, "min"), Some(5.0));
        // Asked later, only samples still inside the window count.
        let m = timer.metrics(NAME, Duration::from_secs(200));
        assert_eq!(m, vec![(NAME.to_owned(), 7.0)]);
    }
}
