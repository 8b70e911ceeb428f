"""A custom executor on pymesos's MesosExecutorDriver, for agent/tests/executor_api_pymesos.rs.

Started by the agent's executor API from an ExecutorInfo. Each launched task reports
TASK_RUNNING; a task whose data is `finish` then reports TASK_FINISHED; one whose data is
`crash` makes the whole executor exit abruptly (status 3). A kill reports TASK_KILLED. A
framework message is answered with a framework message: `acks?` -> the JSON list of the
status-update uuids (hex) the agent acknowledged, `env?` -> the JSON of the MESOS_* and
MESOBLK_* environment, anything else -> `echo:` + the message. A shutdown writes the file
`shutdown` in the sandbox before pymesos ends the process group.
"""

import json
import logging
import os
import sys

from pymesos import Executor, MesosExecutorDriver, decode_data, encode_data


class RecordingDriver(MesosExecutorDriver):
    """Remembers the uuid of every ACKNOWLEDGED event (pymesos itself keeps none)."""

    acked = []

    def on_acknowledged(self, event):
        self.acked.append(decode_data(event["uuid"]).hex())
        super().on_acknowledged(event)


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
