"""The ARM provisioner's node book (worker slots and the driver's ready report, kept in the
app's store: shared/adapters/arm/nodebook.py) goes whenever the cluster is stopped: an orphan
whose document is gone is never observed again, so its book would otherwise stay forever."""

from __future__ import annotations

from pathlib import Path

from shared.adapters.arm.nodebook import KIND, READY, SLOTS
from shared.adapters.sqlite_store import SqliteStore
from shared.domain.states import State
from tests.arm_world import ArmWorld
from tests.fake_arm import FakeArm, arm_provisioner
from tests.support import FakeClock


def _book(store: SqliteStore, cid: str) -> set[str]:
    return {id for id in (SLOTS, READY) if store.get(KIND, cid, id) is not None}


def test_an_orphans_book_goes_with_it(tmp_path: Path) -> None:
    # No drift period: the orphan listing runs at every tick.
    w = ArmWorld(tmp_path, record=False, drift_check_s=0)
    w.workspaces("ws1")
    cid = w.create("ws1", "c")
    w.run(12, step_ms=2000)
    assert w.cluster("ws1", cid).state == State.RUNNING
    assert _book(w.store, cid) == {SLOTS, READY}
    # Its document goes (a crash between writes, a restore): the nodes are an orphan's now.
    w.store.delete("cluster", "ws1", cid)
    assert w.c.lifecycle.sweep()["orphans"] == 1
    assert _book(w.store, cid) == set()


def test_the_book_goes_even_when_arm_has_nothing_of_the_cluster(tmp_path: Path) -> None:
    clock = FakeClock()
    store = SqliteStore(tmp_path / "store.db", clock=clock)
    prov = arm_provisioner(FakeArm(), clock=lambda: clock.ms / 1000, store=store)
    prov.ready_reported("gone", "driver-gone", 1, clock.ms)
    assert _book(store, "gone") == {READY}
    prov.stop_cluster("gone")  # no group, no deployment: nothing to delete in ARM
    assert _book(store, "gone") == set()
