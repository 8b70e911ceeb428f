//! Mesos `Resource` messages ⇄ the allocator's [`ResourceItem`]s, and Mesos's resource formats.
//!
//! Contract:
//! - [`to_item`] accepts a resource in either reservation format (pre-refinement `role` /
//!   `reservation`, or post-refinement `reservations`), ignores `allocation_info`, validates it as
//!   Mesos's `Resources::validate` does (with Mesos's messages), and models it: name, value,
//!   innermost reservation, provider, disk identity. Everything else the proto carries
//!   (reservation labels and refinement stacks, volume info, source metadata, persistence
//!   principal, revocable, shared, ...) goes into the item's opaque `extra` as the base64
//!   protobuf of the resource without its value, so that
//! - [`to_proto`] gives back exactly the post-refinement resource that went in (with the item's
//!   current value), and items that differ in any unmodelled field never merge.
//! - [`downgrade`] / [`upgrade`] convert between the formats as Mesos's `convertResourceFormat`.
//!
//! SET and TEXT resources are refused (the allocator does not model them). Nothing here panics.

use std::fmt::Write as _;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use mesoblk_proto::mesos::v1::resource::{disk_info, AllocationInfo, DiskInfo, ReservationInfo};
use mesoblk_proto::mesos::v1::{value, Resource, ResourceProviderId};
use prost::Message as _;

use super::validation::validate_role;
use crate::allocator::{
    DiskIdentity, DiskSourceKind, Milli, RangeSet, Reservation, ReservationKind, ResourceItem,
    ResourceSet, ResourceValue,
};

/// A resource Mesos would refuse, with Mesos's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidResource(pub String);

fn invalid(message: impl Into<String>) -> InvalidResource {
    InvalidResource(message.into())
}

/// Converts to the post-refinement format in place (Mesos's `upgradeResource`).
#[allow(deprecated)] // `role` and `reservation` are the pre-refinement fields being converted.
pub fn upgrade(resource: &mut Resource) {
    if !resource.reservations.is_empty() {
        resource.role = None;
        resource.reservation = None;
        return;
    }
    let role = resource.role.take().unwrap_or_else(|| "*".into());
    if role == "*" {
        resource.reservation = None;
        return;
    }
    let mut reservation = match resource.reservation.take() {
        None => ReservationInfo {
            r#type: Some(reservation_info_type::STATIC),
            ..Default::default()
        },
        Some(dynamic) => ReservationInfo {
            r#type: Some(reservation_info_type::DYNAMIC),
            ..dynamic
        },
    };
    reservation.role = Some(role);
    resource.reservations.push(reservation);
}

/// Converts to the pre-refinement format in place; `false` (and unchanged) for refined
/// reservations, which that format cannot express.
#[allow(deprecated)]
pub fn downgrade(resource: &mut Resource) -> bool {
    match resource.reservations.len() {
        0 => resource.role = Some("*".into()),
        1 => {
            let source = resource.reservations.remove(0);
            if source.r#type == Some(reservation_info_type::DYNAMIC) {
                resource.reservation = Some(ReservationInfo {
                    principal: source.principal,
                    labels: source.labels,
                    ..Default::default()
                });
            }
            resource.role = source.role;
        }
        _ => return false,
    }
    true
}

/// Mesos's `ReservationInfo.Type` numbers.
mod reservation_info_type {
    use mesoblk_proto::mesos::v1::resource::reservation_info::Type;

    pub(super) const STATIC: i32 = Type::Static as i32;
    pub(super) const DYNAMIC: i32 = Type::Dynamic as i32;
}

/// The allocation role of a resource, if set.
pub fn allocation_role(resource: &Resource) -> Option<&str> {
    resource
        .allocation_info
        .as_ref()
        .and_then(|a| a.role.as_deref())
}

/// `resources` allocated to `role` (Mesos's `Resources::allocate`).
pub fn allocate(resources: &mut [Resource], role: &str) {
    for resource in resources {
        resource.allocation_info = Some(AllocationInfo {
            role: Some(role.to_owned()),
        });
    }
}

