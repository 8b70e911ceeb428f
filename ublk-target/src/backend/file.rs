//! The file backend: a regular file or a block device, driven through io_uring, with direct I/O.
//!
//! [`FileStore`] is the opened backing store, shared by every queue of a device; a
//! [`FileBackend`] pairs it with the [`Submitter`] of one queue thread's ring. The mapping from
//! block requests to io_uring operations lives here and is pure; pushing SQEs to a ring is the
//! submitter's job (see `crate::sys`).
//!
//! Semantics, per the flush contract in docs/ublk-target.md:
//! - FLUSH is `fdatasync` (on a block device that also flushes the device's cache);
//! - a FUA write is a `RWF_DSYNC` write;
//! - DISCARD punches a hole; WRITE_ZEROES zeroes a range (`ZERO_RANGE` when the kernel says
//!   NOUNMAP, else punches a hole); both run as io_uring fallocate ops, which execute in
//!   io_uring's worker threads, so the queue thread never stalls on them. Where the store cannot
//!   punch or zero, zeroes are written instead: a discarded range always reads back as zeroes.
//! - short transfers are continued and `EAGAIN`/`EINTR` are resubmitted (bounded).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use io_uring::{opcode, squeue, types};
use libublk::helpers::IoBuf;
use thiserror::Error;

use super::{Backend, Capabilities, IoError};
use crate::request::Op;
use crate::sys::probe;

/// Resubmissions of one operation that keeps returning `EAGAIN`/`EINTR` before it fails `EIO`.
const MAX_RETRIES: u32 = 1000;
/// Largest buffer used when zeroes must be written by hand.
const ZERO_CHUNK_BYTES: u64 = 1 << 20;
const FALLOC_FL_KEEP_SIZE: i32 = 0x01;
const FALLOC_FL_PUNCH_HOLE: i32 = 0x02;
const FALLOC_FL_ZERO_RANGE: i32 = 0x10;

/// Submits io_uring operations on behalf of a backend.
///
/// Contract for implementors: the returned future resolves only after the operation's
/// completion has been reaped, and resolves to the CQE's result (`-errno` on failure). Callers
/// keep every buffer an SQE points to borrowed until that future resolves.
#[allow(async_fn_in_trait)]
pub trait Submitter {
    /// Runs one SQE to completion and returns its result.
    async fn submit(&self, sqe: squeue::Entry) -> i32;

    /// The fixed-file slot at which the backing store is registered on this ring, if any:
    /// a registered file saves a file-table lookup and reference count per operation.
    fn backing_slot(&self) -> Option<u32> {
        None
    }

    /// The ring's registered (fixed) buffer covering `len` bytes from `addr`, if any: a
    /// `READ_FIXED`/`WRITE_FIXED` into it spares the kernel pinning the pages per operation.
    fn fixed_buffer(&self, _addr: *const u8, _len: usize) -> Option<u16> {
        None
    }
}

/// Builds an SQE against the backing store, as a registered file when the ring has one.
/// (io-uring's fd types share only a sealed trait, so each arm instantiates the builder.)
macro_rules! on_store {
    ($backend:expr, |$fd:ident| $build:expr) => {
        match $backend.ring.backing_slot() {
            Some(slot) => {
                let $fd = types::Fixed(slot);
                $build
            }
            None => {
                let $fd = types::Fd($backend.store.file.as_raw_fd());
                $build
            }
        }
    };
}

/// Whether to open the backing store with `O_DIRECT`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DirectIo {
    /// Direct I/O, or fail to open.
    Required,
    /// Direct I/O where the filesystem supports it, buffered (and logged) where it does not.
    #[default]
    Optional,
    /// Buffered I/O through the page cache.
    Disabled,
}

/// What kind of object backs the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// A regular file.
    File,
    /// A block device.
    BlockDevice,
}

