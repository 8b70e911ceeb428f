//! The master's resource allocator: weighted hierarchical DRF with quota guarantees and limits,
//! offer filters, SUPPRESS/REVIVE and offer timeouts, in the manner of Mesos's
//! `HierarchicalAllocatorProcess`.
//!
//! # Contract
//! [`Allocator`] is pure and deterministic: no I/O, no clock, no threads. The master owns one,
//! feeds it events (agents, frameworks, accepts, declines, recovered resources, weights,
//! quotas), and calls [`Allocator::allocate`] on its batch timer (`--allocation_interval`, 1 s)
//! and [`Allocator::allocate_agents`] after events that free resources. Every method takes the
//! current time as `now: Duration` since an epoch the master picks (for example its start); the
//! same events, times and [`AllocatorConfig::seed`] always produce the same offers. Invalid
//! events return an [`AllocatorError`] and leave the state untouched; nothing here panics on
//! input from the master.
//!
//! # Allocation (see [`Allocator::allocate`])
//! Active agents are visited in an order shuffled by the seeded generator. **Stage 1** serves
//! roles whose quota guarantee is not yet met, lowest weighted share first; **stage 2** (agents
//! reshuffled) shares whatever is left: for each agent, the role with the lowest weighted
//! dominant share, then the framework in it with the lowest dominant share, is offered
//! everything on the agent it may take. A *dominant share* is the largest, over scalar names,
//! of offered-plus-allocated divided by the cluster total; a role's share is divided by its
//! weight (default 1.0). Offered resources count as allocated, as in Mesos.
//!
//! # Quota and headroom
//! A role's *consumed quota* is, per scalar name, its reservations (allocated or not) plus its
//! offered-or-allocated unreserved resources. *Required headroom* is the sum over roles of
//! `max(guarantee - consumed, 0)`; *available headroom* is the unreserved resources neither
//! offered nor allocated anywhere. The headroom rule: unreserved scalars that do not go towards
//! the receiving role's own unmet guarantee are offered only up to the surplus
//! `available - required` (divisible items are chopped, indivisible ones held back), so the
//! unmet guarantees of all roles can still be met later. In stage 1 a role gets unreserved
//! scalars up to its unmet guarantee unconditionally, plus its reservations and non-scalars, plus
//! other scalars within its limit and the surplus (Mesos lets roles burst above the guarantee
//! here to reduce fragmentation). Limits chop the unreserved scalars of an offer so that
//! consumed quota never exceeds them; a role's own reservations are always offered to it (they
//! are already counted as consumed).
//!
//! # Filters
//! DECLINE and the unused part of an ACCEPT install a filter for (framework, role, agent) holding
//! the refused resources for `refuse_seconds` (default 5 s; negative or NaN means the default,
//! more than 365 days means 365 days, zero means none, and a filter lasts at least one allocation
//! interval). As in Mesos, an offer is filtered only if the refused resources *contain* it: once
//! more resources are free on that agent, the whole lot is offered again.
//!
//! # Invariants (asserted in debug builds, checked by [`Allocator::check_invariants`])
//! - For every agent, `total == available + Σ offered + Σ allocated`: no resource is offered
//!   twice, and none is lost.
//! - No offer is made while one of the framework's filters for that role and agent covers it.
//! - An allocation cycle never takes a role's consumed quota above its limit.
//! - Per-framework, per-role and cluster accounting equal the sums over agents.
//!
//! # Performance
//! A cycle builds the DRF order once (`O(F log F)`) and then costs about
//! `O(agents × (items + log F))`, plus a step for each framework a filter turns away. Agents with
//! nothing allocatable are skipped at once, and item identities are reference-counted, so a
//! cycle does not clone strings per comparison. [`Allocator::counts`] exposes sizes for a bench.
//!
//! # Differences from Mesos
//! Roles are flat: `a/b` is a role of its own and its usage does not count towards `a`. SET,
//! TEXT, revocable and shared resources are not modelled. Framework capabilities (MULTI_ROLE,
//! GPU, region-awareness) and offer constraints are the master's to apply before events reach
//! here. Ties between equal shares are broken by name rather than by allocation count. Removing
//! or deactivating an agent or framework returns the affected offers to the caller instead of
//! waiting for the master to recover them.

mod conversions;
mod cycle;
mod error;
mod events;
mod invariants;
pub mod resources;
mod rng;
mod state;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::Duration;

