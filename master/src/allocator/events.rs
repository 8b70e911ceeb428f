//! Events the master feeds the allocator: agents coming and going, frameworks subscribing,
//! SUPPRESS/REVIVE, DECLINE/ACCEPT, recovered resources, offer timeouts, weights and quotas.
//!
//! Each method validates everything first and mutates only once nothing can fail, so an `Err`
//! leaves the allocator as it was. Methods that take offers back return their ids so the master
//! can send RESCIND (or drop its own records).

use std::time::Duration;

use super::conversions::unconverted;
use super::resources::ResourceSet;
use super::state::{validate_role, AgentState, FrameworkState, OfferFilter};
use super::{
    Accept, Accepted, AgentId, Allocation, Allocator, AllocatorError, FrameworkId, FrameworkSpec,
    Offer, OfferId, QuotaConfig, DEFAULT_REFUSE_SECONDS, MAX_AGENTS, MAX_REFUSE_SECONDS,
    MAX_WEIGHT,
};

impl Allocator {
    /// Registers an agent with its total resources and what frameworks already use on it (an
    /// agent re-registering after a master failover). The agent starts active.
    pub fn add_agent(
        &mut self,
        id: AgentId,
        total: ResourceSet,
        used: Vec<Allocation>,
    ) -> Result<(), AllocatorError> {
        if self.agent_index.contains_key(&id) {
            return Err(AllocatorError::AgentExists(id));
        }
        if self.agent_index.len() >= MAX_AGENTS {
            return Err(AllocatorError::TooMany {
                what: "agents",
                max: MAX_AGENTS,
            });
        }
        total.check_bounds()?;
        let mut in_use = ResourceSet::new();
        for a in &used {
            validate_role(&a.role)?;
            if !a
                .resources
                .items()
                .iter()
                .all(|x| x.is_allocatable_to(&a.role))
            {
                return Err(AllocatorError::UsedByWrongRole {
                    agent: id,
                    role: a.role.clone(),
                });
            }
            in_use.add(&a.resources)?;
        }
        let available = total
            .checked_sub(&in_use)
            .map_err(|_| AllocatorError::TotalBelowUsed(id.clone()))?;
        let reserved_roles = total.items().iter().filter_map(|x| x.reservation.as_ref());
        self.check_role_capacity(
            reserved_roles
                .map(|r| r.role.as_str())
                .chain(used.iter().map(|a| a.role.as_str())),
        )?;
        self.check_framework_capacity(used.iter().map(|a| &a.framework))?;

        self.track_total(&total);
        let mut agent = AgentState {
            id: id.clone(),
            total,
            available,
            allocated: Default::default(),
            offers: Default::default(),
            active: true,
        };
        for a in used.into_iter().filter(|a| !a.resources.is_empty()) {
            self.track_usage(&a.framework, &a.role, &a.resources);
            let slot = agent
                .allocated
                .entry(a.framework)
                .or_default()
                .entry(a.role)
                .or_default();
            slot.add(&a.resources)?;
        }
        let slot = match self.free_slots.pop() {
            Some(slot) => slot,
            None => {
                self.agents.push(None);
                self.agents.len() - 1
            }
        };
        self.agents[slot] = Some(agent);
        self.agent_index.insert(id, slot);
        self.debug_check_agent(slot);
        Ok(())
    }

    /// Removes an agent: its offers are rescinded (their ids returned for RESCIND), what frameworks
    /// had allocated on it is dropped, and filters naming it are forgotten.
    pub fn remove_agent(&mut self, id: &AgentId) -> Result<Vec<OfferId>, AllocatorError> {
        let slot = self.slot(id)?;
        let rescinded = self.return_agent_offers(slot);
        let Some(agent) = self.agents[slot].take() else {
            return Err(AllocatorError::UnknownAgent(id.clone()));
        };
        for (fw, roles) in &agent.allocated {
            for (role, set) in roles {
                self.untrack_usage(fw, role, set);
            }
        }
        self.untrack_total(&agent.total);
        self.agent_index.remove(id);
        self.free_slots.push(slot);
        for fw in self.frameworks.values_mut() {
            fw.remove_agent_filters(id);
        }
        Ok(rescinded)
    }

