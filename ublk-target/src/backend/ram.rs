//! The RAM backend: a sparse in-memory disk shared by all queue threads of a device.
//!
//! Memory is allocated in fixed-size chunks on first write, so a large RAM device costs only
//! what has been written; discarding a whole chunk frees it. Each chunk has its own lock, so
//! queues contend only when they touch the same chunk. RAM has no volatile cache to flush: a
//! completed write is as durable as this backend ever gets (it dies with the process).

use std::sync::{Arc, Mutex, MutexGuard};

use super::{Backend, Capabilities, IoError};
use crate::request::Op;

/// Bytes per lazily allocated chunk.
const CHUNK_BYTES: u64 = 1 << 20;

type Chunk = Option<Box<[u8]>>;

/// A sparse RAM disk. Cloning shares the same memory.
#[derive(Clone, Debug)]
pub struct RamBackend {
    size: u64,
    chunks: Arc<[Mutex<Chunk>]>,
}

impl RamBackend {
    /// A zero-filled RAM disk of `size` bytes (nothing is allocated until written).
    pub fn new(size: u64) -> Self {
        let count = size.div_ceil(CHUNK_BYTES);
        let chunks = (0..count).map(|_| Mutex::new(None)).collect();
        RamBackend { size, chunks }
    }

    fn chunk(&self, index: u64) -> MutexGuard<'_, Chunk> {
        // A poisoned lock means another queue thread panicked mid-copy; the bytes are still
        // plain memory, so carry on rather than take the whole device down.
        let slot = &self.chunks[usize::try_from(index).expect("chunk index fits usize")];
        slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Calls `visit(chunk_index, offset_in_chunk, range_in_request)` for each chunk piece of
    /// the byte range `offset..offset+len`.
    fn for_each_piece(
        &self,
        offset: u64,
        len: u64,
        mut visit: impl FnMut(u64, usize, std::ops::Range<usize>),
    ) {
        let mut done = 0u64;
        while done < len {
            let pos = offset + done;
            let in_chunk = pos % CHUNK_BYTES;
            let piece = (CHUNK_BYTES - in_chunk).min(len - done);
            let start = usize::try_from(done).expect("request length fits usize");
            let end = start + usize::try_from(piece).expect("piece fits usize");
            visit(
                pos / CHUNK_BYTES,
                usize::try_from(in_chunk).expect("fits"),
                start..end,
            );
            done += piece;
        }
    }

    fn check_range(&self, op: Op, offset: u64, len: u64) -> Result<(), IoError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(IoError {
                op,
                offset,
                len,
                errno: libc::EIO,
            }),
        }
    }

    fn zero_range(&self, offset: u64, len: u64) {
        self.for_each_piece(offset, len, |index, at, range| {
            let mut chunk = self.chunk(index);
            if range.len() as u64 == CHUNK_BYTES {
                *chunk = None;
            } else if let Some(data) = chunk.as_mut() {
                data[at..at + range.len()].fill(0);
            }
        });
    }
}

impl Backend for RamBackend {
    fn size(&self) -> u64 {
        self.size
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            volatile_cache: false,
            logical_block_size: 512,
            stores_data: true,
        }
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.check_range(Op::Read, offset, buf.len() as u64)?;
        self.for_each_piece(offset, buf.len() as u64, |index, at, range| {
            let chunk = self.chunk(index);
            let out = &mut buf[range];
            match chunk.as_ref() {
                Some(data) => out.copy_from_slice(&data[at..at + out.len()]),
                None => out.fill(0),
            }
        });
        Ok(())
    }

    async fn write(&self, offset: u64, buf: &[u8], _fua: bool) -> Result<(), IoError> {
        self.check_range(Op::Write, offset, buf.len() as u64)?;
        self.for_each_piece(offset, buf.len() as u64, |index, at, range| {
            let mut chunk = self.chunk(index);
            let data =
                chunk.get_or_insert_with(|| vec![0u8; CHUNK_BYTES as usize].into_boxed_slice());
            let input = &buf[range];
            data[at..at + input.len()].copy_from_slice(input);
        });
        Ok(())
    }

    async fn flush(&self) -> Result<(), IoError> {
        Ok(())
    }

    async fn discard(&self, offset: u64, len: u64) -> Result<(), IoError> {
        self.check_range(Op::Discard, offset, len)?;
        self.zero_range(offset, len);
        Ok(())
    }

    async fn write_zeroes(&self, offset: u64, len: u64, _unmap: bool) -> Result<(), IoError> {
        self.check_range(Op::WriteZeroes, offset, len)?;
        self.zero_range(offset, len);
        Ok(())
    }
}
