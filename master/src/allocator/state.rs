//! The allocator's internal state records (agents, frameworks, roles, filters) and the accounting
//! helpers that keep per-framework, per-role and cluster quantities equal to the sums over agents.
//!
//! Every change of an agent's total goes through [`Allocator::track_total`] /
//! [`Allocator::untrack_total`], and every change of what a framework is offered or allocated goes
//! through [`Allocator::track_usage`] / [`Allocator::untrack_usage`]; `check_invariants` recomputes
//! all of these from the agents and compares.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use super::resources::{Quantities, ResourceSet};
use super::{
    AgentId, Allocator, AllocatorError, FrameworkId, OfferId, QuotaConfig, DEFAULT_WEIGHT,
    MAX_FILTERS_PER_AGENT, MAX_FRAMEWORKS, MAX_ROLES,
};

/// One registered agent.
#[derive(Debug)]
pub(super) struct AgentState {
    pub(super) id: AgentId,
    pub(super) total: ResourceSet,
    /// Neither offered nor allocated.
    pub(super) available: ResourceSet,
    /// Allocated (accepted or reported in use), per framework and role. Never holds empty sets.
    pub(super) allocated: BTreeMap<FrameworkId, BTreeMap<String, ResourceSet>>,
    /// Outstanding offers on this agent.
    pub(super) offers: BTreeSet<OfferId>,
    pub(super) active: bool,
}

impl AgentState {
    /// Σ of everything allocated on the agent.
    pub(super) fn used(&self) -> Result<ResourceSet, AllocatorError> {
        let mut used = ResourceSet::new();
        for roles in self.allocated.values() {
            for set in roles.values() {
                used.add(set)?;
            }
        }
        Ok(used)
    }
}

/// A refused-resources filter (Mesos `RefusedOfferFilter`).
#[derive(Debug, Clone)]
pub(super) struct OfferFilter {
    pub(super) refused: ResourceSet,
    pub(super) expires_at: Duration,
}

/// One framework. `registered == false` marks a framework known only because an agent reported
/// resources in use by it; it receives no offers until `add_framework`.
#[derive(Debug, Default)]
pub(super) struct FrameworkState {
    pub(super) registered: bool,
    pub(super) roles: BTreeSet<String>,
    pub(super) suppressed: BTreeSet<String>,
    pub(super) active: bool,
    pub(super) min_allocatable: BTreeMap<String, Vec<Quantities>>,
    /// Offered-or-allocated scalar quantities per role. Never holds empty entries.
    pub(super) usage: BTreeMap<String, Quantities>,
    pub(super) offers: BTreeSet<OfferId>,
    pub(super) filters: HashMap<String, HashMap<AgentId, Vec<OfferFilter>>>,
    /// The earliest expiry among `filters` (a lower bound after removals), to purge only when due.
    pub(super) next_filter_expiry: Option<Duration>,
}

impl FrameworkState {
    /// Whether the framework takes offers in `role` at all.
    pub(super) fn wants(&self, role: &str) -> bool {
        self.registered
            && self.active
            && self.roles.contains(role)
            && !self.suppressed.contains(role)
    }

    /// Whether the framework takes offers in any role.
    pub(super) fn wants_any(&self) -> bool {
        self.roles.iter().any(|r| self.wants(r))
    }

    pub(super) fn filter_count(&self) -> usize {
        self.filters
            .values()
            .flat_map(|m| m.values())
            .map(Vec::len)
            .sum()
    }

    /// The live filters for (role, agent), if any.
    pub(super) fn filters_for(&self, role: &str, agent: &AgentId) -> Option<&[OfferFilter]> {
        self.filters
            .get(role)?
            .get(agent)
            .map(Vec::as_slice)
            .filter(|f| !f.is_empty())
    }

    /// Whether a live filter refuses all of `resources`.
    pub(super) fn is_filtered(
        &self,
        role: &str,
        agent: &AgentId,
        resources: &ResourceSet,
        now: Duration,
    ) -> bool {
        self.filters_for(role, agent).is_some_and(|filters| {
            filters
                .iter()
                .any(|f| now < f.expires_at && f.refused.contains(resources))
        })
    }

