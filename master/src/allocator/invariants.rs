//! Whole-state consistency checks: conservation of every agent's resources and agreement of all
//! derived accounting with the agents and offers it is derived from.
//!
//! [`Allocator::check_invariants`] recomputes everything from scratch (`O(agents × items)`); tests
//! call it after every step. In debug builds the allocator also checks the conservation of each
//! agent it touches, after every event and every grant.

use std::collections::BTreeMap;

use thiserror::Error;

use super::resources::{Quantities, ResourceSet};
use super::{AgentId, Allocator, FrameworkId, OfferId, MAX_FILTERS_PER_AGENT};

/// A broken invariant: always a bug in the allocator, never bad input.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum InvariantViolation {
    /// `total != available + Σ offered + Σ allocated` on an agent.
    #[error("agent {0}: total differs from available plus offered plus allocated")]
    Conservation(AgentId),
    /// A resource set is not in normal form.
    #[error("agent {0}: a resource set is not in normal form")]
    NotNormal(AgentId),
    /// An offer disagrees with its agent's or framework's records, or is empty.
    #[error("offer {0} is inconsistent with its agent or framework")]
    OfferBooks(OfferId),
    /// An offer holds resources reserved for a role other than its own.
    #[error("offer {0} holds resources reserved for another role")]
    OfferWrongRole(OfferId),
    /// A framework's usage differs from the sum of its offers and allocations.
    #[error("framework {0}: usage differs from the sum over agents")]
    FrameworkUsage(FrameworkId),
    /// A role's accounting differs from the sum over agents.
    #[error("role {0}: accounting differs from the sum over agents")]
    RoleAccounting(String),
    /// The cluster total differs from the sum of agent totals.
    #[error("the cluster total differs from the sum of agent totals")]
    ClusterTotal,
    /// A framework holds more filters for one agent and role than allowed.
    #[error("framework {0} holds too many filters for one agent")]
    TooManyFilters(FrameworkId),
}

/// Per (framework, role): quantities; per role: (all, unreserved, reserved).
#[derive(Default)]
struct Recount {
    usage: BTreeMap<(FrameworkId, String), Quantities>,
    roles: BTreeMap<String, [Quantities; 3]>,
    total: Quantities,
}

impl Recount {
    fn used(&mut self, fw: &FrameworkId, role: &str, set: &ResourceSet) {
        let q = set.quantities();
        self.usage
            .entry((fw.clone(), role.to_owned()))
            .or_default()
            .add_all(&q);
        let r = self.roles.entry(role.to_owned()).or_default();
        r[0].add_all(&q);
        r[1].add_all(&set.filter(|x| x.reservation.is_none()).quantities());
    }
}

impl Allocator {
    /// Checks every invariant listed in the module docs; returns the first violation found.
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        let mut recount = Recount::default();
        for agent in self.agents.iter().flatten() {
            self.check_agent(&agent.id)?;
            recount.total.add_all(&agent.total.quantities());
            for item in agent.total.items() {
                if let (Some(r), Some(m)) = (&item.reservation, item.scalar_value()) {
                    recount.roles.entry(r.role.clone()).or_default()[2].add(&item.name, m);
                }
            }
            for (fw, roles) in &agent.allocated {
                for (role, set) in roles {
                    recount.used(fw, role, set);
                }
            }
        }
        for offer in self.offers.values() {
            self.check_offer(offer.id)?;
            recount.used(&offer.framework, &offer.role, &offer.resources);
        }
        if recount.total != self.total {
            return Err(InvariantViolation::ClusterTotal);
        }
        self.check_recount(&recount)
    }

    fn check_recount(&self, recount: &Recount) -> Result<(), InvariantViolation> {
        for (id, fw) in &self.frameworks {
            for (role, q) in &fw.usage {
                if recount.usage.get(&(id.clone(), role.clone())) != Some(q) {
                    return Err(InvariantViolation::FrameworkUsage(id.clone()));
                }
            }
            let too_many = fw.filters.values().flat_map(|m| m.values());
            if too_many
                .into_iter()
                .any(|l| l.len() > MAX_FILTERS_PER_AGENT)
            {
                return Err(InvariantViolation::TooManyFilters(id.clone()));
            }
        }
        for ((id, role), q) in &recount.usage {
            let tracked = self.frameworks.get(id).and_then(|f| f.usage.get(role));
            if !q.is_empty() && tracked != Some(q) {
                return Err(InvariantViolation::FrameworkUsage(id.clone()));
            }
        }
        let empty = [Quantities::new(), Quantities::new(), Quantities::new()];
        let names = recount.roles.keys().chain(self.roles.keys());
        for name in names {
            let expected = recount.roles.get(name).unwrap_or(&empty);
            let actual = match self.roles.get(name) {
                Some(r) => [
                    r.offered_or_allocated.clone(),
                    r.offered_or_allocated_unreserved.clone(),
                    r.reserved.clone(),
                ],
                None => empty.clone(),
            };
            if *expected != actual {
                return Err(InvariantViolation::RoleAccounting(name.clone()));
            }
        }
        Ok(())
    }

    /// Conservation on one agent: `total == available + Σ offered + Σ allocated`.
    pub(super) fn check_agent(&self, id: &AgentId) -> Result<(), InvariantViolation> {
        let Some(agent) = self.agent(id) else {
            return Ok(());
        };
        let normal = agent.total.is_normal() && agent.available.is_normal();
        if !normal {
            return Err(InvariantViolation::NotNormal(id.clone()));
        }
        let mut sum = agent.available.clone();
        let conservation = || InvariantViolation::Conservation(id.clone());
        for offer_id in &agent.offers {
            let offer = self
                .offers
                .get(offer_id)
                .ok_or(InvariantViolation::OfferBooks(*offer_id))?;
            sum.add(&offer.resources).map_err(|_| conservation())?;
        }
        for set in agent.allocated.values().flat_map(|r| r.values()) {
            if set.is_empty() || !set.is_normal() {
                return Err(InvariantViolation::NotNormal(id.clone()));
            }
            sum.add(set).map_err(|_| conservation())?;
        }
        if sum != agent.total {
            return Err(conservation());
        }
        Ok(())
    }

    fn check_offer(&self, id: OfferId) -> Result<(), InvariantViolation> {
        let books = || InvariantViolation::OfferBooks(id);
        let offer = self.offers.get(&id).ok_or_else(books)?;
        let agent = self.agent(&offer.agent).ok_or_else(books)?;
        let fw = self.frameworks.get(&offer.framework).ok_or_else(books)?;
        if !agent.offers.contains(&id) || !fw.offers.contains(&id) || offer.resources.is_empty() {
            return Err(books());
        }
        if !offer
            .resources
            .items()
            .iter()
            .all(|x| x.is_allocatable_to(&offer.role))
        {
            return Err(InvariantViolation::OfferWrongRole(id));
        }
        Ok(())
    }

    /// In debug builds, asserts conservation on the agent in `slot`.
    pub(super) fn debug_check_agent(&self, slot: usize) {
        if cfg!(debug_assertions) {
            if let Some(agent) = self.agents.get(slot).and_then(Option::as_ref) {
                let checked = self.check_agent(&agent.id);
                debug_assert_eq!(checked, Ok(()));
            }
        }
    }
}
