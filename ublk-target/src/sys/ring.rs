//! A private io_uring that runs one operation at a time to completion: the [`Submitter`] for
//! backends used outside a ublk queue thread (kernel-free tests, offline tools).

use std::cell::RefCell;

use io_uring::{squeue, IoUring};

use crate::backend::Submitter;

/// An io_uring owned by one thread; each submission is waited for before `submit` returns.
pub struct BlockingRing {
    ring: RefCell<IoUring>,
}

impl BlockingRing {
    /// A ring with room for one operation at a time.
    pub fn new() -> std::io::Result<Self> {
        Ok(BlockingRing {
            ring: RefCell::new(IoUring::new(4)?),
        })
    }
}

impl std::fmt::Debug for BlockingRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlockingRing")
    }
}

impl Submitter for BlockingRing {
    async fn submit(&self, sqe: squeue::Entry) -> i32 {
        let mut ring = self.ring.borrow_mut();
        // SAFETY: the SQE's buffers are borrowed by our caller for as long as this future is
        // pending, and this function reaps the completion before it returns (the future is
        // ready on its first poll), so no buffer can be freed while the kernel still uses it.
        // The ring is empty at this point (every call drains its own completion), so the push
        // cannot overflow it.
        if unsafe { ring.submission().push(&sqe.user_data(0)) }.is_err() {
            return -libc::EBUSY;
        }
        loop {
            match ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                    ) =>
                {
                    continue
                }
                // Returning now could free a buffer the kernel may still write into.
                Err(e) => panic!("io_uring_enter failed with an operation possibly in flight: {e}"),
            }
            if let Some(cqe) = ring.completion().next() {
                return cqe.result();
            }
        }
    }
}
