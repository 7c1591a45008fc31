"""What the run planner observes (clusters, submissions) and the effects it asks for, as
values, and the small rules of one task step: which compute a task uses, retries, run_if,
parameter references, the error line of a failed program's output."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.domain.job_settings import SUCCESS_LIKE, L, R, Result, Task
from shared.domain.job_state import Attempt, Run
from shared.domain.tasks import SubmissionStatus

# ---------------------------------------------------------------------------------------------
# What the planner sees and asks for.


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
