"""Jobs and runs (Jobs API 2.1/2.2): the settings model and its validation, the stored job and
run documents, and the pure rules: schedule firing, admission (max_concurrent_runs, queueing),
the run state machine with retries and timeouts.

A run is a parent run with one task run per task attempt (`tasks`, as Databricks returns it).
`advance` is the run's planner: given the run document and what is observed (clusters and
submissions), it returns the next document and the side effects to carry out. It is level-
triggered: the effects are "ensure" operations (create this cluster if missing, submit this
attempt unless submitted, cancel this process if still running, terminate this cluster unless
terminating), so evaluating the same document again is harmless.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from shared.domain import cluster as cdom
from shared.domain import paths
from shared.domain import schedule as sched
from shared.domain.node_env import accepted_spark_env
from shared.domain.tasks import SubmissionStatus
from shared.domain.wire import Int
from shared.errors import InvalidParameterValue

# ---------------------------------------------------------------------------------------------
# Enums (the values databricks-sdk knows: an unknown value would make its waiters spin).


class LifeCycle(StrEnum):
    QUEUED = "QUEUED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    TERMINATING = "TERMINATING"
    TERMINATED = "TERMINATED"
    SKIPPED = "SKIPPED"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    BLOCKED = "BLOCKED"
    WAITING_FOR_RETRY = "WAITING_FOR_RETRY"


class Result(StrEnum):
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    TIMEDOUT = "TIMEDOUT"
    CANCELED = "CANCELED"
    MAXIMUM_CONCURRENT_RUNS_REACHED = "MAXIMUM_CONCURRENT_RUNS_REACHED"
    EXCLUDED = "EXCLUDED"
    SUCCESS_WITH_FAILURES = "SUCCESS_WITH_FAILURES"
    UPSTREAM_FAILED = "UPSTREAM_FAILED"
    UPSTREAM_CANCELED = "UPSTREAM_CANCELED"


L = LifeCycle
R = Result
FINAL = frozenset({L.TERMINATED, L.SKIPPED, L.INTERNAL_ERROR})
ACTIVE = (L.QUEUED, L.PENDING, L.RUNNING, L.TERMINATING)
SUCCESS_LIKE = frozenset({R.SUCCESS, R.EXCLUDED, R.SUCCESS_WITH_FAILURES})
RUN_IF = (
    "ALL_SUCCESS",
    "ALL_DONE",
    "NONE_FAILED",
    "AT_LEAST_ONE_SUCCESS",
    "ALL_FAILED",
    "AT_LEAST_ONE_FAILED",
)
Trigger = Literal["PERIODIC", "ONE_TIME", "RETRY"]
RunType = Literal["JOB_RUN", "SUBMIT_RUN"]

# Task run ids are the parent's run id plus 1..999: a parent id is a multiple of 1000.
TASK_SLOTS = 1000
# A queued run waits at most this long (Databricks: 48 hours).
QUEUE_TIMEOUT_MS = 48 * 3600 * 1000

# ---------------------------------------------------------------------------------------------
# Settings.

# A task's or job cluster's cluster spec: checked by the cluster rules (validate_settings'
# check_cluster_spec), kept with its typed fields as parsed.
NewCluster = Annotated[dict[str, Any], AfterValidator(cdom.typed_body)]


class CronSchedule(BaseModel):
    model_config = ConfigDict(extra="allow")
    quartz_cron_expression: str
    timezone_id: str
    pause_status: Literal["PAUSED", "UNPAUSED"] = "UNPAUSED"


class SparkPythonTask(BaseModel):
    model_config = ConfigDict(extra="allow")
    python_file: str = Field(min_length=1)
    parameters: list[str] = Field(default_factory=list)
    source: Literal["WORKSPACE", "GIT"] | None = None


class TaskDependency(BaseModel):
    model_config = ConfigDict(extra="allow")
    task_key: str
    outcome: str | None = None


class Task(BaseModel):
    """A task of a job (or of runs/submit). Fields the control plane does not act on are kept."""

    model_config = ConfigDict(extra="allow")
    task_key: str = Field(min_length=1, max_length=100, pattern=r"^[\w\-]+$")
    description: str | None = None
    depends_on: list[TaskDependency] = Field(default_factory=list)
    run_if: str | None = None
    spark_python_task: SparkPythonTask | None = None
    existing_cluster_id: str | None = None
    new_cluster: NewCluster | None = None
    job_cluster_key: str | None = None
    max_retries: Int = Field(default=0, ge=-1)
    min_retry_interval_millis: Int = Field(default=0, ge=0)
    retry_on_timeout: bool = False
    timeout_seconds: Int = Field(default=0, ge=0)


class JobCluster(BaseModel):
    model_config = ConfigDict(extra="allow")
    job_cluster_key: str = Field(min_length=1, max_length=100, pattern=r"^[\w\-]+$")
    new_cluster: NewCluster


class QueueSettings(BaseModel):
    model_config = ConfigDict(extra="allow")
    enabled: bool


class JobParameter(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    default: str = ""


class JobSettings(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(default="Untitled", max_length=4096)
    tasks: list[Task] = Field(default_factory=list)
    job_clusters: list[JobCluster] = Field(default_factory=list)
    schedule: CronSchedule | None = None
    max_concurrent_runs: Int = Field(default=1, ge=0, le=1000)
    timeout_seconds: Int = Field(default=0, ge=0)
    queue: QueueSettings | None = None
    parameters: list[JobParameter] = Field(default_factory=list)
    tags: dict[str, str] = Field(default_factory=dict)

    def wire(self, *, with_tasks: bool = True) -> dict[str, Any]:
        out = self.model_dump(mode="json", exclude_none=True)
        if not with_tasks:
            out.pop("tasks", None)
            out.pop("job_clusters", None)
        return out


def _fmt(e: ValidationError, where: str) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in (where, *err["loc"]) if p != "")
    if err["type"] == "missing":
        return f"Missing required field: {loc}"
    return f"Invalid value for field {loc}: {err['msg']}"


def parse_settings(body: Any, where: str = "") -> JobSettings:
    if not isinstance(body, Mapping):
        raise InvalidParameterValue(f"{where or 'settings'} must be an object.")
    try:
        return JobSettings.model_validate(dict(body))
    except ValidationError as e:
        raise InvalidParameterValue(_fmt(e, where)) from None


def submit_settings(body: Mapping[str, Any]) -> JobSettings:
    """The settings of a one-time run (runs/submit): its tasks, run_name and timeout_seconds."""
    tasks = body.get("tasks")
    if not isinstance(tasks, list):
        raise InvalidParameterValue("tasks must be a list.")
    if not tasks:
        raise InvalidParameterValue("Missing required field: tasks")
    run_name = body.get("run_name")
    if run_name is not None and not isinstance(run_name, str):
        raise InvalidParameterValue("run_name must be a string.")
    fields = {"name": run_name or "Untitled", "tasks": tasks, "max_concurrent_runs": 1}
    if body.get("timeout_seconds") is not None:
        fields["timeout_seconds"] = body["timeout_seconds"]
    return parse_settings(fields)


def validate_settings(
    s: JobSettings,
    *,
    now_ms: int,
    check_cluster_spec: Callable[[dict[str, Any], str], None] | None = None,
    check_existing_cluster: Callable[[str, str], None] | None = None,
    submit: bool = False,
) -> None:
    """Databricks' rules for job settings (and runs/submit tasks). The callbacks check a
    new_cluster spec and an existing cluster id (they raise INVALID_PARAMETER_VALUE)."""
    keys = [jc.job_cluster_key for jc in s.job_clusters]
    if len(set(keys)) != len(keys):
        raise InvalidParameterValue("job_cluster_key values must be unique within a job.")
    for i, jc in enumerate(s.job_clusters):
        if check_cluster_spec is not None:
            check_cluster_spec(jc.new_cluster, f"job_clusters[{i}].new_cluster")
    task_keys = [t.task_key for t in s.tasks]
    if len(set(task_keys)) != len(task_keys):
        raise InvalidParameterValue("task_key values must be unique within a job.")
    if len(s.tasks) > 100:
        raise InvalidParameterValue("A job can have at most 100 tasks.")
    for i, t in enumerate(s.tasks):
        where = f"tasks[{i}] ({t.task_key})"
        if t.spark_python_task is None:
            other = sorted(k for k in (t.model_extra or {}) if k.endswith("_task"))
            kind = other[0] if other else "no task type"
            raise InvalidParameterValue(
                f"{where}: only spark_python_task is supported by this control plane (got {kind})."
            )
        try:
            paths.task_file(t.spark_python_task.python_file)
        except InvalidParameterValue as e:
            raise InvalidParameterValue(f"{where}: {e.message}") from None
        computes = [
            k
            for k in ("existing_cluster_id", "new_cluster", "job_cluster_key")
            if getattr(t, k) is not None
        ]
        if submit and t.job_cluster_key is not None:
            raise InvalidParameterValue(f"{where}: job_cluster_key is not allowed in runs/submit.")
        if len(computes) != 1:
            raise InvalidParameterValue(
                f"{where}: exactly one of existing_cluster_id, new_cluster and job_cluster_key "
                f"must be set (got {', '.join(computes) or 'none'})."
            )
        if t.job_cluster_key is not None and t.job_cluster_key not in keys:
            raise InvalidParameterValue(
                f"{where}: job_cluster_key '{t.job_cluster_key}' is not defined in job_clusters."
            )
        if t.new_cluster is not None and check_cluster_spec is not None:
            check_cluster_spec(t.new_cluster, f"tasks[{i}].new_cluster")
        if t.existing_cluster_id is not None and check_existing_cluster is not None:
            check_existing_cluster(t.existing_cluster_id, where)
        if t.run_if is not None and t.run_if not in RUN_IF:
            raise InvalidParameterValue(f"{where}: run_if must be one of {', '.join(RUN_IF)}.")
        for d in t.depends_on:
            if d.task_key == t.task_key:
                raise InvalidParameterValue(f"{where}: a task cannot depend on itself.")
            if d.task_key not in task_keys:
                raise InvalidParameterValue(
                    f"{where}: depends_on refers to the unknown task '{d.task_key}'."
                )
    topological_order(s.tasks)  # raises on a cycle
    if s.schedule is not None:
        sched.validate(s.schedule.quartz_cron_expression, s.schedule.timezone_id, now_ms=now_ms)
    names = [p.name for p in s.parameters]
    if len(set(names)) != len(names):
        raise InvalidParameterValue("Job parameter names must be unique.")


def topological_order(tasks: Sequence[Task]) -> list[str]:
    """Task keys, each after the tasks it depends on (stable: the given order among equals)."""
    deps = {t.task_key: [d.task_key for d in t.depends_on] for t in tasks}
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(k: str, path: tuple[str, ...]) -> None:
        if state.get(k) == 2:
            return
        if state.get(k) == 1:
            raise InvalidParameterValue(
                "The task dependencies form a cycle: " + " -> ".join((*path, k))
            )
        state[k] = 1
        for d in deps.get(k, []):
            visit(d, (*path, k))
        state[k] = 2
        order.append(k)

    for t in tasks:
        visit(t.task_key, ())
    return order


def merge_update(
    current: JobSettings, new_settings: Mapping[str, Any], fields_to_remove: Sequence[str]
) -> dict[str, Any]:
    """jobs/update: top-level fields of new_settings replace the current ones, except `tasks`
    and `job_clusters`, which are merged by key; fields_to_remove names top-level fields, or
    `tasks/<task_key>` and `job_clusters/<job_cluster_key>`."""
    out = current.model_dump(mode="json", exclude_none=True)
    for k, v in new_settings.items():
        if k in ("tasks", "job_clusters") and isinstance(v, list):
            key = "task_key" if k == "tasks" else "job_cluster_key"
            merged = {item[key]: item for item in out.get(k, [])}
            for item in v:
                if not isinstance(item, Mapping) or key not in item:
                    raise InvalidParameterValue(f"Every entry of new_settings.{k} needs {key}.")
                merged[item[key]] = dict(item)
            out[k] = list(merged.values())
        else:
            out[k] = v
    for f in fields_to_remove:
        if not isinstance(f, str):
            raise InvalidParameterValue("fields_to_remove must be a list of strings.")
        top, _, key = f.partition("/")
        if key and top in ("tasks", "job_clusters"):
            kf = "task_key" if top == "tasks" else "job_cluster_key"
            out[top] = [item for item in out.get(top, []) if item.get(kf) != key]
        else:
            out.pop(top, None)
    return out


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


def _touch(r: Run, now: int) -> Run:
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
    return _touch(r, now)


def wait_in_queue(run: Run, *, now: int, max_concurrent: int) -> Run:
    if run.queue_reason is not None:
        return run
    r = run.model_copy(deep=True)
    r.queue_reason = (
        f"Queued due to reaching maximum concurrent runs of {max_concurrent} for the job."
    )
    r.message = r.queue_reason
    return _touch(r, now)


def skip(run: Run, *, now: int, message: str, result: Result | None, code: str) -> Run:
    r = run.model_copy(deep=True)
    r.state = L.SKIPPED
    r.result = result
    r.message = message
    r.code = code
    r.end_time = now
    return _touch(r, now)


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
        return _touch(r, now)
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
    return _touch(r, now)


# ---------------------------------------------------------------------------------------------
# The planner.


@dataclass(frozen=True, slots=True)
class ClusterView:
    """What the run needs to know of a cluster document ("MISSING": there is none)."""

    state: str
    message: str = ""
    reason: str | None = None
    spark_context_id: int | None = None
    spark_env_vars: Mapping[str, str] = field(default_factory=dict)
    spark_version: str = ""


MISSING = ClusterView(state="MISSING")
DEAD = frozenset({"TERMINATING", "TERMINATED", "ERROR", "MISSING"})


@dataclass(frozen=True, slots=True)
class Observed:
    clusters: Mapping[str, ClusterView] = field(default_factory=dict)
    submissions: Mapping[str, SubmissionStatus | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EnsureCluster:
    cluster_id: str
    spec: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class StartCluster:
    cluster_id: str


@dataclass(frozen=True, slots=True)
class TerminateCluster:
    cluster_id: str


@dataclass(frozen=True, slots=True)
class Submit:
    """Hand the task to the agent on the cluster's driver node (the control plane never runs
    it): the agent fetches `python_file` from the workspace's files and runs it there."""

    key: str
    cluster_id: str
    workspace_id: str
    python_file: str
    parameters: tuple[str, ...]
    env: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class CancelSubmission:
    key: str
    cluster_id: str


