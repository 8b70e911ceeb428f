//! Events the master needs beyond the batch cycle: merging the offers one ACCEPT names into one
//! (Mesos accepts several offers of one agent and role at once), and converting allocated
//! resources when a non-speculative operation (CREATE_DISK, DESTROY_DISK) finishes.
//!
//! Both validate first and mutate only when nothing can fail, like the other events, and keep
//! the invariant `total == available + Σ offered + Σ allocated` on every agent.

use super::resources::{ResourceSet, ResourceValue};
use super::{AgentId, Allocator, AllocatorError, Conversion, FrameworkId, OfferId};

/// `returned` without what `conversions` produced (as far as it holds it): Mesos recovers
/// speculatively converted resources without the ACCEPT's filter, so only the rest is refused.
pub(super) fn unconverted(returned: &ResourceSet, conversions: &[Conversion]) -> ResourceSet {
    let mut refused = returned.clone();
    for conversion in conversions {
        for item in conversion.converted.items() {
            let mut take = item.clone();
            if let (ResourceValue::Scalar(want), true) = (&item.value, item.is_divisible()) {
                // Take what is left of it, up to the converted amount.
                let held = refused
                    .items()
                    .iter()
                    .filter(|x| {
                        x.name == item.name
                            && x.reservation == item.reservation
                            && x.disk == item.disk
                            && x.provider == item.provider
                            && x.extra == item.extra
                    })
                    .find_map(|x| x.scalar_value())
                    .unwrap_or_default();
                take.value = ResourceValue::Scalar((*want).min(held));
            }
            let one = ResourceSet::from_items([take]).unwrap_or_default();
            if refused.contains(&one) {
                let _ = refused.subtract(&one);
            }
        }
    }
    refused
}

impl Allocator {
    /// Merges outstanding offers of one framework, agent and role into the first of `ids`, which
    /// is returned. Fails (changing nothing) if an offer is unknown, repeated, or differs in
    /// framework, agent or role.
    pub fn merge_offers(&mut self, ids: &[OfferId]) -> Result<OfferId, AllocatorError> {
        let Some(&first) = ids.first() else {
            return Err(AllocatorError::UnknownOffer(OfferId(0)));
        };
        let head = self
            .offers
            .get(&first)
            .ok_or(AllocatorError::UnknownOffer(first))?;
        let mut merged = head.resources.clone();
        let mut seen = std::collections::BTreeSet::from([first]);
        for &id in &ids[1..] {
            let offer = self
                .offers
                .get(&id)
                .ok_or(AllocatorError::UnknownOffer(id))?;
            if !seen.insert(id)
                || offer.framework != head.framework
                || offer.agent != head.agent
                || offer.role != head.role
            {
                return Err(AllocatorError::UnknownOffer(id));
            }
            merged.add(&offer.resources)?;
        }
        let agent = head.agent.clone();
        let framework = head.framework.clone();
        for id in &ids[1..] {
            self.offers.remove(id);
            if let Some(slot) = self.agent_index.get(&agent).copied() {
                if let Some(state) = self.agents[slot].as_mut() {
                    state.offers.remove(id);
                }
            }
            if let Some(state) = self.frameworks.get_mut(&framework) {
                state.offers.remove(id);
            }
        }
        if let Some(offer) = self.offers.get_mut(&first) {
            offer.resources = merged;
        }
        if let Some(slot) = self.agent_index.get(&agent).copied() {
            self.debug_check_agent(slot);
        }
        Ok(first)
    }

