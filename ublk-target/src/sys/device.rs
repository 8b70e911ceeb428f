//! Serving one ublk device: ADD_DEV, parameters, one thread per hardware queue, START_DEV, and
//! the per-tag loop that fetches a request, runs it through the engine and commits its result.
//!
//! Parameters are declared from the backend's capabilities so the kernel sends exactly what the
//! backend can honour: a volatile write cache plus FUA when writes can sit in a cache (so the
//! kernel sends FLUSH and FUA), a logical block size no smaller than the backend's direct-I/O
//! alignment, and discard / write-zeroes limits (so the kernel sends those ops at all).

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use io_uring::{opcode, squeue, types};
use libublk::ctrl::{UblkCtrl, UblkCtrlBuilder};
use libublk::helpers::IoBuf;
use libublk::io::{UblkDev, UblkQueue};
use libublk::{sys as ublk_sys, BufDesc, UblkError, UblkFlags, UblkUringData};
use thiserror::Error;

use super::fixed::FixedBuffers;
use crate::backend::{AnyBackend, SharedStore, Submitter};
use crate::datapath::RequestPath;
use crate::qos::{CachedClock, Limiter, MonotonicClock, QueueLimiter};
use crate::request::{Geometry, Request, SECTOR_SHIFT};
use crate::stats::DeviceStats;

/// Largest DISCARD / WRITE_ZEROES the kernel may send in one request, in bytes. Bounded so one
/// request cannot occupy a tag for long; the block layer splits bigger ones.
const MAX_ZEROING_BYTES: u32 = 1 << 30;
/// Seconds the queue loop sleeps in io_uring_enter when idle before re-checking for shutdown.
const IDLE_WAIT_SECS: u64 = 20;

/// How to create a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceOptions {
    /// The device id to ask for; `None` lets the kernel pick the lowest free one.
    pub id: Option<u32>,
    /// Hardware queues, each served by its own thread.
    pub queues: u16,
    /// Requests in flight per queue.
    pub depth: u16,
    /// Largest read or write in bytes (the per-tag buffer size); a multiple of the page size.
    pub max_io_bytes: u32,
    /// A name recorded with the device.
    pub name: String,
    /// Create the device with user recovery: if its server dies, the kernel holds I/O (and
    /// re-issues what was in flight) until a new server takes over with [`StartMode::Recover`].
    /// Only for backends whose data outlives the server process.
    pub recoverable: bool,
    /// Create a new device, or take over a quiesced one.
    pub mode: StartMode,
}

/// Whether a server creates its device or recovers an existing one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartMode {
    /// ADD_DEV: a new device (deleted again when this server exits normally).
    Add,
    /// START/END_USER_RECOVERY: serve the existing, quiesced device `id` again.
    Recover,
}

/// A device that the kernel has started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartedDevice {
    /// Its ublk id (`N` in `/dev/ublkbN`).
    pub id: u32,
    /// The block device node.
    pub block_path: PathBuf,
}

/// Why a device could not be created or served.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// The kernel has no ublk driver loaded.
    #[error("/dev/ublk-control is missing: the kernel has no ublk_drv (modprobe ublk_drv)")]
    NoControlDevice,
    /// The driver refused or failed a control command.
    #[error("ublk {action} failed: {source}")]
    Control {
        /// What was being done.
        action: &'static str,
        /// libublk's error.
        #[source]
        source: UblkError,
    },
}

/// Submits a backend's SQEs on the current queue thread's ublk ring (libublk keeps that ring in
/// a thread-local), so backend I/O and ublk commands complete on one ring.
#[derive(Clone, Debug)]
pub struct QueueRing {
    /// Whether the backing store is registered at [`BACKING_SLOT`].
    backing_registered: bool,
    /// The queue's tag buffers registered with the ring.
    fixed: FixedBuffers,
}

/// libublk registers `tgt.fds` as the queue ring's fixed files; slot 0 is `/dev/ublkcN`.
const BACKING_SLOT: u32 = 1;

impl Submitter for QueueRing {
    fn backing_slot(&self) -> Option<u32> {
        self.backing_registered.then_some(BACKING_SLOT)
    }

    fn fixed_buffer(&self, addr: *const u8, len: usize) -> Option<u16> {
        self.fixed.lookup(addr, len)
    }

