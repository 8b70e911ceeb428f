//! The CLI's answers to bad input, checked on the host (no ublk needed): each is one line on
//! stderr, a non-zero exit status, and nothing left behind.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_mesoblk-target");

fn target(run_dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--run-dir")
        .arg(run_dir)
        .args(args)
        .output()
        .expect("run mesoblk-target")
}

/// Asserts a one-line failure mentioning `needle`, and an untouched run dir.
fn assert_refused(run_dir: &Path, args: &[&str], needle: &str) {
    let out = target(run_dir, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(
        stderr.contains(needle),
        "{args:?}: expected {needle:?} in {stderr:?}"
    );
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "{args:?}: not one line: {stderr:?}"
    );
    assert!(out.stdout.is_empty(), "{args:?} printed to stdout");
    let left: Vec<_> = std::fs::read_dir(run_dir)
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{args:?} left files behind: {left:?}");
}

#[test]
fn bad_add_requests_are_refused_before_touching_anything() {
    let work = tempfile::tempdir().unwrap();
    let run_dir = work.path().join("run");
    let backing = work.path().join("backing.img");
    std::fs::File::create(&backing)
        .and_then(|f| f.set_len(1 << 20))
        .unwrap();
    let backing = backing.to_str().unwrap();
    let missing = work.path().join("missing.img");

    assert_refused(
        &run_dir,
        &[
            "add",
            "--backend",
            "file",
            "--path",
            missing.to_str().unwrap(),
        ],
        "does not exist",
    );
    assert_refused(
        &run_dir,
        &[
            "add",
            "--backend",
            "file",
            "--path",
            backing,
            "--size",
            "1000",
        ],
        "multiple",
    );
    assert_refused(
        &run_dir,
        &[
            "add",
            "--backend",
            "file",
            "--path",
            backing,
            "--size",
            "2M",
        ],
        "smaller than",
    );
    assert_refused(
        &run_dir,
        &[
            "add",
            "--backend",
            "file",
            "--path",
            backing,
            "--depth",
            "5000",
        ],
        "queue depth",
    );
    assert_refused(
        &run_dir,
        &["add", "--backend", "blockdev", "--path", backing],
        "not a block device",
    );
    assert_refused(
        &run_dir,
        &["add", "--backend", "file"],
        "--path is required",
    );
    assert_refused(&run_dir, &["add", "--backend", "ram"], "--size is required");
    assert_refused(
        &run_dir,
        &["add", "--backend", "ram", "--size", "12Q"],
        "unknown unit",
    );
    assert_refused(
        &run_dir,
        &["add", "--backend", "tape", "--size", "1M"],
        "invalid value",
    );
}

#[test]
fn bad_cache_requests_are_refused_before_touching_anything() {
    let work = tempfile::tempdir().unwrap();
    let run_dir = work.path().join("run");
    let backing = work.path().join("backing.img");
    let cache = work.path().join("cache.img");
    for (path, bytes) in [(&backing, 16 << 20), (&cache, 4 << 20)] {
        std::fs::File::create(path)
            .and_then(|f| f.set_len(bytes))
            .unwrap();
    }
    let (backing, cache) = (backing.to_str().unwrap(), cache.to_str().unwrap());
    let missing = work.path().join("missing.img");
    let add = |extra: &[&'static str], store: &str| -> Vec<String> {
        [
            "add",
            "--backend",
            "file",
            "--path",
            backing,
            "--cache",
            store,
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
    };
    let cases = [
        (add(&[], missing.to_str().unwrap()), "does not exist"),
        (add(&["--cache-size", "1000000"], cache), "multiple of 4096"),
        (add(&["--cache-size", "64K"], cache), "at least"),
        (
            add(&["--cache-size", "8M"], cache),
            "fewer than --cache-size",
        ),
        (add(&["--cache-mode", "fast"], cache), "unknown cache mode"),
        (add(&["--cache-mode", "writeback"], "ram"), "writeback"),
        (
            add(&["--cache-mode", "writethrough"], "ram"),
            "--cache-size is required",
        ),
        (add(&["--queues", "2"], cache), "exactly one queue"),
        (add(&[], backing), "backing store itself"),
    ];
    for (args, needle) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_refused(&run_dir, &args, needle);
    }
    assert_refused(
        &run_dir,
        &["add", "--backend", "ram", "--size", "16M", "--cache", cache],
        "needs a file or blockdev backend",
    );
    assert_refused(
        &run_dir,
        &[
            "add",
            "--backend",
            "file",
            "--path",
            backing,
            "--cache-size",
            "8M",
        ],
        "--cache",
    );
    assert_refused(&run_dir, &["cache", "status", "3"], "no record of device 3");
    let untouched = std::fs::read(cache).unwrap();
    assert!(
        untouched.iter().all(|&b| b == 0),
        "the cache store was written"
    );
}

#[test]
fn without_a_ublk_kernel_every_device_command_says_so() {
    if Path::new("/dev/ublk-control").exists() {
        // This host has ublk; the kernel tier covers these commands against the real driver.
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let run_dir = work.path().join("run");
    for args in [
        &["add", "--backend", "ram", "--size", "1M"][..],
        &["del", "--id", "0"],
        &["list"],
        &["features"],
    ] {
        assert_refused(&run_dir, args, "/dev/ublk-control is missing");
    }
}

#[test]
fn help_describes_every_command() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for command in ["add", "del", "recover", "cache", "list", "features"] {
        assert!(help.contains(command), "--help lacks {command}");
    }
    assert!(
        !help.contains("\n  serve "),
        "the internal serve command should stay hidden"
    );
}
