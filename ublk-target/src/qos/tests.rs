//! Limiter tests, all on a [`ManualClock`]: simulated closed loops of clients that each wait
//! exactly what they are told, so rates are measured in simulated time, without sleeping.

use std::time::Duration;

use proptest::prelude::*;

use super::bucket::MAX_DEBT_NS;
use super::limits::{BucketSpec, Class, Cost, READ_OPS, TOTAL_BYTES, TOTAL_OPS};
use super::sim::{assert_near, clients, count, simulate};
use super::*;

const SEC: Duration = Duration::from_secs(1);
const SEC_NS: u64 = 1_000_000_000;

fn at(secs: f64) -> Duration {
    Duration::from_secs_f64(secs)
}

fn limiter(limits: QosLimits) -> Limiter {
    Limiter::new(&limits, None, Duration::ZERO).unwrap()
}

const IO_4K: &[u64] = &[4096];

#[test]
fn no_limits_always_go() {
    let l = Limiter::unlimited();
    for op in [Op::Read, Op::Write, Op::Flush, Op::Discard, Op::WriteZeroes] {
        for _ in 0..1000 {
            assert_eq!(l.admit(op, u64::MAX, Duration::ZERO), Admission::Go);
        }
    }
    assert_eq!(l.stats(), LimiterStats::default());
    assert!(l.limits().is_unlimited());
    // An empty group does not limit either.
    let g = QosGroup::new(&QosLimits::default(), Duration::ZERO).unwrap();
    let l = Limiter::new(&QosLimits::default(), Some(g.into()), Duration::ZERO).unwrap();
    assert_eq!(l.admit(Op::Write, 1 << 20, Duration::ZERO), Admission::Go);
}

#[test]
fn steady_state_1000_iops_with_32_outstanding() {
    let l = limiter(QosLimits {
        total_ops: Some(OpsLimit::per_sec(1000)),
        ..QosLimits::default()
    });
    let clock = ManualClock::new();
    let runs = simulate(&clock, &clients(&l, Op::Read, IO_4K, 32), 12 * SEC);
    // The first second also drains the initial burst; measure the 10 s after it.
    let (ops, _) = count(&runs, 0..32, 2 * SEC, 12 * SEC);
    assert_near(ops, 10_000, 0.01, "ops in 10 s at 1000 IOPS");
    let stats = l.stats();
    assert!(stats.throttled_ops > 10_000 && stats.throttled_ns > 0);
    assert_eq!(stats.debt_capped_ops, 0);
}

#[test]
fn burst_passes_at_once_after_idle_then_the_rate_applies() {
    let burst = OpsLimit {
        burst_ops: Some(50),
        ..OpsLimit::per_sec(100)
    };
    let l = limiter(QosLimits {
        write_ops: Some(burst),
        ..QosLimits::default()
    });
    let now = 10 * SEC; // idle since creation: full
    for _ in 0..50 {
        assert_eq!(l.admit(Op::Write, 4096, now), Admission::Go);
    }
    assert_eq!(
        l.admit(Op::Write, 4096, now),
        Admission::WaitFor(Duration::from_millis(10))
    );
    assert_eq!(
        l.admit(Op::Write, 4096, now),
        Admission::WaitFor(Duration::from_millis(20))
    );
    // Idle again: the bucket refills to 50, not more.
    let clock = ManualClock::new();
    clock.set(100 * SEC);
    let runs = simulate(&clock, &clients(&l, Op::Write, IO_4K, 64), 110 * SEC);
    let (at_once, _) = count(&runs, 0..64, 100 * SEC, 100 * SEC + Duration::from_nanos(1));
    assert_eq!(at_once, 50);
    let (sustained, _) = count(&runs, 0..64, 101 * SEC, 110 * SEC);
    assert_near(
        sustained,
        900,
        0.01,
        "ops in 9 s at 100 IOPS after the burst",
    );
}