    async fn submit(&self, sqe: squeue::Entry) -> i32 {
        // libublk resolves this future only when the operation's CQE is reaped, which is the
        // contract `Submitter` asks for; the engine keeps the request buffer borrowed until then.
        libublk::uring_async::ublk_submit_sqe_async(sqe, UblkUringData::Target as u64)
            .await
            .unwrap_or(-libc::EIO)
    }
}

/// Creates the device, serves it until it is stopped or deleted, and removes it on return.
/// `on_started` runs once the block device exists.
/// Every request passes `limiter` before it runs (a throttled request waits holding its tag)
/// and is counted in `stats` when it completes.
pub fn serve(
    options: &DeviceOptions,
    store: SharedStore,
    limiter: Arc<Limiter>,
    stats: Arc<DeviceStats>,
    on_started: impl FnOnce(StartedDevice) + Send + Sync + 'static,
) -> Result<(), DeviceError> {
    if !std::path::Path::new("/dev/ublk-control").exists() {
        return Err(DeviceError::NoControlDevice);
    }
    let caps = store.capabilities();
    let geometry = Geometry {
        size: store.size(),
        logical_block_size: caps.logical_block_size,
        max_io_bytes: options.max_io_bytes,
    };
    let ctrl = UblkCtrlBuilder::default()
        .name(&options.name)
        .id(options
            .id
            .map_or(-1, |id| i32::try_from(id).unwrap_or(i32::MAX)))
        .nr_queues(options.queues)
        .depth(options.depth)
        .io_buf_bytes(options.max_io_bytes)
        .ctrl_flags(ctrl_flags(options.recoverable))
        .dev_flags(match options.mode {
            StartMode::Add => UblkFlags::UBLK_DEV_F_ADD_DEV,
            StartMode::Recover => UblkFlags::UBLK_DEV_F_RECOVER_DEV,
        })
        .build()
        .map_err(|source| DeviceError::Control {
            action: "add",
            source,
        })?;
    let params = device_params(&geometry, caps.volatile_cache);
    let backing_fd = store.backing_fd();
    let init = move |dev: &mut UblkDev| {
        dev.tgt.dev_size = geometry.size;
        dev.tgt.params = params;
        if let Some(fd) = backing_fd {
            // libublk registers fds[0..nr_fds] with each queue ring; fds[0] is the char device.
            let slot = dev.tgt.nr_fds;
            if u32::try_from(slot).ok() != Some(BACKING_SLOT) {
                tracing::error!(
                    slot,
                    "libublk's fixed-file table is not laid out as expected"
                );
                return Err(UblkError::OtherError(-libc::EINVAL));
            }
            dev.tgt.fds[BACKING_SLOT as usize] = fd;
            dev.tgt.nr_fds = slot + 1;
        }
        Ok(())
    };
    let queue = move |qid: u16, dev: &UblkDev| {
        serve_queue(
            qid,
            dev,
            &store,
            QueueShared {
                limiter: &limiter,
                stats: &stats,
            },
            geometry,
        )
    };
    let started = move |ctrl: &UblkCtrl| {
        let id = ctrl.dev_info().dev_id;
        bypass_io_scheduler(id);
        on_started(StartedDevice {
            id,
            block_path: PathBuf::from(ctrl.get_bdev_path()),
        });
    };
    ctrl.run_target(init, queue, started)
        .map_err(|source| DeviceError::Control {
            action: "start",
            source,
        })?;
    Ok(())
}

/// Switches the block device's I/O scheduler to `none`. The block layer gives a single-queue
/// device mq-deadline by default (the kernel loop device opts out of that default, ublk_drv of
/// 6.12 does not), which costs a lock and a sort per request and buys nothing here: requests go
/// straight to a backend whose own device has its own scheduler, or to memory. Measured in
/// docs/benchmarks.md. Failing to switch only costs speed, so it is logged, not fatal; an
/// operator (or a udev rule) may pick another scheduler afterwards.
fn bypass_io_scheduler(id: u32) {
    let path = format!("/sys/block/ublkb{id}/queue/scheduler");
    if let Err(error) = std::fs::write(&path, "none") {
        tracing::warn!(path, %error, "cannot switch the I/O scheduler to none");
    }
}

