#!/usr/bin/env python3
"""The guest half of scripts/bench-agent: a real master and agent, and mesoblk-agent-bench.

The agent's one pool lives on the scratch virtio disk (formatted here): sparse files, with
overcommit, so 50 x 1 GiB devices fit on a disk that holds far less. Two profiles share it:
`bench` starts each task's device at its launch (cold), `spare` keeps MESOBLK_BENCH_SPARES (2)
devices of the latency phases' size started ahead (the profile's "spares"). A warm-up launch first
(one task, reported apart: the agent's first launch), then three phases:
  latency  twice, `cold` (profile bench) then `spares` (profile spare): MESOBLK_BENCH_TASKS (50)
           tasks with MESOBLK_BENCH_SIZE_MB (1024) MB BLOCK devices, MESOBLK_BENCH_IN_FLIGHT (1)
           provisioned at a time: ACCEPT -> TASK_RUNNING and the task's first 4k direct read,
           p50/p99 (measured by mesoblk-agent-bench);
  memory   MESOBLK_BENCH_DEVICES (100) tasks holding a MESOBLK_BENCH_SMALL_MB (16) MB device
           each, all at once: the agent's VmHWM/VmRSS and the device servers' (mesoblk-target
           serve) total VmRSS, read from /proc.
After each phase the tasks are killed and the agent's /state must show the pool empty again.
Writes bench-agent.json and bench-agent.md into the results folder; agent.log and master.log too,
and each latency phase's per-milestone breakdown (breakdown-<phase>.md and .json; see
provisioning-breakdown.py).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

BIN = os.environ["MESOBLK_BIN_DIR"]
RESULTS = os.environ["MESOBLK_RESULTS_DIR"]
DISK = os.environ.get("MESOBLK_BENCH_DISK", "/dev/vda")
TASKS = int(os.environ.get("MESOBLK_BENCH_TASKS", "50"))
SIZE_MB = int(os.environ.get("MESOBLK_BENCH_SIZE_MB", "1024"))
IN_FLIGHT = int(os.environ.get("MESOBLK_BENCH_IN_FLIGHT", "1"))
DEVICES = int(os.environ.get("MESOBLK_BENCH_DEVICES", "100"))
SMALL_MB = int(os.environ.get("MESOBLK_BENCH_SMALL_MB", "16"))
SPARES = int(os.environ.get("MESOBLK_BENCH_SPARES", "2"))
WORK = "/tmp/bench-agent"
POOL_SIZE = "8G"
OVERCOMMIT = 16.0
WAIT_SECS = 120
# A phase's deadline: under emulation on a busy host an attach can take seconds.
PHASE_SECS = 1800


def sh(*args):
    subprocess.run(args, check=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def wait_for(what, check, secs=WAIT_SECS):
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit(f"bench-agent: {what}: not within {secs} s (see the logs in {RESULTS})")


def status_kib(pid, field):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def device_servers():
    """Pids of the agent's device servers, from their records (`<id>.json`) in its run dir."""
    pids = []
    for folder, _, files in os.walk(f"{WORK}/run"):
        for name in files:
            if name.endswith(".json") and name[:-5].isdigit():
                pid = json.load(open(os.path.join(folder, name))).get("pid")
                if pid and os.path.exists(f"/proc/{pid}"):
                    pids.append(pid)
    return pids