Action = EnsureCluster | StartCluster | TerminateCluster | Submit | CancelSubmission


@dataclass
class Plan:
    run: Run
    actions: list[Action] = field(default_factory=list)
    changed: bool = False
    # Evaluate again after this many ms (None: the run is finished).
    requeue_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Timing:
    poll_ms: int = 2000
    # A job cluster that is not RUNNING this long after it was asked for fails the attempt.
    setup_timeout_ms: int = 20 * 60_000
    # Job clusters not TERMINATED this long after the tasks ended: the run ends anyway.
    cleanup_timeout_ms: int = 5 * 60_000


def compute_key(t: Task) -> str:
    if t.job_cluster_key is not None:
        return f"jc:{t.job_cluster_key}"
    if t.new_cluster is not None:
        return f"task:{t.task_key}"
    return f"existing:{t.existing_cluster_id}"


def cluster_spec_for(r: Run, t: Task) -> dict[str, Any]:
    """The new_cluster of a task (its own, or its job cluster's), named after the run."""
    if t.job_cluster_key is not None:
        spec = next(
            jc.new_cluster
            for jc in r.settings.job_clusters
            if jc.job_cluster_key == t.job_cluster_key
        )
    else:
        spec = t.new_cluster or {}
    out = dict(spec)
    if not out.get("cluster_name"):
        owner = f"job-{r.job_id}-run-{r.run_id}" if r.job_id else f"run-{r.run_id}"
        out["cluster_name"] = owner[:100]
    return out


