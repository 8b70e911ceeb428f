//! One allocation cycle: the two-stage weighted DRF walk over shuffled agents.
//!
//! The sort order (roles by weighted dominant share, frameworks within a role by dominant share)
//! is built once per cycle in `O(F log F)` and then updated in `O(log F)` after each grant, so a
//! cycle costs roughly `O(agents × (log F + items))` plus one step per framework that is skipped
//! because a filter or its minimum-allocatable rule rejects an agent. Candidate offers are built as
//! index "picks" into the agent's available items; a [`ResourceSet`] is only materialised for a
//! grant or for a filter check, so no resource set is cloned per comparison.
//!
//! Quota bookkeeping for the cycle lives in [`Budget`]: consumed quota of roles with a quota, the
//! required headroom (Σ unsatisfied guarantees) and the available headroom (unreserved resources
//! neither offered nor allocated). See the module docs of `allocator` for the rules.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use super::resources::{Milli, Quantities, ResourceItem, ResourceSet, ResourceValue};
use super::{AgentId, Allocator, FrameworkId, Offer, OfferId, MAX_OFFERS};

/// A share as a totally ordered key (shares are finite: weights are positive, totals non-zero).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Share(f64);

impl Eq for Share {}

impl PartialOrd for Share {
    fn partial_cmp(&self, other: &Share) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Share {
    fn cmp(&self, other: &Share) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// The DRF sort order for one cycle.
#[derive(Default)]
struct Order {
    /// Roles with at least one framework that wants offers, by weighted share then name.
    roles: BTreeSet<(Share, String)>,
    /// The subset of `roles` with a quota guarantee (stage 1 walks only these).
    quota_roles: BTreeSet<(Share, String)>,
    /// Per role, the frameworks that want offers in it, by share then id.
    frameworks: HashMap<String, BTreeSet<(Share, FrameworkId)>>,
    /// Whether some framework overrides the global minimum allocatable resources.
    any_min_override: bool,
}

/// Quota bookkeeping for one cycle.
struct Budget {
    /// Consumed quota of roles with a non-default quota.
    consumed: HashMap<String, Quantities>,
    /// Σ over roles of `max(guarantee - consumed, 0)`.
    required_headroom: Quantities,
    /// Unreserved resources neither offered nor allocated, cluster-wide.
    available_headroom: Quantities,
}

impl Budget {
    fn consumed(&self, role: &str, name: &str) -> Milli {
        self.consumed.get(role).map_or(Milli::ZERO, |q| q.get(name))
    }

    /// Room left under the role's limit for `name` (`None`: unlimited).
    fn limit_room(
        &self,
        limits: &BTreeMap<String, Milli>,
        role: &str,
        name: &str,
    ) -> Option<Milli> {
        limits
            .get(name)
            .map(|l| l.saturating_sub(self.consumed(role, name)))
    }

    /// Unreserved `name` that may go beyond guarantees without eating required headroom
    /// (`None`: no headroom is required at all).
    fn surplus(&self, name: &str) -> Option<Milli> {
        if self.required_headroom.is_empty() {
            return None;
        }
        Some(
            self.available_headroom
                .get(name)
                .saturating_sub(self.required_headroom.get(name)),
        )
    }
}

/// Offers made in this cycle: ids at or above `first` are new, in creation order.
struct Made {
    first: OfferId,
    ids: Vec<OfferId>,
}

/// Part of an agent's available item chosen for an offer: `amount == None` takes it whole.
#[derive(Clone, Copy, Debug)]
struct Pick {
    index: usize,
    amount: Option<Milli>,
}

/// A candidate offer for one role on one agent.
struct Candidate {
    picks: Vec<Pick>,
    /// The part of the unreserved scalars taken towards the role's unmet guarantee (stage 1).
    guaranteed: Quantities,
}

/// Which stage a walk is in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Guarantees,
    Fair,
}

/// A running per-name cap, keyed by names borrowed from the agent's items.
struct Caps<'a> {
    caps: Vec<(&'a str, Option<Milli>)>,
}

impl<'a> Caps<'a> {
    fn new() -> Caps<'a> {
        Caps { caps: Vec::new() }
    }

