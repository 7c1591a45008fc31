"""The reconciler timer reads ARM for a RUNNING cluster only when its heartbeats stop (or its
spread-out drift read is due); a killed driver is noticed from the silence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shared.adapters.embedded_bus import EmbeddedBus
from shared.adapters.sqlite_store import SqliteStore
from shared.domain.node_health import drift_due
from shared.domain.states import State
from shared.services.auth import Principal
from shared.settings import Settings
from shared.wiring import Container
from tests.fake_arm import BASE, SUB, ArmLimits, FakeAgents, FakeArm, arm_provisioner
from tests.support import FakeClock


def _world(tmp_path: Path, **settings: Any) -> tuple[Container, FakeArm, EmbeddedBus, FakeClock]:
    clock = FakeClock()
    now = lambda: clock.ms / 1000  # noqa: E731
    arm = FakeArm(limits=ArmLimits(), clock=now, record=False)
    bus = EmbeddedBus(tmp_path / "bus.db", clock=clock)
    c = Container(
        settings=Settings(data_dir=tmp_path / "data", agent_callback_url=BASE, **settings),
        store=SqliteStore(tmp_path / "store.db", clock=clock),
        bus=bus,
        provisioner=arm_provisioner(arm, clock=now),
        clock=clock,
    )
    c.admin.create_workspace({"name": "one", "workspace_id": "ws1", "region": "westeurope"})
    arm.tick(2)
    return c, arm, bus, clock


def _drain(c: Container, bus: EmbeddedBus) -> None:
    while (d := bus.receive("cluster-lifecycle")) is not None:
        c.lifecycle.handle(d.body)
        bus.complete(d)


def test_heartbeats_spare_arm_and_their_silence_asks_it(tmp_path: Path) -> None:
    c, arm, bus, clock = _world(tmp_path, drift_check_s=7200, health_silent_beats=3)
    p = Principal("ws1", "admin", "t")
    cid = c.clusters.create(
        p,
        {"cluster_name": "c", "spark_version": "4.1.x-scala2.13", "num_workers": 1}
        | {"node_type_id": "Standard_D4ds_v5"},
    )
    agents = FakeAgents(arm)
    for _ in range(10):
        _drain(c, bus)
        arm.tick()
        agents.heartbeat(c.utilization)  # the drivers report ready
        clock.advance(2000)
    assert c.repo.load("ws1", cid)[0].state == State.RUNNING  # type: ignore[index]
    agent = Principal("ws1", "agent", "a", role="agent", scope=cid)
    sample = {"cluster_id": cid, "sample": {"running_tasks": 0, "total_slots": 4}}

    # Five minutes of beats and ticks chosen, by the rule, to hold neither the cluster's drift
    # moment (a hash of its id) nor the orphan listing's: the ticks before it beat and sweep.
    period = 7200_000

    def drift_in_window(t: int) -> bool:
        since, until = t - 10_000, t + 290_000  # the 30 ticks' (since, now] put together
        return drift_due(cid, since, until, period) or c.lifecycle.health.orphans_due(since, until)

    while drift_in_window(clock.ms):
        c.utilization.heartbeat(agent, sample)
        c.lifecycle.sweep()
        clock.advance(10_000)
    # The window's first tick covers (t - 10 s, t]: the previous sweep was 10 s ago, or none.
    reads = arm.counts["reads"]
    for _ in range(30):  # five minutes of beats and ticks
        c.utilization.heartbeat(agent, sample)
        c.lifecycle.sweep()
        clock.advance(10_000)
    assert arm.counts["reads"] - reads == 0  # the heartbeats say all is well

    # The driver VM is killed: no more beats. ARM is read once the silence is 3 beats long.
    vm = arm.find("virtualMachines")[0]
    vm["properties"]["provisioningState"] = "Failed"
    noticed = None
    for t in range(0, 120, 10):
        c.lifecycle.sweep()
        _drain(c, bus)
        if c.repo.load("ws1", cid)[0].state != State.RUNNING:  # type: ignore[index]
            noticed = t
            break
        clock.advance(10_000)
    assert noticed is not None and noticed <= 40


def test_one_paged_resource_graph_query_names_the_clusters_with_a_node_down(
    tmp_path: Path,
) -> None:
    c, arm, bus, clock = _world(tmp_path, drift_check_s=7200)
    p = Principal("ws1", "admin", "t")
    spec = {"spark_version": "4.1.x-scala2.13", "node_type_id": "Standard_D4ds_v5"}
    ids = [c.clusters.create(p, {**spec, "cluster_name": f"c{i}", "num_workers": 1}) for i in "ab"]
    agents = FakeAgents(arm)
    for _ in range(10):
        _drain(c, bus)
        arm.tick()
        agents.heartbeat(c.utilization)  # the drivers report ready
        clock.advance(2000)
    assert c.provisioner.unhealthy_clusters() == set()  # type: ignore[attr-defined]
    # A worker instance fails (it runs no agent: only ARM can tell).
    vmss = next(r for r in arm.find("virtualMachineScaleSets") if r["tags"]["ClusterId"] == ids[1])
    next(iter(vmss["instances"].values()))["state"] = "Failed"
    arm.record = True
    arm.take()
    assert c.provisioner.unhealthy_clusters() == {ids[1]}  # type: ignore[attr-defined]
    assert [(r.method, r.path) for r in arm.take()] == [
        ("POST", "/providers/Microsoft.ResourceGraph/resources")
    ]
    # The next tick observes that cluster (not the healthy one), and the planner replaces it.
    c.lifecycle.sweep()
    _drain(c, bus)
    observed = {r.path for r in arm.take() if r.method == "GET"}
    assert any(ids[1] in path for path in observed) and not any(ids[0] in p for p in observed)


def test_resource_graph_pages(tmp_path: Path) -> None:
    clock = FakeClock()
    arm = FakeArm()
    prov = arm_provisioner(arm, clock=lambda: clock.ms / 1000)
    for i in range(2500):
        arm._put_res(
            f"/subscriptions/{SUB}/resourceGroups/g/providers/Microsoft.Compute/"
            f"virtualMachines/vm{i}",
            "westeurope",
            {"ClusterId": f"c{i:04d}", "Vendor": "sparkplane"},
            props={"provisioningState": "Failed"},
        )
    arm.take()
    assert prov.unhealthy_clusters() == {f"c{i:04d}" for i in range(2500)}
    assert len(arm.take()) == 3  # pages of 1000


def test_a_suspect_is_read_first_when_a_burst_has_spent_the_read_budget(tmp_path: Path) -> None:
    c, arm, bus, clock = _world(tmp_path, drift_check_s=7200)
    p = Principal("ws1", "admin", "t")
    spec = {"spark_version": "4.1.x-scala2.13", "node_type_id": "Standard_D4ds_v5"}
    cid = c.clusters.create(p, {**spec, "cluster_name": "c", "num_workers": 1})
    agents = FakeAgents(arm)
    for _ in range(10):
        _drain(c, bus)
        arm.tick()
        agents.heartbeat(c.utilization)  # the driver reports ready
        clock.advance(2000)
    assert c.repo.load("ws1", cid)[0].state == State.RUNNING  # type: ignore[index]
    # A burst has left the bucket at its last eighth and a thousand refused reconciles queued
    # for the next four minutes.
    budget = c.provisioner.throttle.budget(SUB)  # type: ignore[attr-defined]
    budget.remaining("reads", 30, clock.ms / 1000)
    for _ in range(1000):
        budget.need("reads", 6, clock.ms / 1000)
    assert budget.need("reads", 6, clock.ms / 1000) > 200  # a transition would wait its turn
    arm.find("virtualMachines")[0]["properties"]["provisioningState"] = "Failed"
    # The next tick: Resource Graph names it, its read goes, and so does the reconcile it sends.
    c.lifecycle.sweep()
    _drain(c, bus)
    assert c.repo.load("ws1", cid)[0].state != State.RUNNING  # type: ignore[index]
