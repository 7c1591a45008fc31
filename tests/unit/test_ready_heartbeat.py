"""A `ready` heartbeat makes the control plane reconcile the cluster at once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.errors import InvalidParameterValue
from tests.unit.test_utilization_service import World


def reconciles(world: World) -> list[tuple[str | None, dict[str, str]]]:
    return [
        (m.message_id, json.loads(m.body))
        for m in world.bus.sent
        if json.loads(m.body).get("type") == "reconcile" and m.scheduled_enqueue_ms is None
    ]


def test_a_ready_report_sends_a_reconcile_now(tmp_path: Path) -> None:
    world = World(tmp_path)
    cid = world.clusters.create(
        world.user, {"spark_version": "4.1.x-scala2.13", "node_type_id": "rec-small"}
    )
    agent = world.agent(cid)
    world.bus.sent.clear()
    ready = {"workspace_id": "w", "node_id": "d-1", "executors": 2}
    assert world.util.heartbeat(agent, {"cluster_id": cid, "ready": ready}) == {}
    assert reconciles(world) == [
        (f"ready:{cid}:d-1:2", {"type": "reconcile", "cluster_id": cid, "workspace_id": "w"})
    ]
    # A report naming another workspace finds no cluster there: nothing is sent.
    world.bus.sent.clear()
    world.util.heartbeat(agent, {"cluster_id": cid, "ready": {**ready, "workspace_id": "x"}})
    assert reconciles(world) == []
    # An agent that does not know the workspace (a node booted by cloud-init): found by id.
    world.bus.sent.clear()
    world.util.heartbeat(agent, {"cluster_id": cid, "ready": {"node_id": "d-1", "executors": 3}})
    assert [m for m, _ in reconciles(world)] == [f"ready:{cid}:d-1:3"]
    with pytest.raises(InvalidParameterValue, match="Invalid report"):
        world.util.heartbeat(agent, {"cluster_id": cid, "ready": {"executors": -1}})
