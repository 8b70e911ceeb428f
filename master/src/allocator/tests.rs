//! Unit tests for the allocator: one behaviour per test, with injected time and a fixed seed.

use std::collections::BTreeSet;
use std::time::Duration;

use super::*;

pub(super) fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

pub(super) fn aid(s: &str) -> AgentId {
    AgentId(s.to_owned())
}

pub(super) fn fid(s: &str) -> FrameworkId {
    FrameworkId(s.to_owned())
}

pub(super) fn cpus_mem(cpus: f64, mem: f64) -> ResourceSet {
    ResourceSet::from_items([
        ResourceItem::scalar("cpus", cpus).unwrap(),
        ResourceItem::scalar("mem", mem).unwrap(),
    ])
    .unwrap()
}

pub(super) fn spec(roles: &[&str]) -> FrameworkSpec {
    FrameworkSpec {
        roles: roles.iter().map(|r| r.to_string()).collect(),
        active: true,
        ..FrameworkSpec::default()
    }
}

fn allocator() -> Allocator {
    Allocator::new(AllocatorConfig {
        seed: 42,
        ..AllocatorConfig::default()
    })
}

fn quantities(pairs: &[(&str, f64)]) -> Quantities {
    Quantities::from_units(pairs).unwrap()
}

fn cpus_of(set: &ResourceSet) -> f64 {
    set.quantities().get("cpus").as_f64()
}

fn add_agents(a: &mut Allocator, n: usize, cpus: f64, mem: f64) {
    for i in 0..n {
        a.add_agent(aid(&format!("a{i}")), cpus_mem(cpus, mem), vec![])
            .unwrap();
    }
}

fn offered_cpus(offers: &[Offer], fw: &str) -> f64 {
    offers
        .iter()
        .filter(|o| o.framework.0 == fw)
        .map(|o| cpus_of(&o.resources))
        .sum()
}

#[test]
fn a_single_framework_gets_everything() {
    let mut a = allocator();
    add_agents(&mut a, 3, 4.0, 8192.0);
    a.add_framework(fid("f"), spec(&["r"])).unwrap();
    let offers = a.allocate(secs(0));
    assert_eq!(offers.len(), 3);
    let agents: BTreeSet<&AgentId> = offers.iter().map(|o| &o.agent).collect();
    assert_eq!(agents.len(), 3, "one offer per agent");
    for o in &offers {
        assert_eq!(o.resources, cpus_mem(4.0, 8192.0));
        assert_eq!(o.role, "r");
        assert!(a.agent_available(&o.agent).unwrap().is_empty());
    }
    assert_eq!(offers[0].id.to_string(), "O1");
    assert!(a.allocate(secs(1)).is_empty(), "nothing is offered twice");
    a.check_invariants().unwrap();
}

/// A greedy workload: every offer is used whole by tasks of 1 cpu and 2048 MB (agents are
/// 4 cpus and 8192 MB, so nothing is left over) that run for a pseudo-random number of cycles.
#[derive(Default)]
struct Greedy {
    tasks: Vec<(AgentId, FrameworkId, String, ResourceSet, u64)>,
    lcg: u64,
    cycle: u64,
}

impl Greedy {
    /// Runs `cycles` cycles and returns the dominant shares of `fws` (framework, role).
    fn run(&mut self, a: &mut Allocator, fws: &[(&str, &str)], cycles: u64) -> Vec<f64> {
        for _ in 0..cycles {
            let now = secs(self.cycle);
            let cycle = self.cycle;
            let (done, running) = std::mem::take(&mut self.tasks)
                .into_iter()
                .partition(|t| t.4 <= cycle);
            self.tasks = running;
            for (agent, fw, role, res, _) in done {
                a.recover(&agent, &fw, &role, &res).unwrap();
            }
            for offer in a.allocate(now) {
                let q = offer.resources.quantities();
                let n = q
                    .get("cpus")
                    .as_f64()
                    .min(q.get("mem").as_f64() / 2048.0)
                    .floor();
                if n < 1.0 {
                    a.decline(offer.id, Some(0.0), now).unwrap();
                    continue;
                }
                let used = cpus_mem(n, n * 2048.0);
                let accept = Accept {
                    used: used.clone(),
                    refuse_seconds: Some(0.0),
                    ..Accept::default()
                };
                a.accept(offer.id, accept, now).unwrap();
                self.lcg = self
                    .lcg
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let ends = cycle + 1 + (self.lcg >> 33) % 6;
                self.tasks
                    .push((offer.agent, offer.framework, offer.role, used, ends));
            }
            a.check_invariants().unwrap();
            self.cycle += 1;
        }
        fws.iter()
            .map(|(fw, role)| a.framework_share(&fid(fw), role))
            .collect()
    }
}