    /// Installs a filter, evicting the earliest-expiring one past [`MAX_FILTERS_PER_AGENT`].
    pub(super) fn add_filter(&mut self, role: &str, agent: &AgentId, filter: OfferFilter) {
        let list = self
            .filters
            .entry(role.to_owned())
            .or_default()
            .entry(agent.clone())
            .or_default();
        if list.len() >= MAX_FILTERS_PER_AGENT {
            if let Some(i) = (0..list.len()).min_by_key(|&i| list[i].expires_at) {
                list.swap_remove(i);
            }
        }
        let expiry = filter.expires_at;
        list.push(filter);
        debug_assert!(list.len() <= MAX_FILTERS_PER_AGENT);
        self.next_filter_expiry = Some(self.next_filter_expiry.map_or(expiry, |e| e.min(expiry)));
    }

    /// Drops filters that expired at or before `now`.
    pub(super) fn purge_filters(&mut self, now: Duration) {
        for agents in self.filters.values_mut() {
            for list in agents.values_mut() {
                list.retain(|f| now < f.expires_at);
            }
            agents.retain(|_, list| !list.is_empty());
        }
        self.filters.retain(|_, agents| !agents.is_empty());
        let all = self.filters.values().flat_map(|m| m.values()).flatten();
        self.next_filter_expiry = all.map(|f| f.expires_at).min();
    }

    pub(super) fn remove_agent_filters(&mut self, agent: &AgentId) {
        for agents in self.filters.values_mut() {
            agents.remove(agent);
        }
        self.filters.retain(|_, agents| !agents.is_empty());
    }
}

/// One role.
#[derive(Debug)]
pub(super) struct RoleState {
    pub(super) weight: f64,
    pub(super) quota: QuotaConfig,
    /// Offered-or-allocated scalars of every framework in this role (reserved or not).
    pub(super) offered_or_allocated: Quantities,
    /// The unreserved part of `offered_or_allocated`.
    pub(super) offered_or_allocated_unreserved: Quantities,
    /// Scalars reserved for this role in agents' totals, allocated or not.
    pub(super) reserved: Quantities,
    /// Registered frameworks subscribed to this role.
    pub(super) subscribers: BTreeSet<FrameworkId>,
}

impl Default for RoleState {
    fn default() -> RoleState {
        RoleState {
            weight: DEFAULT_WEIGHT,
            quota: QuotaConfig::default(),
            offered_or_allocated: Quantities::new(),
            offered_or_allocated_unreserved: Quantities::new(),
            reserved: Quantities::new(),
            subscribers: BTreeSet::new(),
        }
    }
}

impl RoleState {
    /// Reservations plus offered-or-allocated unreserved resources (Mesos "consumed quota").
    pub(super) fn consumed_quota(&self) -> Quantities {
        let mut q = self.reserved.clone();
        q.add_all(&self.offered_or_allocated_unreserved);
        q
    }

    /// Whether the role has a non-default quota.
    pub(super) fn has_quota(&self) -> bool {
        !self.quota.guarantees.is_empty() || !self.quota.limits.is_empty()
    }

    /// Whether the role carries no state and may be forgotten.
    fn is_idle(&self) -> bool {
        self.weight == DEFAULT_WEIGHT
            && !self.has_quota()
            && self.offered_or_allocated.is_empty()
            && self.reserved.is_empty()
            && self.subscribers.is_empty()
    }
}

/// The largest, over scalar names in `total`, of `q / total` (0 for an empty cluster).
pub(super) fn dominant_share(q: &Quantities, total: &Quantities) -> f64 {
    let mut share = 0.0f64;
    for (name, used) in q.iter() {
        let all = total.get(name);
        if !all.is_zero() {
            share = share.max(used.0 as f64 / all.0 as f64);
        }
    }
    share
}

