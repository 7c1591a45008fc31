"""The metrics of a live autoscaling run and their side-by-side table with the simulator's.

Pure functions over what bench/autoscale_live.py records on real local Spark: each job's
submit and finish time, each worker's billed interval, the autoscaler's scale-up requests and
when each new worker joined. The definitions are the simulator's (bench/sim/engine.py):

- slowdown: (finish - submit) / the job's duration with unlimited capacity
  (`JobSpec.ideal_s(jitter)`, every stage in one wave as long as its slowest task);
- node-seconds: workers only (the driver is not counted), each billed from its request
  (booting included) until it is released, the run ending at max(trace duration, last finish);
- p50/p95: numpy's linear-interpolation percentile (`bench.sim.engine.percentile`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bench.sim.engine import percentile


@dataclass(frozen=True, slots=True)
class JobRun:
    """One job of the trace as it ran: seconds from the run's start; finish None = never."""

    job_id: int
    submit_s: float
    ideal_s: float
    finish_s: float | None


@dataclass(frozen=True, slots=True)
class Interval:
    """A worker billed from `start_s` until `end_s` (None: still there at the end)."""

    node_id: str
    start_s: float
    end_s: float | None


def run_end_s(jobs: Sequence[JobRun], duration_s: float) -> float:
    """The run ends at the trace's duration or the last finish, whichever is later."""
    finishes = [j.finish_s for j in jobs if j.finish_s is not None]
    return max([duration_s, *finishes])


def node_seconds(intervals: Sequence[Interval], end_s: float) -> float:
    """Billed worker-seconds within [0, end_s]."""
    total = 0.0
    for iv in intervals:
        stop = end_s if iv.end_s is None else min(iv.end_s, end_s)
        total += max(0.0, stop - max(0.0, iv.start_s))
    return total


def slowdowns(jobs: Sequence[JobRun]) -> list[float]:
    """The slowdown of every finished job with a positive ideal duration."""
    return [
        (j.finish_s - j.submit_s) / j.ideal_s
        for j in jobs
        if j.finish_s is not None and j.ideal_s > 0
    ]


def billed_from(started_s: float, upsizes_s: Sequence[float]) -> float:
    """A worker is billed from the latest scale-up request at or before its start (the
    simulator's add_nodes), or from its start when none was (the cluster's initial workers)."""
    before = [u for u in upsizes_s if u <= started_s + 1e-6]
    return max(before) if before else started_s


def join_times(
    upsizes_s: Sequence[float], joined: Mapping[str, tuple[float, float]]
) -> list[float]:
    """Seconds from the scale-up request to the worker's join, per added worker.

    `upsizes_s`: when the autoscaler asked for more workers (its RESIZING events);
    `joined`: node id -> (when the provisioner started the node, when it joined the cluster).
    A worker is matched to the latest request at or before its start; a worker started before
    any request (the cluster's initial ones) has no join time."""
    out = []
    for started, joined_at in sorted(joined.values()):
        if any(u <= started + 1e-6 for u in upsizes_s):
            out.append(joined_at - billed_from(started, upsizes_s))
    return out


def metrics(jobs: Sequence[JobRun], intervals: Sequence[Interval], duration_s: float) -> dict:
    """The simulator's row fields for a live run."""
    end = run_end_s(jobs, duration_s)
    sd = slowdowns(jobs)
    return {
        "node_seconds": round(node_seconds(intervals, end), 1),
        "slowdown_p50": round(percentile(sd, 50), 4),
        "slowdown_p95": round(percentile(sd, 95), 4),
        "slowdown_mean": round(sum(sd) / len(sd), 4) if sd else float("nan"),
        "jobs": len(jobs),
        "jobs_finished": sum(j.finish_s is not None for j in jobs),
        "end_s": round(end, 1),
    }


COMPARED = (
    ("node-seconds", "node_seconds"),
    ("slowdown p50", "slowdown_p50"),
    ("slowdown p95", "slowdown_p95"),
)
# The goal: the simulator within 20% of the live run on each compared metric.
TOLERANCE = 0.20


def ratio(sim: float, live: float) -> float:
    return sim / live if live else float("nan")


def compare(live: Mapping[str, float], sim: Mapping[str, float]) -> list[dict]:
    """One row per compared metric: live, sim, sim/live and whether it is within TOLERANCE."""
    rows = []
    for label, key in COMPARED:
        r = ratio(float(sim[key]), float(live[key]))
        rows.append(
            {
                "metric": label,
                "live": live[key],
                "sim": sim[key],
                "ratio": round(r, 3),
                "within": not math.isnan(r) and abs(r - 1.0) <= TOLERANCE + 1e-9,
            }
        )
    return rows


def format_table(live: Mapping[str, float], sims: Mapping[str, Mapping[str, float]]) -> str:
    """The side-by-side table as plain text: per metric the live value, then per simulator
    variant its value and sim/live (`*` marks a ratio outside TOLERANCE)."""
    head = f"{'metric':<14}{'live':>10}"
    for name in sims:
        head += f"{name:>{max(10, len(name) + 2)}}{'sim/live':>10}"
    lines = [head, "-" * len(head)]
    for label, key in COMPARED:
        line = f"{label:<14}{_num(float(live[key])):>10}"
        for name, sim in sims.items():
            [row] = [r for r in compare(live, sim) if r["metric"] == label]
            mark = " " if row["within"] else "*"
            line += f"{_num(float(sim[key])):>{max(10, len(name) + 2)}}{row['ratio']:>9.3f}{mark}"
        lines.append(line)
    return "\n".join(lines)


def _num(v: float) -> str:
    return f"{v:.1f}" if abs(v) >= 100 else f"{v:.3f}"
