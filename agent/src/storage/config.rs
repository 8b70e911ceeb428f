//! Block pools and profiles: what the operator configures, parsed and validated before anything
//! is created.
//!
//! The configuration is one JSON document (given to the agent by a flag; see
//! `docs/agent-storage.md`):
//!
//! ```json
//! {
//!   "pools": [
//!     {"name": "local", "dir": "/var/lib/mesoblk/pools/local", "size": "100G", "overcommit": 2.0}
//!   ],
//!   "profiles": [
//!     {"name": "fast", "pool": "local", "filesystem": "ext4",
//!      "qos": {"total_ops": {"ops_per_sec": 5000}}},
//!     {"name": "bulk", "pool": "local", "filesystem": "xfs", "queues": 2, "depth": 64}
//!   ]
//! }
//! ```
//!
//! Checking happens in two steps. [`StorageConfig::from_str`] / [`StorageConfig::from_file`]
//! check everything that needs no file system (names, references, sizes, the overcommit ratio,
//! cache modes, each profile's device limits) and never touch the disk. [`StorageConfig::resolve`]
//! then checks each pool folder against the agent's allow-list (`--block_pool_dirs`), creating a
//! missing pool folder only when it lies inside an allowed folder. Every rejection is a
//! [`ConfigError`] naming the pool or profile at fault.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};
use thiserror::Error;
use ublk_target::backend::file::DirectIo;
use ublk_target::cache::CacheMode;
use ublk_target::device_cache::{CacheSpec, CacheStoreSpec};
use ublk_target::qos::QosLimits;
use ublk_target::spec::{parse_size, BackendSpec, DeviceSpec, SpecError};

/// One MiB: Mesos's "MB" for disk resources.
pub const MIB: u64 = 1 << 20;
/// Longest pool or profile name.
pub const NAME_MAX_LEN: usize = 64;
/// Highest overcommit ratio accepted: beyond this, thin provisioning is a typo.
pub const OVERCOMMIT_MAX: f64 = 100.0;
/// Hardware queues per device unless a profile says otherwise.
pub const DEFAULT_QUEUES: u16 = 1;
/// Queue depth unless a profile says otherwise (as `mesoblk-target add`).
pub const DEFAULT_DEPTH: u16 = 128;
/// Largest I/O unless a profile says otherwise (as `mesoblk-target add`).
pub const DEFAULT_MAX_IO_BYTES: u64 = 256 << 10;
/// Most spare devices of one size a profile may keep: each is a running server.
pub const SPARES_MAX: u32 = 16;

/// The whole storage configuration: pools and the profiles carved from them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Where volumes live.
    #[serde(default)]
    pub pools: Vec<PoolConfig>,
    /// Device classes offered to frameworks, each backed by one pool.
    #[serde(default)]
    pub profiles: Vec<ProfileConfig>,
}

/// A block pool: a folder holding one sparse file per volume.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Its name (letters, digits, `.`, `_`, `-`).
    pub name: String,
    /// The folder holding the volumes' backing files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// A block device to carve volumes from. Not supported yet: rejected with a clear error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<PathBuf>,
    /// Its capacity: bytes, or a size such as `"100G"`.
    pub size: ByteSize,
    /// Thin provisioning: volumes may add up to `size × overcommit` (≥ 1.0; default 1.0).
    #[serde(default = "default_overcommit")]
    pub overcommit: f64,
}

/// A profile: a named device class frameworks ask for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileConfig {
    /// Its name, which frameworks see as the RAW disk's `profile`.
    pub name: String,
    /// The pool its volumes come from.
    pub pool: String,
    /// Cache mode of its devices: `none` (the default), `writeback`, `writethrough` or
    /// `writearound`; any but `none` needs `cache_pool` and `cache_size`.
    #[serde(default = "default_cache")]
    pub cache: String,
    /// The pool (on faster storage) holding each volume's cache store, `<dir>/<volume>.cache`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_pool: Option<String>,
    /// Each volume's cache store size: bytes, or a size such as `"256M"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_size: Option<ByteSize>,
    /// Per-device rate limits (the `mesoblk-target --qos-json` format).
    #[serde(default, skip_serializing_if = "QosLimits::is_unlimited")]
    pub qos: QosLimits,
    /// File system of MOUNT disks.
    #[serde(default)]
    pub filesystem: Filesystem,
    /// Hardware queues per device.
    #[serde(default = "default_queues")]
    pub queues: u16,
    /// Depth per queue.
    #[serde(default = "default_depth")]
    pub depth: u16,
    /// Largest read or write: bytes, or a size such as `"256K"`.
    #[serde(default = "default_max_io")]
    pub max_io_size: ByteSize,
    /// Direct-I/O policy for the backing file (`required`, `optional`, `disabled`).
    #[serde(default)]
    pub direct_io: DirectIo,
    /// Devices kept started ahead of their tasks, per size (see `storage::spares`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spares: Vec<SpareConfig>,
}