/// With recovery, in-flight requests of a dead server are re-issued to its successor rather
/// than failed: every op we serve is idempotent (a write rewrites the same bytes, discard and
/// write-zeroes zero the same range), so re-issue cannot corrupt, while failing them would make
/// a mounted file system see write errors for a crash it should not notice.
fn ctrl_flags(recoverable: bool) -> u64 {
    if recoverable {
        u64::from(ublk_sys::UBLK_F_USER_RECOVERY | ublk_sys::UBLK_F_USER_RECOVERY_REISSUE)
    } else {
        0
    }
}

fn device_params(geometry: &Geometry, volatile_cache: bool) -> ublk_sys::ublk_params {
    let block_shift = geometry.logical_block_size.trailing_zeros();
    let attrs = if volatile_cache {
        ublk_sys::UBLK_ATTR_VOLATILE_CACHE | ublk_sys::UBLK_ATTR_FUA
    } else {
        0
    };
    let shift = |v: u32| u8::try_from(v).expect("block shifts are at most 12");
    let max_zeroing_sectors = MAX_ZEROING_BYTES >> SECTOR_SHIFT;
    ublk_sys::ublk_params {
        types: ublk_sys::UBLK_PARAM_TYPE_BASIC | ublk_sys::UBLK_PARAM_TYPE_DISCARD,
        basic: ublk_sys::ublk_param_basic {
            attrs,
            logical_bs_shift: shift(block_shift),
            physical_bs_shift: shift(block_shift.max(12)),
            io_min_shift: shift(block_shift),
            io_opt_shift: shift(block_shift.max(12)),
            max_sectors: geometry.max_io_bytes >> SECTOR_SHIFT,
            dev_sectors: geometry.size >> SECTOR_SHIFT,
            ..Default::default()
        },
        discard: ublk_sys::ublk_param_discard {
            discard_granularity: geometry.logical_block_size,
            max_discard_sectors: max_zeroing_sectors,
            max_write_zeroes_sectors: max_zeroing_sectors,
            max_discard_segments: 1,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// What every tag loop of a queue shares.
struct TagContext {
    path: RequestPath<AnyBackend<QueueRing>>,
    /// The time of the event loop's current turn, for admission and latency.
    clock: CachedClock,
    geometry: Geometry,
}

/// One hardware queue's thread: an async task per tag on a local executor, driven by the
/// queue's io_uring.
fn serve_queue(
    qid: u16,
    dev: &UblkDev,
    store: &SharedStore,
    shared: QueueShared<'_>,
    geometry: Geometry,
) {
    if let Err(e) = super::taskrun::init_queue_ring(dev) {
        tracing::error!(qid, error = %e, "cannot set up the queue ring");
        return;
    }
    let queue = match UblkQueue::new(qid, dev) {
        Ok(queue) => Rc::new(queue),
        Err(e) => {
            tracing::error!(qid, error = %e, "cannot set up queue");
            return;
        }
    };
    // The tag buffers outlive the executor (declared first, dropped last) and are unregistered
    // from the ring only after every tag task has finished.
    let mut bufs: Vec<IoBuf<u8>> = queue
        .tags()
        .map(|_| IoBuf::<u8>::new(geometry.max_io_bytes as usize))
        .collect();
    // Only stores read and written through the ring gain from fixed buffers; the others would
    // just pin memory.
    let fixed = match store.backing_fd() {
        Some(_) => FixedBuffers::register(&bufs),
        None => FixedBuffers::default(),
    };
    let context = Rc::new(TagContext {
        path: RequestPath::new(
            store.for_queue(QueueRing {
                backing_registered: store.backing_fd().is_some(),
                fixed: fixed.clone(),
            }),
            QueueLimiter::new(Arc::clone(shared.limiter)),
            shared.stats,
        ),
        clock: CachedClock::new(&MonotonicClock),
        geometry,
    });
    let executor = Rc::new(smol::LocalExecutor::new());
    let tasks: Vec<_> = queue
        .tags()
        .zip(bufs.iter_mut())
        .map(|(tag, buf)| {
            let (queue, context) = (Rc::clone(&queue), Rc::clone(&context));
            executor.spawn(async move {
                match serve_tag(&queue, &context, tag, buf).await {
                    Ok(()) | Err(UblkError::QueueIsDown) => {}
                    Err(e) => tracing::error!(qid, tag, error = %e, "tag loop failed"),
                }
            })
        })
        .collect();
    let worker = cache_worker(&queue, &context).map(|work| executor.spawn(work));
    let exe = Rc::clone(&executor);
    smol::block_on(executor.run(async move {
        // Called after each turn's completions are reaped: one clock read per turn.
        let run_ready = || {
            if queue.is_stopping() {
                // libublk's loop no longer asks for completions: run deferred work here.
                super::taskrun::run_deferred();
            }
            context.clock.refresh(&MonotonicClock);
            while exe.try_tick() {}
        };
        let all_done = || {
            tasks.iter().all(|task| task.is_finished())
                && worker.as_ref().is_none_or(|task| task.is_finished())
        };
        let events =
            libublk::wait_and_handle_io_events(&queue, Some(IDLE_WAIT_SECS), run_ready, all_done);
        if let Err(e) = events.await {
            tracing::error!(qid, error = %e, "queue event loop failed");
        }
    }));
    drop(executor);
    fixed.unregister();
}

/// A cached device's worker task (background writeback, admin jobs), run beside the tag tasks
/// so everything that takes the cache's lock runs on this thread. It ends once the queue is
/// stopping; the event loop keeps reaping completions until then.
fn cache_worker<'a>(
    queue: &Rc<UblkQueue<'a>>,
    context: &Rc<TagContext>,
) -> Option<impl std::future::Future<Output = ()> + 'a> {
    if !matches!(context.path.backend(), AnyBackend::Cached(_)) {
        return None;
    }
    let (queue, context) = (Rc::clone(queue), Rc::clone(context));
    Some(async move {
        if let AnyBackend::Cached(cached) = context.path.backend() {
            cached
                .run_worker(|| queue.is_stopping(), sleep_on_ring)
                .await;
        }
    })
}

/// The device-wide state a queue thread borrows while it starts.
struct QueueShared<'a> {
    limiter: &'a Arc<Limiter>,
    stats: &'a Arc<DeviceStats>,
}

