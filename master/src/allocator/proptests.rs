//! Property tests: random event sequences run through the allocator and through a plain reference
//! model that does its own bookkeeping (outstanding offers, accepted allocations, filters) with an
//! independent representation of resources (a flat multiset: one entry per port, per atom, and a
//! milli-unit sum per scalar identity). After every step the two must agree and:
//! - every agent's total equals available + offered + allocated (nothing offered twice or lost);
//! - no new offer is covered by a live filter, or goes to a suppressed, inactive or unsubscribed
//!   framework, or comes from an inactive agent, or is below the minimum allocatable resources;
//! - no allocation cycle raises a role's consumed quota above its limit;
//! - ids returned by `remove_agent`, `deactivate_*`, `remove_framework` and `expire_offers` are
//!   exactly the model's offers that those events must take back.
//!
//! A second property checks DRF convergence for a greedy two-framework workload.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proptest::prelude::*;

use super::tests::{aid, cpus_mem, fid, secs, spec};
use super::*;

/// One key of the flat multiset.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    /// A divisible scalar: (name, reservation role, provider, disk); value summed in milli.
    Scalar(String, Option<String>, Option<String>, Option<DiskIdentity>),
    /// One port value of a ranges resource.
    Port(String, Option<String>, u64),
    /// An indivisible item, counted by multiplicity.
    Atom(String, Option<String>, Option<DiskIdentity>, u64),
}

type Bag = BTreeMap<Key, u64>;

fn bag(set: &ResourceSet) -> Bag {
    let mut out = Bag::new();
    for item in set.items() {
        let role = item.reservation.as_ref().map(|r| r.role.clone());
        match &item.value {
            ResourceValue::Ranges(r) => {
                for &(b, e) in r.ranges() {
                    for port in b..=e {
                        *out.entry(Key::Port(item.name.to_string(), role.clone(), port))
                            .or_default() += 1;
                    }
                }
            }
            ResourceValue::Scalar(m) if item.is_divisible() => {
                let provider = item.provider.as_deref().map(str::to_owned);
                let key = Key::Scalar(
                    item.name.to_string(),
                    role,
                    provider,
                    item.disk.as_deref().cloned(),
                );
                *out.entry(key).or_default() += m.0;
            }
            ResourceValue::Scalar(m) => {
                let key = Key::Atom(
                    item.name.to_string(),
                    role,
                    item.disk.as_deref().cloned(),
                    m.0,
                );
                *out.entry(key).or_default() += 1;
            }
        }
    }
    out
}

fn bag_add(into: &mut Bag, other: &Bag) {
    for (k, v) in other {
        *into.entry(k.clone()).or_default() += v;
    }
}

fn bag_contains(big: &Bag, small: &Bag) -> bool {
    small
        .iter()
        .all(|(k, v)| big.get(k).copied().unwrap_or(0) >= *v)
}

/// Scalar quantity of `name`, optionally only unreserved or only reserved for `role`.
fn bag_scalar(b: &Bag, name: &str, pick: impl Fn(&Option<String>) -> bool) -> u64 {
    b.iter()
        .map(|(k, v)| match k {
            Key::Scalar(n, r, _, _) if n == name && pick(r) => *v,
            Key::Atom(n, r, _, m) if n == name && pick(r) => v * m,
            _ => 0,
        })
        .sum()
}

#[derive(Clone, Debug)]
enum Op {
    AddAgent {
        cpus: u8,
        mem_gb: u8,
        ports: u8,
        blocks: u8,
        pool_gb: u8,
        reserve: u8,
    },
    RemoveAgent(usize),
    DeactivateAgent(usize),
    ActivateAgent(usize),
    AddFramework(u8),
    RemoveFramework(usize),
    DeactivateFramework(usize),
    ActivateFramework(usize),
    Allocate,
    Accept {
        offer: usize,
        part: u8,
        refuse: u8,
    },
    Decline {
        offer: usize,
        refuse: u8,
    },
    Recover(usize),
    Suppress(usize),
    Revive(usize),
    Advance(u8),
    Expire,
}