#[test]
fn equal_weights_converge_to_equal_shares() {
    let mut a = allocator();
    add_agents(&mut a, 20, 4.0, 8192.0);
    // f1 fills the cluster alone first; f2 arrives late and must catch up as tasks end.
    a.add_framework(fid("f1"), spec(&["r1"])).unwrap();
    let mut w = Greedy::default();
    w.run(&mut a, &[("f1", "r1")], 3);
    assert!(a.framework_share(&fid("f1"), "r1") > 0.9);
    a.add_framework(fid("f2"), spec(&["r2"])).unwrap();
    let shares = w.run(&mut a, &[("f1", "r1"), ("f2", "r2")], 60);
    let one_agent = 4.0 / 80.0;
    assert!(
        (shares[0] - shares[1]).abs() <= one_agent + 1e-9,
        "shares {shares:?}"
    );
}

#[test]
fn frameworks_in_one_role_converge_too() {
    let mut a = allocator();
    add_agents(&mut a, 10, 4.0, 8192.0);
    a.add_framework(fid("f1"), spec(&["r"])).unwrap();
    let mut w = Greedy::default();
    w.run(&mut a, &[("f1", "r")], 2);
    a.add_framework(fid("f2"), spec(&["r"])).unwrap();
    let shares = w.run(&mut a, &[("f1", "r"), ("f2", "r")], 60);
    assert!(
        (shares[0] - shares[1]).abs() <= 4.0 / 40.0 + 1e-9,
        "shares {shares:?}"
    );
}

#[test]
fn weights_two_to_one_converge_to_two_to_one() {
    let mut a = allocator();
    add_agents(&mut a, 30, 4.0, 8192.0);
    a.set_weight("heavy", 2.0).unwrap();
    a.add_framework(fid("light"), spec(&["light"])).unwrap();
    let mut w = Greedy::default();
    w.run(&mut a, &[("light", "light")], 3);
    a.add_framework(fid("heavy"), spec(&["heavy"])).unwrap();
    let shares = w.run(&mut a, &[("heavy", "heavy"), ("light", "light")], 80);
    // Weighted shares (share / weight) end within one agent's worth of each other.
    let one_agent = 4.0 / 120.0;
    assert!(
        (shares[0] / 2.0 - shares[1]).abs() <= one_agent + 1e-9,
        "shares {shares:?}"
    );
    assert!((a.role_share("heavy") - a.role_share("light")).abs() <= one_agent + 1e-9);
}

#[test]
fn decline_filters_the_agent_for_refuse_seconds() {
    let mut a = allocator();
    add_agents(&mut a, 1, 4.0, 8192.0);
    a.add_framework(fid("f"), spec(&["r"])).unwrap();
    let offer = a.allocate(secs(0)).remove(0);
    a.decline(offer.id, Some(10.0), secs(0)).unwrap();
    assert!(a.allocate(secs(5)).is_empty(), "filtered");
    assert!(a.allocate(secs(9)).is_empty(), "still filtered");
    let again = a.allocate(secs(10));
    assert_eq!(again.len(), 1, "the filter expired");
    // Default refuse_seconds is 5 s; zero installs no filter.
    a.decline(again[0].id, None, secs(10)).unwrap();
    assert!(a.allocate(secs(14)).is_empty());
    let again = a.allocate(secs(15));
    assert_eq!(again.len(), 1);
    a.decline(again[0].id, Some(0.0), secs(15)).unwrap();
    assert_eq!(a.allocate(secs(15)).len(), 1);
    a.check_invariants().unwrap();
}