    /// The cap for `name`, initialised by `init` on first use.
    fn get(&mut self, name: &'a str, init: impl FnOnce() -> Option<Milli>) -> Option<Milli> {
        if let Some((_, cap)) = self.caps.iter().find(|(n, _)| *n == name) {
            return *cap;
        }
        let cap = init();
        self.caps.push((name, cap));
        cap
    }

    fn consume(&mut self, name: &str, amount: Milli) {
        if let Some((_, Some(cap))) = self.caps.iter_mut().find(|(n, _)| *n == name) {
            *cap = cap.saturating_sub(amount);
        }
    }
}

/// How much of an unreserved scalar of `value` to take under `cap` (Mesos `shrinkResources`):
/// divisible items are chopped, indivisible ones taken whole or not at all.
fn shrink(value: Milli, divisible: bool, cap: Option<Milli>) -> Milli {
    match cap {
        None => value,
        Some(cap) if divisible => value.min(cap),
        Some(cap) if value <= cap => value,
        Some(_) => Milli::ZERO,
    }
}

fn is_unreserved_scalar(item: &ResourceItem) -> bool {
    item.reservation.is_none() && item.scalar_value().is_some()
}

impl Allocator {
    /// Runs one allocation cycle over every active agent and returns the new offers, by id.
    ///
    /// Stage 1 offers roles with unmet quota guarantees what helps meet them (plus their
    /// reservations, non-scalars and, within limits and headroom, other scalars); stage 2 offers
    /// the rest by weighted DRF. Each offer is one agent's resources for one framework and role.
    pub fn allocate(&mut self, now: Duration) -> Vec<Offer> {
        let slots: Vec<usize> = (0..self.agents.len())
            .filter(|&s| self.agents[s].as_ref().is_some_and(|a| a.active))
            .collect();
        self.allocate_slots(slots, now)
    }

    /// Runs an allocation cycle over some agents only (after an event that freed resources on
    /// them, as Mesos does). Unknown and inactive agents are ignored.
    pub fn allocate_agents(&mut self, agents: &[AgentId], now: Duration) -> Vec<Offer> {
        let mut slots: Vec<usize> = agents
            .iter()
            .filter_map(|id| self.agent_index.get(id).copied())
            .filter(|&s| self.agents[s].as_ref().is_some_and(|a| a.active))
            .collect();
        slots.sort_unstable();
        slots.dedup();
        self.allocate_slots(slots, now)
    }

    fn allocate_slots(&mut self, mut slots: Vec<usize>, now: Duration) -> Vec<Offer> {
        for fw in self.frameworks.values_mut() {
            if fw.next_filter_expiry.is_some_and(|e| e <= now) {
                fw.purge_filters(now);
            }
        }
        let mut order = self.build_order();
        if order.roles.is_empty() || slots.is_empty() {
            return Vec::new();
        }
        let mut budget = self.build_budget();
        let mut made = Made {
            first: OfferId(self.next_offer),
            ids: Vec::new(),
        };
        self.rng.shuffle(&mut slots);
        if !order.quota_roles.is_empty() && !budget.required_headroom.is_empty() {
            for &slot in &slots {
                self.allocate_agent(
                    slot,
                    Stage::Guarantees,
                    &mut order,
                    &mut budget,
                    &mut made,
                    now,
                );
            }
        }
        // Reshuffle so stage 1's preference for the front of the list does not carry over.
        self.rng.shuffle(&mut slots);
        for &slot in &slots {
            self.allocate_agent(slot, Stage::Fair, &mut order, &mut budget, &mut made, now);
        }
        made.ids
            .iter()
            .filter_map(|id| self.offers.get(id).cloned())
            .collect()
    }

    fn role_key(&self, role: &str) -> Share {
        Share(self.role_share(role))
    }