pub use error::AllocatorError;
pub use invariants::InvariantViolation;
pub use resources::{
    DiskIdentity, DiskSourceKind, Milli, Quantities, RangeSet, Reservation, ReservationKind,
    ResourceError, ResourceItem, ResourceSet, ResourceValue,
};

use rng::SplitMix64;
use state::{AgentState, FrameworkState, RoleState};

/// The largest number of agents the allocator tracks.
pub const MAX_AGENTS: usize = 100_000;
/// The largest number of frameworks (including frameworks only known from agents' reports).
pub const MAX_FRAMEWORKS: usize = 10_000;
/// The largest number of roles with state (weights, quotas, reservations, subscribers, usage).
pub const MAX_ROLES: usize = 10_000;
/// The largest number of outstanding offers; a cycle stops offering when it is reached.
pub const MAX_OFFERS: usize = 1_000_000;
/// The largest number of live filters per (framework, role, agent); the oldest-expiring goes first.
pub const MAX_FILTERS_PER_AGENT: usize = 16;
/// Mesos's `Filters.refuse_seconds` default.
pub const DEFAULT_REFUSE_SECONDS: f64 = 5.0;
/// Mesos's cap on `refuse_seconds`: 365 days.
pub const MAX_REFUSE_SECONDS: f64 = 365.0 * 24.0 * 3600.0;
/// The largest role weight accepted.
pub const MAX_WEIGHT: f64 = 1e9;
/// The default role weight.
pub const DEFAULT_WEIGHT: f64 = 1.0;

// Cluster-wide sums of per-agent quantities must not overflow a u64.
const _: () =
    assert!((resources::MAX_AGENT_SCALAR_MILLI as u128) * (MAX_AGENTS as u128) <= u64::MAX as u128);
const _: () = assert!(DEFAULT_REFUSE_SECONDS > 0.0 && DEFAULT_REFUSE_SECONDS <= MAX_REFUSE_SECONDS);
const _: () = assert!(DEFAULT_WEIGHT > 0.0 && DEFAULT_WEIGHT <= MAX_WEIGHT);
const _: () = assert!(MAX_OFFERS >= MAX_AGENTS);

/// An agent id (Mesos `AgentID.value`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AgentId(pub String);

/// A framework id (Mesos `FrameworkID.value`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FrameworkId(pub String);

/// An offer id from the allocator's counter, shown as `O<n>`; the master prefixes its own UUID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OfferId(pub u64);

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for FrameworkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for OfferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "O{}", self.0)
    }
}

/// Static settings, mirroring the Mesos master flags that shape allocation.
#[derive(Clone, Debug)]
pub struct AllocatorConfig {
    /// `--min_allocatable_resources`: an offer must contain at least one of these quantity sets.
    /// Empty means any non-empty offer is allocatable. Default `cpus:0.01 | mem:32`, as Mesos.
    pub min_allocatable: Vec<Quantities>,
    /// `--allocation_interval`: filters last at least this long (Mesos MESOS-4302).
    pub allocation_interval: Duration,
    /// `--offer_timeout`: offers older than this are returned by [`Allocator::expire_offers`].
    pub offer_timeout: Option<Duration>,
    /// Seed of the agent shuffle.
    pub seed: u64,
}

impl QuotaConfig {
    /// Builds a quota from `(name, units)` pairs for guarantees and limits.
    pub fn from_units(
        guarantees: &[(&str, f64)],
        limits: &[(&str, f64)],
    ) -> Result<QuotaConfig, ResourceError> {
        let mut out = QuotaConfig {
            guarantees: Quantities::from_units(guarantees)?,
            ..QuotaConfig::default()
        };
        for &(name, value) in limits {
            out.limits
                .insert(name.to_owned(), Milli::from_f64(name, value)?);
        }
        Ok(out)
    }
}

impl Default for AllocatorConfig {
    fn default() -> AllocatorConfig {
        let mut cpus = Quantities::new();
        cpus.add("cpus", Milli(10));
        let mut mem = Quantities::new();
        mem.add("mem", Milli::from_units(32));
        AllocatorConfig {
            min_allocatable: vec![cpus, mem],
            allocation_interval: Duration::from_secs(1),
            offer_timeout: None,
            seed: 0,
        }
    }
}

