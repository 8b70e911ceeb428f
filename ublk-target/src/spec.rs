//! Device specifications: what a device is made of, validated before anything is created.
//!
//! A [`DeviceSpec`] is what `mesoblk-target add` (and later the agent) asks for. It is
//! serialisable so the serving process can be handed it and so it can be recorded next to the
//! running device. [`DeviceSpec::open`] checks it against the real backing store and the
//! kernel's limits and yields the opened store; every rejection is a [`SpecError`] with a
//! one-line message, and a rejected spec leaves nothing behind.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::backend::file::{DirectIo, OpenError, StoreKind};
use crate::backend::{FileStore, NullBackend, RamBackend, SharedStore};
use crate::device_cache::{CacheSpec, CacheSpecError, CacheStoreShared};
use crate::qos::{QosError, QosLimits};
use crate::sys::device::{DeviceOptions, StartMode};

/// The kernel's upper bound on queue depth (`UBLK_MAX_QUEUE_DEPTH`).
pub const MAX_DEPTH: u16 = 4096;
/// The kernel's upper bound on hardware queues (`UBLK_MAX_NR_QUEUES`).
pub const MAX_QUEUES: u16 = 4096;
/// Largest per-request buffer ublk allows (`UBLK_MAX_IO_BUF_BYTES`-ish; libublk caps at 32 MiB).
pub const MAX_IO_BYTES: u32 = 32 << 20;
const PAGE_BYTES: u32 = 4096;

/// Where the device's blocks live.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum BackendSpec {
    /// A regular file.
    File {
        /// Its path.
        path: PathBuf,
        /// Direct-I/O policy.
        #[serde(default)]
        direct_io: DirectIo,
    },
    /// A block device.
    Blockdev {
        /// Its path.
        path: PathBuf,
        /// Direct-I/O policy.
        #[serde(default)]
        direct_io: DirectIo,
    },
    /// Memory of the serving process.
    Ram,
    /// Nothing: writes are dropped.
    Null,
}

/// A full device request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSpec {
    /// The backend.
    pub backend: BackendSpec,
    /// Size in bytes; file and block-device backends default to the whole store.
    pub size: Option<u64>,
    /// Requested device id; `None` for the lowest free one.
    pub id: Option<u32>,
    /// Hardware queues.
    pub queues: u16,
    /// Depth per queue.
    pub depth: u16,
    /// Largest read or write in bytes.
    pub max_io_bytes: u32,
    /// Rate limits (none by default).
    #[serde(default, skip_serializing_if = "QosLimits::is_unlimited")]
    pub qos: QosLimits,
    /// A QoS group (one tenant's shared budget) this device also draws from; the group is
    /// created and changed with `mesoblk-target set-qos --group`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos_group: Option<String>,
    /// A cache store in front of the backing store (file and blockdev backends only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheSpec>,
}