/// The role a resource is reserved for (innermost reservation), or `*`.
pub fn reservation_role(resource: &Resource) -> &str {
    #[allow(deprecated)]
    let legacy = resource.role.as_deref();
    match resource.reservations.last() {
        Some(r) => r.role.as_deref().unwrap_or("*"),
        None => legacy.unwrap_or("*"),
    }
}

/// Checks a post-refinement resource as Mesos's `Resources::validate`; SET and TEXT are refused
/// because the allocator does not model them.
pub fn validate(resource: &Resource) -> Result<(), InvalidResource> {
    if resource.name.is_empty() {
        return Err(invalid("Empty resource name"));
    }
    match value::Type::try_from(resource.r#type) {
        Ok(value::Type::Scalar) => {
            if resource.scalar.is_none() || resource.ranges.is_some() || resource.set.is_some() {
                return Err(invalid("Invalid scalar resource"));
            }
            let x = resource.scalar.as_ref().map_or(0.0, |s| s.value);
            if x.is_nan() || x < 0.0 {
                return Err(invalid("Invalid scalar resource: value <= 0"));
            }
        }
        Ok(value::Type::Ranges) => {
            let Some(ranges) = resource.ranges.as_ref() else {
                return Err(invalid("Invalid ranges resource"));
            };
            if resource.scalar.is_some() || resource.set.is_some() {
                return Err(invalid("Invalid ranges resource"));
            }
            validate_ranges(&ranges.range)?;
        }
        Ok(value::Type::Set) => {
            return Err(invalid(format!(
                "SET resource '{}' is not supported by mesoblk",
                resource.name
            )))
        }
        _ => return Err(invalid("Unsupported resource type")),
    }
    if let Some(disk) = &resource.disk {
        validate_disk(&resource.name, disk)?;
    }
    for reservation in &resource.reservations {
        let role = reservation.role.as_deref().unwrap_or("");
        validate_role(role).map_err(|e| invalid(format!("Invalid reservation: {e}")))?;
        if role == "*" {
            return Err(invalid(
                "Invalid reservation: role \"*\" cannot be reserved",
            ));
        }
        if !matches!(
            reservation.r#type,
            Some(reservation_info_type::STATIC | reservation_info_type::DYNAMIC)
        ) {
            return Err(invalid(
                "Invalid reservation: 'type' must be STATIC or DYNAMIC",
            ));
        }
    }
    Ok(())
}

fn validate_ranges(ranges: &[value::Range]) -> Result<(), InvalidResource> {
    for (i, range) in ranges.iter().enumerate() {
        if range.begin > range.end {
            return Err(invalid("Invalid ranges resource: begin > end"));
        }
        for other in &ranges[i + 1..] {
            if range.begin <= other.begin && other.begin <= range.end {
                return Err(invalid("Invalid ranges resource: overlapping ranges"));
            }
        }
    }
    Ok(())
}