def should_retry(t: Task, a: Attempt) -> bool:
    """max_retries (-1: always) after FAILED, or after TIMEDOUT with retry_on_timeout; never
    after a cancel or a skip."""
    if a.cancel_requested or a.state == L.SKIPPED:
        return False
    if a.result == R.FAILED or (a.result == R.TIMEDOUT and t.retry_on_timeout):
        return t.max_retries == -1 or a.attempt_number < t.max_retries
    return False


def run_if_met(run_if: str | None, upstream: Sequence[Result | None]) -> bool:
    ok = [r in SUCCESS_LIKE for r in upstream]
    failed = [r in (R.FAILED, R.TIMEDOUT, R.UPSTREAM_FAILED) for r in upstream]
    match run_if or "ALL_SUCCESS":
        case "ALL_DONE":
            return True
        case "NONE_FAILED":
            return not any(failed)
        case "AT_LEAST_ONE_SUCCESS":
            return any(ok)
        case "ALL_FAILED":
            return all(failed)
        case "AT_LEAST_ONE_FAILED":
            return any(failed)
        case _:
            return all(ok)


_REF = re.compile(r"\{\{\s*([\w.\-]+)\s*\}\}")


def render_parameters(params: Sequence[str], ctx: Mapping[str, str]) -> list[str]:
    """Dynamic value references ({{job.run_id}}, {{task.name}}, {{job.parameters.x}}, ...);
    an unknown reference is left as written."""
    return [_REF.sub(lambda m: ctx.get(m.group(1), m.group(0)), p) for p in params]


