//! Tests of the per-queue fast path ([`QueueLimiter`]), on a [`ManualClock`] (and on real
//! threads for concurrency): it takes the exact path once per batch while unthrottled, and
//! the rates, the capacity at a fixed time and limits changes stay exact.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::limits::BucketSpec;
use super::prepaid::prepay_batch;
use super::sim::{assert_near, count, simulate, Client};
use super::tests::{check_admissions, ops_limit, step};
use super::*;

const SEC: Duration = Duration::from_secs(1);
const IO_4K: &[u64] = &[4096];

fn arc_limiter(limits: QosLimits, group: Option<GroupRef>) -> Arc<Limiter> {
    Arc::new(Limiter::new(&limits, group, Duration::ZERO).unwrap())
}

fn total_ops(ops_per_sec: u64) -> QosLimits {
    QosLimits {
        total_ops: Some(OpsLimit::per_sec(ops_per_sec)),
        ..QosLimits::default()
    }
}

/// `per_queue` closed-loop clients on each queue.
fn queue_clients<'a>(queues: &'a [QueueLimiter], per_queue: usize) -> Vec<Client<'a>> {
    queues
        .iter()
        .flat_map(|q| {
            (0..per_queue).map(move |_| Client {
                limiter: q,
                op: Op::Read,
                sizes: IO_4K,
            })
        })
        .collect()
}

#[test]
fn batches_follow_rate_and_capacity() {
    assert_eq!(prepay_batch(1_000_000, 1_000_000), 1000);
    assert_eq!(prepay_batch(1_000_000, 6400), 100);
    assert_eq!(prepay_batch(1000, 1000), 1);
    assert_eq!(
        prepay_batch(999, 1_000_000),
        0,
        "slow limits are never prepaid"
    );
    assert_eq!(prepay_batch(1_000_000, 63), 0, "tiny buckets neither");
}

#[test]
fn an_unthrottled_queue_takes_the_exact_path_once_per_batch() {
    let limits = QosLimits {
        total_ops: Some(OpsLimit::per_sec(1_000_000)),
        total_bytes: Some(BytesLimit::per_sec(4 << 30)),
        ..QosLimits::default()
    };
    let q = QueueLimiter::new(arc_limiter(limits, None));
    for _ in 0..10_000 {
        assert_eq!(q.admit(Op::Read, 4096, Duration::ZERO), Admission::Go);
    }
    // Batches of 1000 ops (and 4 MiB, 1024 requests): one exact trip per 1001 requests.
    assert_eq!(q.exact_path_count(), 10);
    // An unlimited device, or one in an unlimited group, never takes it after the first time.
    let group = QosGroup::new(&QosLimits::default(), Duration::ZERO).unwrap();
    let q = QueueLimiter::new(arc_limiter(QosLimits::default(), Some(group.into())));
    for _ in 0..1000 {
        assert_eq!(q.admit(Op::Write, 1 << 20, Duration::ZERO), Admission::Go);
    }
    assert_eq!(q.exact_path_count(), 2);
}

#[test]
fn a_throttled_device_gets_its_exact_rate_over_several_queues() {
    for ops_per_sec in [1000, 50_000] {
        let limiter = arc_limiter(total_ops(ops_per_sec), None);
        let queues: Vec<_> = (0..4)
            .map(|_| QueueLimiter::new(Arc::clone(&limiter)))
            .collect();
        let clock = ManualClock::new();
        let runs = simulate(&clock, &queue_clients(&queues, 8), 7 * SEC);
        let (ops, _) = count(&runs, 0..32, 2 * SEC, 7 * SEC);
        assert_near(ops, 5 * ops_per_sec, 0.01, "ops in 5 s");
        // Throttled: (almost) every request took the exact path.
        let exact: u64 = queues.iter().map(QueueLimiter::exact_path_count).sum();
        assert!(exact >= ops, "{exact} exact trips for {ops} requests");
        assert!(limiter.stats().throttled_ops > 0);
    }
}

