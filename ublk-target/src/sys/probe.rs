//! Probes of a backing store's geometry: size, logical block size, direct-I/O alignment.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

/// Bytes in a regular file, or in a block device (a block device's length is where a seek to
/// its end lands).
pub fn store_size(file: &File, is_block_device: bool) -> std::io::Result<u64> {
    if is_block_device {
        let mut handle = file;
        let size = handle.seek(SeekFrom::End(0))?;
        handle.seek(SeekFrom::Start(0))?;
        Ok(size)
    } else {
        Ok(file.metadata()?.len())
    }
}

/// A block device's logical block size, from sysfs (partitions read their parent's queue).
pub fn logical_block_size(file: &File) -> std::io::Result<u32> {
    let rdev = file.metadata()?.rdev();
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    let base = format!("/sys/dev/block/{major}:{minor}");
    let read = |path: String| {
        std::fs::read_to_string(path)
            .ok()?
            .trim()
            .parse::<u32>()
            .ok()
    };
    read(format!("{base}/queue/logical_block_size"))
        .or_else(|| read(format!("{base}/../queue/logical_block_size")))
        .ok_or_else(|| {
            std::io::Error::other(format!(
                "no logical_block_size in sysfs for {major}:{minor}"
            ))
        })
}

/// The file offset alignment `O_DIRECT` needs for this file (statx `STATX_DIOALIGN`), or `None`
/// when the kernel or file system does not say.
pub fn dio_offset_align(file: &File) -> std::io::Result<Option<u32>> {
    let mut stx = MaybeUninit::<libc::statx>::zeroed();
    let empty = c"";
    // SAFETY: `empty` is a valid NUL-terminated string and `stx` points to writable memory of
    // the size statx(2) fills; AT_EMPTY_PATH makes the call describe `file`'s own descriptor,
    // which stays open for the duration of the call because `file` is borrowed.
    let rc = unsafe {
        libc::statx(
            file.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            stx.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statx returned 0, so it initialised the structure (it was also zeroed before).
    let stx = unsafe { stx.assume_init() };
    let reported = stx.stx_mask & libc::STATX_DIOALIGN != 0 && stx.stx_dio_offset_align != 0;
    Ok(reported.then_some(stx.stx_dio_offset_align))
}

/// The file system's preferred block size for this file.
pub fn fs_block_size(file: &File) -> std::io::Result<u64> {
    Ok(file.metadata()?.blksize())
}