/// Why a backing store could not be opened.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The path does not exist.
    #[error("backing store {0} does not exist")]
    NotFound(PathBuf),
    /// Neither a regular file nor a block device.
    #[error("backing store {0} is neither a regular file nor a block device")]
    WrongType(PathBuf),
    /// The store is smaller than the device that should live on it.
    #[error("backing store {path} has {have} bytes, smaller than the requested {need}")]
    TooSmall {
        /// The store.
        path: PathBuf,
        /// Its size in bytes.
        have: u64,
        /// The device size asked for.
        need: u64,
    },
    /// The device size is not a multiple of the store's block size.
    #[error("size {size} is not a multiple of the {block}-byte block size of {path}")]
    Misaligned {
        /// The store.
        path: PathBuf,
        /// The device size asked for.
        size: u64,
        /// The store's block size.
        block: u32,
    },
    /// The store needs a block size this device cannot offer.
    #[error("backing store {path} needs {block}-byte alignment; ublk supports 512 to 4096")]
    UnsupportedBlockSize {
        /// The store.
        path: PathBuf,
        /// Its direct-I/O alignment.
        block: u32,
    },
    /// Any other I/O failure while opening or probing.
    #[error("cannot open backing store {path}")]
    Io {
        /// The store.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// An opened backing store, shared by every queue of one device.
#[derive(Debug)]
pub struct FileStore {
    file: File,
    path: PathBuf,
    kind: StoreKind,
    size: u64,
    direct: bool,
    block_size: u32,
}

impl FileStore {
    /// Opens `path` read-write. `size` defaults to the whole store and must fit inside it and be
    /// a multiple of its block size.
    pub fn open(path: &Path, size: Option<u64>, direct: DirectIo) -> Result<FileStore, OpenError> {
        let io_err = |source| OpenError::Io {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => OpenError::NotFound(path.to_owned()),
            _ => io_err(e),
        })?;
        let kind = match meta.file_type() {
            t if t.is_file() => StoreKind::File,
            t if t.is_block_device() => StoreKind::BlockDevice,
            _ => return Err(OpenError::WrongType(path.to_owned())),
        };
        let (file, is_direct) = open_with_policy(path, direct).map_err(io_err)?;
        let capacity = probe::store_size(&file, kind == StoreKind::BlockDevice).map_err(io_err)?;
        let block_size = store_block_size(&file, kind, is_direct).map_err(io_err)?;
        if !(512..=4096).contains(&block_size) {
            return Err(OpenError::UnsupportedBlockSize {
                path: path.to_owned(),
                block: block_size,
            });
        }
        let size = size.unwrap_or(capacity - capacity % u64::from(block_size));
        if size > capacity {
            return Err(OpenError::TooSmall {
                path: path.to_owned(),
                have: capacity,
                need: size,
            });
        }
        if size == 0 || size % u64::from(block_size) != 0 {
            return Err(OpenError::Misaligned {
                path: path.to_owned(),
                size,
                block: block_size,
            });
        }
        Ok(FileStore {
            file,
            path: path.to_owned(),
            kind,
            size,
            direct: is_direct,
            block_size,
        })
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Regular file or block device.
    pub fn kind(&self) -> StoreKind {
        self.kind
    }

    /// Whether I/O bypasses the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// The device size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The open descriptor, for registering it with a ring as a fixed file.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }
}

fn open_with_policy(path: &Path, policy: DirectIo) -> std::io::Result<(File, bool)> {
    let open = |flags| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(flags)
            .open(path)
    };
    match policy {
        DirectIo::Disabled => Ok((open(0)?, false)),
        DirectIo::Required => Ok((open(libc::O_DIRECT)?, true)),
        DirectIo::Optional => match open(libc::O_DIRECT) {
            Ok(file) => Ok((file, true)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::warn!(path = %path.display(), "filesystem refuses O_DIRECT; using buffered I/O");
                Ok((open(0)?, false))
            }
            Err(e) => Err(e),
        },
    }
}

fn store_block_size(file: &File, kind: StoreKind, direct: bool) -> std::io::Result<u32> {
    if kind == StoreKind::BlockDevice {
        return probe::logical_block_size(file);
    }
    if !direct {
        return Ok(512);
    }
    // Regular files: the offset alignment O_DIRECT needs (statx DIOALIGN, Linux 6.1+); older
    // kernels report nothing, and the file system's block size is the safe answer there.
    Ok(match probe::dio_offset_align(file)? {
        Some(align) => align.max(512),
        None => u32::try_from(probe::fs_block_size(file)?)
            .unwrap_or(4096)
            .clamp(512, 4096),
    })
}

/// A [`FileStore`] served through one queue thread's ring.
#[derive(Debug)]
pub struct FileBackend<S> {
    store: Arc<FileStore>,
    ring: S,
}

impl<S: Submitter> FileBackend<S> {
    /// Serves `store` through `ring`.
    pub fn new(store: Arc<FileStore>, ring: S) -> Self {
        FileBackend { store, ring }
    }

    /// Submits `make_sqe(done)` until `total` bytes have been transferred.
    async fn transfer(
        &self,
        op: Op,
        offset: u64,
        total: usize,
        make_sqe: impl Fn(usize) -> squeue::Entry,
    ) -> Result<(), IoError> {
        let fail = |errno| IoError {
            op,
            offset,
            len: total as u64,
            errno,
        };
        let mut done = 0usize;
        let mut retries = 0u32;
        while done < total {
            let res = self.ring.submit(make_sqe(done)).await;
            match res {
                n if n > 0 => done += usize::try_from(n).expect("positive result fits usize"),
                0 => return Err(fail(libc::EIO)),
                n if is_retryable(n) && retries < MAX_RETRIES => retries += 1,
                n if is_retryable(n) => return Err(fail(libc::EIO)),
                n => return Err(fail(-n)),
            }
        }
        Ok(())
    }

