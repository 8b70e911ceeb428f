//! The queue thread's io_uring with deferred task work (`IORING_SETUP_DEFER_TASKRUN`).
//!
//! Completions reach a queue thread as io_uring task work: a ublk request being handed over, a
//! backend read finishing. By default the kernel queues that work on the thread and interrupts
//! it to run it (a signal-like notification, and a wake-up from wherever the completion came
//! from); with deferred task work it is kept on the ring and run only when the thread enters
//! the kernel asking for completions, in one batch. The queue loop does that anyway on every
//! turn, so the work is the same, minus the notifications.
//!
//! The catch (and most likely why an earlier attempt left servers running after their device
//! was stopped): once a queue is stopping, libublk's loop enters the kernel without asking for
//! completions, and deferred work - the aborted fetches among it - would then never run. [`run_deferred`]
//! runs it; the queue loop calls it each turn while stopping.

use std::cell::RefCell;

use io_uring::{cqueue, squeue, IoUring};
use libublk::io::UblkDev;
use libublk::UblkError;

/// `io_uring_enter` flag: reap completions (and so run deferred task work). Linux uapi value.
const IORING_ENTER_GETEVENTS: u32 = 1;

/// Creates this thread's queue ring with deferred task work, before libublk would create its
/// default one. A kernel that refuses the flags (older than 6.1) gets libublk's default ring.
pub fn init_queue_ring(dev: &UblkDev) -> Result<(), UblkError> {
    libublk::io::ublk_init_task_ring(|cell| {
        if cell.get().is_some() {
            return Ok(());
        }
        let built = IoUring::<squeue::Entry, cqueue::Entry>::builder()
            .setup_cqsize(u32::from(dev.tgt.cq_depth))
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(u32::from(dev.tgt.sq_depth));
        match built {
            Ok(ring) => {
                tracing::debug!("queue ring with deferred task work");
                cell.set(RefCell::new(ring))
                    .map_err(|_| UblkError::OtherError(-libc::EEXIST))
            }
            Err(error) => {
                tracing::info!(%error, "no deferred task work; using the default queue ring");
                Ok(())
            }
        }
    })
}

/// Runs the ring's pending deferred task work (posting its completions) without waiting.
pub fn run_deferred() {
    let result = libublk::io::with_task_io_ring(|ring| {
        // SAFETY: no SQEs are submitted (to_submit 0) and no argument is passed, so the call
        // reads no memory of ours; GETEVENTS with min_complete 0 only runs pending task work.
        unsafe {
            ring.submitter()
                .enter::<libc::sigset_t>(0, 0, IORING_ENTER_GETEVENTS, None)
        }
    });
    if let Err(error) = result {
        if error.raw_os_error() != Some(libc::EINTR) {
            tracing::warn!(%error, "cannot run deferred task work");
        }
    }
}
