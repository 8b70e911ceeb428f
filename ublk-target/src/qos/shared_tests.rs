//! Tests of [`SharedGroup`] through [`Limiter`], in memory (the file mapping is tested in
//! `sys::shm`): the same scenarios as the in-process group, a differential test against it,
//! and threads hammering one group while its limits change. All on simulated time.

use std::time::Duration;

use proptest::prelude::*;

use super::bucket::MAX_DEBT_NS;
use super::sim::{assert_near, clients, count, simulate};
use super::tests::{check_limiter, ops_limit, step};
use super::*;

const SEC: Duration = Duration::from_secs(1);
const IO_4K: &[u64] = &[4096];

fn member(group: &SharedGroup) -> Limiter {
    Limiter::new(
        &QosLimits::default(),
        Some(group.clone().into()),
        Duration::ZERO,
    )
    .unwrap()
}

fn total_ops(per_sec: u64) -> QosLimits {
    QosLimits {
        total_ops: Some(OpsLimit::per_sec(per_sec)),
        ..QosLimits::default()
    }
}

#[test]
fn a_shared_group_is_shared_and_own_limits_still_apply() {
    let group = SharedGroup::in_memory(&total_ops(1000)).unwrap();
    let (a, b) = (member(&group), member(&group));
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
    assert!(matches!(a.group(), Some(GroupRef::Shared(_))));

    a.set_limits(&total_ops(200), clock.now()).unwrap();
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
fn peak_rate_lasts_max_length_in_a_shared_group() {
    let bursty = OpsLimit {
        max_ops_per_sec: Some(1000),
        max_length_ms: Some(2000),
        ..OpsLimit::per_sec(100)
    };
    let group = SharedGroup::in_memory(&QosLimits {
        total_ops: Some(bursty),
        ..QosLimits::default()
    })
    .unwrap();
    let l = member(&group);
    let clock = ManualClock::new();
    clock.set(60 * SEC);
    let runs = simulate(&clock, &clients(&l, Op::Read, IO_4K, 64), 80 * SEC);
    let t = |s: f64| 60 * SEC + Duration::from_secs_f64(s);
    let (first, _) = count(&runs, 0..64, t(0.0), t(0.000_001));
    assert_eq!(first, 100);
    let (burst, _) = count(&runs, 0..64, t(0.0), t(2.0));
    assert_near(burst, 2100, 0.01, "ops in the 2 s burst");
    let (after, _) = count(&runs, 0..64, t(2.0), t(12.0));
    assert_near(after, 1000, 0.01, "ops in 10 s after the burst");
}

#[test]
fn live_changes_keep_levels_and_reach_every_member() {
    let group = SharedGroup::in_memory(&total_ops(100)).unwrap();
    let (a, b) = (member(&group), member(&group));
    assert_eq!(group.generation(), 0);
    // Empty the bucket, then raise the limit tenfold: no tokens are granted.
    for _ in 0..100 {
        assert_eq!(a.admit(Op::Read, 4096, Duration::ZERO), Admission::Go);
    }
    let raised = total_ops(1000);
    GroupRef::from(group.clone())
        .set_limits(&raised, Duration::ZERO)
        .unwrap();
    assert_eq!(group.generation(), 1);
    assert_eq!(b.group().unwrap().limits().unwrap(), raised);
    assert_eq!(
        b.admit(Op::Read, 4096, Duration::ZERO),
        Admission::WaitFor(Duration::from_millis(1))
    );
    // Idle long after: at most the new capacity passes at once, through either member.
    let go = (0..5000)
        .filter(|i| {
            let l = if i % 2 == 0 { &a } else { &b };
            l.admit(Op::Read, 4096, 100 * SEC) == Admission::Go
        })
        .count();
    assert_eq!(go, 1000);
    // Lowering takes effect at once: the debt made at the old rate is kept, in time at the new.
    group.set_limits(&total_ops(10), 100 * SEC).unwrap();
    let wait = a.admit(Op::Read, 4096, 100 * SEC).wait();
    assert_eq!(
        wait,
        Duration::from_secs(4000 / 10) + Duration::from_millis(100)
    );
    // A limit that appears starts full; one that goes away no longer limits.
    let bytes = QosLimits {
        read_bytes: Some(BytesLimit::per_sec(1 << 20)),
        ..QosLimits::default()
    };
    group.set_limits(&bytes, 100 * SEC).unwrap();
    assert_eq!(a.admit(Op::Read, 1 << 20, 100 * SEC), Admission::Go);
    assert_eq!(a.admit(Op::Write, 1 << 30, 100 * SEC), Admission::Go);
    group.set_limits(&QosLimits::default(), 100 * SEC).unwrap();
    assert!(!group.is_limited());
    assert_eq!(a.admit(Op::Read, u64::MAX, 100 * SEC), Admission::Go);
    assert_eq!(group.generation(), 4);
    // An invalid change changes nothing.
    let err = group.set_limits(&total_ops(0), 100 * SEC).unwrap_err();
    assert!(matches!(err, GroupError::Limits(_)), "{err}");
    assert_eq!(group.generation(), 4);
}

#[test]
fn debt_is_capped_in_a_shared_group() {
    let group = SharedGroup::in_memory(&QosLimits {
        total_bytes: Some(BytesLimit::per_sec(MIN_BYTES)),
        ..QosLimits::default()
    })
    .unwrap();
    let l = member(&group);
    let wait = l.admit(Op::Read, u64::MAX, Duration::ZERO).wait();
    assert!(wait <= Duration::from_nanos(MAX_DEBT_NS + 1), "{wait:?}");
    assert_eq!(l.stats().debt_capped_ops, 1);
    assert_eq!(l.stats().throttled_ops, 1);
}

#[test]
fn admissions_race_limit_changes_without_harm() {
    let group = SharedGroup::in_memory(&total_ops(1000)).unwrap();
    let changes = 200u64;
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let l = member(&group);
            s.spawn(move || {
                for i in 0..5000u64 {
                    let now = Duration::from_micros(i * 10 + t);
                    let wait = l.admit(Op::Read, 4096, now).wait();
                    assert!(wait <= Duration::from_nanos(2 * MAX_DEBT_NS), "{wait:?}");
                }
            });
        }
        s.spawn(|| {
            for i in 0..changes {
                let limits = if i % 2 == 0 {
                    total_ops(10)
                } else {
                    QosLimits {
                        read_ops: Some(OpsLimit {
                            max_ops_per_sec: Some(5000),
                            ..OpsLimit::per_sec(2000)
                        }),
                        iops_size_bytes: Some(512),
                        ..total_ops(100)
                    }
                };
                group
                    .set_limits(&limits, Duration::from_micros(i * 250))
                    .unwrap();
            }
        });
    });
    assert_eq!(group.generation(), changes);
    assert_eq!(group.limits().unwrap().read_ops.unwrap().ops_per_sec, 2000);
}

