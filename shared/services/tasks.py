"""Job tasks handed to the agent on a cluster's driver node: the control plane decides, the
node executes.

A run's planner (shared/domain/jobs.py) says "submit this attempt to cluster C" and "cancel
it"; this service keeps one `task` document per attempt (pk = cluster id, id = the attempt's
key) and the driver node's agent (shared/agent_tasks.py), holding only its cluster's agent
token, does the rest through the agent routes (functions/agent_api.py):

    GET  /api/sparkplane/agent/tasks               the cluster's unfinished tasks
    GET  /api/sparkplane/agent/tasks/{key}/file    the task's file (read-only, its workspace)
    POST /api/sparkplane/agent/tasks/{key}/status  the claim (RUNNING), progress, the end

States: PENDING (written by `submit`) -> RUNNING (the agent's claim, accepted only from
PENDING, so a task starts once) -> SUCCEEDED | FAILED | CANCELED | LOST (the agent's report).
Cancelling a PENDING task ends it CANCELED at once (nothing ran); a RUNNING one gets
`cancel_requested`, which the agent turns into SIGTERM, then SIGKILL, of the task's process
group. To the runs, a task that is not finished while its cluster is gone is LOST.

A task's document goes once the run has recorded its end (logs, exit code) in its own
document; a sliding TTL (TASK_TTL_S from the last write) removes what a crash left behind.
"""

from __future__ import annotations

import base64
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.domain.cluster import validation_message
from shared.domain.tasks import SubmissionStatus
from shared.errors import InvalidParameterValue, InvalidState, ResourceDoesNotExist
from shared.ports import AlreadyExists, Clock, NotFound, Record, Store
from shared.services.auth import Principal
from shared.services.documents import each, retry_on_conflict

log = logging.getLogger("sparkplane.tasks")

TASK = "task"
TASK_TTL_S = 7 * 86400
FINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELED", "LOST"})
# What the agent reports of a task's output (the tails it keeps are this long).
MAX_TAIL = 64 * 1024


class Report(BaseModel):
    """The body of an agent's status post."""

    model_config = ConfigDict(extra="forbid")
    state: str = Field(pattern="^(RUNNING|SUCCEEDED|FAILED|CANCELED|LOST)$")
    exit_code: int | None = None
    stdout_tail: str = Field(default="", max_length=MAX_TAIL)
    stderr_tail: str = Field(default="", max_length=MAX_TAIL)
    started_ms: int = 0
    ended_ms: int | None = None


