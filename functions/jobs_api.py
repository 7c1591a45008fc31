"""Triggers of the Jobs API: HTTP (`/api/2.2/jobs/*`, the same bodies under 2.1), the timer
that fires due schedules, and the `job-runs` queue that advances runs (session = run id)."""

from __future__ import annotations

import logging
from typing import Any

import azure.functions as func

from functions.http import Handler, body_op, dispatch
from shared.domain.wire import integer
from shared.errors import InvalidParameterValue
from shared.services.auth import Principal
from shared.services.jobs import JobService
from shared.wiring import container

bp = func.Blueprint()
log = logging.getLogger("sparkplane.jobs")

VERSIONS = ("2.1", "2.2")


def _int(req: func.HttpRequest, name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = req.params.get(name)
    return default if raw is None or raw == "" else integer(raw, name, lo, hi)


def _bool(req: func.HttpRequest, name: str) -> bool:
    raw = (req.params.get(name) or "").lower()
    if raw in ("", "false"):
        return False
    if raw == "true":
        return True
    raise InvalidParameterValue(f"{name} must be true or false.")


def _list_jobs(s: JobService, p: Principal, r: func.HttpRequest) -> Any:
    return s.list(
        p,
        limit=_int(r, "limit", 20, 1, 100) or 20,
        offset=_int(r, "offset", 0, 0, 2**31) or 0,
        page_token=r.params.get("page_token") or None,
        name=r.params.get("name") or None,
        expand_tasks=_bool(r, "expand_tasks"),
    )


def _list_runs(s: JobService, p: Principal, r: func.HttpRequest) -> Any:
    limit = _int(r, "limit", 20, 0, 25)
    return s.list_runs(
        p,
        job_id=_int(r, "job_id", None, 1, 2**63 - 1),
        active_only=_bool(r, "active_only"),
        completed_only=_bool(r, "completed_only"),
        limit=limit or 25,  # 0 asks for the maximum
        offset=_int(r, "offset", 0, 0, 2**31) or 0,
        page_token=r.params.get("page_token") or None,
        run_type=r.params.get("run_type") or None,
        start_time_from=_int(r, "start_time_from", None, 0, 2**63 - 1),
        start_time_to=_int(r, "start_time_to", None, 0, 2**63 - 1),
        expand_tasks=_bool(r, "expand_tasks"),
    )


JOBS_POST: dict[str, Handler[JobService]] = {
    "create": body_op(lambda s, p, b: s.create(p, b)),
    "update": body_op(lambda s, p, b: s.update(p, b)),
    "reset": body_op(lambda s, p, b: s.reset(p, b)),
    "delete": body_op(lambda s, p, b: s.delete(p, b)),
    "run-now": body_op(lambda s, p, b: s.run_now(p, b)),
}
JOBS_GET: dict[str, Handler[JobService]] = {
    "get": lambda s, p, r: s.get(p, r.params.get("job_id")),
    "list": _list_jobs,
}
RUNS_POST: dict[str, Handler[JobService]] = {
    "submit": body_op(lambda s, p, b: s.submit(p, b)),
    "cancel": body_op(lambda s, p, b: s.cancel_run(p, b)),
    "cancel-all": body_op(lambda s, p, b: s.cancel_all(p, b)),
    "delete": body_op(lambda s, p, b: s.delete_run(p, b)),
}
RUNS_GET: dict[str, Handler[JobService]] = {
    "get": lambda s, p, r: s.get_run(p, r.params.get("run_id")),
    "get-output": lambda s, p, r: s.get_output(p, r.params.get("run_id")),
    "list": _list_runs,
}


@bp.route(
    route="api/{version}/jobs/{op}", methods=["GET", "POST"], auth_level=func.AuthLevel.ANONYMOUS
)
def jobs_api(req: func.HttpRequest) -> func.HttpResponse:
    return dispatch(req, "jobs", JOBS_POST, JOBS_GET, lambda c: c.jobs, versions=VERSIONS)


@bp.route(
    route="api/{version}/jobs/runs/{op}",
    methods=["GET", "POST"],
    auth_level=func.AuthLevel.ANONYMOUS,
)
def job_runs_api(req: func.HttpRequest) -> func.HttpResponse:
    return dispatch(req, "jobs/runs", RUNS_POST, RUNS_GET, lambda c: c.jobs, versions=VERSIONS)


@bp.service_bus_queue_trigger(
    arg_name="msg",
    queue_name="%SPARKPLANE_JOBS_QUEUE%",
    connection="SPARKPLANE_SERVICEBUS",
    is_sessions_enabled=True,
)
def job_runs(msg: func.ServiceBusMessage) -> None:
    # An exception abandons the message (redelivered; dead-lettered after 10 deliveries).
    container().jobs.runs.handle(msg.get_body())


@bp.timer_trigger(arg_name="timer", schedule="%SPARKPLANE_JOBS_SCHEDULE%")
def job_scheduler(timer: func.TimerRequest) -> None:
    stats = container().jobs.scheduler.tick()
    # Long tasks are re-kicked every SPARKPLANE_JOBS_STUCK_AFTER_S: not worth a log line.
    if stats["fired"] or stats["healed"]:
        log.info("jobs tick", extra=stats)
