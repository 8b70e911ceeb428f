"""A custom executor on pymesos's MesosExecutorDriver, for agent/tests/executor_api_pymesos.rs.

Started by the agent's executor API from an ExecutorInfo. Each launched task reports
TASK_RUNNING; a task whose data is `finish` then reports TASK_FINISHED; one whose data is
`crash` makes the whole executor exit abruptly (status 3); one whose data is `device` checks its
BLOCK disk (the `device` label of its disk resource, which must also be $MESOBLK_BLOCK_DEVICE):
writes a random pattern at both ends with O_DIRECT, reads it back, and reports TASK_FINISHED
with the message `verified DEVICE SIZE` or TASK_FAILED with what went wrong. A kill reports
TASK_KILLED. A
framework message is answered with a framework message: `acks?` -> the JSON list of the
status-update uuids (hex) the agent acknowledged, `env?` -> the JSON of the MESOS_* and
MESOBLK_* environment, anything else -> `echo:` + the message. A shutdown writes the file
`shutdown` in the sandbox before pymesos ends the process group.
"""

import json
import logging
import mmap
import os
import sys

from pymesos import Executor, MesosExecutorDriver, decode_data, encode_data


class RecordingDriver(MesosExecutorDriver):
    """Remembers the uuid of every ACKNOWLEDGED event (pymesos itself keeps none)."""

    acked = []

    def on_acknowledged(self, event):
        self.acked.append(decode_data(event["uuid"]).hex())
        super().on_acknowledged(event)


PATTERN_BYTES = 1 << 20


def device_label(task):
    """The `device` label the agent put on the task's disk resource."""
    for resource in task.get("resources", []):
        labels = resource.get("disk", {}).get("source", {}).get("metadata", {}).get("labels", [])
        for label in labels:
            if label.get("key") == "device":
                return label["value"]
    raise ValueError("no disk resource with a device label: %s" % json.dumps(task["resources"]))


def verify_device(task):
    """Writes a random pattern at both ends of the task's device, bypassing the page cache, and
    reads it back; returns `verified DEVICE SIZE`."""
    device = device_label(task)
    if os.environ.get("MESOBLK_BLOCK_DEVICE") != device:
        raise ValueError("MESOBLK_BLOCK_DEVICE is %r, the label says %r"
                         % (os.environ.get("MESOBLK_BLOCK_DEVICE"), device))
    fd = os.open(device, os.O_RDWR | os.O_DIRECT)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        # O_DIRECT wants aligned buffers: anonymous maps are page-aligned.
        out, back = mmap.mmap(-1, PATTERN_BYTES), mmap.mmap(-1, PATTERN_BYTES)
        for offset in (0, size - PATTERN_BYTES):
            out[:] = os.urandom(PATTERN_BYTES)
            if os.pwrite(fd, out, offset) != PATTERN_BYTES:
                raise ValueError("short write at %d" % offset)
            os.fsync(fd)
            if os.preadv(fd, [back], offset) != PATTERN_BYTES or back[:] != out[:]:
                raise ValueError("the pattern at %d did not read back" % offset)
    finally:
        os.close(fd)
    return "verified %s %d" % (device, size)


class TestExecutor(Executor):
    def launchTask(self, driver, task):
        task_id = task["task_id"]
        data = decode_data(task.get("data", ""))
        driver.sendStatusUpdate(dict(task_id=task_id, state="TASK_RUNNING"))
        if data == b"finish":
            driver.sendStatusUpdate(dict(task_id=task_id, state="TASK_FINISHED"))
        elif data == b"crash":
            logging.error("crashing on purpose")
            os._exit(3)
        elif data == b"device":
            try:
                state, message = "TASK_FINISHED", verify_device(task)
            except (OSError, ValueError) as e:
                state, message = "TASK_FAILED", str(e)
            driver.sendStatusUpdate(dict(task_id=task_id, state=state, message=message))

    def killTask(self, driver, task_id):
        driver.sendStatusUpdate(dict(task_id=task_id, state="TASK_KILLED"))

    def frameworkMessage(self, driver, data):
        message = decode_data(data)
        if message == b"acks?":
            reply = json.dumps(driver.acked).encode()
        elif message == b"env?":
            env = {k: v for k, v in os.environ.items() if k.startswith(("MESOS_", "MESOBLK_"))}
            reply = json.dumps(env).encode()
        else:
            reply = b"echo:" + message
        driver.sendFrameworkMessage(encode_data(reply))

    def shutdown(self, driver):
        with open(os.path.join(os.environ["MESOS_SANDBOX"], "shutdown"), "w") as f:
            f.write("shutdown\n")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    driver = RecordingDriver(TestExecutor(), use_addict=True)
    driver.run()
