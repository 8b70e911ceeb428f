//! The live counters: where requests are recorded, and how a snapshot adds them up.
//!
//! A device's counters are split into shards, one per queue thread plus one shared: a queue
//! thread records into its own shard ([`QueueStats`], from [`DeviceStats::for_queue`]), which
//! no other thread writes, so every update is a plain load and store (no locked instruction,
//! no cache line bouncing between queues). [`DeviceStats::record`] and the other methods of the
//! device itself write the shared shard with atomic read-modify-writes, for callers that share
//! one recorder between threads. [`DeviceStats::snapshot`] sums every shard; shards stay
//! registered after their queue stops, so no counter ever goes back.
//!
//! A shard keeps histograms for reads, writes and the other ops; the all-requests histogram
//! of a snapshot is their sum, which spares every request one histogram update.

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::{bucket_index, HISTOGRAM_BUCKETS, LATENCY_US_MAX};
use super::{latency_us, nanos, Counters, LatencySnapshot, OpStats, StatsSnapshot};
use crate::request::{Op, Request};

/// More requests in flight than ublk can have outstanding (4096 queues × 4096 tags).
const IN_FLIGHT_MAX: u64 = 1 << 24;
const OP_SLOTS: usize = 5;
const OPS: [Op; OP_SLOTS] = [Op::Read, Op::Write, Op::Flush, Op::Discard, Op::WriteZeroes];

/// Where an op's counters live in [`Shard::ops`] (the order of [`OPS`]).
fn op_slot(op: Op) -> usize {
    match op {
        Op::Read => 0,
        Op::Write => 1,
        Op::Flush => 2,
        Op::Discard => 3,
        Op::WriteZeroes => 4,
    }
}

// Every atomic in this module is a tally that nothing else synchronises on: no thread reads a
// counter to decide whether some other memory is ready. `Ordering::Relaxed` keeps each
// counter's own history in one order (a later load never sees an older value than an earlier
// load in the same thread), which is all a tally needs. Exact totals after the recording
// threads stop are ensured by whatever synchronised their stopping (a thread join, a
// channel), not by the counters.
const RELAXED: Ordering = Ordering::Relaxed;

/// How a shard's counters are updated.
trait Tally {
    /// Adds `n` to `counter`; returns the value before.
    fn add(counter: &AtomicU64, n: u64) -> u64;
    /// Subtracts `n` from `counter`; returns the value before.
    fn sub(counter: &AtomicU64, n: u64) -> u64;
}

/// Several threads write the shard: atomic read-modify-writes, no update lost.
struct Shared;

impl Tally for Shared {
    fn add(counter: &AtomicU64, n: u64) -> u64 {
        counter.fetch_add(n, RELAXED)
    }

    fn sub(counter: &AtomicU64, n: u64) -> u64 {
        counter.fetch_sub(n, RELAXED)
    }
}

/// Only one thread writes the shard (others may read it): a load and a store, which is exact
/// because no other write can fall between them.
struct Owned;

impl Tally for Owned {
    fn add(counter: &AtomicU64, n: u64) -> u64 {
        let before = counter.load(RELAXED);
        counter.store(before.wrapping_add(n), RELAXED);
        before
    }

    fn sub(counter: &AtomicU64, n: u64) -> u64 {
        let before = counter.load(RELAXED);
        counter.store(before.wrapping_sub(n), RELAXED);
        before
    }
}

/// One op type's live counters.
#[derive(Debug, Default)]
struct OpAtomics {
    ops: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
}

impl OpAtomics {
    fn load(&self) -> OpStats {
        OpStats {
            ops: self.ops.load(RELAXED),
            bytes: self.bytes.load(RELAXED),
            errors: self.errors.load(RELAXED),
        }
    }
}

/// One live latency histogram.
struct AtomicHistogram {
    counts: [AtomicU64; HISTOGRAM_BUCKETS],
    sum_us: AtomicU64,
}

impl AtomicHistogram {
    fn new() -> AtomicHistogram {
        AtomicHistogram {
            counts: [const { AtomicU64::new(0) }; HISTOGRAM_BUCKETS],
            sum_us: AtomicU64::new(0),
        }
    }

    fn record<T: Tally>(&self, us: u64) {
        debug_assert!(us <= LATENCY_US_MAX, "{us} us was not clamped");
        T::add(&self.counts[bucket_index(us)], 1);
        // Wraps only after 2^37 samples of the largest latency.
        T::add(&self.sum_us, us);
    }

