//! Backends: where a device's blocks live, behind one async trait.
//!
//! A backend answers byte-addressed reads, writes, flushes, discards and write-zeroes that the
//! engine has already validated against the device geometry (in range, block aligned). It must
//! complete short transfers itself, retry `EAGAIN`, and report every failure as an [`IoError`]
//! carrying an errno: a request is never dropped.
//!
//! Futures are awaited on the queue thread's single-threaded executor, so they need not be
//! `Send`; that is why the trait uses `async fn` directly.

use std::sync::Arc;

use thiserror::Error;

use crate::device_cache::{AttachedCache, CachedQueue};
use crate::request::Op;

pub mod file;
pub mod null;
pub mod ram;

pub use file::{FileBackend, FileStore, Submitter};
pub use null::NullBackend;
pub use ram::RamBackend;

/// A failed backend operation: which op, where, and the errno to hand the kernel.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
#[error("{} at byte {offset} (+{len}) failed: {}", op.name(), std::io::Error::from_raw_os_error(*errno))]
pub struct IoError {
    /// The operation that failed.
    pub op: Op,
    /// Its byte offset.
    pub offset: u64,
    /// Its byte length.
    pub len: u64,
    /// The positive errno.
    pub errno: i32,
}

/// What a backend tells the device layer about itself, so the device can declare it truthfully
/// to the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Writes may sit in a volatile cache until FLUSH (the device must then advertise a
    /// volatile write cache and FUA, or the kernel would never send FLUSH).
    pub volatile_cache: bool,
    /// The smallest I/O unit the backend accepts (direct-I/O offset alignment), in bytes.
    pub logical_block_size: u32,
    /// Reads return what was written (false only for the null backend).
    pub stores_data: bool,
}

/// Storage for one device.
#[allow(async_fn_in_trait)]
pub trait Backend {
    /// Usable size in bytes.
    fn size(&self) -> u64;

    /// Properties the device must declare for this backend.
    fn capabilities(&self) -> Capabilities;

    /// Fills `buf` from byte `offset`.
    async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError>;

    /// Writes `buf` at byte `offset`; with `fua` the data is durable when this returns.
    async fn write(&self, offset: u64, buf: &[u8], fua: bool) -> Result<(), IoError>;

    /// Makes every write completed before this call durable.
    async fn flush(&self) -> Result<(), IoError>;

    /// Drops the contents of a range; it reads back as zeroes afterwards.
    async fn discard(&self, offset: u64, len: u64) -> Result<(), IoError>;

    /// Makes a range read back as zeroes; `unmap` allows deallocating it.
    async fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<(), IoError>;
}

/// A device's opened storage, shared by all its queues; each queue turns it into a [`AnyBackend`]
/// bound to that queue's ring.
#[derive(Clone, Debug)]
pub enum SharedStore {
    /// In-memory.
    Ram(RamBackend),
    /// Discards everything.
    Null(NullBackend),
    /// A file or block device.
    File(Arc<FileStore>),
    /// A file or block device behind a cache store.
    Cached(Arc<AttachedCache>),
}

impl SharedStore {
    /// The backend one queue thread serves requests with.
    pub fn for_queue<S: Submitter + Clone>(&self, ring: S) -> AnyBackend<S> {
        match self {
            SharedStore::Ram(ram) => AnyBackend::Ram(ram.clone()),
            SharedStore::Null(null) => AnyBackend::Null(null.clone()),
            SharedStore::File(store) => AnyBackend::File(FileBackend::new(Arc::clone(store), ring)),
            SharedStore::Cached(cache) => {
                AnyBackend::Cached(Box::new(CachedQueue::new(Arc::clone(cache), ring)))
            }
        }
    }

    /// The backing store's descriptor, for stores that have one. (A cached device's backing
    /// store is registered with each queue ring; its cache store never is.)
    pub fn backing_fd(&self) -> Option<std::os::fd::RawFd> {
        match self {
            SharedStore::File(store) => Some(store.raw_fd()),
            SharedStore::Cached(cache) => Some(cache.backing().raw_fd()),
            SharedStore::Ram(_) | SharedStore::Null(_) => None,
        }
    }

    /// Device size in bytes.
    pub fn size(&self) -> u64 {
        match self {
            SharedStore::Ram(ram) => ram.size(),
            SharedStore::Null(null) => null.size(),
            SharedStore::File(store) => store.size(),
            SharedStore::Cached(cache) => cache.size(),
        }
    }

    /// What the device must declare for this store.
    pub fn capabilities(&self) -> Capabilities {
        match self {
            SharedStore::Ram(ram) => ram.capabilities(),
            SharedStore::Null(null) => null.capabilities(),
            SharedStore::File(store) => file::capabilities(store),
            SharedStore::Cached(_) => cached_capabilities(),
        }
    }
}

/// Any backend, dispatched statically per request.
#[derive(Debug)]
pub enum AnyBackend<S> {
    /// In-memory.
    Ram(RamBackend),
    /// Discards everything.
    Null(NullBackend),
    /// A file or block device through `S`'s ring.
    File(FileBackend<S>),
    /// A file or block device behind a cache store, both through `S`'s ring.
    Cached(Box<CachedQueue<S>>),
}

/// A cached device: 4 KiB blocks (the cache's unit) and a volatile write cache (the cache
/// commits its index on FLUSH, so the kernel must send one), as `CachedBackend` declares.
fn cached_capabilities() -> Capabilities {
    Capabilities {
        volatile_cache: true,
        logical_block_size: crate::cache::CACHE_BLOCK as u32,
        stores_data: true,
    }
}

macro_rules! dispatch {
    ($self:ident, $b:ident => $call:expr) => {
        match $self {
            AnyBackend::Ram($b) => $call,
            AnyBackend::Null($b) => $call,
            AnyBackend::File($b) => $call,
            AnyBackend::Cached($b) => $call,
        }
    };
}

impl<S: Submitter> Backend for AnyBackend<S> {
    fn size(&self) -> u64 {
        dispatch!(self, b => b.size())
    }

    fn capabilities(&self) -> Capabilities {
        dispatch!(self, b => b.capabilities())
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        dispatch!(self, b => b.read(offset, buf).await)
    }

    async fn write(&self, offset: u64, buf: &[u8], fua: bool) -> Result<(), IoError> {
        dispatch!(self, b => b.write(offset, buf, fua).await)
    }

    async fn flush(&self) -> Result<(), IoError> {
        dispatch!(self, b => b.flush().await)
    }

    async fn discard(&self, offset: u64, len: u64) -> Result<(), IoError> {
        dispatch!(self, b => b.discard(offset, len).await)
    }

    async fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<(), IoError> {
        dispatch!(self, b => b.write_zeroes(offset, len, unmap).await)
    }
}