/// Spare devices of one size: `{"size": "1G", "count": 2}`. A task launched on a slice of the
/// profile's RAW pool of exactly this size, as a BLOCK disk, gets one of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpareConfig {
    /// The devices' size: a whole number of MiB.
    pub size: ByteSize,
    /// How many to keep (1 to [`SPARES_MAX`]; default 1).
    #[serde(default = "default_spare_count")]
    pub count: u32,
}

/// File systems a MOUNT disk can be formatted with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Filesystem {
    /// ext4 (`mkfs.ext4`).
    #[default]
    Ext4,
    /// XFS (`mkfs.xfs`).
    Xfs,
}

impl Filesystem {
    /// The name `mount` and `mkfs.<name>` use.
    pub fn name(self) -> &'static str {
        match self {
            Filesystem::Ext4 => "ext4",
            Filesystem::Xfs => "xfs",
        }
    }
}

/// A byte count, written in JSON as a number or as a size string (`"100G"`, `"256MiB"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer) {
            Ok(Raw::Bytes(n)) => Ok(ByteSize(n)),
            Ok(Raw::Text(text)) => parse_size(&text)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
            Err(_) => Err(serde::de::Error::custom(
                "expected a size: a number of bytes or a string such as \"100G\"",
            )),
        }
    }
}

fn default_overcommit() -> f64 {
    1.0
}
fn default_cache() -> String {
    "none".to_owned()
}
fn default_queues() -> u16 {
    DEFAULT_QUEUES
}
fn default_depth() -> u16 {
    DEFAULT_DEPTH
}
fn default_max_io() -> ByteSize {
    ByteSize(DEFAULT_MAX_IO_BYTES)
}
fn default_spare_count() -> u32 {
    1
}