    /// A non-speculative operation finished: `consumed`, allocated to the framework in `role`,
    /// becomes `converted`, which returns to the agent's available pool (and its total).
    pub fn convert_allocation(
        &mut self,
        agent: &AgentId,
        fw: &FrameworkId,
        role: &str,
        consumed: &ResourceSet,
        converted: &ResourceSet,
    ) -> Result<(), AllocatorError> {
        let slot = self.slot(agent)?;
        let mismatch = || AllocatorError::RecoverExceedsAllocation {
            agent: agent.clone(),
            framework: fw.clone(),
            role: role.to_owned(),
        };
        let state = self.agents[slot]
            .as_ref()
            .ok_or_else(|| AllocatorError::UnknownAgent(agent.clone()))?;
        let held = state
            .allocated
            .get(fw)
            .and_then(|r| r.get(role))
            .ok_or_else(mismatch)?;
        let left = held.checked_sub(consumed).map_err(|_| mismatch())?;
        let total = state.total.checked_sub(consumed)?.checked_add(converted)?;
        total.check_bounds()?;
        let available = state.available.checked_add(converted)?;
        let reserved_roles = converted
            .items()
            .iter()
            .filter_map(|x| x.reservation.as_ref());
        self.check_role_capacity(reserved_roles.map(|r| r.role.as_str()))?;

        let Some(state) = self.agents[slot].as_mut() else {
            return Err(AllocatorError::UnknownAgent(agent.clone()));
        };
        state.available = available;
        if left.is_empty() {
            if let Some(roles) = state.allocated.get_mut(fw) {
                roles.remove(role);
                if roles.is_empty() {
                    state.allocated.remove(fw);
                }
            }
        } else if let Some(slot_set) = state.allocated.get_mut(fw).and_then(|r| r.get_mut(role)) {
            *slot_set = left;
        }
        let old = std::mem::replace(&mut state.total, total.clone());
        self.untrack_usage(fw, role, consumed);
        self.untrack_total(&old);
        self.track_total(&total);
        self.debug_check_agent(slot);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{aid, cpus_mem, fid, secs, spec};
    use super::super::*;

    fn pool(mb: u64) -> ResourceSet {
        ResourceSet::from_items([ResourceItem::scalar_milli("disk", Milli::from_units(mb))
            .with_disk(DiskIdentity::raw_pool("fast"))
            .with_provider("rp")])
        .unwrap()
    }

    #[test]
    fn offers_of_one_agent_and_role_merge() {
        let mut a = Allocator::new(AllocatorConfig::default());
        a.add_agent(aid("a"), cpus_mem(4.0, 4096.0), vec![])
            .unwrap();
        a.add_framework(fid("f"), spec(&["r"])).unwrap();
        let first = a.allocate(secs(0));
        assert_eq!(first.len(), 1);
        // Decline half by accepting part, then get a second offer for the rest.
        let accepted = a
            .accept(
                first[0].id,
                Accept {
                    used: cpus_mem(2.0, 2048.0),
                    refuse_seconds: Some(0.0),
                    ..Accept::default()
                },
                secs(1),
            )
            .unwrap();
        assert_eq!(accepted.returned, cpus_mem(2.0, 2048.0));
        a.recover(&aid("a"), &fid("f"), "r", &cpus_mem(2.0, 2048.0))
            .unwrap();
        let second = a.allocate(secs(2));
        assert_eq!(second.len(), 1);
        assert!(
            a.merge_offers(&[second[0].id, second[0].id]).is_err(),
            "repeats refused"
        );
        assert_eq!(a.merge_offers(&[second[0].id]).unwrap(), second[0].id);
        a.check_invariants().unwrap();
    }

    #[test]
    fn converted_resources_are_not_refused_with_the_rest() {
        let mut a = Allocator::new(AllocatorConfig::default());
        a.add_agent(aid("a"), cpus_mem(4.0, 4096.0), vec![])
            .unwrap();
        a.add_framework(fid("f"), spec(&["r"])).unwrap();
        let offer = a.allocate(secs(0)).remove(0);
        let unreserved =
            ResourceSet::from_items([ResourceItem::scalar("cpus", 1.0).unwrap()]).unwrap();
        let reserved = ResourceSet::from_items([ResourceItem::scalar("cpus", 1.0)
            .unwrap()
            .reserved("r", ReservationKind::Dynamic)])
        .unwrap();
        a.accept(
            offer.id,
            Accept {
                conversions: vec![Conversion {
                    consumed: unreserved,
                    converted: reserved.clone(),
                }],
                used: ResourceSet::new(),
                refuse_seconds: None,
            },
            secs(0),
        )
        .unwrap();
        // Refused: the unreserved rest only, so the whole lot (with the reservation) comes back.
        let again = a.allocate(secs(1));
        assert_eq!(again.len(), 1);
        assert!(again[0].resources.contains(&reserved));
        a.check_invariants().unwrap();
    }

    #[test]
    fn a_finished_disk_operation_converts_the_allocation() {
        let mut a = Allocator::new(AllocatorConfig::default());
        let mut total = cpus_mem(1.0, 1024.0);
        total.add(&pool(1000)).unwrap();
        a.add_agent(aid("a"), total, vec![]).unwrap();
        a.add_framework(fid("f"), spec(&["r"])).unwrap();
        let offer = a.allocate(secs(0)).remove(0);
        a.accept(
            offer.id,
            Accept {
                used: pool(256),
                refuse_seconds: Some(0.0),
                ..Accept::default()
            },
            secs(0),
        )
        .unwrap();
        let block =
            ResourceSet::from_items([ResourceItem::scalar_milli("disk", Milli::from_units(256))
                .with_disk(DiskIdentity::block("vol-1"))
                .with_provider("rp")])
            .unwrap();
        assert!(a
            .convert_allocation(&aid("a"), &fid("f"), "r", &pool(300), &block)
            .is_err());
        a.convert_allocation(&aid("a"), &fid("f"), "r", &pool(256), &block)
            .unwrap();
        a.check_invariants().unwrap();
        let total = a.agent_total(&aid("a")).unwrap();
        assert!(total.contains(&block));
        assert!(total.contains(&pool(744)) && !total.contains(&pool(745)));
        assert!(a.agent_available(&aid("a")).unwrap().contains(&block));
        assert!(a.allocation(&aid("a"), &fid("f"), "r").is_none());
    }
}