    fn build_order(&self) -> Order {
        let mut order = Order::default();
        for (id, fw) in &self.frameworks {
            order.any_min_override |= fw.wants_any() && !fw.min_allocatable.is_empty();
            for role in fw.roles.iter().filter(|r| fw.wants(r)) {
                let key = (Share(self.framework_share(id, role)), id.clone());
                order
                    .frameworks
                    .entry(role.clone())
                    .or_default()
                    .insert(key);
            }
        }
        for role in order.frameworks.keys() {
            let key = (self.role_key(role), role.clone());
            if self
                .roles
                .get(role)
                .is_some_and(|r| !r.quota.guarantees.is_empty())
            {
                order.quota_roles.insert(key.clone());
            }
            order.roles.insert(key);
        }
        order
    }

    fn build_budget(&self) -> Budget {
        let mut budget = Budget {
            consumed: HashMap::new(),
            required_headroom: Quantities::new(),
            available_headroom: self.total.clone(),
        };
        for (name, role) in &self.roles {
            budget.available_headroom.saturating_sub_all(&role.reserved);
            budget
                .available_headroom
                .saturating_sub_all(&role.offered_or_allocated_unreserved);
            if !role.has_quota() {
                continue;
            }
            let consumed = role.consumed_quota();
            for (res, g) in role.quota.guarantees.iter() {
                budget
                    .required_headroom
                    .add(res, g.saturating_sub(consumed.get(res)));
            }
            budget.consumed.insert(name.clone(), consumed);
        }
        budget
    }

