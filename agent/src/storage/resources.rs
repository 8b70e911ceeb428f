//! Mesos disk resources: what the agent reports for its pools and volumes, what a disk resource
//! in an operation or a task asks for, and the capacity arithmetic behind both. Pure: no file,
//! no device.
//!
//! # What is reported
//!
//! - Per profile, a RAW pool from the agent's resource provider:
//!   `{"name":"disk","type":"SCALAR","scalar":{"value":MB},"provider_id":{"value":P},
//!     "disk":{"source":{"type":"RAW","vendor":"mesoblk","profile":F}}}`, no `id`.
//! - Per volume made by CREATE_DISK, a BLOCK or MOUNT disk of its size with `id` = the volume
//!   id, the same `vendor` and `profile`, and `metadata` label `pool`; reservations are those of
//!   the CREATE_DISK's source. These labels never change, so the master can keep the resource in
//!   its books. While a volume is attached, the task-facing view ([`attached_view`]) adds
//!   `path` (the device, or the mount point of a MOUNT disk), `device` (`/dev/ublkbN`) and
//!   `device_id` (`N`); the master should identify a volume by `provider_id` and `source.id`.
//!
//! # Capacity
//!
//! A pool may hold volumes adding up to `capacity = size × overcommit` (rounded down to MiB).
//! Every volume it holds, whatever its state or lifetime, counts against that: a CREATE_DISK or
//! an ephemeral disk is refused when it does not fit in `capacity − all volumes`
//! ([`PoolUsage::available_mb`]).
//!
//! Spare devices (`storage::spares`) are the exception: nobody holds them yet, so they count
//! nowhere. A spare is made only while its size is available, and claiming it checks the
//! capacity again as a new ephemeral disk would.
//!
//! What is *offered* is `capacity − persistent volumes` ([`PoolUsage::offered_mb`]): a task
//! running on a slice of the RAW pool (an ephemeral volume) holds that slice as part of its own
//! resources, which the master already subtracts, so the agent keeps it in the pool's total.
//!
//! One pool with several profiles: every profile offers the pool's whole offerable capacity,
//! as Mesos's storage local resource provider reports per-profile capacity from one backing
//! store. The agent is the arbiter: a CREATE_DISK or ephemeral disk that no longer fits because
//! another profile of the same pool took the space fails with a clear message, and after every
//! CREATE_DISK or DESTROY_DISK the agent reports new totals in which all of the pool's profiles
//! shrank or grew together. (The master therefore counts a pool once per profile when it sums
//! an agent's disk; that is the price of letting any profile use all of the free space.)

use std::path::{Component, Path, PathBuf};

use mesoblk_proto::mesos::v1::resource::disk_info::{source, Source};
use mesoblk_proto::mesos::v1::resource::DiskInfo;
use mesoblk_proto::mesos::v1::{
    value, volume, Label, Labels, Resource, ResourceProviderId, ResourceProviderInfo,
};
use serde::Serialize;

use super::config::{ResolvedPool, MIB};
use super::error::StorageError;
use super::volume::{Attachment, VolumeId, VolumeKind, VolumeRecord};

/// `disk.source.vendor` of every disk the agent reports.
pub const VENDOR: &str = "mesoblk";
/// The resource provider's type.
pub const PROVIDER_TYPE: &str = "org.mesoblk.rp.ublk";
/// The resource provider's name.
pub const PROVIDER_NAME: &str = "ublk";
/// Metadata label: the pool a volume lives in.
pub const LABEL_POOL: &str = "pool";
/// Metadata label (attached volumes): the device node, or a MOUNT disk's mount point.
pub const LABEL_PATH: &str = "path";
/// Metadata label (attached volumes): the device node.
pub const LABEL_DEVICE: &str = "device";
/// Metadata label (attached volumes): the ublk device id.
pub const LABEL_DEVICE_ID: &str = "device_id";
/// Largest disk accepted, in MB (1 EiB): keeps byte counts far from overflow.
pub const DISK_MB_MAX: u64 = 1 << 40;