/// Waits on the queue's own ring (an io_uring timeout), so the wait ends with a completion the
/// queue thread is already waiting for; a timer on another reactor could not wake it.
async fn sleep_on_ring(delay: Duration) {
    let timespec = types::Timespec::from(delay);
    // `timespec` lives in this future's frame, which stays pinned until the timeout completes.
    let ring = QueueRing {
        backing_registered: false,
        fixed: FixedBuffers::default(),
    };
    let result = ring.submit(opcode::Timeout::new(&timespec).build()).await;
    debug_assert!(
        result == -libc::ETIME || result >= 0,
        "timeout failed: {result}"
    );
}

/// Fetches, executes and commits requests for one tag until the queue goes down.
async fn serve_tag(
    queue: &UblkQueue<'_>,
    context: &TagContext,
    tag: u16,
    buf: &mut IoBuf<u8>,
) -> Result<(), UblkError> {
    // The buffer outlives every command that refers to it: the queue thread owns it and frees
    // it only after this task has returned, when no FETCH/COMMIT for this tag is pending.
    queue
        .submit_io_prep_cmd(tag, BufDesc::Slice(buf.as_slice()), 0, Some(buf))
        .await?;
    loop {
        let iod = queue.get_iod(tag);
        let result = match Request::decode(
            iod.op_flags,
            iod.start_sector,
            iod.nr_sectors,
            &context.geometry,
        ) {
            Ok(request) => {
                let path = &context.path;
                path.run(&request, buf.as_mut_slice(), &context.clock, sleep_on_ring)
                    .await
            }
            Err(e) => {
                tracing::warn!(tag, error = %e, "rejected request");
                -e.errno()
            }
        };
        queue
            .submit_io_commit_cmd(tag, BufDesc::Slice(buf.as_slice()), result)
            .await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_backends_declare_volatile_cache_and_fua() {
        let geo = Geometry {
            size: 1 << 30,
            logical_block_size: 4096,
            max_io_bytes: 1 << 20,
        };
        let params = device_params(&geo, true);
        assert_eq!(
            params.basic.attrs,
            ublk_sys::UBLK_ATTR_VOLATILE_CACHE | ublk_sys::UBLK_ATTR_FUA
        );
        assert_eq!(params.basic.logical_bs_shift, 12);
        assert_eq!(params.basic.max_sectors, 2048);
        assert_eq!(params.basic.dev_sectors, 1 << 21);
        assert_ne!(
            params.discard.max_write_zeroes_sectors, 0,
            "else the kernel never sends WRITE_ZEROES"
        );
        assert_eq!(params.discard.max_discard_segments, 1);
        assert_eq!(device_params(&geo, false).basic.attrs, 0);
    }
}
