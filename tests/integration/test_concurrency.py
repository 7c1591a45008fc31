"""50 concurrent edits, resizes and deletes on one cluster: every request is answered with
success or a Databricks error, no accepted update is lost, and the final state is legal."""

from __future__ import annotations

import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx

from devhost.process import DevhostProcess

V = "4.1.x-scala2.13"
DATABRICKS_ERRORS = {"INVALID_STATE", "INVALID_PARAMETER_VALUE", "ABORTED"}


def test_fifty_concurrent_commands_on_one_cluster(devhost: DevhostProcess) -> None:
    w = devhost.client()
    cid = w.clusters.create_and_wait(
        spark_version=V, node_type_id="rec-small", num_workers=1, timeout=timedelta(seconds=60)
    ).cluster_id
    ops: list[tuple[str, dict]] = []
    for i in range(50):
        kind = random.Random(i).choice(["edit", "resize", "resize", "delete"])
        if kind == "edit":
            body = {
                "cluster_id": cid,
                "spark_version": V,
                "node_type_id": "rec-small",
                "num_workers": 2,
                "cluster_name": f"edit-{i}",
            }
        elif kind == "resize":
            body = {"cluster_id": cid, "num_workers": 2 + i}
        else:
            body = {"cluster_id": cid}
        ops.append((kind, body))

    def call(op: tuple[str, dict]) -> tuple[str, dict, int, dict]:
        kind, body = op
        with httpx.Client(base_url=devhost.url, timeout=60) as c:
            r = c.post(
                f"/api/2.1/clusters/{kind}",
                json=body,
                headers={"Authorization": f"Bearer {devhost.token}"},
            )
        return kind, body, r.status_code, r.json()

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(call, ops))

    accepted: Counter[str] = Counter()
    for kind, _body, status, answer in results:
        assert status in (200, 400, 409), (status, answer)
        if status == 200:
            assert answer == {}
            accepted[kind] += 1
        else:
            assert answer["error_code"] in DATABRICKS_ERRORS and answer["message"]

    final = w.clusters.get(cid)
    assert final.state.value in ("RUNNING", "RESIZING", "RESTARTING", "TERMINATING", "TERMINATED")
    events = Counter(e.type.value for e in w.clusters.events(cluster_id=cid, limit=500))
    # every accepted edit and resize left exactly one event: no update was lost
    assert events["EDITED"] == accepted["edit"]
    assert events["RESIZING"] == accepted["resize"]
    if accepted["delete"]:
        assert events["TERMINATING"] == 1  # later deletes are no-ops on a terminating cluster
        w.clusters.wait_get_cluster_terminated(cid, timeout=timedelta(seconds=60))
    else:
        w.clusters.wait_get_cluster_running(cid, timeout=timedelta(seconds=60))
    # the final document is one of the accepted writes
    names = {b["cluster_name"] for k, b, s, _ in results if k == "edit" and s == 200}
    final = w.clusters.get(cid)
    assert final.cluster_name in names or (not names and final.cluster_name is None)
