//! Persistent volumes and created disks in the registry.
//!
//! The master keeps the registry's view of them ([`StoredResources`]: volumes by persistence id,
//! disks by source id, per agent). Whenever an agent's total changes, the difference is stored in
//! one batch with the agent's `AgentInfo` carrying its current total, so a restarted master lists
//! each recovered agent with its volumes and disks before the agent re-registers:
//! - CREATE and DESTROY: at ACCEPT, when the allocator applied them (they are speculative, as in
//!   Mesos);
//! - CREATE_DISK and DESTROY_DISK: when the agent reports them finished (not speculative);
//! - registration and re-registration: the agent's report.
//!
//! # Who wins at re-registration
//! The agent. It holds the data and checkpoints its resources (as a Mesos agent checkpoints its
//! resources and the Mesos master takes them from the re-registering agent). The registry is
//! brought to what the agent reports, and every disagreement is logged as a warning: a volume or
//! disk the registry had that the agent no longer reports may be lost data; one the registry
//! lacked was created while no master could record it.

use std::collections::BTreeMap;

use mesoblk_proto::mesos::v1::Resource;
use tracing::{info, warn};

use super::{convert, Master};
use crate::allocator::AgentId as AllocAgentId;
use crate::registry::{Mutation, RegistrySnapshot};

/// Resources of one kind by agent, then by their id.
type ByAgent = BTreeMap<String, BTreeMap<String, Resource>>;

/// The registry's volumes and disks, as last stored.
#[derive(Debug, Default)]
pub(super) struct StoredResources {
    volumes: ByAgent,
    disks: ByAgent,
}

/// Which kind of stored resource, for the mutations and the log.
#[derive(Clone, Copy)]
enum Kind {
    Volume,
    Disk,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Volume => "persistent volume",
            Kind::Disk => "disk",
        }
    }

    /// A resource's id of this kind: a volume's persistence id, a created disk's source id.
    fn id(self, resource: &Resource) -> Option<&str> {
        let disk = resource.disk.as_ref()?;
        let id = match self {
            Kind::Volume => disk.persistence.as_ref().map(|p| p.id.as_str()),
            Kind::Disk => disk.source.as_ref().and_then(|s| s.id.as_deref()),
        };
        id.filter(|id| !id.is_empty())
    }

    fn put(self, agent_id: &str, id: &str, resource: Resource) -> Mutation {
        let (agent_id, id) = (agent_id.to_owned(), id.to_owned());
        match self {
            Kind::Volume => Mutation::PutVolume {
                agent_id,
                volume_id: id,
                resource,
            },
            Kind::Disk => Mutation::PutDisk {
                agent_id,
                disk_id: id,
                resource,
            },
        }
    }

    fn remove(self, agent_id: &str, id: &str) -> Mutation {
        let (agent_id, id) = (agent_id.to_owned(), id.to_owned());
        match self {
            Kind::Volume => Mutation::RemoveVolume {
                agent_id,
                volume_id: id,
            },
            Kind::Disk => Mutation::RemoveDisk {
                agent_id,
                disk_id: id,
            },
        }
    }
}

/// The resources of `kind` among `resources`, by id, without allocation.
fn keyed(kind: Kind, resources: &[Resource]) -> BTreeMap<String, Resource> {
    resources
        .iter()
        .filter_map(|r| {
            let id = kind.id(r)?.to_owned();
            let mut r = r.clone();
            r.allocation_info = None;
            Some((id, r))
        })
        .collect()
}

/// The mutations that turn `stored` into `current`; logs each change, as a disagreement when
/// `reconciling`.
fn diff(
    kind: Kind,
    agent_id: &str,
    stored: &BTreeMap<String, Resource>,
    current: &BTreeMap<String, Resource>,
    reconciling: bool,
) -> Vec<Mutation> {
    let mut batch = Vec::new();
    for (id, resource) in current {
        if stored.get(id) == Some(resource) {
            continue;
        }
        let what = kind.name();
        match (reconciling, stored.contains_key(id)) {
            (true, false) => {
                warn!(agent = %agent_id, %id, "the agent reports a {what} the registry did not have; storing it")
            }
            (true, true) => {
                warn!(agent = %agent_id, %id, "the agent reports a {what} that differs from the registry's; storing the agent's")
            }
            (false, _) => info!(agent = %agent_id, %id, "storing a {what}"),
        }
        batch.push(kind.put(agent_id, id, resource.clone()));
    }
    for id in stored.keys().filter(|id| !current.contains_key(*id)) {
        let what = kind.name();
        if reconciling {
            warn!(agent = %agent_id, %id, "the registry has a {what} the agent does not report (lost data?); forgetting it");
        } else {
            info!(agent = %agent_id, %id, "forgetting a {what}");
        }
        batch.push(kind.remove(agent_id, id));
    }
    batch
}

impl StoredResources {
    fn of(&mut self, kind: Kind) -> &mut ByAgent {
        match kind {
            Kind::Volume => &mut self.volumes,
            Kind::Disk => &mut self.disks,
        }
    }

    /// The registry's volumes of `agent_id`, by persistence id.
    pub(super) fn volumes(&self, agent_id: &str) -> Option<&BTreeMap<String, Resource>> {
        self.volumes.get(agent_id)
    }