fn op() -> impl Strategy<Value = Op> {
    let i = || 0usize..64;
    prop_oneof![
        3 => (1u8..=8, 1u8..=16, 0u8..=6, 0u8..=2, 0u8..=3, 0u8..=4).prop_map(
            |(cpus, mem_gb, ports, blocks, pool_gb, reserve)| Op::AddAgent {
                cpus, mem_gb, ports, blocks, pool_gb, reserve
            }
        ),
        1 => i().prop_map(Op::RemoveAgent),
        1 => i().prop_map(Op::DeactivateAgent),
        1 => i().prop_map(Op::ActivateAgent),
        2 => (1u8..8).prop_map(Op::AddFramework),
        1 => i().prop_map(Op::RemoveFramework),
        1 => i().prop_map(Op::DeactivateFramework),
        1 => i().prop_map(Op::ActivateFramework),
        5 => Just(Op::Allocate),
        5 => (i(), 0u8..=4, 0u8..=3)
            .prop_map(|(offer, part, refuse)| Op::Accept { offer, part, refuse }),
        3 => (i(), 0u8..=12).prop_map(|(offer, refuse)| Op::Decline { offer, refuse }),
        3 => i().prop_map(Op::Recover),
        1 => i().prop_map(Op::Suppress),
        1 => i().prop_map(Op::Revive),
        3 => (1u8..=8).prop_map(Op::Advance),
        1 => Just(Op::Expire),
    ]
}

const ROLES: [&str; 3] = ["r0", "r1", "r2"];
const OFFER_TIMEOUT_S: u64 = 30;

struct ModelFw {
    roles: BTreeSet<String>,
    suppressed: BTreeSet<String>,
    active: bool,
}

struct ModelOffer {
    fw: FrameworkId,
    role: String,
    agent: AgentId,
    resources: ResourceSet,
    created: Duration,
}

struct Filter {
    fw: FrameworkId,
    role: String,
    agent: AgentId,
    refused: Bag,
    expires: Duration,
}

/// The reference model and the allocator under test.
struct Harness {
    a: Allocator,
    agents: BTreeMap<AgentId, (ResourceSet, bool)>,
    fws: BTreeMap<FrameworkId, ModelFw>,
    offers: BTreeMap<OfferId, ModelOffer>,
    /// Accepted task resources per (agent, framework, role).
    allocs: Vec<(AgentId, FrameworkId, String, ResourceSet)>,
    filters: Vec<Filter>,
    /// Cpu limits (milli) per role.
    limits: BTreeMap<String, u64>,
    now: Duration,
    next_agent: usize,
    next_fw: usize,
}

fn nth<K: Clone, V>(map: &BTreeMap<K, V>, i: usize) -> Option<K> {
    (!map.is_empty())
        .then(|| map.keys().nth(i % map.len()).cloned())
        .flatten()
}

fn sorted(mut ids: Vec<OfferId>) -> Vec<OfferId> {
    ids.sort_unstable();
    ids
}

impl Harness {
    fn new(seed: u64, quota: (u8, u8)) -> Harness {
        let config = AllocatorConfig {
            seed,
            offer_timeout: Some(secs(OFFER_TIMEOUT_S)),
            ..AllocatorConfig::default()
        };
        let mut a = Allocator::new(config);
        a.set_weight("r0", 2.0).unwrap();
        let (guarantee, extra) = quota;
        let limit = f64::from(guarantee) + f64::from(extra);
        let quota = QuotaConfig::from_units(&[("cpus", f64::from(guarantee))], &[("cpus", limit)]);
        a.set_quota("r1", quota.unwrap()).unwrap();
        Harness {
            a,
            agents: BTreeMap::new(),
            fws: BTreeMap::new(),
            offers: BTreeMap::new(),
            allocs: Vec::new(),
            filters: Vec::new(),
            limits: [(
                "r1".to_owned(),
                Milli::from_units(u64::from(guarantee) + u64::from(extra)).0,
            )]
            .into(),
            now: Duration::ZERO,
            next_agent: 0,
            next_fw: 0,
        }
    }