def start_cluster():
    os.makedirs(WORK, exist_ok=True)
    scratch = f"{WORK}/scratch"
    os.makedirs(scratch, exist_ok=True)
    sh("mkfs.ext4", "-q", "-F", DISK)
    sh("mount", DISK, scratch)
    config = f"{WORK}/storage.json"
    json.dump({"pools": [{"name": "bench", "dir": f"{scratch}/pool", "size": POOL_SIZE,
                          "overcommit": OVERCOMMIT}],
               "profiles": [{"name": "bench", "pool": "bench", "filesystem": "ext4"},
                            {"name": "spare", "pool": "bench", "filesystem": "ext4",
                             "spares": [{"size": f"{SIZE_MB}M", "count": SPARES}]}]},
              open(config, "w"))
    master_port, agent_port = free_port(), free_port()
    # The provisioning milestones too: provisioning-breakdown.py reads them from the logs.
    env = dict(os.environ, RUST_LOG="info,mesoblk::provisioning=debug")
    master = subprocess.Popen(
        [f"{BIN}/mesoblk-master", "--ip", "127.0.0.1", "--port", str(master_port),
         "--hostname", "127.0.0.1", "--allocation_interval", "100ms"],
        stdout=subprocess.DEVNULL, stderr=open(f"{RESULTS}/master.log", "w"), env=env)
    agent = subprocess.Popen(
        [f"{BIN}/mesoblk-agent", "--master", f"127.0.0.1:{master_port}", "--ip", "127.0.0.1",
         "--hostname", "127.0.0.1", "--port", str(agent_port),
         "--resources", "cpus:64;mem:65536", "--isolation", "posix/cpu,posix/mem",
         "--work_dir", f"{WORK}/work", "--block_run_dir", f"{WORK}/run",
         "--block_pool_config", config, "--block_pool_dirs", scratch],
        stdout=subprocess.DEVNULL, stderr=open(f"{RESULTS}/agent.log", "w"), env=env)
    agent_url = f"http://127.0.0.1:{agent_port}"
    wait_for("the agent registered", lambda: get_json(f"{agent_url}/state")["registered"])
    return master, master_port, agent, agent_url


def pool_empty(agent_url):
    state = get_json(f"{agent_url}/state")
    return state["pools"][0]["volumes"] == 0 and not state.get("volumes")


def bench(master_port, name, *args):
    """Starts mesoblk-agent-bench; its report goes to <results>/<name>.json."""
    report = f"{RESULTS}/{name}.json"
    command = [f"{BIN}/mesoblk-agent-bench", "--master", f"127.0.0.1:{master_port}",
               "--ready-dir", f"{WORK}/ready-{name}", "--report", report,
               "--timeout", str(PHASE_SECS), *args]
    print("bench-agent: " + " ".join(command[1:]), flush=True)
    return subprocess.Popen(command), report


def finish(process, what):
    if process.wait() != 0:
        sys.exit(f"bench-agent: the {what} phase failed (exit {process.returncode})")


def warmup_phase(master_port, agent_url):
    """One launch before the measured ones, reported apart: the first device, launcher and task
    after the agent starts run code paths for the first time, which under TCG means translating
    them, a cost of the emulator rather than of provisioning."""
    process, report = bench(master_port, "warmup", "--task-prefix", "warmup", "--tasks", "1",
                            "--size-mb", str(SIZE_MB))
    finish(process, "warm-up")
    wait_for("the pool empty after the warm-up", lambda: pool_empty(agent_url))
    return json.load(open(report))


def spares_ready(agent_url):
    return len(get_json(f"{agent_url}/state")["spares"]) >= SPARES


def latency_phase(master_port, agent_url, phase, profile):
    """MESOBLK_BENCH_TASKS launches of `profile`; its report is latency-<phase>.json."""
    name = f"latency-{phase}"
    process, report = bench(master_port, name, "--profile", profile, "--task-prefix", phase,
                            "--tasks", str(TASKS), "--size-mb", str(SIZE_MB),
                            "--in-flight", str(IN_FLIGHT))
    finish(process, name)
    wait_for(f"the pool empty after the {name} phase", lambda: pool_empty(agent_url))
    # The device servers' logs, before later servers reuse their ids (the spares phase's
    # devices were started before their launches: their logs say nothing of the launch).
    servers = f"{RESULTS}/servers-{phase}"
    os.makedirs(servers, exist_ok=True)
    for folder, _, files in os.walk(f"{WORK}/run"):
        for file in files:
            if file.endswith(".log") and file[:-4].isdigit():
                shutil.copy(os.path.join(folder, file), servers)
    sh("python3", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                               "provisioning-breakdown.py"),
       report, f"{RESULTS}/master.log", f"{RESULTS}/agent.log", "--server-logs", servers,
       "--json", f"{RESULTS}/breakdown-{phase}.json", "--md", f"{RESULTS}/breakdown-{phase}.md")
    return json.load(open(report))


