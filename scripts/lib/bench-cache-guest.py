#!/usr/bin/env python3
"""The guest half of scripts/bench-cache: the cache tier against the same backend without it.

Disks (scripts/bench-cache attaches them in this order):
  /dev/vda  the slow backing store: a virtio disk throttled to MESOBLK_BENCH_SLOW_IOPS requests/s
  /dev/vdb  the fast cache store (the cache uses its first CACHE_SIZE)
  /dev/vdc  a fast, unthrottled backing store (the journal-record cost)
Every device is a mesoblk-target blockdev device (one queue, depth 128): "direct" has no cache,
"writeback"/"writethrough"/"writearound" have `--cache /dev/vdb` in that mode. Each measurement
gets a fresh device and a fresh cache (its superblocks zeroed, so `add` formats it).
Workloads (fio, io_uring, O_DIRECT, 4k, depth 32):
  randwrite   random writes over 1 GiB
  zipf 70/30  random 70% reads / 30% writes over 1 GiB, zipf(1.2) block popularity
  read hits   random reads over a 64 MiB region read once before (128k reads) to promote it
  100% miss   random reads over the whole 2 GiB disk on a cold cache: fio's random map reads
              each block at most once a pass, so no read can hit (checked from the cache's stats)
  journal     random writes on the fast backing store, depth 32 and depth 1
MESOBLK_BENCH_RUNTIME sets the seconds per fio job (default 10).
Writes bench-cache.json and bench-cache.md into the results folder.
"""

import json
import os
import subprocess
import sys

SLOW, STORE, FAST = "/dev/vda", "/dev/vdb", "/dev/vdc"
BIN = os.path.join(os.environ["MESOBLK_BIN_DIR"], "mesoblk-target")
RESULTS = os.environ["MESOBLK_RESULTS_DIR"]
RUNTIME = os.environ.get("MESOBLK_BENCH_RUNTIME", "10")
SLOW_IOPS = os.environ.get("MESOBLK_BENCH_SLOW_IOPS", "500")
CACHE_SIZE = "512M"
HOT = "64M"
RUN_DIR = "/run/mesoblk-bench-cache"
DEPTH32 = ["--bs=4k", "--iodepth=32"]
WORKLOADS = {
    "randwrite": ["--rw=randwrite", "--size=1G", *DEPTH32],
    "zipf 70/30": ["--rw=randrw", "--rwmixread=70", "--random_distribution=zipf:1.2",
                   "--size=1G", *DEPTH32],
    "read hits": ["--rw=randread", f"--size={HOT}", *DEPTH32],
    "100% miss": ["--rw=randread", "--size=2G", *DEPTH32],
    "journal d32": ["--rw=randwrite", "--size=512M", *DEPTH32],
    "journal d1": ["--rw=randwrite", "--size=512M", "--bs=4k", "--iodepth=1"],
}


def sh(*args):
    return subprocess.run(args, check=True, text=True, capture_output=True).stdout.strip()


def side(job, name):
    s = job[name]
    pct = s["clat_ns"].get("percentile", {})
    return {"iops": s["iops"], "lat_mean_us": s["clat_ns"]["mean"] / 1000,
            "lat_p50_us": pct.get("50.000000", 0) / 1000,
            "lat_p99_us": pct.get("99.000000", 0) / 1000}


def fio(device, args, timed=True):
    extra = [f"--runtime={RUNTIME}", "--time_based", "--clocksource=clock_gettime", "--ramp_time=1"] if timed else []
    out = sh("fio", "--name=bench", f"--filename={device}", "--ioengine=io_uring", "--direct=1",
             "--output-format=json", *extra, *args)
    job = json.loads(out)["jobs"][0]
    return {n: side(job, n) for n in ("read", "write") if job[n]["io_bytes"]}


def mt(*args):
    return sh(BIN, "--run-dir", RUN_DIR, *args)


def cache_stats(dev_id):
    return json.loads(mt("cache", "status", str(dev_id), "--json"))["stats"]


class Device:
    """A mesoblk-target device on `backing`: direct, or through a fresh cache in `mode`."""

    def __init__(self, backing, mode=None):
        args = ["add", "--backend", "blockdev", "--path", backing, "--depth", "128"]
        if mode:
            # Blank superblocks: `add` formats the store instead of replaying the last run.
            sh("dd", "if=/dev/zero", f"of={STORE}", "bs=4096", "count=2", "oflag=direct",
               "conv=notrunc", "status=none")
            args += ["--cache", STORE, "--cache-size", CACHE_SIZE, "--cache-mode", mode]
        self.mode = mode
        self.id, self.path = mt(*args).split("\t")

    def run(self, workload, timed=True):
        """fio on the device; with a cache, the stats counters' change during the job too."""
        before = cache_stats(self.id) if self.mode else None
        result = fio(self.path, WORKLOADS[workload] if timed else workload, timed)
        if before is not None:
            after = cache_stats(self.id)
            result["cache"] = {k: after[k] - before[k] for k in
                               ("read_hits", "read_misses", "write_hits", "write_misses",
                                "promotions", "commits", "checkpoints", "bypassed")}
            result["cache"]["dirty_mib"] = after["dirty_bytes"] / (1 << 20)
            # Group commit's journal writes (absent from builds before the counters existed).
            for k in ("journal_writes", "journal_records"):
                result["cache"][k] = after.get(k, 0) - before.get(k, 0)
        return result

    def delete(self):
        mt("del", "--id", self.id)


