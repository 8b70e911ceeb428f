//! Helpers for mesoblk's block disks. This is the only mesoblk-specific module: the scheduler
//! and executor drivers speak plain Mesos and never use it.
//!
//! How mesoblk presents storage (see `docs/architecture.md`), all in standard Mesos resources:
//! - an agent offers each storage pool, per profile, as a **RAW** disk from its resource
//!   provider: `{"name":"disk","disk":{"source":{"type":"RAW","vendor":"mesoblk","profile":P}}}`
//!   without an `id`; it is splittable, so a framework takes a slice of the size it wants;
//! - `CREATE_DISK` turns a slice into a **BLOCK** (a raw `/dev/ublkbN`) or **MOUNT** (a file
//!   system) disk with an `id`, offered back to the framework; `DESTROY_DISK` returns it;
//! - a task lists such a disk (or a RAW slice, for a disk that lives as long as the task) in its
//!   resources; the agent attaches it and tells the task where it is, in the disk's
//!   `source.metadata` labels ([`LABEL_PATH`], [`LABEL_DEVICE`], [`LABEL_DEVICE_ID`]) and in the
//!   environment ([`ENV_BLOCK_DEVICE`], [`ENV_MOUNT_PATH`], [`disk_env_var`]).
//!
//! The names here are the agent's (`agent/src/storage/resources.rs` and `attach.rs`); they are
//! defined once, in this module, for frameworks.

use std::path::PathBuf;

use mesoblk_proto::mesos::v1::offer::Operation;
use mesoblk_proto::mesos::v1::resource::disk_info::{source, Source};
use mesoblk_proto::mesos::v1::resource::DiskInfo;
use mesoblk_proto::mesos::v1::{value, volume, Offer, Resource, TaskInfo, Volume};

use crate::operations;

/// `disk.source.vendor` of every mesoblk disk.
pub const VENDOR: &str = "mesoblk";
/// Metadata label of a created disk: the pool it lives in.
pub const LABEL_POOL: &str = "pool";
/// Metadata label of an attached disk: the device node of a BLOCK disk, the mount point of a
/// MOUNT disk.
pub const LABEL_PATH: &str = "path";
/// Metadata label of an attached disk: its device node (`/dev/ublkbN`).
pub const LABEL_DEVICE: &str = "device";
/// Metadata label of an attached disk: its ublk device id (`N`).
pub const LABEL_DEVICE_ID: &str = "device_id";
/// Environment variable of a task: the device node of its first BLOCK disk.
pub const ENV_BLOCK_DEVICE: &str = "MESOBLK_BLOCK_DEVICE";
/// Environment variable of a task: the mount point of its first MOUNT disk.
pub const ENV_MOUNT_PATH: &str = "MESOBLK_MOUNT_PATH";
/// Prefix of a task's per-disk variables: `MESOBLK_DISK_<ID>` is the device (BLOCK) or mount
/// point (MOUNT) of the disk with id `<ID>` ([`disk_env_var`]), `MESOBLK_DISK_<ID>_DEVICE`
/// always its device node.
pub const ENV_DISK_PREFIX: &str = "MESOBLK_DISK_";

/// Tolerance when comparing sizes in MB (Mesos keeps three decimals).
const MB_EPSILON: f64 = 1e-3;

/// What a created disk gives a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DiskKind {
    /// A raw block device.
    Block,
    /// A file system, mounted for the task.
    Mount,
}

impl DiskKind {
    /// The `disk.source.type` of this kind.
    pub fn source_type(self) -> source::Type {
        match self {
            DiskKind::Block => source::Type::Block,
            DiskKind::Mount => source::Type::Mount,
        }
    }
}

fn mesoblk_source(resource: &Resource) -> Option<&Source> {
    let source = resource.disk.as_ref()?.source.as_ref()?;
    (resource.name == "disk" && source.vendor.as_deref() == Some(VENDOR)).then_some(source)
}

fn size_mb(resource: &Resource) -> f64 {
    resource.scalar.as_ref().map_or(0.0, |s| s.value)
}

/// Whether `resource` is a mesoblk RAW pool (no `id`) of `profile` (any profile when `None`).
pub fn is_raw_pool(resource: &Resource, profile: Option<&str>) -> bool {
    mesoblk_source(resource).is_some_and(|s| {
        s.r#type() == source::Type::Raw
            && s.id.is_none()
            && profile.is_none_or(|p| s.profile.as_deref() == Some(p))
    })
}