#[test]
fn refuse_seconds_are_clamped_like_mesos() {
    let interval = secs(1);
    assert_eq!(events::refuse_timeout(None, interval), Some(secs(5)));
    assert_eq!(events::refuse_timeout(Some(-3.0), interval), Some(secs(5)));
    assert_eq!(
        events::refuse_timeout(Some(f64::NAN), interval),
        Some(secs(5))
    );
    assert_eq!(events::refuse_timeout(Some(0.0), interval), None);
    assert_eq!(events::refuse_timeout(Some(0.2), interval), Some(interval));
    assert_eq!(
        events::refuse_timeout(Some(1e12), interval),
        Some(secs(365 * 24 * 3600))
    );
}

#[test]
fn a_filter_lifts_when_more_resources_free_up() {
    let mut a = allocator();
    a.add_agent(aid("a"), cpus_mem(4.0, 8192.0), vec![])
        .unwrap();
    a.add_framework(fid("busy"), spec(&["r"])).unwrap();
    let offer = a.allocate(secs(0)).remove(0);
    let used = cpus_mem(2.0, 4096.0);
    let accept = Accept {
        used: used.clone(),
        refuse_seconds: Some(0.0),
        ..Accept::default()
    };
    a.accept(offer.id, accept, secs(0)).unwrap();
    a.add_framework(fid("picky"), spec(&["p"])).unwrap();
    let offer = a.allocate(secs(0)).remove(0);
    assert_eq!(offer.framework, fid("picky"));
    a.decline(offer.id, Some(100.0), secs(0)).unwrap();
    a.suppress(&fid("busy"), &[]).unwrap();
    assert!(a.allocate(secs(1)).is_empty());
    // The busy framework's task ends: the agent now holds more than picky refused.
    a.recover(&aid("a"), &fid("busy"), "r", &used).unwrap();
    let offers = a.allocate(secs(2));
    assert_eq!(offers.len(), 1);
    assert_eq!(offers[0].resources, cpus_mem(4.0, 8192.0));
}

#[test]
fn suppress_stops_offers_and_revive_resumes_them() {
    let mut a = allocator();
    add_agents(&mut a, 2, 4.0, 8192.0);
    a.add_framework(fid("f"), spec(&["r"])).unwrap();
    a.suppress(&fid("f"), &["r".to_owned()]).unwrap();
    assert!(a.allocate(secs(0)).is_empty());
    a.revive(&fid("f"), &[]).unwrap();
    let offers = a.allocate(secs(1));
    assert_eq!(offers.len(), 2);
    // Revive also clears filters.
    for o in &offers {
        a.decline(o.id, Some(1000.0), secs(1)).unwrap();
    }
    assert!(a.allocate(secs(2)).is_empty());
    a.revive(&fid("f"), &["r".to_owned()]).unwrap();
    assert_eq!(a.allocate(secs(3)).len(), 2);
    assert!(matches!(
        a.suppress(&fid("f"), &["other".to_owned()]),
        Err(AllocatorError::RoleNotSubscribed { .. })
    ));
}

#[test]
fn inactive_frameworks_and_agents_get_nothing() {
    let mut a = allocator();
    add_agents(&mut a, 2, 4.0, 8192.0);
    a.add_framework(
        fid("f"),
        FrameworkSpec {
            active: false,
            ..spec(&["r"])
        },
    )
    .unwrap();
    assert!(a.allocate(secs(0)).is_empty());
    a.activate_framework(&fid("f")).unwrap();
    a.deactivate_agent(&aid("a0")).unwrap();
    let offers = a.allocate(secs(0));
    assert_eq!(offers.len(), 1);
    assert_eq!(offers[0].agent, aid("a1"));
    assert_eq!(
        a.deactivate_framework(&fid("f")).unwrap(),
        vec![offers[0].id]
    );
    assert!(a.allocate(secs(0)).is_empty());
    a.check_invariants().unwrap();
}

