"""The workload model of the autoscaling simulator: jobs made of stages, and the cluster spec."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MiB = 1 << 20


def task_factor(job_id: int, stage: int, ordinal: int, jitter: float) -> float:
    """A task's duration over its stage's task_s: 1 +- jitter, a fixed function of the task
    (job, stage, launch order), so every policy sees the same durations (common random
    numbers) and a policy changes only when tasks run, not how long they take."""
    h = (job_id * 0x9E3779B1 + stage * 0x85EBCA77 + ordinal * 0xC2B2AE3D) & 0xFFFFFFFF
    h ^= h >> 15
    h = (h * 0x2C1B3C6D) & 0xFFFFFFFF
    h ^= h >> 12
    h = (h * 0x297A2D39) & 0xFFFFFFFF
    h ^= h >> 15
    return 1.0 + jitter * (2.0 * (h / 4294967296.0) - 1.0)


@dataclass(frozen=True, slots=True)
class Stage:
    """`tasks` tasks of `task_s` seconds each, all runnable at once.

    `tasks == 0` is a driver-only phase: the driver runs code (a notebook command, a Spark
    Connect query doing driver work) for `task_s` seconds and no task runs on the workers.
    `shuffle_bytes_per_task` > 0: each task leaves that much shuffle output on the worker that
    ran it, read by the next stage.
    """

    tasks: int
    task_s: float
    shuffle_bytes_per_task: int = 0


@dataclass(frozen=True, slots=True)
class JobSpec:
    job_id: int
    submit_s: float
    stages: tuple[Stage, ...]

    def ideal_s(self, jitter: float = 0.0) -> float:
        """Completion time with unlimited capacity and no boot delay: every stage in one wave,
        as long as its slowest task."""
        total = 0.0
        for i, st in enumerate(self.stages):
            if st.tasks == 0 or jitter == 0:
                total += st.task_s
            else:
                worst = max(task_factor(self.job_id, i, k, jitter) for k in range(st.tasks))
                total += st.task_s * worst
        return total

    @property
    def task_seconds(self) -> float:
        return sum(st.tasks * st.task_s for st in self.stages)


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    min_workers: int
    max_workers: int
    slots_per_worker: int = 4
    # Databricks optimized autoscaling uses a 40 s window on job clusters, 150 s on all-purpose.
    kind: Literal["all-purpose", "job"] = "all-purpose"
    # For the sparkplane idle policy (baselines never terminate).
    autotermination_minutes: int | None = 60
    # spark.sparkplane.autoscaling.preference of the cluster (None: not set).
    preference: str | None = None


@dataclass(frozen=True, slots=True)
class Trace:
    name: str
    shape: str
    seed: int
    jobs: tuple[JobSpec, ...]
    cluster: ClusterSpec
    # The simulation runs at least this long (and until every job has finished).
    duration_s: float


def csv_row_to_job(
    job_id: int, submit_s: float, tasks: int, task_s: float, shuffle_mb: float = 0.0
) -> JobSpec:
    """The CSV trace format: one job per row, `submit_s,tasks,task_s[,shuffle_mb]`.

    - `tasks` tasks of `task_s` seconds (tasks = 0: a driver-only command of `task_s` seconds).
    - `shuffle_mb` > 0: those tasks are a map stage whose output (shuffle_mb in total, spread
      evenly) stays on the worker that ran each task; a reduce stage of ceil(shuffle_mb / 128)
      tasks (128 MB read per reduce task) of `task_s` seconds each follows and reads it.
    """
    if tasks <= 0:
        return JobSpec(job_id, submit_s, (Stage(0, max(task_s, 0.0)),))
    if shuffle_mb <= 0:
        return JobSpec(job_id, submit_s, (Stage(tasks, task_s),))
    reduce_tasks = max(1, -(-int(shuffle_mb * MiB) // (128 * MiB)))
    per_task = max(1, int(shuffle_mb * MiB / tasks))
    return JobSpec(job_id, submit_s, (Stage(tasks, task_s, per_task), Stage(reduce_tasks, task_s)))
