//! A backend wrapper whose operations the test parks and releases, to force an interleaving
//! of concurrent requests without timing.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use smol::channel::{Receiver, Sender};
use ublk_target::backend::{Backend, Capabilities, IoError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Read,
    Write,
    Flush,
}

/// One parked operation: the first of `kind` whose offset lies in `range`.
struct Trap {
    kind: Kind,
    range: std::ops::Range<u64>,
    /// Park after the operation is done rather than before it touches the data.
    after: bool,
    parked: Sender<()>,
    release: Receiver<()>,
}

/// The test's side of a trap.
pub(crate) struct Gate {
    parked: Receiver<()>,
    release: Sender<()>,
}

impl Gate {
    /// Whether an operation is parked at the gate now.
    pub(crate) fn parked(&self) -> bool {
        self.parked.try_recv().is_ok()
    }

    pub(crate) fn open(&self) {
        self.release.try_send(()).expect("open the gate");
    }
}

/// A store whose operations can be parked and that counts flushes.
#[derive(Clone)]
pub(crate) struct Gated<B> {
    inner: B,
    traps: Arc<Mutex<Vec<Trap>>>,
    pub(crate) flushes: Arc<AtomicU64>,
}

impl<B: Backend> Gated<B> {
    pub(crate) fn new(inner: B) -> Self {
        Gated {
            inner,
            traps: Arc::default(),
            flushes: Arc::default(),
        }
    }

    /// Parks the first operation of `kind` at an offset in `range`, before it touches the data.
    pub(crate) fn trap(&self, kind: Kind, range: std::ops::Range<u64>) -> Gate {
        self.set_trap(kind, range, false)
    }

    /// Parks the first operation of `kind` at an offset in `range` once it is done: what a
    /// parked read returns may be outdated by the time it completes.
    pub(crate) fn trap_after(&self, kind: Kind, range: std::ops::Range<u64>) -> Gate {
        self.set_trap(kind, range, true)
    }

    fn set_trap(&self, kind: Kind, range: std::ops::Range<u64>, after: bool) -> Gate {
        let (parked, parked_rx) = smol::channel::unbounded();
        let (release_tx, release) = smol::channel::unbounded();
        self.traps.lock().unwrap().push(Trap {
            kind,
            range,
            after,
            parked,
            release,
        });
        Gate {
            parked: parked_rx,
            release: release_tx,
        }
    }

    async fn gate(&self, kind: Kind, offset: u64, after: bool) {
        let trap = {
            let mut traps = self.traps.lock().unwrap();
            let found = traps
                .iter()
                .position(|t| t.kind == kind && t.after == after && t.range.contains(&offset));
            found.map(|n| traps.remove(n))
        };
        if let Some(trap) = trap {
            trap.parked.try_send(()).expect("parked");
            trap.release.recv().await.expect("released");
        }
    }

    /// Runs `op` between the traps set before and after operations of `kind` at `offset`.
    async fn gated<T>(&self, kind: Kind, offset: u64, op: impl Future<Output = T>) -> T {
        self.gate(kind, offset, false).await;
        let result = op.await;
        self.gate(kind, offset, true).await;
        result
    }
}

impl<B: Backend> Backend for Gated<B> {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.gated(Kind::Read, offset, self.inner.read(offset, buf))
            .await
    }

    async fn write(&self, offset: u64, buf: &[u8], fua: bool) -> Result<(), IoError> {
        self.gated(Kind::Write, offset, self.inner.write(offset, buf, fua))
            .await
    }

    async fn flush(&self) -> Result<(), IoError> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        self.gated(Kind::Flush, 0, self.inner.flush()).await
    }

    async fn discard(&self, offset: u64, len: u64) -> Result<(), IoError> {
        self.inner.discard(offset, len).await
    }

    async fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<(), IoError> {
        self.inner.write_zeroes(offset, len, unmap).await
    }
}