    /// Replaces an agent's total (resource provider changes, operator reservations). Outstanding
    /// offers survive if the new total still covers them; otherwise they are all rescinded and
    /// their ids returned. Fails if the new total does not cover what frameworks use.
    pub fn update_agent(
        &mut self,
        id: &AgentId,
        total: ResourceSet,
    ) -> Result<Vec<OfferId>, AllocatorError> {
        let slot = self.slot(id)?;
        total.check_bounds()?;
        let reserved_roles = total.items().iter().filter_map(|x| x.reservation.as_ref());
        self.check_role_capacity(reserved_roles.map(|r| r.role.as_str()))?;
        let Some(agent) = self.agents[slot].as_ref() else {
            return Err(AllocatorError::UnknownAgent(id.clone()));
        };
        let used = agent.used()?;
        let mut held = used.clone();
        for offer in agent.offers.iter().filter_map(|o| self.offers.get(o)) {
            held.add(&offer.resources)?;
        }
        if !total.contains(&used) {
            return Err(AllocatorError::TotalBelowUsed(id.clone()));
        }
        let rescinded = if total.contains(&held) {
            Vec::new()
        } else {
            held = used;
            self.return_agent_offers(slot)
        };
        let available = total.checked_sub(&held)?;
        let old = match self.agents[slot].as_mut() {
            Some(agent) => {
                agent.available = available;
                std::mem::replace(&mut agent.total, total.clone())
            }
            None => return Err(AllocatorError::UnknownAgent(id.clone())),
        };
        self.untrack_total(&old);
        self.track_total(&total);
        self.debug_check_agent(slot);
        Ok(rescinded)
    }

    /// Marks an agent active again (it reconnected): its resources are offered again.
    pub fn activate_agent(&mut self, id: &AgentId) -> Result<(), AllocatorError> {
        let slot = self.slot(id)?;
        if let Some(agent) = self.agents[slot].as_mut() {
            agent.active = true;
        }
        Ok(())
    }

    /// Marks an agent inactive (disconnected): no offers are made from it, and its outstanding
    /// offers are rescinded (ids returned). Allocations stay until the agent is removed.
    pub fn deactivate_agent(&mut self, id: &AgentId) -> Result<Vec<OfferId>, AllocatorError> {
        let slot = self.slot(id)?;
        if let Some(agent) = self.agents[slot].as_mut() {
            agent.active = false;
        }
        Ok(self.return_agent_offers(slot))
    }

    /// Registers a framework (SUBSCRIBE). Resources agents reported as used by it are kept.
    pub fn add_framework(
        &mut self,
        id: FrameworkId,
        spec: FrameworkSpec,
    ) -> Result<(), AllocatorError> {
        if self.frameworks.get(&id).is_some_and(|f| f.registered) {
            return Err(AllocatorError::FrameworkExists(id));
        }
        self.check_framework_capacity([&id])?;
        self.validate_spec(&id, &spec)?;
        let state = self.frameworks.entry(id.clone()).or_default();
        state.registered = true;
        state.active = spec.active;
        state.roles = spec.roles;
        state.suppressed = spec.suppressed_roles;
        state.min_allocatable = spec.min_allocatable;
        let roles: Vec<String> = state.roles.iter().cloned().collect();
        for role in roles {
            self.role_entry(&role).subscribers.insert(id.clone());
        }
        Ok(())
    }

    /// UPDATE_FRAMEWORK: new roles, suppressed roles and offer filters (`spec.active` is ignored;
    /// use activate/deactivate). Offers in roles the framework left are rescinded (ids returned);
    /// roles that stop being suppressed are revived (their filters cleared), as in Mesos.
    pub fn update_framework(
        &mut self,
        id: &FrameworkId,
        spec: FrameworkSpec,
    ) -> Result<Vec<OfferId>, AllocatorError> {
        self.registered(id)?;
        self.validate_spec(id, &spec)?;
        let Some(state) = self.frameworks.get_mut(id) else {
            return Err(AllocatorError::UnknownFramework(id.clone()));
        };
        let left: Vec<String> = state.roles.difference(&spec.roles).cloned().collect();
        let joined: Vec<String> = spec.roles.difference(&state.roles).cloned().collect();
        let revived: Vec<String> = state
            .suppressed
            .difference(&spec.suppressed_roles)
            .cloned()
            .collect();
        for role in left.iter().chain(&revived) {
            state.filters.remove(role);
        }
        let gone: Vec<OfferId> = state
            .offers
            .iter()
            .filter(|o| {
                self.offers
                    .get(o)
                    .is_some_and(|x| !spec.roles.contains(&x.role))
            })
            .copied()
            .collect();
        state.roles = spec.roles;
        state.suppressed = spec.suppressed_roles;
        state.min_allocatable = spec.min_allocatable;
        for role in &left {
            if let Some(r) = self.roles.get_mut(role) {
                r.subscribers.remove(id);
            }
            self.gc_role(role);
        }
        for role in &joined {
            self.role_entry(role).subscribers.insert(id.clone());
        }
        for offer in &gone {
            self.return_offer(*offer);
        }
        Ok(gone)
    }