#[test]
fn quota_guarantee_is_met_first_and_limit_never_exceeded() {
    let mut a = allocator();
    add_agents(&mut a, 4, 4.0, 8192.0);
    // "a-greedy" sorts first on ties, so without stage 1 it would take the first agent.
    a.add_framework(fid("a-greedy"), spec(&["other"])).unwrap();
    a.add_framework(fid("q"), spec(&["quota"])).unwrap();
    let quota = QuotaConfig::from_units(&[("cpus", 6.0)], &[("cpus", 7.0)]).unwrap();
    a.set_quota("quota", quota).unwrap();
    let offers = a.allocate(secs(0));
    let q = offered_cpus(&offers, "q");
    assert!((6.0..=7.0).contains(&q), "quota role offered {q} cpus");
    assert_eq!(q + offered_cpus(&offers, "a-greedy"), 16.0);
    assert!(a.role_consumed_quota("quota").get("cpus") <= Milli::from_units(7));
    a.check_invariants().unwrap();
}

#[test]
fn quota_limit_chops_offers_and_holds_back_the_rest() {
    let mut a = allocator();
    add_agents(&mut a, 4, 4.0, 8192.0);
    a.add_framework(fid("q"), spec(&["quota"])).unwrap();
    let quota = QuotaConfig::from_units(&[], &[("cpus", 5.5)]).unwrap();
    a.set_quota("quota", quota).unwrap();
    let offers = a.allocate(secs(0));
    assert_eq!(offered_cpus(&offers, "q"), 5.5);
    // Mem has no limit: all of it is offered; cpus were chopped to the limit.
    let mem: f64 = offers
        .iter()
        .map(|o| o.resources.quantities().get("mem").as_f64())
        .sum();
    assert_eq!(mem, 4.0 * 8192.0);
    assert!(a.allocate(secs(1)).is_empty());
}

#[test]
fn a_zero_limit_allows_nothing() {
    let mut a = allocator();
    add_agents(&mut a, 2, 4.0, 8192.0);
    a.add_framework(fid("q"), spec(&["quota"])).unwrap();
    a.set_quota(
        "quota",
        QuotaConfig::from_units(&[], &[("cpus", 0.0)]).unwrap(),
    )
    .unwrap();
    let offers = a.allocate(secs(0));
    assert_eq!(
        offered_cpus(&offers, "q"),
        0.0,
        "memory may still be offered: {offers:?}"
    );
}

#[test]
fn headroom_is_kept_for_an_unmet_guarantee() {
    let mut a = allocator();
    add_agents(&mut a, 4, 4.0, 8192.0);
    a.add_framework(fid("g"), spec(&["greedy"])).unwrap();
    a.add_framework(
        fid("q"),
        FrameworkSpec {
            active: false,
            ..spec(&["quota"])
        },
    )
    .unwrap();
    let guarantees = quantities(&[("cpus", 6.0)]);
    a.set_quota(
        "quota",
        QuotaConfig {
            guarantees,
            ..QuotaConfig::default()
        },
    )
    .unwrap();
    // The quota role cannot take offers now, but 6 cpus stay unoffered for it.
    let offers = a.allocate(secs(0));
    assert_eq!(offered_cpus(&offers, "g"), 10.0);
    a.activate_framework(&fid("q")).unwrap();
    let offers = a.allocate(secs(1));
    assert_eq!(offered_cpus(&offers, "q"), 6.0);
    a.check_invariants().unwrap();
}