#[test]
fn peak_rate_lasts_max_length_then_the_rate_applies() {
    let bursty = OpsLimit {
        max_ops_per_sec: Some(1000),
        max_length_ms: Some(2000),
        ..OpsLimit::per_sec(100)
    };
    let l = limiter(QosLimits {
        total_ops: Some(bursty),
        ..QosLimits::default()
    });
    let clock = ManualClock::new();
    clock.set(60 * SEC);
    let runs = simulate(&clock, &clients(&l, Op::Read, IO_4K, 64), 80 * SEC);
    let t = |s: f64| 60 * SEC + at(s);
    // B = 100 (1 s of the rate) at once, then 1000/s for 2 s, then 100/s.
    let (first, _) = count(&runs, 0..64, t(0.0), t(0.000_001));
    assert_eq!(first, 100);
    let (peak, _) = count(&runs, 0..64, t(0.5), t(1.5));
    assert_near(peak, 1000, 0.01, "ops in the middle second of the burst");
    let (burst, _) = count(&runs, 0..64, t(0.0), t(2.0));
    assert_near(burst, 2100, 0.01, "ops in the 2 s burst");
    let (after, _) = count(&runs, 0..64, t(2.0), t(12.0));
    assert_near(after, 1000, 0.01, "ops in 10 s after the burst");
}

#[test]
fn bytes_limit_with_mixed_4k_and_64k() {
    let l = limiter(QosLimits {
        total_bytes: Some(BytesLimit::per_sec(1 << 20)),
        ..QosLimits::default()
    });
    let clock = ManualClock::new();
    let mixed = [4096, 65536, 4096, 4096, 65536];
    let runs = simulate(&clock, &clients(&l, Op::Write, &mixed, 16), 12 * SEC);
    let (ops, bytes) = count(&runs, 0..16, 2 * SEC, 12 * SEC);
    assert_near(bytes, 10 << 20, 0.01, "bytes in 10 s at 1 MiB/s");
    assert!(ops > 300, "both sizes pass: {ops} ops");
}

#[test]
fn iops_size_normalizes_large_ios() {
    let limits = QosLimits {
        total_ops: Some(OpsLimit::per_sec(1000)),
        iops_size_bytes: Some(4096),
        ..QosLimits::default()
    };
    assert_eq!(limits.cost(Op::Read, 65536).ops, 16);
    assert_eq!(limits.cost(Op::Write, 4096).ops, 1);
    assert_eq!(limits.cost(Op::Write, 4097).ops, 2);
    assert_eq!(limits.cost(Op::Read, 512).ops, 1);
    assert_eq!(QosLimits::default().cost(Op::Read, 65536).ops, 1);
    let l = limiter(limits);
    let clock = ManualClock::new();
    let runs = simulate(&clock, &clients(&l, Op::Read, &[65536], 8), 12 * SEC);
    let (ops, _) = count(&runs, 0..8, 2 * SEC, 12 * SEC);
    assert_near(ops, 625, 0.01, "64k reads in 10 s at 1000 normalized IOPS");
}

#[test]
fn flush_and_discard_costs() {
    let defaults = QosLimits::default();
    let flush = defaults.cost(Op::Flush, 0);
    assert_eq!((flush.class, flush.ops, flush.bytes), (Class::Other, 1, 0));
    let preflush = defaults.cost(Op::Write, 0);
    assert_eq!(preflush, flush);
    for op in [Op::Discard, Op::WriteZeroes] {
        let c = defaults.cost(op, 1 << 30);
        assert_eq!((c.class, c.ops, c.bytes), (Class::Write, 1, 0));
    }
    // Flushes only count against total_ops; free flushes never wait.
    let l = limiter(QosLimits {
        write_ops: Some(OpsLimit::per_sec(1)),
        total_ops: Some(OpsLimit::per_sec(10)),
        total_bytes: Some(BytesLimit::per_sec(4096)),
        flush_cost_ops: Some(5),
        ..QosLimits::default()
    });
    assert_eq!(l.admit(Op::Flush, 0, Duration::ZERO), Admission::Go);
    assert_eq!(l.admit(Op::Flush, 0, Duration::ZERO), Admission::Go);
    // total_ops is now empty: a discard pays 1 op there (100 ms) and in write_ops (1 is left).
    assert_eq!(
        l.admit(Op::Discard, 1 << 30, Duration::ZERO),
        Admission::WaitFor(Duration::from_millis(100))
    );
    l.set_limits(
        &QosLimits {
            flush_cost_ops: Some(0),
            discard_cost_ops: Some(0),
            ..l.limits()
        },
        Duration::ZERO,
    )
    .unwrap();
    assert_eq!(l.admit(Op::Flush, 0, Duration::ZERO), Admission::Go);
    assert_eq!(
        l.admit(Op::WriteZeroes, 1 << 20, Duration::ZERO),
        Admission::Go
    );
    // Counting discard bytes: 8 KiB against a full 4 KiB/s total_bytes bucket is 1 s of debt.
    let counting = QosLimits {
        total_bytes: Some(BytesLimit::per_sec(4096)),
        discard_counts_bytes: true,
        ..QosLimits::default()
    };
    let c = counting.cost(Op::Discard, 8192);
    assert_eq!((c.class, c.ops, c.bytes), (Class::Write, 1, 8192));
    let l = limiter(counting);
    assert_eq!(
        l.admit(Op::Discard, 8192, Duration::ZERO),
        Admission::WaitFor(SEC)
    );
}

