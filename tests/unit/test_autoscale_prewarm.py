"""Capacity ahead of predicted use, in-process with the real services (SQLite store, record
provisioner) and a fake clock: the forecast hold of the autoscaling timer, proactive resume,
and the start of an existing cluster ahead of a scheduled run."""

from __future__ import annotations

from pathlib import Path

import pytest
from databricks.sdk.service.compute import ClusterEvent

from shared.domain import autoscale_prewarm as rules
from shared.domain import autoscale_settings as st
from shared.domain import cluster as dom
from shared.domain import forecast as fc
from shared.domain.states import State
from shared.services.auth import Principal
from shared.services.prewarm import KIND, Prewarm
from tests.unit.test_utilization_service import World

DAY = fc.DAY_MS


def history(world: World, cid: str, workers: int, days: int = 3) -> None:
    """`days` days of constant demand before now, stored as the cluster's forecast state."""
    s = fc.new_state(cid)
    t = world.clock.ms - days * DAY
    while t < world.clock.ms - 600_000:
        s = fc.observe(s, t, workers)
        t += 60_000
    world.store.create(KIND, cid, cid, fc.to_doc(s))


def beat(world: World, cid: str) -> None:
    world.util.heartbeat(
        world.agent(cid), {"cluster_id": cid, "sample": {"running_tasks": 0, "total_slots": 2}}
    )


def test_the_timer_holds_the_forecast_and_the_event_names_it(tmp_path: Path) -> None:
    world = World(tmp_path)
    auto = {"autoscale": {"min_workers": 1, "max_workers": 5}}
    on = world.running_cluster(**auto, spark_conf={st.FORECAST: "on"})
    off = world.running_cluster(**auto)
    for cid in (on, off):
        history(world, cid, 4)
        beat(world, cid)
    world.clock.ms += 1000
    assert world.util.autoscale_tick()["changed"] == 1
    assert world.store.get("cluster", "w", on).body["target_workers"] == 4
    assert world.store.get("cluster", "w", off).body["target_workers"] == 1
    report = next(e for e in world.events(on) if e["type"] == "AUTOSCALING_STATS_REPORT")
    params = report["details"]["reason"]["parameters"]
    assert params["forecast_workers"] == "4.0"
    assert "forecast 4 workers" in params["explanation"]


def _terminate(world: World, cid: str, code: str) -> None:
    reason = dom.TerminationReason(code=code, type="SUCCESS")
    system = Principal("w", "idle-monitor", "system")
    world.clusters.mutate(
        system, cid, lambda c: dom.terminate(c, reason=reason, user=None, now=world.clock.ms)
    )
    for _ in range(3):
        world.lifecycle.reconcile("w", cid)
        world.clock.ms += 1000
    assert world.state(cid) == State.TERMINATED


def test_proactive_resume_starts_an_inactive_cluster_ahead_of_predicted_use(
    tmp_path: Path,
) -> None:
    world = World(tmp_path)
    conf = {st.PROACTIVE_RESUME: "on"}
    idle = world.running_cluster(num_workers=1, autotermination_minutes=60, spark_conf=conf)
    by_user = world.running_cluster(num_workers=1, autotermination_minutes=60, spark_conf=conf)
    plain = world.running_cluster(num_workers=1, autotermination_minutes=60)
    _terminate(world, idle, "INACTIVITY")
    _terminate(world, by_user, "USER_REQUEST")
    _terminate(world, plain, "INACTIVITY")
    for cid in (idle, by_user, plain):
        history(world, cid, 2)
    stats = Prewarm(world.store, world.clusters, world.clock).tick()
    assert stats["resumed"] == 1
    assert world.state(idle) == State.PENDING
    assert world.state(by_user) == world.state(plain) == State.TERMINATED
    starting = next(e for e in world.events(idle) if e["type"] == "STARTING")
    assert starting["details"]["cause"] == "PROACTIVE_RESUME"
    assert "forecast 2 workers" in starting["details"]["why"]
    # databricks-sdk reads every event (a string `reason` would break `clusters.events`).
    for e in world.events(idle):
        ClusterEvent.from_dict(e)


def test_an_existing_cluster_is_started_ahead_of_its_scheduled_run_and_the_start_is_learned(
    tmp_path: Path,
) -> None:
    world = World(tmp_path)
    cid = world.running_cluster(num_workers=1)
    _terminate(world, cid, "USER_REQUEST")
    job = {
        "job_id": 1,
        "workspace_id": "w",
        "state": "SCHEDULED",
        "schedule_next_ms": world.clock.ms + 600_000,
        "settings": {"tasks": [{"task_key": "t", "existing_cluster_id": cid}]},
    }
    world.store.create("job", "w", "job-1", job)
    prewarm = Prewarm(world.store, world.clusters, world.clock)
    assert prewarm.tick()["started_for_schedule"] == 0  # 600 s away, a start takes ~300 s
    world.clock.ms += 300_000
    assert prewarm.tick()["started_for_schedule"] == 1
    starting = next(e for e in world.events(cid) if e["type"] == "STARTING")
    assert starting["details"]["cause"] == "SCHEDULED_RUN"
    for _ in range(4):
        world.lifecycle.reconcile("w", cid)
        world.clock.ms += 2000
    assert world.state(cid) == State.RUNNING
    assert prewarm.tick()["learned"] == 1
    assert prewarm.expected_start_s("w", "rec-small") < 60  # record nodes start in seconds


def test_the_expected_start_is_learned_with_a_margin():
    p = rules.PrewarmParams()
    assert rules.expected_boot_s(None, p) == p.default_boot_s
    s = None
    for x in (100, 120, 110, 130):
        s = rules.learn_boot(s, x, p)
    assert s is not None and s.n == 4
    assert 110 < rules.expected_boot_s(s, p) < 210
    # One start timed: no variance yet, the margin is a share of the mean, wide at first.
    one = rules.learn_boot(None, 20, p)
    assert rules.expected_boot_s(one, p) == 60
    many = one
    for _ in range(50):
        many = rules.learn_boot(many, 20, p)
    assert rules.expected_boot_s(many, p) == pytest.approx(20 * (1 + 2 * (0.15 + 0.85 / 51)))
    assert rules.start_ahead(1_000_000, 900_000, 120) is not None
    assert rules.start_ahead(1_000_000, 800_000, 120) is None
    assert rules.start_ahead(1_000_000, 1_000_001, 120) is None


def test_forecast_states_are_written_a_bounded_number_per_tick(tmp_path: Path) -> None:
    from shared.domain.autoscale import Sample
    from shared.services.prewarm import Forecasts

    world = World(tmp_path)
    keeper = Forecasts(world.store, writes_per_tick=2)
    t0 = world.clock.ms
    for cid in ("a", "b", "c"):
        # two bins' worth of samples: the first bin closes
        samples = [Sample(t0 + k * 60_000, running_tasks=4) for k in range(32)]
        keeper.observe(cid, samples, 4, 8)
    assert all(world.store.get(KIND, c, c) is None for c in "abc")  # not written yet
    assert keeper.flush(2) == 2 and keeper.flush(2) == 1
    for c in "abc":
        rec = world.store.get(KIND, c, c)
        assert rec is not None and fc.from_doc(rec.body) == keeper.load(c)