/// A framework as the allocator sees it (from `FrameworkInfo` and the subscription).
#[derive(Clone, Debug, Default)]
pub struct FrameworkSpec {
    /// The roles the framework subscribes to (`FrameworkInfo.roles`).
    pub roles: BTreeSet<String>,
    /// Roles for which offers are suppressed (`suppressed_roles` / SUPPRESS); a subset of `roles`.
    pub suppressed_roles: BTreeSet<String>,
    /// Whether the framework is connected and may receive offers.
    pub active: bool,
    /// Per-role `offer_filters.min_allocatable_resources`, overriding the global setting.
    pub min_allocatable: BTreeMap<String, Vec<Quantities>>,
}

/// A role's quota: scalar guarantees and limits (Mesos quota is scalar-only).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QuotaConfig {
    /// Resources held back for the role cluster-wide until it consumes them.
    pub guarantees: Quantities,
    /// Caps on consumed quota, per scalar name; an absent name is unlimited and a zero limit
    /// allows nothing (so this is a map, not [`Quantities`], which drops zeros).
    pub limits: BTreeMap<String, Milli>,
}

/// Resources a framework already uses on an agent (reported when an agent re-registers).
#[derive(Clone, Debug)]
pub struct Allocation {
    /// The framework.
    pub framework: FrameworkId,
    /// The allocation role.
    pub role: String,
    /// The resources.
    pub resources: ResourceSet,
}

/// An offer: resources of one agent for one framework in one role.
#[derive(Clone, Debug, PartialEq)]
pub struct Offer {
    /// The id.
    pub id: OfferId,
    /// The framework offered to.
    pub framework: FrameworkId,
    /// The role the resources are allocated to (`AllocationInfo.role`).
    pub role: String,
    /// The agent the resources are on.
    pub agent: AgentId,
    /// The resources.
    pub resources: ResourceSet,
    /// When the offer was made.
    pub created_at: Duration,
}

/// A speculative operation's effect on offered resources (RESERVE, UNRESERVE, CREATE, DESTROY):
/// `consumed` leaves the offer and the agent total, `converted` takes its place.
#[derive(Clone, Debug, Default)]
pub struct Conversion {
    /// Resources the operation consumes.
    pub consumed: ResourceSet,
    /// Resources it produces.
    pub converted: ResourceSet,
}

/// An ACCEPT as the allocator needs it.
#[derive(Clone, Debug, Default)]
pub struct Accept {
    /// Conversions applied to the offer, in order, before `used` is taken.
    pub conversions: Vec<Conversion>,
    /// Resources the launched tasks, executors and non-speculative operations use.
    pub used: ResourceSet,
    /// `Filters.refuse_seconds` for the unused rest (`None`: the default, 5 s).
    pub refuse_seconds: Option<f64>,
}

/// What an ACCEPT did.
#[derive(Clone, Debug, PartialEq)]
pub struct Accepted {
    /// The agent.
    pub agent: AgentId,
    /// The framework.
    pub framework: FrameworkId,
    /// The allocation role.
    pub role: String,
    /// Resources now allocated to the framework (the converted `used`).
    pub allocated: ResourceSet,
    /// Resources returned to the agent's pool (and filtered if `refuse_seconds` is non-zero).
    pub returned: ResourceSet,
}

/// Sizes of the allocator's state, for metrics and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocatorCounts {
    /// Registered agents.
    pub agents: usize,
    /// Active agents.
    pub active_agents: usize,
    /// Frameworks (including those only known from agents' reports).
    pub frameworks: usize,
    /// Roles with state.
    pub roles: usize,
    /// Outstanding offers.
    pub offers: usize,
    /// Live offer filters.
    pub filters: usize,
}

/// The allocator. See the module documentation.
#[derive(Debug)]
pub struct Allocator {
    config: AllocatorConfig,
    rng: SplitMix64,
    /// Agent slots; `None` is a free slot. Slot order is the pre-shuffle visiting order.
    agents: Vec<Option<AgentState>>,
    free_slots: Vec<usize>,
    agent_index: HashMap<AgentId, usize>,
    frameworks: HashMap<FrameworkId, FrameworkState>,
    roles: BTreeMap<String, RoleState>,
    offers: BTreeMap<OfferId, Offer>,
    next_offer: u64,
    /// Σ of every agent's total scalar quantities (the DRF denominator).
    total: Quantities,
}