#[test]
fn remove_agent_returns_its_offers_and_drops_its_resources() {
    let mut a = allocator();
    add_agents(&mut a, 2, 4.0, 8192.0);
    a.add_framework(fid("f"), spec(&["r"])).unwrap();
    let offers = a.allocate(secs(0));
    let (on_a0, on_a1): (Vec<&Offer>, Vec<&Offer>) =
        offers.iter().partition(|o| o.agent == aid("a0"));
    let used = cpus_mem(1.0, 1024.0);
    let accept = Accept {
        used: used.clone(),
        refuse_seconds: Some(0.0),
        ..Accept::default()
    };
    a.accept(on_a0[0].id, accept, secs(0)).unwrap();
    let again = a.allocate(secs(0));
    assert_eq!(again.len(), 1);
    let rescinded = a.remove_agent(&aid("a0")).unwrap();
    assert_eq!(rescinded, vec![again[0].id]);
    assert!(a.offer(again[0].id).is_none());
    assert!(
        a.offer(on_a1[0].id).is_some(),
        "offers on other agents survive"
    );
    assert_eq!(a.cluster_total().get("cpus"), Milli::from_units(4));
    assert_eq!(
        a.role_offered_or_allocated("r").get("cpus"),
        Milli::from_units(4)
    );
    assert!(matches!(
        a.recover(&aid("a0"), &fid("f"), "r", &used),
        Err(AllocatorError::UnknownAgent(_))
    ));
    assert_eq!(
        a.remove_agent(&aid("a0")),
        Err(AllocatorError::UnknownAgent(aid("a0")))
    );
    a.check_invariants().unwrap();
}

fn block(id: &str, mb: u64) -> ResourceItem {
    ResourceItem::scalar_milli("disk", Milli::from_units(mb)).with_disk(DiskIdentity::block(id))
}

fn pool(mb: u64) -> ResourceItem {
    ResourceItem::scalar_milli("disk", Milli::from_units(mb))
        .with_disk(DiskIdentity::raw_pool("fast"))
        .with_provider("rp1")
}

#[test]
fn block_disks_are_offered_whole_and_never_merged() {
    let mut a = allocator();
    let mut total = cpus_mem(4.0, 8192.0);
    for item in [block("b1", 100), block("b2", 100), pool(1000)] {
        total.add_item(item).unwrap();
    }
    a.add_agent(aid("a"), total.clone(), vec![]).unwrap();
    a.add_framework(fid("f"), spec(&["r"])).unwrap();
    let offer = a.allocate(secs(0)).remove(0);
    assert_eq!(offer.resources, total);
    // Half of a BLOCK disk cannot be accepted.
    let half = ResourceSet::from_items([block("b1", 50)]).unwrap();
    let bad = Accept {
        used: half,
        ..Accept::default()
    };
    assert_eq!(
        a.accept(offer.id, bad, secs(0)),
        Err(AllocatorError::AcceptExceedsOffer { offer: offer.id })
    );
    // One whole disk and part of the pool can.
    let used = ResourceSet::from_items([block("b1", 100), pool(300)]).unwrap();
    let accept = Accept {
        used: used.clone(),
        refuse_seconds: Some(0.0),
        ..Accept::default()
    };
    let done = a.accept(offer.id, accept, secs(0)).unwrap();
    assert!(done.returned.items().contains(&block("b2", 100)));
    assert!(done.returned.items().contains(&pool(700)));
    assert_eq!(a.allocation(&aid("a"), &fid("f"), "r"), Some(&used));
    a.check_invariants().unwrap();
}

#[test]
fn a_disk_limit_drops_whole_block_disks_but_chops_pools() {
    let mut a = allocator();
    let mut total = cpus_mem(4.0, 8192.0);
    for item in [block("b1", 100), block("b2", 100), pool(1000)] {
        total.add_item(item).unwrap();
    }
    a.add_agent(aid("a"), total, vec![]).unwrap();
    a.add_framework(fid("f"), spec(&["r"])).unwrap();
    let quota = QuotaConfig::from_units(&[], &[("disk", 150.0)]).unwrap();
    a.set_quota("r", quota).unwrap();
    let offer = a.allocate(secs(0)).remove(0);
    let disks: Vec<&ResourceItem> = offer
        .resources
        .items()
        .iter()
        .filter(|x| &*x.name == "disk")
        .collect();
    assert_eq!(
        offer.resources.quantities().get("disk"),
        Milli::from_units(150)
    );
    assert!(
        disks.contains(&&block("b1", 100)),
        "one whole BLOCK disk: {disks:?}"
    );
    assert!(
        disks.contains(&&pool(50)),
        "the pool is chopped to fit: {disks:?}"
    );
    a.check_invariants().unwrap();
}

