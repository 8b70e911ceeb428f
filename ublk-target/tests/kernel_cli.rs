//! Kernel tier: the CLI against the real driver. Chosen ids, `list --json` (records and the
//! servers' I/O statistics), `features`, and the bad-input cases that need a kernel to be
//! reached (unknown id, id already taken): each a one-line error, a non-zero exit, and no
//! change to existing devices.

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

    let entry = listed(&run_dir, 7);
    assert_eq!(entry["state"], "live");
    assert_eq!(entry["block_path"], "/dev/ublkb7");
    assert_eq!(entry["record"]["spec"]["size"], 16 << 20);
    assert_eq!(entry["record"]["spec"]["backend"]["type"], "ram");
    device.delete();
}

/// `list --json` of the devices under `run_dir`, the entry of device `id`.
fn listed(run_dir: &std::path::Path, id: u32) -> serde_json::Value {
    let out = run(
        TARGET_BIN,
        &["--run-dir", run_dir.to_str().unwrap(), "list", "--json"],
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entries = listed.as_array().unwrap();
    let entry = entries.iter().find(|d| d["id"] == id);
    entry
        .unwrap_or_else(|| panic!("device {id} not listed"))
        .clone()
}

#[test]
fn list_shows_the_io_of_every_queue_exactly() {
    kernel::require_ublk();
    let work = tempfile::tempdir().unwrap();
    let device = Device::add(
        work.path(),
        &["--backend", "ram", "--size", "16M", "--queues", "2"],
    );
    // O_DIRECT 4 KiB writes, one request each, from each of the guest's two CPUs: blk-mq maps
    // CPU n to queue n, so each queue thread counts its own.
    for (cpu, blocks, seek) in [("0", 16, 0), ("1", 8, 100)] {
        let of = format!("of={}", device.path());
        let (count, seek) = (format!("count={blocks}"), format!("seek={seek}"));
        let dd = ["dd", "if=/dev/zero", &of, "bs=4k", &count, &seek];
        run(
            "taskset",
            &[&["-c", cpu], &dd[..], &["oflag=direct", "status=none"]].concat(),
        );
    }

    let entry = listed(&work.path().join("run"), device.id());
    let io = &entry["server"]["io"];
    assert_eq!(
        io["write"],
        serde_json::json!({"ops": 24, "bytes": 24 * 4096, "errors": 0}),
        "{io}"
    );
    assert_eq!(io["write_latency"]["samples"], 24, "{io}");
    assert_eq!(io["read_latency"]["samples"], io["read"]["ops"], "{io}");
    assert_eq!(io["in_flight"], 0, "{io}");
    assert_eq!(io["throttled_ops"], 0, "{io}");
    // The all-requests histogram holds every request of every op type once.
    let ops = ["read", "write", "flush", "discard", "write_zeroes"];
    let total: u64 = ops.iter().map(|op| io[op]["ops"].as_u64().unwrap()).sum();
    assert_eq!(io["latency"]["samples"], total, "{io}");
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