    /// Removes a framework (TEARDOWN, failover timeout): its offers are returned (ids given back)
    /// and everything it was allocated is released to the agents, as Mesos's allocator does.
    pub fn remove_framework(&mut self, id: &FrameworkId) -> Result<Vec<OfferId>, AllocatorError> {
        self.registered(id)?;
        let offers = self.return_framework_offers(id);
        for slot in 0..self.agents.len() {
            let Some(agent) = self.agents[slot].as_mut() else {
                continue;
            };
            let Some(roles) = agent.allocated.remove(id) else {
                continue;
            };
            for set in roles.values() {
                // Cannot fail: the set was carved out of this agent's total.
                let merged = agent.available.add(set);
                debug_assert!(merged.is_ok());
            }
            for (role, set) in &roles {
                self.untrack_usage(id, role, set);
            }
            self.debug_check_agent(slot);
        }
        if let Some(state) = self.frameworks.remove(id) {
            for role in &state.roles {
                if let Some(r) = self.roles.get_mut(role) {
                    r.subscribers.remove(id);
                }
                self.gc_role(role);
            }
        }
        Ok(offers)
    }

    /// Marks a framework connected; it receives offers in its unsuppressed roles again.
    pub fn activate_framework(&mut self, id: &FrameworkId) -> Result<(), AllocatorError> {
        self.registered_mut(id)?.active = true;
        Ok(())
    }

    /// Marks a framework disconnected: no offers, its filters are cleared (as Mesos does) and its
    /// outstanding offers are returned (ids given back). Allocations are kept for failover.
    pub fn deactivate_framework(
        &mut self,
        id: &FrameworkId,
    ) -> Result<Vec<OfferId>, AllocatorError> {
        let state = self.registered_mut(id)?;
        state.active = false;
        state.filters.clear();
        Ok(self.return_framework_offers(id))
    }

    /// SUPPRESS: no offers in `roles` (all subscribed roles if empty) until REVIVE.
    pub fn suppress(&mut self, id: &FrameworkId, roles: &[String]) -> Result<(), AllocatorError> {
        let roles = self.subscribed_roles(id, roles)?;
        self.registered_mut(id)?.suppressed.extend(roles);
        Ok(())
    }

    /// REVIVE: clears the filters of `roles` (all subscribed roles if empty) and unsuppresses them.
    pub fn revive(&mut self, id: &FrameworkId, roles: &[String]) -> Result<(), AllocatorError> {
        let roles = self.subscribed_roles(id, roles)?;
        let state = self.registered_mut(id)?;
        for role in &roles {
            state.filters.remove(role);
            state.suppressed.remove(role);
        }
        Ok(())
    }

    /// DECLINE: the offer's resources return to the agent, filtered for `refuse_seconds`
    /// (`None`: 5 s; see the module docs for the clamping rules).
    pub fn decline(
        &mut self,
        offer: OfferId,
        refuse_seconds: Option<f64>,
        now: Duration,
    ) -> Result<(), AllocatorError> {
        let Some(o) = self.return_offer(offer) else {
            return Err(AllocatorError::UnknownOffer(offer));
        };
        self.install_filter(
            &o.framework,
            &o.role,
            &o.agent,
            o.resources,
            refuse_seconds,
            now,
        );
        Ok(())
    }

    /// Takes an offer back without a filter (quota changes, operator action) and returns it.
    pub fn rescind(&mut self, offer: OfferId) -> Result<Offer, AllocatorError> {
        self.return_offer(offer)
            .ok_or(AllocatorError::UnknownOffer(offer))
    }

