//! What one admission costs on the data path, per way of admitting: the figures behind the
//! "QoS configured but not limiting" benchmark target, without the noise of a whole device.
//!
//! `cargo run --release -p ublk-target --example qos_admit_cost [MODE] [N]` admits N 4 KiB
//! reads (default 2,000,000) 14 µs apart (a 70k IOPS device, far below the limits) and prints
//! nanoseconds per admission for MODE, or for every mode. Under `valgrind --tool=callgrind`,
//! the difference between two modes divided by N is the exact instruction cost.
//!
//! Modes: `unlimited` (no limits), `exact` ([`Limiter::admit`]: one lock and a bucket update
//! per request), `queue` ([`QueueLimiter`]: prepaid tokens), `shared-exact` and
//! `shared-queue` (the same limits in a shared-memory group). Limits: those of the bench's
//! `null+qos` target, 100 M IOPS and 100 GB/s.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ublk_target::qos::{BytesLimit, Limiter, OpsLimit, QosLimits, QueueLimiter, SharedGroup};
use ublk_target::request::Op;

mod cost_args;

const MODES: [&str; 5] = [
    "unlimited",
    "exact",
    "queue",
    "shared-exact",
    "shared-queue",
];
const STEP: Duration = Duration::from_micros(14);

fn limits() -> QosLimits {
    QosLimits {
        total_ops: Some(OpsLimit::per_sec(100_000_000)),
        total_bytes: Some(BytesLimit::per_sec(100_000_000_000)),
        ..QosLimits::default()
    }
}

fn limiter(mode: &str) -> Arc<Limiter> {
    let (own, group) = match mode {
        "unlimited" => (QosLimits::default(), None),
        "exact" | "queue" => (limits(), None),
        _ => {
            let group = SharedGroup::in_memory(&limits()).expect("valid limits");
            (QosLimits::default(), Some(group.into()))
        }
    };
    Arc::new(Limiter::new(&own, group, Duration::ZERO).expect("valid limits"))
}

/// Nanoseconds per admission of `n` requests in `mode`.
fn run(mode: &str, n: u32) -> f64 {
    let limiter = limiter(mode);
    let queue = QueueLimiter::new(Arc::clone(&limiter));
    let per_queue = mode == "queue" || mode == "shared-queue" || mode == "unlimited";
    let mut now = Duration::from_secs(1);
    let start = Instant::now();
    for _ in 0..n {
        now += STEP;
        let admission = if per_queue {
            queue.admit(Op::Read, 4096, now)
        } else {
            limiter.admit(Op::Read, 4096, now)
        };
        let _ = black_box(admission);
    }
    start.elapsed().as_nanos() as f64 / f64::from(n)
}

fn main() {
    let (modes, n) = cost_args::parse(&MODES);
    for mode in modes {
        // The best of five: the least disturbed by whatever else runs on the machine.
        let best = (0..5).map(|_| run(mode, n)).fold(f64::INFINITY, f64::min);
        println!("{mode:>13}: {best:7.1} ns per admission");
    }
}
