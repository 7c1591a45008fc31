"""Managed resource groups over several subscriptions (shared/adapters/arm/shards.py): a
workspace is placed by shared/domain/arm_placement.py, its clusters follow it, later calls find
them again (a new instance too, from Resource Graph), and the request budgets are per
subscription."""

from __future__ import annotations

from pathlib import Path

from shared.domain.states import State
from tests.arm_world import ArmWorld
from tests.fake_arm import ArmLimits, sharded_provisioner

SUBS = ["00000000-0000-0000-0000-00000000000a", "00000000-0000-0000-0000-00000000000b"]


def test_workspaces_are_spread_and_their_clusters_follow_them(tmp_path: Path) -> None:
    w = ArmWorld(tmp_path, subscriptions=SUBS, limits=ArmLimits())
    w.workspaces("w1", "w2", "w3")
    a, b = (w.arms[s] for s in SUBS)
    # Fewest clusters, then fewest workspaces, then the order listed: a, b, a.
    assert sorted(a.groups) == ["sparkplane-w1-managed", "sparkplane-w3-managed"]
    assert sorted(b.groups) == ["sparkplane-w2-managed"]
    ids = {ws: w.create(ws, ws) for ws in ("w1", "w2")}
    w.run()
    for ws, cid in ids.items():
        assert w.cluster(ws, cid).state == State.RUNNING
    assert {r["tags"]["ClusterId"] for r in a.find("virtualMachines")} == {ids["w1"]}
    assert {r["tags"]["ClusterId"] for r in b.find("virtualMachines")} == {ids["w2"]}
    # ARM's limits are per subscription: each has its own budget, each its own requests.
    assert {k for k in w.prov.throttle.budgets} == set(SUBS)
    assert a.counts["writes"] > 0 and b.counts["writes"] > 0
    # One bulk query spans both subscriptions.
    b.find("virtualMachines")[0]["properties"]["provisioningState"] = "Failed"
    assert w.prov.unhealthy_clusters() == {ids["w2"]}


def test_a_new_instance_finds_workspaces_and_clusters_where_they_are(tmp_path: Path) -> None:
    w = ArmWorld(tmp_path, subscriptions=SUBS, limits=ArmLimits())
    w.workspaces("w1", "w2")
    cid = w.create("w2", "x")
    w.run()
    # Another instance of the app: nothing remembered, everything found from Resource Graph.
    other = sharded_provisioner(w.transport, clock=w.now, store=w.store)  # type: ignore[arg-type]
    assert other.for_workspace("w2").subscription_id == SUBS[1]
    assert {n.status for n in other.observe(cid)} == {"RUNNING"}
    assert other.cluster_ids() == {cid}
    other.stop_cluster(cid)
    assert all(
        r["properties"]["provisioningState"] == "Deleting"
        for r in w.arms[SUBS[1]].find("virtualMachines")
    )