    /// Adds this histogram's counts into `into`.
    fn add_to(&self, into: &mut LatencySnapshot) {
        for (sum, live) in into.counts.iter_mut().zip(&self.counts) {
            *sum = sum.wrapping_add(live.load(RELAXED));
        }
        into.sum_us = into.sum_us.wrapping_add(self.sum_us.load(RELAXED));
    }
}

/// One recorder's counters (about 9 KiB). Aligned to 128 bytes (two cache lines, the unit
/// x86's adjacent-line prefetcher pulls in) so that two queues' shards never share a line.
#[repr(align(128))]
struct Shard {
    ops: [OpAtomics; OP_SLOTS],
    in_flight: AtomicU64,
    throttled_ops: AtomicU64,
    throttled_ns: AtomicU64,
    read_latency: AtomicHistogram,
    write_latency: AtomicHistogram,
    /// FLUSH, DISCARD and WRITE_ZEROES.
    other_latency: AtomicHistogram,
}

impl Shard {
    fn new() -> Shard {
        Shard {
            ops: Default::default(),
            in_flight: AtomicU64::new(0),
            throttled_ops: AtomicU64::new(0),
            throttled_ns: AtomicU64::new(0),
            read_latency: AtomicHistogram::new(),
            write_latency: AtomicHistogram::new(),
            other_latency: AtomicHistogram::new(),
        }
    }

    fn start<T: Tally>(&self) {
        let before = T::add(&self.in_flight, 1);
        if before >= IN_FLIGHT_MAX {
            guard_leaked(before);
        }
    }

    fn finish<T: Tally>(&self) {
        // The guard's increment precedes this decrement in the counter's modification order
        // (same thread, or a handover that synchronised), so the count cannot underflow.
        let before = T::sub(&self.in_flight, 1);
        debug_assert!(before > 0, "in-flight count underflow");
    }

    fn record<T: Tally>(&self, op: Op, bytes: u32, latency: Duration, ok: bool) {
        let counters = &self.ops[op_slot(op)];
        T::add(&counters.ops, 1);
        if ok {
            T::add(&counters.bytes, u64::from(bytes));
        } else {
            T::add(&counters.errors, 1);
        }
        let histogram = match op {
            Op::Read => &self.read_latency,
            Op::Write => &self.write_latency,
            Op::Flush | Op::Discard | Op::WriteZeroes => &self.other_latency,
        };
        histogram.record::<T>(latency_us(latency));
    }

    fn add_throttled<T: Tally>(&self, wait: Duration) {
        T::add(&self.throttled_ops, 1);
        // Wraps after 584 years of summed waits; `delta` then reports a counter going back.
        T::add(&self.throttled_ns, nanos(wait));
    }

    /// Adds this shard's counters into `into`.
    fn add_to(&self, into: &mut StatsSnapshot) {
        into.in_flight = into.in_flight.wrapping_add(self.in_flight.load(RELAXED));
        let c = &mut into.counters;
        for (op, live) in OPS.into_iter().zip(&self.ops) {
            let sum = c.op_mut(op);
            *sum = sum.wrapping_add(&live.load());
        }
        c.throttled_ops = (c.throttled_ops).wrapping_add(self.throttled_ops.load(RELAXED));
        c.throttled_ns_total = (c.throttled_ns_total).wrapping_add(self.throttled_ns.load(RELAXED));
        self.read_latency.add_to(&mut c.read_latency);
        self.write_latency.add_to(&mut c.write_latency);
        for histogram in [&self.read_latency, &self.write_latency, &self.other_latency] {
            histogram.add_to(&mut c.latency);
        }
    }
}

/// Out of line, so that the check costs a request a compare and no more.
#[cold]
#[inline(never)]
fn guard_leaked(in_flight: u64) -> ! {
    panic!("{in_flight} requests in flight: an in-flight guard leaked");
}

/// The op a request is counted as: a data-less write is a flush.
fn counted_op(request: &Request) -> Op {
    if request.is_flush() {
        Op::Flush
    } else {
        request.op
    }
}

/// The live statistics of one device (`Send + Sync`; put it in an `Arc`). Each queue thread
/// records into its own [`QueueStats`] ([`DeviceStats::for_queue`]); the recording methods here
/// serve callers that share the device's recorder between threads. Recording never allocates
/// or locks.
pub struct DeviceStats {
    shared: Shard,
    /// Every queue's shard ever handed out, in order.
    queues: Mutex<Vec<Arc<Shard>>>,
}

