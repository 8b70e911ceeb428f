#!/usr/bin/env python3
"""Where a launch's time goes: joins mesoblk-agent-bench's report (each task's ACCEPT, TASK_RUNNING
received and first read done) with the master's and the agent's provisioning trace (debug events
of target `mesoblk::provisioning`, logged with RUST_LOG=info,mesoblk::provisioning=debug) and
prints the phases of the critical path (PHASES) and, per milestone, its time since the ACCEPT and
since the milestone before it, p50/p99/max over the tasks (nearest rank).

    provisioning-breakdown.py REPORT.json MASTER.log AGENT.log [--server-logs DIR]
                              [--json OUT.json] [--md OUT.md]

With --server-logs, the device servers' own milestones (their logs, `<id>.log`) split the
device start.

All three come from one host (the guest), so their clocks agree. Milestones a task does not reach
(or that its log lacks) are left out of that task's figures.
"""

import argparse
import json
import math
import re
from datetime import datetime, timezone

# The path of one command task with a BLOCK device, in the order the milestones usually happen.
# Some overlap: the launcher starts the task while TASK_STARTING makes its round trip, and
# TASK_RUNNING is only posted once TASK_STARTING is acknowledged (one update in flight per task).
MILESTONES = [
    ("master", "ACCEPT received"),
    ("master", "RUN_TASK queued to the agent"),
    ("agent", "RUN_TASK received"),
    ("agent", "task booked"),
    ("agent", "launch started"),
    ("agent", "storage lock taken"),
    ("agent", "volume created"),
    ("agent", "spare claimed"),
    ("server", "spec received"),
    ("server", "store opened"),
    ("server", "device added"),
    ("server", "queue set up"),
    ("server", "device started"),
    ("server", "record and admin socket published"),
    ("agent", "device live"),
    ("agent", "storage lock taken again"),
    ("agent", "attachment recorded"),
    ("agent", "device handed over"),
    ("agent", "disks attached"),
    ("agent", "sandbox and infos written"),
    ("agent", "launcher spawned"),
    ("agent", "TASK_STARTING stored"),
    ("agent", "disks received by the launch"),
    ("master", "status update received TASK_STARTING"),
    ("master", "status update forwarded TASK_STARTING"),
    ("agent", "status update posted TASK_STARTING"),
    ("agent", "TASK_RUNNING stored"),
    ("master", "acknowledgement received #1"),
    ("agent", "acknowledgement stored #1"),
    ("master", "status update received TASK_RUNNING"),
    ("master", "status update forwarded TASK_RUNNING"),
    ("agent", "status update posted TASK_RUNNING"),
    ("bench", "TASK_RUNNING at the scheduler"),
    ("bench", "first 4k direct read done"),
]