    /// Offers one agent's resources in one stage, walking roles and frameworks in DRF order.
    fn allocate_agent(
        &mut self,
        slot: usize,
        stage: Stage,
        order: &mut Order,
        budget: &mut Budget,
        made: &mut Made,
        now: Duration,
    ) {
        if !self.worth_visiting(slot, order.any_min_override) {
            return;
        }
        let mut touched: Vec<(Share, String, Share, FrameworkId)> = Vec::new();
        let roles = match stage {
            Stage::Guarantees => &order.quota_roles,
            Stage::Fair => &order.roles,
        };
        'roles: for (role_share, role) in roles {
            let Some(fws) = order.frameworks.get(role) else {
                continue;
            };
            let mut candidate = None;
            for (fw_share, fw_id) in fws {
                if self.agents[slot]
                    .as_ref()
                    .is_none_or(|a| a.available.is_empty())
                {
                    break 'roles;
                }
                let cand = match candidate.take() {
                    Some(c) => c,
                    None => match self.candidate(slot, role, stage, budget) {
                        Some(c) => c,
                        None => continue 'roles,
                    },
                };
                if !self.offerable(slot, role, fw_id, &cand, now) {
                    candidate = Some(cand);
                    continue;
                }
                if self.offers.len() >= MAX_OFFERS {
                    break 'roles;
                }
                self.grant(slot, role, fw_id, &cand, budget, made, now);
                touched.push((*role_share, role.clone(), *fw_share, fw_id.clone()));
            }
        }
        self.reorder(order, touched);
    }

    /// Skips agents with nothing any framework could be offered.
    fn worth_visiting(&self, slot: usize, any_min_override: bool) -> bool {
        let Some(agent) = self.agents[slot].as_ref() else {
            return false;
        };
        if agent.available.is_empty() {
            return false;
        }
        // The global minimum is a valid shortcut only when no framework overrides it.
        if any_min_override {
            return true;
        }
        let items = agent.available.items();
        let whole = |name: &str| -> Milli {
            items
                .iter()
                .filter(|x| &*x.name == name)
                .filter_map(ResourceItem::scalar_value)
                .fold(Milli::ZERO, Milli::saturating_add)
        };
        let mins = &self.config.min_allocatable;
        mins.is_empty()
            || mins
                .iter()
                .any(|q| q.iter().all(|(name, m)| whole(name) >= m))
    }

    /// What `role` may be offered on the agent in this stage, or `None` if nothing.
    fn candidate(
        &self,
        slot: usize,
        role: &str,
        stage: Stage,
        budget: &Budget,
    ) -> Option<Candidate> {
        let agent = self.agents[slot].as_ref()?;
        let items = agent.available.items();
        let state = self.roles.get(role);
        let empty = Quantities::new();
        let no_limits = BTreeMap::new();
        let limits = state.map_or(&no_limits, |r| &r.quota.limits);
        let mut taken = vec![Milli::ZERO; items.len()];
        let mut guaranteed = Quantities::new();
        if stage == Stage::Guarantees {
            let guarantees = state.map_or(&empty, |r| &r.quota.guarantees);
            // Unmet guarantee per name; names without a guarantee get nothing in this pass.
            let mut unmet = Caps::new();
            for (i, item) in items
                .iter()
                .enumerate()
                .filter(|(_, x)| is_unreserved_scalar(x))
            {
                let value = item.scalar_value().unwrap_or_default();
                let cap = unmet.get(&item.name, || {
                    Some(
                        guarantees
                            .get(&item.name)
                            .saturating_sub(budget.consumed(role, &item.name)),
                    )
                });
                let take = shrink(value, item.is_divisible(), cap);
                unmet.consume(&item.name, take);
                guaranteed.add(&item.name, take);
                taken[i] = take;
            }
            if guaranteed.is_empty() {
                return None;
            }
        }
        // Unreserved scalars beyond the guarantee: within the limit and the surplus headroom.
        let mut room = Caps::new();
        for (i, item) in items
            .iter()
            .enumerate()
            .filter(|(_, x)| is_unreserved_scalar(x))
        {
            let value = item.scalar_value().unwrap_or_default();
            let rest = value.saturating_sub(taken[i]);
            if rest.is_zero() || (!taken[i].is_zero() && !item.is_divisible()) {
                continue;
            }
            let cap = room.get(&item.name, || {
                let limit = budget
                    .limit_room(limits, role, &item.name)
                    .map(|l| l.saturating_sub(guaranteed.get(&item.name)));
                min_cap(limit, budget.surplus(&item.name))
            });
            let take = shrink(rest, item.is_divisible(), cap);
            room.consume(&item.name, take);
            taken[i] = taken[i].saturating_add(take);
        }
        let picks = picks_for(items, role, &taken);
        (!picks.is_empty()).then_some(Candidate { picks, guaranteed })
    }

    /// Whether `fw` takes the candidate: its minimum-allocatable rule and its filters.
    fn offerable(
        &self,
        slot: usize,
        role: &str,
        fw: &FrameworkId,
        cand: &Candidate,
        now: Duration,
    ) -> bool {
        let (Some(agent), Some(state)) = (self.agents[slot].as_ref(), self.frameworks.get(fw))
        else {
            return false;
        };
        let items = agent.available.items();
        let mins = state
            .min_allocatable
            .get(role)
            .unwrap_or(&self.config.min_allocatable);
        if !meets_minimum(items, &cand.picks, mins) {
            return false;
        }
        if state.filters_for(role, &agent.id).is_none() {
            return true;
        }
        !state.is_filtered(role, &agent.id, &materialize(items, &cand.picks), now)
    }

    /// Moves the candidate from the agent's pool into a (new or grown) offer and updates the books.
    #[allow(clippy::too_many_arguments)]
    fn grant(
        &mut self,
        slot: usize,
        role: &str,
        fw: &FrameworkId,
        cand: &Candidate,
        budget: &mut Budget,
        made: &mut Made,
        now: Duration,
    ) {
        let Some(agent) = self.agents[slot].as_mut() else {
            return;
        };
        let taken = materialize(agent.available.items(), &cand.picks);
        if agent.available.subtract(&taken).is_err() {
            debug_assert!(
                false,
                "a candidate is always carved out of the available pool"
            );
            return;
        }
        let agent_id = agent.id.clone();
        // Stage 2 may add to an offer stage 1 made for the same framework and role on this agent.
        let offers = &self.offers;
        let same = |id: &&OfferId| {
            offers
                .get(id)
                .is_some_and(|o| o.framework == *fw && o.role == role)
        };
        let earlier = agent.offers.range(made.first..).find(same).copied();
        match earlier.and_then(|id| self.offers.get_mut(&id)) {
            Some(offer) => {
                // Cannot fail: both parts come from one agent's normalised total.
                let grown = offer.resources.add(&taken);
                debug_assert!(grown.is_ok());
            }
            None => {
                let id = OfferId(self.next_offer);
                self.next_offer += 1;
                let offer = Offer {
                    id,
                    framework: fw.clone(),
                    role: role.to_owned(),
                    agent: agent_id,
                    resources: taken.clone(),
                    created_at: now,
                };
                agent.offers.insert(id);
                self.offers.insert(id, offer);
                if let Some(state) = self.frameworks.get_mut(fw) {
                    state.offers.insert(id);
                }
                made.ids.push(id);
            }
        }
        self.track_usage(fw, role, &taken);
        let mut consumed = budget.consumed.get_mut(role);
        for item in taken.items().iter().filter(|x| x.reservation.is_none()) {
            let Some(m) = item.scalar_value() else {
                continue;
            };
            if let Some(c) = consumed.as_deref_mut() {
                c.add(&item.name, m);
            }
            budget.available_headroom.saturating_sub(&item.name, m);
        }
        budget
            .required_headroom
            .saturating_sub_all(&cand.guaranteed);
        self.debug_check_agent(slot);
    }

    /// Re-sorts the roles and frameworks that were granted something on the last agent.
    fn reorder(&self, order: &mut Order, touched: Vec<(Share, String, Share, FrameworkId)>) {
        for (role_share, role, fw_share, fw) in touched {
            if let Some(fws) = order.frameworks.get_mut(&role) {
                if fws.remove(&(fw_share, fw.clone())) {
                    fws.insert((Share(self.framework_share(&fw, &role)), fw));
                }
            }
            let new = (self.role_key(&role), role.clone());
            if order.roles.remove(&(role_share, role.clone())) {
                order.roles.insert(new.clone());
            }
            if order.quota_roles.remove(&(role_share, role)) {
                order.quota_roles.insert(new);
            }
        }
    }
}