/// What a disk resource asks of this agent.
#[derive(Clone, Debug, PartialEq)]
pub enum DiskClaim {
    /// Not one of this agent's block disks (the sandbox's own `disk`, or not a disk at all).
    Other,
    /// A slice of a RAW pool: an ephemeral volume for a task, or a CREATE_DISK's source.
    Raw {
        /// The profile.
        profile: String,
        /// Size in MB.
        mb: u64,
        /// `disk.volume.container_path`, if given.
        container_path: Option<String>,
        /// `disk.volume.mode` is RO.
        read_only: bool,
    },
    /// A volume made by CREATE_DISK.
    Volume {
        /// Its id.
        id: VolumeId,
        /// BLOCK or MOUNT.
        kind: VolumeKind,
        /// Size in MB.
        mb: u64,
        /// `disk.volume.container_path`, if given.
        container_path: Option<String>,
        /// `disk.volume.mode` is RO.
        read_only: bool,
    },
}

fn bad(reason: impl Into<String>) -> StorageError {
    StorageError::BadDiskResource {
        reason: reason.into(),
    }
}

/// What `resource` asks of the agent whose resource provider is `provider_id`.
pub fn classify(resource: &Resource, provider_id: &str) -> Result<DiskClaim, StorageError> {
    if resource.name != "disk" {
        return Ok(DiskClaim::Other);
    }
    let source = resource.disk.as_ref().and_then(|d| d.source.as_ref());
    let source_type = source.map(|s| s.r#type());
    let Some(provider) = &resource.provider_id else {
        if matches!(source_type, Some(source::Type::Raw | source::Type::Block))
            || source.and_then(|s| s.vendor.as_deref()) == Some(VENDOR)
        {
            return Err(bad(
                "a RAW or BLOCK disk must come from a resource provider (provider_id is missing)",
            ));
        }
        return Ok(DiskClaim::Other);
    };
    if provider.value != provider_id {
        return Err(StorageError::UnknownProvider {
            provider: provider.value.clone(),
            ours: provider_id.to_owned(),
        });
    }
    let source = source.ok_or_else(|| bad("the disk has no disk.source"))?;
    if let Some(vendor) = &source.vendor {
        if vendor != VENDOR {
            return Err(bad(format!("vendor {vendor:?} is not {VENDOR:?}")));
        }
    }
    let mb = whole_mb(resource)?;
    let volume = resource.disk.as_ref().and_then(|d| d.volume.as_ref());
    let container_path = volume.map(|v| v.container_path.clone());
    let read_only = volume.is_some_and(|v| v.mode() == volume::Mode::Ro);
    match source.r#type() {
        source::Type::Raw => {
            if source.id.is_some() {
                return Err(bad(
                    "RAW disks with an id (pre-existing volumes) are not provided by mesoblk",
                ));
            }
            let profile = source
                .profile
                .clone()
                .ok_or_else(|| bad("the RAW disk has no profile"))?;
            Ok(DiskClaim::Raw {
                profile,
                mb,
                container_path,
                read_only,
            })
        }
        kind @ (source::Type::Block | source::Type::Mount) => Ok(DiskClaim::Volume {
            id: volume_id(source, kind)?,
            kind: if kind == source::Type::Block {
                VolumeKind::Block
            } else {
                VolumeKind::Mount
            },
            mb,
            container_path,
            read_only,
        }),
        other => Err(bad(format!(
            "disk source type {} is not provided by mesoblk",
            other.as_str_name()
        ))),
    }
}

fn volume_id(source: &Source, kind: source::Type) -> Result<VolumeId, StorageError> {
    let id = source
        .id
        .as_deref()
        .ok_or_else(|| bad(format!("the {} disk has no id", kind.as_str_name())))?;
    VolumeId::parse(id).map_err(|e| bad(e.to_string()))
}

/// The resource's size as a whole number of MB. Mesos scalars are fixed-point with three
/// decimals, so `256.0004` is 256 but `256.5` is refused.
pub fn whole_mb(resource: &Resource) -> Result<u64, StorageError> {
    if resource.r#type() != value::Type::Scalar {
        return Err(bad("a disk must be a SCALAR resource"));
    }
    let mb = resource.scalar.map_or(0.0, |s| s.value);
    let thousandths = (mb * 1000.0).round();
    let whole = thousandths % 1000.0 == 0.0;
    // DISK_MB_MAX is far below 2^53, so the comparison is exact.
    #[allow(clippy::cast_precision_loss)]
    let in_range = mb.is_finite() && thousandths >= 1000.0 && mb <= DISK_MB_MAX as f64;
    if !(whole && in_range) {
        return Err(StorageError::BadSize { mb });
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok((thousandths / 1000.0) as u64)
}

