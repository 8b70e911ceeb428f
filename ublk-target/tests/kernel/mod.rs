//! Shared helpers of the kernel-tier tests: devices and mounts that clean up after themselves,
//! commands that fail the test loudly, deterministic data patterns.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The CLI under test, built by cargo for this test run.
pub const TARGET_BIN: &str = env!("CARGO_BIN_EXE_mesoblk-target");

/// Fails the test (never skips it) unless this is root on a kernel with ublk.
pub fn require_ublk() {
    assert!(
        Path::new("/dev/ublk-control").exists(),
        "/dev/ublk-control is missing: kernel tests must run where ublk_drv is loaded (scripts/vm-run)"
    );
    assert!(nix_is_root(), "kernel tests must run as root");
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Runs a command and fails the test, with its output, if it does not succeed.
pub fn run(program: &str, args: &[&str]) -> Output {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed with {}:\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Runs `mesoblk-target` with `args`, successful or not.
pub fn target(args: &[&str]) -> Output {
    Command::new(TARGET_BIN)
        .args(args)
        .output()
        .expect("run mesoblk-target")
}

/// Runs `mesoblk-target` with `args`, asserts that it fails with exactly one line on stderr
/// mentioning `needle`, and returns that line.
pub fn refused(args: &[&str], needle: &str) -> String {
    let out = target(args);
    let stderr = String::from_utf8_lossy(&out.stderr).trim_end().to_owned();
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(
        stderr.contains(needle),
        "{args:?}: expected {needle:?} in {stderr:?}"
    );
    assert_eq!(
        stderr.lines().count(),
        1,
        "{args:?}: not one line: {stderr:?}"
    );
    stderr
}

/// The pid of device `id`'s server, from its record.
pub fn server_pid(run_dir: &Path, id: u32) -> u32 {
    let text = std::fs::read_to_string(run_dir.join(format!("{id}.json"))).expect("device record");
    let record: serde_json::Value = serde_json::from_str(&text).expect("record json");
    u32::try_from(record["pid"].as_u64().expect("pid in record")).expect("pid fits u32")
}

/// The kernel's state of device `id` as `list --json` reports it, or "absent".
pub fn device_state(id: u32) -> String {
    let devices: serde_json::Value =
        serde_json::from_slice(&run(TARGET_BIN, &["list", "--json"]).stdout).expect("list json");
    devices
        .as_array()
        .and_then(|all| all.iter().find(|d| d["id"] == id))
        .map_or_else(
            || "absent".to_owned(),
            |d| d["state"].as_str().unwrap_or("?").to_owned(),
        )
}

/// `kill -9`s device `id`'s server and waits until the kernel has quiesced the device (its
/// requests wait for a `recover`); returns the old server's pid.
pub fn kill_until_quiesced(run_dir: &Path, id: u32) -> u32 {
    let old_pid = server_pid(run_dir, id);
    run("kill", &["-9", &old_pid.to_string()]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while device_state(id) != "quiesced" {
        assert!(
            std::time::Instant::now() < deadline,
            "device never quiesced: {}",
            device_state(id)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    old_pid
}

/// `kill -9`s device `id`'s server, waits until the kernel has quiesced the device, runs
/// `recover`, and returns the old server's pid.
pub fn crash_and_recover(run_dir: &Path, id: u32) -> u32 {
    let old_pid = kill_until_quiesced(run_dir, id);
    let out = run(
        TARGET_BIN,
        &[
            "--run-dir",
            run_dir.to_str().unwrap(),
            "recover",
            "--id",
            &id.to_string(),
        ],
    );
    let reported = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(
        reported,
        format!("{id}\t/dev/ublkb{id}"),
        "recover reported another device"
    );
    assert_eq!(device_state(id), "live");
    assert_ne!(server_pid(run_dir, id), old_pid, "no new server");
    old_pid
}

/// `len` bytes of a deterministic pseudo-random pattern (xorshift), different per `seed`.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A device made with `mesoblk-target add`, deleted on drop if the test did not delete it.
pub struct Device {
    id: u32,
    path: String,
    run_dir: PathBuf,
    deleted: bool,
}

impl Device {
    /// Adds a device with extra `add` arguments; its records live under `work`.
    pub fn add(work: &Path, args: &[&str]) -> Device {
        let run_dir = work.join("run");
        let output = run(
            TARGET_BIN,
            &[&["--run-dir", run_dir.to_str().unwrap(), "add"], args].concat(),
        );
        let stdout = String::from_utf8(output.stdout).expect("utf-8 output");
        let (id, path) = stdout
            .trim()
            .split_once('\t')
            .unwrap_or_else(|| panic!("unexpected add output {stdout:?}"));
        let device = Device {
            id: id.parse().expect("numeric id"),
            path: path.to_owned(),
            run_dir,
            deleted: false,
        };
        assert!(
            Path::new(&device.path).exists(),
            "{} missing after add returned",
            device.path
        );
        device
    }

    /// The device id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// `/dev/ublkbN`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Runs `mesoblk-target del` and returns its output, successful or not.
    pub fn try_delete(&self) -> Output {
        Command::new(TARGET_BIN)
            .args([
                "--run-dir",
                self.run_dir.to_str().unwrap(),
                "del",
                "--id",
                &self.id.to_string(),
            ])
            .output()
            .expect("run mesoblk-target del")
    }

    /// Deletes the device, failing the test if that does not work.
    pub fn delete(mut self) {
        let output = self.try_delete();
        assert!(
            output.status.success(),
            "del failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        self.deleted = true;
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if !self.deleted {
            let _ = Command::new(TARGET_BIN)
                .args([
                    "--run-dir",
                    self.run_dir.to_str().unwrap(),
                    "del",
                    "--force",
                    "--id",
                    &self.id.to_string(),
                ])
                .output();
        }
    }
}

/// A mounted file system, unmounted on drop.
pub struct Mount {
    dir: PathBuf,
}

impl Mount {
    /// Mounts `device` at `dir` (created if needed).
    pub fn new(device: &str, dir: &Path) -> Mount {
        std::fs::create_dir_all(dir).expect("create mountpoint");
        run("mount", &[device, dir.to_str().unwrap()]);
        Mount {
            dir: dir.to_owned(),
        }
    }

    /// The mountpoint.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let status = Command::new("umount").arg(&self.dir).status();
        if !matches!(status, Ok(s) if s.success()) && !std::thread::panicking() {
            panic!("umount {} failed", self.dir.display());
        }
    }
}