def reference_context(r: Run, a: Attempt) -> dict[str, str]:
    params = {p.name: p.default for p in r.settings.parameters}
    params.update(r.job_parameters)
    ctx = {
        "job.id": str(r.shown_job_id),
        "job.name": r.settings.name,
        "job.run_id": str(r.run_id),
        "job.repair_count": "0",
        "job.trigger.type": {"PERIODIC": "periodic", "RETRY": "retry"}.get(r.trigger, "one_time"),
        "job.start_time.timestamp": str(r.start_time),
        "task.name": a.task_key,
        "task.run_id": str(a.run_id),
        "task.execution_count": str(a.attempt_number + 1),
        # The older names.
        "job_id": str(r.shown_job_id),
        "run_id": str(a.run_id),
        "parent_run_id": str(r.run_id),
        "task_key": a.task_key,
        "start_time": str(r.start_time),
    }
    for k, v in params.items():
        ctx[f"job.parameters.{k}"] = v
    return ctx


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Warning)\b.*")
# Lines of Spark's launcher and log4j, not the program's.
_SPARK_LOG_LINE = re.compile(
    r"^(\d\d/\d\d/\d\d \d\d:\d\d:\d\d |Setting Spark log level|Using Spark's default|"
    r"WARNING: Using incubator)"
)


