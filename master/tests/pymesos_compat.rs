//! pymesos 0.3.15 against the real `mesoblk-master` binary: `tests/compat/pymesos_subscribe.py`
//! subscribes, receives heartbeats, tears down, and fails over by framework id;
//! `tests/compat/pymesos_tasks.py` gets offers from the Rust test agent (`common::agent`, run by
//! the test itself), launches tasks on it, receives their updates, reconciles, kills and tears
//! down.
//!
//! The Python comes from the virtualenv that `scripts/setup` creates at
//! `${MESOBLK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mesoblk}/venv`. A missing virtualenv fails the
//! test: it is never skipped.

mod common;

use std::io::Read as _;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Bound on the whole Python run.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on the master coming up.
const START_TIMEOUT: Duration = Duration::from_secs(20);

fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MESOBLK_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache")
        });
    base.join("mesoblk")
}

/// Kills and reaps the child on drop, so a failing test leaves no process behind.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    listener.local_addr().expect("address").port()
}

/// Starts the master with its log in a file (a pipe nobody reads could fill up and stall it).
fn start_master(extra: &[&str]) -> (Reaped, u16, PathBuf) {
    let port = free_port();
    let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("pymesos-master-{port}.log"));
    let log_file = std::fs::File::create(&log).expect("create the master's log");
    let child = Command::new(env!("CARGO_BIN_EXE_mesoblk-master"))
        .args([
            "--ip",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--hostname",
            "127.0.0.1",
        ])
        .args(["--heartbeat_interval", "200ms"])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log_file))
        .spawn()
        .expect("start mesoblk-master");
    let mut master = Reaped(child);
    let deadline = Instant::now() + START_TIMEOUT;
    while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
        if let Ok(Some(status)) = master.0.try_wait() {
            let stderr = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("mesoblk-master exited with {status}: {stderr}");
        }
        assert!(
            Instant::now() < deadline,
            "mesoblk-master listening within {START_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (master, port, log)
}

#[test]
fn pymesos_subscribes_heartbeats_tears_down_and_fails_over() {
    let venv = cache_dir().join("venv");
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "no pymesos virtualenv at {}: run scripts/setup (this test never skips)",
        venv.display()
    );
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/compat/pymesos_subscribe.py");
    let (_master, port, log) = start_master(&[]);

    let mut child = Reaped(
        Command::new(&python)
            .arg(&script)
            .arg(format!("127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start python"),
    );
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait for python") {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut pipe) = child.0.stdout.take() {
        let _ = pipe.read_to_string(&mut stdout);
    }
    if let Some(mut pipe) = child.0.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    let status = status.unwrap_or_else(|| panic!("pymesos script timed out\n{stdout}\n{stderr}"));
    let master_log = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        status.success(),
        "pymesos script failed ({status})\nstdout:\n{stdout}\nstderr:\n{stderr}\nmaster log:\n{}",
        master_log()
    );
    assert!(
        stdout.contains("ok: subscribe, heartbeats, teardown"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ok: failover with framework id"),
        "{stdout}"
    );
}

/// Runs a compat script against `port` and returns its stdout, failing with everything on a
/// non-zero exit or after [`SCRIPT_TIMEOUT`].
async fn run_script(script: &str, port: u16, log: &std::path::Path) -> String {
    let python = cache_dir().join("venv/bin/python");
    assert!(
        python.exists(),
        "no pymesos virtualenv at {}: run scripts/setup (this test never skips)",
        python.display()
    );
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/compat")
        .join(script);
    let child = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start python");
    let output = tokio::time::timeout(SCRIPT_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{} timed out", script.display()))
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{} failed ({})\nstdout:\n{stdout}\nstderr:\n{stderr}\nmaster log:\n{}",
        script.display(),
        output.status,
        std::fs::read_to_string(log).unwrap_or_default()
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pymesos_launches_tasks_on_the_test_agent() {
    let (_master, port, log) = start_master(&[
        "--allocation_interval",
        "50ms",
        "--agent_ping_timeout",
        "500ms",
        "--status_update_retry_interval",
        "1secs",
    ]);
    let agent = common::agent::TestAgent::start(
        &format!("http://127.0.0.1:{port}"),
        "pymesos-agent",
        common::agent::standard_resources(),
    )
    .await;
    agent.behave(|b| {
        b.script = common::agent::TaskScript::Finish;
        b.scripts
            .insert("pymesos-long".into(), common::agent::TaskScript::Run);
    });
    let stdout = run_script("pymesos_tasks.py", port, &log).await;
    for line in [
        "ok: legacy offer",
        "ok: launch, TASK_RUNNING, TASK_FINISHED",
        "ok: reconcile",
        "ok: kill",
        "ok: offers, launch, updates, reconcile, kill, teardown",
    ] {
        assert!(stdout.contains(line), "{line} in:\n{stdout}");
    }
}
