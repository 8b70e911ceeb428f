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
            build, e.g. of main): an A/B of two builds within one boot, interleaved by round
Workloads: 4k randread and randwrite at depth 32, 128k sequential read and write;
MESOBLK_BENCH_WORKLOADS (comma-separated label prefixes, e.g. "4k") runs a subset.
MESOBLK_BENCH_ONLY (comma-separated target names) runs a subset, MESOBLK_BENCH_RUNTIME sets the
seconds per fio job (default 8), MESOBLK_BENCH_ROUNDS repeats every target that many times,
interleaved (default 1); the table then shows the median round and every round's IOPS.
Writes a JSON result file and a Markdown table into the results folder.
"""

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


def fio(device, args, server_pid=None):
    """One fio job; with the CPU time per I/O (µs) of the guest and of the server, counted over
    the ramp too, hence divided by the I/Os of ramp and runtime at the job's rate."""
    guest0 = busy_seconds()
    server0 = busy_seconds(server_pid) if server_pid else 0
    result = fio_job(device, args)
    ios = result["iops"] * (float(RUNTIME) + 1)
    if ios:
        result["guest_cpu_us_per_io"] = (busy_seconds() - guest0) * 1e6 / ios
        if server_pid:
            result["server_cpu_us_per_io"] = (busy_seconds(server_pid) - server0) * 1e6 / ios
    return result


def fio_job(device, args):
    out = sh("fio", "--name=bench", f"--filename={device}", "--ioengine=io_uring", "--direct=1",
             f"--size={SIZE}", f"--runtime={RUNTIME}", "--time_based", "--clocksource=clock_gettime", "--ramp_time=1",
             "--output-format=json", *args)
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


def add(*args, binary=BIN):
    out = sh(binary, "--run-dir", RUN_DIR, "add", *args)
    dev_id, path = out.split("\t")
    return int(dev_id), path


def delete(dev_id):
    sh(BIN, "--run-dir", RUN_DIR, "del", "--id", str(dev_id))


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
    loop = sh("losetup", "--direct-io=on", "--show", "-f", backing)
    try:
        measure(name, loop, results)
    finally:
        sh("losetup", "-d", loop)


def bench_server(results, name, *add_args, binary=BIN):
    dev_id, path = add(*add_args, binary=binary)
    try:
        measure(name, path, results, rss_of=dev_id)
    finally:
        delete(dev_id)


def bench_on_disk(results, wanted):
    for _ in range(ROUNDS):
        bench_disk_round(results, wanted)


def bench_disk_round(results, wanted):
    if "raw" in wanted:
        measure("raw", DISK, results)
    if "loop" in wanted:
        bench_loop(results, "loop", DISK)
    if "blockdev" in wanted:
        bench_server(results, "blockdev", "--backend", "blockdev", "--path", DISK, "--size", "2G",
                     "--depth", "128")
    if "blockdev-base" in wanted:
        bench_server(results, "blockdev-base", "--backend", "blockdev", "--path", DISK, "--size",
                     "2G", "--depth", "128", binary=BASE_BIN)
    if "null" in wanted:
        bench_server(results, "null", "--backend", "null", "--size", "2G", "--depth", "128")
    if "null+qos" in wanted:
        # QoS configured far above what the device can do: the cost of the limiter itself.
        bench_server(results, "null+qos", "--backend", "null", "--size", "2G", "--depth", "128",
                     "--iops-total", "100000000", "--bps-total", "100G")


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
    # blockdev-base runs by default only when there is a base build to serve it.
    default = set(TARGETS) if BASE_BIN else set(TARGETS) - {"blockdev-base"}
    wanted = set(only.split(",")) if only else default
    unknown = wanted - set(TARGETS)
    if "blockdev-base" in wanted and not BASE_BIN:
        sys.exit("bench-target: blockdev-base needs MESOBLK_BENCH_BASE_BIN (a mesoblk-target)")
    if unknown:
        sys.exit(f"bench-target: unknown MESOBLK_BENCH_ONLY targets {sorted(unknown)}; "
                 f"known: {','.join(TARGETS)}")
    results = {}
    bench_on_disk(results, wanted)
    bench_on_file(results, wanted)
    summarize(results)
    json.dump(results, open(os.path.join(RESULTS, "bench-target.json"), "w"), indent=2)
    table = render(results)
    open(os.path.join(RESULTS, "bench-target.md"), "w").write(table)
    print(table)


def render(results):
    refs = {"raw": "loop", "loop": "loop", "blockdev": "loop", "blockdev-base": "loop",
            "null": "loop", "null+qos": "null",
            "loop-file": "loop-file", "file": "loop-file"}
    lines = ["| target | workload | IOPS | MiB/s | p99 µs | ratio to reference "
             "| guest CPU µs/IO | server CPU µs/IO |",
             "|---|---|---:|---:|---:|---|---:|---:|"]
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
            lines.append(f"| {name} | {label} | {r['iops']:.0f}{rounds} | {r['bw_mib']:.1f} | "
                         f"{r['lat_p99_us']:.0f} | {ratio} | {cpu} |")
    rss = [f"{n}: {v['server_peak_rss_kib'] / 1024:.1f} MiB" for n, v in results.items()
           if "server_peak_rss_kib" in v]
    lines.append("")
    lines.append("Peak RSS of the device server (depth 128): " + ", ".join(rss))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as e:
        print(f"bench-target: {' '.join(e.cmd)} failed: {e.stderr}", file=sys.stderr)
        sys.exit(1)
