"""Job settings (Jobs API 2.1/2.2): the vocabulary of states and results databricks-sdk knows,
the settings model of a job and of a one-time submit, their parsing and validation, the order
of tasks by their dependencies, and the partial update of settings."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from shared.domain import cluster as cdom
from shared.domain import paths
from shared.domain import schedule as sched
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
