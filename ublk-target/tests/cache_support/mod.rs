//! Test support for the cache tests: a store that simulates power loss, and ([`gated`]) a
//! backend whose operations a test parks to force an interleaving.
//!
//! [`CrashStore`] is an in-memory [`Backend`] that remembers which writes are durable. A FLUSH
//! makes every completed write durable; a FUA write is durable when it completes; any other
//! write may or may not survive a crash, independently of the others (disks reorder their
//! caches), and the write in flight when the power failed may survive torn (a prefix of its
//! sectors). Several stores share one [`Power`] supply, so a power cut hits them together at a
//! chosen point: after a given number of operations every operation fails with `EIO`, as if the
//! machine had stopped there. The same cut stands for a killed server process
//! ([`CrashStore::process_crash`]): then every completed write stays.

#![allow(dead_code)] // each test binary uses part of it

pub(crate) mod gated;

use std::sync::{Arc, Mutex};

use ublk_target::backend::{Backend, Capabilities, IoError};
use ublk_target::request::Op;

const SECTOR: usize = 512;

/// A power supply shared by several stores.
#[derive(Debug, Default)]
pub(crate) struct Power {
    /// Operations left before the cut; `None`: no cut planned.
    left: Mutex<(Option<u64>, bool)>,
}

impl Power {
    /// A supply that never fails until armed.
    pub(crate) fn new() -> Arc<Power> {
        Arc::new(Power::default())
    }

    /// The power fails at the start of the `ops`-th next modifying operation.
    pub(crate) fn arm(&self, ops: u64) {
        *self.left.lock().unwrap() = (Some(ops), false);
    }

    /// Whether the power has failed.
    pub(crate) fn is_out(&self) -> bool {
        self.left.lock().unwrap().1
    }

    /// Counts one modifying operation.
    fn draw(&self) -> Draw {
        let mut state = self.left.lock().unwrap();
        match *state {
            (_, true) => Draw::Out,
            (Some(0), false) => {
                *state = (None, true);
                Draw::Cut
            }
            (Some(n), false) => {
                state.0 = Some(n - 1);
                Draw::On
            }
            (None, false) => Draw::On,
        }
    }

    /// Cancels a planned cut (the power stays on).
    pub(crate) fn disarm(&self) {
        self.restore();
    }

    fn restore(&self) {
        *self.left.lock().unwrap() = (None, false);
    }
}

/// What the supply did for one operation.
enum Draw {
    /// Powered: the operation happens.
    On,
    /// The power failed during this operation: it was in flight.
    Cut,
    /// The power was already out: the operation never started.
    Out,
}

#[derive(Debug)]
struct LoggedWrite {
    offset: usize,
    data: Vec<u8>,
    fua: bool,
}

#[derive(Debug)]
struct Disk {
    /// What survives a crash for sure: the contents at the last completed flush.
    durable: Vec<u8>,
    /// What reads see.
    view: Vec<u8>,
    /// Writes completed since the last flush, in order.
    log: Vec<LoggedWrite>,
    /// The write the power failed during, if any.
    interrupted: Option<LoggedWrite>,
}

/// An in-memory store that forgets unflushed writes when it crashes. Clones share the disk.
#[derive(Clone, Debug)]
pub(crate) struct CrashStore {
    disk: Arc<Mutex<Disk>>,
    power: Arc<Power>,
    size: u64,
}

/// How a crash treats the writes that were not yet durable.
pub(crate) struct CrashChoice {
    /// A seed deciding which unflushed writes survive.
    pub(crate) seed: u64,
    /// Whether the interrupted write (if any) survives as a prefix of its sectors.
    pub(crate) tear: bool,
}

