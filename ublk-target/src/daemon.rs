//! One serving process per device, and the records that let other processes find it.
//!
//! `spawn` starts `<exe> serve` as a detached process for one [`DeviceSpec`] and waits until the
//! kernel has started the device (or the server reported why it could not). The server writes
//! exactly one line to its stdout: `ready <record json>` or `error <message>`. Its logs go to
//! `<run dir>/<id>.log`. A crash of one server therefore takes down only its own device.
//!
//! Each live device has a [`DeviceRecord`] at `<run dir>/<id>.json`, written by its server once
//! the device is live and removed when the server exits cleanly.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::admin::{self, AdminState};
use crate::backend::SharedStore;
use crate::cache::Replay;
use crate::device_cache::{AttachError, AttachedCache, CacheSpec};
use crate::qos::{Clock, GroupJoin, Limiter, MonotonicClock};
use crate::spec::{DeviceSpec, SpecError};
use crate::stats::DeviceStats;
use crate::sys::control::{self, ControlError};
use crate::sys::device::{self, DeviceError, StartMode, StartedDevice};
use crate::sys::shm::{self, ShmError};

/// Default folder for device records and server logs.
pub const DEFAULT_RUN_DIR: &str = "/run/mesoblk-target";
/// How long `spawn` waits for a server to report (TCG guests are slow to start threads).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// What is known about a running device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// ublk device id.
    pub id: u32,
    /// The block device node.
    pub block_path: PathBuf,
    /// Pid of the serving process.
    pub pid: u32,
    /// What the device was created from.
    pub spec: DeviceSpec,
}