    fn agent_resources(&self, id: usize, op: (u8, u8, u8, u8, u8, u8)) -> ResourceSet {
        let (cpus, mem_gb, ports, blocks, pool_gb, reserve) = op;
        let mut set = cpus_mem(f64::from(cpus), f64::from(mem_gb) * 1024.0);
        if ports > 0 {
            let first = 31000;
            let item = ResourceItem::ranges("ports", vec![(first, first + u64::from(ports) * 3)]);
            set.add_item(item.unwrap()).unwrap();
        }
        for b in 0..blocks {
            let disk = DiskIdentity::block(&format!("blk-{id}-{b}"));
            set.add_item(
                ResourceItem::scalar_milli("disk", Milli::from_units(512)).with_disk(disk),
            )
            .unwrap();
        }
        if pool_gb > 0 {
            let pool =
                ResourceItem::scalar_milli("disk", Milli::from_units(u64::from(pool_gb) * 1024))
                    .with_disk(DiskIdentity::raw_pool("fast"))
                    .with_provider("rp1");
            set.add_item(pool).unwrap();
        }
        // Some agents reserve a cpu for r0 (statically) or r2 (dynamically).
        let reserved = match reserve {
            1 => Some(
                ResourceItem::scalar("cpus", 1.0)
                    .unwrap()
                    .reserved("r0", ReservationKind::Static),
            ),
            2 => Some(
                ResourceItem::scalar("cpus", 0.5)
                    .unwrap()
                    .reserved("r2", ReservationKind::Dynamic),
            ),
            _ => None,
        };
        if let Some(item) = reserved {
            set.add_item(item).unwrap();
        }
        set
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::AddAgent {
                cpus,
                mem_gb,
                ports,
                blocks,
                pool_gb,
                reserve,
            } => {
                let n = self.next_agent;
                self.next_agent += 1;
                let set =
                    self.agent_resources(n, (*cpus, *mem_gb, *ports, *blocks, *pool_gb, *reserve));
                self.a
                    .add_agent(aid(&format!("a{n}")), set.clone(), vec![])
                    .unwrap();
                self.agents.insert(aid(&format!("a{n}")), (set, true));
            }
            Op::RemoveAgent(i) => {
                let Some(id) = nth(&self.agents, *i) else {
                    return Ok(());
                };
                let got = self.a.remove_agent(&id).unwrap();
                prop_assert_eq!(sorted(got), self.take_offers(|o| o.agent == id));
                self.agents.remove(&id);
                self.allocs.retain(|x| x.0 != id);
                self.filters.retain(|f| f.agent != id);
            }
            Op::DeactivateAgent(i) => {
                let Some(id) = nth(&self.agents, *i) else {
                    return Ok(());
                };
                let got = self.a.deactivate_agent(&id).unwrap();
                prop_assert_eq!(sorted(got), self.take_offers(|o| o.agent == id));
                self.agents.get_mut(&id).unwrap().1 = false;
            }
            Op::ActivateAgent(i) => {
                let Some(id) = nth(&self.agents, *i) else {
                    return Ok(());
                };
                self.a.activate_agent(&id).unwrap();
                self.agents.get_mut(&id).unwrap().1 = true;
            }
            Op::AddFramework(mask) => {
                let roles: Vec<&str> = (0..3)
                    .filter(|b| mask & (1 << b) != 0)
                    .map(|b| ROLES[b])
                    .collect();
                let id = fid(&format!("f{}", self.next_fw));
                self.next_fw += 1;
                self.a.add_framework(id.clone(), spec(&roles)).unwrap();
                let roles = roles.iter().map(|r| r.to_string()).collect();
                self.fws.insert(
                    id,
                    ModelFw {
                        roles,
                        suppressed: BTreeSet::new(),
                        active: true,
                    },
                );
            }
            Op::RemoveFramework(i) => {
                let Some(id) = nth(&self.fws, *i) else {
                    return Ok(());
                };
                let got = self.a.remove_framework(&id).unwrap();
                prop_assert_eq!(sorted(got), self.take_offers(|o| o.fw == id));
                self.fws.remove(&id);
                self.allocs.retain(|x| x.1 != id);
                self.filters.retain(|f| f.fw != id);
            }
            Op::DeactivateFramework(i) => {
                let Some(id) = nth(&self.fws, *i) else {
                    return Ok(());
                };
                let got = self.a.deactivate_framework(&id).unwrap();
                prop_assert_eq!(sorted(got), self.take_offers(|o| o.fw == id));
                self.fws.get_mut(&id).unwrap().active = false;
                self.filters.retain(|f| f.fw != id);
            }
            Op::ActivateFramework(i) => {
                let Some(id) = nth(&self.fws, *i) else {
                    return Ok(());
                };
                self.a.activate_framework(&id).unwrap();
                self.fws.get_mut(&id).unwrap().active = true;
            }
            Op::Allocate => self.allocate()?,
            Op::Accept {
                offer,
                part,
                refuse,
            } => self.accept(*offer, *part, *refuse)?,
            Op::Decline { offer, refuse } => {
                let Some(id) = nth(&self.offers, *offer) else {
                    return Ok(());
                };
                // 12 stands for "no Filters": the 5 s default.
                let refuse = (*refuse != 12).then_some(f64::from(*refuse));
                self.a.decline(id, refuse, self.now).unwrap();
                let o = self.offers.remove(&id).unwrap();
                self.add_filter(&o, bag(&o.resources), refuse.unwrap_or(5.0));
            }
            Op::Recover(i) => {
                if self.allocs.is_empty() {
                    return Ok(());
                }
                let (agent, fw, role, res) = self.allocs.remove(i % self.allocs.len());
                self.a.recover(&agent, &fw, &role, &res).unwrap();
            }
            Op::Suppress(i) => {
                let Some(id) = nth(&self.fws, *i) else {
                    return Ok(());
                };
                self.a.suppress(&id, &[]).unwrap();
                let fw = self.fws.get_mut(&id).unwrap();
                fw.suppressed = fw.roles.clone();
            }
            Op::Revive(i) => {
                let Some(id) = nth(&self.fws, *i) else {
                    return Ok(());
                };
                self.a.revive(&id, &[]).unwrap();
                self.fws.get_mut(&id).unwrap().suppressed.clear();
                self.filters.retain(|f| f.fw != id);
            }
            Op::Advance(s) => self.now += secs(u64::from(*s)),
            Op::Expire => {
                let now = self.now;
                let got = self.a.expire_offers(now);
                let want = self.take_offers(|o| o.created + secs(OFFER_TIMEOUT_S) <= now);
                prop_assert_eq!(sorted(got), want);
            }
        }
        self.check()
    }

    /// Removes and returns (sorted) the model's offers matching `pred`.
    fn take_offers(&mut self, pred: impl Fn(&ModelOffer) -> bool) -> Vec<OfferId> {
        let ids: Vec<OfferId> = self
            .offers
            .iter()
            .filter(|(_, o)| pred(o))
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            self.offers.remove(id);
        }
        ids
    }

    fn add_filter(&mut self, o: &ModelOffer, refused: Bag, refuse: f64) {
        if refuse > 0.0 && !refused.is_empty() {
            let expires = self.now + Duration::from_secs_f64(refuse.max(1.0));
            let (fw, role, agent) = (o.fw.clone(), o.role.clone(), o.agent.clone());
            self.filters.push(Filter {
                fw,
                role,
                agent,
                refused,
                expires,
            });
        }
    }

    fn accept(&mut self, offer: usize, part: u8, refuse: u8) -> Result<(), TestCaseError> {
        let Some(id) = nth(&self.offers, offer) else {
            return Ok(());
        };
        let o = self.offers.remove(&id).unwrap();
        // Take `part` quarters of each divisible scalar, atoms when part >= 2, some ports.
        let mut used = ResourceSet::new();
        for item in o.resources.items() {
            let mut x = item.clone();
            match &item.value {
                ResourceValue::Scalar(m) if item.is_divisible() => {
                    x.value = ResourceValue::Scalar(Milli(m.0 * u64::from(part) / 4));
                }
                ResourceValue::Scalar(_) if part < 2 => continue,
                ResourceValue::Scalar(_) => {}
                ResourceValue::Ranges(r) if part > 0 => {
                    let (b, e) = r.ranges()[0];
                    x.value =
                        ResourceValue::Ranges(RangeSet::new(vec![(b, b + (e - b) / 2)]).unwrap());
                }
                ResourceValue::Ranges(_) => continue,
            }
            used.add_item(x).unwrap();
        }
        let accept = Accept {
            used: used.clone(),
            refuse_seconds: Some(f64::from(refuse)),
            ..Accept::default()
        };
        let done = self.a.accept(id, accept, self.now).unwrap();
        let mut back = bag(&done.returned);
        bag_add(&mut back, &bag(&used));
        prop_assert_eq!(back, bag(&o.resources), "accepted + returned == offered");
        if !used.is_empty() {
            self.allocs
                .push((o.agent.clone(), o.fw.clone(), o.role.clone(), used));
        }
        self.add_filter(&o, bag(&done.returned), f64::from(refuse));
        Ok(())
    }

    fn allocate(&mut self) -> Result<(), TestCaseError> {
        let before: BTreeMap<String, u64> = self
            .limits
            .keys()
            .map(|r| (r.clone(), self.consumed_cpus(r)))
            .collect();
        let offers = self.a.allocate(self.now);
        let now = self.now;
        for o in offers {
            let fw = &self.fws[&o.framework];
            prop_assert!(
                fw.active && fw.roles.contains(&o.role) && !fw.suppressed.contains(&o.role)
            );
            prop_assert!(self.agents[&o.agent].1, "offer from an inactive agent");
            prop_assert!(o
                .resources
                .items()
                .iter()
                .all(|x| x.is_allocatable_to(&o.role)));
            let q = o.resources.quantities();
            prop_assert!(q.get("cpus") >= Milli(10) || q.get("mem") >= Milli::from_units(32));
            let b = bag(&o.resources);
            let covered = self.filters.iter().any(|f| {
                f.fw == o.framework
                    && f.role == o.role
                    && f.agent == o.agent
                    && now < f.expires
                    && bag_contains(&f.refused, &b)
            });
            prop_assert!(!covered, "offer {} is covered by a live filter", o.id);
            prop_assert!(!self.offers.contains_key(&o.id));
            let (fw, role, agent, resources) = (o.framework, o.role, o.agent, o.resources);
            self.offers.insert(
                o.id,
                ModelOffer {
                    fw,
                    role,
                    agent,
                    resources,
                    created: now,
                },
            );
        }
        for (role, &cap) in &self.limits {
            let (old, new) = (before[role], self.consumed_cpus(role));
            prop_assert!(
                new <= cap || new <= old,
                "role {} consumed {} > limit {}",
                role,
                new,
                cap
            );
        }
        Ok(())
    }

    /// Consumed quota (cpus, milli) of a role from the model: reservations + unreserved usage.
    fn consumed_cpus(&self, role: &str) -> u64 {
        let mine = |r: &Option<String>| r.as_deref() == Some(role);
        let reserved: u64 = self
            .agents
            .values()
            .map(|(t, _)| bag_scalar(&bag(t), "cpus", mine))
            .sum();
        let mut used = Bag::new();
        for o in self.offers.values().filter(|o| o.role == role) {
            bag_add(&mut used, &bag(&o.resources));
        }
        for (_, _, _, set) in self.allocs.iter().filter(|x| x.2 == role) {
            bag_add(&mut used, &bag(set));
        }
        reserved + bag_scalar(&used, "cpus", Option::is_none)
    }

    /// Model and allocator agree; every agent conserves its resources.
    fn check(&self) -> Result<(), TestCaseError> {
        prop_assert_eq!(self.a.check_invariants(), Ok(()));
        let model: Vec<OfferId> = self.offers.keys().copied().collect();
        let real: Vec<OfferId> = self.a.offers().map(|o| o.id).collect();
        prop_assert_eq!(model, real);
        for (id, (total, active)) in &self.agents {
            prop_assert_eq!(self.a.agent_active(id), Some(*active));
            let mut sum = bag(self.a.agent_available(id).unwrap());
            for (oid, o) in self.offers.iter().filter(|(_, o)| &o.agent == id) {
                prop_assert_eq!(&self.a.offer(*oid).unwrap().resources, &o.resources);
                bag_add(&mut sum, &bag(&o.resources));
            }
            for (_, _, _, set) in self.allocs.iter().filter(|x| &x.0 == id) {
                bag_add(&mut sum, &bag(set));
            }
            prop_assert_eq!(
                &sum,
                &bag(total),
                "agent {} does not conserve its resources",
                id
            );
        }
        Ok(())
    }
}

