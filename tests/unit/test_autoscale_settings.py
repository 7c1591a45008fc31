"""The autoscaling settings of a cluster's spark_conf: validation through the clusters API, and
the preference knob as the live autoscaling timer applies it."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.domain import autoscale_settings as st
from shared.domain.autoscale import AutoscaleParams
from shared.errors import InvalidParameterValue
from tests.unit.test_utilization_service import World

BODY = {"autoscale": {"min_workers": 1, "max_workers": 3}}


def test_preferences_run_from_cost_to_latency_and_balanced_is_the_default_policy():
    assert list(st.PREFERENCES) == ["cost", "economy", "balanced", "responsive", "latency"]
    assert st.PREFERENCES[st.DEFAULT_PREFERENCE] == AutoscaleParams()
    holds = [p.down_hold_s for p in st.PREFERENCES.values()]
    assert holds == sorted(holds)
    default = AutoscaleParams(floor_factor=9.0)
    assert st.params_for({}, default) is default
    assert st.params_for({st.PREFERENCE: "cost"}, default) == st.PREFERENCES["cost"]


def test_flags_default_off_and_read_on_off():
    assert not st.flag({}, st.FORECAST) and not st.flag(None, st.PROACTIVE_RESUME)
    assert st.flag({st.FORECAST: "on"}, st.FORECAST)
    assert not st.flag({st.FORECAST: "off"}, st.FORECAST)


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({st.PREFERENCE: "cheap"}, "preference: 'cheap'; expected one of cost, economy"),
        ({st.FORECAST: "yes"}, "forecast: 'yes'; expected on or off"),
        ({st.PROACTIVE_RESUME: "1"}, "proactiveResume: '1'; expected on or off"),
        ({"spark.sparkplane.autoscaling.prefrence": "cost"}, "Unknown spark_conf"),
    ],
)
def test_the_clusters_api_refuses_an_invalid_setting(
    tmp_path: Path, conf: dict, message: str
) -> None:
    world = World(tmp_path)
    body = {"spark_version": "4.1.x-scala2.13", "node_type_id": "rec-small", **BODY}
    with pytest.raises(InvalidParameterValue, match=message):
        world.clusters.create(world.user, {**body, "spark_conf": conf})
    ok = {st.PREFERENCE: "latency", st.FORECAST: "on", "spark.executor.cores": "2"}
    cid = world.clusters.create(world.user, {**body, "spark_conf": ok})
    assert world.clusters.get(world.user, cid)["spark_conf"] == ok


def _beat(world: World, cid: str, running: int, pending: int) -> None:
    nodes = [e["node_id"] for e in world.clusters.get(world.user, cid).get("executors", [])]
    per = running // max(1, len(nodes))
    world.util.heartbeat(
        world.agent(cid),
        {
            "cluster_id": cid,
            "sample": {
                "running_tasks": running,
                "pending_tasks": pending,
                "active_jobs": 1 if running or pending else 0,
                "total_slots": 2 * len(nodes),
                "workers": [{"node_id": n, "running_tasks": per} for n in nodes],
            },
        },
    )


def test_the_live_timer_applies_the_preference(tmp_path: Path) -> None:
    """A burst grows both clusters to 3 workers; 130 s after it, the `cost` cluster (40 s hold,
    half of the workers per step) has released its workers and the default one (180 s hold)
    still holds them."""
    world = World(tmp_path, autoscale_params='{"expected_boot_s": 0}')
    cost = world.running_cluster(**BODY, spark_conf={st.PREFERENCE: "cost"})
    default = world.running_cluster(**BODY)
    for _ in range(2):  # a backlog lasting 10 s (`cost` scales up only for one that lasts)
        for cid in (cost, default):
            _beat(world, cid, 2, 20)
        world.clock.ms += 10_000
    world.clock.ms -= 9000
    assert world.util.autoscale_tick()["changed"] == 2
    for _ in range(4):
        for cid in (cost, default):
            world.lifecycle.reconcile("w", cid)
        world.clock.ms += 2000
    for _ in range(13):  # idle for 130 s: 3 -> 2 after the hold, 2 -> 1 a minute later
        for cid in (cost, default):
            _beat(world, cid, 0, 0)
        world.clock.ms += 10_000
        world.util.autoscale_tick()
        for cid in (cost, default):
            world.lifecycle.reconcile("w", cid)
    sizes = {c: world.store.get("cluster", "w", c).body["target_workers"] for c in (cost, default)}
    assert sizes == {cost: 1, default: 3}


def test_the_simulator_names_the_frontier_rows_after_the_settings():
    from bench.sim.policies import FRONTIER, make_policy

    assert list(FRONTIER) == [f"sparkplane-{name}" for name in st.PREFERENCES]
    assert make_policy("sparkplane-cost").params == st.PREFERENCES["cost"]  # type: ignore[attr-defined]
    assert make_policy("sparkplane-k4").params == st.PREFERENCES["latency"]  # type: ignore[attr-defined]
