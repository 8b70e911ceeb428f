//! Mesos's checks on offer operations other than launches (`validation::operation` in Mesos's
//! `src/master/validation.cpp`, with its messages), and what each one does to the resources:
//! the conversion of a speculative RESERVE/UNRESERVE/CREATE/DESTROY (Mesos's
//! `getResourceConversions`), and the disk a CREATE_DISK/DESTROY_DISK consumes.

use mesoblk_proto::mesos::v1::agent_info::capability::Type as AgentCapability;
use mesoblk_proto::mesos::v1::offer::operation::Type as OpType;
use mesoblk_proto::mesos::v1::resource::disk_info::source::Type as SourceType;
use mesoblk_proto::mesos::v1::resource::reservation_info::Type as ReservationType;
use mesoblk_proto::mesos::v1::{offer, Resource};

use super::task_validation::{
    validate_resources, validate_single_role, validate_unique_persistence_ids,
};
use super::{convert, validation, Master};
use crate::allocator::{AgentId as AllocAgentId, Conversion, ResourceSet};

fn is_dynamic(resource: &Resource) -> bool {
    resource
        .reservations
        .last()
        .is_some_and(|r| r.r#type == Some(ReservationType::Dynamic as i32))
}

fn pop_reservation(resource: &Resource) -> Resource {
    let mut out = resource.clone();
    out.reservations.pop();
    out
}

fn strip_volume(resource: &Resource) -> Resource {
    let mut out = resource.clone();
    if let Some(disk) = out.disk.as_mut() {
        disk.persistence = None;
        disk.volume = None;
        if disk.source.is_none() {
            out.disk = None;
        }
    }
    out
}

fn set_of(resources: &[Resource]) -> Result<ResourceSet, String> {
    convert::to_set(resources).map_err(|e| format!("Invalid resources: {e}"))
}

fn single_provider(resources: &[Resource]) -> Result<(), String> {
    let providers: std::collections::BTreeSet<Option<&str>> = resources
        .iter()
        .map(|r| r.provider_id.as_ref().map(|p| p.value.as_str()))
        .collect();
    if providers.len() > 1 {
        if providers.contains(&None) {
            return Err(
                "Invalid resources: Some resources have a resource provider and some do not".into(),
            );
        }
        let ids: Vec<&str> = providers.into_iter().flatten().collect();
        return Err(format!(
            "Invalid resources: The resources have multiple resource providers: {}",
            ids.join(", ")
        ));
    }
    Ok(())
}

fn validate_persistent_volumes(volumes: &[Resource]) -> Result<(), String> {
    for volume in volumes {
        let Some(disk) = &volume.disk else {
            return Err(format!(
                "Not a persistent volume: Resource {} does not have DiskInfo",
                convert::stringify(std::slice::from_ref(volume))
            ));
        };
        if disk.persistence.is_none() {
            return Err("Not a persistent volume: 'persistence' is not set in DiskInfo".into());
        }
        match &disk.volume {
            None => {
                return Err(
                    "Not a persistent volume: Expecting 'volume' to be set for persistent volume"
                        .into(),
                )
            }
            Some(v) if v.mode == mesoblk_proto::mesos::v1::volume::Mode::Ro as i32 => {
                return Err(
                    "Not a persistent volume: Read-only persistent volume not supported".into(),
                )
            }
            Some(_) => {}
        }
    }
    Ok(())
}

impl Master {
    /// Validates a RESERVE/UNRESERVE/CREATE/DESTROY and returns its conversion (Mesos's
    /// `getResourceConversions`).
    pub(super) fn speculative_conversion(
        &self,
        framework_id: &str,
        agent_id: &str,
        operation: &offer::Operation,
    ) -> Result<Conversion, String> {
        let framework = self.frameworks.get(framework_id).map(|f| &f.info);
        let (consumed, converted): (Vec<Resource>, Vec<Resource>) = match operation.r#type() {
            OpType::Reserve => {
                let reserve = operation.reserve.clone().unwrap_or_default();
                if !reserve.source.is_empty() {
                    return Err(
                        "Reservation updates are not yet implemented for the scheduler API.".into(),
                    );
                }
                validate_resources(&reserve.resources)
                    .map_err(|e| format!("Invalid resources: {e}"))?;
                single_provider(&reserve.resources)?;
                let roles = framework
                    .map(validation::framework_roles)
                    .unwrap_or_default();
                for resource in &reserve.resources {
                    let shown = convert::stringify(std::slice::from_ref(resource));
                    if !is_dynamic(resource) {
                        return Err(format!("Resource {shown} is not dynamically reserved"));
                    }
                    let reservation = resource.reservations.last().cloned().unwrap_or_default();
                    if let Some(principal) = framework.and_then(|f| f.principal.as_deref()) {
                        match reservation.principal.as_deref() {
                            None => return Err(format!("A reserve operation was attempted by principal '{principal}', but there is a reserved resource in the request with no principal set")),
                            Some(p) if p != principal => return Err(format!("A reserve operation was attempted by authenticated principal '{principal}', which does not match a reserved resource in the request with principal '{p}'")),
                            Some(_) => {}
                        }
                    }
                    let role = convert::reservation_role(resource);
                    let Some(allocated) = convert::allocation_role(resource) else {
                        return Err(format!("A reserve operation was attempted on unallocated resource {shown}, but frameworks can only perform reservations on allocated resources"));
                    };
                    if allocated != role {
                        return Err(format!("A reserve operation was attempted for a resource with role '{role}', but the resource was allocated to role '{allocated}'"));
                    }
                    if !roles.contains(allocated) {
                        return Err(format!("A reserve operation was attempted for a resource allocated to role '{allocated}', but the framework only has roles '{}'", validation::stringify_set(&roles)));
                    }
                }
                validate_single_role(&reserve.resources)
                    .map_err(|e| format!("Invalid reservation resources: {e}"))?;
                (
                    reserve.resources.iter().map(pop_reservation).collect(),
                    reserve.resources,
                )
            }
            OpType::Unreserve => {
                let resources = operation.unreserve.clone().unwrap_or_default().resources;
                validate_resources(&resources).map_err(|e| format!("Invalid resources: {e}"))?;
                single_provider(&resources)?;
                for resource in &resources {
                    let shown = convert::stringify(std::slice::from_ref(resource));
                    if !is_dynamic(resource) {
                        return Err(format!("Resource {shown} is not dynamically reserved"));
                    }
                    if resource
                        .disk
                        .as_ref()
                        .is_some_and(|d| d.persistence.is_some())
                    {
                        return Err(format!("A dynamically reserved persistent volume {shown} cannot be unreserved directly. Please destroy the persistent volume first then unreserve the resource"));
                    }
                }
                (
                    resources.clone(),
                    resources.iter().map(pop_reservation).collect(),
                )
            }
            OpType::Create => {
                let volumes = operation.create.clone().unwrap_or_default().volumes;
                validate_resources(&volumes).map_err(|e| format!("Invalid resources: {e}"))?;
                single_provider(&volumes)?;
                validate_persistent_volumes(&volumes)?;
                let mut existing = self
                    .allocator
                    .agent_total(&AllocAgentId(agent_id.to_owned()))
                    .map(convert::to_protos)
                    .unwrap_or_default();
                existing.extend(volumes.iter().cloned());
                validate_unique_persistence_ids(&existing)?;
                validate_single_role(&volumes)
                    .map_err(|e| format!("Invalid volume resources: {e}"))?;
                (volumes.iter().map(strip_volume).collect(), volumes)
            }
            OpType::Destroy => {
                let volumes = operation.destroy.clone().unwrap_or_default().volumes;
                validate_resources(&volumes).map_err(|e| format!("Invalid resources: {e}"))?;
                single_provider(&volumes)?;
                validate_persistent_volumes(&volumes)?;
                let set = set_of(&volumes)?;
                let total = self
                    .allocator
                    .agent_total(&AllocAgentId(agent_id.to_owned()));
                if !total.is_some_and(|t| t.contains(&set)) {
                    return Err("Persistent volumes not found".into());
                }
                let in_use = self
                    .tasks
                    .values()
                    .filter(|t| t.task.agent_id.value == agent_id && !t.recovered)
                    .any(|t| set.items().iter().any(|v| t.allocation.items().contains(v)));
                if in_use {
                    return Err("Persistent volumes in use".into());
                }
                (volumes.clone(), volumes.iter().map(strip_volume).collect())
            }
            other => {
                return Err(format!(
                    "{} is not a speculative operation",
                    other.as_str_name()
                ))
            }
        };
        Ok(Conversion {
            consumed: set_of(&consumed)?,
            converted: set_of(&converted)?,
        })
    }

    /// Validates a CREATE_DISK/DESTROY_DISK (Mesos's `validate(CreateDisk/DestroyDisk)`) and
    /// returns the disk it consumes.
    pub(super) fn disk_operation_source(
        &self,
        agent_id: &str,
        operation: &offer::Operation,
    ) -> Result<ResourceSet, String> {
        let capable = self
            .agents
            .get(agent_id)
            .is_some_and(|a| a.has_capability(AgentCapability::ResourceProvider));
        if !capable {
            return Err(format!("Not supported on agent {agent_id} because it does not have RESOURCE_PROVIDER capability"));
        }
        let kind = |r: &Resource| {
            r.disk
                .as_ref()
                .and_then(|d| d.source.as_ref())
                .map(|s| s.r#type)
        };
        let source = if operation.r#type() == OpType::CreateDisk {
            let create = operation.create_disk.clone().unwrap_or_default();
            let source = create.source;
            validate_resources(std::slice::from_ref(&source))
                .map_err(|e| format!("Invalid resource: {e}"))?;
            if source.provider_id.is_none() {
                return Err("'source' is not managed by a resource provider".into());
            }
            if kind(&source) != Some(SourceType::Raw as i32) {
                return Err("'source' is not a RAW disk resource".into());
            }
            if create.target_type != SourceType::Mount as i32
                && create.target_type != SourceType::Block as i32
            {
                return Err("'target_type' is neither MOUNT or BLOCK".into());
            }
            let has_profile = source
                .disk
                .as_ref()
                .and_then(|d| d.source.as_ref())
                .is_some_and(|s| s.profile.is_some());
            if has_profile == create.target_profile.is_some() {
                return Err(if create.target_profile.is_some() {
                    "'target_profile' must not be set when 'source' has a profile".into()
                } else {
                    "'target_profile' must be set when 'source' has no profile".into()
                });
            }
            source
        } else {
            let source = operation.destroy_disk.clone().unwrap_or_default().source;
            validate_resources(std::slice::from_ref(&source))
                .map_err(|e| format!("Invalid resource: {e}"))?;
            if source.provider_id.is_none() {
                return Err("'source' is not managed by a resource provider".into());
            }
            let k = kind(&source);
            if ![SourceType::Mount, SourceType::Block, SourceType::Raw]
                .iter()
                .any(|t| Some(*t as i32) == k)
            {
                return Err("'source' is neither a MOUNT, BLOCK or RAW disk resource".into());
            }
            let disk_source = source.disk.as_ref().and_then(|d| d.source.as_ref());
            if disk_source.is_none_or(|s| s.id.is_none()) {
                return Err("'source' is not backed by a CSI volume".into());
            }
            if source
                .disk
                .as_ref()
                .is_some_and(|d| d.persistence.is_some())
            {
                return Err(format!("A disk resource containing a persistent volume {} cannot be destroyed directly. Please destroy the persistent volume first then destroy the disk resource", convert::stringify(std::slice::from_ref(&source))));
            }
            source
        };
        set_of(std::slice::from_ref(&source))
    }
}