/// Why a device server could not be started or run.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// The spec was rejected.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The kernel side failed.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// A control command failed.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// The device's QoS group could not be joined.
    #[error(transparent)]
    QosGroup(#[from] ShmError),
    /// The device's cache could not be opened.
    #[error(transparent)]
    Cache(#[from] AttachError),
    /// The server reported an error before the device started.
    #[error("{0}")]
    Server(String),
    /// The server went away without a word.
    #[error("device server exited before the device started; see {0}")]
    ServerDied(PathBuf),
    /// The server did not report in time.
    #[error("device server did not report within {0:?}; see {1}")]
    Timeout(Duration, PathBuf),
    /// Local file or process trouble.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
}

/// The folder holding device records and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunDir(PathBuf);

impl RunDir {
    /// A run dir at `path` (created on first write).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        RunDir(path.into())
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The record file of device `id`.
    pub fn record_path(&self, id: u32) -> PathBuf {
        self.0.join(format!("{id}.json"))
    }

    /// The admin socket of device `id`'s server.
    pub fn socket_path(&self, id: u32) -> PathBuf {
        self.0.join(format!("{id}.sock"))
    }

    /// The log file of device `id`.
    pub fn log_path(&self, id: u32) -> PathBuf {
        self.0.join(format!("{id}.log"))
    }

    /// Device `id`'s record, if its server left one.
    pub fn read(&self, id: u32) -> Option<DeviceRecord> {
        let text = std::fs::read_to_string(self.record_path(id)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Writes a record atomically (write to a temporary file, then rename).
    pub fn write(&self, record: &DeviceRecord) -> Result<(), DaemonError> {
        std::fs::create_dir_all(&self.0)
            .map_err(io_error(format!("create {}", self.0.display())))?;
        let path = self.record_path(record.id);
        let tmp = path.with_extension("json.tmp");
        let json = serde_json::to_vec_pretty(record).expect("records always serialise");
        std::fs::write(&tmp, json).map_err(io_error(format!("write {}", tmp.display())))?;
        std::fs::rename(&tmp, &path).map_err(io_error(format!("rename to {}", path.display())))
    }

    /// Removes device `id`'s record; a missing record is fine.
    pub fn remove(&self, id: u32) {
        let _ = std::fs::remove_file(self.record_path(id));
    }
}

/// Starts a detached `<exe> serve` for `spec` and returns once its device is live.
/// With [`StartMode::Recover`], `spec.id` names the quiesced device to take over.
pub fn spawn(
    exe: &Path,
    spec: &DeviceSpec,
    mode: StartMode,
    run_dir: &RunDir,
) -> Result<DeviceRecord, DaemonError> {
    IdleServer::spawn(exe, mode, run_dir)?.serve(spec)
}

/// A started `<exe> serve --spec-from-stdin` process waiting for its device's spec: what makes
/// a device server costs little once the process runs, but exec'ing and loading it is slow on
/// a busy (or emulated) machine, so a caller may keep a few ready ([`IdleServer::serve`]).
/// Dropped without serving, it closes the server's stdin and the server exits without
/// touching anything; the same happens when the process that spawned it dies, so an idle
/// server never outlives its owner.
#[derive(Debug)]
pub struct IdleServer {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: Option<std::process::ChildStdout>,
    pending_log: PathBuf,
}

/// Tells apart the pending logs of servers started by one process.
static PENDING_LOGS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl IdleServer {
    /// Starts a detached server for a device started with `mode`; it waits for its spec.
    pub fn spawn(exe: &Path, mode: StartMode, run_dir: &RunDir) -> Result<IdleServer, DaemonError> {
        std::fs::create_dir_all(run_dir.path())
            .map_err(io_error(format!("create {}", run_dir.path().display())))?;
        let serial = PENDING_LOGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pending_log = run_dir
            .path()
            .join(format!("starting-{}-{serial}.log", std::process::id()));
        let log = std::fs::File::create(&pending_log)
            .map_err(io_error(format!("create {}", pending_log.display())))?;
        let mut child = Command::new(exe)
            .args(["serve", "--detach", "--spec-from-stdin"])
            .args((mode == StartMode::Recover).then_some("--recover"))
            .arg("--run-dir")
            .arg(run_dir.path())
            .arg("--log-file")
            .arg(&pending_log)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(io_error(format!("start {}", exe.display())))?;
        Ok(IdleServer {
            stdin: child.stdin.take(),
            stdout: child.stdout.take(),
            child,
            pending_log,
        })
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the server still waits (it did not die meanwhile).
    pub fn is_waiting(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends the spec and returns once the device is live.
    pub fn serve(mut self, spec: &DeviceSpec) -> Result<DeviceRecord, DaemonError> {
        let spec_json = serde_json::to_string(spec).expect("specs always serialise");
        let mut stdin = self.stdin.take().expect("an idle server serves once");
        // A server that died has closed its end: its exit is reported below.
        let _ = writeln!(stdin, "{spec_json}").and_then(|()| stdin.flush());
        drop(stdin);
        let stdout = self.stdout.take().expect("an idle server serves once");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let child = &mut self.child;
        let line = match rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(DaemonError::Timeout(
                    READY_TIMEOUT,
                    self.pending_log.clone(),
                ));
            }
        };
        match line.trim_end().split_once(' ') {
            Some(("ready", json)) => serde_json::from_str(json).map_err(|e| {
                DaemonError::Server(format!("unreadable ready line from server: {e}"))
            }),
            Some(("error", message)) => {
                let _ = child.wait();
                let _ = std::fs::remove_file(&self.pending_log);
                Err(DaemonError::Server(message.to_owned()))
            }
            _ => {
                let _ = child.wait();
                Err(DaemonError::ServerDied(self.pending_log.clone()))
            }
        }
    }

    /// Dismisses the server: it sees EOF instead of a spec and exits; reaps it and removes its
    /// unused log.
    pub fn dismiss(mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.pending_log);
    }
}

/// What a server started with `--spec-from-stdin` reads: one line of spec JSON; `None` at EOF
/// (its owner dismissed it, or died).
pub fn read_spec(input: &mut impl BufRead) -> Result<Option<DeviceSpec>, DaemonError> {
    let mut line = String::new();
    let n = input
        .read_line(&mut line)
        .map_err(io_error("read the spec from stdin"))?;
    if n == 0 {
        return Ok(None);
    }
    serde_json::from_str(line.trim_end())
        .map(Some)
        .map_err(|e| DaemonError::Server(format!("the spec on stdin is not a device spec: {e}")))
}

/// Opens the spec's store (and its cache, replaying the cache's journal) and, when recovering,
/// readies the quiesced device for this server. The cache is opened before the device starts or
/// ends recovery, so no request reaches it before its replay.
fn prepare(spec: &DeviceSpec, mode: StartMode) -> Result<SharedStore, DaemonError> {
    let mut store = spec.open()?;
    if let (Some(cache_store), Some(cache), SharedStore::File(backing)) =
        (spec.open_cache_store(&store)?, &spec.cache, &store)
    {
        // Recovering a quiesced device, the machine stayed up: the records the dead server
        // wrote without a flush are in the store, and replaying them keeps every write it
        // acknowledged (the kernel may re-send a FLUSH that was in flight).
        let replay = match mode {
            StartMode::Recover => Replay::All,
            StartMode::Add => Replay::Committed,
        };
        let attached = AttachedCache::open(Arc::clone(backing), cache_store, cache, replay)?;
        store = SharedStore::Cached(attached);
    }
    if mode == StartMode::Recover {
        let id = spec
            .id
            .ok_or_else(|| DaemonError::Server("recovery needs the device id".to_owned()))?;
        control::start_recovery(id)?;
    }
    Ok(store)
}

/// The device's rate limiter: its own limits, plus its group's shared budget if it has one.
pub fn limiter_for(spec: &DeviceSpec, run_dir: &RunDir) -> Result<Limiter, DaemonError> {
    let group = match &spec.qos_group {
        Some(name) => Some(
            shm::open_group(run_dir.path(), name, GroupJoin::Existing)?
                .0
                .into(),
        ),
        None => None,
    };
    Ok(Limiter::new(&spec.qos, group, MonotonicClock.now()).map_err(SpecError::from)?)
}

/// What a server does once its device is live: publish the record, open the admin socket,
/// report ready.
struct Announcer<W> {
    run_dir: RunDir,
    spec: DeviceSpec,
    log_file: Option<PathBuf>,
    limiter: Arc<Limiter>,
    stats: Arc<DeviceStats>,
    cache: Option<Arc<AttachedCache>>,
    report: Arc<Mutex<Option<W>>>,
    started_id: Arc<Mutex<Option<u32>>>,
}

impl<W: Write> Announcer<W> {
    fn device_live(self, started: StartedDevice) {
        if let Ok(mut slot) = self.started_id.lock() {
            *slot = Some(started.id);
        }
        let record = DeviceRecord {
            id: started.id,
            block_path: started.block_path,
            pid: std::process::id(),
            spec: self.spec,
        };
        if let Some(log) = &self.log_file {
            let _ = std::fs::rename(log, self.run_dir.log_path(record.id));
        }
        let admin = AdminState {
            limiter: self.limiter,
            stats: self.stats,
            cache: self.cache,
        };
        let published = self.run_dir.write(&record).and_then(|()| {
            let socket = self.run_dir.socket_path(record.id);
            admin::listen(&socket, admin)
                .map_err(io_error(format!("listen on {}", socket.display())))
        });
        let line = match published {
            Ok(()) => format!(
                "ready {}",
                serde_json::to_string(&record).expect("records serialise")
            ),
            Err(e) => format!("error {e}"),
        };
        tracing::info!(id = record.id, path = %record.block_path.display(), "device live");
        tracing::debug!(target: crate::PROVISIONING, id = record.id, "record and admin socket published");
        report_once(&self.report, &line);
    }
}

/// Writes `line` to the report channel unless something was reported already.
fn report_once<W: Write>(report: &Mutex<Option<W>>, line: &str) {
    if let Some(mut out) = report.lock().ok().and_then(|mut slot| slot.take()) {
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// Serves `spec` in this process until the device is stopped or deleted. Once the device is
/// live its record is written, its admin socket opened and `ready <record>` goes to `report`; if
/// it cannot start, `error <message>` goes there instead. `log_file`, if given, is renamed to the
/// device's log.
pub fn serve(
    spec: &DeviceSpec,
    mode: StartMode,
    run_dir: &RunDir,
    log_file: Option<PathBuf>,
    report: impl Write + Send + Sync + 'static,
) -> Result<(), DaemonError> {
    let report = Arc::new(Mutex::new(Some(report)));
    tracing::debug!(target: crate::PROVISIONING, "spec received");
    let prepared =
        prepare(spec, mode).and_then(|store| Ok((store, Arc::new(limiter_for(spec, run_dir)?))));
    let (store, limiter) = match prepared {
        Ok(prepared) => {
            tracing::debug!(target: crate::PROVISIONING, "store opened");
            prepared
        }
        Err(e) => {
            report_once(&report, &format!("error {e}"));
            return Err(e);
        }
    };
    let started_id = Arc::new(Mutex::new(None));
    let stats = Arc::new(DeviceStats::new());
    let cache = match &store {
        SharedStore::Cached(cache) => Some(Arc::clone(cache)),
        _ => None,
    };
    let announcer = Announcer {
        run_dir: run_dir.clone(),
        // Record the size actually served (file backends default to the whole store), and not
        // the one-time choice for an invalid cache: a later recovery must not repeat it.
        spec: DeviceSpec {
            size: Some(store.size()),
            cache: spec.cache.clone().map(|cache| CacheSpec {
                on_invalid: None,
                ..cache
            }),
            ..spec.clone()
        },
        log_file,
        limiter: Arc::clone(&limiter),
        stats: Arc::clone(&stats),
        cache: cache.clone(),
        report: Arc::clone(&report),
        started_id: Arc::clone(&started_id),
    };
    let served = device::serve(
        &spec.device_options(mode),
        store,
        limiter,
        stats,
        move |started| announcer.device_live(started),
    );
    if let Some(cache) = cache {
        cache.shutdown();
    }
    if let Some(id) = started_id.lock().ok().and_then(|slot| *slot) {
        run_dir.remove(id);
        let _ = std::fs::remove_file(run_dir.socket_path(id));
        tracing::info!(id, "device stopped");
    }
    let message = match &served {
        Err(e) => e.to_string(),
        Ok(()) => "device stopped before it started".to_owned(),
    };
    // Only reaches the caller if the device never reported ready.
    report_once(&report, &format!("error {message}"));
    served.map_err(DaemonError::from)
}
