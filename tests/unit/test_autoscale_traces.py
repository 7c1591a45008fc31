"""Multi-day traces, the warm-up window and the generated shapes of the autoscaling simulator."""

from __future__ import annotations

import json
from pathlib import Path

from bench.autoscale import main
from bench.sim.engine import Sim
from bench.sim.generated import generated_trace, generated_traces
from bench.sim.model import ClusterSpec, Trace, csv_row_to_job
from bench.sim.policies import make_policy
from bench.sim.scenarios import CSV_CLUSTER, SHAPES, scenario_traces
from bench.sim.traces import load_csv, nightly_etl_week, office_hours_week

DAY = 86_400.0


def test_week_traces_span_seven_days_with_quiet_weekends():
    week = office_hours_week(0)
    assert week.duration_s == 7 * DAY
    per_day = [sum(1 for j in week.jobs if d * DAY <= j.submit_s < (d + 1) * DAY) for d in range(7)]
    assert min(per_day[:5]) > 200  # weekdays
    assert max(per_day[5:]) < 40  # Saturday and Sunday
    etl = nightly_etl_week(0)
    assert max(j.submit_s for j in etl.jobs) > 6 * DAY
    assert [j.job_id for j in etl.jobs] == list(range(len(etl.jobs)))


def test_a_csv_may_span_a_week(tmp_path: Path):
    csv = tmp_path / "w.csv"
    csv.write_text("submit_s,tasks,task_s\n0,8,5\n604000,8,5\n")
    trace = load_csv(csv, ClusterSpec(1, 4, 4))
    res = Sim(trace, make_policy("sparkplane"), 60.0).run()
    assert res.jobs_finished == 2 and res.end_s >= 604_000


def _two_day_trace() -> Trace:
    jobs = (csv_row_to_job(0, 3600.0, 64, 30.0), csv_row_to_job(1, DAY + 3600.0, 64, 30.0))
    return Trace("two", "two", 0, jobs, ClusterSpec(2, 8, 4, autotermination_minutes=None), 2 * DAY)


def test_warmup_scores_only_what_follows_it():
    full = Sim(_two_day_trace(), make_policy("static-max"), 60.0).run()
    half = Sim(_two_day_trace(), make_policy("static-max"), 60.0, warmup_s=DAY).run()
    assert full.node_hours == 8 * 48
    assert half.node_hours == 8 * 24  # billed from the warm-up on, workers alive at it too
    # both jobs ran; only the second one is scored
    assert half.jobs_finished == 2
    ours = Sim(_two_day_trace(), make_policy("sparkplane"), 60.0, warmup_s=DAY).run()
    assert ours.slowdown_p50 == ours.slowdown_p95  # a single scored job
    assert ours.node_hours < 8 * 24


def test_generated_shapes_are_deterministic_and_varied():
    a, b = generated_trace(3, 1), generated_trace(3, 1)
    assert a.jobs == b.jobs and a.cluster == b.cluster
    assert generated_trace(3, 2).jobs != a.jobs
    traces = generated_traces(10, [0])
    assert len({t.shape for t in traces}) == 10
    assert all(t.jobs for t in traces)
    assert len({t.cluster for t in traces}) > 5


def test_cli_generated_sweep_with_comma_seeds(tmp_path: Path, capsys):
    out = tmp_path / "g.json"
    argv = ["--generated", "1", "--seeds", "0,1", "--boot", "60", "--json", str(out)]
    argv += ["--policies", "sparkplane", "databricks-optimized", "static-max"]
    assert main(argv) == 0
    rows = json.loads(out.read_text())
    assert {r["trace"] for r in rows} == {"gen-00-s0", "gen-00-s1"}
    assert "| sparkplane | databricks-optimized |" in capsys.readouterr().out


def test_scenario_shapes_are_deterministic_and_run_on_the_csv_cluster():
    a, b = scenario_traces([3]), scenario_traces([3])
    assert [t.jobs for t in a] == [t.jobs for t in b]
    assert scenario_traces([4])[0].jobs != a[0].jobs
    assert len({t.shape.rstrip("0123456789") for t in a}) == len(SHAPES) == len(a)
    assert all(t.jobs and t.cluster == CSV_CLUSTER for t in a)
    small = ClusterSpec(1, 8, 8)
    assert {t.cluster for t in scenario_traces([0], small)} == {small}