    /// `--offer_timeout`: takes back offers made at least the timeout ago, returning their ids
    /// (the master sends RESCIND). No filters are installed. Without a timeout, returns nothing.
    pub fn expire_offers(&mut self, now: Duration) -> Vec<OfferId> {
        let Some(timeout) = self.config.offer_timeout else {
            return Vec::new();
        };
        let expired: Vec<OfferId> = self
            .offers
            .values()
            .filter(|o| o.created_at.saturating_add(timeout) <= now)
            .map(|o| o.id)
            .collect();
        for id in &expired {
            self.return_offer(*id);
        }
        expired
    }

    /// ACCEPT: applies the conversions to the offer (and the agent's total), allocates `used` to
    /// the framework, and returns the rest to the agent, filtered for `refuse_seconds`.
    pub fn accept(
        &mut self,
        offer: OfferId,
        accept: Accept,
        now: Duration,
    ) -> Result<Accepted, AllocatorError> {
        let plan = self.plan_accept(offer, &accept)?;
        let Some(o) = self.take_offer(offer) else {
            return Err(AllocatorError::UnknownOffer(offer));
        };
        let slot = plan.slot;
        let old_total = match self.agents[slot].as_mut() {
            Some(agent) => {
                agent.available = plan.available;
                if !plan.held.is_empty() {
                    let roles = agent.allocated.entry(o.framework.clone()).or_default();
                    roles.insert(o.role.clone(), plan.held);
                }
                plan.total.map(|t| std::mem::replace(&mut agent.total, t))
            }
            None => None,
        };
        if let Some(old) = old_total {
            self.untrack_total(&old);
            if let Some(agent) = self.agents[slot].as_ref() {
                let new = agent.total.clone();
                self.track_total(&new);
            }
        }
        self.track_usage(&o.framework, &o.role, &accept.used);
        let returned = plan.returned;
        // As Mesos: what the conversions produced is not implicitly declined.
        let refused = unconverted(&returned, &accept.conversions);
        self.install_filter(
            &o.framework,
            &o.role,
            &o.agent,
            refused,
            accept.refuse_seconds,
            now,
        );
        self.debug_check_agent(slot);
        Ok(Accepted {
            agent: o.agent,
            framework: o.framework,
            role: o.role,
            allocated: accept.used,
            returned,
        })
    }

    /// Resources a framework no longer uses (task finished, executor gone) return to the agent.
    pub fn recover(
        &mut self,
        agent: &AgentId,
        fw: &FrameworkId,
        role: &str,
        resources: &ResourceSet,
    ) -> Result<(), AllocatorError> {
        let slot = self.slot(agent)?;
        if resources.is_empty() {
            return Ok(());
        }
        let mismatch = || AllocatorError::RecoverExceedsAllocation {
            agent: agent.clone(),
            framework: fw.clone(),
            role: role.to_owned(),
        };
        let Some(state) = self.agents[slot].as_mut() else {
            return Err(AllocatorError::UnknownAgent(agent.clone()));
        };
        let Some(held) = state.allocated.get_mut(fw).and_then(|r| r.get_mut(role)) else {
            return Err(mismatch());
        };
        held.subtract(resources).map_err(|_| mismatch())?;
        let now_empty = held.is_empty();
        state.available.add(resources)?;
        if now_empty {
            if let Some(roles) = state.allocated.get_mut(fw) {
                roles.remove(role);
                if roles.is_empty() {
                    state.allocated.remove(fw);
                }
            }
        }
        self.untrack_usage(fw, role, resources);
        self.debug_check_agent(slot);
        Ok(())
    }

    /// Makes every later offer id at least `floor`. A master restarted on the same registry keeps
    /// its UUID, so it starts numbering offers in a fresh range (`incarnation << 32`) instead of
    /// reusing ids a framework may still hold from before the restart.
    pub fn start_offer_ids_at(&mut self, floor: u64) {
        self.next_offer = self.next_offer.max(floor);
    }

    /// Sets a role's weight (UPDATE_WEIGHTS); it applies from the next allocation.
    pub fn set_weight(&mut self, role: &str, weight: f64) -> Result<(), AllocatorError> {
        validate_role(role)?;
        if !(weight.is_finite() && weight > 0.0 && weight <= MAX_WEIGHT) {
            return Err(AllocatorError::InvalidWeight {
                role: role.to_owned(),
                weight,
                max: MAX_WEIGHT,
            });
        }
        self.check_role_capacity([role])?;
        self.role_entry(role).weight = weight;
        self.gc_role(role);
        Ok(())
    }

