//! The admin socket: how other processes talk to a running device server.
//!
//! Each server listens on `<run dir>/<id>.sock` (a Unix stream socket, owner-only). A client
//! sends one JSON request line and reads one JSON response line. Requests: the device's status
//! (QoS limits, throttling and I/O statistics, cache statistics), a live QoS change, and the
//! cache requests (status, flush, mode change, detach). Each connection is answered on its own
//! thread, so a long cache flush does not hold up a status request. The socket lives exactly as
//! long as the server: a stale file after a crash is replaced by the next server of that id.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::cache::{CacheMode, DrainReport, ModeChange};
use crate::device_cache::{AttachedCache, CacheReport};
use crate::qos::{Clock, Limiter, MonotonicClock, QosLimits};
use crate::stats::{DeviceStats, StatsSnapshot};

/// How long a client waits for a server to answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client waits for a request that writes back a cache (flush, mode, detach): the
/// time to write the whole cache to a slow backing store.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(3600);
/// Longest request line a server accepts, so a confused client cannot make it buffer forever.
const MAX_REQUEST_BYTES: u64 = 64 << 10;

/// A request to a device server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum AdminRequest {
    /// The device's QoS limits and counters.
    Status,
    /// Replace the device's QoS limits (validated first; invalid limits change nothing).
    SetQos {
        /// The new limits; all-unset means unlimited.
        limits: Box<QosLimits>,
    },
    /// The cache's counters.
    CacheStatus,
    /// Write back every dirty cache block; answered when done.
    CacheFlush,
    /// Switch the cache mode; leaving writeback, answered once the dirty data is drained.
    CacheMode {
        /// The new mode.
        mode: CacheMode,
    },
    /// Drain the cache and take it out of the I/O path; answered when done.
    CacheDetach,
}

/// What a device server reports about itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceReport {
    /// QoS limits in force.
    pub qos: QosLimits,
    /// I/O counters, latency histograms and throttling since the server started.
    pub io: StatsSnapshot,
    /// The cache, if the device has one attached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheReport>,
}

/// A device server's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum AdminResponse {
    /// The device's status.
    Status(Box<DeviceReport>),
    /// The request was carried out.
    Done,
    /// The cache's status.
    CacheStatus(Box<CacheReport>),
    /// Dirty cache data was written back (flush, detach).
    CacheDrained(DrainReport),
    /// The cache mode changed.
    CacheModeChanged(ModeChange),
    /// The request was refused; nothing changed.
    Error {
        /// Why.
        message: String,
    },
}

/// Why a client could not get an answer.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AdminError {
    /// No server listens for this device.
    #[error("no server is running for this device ({path}): {source}")]
    NotRunning {
        /// The socket path.
        path: PathBuf,
        /// The connect error.
        #[source]
        source: std::io::Error,
    },
    /// Talking to the server failed midway.
    #[error("talking to the device server failed: {0}")]
    Io(#[from] std::io::Error),
    /// The server answered something unreadable.
    #[error("unreadable answer from the device server: {0}")]
    Protocol(#[from] serde_json::Error),
    /// The server refused the request.
    #[error("{0}")]
    Refused(String),
}

/// What a server exposes through its socket.
pub struct AdminState {
    /// The device's rate limiter.
    pub limiter: Arc<Limiter>,
    /// The device's I/O statistics.
    pub stats: Arc<DeviceStats>,
    /// The device's cache, if it was started with one.
    pub cache: Option<Arc<AttachedCache>>,
}

impl AdminState {
    /// The attached cache (none after a detach).
    fn cache(&self) -> Option<&AttachedCache> {
        self.cache.as_deref().filter(|cache| !cache.is_detached())
    }

    fn handle(&self, request: AdminRequest) -> AdminResponse {
        match request {
            AdminRequest::Status => AdminResponse::Status(Box::new(DeviceReport {
                qos: self.limiter.limits(),
                io: self.stats.snapshot(MonotonicClock.now()),
                cache: self.cache().map(AttachedCache::report),
            })),
            AdminRequest::CacheStatus
            | AdminRequest::CacheFlush
            | AdminRequest::CacheMode { .. }
            | AdminRequest::CacheDetach => self.handle_cache(request),
            AdminRequest::SetQos { limits } => {
                match self.limiter.set_limits(&limits, MonotonicClock.now()) {
                    Ok(()) => {
                        tracing::info!(?limits, "QoS limits changed");
                        AdminResponse::Done
                    }
                    Err(e) => AdminResponse::Error {
                        message: e.to_string(),
                    },
                }
            }
        }
    }

    fn handle_cache(&self, request: AdminRequest) -> AdminResponse {
        let Some(cache) = self.cache() else {
            return AdminResponse::Error {
                message: "this device has no cache (add it with --cache)".to_owned(),
            };
        };
        let result = match request {
            AdminRequest::CacheFlush => cache.flush(DRAIN_TIMEOUT).map(AdminResponse::CacheDrained),
            AdminRequest::CacheMode { mode } => cache
                .set_mode(mode, DRAIN_TIMEOUT)
                .map(AdminResponse::CacheModeChanged),
            AdminRequest::CacheDetach => {
                cache.detach(DRAIN_TIMEOUT).map(AdminResponse::CacheDrained)
            }
            _ => Ok(AdminResponse::CacheStatus(Box::new(cache.report()))),
        };
        result.unwrap_or_else(|e| AdminResponse::Error {
            message: e.to_string(),
        })
    }
}

/// Listens on `path` and answers requests from background threads until the process exits.
pub fn listen(path: &Path, state: AdminState) -> std::io::Result<()> {
    // A socket left by a crashed predecessor of this device id would make bind fail.
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let state = Arc::new(state);
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            for connection in listener.incoming() {
                match connection {
                    Ok(stream) => answer_in_background(stream, Arc::clone(&state)),
                    Err(e) => tracing::warn!(error = %e, "admin accept failed"),
                }
            }
        })?;
    Ok(())
}