/// Why a storage configuration was refused.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the storage configuration {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The text is not a storage configuration (bad JSON, unknown field, wrong type).
    #[error("the storage configuration is not valid")]
    Parse(#[source] serde_json::Error),
    /// A name with characters other than letters, digits, `.`, `_` and `-`, or too long.
    #[error("{kind} name {name:?} is not valid: use 1-64 letters, digits, '.', '_' or '-'")]
    BadName {
        /// `pool` or `profile`.
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// Two pools or two profiles share a name.
    #[error("{kind} {name:?} is configured twice")]
    DuplicateName {
        /// `pool` or `profile`.
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// A pool names neither a folder nor a device, or both.
    #[error("pool {pool:?} needs exactly one of \"dir\" (a folder) and \"device\"")]
    PoolLocation {
        /// The pool.
        pool: String,
    },
    /// Block-device pools are not implemented yet.
    #[error(
        "pool {pool:?}: block-device pools ({device}) are not supported yet; use a folder (\"dir\")"
    )]
    BlockDevicePool {
        /// The pool.
        pool: String,
        /// The device it names.
        device: PathBuf,
    },
    /// The pool folder is not an absolute path.
    #[error("pool {pool:?}: folder {dir} must be an absolute path without '..'")]
    RelativePoolDir {
        /// The pool.
        pool: String,
        /// The folder.
        dir: PathBuf,
    },
    /// A pool smaller than one MiB cannot hold a volume.
    #[error("pool {pool:?}: size {size} bytes is below the 1 MiB minimum")]
    PoolTooSmall {
        /// The pool.
        pool: String,
        /// Its size.
        size: u64,
    },
    /// The overcommit ratio is below 1 or absurd.
    #[error("pool {pool:?}: overcommit {value} must be between 1.0 and {OVERCOMMIT_MAX}")]
    BadOvercommit {
        /// The pool.
        pool: String,
        /// The ratio given.
        value: f64,
    },
    /// A pool no profile uses would offer nothing.
    #[error("pool {pool:?} has no profile: add a profile naming it, or remove the pool")]
    UnusedPool {
        /// The pool.
        pool: String,
    },
    /// A profile names a pool that does not exist.
    #[error("profile {profile:?} names pool {pool:?}, which is not configured")]
    UnknownPool {
        /// The profile.
        profile: String,
        /// The missing pool.
        pool: String,
    },
    /// The cache settings are incomplete or invalid.
    #[error("profile {profile:?}: {problem}")]
    BadCache {
        /// The profile.
        profile: String,
        /// What is wrong.
        problem: String,
    },
    /// A spare size or count is out of range, or a size is listed twice.
    #[error("profile {profile:?}: spares: {problem}")]
    BadSpares {
        /// The profile.
        profile: String,
        /// What is wrong.
        problem: String,
    },
    /// The profile's queues, depth, I/O size or QoS limits are outside what a device accepts.
    #[error("profile {profile:?} describes an invalid device")]
    BadDevice {
        /// The profile.
        profile: String,
        /// What `ublk-target` said.
        #[source]
        source: SpecError,
    },
    /// The allow-list is empty.
    #[error(
        "pool {pool:?}: folder {dir} is not allowed: no block pool folders are allowed \
         (--block_pool_dirs is empty)"
    )]
    NoAllowedDirs {
        /// The pool.
        pool: String,
        /// Its folder.
        dir: PathBuf,
    },
    /// The pool folder lies outside every allowed folder.
    #[error("pool {pool:?}: folder {dir} is outside the allowed block pool folders ({allowed})")]
    OutsideAllowedDirs {
        /// The pool.
        pool: String,
        /// Its folder (resolved).
        dir: PathBuf,
        /// The allow-list, comma-separated.
        allowed: String,
    },
    /// The pool folder could not be created or inspected.
    #[error("pool {pool:?}: cannot use folder {dir}")]
    PoolDir {
        /// The pool.
        pool: String,
        /// Its folder.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Two pools resolve to the same folder (their volumes and accounting would collide).
    #[error("pools {first:?} and {second:?} share the folder {dir}")]
    SharedPoolDir {
        /// One pool.
        first: String,
        /// The other.
        second: String,
        /// The folder.
        dir: PathBuf,
    },
    /// The pool is declared bigger than its file system (overcommit is the way to thin-provision).
    #[error(
        "pool {pool:?}: size {size} bytes exceeds its file system ({fs_size} bytes at {dir}); \
         use a smaller size and an overcommit ratio for thin provisioning"
    )]
    PoolExceedsFilesystem {
        /// The pool.
        pool: String,
        /// Its declared size.
        size: u64,
        /// The file system's size.
        fs_size: u64,
        /// The folder.
        dir: PathBuf,
    },
}

/// A pool whose folder has been checked against the allow-list and exists.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedPool {
    /// The pool as configured.
    pub config: PoolConfig,
    /// Its folder, canonical (symlinks resolved).
    pub dir: PathBuf,
}

impl ResolvedPool {
    /// How many bytes of volumes the pool may hold: `size × overcommit`, rounded down to MiB.
    pub fn capacity_bytes(&self) -> u64 {
        capacity_bytes(self.config.size.0, self.config.overcommit)
    }
}

/// `size × overcommit`, rounded down to a whole MiB (the unit disks are offered in).
pub fn capacity_bytes(size: u64, overcommit: f64) -> u64 {
    // Exact for sizes below 2^53 bytes (8 PiB); f64 → u64 saturates above.
    #[allow(clippy::cast_precision_loss)]
    let total = (size as f64 * overcommit).floor();
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let bytes = total as u64;
    bytes / MIB * MIB
}