def measure(results, backing, mode, workload, warm=None):
    name = mode or "direct"
    print(f"bench-cache: {workload}, {name}", flush=True)
    dev = Device(backing, mode)
    try:
        if warm:
            dev.run(warm, timed=False)
        results.setdefault(workload, {})[name] = dev.run(workload)
    finally:
        dev.delete()


def main():
    results = {}
    for workload in ("randwrite", "zipf 70/30"):
        for mode in (None, "writeback", "writethrough"):
            measure(results, SLOW, mode, workload)
    # One pass of 128k reads over the hot region promotes every block of it (and costs only
    # HOT/128k requests on the throttled disk).
    warm = ["--rw=randread", "--bs=128k", "--iodepth=8", f"--size={HOT}", f"--io_size={HOT}"]
    for mode in (None, "writethrough"):
        measure(results, SLOW, mode, "read hits", warm=warm)
        measure(results, SLOW, mode, "100% miss")
    for workload in ("journal d32", "journal d1"):
        for mode in (None, "writearound", "writethrough"):
            measure(results, FAST, mode, workload)
    # What one 4 KiB journal record costs the store, alone: a 4k write to it at depth 1.
    print("bench-cache: cache store alone, depth 1", flush=True)
    results["store d1"] = {"raw": fio(STORE, WORKLOADS["journal d1"])}
    json.dump(results, open(os.path.join(RESULTS, "bench-cache.json"), "w"), indent=2)
    table = render(results)
    open(os.path.join(RESULTS, "bench-cache.md"), "w").write(table)
    print(table)


def ratio(results, workload, name, ref="direct", side_name=None):
    def iops(r):
        return sum(s["iops"] for k, s in r.items() if k in ("read", "write")
                   and (side_name is None or k == side_name))
    a, b = iops(results[workload][name]), iops(results[workload][ref])
    return a / b if b else 0.0


def render(results):
    lines = [f"Backing store: virtio disk throttled to {SLOW_IOPS} IOPS (`{SLOW}`); cache store: "
             f"the first {CACHE_SIZE} of a fast virtio disk (`{STORE}`); journal rows: fast "
             f"backing store (`{FAST}`). {RUNTIME} s per job.", "",
             "| workload | device | read IOPS | read p99 µs | write IOPS | write p99 µs | "
             "× direct | cache: hits / misses (read; write) |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for workload, by_name in results.items():
        for name, r in by_name.items():
            rd, wr = r.get("read"), r.get("write")
            cells = [f"{rd['iops']:.0f}", f"{rd['lat_p99_us']:.0f}"] if rd else ["-", "-"]
            cells += [f"{wr['iops']:.0f}", f"{wr['lat_p99_us']:.0f}"] if wr else ["-", "-"]
            times = f"{ratio(results, workload, name):.2f}" if "direct" in by_name else "-"
            c = r.get("cache")
            stats = (f"{c['read_hits']} / {c['read_misses']}; {c['write_hits']} / "
                     f"{c['write_misses']}" if c else "-")
            lines.append(f"| {workload} | {name} | {' | '.join(cells)} | {times} | {stats} |")
    lines += ["", "| target | goal | measured | |", "|---|---|---:|---|"]
    for label, goal, value, met in targets(results):
        lines.append(f"| {label} | {goal} | {value} | **{'met' if met else 'missed'}** |")
    lines += ["", journal_cost(results)]
    return "\n".join(lines) + "\n"


def targets(results):
    wb = ratio(results, "randwrite", "writeback")
    hits = ratio(results, "read hits", "writethrough")
    miss = ratio(results, "100% miss", "writethrough")
    miss_hits = results["100% miss"]["writethrough"]["cache"]["read_hits"]
    return [
        ("writeback randwrite IOPS", "≥ 5 × direct", f"{wb:.2f} ×", wb >= 5),
        ("writethrough read-hit IOPS", "≥ 3 × direct", f"{hits:.2f} ×", hits >= 3),
        ("writethrough, 100% miss reads", "cost ≤ 10%",
         f"{(1 - miss) * 100:.1f}% ({miss_hits} hits)", miss >= 0.9 and miss_hits == 0),
    ]


def journal_cost(results):
    d1 = results["journal d1"]
    mean = {n: r["write"]["lat_mean_us"] for n, r in d1.items()}
    store = results["store d1"]["raw"]["write"]["lat_mean_us"]
    d32 = results["journal d32"]
    return ("Journal record (fast backing store, 4k randwrite): writethrough "
            f"{ratio(results, 'journal d32', 'writethrough'):.2f} × direct IOPS at depth 32 "
            f"({d32['writethrough']['write']['iops']:.0f} against "
            f"{d32['direct']['write']['iops']:.0f}; writearound "
            f"{ratio(results, 'journal d32', 'writearound'):.2f} ×); at depth 1 mean write "
            f"latency direct {mean['direct']:.0f} µs, writearound {mean['writearound']:.0f} µs, "
            f"writethrough {mean['writethrough']:.0f} µs (+{mean['writethrough'] - mean['direct']:.0f} µs: "
            f"the cache's data write and its journal record, in series). One 4k write to the "
            f"cache store alone at depth 1: {store:.0f} µs mean, the record's share.")


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as e:
        print(f"bench-cache: {' '.join(e.cmd)} failed: {e.stderr}", file=sys.stderr)
        sys.exit(1)