fn answer_in_background(stream: UnixStream, state: Arc<AdminState>) {
    let spawned = std::thread::Builder::new()
        .name("admin-request".into())
        .spawn(move || {
            if let Err(e) = answer(stream, &state) {
                tracing::warn!(error = %e, "admin request failed");
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start a thread for an admin request");
    }
}

fn answer(stream: UnixStream, state: &AdminState) -> std::io::Result<()> {
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new((&stream).take(MAX_REQUEST_BYTES)).read_line(&mut line)?;
    let response = match serde_json::from_str::<AdminRequest>(&line) {
        Ok(request) => state.handle(request),
        Err(e) => AdminResponse::Error {
            message: format!("malformed request: {e}"),
        },
    };
    let mut out = serde_json::to_vec(&response).expect("responses always serialise");
    out.push(b'\n');
    (&stream).write_all(&out)
}

/// Sends `request` to the server listening on `path` and returns its answer; a refusal is an
/// [`AdminError::Refused`].
pub fn ask(path: &Path, request: &AdminRequest) -> Result<AdminResponse, AdminError> {
    ask_waiting(path, request, CLIENT_TIMEOUT)
}

/// [`ask`], waiting up to `timeout` for the answer (for requests that take long).
pub fn ask_waiting(
    path: &Path,
    request: &AdminRequest,
    timeout: Duration,
) -> Result<AdminResponse, AdminError> {
    let stream = UnixStream::connect(path).map_err(|source| AdminError::NotRunning {
        path: path.to_owned(),
        source,
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut line = serde_json::to_vec(request).expect("requests always serialise");
    line.push(b'\n');
    (&stream).write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer)?;
    match serde_json::from_str(&answer)? {
        AdminResponse::Error { message } => Err(AdminError::Refused(message)),
        response => Ok(response),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qos::OpsLimit;

    #[test]
    fn status_and_live_qos_changes_over_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("3.sock");
        let limiter = Arc::new(Limiter::unlimited());
        listen(
            &path,
            AdminState {
                limiter: Arc::clone(&limiter),
                stats: Arc::new(DeviceStats::new()),
                cache: None,
            },
        )
        .unwrap();

        let limits = QosLimits {
            total_ops: Some(OpsLimit::per_sec(1000)),
            ..QosLimits::default()
        };
        assert_eq!(
            ask(
                &path,
                &AdminRequest::SetQos {
                    limits: Box::new(limits)
                }
            )
            .unwrap(),
            AdminResponse::Done
        );
        assert_eq!(limiter.limits(), limits);
        match ask(&path, &AdminRequest::Status).unwrap() {
            AdminResponse::Status(report) => assert_eq!(report.qos, limits),
            other => panic!("unexpected {other:?}"),
        }

        let invalid = QosLimits {
            total_ops: Some(OpsLimit::per_sec(0)),
            ..QosLimits::default()
        };
        let refused = ask(
            &path,
            &AdminRequest::SetQos {
                limits: Box::new(invalid),
            },
        )
        .unwrap_err();
        assert!(matches!(refused, AdminError::Refused(_)), "{refused}");
        assert_eq!(
            limiter.limits(),
            limits,
            "a refused change changed something"
        );
    }

    #[test]
    fn cache_requests_to_a_device_without_a_cache_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("4.sock");
        let state = AdminState {
            limiter: Arc::new(Limiter::unlimited()),
            stats: Arc::new(DeviceStats::new()),
            cache: None,
        };
        listen(&path, state).unwrap();
        for request in [
            AdminRequest::CacheStatus,
            AdminRequest::CacheFlush,
            AdminRequest::CacheMode {
                mode: CacheMode::None,
            },
            AdminRequest::CacheDetach,
        ] {
            let err = ask(&path, &request).unwrap_err();
            assert!(
                err.to_string().contains("has no cache"),
                "{request:?}: {err}"
            );
        }
        match ask(&path, &AdminRequest::Status).unwrap() {
            AdminResponse::Status(report) => assert!(report.cache.is_none()),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_missing_server_is_reported_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let err = ask(&dir.path().join("9.sock"), &AdminRequest::Status).unwrap_err();
        assert!(err.to_string().contains("no server is running"), "{err}");
    }
}
