#!/usr/bin/env python3
"""Guest half of the cache power-cut test (scripts/lib/powercut drives it; docs/cache.md).

One boot of the guest. /dev/vda is the backing store and /dev/vdb the cache store of a
writeback-cached mesoblk-target device, both virtio disks whose images survive the guest. With
--plain the device has no cache: it is a file backend on a file in an ext4 on /dev/vda (FUA is
RWF_DSYNC and FLUSH fdatasync on that file), and /dev/vdb is not used.

  --fresh      make the device and an ext4 file system on it (first boot);
  otherwise    reassemble the device from the same stores (`add` replays the cache's journal),
               mount and unmount (ext4 replays its own journal), require `fsck.ext4 -f -n` to
               find nothing, mount again and check every file the manifests name;
  --stress     make the kernel write dirty pages out within 1 s, not 30 s, so the unsynced
               writer keeps the device busy (and a small cache full) the whole boot;
  --final      stop there: unmount and delete the device (the last boot);
  otherwise    write files until the host kills the machine: each file is written, fsync'd
               with its folder, and only then named with its SHA-256 in
               <results>/manifest-<cycle> (the results share is written through to the host),
               while another thread keeps overwriting a file it never syncs.

Exit status: 0 after a --final boot that verified everything, 1 when a check failed, 2 on a
setup failure. A writing boot never returns by itself: the host cuts its power.
"""

import argparse
import glob
import hashlib
import json
import os
import random
import subprocess
import sys
import threading
import time

DEVICE_ID = "0"
DEVICE = "/dev/ublkb" + DEVICE_ID
MOUNT = "/run/powercut"  # the guest's root is the host's, read-only
OUTER = "/run/powercut-outer"  # --plain: the ext4 on /dev/vda holding the device's file
IMAGE = OUTER + "/device.img"


def run(*cmd, check=True):
    """Runs a command, echoing it; returns its exit status."""
    print("powercut-guest: $ " + " ".join(cmd), flush=True)
    rc = subprocess.run(cmd, stdin=subprocess.DEVNULL).returncode
    if check and rc != 0:
        print(f"powercut-guest: FAILED ({rc}): {' '.join(cmd)}", flush=True)
        sys.exit(2)
    return rc


def add_device(target, plain):
    if plain:
        run(target, "add", "--backend", "file", "--path", IMAGE, "--id", DEVICE_ID)
    else:
        run(target, "add", "--backend", "blockdev", "--path", "/dev/vda", "--id", DEVICE_ID,
            "--cache", "/dev/vdb", "--cache-mode", "writeback")


def mount_outer(fresh):
    """--plain: the file system holding the device's file. After a crash it must replay its
    journal and then pass `fsck.ext4 -f -n`; returns that fsck's exit status (0 when fresh)."""
    os.makedirs(OUTER, exist_ok=True)
    if fresh:
        run("mkfs.ext4", "-q", "-F", "/dev/vda")
        run("mount", "-t", "ext4", "/dev/vda", OUTER)
        run("truncate", "-s", "200M", IMAGE)
        return 0
    run("mount", "-t", "ext4", "/dev/vda", OUTER)
    run("umount", OUTER)
    rc = run("fsck.ext4", "-f", "-n", "/dev/vda", check=False)
    run("mount", "-t", "ext4", "/dev/vda", OUTER)
    return rc


def cache_stats(target, plain=False):
    """The device's cache counters (`cache status --json`); none for a --plain device."""
    if plain:
        return {}
    out = subprocess.run([target, "cache", "status", DEVICE_ID, "--json"], check=True,
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE).stdout
    stats = json.loads(out)["stats"]
    return {k: stats[k] for k in ("dirty_bytes", "cached_bytes", "writeback_bytes", "commits")}


