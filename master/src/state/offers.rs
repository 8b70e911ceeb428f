//! Offers: allocation cycles turned into OFFERS events, and the calls and events that end
//! offers (DECLINE, RESCIND on agent loss, offer timeout or a framework's role change), plus
//! REVIVE and SUPPRESS.
//!
//! Offer ids are `<masterUUID>-O<n>`, `n` the allocator's offer number. What a framework sees
//! follows `Master::offer`: resources carry `allocation_info` and the offer its role, except for
//! frameworks without MULTI_ROLE, for which both are stripped; frameworks without
//! RESERVATION_REFINEMENT get the pre-refinement format (`"role":"*"`, `reservation`).

use std::collections::BTreeMap;
use std::time::Duration;

use mesoblk_proto::mesos::v1::framework_info::capability::Type as Capability;
use mesoblk_proto::mesos::v1::resource::AllocationInfo;
use mesoblk_proto::mesos::v1::scheduler::{call, event, Event};
use mesoblk_proto::mesos::v1::{
    Address, AgentId, ExecutorId, FrameworkId, Offer, OfferId as ProtoOfferId, Url,
};
use tracing::{debug, info, warn};

use super::{convert, typed_event, validation, Master};
use crate::allocator::{self, AgentId as AllocAgentId, FrameworkId as AllocFrameworkId, OfferId};

impl Master {
    /// The id frameworks see for an allocator offer.
    pub fn offer_id(&self, id: OfferId) -> String {
        format!("{}-O{}", self.info.id, id.0)
    }

    /// The allocator offer an id names, if it has this master's form.
    pub fn parse_offer_id(&self, id: &str) -> Option<OfferId> {
        let n = id.strip_prefix(&self.info.id)?.strip_prefix("-O")?;
        if n.starts_with('+') {
            return None;
        }
        n.parse().ok().map(OfferId)
    }

    /// The framework an outstanding offer was sent to.
    pub fn offer_owner(&self, id: OfferId) -> Option<&str> {
        self.offer_owners.get(&id.0).map(String::as_str)
    }

    /// A batch allocation over every active agent.
    pub(super) fn allocate_all(&mut self, now: Duration) {
        let offers = self.timed_allocation(now, |a| a.allocate(now));
        self.send_offers(offers);
    }

    /// An allocation over some agents (after an event freed resources on them).
    pub(super) fn allocate_agents(&mut self, agents: &[String], now: Duration) {
        let ids: Vec<AllocAgentId> = agents.iter().map(|a| AllocAgentId(a.clone())).collect();
        let offers = self.timed_allocation(now, |a| a.allocate_agents(&ids, now));
        self.send_offers(offers);
    }

    /// Runs an allocation, counting it (`allocator/mesos/allocation_runs`) and timing it
    /// (`allocator/mesos/allocation_run_ms`).
    fn timed_allocation(
        &mut self,
        now: Duration,
        run: impl FnOnce(&mut allocator::Allocator) -> Vec<allocator::Offer>,
    ) -> Vec<allocator::Offer> {
        let started = std::time::Instant::now();
        let offers = run(&mut self.allocator);
        self.allocation_run.record(now, started.elapsed());
        self.count("allocator/mesos/allocation_runs");
        offers
    }

    /// Turns allocator offers into OFFERS events, one per framework.
    fn send_offers(&mut self, offers: Vec<allocator::Offer>) {
        if offers.is_empty() {
            return;
        }
        let mut by_framework: BTreeMap<String, Vec<Offer>> = BTreeMap::new();
        for offer in offers {
            let framework = offer.framework.0.clone();
            match self.offer_proto(&offer) {
                Some(proto) if self.is_connected(&framework) => {
                    self.offer_owners.insert(offer.id.0, framework.clone());
                    by_framework.entry(framework).or_default().push(proto);
                }
                _ => {
                    debug!(offer = %offer.id, "returning an offer nobody can receive");
                    let _ = self.allocator.rescind(offer.id);
                }
            }
        }
        for (framework, offers) in by_framework {
            let ids: Vec<&str> = offers.iter().map(|o| o.id.value.as_str()).collect();
            info!(framework = %framework, offers = ?ids, "sending offers");
            self.count_n("master/offers_sent", offers.len());
            let event = Event {
                offers: Some(event::Offers { offers }),
                ..typed_event(event::Type::Offers)
            };
            self.send(&framework, event);
        }
    }