#[test]
fn offers_expire_after_the_offer_timeout() {
    let config = AllocatorConfig {
        offer_timeout: Some(secs(30)),
        ..AllocatorConfig::default()
    };
    let mut a = Allocator::new(config);
    add_agents(&mut a, 1, 4.0, 8192.0);
    a.add_framework(fid("f"), spec(&["r"])).unwrap();
    let offer = a.allocate(secs(0)).remove(0);
    assert!(a.expire_offers(secs(29)).is_empty());
    assert_eq!(a.expire_offers(secs(30)), vec![offer.id]);
    assert!(a.offer(offer.id).is_none());
    assert_eq!(a.agent_available(&aid("a0")), Some(&cpus_mem(4.0, 8192.0)));
    assert_eq!(a.allocate(secs(30)).len(), 1, "no filter after a timeout");
    assert!(Allocator::new(AllocatorConfig::default())
        .expire_offers(secs(1000))
        .is_empty());
}

#[test]
fn tiny_leftovers_are_not_offered() {
    let mut a = allocator();
    a.add_agent(aid("a"), cpus_mem(0.005, 16.0), vec![])
        .unwrap();
    a.add_agent(aid("b"), cpus_mem(0.01, 0.0), vec![]).unwrap();
    a.add_framework(fid("f"), spec(&["r"])).unwrap();
    let offers = a.allocate(secs(0));
    assert_eq!(offers.len(), 1);
    assert_eq!(offers[0].agent, aid("b"));
}

#[test]
fn reservations_go_only_to_their_role() {
    let mut a = allocator();
    let reserved = ResourceItem::scalar("cpus", 2.0)
        .unwrap()
        .reserved("db", ReservationKind::Static);
    let mut total = cpus_mem(2.0, 4096.0);
    total.add_item(reserved.clone()).unwrap();
    a.add_agent(aid("a"), total, vec![]).unwrap();
    a.add_framework(fid("web"), spec(&["web"])).unwrap();
    let offers = a.allocate(secs(0));
    assert_eq!(offers.len(), 1);
    assert!(!offers[0].resources.items().contains(&reserved));
    a.add_framework(fid("db"), spec(&["db"])).unwrap();
    let offers = a.allocate(secs(0));
    assert_eq!(offers.len(), 1);
    assert_eq!(offers[0].resources.items(), &[reserved]);
    assert_eq!(
        a.role_consumed_quota("db").get("cpus"),
        Milli::from_units(2)
    );
}

#[test]
fn accept_applies_reserve_conversions() {
    let mut a = allocator();
    a.add_agent(aid("a"), cpus_mem(4.0, 8192.0), vec![])
        .unwrap();
    a.add_framework(fid("f"), spec(&["r"])).unwrap();
    let offer = a.allocate(secs(0)).remove(0);
    let consumed = ResourceSet::from_items([ResourceItem::scalar("cpus", 1.0).unwrap()]).unwrap();
    let converted = ResourceSet::from_items([ResourceItem::scalar("cpus", 1.0)
        .unwrap()
        .reserved("r", ReservationKind::Dynamic)])
    .unwrap();
    let wrong = ResourceSet::from_items([ResourceItem::scalar("cpus", 1.0)
        .unwrap()
        .reserved("x", ReservationKind::Dynamic)])
    .unwrap();
    let bad = Accept {
        conversions: vec![Conversion {
            consumed: consumed.clone(),
            converted: wrong,
        }],
        ..Accept::default()
    };
    assert!(matches!(
        a.accept(offer.id, bad, secs(0)),
        Err(AllocatorError::ConversionWrongRole { .. })
    ));
    let accept = Accept {
        conversions: vec![Conversion {
            consumed,
            converted: converted.clone(),
        }],
        used: converted.clone(),
        refuse_seconds: Some(0.0),
    };
    a.accept(offer.id, accept, secs(0)).unwrap();
    assert!(a.agent_total(&aid("a")).unwrap().contains(&converted));
    assert_eq!(a.role_consumed_quota("r").get("cpus"), Milli::from_units(1));
    a.check_invariants().unwrap();
}

