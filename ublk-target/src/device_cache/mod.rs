//! A cache tier attached to a served device: what `add --cache` asks for ([`CacheSpec`]), its
//! validation, and the glue between [`crate::cache`] and the device server.
//!
//! - this file: the spec, its checks (before anything is created) and opening the cache store;
//! - `queue`: the per-queue backend of a cached device, which also serves a detached cache's
//!   requests straight from the backing store;
//! - `runtime`: [`AttachedCache`], opened once per server: replay and validation of the store
//!   (with the operator's choice for an invalid one), background writeback, the admin requests
//!   (status, flush, mode, detach) and the orderly shutdown.
//!
//! The cache store is a file or block device (it survives the server, so a crashed server's
//! successor replays its journal) or RAM (`--cache ram`). A RAM store dies with the server, so
//! it never holds dirty data: writeback is refused for it at every step (spec check, open, live
//! mode change), which makes such a device write-through under crash recovery.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::backend::file::{DirectIo, OpenError, StoreKind};
use crate::backend::{FileStore, RamBackend};
use crate::cache::layout::Geometry;
use crate::cache::{CacheMode, CACHE_BLOCK};

mod queue;
mod runtime;

pub use queue::{CacheEngine, CacheStore, CachedQueue, Unregistered};
pub use runtime::{AttachError, AttachedCache, CacheReport};

/// The smallest cache store accepted: below this the journal leaves almost no data slots.
pub const MIN_CACHE_BYTES: u64 = 1 << 20;
/// The `--cache` value that asks for a cache store in the server's memory.
pub const RAM_STORE: &str = "ram";

/// Where a cache's blocks live.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum CacheStoreSpec {
    /// A regular file or a block device (it must exist).
    Path {
        /// Its path.
        path: PathBuf,
    },
    /// Memory of the serving process: lost with it, so never in writeback mode.
    Ram,
}

impl CacheStoreSpec {
    /// The store named by a `--cache` argument.
    pub fn from_arg(arg: &Path) -> CacheStoreSpec {
        if arg == Path::new(RAM_STORE) {
            CacheStoreSpec::Ram
        } else {
            CacheStoreSpec::Path {
                path: arg.to_owned(),
            }
        }
    }
}

/// The operator's explicit choice for a cache store that fails validation (never made
/// silently; it applies to one `add` or `recover` and is not recorded).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InvalidCacheChoice {
    /// Write the dirty blocks of the journal's valid part back, then reformat the cache.
    FlushValid,
    /// Reformat the cache; any dirty data in it is lost.
    Discard,
}

/// A cache in front of a device's backing store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheSpec {
    /// The cache store.
    pub store: CacheStoreSpec,
    /// Bytes of the store to use (default: a whole file or block device; required for RAM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The mode at start.
    #[serde(default)]
    pub mode: CacheMode,
    /// What to do if the store fails validation (absent: refuse to start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_invalid: Option<InvalidCacheChoice>,
}

/// Why a cache spec cannot be served.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CacheSpecError {
    /// The store path does not exist.
    #[error("cache store {0} does not exist")]
    Missing(PathBuf),
    /// The store is smaller than `--cache-size`.
    #[error("cache store {path} has {have} bytes, fewer than --cache-size {need}")]
    StoreTooSmall {
        /// The store.
        path: PathBuf,
        /// Its size.
        have: u64,
        /// The size asked for.
        need: u64,
    },
    /// The store could not be opened.
    #[error("cache store: {0}")]
    Open(#[from] OpenError),
    /// A RAM store needs a size.
    #[error("--cache-size is required for a RAM cache (--cache ram)")]
    SizeRequired,
    /// The size is unusable.
    #[error(
        "cache size {0} must be a multiple of {CACHE_BLOCK} bytes and at least {MIN_CACHE_BYTES}"
    )]
    BadSize(u64),
    /// Writeback on a store that does not survive the server.
    #[error(
        "a RAM cache cannot run in writeback mode: its dirty data would not survive a server \
         crash; use writethrough, writearound or none"
    )]
    VolatileWriteback,
    /// Only file and block-device backends outlive the server and have a cacheable size.
    #[error("a cache needs a file or blockdev backend")]
    UncacheableBackend,
    /// The device size is not whole cache blocks.
    #[error("a cached device's size must be a multiple of {CACHE_BLOCK} bytes, not {0}")]
    DeviceMisaligned(u64),
    /// The cache store is the backing store.
    #[error("the cache store {0} is the backing store itself")]
    SameAsBacking(PathBuf),
    /// Requests through a cache are serialised, and its lock is only woken promptly on one
    /// thread (see `runtime`).
    #[error("a cached device has exactly one queue, not {0}")]
    Queues(u16),
}

/// A cache store opened for serving (shared by every queue of the device).
#[derive(Clone, Debug)]
pub enum CacheStoreShared {
    /// In the server's memory.
    Ram(RamBackend),
    /// A file or block device.
    File(Arc<FileStore>),
}

