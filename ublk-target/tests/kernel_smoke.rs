//! Kernel tier: the smoke test of a real ublk device, built only with `--features kernel-tests`.
//!
//! Needs root and a kernel with `ublk_drv`; `scripts/test` runs it inside the qemu guest. A
//! missing driver is a failure, never a skip: CI must not go green without the kernel tier.

#[path = "kernel/mod.rs"]
mod kernel;

use std::path::Path;

use kernel::{pattern, run, Device, Mount};

#[test]
fn ext4_on_a_file_backed_device_keeps_data_across_remount() {
    kernel::require_ublk();
    let work = tempfile::tempdir().expect("tempdir");
    let backing = work.path().join("backing.img");
    std::fs::File::create(&backing)
        .and_then(|f| f.set_len(256 << 20))
        .expect("backing file");

    let device = Device::add(
        work.path(),
        &["--backend", "file", "--path", backing.to_str().unwrap()],
    );
    run("mkfs.ext4", &["-q", "-F", device.path()]);

    let mountpoint = work.path().join("mnt");
    let data = pattern(8 << 20, 0x5eed);
    {
        let mount = Mount::new(device.path(), &mountpoint);
        std::fs::write(mount.dir().join("payload.bin"), &data).expect("write payload");
        std::fs::create_dir(mount.dir().join("nested")).expect("mkdir");
        std::fs::write(mount.dir().join("nested/small.txt"), b"mesoblk\n")
            .expect("write small file");
    }
    // Unmounting dropped every cached page of this file system: what we read next comes back
    // through the ublk server from the backing file.
    {
        let mount = Mount::new(device.path(), &mountpoint);
        let read_back = std::fs::read(mount.dir().join("payload.bin")).expect("read payload");
        assert_eq!(read_back.len(), data.len());
        assert!(read_back == data, "payload differs after remount");
        assert_eq!(
            std::fs::read(mount.dir().join("nested/small.txt")).unwrap(),
            b"mesoblk\n"
        );
    }
    run("fsck.ext4", &["-n", "-f", device.path()]);

    let id = device.id();
    device.delete();
    assert!(
        !Path::new(&format!("/dev/ublkb{id}")).exists(),
        "block device still present"
    );
    assert!(
        !Path::new(&format!("/sys/class/ublk-char/ublkc{id}")).exists(),
        "ublk device not deleted"
    );
}

#[test]
fn deleting_a_mounted_device_is_refused_until_unmounted() {
    kernel::require_ublk();
    let work = tempfile::tempdir().expect("tempdir");
    let device = Device::add(work.path(), &["--backend", "ram", "--size", "64M"]);
    run("mkfs.ext4", &["-q", "-F", device.path()]);
    let mount = Mount::new(device.path(), &work.path().join("mnt"));
    std::fs::write(mount.dir().join("f"), b"still here").unwrap();

    let refused = device.try_delete();
    assert!(
        !refused.status.success(),
        "deleting a mounted device succeeded"
    );
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains("in use"),
        "unexpected refusal message: {message}"
    );
    assert_eq!(
        message.trim_end().lines().count(),
        1,
        "error is not one line: {message}"
    );
    assert_eq!(
        std::fs::read(mount.dir().join("f")).unwrap(),
        b"still here",
        "refusal disturbed the mount"
    );

    drop(mount);
    device.delete();
}

/// The server switches its device's I/O scheduler to `none` once the device is live (after
/// announcing it, so `add` may return first); a device with several queues has `none` already.
#[test]
fn a_live_device_runs_without_an_io_scheduler() {
    kernel::require_ublk();
    let work = tempfile::tempdir().expect("tempdir");
    for queues in ["1", "2"] {
        let device = Device::add(
            work.path(),
            &["--backend", "ram", "--size", "16M", "--queues", queues],
        );
        let path = format!("/sys/block/ublkb{}/queue/scheduler", device.id());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut current = String::new();
        while std::time::Instant::now() < deadline {
            current = std::fs::read_to_string(&path).expect("read the scheduler");
            if current.contains("[none]") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(
            current.contains("[none]"),
            "{queues} queue(s): scheduler still {current:?}"
        );
        // Reads and writes go through after the switch.
        let data = pattern(1 << 20, 7);
        std::fs::write(device.path(), &data).expect("write the device");
        assert!(std::fs::read(device.path()).expect("read the device")[..data.len()] == data);
        device.delete();
    }
}
