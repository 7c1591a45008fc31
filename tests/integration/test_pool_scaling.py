"""Pool-aware scaling through the real services (SQLite store, record provisioner, fake clock):
the pool learns its acquisition time from the nodes clusters take, the autoscaling policy
projects a draining backlog over that time while the pool has idle nodes, and a forecasting
cluster's ask pre-warms its pool (the pool document saying which forecast asked)."""

from __future__ import annotations

from pathlib import Path

from shared.domain import autoscale_settings as st
from shared.domain import forecast as fc
from shared.domain import pool_scaling as rules
from shared.services.pool_scaling import ASK_KIND
from shared.services.prewarm import BOOT_KIND
from shared.services.prewarm import KIND as FORECAST_KIND
from tests.unit.test_utilization_service import World

DAY = fc.DAY_MS


def new_pool(w: World, min_idle: int) -> str:
    body = {"instance_pool_name": "p", "node_type_id": "rec-small", "min_idle_instances": min_idle}
    pool_id: str = w.pools.create(w.user, body)["instance_pool_id"]
    settle(w, pool_id)
    return pool_id


def settle(w: World, pool_id: str) -> dict[str, int]:
    """Reconcile the pool until its nodes have started (record nodes boot in 1 s)."""
    for _ in range(3):
        w.pools.reconcile("w", pool_id)
        w.clock.ms += 2000
    w.pools.reconcile("w", pool_id)
    stats: dict[str, int] = w.pools.get(w.user, pool_id)["stats"]
    return stats


def sample(w: World, cid: str, running: int, pending: int) -> None:
    body = {"running_tasks": running, "pending_tasks": pending, "total_slots": 4}
    w.util.heartbeat(w.agent(cid), {"cluster_id": cid, "sample": body})


def report(w: World, cid: str) -> str:
    ev = next(e for e in w.events(cid) if e["type"] == "AUTOSCALING_STATS_REPORT")
    explanation: str = ev["details"]["reason"]["parameters"]["explanation"]
    return explanation


def test_the_pool_learns_its_acquisition_time_and_the_policy_drains_over_it(
    tmp_path: Path,
) -> None:
    w = World(tmp_path)  # the policy's default node boot: 120 s
    pool_id = new_pool(w, 3)
    auto = {"autoscale": {"min_workers": 2, "max_workers": 6}}
    pooled = w.running_cluster(instance_pool_id=pool_id, **auto)
    # The driver and both workers were taken idle: three acquisitions, each the record
    # provisioner's warm start (0.1 s).
    assert settle(w, pool_id)["idle_count"] == 3  # refilled
    learned = w.store.get(BOOT_KIND, "w", rules.acquire_key(pool_id))
    assert learned is not None
    assert learned.body["stats"]["n"] == 3
    assert abs(learned.body["stats"]["mean_s"] - 0.1) < 1e-9
    # The learned time with its margin, at the 1 s floor (the default was 20 s).
    assert w.util.pool_scaling.acquire_s("w", pool_id, w.clock.ms) == 1.0

    plain = w.running_cluster(**auto)
    # A backlog draining at 0.4 tasks/s: 38 tasks left. Over 120 s of boot the two workers
    # clear it; over a 1 s acquisition they do not.
    for cid in (pooled, plain):
        sample(w, cid, 2, 40)
    w.clock.ms += 10_000
    for cid in (pooled, plain):
        sample(w, cid, 2, 36)
    assert w.util.autoscale_tick()["changed"] == 1
    assert w.store.get("cluster", "w", pooled).body["target_workers"] == 6
    assert w.store.get("cluster", "w", plain).body["target_workers"] == 2
    assert "draining at 0.4 tasks/s, 38 left in 1 s" in report(w, pooled)


def test_without_idle_nodes_in_the_pool_the_policy_expects_a_node_boot(tmp_path: Path) -> None:
    w = World(tmp_path)
    pool_id = new_pool(w, 0)
    cid = w.running_cluster(
        instance_pool_id=pool_id, autoscale={"min_workers": 2, "max_workers": 6}
    )
    assert settle(w, pool_id)["idle_count"] == 0
    sample(w, cid, 2, 40)
    w.clock.ms += 10_000
    sample(w, cid, 2, 36)
    assert w.util.autoscale_tick()["changed"] == 0
    assert w.store.get("cluster", "w", cid).body["target_workers"] == 2


