//! Kernel tier: crash recovery. `kill -9` of a device's server while a file system on it is
//! mounted and a fio write job runs; `mesoblk-target recover` brings the same `/dev/ublkbN`
//! back, the job finishes and verifies, fsync'd data is intact and the mount keeps working.

#[path = "kernel/mod.rs"]
mod kernel;

use std::process::{Command, Stdio};
use std::time::Duration;

use kernel::{crash_and_recover, device_state, pattern, refused, run, Device, Mount};

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

    crash_and_recover(&run_dir, device.id());

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
    let run_dir = work.path().join("run");
    let id = device.id().to_string();
    refused(
        &[
            "--run-dir",
            run_dir.to_str().unwrap(),
            "recover",
            "--id",
            &id,
        ],
        "not quiesced",
    );
    assert_eq!(
        device_state(device.id()),
        "live",
        "refused recovery disturbed the device"
    );
    device.delete();
}