impl Allocator {
    /// An empty allocator.
    pub fn new(config: AllocatorConfig) -> Allocator {
        Allocator {
            rng: SplitMix64::new(config.seed),
            config,
            agents: Vec::new(),
            free_slots: Vec::new(),
            agent_index: HashMap::new(),
            frameworks: HashMap::new(),
            roles: BTreeMap::new(),
            offers: BTreeMap::new(),
            next_offer: 1,
            total: Quantities::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &AllocatorConfig {
        &self.config
    }

    /// An outstanding offer.
    pub fn offer(&self, id: OfferId) -> Option<&Offer> {
        self.offers.get(&id)
    }

    /// All outstanding offers, by id.
    pub fn offers(&self) -> impl Iterator<Item = &Offer> + '_ {
        self.offers.values()
    }

    /// Ids of registered agents, in slot order.
    pub fn agent_ids(&self) -> impl Iterator<Item = &AgentId> + '_ {
        self.agents.iter().flatten().map(|a| &a.id)
    }

    /// An agent's total resources.
    pub fn agent_total(&self, agent: &AgentId) -> Option<&ResourceSet> {
        self.agent(agent).map(|a| &a.total)
    }

    /// An agent's resources that are neither offered nor allocated.
    pub fn agent_available(&self, agent: &AgentId) -> Option<&ResourceSet> {
        self.agent(agent).map(|a| &a.available)
    }

    /// What a framework is allocated (not merely offered) on an agent in a role.
    pub fn allocation(
        &self,
        agent: &AgentId,
        fw: &FrameworkId,
        role: &str,
    ) -> Option<&ResourceSet> {
        self.agent(agent)?.allocated.get(fw)?.get(role)
    }

    /// Whether an agent is active (offers are made only from active agents).
    pub fn agent_active(&self, agent: &AgentId) -> Option<bool> {
        self.agent(agent).map(|a| a.active)
    }

    /// Σ of all agents' scalar totals.
    pub fn cluster_total(&self) -> &Quantities {
        &self.total
    }

    /// A role's weight.
    pub fn weight(&self, role: &str) -> f64 {
        self.roles.get(role).map_or(DEFAULT_WEIGHT, |r| r.weight)
    }

    /// A role's quota (default: no guarantees, no limits).
    pub fn quota(&self, role: &str) -> QuotaConfig {
        self.roles
            .get(role)
            .map(|r| r.quota.clone())
            .unwrap_or_default()
    }

    /// A role's offered-or-allocated scalar quantities (what its DRF share is computed from).
    pub fn role_offered_or_allocated(&self, role: &str) -> Quantities {
        self.roles
            .get(role)
            .map(|r| r.offered_or_allocated.clone())
            .unwrap_or_default()
    }

    /// A role's consumed quota: reservations plus offered-or-allocated unreserved resources.
    pub fn role_consumed_quota(&self, role: &str) -> Quantities {
        self.roles
            .get(role)
            .map(RoleState::consumed_quota)
            .unwrap_or_default()
    }

    /// A role's weighted dominant share (0 for unknown roles or an empty cluster).
    pub fn role_share(&self, role: &str) -> f64 {
        self.roles.get(role).map_or(0.0, |r| {
            state::dominant_share(&r.offered_or_allocated, &self.total) / r.weight
        })
    }

    /// A framework's dominant share within one role (0 if it has nothing there).
    pub fn framework_share(&self, fw: &FrameworkId, role: &str) -> f64 {
        self.frameworks
            .get(fw)
            .and_then(|f| f.usage.get(role))
            .map_or(0.0, |q| state::dominant_share(q, &self.total))
    }

    /// Sizes of the state.
    pub fn counts(&self) -> AllocatorCounts {
        AllocatorCounts {
            agents: self.agent_index.len(),
            active_agents: self.agents.iter().flatten().filter(|a| a.active).count(),
            frameworks: self.frameworks.len(),
            roles: self.roles.len(),
            offers: self.offers.len(),
            filters: self
                .frameworks
                .values()
                .map(FrameworkState::filter_count)
                .sum(),
        }
    }

    fn agent(&self, id: &AgentId) -> Option<&AgentState> {
        let slot = *self.agent_index.get(id)?;
        self.agents.get(slot)?.as_ref()
    }
}
