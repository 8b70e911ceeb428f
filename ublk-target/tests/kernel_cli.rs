//! Kernel tier: the CLI against the real driver. Chosen ids, `list --json`, `features`, and the
//! bad-input cases that need a kernel to be reached (unknown id, id already taken): each a
//! one-line error, a non-zero exit, and no change to existing devices.

#[path = "kernel/mod.rs"]
mod kernel;

use kernel::{refused, run, Device, TARGET_BIN};

#[test]
fn a_chosen_id_is_used_and_cannot_be_taken_twice() {
    kernel::require_ublk();
    let work = tempfile::tempdir().unwrap();
    let device = Device::add(
        work.path(),
        &["--backend", "ram", "--size", "16M", "--id", "7"],
    );
    assert_eq!((device.id(), device.path()), (7, "/dev/ublkb7"));
    let run_dir = work.path().join("run");
    refused(
        &[
            "--run-dir",
            run_dir.to_str().unwrap(),
            "add",
            "--backend",
            "ram",
            "--size",
            "16M",
            "--id",
            "7",
        ],
        "already exists",
    );

    let listed: serde_json::Value = serde_json::from_slice(
        &run(
            TARGET_BIN,
            &["--run-dir", run_dir.to_str().unwrap(), "list", "--json"],
        )
        .stdout,
    )
    .unwrap();
    let entry = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == 7)
        .expect("device 7 listed");
    assert_eq!(entry["state"], "live");
    assert_eq!(entry["block_path"], "/dev/ublkb7");
    assert_eq!(entry["record"]["spec"]["size"], 16 << 20);
    assert_eq!(entry["record"]["spec"]["backend"]["type"], "ram");
    device.delete();
}

#[test]
fn unknown_ids_are_refused() {
    kernel::require_ublk();
    refused(&["del", "--id", "4242"], "no ublk device with id 4242");
    refused(&["recover", "--id", "4242"], "no ublk device with id 4242");
}

#[test]
fn features_come_from_the_running_kernel() {
    kernel::require_ublk();
    let out = run(TARGET_BIN, &["features", "--json"]);
    let features: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = features["features"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n.as_str())
        .collect();
    // Recovery is what crash recovery relies on; every kernel this project supports has it.
    assert!(names.contains(&"user_recovery"), "{names:?}");
    assert!(names.contains(&"user_recovery_reissue"), "{names:?}");
}
