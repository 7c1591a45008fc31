"""The live run's metrics use the simulator's definitions, and the table compares them."""

from __future__ import annotations

import math

import pytest

from bench.live_compare import (
    Interval,
    JobRun,
    billed_from,
    compare,
    format_table,
    join_times,
    metrics,
    node_seconds,
    run_end_s,
    slowdowns,
)
from bench.sim.engine import Sim
from bench.sim.model import ClusterSpec, JobSpec, Stage, Trace
from bench.sim.policies import Sparkplane, make_policy
from shared.domain.autoscale import AutoscaleParams


def test_node_seconds_clips_to_the_run_and_bills_open_intervals_to_the_end() -> None:
    ivs = [
        Interval("w1", 0.0, None),  # there all along
        Interval("w2", 100.0, 160.0),
        Interval("w3", 150.0, 500.0),  # released after the end: billed to the end
        Interval("w4", -5.0, 10.0),  # started before zero: billed from zero
    ]
    assert node_seconds(ivs, 200.0) == pytest.approx(200 + 60 + 50 + 10)


def test_slowdown_is_duration_over_ideal_and_skips_unfinished_jobs() -> None:
    jobs = [JobRun(0, 10.0, 20.0, 50.0), JobRun(1, 0.0, 10.0, 10.0), JobRun(2, 5.0, 10.0, None)]
    assert slowdowns(jobs) == [2.0, 1.0]
    assert run_end_s(jobs, 30.0) == 50.0
    assert run_end_s(jobs, 60.0) == 60.0


def test_metrics_match_the_simulator_on_the_same_schedule() -> None:
    """A run whose jobs and workers are the simulator's own gives the simulator's numbers."""
    jobs = tuple(JobSpec(i, 10.0 * i, (Stage(6, 20.0),)) for i in range(6))
    trace = Trace("t", "csv", 0, jobs, ClusterSpec(1, 3, slots_per_worker=2), 300.0)
    sim = Sim(trace, make_policy("static-max"), 30.0, jitter=0.0)
    res = sim.run()
    runs = []
    for spec in jobs:
        runs.append(JobRun(spec.job_id, spec.submit_s, spec.ideal_s(), sim.finish_s[spec.job_id]))
    ivs = [Interval(f"w{i}", 0.0, None) for i in range(3)]
    m = metrics(runs, ivs, trace.duration_s)
    assert m["node_seconds"] == pytest.approx(res.node_hours * 3600, abs=0.1)
    assert m["slowdown_p50"] == pytest.approx(res.slowdown_p50, abs=1e-4)
    assert m["slowdown_p95"] == pytest.approx(res.slowdown_p95, abs=1e-4)
    assert m["jobs_finished"] == m["jobs"] == 6


def test_join_time_counts_from_the_latest_request_before_the_node_started() -> None:
    joined = {
        "initial": (-20.0, -1.0),  # the cluster's own worker: no request before it
        "a": (12.0, 40.0),
        "b": (12.5, 41.0),
        "c": (95.0, 120.0),
    }
    assert join_times([90.0, 10.0], joined) == [30.0, 31.0, 30.0]
    assert billed_from(95.0, [90.0, 10.0]) == 90.0
    assert billed_from(-20.0, [90.0, 10.0]) == -20.0


def test_compare_flags_metrics_outside_twenty_percent() -> None:
    live = {"node_seconds": 1000.0, "slowdown_p50": 1.0, "slowdown_p95": 2.0}
    sim = {"node_seconds": 1150.0, "slowdown_p50": 1.3, "slowdown_p95": 2.0}
    rows = compare(live, sim)
    assert [(r["metric"], r["ratio"], r["within"]) for r in rows] == [
        ("node-seconds", 1.15, True),
        ("slowdown p50", 1.3, False),
        ("slowdown p95", 1.0, True),
    ]
    text = format_table(live, {"sim": sim, "sim-b": live})
    assert text.splitlines()[0].split() == [
        "metric",
        "live",
        "sim",
        "sim/live",
        "sim-b",
        "sim/live",
    ]
    assert text.splitlines()[3].split() == [
        "slowdown",
        "p50",
        "1.000",
        "1.300",
        "1.300*",
        "1.000",
        "1.000",
    ]
    assert math.isnan(compare({**live, "node_seconds": 0.0}, sim)[0]["ratio"])


