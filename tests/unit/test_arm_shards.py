"""Managed resource groups over several subscriptions (shared/adapters/arm/shards.py): a
workspace is placed by shared/domain/arm_placement.py, its clusters follow it, later calls find
them again (a new instance too, from Resource Graph), and the request budgets are per
subscription."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shared.adapters.embedded_bus import EmbeddedBus
from shared.adapters.sqlite_store import SqliteStore
from shared.domain.states import State
from shared.services.auth import Principal
from shared.settings import Settings
from shared.wiring import Container
from tests.fake_arm import BASE, ArmLimits, FakeAgents, FakeArm, FakeArms, sharded_provisioner
from tests.support import FakeClock

SUBS = ["00000000-0000-0000-0000-00000000000a", "00000000-0000-0000-0000-00000000000b"]
SPEC = {"spark_version": "4.1.x-scala2.13", "node_type_id": "Standard_D4ds_v5", "num_workers": 1}


def _world(tmp_path: Path) -> tuple[Container, FakeArms, EmbeddedBus, FakeClock, Any]:
    clock = FakeClock()
    now = lambda: clock.ms / 1000  # noqa: E731
    arms = FakeArms([FakeArm(limits=ArmLimits(), clock=now, subscription=s) for s in SUBS])
    bus = EmbeddedBus(tmp_path / "bus.db", clock=clock)
    store = SqliteStore(tmp_path / "store.db", clock=clock)
    # Worker slots and ready reports in the app's store, shared by its instances.
    prov = sharded_provisioner(arms, clock=now, store=store)
    c = Container(
        settings=Settings(data_dir=tmp_path / "data", agent_callback_url=BASE),
        store=store,
        bus=bus,
        provisioner=prov,
        clock=clock,
    )
    return c, arms, bus, clock, prov


def _run(c: Container, arms: FakeArms, bus: EmbeddedBus, clock: FakeClock, n: int = 12) -> None:
    agents = [FakeAgents(a) for a in arms.arms.values()]
    for _ in range(n):
        for a in agents:
            a.heartbeat(c.utilization)  # the drivers report ready
        while (d := bus.receive("cluster-lifecycle")) is not None:
            c.lifecycle.handle(d.body)
            bus.complete(d)
        arms.tick()
        clock.advance(5000)


def test_workspaces_are_spread_and_their_clusters_follow_them(tmp_path: Path) -> None:
    c, arms, bus, clock, prov = _world(tmp_path)
    for ws in ("w1", "w2", "w3"):
        c.admin.create_workspace({"name": ws, "workspace_id": ws, "region": "westeurope"})
    arms.tick(2)
    a, b = (arms.arms[s] for s in SUBS)
    # Fewest clusters, then fewest workspaces, then the order listed: a, b, a.
    assert sorted(a.groups) == ["sparkplane-w1-managed", "sparkplane-w3-managed"]
    assert sorted(b.groups) == ["sparkplane-w2-managed"]
    ids = {
        ws: c.clusters.create(Principal(ws, "u", "t"), {**SPEC, "cluster_name": ws})
        for ws in ("w1", "w2")
    }
    _run(c, arms, bus, clock)
    for ws, cid in ids.items():
        got = c.repo.load(ws, cid)
        assert got is not None and got[0].state == State.RUNNING
    assert {r["tags"]["ClusterId"] for r in a.find("virtualMachines")} == {ids["w1"]}
    assert {r["tags"]["ClusterId"] for r in b.find("virtualMachines")} == {ids["w2"]}
    # ARM's limits are per subscription: each has its own budget, each its own requests.
    assert {k for k in prov.throttle.budgets} == set(SUBS)
    assert a.counts["writes"] > 0 and b.counts["writes"] > 0
    # One bulk query spans both subscriptions.
    b.find("virtualMachines")[0]["properties"]["provisioningState"] = "Failed"
    assert prov.unhealthy_clusters() == {ids["w2"]}


def test_a_new_instance_finds_workspaces_and_clusters_where_they_are(tmp_path: Path) -> None:
    c, arms, bus, clock, _ = _world(tmp_path)
    for ws in ("w1", "w2"):
        c.admin.create_workspace({"name": ws, "workspace_id": ws, "region": "westeurope"})
    arms.tick(2)
    cid = c.clusters.create(Principal("w2", "u", "t"), {**SPEC, "cluster_name": "x"})
    _run(c, arms, bus, clock)
    # Another instance of the app: nothing remembered, everything found from Resource Graph.
    other = sharded_provisioner(arms, clock=lambda: clock.ms / 1000, store=c.store)
    assert other.for_workspace("w2").subscription_id == SUBS[1]
    assert {n.status for n in other.observe(cid)} == {"RUNNING"}
    assert other.cluster_ids() == {cid}
    other.stop_cluster(cid)
    assert all(
        r["properties"]["provisioningState"] == "Deleting"
        for r in arms.arms[SUBS[1]].find("virtualMachines")
    )
