#!/usr/bin/env python3
"""The guest half of scripts/bench-target: every device measured in one boot, on one virtio disk.

Targets, in order:
  raw       the virtio disk itself
  loop      kernel loop device over the disk, --direct-io=on (the reference, "b")
  blockdev  mesoblk-target blockdev backend over the disk
  null      mesoblk-target null backend
  null+qos  the same with QoS limits set far above what it can do (the limiter's own cost)
  loop-file kernel loop (--direct-io=on) over a file on ext4 on the disk
  file      mesoblk-target file backend over the same file
  blockdev-base  blockdev again, served by the mesoblk-target at MESOBLK_BENCH_BASE_BIN (another
            build, e.g. of main) and/or with MESOBLK_BENCH_BASE_ARGS added to its `add` (e.g.
            "--queues 2"): an A/B within one boot, interleaved by round
Workloads: 4k randread and randwrite at depth 32, 128k sequential read and write;
MESOBLK_BENCH_WORKLOADS (comma-separated label prefixes, e.g. "4k") runs a subset.
MESOBLK_BENCH_ONLY (comma-separated target names) runs a subset, MESOBLK_BENCH_RUNTIME sets the
seconds per fio job (default 8), MESOBLK_BENCH_ROUNDS repeats every target that many times,
interleaved (default 1); the table then shows the median round and every round's IOPS.

Then the paired phase, for ratios the host's swings in capacity cannot hide: both sides of a
comparison stay set up and MESOBLK_BENCH_PAIRS (default 10) pairs of short 4k jobs
(MESOBLK_BENCH_PAIR_RUNTIME seconds, default 3) alternate between them, the order flipping
every pair; each pair gives one ratio. In real time: blockdev / loop (both over the disk at
once), and blockdev-base / blockdev when there is a base. In a guest whose clock counts
instructions (MESOBLK_VM_ACCEL=icount, scripts/bench-target's second boot): null with QoS
limits far above its reach / the same device without limits. 0 pairs skips the phase.

Writes a JSON result file and a Markdown table into the results folder.
"""

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile

DISK = os.environ.get("MESOBLK_BENCH_DISK", "/dev/vda")
BIN = os.path.join(os.environ["MESOBLK_BIN_DIR"], "mesoblk-target")
RESULTS = os.environ["MESOBLK_RESULTS_DIR"]
RUNTIME = os.environ.get("MESOBLK_BENCH_RUNTIME", "8")
ROUNDS = int(os.environ.get("MESOBLK_BENCH_ROUNDS", "1"))
SIZE = "1G"
WORKLOADS = [
    ("4k randread", ["--rw=randread", "--bs=4k", "--iodepth=32"]),
    ("4k randwrite", ["--rw=randwrite", "--bs=4k", "--iodepth=32"]),
    ("128k seq read", ["--rw=read", "--bs=128k", "--iodepth=32"]),
    ("128k seq write", ["--rw=write", "--bs=128k", "--iodepth=32"]),
]
RUN_DIR = "/run/mesoblk-bench"
WORKLOADS = [w for w in WORKLOADS
             if not os.environ.get("MESOBLK_BENCH_WORKLOADS")
             or any(w[0].startswith(p) for p in os.environ["MESOBLK_BENCH_WORKLOADS"].split(","))]
BASE_BIN = os.environ.get("MESOBLK_BENCH_BASE_BIN", "")
BASE_ARGS = os.environ.get("MESOBLK_BENCH_BASE_ARGS", "").split()
PAIRS = int(os.environ.get("MESOBLK_BENCH_PAIRS", "10"))
PAIR_RUNTIME = os.environ.get("MESOBLK_BENCH_PAIR_RUNTIME", "3")
PAIR_WORKLOADS = [w for w in WORKLOADS if w[0].startswith("4k")]
ICOUNT = os.environ.get("MESOBLK_VM_ACCEL") == "icount"
# Limits far above what a null device reaches: the limiter's own cost.
UNREACHED_QOS = ["--iops-total", "100000000", "--bps-total", "100G"]
BLOCKDEV = ["--backend", "blockdev", "--path", DISK, "--size", "2G", "--depth", "128"]
NULL = ["--backend", "null", "--size", "2G", "--depth", "128"]
TARGETS = ["raw", "loop", "blockdev", "blockdev-base", "null", "null+qos", "loop-file", "file"]