# The phases of a launch, each from one milestone to a later one, measured per task. Since
# 2026-12-07 the device starts (without the storage lock) while the launcher is spawned: the two
# branches run side by side from "launch started", and the launch waits for the disks after
# TASK_STARTING ("waiting for the disks" is what the device branch adds to the launcher's).
PHASES = [
    ("ACCEPT to RUN_TASK at the agent (master, agent stream)",
     ("bench", "ACCEPT"), ("agent", "RUN_TASK received")),
    ("RUN_TASK to the storage lock (booking, hand-off to a blocking thread, sandbox)",
     ("agent", "RUN_TASK received"), ("agent", "storage lock taken")),
    ("volume created (record, sparse backing file)",
     ("agent", "storage lock taken"), ("agent", "volume created")),
    ("device server started, device live",
     ("agent", "volume created"), ("agent", "device live")),
    ("or: a spare device claimed (its record rewritten as the task's volume)",
     ("agent", "storage lock taken"), ("agent", "spare claimed")),
    ("  then: attachment recorded, node chowned/chmodded",
     ("agent", "spare claimed"), ("agent", "device handed over")),
    ("  of which: the spec reaches the idle server",
     ("agent", "volume created"), ("server", "spec received")),
    ("  of which: store opened (backing file, QoS limiter)",
     ("server", "spec received"), ("server", "store opened")),
    ("  of which: ADD_DEV", ("server", "store opened"), ("server", "device added")),
    ("  of which: queue thread and ring set up",
     ("server", "device added"), ("server", "queue set up")),
    ("  of which: FETCHes, SET_PARAMS, START_DEV (add_disk, partition scan)",
     ("server", "queue set up"), ("server", "device started")),
    ("  of which: record and admin socket published, ready reported",
     ("server", "device started"), ("server", "record and admin socket published")),
    ("  of which: the agent reads the ready line",
     ("server", "record and admin socket published"), ("agent", "device live")),
    ("attachment recorded, node chowned/chmodded",
     ("agent", "device live"), ("agent", "device handed over")),
    ("launcher branch: launch started to the launcher spawned (sandbox, checkpoints, exec)",
     ("agent", "launch started"), ("agent", "launcher spawned")),
    ("launcher spawned to TASK_STARTING stored",
     ("agent", "launcher spawned"), ("agent", "TASK_STARTING stored")),
    ("waiting for the disks (TASK_STARTING stored to the disks received)",
     ("agent", "TASK_STARTING stored"), ("agent", "disks received by the launch")),
    ("disks received to TASK_RUNNING stored (env and go sent, launcher starts the task)",
     ("agent", "disks received by the launch"), ("agent", "TASK_RUNNING stored")),
    ("launch started to TASK_RUNNING stored (both branches)",
     ("agent", "launch started"), ("agent", "TASK_RUNNING stored")),
    ("TASK_RUNNING stored to the scheduler (after TASK_STARTING's acknowledgement)",
     ("agent", "TASK_RUNNING stored"), ("bench", "TASK_RUNNING at the scheduler")),
    ("TASK_RUNNING stored to the first read done (the task's shell and dd start)",
     ("agent", "TASK_RUNNING stored"), ("bench", "first 4k direct read done")),
    ("ACCEPT to TASK_RUNNING at the scheduler",
     ("bench", "ACCEPT"), ("bench", "TASK_RUNNING at the scheduler")),
    ("ACCEPT to usable (both)", ("bench", "ACCEPT"), ("bench", "usable")),
]

LINE = re.compile(r"^(\S+Z)\s+DEBUG\s+mesoblk::provisioning: (.*)$")
FIELD = re.compile(r"(\w+)=(\S+)")
COUNTED = ("acknowledgement received", "acknowledgement stored")


def stamp(text):
    """RFC 3339 with up to 9 fractional digits, as tracing writes it, in ns since the epoch."""
    main, _, frac = text.rstrip("Z").partition(".")
    seconds = datetime.fromisoformat(main).replace(tzinfo=timezone.utc).timestamp()
    return int(seconds) * 10**9 + int((frac + "000000000")[:9])


def read_trace(path, side, events, devices=None):
    """Adds each task's first time at each milestone of `side` to events[task]; with `devices`,
    also each task's first device id (its "device live" event) to devices[task]."""
    counts = {}
    for line in open(path, errors="replace"):
        match = LINE.match(line.rstrip("\n"))
        if not match:
            continue
        at, rest = match.groups()
        fields = dict(FIELD.findall(rest))
        message = FIELD.sub("", rest).strip()
        task = fields.get("task")
        if not task:
            continue
        if devices is not None and message == "device live":
            devices.setdefault(task, fields.get("device"))
        if "state" in fields:
            message += " " + fields["state"].strip('"')
        if message in COUNTED:
            n = counts[(task, message)] = counts.get((task, message), 0) + 1
            message += f" #{n}"
        events.setdefault(task, {}).setdefault((side, message), stamp(at))


def quantiles(samples):
    samples = sorted(samples)
    rank = lambda q: samples[max(0, math.ceil(q * len(samples)) - 1)]
    return {"n": len(samples), "p50_ms": rank(0.5), "p99_ms": rank(0.99), "max_ms": samples[-1]}


