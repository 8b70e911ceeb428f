#!/bin/sh
# PID 1 of the mesoblk test VM: a busybox shell script that scripts/vm-run packs into the
# initramfs as /init. It loads the modules listed in /etc/mesoblk/modules, mounts the host's
# root (9p, read-only) and the results share (9p, writable), then runs the command that
# vm-run wrote to <results>/.vm-run/cmd.sh in a chroot of the host root, writes its exit
# status to <results>/.vm-run/status and powers off. Every failure powers off too; the host
# side treats a missing status as a failure.
# Lines starting with "mesoblk-init: FATAL:" are picked out of the serial log by vm-run.

PATH=/bin:/sbin
export PATH
HOST=/host             # the host's root filesystem, shared read-only
SHARE=/mnt/results     # the results share, as init sees it
VMDIR=$SHARE/.vm-run   # vm-run's files in the share: config, cmd.sh, began, status
HAVE_SHARE=0

log() { echo "mesoblk-init: $*"; }

halt() {
    sync
    # Silence the console so "reboot: Power down" does not end up in the command's output.
    echo 0 >/proc/sys/kernel/printk
    poweroff -f
    # poweroff -f does not return; if it does, make the kernel stop the machine.
    echo o >/proc/sysrq-trigger
    sleep 10
}

write_status() { # RC REASON [MESSAGE]
    [ "$HAVE_SHARE" = 1 ] || return 1
    {
        echo "rc=$1"
        echo "reason=$2"
        [ -n "${3:-}" ] && echo "message=$3"
        echo "boot_seconds=${BOOT_SECONDS:-}"
        echo "cmd_seconds=${CMD_SECONDS:-}"
    } >"$VMDIR/status.tmp" && mv "$VMDIR/status.tmp" "$VMDIR/status"
}

save_dmesg() {
    [ "$HAVE_SHARE" = 1 ] && dmesg >"$VMDIR/dmesg.log" 2>/dev/null
}

fatal() {
    log "FATAL: $*"
    log "last kernel messages:"
    dmesg 2>/dev/null | tail -n 15
    save_dmesg
    write_status 125 init-error "$*"
    halt
}

# Waits up to ~10 s for a path (device nodes appear asynchronously after insmod).
wait_for() {
    n=0
    while [ ! -e "$1" ]; do
        n=$((n + 1))
        [ "$n" -gt 200 ] && return 1
        sleep 0.05
    done
    return 0
}

mount -t proc proc /proc || fatal "mount /proc failed"
mount -t sysfs sysfs /sys || fatal "mount /sys failed"
mount -t devtmpfs devtmpfs /dev || fatal "mount devtmpfs on /dev failed"
exec </dev/console >/dev/console 2>&1
# Keep command output free of carriage returns on the host side.
stty -onlcr 2>/dev/null

while read -r mod; do
    [ -n "$mod" ] || continue
    insmod "/lib/modules/$mod.ko" || fatal "insmod $mod failed"
done </etc/mesoblk/modules

mkdir -p "$HOST" "$SHARE"
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose host "$HOST" ||
    fatal "mounting the host root (9p tag 'host') failed"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 results "$SHARE" ||
    fatal "mounting the results share (9p tag 'results') failed"
HAVE_SHARE=1
[ -f "$VMDIR/config" ] || fatal "$VMDIR/config missing in the results share"
# Sets MESOBLK_VM_RESULTS (host path of the share), MESOBLK_VM_TIMEOUT, MESOBLK_VM_DISKS,
# MESOBLK_VM_CWD (the working directory), MESOBLK_VM_REPO (the repository).
# shellcheck source=/dev/null
. "$VMDIR/config" || fatal "cannot read $VMDIR/config"
R=$MESOBLK_VM_RESULTS

wait_for /dev/ublk-control || fatal "/dev/ublk-control did not appear after insmod ublk_drv"
wait_for /dev/loop-control || fatal "/dev/loop-control did not appear after insmod loop"
for d in $MESOBLK_VM_DISKS; do
    wait_for "/dev/$d" || fatal "/dev/$d did not appear (disk given with --disk)"
done

hostname mesoblk-vm
ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up || fatal "cannot bring up lo"

# The chroot: the host root plus fresh kernel filesystems and scratch space.
mount -t proc proc "$HOST/proc" || fatal "mount proc in chroot failed"
mount -t sysfs sysfs "$HOST/sys" || fatal "mount sysfs in chroot failed"
mount -t devtmpfs devtmpfs "$HOST/dev" || fatal "mount devtmpfs in chroot failed"
mkdir -p "$HOST/dev/pts" "$HOST/dev/shm"
mount -t devpts -o gid=5,mode=620,ptmxmode=0666 devpts "$HOST/dev/pts" || fatal "mount devpts failed"
mount -t tmpfs -o mode=1777 tmpfs "$HOST/dev/shm" || fatal "mount /dev/shm failed"
for l in fd:/proc/self/fd stdin:/proc/self/fd/0 stdout:/proc/self/fd/1 stderr:/proc/self/fd/2; do
    [ -e "$HOST/dev/${l%%:*}" ] || ln -s "${l#*:}" "$HOST/dev/${l%%:*}"