def error_of(stderr: str, stdout: str = "") -> tuple[str, str]:
    """(error, error_trace) of a failed program: the exception line of the last Python
    traceback and the traceback itself. spark-submit runs the Python driver with its standard
    error merged into standard output, so both are searched (stderr first). Without a
    traceback: the last exception-like line of stderr, else its last line that is not Spark's
    own logging."""
    for text in (stderr, stdout):
        lines = text.splitlines()
        starts = [i for i, ln in enumerate(lines) if ln.startswith("Traceback (most recent call")]
        if starts:
            tb = lines[starts[-1] :]
            head = next((ln for ln in tb[1:] if ln.strip() and not ln[:1].isspace()), "")
            return head.strip()[:1000], "\n".join(ln.rstrip() for ln in tb[:200])
    lines = [ln.rstrip() for ln in stderr.splitlines() if ln.strip()]
    if not lines:
        return "", ""
    trace = "\n".join(lines[-100:])
    exc = next((ln for ln in reversed(lines) if _EXCEPTION_LINE.match(ln.strip())), None)
    if exc is None:
        own = [ln for ln in lines if not _SPARK_LOG_LINE.match(ln)]
        exc = own[-1] if own else ""
    return exc.strip()[:1000], trace


def _finish(
    a: Attempt,
    *,
    now: int,
    result: Result,
    message: str,
    code: str,
    state: LifeCycle = L.TERMINATED,
    user: bool = False,
) -> None:
    a.state = state
    a.result = result
    a.message = message
    a.code = code
    a.user_cancelled_or_timedout = user
    a.exec_end = now
    if a.submission_key is None:
        a.process_done = True


def _new_attempt(r: Run, prev: Attempt, t: Task, now: int) -> Attempt | None:
    if len(r.tasks) >= TASK_SLOTS - 1:
        return None
    a = Attempt(
        task_key=prev.task_key,
        run_id=r.run_id + 1 + len(r.tasks),
        attempt_number=prev.attempt_number + 1,
        state=L.WAITING_FOR_RETRY,
        created=now,
        not_before=(prev.exec_end or now) + t.min_retry_interval_millis,
        message="Waiting for retry",
    )
    r.tasks.append(a)
    return a


def _result(r: Run) -> tuple[LifeCycle, Result, str, str]:
    """The final life cycle state, result, message and code of a run whose tasks are done."""
    if r.stop == "CANCELED":
        who = f" by {r.cancelled_by}" if r.cancelled_by else ""
        return L.TERMINATED, R.CANCELED, f"Run was canceled{who}.", "USER_CANCELED"
    if r.stop == "TIMEDOUT":
        return (
            L.TERMINATED,
            R.TIMEDOUT,
            f"Run timed out after {r.settings.timeout_seconds} seconds.",
            "CANCELED",
        )
    latest = r.latest()
    results = {k: a.result for k, a in latest.items()}
    if all(res in SUCCESS_LIKE for res in results.values()):
        return L.TERMINATED, R.SUCCESS, "", "SUCCESS"
    upstream = {d.task_key for t in r.settings.tasks for d in t.depends_on}
    leaves = [k for k in results if k not in upstream]
    if all(results[k] in SUCCESS_LIKE for k in leaves):
        return L.TERMINATED, R.SUCCESS_WITH_FAILURES, "", "SUCCESS_WITH_FAILURES"
    order = topological_order(r.settings.tasks)
    culprit = next(
        (
            latest[k]
            for k in order
            if latest[k].result not in SUCCESS_LIKE
            and latest[k].result not in (R.UPSTREAM_FAILED, R.UPSTREAM_CANCELED)
        ),
        next(latest[k] for k in order if latest[k].result not in SUCCESS_LIKE),
    )
    message = culprit.message
    if len(latest) > 1:
        message = f"Task {culprit.task_key} failed with message: {culprit.message}"
        if any(a.result in (R.UPSTREAM_FAILED, R.UPSTREAM_CANCELED) for a in latest.values()):
            message += " This caused all downstream tasks to get skipped."
    state = L.INTERNAL_ERROR if culprit.state == L.INTERNAL_ERROR else L.TERMINATED
    if culprit.result == R.CANCELED:
        return L.TERMINATED, R.CANCELED, message, "USER_CANCELED"
    if culprit.result == R.TIMEDOUT:
        return state, R.TIMEDOUT, message, "CANCELED"
    code = culprit.code or "RUN_EXECUTION_ERROR"
    if code == "SUCCESS":
        code = "RUN_EXECUTION_ERROR"
    return state, R.FAILED, message, code