    /// Sets a role's quota (UPDATE_QUOTA). Outstanding offers are not touched; the master rescinds
    /// what it wants to with [`Allocator::rescind`].
    pub fn set_quota(&mut self, role: &str, quota: QuotaConfig) -> Result<(), AllocatorError> {
        validate_role(role)?;
        for (name, g) in quota.guarantees.iter() {
            if quota.limits.get(name).is_some_and(|l| g > *l) {
                return Err(AllocatorError::GuaranteeAboveLimit {
                    role: role.to_owned(),
                    resource: name.to_owned(),
                });
            }
        }
        self.check_role_capacity([role])?;
        self.role_entry(role).quota = quota;
        self.gc_role(role);
        Ok(())
    }

    // ---- helpers ----

    pub(super) fn slot(&self, id: &AgentId) -> Result<usize, AllocatorError> {
        self.agent_index
            .get(id)
            .copied()
            .ok_or_else(|| AllocatorError::UnknownAgent(id.clone()))
    }

    fn registered(&self, id: &FrameworkId) -> Result<&FrameworkState, AllocatorError> {
        self.frameworks
            .get(id)
            .filter(|f| f.registered)
            .ok_or_else(|| AllocatorError::UnknownFramework(id.clone()))
    }

    fn registered_mut(&mut self, id: &FrameworkId) -> Result<&mut FrameworkState, AllocatorError> {
        self.frameworks
            .get_mut(id)
            .filter(|f| f.registered)
            .ok_or_else(|| AllocatorError::UnknownFramework(id.clone()))
    }

    fn validate_spec(&self, id: &FrameworkId, spec: &FrameworkSpec) -> Result<(), AllocatorError> {
        for role in &spec.roles {
            validate_role(role)?;
        }
        if let Some(role) = spec.suppressed_roles.difference(&spec.roles).next() {
            return Err(AllocatorError::RoleNotSubscribed {
                framework: id.clone(),
                role: role.clone(),
            });
        }
        self.check_role_capacity(spec.roles.iter().map(String::as_str))
    }

    /// `roles`, or all subscribed roles if empty; fails on a role the framework is not in.
    fn subscribed_roles(
        &self,
        id: &FrameworkId,
        roles: &[String],
    ) -> Result<Vec<String>, AllocatorError> {
        let state = self.registered(id)?;
        if roles.is_empty() {
            return Ok(state.roles.iter().cloned().collect());
        }
        match roles.iter().find(|r| !state.roles.contains(*r)) {
            Some(role) => Err(AllocatorError::RoleNotSubscribed {
                framework: id.clone(),
                role: role.clone(),
            }),
            None => Ok(roles.to_vec()),
        }
    }

    /// Removes an outstanding offer from the books without putting its resources anywhere.
    fn take_offer(&mut self, id: OfferId) -> Option<Offer> {
        let offer = self.offers.remove(&id)?;
        if let Some(&slot) = self.agent_index.get(&offer.agent) {
            if let Some(agent) = self.agents[slot].as_mut() {
                agent.offers.remove(&id);
            }
        }
        if let Some(fw) = self.frameworks.get_mut(&offer.framework) {
            fw.offers.remove(&id);
        }
        self.untrack_usage(&offer.framework, &offer.role, &offer.resources);
        Some(offer)
    }

    /// Removes an outstanding offer and puts its resources back on the agent.
    pub(super) fn return_offer(&mut self, id: OfferId) -> Option<Offer> {
        let offer = self.take_offer(id)?;
        if let Some(&slot) = self.agent_index.get(&offer.agent) {
            if let Some(agent) = self.agents[slot].as_mut() {
                // Cannot fail: the offer was carved out of this agent's total.
                let merged = agent.available.add(&offer.resources);
                debug_assert!(merged.is_ok());
            }
        }
        Some(offer)
    }

    fn return_agent_offers(&mut self, slot: usize) -> Vec<OfferId> {
        let ids: Vec<OfferId> = match self.agents[slot].as_ref() {
            Some(agent) => agent.offers.iter().copied().collect(),
            None => Vec::new(),
        };
        for id in &ids {
            self.return_offer(*id);
        }
        self.debug_check_agent(slot);
        ids
    }

    fn return_framework_offers(&mut self, id: &FrameworkId) -> Vec<OfferId> {
        let ids: Vec<OfferId> = match self.frameworks.get(id) {
            Some(state) => state.offers.iter().copied().collect(),
            None => Vec::new(),
        };
        for offer in &ids {
            self.return_offer(*offer);
        }
        ids
    }

