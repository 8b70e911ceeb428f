"""pymesos 0.3.15, unmodified, runs tasks through a running mesoblk-master on its test agent.

Usage: pymesos_tasks.py HOST:PORT

The agent (the Rust test agent, started by the test that runs this script) finishes every task
at once except `pymesos-long`, which keeps running until killed. The scheduler:

1. subscribes and receives an offer in the legacy format (every resource `"role": "*"`, no
   `allocation_info`), whose resource dicts it reads (cpus, mem, ports, the RAW disk pool);
2. launches `pymesos-finish` and `pymesos-long` from it;
3. receives TASK_STARTING, TASK_RUNNING and TASK_FINISHED for the first and TASK_RUNNING for the
   second, each with a uuid and the agent id, acknowledging them implicitly;
4. reconciles implicitly (the running task comes back with REASON_RECONCILIATION) and explicitly
   (the finished, acknowledged task is unknown: TASK_LOST);
5. kills `pymesos-long` (TASK_KILLED) and tears down; the master lists the framework as removed.

Every wait is bounded; the script exits non-zero with a message on the first failed check.
"""

import json
import logging
import sys
import threading
import time
import urllib.request

from pymesos import MesosSchedulerDriver, Scheduler

WAIT_SECS = 30.0


def fail(message):
    print("FAIL: " + message, file=sys.stderr)
    sys.exit(1)


def check(condition, message):
    if not condition:
        fail(message)


class Tasks(Scheduler):
    def __init__(self):
        self.framework_id = None
        self.first_offer = None
        self.launched = False
        self.updates = []
        self.errors = []
        self.changed = threading.Condition()

    def _notify(self):
        with self.changed:
            self.changed.notify_all()

    def registered(self, driver, framework_id, master_info):
        self.framework_id = framework_id["value"]
        self._notify()

    def resourceOffers(self, driver, offers):
        for offer in offers:
            if self.launched:
                driver.declineOffer(offer["id"], filters={"refuse_seconds": 3600})
                continue
            self.launched = True
            self.first_offer = offer
            tasks = [self.task(offer, name) for name in ("pymesos-finish", "pymesos-long")]
            driver.launchTasks(offer["id"], tasks, filters={"refuse_seconds": 3600})
        self._notify()

    @staticmethod
    def task(offer, name):
        return {
            "name": name,
            "task_id": {"value": name},
            "agent_id": offer["agent_id"],
            "command": {"shell": True, "value": "true"},
            "resources": [
                {"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.5}, "role": "*"},
                {"name": "mem", "type": "SCALAR", "scalar": {"value": 64}, "role": "*"},
            ],
        }

    def statusUpdate(self, driver, update):
        self.updates.append(dict(update))
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
                    fail("timed out waiting for %s; updates: %r" % (what, self.updates))
                self.changed.wait(left)

    def seen(self, task, state, **fields):
        for update in self.updates:
            if update["task_id"]["value"] != task or update["state"] != state:
                continue
            if all(update.get(k) == v for k, v in fields.items()):
                return update
        return None


def operator(master, body):
    request = urllib.request.Request(
        "http://%s/api/v1" % master,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read().decode())


def check_legacy_offer(offer):
    check("allocation_info" not in offer, "no allocation_info on a legacy offer: %r" % offer)
    by_name = {}
    for resource in offer["resources"]:
        check(resource.get("role") == "*", "legacy role '*': %r" % resource)
        check("allocation_info" not in resource, "no allocation_info: %r" % resource)
        by_name.setdefault(resource["name"], []).append(resource)
    check(by_name["cpus"][0]["scalar"]["value"] == 4.0, "4 cpus offered: %r" % by_name["cpus"])
    check(by_name["mem"][0]["scalar"]["value"] == 4096.0, "4096 MB offered")
    check(by_name["ports"][0]["ranges"]["range"][0] == {"begin": 31000, "end": 32000}, "ports")
    disk = by_name["disk"][0]
    check(disk["disk"]["source"]["type"] == "RAW" and disk["disk"]["source"]["vendor"] == "mesoblk",
          "the RAW pool of the resource provider: %r" % disk)
    check("provider_id" in disk, "the pool names its provider")


def main():
    logging.basicConfig(level=logging.WARNING, format="pymesos: %(levelname)s %(name)s: %(message)s")
    if len(sys.argv) != 2:
        fail("usage: pymesos_tasks.py HOST:PORT")
    master = sys.argv[1]
    sched = Tasks()
    framework = {"user": "nobody", "name": "pymesos-tasks"}
    driver = MesosSchedulerDriver(sched, framework, master, use_addict=True)
    driver.start()
    sched.wait_for("registered", lambda: sched.framework_id is not None)
    sched.wait_for("an offer", lambda: sched.first_offer is not None)
    check_legacy_offer(sched.first_offer)
    print("ok: legacy offer")

    sched.wait_for("pymesos-finish to finish", lambda: sched.seen("pymesos-finish", "TASK_FINISHED"))
    sched.wait_for("pymesos-long to run", lambda: sched.seen("pymesos-long", "TASK_RUNNING"))
    for state in ("TASK_STARTING", "TASK_RUNNING", "TASK_FINISHED"):
        update = sched.seen("pymesos-finish", state)
        check(update is not None, "pymesos-finish went through %s" % state)
        check("uuid" in update and update["agent_id"] == sched.first_offer["agent_id"],
              "%s carries a uuid and the agent id: %r" % (state, update))
    print("ok: launch, TASK_RUNNING, TASK_FINISHED")

    count = len(sched.updates)
    driver.reconcileTasks([])
    sched.wait_for("implicit reconciliation", lambda: sched.seen(
        "pymesos-long", "TASK_RUNNING", reason="REASON_RECONCILIATION"))
    reconciled = sched.seen("pymesos-long", "TASK_RUNNING", reason="REASON_RECONCILIATION")
    check("uuid" not in reconciled, "reconciliation answers are not acknowledged")
    driver.reconcileTasks([{"task_id": {"value": "pymesos-finish"}}])
    sched.wait_for("explicit reconciliation", lambda: sched.seen(
        "pymesos-finish", "TASK_LOST", reason="REASON_RECONCILIATION"))
    check(len(sched.updates) > count, "reconciliation answered")
    print("ok: reconcile")

    driver.killTask({"value": "pymesos-long"})
    sched.wait_for("pymesos-long killed", lambda: sched.seen("pymesos-long", "TASK_KILLED"))
    print("ok: kill")

    framework_id = sched.framework_id
    driver.stop()
    thread = threading.Thread(target=driver.join, daemon=True)
    thread.start()
    thread.join(WAIT_SECS)
    check(not thread.is_alive(), "driver stopped in time")
    deadline = time.monotonic() + WAIT_SECS
    while True:
        answer = operator(master, {"type": "GET_FRAMEWORKS"})["get_frameworks"]
        completed = [f["framework_info"]["id"]["value"] for f in answer.get("completed_frameworks", [])]
        if framework_id in completed:
            break
        if time.monotonic() > deadline:
            fail("the framework was not removed")
        time.sleep(0.05)
    check(not sched.errors, "no error events: %r" % sched.errors)
    print("ok: offers, launch, updates, reconcile, kill, teardown (%s)" % framework_id)


if __name__ == "__main__":
    main()