def test_cli_scenarios_take_the_command_lines_cluster(tmp_path: Path):
    out = tmp_path / "s.json"
    argv = ["--scenarios", "--seeds", "0", "--boot", "60", "--json", str(out), "--max-workers"]
    argv += ["6", "--policies", "static-max", "--summary-only"]
    assert main(argv) == 0
    rows = {r["trace"]: r for r in json.loads(out.read_text())}
    assert len(rows) == len(SHAPES) and all(r["jobs_finished"] == r["jobs"] for r in rows.values())
    assert rows["bi-s0"]["node_hours"] == 6 * 8  # 6 workers for the 8 hours of the trace


def _daily() -> Trace:
    """A 64-task job at 10:00 every day for four days; the cluster terminates after 30 min idle."""
    jobs = tuple(csv_row_to_job(d, d * DAY + 36_000.0, 64, 20.0) for d in range(4))
    cluster = ClusterSpec(1, 16, 4, autotermination_minutes=30)
    return Trace("daily", "daily", 0, jobs, cluster, 4 * DAY)


def test_the_forecast_has_the_workers_ready_for_the_daily_job():
    warm = 2 * DAY
    reactive = Sim(_daily(), make_policy("sparkplane"), 60.0, warmup_s=warm).run()
    ahead = Sim(_daily(), make_policy("sparkplane-forecast"), 60.0, warmup_s=warm).run()
    # Reactive: a cold start and a boot at every job; predicted: resumed and grown ahead.
    assert reactive.slowdown_p95 > 3
    assert ahead.slowdown_p95 < 1.1
    assert ahead.false_terminations == 0
    assert ahead.node_hours < 0.2 * 16 * 48  # far below holding the maximum
    no_resume = Sim(_daily(), make_policy("sparkplane-forecast-noresume"), 60.0, warmup_s=warm)
    assert no_resume.run().slowdown_p95 > 3  # the cold start is what resume saves


def test_a_pool_serves_workers_in_its_acquisition_time_and_bills_its_idle_instances():
    from bench.sim.pool import Pool

    pool = Pool(min_idle=2, acquire_s=20.0, boot_s=180.0)
    assert pool.take(0.0) == 20.0 and pool.take(0.0) == 20.0
    assert pool.take(0.0) is None  # empty until the replacements have booted
    assert pool.take(200.0) == 20.0
    pool.set_min_idle(300.0, 0)
    assert pool.ready == 0 and not pool.booting
    assert pool.close(1000.0) > 0
    jobs = (csv_row_to_job(0, 600.0, 32, 30.0),)
    trace = Trace("p", "p", 0, jobs, ClusterSpec(1, 8, 4, autotermination_minutes=None), 1800.0)
    booted = Sim(trace, make_policy("sparkplane"), 180.0).run()
    pooled = Sim(trace, make_policy("sparkplane"), 180.0, pool_min_idle=8).run()
    assert pooled.slowdown_p95 < booted.slowdown_p95
    assert pooled.node_hours > booted.node_hours  # the idle instances are billed
    assert pooled.idle_node_hours > booted.idle_node_hours


def test_the_policy_expects_the_pools_acquisition_only_while_it_has_idle_instances():
    from shared.domain.autoscale import AutoscaleParams

    jobs = (csv_row_to_job(0, 600.0, 32, 30.0),)
    trace = Trace("p", "p", 0, jobs, ClusterSpec(1, 8, 4, autotermination_minutes=None), 1800.0)
    policy = make_policy("sparkplane")
    sim = Sim(trace, policy, 180.0, pool_min_idle=1, pool_acquire_s=15.0)
    policy.initial_workers(sim)
    assert policy.params_now(sim).expected_boot_s == 15.0  # type: ignore[attr-defined]
    assert sim.pool is not None and sim.pool.take(0.0) == 15.0
    # The pool is empty until its replacement boots: a new worker takes a node boot.
    node_boot = AutoscaleParams().expected_boot_s
    assert policy.params_now(sim).expected_boot_s == node_boot  # type: ignore[attr-defined]
    sim.now = 200.0
    assert policy.params_now(sim).expected_boot_s == 15.0  # type: ignore[attr-defined]
