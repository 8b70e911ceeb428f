"""pymesos 0.3.15, unmodified, against a running mesoblk-master.

Usage: pymesos_subscribe.py HOST:PORT

1. subscribe: a MesosSchedulerDriver subscribes, gets `registered` with a framework id, receives
   heartbeats without any error, then stop() sends TEARDOWN and the framework is removed.
2. failover: driver A subscribes with a failover_timeout and stops with failover=True (no
   TEARDOWN, the stream just closes); driver B resubscribes with A's framework id and is
   (re)registered with the same id, then tears down.

Every wait is bounded; the script exits non-zero with a message on the first failed check.
"""

import json
import logging
import sys
import threading
import time
import urllib.request

from pymesos import MesosSchedulerDriver, Scheduler

WAIT_SECS = 20.0


class Recorder(Scheduler):
    def __init__(self):
        self.framework_id = None
        self.reregistered_master = None
        self.heartbeats = 0
        self.errors = []
        self.changed = threading.Condition()

    def _notify(self):
        with self.changed:
            self.changed.notify_all()

    def registered(self, driver, framework_id, master_info):
        self.framework_id = framework_id["value"]
        self._notify()

    def reregistered(self, driver, master_info):
        self.reregistered_master = master_info
        self._notify()

    def processHeartBeat(self, driver):
        self.heartbeats += 1
        self._notify()

    def error(self, driver, message):
        self.errors.append(message)
        self._notify()

    def wait_for(self, what, predicate):
        deadline = time.monotonic() + WAIT_SECS
        with self.changed:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    fail("timed out waiting for " + what)
                self.changed.wait(left)


def fail(message):
    print("FAIL: " + message, file=sys.stderr)
    sys.exit(1)


def check(condition, message):
    if not condition:
        fail(message)


def operator(master, body):
    request = urllib.request.Request(
        "http://%s/api/v1" % master,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read().decode())


def frameworks(master):
    answer = operator(master, {"type": "GET_FRAMEWORKS"})["get_frameworks"]
    active = [f["framework_info"]["id"]["value"] for f in answer.get("frameworks", [])]
    completed = [f["framework_info"]["id"]["value"] for f in answer.get("completed_frameworks", [])]
    return active, completed


def wait_until(what, predicate):
    deadline = time.monotonic() + WAIT_SECS
    while not predicate():
        if time.monotonic() > deadline:
            fail("timed out waiting for " + what)
        time.sleep(0.05)


def join(driver):
    thread = threading.Thread(target=driver.join, daemon=True)
    thread.start()
    thread.join(WAIT_SECS)
    check(not thread.is_alive(), "driver stopped in time")


def subscribe_heartbeat_teardown(master):
    sched = Recorder()
    framework = {"user": "nobody", "name": "pymesos-compat"}
    driver = MesosSchedulerDriver(sched, framework, master, use_addict=True)
    driver.start()
    sched.wait_for("registered", lambda: sched.framework_id is not None)
    check(sched.framework_id.endswith("-0000") or "-" in sched.framework_id,
          "framework id looks like <master>-NNNN: %r" % sched.framework_id)
    check(driver.version == "1.11.0", "pymesos read /version: %r" % driver.version)
    sched.wait_for("three heartbeats", lambda: sched.heartbeats >= 3)
    check(not sched.errors, "no error events: %r" % sched.errors)
    active, _ = frameworks(master)
    check(sched.framework_id in active, "the master lists the framework")
    framework_id = sched.framework_id
    driver.stop()  # sends TEARDOWN
    join(driver)
    wait_until("the framework to be removed", lambda: framework_id in frameworks(master)[1])
    check(not sched.errors, "no error events: %r" % sched.errors)
    print("ok: subscribe, heartbeats, teardown (%s)" % framework_id)


def failover(master):
    first = Recorder()
    framework = {"user": "nobody", "name": "pymesos-failover", "failover_timeout": 60.0}
    driver_a = MesosSchedulerDriver(first, dict(framework), master, use_addict=True)
    driver_a.start()
    first.wait_for("A registered", lambda: first.framework_id is not None)
    framework_id = first.framework_id
    driver_a.stop(failover=True)  # no TEARDOWN: the stream just closes
    join(driver_a)

    second = Recorder()
    framework_b = dict(framework, id={"value": framework_id})
    driver_b = MesosSchedulerDriver(second, framework_b, master, use_addict=True)
    driver_b.start()
    # pymesos reports a subscription with a known id as `reregistered`.
    second.wait_for("B re-registered", lambda: second.reregistered_master is not None)
    check(driver_b.framework_id == framework_id,
          "B keeps A's id: %r != %r" % (driver_b.framework_id, framework_id))
    second.wait_for("a heartbeat for B", lambda: second.heartbeats >= 1)
    check(not first.errors and not second.errors, "no errors: %r %r" % (first.errors, second.errors))
    active, completed = frameworks(master)
    check(framework_id in active and framework_id not in completed, "the framework survived failover")
    driver_b.stop()
    join(driver_b)
    wait_until("the framework to be removed", lambda: framework_id in frameworks(master)[1])
    print("ok: failover with framework id (%s)" % framework_id)


def main():
    logging.basicConfig(level=logging.WARNING, format="pymesos: %(levelname)s %(name)s: %(message)s")
    if len(sys.argv) != 2:
        fail("usage: pymesos_subscribe.py HOST:PORT")
    master = sys.argv[1]
    subscribe_heartbeat_teardown(master)
    failover(master)


if __name__ == "__main__":
    main()