def advance(
    run: Run,
    obs: Observed,
    *,
    now: int,
    new_cluster_id: Callable[[], str],
    timing: Timing | None = None,
) -> Plan:
    """The next step of an admitted run (pure)."""
    if run.final or not run.admitted:
        return Plan(run=run)
    timing = timing or Timing()
    r = run.model_copy(deep=True)
    actions: list[Action] = []

    def view(cid: str | None) -> ClusterView:
        return obs.clusters.get(cid, MISSING) if cid else MISSING

    # 1. Run-level stops: a cancel or the job's timeout end every unfinished attempt.
    if r.stop is None:
        if r.cancel_requested:
            r.stop = "CANCELED"
        elif (
            r.settings.timeout_seconds
            and r.setup_start is not None
            and now - r.setup_start >= r.settings.timeout_seconds * 1000
        ):
            r.stop = "TIMEDOUT"
    if r.stop is not None:
        result = R.CANCELED if r.stop == "CANCELED" else R.TIMEDOUT
        why = "Run was canceled." if r.stop == "CANCELED" else "Run timed out."
        for a in r.tasks:
            if not a.final:
                _finish(
                    a,
                    now=now,
                    result=result if a.state == L.RUNNING else R.CANCELED,
                    message=why,
                    code="USER_CANCELED" if r.stop == "CANCELED" else "CANCELED",
                    user=True,
                )

    # 2. Each task's latest attempt, in dependency order.
    latest = r.latest()
    for key in topological_order(r.settings.tasks):
        attempt = latest.get(key)
        if attempt is None or attempt.final:
            continue
        a = attempt
        t = r.task(key)
        if a.cancel_requested:
            _finish(
                a,
                now=now,
                result=R.CANCELED,
                message="Task run was canceled.",
                code="USER_CANCELED",
                user=True,
            )
            continue
        if a.state == L.BLOCKED:
            ups = [latest[d.task_key] for d in t.depends_on]
            if not all(u.final for u in ups):
                continue
            results = [u.result for u in ups]
            if run_if_met(t.run_if, results):
                a.state = L.PENDING
                a.pending_since = now
                a.message = ""
            else:
                canceled = any(res in (R.CANCELED, R.UPSTREAM_CANCELED) for res in results)
                if (t.run_if or "ALL_SUCCESS") == "ALL_SUCCESS":
                    res = R.UPSTREAM_CANCELED if canceled else R.UPSTREAM_FAILED
                    msg = "Upstream task was canceled." if canceled else "Upstream task failed."
                else:
                    res, msg = R.EXCLUDED, f"The run_if condition {t.run_if} was not met."
                _finish(a, now=now, result=res, message=msg, code="SKIPPED", state=L.SKIPPED)
                continue
        if a.state == L.WAITING_FOR_RETRY:
            if a.not_before is not None and now < a.not_before:
                continue
            a.state = L.PENDING
            a.pending_since = now
            a.message = ""
        if a.state == L.PENDING:
            _setup(
                r,
                a,
                t,
                view,
                actions,
                now=now,
                new_cluster_id=new_cluster_id,
                timing=timing,
            )
        elif a.state == L.RUNNING:
            _running(r, a, t, view, obs, actions, now=now, timing=timing)
        if a.final and should_retry(t, a) and r.stop is None:
            retry = _new_attempt(r, a, t, now)
            if retry is not None:
                latest[key] = retry  # downstream tasks wait for the retry

    # 3. Processes of finished attempts that still run get cancelled (until seen gone).
    for a in r.tasks:
        if not a.final or a.process_done or a.submission_key is None:
            continue
        st = obs.submissions.get(a.submission_key)
        if st is not None and st.state in ("PENDING", "RUNNING"):
            actions.append(CancelSubmission(a.submission_key, a.cluster_id or ""))
        else:
            a.process_done = True
            if st is not None:
                a.logs = a.logs or st.stdout_tail

    # 4. Job clusters no unfinished task needs any more are terminated (JOB_FINISHED).
    latest = r.latest()
    needed = {r.clusters.get(compute_key(r.task(k))) for k, a in latest.items() if not a.final}
    for cid in r.owned_clusters:
        if cid not in needed and view(cid).state not in ("TERMINATING", "TERMINATED", "MISSING"):
            actions.append(TerminateCluster(cid))

    # 5. The run's own state.
    done = all(a.final for a in latest.values())
    if done:
        if r.exec_end is None:
            r.exec_end = now
            r.exec_start = r.exec_start if r.exec_start is not None else now
        if r.state != L.TERMINATING:
            r.state = L.TERMINATING
            r.message = "Cleaning up."
        clean = all(
            view(cid).state in ("TERMINATED", "MISSING") for cid in r.owned_clusters
        ) and all(a.process_done for a in r.tasks)
        if clean or now - (r.exec_end or now) >= timing.cleanup_timeout_ms:
            state, result, message, code = _result(r)
            r.state = state
            r.result = result
            r.message = message
            r.code = code
            r.user_cancelled_or_timedout = r.stop is not None or result in (
                R.CANCELED,
                R.TIMEDOUT,
            )
            r.end_time = now
    else:
        if any(a.state == L.RUNNING for a in r.tasks):
            if r.state != L.RUNNING:
                r.state = L.RUNNING
                r.message = ""
            if r.exec_start is None:
                r.exec_start = now
        elif r.state == L.QUEUED:
            r.state = L.PENDING

    changed = r.model_dump() != run.model_dump()
    if changed:
        _touch(r, now)
    requeue: int | None = None
    if not r.final:
        requeue = timing.poll_ms
        waits = [
            a.not_before - now for a in r.tasks if a.state == L.WAITING_FOR_RETRY and a.not_before
        ]
        if waits:
            requeue = max(1, min(requeue, min(waits)))
    return Plan(run=r, actions=actions, changed=changed, requeue_ms=requeue)