#[test]
fn update_agent_keeps_or_rescinds_offers() {
    let mut a = allocator();
    a.add_agent(aid("a"), cpus_mem(4.0, 8192.0), vec![])
        .unwrap();
    a.add_framework(fid("f"), spec(&["r"])).unwrap();
    let offer = a.allocate(secs(0)).remove(0);
    assert!(a
        .update_agent(&aid("a"), cpus_mem(8.0, 8192.0))
        .unwrap()
        .is_empty());
    assert_eq!(a.agent_available(&aid("a")), Some(&cpus_mem(4.0, 0.0)));
    assert_eq!(
        a.update_agent(&aid("a"), cpus_mem(2.0, 8192.0)).unwrap(),
        vec![offer.id]
    );
    a.check_invariants().unwrap();
}

#[test]
fn used_resources_from_a_reregistering_agent_are_tracked() {
    let mut a = allocator();
    let used = Allocation {
        framework: fid("old"),
        role: "r".into(),
        resources: cpus_mem(1.0, 512.0),
    };
    a.add_agent(aid("a"), cpus_mem(4.0, 8192.0), vec![used])
        .unwrap();
    assert_eq!(
        a.role_offered_or_allocated("r").get("cpus"),
        Milli::from_units(1)
    );
    a.add_framework(fid("old"), spec(&["r"])).unwrap();
    assert!(a.framework_share(&fid("old"), "r") > 0.0);
    let too_much = Allocation {
        framework: fid("x"),
        role: "r".into(),
        resources: cpus_mem(9.0, 1.0),
    };
    assert_eq!(
        a.add_agent(aid("b"), cpus_mem(4.0, 8192.0), vec![too_much]),
        Err(AllocatorError::TotalBelowUsed(aid("b")))
    );
    a.remove_framework(&fid("old")).unwrap();
    assert_eq!(a.agent_available(&aid("a")), Some(&cpus_mem(4.0, 8192.0)));
    a.check_invariants().unwrap();
}

#[test]
fn bad_events_are_errors_and_change_nothing() {
    let mut a = allocator();
    add_agents(&mut a, 1, 4.0, 8192.0);
    a.add_framework(fid("f"), spec(&["r"])).unwrap();
    let offer = a.allocate(secs(0)).remove(0);
    let before = format!("{:?}", a.offers().collect::<Vec<_>>());
    let ghost = OfferId(999);
    assert_eq!(
        a.decline(ghost, None, secs(0)),
        Err(AllocatorError::UnknownOffer(ghost))
    );
    assert_eq!(
        a.accept(ghost, Accept::default(), secs(0)),
        Err(AllocatorError::UnknownOffer(ghost))
    );
    let greedy = Accept {
        used: cpus_mem(5.0, 1.0),
        ..Accept::default()
    };
    assert_eq!(
        a.accept(offer.id, greedy, secs(0)),
        Err(AllocatorError::AcceptExceedsOffer { offer: offer.id })
    );
    let recover = a.recover(&aid("a0"), &fid("f"), "r", &cpus_mem(1.0, 1.0));
    assert!(matches!(
        recover,
        Err(AllocatorError::RecoverExceedsAllocation { .. })
    ));
    assert!(matches!(
        a.set_weight("r", 0.0),
        Err(AllocatorError::InvalidWeight { .. })
    ));
    assert!(matches!(
        a.set_weight("r", f64::INFINITY),
        Err(AllocatorError::InvalidWeight { .. })
    ));
    assert!(matches!(
        a.set_weight("", 1.0),
        Err(AllocatorError::InvalidRole { .. })
    ));
    let inverted = QuotaConfig::from_units(&[("cpus", 2.0)], &[("cpus", 1.0)]).unwrap();
    assert!(matches!(
        a.set_quota("r", inverted),
        Err(AllocatorError::GuaranteeAboveLimit { .. })
    ));
    assert_eq!(
        a.add_agent(aid("a0"), cpus_mem(1.0, 1.0), vec![]),
        Err(AllocatorError::AgentExists(aid("a0")))
    );
    assert_eq!(
        a.add_framework(fid("f"), spec(&["r"])),
        Err(AllocatorError::FrameworkExists(fid("f")))
    );
    let bad_suppressed = FrameworkSpec {
        suppressed_roles: ["x".to_owned()].into(),
        ..spec(&["r"])
    };
    assert!(matches!(
        a.add_framework(fid("g"), bad_suppressed),
        Err(AllocatorError::RoleNotSubscribed { .. })
    ));
    assert_eq!(before, format!("{:?}", a.offers().collect::<Vec<_>>()));
    assert_eq!(a.counts().frameworks, 1);
    a.check_invariants().unwrap();
    // Errors carry readable messages.
    assert_eq!(
        AllocatorError::UnknownOffer(ghost).to_string(),
        "offer O999 is not outstanding"
    );
}

