//! The backend one queue thread serves a cached device with.
//!
//! Both stores go through the queue's ring. The backing store's `FileBackend` uses the ring's
//! registered fixed file; the cache store's must not (that slot is the backing store's), so its
//! submitter is wrapped in [`Unregistered`], which hides the slot.
//!
//! After `cache detach` every request goes straight to the backing store. A request that raced
//! with the detach (it saw the cache attached, then found it shut down) is retried there too, so
//! no request fails because of a detach.

use std::sync::Arc;

use io_uring::squeue;

use super::runtime::AttachedCache;
use super::CacheStoreShared;
use crate::backend::{Backend, Capabilities, FileBackend, IoError, RamBackend, Submitter};
use crate::cache::CachedBackend;

/// A submitter that never addresses the ring's registered backing file: for a second store
/// (the cache store) on the same ring.
#[derive(Clone, Copy, Debug)]
pub struct Unregistered<S>(pub S);

impl<S: Submitter> Submitter for Unregistered<S> {
    async fn submit(&self, sqe: squeue::Entry) -> i32 {
        self.0.submit(sqe).await
    }

    fn backing_slot(&self) -> Option<u32> {
        None
    }

    fn fixed_buffer(&self, addr: *const u8, len: usize) -> Option<u16> {
        // Registered buffers belong to the ring, not to a file: any store on it may use them.
        self.0.fixed_buffer(addr, len)
    }
}

/// A cache store served through one ring.
#[derive(Debug)]
pub enum CacheStore<S> {
    /// In the server's memory.
    Ram(RamBackend),
    /// A file or block device.
    File(FileBackend<S>),
}

impl CacheStoreShared {
    /// The store as served through `ring`.
    pub fn for_ring<S: Submitter>(&self, ring: S) -> CacheStore<S> {
        match self {
            CacheStoreShared::Ram(ram) => CacheStore::Ram(ram.clone()),
            CacheStoreShared::File(file) => {
                CacheStore::File(FileBackend::new(Arc::clone(file), ring))
            }
        }
    }
}

macro_rules! store_dispatch {
    ($self:ident, $b:ident => $call:expr) => {
        match $self {
            CacheStore::Ram($b) => $call,
            CacheStore::File($b) => $call,
        }
    };
}

impl<S: Submitter> Backend for CacheStore<S> {
    fn size(&self) -> u64 {
        store_dispatch!(self, b => b.size())
    }

    fn capabilities(&self) -> Capabilities {
        store_dispatch!(self, b => b.capabilities())
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        store_dispatch!(self, b => b.read(offset, buf).await)
    }

    async fn write(&self, offset: u64, buf: &[u8], fua: bool) -> Result<(), IoError> {
        store_dispatch!(self, b => b.write(offset, buf, fua).await)
    }

    async fn flush(&self) -> Result<(), IoError> {
        store_dispatch!(self, b => b.flush().await)
    }

    async fn discard(&self, offset: u64, len: u64) -> Result<(), IoError> {
        store_dispatch!(self, b => b.discard(offset, len).await)
    }

    async fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<(), IoError> {
        store_dispatch!(self, b => b.write_zeroes(offset, len, unmap).await)
    }
}

/// The cache engine over a backing file and a cache store, both through one ring.
pub type CacheEngine<S> = CachedBackend<FileBackend<S>, CacheStore<Unregistered<S>>>;

/// One queue's backend for a cached device.
#[derive(Debug)]
pub struct CachedQueue<S> {
    cache: CacheEngine<S>,
    direct: FileBackend<S>,
    attached: Arc<AttachedCache>,
}

impl<S: Submitter + Clone> CachedQueue<S> {
    /// Serves `attached` through `ring`.
    pub fn new(attached: Arc<AttachedCache>, ring: S) -> Self {
        CachedQueue {
            cache: attached.engine(ring.clone()),
            direct: FileBackend::new(Arc::clone(attached.backing()), ring),
            attached,
        }
    }
}

impl<S: Submitter> CachedQueue<S> {
    /// The cache's worker task on this queue (see [`AttachedCache::run_worker`]).
    pub async fn run_worker<F, Fut>(&self, stopping: impl Fn() -> bool, sleep: F)
    where
        F: Fn(std::time::Duration) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        self.attached.run_worker(&self.cache, stopping, sleep).await;
    }
}

/// Runs `$call` on the cache, or on the backing store once the cache is detached.
macro_rules! cached_or_direct {
    ($self:ident, $b:ident => $call:expr) => {{
        if $self.attached.is_detached() {
            let $b = &$self.direct;
            return $call;
        }
        let result = {
            let $b = &$self.cache;
            $call
        };
        match result {
            Err(e) if e.errno == libc::ESHUTDOWN && $self.attached.is_detached() => {
                let $b = &$self.direct;
                $call
            }
            other => other,
        }
    }};
}

impl<S: Submitter> Backend for CachedQueue<S> {
    fn size(&self) -> u64 {
        self.cache.size()
    }

    /// Fixed at start (the kernel was told once): 4 KiB blocks and a volatile write cache, which
    /// remain true for the backing file after a detach.
    fn capabilities(&self) -> Capabilities {
        self.cache.capabilities()
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        cached_or_direct!(self, b => b.read(offset, buf).await)
    }

    async fn write(&self, offset: u64, buf: &[u8], fua: bool) -> Result<(), IoError> {
        cached_or_direct!(self, b => b.write(offset, buf, fua).await)
    }

    async fn flush(&self) -> Result<(), IoError> {
        cached_or_direct!(self, b => b.flush().await)
    }

    async fn discard(&self, offset: u64, len: u64) -> Result<(), IoError> {
        cached_or_direct!(self, b => b.discard(offset, len).await)
    }

    async fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<(), IoError> {
        cached_or_direct!(self, b => b.write_zeroes(offset, len, unmap).await)
    }
}