def _setup(
    r: Run,
    a: Attempt,
    t: Task,
    view: Callable[[str | None], ClusterView],
    actions: list[Action],
    *,
    now: int,
    new_cluster_id: Callable[[], str],
    timing: Timing,
) -> None:
    """A PENDING attempt: get its cluster RUNNING, then submit."""
    if a.pending_since is None:
        a.pending_since = now
    ck = compute_key(t)
    cid: str | None
    if t.existing_cluster_id is not None:
        cid = t.existing_cluster_id
        a.cluster_id = cid
        v = view(cid)
        if v.state == "MISSING":
            _finish(
                a,
                now=now,
                result=R.FAILED,
                message=f"Cluster {cid} does not exist",
                code="RESOURCE_NOT_FOUND",
                state=L.INTERNAL_ERROR,
            )
            return
        if v.state == "TERMINATED":
            if a.start_requested:
                _finish(
                    a,
                    now=now,
                    result=R.FAILED,
                    state=L.INTERNAL_ERROR,
                    code="CLUSTER_ERROR",
                    message=f"Cluster {cid} could not be started: {v.message}".rstrip(": "),
                )
                return
            a.start_requested = True
            a.message = f"Starting cluster {cid}"
            actions.append(StartCluster(cid))
            return
    else:
        cid = a.cluster_id or r.clusters.get(ck)
        if cid is None or (a.cluster_id is None and view(cid).state in DEAD - {"MISSING"}):
            cid = new_cluster_id()
            r.clusters[ck] = cid
            r.owned_clusters.append(cid)
        a.cluster_id = cid
        v = view(cid)
        if v.state == "MISSING":
            a.message = f"Creating job cluster {cid}"
            actions.append(EnsureCluster(cid, cluster_spec_for(r, t)))
            _setup_deadline(a, cid, now=now, timing=timing)
            return
        if v.state in DEAD:
            reason = f" ({v.reason})" if v.reason else ""
            _finish(
                a,
                now=now,
                result=R.FAILED,
                state=L.INTERNAL_ERROR,
                code="CLUSTER_ERROR",
                message=f"Cluster {cid} failed to start{reason}: {v.message}".rstrip(": "),
            )
            return
    if v.state not in ("RUNNING", "RESIZING"):
        a.message = f"Waiting for cluster {cid} ({v.state})"
        _setup_deadline(a, cid, now=now, timing=timing)
        return
    # The cluster is up: submit.
    assert t.spark_python_task is not None
    key = str(a.run_id)
    a.state = L.RUNNING
    a.message = ""
    a.exec_start = now
    a.submission_key = key
    a.spark_context_id = v.spark_context_id
    actions.append(_submit(r, a, t, v))


