"""A maximum of clusters per subscription (`SPARKPLANE_ARM_SUBSCRIPTION_MAX_CLUSTERS`,
shared/domain/arm_placement.py, shared/adapters/arm/shards.py): a new workspace goes only to a
subscription below it, none when all are full (400 QUOTA_EXCEEDED), and a cluster of a full
subscription ends TERMINATED with AZURE_QUOTA_EXCEEDED_EXCEPTION."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.domain.arm_placement import SubscriptionLoad, has_room, place
from shared.domain.states import State
from shared.errors import QuotaExceeded
from shared.services.auth import Principal
from shared.settings import Settings
from tests.arm_world import ArmWorld
from tests.fake_arm import BASE, ArmLimits, FakeArm

SUBS = ["00000000-0000-0000-0000-00000000000a", "00000000-0000-0000-0000-00000000000b"]


def test_placement_skips_full_subscriptions_and_gives_none_when_all_are() -> None:
    loads = [SubscriptionLoad("a", 1, 4), SubscriptionLoad("b", 3, 5), SubscriptionLoad("c", 0, 6)]
    # The maximum is the same for all: while the emptiest has room, it is the one chosen.
    assert place(loads) == place(loads, max_clusters=5) == place(loads, max_clusters=7) == "a"
    assert place(loads, max_clusters=4) is None  # every one holds at least four
    assert place([SubscriptionLoad("a", 1, 2), SubscriptionLoad("b", 0, 2)], 2) is None
    assert has_room(1, 2) and not has_room(2, 2) and has_room(10**6, 0)


def test_full_subscriptions_refuse_workspaces_and_clusters(tmp_path: Path) -> None:
    w = ArmWorld(
        tmp_path,
        subscriptions=SUBS,
        limits=ArmLimits(),
        provisioner={"arm_subscription_max_clusters": 1},
    )
    w.workspaces("w1", "w2")
    a, b = (w.arms[s] for s in SUBS)
    first = w.create("w1", "one")
    w.run()
    assert w.cluster("w1", first).state == State.RUNNING
    # w1's subscription holds its one cluster: a second one there fails to start, and says why.
    second = w.create("w1", "two")
    w.run()
    got = w.cluster("w1", second)
    assert got.state == State.TERMINATED
    assert got.termination_reason.code == "AZURE_QUOTA_EXCEEDED_EXCEPTION"
    assert got.termination_reason.type == "CLIENT_ERROR"
    assert "maximum (1)" in got.state_message or "maximum (1)" in str(
        got.termination_reason.parameters
    )
    assert not any(second in rid for rid in a.resources.by_cluster)  # nothing was made
    # The other subscription has room: w2's cluster runs.
    other = w.create("w2", "three")
    w.run()
    assert w.cluster("w2", other).state == State.RUNNING
    assert other in b.resources.by_cluster
    # Both full: a new workspace is refused in the Databricks error format, and not kept.
    with pytest.raises(QuotaExceeded) as e:
        w.c.admin.create_workspace({"name": "w3", "workspace_id": "w3", "region": "westeurope"})
    assert e.value.status == 400
    assert e.value.body()["error_code"] == "QUOTA_EXCEEDED"
    assert w.store.get("workspace", "w3", "w3") is None
    # A cluster terminated frees its subscription's room (this instance counts its stops).
    w.c.clusters.delete(Principal("w1", "admin", "t"), {"cluster_id": first})
    w.run()
    w.c.clusters.start(Principal("w1", "admin", "t"), {"cluster_id": second})
    w.run()
    assert w.cluster("w1", second).state == State.RUNNING


def test_one_subscription_with_a_maximum_goes_through_the_counting_router(
    tmp_path: Path,
) -> None:
    from shared.adapters.arm.shards import ShardedArmProvisioner, arm_from_settings

    s = Settings(arm_subscription_id=SUBS[0], arm_endpoint=BASE, arm_subscription_max_clusters=5)
    from tests.fake_arm import FakeCredential

    prov = arm_from_settings(s, credential=FakeCredential(), transport=FakeArm())
    assert isinstance(prov, ShardedArmProvisioner) and prov.max_clusters == 5
