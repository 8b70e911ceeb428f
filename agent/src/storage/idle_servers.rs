//! A few `mesoblk-target serve` processes started ahead of their devices.
//!
//! Exec'ing and loading the device server is a large part of a device's start on a busy or
//! emulated machine (docs/benchmarks.md), and none of it depends on the device. So the agent
//! keeps `--block_idle_servers` servers waiting for their spec on a pipe
//! ([`IdleServer`]); a device start takes one (or spawns one when none is left) and, once its
//! device is live (so the next server's exec does not compete with this start for the CPU),
//! has a background thread top the pool up again ([`IdleServers::refill`]).
//!
//! Nothing leaks: an idle server that sees EOF instead of a spec exits without touching
//! anything, and EOF is what it sees when the pool dismisses it (agent shutdown, drop) or when
//! the agent dies. It has no device, record or socket until it gets its spec, so recovery never
//! has to know about it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use ublk_target::daemon::{DaemonError, IdleServer, RunDir};
use ublk_target::sys::device::StartMode;

/// Idle servers kept by default (`--block_idle_servers`).
pub const DEFAULT_IDLE_SERVERS: usize = 2;

#[derive(Debug, Default)]
struct State {
    servers: Vec<IdleServer>,
    refilling: bool,
    closed: bool,
}

/// The pool.
#[derive(Debug)]
pub struct IdleServers {
    exe: PathBuf,
    run_dir: RunDir,
    wanted: usize,
    state: Mutex<State>,
}

impl IdleServers {
    /// A pool of `wanted` servers of `exe` (empty until [`IdleServers::refill`]).
    pub fn new(exe: PathBuf, run_dir: RunDir, wanted: usize) -> Arc<IdleServers> {
        Arc::new(IdleServers {
            exe,
            run_dir,
            wanted,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many servers wait now.
    pub fn idle(&self) -> usize {
        self.lock().servers.len()
    }

    /// A waiting server for a new device: one of the pool's, or a fresh one. The pool is not
    /// topped up until its taker calls [`IdleServers::refill`].
    pub fn take(&self) -> Result<IdleServer, DaemonError> {
        let taken = {
            let mut state = self.lock();
            let mut found = None;
            while let Some(mut server) = state.servers.pop() {
                if server.is_waiting() {
                    found = Some(server);
                    break;
                }
                // It died while idle (killed by someone): never hand it a device.
                server.dismiss();
            }
            found
        };
        match taken {
            Some(server) => Ok(server),
            None => IdleServer::spawn(&self.exe, StartMode::Add, &self.run_dir),
        }
    }

    /// Tops the pool up to its size on a background thread (one at a time).
    pub fn refill(self: &Arc<Self>) {
        {
            let mut state = self.lock();
            if self.wanted == 0 || state.refilling || state.closed {
                return;
            }
            state.refilling = true;
        }
        let pool = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("idle-servers".into())
            .spawn(move || pool.fill());
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the idle device servers' thread");
            self.lock().refilling = false;
        }
    }

    fn fill(&self) {
        loop {
            if self.lock().servers.len() >= self.wanted || self.lock().closed {
                break;
            }
            match IdleServer::spawn(&self.exe, StartMode::Add, &self.run_dir) {
                Ok(server) => {
                    let mut state = self.lock();
                    if state.closed {
                        drop(state);
                        server.dismiss();
                        break;
                    }
                    state.servers.push(server);
                }
                Err(e) => {
                    // Device starts spawn their own server then; no retry loop here.
                    tracing::warn!(error = %e, "cannot start an idle device server");
                    break;
                }
            }
        }
        self.lock().refilling = false;
    }

    /// Dismisses every idle server and keeps the pool empty from now on (agent shutdown).
    pub fn close(&self) {
        let servers = {
            let mut state = self.lock();
            state.closed = true;
            std::mem::take(&mut state.servers)
        };
        let count = servers.len();
        for server in servers {
            server.dismiss();
        }
        if count > 0 {
            tracing::info!(count, "idle device servers dismissed");
        }
    }
}

impl Drop for IdleServers {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::time::{Duration, Instant};

    /// A stand-in server: on EOF it leaves a marker named after its pid, so dismissals can be
    /// counted.
    fn stand_in(dir: &Path) -> PathBuf {
        let path = dir.join("fake-target");
        let body = "#!/bin/sh\nif ! read -r spec; then touch \"$(dirname \"$0\")/gone-$$\"; \
                    exit 0; fi\necho 'error unused'\n";
        std::fs::write(&path, body).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn gone(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("gone-"))
            .count()
    }

    fn until(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn the_pool_fills_hands_out_tops_up_and_dismisses_everything_at_close() {
        let dir = tempfile::tempdir().unwrap();
        let exe = stand_in(dir.path());
        let pool = IdleServers::new(exe, RunDir::new(dir.path().join("run")), 2);
        pool.refill();
        until("two idle servers", || pool.idle() == 2);
        let taken = pool.take().unwrap();
        pool.refill();
        until("the pool topped up", || pool.idle() == 2);
        pool.close();
        assert_eq!(pool.idle(), 0);
        assert_eq!(gone(dir.path()), 2, "both idle servers saw EOF and exited");
        // A closed pool no longer refills; the taken server is its taker's.
        pool.refill();
        assert_eq!(pool.idle(), 0);
        taken.dismiss();
        assert_eq!(gone(dir.path()), 3);
        let left: Vec<_> = std::fs::read_dir(dir.path().join("run"))
            .unwrap()
            .flatten()
            .collect();
        assert!(left.is_empty(), "pending logs left: {left:?}");
    }

    #[test]
    fn an_empty_pool_still_hands_out_fresh_servers() {
        let dir = tempfile::tempdir().unwrap();
        let exe = stand_in(dir.path());
        let pool = IdleServers::new(exe, RunDir::new(dir.path().join("run")), 0);
        let server = pool.take().unwrap();
        assert_eq!(pool.idle(), 0);
        server.dismiss();
        assert_eq!(gone(dir.path()), 1);
    }
}