    /// The registry's created disks of `agent_id`, by source id.
    pub(super) fn disks(&self, agent_id: &str) -> Option<&BTreeMap<String, Resource>> {
        self.disks.get(agent_id)
    }

    /// Takes the registry's volumes and disks (at recovery).
    pub(super) fn recover(&mut self, snapshot: &RegistrySnapshot) {
        self.volumes.clone_from(&snapshot.volumes);
        self.disks.clone_from(&snapshot.disks);
    }

    /// Records `current` as `agent_id`'s resources of `kind`; the mutations that store it.
    fn update(
        &mut self,
        kind: Kind,
        agent_id: &str,
        current: BTreeMap<String, Resource>,
        reconciling: bool,
    ) -> Vec<Mutation> {
        let stored = self.of(kind);
        let empty = BTreeMap::new();
        let before = stored.get(agent_id).unwrap_or(&empty);
        let batch = diff(kind, agent_id, before, &current, reconciling);
        if current.is_empty() {
            stored.remove(agent_id);
        } else {
            stored.insert(agent_id.to_owned(), current);
        }
        batch
    }
}

impl Master {
    /// The registry's persistent volumes of `agent_id`, by persistence id.
    pub fn stored_volumes(&self, agent_id: &str) -> Option<&BTreeMap<String, Resource>> {
        self.stored.volumes(agent_id)
    }

    /// The registry's created disks of `agent_id`, by source id.
    pub fn stored_disks(&self, agent_id: &str) -> Option<&BTreeMap<String, Resource>> {
        self.stored.disks(agent_id)
    }

    /// The agent's total as the allocator has it (its report, plus what operations changed).
    fn current_total(&self, agent_id: &str) -> Vec<Resource> {
        match self
            .allocator
            .agent_total(&AllocAgentId(agent_id.to_owned()))
        {
            Some(total) => convert::to_protos(total),
            None => self
                .agents
                .get(agent_id)
                .map(|a| a.info.resources.clone())
                .unwrap_or_default(),
        }
    }

    /// Stores the agent as admitted with its current total, and its volumes and disks, in one
    /// batch. At (re-)registration (`reconciling`) differences from the registry are logged as
    /// disagreements; after an operation only a change of volumes or disks writes anything.
    pub(super) fn persist_agent_resources(&mut self, agent_id: &str, reconciling: bool) {
        let Some(agent) = self.agents.get(agent_id) else {
            return;
        };
        let mut info = agent.info.clone();
        info.resources = self.current_total(agent_id);
        let mut batch = Vec::new();
        for kind in [Kind::Volume, Kind::Disk] {
            let current = keyed(kind, &info.resources);
            batch.extend(self.stored.update(kind, agent_id, current, reconciling));
        }
        if batch.is_empty() && !reconciling {
            return;
        }
        batch.insert(
            0,
            Mutation::AdmitAgent {
                agent_id: agent_id.to_owned(),
                info,
            },
        );
        let _ = self.persist("store an agent", self.config.registry.apply(batch));
    }
}

#[cfg(test)]
mod tests {
    use mesoblk_proto::mesos::v1::resource::{disk_info, DiskInfo};

    use super::*;

    fn disk(volume: Option<&str>, source: Option<&str>) -> Resource {
        Resource {
            name: "disk".into(),
            disk: Some(DiskInfo {
                persistence: volume.map(|id| disk_info::Persistence {
                    id: id.into(),
                    ..Default::default()
                }),
                source: source.map(|id| disk_info::Source {
                    id: Some(id.into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn volumes_and_disks_are_keyed_by_their_ids() {
        let resources = vec![
            disk(Some("v1"), None),
            disk(None, Some("d1")),
            disk(Some("v2"), Some("d2")),
            disk(None, None),
        ];
        let volumes: Vec<String> = keyed(Kind::Volume, &resources).into_keys().collect();
        let disks: Vec<String> = keyed(Kind::Disk, &resources).into_keys().collect();
        assert_eq!(volumes, ["v1", "v2"]);
        assert_eq!(disks, ["d1", "d2"]);
    }

    #[test]
    fn updates_store_only_the_difference() {
        let mut stored = StoredResources::default();
        let first = keyed(
            Kind::Volume,
            &[disk(Some("a"), None), disk(Some("b"), None)],
        );
        let batch = stored.update(Kind::Volume, "S0", first.clone(), false);
        assert_eq!(batch.len(), 2);
        assert!(stored.update(Kind::Volume, "S0", first, true).is_empty());
        let second = keyed(
            Kind::Volume,
            &[disk(Some("b"), None), disk(Some("c"), None)],
        );
        let batch = stored.update(Kind::Volume, "S0", second, true);
        assert_eq!(
            batch,
            vec![
                Kind::Volume.put("S0", "c", disk(Some("c"), None)),
                Kind::Volume.remove("S0", "a"),
            ]
        );
        let batch = stored.update(Kind::Volume, "S0", BTreeMap::new(), false);
        assert_eq!(batch.len(), 2);
        assert!(stored.volumes("S0").is_none());
    }
}