class TaskService:
    def __init__(self, store: Store, clock: Clock, read_file: Callable[[str, str], bytes]) -> None:
        self.store = store
        self.clock = clock
        # (workspace id, python_file) -> the file's bytes (the workspace's own files only).
        self.read_file = read_file

    # ------------------------------------------------------------------ the runs' side

    def submit(
        self,
        key: str,
        *,
        cluster_id: str,
        workspace_id: str,
        python_file: str,
        parameters: Sequence[str],
        env: Mapping[str, str],
    ) -> None:
        """Hand the task to the cluster's agent, once per key."""
        body = {
            "key": key,
            "cluster_id": cluster_id,
            "workspace_id": workspace_id,
            "python_file": python_file,
            "parameters": list(parameters),
            "env": dict(env),
            "state": "PENDING",
            "cancel_requested": False,
            "created_ms": self.clock.now_ms(),
        }
        try:
            self.store.create(TASK, cluster_id, key, body, ttl_s=TASK_TTL_S)
        except AlreadyExists:
            return  # a replayed advance: handed over already
        log.info("task assigned", extra={"key": key, "cluster_id": cluster_id})

    def status(self, cluster_id: str, key: str, *, cluster_gone: bool) -> SubmissionStatus | None:
        rec = self.store.get(TASK, cluster_id, key)
        if rec is None:
            return None
        b = rec.body
        state = b["state"]
        if state not in FINAL and cluster_gone:
            state = "LOST"
        return SubmissionStatus(
            state=state,
            exit_code=b.get("exit_code"),
            stdout_tail=b.get("stdout_tail", ""),
            stderr_tail=b.get("stderr_tail", ""),
            started_ms=int(b.get("started_ms") or 0),
            ended_ms=b.get("ended_ms"),
        )

    def cancel(self, cluster_id: str, key: str) -> None:
        def change(b: dict[str, Any]) -> bool:
            if b["state"] == "PENDING":
                b.update(state="CANCELED", ended_ms=self.clock.now_ms())
                return True
            if b["state"] == "RUNNING" and not b.get("cancel_requested"):
                b["cancel_requested"] = True
                return True
            return False

        self._update(cluster_id, key, change)

    def forget(self, cluster_id: str, key: str) -> None:
        """The run has recorded the task's end: its document goes."""
        with contextlib.suppress(NotFound):
            self.store.delete(TASK, cluster_id, key)

    # ------------------------------------------------------------------ the agent's side

    def assigned(self, p: Principal) -> dict[str, Any]:
        """The unfinished tasks of the agent's cluster, oldest first."""
        out = [
            _wire(r.body)
            for r in each(self.store, TASK, p.scope, page_size=100)
            if r.body["state"] not in FINAL
        ]
        out.sort(key=lambda t: (t["created_ms"], t["key"]))
        return {"tasks": out}

    def file(self, p: Principal, key: str) -> dict[str, Any]:
        """The task's file, from the task's own workspace: only while the task is the agent's
        to start or run."""
        b = self._body(p, key)
        if b["state"] not in ("PENDING", "RUNNING"):
            raise InvalidState(f"Task {key} is {b['state']}.")
        data = self.read_file(b["workspace_id"], b["python_file"])
        return {"python_file": b["python_file"], "contents": base64.b64encode(data).decode()}

    def report(self, p: Principal, key: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """An agent's claim (RUNNING from PENDING), progress (RUNNING) or end. Answers whether
        a cancel was asked for; a claim of a task that is no longer PENDING is INVALID_STATE
        (it must not start)."""
        try:
            r = Report.model_validate(body)
        except ValidationError as e:
            raise InvalidParameterValue(f"Invalid report: {validation_message(e)}") from None
        self._body(p, key)  # 404 for another cluster's task
        refused: list[str] = []

        def change(b: dict[str, Any]) -> bool:
            state = b["state"]
            if state in FINAL:
                if r.state == "RUNNING":
                    refused.append(state)
                return False
            if r.state == "RUNNING" and state == "PENDING":
                b["started_ms"] = r.started_ms or self.clock.now_ms()
            b.update(
                state=r.state,
                exit_code=r.exit_code,
                stdout_tail=r.stdout_tail,
                stderr_tail=r.stderr_tail,
            )
            if r.state in FINAL:
                b["ended_ms"] = r.ended_ms or self.clock.now_ms()
            return True

        after = self._update(p.scope, key, change)
        if refused:
            raise InvalidState(f"Task {key} is {refused[0]}: it must not run.")
        return {"cancel_requested": bool(after and after.get("cancel_requested"))}

    # ------------------------------------------------------------------ documents

    def _body(self, p: Principal, key: str) -> dict[str, Any]:
        if p.role != "agent" or not p.scope:
            raise InvalidParameterValue("Only a cluster agent has tasks.")
        rec = self.store.get(TASK, p.scope, key)
        if rec is None:
            raise ResourceDoesNotExist(f"Task {key} does not exist on this cluster.")
        return rec.body

    def _update(
        self, cluster_id: str, key: str, change: Callable[[dict[str, Any]], bool]
    ) -> dict[str, Any] | None:
        """Apply `change` to the document with an ETag check (again on a conflict); None when
        there is no document."""

        def step() -> dict[str, Any] | None:  # the agent and the runs writing at once
            rec: Record | None = self.store.get(TASK, cluster_id, key)
            if rec is None:
                return None
            body = dict(rec.body)
            if not change(body):
                return body
            self.store.replace(TASK, cluster_id, key, body, etag=rec.etag)
            return body

        try:
            return retry_on_conflict(step, f"task {key}")
        except NotFound:
            return None  # expired meanwhile


def _wire(b: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: b.get(k)
        for k in (
            "key",
            "python_file",
            "parameters",
            "env",
            "state",
            "cancel_requested",
            "created_ms",
        )
    }
