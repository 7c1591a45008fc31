"""Worker join times, learned per node type (shared/domain/worker_boot.py): the pure rule, then
the reconcile that times a join and the autoscaler that projects over it."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.domain import worker_boot as wb
from shared.domain.autoscale_prewarm import BootStats
from shared.domain.cluster import Cluster, ClusterSpec
from shared.domain.states import State
from shared.services.prewarm import BOOT_KIND
from shared.services.utilization import Utilization
from tests.unit.test_utilization_service import World


def cluster(state: State, executors: list[dict], **spec: object) -> Cluster:
    return Cluster(
        cluster_id="c",
        workspace_id="w",
        spec=ClusterSpec(spark_version="4.1.x-scala2.13", node_type_id="n", **spec),
        state=state,
        executors=executors,
    )


def worker(node_id: str, start_ms: int) -> dict:
    return {"node_id": node_id, "start_timestamp": start_ms}


def test_a_worker_new_in_the_snapshot_of_a_running_cluster_is_timed_from_its_request() -> None:
    before = cluster(State.RESIZING, [worker("a", 1_000)])
    after = cluster(State.RUNNING, [worker("a", 1_000), worker("b", 50_000)])
    assert wb.joins(before, after, now_ms=57_500) == [7.5]
    assert wb.joins(after, after, now_ms=60_000) == []  # seen before: timed once


def test_a_starting_cluster_and_a_pooled_one_time_nothing() -> None:
    after = cluster(State.RUNNING, [worker("b", 50_000)])
    assert wb.joins(cluster(State.PENDING, []), after, now_ms=57_500) == []
    pooled = cluster(State.RUNNING, [], instance_pool_id="p")
    assert wb.joins(pooled, after, now_ms=57_500) == []


def test_the_projection_uses_the_mean_once_a_join_is_timed_and_zero_stays_off() -> None:
    assert wb.projection_boot_s(None, 120.0) == 120.0
    stats = wb.learn(None, [10.0, 20.0])
    assert stats == BootStats(mean_s=13.0, var_s2=pytest.approx(21.0), n=2)
    assert wb.projection_boot_s(stats, 120.0) == 13.0
    assert wb.projection_boot_s(stats, 0.0) == 0.0


def sample(w: World, cid: str, running: int, pending: int) -> None:
    body = {"running_tasks": running, "pending_tasks": pending, "active_jobs": 1}
    w.util.heartbeat(w.agent(cid), {"cluster_id": cid, "sample": {**body, "total_slots": 2}})


def draining(w: World, cid: str) -> int:
    """A backlog that shrinks by 1 task/s; then one autoscaler tick. Returns the target."""
    sample(w, cid, running=2, pending=40)
    w.clock.ms += 10_000
    sample(w, cid, running=2, pending=30)
    w.util.autoscale_tick()
    got = w.repo.load("w", cid)
    assert got is not None
    return got[0].target_workers


def test_the_reconcile_times_joins_and_the_autoscaler_projects_over_them(tmp_path: Path) -> None:
    w = World(tmp_path)  # the default policy: a 120 s boot until a join is timed
    auto = {"min_workers": 1, "max_workers": 8}
    # Draining at 1 task/s, 32 tasks are gone in 120 s: nothing to scale up for.
    before = w.running_cluster(autoscale=auto)
    assert draining(w, before) == 1

    # A resize of a running cluster: the record workers join within a reconcile (2 s here).
    grown = w.running_cluster(num_workers=1)
    w.clusters.resize(w.user, {"cluster_id": grown, "num_workers": 3})
    for _ in range(3):
        w.lifecycle.reconcile("w", grown)
        w.clock.ms += 2000
    assert len(w.clusters.get(w.user, grown)["executors"]) == 3
    rec = w.store.get(BOOT_KIND, "w", wb.key("rec-small"))
    assert rec is not None and rec.body["stats"]["n"] == 2
    assert rec.body["stats"]["mean_s"] == 2.0

    # The same drain, projected over 2 s: about 30 tasks are left, 15 workers' worth.
    after = w.running_cluster(autoscale=auto)
    assert draining(w, after) == 8
    report = next(e for e in w.events(after) if e["type"] == "AUTOSCALING_STATS_REPORT")
    assert "30 left in 2 s" in report["details"]["reason"]["parameters"]["explanation"]
    # Another instance of the app reads the same learned time.
    util = Utilization(w.store, w.repo, w.clusters, w.clock, w.settings, w.prov)
    assert util.worker_boot.projection_boot_s("w", "rec-small", 120.0, w.clock.ms) == 2.0
    assert util.worker_boot.projection_boot_s("w", "rec-medium", 120.0, w.clock.ms) == 120.0
