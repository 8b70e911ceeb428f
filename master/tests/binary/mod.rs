//! Test support: the real `mesoblk-master` binary on a free loopback port, its log in a file,
//! killed (SIGKILL) and reaped on drop; and the pymesos virtualenv. Every wait is bounded.

#![allow(dead_code, unreachable_pub)] // Each test binary uses a different part.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Bound on the master coming up.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running master process.
pub struct MasterProcess {
    child: Option<Child>,
    pub port: u16,
    pub log: PathBuf,
}

impl Drop for MasterProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    listener.local_addr().expect("address").port()
}

impl MasterProcess {
    /// Starts the master on a free port with `args`, and waits until it accepts connections.
    pub fn start(name: &str, args: &[&str]) -> MasterProcess {
        Self::start_on(name, free_port(), args)
    }

    /// As [`MasterProcess::start`], on `port`.
    pub fn start_on(name: &str, port: u16, args: &[&str]) -> MasterProcess {
        let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{port}.log"));
        let log_file = std::fs::File::create(&log).expect("create the master's log");
        let child = Command::new(env!("CARGO_BIN_EXE_mesoblk-master"))
            .args(["--ip", "127.0.0.1", "--hostname", "127.0.0.1"])
            .args(["--port", &port.to_string()])
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .spawn()
            .expect("start mesoblk-master");
        let mut master = MasterProcess {
            child: Some(child),
            port,
            log,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            if let Some(status) = master.try_wait() {
                panic!("mesoblk-master exited with {status}: {}", master.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "mesoblk-master listening in time"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        master
    }

    fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

/// Runs the binary to completion with `args`: exit code and stderr.
pub fn run_to_exit(args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_mesoblk-master"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run mesoblk-master");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The virtualenv `scripts/setup` creates (never skipped: a missing one fails the test).
pub fn python() -> PathBuf {
    let cache = std::env::var_os("MESOBLK_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache")
                })
                .join("mesoblk")
        });
    let python = cache.join("venv/bin/python");
    assert!(
        python.exists(),
        "no pymesos virtualenv at {}: run scripts/setup (this test never skips)",
        python.display()
    );
    python
}

/// Runs a Python script from `tests/compat` with `args`, bounded by `timeout`: (success,
/// stdout, stderr).
pub fn run_python(script: &str, args: &[String], timeout: Duration) -> (bool, String, String) {
    use std::io::Read as _;
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/compat")
        .join(script);
    let mut child = Command::new(python())
        .arg(&path)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for python") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stdout.take() {
        let _ = pipe.read_to_string(&mut stdout);
    }
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    let ok = status.is_some_and(|s| s.success());
    if status.is_none() {
        stderr.push_str("\n(timed out)");
    }
    (ok, stdout, stderr)
}