impl CacheSpec {
    /// Checks the spec against the opened backing store (`backing`, `None` for backends that
    /// cannot take a cache) and opens the cache store.
    pub fn open_store(
        &self,
        backing: Option<&FileStore>,
    ) -> Result<CacheStoreShared, CacheSpecError> {
        let backing = backing.ok_or(CacheSpecError::UncacheableBackend)?;
        if backing.size() % CACHE_BLOCK != 0 {
            return Err(CacheSpecError::DeviceMisaligned(backing.size()));
        }
        if let Some(size) = self.size {
            check_cache_size(size)?;
        }
        match &self.store {
            CacheStoreSpec::Ram => {
                if self.mode == CacheMode::Writeback {
                    return Err(CacheSpecError::VolatileWriteback);
                }
                let size = self.size.ok_or(CacheSpecError::SizeRequired)?;
                Ok(CacheStoreShared::Ram(RamBackend::new(size)))
            }
            CacheStoreSpec::Path { path } => {
                if !path.exists() {
                    return Err(CacheSpecError::Missing(path.clone()));
                }
                if same_file(path, backing.path()) {
                    return Err(CacheSpecError::SameAsBacking(path.clone()));
                }
                let store =
                    FileStore::open(path, self.size, DirectIo::Optional).map_err(|e| match e {
                        OpenError::TooSmall { path, have, need } => {
                            CacheSpecError::StoreTooSmall { path, have, need }
                        }
                        other => CacheSpecError::Open(other),
                    })?;
                if self.size.is_none() {
                    check_cache_size(store.size() - store.size() % CACHE_BLOCK)?;
                }
                Ok(CacheStoreShared::File(Arc::new(store)))
            }
        }
    }
}

fn check_cache_size(size: u64) -> Result<(), CacheSpecError> {
    let fits = Geometry::plan(size, None).is_some();
    if size % CACHE_BLOCK != 0 || size < MIN_CACHE_BYTES || !fits {
        return Err(CacheSpecError::BadSize(size));
    }
    Ok(())
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

impl CacheStoreShared {
    /// Whether the store dies with the server.
    pub fn is_volatile(&self) -> bool {
        matches!(self, CacheStoreShared::Ram(_))
    }

    /// Usable bytes. A file store larger than asked uses only the first `size` bytes.
    pub fn size(&self) -> u64 {
        match self {
            CacheStoreShared::Ram(ram) => crate::backend::Backend::size(ram),
            CacheStoreShared::File(file) => file.size() - file.size() % CACHE_BLOCK,
        }
    }

    /// A description for status output.
    pub fn describe(&self) -> String {
        match self {
            CacheStoreShared::Ram(_) => RAM_STORE.to_owned(),
            CacheStoreShared::File(file) => match file.kind() {
                StoreKind::File | StoreKind::BlockDevice => file.path().display().to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backing(dir: &Path, bytes: u64) -> FileStore {
        let path = dir.join("backing.img");
        std::fs::File::create(&path)
            .and_then(|f| f.set_len(bytes))
            .unwrap();
        FileStore::open(&path, None, DirectIo::Disabled).unwrap()
    }

    fn spec(store: CacheStoreSpec, size: Option<u64>, mode: CacheMode) -> CacheSpec {
        CacheSpec {
            store,
            size,
            mode,
            on_invalid: None,
        }
    }

    #[test]
    fn bad_cache_specs_are_refused_with_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let backing = backing(dir.path(), 16 << 20);
        let missing = dir.path().join("missing.img");
        let err = |s: CacheSpec| s.open_store(Some(&backing)).unwrap_err().to_string();
        let path = CacheStoreSpec::Path {
            path: missing.clone(),
        };
        assert!(err(spec(path, None, CacheMode::Writeback)).contains("does not exist"));
        let ram = CacheStoreSpec::Ram;
        assert!(err(spec(ram.clone(), None, CacheMode::Writethrough)).contains("required"));
        assert!(err(spec(ram.clone(), Some(4096), CacheMode::None)).contains("at least"));
        assert!(
            err(spec(ram.clone(), Some((4 << 20) + 512), CacheMode::None)).contains("multiple")
        );
        assert!(err(spec(ram.clone(), Some(4 << 20), CacheMode::Writeback)).contains("writeback"));
        let itself = CacheStoreSpec::Path {
            path: backing.path().to_owned(),
        };
        assert!(err(spec(itself, None, CacheMode::Writeback)).contains("backing store itself"));
        let uncacheable = spec(ram, Some(4 << 20), CacheMode::None).open_store(None);
        assert!(matches!(
            uncacheable,
            Err(CacheSpecError::UncacheableBackend)
        ));
    }

    #[test]
    fn a_ram_store_is_volatile_and_a_file_store_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let backing = backing(dir.path(), 16 << 20);
        let ram = spec(CacheStoreSpec::Ram, Some(4 << 20), CacheMode::Writethrough);
        assert!(ram.open_store(Some(&backing)).unwrap().is_volatile());
        let file = dir.path().join("cache.img");
        std::fs::File::create(&file)
            .and_then(|f| f.set_len(8 << 20))
            .unwrap();
        let store = spec(
            CacheStoreSpec::Path { path: file },
            None,
            CacheMode::Writeback,
        )
        .open_store(Some(&backing))
        .unwrap();
        assert!(!store.is_volatile());
        assert_eq!(store.size(), 8 << 20);
    }

    #[test]
    fn the_choice_for_an_invalid_cache_is_not_recorded_unless_made() {
        let plain = spec(CacheStoreSpec::Ram, Some(4 << 20), CacheMode::None);
        let json = serde_json::to_value(&plain).unwrap();
        assert!(json.get("on_invalid").is_none(), "{json}");
        assert_eq!(json["store"]["type"], "ram");
        assert_eq!(serde_json::from_value::<CacheSpec>(json).unwrap(), plain);
    }
}