fn min_cap(a: Option<Milli>, b: Option<Milli>) -> Option<Milli> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// Picks: the role's reservations and non-scalars whole, unreserved scalars as `taken` says.
fn picks_for(items: &[ResourceItem], role: &str, taken: &[Milli]) -> Vec<Pick> {
    let mut picks = Vec::new();
    for (index, item) in items.iter().enumerate() {
        if !item.is_allocatable_to(role) {
            continue;
        }
        match item.scalar_value() {
            Some(value) if item.reservation.is_none() => {
                if taken[index] == value {
                    picks.push(Pick {
                        index,
                        amount: None,
                    });
                } else if !taken[index].is_zero() {
                    picks.push(Pick {
                        index,
                        amount: Some(taken[index]),
                    });
                }
            }
            _ => picks.push(Pick {
                index,
                amount: None,
            }),
        }
    }
    picks
}

/// Whether the picks hold at least one of the minimum quantity sets (Mesos `allocatable`).
fn meets_minimum(items: &[ResourceItem], picks: &[Pick], mins: &[Quantities]) -> bool {
    if picks.is_empty() {
        return false;
    }
    let quantity = |name: &str| -> Milli {
        picks
            .iter()
            .filter(|p| &*items[p.index].name == name)
            .filter_map(|p| p.amount.or_else(|| items[p.index].scalar_value()))
            .fold(Milli::ZERO, Milli::saturating_add)
    };
    mins.is_empty()
        || mins
            .iter()
            .any(|q| q.iter().all(|(name, m)| quantity(name) >= m))
}

fn materialize(items: &[ResourceItem], picks: &[Pick]) -> ResourceSet {
    let mut set = ResourceSet::new();
    for pick in picks {
        let mut item = items[pick.index].clone();
        if let (Some(amount), ResourceValue::Scalar(_)) = (pick.amount, &item.value) {
            item.value = ResourceValue::Scalar(amount);
        }
        // Cannot fail: the picks are distinct items of one normalised set.
        let added = set.add_item(item);
        debug_assert!(added.is_ok());
    }
    set
}
