//! The registry: the master state that must survive a master restart.
//!
//! # What is stored
//! [`RegistrySnapshot`]: the master's UUID (so the ids it hands out keep their prefix), admitted,
//! unreachable and gone agents, frameworks (live and removed), role weights, quota configs, and
//! per-agent persistent volumes and created disks. Mesos's registry (`src/master/registry.proto`)
//! holds the same minus the frameworks, which Mesos rebuilds from re-registering agents; mesoblk
//! stores them so that a restarted master refuses removed framework ids and lists live ones.
//!
//! # The contract of [`Registry`]
//! This trait is the seam a replicated store (Raft, etcd, …) implements later. Implementations
//! must guarantee:
//! 1. **Durability**: when [`Registry::apply`] returns `Ok`, the batch survives a crash of the
//!    process and of the machine (for a replicated store: it is committed by a quorum).
//! 2. **Atomicity**: a batch is applied entirely or not at all, also across a crash.
//! 3. **Read-your-writes**: [`Registry::load`] reflects every batch whose `apply` returned, in
//!    the order the calls returned; it never shows a batch whose `apply` has not returned `Ok`.
//!    Concurrent callers are ordered by the store; callers that need an order between their own
//!    batches (the same agent admitted, then removed) must not issue them concurrently.
//! 4. **Fail-stop**: a store that cannot tell whether a batch became durable must not report
//!    success, and refuses every later batch ([`RegistryError::Failed`]). A master whose
//!    registry fails stops serving, as Mesos aborts when its registrar fails (the binary installs
//!    [`EmbeddedRegistry::set_failure_hook`] to exit).
//!
//! Mutations are total (see [`Mutation`]): the state layer decides what is allowed, the registry
//! records what was decided, before the decision is acknowledged to anyone.
//!
//! # Implementations
//! - [`EmbeddedRegistry`]: an append-only, checksummed log with group commit and compaction in
//!   `<work_dir>/registry/` (format and crash-safety argument in [`log`] and [`embedded`]).
//! - [`InMemoryRegistry`]: Mesos's `--registry=in_memory`, for tests: nothing survives a restart.
//!
//! # Where the state layer calls it
//! At start, [`recover`] (once, before serving) returns the snapshot that
//! `crate::state::Master::recover` rebuilds the books from; then each change is persisted, under
//! the master lock, before it is acknowledged or made visible. The call sites are listed in
//! `crate::state::persistence`.
//!
//! # Ids across restarts
//! The UUID is kept, so ids keep their prefix; counters of stored ids resume past the stored
//! ones ([`RegistrySnapshot::next_framework_number`], [`RegistrySnapshot::next_agent_number`]).
//! Ids that are not stored (offers, operations) must not repeat either: derive them from
//! [`RegistrySnapshot::incarnation`] (e.g. start the offer counter at `incarnation << 32`).

pub mod crc;
pub mod embedded;
pub mod log;
pub mod memory;
pub mod records;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use mesoblk_proto::mesos::v1::quota::QuotaConfig;
use mesoblk_proto::mesos::v1::{AgentInfo, Resource};

pub use embedded::{EmbeddedOptions, EmbeddedRegistry, EmbeddedStats};
pub use memory::InMemoryRegistry;
pub use records::{AgentRecord, AgentState, FrameworkRecord, Mutation, RegistrySnapshot};

/// Why the registry refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// A file operation failed.
    #[error("registry I/O failed: {op} '{path}'")]
    Io {
        /// What was being done ("create", "fsync", …).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A registry file holds something a crash cannot explain.
    #[error("registry file '{path}' is corrupt at byte offset {offset}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where the damage starts.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A registry file was written by a newer (or unknown) format.
    #[error(
        "registry file '{path}' has format version {found}; this master reads version {supported}"
    )]
    Version {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
        /// Ours.
        supported: u32,
    },
    /// Another process holds the registry directory.
    #[error("registry directory '{path}' is in use by another master")]
    Locked {
        /// The directory.
        path: PathBuf,
    },
    /// A mutation the store cannot keep faithfully (nothing was written).
    #[error("invalid registry mutation: {0}")]
    Invalid(String),
    /// The store failed earlier and refuses all changes (see the fail-stop rule).
    #[error("the registry failed and accepts no more changes: {0}")]
    Failed(String),
}

/// A store for the master's persistent state. See the module docs for the contract.
pub trait Registry: Send + Sync + fmt::Debug {
    /// Applies `batch` atomically and durably; on `Ok` it is in every later [`Registry::load`].
    /// An empty batch is a no-op.
    fn apply(&self, batch: Vec<Mutation>) -> Result<(), RegistryError>;