#[test]
fn read_and_write_limits_are_independent() {
    let l = limiter(QosLimits {
        read_ops: Some(OpsLimit::per_sec(100)),
        write_ops: Some(OpsLimit::per_sec(1000)),
        ..QosLimits::default()
    });
    let clock = ManualClock::new();
    let mut all = clients(&l, Op::Read, IO_4K, 16);
    all.extend(clients(&l, Op::Write, IO_4K, 16));
    let runs = simulate(&clock, &all, 12 * SEC);
    let (reads, _) = count(&runs, 0..16, 2 * SEC, 12 * SEC);
    let (writes, _) = count(&runs, 16..32, 2 * SEC, 12 * SEC);
    assert_near(reads, 1000, 0.01, "reads at 100 IOPS");
    assert_near(writes, 10_000, 0.01, "writes at 1000 IOPS");
}

#[test]
fn the_total_limit_applies_to_both() {
    let l = limiter(QosLimits {
        read_ops: Some(OpsLimit::per_sec(1000)),
        write_ops: Some(OpsLimit::per_sec(1000)),
        total_ops: Some(OpsLimit::per_sec(500)),
        read_bytes: Some(BytesLimit::per_sec(1 << 30)),
        ..QosLimits::default()
    });
    let clock = ManualClock::new();
    let mut all = clients(&l, Op::Read, IO_4K, 16);
    all.extend(clients(&l, Op::Write, IO_4K, 16));
    let runs = simulate(&clock, &all, 12 * SEC);
    let (reads, _) = count(&runs, 0..16, 2 * SEC, 12 * SEC);
    let (writes, _) = count(&runs, 16..32, 2 * SEC, 12 * SEC);
    assert_near(
        reads + writes,
        5000,
        0.01,
        "reads + writes at 500 total IOPS",
    );
    assert!(
        reads > 2000 && writes > 2000,
        "FIFO shares fairly: {reads} / {writes}"
    );
}

#[test]
fn a_group_bucket_is_shared() {
    let group_limits = QosLimits {
        total_ops: Some(OpsLimit::per_sec(1000)),
        ..QosLimits::default()
    };
    let group = QosGroup::new(&group_limits, Duration::ZERO).unwrap();
    let a = Limiter::new(
        &QosLimits::default(),
        Some(group.clone().into()),
        Duration::ZERO,
    )
    .unwrap();
    let b = Limiter::new(
        &QosLimits::default(),
        Some(group.clone().into()),
        Duration::ZERO,
    )
    .unwrap();
    let clock = ManualClock::new();
    let mut all = clients(&a, Op::Read, IO_4K, 16);
    all.extend(clients(&b, Op::Write, IO_4K, 16));
    let runs = simulate(&clock, &all, 12 * SEC);
    let (on_a, _) = count(&runs, 0..16, 2 * SEC, 12 * SEC);
    let (on_b, _) = count(&runs, 16..32, 2 * SEC, 12 * SEC);
    assert_near(
        on_a + on_b,
        10_000,
        0.01,
        "two devices in a 1000 IOPS group",
    );
    assert_near(on_a, 5000, 0.05, "device a's share");
    assert_eq!(group.limits(), group_limits);
    assert!(a.group().is_some());

    // Each device's own limit still applies inside the group.
    a.set_limits(
        &QosLimits {
            total_ops: Some(OpsLimit::per_sec(200)),
            ..QosLimits::default()
        },
        clock.now(),
    )
    .unwrap();
    let start = clock.now();
    let runs = simulate(&clock, &all, start + 12 * SEC);
    let (on_a, _) = count(&runs, 0..16, start + 2 * SEC, start + 12 * SEC);
    let (on_b, _) = count(&runs, 16..32, start + 2 * SEC, start + 12 * SEC);
    assert_near(on_a, 2000, 0.01, "device a at its own 200 IOPS");
    assert_near(
        on_b,
        8000,
        0.01,
        "device b gets the rest of the group's 1000",
    );
}