fn next_random(state: &mut u64) -> u64 {
    // xorshift64*: deterministic per seed.
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

impl CrashStore {
    /// A zero-filled store of `size` bytes on `power`.
    pub(crate) fn new(size: u64, power: Arc<Power>) -> Self {
        let bytes = usize::try_from(size).unwrap();
        CrashStore {
            disk: Arc::new(Mutex::new(Disk {
                durable: vec![0; bytes],
                view: vec![0; bytes],
                log: Vec::new(),
                interrupted: None,
            })),
            power,
            size,
        }
    }

    /// Loses power and comes back: the store holds its durable contents plus the unflushed
    /// writes `choice` lets survive (FUA writes always do), applied in their original order.
    pub(crate) fn crash(&self, choice: &CrashChoice) {
        let mut disk = self.disk.lock().unwrap();
        let mut random = choice.seed | 1;
        let mut image = disk.durable.clone();
        let log = std::mem::take(&mut disk.log);
        for write in &log {
            if write.fua || next_random(&mut random) % 2 == 0 {
                image[write.offset..write.offset + write.data.len()].copy_from_slice(&write.data);
            }
        }
        if let Some(write) = disk.interrupted.take() {
            if choice.tear {
                let sectors = write.data.len() / SECTOR;
                let kept = (next_random(&mut random) as usize % sectors.max(1)) * SECTOR;
                image[write.offset..write.offset + kept].copy_from_slice(&write.data[..kept]);
            }
        }
        disk.view = image.clone();
        disk.durable = image;
        self.power.restore();
    }

    /// The server process dies (`kill -9`), the machine stays up: every completed write stays
    /// (still unflushed: a later power cut may lose it), and the write in flight either
    /// happened or not as `choice.seed` decides, or with `choice.tear` left a prefix of its
    /// sectors.
    pub(crate) fn process_crash(&self, choice: &CrashChoice) {
        let mut disk = self.disk.lock().unwrap();
        let mut random = choice.seed | 1;
        if let Some(mut write) = disk.interrupted.take() {
            let sectors = write.data.len() / SECTOR;
            let kept = if choice.tear {
                (next_random(&mut random) as usize % sectors.max(1)) * SECTOR
            } else if next_random(&mut random) % 2 == 0 {
                write.data.len()
            } else {
                0
            };
            write.data.truncate(kept);
            write.fua = false;
            let at = write.offset;
            disk.view[at..at + kept].copy_from_slice(&write.data);
            disk.log.push(write);
        }
        self.power.restore();
    }

    /// Overwrites bytes directly (damage, not a write): for corrupting metadata in tests.
    pub(crate) fn corrupt(&self, offset: u64, bytes: &[u8]) {
        let mut disk = self.disk.lock().unwrap();
        let at = usize::try_from(offset).unwrap();
        disk.view[at..at + bytes.len()].copy_from_slice(bytes);
        disk.durable[at..at + bytes.len()].copy_from_slice(bytes);
    }

    /// Reads bytes directly.
    pub(crate) fn peek(&self, offset: u64, len: usize) -> Vec<u8> {
        let disk = self.disk.lock().unwrap();
        let at = usize::try_from(offset).unwrap();
        disk.view[at..at + len].to_vec()
    }

    fn fail(op: Op, offset: u64, len: u64) -> IoError {
        IoError {
            op,
            offset,
            len,
            errno: libc::EIO,
        }
    }

    fn range(&self, op: Op, offset: u64, len: u64) -> Result<usize, IoError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(usize::try_from(offset).unwrap()),
            _ => Err(Self::fail(op, offset, len)),
        }
    }

    fn store(&self, op: Op, offset: u64, data: Vec<u8>, fua: bool) -> Result<(), IoError> {
        let at = self.range(op, offset, data.len() as u64)?;
        let mut disk = self.disk.lock().unwrap();
        let write = LoggedWrite {
            offset: at,
            data,
            fua,
        };
        match self.power.draw() {
            Draw::On => {}
            Draw::Cut => {
                disk.interrupted = Some(write);
                return Err(Self::fail(op, offset, 0));
            }
            Draw::Out => return Err(Self::fail(op, offset, 0)),
        }
        disk.view[at..at + write.data.len()].copy_from_slice(&write.data);
        disk.log.push(write);
        Ok(())
    }
}

impl Backend for CrashStore {
    fn size(&self) -> u64 {
        self.size
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            volatile_cache: true,
            logical_block_size: 512,
            stores_data: true,
        }
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let at = self.range(Op::Read, offset, buf.len() as u64)?;
        if self.power.is_out() {
            return Err(Self::fail(Op::Read, offset, buf.len() as u64));
        }
        let disk = self.disk.lock().unwrap();
        buf.copy_from_slice(&disk.view[at..at + buf.len()]);
        Ok(())
    }

    async fn write(&self, offset: u64, buf: &[u8], fua: bool) -> Result<(), IoError> {
        self.store(Op::Write, offset, buf.to_vec(), fua)
    }

    async fn flush(&self) -> Result<(), IoError> {
        if !matches!(self.power.draw(), Draw::On) {
            return Err(Self::fail(Op::Flush, 0, 0));
        }
        let mut disk = self.disk.lock().unwrap();
        disk.durable = disk.view.clone();
        disk.log.clear();
        Ok(())
    }

    async fn discard(&self, offset: u64, len: u64) -> Result<(), IoError> {
        let zeroes = vec![0; usize::try_from(len).unwrap()];
        self.store(Op::Discard, offset, zeroes, false)
    }

    async fn write_zeroes(&self, offset: u64, len: u64, _unmap: bool) -> Result<(), IoError> {
        let zeroes = vec![0; usize::try_from(len).unwrap()];
        self.store(Op::WriteZeroes, offset, zeroes, false)
    }
}