def _first_request_s(timeline: list[tuple[float, int, int]]) -> float:
    return next(t for t, nodes, _ in timeline if nodes > 1)


def test_report_lag_reads_the_agents_report_made_before_the_tick() -> None:
    """A backlog that appears between the report (5 s before the tick) and the tick is seen
    one tick later than with the simulator's exact samples."""
    jobs = (JobSpec(0, 7.0, (Stage(4, 120.0),)),)
    trace = Trace("t", "csv", 0, jobs, ClusterSpec(1, 4, slots_per_worker=1), 200.0)
    exact = Sparkplane(AutoscaleParams())
    Sim(trace, exact, 30.0, record_period_s=1.0).run()
    lagged = Sparkplane(AutoscaleParams(), report_lag_s=5.0)
    sim = Sim(trace, lagged, 30.0, record_period_s=1.0)
    sim.run()
    assert [s.ts_ms for s in lagged.samples][:3] == [5000, 15000, 25000]
    assert [s.ts_ms for s in exact.samples][:3] == [10000, 20000, 30000]
    assert _first_request_s(sim.timeline) == 20.0


def test_hold_while_resizing_decides_nothing_until_the_workers_joined() -> None:
    """A second backlog while the first scale-up boots: the simulator adds workers at once,
    the live timer (hold_while_resizing) only once the booting ones joined."""
    jobs = (JobSpec(0, 1.0, (Stage(2, 300.0),)), JobSpec(1, 15.0, (Stage(3, 300.0),)))
    trace = Trace("t", "csv", 0, jobs, ClusterSpec(1, 6, slots_per_worker=1), 400.0)
    runs = {}
    # Every backlog met on its first sample: this is about the timer's hold, not rule 3's wait
    # for a backlog within the cluster's slots (the first job's 1 pending task on 1 slot).
    params = AutoscaleParams(up_small_backlog_s=0.0)
    for hold in (False, True):
        pol = Sparkplane(params, hold_while_resizing=hold)
        sim = Sim(trace, pol, 60.0, record_period_s=1.0)
        sim.run()
        runs[hold] = [(t, n) for t, n, _ in sim.timeline if t in (11.0, 21.0, 61.0, 71.0)]
    # at 10 s: one more worker for the first job's backlog; at 20 s the second job's backlog
    assert runs[False] == [(11.0, 2), (21.0, 5), (61.0, 5), (71.0, 5)]
    # held while the worker asked for at 10 s boots; it joins at 70 s, the tick then grows
    assert runs[True] == [(11.0, 2), (21.0, 2), (61.0, 2), (71.0, 5)]


def test_while_resizing_the_timer_still_cancels_workers_whose_backlog_is_gone() -> None:
    """Three 12 s tasks on one slot: two workers are asked for at 10 s, the tasks are done by
    40 s, before the workers join (60 s boot). The live timer takes that one decision from a
    RESIZING cluster: the joining workers go at once (with the rule off, they join and stay)."""
    jobs = (JobSpec(0, 1.0, (Stage(3, 12.0),)),)
    trace = Trace("t", "csv", 0, jobs, ClusterSpec(1, 6, slots_per_worker=1), 200.0)
    sizes = {}
    for cancel in (True, False):
        pol = Sparkplane(AutoscaleParams(cancel_joining=cancel), hold_while_resizing=True)
        sim = Sim(trace, pol, 60.0, record_period_s=1.0)
        sim.run()
        sizes[cancel] = [n for t, n, _ in sim.timeline if t in (11.0, 41.0, 75.0)]
    assert sizes[True] == [3, 1, 1]
    assert sizes[False] == [3, 3, 3]