/// Why a spec cannot become a device.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SpecError {
    /// The backing store is unusable.
    #[error(transparent)]
    Store(#[from] OpenError),
    /// The path names the other kind of store than the backend type says.
    #[error("{path} is a {found}, not a {expected}; use --backend {suggest}")]
    WrongStoreKind {
        /// The path.
        path: PathBuf,
        /// What it is.
        found: &'static str,
        /// What the backend needs.
        expected: &'static str,
        /// The backend that fits.
        suggest: &'static str,
    },
    /// RAM and null devices need an explicit size.
    #[error("--size is required for the {0} backend")]
    SizeRequired(&'static str),
    /// Size zero or not a multiple of the block size.
    #[error("size {size} is not a positive multiple of the {block}-byte block size")]
    BadSize {
        /// The size.
        size: u64,
        /// The block size.
        block: u32,
    },
    /// A queue or I/O limit outside what the kernel accepts.
    #[error("{what} {value} is out of range ({min}..={max})")]
    OutOfRange {
        /// Which setting.
        what: &'static str,
        /// Its value.
        value: u64,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },
    /// The QoS limits are invalid.
    #[error("invalid QoS limits: {0}")]
    Qos(#[from] QosError),
    /// The I/O size must be whole pages.
    #[error("max I/O size {0} is not a multiple of 4096 bytes")]
    IoSizeNotPageMultiple(u32),
    /// The cache cannot be served.
    #[error(transparent)]
    Cache(#[from] CacheSpecError),
}

impl DeviceSpec {
    /// Checks the limits that do not need the backing store.
    pub fn check_limits(&self) -> Result<(), SpecError> {
        let range = |what, value: u64, min: u64, max: u64| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(SpecError::OutOfRange {
                    what,
                    value,
                    min,
                    max,
                })
            }
        };
        range("queue count", self.queues.into(), 1, MAX_QUEUES.into())?;
        range("queue depth", self.depth.into(), 1, MAX_DEPTH.into())?;
        range(
            "max I/O size",
            self.max_io_bytes.into(),
            PAGE_BYTES.into(),
            MAX_IO_BYTES.into(),
        )?;
        if self.max_io_bytes % PAGE_BYTES != 0 {
            return Err(SpecError::IoSizeNotPageMultiple(self.max_io_bytes));
        }
        self.qos.validate_for_max_io(self.max_io_bytes.into())?;
        Ok(())
    }

    /// Validates the spec against the system and opens its store.
    pub fn open(&self) -> Result<SharedStore, SpecError> {
        self.check_limits()?;
        let store = match &self.backend {
            BackendSpec::File { path, direct_io } => {
                self.open_file(path, *direct_io, StoreKind::File)?
            }
            BackendSpec::Blockdev { path, direct_io } => {
                self.open_file(path, *direct_io, StoreKind::BlockDevice)?
            }
            BackendSpec::Ram => SharedStore::Ram(RamBackend::new(self.sized("ram")?)),
            BackendSpec::Null => SharedStore::Null(NullBackend::new(self.sized("null")?)),
        };
        self.open_cache_store(&store)?;
        Ok(store)
    }

    /// Checks the spec's cache (if any) against the opened backing `store` and opens the cache
    /// store. Its contents are not read here: the device server opens the cache itself.
    pub fn open_cache_store(
        &self,
        store: &SharedStore,
    ) -> Result<Option<CacheStoreShared>, SpecError> {
        let Some(cache) = &self.cache else {
            return Ok(None);
        };
        if self.queues != 1 {
            return Err(CacheSpecError::Queues(self.queues).into());
        }
        let backing = match store {
            SharedStore::File(file) => Some(&**file),
            _ => None,
        };
        Ok(Some(cache.open_store(backing)?))
    }

    /// Whether the device's data outlives its server process, so that a crashed server can be
    /// replaced without the device going away (file and block-device backends). RAM data dies
    /// with the server: recovering such a device would silently serve zeroes.
    pub fn survives_server_crash(&self) -> bool {
        matches!(
            self.backend,
            BackendSpec::File { .. } | BackendSpec::Blockdev { .. }
        )
    }

    /// The kernel-facing options for this spec.
    pub fn device_options(&self, mode: StartMode) -> DeviceOptions {
        DeviceOptions {
            id: self.id,
            queues: self.queues,
            depth: self.depth,
            max_io_bytes: self.max_io_bytes,
            name: "mesoblk".to_owned(),
            recoverable: self.survives_server_crash(),
            mode,
        }
    }

    fn sized(&self, backend: &'static str) -> Result<u64, SpecError> {
        let size = self.size.ok_or(SpecError::SizeRequired(backend))?;
        check_size(size, 512)?;
        Ok(size)
    }

    fn open_file(
        &self,
        path: &std::path::Path,
        direct: DirectIo,
        want: StoreKind,
    ) -> Result<SharedStore, SpecError> {
        if let Some(size) = self.size {
            check_size(size, 512)?;
        }
        let store = FileStore::open(path, self.size, direct)?;
        if store.kind() != want {
            let name = |kind| match kind {
                StoreKind::File => ("regular file", "file"),
                StoreKind::BlockDevice => ("block device", "blockdev"),
            };
            return Err(SpecError::WrongStoreKind {
                path: path.to_owned(),
                found: name(store.kind()).0,
                expected: name(want).0,
                suggest: name(store.kind()).1,
            });
        }
        Ok(SharedStore::File(Arc::new(store)))
    }
}

fn check_size(size: u64, block: u32) -> Result<(), SpecError> {
    if size == 0 || size % u64::from(block) != 0 {
        return Err(SpecError::BadSize { size, block });
    }
    Ok(())
}

/// Parses a byte size: a plain number of bytes, or a number with a binary suffix
/// `K`, `M`, `G`, `T` (optionally followed by `i`/`iB`/`B`), e.g. `256M`, `1GiB`, `4096`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, suffix) = trimmed.split_at(digits_end);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("invalid size {text:?}: expected e.g. 4096, 256M or 1G"))?;
    let shift = match suffix.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KI" | "KIB" => 10,
        "M" | "MB" | "MI" | "MIB" => 20,
        "G" | "GB" | "GI" | "GIB" => 30,
        "T" | "TB" | "TI" | "TIB" => 40,
        other => return Err(format!("invalid size {text:?}: unknown unit {other:?}")),
    };
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("invalid size {text:?}: too large"))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn spec(backend: BackendSpec, size: Option<u64>) -> DeviceSpec {
        DeviceSpec {
            backend,
            size,
            id: None,
            queues: 1,
            depth: 64,
            max_io_bytes: 512 << 10,
            qos: QosLimits::default(),
            qos_group: None,
            cache: None,
        }
    }

    #[test]
    fn qos_limits_are_checked_against_the_io_size() {
        use crate::qos::BytesLimit;
        let mut s = spec(BackendSpec::Null, Some(1 << 20));
        // A bytes bucket smaller than one full-size I/O could never admit it.
        let tiny = BytesLimit {
            burst_bytes: Some(4096),
            ..BytesLimit::per_sec(1 << 20)
        };
        s.qos.total_bytes = Some(tiny);
        assert!(matches!(s.check_limits(), Err(SpecError::Qos(_))));
        s.qos.total_bytes = Some(BytesLimit::per_sec(1 << 20));
        s.check_limits().unwrap();
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("2k"), Ok(2048));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn limits_match_the_kernel() {
        let mut s = spec(BackendSpec::Null, Some(1 << 20));
        s.depth = 4097;
        assert!(matches!(
            s.check_limits(),
            Err(SpecError::OutOfRange {
                what: "queue depth",
                ..
            })
        ));
        s.depth = 128;
        s.max_io_bytes = 5000;
        assert!(matches!(
            s.check_limits(),
            Err(SpecError::IoSizeNotPageMultiple(5000))
        ));
    }

    #[test]
    fn ram_needs_an_aligned_size() {
        assert!(matches!(
            spec(BackendSpec::Ram, None).open(),
            Err(SpecError::SizeRequired("ram"))
        ));
        assert!(matches!(
            spec(BackendSpec::Ram, Some(1000)).open(),
            Err(SpecError::BadSize { .. })
        ));
        assert_eq!(
            spec(BackendSpec::Ram, Some(1 << 20)).open().unwrap().size(),
            1 << 20
        );
    }

    #[test]
    fn file_backend_checks_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backing");
        let file = |path: &std::path::Path| BackendSpec::File {
            path: path.to_owned(),
            direct_io: DirectIo::Optional,
        };
        let missing = spec(file(&path), Some(1 << 20)).open().unwrap_err();
        assert!(missing.to_string().contains("does not exist"), "{missing}");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&vec![0u8; 1 << 20])
            .unwrap();
        let too_big = spec(file(&path), Some(2 << 20)).open().unwrap_err();
        assert!(
            too_big.to_string().contains("smaller than the requested"),
            "{too_big}"
        );
        let whole = spec(file(&path), None).open().unwrap();
        assert_eq!(whole.size(), 1 << 20);
        let wrong = spec(
            BackendSpec::Blockdev {
                path: path.clone(),
                direct_io: DirectIo::Optional,
            },
            None,
        );
        assert!(matches!(
            wrong.open(),
            Err(SpecError::WrongStoreKind { .. })
        ));
    }

    #[test]
    fn specs_round_trip_through_json() {
        let s = spec(
            BackendSpec::File {
                path: "/x".into(),
                direct_io: DirectIo::Required,
            },
            Some(4096),
        );
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<DeviceSpec>(&json).unwrap(), s);
    }
}