def fsync_path(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_after_crash(target, results, cycle, plain, outer_fsck_rc):
    """Journal replay, a read-only fsck, then every manifest entry; writes verify-<cycle>.json."""
    at_open = cache_stats(target, plain)
    os.makedirs(MOUNT, exist_ok=True)
    run("mount", "-t", "ext4", DEVICE, MOUNT)
    run("umount", MOUNT)
    fsck_rc = run("fsck.ext4", "-f", "-n", DEVICE, check=False)
    run("mount", "-t", "ext4", DEVICE, MOUNT)
    checked, bad = 0, []
    for manifest in sorted(glob.glob(os.path.join(results, "manifest-*"))):
        with open(manifest, encoding="ascii") as f:
            # A line without its newline was cut by the power cut: the host never counted it.
            lines = [line for line in f.read().split("\n")[:-1] if line]
        for line in lines:
            name, digest, size = line.split()
            checked += 1
            try:
                with open(os.path.join(MOUNT, name), "rb") as data:
                    content = data.read()
            except OSError as err:
                bad.append(f"{name}: {err}")
                continue
            if len(content) != int(size) or hashlib.sha256(content).hexdigest() != digest:
                bad.append(f"{name}: {len(content)} bytes, sha256 "
                           f"{hashlib.sha256(content).hexdigest()}; fsync'd {size} bytes, {digest}")
    # A failed fsck of the outer file system (--plain) fails the cycle like the device's own.
    fsck_rc = fsck_rc or outer_fsck_rc
    verdict = {"cycle": cycle, "fsck_rc": fsck_rc, "files_checked": checked, "bad": bad,
               "cache_at_open": at_open}
    with open(os.path.join(results, f"verify-{cycle}.json"), "w", encoding="ascii") as f:
        json.dump(verdict, f)
    print(f"powercut-guest: {json.dumps(verdict)}", flush=True)
    return fsck_rc == 0 and not bad


def unsynced_writer(path):
    """Overwrites an 8 MiB file in 256 KiB pieces forever, never syncing it."""
    rng = random.Random()
    with open(path, "wb", buffering=0) as f:
        while True:
            f.seek(rng.randrange(32) * 256 * 1024)
            f.write(os.urandom(256 * 1024))


def kernel_stacks(out):
    """Every task's state and kernel stack, read in-process: a shell spawning `cat` per task
    took longer than 30 s in a busy TCG guest."""
    for task in sorted(glob.glob("/proc/[0-9]*/task/*")):
        try:
            with open(f"{task}/stat", encoding="ascii", errors="replace") as f:
                comm_state = f.read().split(") ", 1)
            with open(f"{task}/stack", encoding="ascii", errors="replace") as f:
                stack = f.read()
        except OSError:
            continue
        name = comm_state[0].split(" (", 1)[-1]
        state = comm_state[1][:1] if len(comm_state) > 1 else "?"
        out.write(f"== {task} ({name}) {state}\n{stack}")


def stall_report(target, results, cycle, progress):
    """If no file is fsync'd for 60 s, saves what the server and the kernel were doing."""
    seen, quiet = progress[0], 0
    while True:
        time.sleep(5)
        quiet = quiet + 5 if progress[0] == seen else 0
        seen = progress[0]
        if quiet != 60:
            continue
        with open(os.path.join(results, f"stall-{cycle}.txt"), "w", encoding="utf-8") as out:
            out.write(f"no fsync returned for 60 s after {seen} files\n")
            for cmd in ([target, "cache", "status", DEVICE_ID],
                        ["tail", "-n", "200", f"/run/mesoblk-target/{DEVICE_ID}.log"]):
                out.write(f"$ {' '.join(cmd)}\n")
                out.flush()
                try:
                    subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=30,
                                   check=False, stdin=subprocess.DEVNULL)
                except subprocess.TimeoutExpired:
                    out.write("(no answer within 30 s)\n")
            out.write("$ kernel stacks\n")
            kernel_stacks(out)
        print(f"powercut-guest: STALL: see stall-{cycle}.txt", flush=True)


def hurry_writeback():
    """Makes the kernel write dirty pages out after 1 s instead of 30 s, so the unsynced
    writer's pages reach the device all through the boot, not in one burst per 30 s."""
    for name, value in (("dirty_expire_centisecs", "100"), ("dirty_writeback_centisecs", "50")):
        with open(f"/proc/sys/vm/{name}", "w", encoding="ascii") as f:
            f.write(value)


def write_until_killed(target, results, cycle, plain):
    folder = f"c{cycle}"
    os.makedirs(os.path.join(MOUNT, folder), exist_ok=True)
    fsync_path(MOUNT)
    for old in glob.glob(os.path.join(MOUNT, "c*", "unsynced")):
        os.unlink(old)
    threading.Thread(target=unsynced_writer, daemon=True,
                     args=(os.path.join(MOUNT, folder, "unsynced"),)).start()
    progress = [0]
    threading.Thread(target=stall_report, daemon=True,
                     args=(target, results, cycle, progress)).start()
    manifest = open(os.path.join(results, f"manifest-{cycle}"), "a", encoding="ascii")
    rng = random.Random()
    i = 0
    while True:
        name = f"{folder}/f{i}"
        content = os.urandom(rng.randrange(1, 65) * 4096 - rng.randrange(2) * 100)
        with open(os.path.join(MOUNT, name), "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        fsync_path(os.path.join(MOUNT, folder))
        # Named only now that fsync returned: the device promised this file.
        manifest.write(f"{name} {hashlib.sha256(content).hexdigest()} {len(content)}\n")
        manifest.flush()
        os.fsync(manifest.fileno())
        i += 1
        progress[0] = i
        if i % 4 == 0:
            # What the cache held shortly before the cut (written whole, then renamed).
            status = os.path.join(results, f"cache-{cycle}.json")
            with open(status + ".tmp", "w", encoding="ascii") as f:
                json.dump(dict(cache_stats(target, plain), fsyncd_files=i), f)
            os.rename(status + ".tmp", status)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycle", type=int, required=True)
    ap.add_argument("--target", required=True, help="the mesoblk-target binary")
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--final", action="store_true")
    ap.add_argument("--plain", action="store_true",
                    help="a file-backend device without a cache (see above)")
    ap.add_argument("--stress", action="store_true",
                    help="write dirty pages out within 1 s (fills a small cache sooner)")
    args = ap.parse_args()
    results = os.environ["MESOBLK_RESULTS_DIR"]
    outer_fsck_rc = mount_outer(args.fresh) if args.plain else 0
    add_device(args.target, args.plain)
    if args.fresh:
        run("mkfs.ext4", "-q", "-F", "-m", "0", DEVICE)
        os.makedirs(MOUNT, exist_ok=True)
        run("mount", "-t", "ext4", DEVICE, MOUNT)
    elif not check_after_crash(args.target, results, args.cycle, args.plain, outer_fsck_rc):
        return 1
    if args.final:
        run("umount", MOUNT)
        run(args.target, "del", "--id", DEVICE_ID)
        if args.plain:
            run("umount", OUTER)
        return 0
    if args.stress:
        hurry_writeback()
    write_until_killed(args.target, results, args.cycle, args.plain)
    return 2


if __name__ == "__main__":
    sys.exit(main())
