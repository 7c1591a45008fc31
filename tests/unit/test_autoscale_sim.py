"""Smoke test of the autoscaling simulator (bench/): small traces, a few seconds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.autoscale import POLICIES, goal_check, main, run_all
from bench.sim.engine import Sim
from bench.sim.model import ClusterSpec, JobSpec, Stage, Trace, csv_row_to_job
from bench.sim.policies import make_policy
from bench.sim.traces import long_job

KEYS = {
    "trace",
    "policy",
    "node_hours",
    "slowdown_p50",
    "slowdown_p95",
    "scaling_actions",
    "reversals",
    "false_terminations",
    "idle_node_hours",
    "boot_s",
}


def tiny_trace() -> Trace:
    """Two bursts (one with shuffle) an hour apart and a trickle of small jobs."""
    jobs = [csv_row_to_job(0, 60, 64, 20.0, shuffle_mb=512)]
    jobs += [csv_row_to_job(1 + i, 300 + 120 * i, 2, 3.0) for i in range(20)]
    jobs.append(csv_row_to_job(21, 3600, 128, 15.0))
    cluster = ClusterSpec(1, 8, 4, "all-purpose", autotermination_minutes=30)
    return Trace("tiny", "tiny", 0, tuple(jobs), cluster, 2 * 3600.0)


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    results = run_all([tiny_trace()], [60.0], POLICIES, progress=False)
    return [r.row() for r in results]


def test_every_policy_runs_and_conserves_work(rows):
    assert {r["policy"] for r in rows} == set(POLICIES)
    for r in rows:
        assert r.keys() >= KEYS
        assert r["jobs_finished"] == r["jobs"] == 22, r["policy"]
        assert r["slowdown_p50"] >= 1.0 - 1e-9


def test_sparkplane_uses_fewer_node_hours_than_static_max(rows):
    by = {r["policy"]: r for r in rows}
    assert by["sparkplane"]["node_hours"] < by["static-max"]["node_hours"]
    assert by["sparkplane"]["false_terminations"] == 0
    verdicts = goal_check(rows)
    assert len(verdicts) == 1 and verdicts[0]["trace"] == "tiny"


def test_all_task_seconds_run_at_least_once():
    trace = tiny_trace()
    sim = Sim(trace, make_policy("sparkplane"), 60.0, jitter=0.0)
    res = sim.run()
    assert res.jobs_finished == len(trace.jobs)
    busy_slot_s = sum(j.task_seconds for j in trace.jobs)
    # capacity billed covers the work that ran
    assert res.node_hours * 3600 * trace.cluster.slots_per_worker >= busy_slot_s


def test_lost_shuffle_is_recomputed_and_the_job_still_finishes():
    # a map stage on 4 workers, then a long reduce; the workers are removed mid-reduce
    job = JobSpec(0, 0.0, (Stage(16, 10.0, 1 << 20), Stage(1, 300.0)))
    trace = Trace("loss", "loss", 0, (job,), ClusterSpec(4, 4, 4), 600.0)

    class Remover:
        name = "remover"
        period_s = 30.0
        done = False

        def initial_workers(self, sim):
            return 4

        def on_restart(self, sim):
            pass

        def tick(self, sim):
            if sim.now >= 60 and not self.done:
                self.done = True
                idle = [n for n in sim.ready.values() if n.busy == 0][:2]
                sim.remove_nodes(idle)
                sim.add_nodes(2, action=False)

    res = Sim(trace, Remover(), 30.0, jitter=0.0).run()
    assert res.jobs_finished == 1
    assert res.recomputed_task_hours > 0


def test_driver_only_gaps_are_never_terminated():
    res = Sim(long_job(0), make_policy("sparkplane"), 60.0).run()
    assert res.false_terminations == 0
    assert res.jobs_finished == res.jobs


def test_cli_contract_with_a_csv_trace(tmp_path: Path):
    csv = tmp_path / "t.csv"
    csv.write_text(
        "submit_s,tasks,task_s,shuffle_mb\n0,32,10,0\n30,4,2,64\n900,64,20,256\n1000,0,60,\n"
    )
    out = tmp_path / "out.json"
    assert main(["--trace", str(csv), "--json", str(out), "--boot", "60", "--summary-only"]) == 0
    data = json.loads(out.read_text())
    assert isinstance(data, list) and data
    assert {r["trace"] for r in data} == {"t"}
    assert any(r["policy"] == "sparkplane" for r in data)
    for r in data:
        assert r.keys() >= KEYS
        assert r["jobs_finished"] == r["jobs"] == 4


def test_a_reduction_cancels_booting_workers_first_as_the_reconciler_does():
    from bench.sim.engine import READY
    from bench.sim.policies import reconcile_removals

    trace = Trace("one", "one", 0, (csv_row_to_job(0, 10, 4, 5.0),), ClusterSpec(1, 8, 4), 60.0)
    sim = Sim(trace, make_policy("static-min"), 60.0)
    sim.add_nodes(3)
    ready = sim._new_node(0.0)  # an alive worker next to the three booting ones
    ready.state = READY
    sim.ready[ready.name] = ready
    booting = sorted(sim.booting.values(), key=lambda n: -n.requested_at)
    picked = reconcile_removals(sim, 4, (ready.name,))
    assert picked[:3] == booting and picked[3] is ready
    assert reconcile_removals(sim, 2, (ready.name,)) == booting[:2]


@pytest.mark.parametrize("boot_s", [30.0, 180.0])
def test_sparkplane_projects_over_the_boot_it_timed_as_the_live_reconcile_does(boot_s):
    """Before any join the policy assumes its default boot; after its first scale-up it
    projects over the joins it saw (the workers of a start, which wait for the driver, and of a
    pool are not timed)."""
    trace = Trace(
        "burst", "burst", 0, (csv_row_to_job(0, 10, 400, 30.0),), ClusterSpec(1, 8, 4), 900.0
    )
    policy = make_policy("sparkplane")
    sim = Sim(trace, policy, boot_s)
    assert policy.params_now(sim).expected_boot_s == 120.0  # AutoscaleParams' default
    sim.run()
    assert sim.joins and set(sim.joins) == {boot_s}
    assert policy.params_now(sim).expected_boot_s == boot_s