fn validate_disk(name: &str, disk: &DiskInfo) -> Result<(), InvalidResource> {
    if name != "disk" {
        return Err(invalid(format!(
            "DiskInfo should not be set for {name} resource"
        )));
    }
    if let Some(source) = &disk.source {
        let kind = disk_info::source::Type::try_from(source.r#type)
            .unwrap_or(disk_info::source::Type::Unknown);
        match kind {
            disk_info::source::Type::Path | disk_info::source::Type::Mount => {}
            disk_info::source::Type::Block | disk_info::source::Type::Raw => {
                if source.mount.is_some() {
                    return Err(invalid(format!(
                        "Mount should not be set for {} disk source",
                        kind.as_str_name()
                    )));
                }
                if source.path.is_some() {
                    return Err(invalid(format!(
                        "Path should not be set for {} disk source",
                        kind.as_str_name()
                    )));
                }
            }
            disk_info::source::Type::Unknown => {
                return Err(invalid("Unsupported 'DiskInfo.Source.Type'"));
            }
        }
    }
    Ok(())
}

/// Models one resource (see the module docs).
pub fn to_item(resource: &Resource) -> Result<ResourceItem, InvalidResource> {
    let mut normal = resource.clone();
    normal.allocation_info = None;
    upgrade(&mut normal);
    validate(&normal)?;
    let value = match (&normal.scalar, &normal.ranges) {
        (Some(scalar), _) => ResourceValue::Scalar(
            Milli::from_f64(&normal.name, scalar.value).map_err(|e| invalid(e.to_string()))?,
        ),
        (None, Some(ranges)) => ResourceValue::Ranges(
            RangeSet::new(ranges.range.iter().map(|r| (r.begin, r.end)).collect())
                .map_err(|e| invalid(e.to_string()))?,
        ),
        (None, None) => return Err(invalid("Invalid scalar resource")),
    };
    let reservation = normal.reservations.last().map(|r| {
        Arc::new(Reservation {
            role: r.role.clone().unwrap_or_default(),
            kind: if r.r#type == Some(reservation_info_type::DYNAMIC) {
                ReservationKind::Dynamic
            } else {
                ReservationKind::Static
            },
            principal: r.principal.clone(),
        })
    });
    let mut item = ResourceItem {
        name: Arc::from(normal.name.as_str()),
        value,
        reservation,
        disk: normal.disk.as_ref().map(|d| Arc::new(disk_identity(d))),
        provider: normal
            .provider_id
            .as_ref()
            .map(|p| Arc::from(p.value.as_str())),
        extra: None,
    };
    let mut bare = normal;
    clear_value(&mut bare);
    let mut rebuilt = modelled_proto(&item);
    clear_value(&mut rebuilt);
    if rebuilt != bare {
        item.extra = Some(Arc::from(STANDARD.encode(bare.encode_to_vec())));
    }
    Ok(item)
}

/// Models a list of resources as one normalised set.
pub fn to_set(resources: &[Resource]) -> Result<ResourceSet, InvalidResource> {
    let mut set = ResourceSet::new();
    for resource in resources {
        set.add_item(to_item(resource)?)
            .map_err(|e| invalid(e.to_string()))?;
    }
    Ok(set)
}

/// The post-refinement resource an item stands for (no `allocation_info`).
pub fn to_proto(item: &ResourceItem) -> Resource {
    let mut resource = item
        .extra
        .as_deref()
        .and_then(|extra| STANDARD.decode(extra).ok())
        .and_then(|bytes| Resource::decode(bytes.as_slice()).ok())
        .unwrap_or_else(|| modelled_proto(item));
    set_value(&mut resource, &item.value);
    resource
}

/// Every item of a set as a resource.
pub fn to_protos(set: &ResourceSet) -> Vec<Resource> {
    set.items().iter().map(to_proto).collect()
}

fn clear_value(resource: &mut Resource) {
    resource.scalar = None;
    resource.ranges = None;
    resource.set = None;
}

fn set_value(resource: &mut Resource, value: &ResourceValue) {
    clear_value(resource);
    match value {
        ResourceValue::Scalar(m) => {
            resource.r#type = value::Type::Scalar as i32;
            resource.scalar = Some(value::Scalar { value: m.as_f64() });
        }
        ResourceValue::Ranges(ranges) => {
            resource.r#type = value::Type::Ranges as i32;
            resource.ranges = Some(value::Ranges {
                range: ranges
                    .ranges()
                    .iter()
                    .map(|&(begin, end)| value::Range { begin, end })
                    .collect(),
            });
        }
    }
}

fn disk_identity(disk: &DiskInfo) -> DiskIdentity {
    let source = disk.source.as_ref();
    let kind = source.and_then(|s| match disk_info::source::Type::try_from(s.r#type) {
        Ok(disk_info::source::Type::Path) => Some(DiskSourceKind::Path),
        Ok(disk_info::source::Type::Mount) => Some(DiskSourceKind::Mount),
        Ok(disk_info::source::Type::Block) => Some(DiskSourceKind::Block),
        Ok(disk_info::source::Type::Raw) => Some(DiskSourceKind::Raw),
        _ => None,
    });
    let root = source.and_then(|s| {
        s.path
            .as_ref()
            .and_then(|p| p.root.clone())
            .or_else(|| s.mount.as_ref().and_then(|m| m.root.clone()))
    });
    DiskIdentity {
        source: kind,
        id: source.and_then(|s| s.id.clone()),
        profile: source.and_then(|s| s.profile.clone()),
        vendor: source.and_then(|s| s.vendor.clone()),
        root,
        persistence_id: disk.persistence.as_ref().map(|p| p.id.clone()),
    }
}