def rising_history(w: World, cid: str, low: int, high: int) -> int:
    """Three days of demand `low`, except `high` in a 15-minute bin that starts at least 10
    minutes from now, stored as the cluster's forecast state. Returns when the high bin
    starts."""
    p = fc.ForecastParams()
    s = fc.new_state(cid, p)
    step = p.bin_s * 1000
    origin = p.week_start_ms + s.phase_ms
    high_start = origin + ((w.clock.ms + 600_000 - origin) // step + 1) * step
    t = w.clock.ms - 3 * DAY
    while t < w.clock.ms - 60_000:
        hot = ((t - high_start) % DAY) < step
        s = fc.observe(s, t, high if hot else low, p)
        t += 60_000
    w.store.create(FORECAST_KIND, cid, cid, fc.to_doc(s))
    return high_start


def tick_at(w: World, cids: list[str], ms: int) -> None:
    w.clock.ms = ms
    for cid in cids:
        sample(w, cid, 0, 0)
    w.util.autoscale_tick()


def test_a_forecast_ask_prewarms_the_pool_and_lapses(tmp_path: Path) -> None:
    w = World(tmp_path)
    pool_id = new_pool(w, 1)
    auto = {"autoscale": {"min_workers": 1, "max_workers": 8}}
    on = w.running_cluster(instance_pool_id=pool_id, spark_conf={st.FORECAST: "on"}, **auto)
    off = w.running_cluster(instance_pool_id=pool_id, **auto)
    assert settle(w, pool_id)["idle_count"] == 1
    high = rising_history(w, on, 1, 6)  # 6 workers from `high` on
    tick_at(w, [on, off], high - 500_000)  # nothing within reach yet
    assert w.store.get(ASK_KIND, pool_id, on) is None

    # 190 s ahead: beyond the cluster's own reach (a node boot, 120 s, + the timer's 60 s),
    # within its pool's (a node boot, then one acquisition, 20 s, + 60 s): the cluster holds
    # 1 and asks its pool for the 5 more its forecast wants.
    sent = len(w.bus.sent)
    tick_at(w, [on, off], high - 190_000)
    assert w.store.get("cluster", "w", on).body["target_workers"] == 1
    ask = w.store.get(ASK_KIND, pool_id, on)
    assert ask is not None and ask.body["extra"] == 5
    assert "forecast 6 workers" in ask.body["why"]
    assert w.store.get(ASK_KIND, pool_id, off) is None  # forecast off: no ask
    assert [m.session_id for m in w.bus.sent[sent:]] == [f"pool:{pool_id}"]

    stats = settle(w, pool_id)
    got = w.pools.get(w.user, pool_id)
    assert stats["idle_count"] == 5
    assert got["forecast_idle"] == 5
    assert got["forecast_why"].startswith(f"cluster {on}: forecast 6 workers")

    # 170 s ahead the cluster's own forecast reaches the busy bin, but the pool's idle nodes
    # cover it: the cluster holds one acquisition ahead (still 1 worker). The standing ask
    # is not rewritten (every 2 minutes, not on every tick).
    written = ask.body["written_ms"]
    tick_at(w, [on], high - 170_000)
    assert w.store.get("cluster", "w", on).body["target_workers"] == 1
    assert w.store.get(ASK_KIND, pool_id, on).body["written_ms"] == written  # type: ignore[union-attr]

    # No tick for 5 minutes: the ask lapses and the pool falls back to min_idle_instances
    # (the extra idle nodes stay until the pool's idle timeout, as any extra idle node).
    w.clock.ms = written + 300_000
    settle(w, pool_id)
    got = w.pools.get(w.user, pool_id)
    assert "forecast_idle" not in got and "forecast_why" not in got
    stored = w.pools.load("w", pool_id)
    assert stored is not None and stored[0].forecast_idle == 0
    assert got["stats"]["idle_count"] == 5