def read_server_traces(server_logs, devices, events):
    """Adds each task's device server milestones: its device's server logged to
    `<server_logs>/<id>.log` (a device id is reused once its device is gone: only the events
    after the task's "volume created" count)."""
    for task, device in devices.items():
        since = events[task].get(("agent", "volume created"))
        try:
            lines = [] if since is None else open(f"{server_logs}/{device}.log",
                                                  errors="replace").readlines()
        except OSError:
            continue
        for line in lines:
            match = LINE.match(line.rstrip("\n"))
            if match and stamp(match.group(1)) >= since:
                message = FIELD.sub("", match.group(2)).strip()
                events[task].setdefault(("server", message), stamp(match.group(1)))


def breakdown(report, master_log, agent_log, server_logs=None):
    events = {}
    read_trace(master_log, "master", events)
    devices = {}
    read_trace(agent_log, "agent", events, devices)
    if server_logs:
        read_server_traces(server_logs, devices, events)
    accepted = {}
    for launch in report["launches"]:
        task = launch["task"]
        accepted[task] = launch["accepted_ns"]
        mine = events.setdefault(task, {})
        mine[("bench", "ACCEPT")] = launch["accepted_ns"]
        for key, name in (("running_ns", "TASK_RUNNING at the scheduler"),
                          ("read_done_ns", "first 4k direct read done")):
            if launch.get(key):
                mine[("bench", name)] = launch[key]
        if launch.get("running_ns") and launch.get("read_done_ns"):
            mine[("bench", "usable")] = max(launch["running_ns"], launch["read_done_ns"])
    phases = []
    for name, start, end in PHASES:
        samples = [(events[t][end] - events[t][start]) / 1e6 for t in accepted
                   if start in events.get(t, {}) and end in events.get(t, {})]
        if samples:
            phases.append({"phase": name, **quantiles(samples)})
    rows = []
    for i, milestone in enumerate(MILESTONES):
        since_accept, since_previous = [], []
        for task, start in accepted.items():
            at = events.get(task, {}).get(milestone)
            if at is None:
                continue
            since_accept.append((at - start) / 1e6)
            before = [events[task].get(m) for m in MILESTONES[:i]]
            before = [b for b in before if b is not None]
            if before:
                since_previous.append((at - before[-1]) / 1e6)
        if since_accept:
            rows.append({"side": milestone[0], "milestone": milestone[1],
                         "since_accept": quantiles(since_accept),
                         "since_previous": quantiles(since_previous) if since_previous else None})
    return {"phases": phases, "milestones": rows}


def render(breakdown):
    out = ["| phase | p50 (ms) | p99 (ms) |", "|---|---:|---:|"]
    for phase in breakdown["phases"]:
        out.append(f"| {phase['phase']} | {phase['p50_ms']:.0f} | {phase['p99_ms']:.0f} |")
    out += ["", "| milestone | since ACCEPT p50 / p99 (ms) | since the previous p50 / p99 (ms) |",
           "|---|---:|---:|"]
    for row in breakdown["milestones"]:
        a, p = row["since_accept"], row["since_previous"]
        step = f"{p['p50_ms']:.0f} / {p['p99_ms']:.0f}" if p else "—"
        out.append(f"| {row['side']}: {row['milestone']} | "
                   f"{a['p50_ms']:.0f} / {a['p99_ms']:.0f} | {step} |")
    return "\n".join(out) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report")
    parser.add_argument("master_log")
    parser.add_argument("agent_log")
    parser.add_argument("--server-logs", help="the device servers' logs (<id>.log), "
                        "for the device start's own milestones")
    parser.add_argument("--json")
    parser.add_argument("--md")
    args = parser.parse_args()
    figures = breakdown(json.load(open(args.report)), args.master_log, args.agent_log,
                        args.server_logs)
    table = render(figures)
    if args.json:
        json.dump(figures, open(args.json, "w"), indent=2)
    if args.md:
        open(args.md, "w").write(table)
    print(table)


if __name__ == "__main__":
    main()