def sh(*args, capture=True):
    res = subprocess.run(args, check=True, text=True, capture_output=capture)
    return res.stdout.strip() if capture else ""


def busy_seconds(pid=None):
    """CPU seconds spent so far: by process `pid` (all its threads), or by the whole guest
    (every CPU's time outside idle and iowait)."""
    hz = os.sysconf("SC_CLK_TCK")
    if pid is not None:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / hz  # utime, stime
    cpu = [int(v) for v in open("/proc/stat").readline().split()[1:]]
    return (sum(cpu) - cpu[3] - cpu[4]) / hz


def wakeup_counts():
    """The guest's context switches, interrupts, and inter-processor interrupts (rescheduling
    and function calls) so far: what each I/O costs in wake-ups, which an emulated CPU pays
    dearly for."""
    counts = {}
    for line in open("/proc/stat"):
        key, *values = line.split()
        if key in ("ctxt", "intr"):
            counts[key] = int(values[0])
    counts["ipi"] = 0
    for line in open("/proc/interrupts"):
        name, _, rest = line.partition(":")
        if name.strip() in ("RES", "CAL"):
            counts["ipi"] += sum(int(v) for v in rest.split() if v.isdigit())
    return counts


def fio(device, args, server_pid=None):
    """One fio job; with the CPU time per I/O (µs) of the guest and of the server, and the
    guest's wake-ups per I/O, counted over the ramp too, hence divided by the I/Os of ramp and
    runtime at the job's rate."""
    guest0, wakeups0 = busy_seconds(), wakeup_counts()
    server0 = busy_seconds(server_pid) if server_pid else 0
    result = fio_job(device, args)
    ios = result["iops"] * (float(RUNTIME) + 1)
    if ios:
        result["guest_cpu_us_per_io"] = (busy_seconds() - guest0) * 1e6 / ios
        if server_pid:
            result["server_cpu_us_per_io"] = (busy_seconds(server_pid) - server0) * 1e6 / ios
        for key, value in wakeup_counts().items():
            result[f"{key}_per_io"] = (value - wakeups0[key]) / ios
    return result


def fio_job(device, args, runtime=RUNTIME):
    out = sh("fio", "--name=bench", f"--filename={device}", "--ioengine=io_uring", "--direct=1",
             f"--size={SIZE}", f"--runtime={runtime}", "--time_based",
             "--clocksource=clock_gettime", "--ramp_time=1", "--output-format=json", *args)
    job = json.loads(out)["jobs"][0]
    side = job["read"] if job["read"]["io_bytes"] else job["write"]
    return {"iops": side["iops"], "bw_mib": side["bw_bytes"] / (1 << 20),
            "lat_p99_us": side["clat_ns"]["percentile"].get("99.000000", 0) / 1000}


def server_pid(device_id):
    return json.load(open(f"{RUN_DIR}/{device_id}.json"))["pid"]