impl fmt::Debug for DeviceStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let snapshot = self.snapshot(Duration::ZERO);
        f.debug_struct("DeviceStats")
            .field("queues", &self.shards().len())
            .field("in_flight", &snapshot.in_flight)
            .field("read", &snapshot.counters.read)
            .field("write", &snapshot.counters.write)
            .finish_non_exhaustive()
    }
}

impl Default for DeviceStats {
    fn default() -> DeviceStats {
        DeviceStats::new()
    }
}

impl DeviceStats {
    /// All counters at zero, no queue yet.
    pub fn new() -> DeviceStats {
        DeviceStats {
            shared: Shard::new(),
            queues: Mutex::new(Vec::new()),
        }
    }

    /// A new recorder for one queue thread, counted in this device's snapshots from now on
    /// (and after it is dropped: what it counted stays). Takes a lock and allocates (about
    /// 9 KiB): call it when a queue starts, not per request.
    pub fn for_queue(&self) -> QueueStats {
        let shard = Arc::new(Shard::new());
        self.lock_queues().push(Arc::clone(&shard));
        QueueStats {
            shard,
            single_thread: PhantomData,
        }
    }

    fn lock_queues(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Shard>>> {
        // The list is only ever pushed to whole, so a panic elsewhere cannot leave it half done.
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The queues' shards, copied out so that a snapshot does not hold the lock while it reads.
    fn shards(&self) -> Vec<Arc<Shard>> {
        self.lock_queues().clone()
    }

    /// Counts one request as in flight until the returned guard is dropped.
    ///
    /// # Panics
    /// If 2^24 requests are already in flight (more than ublk allows: a guard leaked).
    pub fn start(&self) -> InFlightGuard<'_> {
        self.shared.start::<Shared>();
        InFlightGuard { stats: self }
    }

    /// Records one answered request of type `op` and length `bytes`, which took `latency` and
    /// succeeded if `ok`. Call it once per request. `bytes` counts only if `ok`.
    pub fn record(&self, op: Op, bytes: u32, latency: Duration, ok: bool) {
        self.shared.record::<Shared>(op, bytes, latency, ok);
    }

    /// Records one answered request, as [`DeviceStats::record`]; a data-less write counts as a
    /// flush.
    pub fn record_request(&self, request: &Request, latency: Duration, ok: bool) {
        self.record(counted_op(request), request.len, latency, ok);
    }

    /// Records that QoS held one request for `wait` before running it.
    pub fn add_throttled(&self, wait: Duration) {
        self.shared.add_throttled::<Shared>(wait);
    }

    /// Requests in flight right now, on every queue.
    pub fn in_flight(&self) -> u64 {
        let shared = self.shared.in_flight.load(RELAXED);
        let queues = self.lock_queues();
        let per_queue = queues.iter().map(|shard| shard.in_flight.load(RELAXED));
        per_queue.fold(shared, u64::wrapping_add)
    }

    /// Copies every counter, summed over the queues. `now` is the time of the copy from the
    /// caller's clock (normally [`MonotonicClock`](crate::qos::MonotonicClock)), kept so that
    /// rates can be computed between two snapshots. Allocates (the histograms are boxed); call
    /// it off the data path.
    pub fn snapshot(&self, now: Duration) -> StatsSnapshot {
        let mut snapshot = StatsSnapshot {
            taken_ns: nanos(now),
            in_flight: 0,
            counters: Counters::default(),
        };
        self.shared.add_to(&mut snapshot);
        for shard in self.shards() {
            shard.add_to(&mut snapshot);
        }
        snapshot
    }
}

/// Keeps one request counted in [`DeviceStats::in_flight`] until dropped.
#[must_use = "the request stops counting as in flight when the guard is dropped"]
#[derive(Debug)]
pub struct InFlightGuard<'a> {
    stats: &'a DeviceStats,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.stats.shared.finish::<Shared>();
    }
}

/// One queue thread's recorder, from [`DeviceStats::for_queue`]: the same recording methods as
/// [`DeviceStats`], on counters only this recorder writes. It may move to another thread but
/// not be shared (`Send`, not `Sync`, not `Clone`), which is what makes its plain stores exact.
pub struct QueueStats {
    shard: Arc<Shard>,
    single_thread: PhantomData<Cell<()>>,
}

