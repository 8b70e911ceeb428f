"""A pymesos 0.3.15 scheduler driven line by line by a Rust test (agent/tests/cluster_*.rs).

Usage: scheduler.py HOST:PORT USER

Reads one JSON command per line on stdin and writes one JSON event per line on stdout:

- {"cmd": "launch", "tasks": [TASK, ...]} launches the tasks on the next unused offer (that
  holds every volume the tasks use; offers without them are declined) and
  answers {"event": "launched", "agent_id": ..}. A TASK is {"id", "command", "cpus", "mem"}
  plus optional "data" (the task's data, text), "executor": true (a custom executor whose
  command is "command"), "disk": {"mb", "profile", "mount"} (a slice of the RAW pool of that profile; "mount" makes it a MOUNT disk at that container path)
  or "volume": RESOURCE (a disk resource from an offer, used as is).
- {"cmd": "offer"} answers {"event": "offer", "resources": [...]} with the next unused offer,
  which is then declined.
- {"cmd": "accept", "operations": [OPERATION, ...]} applies offer operations to the next unused
  offer (holding every disk a DESTROY_DISK names). An OPERATION is {"create_disk": {"mb", "profile", "type"}} or {"destroy_disk": RESOURCE}.
- {"cmd": "kill", "id": ID} kills a task.
- {"cmd": "message", "executor_id": ID, "agent_id": ID, "data": TEXT} sends a framework message;
  executors' messages come back as {"event": "message", "executor_id", "agent_id", "data"}.
- {"cmd": "stop"} stops the driver and exits.

Every status update becomes {"event": "update", "task_id", "state", "message", "reason",
"agent_id"}; every operation update {"event": "operation", ...}. Acknowledgements are implicit.
"""

import json
import logging
import sys
import threading
import time

from pymesos import MesosSchedulerDriver, Scheduler, decode_data, encode_data

WAIT_SECS = 60.0
out_lock = threading.Lock()


def emit(event):
    with out_lock:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()


class Driven(Scheduler):
    def __init__(self):
        self.offers = []
        self.changed = threading.Condition()

    def resourceOffers(self, driver, offers):
        with self.changed:
            self.offers.extend(offers)
            self.changed.notify_all()

    def offerRescinded(self, driver, offer_id):
        with self.changed:
            self.offers = [o for o in self.offers if o["id"]["value"] != offer_id["value"]]

    def statusUpdate(self, driver, update):
        emit({
            "event": "update",
            "task_id": update["task_id"]["value"],
            "state": update["state"],
            "message": update.get("message", ""),
            "reason": update.get("reason", ""),
            "agent_id": update.get("agent_id", {}).get("value", ""),
            "source": update.get("source", ""),
        })

    def frameworkMessage(self, driver, executor_id, agent_id, data):
        emit({"event": "message", "executor_id": executor_id["value"],
              "agent_id": agent_id["value"], "data": decode_data(data).decode()})

    def error(self, driver, message):
        emit({"event": "error", "message": message})

    def next_offer(self, driver, wanted=None):
        """The next unused offer holding every disk id in `wanted`; others are declined."""
        deadline = time.monotonic() + WAIT_SECS
        with self.changed:
            while True:
                while self.offers:
                    offer = self.offers.pop(0)
                    if all(disk_id in disk_ids(offer) for disk_id in wanted or ()):
                        return offer
                    driver.declineOffer(offer["id"], filters={"refuse_seconds": 0})
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.changed.wait(left)


def disk_ids(offer):
    return {r.get("disk", {}).get("source", {}).get("id") for r in offer["resources"]} - {None}


def scalar(name, value):
    return {"name": name, "type": "SCALAR", "scalar": {"value": value}, "role": "*"}