/// The mesoblk RAW pools of `profile` in `offer`.
pub fn raw_pools<'a>(offer: &'a Offer, profile: &'a str) -> impl Iterator<Item = &'a Resource> {
    offer
        .resources
        .iter()
        .filter(move |r| is_raw_pool(r, Some(profile)))
}

/// Up to `count` slices of `size_mb` each cut from the RAW pools of `profile` in `offer`
/// (several from one pool when it is big enough). Each slice is the pool resource (provider,
/// reservations, allocation) with its size set to `size_mb`: the source of a CREATE_DISK, or a
/// task's disk for its lifetime only.
pub fn raw_slices(offer: &Offer, profile: &str, size_mb: f64, count: usize) -> Vec<Resource> {
    let mut slices = Vec::new();
    if size_mb.is_nan() || size_mb <= 0.0 {
        return slices;
    }
    for pool in raw_pools(offer, profile) {
        let mut left = self::size_mb(pool);
        while slices.len() < count && left + MB_EPSILON >= size_mb {
            let mut slice = pool.clone();
            slice.scalar = Some(value::Scalar { value: size_mb });
            slices.push(slice);
            left -= size_mb;
        }
    }
    slices
}

/// A CREATE_DISK turning `source` (a RAW slice from [`raw_slices`]) into a `kind` disk, with
/// the operation id `operation_id` so its status is reported.
pub fn create_disk(source: Resource, kind: DiskKind, operation_id: impl Into<String>) -> Operation {
    operations::with_id(
        operations::create_disk(source, kind.source_type(), None),
        operation_id,
    )
}

/// A DESTROY_DISK giving `disk` (a created disk, as offered) back to its pool.
pub fn destroy_disk(disk: Resource, operation_id: impl Into<String>) -> Operation {
    operations::with_id(operations::destroy_disk(disk), operation_id)
}

/// The kind of a created mesoblk disk (`None` for RAW or foreign resources).
pub fn disk_kind(resource: &Resource) -> Option<DiskKind> {
    match mesoblk_source(resource)?.r#type() {
        source::Type::Block => Some(DiskKind::Block),
        source::Type::Mount => Some(DiskKind::Mount),
        _ => None,
    }
}

/// The id of a created mesoblk disk.
pub fn disk_id(resource: &Resource) -> Option<&str> {
    disk_kind(resource)?;
    mesoblk_source(resource)?.id.as_deref()
}

/// The created mesoblk disks of `kind` in `offer` (offered after a CREATE_DISK).
pub fn created_disks(offer: &Offer, kind: DiskKind) -> impl Iterator<Item = &Resource> {
    offer
        .resources
        .iter()
        .filter(move |r| disk_kind(r) == Some(kind) && disk_id(r).is_some())
}

/// The resource a task lists to use `disk` (a created disk or a RAW slice). Without
/// `container_path` the agent picks where a MOUNT disk is mounted and reports it in the
/// [`LABEL_PATH`] label and [`ENV_MOUNT_PATH`]. A `container_path` (relative to the sandbox)
/// is for persistent volumes only (a disk carrying `persistence`, made by CREATE): the master
/// refuses a plain disk with one, as Mesos does ("Non-persistent volume not supported").
pub fn task_disk(disk: &Resource, container_path: Option<&str>) -> Resource {
    let mut resource = disk.clone();
    if let Some(path) = container_path {
        let info = resource.disk.get_or_insert_with(DiskInfo::default);
        info.volume = Some(Volume {
            mode: volume::Mode::Rw as i32,
            container_path: path.to_owned(),
            ..Volume::default()
        });
    }
    resource
}

/// A disk the agent attached to a task, as its resources describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedDisk {
    /// The disk's id (`None` for a task-lifetime slice of a pool).
    pub id: Option<String>,
    /// BLOCK or MOUNT (`None` for a RAW slice).
    pub kind: Option<DiskKind>,
    /// Where the task finds it: the device node, or the mount point.
    pub path: PathBuf,
    /// The device node, when reported.
    pub device: Option<PathBuf>,
    /// The ublk device id, when reported.
    pub device_id: Option<u32>,
}