impl StorageConfig {
    /// Reads and checks a configuration file (see the module docs).
    pub fn from_file(path: impl AsRef<Path>) -> Result<StorageConfig, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_str(&text)
    }

    /// Parses and checks a configuration (see the module docs). Touches no file.
    #[allow(clippy::should_implement_trait)]
    pub fn from_str(text: &str) -> Result<StorageConfig, ConfigError> {
        let config: StorageConfig = serde_json::from_str(text).map_err(ConfigError::Parse)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks everything that needs no file system.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut pools = BTreeSet::new();
        for pool in &self.pools {
            check_name("pool", &pool.name)?;
            if !pools.insert(pool.name.as_str()) {
                return Err(ConfigError::DuplicateName {
                    kind: "pool",
                    name: pool.name.clone(),
                });
            }
            validate_pool(pool)?;
        }
        let mut profiles = BTreeSet::new();
        for profile in &self.profiles {
            check_name("profile", &profile.name)?;
            if !profiles.insert(profile.name.as_str()) {
                return Err(ConfigError::DuplicateName {
                    kind: "profile",
                    name: profile.name.clone(),
                });
            }
            for pool in std::iter::once(&profile.pool).chain(&profile.cache_pool) {
                if !pools.contains(pool.as_str()) {
                    return Err(ConfigError::UnknownPool {
                        profile: profile.name.clone(),
                        pool: pool.clone(),
                    });
                }
            }
            validate_profile(profile)?;
        }
        let used = |pool: &PoolConfig| {
            self.profiles
                .iter()
                .any(|p| p.pool == pool.name || p.cache_pool.as_deref() == Some(pool.name.as_str()))
        };
        if let Some(unused) = self.pools.iter().find(|pool| !used(pool)) {
            return Err(ConfigError::UnusedPool {
                pool: unused.name.clone(),
            });
        }
        Ok(())
    }

    /// The profile called `name`.
    pub fn profile(&self, name: &str) -> Option<&ProfileConfig> {
        self.profiles.iter().find(|p| p.name == name)
    }

    /// Checks each pool folder against `allowed` (the agent's `--block_pool_dirs`) and returns
    /// the pools with their canonical folders. A missing pool folder is created when it lies
    /// inside an allowed folder. Two pools may not share a folder, and a pool may not be declared
    /// bigger than its file system.
    pub fn resolve(&self, allowed: &[PathBuf]) -> Result<Vec<ResolvedPool>, ConfigError> {
        let mut resolved: Vec<ResolvedPool> = Vec::with_capacity(self.pools.len());
        for pool in &self.pools {
            let dir = resolve_pool_dir(pool, allowed)?;
            if let Some(other) = resolved.iter().find(|r| r.dir == dir) {
                return Err(ConfigError::SharedPoolDir {
                    first: other.config.name.clone(),
                    second: pool.name.clone(),
                    dir,
                });
            }
            check_filesystem_size(pool, &dir)?;
            resolved.push(ResolvedPool {
                config: pool.clone(),
                dir,
            });
        }
        Ok(resolved)
    }
}

impl ProfileConfig {
    /// Its cache mode, when its devices have a cache (the mode was validated).
    pub fn cache_mode(&self) -> Option<CacheMode> {
        self.cache
            .parse()
            .ok()
            .filter(|mode| *mode != CacheMode::None)
    }

    /// The device this profile makes for a volume of `size` bytes backed by `backing`, with
    /// its cache store at `cache` when the profile has a cache.
    pub fn device_spec(&self, backing: &Path, size: u64, cache: Option<&Path>) -> DeviceSpec {
        let cache = self.cache_mode().zip(cache).map(|(mode, path)| CacheSpec {
            store: CacheStoreSpec::Path {
                path: path.to_owned(),
            },
            size: None,
            mode,
            on_invalid: None,
        });
        DeviceSpec {
            backend: BackendSpec::File {
                path: backing.to_owned(),
                direct_io: self.direct_io,
            },
            size: Some(size),
            id: None,
            queues: self.queues,
            depth: self.depth,
            // Checked against u32 when the configuration was validated.
            max_io_bytes: u32::try_from(self.max_io_size.0).unwrap_or(u32::MAX),
            qos: self.qos,
            qos_group: None,
            cache,
        }
    }
}

fn check_name(kind: &'static str, name: &str) -> Result<(), ConfigError> {
    let valid = !name.is_empty()
        && name.len() <= NAME_MAX_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !name.starts_with('.');
    if valid {
        Ok(())
    } else {
        Err(ConfigError::BadName {
            kind,
            name: name.to_owned(),
        })
    }
}

