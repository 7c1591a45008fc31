"""Every ARM request through the subscription's budget; ARM's 429 as a scheduled retry of the
reconcile, never a failed cluster (shared/adapters/arm/throttle.py, services/lifecycle.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.domain.states import State
from shared.ports import ProvisionerThrottled
from shared.services.auth import Principal
from tests.arm_world import ArmWorld
from tests.fake_arm import SUB, ArmLimits, FakeArm, arm_provisioner
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
    w = ArmWorld(tmp_path, limits=ArmLimits(), record=False)
    w.workspaces("ws1")
    # Writes left: 2. Three creates: the third is queued, not failed.
    w.prov.throttle.budget(SUB).remaining("writes", 2, w.now())
    ids = [w.create("ws1", f"c{i}", num_workers=0) for i in "abc"]
    w.run(60, step_ms=1000)
    assert [w.cluster("ws1", i).state for i in ids] == [State.RUNNING] * 3
    p = Principal("ws1", "admin", "t")
    events = [e["type"] for i in ids for e in w.c.clusters.events(p, {"cluster_id": i})["events"]]
    assert "TERMINATING" not in events
    assert w.arm.counts["writes"] >= 4 and w.arm.throttled == 0


def test_throttled_is_a_temporary_failure_with_its_delay() -> None:
    e = ProvisionerThrottled(2.5)
    assert e.retry_after_s == 2.5 and "2.5" in str(e)
    assert json.loads(json.dumps({"s": e.retry_after_s})) == {"s": 2.5}


def test_successive_throttled_retries_are_not_dropped_as_duplicates(tmp_path: Path) -> None:
    w = ArmWorld(tmp_path, limits=ArmLimits(), record=False)
    w.workspaces("ws1")
    cid = w.create("ws1", "c", num_workers=0)
    w.run(20, step_ms=1000)
    assert w.cluster("ws1", cid).state == State.RUNNING  # its document does not change
    for i in range(3):  # throttled three times within one interval: three retries sent
        w.c.lifecycle.throttled("ws1", cid, ProvisionerThrottled(0.04))
        w.clock.advance(40)
        d = w.bus.receive("cluster-lifecycle")
        assert d is not None, i
        w.bus.complete(d)