/// The mesoblk disks in `resources` that carry attachment labels (a task's resources as its
/// executor receives them).
pub fn attached_disks(resources: &[Resource]) -> Vec<AttachedDisk> {
    resources
        .iter()
        .filter_map(|resource| {
            let source = mesoblk_source(resource)?;
            let labels = &source.metadata.as_ref()?.labels;
            let label = |key: &str| {
                labels
                    .iter()
                    .find(|l| l.key == key)
                    .and_then(|l| l.value.clone())
            };
            Some(AttachedDisk {
                id: source.id.clone(),
                kind: disk_kind(resource),
                path: PathBuf::from(label(LABEL_PATH)?),
                device: label(LABEL_DEVICE).map(PathBuf::from),
                device_id: label(LABEL_DEVICE_ID).and_then(|d| d.parse().ok()),
            })
        })
        .collect()
}

/// The name of the variable holding the path of the disk with id `disk_id`:
/// `MESOBLK_DISK_` and the id in upper case with `-` as `_` (`vol-1a` → `MESOBLK_DISK_VOL_1A`).
pub fn disk_env_var(disk_id: &str) -> String {
    format!(
        "{ENV_DISK_PREFIX}{}",
        disk_id.to_ascii_uppercase().replace('-', "_")
    )
}

/// Where `task` finds its disk: the first attached disk's [`LABEL_PATH`], else
/// [`ENV_BLOCK_DEVICE`] or [`ENV_MOUNT_PATH`] in the task's command environment.
pub fn device_path(task: &TaskInfo) -> Option<PathBuf> {
    if let Some(disk) = attached_disks(&task.resources).into_iter().next() {
        return Some(disk.path);
    }
    let environment = task.command.as_ref()?.environment.as_ref()?;
    [ENV_BLOCK_DEVICE, ENV_MOUNT_PATH].iter().find_map(|name| {
        environment
            .variables
            .iter()
            .find(|v| v.name == *name)
            .and_then(|v| v.value.as_deref())
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// [`ENV_BLOCK_DEVICE`] in the current process's environment (a task's command, or an
/// executor started for one task).
pub fn device_path_from_env() -> Option<PathBuf> {
    env_path(ENV_BLOCK_DEVICE)
}

/// [`ENV_MOUNT_PATH`] in the current process's environment.
pub fn mount_path_from_env() -> Option<PathBuf> {
    env_path(ENV_MOUNT_PATH)
}

/// The path of the disk with id `disk_id` from the current process's environment
/// ([`disk_env_var`]).
pub fn disk_path_from_env(disk_id: &str) -> Option<PathBuf> {
    env_path(&disk_env_var(disk_id))
}

#[cfg(test)]
mod tests {
    use mesoblk_proto::mesos::v1::environment::Variable;
    use mesoblk_proto::mesos::v1::{
        AgentId, CommandInfo, Environment, FrameworkId, Label, Labels, OfferId, ResourceProviderId,
    };

    use super::*;
    use crate::operations::scalar;

    fn disk(kind: source::Type, profile: &str, id: Option<&str>, mb: f64) -> Resource {
        Resource {
            provider_id: Some(ResourceProviderId { value: "rp".into() }),
            disk: Some(DiskInfo {
                source: Some(Source {
                    r#type: kind as i32,
                    vendor: Some(VENDOR.into()),
                    profile: Some(profile.into()),
                    id: id.map(str::to_owned),
                    ..Source::default()
                }),
                ..DiskInfo::default()
            }),
            ..scalar("disk", mb)
        }
    }

    fn offer(resources: Vec<Resource>) -> Offer {
        Offer {
            id: OfferId { value: "o".into() },
            framework_id: FrameworkId { value: "f".into() },
            agent_id: AgentId { value: "a".into() },
            hostname: "h".into(),
            resources,
            ..Offer::default()
        }
    }

    #[test]
    fn slices_come_from_pools_of_the_profile() {
        let offer = offer(vec![
            scalar("cpus", 4.0),
            scalar("disk", 10_000.0),
            disk(source::Type::Raw, "slow", None, 10_000.0),
            disk(source::Type::Raw, "fast", None, 2_500.0),
            disk(source::Type::Raw, "fast", Some("vol"), 9_000.0),
            disk(source::Type::Raw, "fast", None, 1_000.0),
        ]);
        let slices = raw_slices(&offer, "fast", 1_000.0, 10);
        assert_eq!(
            slices.len(),
            3,
            "two from the first pool, one from the second"
        );
        for slice in &slices {
            assert!(is_raw_pool(slice, Some("fast")));
            assert_eq!(size_mb(slice), 1_000.0);
            assert_eq!(
                slice.provider_id.as_ref().map(|p| p.value.as_str()),
                Some("rp")
            );
        }
        assert_eq!(raw_slices(&offer, "fast", 1_000.0, 1).len(), 1);
        assert!(raw_slices(&offer, "fast", 3_000.0, 1).is_empty());
        assert!(raw_slices(&offer, "fast", 0.0, 1).is_empty());
        assert!(raw_slices(&offer, "none", 1.0, 1).is_empty());
    }

    #[test]
    fn create_and_destroy_disk_name_their_operation() {
        let slice = disk(source::Type::Raw, "fast", None, 100.0);
        let op = create_disk(slice, DiskKind::Block, "create-1");
        assert_eq!(op.id.as_ref().map(|i| i.value.as_str()), Some("create-1"));
        let body = op.create_disk.expect("create_disk");
        assert_eq!(body.target_type(), source::Type::Block);
        assert_eq!(body.target_profile, None);
        let created = disk(source::Type::Mount, "fast", Some("vol-1"), 100.0);
        let op = destroy_disk(created.clone(), "destroy-1");
        assert_eq!(op.destroy_disk.expect("destroy_disk").source, created);
    }

    #[test]
    fn created_disks_are_found_by_kind() {
        let offer = offer(vec![
            disk(source::Type::Block, "fast", Some("b1"), 100.0),
            disk(source::Type::Mount, "fast", Some("m1"), 100.0),
            disk(source::Type::Raw, "fast", None, 100.0),
        ]);
        let blocks: Vec<_> = created_disks(&offer, DiskKind::Block).collect();
        assert_eq!(blocks.len(), 1);
        assert_eq!(disk_id(blocks[0]), Some("b1"));
        assert_eq!(disk_kind(blocks[0]), Some(DiskKind::Block));
        let mounts: Vec<_> = created_disks(&offer, DiskKind::Mount).collect();
        assert_eq!(disk_id(mounts[0]), Some("m1"));
        let with_path = task_disk(mounts[0], Some("data"));
        let volume = with_path.disk.and_then(|d| d.volume).expect("volume");
        assert_eq!(volume.container_path, "data");
        assert_eq!(volume.mode(), volume::Mode::Rw);
        assert_eq!(task_disk(blocks[0], None), *blocks[0]);
    }

    #[test]
    fn executors_find_the_device_in_labels_or_environment() {
        let mut attached = disk(source::Type::Block, "fast", Some("b1"), 100.0);
        let label = |k: &str, v: &str| Label {
            key: k.into(),
            value: Some(v.into()),
        };
        attached
            .disk
            .as_mut()
            .and_then(|d| d.source.as_mut())
            .expect("source")
            .metadata = Some(Labels {
            labels: vec![
                label(LABEL_POOL, "p"),
                label(LABEL_PATH, "/dev/ublkb3"),
                label(LABEL_DEVICE, "/dev/ublkb3"),
                label(LABEL_DEVICE_ID, "3"),
            ],
        });
        let mut task = TaskInfo {
            resources: vec![scalar("cpus", 1.0), attached],
            ..TaskInfo::default()
        };
        let disks = attached_disks(&task.resources);
        assert_eq!(
            disks,
            vec![AttachedDisk {
                id: Some("b1".into()),
                kind: Some(DiskKind::Block),
                path: "/dev/ublkb3".into(),
                device: Some("/dev/ublkb3".into()),
                device_id: Some(3),
            }]
        );
        assert_eq!(device_path(&task), Some("/dev/ublkb3".into()));

        task.resources.truncate(1);
        assert_eq!(device_path(&task), None);
        task.command = Some(CommandInfo {
            environment: Some(Environment {
                variables: vec![Variable {
                    name: ENV_BLOCK_DEVICE.into(),
                    value: Some("/dev/ublkb7".into()),
                    ..Variable::default()
                }],
            }),
            ..CommandInfo::default()
        });
        assert_eq!(device_path(&task), Some("/dev/ublkb7".into()));
    }

    #[test]
    fn per_disk_variables_follow_the_agent() {
        assert_eq!(disk_env_var("vol-1a2b"), "MESOBLK_DISK_VOL_1A2B");
        assert_eq!(disk_path_from_env("no-such-disk-anywhere"), None);
    }
}