fn validate_pool(pool: &PoolConfig) -> Result<(), ConfigError> {
    let dir = match (&pool.dir, &pool.device) {
        (Some(dir), None) => dir,
        (None, Some(device)) => {
            return Err(ConfigError::BlockDevicePool {
                pool: pool.name.clone(),
                device: device.clone(),
            })
        }
        _ => {
            return Err(ConfigError::PoolLocation {
                pool: pool.name.clone(),
            })
        }
    };
    let plain = dir.is_absolute() && dir.components().all(|c| c != Component::ParentDir);
    if !plain {
        return Err(ConfigError::RelativePoolDir {
            pool: pool.name.clone(),
            dir: dir.clone(),
        });
    }
    if pool.size.0 < MIB {
        return Err(ConfigError::PoolTooSmall {
            pool: pool.name.clone(),
            size: pool.size.0,
        });
    }
    // `contains` is false for NaN too, so NaN is refused.
    if !(1.0..=OVERCOMMIT_MAX).contains(&pool.overcommit) {
        return Err(ConfigError::BadOvercommit {
            pool: pool.name.clone(),
            value: pool.overcommit,
        });
    }
    Ok(())
}

fn validate_cache(profile: &ProfileConfig) -> Result<(), ConfigError> {
    let bad_cache = |problem: String| ConfigError::BadCache {
        profile: profile.name.clone(),
        problem,
    };
    let mode: CacheMode = profile.cache.parse().map_err(bad_cache)?;
    let sized = profile.cache_pool.is_some() || profile.cache_size.is_some();
    if mode == CacheMode::None {
        return match sized {
            true => Err(bad_cache(
                "cache_pool and cache_size need a cache mode other than \"none\"".into(),
            )),
            false => Ok(()),
        };
    }
    if profile.queues != 1 {
        return Err(bad_cache(format!(
            "a cached device has exactly one queue, not {}",
            profile.queues
        )));
    }
    match (&profile.cache_pool, profile.cache_size) {
        (Some(_), Some(size)) if size.0 >= MIB => Ok(()),
        (Some(_), Some(size)) => Err(bad_cache(format!(
            "cache_size {} bytes is under the 1 MiB minimum",
            size.0
        ))),
        _ => Err(bad_cache(format!(
            "cache mode {:?} needs cache_pool and cache_size",
            profile.cache
        ))),
    }
}

fn validate_profile(profile: &ProfileConfig) -> Result<(), ConfigError> {
    validate_cache(profile)?;
    validate_spares(profile)?;
    let bad_device = |source| ConfigError::BadDevice {
        profile: profile.name.clone(),
        source,
    };
    let max_io = u32::try_from(profile.max_io_size.0).map_err(|_| {
        bad_device(SpecError::OutOfRange {
            what: "max I/O size",
            value: profile.max_io_size.0,
            min: 4096,
            max: ublk_target::spec::MAX_IO_BYTES.into(),
        })
    })?;
    let cache = Path::new("/cache");
    let mut spec = profile.device_spec(Path::new("/"), MIB, Some(cache));
    spec.max_io_bytes = max_io;
    spec.check_limits().map_err(bad_device)
}

fn validate_spares(profile: &ProfileConfig) -> Result<(), ConfigError> {
    let bad = |problem: String| ConfigError::BadSpares {
        profile: profile.name.clone(),
        problem,
    };
    let mut sizes = BTreeSet::new();
    for spare in &profile.spares {
        let size = spare.size.0;
        if size == 0 || size % MIB != 0 || size / MIB > super::resources::DISK_MB_MAX {
            return Err(bad(format!(
                "size {size} bytes must be a whole number of MiB, from 1 MiB to {} MiB",
                super::resources::DISK_MB_MAX
            )));
        }
        if !(1..=SPARES_MAX).contains(&spare.count) {
            return Err(bad(format!(
                "count {} must be between 1 and {SPARES_MAX}",
                spare.count
            )));
        }
        if !sizes.insert(size) {
            return Err(bad(format!("size {size} bytes is listed twice")));
        }
    }
    Ok(())
}