impl fmt::Debug for QueueStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueStats")
            .field("in_flight", &self.shard.in_flight.load(RELAXED))
            .finish_non_exhaustive()
    }
}

impl QueueStats {
    /// Counts one request as in flight until the returned guard is dropped (on this thread).
    ///
    /// # Panics
    /// If 2^24 requests are already in flight (more than ublk allows: a guard leaked).
    pub fn start(&self) -> QueueInFlightGuard<'_> {
        self.shard.start::<Owned>();
        QueueInFlightGuard { stats: self }
    }

    /// As [`DeviceStats::record`].
    pub fn record(&self, op: Op, bytes: u32, latency: Duration, ok: bool) {
        self.shard.record::<Owned>(op, bytes, latency, ok);
    }

    /// As [`DeviceStats::record_request`].
    pub fn record_request(&self, request: &Request, latency: Duration, ok: bool) {
        self.record(counted_op(request), request.len, latency, ok);
    }

    /// As [`DeviceStats::add_throttled`].
    pub fn add_throttled(&self, wait: Duration) {
        self.shard.add_throttled::<Owned>(wait);
    }
}

/// Keeps one request counted in its queue's in-flight count until dropped. It borrows the
/// queue's recorder, so it cannot leave the queue's thread.
#[must_use = "the request stops counting as in flight when the guard is dropped"]
#[derive(Debug)]
pub struct QueueInFlightGuard<'a> {
    stats: &'a QueueStats,
}

