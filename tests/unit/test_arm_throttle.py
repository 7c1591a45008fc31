"""Every ARM request through the subscription's budget; ARM's 429 as a scheduled retry of the
reconcile, never a failed cluster (shared/adapters/arm/throttle.py, services/lifecycle.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.adapters.embedded_bus import EmbeddedBus
from shared.adapters.sqlite_store import SqliteStore
from shared.domain.states import State
from shared.ports import ProvisionerThrottled
from shared.services.auth import Principal
from shared.settings import Settings
from shared.wiring import Container
from tests.fake_arm import BASE, ArmLimits, FakeAgents, FakeArm, arm_provisioner
from tests.support import FakeClock


class SimTime:
    """Seconds for the ARM side, the same instant as the services' FakeClock."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock

    def __call__(self) -> float:
        return self.clock.ms / 1000


def test_reads_beyond_the_budget_are_not_sent(tmp_path: Path) -> None:
    clock = FakeClock()
    now = SimTime(clock)
    arm = FakeArm(limits=ArmLimits(), clock=now)
    prov = arm_provisioner(arm, clock=now)
    sent = 0
    with pytest.raises(ProvisionerThrottled) as e:
        for _ in range(300):
            prov.workspace_status("ws1")  # one read each
            sent += 1
    assert sent == 250 and e.value.retry_after_s == pytest.approx(0.04)
    assert arm.counts["reads"] == 250 and arm.throttled == 0
    clock.advance(1000)
    prov.workspace_status("ws1")  # refilled


def test_arm_says_what_is_left_and_its_429_is_a_retry_after(tmp_path: Path) -> None:
    clock = FakeClock()
    now = SimTime(clock)
    # ARM has less than the documented bucket (other callers in the subscription).
    arm = FakeArm(limits=ArmLimits(reads=(5, 1.0)), clock=now)
    prov = arm_provisioner(arm, clock=now)
    for _ in range(5):
        prov.workspace_status("ws1")
    # The header said 0 left: the next read is not even sent.
    with pytest.raises(ProvisionerThrottled):
        prov.workspace_status("ws1")
    assert arm.counts["reads"] == 5
    clock.advance(2000)
    prov.workspace_status("ws1")
    arm._buckets["reads"].tokens = 0  # another instance of the app spent them meanwhile
    with pytest.raises(ProvisionerThrottled) as e:
        prov.workspace_status("ws1")  # ARM answers 429, with its Retry-After
    assert arm.throttled == 1 and e.value.retry_after_s == 1
    with pytest.raises(ProvisionerThrottled):
        prov.workspace_status("ws1")  # shut until then: not sent
    clock.advance(1100)
    prov.workspace_status("ws1")
    assert arm.throttled == 1


def test_a_throttled_reconcile_is_retried_later_and_the_cluster_starts(tmp_path: Path) -> None:
    clock = FakeClock()
    now = SimTime(clock)
    arm = FakeArm(limits=ArmLimits(), clock=now, record=False)
    prov = arm_provisioner(arm, clock=now)
    bus = EmbeddedBus(tmp_path / "bus.db", clock=clock)
    c = Container(
        settings=Settings(data_dir=tmp_path / "data", agent_callback_url=BASE),
        store=SqliteStore(tmp_path / "store.db", clock=clock),
        bus=bus,
        provisioner=prov,
        clock=clock,
    )
    c.admin.create_workspace({"name": "one", "workspace_id": "ws1", "region": "westeurope"})
    arm.tick(2)
    p = Principal("ws1", "admin", "t")
    spec = {"spark_version": "4.1.x-scala2.13", "node_type_id": "Standard_D4ds_v5"}
    # Writes left: 2. Three creates: the third is queued, not failed.
    prov.throttle.budget(arm_sub()).remaining("writes", 2, now())
    ids = [c.clusters.create(p, {**spec, "cluster_name": f"c{i}", "num_workers": 0}) for i in "abc"]
    agents = FakeAgents(arm)
    for _ in range(60):
        while (d := bus.receive("cluster-lifecycle")) is not None:
            c.lifecycle.handle(d.body)
            bus.complete(d)
        arm.tick()
        agents.heartbeat(c.utilization)  # the drivers report ready
        clock.advance(1000)
    states = [c.repo.load("ws1", i)[0].state for i in ids]  # type: ignore[index]
    assert states == [State.RUNNING] * 3
    events = [e["type"] for i in ids for e in c.clusters.events(p, {"cluster_id": i})["events"]]
    assert "TERMINATING" not in events
    assert arm.counts["writes"] >= 4 and arm.throttled == 0


def arm_sub() -> str:
    from tests.fake_arm import SUB

    return SUB


def test_throttled_is_a_temporary_failure_with_its_delay() -> None:
    e = ProvisionerThrottled(2.5)
    assert e.retry_after_s == 2.5 and "2.5" in str(e)
    assert json.loads(json.dumps({"s": e.retry_after_s})) == {"s": 2.5}


def test_successive_throttled_retries_are_not_dropped_as_duplicates(tmp_path: Path) -> None:
    clock = FakeClock()
    now = SimTime(clock)
    arm = FakeArm(limits=ArmLimits(), clock=now, record=False)
    prov = arm_provisioner(arm, clock=now)
    bus = EmbeddedBus(tmp_path / "bus.db", clock=clock)
    c = Container(
        settings=Settings(data_dir=tmp_path / "data", agent_callback_url=BASE),
        store=SqliteStore(tmp_path / "store.db", clock=clock),
        bus=bus,
        provisioner=prov,
        clock=clock,
    )
    c.admin.create_workspace({"name": "one", "workspace_id": "ws1", "region": "westeurope"})
    arm.tick(2)
    p = Principal("ws1", "admin", "t")
    spec = {"spark_version": "4.1.x-scala2.13", "node_type_id": "Standard_D4ds_v5"}
    cid = c.clusters.create(p, {**spec, "cluster_name": "c", "num_workers": 0})
    agents = FakeAgents(arm)
    for _ in range(20):
        while (d := bus.receive("cluster-lifecycle")) is not None:
            c.lifecycle.handle(d.body)
            bus.complete(d)
        arm.tick()
        agents.heartbeat(c.utilization)  # the drivers report ready
        clock.advance(1000)
    got = c.repo.load("ws1", cid)
    assert got is not None and got[0].state == State.RUNNING  # its document does not change
    for i in range(3):  # throttled three times within one interval: three retries sent
        c.lifecycle.throttled("ws1", cid, ProvisionerThrottled(0.04))
        clock.advance(40)
        d = bus.receive("cluster-lifecycle")
        assert d is not None, i
        bus.complete(d)