fn resolve_pool_dir(pool: &PoolConfig, allowed: &[PathBuf]) -> Result<PathBuf, ConfigError> {
    let dir = pool.dir.clone().expect("validated pools have a folder");
    if allowed.is_empty() {
        return Err(ConfigError::NoAllowedDirs {
            pool: pool.name.clone(),
            dir,
        });
    }
    let pool_dir_error = |dir: &Path| {
        let pool = pool.name.clone();
        let dir = dir.to_owned();
        move |source| ConfigError::PoolDir { pool, dir, source }
    };
    // Allowed folders that do not exist allow nothing.
    let allowed: Vec<PathBuf> = allowed
        .iter()
        .filter_map(|a| std::fs::canonicalize(a).ok())
        .collect();
    let outside = |dir: PathBuf| ConfigError::OutsideAllowedDirs {
        pool: pool.name.clone(),
        dir,
        allowed: allowed
            .iter()
            .map(|a| a.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    };
    if !dir.exists() {
        // Create it only if it lies lexically inside an allowed folder; the canonical check below
        // catches symlinks that lead elsewhere.
        let parent_allowed = allowed.iter().any(|a| dir.starts_with(a));
        if !parent_allowed {
            return Err(outside(dir));
        }
        std::fs::create_dir_all(&dir).map_err(pool_dir_error(&dir))?;
    }
    let canonical = std::fs::canonicalize(&dir).map_err(pool_dir_error(&dir))?;
    if !canonical.is_dir() {
        return Err(ConfigError::PoolDir {
            pool: pool.name.clone(),
            dir: canonical,
            source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a folder"),
        });
    }
    if !allowed.iter().any(|a| canonical.starts_with(a)) {
        return Err(outside(canonical));
    }
    Ok(canonical)
}

fn check_filesystem_size(pool: &PoolConfig, dir: &Path) -> Result<(), ConfigError> {
    let stat = nix::sys::statvfs::statvfs(dir).map_err(|errno| ConfigError::PoolDir {
        pool: pool.name.clone(),
        dir: dir.to_owned(),
        source: errno.into(),
    })?;
    // The field types are u64 on 64-bit Linux but narrower elsewhere.
    #[allow(clippy::useless_conversion)]
    let fs_size = u64::from(stat.blocks()).saturating_mul(u64::from(stat.fragment_size()));
    if pool.size.0 > fs_size {
        return Err(ConfigError::PoolExceedsFilesystem {
            pool: pool.name.clone(),
            size: pool.size.0,
            fs_size,
            dir: dir.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pools: &str, profiles: &str) -> Result<StorageConfig, ConfigError> {
        StorageConfig::from_str(&format!(
            r#"{{"pools": [{pools}], "profiles": [{profiles}]}}"#
        ))
    }

    const POOL: &str = r#"{"name": "p", "dir": "/srv/pool", "size": "10G"}"#;
    const PROFILE: &str = r#"{"name": "fast", "pool": "p"}"#;

    #[test]
    fn a_minimal_config_gets_defaults() {
        let c = config(POOL, PROFILE).unwrap();
        assert_eq!(c.pools[0].size, ByteSize(10 << 30));
        assert!((c.pools[0].overcommit - 1.0).abs() < f64::EPSILON);
        let f = &c.profiles[0];
        assert_eq!(f.cache, "none");
        assert_eq!(f.filesystem, Filesystem::Ext4);
        assert_eq!((f.queues, f.depth), (DEFAULT_QUEUES, DEFAULT_DEPTH));
        assert_eq!(f.max_io_size, ByteSize(DEFAULT_MAX_IO_BYTES));
        assert!(f.qos.is_unlimited());
        assert_eq!(f.direct_io, DirectIo::Optional);
    }

    #[test]
    fn sizes_are_numbers_or_strings() {
        let c = config(
            r#"{"name": "p", "dir": "/srv/p", "size": 1073741824, "overcommit": 2.5}"#,
            r#"{"name": "f", "pool": "p", "max_io_size": "512K", "filesystem": "xfs"}"#,
        )
        .unwrap();
        assert_eq!(c.pools[0].size, ByteSize(1 << 30));
        assert_eq!(c.profiles[0].max_io_size, ByteSize(512 << 10));
        assert_eq!(capacity_bytes(c.pools[0].size.0, 2.5), 2560 << 20);
        let spares = config(
            POOL,
            r#"{"name": "f", "pool": "p", "spares": [{"size": "1G"}]}"#,
        );
        let spare = SpareConfig {
            size: ByteSize(1 << 30),
            count: 1,
        };
        assert_eq!(spares.unwrap().profiles[0].spares, [spare]);
        let bad = config(r#"{"name": "p", "dir": "/srv/p", "size": "10Q"}"#, PROFILE);
        let message = error_text(bad.unwrap_err());
        assert!(message.contains("unknown unit"), "{message}");
    }

    fn error_text(e: ConfigError) -> String {
        crate::storage::error_chain(&e)
    }

    #[test]
    fn each_mistake_has_its_own_message() {
        let cases: &[(&str, &str, &str)] = &[
            (
                POOL,
                r#"{"name": "f", "pool": "p", "spares": [{"size": "1000K"}]}"#,
                "profile \"f\": spares: size 1024000 bytes must be a whole number of MiB",
            ),
            (
                POOL,
                r#"{"name": "f", "pool": "p", "spares": [{"size": "1G", "count": 0}]}"#,
                "count 0 must be between 1 and 16",
            ),
            (
                POOL,
                r#"{"name": "f", "pool": "p", "spares": [{"size": "1G"}, {"size": 1073741824}]}"#,
                "size 1073741824 bytes is listed twice",
            ),
            (
                r#"{"name": "p", "device": "/dev/sdb", "size": "1G"}"#,
                PROFILE,
                "block-device pools (/dev/sdb) are not supported yet",
            ),
            (
                r#"{"name": "p", "size": "1G"}"#,
                PROFILE,
                "needs exactly one of",
            ),
            (
                r#"{"name": "p", "dir": "pools/p", "size": "1G"}"#,
                PROFILE,
                "must be an absolute path",
            ),
            (
                r#"{"name": "p", "dir": "/a/../b", "size": "1G"}"#,
                PROFILE,
                "must be an absolute path",
            ),
            (
                r#"{"name": "p", "dir": "/p", "size": "1G", "overcommit": 0.5}"#,
                PROFILE,
                "overcommit 0.5 must be between 1.0",
            ),
            (
                r#"{"name": "p", "dir": "/p", "size": 4096}"#,
                PROFILE,
                "below the 1 MiB minimum",
            ),
            (
                r#"{"name": "p q", "dir": "/p", "size": "1G"}"#,
                PROFILE,
                "pool name \"p q\" is not valid",
            ),
            (
                POOL,
                r#"{"name": "fast", "pool": "nope"}"#,
                "names pool \"nope\", which is not configured",
            ),
            (
                POOL,
                r#"{"name": "fast", "pool": "p", "cache": "writeback"}"#,
                "cache mode \"writeback\" needs cache_pool and cache_size",
            ),
            (
                POOL,
                r#"{"name": "fast", "pool": "p", "cache": "writeback", "cache_pool": "p",
                    "cache_size": "64M", "queues": 2}"#,
                "a cached device has exactly one queue, not 2",
            ),
            (
                POOL,
                r#"{"name": "fast", "pool": "p", "cache": "writeback", "cache_pool": "p",
                    "cache_size": 4096}"#,
                "cache_size 4096 bytes is under the 1 MiB minimum",
            ),
            (
                POOL,
                r#"{"name": "fast", "pool": "p", "cache": "writeback", "cache_pool": "nvme",
                    "cache_size": "64M"}"#,
                "names pool \"nvme\", which is not configured",
            ),
            (
                POOL,
                r#"{"name": "fast", "pool": "p", "cache": "sometimes"}"#,
                "unknown cache mode \"sometimes\"",
            ),
            (
                POOL,
                r#"{"name": "fast", "pool": "p", "cache_size": "64M"}"#,
                "need a cache mode other than \"none\"",
            ),
            (
                POOL,
                r#"{"name": "fast", "pool": "p", "filesystem": "btrfs"}"#,
                "unknown variant `btrfs`",
            ),
            (
                POOL,
                r#"{"name": "fast", "pool": "p", "depth": 5000}"#,
                "queue depth 5000 is out of range",
            ),
            (
                POOL,
                r#"{"name": "fast", "pool": "p", "qos": {"total_ops": {"ops_per_sec": 0}}}"#,
                "invalid QoS limits",
            ),
            (
                POOL,
                r#"{"name": "fast", "pool": "p", "colour": "red"}"#,
                "unknown field `colour`",
            ),
            (
                POOL,
                &format!("{PROFILE}, {PROFILE}"),
                "profile \"fast\" is configured twice",
            ),
            (
                &format!("{POOL}, {POOL}"),
                PROFILE,
                "pool \"p\" is configured twice",
            ),
            (
                &format!(r#"{POOL}, {{"name": "q", "dir": "/q", "size": "1G"}}"#),
                PROFILE,
                "pool \"q\" has no profile",
            ),
        ];
        for (pools, profiles, needle) in cases {
            let err = config(pools, profiles).expect_err(needle);
            let text = error_text(err);
            assert!(text.contains(needle), "expected {needle:?} in {text:?}");
        }
    }

    #[test]
    fn pools_must_lie_inside_allowed_folders() {
        let root = tempfile::tempdir().unwrap();
        let allowed = root.path().join("allowed");
        let elsewhere = root.path().join("elsewhere");
        std::fs::create_dir_all(&allowed).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        let with_dir = |dir: &Path| {
            config(
                &format!(
                    r#"{{"name": "p", "dir": "{}", "size": "1M"}}"#,
                    dir.display()
                ),
                PROFILE,
            )
            .unwrap()
        };
        // Inside: created on demand.
        let inside = allowed.join("p");
        let pools = with_dir(&inside)
            .resolve(std::slice::from_ref(&allowed))
            .unwrap();
        assert_eq!(pools[0].dir, std::fs::canonicalize(&inside).unwrap());
        assert_eq!(pools[0].capacity_bytes(), MIB);
        // Outside: refused, and not created.
        let outside = elsewhere.join("p");
        let err = with_dir(&outside)
            .resolve(std::slice::from_ref(&allowed))
            .unwrap_err();
        assert!(
            matches!(err, ConfigError::OutsideAllowedDirs { .. }),
            "{err}"
        );
        assert!(!outside.exists());
        // A symlink inside that leads outside: refused.
        let link = allowed.join("sneaky");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        let err = with_dir(&link)
            .resolve(std::slice::from_ref(&allowed))
            .unwrap_err();
        assert!(err.to_string().contains("outside the allowed"), "{err}");
        // No allow-list at all.
        let err = with_dir(&inside).resolve(&[]).unwrap_err();
        assert!(
            err.to_string().contains("--block_pool_dirs is empty"),
            "{err}"
        );
    }

    #[test]
    fn pools_may_not_share_a_folder_or_exceed_their_file_system() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().display();
        let allowed = [root.path().to_owned()];
        let shared = config(
            &format!(
                r#"{{"name": "a", "dir": "{dir}", "size": "1M"}},
                   {{"name": "b", "dir": "{dir}/", "size": "1M"}}"#
            ),
            r#"{"name": "fa", "pool": "a"}, {"name": "fb", "pool": "b"}"#,
        )
        .unwrap();
        let err = shared.resolve(&allowed).unwrap_err();
        assert!(matches!(err, ConfigError::SharedPoolDir { .. }), "{err}");
        let huge = config(
            &format!(r#"{{"name": "p", "dir": "{dir}", "size": "1000000T"}}"#),
            PROFILE,
        )
        .unwrap();
        let err = huge.resolve(&allowed).unwrap_err();
        assert!(err.to_string().contains("exceeds its file system"), "{err}");
    }

    #[test]
    fn profiles_make_device_specs() {
        let c = config(
            POOL,
            r#"{"name": "fast", "pool": "p", "queues": 2, "depth": 64,
                "qos": {"write_ops": {"ops_per_sec": 100}}}"#,
        )
        .unwrap();
        let spec = c.profiles[0].device_spec(Path::new("/srv/pool/v.img"), 256 * MIB, None);
        assert_eq!(spec.size, Some(256 * MIB));
        assert_eq!((spec.queues, spec.depth), (2, 64));
        assert_eq!(spec.qos.write_ops.unwrap().ops_per_sec, 100);
        assert!(matches!(spec.backend, BackendSpec::File { .. }));
        assert!(spec.cache.is_none());
        spec.check_limits().unwrap();
    }

    #[test]
    fn cached_profiles_give_their_devices_a_cache_store() {
        let c = config(
            &format!(r#"{POOL}, {{"name": "nvme", "dir": "/nvme", "size": "1G"}}"#),
            r#"{"name": "fast", "pool": "p", "cache": "writeback", "cache_pool": "nvme",
                "cache_size": "64M"}"#,
        )
        .unwrap();
        let store = Path::new("/nvme/v.cache");
        let spec = c.profiles[0].device_spec(Path::new("/p/v.img"), 256 * MIB, Some(store));
        let cache = spec.cache.expect("a cache");
        assert_eq!(cache.mode, CacheMode::Writeback);
        assert!(matches!(cache.store, CacheStoreSpec::Path { path } if path == store));
        assert_eq!(c.profiles[0].cache_size, Some(ByteSize(64 * MIB)));
    }
}
