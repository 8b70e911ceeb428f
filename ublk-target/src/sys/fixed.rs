//! A queue's per-tag I/O buffers, registered with its io_uring as fixed buffers.
//!
//! A backend read or write with O_DIRECT into an ordinary buffer makes the kernel look up and
//! pin the buffer's pages for every operation and unpin them at its completion; with the buffer
//! registered once (`IORING_REGISTER_BUFFERS`), `READ_FIXED`/`WRITE_FIXED` use the pages pinned
//! at registration. In a TCG guest every kernel instruction per I/O is emulated, so this is
//! worth having on the hot path (measured in docs/benchmarks.md).
//!
//! Registration pins, and so makes resident, what it covers. Only a prefix of each tag's buffer
//! is registered, sized so that a queue pins at most [`PIN_BUDGET_BYTES`]: small requests (the
//! ones whose per-operation cost matters) use the fixed path, larger ones the ordinary one.

use std::rc::Rc;

use libublk::helpers::IoBuf;

/// The most one queue pins for its fixed buffers, in bytes.
const PIN_BUDGET_BYTES: usize = 8 << 20;
const PAGE_BYTES: usize = 4096;

/// One registered buffer: where it starts, how much of it is registered, its index.
#[derive(Clone, Copy, Debug)]
struct Slot {
    start: usize,
    len: usize,
    index: u16,
}

/// The registered prefixes of a queue's tag buffers, sorted by address, for finding the fixed
/// buffer index of a backend operation's buffer. Empty when nothing is registered.
#[derive(Clone, Debug, Default)]
pub struct FixedBuffers {
    slots: Rc<[Slot]>,
}

impl FixedBuffers {
    /// The fixed buffer index covering `len` bytes from `addr`, if one does.
    #[inline]
    pub fn lookup(&self, addr: *const u8, len: usize) -> Option<u16> {
        let addr = addr as usize;
        let at = self.slots.partition_point(|slot| slot.start <= addr);
        let slot = self.slots.get(at.checked_sub(1)?)?;
        let end = addr.checked_add(len)?;
        (end <= slot.start + slot.len).then_some(slot.index)
    }

    /// Registers a prefix of every buffer in `bufs` (index = position) with this queue thread's
    /// ring (libublk's thread-local one: call it after the thread's `UblkQueue` exists).
    /// Failure (e.g. `RLIMIT_MEMLOCK` for an unprivileged server) is logged and leaves the
    /// queue on ordinary reads and writes. The caller must call [`Self::unregister`] before
    /// `bufs` is dropped.
    pub fn register(bufs: &[IoBuf<u8>]) -> FixedBuffers {
        let (Some(first), Ok(count)) = (bufs.first(), u16::try_from(bufs.len())) else {
            return FixedBuffers::default();
        };
        let per_buf = (PIN_BUDGET_BYTES / bufs.len()).max(PAGE_BYTES) / PAGE_BYTES * PAGE_BYTES;
        let len = per_buf.min(first.len());
        let iovecs: Vec<libc::iovec> = bufs
            .iter()
            .map(|buf| libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: len.min(buf.len()),
            })
            .collect();
        let registered = libublk::io::with_task_io_ring_mut(|ring| {
            // SAFETY: every iovec lies inside an `IoBuf` in `bufs`; the caller keeps `bufs`
            // alive, unmoved (heap memory: moving the Vec does not move it), until it calls
            // `unregister`, which runs only after every tag task (and so every fixed operation,
            // which its task awaits to completion) has finished.
            unsafe { ring.submitter().register_buffers(&iovecs) }
        });
        if let Err(error) = registered {
            tracing::warn!(%error, "cannot register fixed I/O buffers; using ordinary reads and writes");
            return FixedBuffers::default();
        }
        let mut slots: Vec<Slot> = (0..count)
            .zip(&iovecs)
            .map(|(index, iov)| Slot {
                start: iov.iov_base as usize,
                len: iov.iov_len,
                index,
            })
            .collect();
        slots.sort_unstable_by_key(|slot| slot.start);
        FixedBuffers {
            slots: slots.into(),
        }
    }

    /// Drops the registration (if any) so the buffers may be freed.
    pub fn unregister(&self) {
        if self.slots.is_empty() {
            return;
        }
        let result =
            libublk::io::with_task_io_ring_mut(|ring| ring.submitter().unregister_buffers());
        if let Err(error) = result {
            tracing::warn!(%error, "cannot unregister fixed I/O buffers");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_finds_only_ranges_inside_a_registered_prefix() {
        let fixed = FixedBuffers {
            slots: vec![
                Slot {
                    start: 0x10000,
                    len: 0x2000,
                    index: 1,
                },
                Slot {
                    start: 0x40000,
                    len: 0x1000,
                    index: 0,
                },
            ]
            .into(),
        };
        let at = |addr: usize| addr as *const u8;
        assert_eq!(fixed.lookup(at(0x10000), 0x2000), Some(1));
        assert_eq!(fixed.lookup(at(0x11000), 0x1000), Some(1));
        assert_eq!(fixed.lookup(at(0x11000), 0x1001), None);
        assert_eq!(fixed.lookup(at(0x40000), 0x1000), Some(0));
        assert_eq!(fixed.lookup(at(0xF000), 0x1000), None);
        assert_eq!(fixed.lookup(at(0x30000), 0x10), None);
        assert_eq!(FixedBuffers::default().lookup(at(0x10000), 1), None);
    }
}
