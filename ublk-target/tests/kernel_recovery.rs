//! Kernel tier: crash recovery. `kill -9` of a device's server while a file system on it is
//! mounted and a fio write job runs; `mesoblk-target recover` brings the same `/dev/ublkbN`
//! back, the job finishes and verifies, fsync'd data is intact and the mount keeps working.

#[path = "kernel/mod.rs"]
mod kernel;

use std::process::{Command, Stdio};
use std::time::Duration;

use kernel::{pattern, run, Device, Mount, TARGET_BIN};

fn server_pid(run_dir: &std::path::Path, id: u32) -> u32 {
    let record: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run_dir.join(format!("{id}.json"))).expect("device record"),
    )
    .expect("record json");
    record["pid"].as_u64().expect("pid in record") as u32
}

fn device_state(id: u32) -> String {
    let out = run(TARGET_BIN, &["list", "--json"]);
    let devices: serde_json::Value = serde_json::from_slice(&out.stdout).expect("list json");
    devices
        .as_array()
        .and_then(|all| all.iter().find(|d| d["id"] == id))
        .map(|d| d["state"].as_str().unwrap_or("?").to_owned())
        .unwrap_or_else(|| "absent".to_owned())
}

#[test]
fn killed_server_is_recovered_under_a_mounted_file_system_and_running_fio() {
    kernel::require_ublk();
    let work = tempfile::tempdir().expect("tempdir");
    let run_dir = work.path().join("run");
    let backing = work.path().join("backing.img");
    std::fs::File::create(&backing)
        .and_then(|f| f.set_len(512 << 20))
        .expect("backing file");
    let device = Device::add(
        work.path(),
        &["--backend", "file", "--path", backing.to_str().unwrap()],
    );
    run("mkfs.ext4", &["-q", "-F", device.path()]);
    let mount = Mount::new(device.path(), &work.path().join("mnt"));

    // Written and fsync'd before the crash: must survive it byte for byte.
    let flushed = pattern(4 << 20, 42);
    {
        use std::io::Write;
        let mut f = std::fs::File::create(mount.dir().join("flushed.bin")).unwrap();
        f.write_all(&flushed).unwrap();
        f.sync_all().unwrap();
    }

    // A verifying fio job: random 4k/64k writes with crc32c headers, read back at the end.
    let fio_file = mount.dir().join("fio.dat");
    let mut fio = Command::new("fio")
        .args([
            "--name=crash",
            "--ioengine=psync",
            "--direct=1",
            "--rw=randwrite",
            "--bssplit=4k/50:64k/50",
        ])
        .args([
            "--size=64M",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--fsync=16",
        ])
        .arg(format!("--filename={}", fio_file.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start fio");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        fio.try_wait().unwrap().is_none(),
        "fio finished before the crash; make the job longer"
    );

    let old_pid = server_pid(&run_dir, device.id());
    run("kill", &["-9", &old_pid.to_string()]);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while device_state(device.id()) != "quiesced" {
        assert!(
            std::time::Instant::now() < deadline,
            "device never quiesced: {}",
            device_state(device.id())
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let out = run(
        TARGET_BIN,
        &[
            "--run-dir",
            run_dir.to_str().unwrap(),
            "recover",
            "--id",
            &device.id().to_string(),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.trim(),
        format!("{}\t{}", device.id(), device.path()),
        "recover reported another device"
    );
    assert_eq!(device_state(device.id()), "live");
    assert_ne!(server_pid(&run_dir, device.id()), old_pid, "no new server");

    let fio_out = fio.wait_with_output().expect("wait for fio");
    assert!(
        fio_out.status.success(),
        "fio failed across the recovery:\n{}\n{}",
        String::from_utf8_lossy(&fio_out.stdout),
        String::from_utf8_lossy(&fio_out.stderr)
    );
    assert!(
        std::fs::read(mount.dir().join("flushed.bin")).unwrap() == flushed,
        "fsync'd data changed"
    );

    // The mount still works: new data goes in and comes back after a remount.
    let after = pattern(1 << 20, 7);
    std::fs::write(mount.dir().join("after.bin"), &after).unwrap();
    let mountpoint = mount.dir().to_owned();
    drop(mount);
    run("fsck.ext4", &["-n", "-f", device.path()]);
    let mount = Mount::new(device.path(), &mountpoint);
    assert!(std::fs::read(mount.dir().join("flushed.bin")).unwrap() == flushed);
    assert!(std::fs::read(mount.dir().join("after.bin")).unwrap() == after);
    drop(mount);
    device.delete();
}

#[test]
fn recover_refuses_a_live_device_with_one_line() {
    kernel::require_ublk();
    let work = tempfile::tempdir().expect("tempdir");
    let backing = work.path().join("backing.img");
    std::fs::File::create(&backing)
        .and_then(|f| f.set_len(64 << 20))
        .unwrap();
    let device = Device::add(
        work.path(),
        &["--backend", "file", "--path", backing.to_str().unwrap()],
    );
    let out = Command::new(TARGET_BIN)
        .args([
            "--run-dir",
            work.path().join("run").to_str().unwrap(),
            "recover",
            "--id",
            &device.id().to_string(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not quiesced"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert_eq!(
        device_state(device.id()),
        "live",
        "refused recovery disturbed the device"
    );
    device.delete();
}
