//! What one request costs a queue thread outside the kernel: decoding, QoS admission,
//! execution on the null backend and stats, the daemon's whole per-request work between a
//! fetch's completion and its commit ([`RequestPath::run`]), with the clock the queue loop
//! uses: `CLOCK_MONOTONIC` read once per turn of the loop ([`CachedClock`]), here once per
//! [`TURN`] requests (fio's depth in `scripts/bench-target`).
//! The figure behind the "QoS configured but not limiting" benchmark target, without the noise
//! of a guest or of other jobs on the machine.
//!
//! `cargo run --release -p ublk-target --example request_path_cost [MODE] [N]` runs N requests
//! (default 2,000,000; 4 KiB reads and writes alternating, at random offsets) in MODE, or in
//! every mode, and prints the best of seven runs in nanoseconds per request.
//!
//! Modes: `null` (no limits), `null+qos` (the bench's `null+qos` limits: 100 M IOPS and
//! 100 GB/s total, far above what is reached), `null+group` (the same limits on a shared-memory
//! group instead of the device).

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use ublk_target::backend::NullBackend;
use ublk_target::datapath::RequestPath;
use ublk_target::qos::{
    BytesLimit, CachedClock, Clock, Limiter, MonotonicClock, OpsLimit, QosLimits, QueueLimiter,
    SharedGroup,
};
use ublk_target::request::{Geometry, Request};
use ublk_target::stats::DeviceStats;

mod cost_args;

const MODES: [&str; 3] = ["null", "null+qos", "null+group"];
const SIZE: u64 = 2 << 30;
/// Requests per turn of the queue loop, each turn reading the clock once.
const TURN: u32 = 32;
/// ublk's op codes for READ and WRITE (`UBLK_IO_OP_*`).
const OPS: [u32; 2] = [0, 1];

fn limits() -> QosLimits {
    QosLimits {
        total_ops: Some(OpsLimit::per_sec(100_000_000)),
        total_bytes: Some(BytesLimit::per_sec(100_000_000_000)),
        ..QosLimits::default()
    }
}

fn limiter(mode: &str) -> Limiter {
    let now = MonotonicClock.now();
    let (own, group) = match mode {
        "null" => (QosLimits::default(), None),
        "null+qos" => (limits(), None),
        _ => {
            let group = SharedGroup::in_memory(&limits()).expect("valid limits");
            (QosLimits::default(), Some(group.into()))
        }
    };
    Limiter::new(&own, group, now).expect("valid limits")
}

/// Runs a future that never waits (the null backend's, unthrottled) to completion.
fn run_now<F: Future>(future: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(future).poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("a null request waited: is QoS limiting?"),
    }
}

/// Nanoseconds per request of `n` requests in `mode`.
fn run(mode: &str, n: u32) -> f64 {
    let stats = Arc::new(DeviceStats::new());
    let limiter = QueueLimiter::new(Arc::new(limiter(mode)));
    let path = RequestPath::new(NullBackend::new(SIZE), limiter, &stats);
    let geometry = Geometry {
        size: SIZE,
        logical_block_size: 512,
        max_io_bytes: 1 << 20,
    };
    let mut buf = vec![0u8; 4096];
    let clock = CachedClock::new(&MonotonicClock);
    // A xorshift generator: random offsets without a dependency, the same in every run.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let start = Instant::now();
    for i in 0..n {
        if i % TURN == 0 {
            clock.refresh(&MonotonicClock);
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let sector = (x % (SIZE >> 12)) << 3;
        let request =
            Request::decode(OPS[(i & 1) as usize], sector, 8, &geometry).expect("a valid request");
        let result = run_now(path.run(&request, &mut buf, &clock, |_: Duration| {
            std::future::ready(())
        }));
        black_box(result);
    }
    let elapsed = start.elapsed();
    assert_eq!(
        stats.snapshot(Duration::ZERO).counters.read.ops,
        u64::from(n.div_ceil(2))
    );
    elapsed.as_nanos() as f64 / f64::from(n)
}

fn main() {
    let (modes, n) = cost_args::parse(&MODES);
    for mode in modes {
        // The best of seven: the least disturbed by whatever else runs on the machine.
        let best = (0..7).map(|_| run(mode, n)).fold(f64::INFINITY, f64::min);
        println!("{mode:>10}: {best:6.1} ns per request");
    }
}
