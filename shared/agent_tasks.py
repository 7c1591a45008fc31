"""The driver agent's job tasks: claim, fetch, run, report, cancel (the node's side of
shared/services/tasks.py).

Every SPARKPLANE_TASK_POLL_S (default 1 s; SPARKPLANE_TASK_IDLE_POLL_S, default 5 s, after a
minute without tasks) the agent lists its cluster's unfinished tasks, with its cluster's own
agent token, and for each:
- PENDING: claims it (reports RUNNING; INVALID_STATE means it was cancelled meanwhile: it is
  not started), fetches its file through the control plane and starts it with the TaskRunner:
  `python <file> <parameters...>` in a process group of its own, SPARK_REMOTE set to the
  cluster's Spark Connect server (SPARKPLANE_CONNECT_URL) so the program's SparkSession joins
  the cluster's one Spark application. A file that cannot be fetched ends the task FAILED
  with the control plane's error message.
- RUNNING, started by this node: reports a change (the end, or new output at most every
  REPORT_EVERY_S); `cancel_requested` becomes SIGTERM, then SIGKILL, of the process group.
- RUNNING, not started by this node (a driver that was replaced): LOST.
When the control plane answers 401 (the cluster ended and its agent tokens were revoked), the
agent stops, ending its tasks.

Settings (environment): SPARKPLANE_TASKS_DIR (where tasks run; unset: no tasks on this node),
SPARKPLANE_CONNECT_URL, SPARKPLANE_TASK_POLL_S, SPARKPLANE_TASK_IDLE_POLL_S,
SPARKPLANE_KILL_GRACE_S; the control-plane
URL, cluster id and token as for the heartbeats (shared/agent.py).
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from shared import agent_http
from shared.task_runner import TaskRunner, task_env

log = logging.getLogger("sparkplane.agent.tasks")

REPORT_EVERY_S = 2.0
# Polls come every SPARKPLANE_TASK_POLL_S while the cluster had a task (or its agent started)
# in this window, else every SPARKPLANE_TASK_IDLE_POLL_S: an idle cluster costs the control
# plane a request every few seconds, a busy one starts its next task within a second.
BUSY_WINDOW_S = 60.0


class Refused(Exception):
    """The control plane answered with an error body (its message is shown to the user)."""


class Revoked(Exception):
    """The control plane no longer knows the agent's token: its cluster is over."""


class TaskLoop:
    def __init__(self, cp: agent_http.Client, base_url: str, runner: TaskRunner, connect_url: str):
        self.cp = cp
        self.url = base_url.rstrip("/") + "/api/sparkplane/agent/tasks"
        self.runner = runner
        self.connect_url = connect_url
        # key -> (what was last reported, when)
        self._reported: dict[str, tuple[tuple[Any, ...], float]] = {}

    def _call(self, method: str, path: str = "", body: Mapping[str, Any] | None = None) -> Any:
        r = self.cp.request(method, self.url + path, json=body)
        if r.status_code == 401:
            raise Revoked(r.text)
        if r.status_code in (400, 403, 404, 409):
            try:
                raise Refused(r.json().get("message", r.text))
            except ValueError:
                raise Refused(r.text) from None
        r.raise_for_status()
        return r.json()

    def tick(self) -> int:
        """One poll; returns how many unfinished tasks the cluster has."""
        tasks = self._call("GET")["tasks"]
        for t in tasks:
            try:
                self._step(t)
            except Refused as e:
                log.info("task refused", extra={"key": t["key"], "error": str(e)[:200]})
        return len(tasks)

    def _step(self, t: Mapping[str, Any]) -> None:
        key = t["key"]
        if t["state"] == "PENDING" and not self.runner.known(key):
            self._start(t)
        elif not self.runner.known(key):
            self._report(key, {"state": "LOST", "stderr_tail": "The task's driver node is gone."})
            return
        st = self.runner.status(key)
        if st is None:
            return
        if t.get("cancel_requested") and st.state == "RUNNING":
            self.runner.cancel(key)
        seen = (st.state, st.exit_code, len(st.stdout_tail), len(st.stderr_tail))
        last = self._reported.get(key)
        now = time.monotonic()
        if last is not None and (
            last[0] == seen or (st.state == "RUNNING" and now - last[1] < REPORT_EVERY_S)
        ):
            return
        self._report(
            key,
            {
                "state": st.state,
                "exit_code": st.exit_code,
                "stdout_tail": st.stdout_tail,
                "stderr_tail": st.stderr_tail,
                "started_ms": st.started_ms,
                "ended_ms": st.ended_ms,
            },
        )
        self._reported[key] = (seen, now)
        if st.state != "RUNNING":
            self._reported.pop(key, None)

    def _start(self, t: Mapping[str, Any]) -> None:
        key = t["key"]
        self._report(key, {"state": "RUNNING", "started_ms": int(time.time() * 1000)})
        try:
            got = self._call("GET", f"/{key}/file")
            program = base64.b64decode(got["contents"])
        except Refused as e:
            # The file is missing or not the workspace's: the task fails with that message.
            self._report(key, {"state": "FAILED", "stderr_tail": f"{e}\n"})
            return
        env = {**t.get("env", {}), "PYTHONUNBUFFERED": "1"}
        if self.connect_url:
            env["SPARK_REMOTE"] = self.connect_url
        self.runner.submit(
            key,
            file_name=PurePosixPath(str(t["python_file"])).name or "main.py",
            program=program,
            argv=[str(a) for a in t.get("parameters", [])],
            env=task_env(os.environ, env),
        )

    def _report(self, key: str, body: Mapping[str, Any]) -> None:
        self._call("POST", f"/{key}/status", body)


def run(stop: threading.Event, cp: agent_http.Client, env: Mapping[str, str]) -> None:
    runner = TaskRunner(
        Path(env["SPARKPLANE_TASKS_DIR"]),
        kill_grace_s=float(env.get("SPARKPLANE_KILL_GRACE_S", "10")),
    )
    loop = TaskLoop(
        cp, env["SPARKPLANE_CONTROL_PLANE_URL"], runner, env.get("SPARKPLANE_CONNECT_URL", "")
    )
    busy_s = float(env.get("SPARKPLANE_TASK_POLL_S", "1"))
    idle_s = max(busy_s, float(env.get("SPARKPLANE_TASK_IDLE_POLL_S", "5")))
    last_busy = time.monotonic()  # a new driver gets its first task soon
    while not stop.is_set():
        period = busy_s
        try:
            if loop.tick():
                last_busy = time.monotonic()
            elif time.monotonic() - last_busy > BUSY_WINDOW_S:
                period = idle_s
        except Revoked:
            # The cluster ended (its tokens are revoked): this node's agent has nothing to do.
            log.info("agent token revoked: stopping")
            stop.set()
            break
        except agent_http.HTTPError as e:
            # The control plane is unreachable or busy: the tasks go on; try again next poll.
            log.warning("task poll failed", extra={"error": type(e).__name__})
        stop.wait(period)
    runner.stop_all(runner.kill_grace_s)
