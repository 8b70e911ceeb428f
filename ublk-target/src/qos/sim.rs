//! A deterministic simulation of closed-loop clients on a [`ManualClock`], shared by the QoS
//! tests and the shared-memory group tests: rates are measured in simulated time, without
//! sleeping.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use super::{nanos, Admission, Clock, Limiter, ManualClock, QueueLimiter};
use crate::request::Op;

/// What admits requests: a [`Limiter`], or a queue's [`QueueLimiter`].
pub(crate) trait Admit {
    fn admit(&self, op: Op, bytes: u64, now: Duration) -> Admission;
}

impl Admit for Limiter {
    fn admit(&self, op: Op, bytes: u64, now: Duration) -> Admission {
        Limiter::admit(self, op, bytes, now)
    }
}

impl Admit for QueueLimiter {
    fn admit(&self, op: Op, bytes: u64, now: Duration) -> Admission {
        QueueLimiter::admit(self, op, bytes, now)
    }
}

/// One closed-loop client: issues `op` requests of the given sizes (cycling) through `limiter`.
pub(crate) struct Client<'a> {
    pub(crate) limiter: &'a dyn Admit,
    pub(crate) op: Op,
    pub(crate) sizes: &'a [u64],
}

/// One request that ran.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Run {
    pub(crate) client: usize,
    pub(crate) at_ns: u64,
    pub(crate) bytes: u64,
}

/// Runs every client from `clock.now()` until `until`: a client admits a request, holds it for
/// the wait it is told, runs it instantly, and issues its next one at that moment. Returns every
/// request that ran before `until`.
pub(crate) fn simulate(clock: &ManualClock, clients: &[Client<'_>], until: Duration) -> Vec<Run> {
    const MAX_EVENTS: usize = 10_000_000;
    let until_ns = nanos(until);
    let start_ns = nanos(clock.now());
    let mut next: BinaryHeap<Reverse<(u64, usize)>> =
        (0..clients.len()).map(|c| Reverse((start_ns, c))).collect();
    let mut issued = vec![0usize; clients.len()];
    let mut runs = Vec::new();
    while let Some(Reverse((t_ns, c))) = next.pop() {
        assert!(runs.len() < MAX_EVENTS, "simulation did not converge");
        clock.set(Duration::from_nanos(t_ns));
        let client = &clients[c];
        let bytes = client.sizes[issued[c] % client.sizes.len()];
        issued[c] += 1;
        let wait = client.limiter.admit(client.op, bytes, clock.now()).wait();
        let run_ns = t_ns + nanos(wait);
        if run_ns >= until_ns {
            continue;
        }
        runs.push(Run {
            client: c,
            at_ns: run_ns,
            bytes,
        });
        next.push(Reverse((run_ns, c)));
    }
    clock.set(until);
    runs
}

/// Requests (and their bytes) that ran in `[from, to)` from clients in `clients`.
pub(crate) fn count(
    runs: &[Run],
    clients: std::ops::Range<usize>,
    from: Duration,
    to: Duration,
) -> (u64, u64) {
    let (from, to) = (nanos(from), nanos(to));
    runs.iter()
        .filter(|r| clients.contains(&r.client) && (from..to).contains(&r.at_ns))
        .fold((0, 0), |(n, b), r| (n + 1, b + r.bytes))
}

pub(crate) fn assert_near(measured: u64, expected: u64, tolerance: f64, what: &str) {
    let error = (measured as f64 - expected as f64).abs() / expected as f64;
    assert!(
        error <= tolerance,
        "{what}: measured {measured}, expected {expected} ± {:.1}%",
        tolerance * 100.0
    );
}

pub(crate) fn clients<'a>(
    limiter: &'a dyn Admit,
    op: Op,
    sizes: &'a [u64],
    n: usize,
) -> Vec<Client<'a>> {
    (0..n).map(|_| Client { limiter, op, sizes }).collect()
}