#[test]
fn a_full_bucket_passes_exactly_its_capacity_across_threads() {
    // 64000 ops at a fixed time, batches of 64: whatever the interleaving, every unit a queue
    // took is spent by that queue, and no unit is taken twice.
    let burst = QosLimits {
        total_ops: Some(OpsLimit {
            burst_ops: Some(64_000),
            ..OpsLimit::per_sec(64_000)
        }),
        ..QosLimits::default()
    };
    let groups: [Option<GroupRef>; 3] = [
        None,
        Some(QosGroup::new(&burst, Duration::ZERO).unwrap().into()),
        Some(SharedGroup::in_memory(&burst).unwrap().into()),
    ];
    for group in groups {
        let own = if group.is_some() {
            QosLimits::default()
        } else {
            burst
        };
        let limiter = arc_limiter(own, group);
        let go: usize = std::thread::scope(|s| {
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let q = QueueLimiter::new(Arc::clone(&limiter));
                    // At a fixed time a queue that once waits never gets tokens again: it
                    // has spent all it held.
                    s.spawn(move || {
                        (0..=64_000)
                            .take_while(|_| {
                                q.admit(Op::Read, 4096, Duration::ZERO) == Admission::Go
                            })
                            .count()
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).sum()
        });
        assert_eq!(go, 64_000);
    }
}

#[test]
fn a_limits_change_drops_prepaid_tokens() {
    let limiter = arc_limiter(total_ops(100_000), None);
    let q = QueueLimiter::new(Arc::clone(&limiter));
    assert_eq!(q.admit(Op::Read, 4096, Duration::ZERO), Admission::Go);
    // The queue holds 100 ops; the bucket is cut to one op at 1000/s.
    let strict = QosLimits {
        total_ops: Some(OpsLimit {
            burst_ops: Some(1),
            ..OpsLimit::per_sec(1000)
        }),
        ..QosLimits::default()
    };
    limiter.set_limits(&strict, Duration::ZERO).unwrap();
    let waits: Vec<_> = (0..3)
        .map(|_| q.admit(Op::Read, 4096, Duration::ZERO))
        .collect();
    let ms = Duration::from_millis;
    assert_eq!(
        waits,
        [
            Admission::Go,
            Admission::WaitFor(ms(1)),
            Admission::WaitFor(ms(2))
        ]
    );
}

#[test]
fn a_shared_group_change_reaches_every_queue() {
    let group = SharedGroup::in_memory(&total_ops(100_000)).unwrap();
    let q = QueueLimiter::new(arc_limiter(
        QosLimits::default(),
        Some(group.clone().into()),
    ));
    assert_eq!(q.admit(Op::Read, 4096, Duration::ZERO), Admission::Go);
    let strict = QosLimits {
        total_ops: Some(OpsLimit {
            burst_ops: Some(1),
            ..OpsLimit::per_sec(1000)
        }),
        ..QosLimits::default()
    };
    group.set_limits(&strict, Duration::ZERO).unwrap();
    let go = (0..10)
        .filter(|_| q.admit(Op::Read, 4096, Duration::ZERO) == Admission::Go)
        .count();
    assert_eq!(go, 1);
}

#[test]
fn groups_with_peak_rates_keep_their_rates_with_queues() {
    // The peak bucket is the smaller one: prepaying from the sustained one alone would be
    // refunded. Over 2 s the sustained rate applies after a 100 ms peak.
    let limits = QosLimits {
        total_ops: Some(OpsLimit {
            burst_ops: Some(2000),
            max_ops_per_sec: Some(40_000),
            max_length_ms: Some(100),
            ..OpsLimit::per_sec(20_000)
        }),
        ..QosLimits::default()
    };
    let groups: [GroupRef; 2] = [
        QosGroup::new(&limits, Duration::ZERO).unwrap().into(),
        SharedGroup::in_memory(&limits).unwrap().into(),
    ];
    for group in groups {
        let devices: Vec<_> = (0..2)
            .map(|_| arc_limiter(QosLimits::default(), Some(group.clone())))
            .collect();
        let queues: Vec<_> = devices
            .iter()
            .flat_map(|d| (0..2).map(|_| QueueLimiter::new(Arc::clone(d))))
            .collect();
        let clock = ManualClock::new();
        clock.set(10 * SEC); // idle: full
        let runs = simulate(&clock, &queue_clients(&queues, 8), 14 * SEC);
        let (ops, _) = count(&runs, 0..32, 12 * SEC, 14 * SEC);
        assert_near(ops, 40_000, 0.01, "group ops in 2 s at 20000/s");
        // The burst: 2000 at once plus the peak rate for 100 ms (4000), then the sustained rate.
        let (burst, _) = count(&runs, 0..32, 10 * SEC, 10 * SEC + SEC / 10);
        assert_near(burst, 6000, 0.02, "ops in the first 100 ms");
    }
}

proptest! {
    /// Random workloads spread over three queues never beat the rates by more than one batch
    /// per queue.
    #[test]
    fn queues_never_exceed_rate_times_window_plus_capacity_plus_batches(
        total_ops in ops_limit(),
        read_ops in prop::option::of(ops_limit()),
        total_bytes_per_sec in (1u64 << 20)..=(64u64 << 20),
        steps in prop::collection::vec(step(), 1..300),
    ) {
        let limits = QosLimits {
            total_ops: Some(total_ops),
            read_ops,
            total_bytes: Some(BytesLimit::per_sec(total_bytes_per_sec)),
            ..QosLimits::default()
        };
        let limiter = arc_limiter(limits, None);
        let queues: Vec<_> = (0..3).map(|_| QueueLimiter::new(Arc::clone(&limiter))).collect();
        let admit = |i: usize, op, bytes, now| queues[i % 3].admit(op, bytes, now);
        let slack = |spec: BucketSpec| 3 * prepay_batch(spec.rate_per_sec, spec.capacity);
        check_admissions(&limiter, admit, &slack, &limits, &steps)?;
    }
}
