//! Errors the allocator returns for events it cannot apply.
//!
//! Every event method validates before it mutates: when one of these is returned, the allocator's
//! state is exactly what it was before the call. The master turns them into Mesos responses (an
//! ACCEPT of an unknown offer, for example, ends in `TASK_DROPPED`/`TASK_LOST` with
//! `REASON_INVALID_OFFERS`); none of them is a bug in the allocator.

use thiserror::Error;

use super::resources::ResourceError;
use super::{AgentId, FrameworkId, OfferId};

/// An event the allocator refused.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum AllocatorError {
    /// The agent is not registered with the allocator.
    #[error("agent {0} is not known to the allocator")]
    UnknownAgent(AgentId),
    /// `add_agent` for an agent that is already registered.
    #[error("agent {0} is already known to the allocator")]
    AgentExists(AgentId),
    /// The framework is not registered with the allocator.
    #[error("framework {0} is not known to the allocator")]
    UnknownFramework(FrameworkId),
    /// `add_framework` for a framework that is already registered.
    #[error("framework {0} is already known to the allocator")]
    FrameworkExists(FrameworkId),
    /// The offer is not outstanding (never made, or already accepted, declined or rescinded).
    #[error("offer {0} is not outstanding")]
    UnknownOffer(OfferId),
    /// ACCEPT used resources that the (converted) offer does not hold.
    #[error("offer {offer} does not contain the resources the accept uses")]
    AcceptExceedsOffer {
        /// The offer.
        offer: OfferId,
    },
    /// A conversion in an ACCEPT consumed resources the offer no longer holds at that point.
    #[error(
        "conversion {index} of the accept of offer {offer} consumes resources not in the offer"
    )]
    ConversionNotInOffer {
        /// The offer.
        offer: OfferId,
        /// The position of the conversion in the accept.
        index: usize,
    },
    /// A conversion produced resources reserved for a role other than the offer's.
    #[error(
        "conversion {index} of the accept of offer {offer} produces resources for another role"
    )]
    ConversionWrongRole {
        /// The offer.
        offer: OfferId,
        /// The position of the conversion in the accept.
        index: usize,
    },
    /// `recover` of resources the framework is not allocated on that agent in that role.
    #[error("framework {framework} holds no such resources on agent {agent} in role {role}")]
    RecoverExceedsAllocation {
        /// The agent.
        agent: AgentId,
        /// The framework.
        framework: FrameworkId,
        /// The allocation role.
        role: String,
    },
    /// An agent's reported total does not cover what frameworks are using on it.
    #[error("agent {0}: the total resources do not cover the resources in use")]
    TotalBelowUsed(AgentId),
    /// Resources in use reported for a role they are not allocatable to.
    #[error("agent {agent}: resources used in role {role} are reserved for another role")]
    UsedByWrongRole {
        /// The agent.
        agent: AgentId,
        /// The role.
        role: String,
    },
    /// An invalid role name.
    #[error("role name {role:?} is invalid: {reason}")]
    InvalidRole {
        /// The role name.
        role: String,
        /// Why.
        reason: &'static str,
    },
    /// SUPPRESS, REVIVE or `suppressed_roles` named a role the framework is not subscribed to.
    #[error("framework {framework} is not subscribed to role {role}")]
    RoleNotSubscribed {
        /// The framework.
        framework: FrameworkId,
        /// The role.
        role: String,
    },
    /// A weight that is not a positive finite number within bounds.
    #[error("weight {weight} for role {role} is not in (0, {max}]")]
    InvalidWeight {
        /// The role.
        role: String,
        /// The weight.
        weight: f64,
        /// The largest allowed weight.
        max: f64,
    },
    /// A quota whose guarantee exceeds its limit.
    #[error("quota for role {role}: the guarantee for {resource} exceeds the limit")]
    GuaranteeAboveLimit {
        /// The role.
        role: String,
        /// The resource name.
        resource: String,
    },
    /// A bound on the allocator's size was reached.
    #[error("too many {what} (the bound is {max})")]
    TooMany {
        /// What was counted.
        what: &'static str,
        /// The bound.
        max: usize,
    },
    /// Invalid resources or resource arithmetic.
    #[error("invalid resources")]
    Resources(#[from] ResourceError),
}
