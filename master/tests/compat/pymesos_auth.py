"""pymesos 0.3.15, unmodified, with HTTP Basic authentication against mesoblk-master.

Usage: pymesos_auth.py HOST:PORT PRINCIPAL SECRET OPERATOR_PRINCIPAL OPERATOR_SECRET

The master runs with --authenticate_http_frameworks and --authenticate_http_readwrite.

1. authenticated subscription: MesosSchedulerDriver(..., principal=, secret=) registers; the
   operator API (with the operator's credentials) lists the framework with the authenticated
   principal filled in; the operator API without credentials answers 401; stop() sends an
   authenticated TEARDOWN and the framework is removed.
2. wrong secret: the master answers the SUBSCRIBE with 401, which pymesos raises (as a
   RuntimeError delivered to the main thread).
3. principal mismatch: FrameworkInfo.principal differs from the authenticated principal; the
   master answers 400, which pymesos raises the same way.

Every wait is bounded; the script exits non-zero with a message on the first failed check.
"""

import base64
import json
import logging
import sys
import threading
import time
import urllib.error
import urllib.request

from pymesos import MesosSchedulerDriver, Scheduler

WAIT_SECS = 20.0


def fail(message):
    print("FAIL: " + message, file=sys.stderr)
    sys.exit(1)


def check(condition, message):
    if not condition:
        fail(message)


class Recorder(Scheduler):
    def __init__(self):
        self.framework_id = None
        self.errors = []
        self.changed = threading.Condition()

    def registered(self, driver, framework_id, master_info):
        with self.changed:
            self.framework_id = framework_id["value"]
            self.changed.notify_all()

    def error(self, driver, message):
        with self.changed:
            self.errors.append(message)
            self.changed.notify_all()


def operator(master, body, credentials):
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if credentials is not None:
        token = base64.b64encode(("%s:%s" % credentials).encode()).decode()
        headers["Authorization"] = "Basic " + token
    request = urllib.request.Request(
        "http://%s/api/v1" % master, data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read().decode())
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def frameworks(master, credentials):
    status, answer = operator(master, {"type": "GET_FRAMEWORKS"}, credentials)
    check(status == 200, "GET_FRAMEWORKS with credentials: %r %r" % (status, answer))
    answer = answer["get_frameworks"]
    return answer.get("frameworks", []), answer.get("completed_frameworks", [])


def join(driver):
    thread = threading.Thread(target=driver.join, daemon=True)
    thread.start()
    thread.join(WAIT_SECS)
    check(not thread.is_alive(), "driver stopped in time")


def authenticated_subscription(master, principal, secret, ops):
    sched = Recorder()
    framework = {"user": "nobody", "name": "pymesos-auth"}
    driver = MesosSchedulerDriver(sched, framework, master, use_addict=True,
                                  principal=principal, secret=secret)
    driver.start()
    deadline = time.monotonic() + WAIT_SECS
    with sched.changed:
        while sched.framework_id is None:
            left = deadline - time.monotonic()
            if left <= 0:
                fail("timed out waiting for registered")
            sched.changed.wait(left)
    check(not sched.errors, "no error events: %r" % sched.errors)
    framework_id = sched.framework_id
    live, _ = frameworks(master, ops)
    mine = [f for f in live if f["framework_info"]["id"]["value"] == framework_id]
    check(len(mine) == 1, "the master lists the framework: %r" % live)
    check(mine[0]["framework_info"].get("principal") == principal,
          "the principal was filled in: %r" % mine[0]["framework_info"])
    status, _ = operator(master, {"type": "GET_HEALTH"}, None)
    check(status == 401, "the operator API without credentials answers 401, not %r" % status)
    status, _ = operator(master, {"type": "GET_HEALTH"}, (ops[0], "wrong"))
    check(status == 401, "the operator API with a wrong secret answers 401, not %r" % status)
    driver.stop()  # an authenticated TEARDOWN
    join(driver)
    deadline = time.monotonic() + WAIT_SECS
    while True:
        _, completed = frameworks(master, ops)
        if any(f["framework_info"]["id"]["value"] == framework_id for f in completed):
            break
        if time.monotonic() > deadline:
            fail("timed out waiting for the framework to be removed")
        time.sleep(0.05)
    print("ok: authenticated subscription (%s as %s)" % (framework_id, principal))


def refused(master, framework, principal, secret):
    """Starts a driver the master refuses; returns the error pymesos raised."""
    sched = Recorder()
    driver = MesosSchedulerDriver(sched, framework, master, use_addict=True,
                                  principal=principal, secret=secret)
    raised = None
    driver.start()
    try:
        deadline = time.monotonic() + WAIT_SECS
        while time.monotonic() < deadline and sched.framework_id is None:
            time.sleep(0.05)
    except RuntimeError as error:  # re-raised in the main thread by pymesos's SIGINT handler
        raised = str(error)
    driver.stop()
    join(driver)
    check(sched.framework_id is None, "the refused driver never registered")
    check(raised is not None, "pymesos raised the refusal")
    return raised


def main():
    logging.basicConfig(level=logging.CRITICAL)
    if len(sys.argv) != 6:
        fail("usage: pymesos_auth.py HOST:PORT PRINCIPAL SECRET OPS_PRINCIPAL OPS_SECRET")
    master, principal, secret, ops_principal, ops_secret = sys.argv[1:]
    ops = (ops_principal, ops_secret)
    authenticated_subscription(master, principal, secret, ops)

    error = refused(master, {"user": "nobody", "name": "pymesos-wrong-secret"},
                    principal, secret + "-wrong")
    check("401" in error, "a wrong secret gets 401: %r" % error)
    print("ok: wrong secret refused with 401")

    error = refused(master, {"user": "nobody", "name": "pymesos-mismatch",
                             "principal": "mallory"}, principal, secret)
    check("400" in error and "does not match principal" in error,
          "a principal mismatch gets 400: %r" % error)
    print("ok: principal mismatch refused with 400")


if __name__ == "__main__":
    main()