#[test]
fn the_group_counts_across_threads() {
    let group = QosGroup::new(
        &QosLimits {
            total_ops: Some(OpsLimit {
                burst_ops: Some(1000),
                ..OpsLimit::per_sec(1)
            }),
            ..QosLimits::default()
        },
        Duration::ZERO,
    )
    .unwrap();
    let go = std::thread::scope(|s| {
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let l = Limiter::new(
                    &QosLimits::default(),
                    Some(group.clone().into()),
                    Duration::ZERO,
                )
                .unwrap();
                s.spawn(move || {
                    (0..500)
                        .filter(|_| l.admit(Op::Read, 4096, Duration::ZERO) == Admission::Go)
                        .count()
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .sum::<usize>()
    });
    // Whatever the interleaving, exactly the burst passed without waiting.
    assert_eq!(go, 1000);
}

#[test]
fn limiter_and_group_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Limiter>();
    check::<QosGroup>();
    check::<ManualClock>();
    check::<MonotonicClock>();
}

#[test]
fn lowering_limits_takes_effect_at_once() {
    let l = limiter(QosLimits {
        total_ops: Some(OpsLimit::per_sec(1000)),
        ..QosLimits::default()
    });
    let clock = ManualClock::new();
    let all = clients(&l, Op::Read, IO_4K, 32);
    simulate(&clock, &all, 5 * SEC);
    l.set_limits(
        &QosLimits {
            total_ops: Some(OpsLimit::per_sec(100)),
            ..QosLimits::default()
        },
        clock.now(),
    )
    .unwrap();
    let runs = simulate(&clock, &all, 17 * SEC);
    // At most the debt of the requests admitted at the old rate (32 ops, 0.32 s at the new
    // rate) delays the new rate; from then on, exactly 100/s, with no refill burst.
    let (ops, _) = count(&runs, 0..32, 6 * SEC, 16 * SEC);
    assert_near(ops, 1000, 0.01, "ops in 10 s after lowering to 100 IOPS");
    let (first_second, _) = count(&runs, 0..32, at(5.0), at(6.0));
    assert!(
        first_second <= 32 + 100,
        "{first_second} ops in the first second"
    );
}

#[test]
fn raising_limits_grants_no_tokens() {
    let l = limiter(QosLimits {
        total_ops: Some(OpsLimit::per_sec(100)),
        ..QosLimits::default()
    });
    // Empty the bucket, then raise the limit tenfold: the next op still finds no tokens.
    for _ in 0..100 {
        assert_eq!(l.admit(Op::Read, 4096, Duration::ZERO), Admission::Go);
    }
    let raised = QosLimits {
        total_ops: Some(OpsLimit::per_sec(1000)),
        ..QosLimits::default()
    };
    l.set_limits(&raised, Duration::ZERO).unwrap();
    assert_eq!(
        l.admit(Op::Read, 4096, Duration::ZERO),
        Admission::WaitFor(Duration::from_millis(1))
    );
    // A full bucket keeps its level when the capacity grows.
    let full = limiter(QosLimits {
        total_ops: Some(OpsLimit::per_sec(100)),
        ..QosLimits::default()
    });
    full.set_limits(&raised, 10 * SEC).unwrap();
    let go = (0..1000)
        .take_while(|_| full.admit(Op::Read, 4096, 10 * SEC) == Admission::Go)
        .count();
    assert_eq!(go, 100);
    // Idle long after: at most the new capacity passes at once.
    let go = (0..5000)
        .take_while(|_| full.admit(Op::Read, 4096, 1000 * SEC) == Admission::Go)
        .count();
    assert_eq!(go, 1000);
    // Adding a limit where there was none starts it full, within the new capacity.
    let unlimited = Limiter::unlimited();
    unlimited.set_limits(&raised, 5 * SEC).unwrap();
    let go = (0..5000)
        .take_while(|_| unlimited.admit(Op::Write, 4096, 5 * SEC) == Admission::Go)
        .count();
    assert_eq!(go, 1000);
    // Removing every limit goes back to the lock-free path.
    unlimited
        .set_limits(&QosLimits::default(), 5 * SEC)
        .unwrap();
    assert_eq!(unlimited.admit(Op::Write, 4096, 5 * SEC), Admission::Go);
}

#[test]
fn huge_values_and_idle_gaps_do_not_overflow() {
    let huge = QosLimits {
        read_ops: Some(OpsLimit {
            burst_ops: Some(MAX_BURST),
            max_ops_per_sec: Some(MAX_RATE_PER_SEC),
            max_length_ms: Some(MAX_BURST_LENGTH_MS),
            ..OpsLimit::per_sec(MAX_RATE_PER_SEC - 1)
        }),
        total_bytes: Some(BytesLimit::per_sec(MIN_BYTES)),
        iops_size_bytes: Some(MIN_BYTES),
        ..QosLimits::default()
    };
    let l = limiter(huge);
    assert_eq!(l.admit(Op::Read, 0, Duration::ZERO), Admission::Go);
    // u64::MAX bytes at 512 B/s: the debt is capped at an hour, and the excess is reported.
    let wait = l.admit(Op::Read, u64::MAX, Duration::MAX).wait();
    assert!(wait <= Duration::from_nanos(MAX_DEBT_NS), "{wait:?}");
    assert_eq!(l.stats().debt_capped_ops, 1);
    assert_eq!(
        l.admit(Op::Read, u64::MAX, Duration::MAX).wait(),
        Duration::from_nanos(MAX_DEBT_NS)
    );
    assert_eq!(l.stats().throttled_ops, 2);
    // A timestamp from before time saturated: the wait saturates too, it does not wrap.
    let wait = l.admit(Op::Read, 4096, Duration::ZERO).wait();
    assert_eq!(wait, Duration::from_nanos(u64::MAX));
    assert_eq!(l.stats().debt_capped_ops, 3);
}

#[test]
fn validation_rejects_nonsense() {
    let with = |f: &dyn Fn(&mut QosLimits)| {
        let mut l = QosLimits::default();
        f(&mut l);
        l.validate()
    };
    let out_of_range = |limit: &str, what: &str, r: Result<(), QosError>| {
        let matched = matches!(
            r,
            Err(QosError::OutOfRange { limit: l, what: w, .. }) if l == limit && w == what
        );
        assert!(matched, "{limit} {what}: {r:?}");
    };
    assert_eq!(with(&|_| {}), Ok(()));
    out_of_range(
        "read_ops",
        "rate per second",
        with(&|l| l.read_ops = Some(OpsLimit::per_sec(0))),
    );
    out_of_range(
        "write_bytes",
        "rate per second",
        with(&|l| l.write_bytes = Some(BytesLimit::per_sec(100))),
    );
    out_of_range(
        "total_ops",
        "rate per second",
        with(&|l| l.total_ops = Some(OpsLimit::per_sec(MAX_RATE_PER_SEC + 1))),
    );
    out_of_range(
        "total_ops",
        "burst",
        with(&|l| {
            l.total_ops = Some(OpsLimit {
                burst_ops: Some(0),
                ..OpsLimit::per_sec(10)
            })
        }),
    );
    out_of_range(
        "read_bytes",
        "burst",
        with(&|l| {
            l.read_bytes = Some(BytesLimit {
                burst_bytes: Some(511),
                ..BytesLimit::per_sec(4096)
            })
        }),
    );
    assert!(matches!(
        with(&|l| {
            l.read_ops = Some(OpsLimit {
                max_ops_per_sec: Some(10),
                ..OpsLimit::per_sec(10)
            })
        }),
        Err(QosError::MaxNotAboveRate {
            limit: "read_ops",
            ..
        })
    ));
    assert!(matches!(
        with(&|l| {
            l.read_ops = Some(OpsLimit {
                max_length_ms: Some(10),
                ..OpsLimit::per_sec(10)
            })
        }),
        Err(QosError::LengthWithoutMax { limit: "read_ops" })
    ));
    out_of_range(
        "write_ops",
        "max_length_ms",
        with(&|l| {
            l.write_ops = Some(OpsLimit {
                max_ops_per_sec: Some(20),
                max_length_ms: Some(0),
                ..OpsLimit::per_sec(10)
            })
        }),
    );
    out_of_range(
        "iops_size_bytes",
        "size",
        with(&|l| l.iops_size_bytes = Some(0)),
    );
    out_of_range(
        "flush_cost_ops",
        "cost",
        with(&|l| l.flush_cost_ops = Some(u64::MAX)),
    );
    // A limiter is never built from invalid limits, and a failed change changes nothing.
    let bad = QosLimits {
        read_ops: Some(OpsLimit::per_sec(0)),
        ..QosLimits::default()
    };
    assert!(Limiter::new(&bad, None, Duration::ZERO).is_err());
    assert!(QosGroup::new(&bad, Duration::ZERO).is_err());
    let l = Limiter::unlimited();
    assert!(l.set_limits(&bad, Duration::ZERO).is_err());
    assert!(l.limits().is_unlimited());
}

#[test]
fn validation_against_the_largest_io() {
    let limits = QosLimits {
        total_ops: Some(OpsLimit::per_sec(10)),
        read_bytes: Some(BytesLimit::per_sec(1 << 20)),
        iops_size_bytes: Some(4096),
        ..QosLimits::default()
    };
    assert_eq!(limits.validate_for_max_io(40960), Ok(()));
    assert_eq!(
        limits.validate_for_max_io(1 << 20),
        Err(QosError::BurstBelowIo {
            limit: "total_ops",
            burst: 10,
            cost: 256,
            io_bytes: 1 << 20
        })
    );
    let small_bytes = QosLimits {
        read_bytes: Some(BytesLimit::per_sec(65536)),
        ..QosLimits::default()
    };
    assert!(matches!(
        small_bytes.validate_for_max_io(1 << 20),
        Err(QosError::BurstBelowIo {
            limit: "read_bytes",
            ..
        })
    ));
    // The message names the limit and both sizes.
    let msg = limits.validate_for_max_io(1 << 20).unwrap_err().to_string();
    assert!(
        msg.contains("total_ops") && msg.contains("1048576"),
        "{msg}"
    );
}

#[test]
fn limits_round_trip_through_json() {
    let limits = QosLimits {
        read_ops: Some(OpsLimit {
            max_ops_per_sec: Some(2000),
            max_length_ms: Some(5000),
            ..OpsLimit::per_sec(500)
        }),
        total_bytes: Some(BytesLimit {
            burst_bytes: Some(8 << 20),
            ..BytesLimit::per_sec(100 << 20)
        }),
        iops_size_bytes: Some(4096),
        flush_cost_ops: Some(0),
        discard_counts_bytes: true,
        ..QosLimits::default()
    };
    let json = serde_json::to_string(&limits).unwrap();
    assert_eq!(serde_json::from_str::<QosLimits>(&json).unwrap(), limits);
    let parsed: QosLimits =
        serde_json::from_str(r#"{"write_ops": {"ops_per_sec": 100}, "iops_size_bytes": 8192}"#)
            .unwrap();
    assert_eq!(parsed.write_ops, Some(OpsLimit::per_sec(100)));
    assert_eq!(serde_json::to_string(&QosLimits::default()).unwrap(), "{}");
    assert!(serde_json::from_str::<QosLimits>(r#"{"write_iops": 1}"#).is_err());
}

/// One step of a random workload: an op, its length, and the time since the previous step.
pub(super) fn step() -> impl Strategy<Value = (Op, u64, u64)> {
    let op = prop_oneof![
        4 => Just(Op::Read),
        4 => Just(Op::Write),
        1 => Just(Op::Flush),
        1 => Just(Op::Discard),
        1 => Just(Op::WriteZeroes),
    ];
    let bytes = prop_oneof![Just(0u64), Just(4096), Just(65536), 0..=1u64 << 20];
    // Mostly short gaps, so the buckets run dry and the bounds bind; sometimes long idles.
    let advance_ns = prop_oneof![
        4 => Just(0u64),
        8 => 0..=SEC_NS / 1000,
        1 => 0..=10 * SEC_NS,
    ];
    (op, bytes, advance_ns)
}

pub(super) fn ops_limit() -> impl Strategy<Value = OpsLimit> {
    (
        100..=10_000u64,
        prop::option::of(1..=1000u64),
        prop::option::of((1..=10u64, 1..=5000u64)),
    )
        .prop_map(|(per_sec, burst, peak)| OpsLimit {
            ops_per_sec: per_sec,
            burst_ops: burst,
            max_ops_per_sec: peak.map(|(factor, _)| per_sec * (factor + 1)),
            max_length_ms: peak.map(|(_, ms)| ms),
        })
}

/// Runs `steps` open-loop (nobody waits) against `limits` and checks, per bucket, that no level
/// exceeds its capacity and that for every time T, what is ready to run by T never exceeds
/// `rate * T + capacity` (the buckets start full at time 0).
fn check_workload(limits: &QosLimits, steps: &[(Op, u64, u64)]) -> Result<(), TestCaseError> {
    prop_assert_eq!(limits.validate(), Ok(()));
    check_limiter(&limiter(*limits), limits, steps)
}

/// [`check_workload`] on a given limiter, whose buckets (its own or its group's) follow
/// `limits` and start full at time 0.
pub(super) fn check_limiter(
    l: &Limiter,
    limits: &QosLimits,
    steps: &[(Op, u64, u64)],
) -> Result<(), TestCaseError> {
    let admit = |_: usize, op, bytes, now| l.admit(op, bytes, now);
    check_admissions(l, admit, &|_| 0, limits, steps)
}

/// [`check_limiter`] with step `i` admitted by `admit(i, ..)`, and a bucket of spec S allowed
/// `slack(S)` units more than `rate * T + capacity`.
pub(super) fn check_admissions(
    l: &Limiter,
    mut admit: impl FnMut(usize, Op, u64, Duration) -> Admission,
    slack: &dyn Fn(BucketSpec) -> u64,
    limits: &QosLimits,
    steps: &[(Op, u64, u64)],
) -> Result<(), TestCaseError> {
    let mut now_ns = 0u64;
    // (ready time, cost) of every request.
    let mut ran = Vec::with_capacity(steps.len());
    for (i, &(op, bytes, advance_ns)) in steps.iter().enumerate() {
        now_ns += advance_ns;
        let wait_ns = nanos(admit(i, op, bytes, Duration::from_nanos(now_ns)).wait());
        prop_assert!(wait_ns <= MAX_DEBT_NS);
        ran.push((now_ns + wait_ns, limits.cost(op, bytes)));
        let state = l.own.lock();
        for lane in state.lanes.iter().flatten() {
            for b in std::iter::once(&lane.sustained).chain(&lane.peak) {
                prop_assert!(b.level_nano() <= b.capacity_nano());
            }
        }
    }
    // The ranges the strategies draw from keep every debt far below the cap.
    prop_assert_eq!(l.stats().debt_capped_ops, 0);
    ran.sort_by_key(|(ready_ns, _)| *ready_ns);
    let lanes = limits.lanes();
    let check = |index: usize, units: &dyn Fn(&Cost) -> u64| -> Result<(), TestCaseError> {
        let Some(lane) = lanes[index] else {
            return Ok(());
        };
        let mut used_nano = 0u128;
        for (ready_ns, cost) in &ran {
            used_nano += u128::from(units(cost)) * u128::from(SEC_NS);
            for spec in std::iter::once(lane.sustained).chain(lane.peak) {
                let allowed_nano = u128::from(spec.rate_per_sec) * u128::from(*ready_ns)
                    + u128::from(spec.capacity + slack(spec)) * u128::from(SEC_NS);
                prop_assert!(
                    used_nano <= allowed_nano,
                    "lane {} at {} ns: {} > {}",
                    index,
                    ready_ns,
                    used_nano,
                    allowed_nano
                );
            }
        }
        Ok(())
    };
    check(TOTAL_OPS, &|c| c.ops)?;
    check(TOTAL_BYTES, &|c| c.bytes)?;
    check(READ_OPS, &|c| u64::from(c.class == Class::Read) * c.ops)
}

proptest! {
    /// Random workloads against random (valid) limits never beat the rates.
    #[test]
    fn what_runs_never_exceeds_rate_times_window_plus_capacity(
        total_ops in ops_limit(),
        read_ops in prop::option::of(ops_limit()),
        total_bytes_per_sec in (1u64 << 20)..=(64u64 << 20),
        iops_size_bytes in prop::option::of(prop_oneof![Just(4096u64), 4096..=65536u64]),
        discard_counts_bytes in any::<bool>(),
        steps in prop::collection::vec(step(), 1..300),
    ) {
        let limits = QosLimits {
            total_ops: Some(total_ops),
            read_ops,
            total_bytes: Some(BytesLimit::per_sec(total_bytes_per_sec)),
            iops_size_bytes,
            flush_cost_ops: Some(3),
            discard_counts_bytes,
            ..QosLimits::default()
        };
        check_workload(&limits, &steps)?;
    }
}