    /// Everything stored, as of every `apply` that has returned.
    fn load(&self) -> Result<RegistrySnapshot, RegistryError>;

    /// Admits (or re-admits) an agent: registration and re-registration.
    fn admit_agent(&self, agent_id: &str, info: &AgentInfo) -> Result<(), RegistryError> {
        self.apply(vec![Mutation::AdmitAgent {
            agent_id: agent_id.into(),
            info: info.clone(),
        }])
    }

    /// Marks an agent unreachable at `time`.
    fn mark_agent_unreachable(
        &self,
        agent_id: &str,
        time: SystemTime,
    ) -> Result<(), RegistryError> {
        self.apply(vec![Mutation::MarkAgentUnreachable {
            agent_id: agent_id.into(),
            time_secs: epoch_secs(time),
        }])
    }

    /// Marks an agent gone at `time` (MARK_AGENT_GONE).
    fn mark_agent_gone(&self, agent_id: &str, time: SystemTime) -> Result<(), RegistryError> {
        self.apply(vec![Mutation::MarkAgentGone {
            agent_id: agent_id.into(),
            time_secs: epoch_secs(time),
        }])
    }

    /// Forgets an agent with its volumes and disks.
    fn remove_agent(&self, agent_id: &str) -> Result<(), RegistryError> {
        self.apply(vec![Mutation::RemoveAgent {
            agent_id: agent_id.into(),
        }])
    }

    /// Stores a framework (subscription, update, removal with `removed` set).
    fn put_framework(&self, framework: FrameworkRecord) -> Result<(), RegistryError> {
        self.apply(vec![Mutation::PutFramework { framework }])
    }

    /// Sets role weights (UPDATE_WEIGHTS).
    fn set_weights(&self, weights: &[(String, f64)]) -> Result<(), RegistryError> {
        self.apply(vec![Mutation::UpdateWeights {
            weights: weights.iter().cloned().collect::<BTreeMap<_, _>>(),
        }])
    }

    /// Sets quota configs (UPDATE_QUOTA); empty configs remove the role's quota.
    fn set_quotas(&self, configs: &[QuotaConfig]) -> Result<(), RegistryError> {
        self.apply(vec![Mutation::UpdateQuotas {
            configs: configs.to_vec(),
        }])
    }

    /// Stores a persistent volume (CREATE), keyed by its persistence id.
    fn put_volume(
        &self,
        agent_id: &str,
        volume_id: &str,
        volume: &Resource,
    ) -> Result<(), RegistryError> {
        self.apply(vec![Mutation::PutVolume {
            agent_id: agent_id.into(),
            volume_id: volume_id.into(),
            resource: volume.clone(),
        }])
    }

    /// Forgets a persistent volume (DESTROY).
    fn remove_volume(&self, agent_id: &str, volume_id: &str) -> Result<(), RegistryError> {
        self.apply(vec![Mutation::RemoveVolume {
            agent_id: agent_id.into(),
            volume_id: volume_id.into(),
        }])
    }

    /// Stores a created disk (CREATE_DISK finished), keyed by its source id.
    fn put_disk(
        &self,
        agent_id: &str,
        disk_id: &str,
        disk: &Resource,
    ) -> Result<(), RegistryError> {
        self.apply(vec![Mutation::PutDisk {
            agent_id: agent_id.into(),
            disk_id: disk_id.into(),
            resource: disk.clone(),
        }])
    }

    /// Forgets a created disk (DESTROY_DISK finished).
    fn remove_disk(&self, agent_id: &str, disk_id: &str) -> Result<(), RegistryError> {
        self.apply(vec![Mutation::RemoveDisk {
            agent_id: agent_id.into(),
            disk_id: disk_id.into(),
        }])
    }
}

/// Seconds since the epoch, as the registry stores times.
pub fn epoch_secs(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Starts a master on `registry`: records the start (bumping the incarnation) and, on the very
/// first start, a fresh master UUID, in one batch; returns the snapshot to recover from.
pub fn recover(registry: &dyn Registry) -> Result<RegistrySnapshot, RegistryError> {
    let before = registry.load()?;
    let mut batch = vec![Mutation::Started];
    if before.master_id.is_none() {
        batch.push(Mutation::SetMasterId {
            master_id: uuid::Uuid::new_v4().to_string(),
        });
    }
    registry.apply(batch)?;
    let after = registry.load()?;
    debug_assert!(after.master_id.is_some());
    debug_assert_eq!(after.incarnation, before.incarnation + 1);
    Ok(after)
}
