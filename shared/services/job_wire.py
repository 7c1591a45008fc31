"""The Jobs API's wire shapes: request fields read (ids, lists, idempotency tokens) and
Databricks' Job, BaseJob, Run and RunTask written from the documents. No store access here."""

from __future__ import annotations

from typing import Any

from shared.domain import jobs as dom
from shared.domain.jobs import LifeCycle as L
from shared.domain.jobs import Result as R
from shared.domain.wire import integer
from shared.errors import InvalidParameterValue

# Request fields that are not job settings.
REQUEST_ONLY = ("access_control_list", "idempotency_token")


def int_id(value: Any, name: str) -> int:
    if value is None or value == "":
        raise InvalidParameterValue(f"Missing required field: {name}")
    return integer(value, name, lo=1)


def str_list(value: Any, name: str) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidParameterValue(f"{name} must be a list of strings.")
    return list(value)


def token(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        raise InvalidParameterValue("idempotency_token must be a string of 1..64 characters.")
    return value


def page_answer(key: str, items: list[dict[str, Any]], next_token: str | None) -> dict[str, Any]:
    """A list page as the SDK reads it: the last page leaves next_page_token out."""
    out: dict[str, Any] = {key: items, "has_more": next_token is not None}
    if next_token is not None:
        out["next_page_token"] = next_token
    return out


_V2 = {
    L.QUEUED: "QUEUED",
    L.PENDING: "PENDING",
    L.RUNNING: "RUNNING",
    L.TERMINATING: "TERMINATING",
    L.TERMINATED: "TERMINATED",
    L.SKIPPED: "TERMINATED",
    L.INTERNAL_ERROR: "TERMINATED",
    L.BLOCKED: "BLOCKED",
    L.WAITING_FOR_RETRY: "WAITING",
}
_CODE_TYPE = {
    "SUCCESS": "SUCCESS",
    "SUCCESS_WITH_FAILURES": "SUCCESS",
    "USER_CANCELED": "SUCCESS",
    "CANCELED": "SUCCESS",
    "SKIPPED": "SUCCESS",
    "CLUSTER_ERROR": "CLOUD_FAILURE",
    "INTERNAL_ERROR": "INTERNAL_ERROR",
}


def _state(
    life: L, result: R | None, message: str, user: bool, queue_reason: str | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "life_cycle_state": life.value,
        "state_message": message,
        "user_cancelled_or_timedout": user,
    }
    if result is not None:
        out["result_state"] = result.value
    if queue_reason:
        out["queue_reason"] = queue_reason
    return out


def _status(life: L, code: str | None, message: str, queue_reason: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"state": _V2[life]}
    if life in dom.FINAL and code:
        out["termination_details"] = {
            "code": code,
            "type": _CODE_TYPE.get(code, "CLIENT_ERROR"),
            "message": message,
        }
    if queue_reason:
        out["queue_details"] = {"code": "MAX_CONCURRENT_RUNS_REACHED", "message": queue_reason}
    return out


def _durations(
    start: int, setup: int | None, exec_start: int | None, exec_end: int | None, end: int | None
) -> dict[str, int]:
    out: dict[str, int] = {}
    if setup is not None:
        out["queue_duration"] = max(0, setup - start)
    if setup is not None and exec_start is not None:
        out["setup_duration"] = max(0, exec_start - setup)
    if exec_start is not None and exec_end is not None:
        out["execution_duration"] = max(0, exec_end - exec_start)
    if exec_end is not None and end is not None:
        out["cleanup_duration"] = max(0, end - exec_end)
    if end is not None:
        out["end_time"] = end
        out["run_duration"] = max(0, end - start)
    return out


def _run_durations(run: dom.Run) -> dict[str, int]:
    """A run's durations as Databricks gives those of a multitask run: its queue time and its
    whole duration; `setup_duration`, `execution_duration` and `cleanup_duration` are 0 (each
    task run has its own)."""
    out = _durations(run.start_time, run.setup_start, None, None, run.end_time)
    out.update(setup_duration=0, execution_duration=0, cleanup_duration=0)
    return out


def task_start(a: dom.Attempt) -> int:
    """When a task run started: when it could start (its run admitted, its upstream tasks
    done, its retry interval over), else when it was created."""
    return a.pending_since if a.pending_since is not None else a.created


def _task_durations(a: dom.Attempt) -> dict[str, int]:
    """A task run's durations from its start (no queue of its own): `setup_duration` is the
    wait for its cluster until the task is handed to the driver node."""
    start = task_start(a)
    out = _durations(start, start, a.exec_start, a.exec_end, a.exec_end if a.final else None)
    out.pop("queue_duration", None)
    return out


def _cluster_instance(a: dom.Attempt) -> dict[str, Any]:
    ci: dict[str, Any] = {"cluster_id": a.cluster_id}
    if a.spark_context_id is not None:
        ci["spark_context_id"] = str(a.spark_context_id)
    return ci


def job(j: dom.Job, *, with_tasks: bool = True) -> dict[str, Any]:
    return {
        "job_id": j.job_id,
        "creator_user_name": j.creator_user_name,
        "run_as_user_name": j.creator_user_name,
        "created_time": j.created_time,
        "settings": j.settings.wire(with_tasks=with_tasks),
    }


class RunWire:
    """Runs and task runs as the API answers them (their page URLs under `base_url`)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def _page_url(self, run: dom.Run, run_id: int) -> str:
        return f"{self.base_url}/#job/{run.shown_job_id}/run/{run_id}"

    def run(self, run: dom.Run, *, with_tasks: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "run_id": run.run_id,
            "job_run_id": run.run_id,
            "number_in_job": run.run_id,
            "original_attempt_run_id": run.run_id,
            "attempt_number": 0,
            "creator_user_name": run.creator_user_name,
            "run_name": run.run_name,
            "run_type": run.run_type,
            "trigger": run.trigger,
            "format": "MULTI_TASK",
            "state": _state(
                run.state, run.result, run.message, run.user_cancelled_or_timedout, run.queue_reason
            ),
            "status": _status(run.state, run.code, run.message, run.queue_reason),
            "start_time": run.start_time,
            **_run_durations(run),
        }
        out["job_id"] = run.shown_job_id
        out["run_page_url"] = self._page_url(run, run.run_id)
        if run.schedule is not None:
            out["schedule"] = run.schedule.model_dump(mode="json", exclude_none=True)
        if run.python_params is not None:
            out["overriding_parameters"] = {"python_params": run.python_params}
        if run.settings.parameters:
            out["job_parameters"] = [
                {
                    "name": jp.name,
                    "default": jp.default,
                    "value": run.job_parameters.get(jp.name, jp.default),
                }
                for jp in run.settings.parameters
            ]
        if with_tasks:
            out["tasks"] = [self.task(run, a) for a in run.tasks]
            out["job_clusters"] = [
                jc.model_dump(mode="json", exclude_none=True) for jc in run.settings.job_clusters
            ]
        latest = run.latest()
        if len(run.settings.tasks) == 1 and latest:
            only = next(iter(latest.values()))
            if only.cluster_id:
                out["cluster_instance"] = _cluster_instance(only)
            t = run.task(only.task_key)
            spec = {
                k: v
                for k, v in (
                    ("existing_cluster_id", t.existing_cluster_id),
                    ("new_cluster", t.new_cluster),
                    ("job_cluster_key", t.job_cluster_key),
                )
                if v is not None
            }
            out["cluster_spec"] = spec
        return out

    def task(self, run: dom.Run, a: dom.Attempt) -> dict[str, Any]:
        t = run.task(a.task_key)
        out = t.model_dump(mode="json", exclude_none=True)
        out.update(
            {
                "run_id": a.run_id,
                "attempt_number": a.attempt_number,
                "state": _state(a.state, a.result, a.message, a.user_cancelled_or_timedout),
                "status": _status(a.state, a.code, a.message, None),
                "start_time": task_start(a),
                **_task_durations(a),
                "run_page_url": self._page_url(run, a.run_id),
            }
        )
        if a.cluster_id:
            out["cluster_instance"] = _cluster_instance(a)
        return out

    def task_run(self, run: dom.Run, a: dom.Attempt) -> dict[str, Any]:
        """runs/get of a task run id: a Run describing that one task run."""
        first = next(x for x in run.tasks if x.task_key == a.task_key)
        out = self.run(run, with_tasks=False)
        out.update(
            {
                "run_id": a.run_id,
                "job_run_id": run.run_id,
                "original_attempt_run_id": first.run_id,
                "attempt_number": a.attempt_number,
                "run_name": a.task_key,
                "state": _state(a.state, a.result, a.message, a.user_cancelled_or_timedout),
                "status": _status(a.state, a.code, a.message, None),
                "start_time": task_start(a),
                "tasks": [self.task(run, a)],
            }
        )
        for k in ("end_time", "run_duration", "setup_duration", "execution_duration"):
            out.pop(k, None)
        out.update(_task_durations(a))
        out.pop("queue_duration", None)
        if a.cluster_id:
            out["cluster_instance"] = _cluster_instance(a)
        return out