def raw_disk(offer, profile, mb):
    for resource in offer["resources"]:
        source = resource.get("disk", {}).get("source", {})
        if resource["name"] == "disk" and source.get("type") == "RAW" and source.get("profile") == profile:
            disk = json.loads(json.dumps(resource))
            disk["scalar"] = {"value": mb}
            return disk
    # Not offered: ask anyway (the master or the agent refuses it).
    return {"name": "disk", "type": "SCALAR", "scalar": {"value": mb}, "role": "*",
            "disk": {"source": {"type": "RAW", "vendor": "mesoblk", "profile": profile}}}


def task_info(offer, spec):
    resources = [scalar("cpus", spec.get("cpus", 0.1)), scalar("mem", spec.get("mem", 32))]
    if "disk" in spec:
        disk = raw_disk(offer, spec["disk"]["profile"], spec["disk"]["mb"])
        if spec["disk"].get("mount"):
            disk.setdefault("disk", {})["volume"] = {
                "mode": "RW", "container_path": spec["disk"]["mount"]}
        resources.append(disk)
    if "volume" in spec:
        resources.append(spec["volume"])
    task = {
        "name": spec["id"],
        "task_id": {"value": spec["id"]},
        "agent_id": offer["agent_id"],
        "resources": resources,
    }
    command = {"shell": True, "value": spec["command"]}
    if "data" in spec:
        task["data"] = encode_data(spec["data"].encode())
    if spec.get("executor"):
        task["executor"] = {"executor_id": {"value": "custom-" + spec["id"]}, "command": command}
    else:
        task["command"] = command
    return task


def operation(offer, spec):
    if "create_disk" in spec:
        c = spec["create_disk"]
        return {"type": "CREATE_DISK", "create_disk": {
            "source": raw_disk(offer, c["profile"], c["mb"]), "target_type": c.get("type", "MOUNT")}}
    return {"type": "DESTROY_DISK", "destroy_disk": {"source": spec["destroy_disk"]}}


def main():
    logging.basicConfig(level=logging.WARNING, format="pymesos: %(levelname)s %(name)s: %(message)s")
    master, user = sys.argv[1], sys.argv[2]
    sched = Driven()
    framework = {"user": user, "name": "agent-tests", "checkpoint": True}
    driver = MesosSchedulerDriver(sched, framework, master, use_addict=True)
    driver.start()
    for line in sys.stdin:
        command = json.loads(line)
        cmd = command["cmd"]
        if cmd == "stop":
            break
        if cmd == "kill":
            driver.killTask({"value": command["id"]})
            continue
        if cmd == "message":
            driver.sendFrameworkMessage({"value": command["executor_id"]},
                                        {"value": command["agent_id"]},
                                        encode_data(command["data"].encode()))
            continue
        wanted = [spec["volume"]["disk"]["source"]["id"]
                  for spec in command.get("tasks", []) if "volume" in spec]
        wanted += [op["destroy_disk"]["disk"]["source"]["id"]
                   for op in command.get("operations", []) if "destroy_disk" in op]
        offer = sched.next_offer(driver, wanted)
        if offer is None:
            emit({"event": "error", "message": "no offer within %ss" % WAIT_SECS})
            continue
        if cmd == "launch":
            tasks = [task_info(offer, spec) for spec in command["tasks"]]
            driver.launchTasks(offer["id"], tasks, filters={"refuse_seconds": 0})
            emit({"event": "launched", "agent_id": offer["agent_id"]["value"]})
        elif cmd == "offer":
            emit({"event": "offer", "agent_id": offer["agent_id"]["value"],
                  "resources": json.loads(json.dumps(offer["resources"]))})
            driver.declineOffer(offer["id"], filters={"refuse_seconds": 0})
        elif cmd == "accept":
            operations = [operation(offer, spec) for spec in command["operations"]]
            driver.acceptOffers([offer["id"]], operations, filters={"refuse_seconds": 0})
            emit({"event": "accepted"})
    driver.stop()
    thread = threading.Thread(target=driver.join, daemon=True)
    thread.start()
    thread.join(10)


if __name__ == "__main__":
    main()