fn label(key: &str, value: impl Into<String>) -> Label {
    Label {
        key: key.to_owned(),
        value: Some(value.into()),
    }
}

/// The resource provider's description (`ResourceProviderInfo`).
pub fn provider_info(provider_id: &str) -> ResourceProviderInfo {
    ResourceProviderInfo {
        id: Some(ResourceProviderId {
            value: provider_id.to_owned(),
        }),
        attributes: Vec::new(),
        r#type: PROVIDER_TYPE.to_owned(),
        name: PROVIDER_NAME.to_owned(),
        default_reservations: Vec::new(),
    }
}

/// A RAW pool disk of `mb` MB for `profile` (unreserved).
pub fn raw_disk(provider_id: &str, profile: &str, mb: u64) -> Resource {
    #[allow(clippy::cast_precision_loss)]
    let value = mb as f64;
    Resource {
        provider_id: Some(ResourceProviderId {
            value: provider_id.to_owned(),
        }),
        name: "disk".to_owned(),
        r#type: value::Type::Scalar as i32,
        scalar: Some(value::Scalar { value }),
        disk: Some(DiskInfo {
            persistence: None,
            volume: None,
            source: Some(Source {
                r#type: source::Type::Raw as i32,
                vendor: Some(VENDOR.to_owned()),
                profile: Some(profile.to_owned()),
                ..Source::default()
            }),
        }),
        ..Resource::default()
    }
}

/// The CREATE_DISK result: `raw` (the operation's source) turned into a `kind` disk with `id`,
/// keeping its size, reservations and allocation.
pub fn volume_resource(raw: &Resource, kind: VolumeKind, id: &VolumeId, pool: &str) -> Resource {
    let profile = raw
        .disk
        .as_ref()
        .and_then(|d| d.source.as_ref())
        .and_then(|s| s.profile.clone());
    let source_type = match kind {
        VolumeKind::Block => source::Type::Block,
        VolumeKind::Mount => source::Type::Mount,
    };
    Resource {
        disk: Some(DiskInfo {
            persistence: None,
            volume: None,
            source: Some(Source {
                r#type: source_type as i32,
                vendor: Some(VENDOR.to_owned()),
                id: Some(id.as_str().to_owned()),
                metadata: Some(Labels {
                    labels: vec![label(LABEL_POOL, pool)],
                }),
                profile,
                ..Source::default()
            }),
        }),
        ..raw.clone()
    }
}

/// The DESTROY_DISK result: the volume `disk` back as a slice of its RAW pool, keeping its size,
/// reservations and allocation.
pub fn pool_resource(disk: &Resource, profile: &str) -> Resource {
    Resource {
        disk: Some(DiskInfo {
            persistence: None,
            volume: None,
            source: Some(Source {
                r#type: source::Type::Raw as i32,
                vendor: Some(VENDOR.to_owned()),
                profile: Some(profile.to_owned()),
                ..Source::default()
            }),
        }),
        ..disk.clone()
    }
}

/// `resource` as the agent keeps it in its totals: without `allocation_info`.
pub fn unallocated(resource: &Resource) -> Resource {
    Resource {
        allocation_info: None,
        ..resource.clone()
    }
}

/// `resource` (a task's disk) with the attachment's labels added to its metadata: `path`,
/// `device`, `device_id`, and `mount.root` for a MOUNT disk.
pub fn attached_view(resource: &Resource, attachment: &Attachment) -> Resource {
    let mut view = resource.clone();
    let disk = view.disk.get_or_insert_with(DiskInfo::default);
    let source = disk.source.get_or_insert_with(Source::default);
    let device = attachment.block_path.display().to_string();
    let path = attachment
        .mount_path
        .as_ref()
        .map_or_else(|| device.clone(), |m| m.display().to_string());
    if attachment.mount_path.is_some() {
        source.mount = Some(source::Mount {
            root: Some(path.clone()),
        });
    }
    let labels = &mut source.metadata.get_or_insert_with(Labels::default).labels;
    labels.retain(|l| ![LABEL_PATH, LABEL_DEVICE, LABEL_DEVICE_ID].contains(&l.key.as_str()));
    labels.push(label(LABEL_PATH, path));
    labels.push(label(LABEL_DEVICE, device));
    labels.push(label(LABEL_DEVICE_ID, attachment.device_id.to_string()));
    view
}

