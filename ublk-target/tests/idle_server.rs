//! Device servers started ahead of their devices (`serve --spec-from-stdin`), checked on the
//! host: a stand-in script plays the server to check what the caller sends and reads, and the
//! real binary is dismissed before it gets a spec (no ublk needed for either).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ublk_target::daemon::{DaemonError, IdleServer, RunDir};
use ublk_target::spec::{BackendSpec, DeviceSpec};
use ublk_target::sys::device::StartMode;

const BIN: &str = env!("CARGO_BIN_EXE_mesoblk-target");

fn spec() -> DeviceSpec {
    DeviceSpec {
        backend: BackendSpec::File {
            path: "/srv/pool/vol-1.img".into(),
            direct_io: Default::default(),
        },
        size: Some(1 << 20),
        id: None,
        queues: 1,
        depth: 8,
        max_io_bytes: 4096,
        qos: Default::default(),
        qos_group: None,
        cache: None,
    }
}

/// A script standing in for `mesoblk-target`: `body` runs after it read its spec into `$spec`
/// (or `eof` runs if there was none).
fn stand_in(dir: &Path, body: &str, eof: &str) -> PathBuf {
    let path = dir.join("fake-target");
    std::fs::write(
        &path,
        format!("#!/bin/sh\nif ! read -r spec; then {eof}; exit 0; fi\n{body}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn an_idle_server_gets_its_spec_on_stdin_and_answers_ready() {
    let dir = tempfile::tempdir().unwrap();
    let script = stand_in(
        dir.path(),
        r#"printf '%s' "$spec" > "$(dirname "$0")/got"
echo "ready {\"id\":7,\"block_path\":\"/dev/ublkb7\",\"pid\":$$,\"spec\":$spec}""#,
        "true",
    );
    let run_dir = RunDir::new(dir.path().join("run"));
    let server = IdleServer::spawn(&script, StartMode::Add, &run_dir).unwrap();
    let record = server.serve(&spec()).unwrap();
    assert_eq!(record.id, 7);
    assert_eq!(record.spec, spec());
    let got: DeviceSpec =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("got")).unwrap()).unwrap();
    assert_eq!(got, spec());
}

#[test]
fn an_idle_servers_error_is_the_starts_error() {
    let dir = tempfile::tempdir().unwrap();
    let script = stand_in(dir.path(), "echo 'error no ublk here'", "true");
    let run_dir = RunDir::new(dir.path().join("run"));
    let server = IdleServer::spawn(&script, StartMode::Add, &run_dir).unwrap();
    match server.serve(&spec()) {
        Err(DaemonError::Server(message)) => assert_eq!(message, "no ublk here"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_dismissed_idle_server_exits_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let script = stand_in(
        dir.path(),
        "echo 'error should not run'",
        r#"touch "$(dirname "$0")/dismissed""#,
    );
    let run_dir = RunDir::new(dir.path().join("run"));
    let mut server = IdleServer::spawn(&script, StartMode::Add, &run_dir).unwrap();
    assert!(server.is_waiting());
    server.dismiss();
    assert!(dir.path().join("dismissed").exists());
    let left: Vec<_> = std::fs::read_dir(run_dir.path())
        .unwrap()
        .flatten()
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn the_real_server_dismissed_before_its_spec_exits_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("starting.log");
    std::fs::write(&log, "").unwrap();
    let out = Command::new(BIN)
        .arg("--run-dir")
        .arg(dir.path())
        .args(["serve", "--detach", "--spec-from-stdin", "--log-file"])
        .arg(&log)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(!log.exists(), "its unused log is removed");
    // A spec that is not one is an error line, as any refused start.
    let mut child = Command::new(BIN)
        .arg("--run-dir")
        .arg(dir.path())
        .args(["serve", "--spec-from-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"{nope}\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("error the spec on stdin"), "{stdout}");
}