def server_rss_kib(device_id):
    for line in open(f"/proc/{server_pid(device_id)}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


@contextlib.contextmanager
def served(*add_args, binary=BIN):
    """A mesoblk-target device for the `with` block: (its id, its /dev/ublkbN)."""
    dev_id, path = sh(binary, "--run-dir", RUN_DIR, "add", *add_args).split("\t")
    try:
        yield int(dev_id), path
    finally:
        sh(BIN, "--run-dir", RUN_DIR, "del", "--id", dev_id)


@contextlib.contextmanager
def loop_device(backing):
    """A kernel loop device with direct I/O over `backing` for the `with` block."""
    loop = sh("losetup", "--direct-io=on", "--show", "-f", backing)
    try:
        yield loop
    finally:
        sh("losetup", "-d", loop)


def set_qos(dev_id, limits):
    sh(BIN, "--run-dir", RUN_DIR, "set-qos", "--id", str(dev_id), *(limits or ["--unlimited"]))


def measure(name, device, results, rss_of=None):
    """Appends one round of every workload on `device` to results[name][label]."""
    print(f"bench: {name} ({device})", flush=True)
    target = results.setdefault(name, {})
    pid = server_pid(rss_of) if rss_of is not None else None
    for label, args in WORKLOADS:
        target.setdefault(label, []).append(fio(device, args, pid))
    if rss_of is not None:
        rss = server_rss_kib(rss_of)
        target["server_peak_rss_kib"] = max(rss, target.get("server_peak_rss_kib", 0))


def summarize(results):
    """Per target and workload: the round with the median IOPS, plus every round's IOPS."""
    for by_workload in results.values():
        for label, _ in WORKLOADS:
            rounds = by_workload[label]
            ranked = sorted(rounds, key=lambda r: r["iops"])
            median = dict(ranked[(len(ranked) - 1) // 2])
            median["rounds_iops"] = [round(r["iops"]) for r in rounds]
            by_workload[label] = median


def bench_loop(results, name, backing):
    with loop_device(backing) as loop:
        measure(name, loop, results)


def bench_server(results, name, *add_args, binary=BIN):
    with served(*add_args, binary=binary) as (dev_id, path):
        measure(name, path, results, rss_of=dev_id)


def bench_on_disk(results, wanted):
    for _ in range(ROUNDS):
        bench_disk_round(results, wanted)


def bench_disk_round(results, wanted):
    if "raw" in wanted:
        measure("raw", DISK, results)
    if "loop" in wanted:
        bench_loop(results, "loop", DISK)
    if "blockdev" in wanted:
        bench_server(results, "blockdev", *BLOCKDEV)
    if "blockdev-base" in wanted:
        bench_server(results, "blockdev-base", *BLOCKDEV, *BASE_ARGS, binary=BASE_BIN or BIN)
    if "null" in wanted:
        bench_server(results, "null", *NULL)
    if "null+qos" in wanted:
        bench_server(results, "null+qos", *NULL, *UNREACHED_QOS)


def bench_pairs(wanted):
    """The paired phase (see the module's doc): {comparison: {workload: [ratio per pair]}}.
    Under icount only the comparison without disk I/O means something (the guest's time counts
    its instructions, and a disk's latency is not in them); in real time only those with disk
    I/O stand out of the host's swings."""
    pairs = {}
    if PAIRS <= 0:
        return pairs
    if ICOUNT:
        if wanted >= {"null", "null+qos"}:
            pairs["null+qos / null"] = qos_pairs()
        return pairs
    if wanted >= {"blockdev", "loop"}:
        with loop_device(DISK) as loop, served(*BLOCKDEV) as (_, path):
            pairs["blockdev / loop"] = alternate(lambda: path, lambda: loop)
    if wanted >= {"blockdev", "blockdev-base"}:
        with served(*BLOCKDEV, *BASE_ARGS, binary=BASE_BIN or BIN) as (_, base_path), \
                served(*BLOCKDEV) as (_, path):
            pairs["blockdev-base / blockdev"] = alternate(lambda: base_path, lambda: path)
    return pairs


def qos_pairs():
    """QoS limits far above what a null device reaches against none, on one device, switched
    with set-qos between the two jobs of a pair: the same server, device and memory."""
    with served(*NULL) as (dev_id, path):
        def limited():
            set_qos(dev_id, UNREACHED_QOS)
            return path

        def unlimited():
            set_qos(dev_id, [])
            return path
        return alternate(limited, unlimited)


def alternate(prepare_a, prepare_b):
    """Per 4k workload, the ratios a / b of PAIRS pairs of jobs; a pair's order flips each time
    so a drift in the host's capacity favours neither side. `prepare_*` returns the device to
    run on after putting it in its state."""
    ratios = {}
    for label, args in PAIR_WORKLOADS:
        print(f"bench: pairs {label}", flush=True)
        ratios[label] = []
        for i in range(PAIRS):
            iops = {}
            for side in ("ab" if i % 2 == 0 else "ba"):
                device = (prepare_a if side == "a" else prepare_b)()
                iops[side] = fio_job(device, args, PAIR_RUNTIME)["iops"]
            if iops["b"]:
                ratios[label].append(iops["a"] / iops["b"])
    return ratios


def bench_on_file(results, wanted):
    if not wanted & {"loop-file", "file"}:
        return
    sh("mkfs.ext4", "-q", "-F", DISK)
    mnt = tempfile.mkdtemp(prefix="mesoblk-bench-")  # the guest's root is read-only
    sh("mount", DISK, mnt)
    try:
        image = os.path.join(mnt, "backing.img")
        # Written out, not fallocated: reads of unwritten extents would cost no disk I/O at all.
        sh("dd", "if=/dev/zero", f"of={image}", "bs=1M", "count=1536", "oflag=direct",
           "status=none")
        for _ in range(ROUNDS):
            if "loop-file" in wanted:
                bench_loop(results, "loop-file", image)
            if "file" in wanted:
                bench_server(results, "file", "--backend", "file", "--path", image, "--depth",
                             "128")
    finally:
        sh("umount", mnt)


def main():
    only = os.environ.get("MESOBLK_BENCH_ONLY", "")
    # blockdev-base runs by default only when there is a base to compare with.
    default = set(TARGETS) if BASE_BIN or BASE_ARGS else set(TARGETS) - {"blockdev-base"}
    wanted = set(only.split(",")) if only else default
    unknown = wanted - set(TARGETS)
    if "blockdev-base" in wanted and not (BASE_BIN or BASE_ARGS):
        sys.exit("bench-target: blockdev-base needs MESOBLK_BENCH_BASE_BIN (a mesoblk-target) "
                 "or MESOBLK_BENCH_BASE_ARGS")
    if unknown:
        sys.exit(f"bench-target: unknown MESOBLK_BENCH_ONLY targets {sorted(unknown)}; "
                 f"known: {','.join(TARGETS)}")
    results = {}
    bench_on_disk(results, wanted)
    bench_on_file(results, wanted)
    pairs = bench_pairs(wanted)
    summarize(results)
    json.dump({"targets": results, "pairs": pairs},
              open(os.path.join(RESULTS, "bench-target.json"), "w"), indent=2)
    table = render(results) + render_pairs(pairs)
    open(os.path.join(RESULTS, "bench-target.md"), "w").write(table)
    print(table)


def render(results):
    refs = {"raw": "loop", "loop": "loop", "blockdev": "loop", "blockdev-base": "loop",
            "null": "loop", "null+qos": "null",
            "loop-file": "loop-file", "file": "loop-file"}
    lines = ["| target | workload | IOPS | MiB/s | p99 µs | ratio to reference "
             "| guest CPU µs/IO | server CPU µs/IO | switches / irqs / IPIs per IO |",
             "|---|---|---:|---:|---:|---|---:|---:|---|"]
    for name, by_workload in results.items():
        ref = results.get(refs[name])
        for label, _ in WORKLOADS:
            r = by_workload[label]
            ratio = "-"
            if ref:
                # Paired by round (the rounds are interleaved): the median of the ratios.
                pairs = [a / b for a, b in zip(r["rounds_iops"], ref[label]["rounds_iops"]) if b]
                if pairs:
                    ratio = f"{statistics.median(pairs):.2f} × {refs[name]}"
            rounds = "" if len(r["rounds_iops"]) < 2 else " ({})".format(
                " ".join(str(i) for i in r["rounds_iops"]))
            cpu = " | ".join(f"{r[k]:.1f}" if k in r else "-"
                             for k in ("guest_cpu_us_per_io", "server_cpu_us_per_io"))
            wakeups = " / ".join(f"{r[k]:.2f}" if k in r else "-"
                                 for k in ("ctxt_per_io", "intr_per_io", "ipi_per_io"))
            lines.append(f"| {name} | {label} | {r['iops']:.0f}{rounds} | {r['bw_mib']:.1f} | "
                         f"{r['lat_p99_us']:.0f} | {ratio} | {cpu} | {wakeups} |")
    rss = [f"{n}: {v['server_peak_rss_kib'] / 1024:.1f} MiB" for n, v in results.items()
           if "server_peak_rss_kib" in v]
    lines.append("")
    lines.append("Peak RSS of the device server (depth 128): " + ", ".join(rss))
    return "\n".join(lines) + "\n"


def render_pairs(pairs):
    if not pairs:
        return ""
    clock = ", guest time counting instructions (icount)" if ICOUNT else ""
    lines = ["", f"Paired ({PAIRS} pairs of {PAIR_RUNTIME} s jobs, order alternating{clock}):", "",
             "| comparison | workload | median ratio | middle half | every pair |",
             "|---|---|---:|---|---|"]
    for name, by_workload in pairs.items():
        for label, ratios in by_workload.items():
            if not ratios:
                continue
            quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
            every = " ".join(f"{r:.2f}" for r in ratios)
            lines.append(f"| {name} | {label} | {statistics.median(ratios):.3f} | "
                         f"{quartiles[0]:.3f}–{quartiles[2]:.3f} | {every} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as e:
        print(f"bench-target: {' '.join(e.cmd)} failed: {e.stderr}", file=sys.stderr)
        sys.exit(1)