    /// Runs one non-transfer op (fsync, fallocate), resubmitting on `EAGAIN`/`EINTR`.
    async fn run(
        &self,
        op: Op,
        offset: u64,
        len: u64,
        make_sqe: impl Fn() -> squeue::Entry,
    ) -> Result<(), IoError> {
        for _ in 0..=MAX_RETRIES {
            match self.ring.submit(make_sqe()).await {
                n if n >= 0 => return Ok(()),
                n if is_retryable(n) => continue,
                n => {
                    return Err(IoError {
                        op,
                        offset,
                        len,
                        errno: -n,
                    })
                }
            }
        }
        Err(IoError {
            op,
            offset,
            len,
            errno: libc::EIO,
        })
    }

    async fn fallocate(&self, op: Op, offset: u64, len: u64, mode: i32) -> Result<(), IoError> {
        self.run(op, offset, len, || {
            on_store!(self, |fd| opcode::Fallocate::new(fd, len)
                .offset(offset)
                .mode(mode)
                .build())
        })
        .await
    }

    /// Zeroes a range, preferring `modes` in order and writing zeroes when none is supported.
    async fn zero(&self, op: Op, offset: u64, len: u64, modes: &[i32]) -> Result<(), IoError> {
        for &mode in modes {
            match self.fallocate(op, offset, len, mode).await {
                Err(e) if matches!(e.errno, libc::EOPNOTSUPP | libc::EINVAL | libc::ENODEV) => {
                    continue
                }
                other => return other,
            }
        }
        self.write_zero_buffers(offset, len).await
    }

    async fn write_zero_buffers(&self, offset: u64, len: u64) -> Result<(), IoError> {
        let chunk = len.min(ZERO_CHUNK_BYTES) as usize;
        let mut zeroes = IoBuf::<u8>::new(chunk);
        zeroes.zero_buf();
        let mut done = 0u64;
        while done < len {
            let piece = (len - done).min(chunk as u64) as usize;
            self.write(offset + done, &zeroes.as_slice()[..piece], false)
                .await?;
            done += piece as u64;
        }
        Ok(())
    }
}

/// A file store sits behind the page cache or a device cache until fdatasync, so it always has a
/// volatile cache to declare.
pub(super) fn capabilities(store: &FileStore) -> Capabilities {
    Capabilities {
        volatile_cache: true,
        logical_block_size: store.block_size,
        stores_data: true,
    }
}

fn is_retryable(res: i32) -> bool {
    res == -libc::EAGAIN || res == -libc::EINTR
}

impl<S: Submitter> Backend for FileBackend<S> {
    fn size(&self) -> u64 {
        self.store.size
    }

    fn capabilities(&self) -> Capabilities {
        capabilities(&self.store)
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let base = buf.as_mut_ptr();
        let total = buf.len();
        self.transfer(Op::Read, offset, total, |done| {
            // `done < total`, so the pointer stays inside `buf`, which this future borrows
            // until the transfer completes.
            let ptr = base.wrapping_add(done);
            let len = (total - done) as u32;
            match self.ring.fixed_buffer(ptr, len as usize) {
                Some(index) => on_store!(self, |fd| opcode::ReadFixed::new(fd, ptr, len, index)
                    .offset(offset + done as u64)
                    .build()),
                None => on_store!(self, |fd| opcode::Read::new(fd, ptr, len)
                    .offset(offset + done as u64)
                    .build()),
            }
        })
        .await
    }

    async fn write(&self, offset: u64, buf: &[u8], fua: bool) -> Result<(), IoError> {
        let base = buf.as_ptr();
        let total = buf.len();
        let rw_flags = if fua { libc::RWF_DSYNC } else { 0 };
        self.transfer(Op::Write, offset, total, |done| {
            let ptr = base.wrapping_add(done);
            let len = (total - done) as u32;
            match self.ring.fixed_buffer(ptr, len as usize) {
                Some(index) => on_store!(self, |fd| opcode::WriteFixed::new(fd, ptr, len, index)
                    .offset(offset + done as u64)
                    .rw_flags(rw_flags)
                    .build()),
                None => on_store!(self, |fd| opcode::Write::new(fd, ptr, len)
                    .offset(offset + done as u64)
                    .rw_flags(rw_flags)
                    .build()),
            }
        })
        .await
    }

    async fn flush(&self) -> Result<(), IoError> {
        self.run(Op::Flush, 0, 0, || {
            on_store!(self, |fd| opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build())
        })
        .await
    }

    async fn discard(&self, offset: u64, len: u64) -> Result<(), IoError> {
        let punch = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
        self.zero(
            Op::Discard,
            offset,
            len,
            &[punch, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE],
        )
        .await
    }

    async fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<(), IoError> {
        let punch = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
        let zero = FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
        let modes: &[i32] = if unmap { &[punch, zero] } else { &[zero] };
        self.zero(Op::WriteZeroes, offset, len, modes).await
    }
}