    /// The offer's resources after the accept's conversions, and the agent's new total if any
    /// conversion applies. Mutates nothing.
    fn converted_offer(
        &self,
        id: OfferId,
        accept: &Accept,
    ) -> Result<(ResourceSet, Option<ResourceSet>), AllocatorError> {
        let offer = self
            .offers
            .get(&id)
            .ok_or(AllocatorError::UnknownOffer(id))?;
        if accept.conversions.is_empty() {
            return Ok((offer.resources.clone(), None));
        }
        let agent = self
            .agent(&offer.agent)
            .ok_or_else(|| AllocatorError::UnknownAgent(offer.agent.clone()))?;
        let mut resources = offer.resources.clone();
        let mut total = agent.total.clone();
        for (index, c) in accept.conversions.iter().enumerate() {
            if !c
                .converted
                .items()
                .iter()
                .all(|x| x.is_allocatable_to(&offer.role))
            {
                return Err(AllocatorError::ConversionWrongRole { offer: id, index });
            }
            resources
                .subtract(&c.consumed)
                .map_err(|_| AllocatorError::ConversionNotInOffer { offer: id, index })?;
            resources.add(&c.converted)?;
            // The offer is part of the total, so this holds whenever the line above did.
            total.subtract(&c.consumed)?;
            total.add(&c.converted)?;
        }
        Ok((resources, Some(total)))
    }

    /// Computes everything an ACCEPT changes on the agent, mutating nothing.
    fn plan_accept(&self, offer: OfferId, accept: &Accept) -> Result<AcceptPlan, AllocatorError> {
        let (converted, total) = self.converted_offer(offer, accept)?;
        let returned = converted
            .checked_sub(&accept.used)
            .map_err(|_| AllocatorError::AcceptExceedsOffer { offer })?;
        if let Some(total) = &total {
            total.check_bounds()?;
            let reserved_roles = total.items().iter().filter_map(|x| x.reservation.as_ref());
            self.check_role_capacity(reserved_roles.map(|r| r.role.as_str()))?;
        }
        let o = self
            .offers
            .get(&offer)
            .ok_or(AllocatorError::UnknownOffer(offer))?;
        let slot = self.slot(&o.agent)?;
        let agent = self.agents[slot]
            .as_ref()
            .ok_or_else(|| AllocatorError::UnknownAgent(o.agent.clone()))?;
        let available = agent.available.checked_add(&returned)?;
        let mut held = agent
            .allocated
            .get(&o.framework)
            .and_then(|r| r.get(&o.role))
            .cloned()
            .unwrap_or_default();
        held.add(&accept.used)?;
        Ok(AcceptPlan {
            slot,
            available,
            held,
            total,
            returned,
        })
    }

    fn install_filter(
        &mut self,
        fw: &FrameworkId,
        role: &str,
        agent: &AgentId,
        refused: ResourceSet,
        refuse_seconds: Option<f64>,
        now: Duration,
    ) {
        if refused.is_empty() {
            return;
        }
        let Some(timeout) = refuse_timeout(refuse_seconds, self.config.allocation_interval) else {
            return;
        };
        if let Some(state) = self.frameworks.get_mut(fw) {
            let filter = OfferFilter {
                refused,
                expires_at: now.saturating_add(timeout),
            };
            state.add_filter(role, agent, filter);
        }
    }
}

/// What an ACCEPT will change on the agent (see `plan_accept`).
struct AcceptPlan {
    slot: usize,
    available: ResourceSet,
    held: ResourceSet,
    total: Option<ResourceSet>,
    returned: ResourceSet,
}

/// Mesos's `refuse_seconds` rules: absent, negative or NaN means 5 s, more than 365 days means
/// 365 days, zero means no filter, and a filter lasts at least one allocation interval.
pub(super) fn refuse_timeout(refuse_seconds: Option<f64>, interval: Duration) -> Option<Duration> {
    let secs = match refuse_seconds {
        Some(s) if s.is_nan() || s < 0.0 => DEFAULT_REFUSE_SECONDS,
        Some(s) => s.min(MAX_REFUSE_SECONDS),
        None => DEFAULT_REFUSE_SECONDS,
    };
    if secs == 0.0 {
        return None;
    }
    Some(Duration::from_secs_f64(secs).max(interval))
}
