//! One request's way through a queue thread between the kernel's fetch and the commit of its
//! result: QoS admission, execution against the backend, and accounting in the device's stats.
//!
//! Kept out of `sys` (which only fetches and commits) so that the per-request cost of this part
//! can be measured and tested without ublk in the kernel (`examples/request_path_cost.rs`).
//! The waiting of a throttled request is the caller's: `sys` sleeps on the queue's io_uring.

use std::future::Future;
use std::time::Duration;

use crate::backend::Backend;
use crate::engine::execute;
use crate::qos::{Admission, Clock, QueueLimiter};
use crate::request::Request;
use crate::stats::{DeviceStats, QueueStats};

/// What one queue thread needs to run its requests.
#[derive(Debug)]
pub struct RequestPath<B> {
    backend: B,
    /// The queue's own handle on the device's limiter, whose prepaid tokens spare an
    /// unthrottled request the limiter's lock.
    limiter: QueueLimiter,
    /// The queue's own counters: recording takes no locked instruction.
    stats: QueueStats,
}

impl<B: Backend> RequestPath<B> {
    /// A queue's path to `backend`, throttled by `limiter`, counted in `stats` (on a recorder of
    /// its own, [`DeviceStats::for_queue`]: one path per queue thread).
    pub fn new(backend: B, limiter: QueueLimiter, stats: &DeviceStats) -> Self {
        RequestPath {
            backend,
            limiter,
            stats: stats.for_queue(),
        }
    }

    /// The backend requests run against.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The queue's limiter.
    pub fn limiter(&self) -> &QueueLimiter {
        &self.limiter
    }

    /// Admits, executes and accounts one valid request; returns ublk's result for it. A request
    /// QoS holds back is held with `wait(delay)` (keeping its tag) before it runs. `clock` gives
    /// the times for both admission and latency.
    pub async fn run<W, F>(
        &self,
        request: &Request,
        buf: &mut [u8],
        clock: &impl Clock,
        wait: W,
    ) -> i32
    where
        W: FnOnce(Duration) -> F,
        F: Future<Output = ()>,
    {
        // One clock read serves both admission and latency: clock reads are not free in a guest
        // whose TSC the kernel distrusts.
        let started = clock.now();
        let _in_flight = self.stats.start();
        let admission = self
            .limiter
            .admit(request.op, u64::from(request.len), started);
        if let Admission::WaitFor(delay) = admission {
            self.stats.add_throttled(delay);
            wait(delay).await;
        }
        let result = execute(&self.backend, request, buf).await;
        let latency = clock.now().saturating_sub(started);
        self.stats.record_request(request, latency, result >= 0);
        result
    }
}
