"""The stored job and run documents and their transitions outside the planner: schedule firing
(a fire written into the job before its run exists), admission to max_concurrent_runs (the job
document as the ledger of slots, queueing), a new run, and cancellation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field

from shared.domain import schedule as sched
from shared.domain.job_settings import (
    FINAL,
    TASK_SLOTS,
    CronSchedule,
    JobSettings,
    L,
    LifeCycle,
    R,
    Result,
    RunType,
    Task,
    Trigger,
    topological_order,
)

# ---------------------------------------------------------------------------------------------
# The stored job: settings and the schedule state, plus the ledger of runs holding a slot.


class PendingFire(BaseModel):
    fire_ms: int
    run_id: int


class Job(BaseModel):
    job_id: int
    workspace_id: str
    creator_user_name: str = ""
    created_time: int = 0
    settings: JobSettings
    # "SCHEDULED" while the schedule is unpaused (the jobs timer scans this field).
    state: Literal["SCHEDULED", "IDLE"] = "IDLE"
    schedule_next_ms: int | None = None
    schedule_last_fire_ms: int | None = None
    # A fire written here before its run document exists (so a crash never loses or doubles it).
    pending_fire: PendingFire | None = None
    # Runs holding one of max_concurrent_runs slots, and queued runs waiting for one, in order.
    active_runs: list[int] = Field(default_factory=list)
    waiting_runs: list[int] = Field(default_factory=list)
    generation: int = 0

    def doc(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _schedule_key(s: JobSettings) -> tuple[str, str, str] | None:
    if s.schedule is None:
        return None
    return (s.schedule.quartz_cron_expression, s.schedule.timezone_id, s.schedule.pause_status)


def with_settings(job: Job, settings: JobSettings, *, now: int) -> Job:
    """New settings; a changed, added, removed or (un)paused schedule restarts from now."""
    j = job.model_copy(deep=True)
    changed = _schedule_key(j.settings) != _schedule_key(settings) or j.generation == 0
    j.settings = settings
    if changed:
        s = settings.schedule
        if s is None or s.pause_status == "PAUSED":
            j.state = "IDLE"
            j.schedule_next_ms = None
        else:
            compiled = sched.compile_schedule(s.quartz_cron_expression, s.timezone_id)
            j.state = "SCHEDULED"
            j.schedule_next_ms = sched.next_fire(compiled, now)
    j.generation += 1
    return j


def schedule_tick(job: Job, *, now: int, new_run_id: int) -> tuple[Job, PendingFire | None]:
    """The timer's rule: a due schedule fires once (missed fire times collapse into one run)
    and moves to its next fire time after now. Returns (job, the fire to carry out)."""
    s = job.settings.schedule
    if job.pending_fire is not None:
        return job, job.pending_fire
    if job.state != "SCHEDULED" or s is None:
        return job, None
    compiled = sched.compile_schedule(s.quartz_cron_expression, s.timezone_id)
    fire, nxt = sched.catch_up(compiled, job.schedule_next_ms, now)
    if fire is None:
        return job, None
    j = job.model_copy(deep=True)
    j.schedule_last_fire_ms = fire
    j.schedule_next_ms = nxt
    j.state = "SCHEDULED" if nxt is not None else "IDLE"
    j.pending_fire = PendingFire(fire_ms=fire, run_id=new_run_id)
    j.generation += 1
    return j, j.pending_fire


Admission = Literal["ADMIT", "WAIT", "SKIP", "HELD"]


def admission(job: Job, run_id: int, *, queue_enabled: bool) -> Admission:
    """max_concurrent_runs: a run gets a slot when one is free and no earlier queued run waits;
    otherwise it waits in the queue (queueing enabled) or is skipped. HELD: it has a slot."""
    if run_id in job.active_runs:
        return "HELD"
    free = len(job.active_runs) < job.settings.max_concurrent_runs
    waiting = [r for r in job.waiting_runs if r != run_id]
    ahead = [r for r in waiting if r < run_id]
    if free and not ahead:
        return "ADMIT"
    return "WAIT" if queue_enabled else "SKIP"


def take_slot(job: Job, run_id: int, decision: Admission) -> Job:
    j = job.model_copy(deep=True)
    if decision == "ADMIT":
        j.waiting_runs = [r for r in j.waiting_runs if r != run_id]
        j.active_runs.append(run_id)
    elif decision == "WAIT" and run_id not in j.waiting_runs:
        j.waiting_runs.append(run_id)
        j.waiting_runs.sort()
    elif decision == "SKIP":
        j.waiting_runs = [r for r in j.waiting_runs if r != run_id]
    j.generation += 1
    return j


def release(job: Job, run_ids: Sequence[int]) -> Job:
    j = job.model_copy(deep=True)
    gone = set(run_ids)
    j.active_runs = [r for r in j.active_runs if r not in gone]
    j.waiting_runs = [r for r in j.waiting_runs if r not in gone]
    j.generation += 1
    return j


# ---------------------------------------------------------------------------------------------
# Runs.


class Attempt(BaseModel):
    """One task run: an attempt of a task (a retry is a new attempt with a new run id)."""

    task_key: str
    run_id: int
    attempt_number: int = 0
    state: LifeCycle = L.BLOCKED
    result: Result | None = None
    message: str = ""
    # Databricks' termination code of the attempt (RunStatus.termination_details.code).
    code: str | None = None
    user_cancelled_or_timedout: bool = False
    cancel_requested: bool = False
    created: int = 0
    pending_since: int | None = None
    not_before: int | None = None
    cluster_id: str | None = None
    spark_context_id: int | None = None
    start_requested: bool = False
    submission_key: str | None = None
    exec_start: int | None = None
    exec_end: int | None = None
    # The process of a final attempt is known to be gone (no cancel needed any more).
    process_done: bool = False
    exit_code: int | None = None
    logs: str = ""
    error: str = ""
    error_trace: str = ""

    @property
    def final(self) -> bool:
        return self.state in FINAL


class Run(BaseModel):
    run_id: int
    workspace_id: str
    # The job the run belongs to (and holds a slot of); None: a one-time run (runs/submit).
    job_id: int | None = None
    run_name: str = ""
    run_type: RunType = "JOB_RUN"
    trigger: Trigger = "ONE_TIME"
    creator_user_name: str = ""
    # The life cycle state, top level (the timer scans it).
    state: LifeCycle = L.QUEUED
    result: Result | None = None
    message: str = ""
    code: str | None = None
    user_cancelled_or_timedout: bool = False
    queue_reason: str | None = None
    settings: JobSettings
    # run-now overrides.
    python_params: list[str] | None = None
    job_parameters: dict[str, str] = Field(default_factory=dict)
    queue_enabled: bool = False
    schedule: CronSchedule | None = None
    fire_ms: int | None = None
    idempotency_token: str | None = None
    admitted: bool = False
    start_time: int = 0
    setup_start: int | None = None
    exec_start: int | None = None
    exec_end: int | None = None
    end_time: int | None = None
    cancel_requested: bool = False
    cancelled_by: str | None = None
    stop: Literal["CANCELED", "TIMEDOUT"] | None = None
    tasks: list[Attempt] = Field(default_factory=list)
    # Compute key ("jc:<job_cluster_key>" or "task:<task_key>") -> its current job cluster.
    clusters: dict[str, str] = Field(default_factory=dict)
    # Every job cluster this run created (terminated at the end, JOB_FINISHED).
    owned_clusters: list[str] = Field(default_factory=list)
    generation: int = 0
    updated_ms: int = 0

    def doc(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @property
    def final(self) -> bool:
        return self.state in FINAL

    @property
    def shown_job_id(self) -> int:
        return shown_job_id(self.job_id, self.run_id)

    def latest(self) -> dict[str, Attempt]:
        out: dict[str, Attempt] = {}
        for a in self.tasks:
            out[a.task_key] = a
        return out

    def task(self, key: str) -> Task:
        return next(t for t in self.settings.tasks if t.task_key == key)

    def attempt(self, run_id: int) -> Attempt | None:
        return next((a for a in self.tasks if a.run_id == run_id), None)


def shown_job_id(job_id: int | None, run_id: int) -> int:
    """The job_id of a run in the API, `{{job.id}}` and SPARKPLANE_JOB_ID: its job's; a one-time
    run (runs/submit) belongs to no job, yet Databricks gives it a job_id too (Airflow's
    deferrable operators read it), and here that is the run's own id. It is stable, and no job
    has it (jobs/create takes the millisecond clock as the id, a run id is a thousand times
    that), so jobs/get and run-now find no job by it and jobs/list never shows one."""
    return run_id if job_id is None else job_id


def parent_run_id(run_id: int) -> int:
    return run_id - run_id % TASK_SLOTS


def new_run(
    *,
    run_id: int,
    workspace_id: str,
    settings: JobSettings,
    user: str,
    now: int,
    job_id: int | None = None,
    run_type: RunType = "JOB_RUN",
    trigger: Trigger = "ONE_TIME",
    run_name: str | None = None,
    python_params: list[str] | None = None,
    job_parameters: Mapping[str, str] | None = None,
    queue_enabled: bool | None = None,
    fire_ms: int | None = None,
    idempotency_token: str | None = None,
) -> Run:
    if run_id % TASK_SLOTS:
        raise ValueError("a parent run id is a multiple of TASK_SLOTS")
    return Run(
        run_id=run_id,
        workspace_id=workspace_id,
        job_id=job_id,
        run_name=run_name if run_name is not None else settings.name,
        run_type=run_type,
        trigger=trigger,
        creator_user_name=user,
        settings=settings,
        python_params=python_params,
        job_parameters=dict(job_parameters or {}),
        queue_enabled=(
            queue_enabled
            if queue_enabled is not None
            else bool(settings.queue and settings.queue.enabled)
        ),
        schedule=settings.schedule if trigger == "PERIODIC" else None,
        fire_ms=fire_ms,
        idempotency_token=idempotency_token,
        start_time=now,
        updated_ms=now,
    )


def touch(r: Run, now: int) -> Run:
    r.generation += 1
    r.updated_ms = now
    return r


def admit(run: Run, *, now: int) -> Run:
    """The run got a slot (or needs none): its tasks are created and it starts setting up."""
    r = run.model_copy(deep=True)
    r.admitted = True
    r.queue_reason = None
    if r.state == L.QUEUED:
        r.state = L.PENDING
        r.message = ""
        r.setup_start = now
        for i, key in enumerate(topological_order(r.settings.tasks)):
            t = r.task(key)
            r.tasks.append(
                Attempt(
                    task_key=key,
                    run_id=r.run_id + 1 + i,
                    state=L.BLOCKED if t.depends_on else L.PENDING,
                    created=now,
                    pending_since=None if t.depends_on else now,
                )
            )
        if not r.tasks:
            r.state = L.TERMINATED
            r.result = R.SUCCESS
            r.code = "SUCCESS"
            r.exec_start = r.exec_end = r.end_time = now
    return touch(r, now)


def wait_in_queue(run: Run, *, now: int, max_concurrent: int) -> Run:
    if run.queue_reason is not None:
        return run
    r = run.model_copy(deep=True)
    r.queue_reason = (
        f"Queued due to reaching maximum concurrent runs of {max_concurrent} for the job."
    )
    r.message = r.queue_reason
    return touch(r, now)


def skip(run: Run, *, now: int, message: str, result: Result | None, code: str) -> Run:
    r = run.model_copy(deep=True)
    r.state = L.SKIPPED
    r.result = result
    r.message = message
    r.code = code
    r.end_time = now
    return touch(r, now)


def skip_max_concurrent(run: Run, *, now: int, max_concurrent: int) -> Run:
    return skip(
        run,
        now=now,
        message=(
            f"Skipping this run because the limit of {max_concurrent} maximum concurrent "
            "runs has been reached."
        ),
        result=R.MAXIMUM_CONCURRENT_RUNS_REACHED,
        code="MAX_CONCURRENT_RUNS_EXCEEDED",
    )


def request_cancel(run: Run, *, now: int, user: str, task_run_id: int | None = None) -> Run:
    """runs/cancel: a queued run ends CANCELED at once; an active one moves to TERMINATING and
    its advance cancels the submissions and terminates the job clusters. A no-op on a
    finished run. `task_run_id` cancels one task run (its downstream tasks are skipped)."""
    if run.final or (run.state == L.TERMINATING and task_run_id is None):
        return run  # finished, or already ending
    r = run.model_copy(deep=True)
    if task_run_id is not None and task_run_id != r.run_id:
        a = r.attempt(task_run_id)
        if a is None or a.final or a.cancel_requested:
            return run
        a.cancel_requested = True
        return touch(r, now)
    if r.cancel_requested:
        return run
    r.cancel_requested = True
    r.cancelled_by = user
    if r.state == L.QUEUED:
        r.state = L.TERMINATED
        r.result = R.CANCELED
        r.code = "USER_CANCELED"
        r.user_cancelled_or_timedout = True
        r.message = "Run was canceled while queued."
        r.end_time = now
    else:
        r.state = L.TERMINATING
        r.message = "Run cancellation requested."
    return touch(r, now)
