"""Workload traces: the SWIM Facebook 2009 day, synthetic shapes, and CSV files.

CSV format (one job per row): header `submit_s,tasks,task_s` and an optional `shuffle_mb`
column; see `bench.sim.model.csv_row_to_job` for what a row means.
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Iterable
from pathlib import Path

from bench.sim.model import ClusterSpec, JobSpec, MiB, Stage, Trace, csv_row_to_job

TRACES_DIR = Path(__file__).resolve().parents[1].parent.parent / "shared" / "traces"
SWIM_FILE = TRACES_DIR / "swim-fb2009-day0.tsv"

# ------------------------------------------------------------------------------------------
# SWIM FB-2009 -> jobs. The conversion rule (change it here):
#   - one map task per 128 MiB of input (at least one);
#   - a task takes SWIM_TASK_OVERHEAD_S plus its share of the input at SWIM_MIB_PER_S;
#   - shuffle bytes become the CSV `shuffle_mb` column: a reduce stage of one task per 128 MiB
#     of shuffle, each as long as a map task of the same job (csv_row_to_job);
#   - output bytes are ignored (written by the last stage's tasks, inside their time).
# With these numbers the day holds ~3.3 M task-seconds (~10 workers of 4 slots on average) with
# bursts far above that; 90% of the jobs have at most 5 map tasks.
SWIM_SPLIT_BYTES = 128 * MiB
SWIM_MIB_PER_S = 16.0
SWIM_TASK_OVERHEAD_S = 1.0
SWIM_CLUSTER = ClusterSpec(
    min_workers=2,
    max_workers=50,
    slots_per_worker=4,
    kind="all-purpose",
    autotermination_minutes=120,
)


def swim_rows(path: Path = SWIM_FILE) -> list[tuple[float, int, float, float]]:
    """(submit_s, tasks, task_s, shuffle_mb) per SWIM job, by the rule above."""
    rows = []
    with path.open() as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) < 6:
                continue
            submit = float(parts[1])
            inp, shuffle = int(parts[3]), int(parts[4])
            tasks = max(1, math.ceil(inp / SWIM_SPLIT_BYTES))
            task_s = SWIM_TASK_OVERHEAD_S + (inp / tasks) / (SWIM_MIB_PER_S * MiB)
            rows.append((submit, tasks, round(task_s, 3), shuffle / MiB))
    return rows


def swim_trace(path: Path = SWIM_FILE, *, hours: float | None = None) -> Trace:
    rows = swim_rows(path)
    if hours is not None:
        rows = [r for r in rows if r[0] < hours * 3600]
    jobs = tuple(csv_row_to_job(i, *r) for i, r in enumerate(rows))
    duration = 86400.0 if hours is None else hours * 3600
    name = "swim-fb2009-day0" if hours is None else f"swim-fb2009-day0-{hours:g}h"
    return Trace(name, "swim", 0, jobs, SWIM_CLUSTER, duration)


def load_csv(path: Path, cluster: ClusterSpec, *, duration_s: float | None = None) -> Trace:
    jobs = []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        need = {"submit_s", "tasks", "task_s"}
        if reader.fieldnames is None or not need <= set(reader.fieldnames):
            raise ValueError(
                f"{path}: the header must have {sorted(need)} (and may have shuffle_mb)"
            )
        for i, row in enumerate(reader):
            shuffle = row.get("shuffle_mb") or "0"
            jobs.append(
                csv_row_to_job(
                    i,
                    float(row["submit_s"]),
                    int(float(row["tasks"])),
                    float(row["task_s"]),
                    float(shuffle),
                )
            )
    jobs.sort(key=lambda j: j.submit_s)
    last = max((j.submit_s for j in jobs), default=0.0)
    return Trace(path.stem, "csv", 0, tuple(jobs), cluster, duration_s or last + 600.0)


def write_csv(path: Path, rows: Iterable[tuple[float, int, float, float]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["submit_s", "tasks", "task_s", "shuffle_mb"])
        for r in rows:
            w.writerow([r[0], r[1], r[2], round(r[3], 3)])


# ------------------------------------------------------------------------------------------
# Synthetic shapes. Each is seeded and deterministic.

HOUR = 3600.0


def _job(
    rng: random.Random, jid: int, t: float, tasks: int, task_s: float, shuffle: bool
) -> JobSpec:
    shuffle_mb = tasks * rng.uniform(16, 64) if shuffle else 0.0
    return csv_row_to_job(jid, round(t, 3), tasks, round(task_s, 3), shuffle_mb)


def _office_day(
    rng: random.Random,
    jobs: list[JobSpec],
    day_s: float,
    rate: float,
    lunch_rate: float,
    start_h: float = 9.0,
    end_h: float = 18.0,
) -> None:
    """One day of notebook queries from `start_h` to `end_h` (`rate` per hour, `lunch_rate`
    from 12:00 to 13:00), appended to `jobs`, the day starting at `day_s`."""
    t = start_h * HOUR
    while True:
        r = lunch_rate if 12 * HOUR <= t < 13 * HOUR else rate  # queries per hour
        t += rng.expovariate(r / HOUR)
        if t >= end_h * HOUR:
            break
        u = rng.random()
        at = day_s + t
        if u < 0.70:
            job = _job(rng, len(jobs), at, rng.randint(1, 16), rng.uniform(0.5, 4), False)
        elif u < 0.95:
            tasks = min(400, max(16, int(rng.lognormvariate(math.log(64), 0.7))))
            job = _job(rng, len(jobs), at, tasks, rng.uniform(2, 10), rng.random() < 0.5)
        else:
            job = _job(rng, len(jobs), at, rng.randint(200, 2000), rng.uniform(5, 20), True)
        jobs.append(job)


def office_hours(seed: int) -> Trace:
    """A weekday of an interactive all-purpose cluster: notebook queries 09:00-18:00 (fewer at
    lunch), nothing at night. Mostly small queries, some medium, a few heavy ones."""
    rng = random.Random(1000 + seed)
    jobs: list[JobSpec] = []
    _office_day(rng, jobs, 0.0, 40.0, 15.0)
    cluster = ClusterSpec(2, 20, 4, "all-purpose", autotermination_minutes=60)
    return Trace(f"office-hours-s{seed}", "office-hours", seed, tuple(jobs), cluster, 24 * HOUR)


def _etl_day(rng: random.Random, jobs: list[JobSpec], day_s: float) -> None:
    """An hourly small shuffle job, and the nightly pipeline around 01:00, from `day_s`."""
    for h in range(24):
        t = day_s + h * HOUR + rng.uniform(0, 120)
        jobs.append(_job(rng, len(jobs), t, rng.randint(16, 64), rng.uniform(10, 30), True))
    t = day_s + 1 * HOUR + rng.uniform(0, 600)
    for _ in range(rng.randint(5, 8)):
        tasks = int(2 ** rng.uniform(3, 10))
        task_s = rng.uniform(20, 60)
        jobs.append(_job(rng, len(jobs), t, tasks, task_s, True))
        t += rng.uniform(5, 15) * 60


def nightly_etl(seed: int) -> Trace:
    """A job cluster's day: a small job every hour and a nightly pipeline of wide shuffle jobs
    (8-1024 tasks per stage) around 01:00."""
    rng = random.Random(2000 + seed)
    jobs: list[JobSpec] = []
    _etl_day(rng, jobs, 0.0)
    jobs.sort(key=lambda j: j.submit_s)
    jobs = [JobSpec(i, j.submit_s, j.stages) for i, j in enumerate(jobs)]
    cluster = ClusterSpec(2, 32, 4, "job", autotermination_minutes=120)
    return Trace(f"nightly-etl-s{seed}", "nightly-etl", seed, tuple(jobs), cluster, 24 * HOUR)


def bursty(seed: int) -> Trace:
    """A Markov-modulated Poisson process: calm (2 jobs/h, ~2 h) and bursts (60 jobs/h,
    ~10 min)."""
    rng = random.Random(3000 + seed)
    jobs: list[JobSpec] = []
    t, end = 0.0, 12 * HOUR
    burst = False
    switch = rng.expovariate(1 / (2 * HOUR))
    while t < end:
        rate = 60.0 if burst else 2.0
        nxt = t + rng.expovariate(rate / HOUR)
        if nxt >= switch:
            t = switch
            burst = not burst
            switch = t + rng.expovariate(1 / ((10 * 60) if burst else (2 * HOUR)))
            continue
        t = nxt
        if t >= end:
            break
        tasks = min(400, max(8, int(rng.lognormvariate(math.log(40), 0.8))))
        jobs.append(_job(rng, len(jobs), t, tasks, rng.uniform(5, 30), rng.random() < 0.5))
    cluster = ClusterSpec(2, 30, 4, "all-purpose", autotermination_minutes=120)
    return Trace(f"bursty-s{seed}", "bursty", seed, tuple(jobs), cluster, end)


def square_wave(seed: int) -> Trace:
    """The flap adversary: demand alternates between `low` and `high` workers' worth of tasks
    every half period (period 2-5 min), i.e. around the point where a policy adds or removes
    workers."""
    rng = random.Random(4000 + seed)
    period = [120.0, 180.0, 240.0, 300.0][seed % 4]
    low = rng.randint(2, 4)
    high = low + rng.randint(2, 3)
    S = 4
    jobs: list[JobSpec] = []
    t, end, hi = 0.0, 4 * HOUR, False
    while t < end:
        level = high if hi else low
        jobs.append(JobSpec(len(jobs), t, (Stage(level * S, period / 2),)))
        t += period / 2
        hi = not hi
    cluster = ClusterSpec(2, 12, S, "all-purpose", autotermination_minutes=120)
    return Trace(f"square-wave-s{seed}", "square-wave", seed, tuple(jobs), cluster, end)


def long_job(seed: int) -> Trace:
    """One long job whose Spark stages are separated by 40-minute driver-only phases (the
    driver computes, no task runs: a busy cluster that looks idle to a task-only view), plus a
    few small queries from an attached notebook in the first two hours. Auto-termination is
    30 min, shorter than the gaps: terminating during a gap is a false termination."""
    rng = random.Random(5000 + seed)
    stages: list[Stage] = []
    for i in range(4):
        tasks = rng.randint(200, 400)
        stages.append(Stage(tasks, rng.uniform(20, 40), int(rng.uniform(16, 64) * MiB)))
        if i < 3:
            stages.append(Stage(0, 40 * 60.0))
    jobs = [JobSpec(0, 600.0, tuple(stages))]
    for _ in range(10):
        t = rng.uniform(0, 2 * HOUR)
        jobs.append(_job(rng, 0, t, rng.randint(4, 16), rng.uniform(2, 8), False))
    jobs.sort(key=lambda j: j.submit_s)
    jobs = [JobSpec(i, j.submit_s, j.stages) for i, j in enumerate(jobs)]
    cluster = ClusterSpec(1, 20, 4, "all-purpose", autotermination_minutes=30)
    return Trace(f"long-job-s{seed}", "long-job", seed, tuple(jobs), cluster, 5 * HOUR)


DAY = 24 * HOUR
WEEK_DAYS = 7


def office_hours_week(seed: int) -> Trace:
    """Seven days of the office-hours cluster, Monday first: the weekday shape on Monday to
    Friday (each day its own draw), and a few queries on Saturday and Sunday (10:00-14:00, 4 per
    hour). The working day shifts by up to half an hour from day to day."""
    rng = random.Random(6000 + seed)
    jobs: list[JobSpec] = []
    for d in range(WEEK_DAYS):
        if d < 5:
            shift = rng.uniform(-0.5, 0.5)
            _office_day(rng, jobs, d * DAY, 40.0, 15.0, 9.0 + shift, 18.0 + shift)
        else:
            _office_day(rng, jobs, d * DAY, 4.0, 4.0, 10.0, 14.0)
    cluster = ClusterSpec(2, 20, 4, "all-purpose", autotermination_minutes=60)
    name = f"office-hours-week-s{seed}"
    return Trace(name, "office-hours-week", seed, tuple(jobs), cluster, WEEK_DAYS * DAY)


def nightly_etl_week(seed: int) -> Trace:
    """Seven days of the nightly-etl job cluster (each day its own draw of the same schedule)."""
    rng = random.Random(7000 + seed)
    jobs: list[JobSpec] = []
    for d in range(WEEK_DAYS):
        _etl_day(rng, jobs, d * DAY)
    jobs.sort(key=lambda j: j.submit_s)
    jobs = [JobSpec(i, j.submit_s, j.stages) for i, j in enumerate(jobs)]
    cluster = ClusterSpec(2, 32, 4, "job", autotermination_minutes=120)
    name = f"nightly-etl-week-s{seed}"
    return Trace(name, "nightly-etl-week", seed, tuple(jobs), cluster, WEEK_DAYS * DAY)


WEEK_SHAPES = {"office-hours-week": office_hours_week, "nightly-etl-week": nightly_etl_week}


def week_traces(seeds: Iterable[int] = (0, 1, 2)) -> list[Trace]:
    return [make(s) for make in WEEK_SHAPES.values() for s in seeds]


SHAPES = {
    "office-hours": office_hours,
    "nightly-etl": nightly_etl,
    "bursty": bursty,
    "square-wave": square_wave,
    "long-job": long_job,
}


def builtin_traces(
    seeds: Iterable[int] = (0, 1, 2), *, swim_hours: float | None = None
) -> list[Trace]:
    out = [swim_trace(hours=swim_hours)]
    for make in SHAPES.values():
        out.extend(make(s) for s in seeds)
    return out


def demand_curve(trace: Trace, step_s: float = 60.0) -> list[tuple[float, float]]:
    """Demand with unlimited capacity, in workers: the tasks of every stage that runs during
    each step_s interval (every stage in one wave, at its nominal duration), over slots."""
    deltas: dict[int, float] = {}
    S = trace.cluster.slots_per_worker
    for job in trace.jobs:
        t = job.submit_s
        for st in job.stages:
            if st.tasks:
                a, b = int(t // step_s), int((t + st.task_s) // step_s)
                for k in range(a, b + 1):
                    deltas[k] = deltas.get(k, 0.0) + st.tasks / S
            t += st.task_s
    if not deltas:
        return []
    last = max(deltas)
    return [(k * step_s, deltas.get(k, 0.0)) for k in range(last + 1)]