def _setup_deadline(a: Attempt, cid: str, *, now: int, timing: Timing) -> None:
    if a.pending_since is not None and now - a.pending_since >= timing.setup_timeout_ms:
        _finish(
            a,
            now=now,
            result=R.FAILED,
            state=L.INTERNAL_ERROR,
            code="CLUSTER_ERROR",
            message=f"Cluster {cid} did not become RUNNING within "
            f"{timing.setup_timeout_ms // 60_000} minutes.",
        )


def _submit(r: Run, a: Attempt, t: Task, v: ClusterView) -> Submit:
    assert t.spark_python_task is not None and a.submission_key and a.cluster_id
    params = r.python_params if r.python_params is not None else t.spark_python_task.parameters
    env = {
        **accepted_spark_env(v.spark_env_vars),  # (a cluster stored before the rule)
        "SPARKPLANE_JOB_ID": str(r.shown_job_id),
        "SPARKPLANE_RUN_ID": str(r.run_id),
        "SPARKPLANE_TASK_RUN_ID": str(a.run_id),
        "SPARKPLANE_TASK_KEY": a.task_key,
        "SPARKPLANE_CLUSTER_ID": a.cluster_id,
        "PYTHONUNBUFFERED": "1",
    }
    if v.spark_version:
        env["DATABRICKS_RUNTIME_VERSION"] = v.spark_version
    return Submit(
        key=a.submission_key,
        cluster_id=a.cluster_id,
        workspace_id=r.workspace_id,
        python_file=t.spark_python_task.python_file,
        parameters=tuple(render_parameters(params, reference_context(r, a))),
        env=env,
    )


def _running(
    r: Run,
    a: Attempt,
    t: Task,
    view: Callable[[str | None], ClusterView],
    obs: Observed,
    actions: list[Action],
    *,
    now: int,
    timing: Timing,
) -> None:
    """A RUNNING attempt: read its submission's status."""
    assert a.submission_key is not None
    st = obs.submissions.get(a.submission_key)
    v = view(a.cluster_id)
    if (st is None or st.state in ("PENDING", "RUNNING", "LOST")) and v.state in DEAD:
        reason = f" ({v.reason})" if v.reason else ""
        _finish(
            a,
            now=now,
            result=R.FAILED,
            code="CLUSTER_ERROR",
            message=f"Cluster {a.cluster_id} was terminated during the run{reason}. "
            f"{v.message}".strip(),
        )
        return
    if st is None:
        actions.append(_submit(r, a, t, v))  # not started yet (a crash): again
        return
    if st.state == "PENDING" and a.exec_start and now - a.exec_start >= timing.setup_timeout_ms:
        # No agent took it: the driver runs none (e.g. no agent source in Azure) or is stuck.
        _finish(
            a,
            now=now,
            result=R.FAILED,
            state=L.INTERNAL_ERROR,
            code="CLUSTER_ERROR",
            message=f"The driver node of cluster {a.cluster_id} did not start the task within "
            f"{timing.setup_timeout_ms // 60_000} minutes (is its cluster agent running?).",
        )
        return
    if st.state in ("PENDING", "RUNNING"):
        if t.timeout_seconds and a.exec_start and now - a.exec_start >= t.timeout_seconds * 1000:
            _finish(
                a,
                now=now,
                result=R.TIMEDOUT,
                code="CANCELED",
                user=True,
                message=f"Task {a.task_key} timed out after {t.timeout_seconds} seconds.",
            )
        return  # the process is cancelled with the other finished attempts' processes
    a.exit_code = st.exit_code
    a.logs = st.stdout_tail
    a.process_done = True
    if st.state == "SUCCEEDED":
        _finish(a, now=now, result=R.SUCCESS, message="", code="SUCCESS")
        a.process_done = True
        return
    error, trace = error_of(st.stderr_tail, st.stdout_tail)
    a.error, a.error_trace = error, trace
    if st.state == "LOST":
        _finish(
            a,
            now=now,
            result=R.FAILED,
            state=L.INTERNAL_ERROR,
            code="INTERNAL_ERROR",
            message="The task's process was lost (its host restarted?).",
        )
    elif st.state == "CANCELED":
        _finish(
            a,
            now=now,
            result=R.FAILED,
            code="RUN_EXECUTION_ERROR",
            message=error or "The task's process was terminated.",
        )
    else:
        msg = error or f"The task's process exited with code {st.exit_code}."
        _finish(a, now=now, result=R.FAILED, message=msg, code="RUN_EXECUTION_ERROR")
    a.process_done = True