impl Drop for QueueInFlightGuard<'_> {
    fn drop(&mut self) {
        self.stats.shard.finish::<Owned>();
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::{bucket_upper_us, quantile_rank};
    use super::*;

    /// The events of one request, as a queue thread records them.
    #[derive(Clone, Copy, Debug)]
    struct Event {
        op: Op,
        bytes: u32,
        latency: Duration,
        ok: bool,
        throttled: Option<Duration>,
    }

    fn on_queue(stats: &QueueStats, e: Event) {
        let _guard = stats.start();
        if let Some(wait) = e.throttled {
            stats.add_throttled(wait);
        }
        stats.record(e.op, e.bytes, e.latency, e.ok);
    }

    fn on_device(stats: &DeviceStats, e: Event) {
        let _guard = stats.start();
        if let Some(wait) = e.throttled {
            stats.add_throttled(wait);
        }
        stats.record(e.op, e.bytes, e.latency, e.ok);
    }

    /// Queue `q`'s `i`th request: every op type, some failing, some throttled, latencies spread
    /// over several powers of two and different on every queue.
    fn event(q: u64, i: u64) -> Event {
        Event {
            op: OPS[(i % 5) as usize],
            bytes: 512 * (1 + (i % 7) as u32),
            latency: Duration::from_micros(q * 1000 + (i * 37) % 5000),
            ok: i % 11 != 0,
            throttled: (i % 13 == 0).then(|| Duration::from_nanos(q + i)),
        }
    }

    /// The exact `q` quantile of `samples` (whole µs, sorted).
    fn exact_quantile(sorted: &[u64], q: f64) -> u64 {
        sorted[quantile_rank(q, sorted.len() as u64) as usize - 1]
    }

    #[test]
    fn queues_merge_to_exact_totals() {
        const QUEUES: u64 = 4;
        const PER_QUEUE: u64 = 20_000;
        let stats = DeviceStats::new();
        // Each queue holds one more request than the last while the main thread looks.
        let (held, resume) = (std::sync::Barrier::new(5), std::sync::Barrier::new(5));
        std::thread::scope(|s| {
            for q in 0..QUEUES {
                let (recorder, held, resume) = (stats.for_queue(), &held, &resume);
                s.spawn(move || {
                    for i in 0..PER_QUEUE {
                        on_queue(&recorder, event(q, i));
                    }
                    let guards: Vec<_> = (0..=q).map(|_| recorder.start()).collect();
                    held.wait();
                    resume.wait();
                    drop(guards);
                });
            }
            held.wait();
            assert_eq!(stats.in_flight(), 1 + 2 + 3 + 4);
            assert_eq!(stats.snapshot(Duration::ZERO).in_flight, 10);
            resume.wait();
        });

        let snapshot = stats.snapshot(Duration::from_secs(1));
        assert_eq!((snapshot.in_flight, stats.in_flight()), (0, 0));
        let c = &snapshot.counters;
        let events: Vec<Event> = (0..QUEUES)
            .flat_map(|q| (0..PER_QUEUE).map(move |i| event(q, i)))
            .collect();
        for op in OPS {
            let of_op: Vec<&Event> = events.iter().filter(|e| e.op == op).collect();
            let expected = OpStats {
                ops: of_op.len() as u64,
                bytes: of_op
                    .iter()
                    .filter(|e| e.ok)
                    .map(|e| u64::from(e.bytes))
                    .sum(),
                errors: of_op.iter().filter(|e| !e.ok).count() as u64,
            };
            assert_eq!(*c.op(op), expected, "{op:?}");
        }
        let throttled: Vec<u64> = events
            .iter()
            .filter_map(|e| e.throttled)
            .map(nanos)
            .collect();
        assert_eq!(c.throttled_ops, throttled.len() as u64);
        assert_eq!(c.throttled_ns_total, throttled.iter().sum::<u64>());

        // Every quantile is the top of the bucket holding the exact quantile of all queues'
        // samples together.
        let histograms = [
            (&c.latency, None),
            (&c.read_latency, Some(Op::Read)),
            (&c.write_latency, Some(Op::Write)),
        ];
        for (histogram, only) in histograms {
            let mut sorted: Vec<u64> = (events.iter())
                .filter(|e| only.is_none_or(|op| e.op == op))
                .map(|e| latency_us(e.latency))
                .collect();
            sorted.sort_unstable();
            assert_eq!(histogram.samples(), sorted.len() as u64);
            assert_eq!(histogram.sum_us(), sorted.iter().sum::<u64>());
            for q in [0.0, 0.25, 0.5, 0.9, 0.99, 0.999, 1.0] {
                let exact = exact_quantile(&sorted, q);
                let expected = bucket_upper_us(bucket_index(exact));
                assert_eq!(histogram.quantile(q), Some(expected), "{only:?} q {q}");
            }
        }
    }

    #[test]
    fn a_stopped_queue_still_counts() {
        let stats = DeviceStats::new();
        let first = stats.for_queue();
        on_queue(&first, event(0, 1));
        drop(first);
        on_queue(&stats.for_queue(), event(1, 2));
        let c = stats.snapshot(Duration::ZERO).counters;
        assert_eq!((c.write.ops, c.flush.ops), (1, 1));
        assert!(format!("{stats:?}").contains("queues: 2"), "{stats:?}");
    }

    #[test]
    fn queue_recorders_can_move_to_their_thread() {
        fn movable<T: Send>() {}
        movable::<QueueStats>();
    }

    fn any_event() -> impl Strategy<Value = (usize, Event, bool)> {
        let op = prop::sample::select(OPS.to_vec());
        let latency = (0u32..=28, any::<u64>())
            .prop_map(|(bits, r)| Duration::from_nanos(r & ((1u64 << (bits + 10)) - 1)));
        let throttled = prop::option::of((0u64..1 << 40).prop_map(Duration::from_nanos));
        (
            0usize..4,
            op,
            any::<u32>(),
            latency,
            any::<bool>(),
            throttled,
            any::<bool>(),
        )
            .prop_map(|(queue, op, bytes, latency, ok, throttled, keep)| {
                let e = Event {
                    op,
                    bytes,
                    latency,
                    ok,
                    throttled,
                };
                (queue, e, keep)
            })
    }

    proptest! {
        /// Whatever the requests and whichever queues record them, the queues' counters add up
        /// to what one shared recorder fed the same requests holds, in-flight guards included.
        #[test]
        fn per_queue_merge_equals_one_shared_recorder(
            events in prop::collection::vec(any_event(), 0..300),
        ) {
            let (per_queue, shared) = (DeviceStats::new(), DeviceStats::new());
            let queues: Vec<QueueStats> = (0..4).map(|_| per_queue.for_queue()).collect();
            let mut held_on_queues = Vec::new();
            let mut held_on_device = Vec::new();
            for &(queue, e, keep) in &events {
                on_queue(&queues[queue], e);
                on_device(&shared, e);
                if keep {
                    held_on_queues.push(queues[queue].start());
                    held_on_device.push(shared.start());
                }
            }
            let at = Duration::from_millis(7);
            prop_assert_eq!(per_queue.snapshot(at), shared.snapshot(at));
            prop_assert_eq!(per_queue.in_flight(), held_on_queues.len() as u64);
            drop(held_on_queues);
            drop(held_on_device);
            prop_assert_eq!(per_queue.snapshot(at), shared.snapshot(at));
        }
    }
}