#[test]
fn same_seed_same_offers() {
    let run = |seed| {
        let mut a = Allocator::new(AllocatorConfig {
            seed,
            ..AllocatorConfig::default()
        });
        add_agents(&mut a, 50, 4.0, 8192.0);
        a.add_framework(fid("f1"), spec(&["r"])).unwrap();
        a.add_framework(fid("f2"), spec(&["r"])).unwrap();
        a.allocate(secs(0))
            .into_iter()
            .map(|o| (o.agent, o.framework))
            .collect::<Vec<_>>()
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
}

#[test]
fn allocate_agents_touches_only_those_agents() {
    let mut a = allocator();
    add_agents(&mut a, 3, 4.0, 8192.0);
    a.add_framework(fid("f"), spec(&["r"])).unwrap();
    let offers = a.allocate_agents(&[aid("a1"), aid("nope"), aid("a1")], secs(0));
    assert_eq!(offers.len(), 1);
    assert_eq!(offers[0].agent, aid("a1"));
}

#[test]
fn update_framework_rescinds_offers_of_roles_it_left() {
    let mut a = allocator();
    add_agents(&mut a, 2, 4.0, 8192.0);
    a.add_framework(fid("f"), spec(&["r1"])).unwrap();
    let offers = a.allocate(secs(0));
    let mut gone = a.update_framework(&fid("f"), spec(&["r2"])).unwrap();
    gone.sort_unstable();
    assert_eq!(gone, offers.iter().map(|o| o.id).collect::<Vec<_>>());
    let offers = a.allocate(secs(0));
    assert!(offers.iter().all(|o| o.role == "r2") && offers.len() == 2);
    a.check_invariants().unwrap();
}

#[test]
fn offer_ids_start_at_the_floor_after_a_restart() {
    let mut a = allocator();
    a.start_offer_ids_at(3 << 32);
    add_agents(&mut a, 2, 4.0, 8192.0);
    a.add_framework(fid("f"), spec(&["r"])).unwrap();
    let offers = a.allocate(secs(0));
    assert_eq!(offers.len(), 2);
    assert!(
        offers.iter().all(|o| o.id.0 >= 3 << 32),
        "an offer id from the old range"
    );
    // A lower floor never moves the counter back.
    a.start_offer_ids_at(1);
    let first_id = offers.iter().map(|o| o.id.0).max().unwrap();
    a.remove_framework(&fid("f")).unwrap();
    a.add_framework(fid("g"), spec(&["r"])).unwrap();
    assert!(a.allocate(secs(10)).iter().all(|o| o.id.0 > first_id));
}