/// Mesos's role-name rules, minus hierarchy checks (roles are flat here).
pub(super) fn validate_role(role: &str) -> Result<(), AllocatorError> {
    let reason = if role.is_empty() {
        Some("it is empty")
    } else if role.len() > 512 {
        Some("it is longer than 512 bytes")
    } else if role == "." || role == ".." {
        Some("it is '.' or '..'")
    } else if role.starts_with('-') {
        Some("it starts with '-'")
    } else if role.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("it contains whitespace or control characters")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(AllocatorError::InvalidRole {
            role: role.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

impl Allocator {
    /// Fails if creating the roles among `names` that do not exist yet would exceed [`MAX_ROLES`].
    pub(super) fn check_role_capacity<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), AllocatorError> {
        let new: BTreeSet<&str> = names
            .into_iter()
            .filter(|n| !self.roles.contains_key(*n))
            .collect();
        if self.roles.len() + new.len() > MAX_ROLES {
            return Err(AllocatorError::TooMany {
                what: "roles",
                max: MAX_ROLES,
            });
        }
        Ok(())
    }

    /// Fails if creating the frameworks among `ids` that do not exist yet would exceed the bound.
    pub(super) fn check_framework_capacity<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a FrameworkId>,
    ) -> Result<(), AllocatorError> {
        let new: BTreeSet<&FrameworkId> = ids
            .into_iter()
            .filter(|id| !self.frameworks.contains_key(*id))
            .collect();
        if self.frameworks.len() + new.len() > MAX_FRAMEWORKS {
            return Err(AllocatorError::TooMany {
                what: "frameworks",
                max: MAX_FRAMEWORKS,
            });
        }
        Ok(())
    }

    pub(super) fn role_entry(&mut self, role: &str) -> &mut RoleState {
        self.roles.entry(role.to_owned()).or_default()
    }

    /// Forgets a role that carries no state.
    pub(super) fn gc_role(&mut self, role: &str) {
        if self.roles.get(role).is_some_and(RoleState::is_idle) {
            self.roles.remove(role);
        }
    }

    /// Forgets an unregistered framework that no longer uses anything.
    pub(super) fn gc_framework(&mut self, fw: &FrameworkId) {
        if self
            .frameworks
            .get(fw)
            .is_some_and(|f| !f.registered && f.usage.is_empty())
        {
            self.frameworks.remove(fw);
        }
    }

    /// Counts `set` into the cluster total and its reservations into their roles.
    pub(super) fn track_total(&mut self, set: &ResourceSet) {
        self.total.add_all(&set.quantities());
        for item in set.items() {
            if let (Some(r), Some(m)) = (&item.reservation, item.scalar_value()) {
                self.role_entry(&r.role).reserved.add(&item.name, m);
            }
        }
    }

    /// Reverses [`Allocator::track_total`].
    pub(super) fn untrack_total(&mut self, set: &ResourceSet) {
        self.total.saturating_sub_all(&set.quantities());
        let mut touched = BTreeSet::new();
        for item in set.items() {
            if let (Some(r), Some(m)) = (&item.reservation, item.scalar_value()) {
                if let Some(role) = self.roles.get_mut(&r.role) {
                    role.reserved.saturating_sub(&item.name, m);
                }
                touched.insert(r.role.clone());
            }
        }
        for role in touched {
            self.gc_role(&role);
        }
    }

    /// Counts `set` as offered or allocated to `fw` in `role`. Hot path: allocates only when a
    /// framework, role or resource name is seen for the first time.
    pub(super) fn track_usage(&mut self, fw: &FrameworkId, role: &str, set: &ResourceSet) {
        if !self.frameworks.contains_key(fw) {
            self.frameworks
                .insert(fw.clone(), FrameworkState::default());
        }
        if !self.roles.contains_key(role) {
            self.roles.insert(role.to_owned(), RoleState::default());
        }
        let (Some(state), Some(r)) = (self.frameworks.get_mut(fw), self.roles.get_mut(role)) else {
            return;
        };
        for item in set.items() {
            let Some(m) = item.scalar_value() else {
                continue;
            };
            match state.usage.get_mut(role) {
                Some(u) => u.add(&item.name, m),
                None => {
                    let mut u = Quantities::new();
                    u.add(&item.name, m);
                    state.usage.insert(role.to_owned(), u);
                }
            }
            r.offered_or_allocated.add(&item.name, m);
            if item.reservation.is_none() {
                r.offered_or_allocated_unreserved.add(&item.name, m);
            }
        }
    }

    /// Reverses [`Allocator::track_usage`].
    pub(super) fn untrack_usage(&mut self, fw: &FrameworkId, role: &str, set: &ResourceSet) {
        let mut usage = self
            .frameworks
            .get_mut(fw)
            .and_then(|s| s.usage.get_mut(role));
        let mut r = self.roles.get_mut(role);
        for item in set.items() {
            let Some(m) = item.scalar_value() else {
                continue;
            };
            if let Some(u) = usage.as_deref_mut() {
                u.saturating_sub(&item.name, m);
            }
            if let Some(r) = r.as_deref_mut() {
                r.offered_or_allocated.saturating_sub(&item.name, m);
                if item.reservation.is_none() {
                    r.offered_or_allocated_unreserved
                        .saturating_sub(&item.name, m);
                }
            }
        }
        if let Some(state) = self.frameworks.get_mut(fw) {
            if state.usage.get(role).is_some_and(Quantities::is_empty) {
                state.usage.remove(role);
            }
        }
        self.gc_framework(fw);
        self.gc_role(role);
    }
}