    fn count_n(&mut self, name: &'static str, n: usize) {
        *self.counters.entry(name).or_insert(0) += n as u64;
    }

    /// The Mesos `Offer` for an allocator offer, in the format its framework understands.
    pub fn offer_proto(&self, offer: &allocator::Offer) -> Option<Offer> {
        let agent = self.agents.get(&offer.agent.0)?;
        let framework = self.frameworks.get(&offer.framework.0)?;
        let mut resources = convert::to_protos(&offer.resources);
        convert::allocate(&mut resources, &offer.role);
        let executor_ids: Vec<ExecutorId> = agent
            .executors
            .get(&offer.framework.0)
            .map(|e| {
                e.keys()
                    .map(|id| ExecutorId { value: id.clone() })
                    .collect()
            })
            .unwrap_or_default();
        let ip = agent
            .address
            .0
            .parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| ip.to_string());
        let mut proto = Offer {
            id: ProtoOfferId {
                value: self.offer_id(offer.id),
            },
            framework_id: FrameworkId {
                value: offer.framework.0.clone(),
            },
            agent_id: AgentId {
                value: offer.agent.0.clone(),
            },
            hostname: agent.info.hostname.clone(),
            url: Some(Url {
                scheme: "http".into(),
                address: Address {
                    hostname: Some(agent.info.hostname.clone()),
                    ip,
                    port: i32::from(agent.address.1),
                },
                path: Some("/slave(1)".into()),
                query: Vec::new(),
                fragment: None,
            }),
            domain: agent.info.domain.clone(),
            resources,
            attributes: agent.info.attributes.clone(),
            executor_ids,
            unavailability: None,
            allocation_info: Some(AllocationInfo {
                role: Some(offer.role.clone()),
            }),
        };
        if !validation::has_capability(&framework.info, Capability::MultiRole) {
            proto.allocation_info = None;
            for resource in &mut proto.resources {
                resource.allocation_info = None;
            }
        }
        if !validation::has_capability(&framework.info, Capability::ReservationRefinement) {
            for resource in &mut proto.resources {
                if !convert::downgrade(resource) {
                    warn!(offer = %proto.id.value, "a refined reservation offered to a framework without RESERVATION_REFINEMENT");
                }
            }
        }
        Some(proto)
    }

    /// Sends RESCIND for offers the allocator took back, to whoever they were sent to.
    pub(super) fn rescind_offers(&mut self, ids: &[OfferId]) {
        for id in ids {
            if let Some(framework) = self.offer_owners.remove(&id.0) {
                let event = Event {
                    rescind: Some(event::Rescind {
                        offer_id: ProtoOfferId {
                            value: self.offer_id(*id),
                        },
                    }),
                    ..typed_event(event::Type::Rescind)
                };
                self.count("master/offers_rescinded");
                self.send(&framework, event);
            }
        }
    }

    /// RESCIND to one framework (UPDATE_FRAMEWORK dropped roles).
    pub(super) fn send_rescinds(&mut self, _framework_id: &str, ids: &[OfferId]) {
        self.rescind_offers(ids);
    }

    /// Forgets offers that ended without a RESCIND (accepted, declined, or their framework is
    /// gone).
    pub(super) fn forget_offers(&mut self, ids: &[OfferId]) {
        for id in ids {
            self.offer_owners.remove(&id.0);
        }
    }

    /// `--offer_timeout`: expired offers are rescinded.
    pub(super) fn expire_offers(&mut self, now: Duration) {
        let expired = self.allocator.expire_offers(now);
        if !expired.is_empty() {
            info!(
                offers = expired.len(),
                "rescinding offers past --offer_timeout"
            );
            self.rescind_offers(&expired);
        }
    }

    /// The framework's outstanding offer named `id`, if any.
    pub(super) fn own_offer(&self, framework_id: &str, id: &ProtoOfferId) -> Option<OfferId> {
        let offer = self.parse_offer_id(&id.value)?;
        (self.offer_owner(offer) == Some(framework_id)).then_some(offer)
    }

    /// DECLINE: each offer's resources go back to the allocator, filtered from this framework
    /// for `refuse_seconds` (default 5). Offers that are no longer valid are ignored, as Mesos
    /// does.
    pub fn decline(&mut self, framework_id: &str, decline: &call::Decline) {
        let now = self.now();
        let refuse = decline.filters.as_ref().and_then(|f| f.refuse_seconds);
        for id in &decline.offer_ids {
            let Some(offer) = self.own_offer(framework_id, id) else {
                info!(offer = %id.value, "ignoring decline of an offer that is no longer valid");
                continue;
            };
            self.forget_offers(&[offer]);
            if let Err(e) = self.allocator.decline(offer, refuse, now) {
                warn!(offer = %id.value, "declining: {e}");
            }
            self.count("master/offers_declined");
        }
    }

    /// REVIVE: clears the framework's filters and suppression for `roles` (all its roles when
    /// empty) and allocates.
    pub fn revive(&mut self, framework_id: &str, revive: Option<&call::Revive>) {
        let roles: Vec<String> = revive.map(|r| r.roles.clone()).unwrap_or_default();
        if let Err(message) = self.check_call_roles(framework_id, &roles) {
            warn!(framework = %framework_id, "dropping REVIVE: {message}");
            return;
        }
        if let Some(framework) = self.frameworks.get_mut(framework_id) {
            if roles.is_empty() {
                framework.suppressed_roles.clear();
            } else {
                for role in &roles {
                    framework.suppressed_roles.remove(role);
                }
            }
        }
        if let Err(e) = self
            .allocator
            .revive(&AllocFrameworkId(framework_id.to_owned()), &roles)
        {
            warn!(framework = %framework_id, "REVIVE: {e}");
        }
        debug!(framework = %framework_id, ?roles, "REVIVE");
        let now = self.now();
        self.allocate_all(now);
    }

    /// SUPPRESS: no offers for `roles` (all its roles when empty) until REVIVE.
    pub fn suppress(&mut self, framework_id: &str, suppress: Option<&call::Suppress>) {
        let roles: Vec<String> = suppress.map(|s| s.roles.clone()).unwrap_or_default();
        if let Err(message) = self.check_call_roles(framework_id, &roles) {
            warn!(framework = %framework_id, "dropping SUPPRESS: {message}");
            return;
        }
        if let Some(framework) = self.frameworks.get_mut(framework_id) {
            let suppressed: Vec<String> = if roles.is_empty() {
                validation::framework_roles(&framework.info)
                    .into_iter()
                    .collect()
            } else {
                roles.clone()
            };
            framework.suppressed_roles.extend(suppressed);
        }
        if let Err(e) = self
            .allocator
            .suppress(&AllocFrameworkId(framework_id.to_owned()), &roles)
        {
            warn!(framework = %framework_id, "SUPPRESS: {e}");
        }
        debug!(framework = %framework_id, ?roles, "SUPPRESS");
    }

    /// Roles named in REVIVE/SUPPRESS must be the framework's (Mesos drops the call otherwise).
    fn check_call_roles(&self, framework_id: &str, roles: &[String]) -> Result<(), String> {
        let Some(framework) = self.frameworks.get(framework_id) else {
            return Err("unknown framework".into());
        };
        let subscribed = validation::framework_roles(&framework.info);
        match roles.iter().find(|r| !subscribed.contains(*r)) {
            Some(role) => Err(format!(
                "role '{role}' is not one of the framework's roles {}",
                validation::stringify_set(&subscribed)
            )),
            None => Ok(()),
        }
    }
}