/// The resource built from the modelled fields only.
fn modelled_proto(item: &ResourceItem) -> Resource {
    let mut resource = Resource {
        provider_id: item.provider.as_ref().map(|p| ResourceProviderId {
            value: p.to_string(),
        }),
        name: item.name.to_string(),
        reservations: item
            .reservation
            .iter()
            .map(|r| ReservationInfo {
                r#type: Some(match r.kind {
                    ReservationKind::Static => reservation_info_type::STATIC,
                    ReservationKind::Dynamic => reservation_info_type::DYNAMIC,
                }),
                role: Some(r.role.clone()),
                principal: r.principal.clone(),
                labels: None,
            })
            .collect(),
        disk: item.disk.as_deref().map(disk_proto),
        ..Default::default()
    };
    set_value(&mut resource, &item.value);
    resource
}

fn disk_proto(disk: &DiskIdentity) -> DiskInfo {
    use disk_info::source::Type;
    let source = disk.source.map(|kind| {
        let (r#type, path, mount) = match kind {
            DiskSourceKind::Path => (
                Type::Path,
                disk.root
                    .clone()
                    .map(|root| disk_info::source::Path { root: Some(root) }),
                None,
            ),
            DiskSourceKind::Mount => (
                Type::Mount,
                None,
                disk.root
                    .clone()
                    .map(|root| disk_info::source::Mount { root: Some(root) }),
            ),
            DiskSourceKind::Block => (Type::Block, None, None),
            DiskSourceKind::Raw => (Type::Raw, None, None),
        };
        disk_info::Source {
            r#type: r#type as i32,
            path,
            mount,
            vendor: disk.vendor.clone(),
            id: disk.id.clone(),
            metadata: None,
            profile: disk.profile.clone(),
        }
    });
    DiskInfo {
        persistence: disk
            .persistence_id
            .clone()
            .map(|id| disk_info::Persistence {
                id,
                principal: None,
            }),
        volume: None,
        source,
    }
}

/// Resources as Mesos prints them in messages (`cpus(allocated: r):2; mem(allocated: r):128`).
pub fn stringify(resources: &[Resource]) -> String {
    let mut out = String::new();
    for (i, resource) in resources.iter().enumerate() {
        if i > 0 {
            out.push_str("; ");
        }
        out.push_str(&resource.name);
        if let Some(role) = allocation_role(resource) {
            let _ = write!(out, "(allocated: {role})");
        }
        let roles: Vec<&str> = resource
            .reservations
            .iter()
            .filter_map(|r| r.role.as_deref())
            .collect();
        if !roles.is_empty() {
            let _ = write!(out, "(reservations: [{}])", roles.join(", "));
        }
        if let Some(source) = resource.disk.as_ref().and_then(|d| d.source.as_ref()) {
            let kind = disk_info::source::Type::try_from(source.r#type)
                .map_or("UNKNOWN", |t| t.as_str_name());
            let _ = write!(out, "[{kind}");
            if let Some(id) = &source.id {
                let _ = write!(out, "({id})");
            }
            out.push(']');
        }
        out.push(':');
        if let Some(scalar) = &resource.scalar {
            let _ = write!(out, "{}", scalar.value);
        } else if let Some(ranges) = &resource.ranges {
            let parts: Vec<String> = ranges
                .range
                .iter()
                .map(|r| format!("{}-{}", r.begin, r.end))
                .collect();
            let _ = write!(out, "[{}]", parts.join(", "));
        }
    }
    out
}

#[cfg(test)]
mod tests;