proptest! {
    // No failure persistence: the regressions file would land outside this module's directory.
    #![proptest_config(ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_events_keep_every_invariant(
        seed in any::<u64>(),
        quota in (0u8..=6, 0u8..=6),
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        let mut h = Harness::new(seed, quota);
        for op in &ops {
            h.step(op)?;
        }
    }

    #[test]
    fn greedy_drf_shares_stay_within_one_agent(
        seed in any::<u64>(),
        sizes in proptest::collection::vec((1u8..=16, 1u8..=32), 2..40),
        weights in (1u8..=3, 1u8..=3),
        releases in proptest::collection::vec(proptest::collection::vec(any::<bool>(), 40), 1..6),
    ) {
        let mut a = Allocator::new(AllocatorConfig { seed, ..AllocatorConfig::default() });
        for (i, (cpus, mem_gb)) in sizes.iter().enumerate() {
            let set = cpus_mem(f64::from(*cpus), f64::from(*mem_gb) * 1024.0);
            a.add_agent(aid(&format!("a{i}")), set, vec![]).unwrap();
        }
        let (w1, w2) = (f64::from(weights.0), f64::from(weights.1));
        a.set_weight("r1", w1).unwrap();
        a.set_weight("r2", w2).unwrap();
        a.add_framework(fid("f1"), spec(&["r1"])).unwrap();
        a.add_framework(fid("f2"), spec(&["r2"])).unwrap();
        // One agent's worth: the largest dominant share a single agent adds, over the lower weight.
        let total = a.cluster_total().clone();
        let agent_share = |set: &ResourceSet| state::dominant_share(&set.quantities(), &total);
        let one_agent = a
            .agent_ids()
            .map(|id| agent_share(a.agent_total(id).unwrap()))
            .fold(0.0, f64::max);
        let bound = one_agent / w1.min(w2) + 1e-9;
        let mut held: Vec<Offer> = Vec::new();
        for (round, release) in releases.iter().enumerate() {
            // Greedy: accept every offer whole, never refuse.
            for offer in a.allocate(secs(round as u64)) {
                let used = offer.resources.clone();
                let accept = Accept { used, refuse_seconds: Some(0.0), ..Accept::default() };
                a.accept(offer.id, accept, secs(round as u64)).unwrap();
                held.push(offer);
            }
            let gap = (a.role_share("r1") - a.role_share("r2")).abs();
            prop_assert!(gap <= bound, "round {}: weighted shares differ by {} > {}", round, gap,
                bound);
            prop_assert!(a.agent_ids().all(|id| a.agent_available(id).unwrap().is_empty()));
            // Release every task on a random subset of agents.
            let mut kept = Vec::new();
            for (i, o) in held.into_iter().enumerate() {
                if release[i % release.len()] {
                    a.recover(&o.agent, &o.framework, &o.role, &o.resources).unwrap();
                } else {
                    kept.push(o);
                }
            }
            held = kept;
            a.check_invariants().unwrap();
        }
    }
}
