"""The ARM provisioner's node book (worker slots and the driver's ready report, kept in the
app's store: shared/adapters/arm/nodebook.py) goes whenever the cluster is stopped: an orphan
whose document is gone is never observed again, so its book would otherwise stay forever."""

from __future__ import annotations

from pathlib import Path

from shared.adapters.arm.nodebook import KIND, READY, SLOTS
from shared.adapters.embedded_bus import EmbeddedBus
from shared.adapters.sqlite_store import SqliteStore
from shared.domain.states import State
from shared.services.auth import Principal
from shared.settings import Settings
from shared.wiring import Container
from tests.fake_arm import BASE, FakeAgents, FakeArm, arm_provisioner
from tests.support import FakeClock

SPEC = {"spark_version": "4.1.x-scala2.13", "node_type_id": "Standard_D4ds_v5", "num_workers": 1}


def _book(store: SqliteStore, cid: str) -> set[str]:
    return {id for id in (SLOTS, READY) if store.get(KIND, cid, id) is not None}


def test_an_orphans_book_goes_with_it(tmp_path: Path) -> None:
    clock = FakeClock()
    now = lambda: clock.ms / 1000  # noqa: E731
    arm = FakeArm(clock=now, record=False)
    bus = EmbeddedBus(tmp_path / "bus.db", clock=clock)
    store = SqliteStore(tmp_path / "store.db", clock=clock)
    c = Container(
        # No drift period: the orphan listing runs at every tick.
        settings=Settings(data_dir=tmp_path / "data", agent_callback_url=BASE, drift_check_s=0),
        store=store,
        bus=bus,
        provisioner=arm_provisioner(arm, clock=now, store=store),
        clock=clock,
    )
    c.admin.create_workspace({"name": "one", "workspace_id": "ws1", "region": "westeurope"})
    arm.tick(2)
    cid = c.clusters.create(Principal("ws1", "admin", "t"), {**SPEC, "cluster_name": "c"})
    agents = FakeAgents(arm)
    for _ in range(12):
        while (d := bus.receive("cluster-lifecycle")) is not None:
            c.lifecycle.handle(d.body)
            bus.complete(d)
        arm.tick()
        agents.heartbeat(c.utilization)  # the driver reports ready
        clock.advance(2000)
    got = c.repo.load("ws1", cid)
    assert got is not None and got[0].state == State.RUNNING
    assert _book(store, cid) == {SLOTS, READY}
    # Its document goes (a crash between writes, a restore): the nodes are an orphan's now.
    store.delete("cluster", "ws1", cid)
    assert c.lifecycle.sweep()["orphans"] == 1
    assert _book(store, cid) == set()


def test_the_book_goes_even_when_arm_has_nothing_of_the_cluster(tmp_path: Path) -> None:
    clock = FakeClock()
    store = SqliteStore(tmp_path / "store.db", clock=clock)
    prov = arm_provisioner(FakeArm(), clock=lambda: clock.ms / 1000, store=store)
    prov.ready_reported("gone", "driver-gone", 1, clock.ms)
    assert _book(store, "gone") == {READY}
    prov.stop_cluster("gone")  # no group, no deployment: nothing to delete in ARM
    assert _book(store, "gone") == set()
