"""Generated workload shapes: a seeded family of traces that are not tuned against.

    generated_traces(n=20, seeds=(0, 1, 2))   # shapes gen-00 .. gen-19, three draws each

Shape `gen-<i>` fixes a workload's parameters, drawn from `random.Random(SHAPE_SALT + i)`:
the arrival process, the job sizes, the share of shuffle jobs and driver-only commands, the
cluster (bounds, slots, kind, auto-termination) and the length. Seed `s` draws the jobs of one
run of that shape from `random.Random((SHAPE_SALT + i) * 1000 + s)`. The arrival processes:

- `poisson`: steady arrivals, 5-120 jobs per hour;
- `mmpp`: calm periods (1-10 jobs/h, 20-180 min on average) and bursts (20-200 jobs/h,
  3-30 min on average), a Markov-modulated Poisson process;
- `diurnal`: a working window of 6-12 h starting between 06:00 and 11:00, 10-80 jobs/h, a
  trickle (0-3 jobs/h) outside it;
- `periodic`: a schedule every 5-120 min (1-4 jobs each fire, up to 3 min late), the way cron
  jobs and streaming micro-batches arrive;
- `mixed`: a periodic schedule over a Poisson background.

Job sizes are lognormal (median 4-200 tasks, sigma 0.5-1.5, at most 2,000 tasks) of 1-60 s
tasks. The load is then scaled to a mean demand of 5-50% of `max_workers` (the arrival rates,
or the job sizes of the scheduled shapes). A run's length is 6-24 h (24 h for `diurnal`).
Every number here is the generator's; none was fitted to the policy.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable

from bench.sim.model import ClusterSpec, JobSpec, Trace, csv_row_to_job

SHAPE_SALT = 9_100
HOUR = 3600.0
ARRIVALS = ("poisson", "mmpp", "diurnal", "periodic", "mixed")


def _shape_params(i: int) -> dict[str, float | int | str]:
    r = random.Random(SHAPE_SALT + i)
    lo = r.randint(1, 4)
    p: dict[str, float | int | str] = {
        "arrival": ARRIVALS[i % len(ARRIVALS)] if i < len(ARRIVALS) else r.choice(ARRIVALS),
        "hours": r.choice((6, 8, 12, 24)),
        "rate": r.uniform(5, 120),
        "calm_rate": r.uniform(1, 10),
        "burst_rate": r.uniform(20, 200),
        "calm_min": r.uniform(20, 180),
        "burst_min": r.uniform(3, 30),
        "day_start_h": r.uniform(6, 11),
        "day_len_h": r.uniform(6, 12),
        "night_rate": r.uniform(0, 3),
        "period_min": r.choice((5, 10, 15, 30, 60, 120)),
        "per_fire": r.randint(1, 4),
        "median_tasks": math.exp(r.uniform(math.log(4), math.log(200))),
        "sigma": r.uniform(0.5, 1.5),
        "task_lo": r.uniform(1, 10),
        "task_spread": r.uniform(1.5, 6),
        "shuffle_share": r.uniform(0, 0.7),
        "driver_share": r.uniform(0, 0.1),
        "min_workers": lo,
        "max_workers": lo + r.randint(6, 40),
        "slots": r.choice((4, 4, 8)),
        "kind": "job" if r.random() < 0.2 else "all-purpose",
        "autotermination": r.choice((30, 60, 120)),
    }
    if p["arrival"] == "mixed":
        p["rate"] = float(p["rate"]) / 4
    if p["arrival"] == "diurnal":
        p["hours"] = 24
    # Scale the load to a mean demand of 5-50% of max_workers: the arrival rates of the
    # Poisson-like processes, the job sizes of the scheduled ones.
    target = r.uniform(0.05, 0.5)
    f = target / max(1e-9, _expected_util(p))
    if p["arrival"] in ("periodic", "mixed"):
        p["median_tasks"] = min(500.0, max(1.0, float(p["median_tasks"]) * f))
    else:
        for k in ("rate", "calm_rate", "burst_rate", "night_rate"):
            p[k] = min(300.0, float(p[k]) * f)
    return p


def _expected_util(p: dict[str, float | int | str]) -> float:
    """Mean demand over max_workers' slots, from the shape's parameters."""
    median, sigma = float(p["median_tasks"]), float(p["sigma"])
    mean_tasks = min(2000.0, median * math.exp(sigma * sigma / 2))
    lo = float(p["task_lo"])
    mean_task_s = (lo + min(60.0, lo * float(p["task_spread"]))) / 2
    kind = p["arrival"]
    per_h = 0.0
    if kind in ("poisson", "mixed"):
        per_h += float(p["rate"])
    if kind in ("periodic", "mixed"):
        per_h += int(p["per_fire"]) * 60 / float(p["period_min"])
    if kind == "mmpp":
        c, b = float(p["calm_min"]), float(p["burst_min"])
        per_h += (float(p["calm_rate"]) * c + float(p["burst_rate"]) * b) / (c + b)
    if kind == "diurnal":
        day = float(p["day_len_h"]) / 24
        per_h += float(p["rate"]) * day + float(p["night_rate"]) * (1 - day)
    per_h *= 1 - float(p["driver_share"])
    slots = int(p["max_workers"]) * int(p["slots"])
    return per_h * mean_tasks * mean_task_s / 3600 / slots


def _arrivals(p: dict[str, float | int | str], rng: random.Random) -> list[float]:
    end = float(p["hours"]) * HOUR
    out: list[float] = []
    kind = p["arrival"]
    if kind in ("poisson", "mixed"):
        t = 0.0
        while True:
            t += rng.expovariate(float(p["rate"]) / HOUR)
            if t >= end:
                break
            out.append(t)
    if kind in ("periodic", "mixed"):
        period = float(p["period_min"]) * 60
        t = rng.uniform(0, period)
        while t < end:
            out.extend(t + rng.uniform(0, 180) for _ in range(int(p["per_fire"])))
            t += period
    if kind == "mmpp":
        t, burst = 0.0, False
        switch = rng.expovariate(1 / (float(p["calm_min"]) * 60))
        while t < end:
            rate = float(p["burst_rate"] if burst else p["calm_rate"])
            nxt = t + rng.expovariate(rate / HOUR)
            if nxt >= switch:
                t, burst = switch, not burst
                mean_min = float(p["burst_min"] if burst else p["calm_min"])
                switch = t + rng.expovariate(1 / (mean_min * 60))
                continue
            t = nxt
            if t < end:
                out.append(t)
    if kind == "diurnal":
        a = float(p["day_start_h"]) * HOUR
        b = a + float(p["day_len_h"]) * HOUR
        t = 0.0
        while True:
            rate = float(p["rate"]) if a <= t % (24 * HOUR) < b else float(p["night_rate"])
            t += rng.expovariate(max(rate, 0.05) / HOUR)
            if t >= end:
                break
            out.append(t)
    return sorted(x for x in out if x < end)


def generated_trace(i: int, seed: int) -> Trace:
    p = _shape_params(i)
    rng = random.Random((SHAPE_SALT + i) * 1000 + seed)
    jobs: list[JobSpec] = []
    median, sigma = float(p["median_tasks"]), float(p["sigma"])
    lo_s = float(p["task_lo"])
    hi_s = min(60.0, lo_s * float(p["task_spread"]))
    for t in _arrivals(p, rng):
        if rng.random() < float(p["driver_share"]):
            jobs.append(csv_row_to_job(len(jobs), round(t, 3), 0, round(rng.uniform(30, 600), 3)))
            continue
        tasks = max(1, min(2000, int(rng.lognormvariate(math.log(median), sigma))))
        task_s = rng.uniform(lo_s, hi_s)
        shuffle = tasks * rng.uniform(16, 64) if rng.random() < float(p["shuffle_share"]) else 0.0
        jobs.append(csv_row_to_job(len(jobs), round(t, 3), tasks, round(task_s, 3), shuffle))
    if not jobs:  # a run with no arrival still has one job to score
        jobs.append(csv_row_to_job(0, 60.0, max(1, int(median)), round(lo_s, 3)))
    kind = "job" if p["kind"] == "job" else "all-purpose"
    cluster = ClusterSpec(
        int(p["min_workers"]),
        int(p["max_workers"]),
        int(p["slots"]),
        kind,
        autotermination_minutes=int(p["autotermination"]),
    )
    shape = f"gen-{i:02d}"
    return Trace(f"{shape}-s{seed}", shape, seed, tuple(jobs), cluster, float(p["hours"]) * HOUR)


def generated_traces(n: int, seeds: Iterable[int] = (0, 1, 2)) -> list[Trace]:
    seeds = list(seeds)
    return [generated_trace(i, s) for i in range(n) for s in seeds]


def describe(i: int) -> str:
    """One line per shape, for the docs."""
    p = _shape_params(i)
    return (
        f"gen-{i:02d}: {p['arrival']}, {p['hours']} h, median {float(p['median_tasks']):.0f} "
        f"tasks, {p['min_workers']}..{p['max_workers']} x {p['slots']}, {p['kind']}"
    )
