"""Instance pools and serverless pools driven by databricks-sdk against a devhost subprocess
(record provisioner: nodes are rows that boot in 0.3 s, warm pool nodes in 0.1 s)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from databricks.sdk.errors import InvalidParameterValue, NotFound, ResourceAlreadyExists
from databricks.sdk.service.compute import AutoScale, State

from devhost.process import DevhostProcess
from shared.adapters.records import RecordProvisioner
from shared.adapters.sqlite_store import SqliteStore
from shared.services.auth import LOCAL_WORKSPACE
from tests.support import http, wait_for

V = "4.1.x-scala2.13"
T = timedelta(seconds=60)


@pytest.fixture
def host(tmp_path: Path) -> Iterator[DevhostProcess]:
    h = DevhostProcess(
        tmp_path / "data",
        # a "minute" of idle auto-termination lasts 1 s here
        env={"SPARKPLANE_IDLE_MINUTE_S": "1", "SPARKPLANE_RECONCILER_SCHEDULE": "* * * * * *"},
    ).start()
    try:
        yield h
    finally:
        h.close()


def stats(w: Any, pool_id: str) -> dict[str, int]:
    s = w.instance_pools.get(pool_id).stats
    return {
        "used": s.used_count or 0,
        "idle": s.idle_count or 0,
        "pending_used": s.pending_used_count or 0,
        "pending_idle": s.pending_idle_count or 0,
    }


def test_instance_pool_keeps_idle_nodes_lends_them_and_takes_them_back(
    host: DevhostProcess,
) -> None:
    w = host.client()
    pool_id = w.instance_pools.create(
        instance_pool_name="warm",
        node_type_id="rec-small",
        min_idle_instances=2,
        max_capacity=3,
        idle_instance_autotermination_minutes=3,
        custom_tags={"team": "data"},
    ).instance_pool_id
    want_idle = {"used": 0, "idle": 2, "pending_used": 0, "pending_idle": 0}
    wait_for("2 idle nodes", lambda: stats(w, pool_id) == want_idle)
    got = w.instance_pools.get(pool_id)
    assert got.state.value == "ACTIVE" and got.custom_tags == {"team": "data"}
    assert got.default_tags["InstancePoolId"] == pool_id
    assert [p.instance_pool_id for p in w.instance_pools.list()] == [pool_id]
    prov = RecordProvisioner(host.data_dir / "records.db")
    idle_before = {n.node_id for n in prov.pool_nodes(pool_id) if n.status == "IDLE"}

    # a cluster of driver + 1 worker takes both idle nodes; the pool tops up to its capacity
    c = w.clusters.create_and_wait(
        cluster_name="pooled", spark_version=V, instance_pool_id=pool_id, num_workers=1, timeout=T
    )
    assert c.node_type_id == "rec-small" and c.driver_node_type_id == "rec-small"
    in_use = {c.driver.node_id, *(e.node_id for e in c.executors)}
    assert in_use == idle_before
    wait_for("used 2, idle 1", lambda: stats(w, pool_id) == {**want_idle, "used": 2, "idle": 1})

    # resize beyond the capacity: the cluster keeps its size, with an ADD_NODES_FAILED event
    w.clusters.resize(cluster_id=c.cluster_id, num_workers=3)
    wait_for(
        "add nodes failed",
        lambda: any(
            e.type.value == "ADD_NODES_FAILED"
            for e in w.clusters.events(cluster_id=c.cluster_id, limit=50)
        ),
    )
    c = w.clusters.wait_get_cluster_running(c.cluster_id, timeout=T)
    assert c.num_workers == 1 and len(c.executors) == 1

    # terminate: both nodes come back to the pool as idle nodes (3 idle, one over min_idle)
    w.clusters.delete_and_wait(cluster_id=c.cluster_id, timeout=T)

    def idle_ids() -> set[str]:
        return {n.node_id for n in prov.pool_nodes(pool_id) if n.status == "IDLE"}

    wait_for("the nodes back in the pool", lambda: in_use <= idle_ids())
    # the extra idle node goes after 3 (1-second) minutes, the longest idle first: the one
    # the pool added while the cluster ran
    wait_for("idle back to 2", lambda: stats(w, pool_id) == want_idle and idle_ids() == in_use)

    # a cluster the pool cannot hold fails with the pool's termination reason
    big = w.clusters.create(
        cluster_name="big", spark_version=V, instance_pool_id=pool_id, num_workers=3
    ).cluster_id
    c = w.clusters.wait_get_cluster_terminated(big, timeout=T)
    assert c.termination_reason.code.value == "INSTANCE_POOL_MAX_CAPACITY_REACHED"
    assert c.termination_reason.type.value == "CLIENT_ERROR"
    assert c.termination_reason.parameters["instance_pool_id"] == pool_id
    wait_for("nothing left used", lambda: stats(w, pool_id) == want_idle)

    # edit: more idle nodes, same node type
    w.instance_pools.edit(
        instance_pool_id=pool_id,
        instance_pool_name="warm",
        node_type_id="rec-small",
        min_idle_instances=3,
        max_capacity=3,
    )
    wait_for("3 idle after edit", lambda: stats(w, pool_id)["idle"] == 3)

    # delete: the pool is gone for the API and its nodes are terminated
    w.instance_pools.delete(pool_id)
    with pytest.raises(NotFound):
        w.instance_pools.get(pool_id)
    assert list(w.instance_pools.list()) == []
    wait_for("nodes terminated", lambda: prov.pool_nodes(pool_id) == [])


def test_bad_pool_requests_get_databricks_errors(host: DevhostProcess) -> None:
    w = host.client()
    with pytest.raises(InvalidParameterValue, match="Node type nope"):
        w.instance_pools.create(instance_pool_name="a", node_type_id="nope")
    with pytest.raises(InvalidParameterValue, match="must not exceed max_capacity"):
        w.instance_pools.create(
            instance_pool_name="a", node_type_id="rec-small", min_idle_instances=3, max_capacity=1
        )
    pid = w.instance_pools.create(instance_pool_name="a", node_type_id="rec-small").instance_pool_id
    with pytest.raises(ResourceAlreadyExists):
        w.instance_pools.create(instance_pool_name="a", node_type_id="rec-small")
    with pytest.raises(InvalidParameterValue, match="cannot be changed"):
        w.instance_pools.edit(
            instance_pool_id=pid, instance_pool_name="a", node_type_id="rec-large"
        )
    with pytest.raises(NotFound):
        w.instance_pools.get("0101-000000-nope-pool-nope")
    with pytest.raises(InvalidParameterValue, match="does not exist"):
        w.clusters.create(
            spark_version=V, instance_pool_id="0101-000000-nope-pool-nope", num_workers=1
        )
    with pytest.raises(InvalidParameterValue, match="differs from the instance pool"):
        w.clusters.create(
            spark_version=V, instance_pool_id=pid, node_type_id="rec-large", num_workers=1
        )
    # a renamed pool frees its old name; a deleted pool frees its name
    w.instance_pools.edit(instance_pool_id=pid, instance_pool_name="b", node_type_id="rec-small")
    pid2 = w.instance_pools.create(
        instance_pool_name="a", node_type_id="rec-small"
    ).instance_pool_id
    w.instance_pools.delete(pid2)
    w.instance_pools.create(instance_pool_name="a", node_type_id="rec-small")
    names = sorted(p.instance_pool_name for p in w.instance_pools.list())
    assert names == ["a", "b"]

    # regressions, in raw JSON (the SDK cannot send them): a lone surrogate as the pool id was a
    # 500 (now refused for every API as not text); a non-boolean enable_elastic_disk and a
    # lone surrogate in a tag were accepted
    url, auth = host.url + "/api/2.0/instance-pools", {"Authorization": f"Bearer {host.token}"}
    spec = {"instance_pool_name": "c", "node_type_id": "rec-small"}
    for op, body, code in (
        ("delete", {"instance_pool_id": "\ud800"}, "MALFORMED_REQUEST"),
        ("edit", {**spec, "instance_pool_id": "x\udc00"}, "MALFORMED_REQUEST"),
        ("create", {**spec, "custom_tags": {"\ud800": "v"}}, "MALFORMED_REQUEST"),
        ("create", {**spec, "enable_elastic_disk": 0}, "INVALID_PARAMETER_VALUE"),
        ("edit", {**spec, "instance_pool_id": 7}, "INVALID_PARAMETER_VALUE"),
    ):
        # json.dumps escapes a lone surrogate as \ud800, which json.loads reads back
        raw = json.dumps(body)
        r = http.post(
            f"{url}/{op}", content=raw, headers={**auth, "Content-Type": "application/json"}
        )
        assert r.status_code == 400, (op, raw, r.text)
        assert r.json()["error_code"] == code and r.json()["message"]
    r = http.post(
        host.url + "/api/2.1/clusters/delete",
        content=json.dumps({"cluster_id": "\ud800"}),
        headers=auth,
    )
    assert (r.status_code, r.json()["error_code"]) == (400, "MALFORMED_REQUEST")
    assert sorted(p.instance_pool_name for p in w.instance_pools.list()) == ["a", "b"]


def test_a_pool_deleted_under_a_cluster_keeps_it_running_until_it_ends(
    host: DevhostProcess,
) -> None:
    w = host.client()
    pid = w.instance_pools.create(
        instance_pool_name="p", node_type_id="rec-small", min_idle_instances=1
    ).instance_pool_id
    c = w.clusters.create_and_wait(spark_version=V, instance_pool_id=pid, num_workers=1, timeout=T)
    w.instance_pools.delete(pid)
    store = SqliteStore(host.data_dir / "store.db")
    assert store.get("instance_pool", LOCAL_WORKSPACE, pid).body["state"] == "DELETED"
    prov = RecordProvisioner(host.data_dir / "records.db")
    wait_for(
        "idle nodes of the deleted pool gone",
        lambda: all(n.status in ("USED",) for n in prov.pool_nodes(pid)),
    )
    assert w.clusters.get(c.cluster_id).state == State.RUNNING
    w.clusters.delete_and_wait(cluster_id=c.cluster_id, timeout=T)
    # its nodes come back to a pool that is gone: they are terminated
    wait_for("no node left", lambda: prov.pool_nodes(pid) == [])
    # then the pool's document goes too
    wait_for(
        "the pool document removed",
        lambda: store.get("instance_pool", LOCAL_WORKSPACE, pid) is None,
    )
    # and a start can no longer get nodes from it
    w.clusters.start(c.cluster_id)
    c = w.clusters.wait_get_cluster_terminated(c.cluster_id, timeout=T)
    assert c.termination_reason.code.value == "INSTANCE_POOL_NOT_FOUND"


def test_a_serverless_pool_is_configured_from_min_max_and_worker_type(
    host: DevhostProcess,
) -> None:
    w = host.client()
    c = w.clusters.create_and_wait(
        cluster_name="shared",
        spark_version="",  # not needed: the latest is chosen
        node_type_id="rec-medium",
        autoscale=AutoScale(min_workers=1, max_workers=4),
        spark_conf={"spark.databricks.cluster.profile": "serverless"},
        timeout=T,
    )
    assert c.state == State.RUNNING and len(c.executors) == 1
    assert c.spark_version == V and c.driver_node_type_id == "rec-medium"
    assert c.autotermination_minutes == 120 and c.enable_elastic_disk is True
    assert c.custom_tags["ResourceClass"] == "Serverless"
    conf = c.spark_conf
    assert conf["spark.scheduler.mode"] == "FAIR"
    assert conf["spark.sql.adaptive.enabled"] == "true"
    assert conf["spark.dynamicAllocation.enabled"] == "true"
    assert conf["spark.dynamicAllocation.shuffleTracking.enabled"] == "true"
    assert conf["spark.dynamicAllocation.maxExecutors"] == "4"
    assert conf["spark.executor.cores"] == "4"
    with pytest.raises(InvalidParameterValue, match="sized by autoscale only"):
        w.clusters.create(
            node_type_id="rec-small",
            num_workers=2,
            spark_version=V,
            spark_conf={"spark.databricks.cluster.profile": "serverless"},
        )