done
mount -t cgroup2 cgroup2 "$HOST/sys/fs/cgroup" 2>/dev/null
# Under TCG a CPU can run a stale translation of kernel text the kernel has just patched. The
# first and last finite cpu.max of a boot flip the CFS-bandwidth static key, and the first and
# last memory cgroup flip memcg's socket and bpf keys (text patching both): a CI guest oopsed
# "int3" in update_curr right after an agent wrote cpu.max. One empty cgroup holding a finite
# quota and the memory controller from boot keeps those keys on: the agent's cgroups never
# patch text.
for c in cpu memory io; do
    echo "+$c" > "$HOST/sys/fs/cgroup/cgroup.subtree_control" 2>/dev/null
done
if mkdir -p "$HOST/sys/fs/cgroup/vm-static-key-holder"; then
    echo "100000 100000" > "$HOST/sys/fs/cgroup/vm-static-key-holder/cpu.max" 2>/dev/null
fi
# The repository (its target/ holds the binaries to run) and the working directory would
# vanish under the fresh tmpfs when they lie under /tmp or /run (a CI clone, say): hold them
# aside and bind them back at the same paths afterwards.
KEEP1=${MESOBLK_VM_REPO:-}
KEEP2=$MESOBLK_VM_CWD
case $KEEP2 in "$KEEP1"|"$KEEP1"/*) KEEP2= ;; esac
for i in 1 2; do
    eval "p=\$KEEP$i"
    case $p in
        /tmp/*|/run/*)
            if ! { mkdir -p "/mnt/keep$i" && mount -o bind "$HOST$p" "/mnt/keep$i"; }; then
                fatal "cannot hold $p aside"
            fi
            ;;
        *) eval "KEEP$i="
    esac
done
mount -t tmpfs -o mode=1777 tmpfs "$HOST/tmp" || fatal "mount tmpfs on /tmp failed"
mount -t tmpfs -o mode=755 tmpfs "$HOST/run" || fatal "mount tmpfs on /run failed"
for i in 1 2; do
    eval "p=\$KEEP$i"
    [ -n "$p" ] || continue
    if ! { mkdir -p "$HOST$p" && mount -o bind "/mnt/keep$i" "$HOST$p"; }; then
        fatal "cannot bind $p back into the guest's tmpfs"
    fi
done
mkdir -p "$HOST$R" 2>/dev/null
mount -o bind "$SHARE" "$HOST$R" || fatal "cannot mount the results share on $R"

# Leave time for the kill grace period and the shutdown inside vm-run's hard limit.
BOOT_SECONDS=$(cut -d' ' -f1 /proc/uptime)
budget=$((MESOBLK_VM_TIMEOUT - ${BOOT_SECONDS%.*} - 8))
[ "$budget" -ge 1 ] || budget=1

# Test hook (docs/vm-harness.md, "Boot retry"): vm-run sets this for a first boot when
# MESOBLK_VM_TEST_CRASH_BEFORE_CMD=1, to crash the kernel where the rare TCG oops strikes.
if [ "${MESOBLK_VM_CRASH_BEFORE_CMD:-0}" = 1 ]; then
    log "test hook: crashing the kernel before the command begins"
    echo c >/proc/sysrq-trigger
fi
# The marker vm-run reads when the guest stops without a status: without it the command
# certainly never ran (nothing after this line runs before the file exists on the host, 9p
# writes being synchronous), so vm-run may boot again. The serial log is no such proof: bytes
# still queued in the console driver die with the kernel.
: >"$VMDIR/began" || fatal "cannot write $VMDIR/began in the results share"

# Boot ran with loglevel=4 (its warnings are only in dmesg.log); while the command runs,
# kernel warnings (level 4) and worse go to the console and so to the serial log.
echo 5 >/proc/sys/kernel/printk
start=$(cut -d. -f1 /proc/uptime)
chroot "$HOST" /usr/bin/env -i /usr/bin/timeout -k 5 "$budget" /bin/sh "$R/.vm-run/cmd.sh" </dev/null
rc=$?
end=$(cut -d' ' -f1 /proc/uptime)
CMD_SECONDS=$((${end%.*} - start))

reason="exit"
# timeout(1) exits 124 after TERM, 137 if it had to follow up with KILL.
if [ "$CMD_SECONDS" -ge "$budget" ] && { [ "$rc" = 124 ] || [ "$rc" = 137 ]; }; then
    rc=124
    reason=timeout
fi
save_dmesg
write_status "$rc" "$reason" || log "FATAL: could not write the exit status to the results share"
halt