def memory_phase(master_port, agent, agent_url):
    idle = {"agent_rss_kib": status_kib(agent.pid, "VmRSS")}
    hold = f"{WORK}/hold"
    process, report = bench(master_port, "memory", "--tasks", str(DEVICES),
                            "--size-mb", str(SMALL_MB), "--in-flight", "4", "--hold-until", hold)
    wait_for("every device attached",
             lambda: os.path.exists(report) or process.poll() is not None, PHASE_SECS)
    if process.poll() is not None:
        finish(process, "memory")
    time.sleep(2)
    attached = len(get_json(f"{agent_url}/state")["volumes"])
    servers = device_servers()
    figures = {
        "devices": DEVICES,
        "attached": attached,
        "agent_idle_rss_kib": idle["agent_rss_kib"],
        "agent_rss_kib": status_kib(agent.pid, "VmRSS"),
        "agent_hwm_kib": status_kib(agent.pid, "VmHWM"),
        "device_servers": len(servers),
        "spares": len(get_json(f"{agent_url}/state")["spares"]),
        "device_servers_rss_kib": sum(status_kib(pid, "VmRSS") for pid in servers),
        "launch": json.load(open(report)),
    }
    open(hold, "w").close()
    finish(process, "memory")
    wait_for("the pool empty after the memory phase", lambda: pool_empty(agent_url))
    figures["agent_hwm_after_kib"] = status_kib(agent.pid, "VmHWM")
    return figures


def latency_rows(phase, latency):
    return [
        (f"{phase}: ACCEPT -> TASK_RUNNING p50 / p99 ({latency['tasks']} x {SIZE_MB} MB)",
         "%.1f / %.1f ms" % (latency["accept_to_running"]["p50_ms"],
                             latency["accept_to_running"]["p99_ms"])),
        (f"{phase}: ACCEPT -> first 4k direct read p50 / p99",
         "%.1f / %.1f ms" % (latency["accept_to_first_read"]["p50_ms"],
                             latency["accept_to_first_read"]["p99_ms"])),
        (f"{phase}: ACCEPT -> usable p50 / p99 / max (target p99 < 500 ms)",
         "%.1f / %.1f / %.1f ms (%s)" % (
             latency["accept_to_usable"]["p50_ms"], latency["accept_to_usable"]["p99_ms"],
             latency["accept_to_usable"]["max_ms"],
             "met" if latency["target_met"] else "MISSED")),
    ]


def render(warmup, cold, spares, memory):
    mib = lambda kib: f"{kib / 1024:.1f} MiB"
    rows = [
        ("figure", "value"),
        ("warm-up: the agent's first launch, ACCEPT -> usable (not in the figures below)",
         "%.1f ms" % warmup["accept_to_usable"]["max_ms"]),
        *latency_rows("cold (device started at the launch)", cold),
        *latency_rows(f"spares ({SPARES} devices started ahead)", spares),
        ("agent VmRSS idle", mib(memory["agent_idle_rss_kib"])),
        (f"agent VmRSS / VmHWM, {memory['attached']} devices attached",
         f"{mib(memory['agent_rss_kib'])} / {mib(memory['agent_hwm_kib'])}"),
        (f"device servers' total VmRSS ({memory['device_servers']} processes, "
         f"{memory['spares']} of them spares)",
         mib(memory["device_servers_rss_kib"])),
        ("agent VmHWM after the whole run", mib(memory["agent_hwm_after_kib"])),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"| {a:<{width}} | {b} |" for a, b in rows]
    lines.insert(1, f"|{'-' * (width + 2)}|---|")
    return "\n".join(lines) + "\n"


def main():
    master, master_port, agent, agent_url = start_cluster()
    try:
        warmup = warmup_phase(master_port, agent_url)
        cold = latency_phase(master_port, agent_url, "cold", "bench")
        wait_for("the spares made", lambda: spares_ready(agent_url))
        spares = latency_phase(master_port, agent_url, "spares", "spare")
        memory = memory_phase(master_port, agent, agent_url)
    finally:
        agent.terminate()
        master.terminate()
    json.dump({"warmup": warmup, "latency_cold": cold, "latency_spares": spares,
               "memory": memory},
              open(f"{RESULTS}/bench-agent.json", "w"), indent=2)
    table = render(warmup, cold, spares, memory)
    open(f"{RESULTS}/bench-agent.md", "w").write(table)
    print(table)


if __name__ == "__main__":
    main()