/// Checks a container path (relative, no `..`, not empty) and joins it to the sandbox.
pub fn mount_target(sandbox: &Path, container_path: &str) -> Result<PathBuf, StorageError> {
    let path = Path::new(container_path);
    let plain = path.components().next().is_some()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !plain {
        return Err(StorageError::BadContainerPath {
            path: container_path.to_owned(),
        });
    }
    Ok(sandbox.join(path))
}

/// How full a pool is.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PoolUsage {
    /// The pool.
    pub pool: String,
    /// Its folder.
    pub dir: PathBuf,
    /// Its configured size, in bytes.
    pub size_bytes: u64,
    /// Its overcommit ratio.
    pub overcommit: f64,
    /// `size × overcommit`, rounded down to MiB.
    pub capacity_bytes: u64,
    /// Bytes held by persistent (CREATE_DISK) volumes, in any state.
    pub persistent_bytes: u64,
    /// Bytes held by ephemeral volumes (tasks on a slice of the RAW pool).
    pub ephemeral_bytes: u64,
    /// Volumes in the pool, spares not counted.
    pub volumes: usize,
    /// Spare devices' volumes in the pool (counted in no figure above).
    pub spares: usize,
}

impl PoolUsage {
    /// Computes a pool's usage from the volumes that live in it.
    pub fn of<'a>(
        pool: &ResolvedPool,
        volumes: impl IntoIterator<Item = &'a VolumeRecord>,
    ) -> Self {
        let mut usage = PoolUsage {
            pool: pool.config.name.clone(),
            dir: pool.dir.clone(),
            size_bytes: pool.config.size.0,
            overcommit: pool.config.overcommit,
            capacity_bytes: pool.capacity_bytes(),
            persistent_bytes: 0,
            ephemeral_bytes: 0,
            volumes: 0,
            spares: 0,
        };
        for volume in volumes.into_iter().filter(|v| v.pool == usage.pool) {
            if volume.is_spare() {
                usage.spares += 1;
                continue;
            }
            usage.volumes += 1;
            if volume.is_ephemeral() {
                usage.ephemeral_bytes += volume.size_bytes;
            } else {
                usage.persistent_bytes += volume.size_bytes;
            }
        }
        usage
    }

    /// Bytes held by all volumes.
    pub fn used_bytes(&self) -> u64 {
        self.persistent_bytes + self.ephemeral_bytes
    }

    /// MB a new volume may still take.
    pub fn available_mb(&self) -> u64 {
        self.capacity_bytes.saturating_sub(self.used_bytes()) / MIB
    }

    /// MB each of the pool's profiles offers as a RAW disk.
    pub fn offered_mb(&self) -> u64 {
        self.capacity_bytes.saturating_sub(self.persistent_bytes) / MIB
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::storage::config::{ByteSize, PoolConfig};
    use crate::storage::volume::{Lifetime, VolumeState, RECORD_FORMAT};

    const PROVIDER: &str = "rp-1";

    fn scalar_disk(mb: f64) -> Resource {
        let mut r = raw_disk(PROVIDER, "fast", 1);
        r.scalar = Some(value::Scalar { value: mb });
        r
    }

    #[test]
    fn pools_are_reported_as_mesos_raw_disks() {
        let r = raw_disk(PROVIDER, "fast", 1024);
        let json: serde_json::Value =
            serde_json::from_str(&mesoblk_proto::json::to_json(&r)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "provider_id": {"value": "rp-1"},
                "name": "disk",
                "type": "SCALAR",
                "scalar": {"value": 1024.0},
                "disk": {"source": {"type": "RAW", "vendor": "mesoblk", "profile": "fast"}}
            })
        );
        assert_eq!(
            classify(&r, PROVIDER).unwrap(),
            DiskClaim::Raw {
                profile: "fast".into(),
                mb: 1024,
                container_path: None,
                read_only: false
            }
        );
    }

    #[test]
    fn create_and_destroy_convert_resources_both_ways() {
        let mut raw = raw_disk(PROVIDER, "fast", 256);
        raw.allocation_info = Some(mesoblk_proto::mesos::v1::resource::AllocationInfo {
            role: Some("web".into()),
        });
        let id = VolumeId::parse("vol-1").unwrap();
        let block = volume_resource(&raw, VolumeKind::Block, &id, "local");
        let source = block.disk.as_ref().unwrap().source.as_ref().unwrap();
        assert_eq!(source.r#type(), source::Type::Block);
        assert_eq!(source.id.as_deref(), Some("vol-1"));
        assert_eq!(source.profile.as_deref(), Some("fast"));
        assert_eq!(source.metadata.as_ref().unwrap().labels[0].key, LABEL_POOL);
        assert_eq!(block.allocation_info, raw.allocation_info);
        assert_eq!(unallocated(&block).allocation_info, None);
        assert!(matches!(
            classify(&block, PROVIDER).unwrap(),
            DiskClaim::Volume {
                kind: VolumeKind::Block,
                mb: 256,
                ..
            }
        ));
        assert_eq!(pool_resource(&block, "fast"), raw);
    }

    #[test]
    fn attached_views_name_the_device_and_mount() {
        let id = VolumeId::parse("vol-1").unwrap();
        let disk = volume_resource(&raw_disk(PROVIDER, "f", 8), VolumeKind::Mount, &id, "p");
        let attachment = Attachment {
            task_id: "t".into(),
            device_id: 4,
            server_pid: 1,
            block_path: "/dev/ublkb4".into(),
            mount_path: Some("/sandbox/data".into()),
            uid: 0,
            gid: 0,
        };
        let view = attached_view(&attached_view(&disk, &attachment), &attachment);
        let source = view.disk.unwrap().source.unwrap();
        let labels: Vec<(String, String)> = source
            .metadata
            .unwrap()
            .labels
            .into_iter()
            .map(|l| (l.key, l.value.unwrap()))
            .collect();
        let pairs = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        assert_eq!(
            labels,
            vec![
                pairs("pool", "p"),
                pairs("path", "/sandbox/data"),
                pairs("device", "/dev/ublkb4"),
                pairs("device_id", "4"),
            ]
        );
        assert_eq!(source.mount.unwrap().root.as_deref(), Some("/sandbox/data"));
    }

    #[test]
    fn disks_that_are_not_ours_are_told_apart() {
        let plain = Resource {
            name: "disk".into(),
            r#type: value::Type::Scalar as i32,
            scalar: Some(value::Scalar { value: 100.0 }),
            ..Resource::default()
        };
        assert_eq!(classify(&plain, PROVIDER).unwrap(), DiskClaim::Other);
        let cpus = Resource {
            name: "cpus".into(),
            ..plain.clone()
        };
        assert_eq!(classify(&cpus, PROVIDER).unwrap(), DiskClaim::Other);
        let mut orphan = raw_disk(PROVIDER, "f", 1);
        orphan.provider_id = None;
        assert!(classify(&orphan, PROVIDER)
            .unwrap_err()
            .to_string()
            .contains("provider_id is missing"));
        let err = classify(&raw_disk("other", "f", 1), PROVIDER).unwrap_err();
        assert!(matches!(err, StorageError::UnknownProvider { .. }), "{err}");
        let mut with_id = raw_disk(PROVIDER, "f", 1);
        with_id.disk.as_mut().unwrap().source.as_mut().unwrap().id = Some("x".into());
        assert!(classify(&with_id, PROVIDER).is_err());
        let mut foreign = raw_disk(PROVIDER, "f", 1);
        foreign
            .disk
            .as_mut()
            .unwrap()
            .source
            .as_mut()
            .unwrap()
            .vendor = Some("csi".into());
        assert!(classify(&foreign, PROVIDER).is_err());
        let mut bad_id = volume_resource(
            &raw_disk(PROVIDER, "f", 1),
            VolumeKind::Block,
            &VolumeId::parse("vol-1").unwrap(),
            "p",
        );
        bad_id.disk.as_mut().unwrap().source.as_mut().unwrap().id = Some("../x".into());
        assert!(classify(&bad_id, PROVIDER).is_err());
    }

    #[test]
    fn sizes_must_be_whole_megabytes() {
        assert_eq!(whole_mb(&scalar_disk(256.0)).unwrap(), 256);
        assert_eq!(whole_mb(&scalar_disk(256.0004)).unwrap(), 256);
        for bad in [0.0, -1.0, 0.5, 256.5, f64::NAN, f64::INFINITY, 1e30] {
            assert!(
                matches!(
                    whole_mb(&scalar_disk(bad)),
                    Err(StorageError::BadSize { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn container_paths_stay_inside_the_sandbox() {
        let sandbox = Path::new("/sb");
        assert_eq!(
            mount_target(sandbox, "data/db").unwrap(),
            Path::new("/sb/data/db")
        );
        for bad in ["", "/abs", "../up", "a/../../b"] {
            assert!(mount_target(sandbox, bad).is_err(), "{bad:?}");
        }
    }

    fn pool(size_mb: u64, overcommit: f64) -> ResolvedPool {
        ResolvedPool {
            config: PoolConfig {
                name: "p".into(),
                dir: Some("/p".into()),
                device: None,
                size: ByteSize(size_mb * MIB),
                overcommit,
            },
            dir: "/p".into(),
        }
    }

    fn volume(n: usize, mb: u64, ephemeral: bool) -> VolumeRecord {
        VolumeRecord {
            format: RECORD_FORMAT,
            id: VolumeId::parse(&format!("vol-{n}")).unwrap(),
            pool: "p".into(),
            profile: "f".into(),
            kind: VolumeKind::Block,
            filesystem: None,
            size_bytes: mb * MIB,
            backing: format!("/p/vol-{n}.img").into(),
            cache: None,
            lifetime: if ephemeral {
                Lifetime::Ephemeral {
                    task_id: "t".into(),
                }
            } else {
                Lifetime::Persistent
            },
            state: VolumeState::Ready,
            resource: None,
            operation: None,
        }
    }

    #[test]
    fn ephemeral_volumes_stay_in_the_offer_but_not_in_what_is_available() {
        let volumes = [volume(1, 100, false), volume(2, 50, true)];
        let usage = PoolUsage::of(&pool(1000, 1.5), &volumes);
        assert_eq!(usage.capacity_bytes, 1500 * MIB);
        assert_eq!(usage.offered_mb(), 1400);
        assert_eq!(usage.available_mb(), 1350);
    }

    proptest! {
        /// Random requests against a pool, admitted only when they fit: the volumes never
        /// exceed the capacity, offered + persistent is the capacity, and releasing everything
        /// gives all of it back.
        #[test]
        fn admission_never_overcommits_beyond_the_ratio(
            size_mb in 1u64..4096,
            overcommit in 1.0f64..4.0,
            requests in proptest::collection::vec((1u64..2048, any::<bool>()), 0..40),
        ) {
            let pool = pool(size_mb, overcommit);
            let mut volumes = Vec::new();
            for (n, (mb, ephemeral)) in requests.into_iter().enumerate() {
                let usage = PoolUsage::of(&pool, &volumes);
                if mb <= usage.available_mb() {
                    volumes.push(volume(n, mb, ephemeral));
                }
                let usage = PoolUsage::of(&pool, &volumes);
                prop_assert!(usage.used_bytes() <= usage.capacity_bytes);
                prop_assert_eq!(usage.offered_mb() * MIB + usage.persistent_bytes, usage.capacity_bytes);
                prop_assert!(usage.available_mb() <= usage.offered_mb());
            }
            let capacity_mb = pool.capacity_bytes() / MIB;
            #[allow(clippy::cast_precision_loss)]
            let expected = (size_mb as f64 * overcommit).floor() as u64;
            prop_assert_eq!(capacity_mb, expected);
            prop_assert_eq!(PoolUsage::of(&pool, &[]).offered_mb(), capacity_mb);
        }
    }
}