#[test]
fn shared_groups_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<SharedGroup>();
    check::<GroupRef>();
}

/// A rate that divides 16e9 (2^a × 5^b), at least `min`: shared buckets then count exactly
/// what in-process ones do. Also returns a peak rate above it that divides 16e9 too.
fn exact_rates(min: u64) -> impl Strategy<Value = (u64, u64)> {
    (0..=12u32, 0..=8u32, 1..=3u32)
        .prop_map(|(a, b, up)| {
            let rate = 2u64.pow(a) * 5u64.pow(b);
            let (pa, pb) = match up {
                1 => (a + 1, b),
                2 => (a, b + 1),
                _ => (a + 1, b + 1),
            };
            (rate, 2u64.pow(pa) * 5u64.pow(pb))
        })
        .prop_filter("at least the minimum rate", move |&(rate, _)| rate >= min)
}

fn exact_ops_limit() -> impl Strategy<Value = OpsLimit> {
    (
        exact_rates(50),
        prop::option::of(1..=1000u64),
        prop::option::of(1..=5000u64),
        any::<bool>(),
    )
        .prop_map(|((per_sec, max), burst, length_ms, peak)| OpsLimit {
            ops_per_sec: per_sec,
            burst_ops: burst,
            max_ops_per_sec: peak.then_some(max),
            max_length_ms: length_ms.filter(|_| peak),
        })
}

proptest! {
    /// With rates that ticks represent exactly, a shared group and an in-process group give
    /// the same answer to every request of any workload.
    #[test]
    fn a_shared_group_answers_like_a_local_one(
        total_ops in exact_ops_limit(),
        read_ops in prop::option::of(exact_ops_limit()),
        total_bytes in exact_rates(1 << 20),
        iops_size_bytes in prop::option::of(4096..=65536u64),
        discard_counts_bytes in any::<bool>(),
        steps in prop::collection::vec(step(), 1..300),
    ) {
        let limits = QosLimits {
            total_ops: Some(total_ops),
            read_ops,
            total_bytes: Some(BytesLimit {
                max_bytes_per_sec: Some(total_bytes.1),
                ..BytesLimit::per_sec(total_bytes.0)
            }),
            iops_size_bytes,
            flush_cost_ops: Some(3),
            discard_counts_bytes,
            ..QosLimits::default()
        };
        prop_assert_eq!(limits.validate(), Ok(()));
        let local = GroupRef::from(QosGroup::new(&limits, Duration::ZERO).unwrap());
        let local = Limiter::new(&QosLimits::default(), Some(local), Duration::ZERO).unwrap();
        let shared = member(&SharedGroup::in_memory(&limits).unwrap());
        let mut now_ns = 0u64;
        for &(op, bytes, advance_ns) in &steps {
            now_ns += advance_ns;
            let now = Duration::from_nanos(now_ns);
            prop_assert_eq!(shared.admit(op, bytes, now), local.admit(op, bytes, now));
        }
        prop_assert_eq!(shared.stats(), local.stats());
    }

    /// Any rates (rounded to ticks): what runs never exceeds `rate × window + capacity`.
    #[test]
    fn what_runs_through_a_shared_group_never_exceeds_rate_times_window_plus_capacity(
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
        let group = SharedGroup::in_memory(&limits).unwrap();
        check_limiter(&member(&group), &limits, &steps)?;
    }
}
