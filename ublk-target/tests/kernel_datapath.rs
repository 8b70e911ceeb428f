//! Kernel tier: the data path under real load. fio with crc32c verification over file and
//! block-device backends, discard and write-zeroes reading back as zeroes, ext4 on a block
//! device backend. The block device is the guest's virtio disk named by `MESOBLK_TEST_DISK`
//! (scripts/test attaches one); without it these tests fail rather than skip.

#[path = "kernel/mod.rs"]
mod kernel;

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;

use kernel::{pattern, run, Device, Mount};

fn test_disk() -> String {
    let disk = std::env::var("MESOBLK_TEST_DISK")
        .expect("MESOBLK_TEST_DISK must name a scratch block device (scripts/test attaches one)");
    assert!(
        std::path::Path::new(&disk).exists(),
        "{disk} does not exist in this guest"
    );
    disk
}

fn sparse_file(dir: &std::path::Path, bytes: u64) -> String {
    let path = dir.join("backing.img");
    std::fs::File::create(&path)
        .and_then(|f| f.set_len(bytes))
        .expect("backing file");
    path.to_str().unwrap().to_owned()
}

/// Random writes mixing 4k and 64k at depth 32 over `size`, each block carrying a crc32c that is
/// checked when fio reads everything back.
fn fio_verify(device: &str, size: &str) {
    let out = run(
        "fio",
        &[
            "--name=verify",
            &format!("--filename={device}"),
            "--ioengine=io_uring",
            "--direct=1",
            "--rw=randwrite",
            "--bssplit=4k/50:64k/50",
            "--iodepth=32",
            &format!("--size={size}"),
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--output-format=terse",
        ],
    );
    // Terse v3: field 5 is the error code, which must be zero.
    let terse = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<&str> = terse
        .trim()
        .lines()
        .last()
        .unwrap_or("")
        .split(';')
        .collect();
    assert_eq!(fields.get(4), Some(&"0"), "fio reported an error: {terse}");
}

#[test]
fn fio_verifies_on_a_file_backend() {
    kernel::require_ublk();
    let work = tempfile::tempdir().unwrap();
    let backing = sparse_file(work.path(), 320 << 20);
    let device = Device::add(
        work.path(),
        &["--backend", "file", "--path", &backing, "--depth", "64"],
    );
    fio_verify(device.path(), "256M");
    device.delete();
}

#[test]
fn fio_verifies_on_a_block_device_backend() {
    kernel::require_ublk();
    let disk = test_disk();
    let work = tempfile::tempdir().unwrap();
    let device = Device::add(
        work.path(),
        &["--backend", "blockdev", "--path", &disk, "--size", "320M"],
    );
    fio_verify(device.path(), "256M");
    device.delete();
}

#[test]
fn ext4_on_a_block_device_backend() {
    kernel::require_ublk();
    let disk = test_disk();
    let work = tempfile::tempdir().unwrap();
    let device = Device::add(
        work.path(),
        &["--backend", "blockdev", "--path", &disk, "--size", "256M"],
    );
    run("mkfs.ext4", &["-q", "-F", device.path()]);
    let mountpoint = work.path().join("mnt");
    let data = pattern(4 << 20, 99);
    {
        let mount = Mount::new(device.path(), &mountpoint);
        std::fs::write(mount.dir().join("data"), &data).unwrap();
    }
    {
        let mount = Mount::new(device.path(), &mountpoint);
        assert!(
            std::fs::read(mount.dir().join("data")).unwrap() == data,
            "data differs after remount"
        );
    }
    run("fsck.ext4", &["-n", "-f", device.path()]);
    device.delete();
}

/// Writes a pattern over the first `len` bytes with O_DIRECT, runs `blkdiscard args`, and checks
/// which bytes read back as zeroes.
fn check_zeroing(
    device: &str,
    blkdiscard_args: &[&str],
    zeroed: std::ops::Range<usize>,
    len: usize,
) {
    let data = pattern(len, 5);
    let mut dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(device)
        .expect("open device");
    let mut buf = libublk::helpers::IoBuf::<u8>::new(len);
    buf.as_mut_slice().copy_from_slice(&data);
    dev.write_all(buf.as_slice()).expect("write pattern");
    run("blkdiscard", &[blkdiscard_args, &[device]].concat());
    dev.seek(SeekFrom::Start(0)).unwrap();
    dev.read_exact(buf.as_mut_slice()).expect("read back");
    let back = buf.as_slice();
    assert!(
        back[zeroed.clone()].iter().all(|&b| b == 0),
        "{blkdiscard_args:?}: range not zero"
    );
    assert!(
        back[..zeroed.start] == data[..zeroed.start],
        "{blkdiscard_args:?}: bytes before the range changed"
    );
    assert!(
        back[zeroed.end..] == data[zeroed.end..],
        "{blkdiscard_args:?}: bytes after the range changed"
    );
}

fn check_discard_and_write_zeroes(device: &str) {
    let (start, len, total) = (1usize << 20, 2usize << 20, 4usize << 20);
    let (offset, length) = (start.to_string(), len.to_string());
    // DISCARD.
    check_zeroing(
        device,
        &["-o", &offset, "-l", &length],
        start..start + len,
        total,
    );
    // WRITE_ZEROES (blkdiscard -z issues BLKZEROOUT, which the block layer sends as WRITE_ZEROES).
    check_zeroing(
        device,
        &["-z", "-o", &offset, "-l", &length],
        start..start + len,
        total,
    );
}

#[test]
fn discard_and_write_zeroes_read_back_zeroes_on_a_file_backend() {
    kernel::require_ublk();
    let work = tempfile::tempdir().unwrap();
    let backing = sparse_file(work.path(), 64 << 20);
    let device = Device::add(work.path(), &["--backend", "file", "--path", &backing]);
    check_discard_and_write_zeroes(device.path());
    device.delete();
}

#[test]
fn discard_and_write_zeroes_read_back_zeroes_on_a_block_device_backend() {
    kernel::require_ublk();
    let disk = test_disk();
    let work = tempfile::tempdir().unwrap();
    let device = Device::add(
        work.path(),
        &["--backend", "blockdev", "--path", &disk, "--size", "64M"],
    );
    check_discard_and_write_zeroes(device.path());
    device.delete();
}

#[test]
fn discard_and_write_zeroes_read_back_zeroes_on_a_ram_backend() {
    kernel::require_ublk();
    let work = tempfile::tempdir().unwrap();
    let device = Device::add(work.path(), &["--backend", "ram", "--size", "64M"]);
    check_discard_and_write_zeroes(device.path());
    device.delete();
}
