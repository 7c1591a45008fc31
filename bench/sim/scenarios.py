"""Scenario shapes: ten named workloads, run on the cluster a CSV trace gets.

    scenario_traces(seeds=(0, 1), cluster=ClusterSpec(2, 20, 4, "all-purpose", 60))

The generated family (bench/sim/generated.py) draws its shapes' parameters at random within
ranges; these are the workloads one writes down by hand to test an autoscaler, each seeded,
each on the cluster `--trace` gives a CSV file by default (2-20 workers of 4 slots,
all-purpose, 60 min auto-termination), since that is how traces from elsewhere are run. A
policy chosen on the generated family alone met a peer that was Pareto-better in 15% of
these cells (docs/autoscaling.md, "Scenario shapes, and a small backlog waits a sample"), so
both families judge a change.

- `bi`: interactive queries, 60-200 an hour, 1-8 tasks of 0.5-5 s (8 h);
- `ramp`: jobs of 20-100 tasks of 5-20 s whose rate rises linearly to 60-150 an hour over
  3 h and falls back over 3 h;
- `step`: 2 h light (20 jobs/h of 4-40 tasks), 3 h heavy (120-220 jobs/h of 20-80 tasks
  of 5-20 s), 2 h light;
- `square<P>`: load on for half of every P minutes (P 4, 10 or 30: a 16-task job of 8-12 s
  every 20 s), off for the other half;
- `longtasks`: 3 jobs an hour of 40-200 tasks of 2-15 minutes, half of them shuffling;
- `pareto`: 20 jobs an hour, sizes Pareto-distributed (alpha 1.2, at least 4 tasks, at most
  3,000) of 2-30 s tasks;
- `spike`: a trickle (6 jobs/h of 1-10 tasks) and three jobs of 1,000-4,000 tasks at random
  times;
- `overload`: 25 jobs/h, and for 2 h 240 jobs/h of 30-90 tasks of 10-20 s, beyond what 20
  workers can run;
- `etl-adhoc`: an hourly pipeline of 400 tasks of 20-40 s and 30 ad-hoc queries an hour;
- `sparse`: 2-6 jobs an hour of 50-300 tasks of 5-30 s.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

from bench.sim.model import ClusterSpec, Trace, csv_row_to_job

HOUR = 3600.0
# The cluster `python -m bench.autoscale --trace` gives a CSV trace unless told otherwise
# (its --min-workers ... --autotermination defaults are these).
CSV_CLUSTER = ClusterSpec(2, 20, 4, "all-purpose", 60)

Row = tuple[float, int, float, float]  # submit_s, tasks, task_s, shuffle_mb
Shape = tuple[str, list[Row], float]  # name, rows, hours


def _poisson(rng: random.Random, t0: float, t1: float, per_hour: float) -> list[float]:
    out, t = [], t0
    while True:
        t += rng.expovariate(per_hour / HOUR)
        if t >= t1:
            return out
        out.append(t)


def _bi(r: random.Random) -> Shape:
    rate = r.uniform(60, 200)
    rows = [(t, r.randint(1, 8), r.uniform(0.5, 5), 0.0) for t in _poisson(r, 0, 8 * HOUR, rate)]
    return "bi", rows, 8


def _ramp(r: random.Random) -> Shape:
    peak, rows, t = r.uniform(60, 150), [], 0.0
    while t < 6 * HOUR:
        x = t / (3 * HOUR)
        t += r.expovariate(max(peak * (x if x < 1 else 2 - x), 1.0) / HOUR)
        if t < 6 * HOUR:
            rows.append((t, r.randint(20, 100), r.uniform(5, 20), 0.0))
    return "ramp", rows, 6.5


def _step(r: random.Random) -> Shape:
    def light(t0: float, t1: float) -> list[Row]:
        return [(t, r.randint(4, 40), r.uniform(2, 15), 0.0) for t in _poisson(r, t0, t1, 20)]

    rows = light(0, 2 * HOUR)
    heavy_rate = r.uniform(120, 220)
    rows += [
        (t, r.randint(20, 80), r.uniform(5, 20), 0.0)
        for t in _poisson(r, 2 * HOUR, 5 * HOUR, heavy_rate)
    ]
    return "step", rows + light(5 * HOUR, 7 * HOUR), 7.5


def _square(r: random.Random) -> Shape:
    period_min = r.choice((4, 10, 30))
    rows, t = [], 0.0
    while t < 6 * HOUR:
        for k in range(period_min * 60 // 2 // 20):
            rows.append((t + k * 20 + r.uniform(0, 5), 16, r.uniform(8, 12), 0.0))
        t += period_min * 60
    return f"square{period_min}", rows, 6.5


def _longtasks(r: random.Random) -> Shape:
    rows = [
        (t, r.randint(40, 200), r.uniform(120, 900), r.choice((0.0, 2000.0)))
        for t in _poisson(r, 0, 8 * HOUR, 3)
    ]
    return "longtasks", rows, 10


def _pareto(r: random.Random) -> Shape:
    rows = [
        (t, min(3000, int(4 * r.paretovariate(1.2))), r.uniform(2, 30), 0.0)
        for t in _poisson(r, 0, 8 * HOUR, 20)
    ]
    return "pareto", rows, 8.5


def _spike(r: random.Random) -> Shape:
    rows = [(t, r.randint(1, 10), r.uniform(1, 10), 0.0) for t in _poisson(r, 0, 8 * HOUR, 6)]
    for _ in range(3):
        rows.append((r.uniform(0, 8 * HOUR), r.randint(1000, 4000), r.uniform(10, 30), 0.0))
    return "spike", rows, 9


def _overload(r: random.Random) -> Shape:
    rows = [(t, r.randint(10, 60), r.uniform(5, 20), 0.0) for t in _poisson(r, 0, 6 * HOUR, 25)]
    rows += [
        (t, r.randint(30, 90), r.uniform(10, 20), 0.0) for t in _poisson(r, 2 * HOUR, 4 * HOUR, 240)
    ]
    return "overload", rows, 7


def _etl_adhoc(r: random.Random) -> Shape:
    rows = [(h * HOUR + r.uniform(0, 60), 400, r.uniform(20, 40), 6000.0) for h in range(12)]
    rows += [(t, r.randint(1, 16), r.uniform(1, 6), 0.0) for t in _poisson(r, 0, 12 * HOUR, 30)]
    return "etl-adhoc", rows, 12.5


def _sparse(r: random.Random) -> Shape:
    rate = r.uniform(2, 6)
    rows = [(t, r.randint(50, 300), r.uniform(5, 30), 0.0) for t in _poisson(r, 0, 10 * HOUR, rate)]
    return "sparse", rows, 10.5


# Shape i (from 1) draws from random.Random(seed * 7919 + i): adding a shape at the end leaves
# the others' traces as they were.
SHAPES: tuple[Callable[[random.Random], Shape], ...] = (
    _bi,
    _ramp,
    _step,
    _square,
    _longtasks,
    _pareto,
    _spike,
    _overload,
    _etl_adhoc,
    _sparse,
)


def scenario_traces(
    seeds: Iterable[int] = (0, 1), cluster: ClusterSpec = CSV_CLUSTER
) -> list[Trace]:
    out = []
    for seed in seeds:
        for i, make in enumerate(SHAPES, start=1):
            name, rows, hours = make(random.Random(seed * 7919 + i))
            jobs = tuple(
                csv_row_to_job(j, round(t, 3), n, round(d, 3), s)
                for j, (t, n, d, s) in enumerate(sorted(rows))
            )
            out.append(Trace(f"{name}-s{seed}", name, seed, jobs, cluster, hours * HOUR))
    return out
