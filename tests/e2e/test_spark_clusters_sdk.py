"""Real Spark clusters through the API: databricks-sdk drives devhost with the local Spark
provisioner; a Spark Connect session is the "notebook attached to the cluster"."""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import psutil
import pytest
from databricks.sdk.errors import NotFound
from databricks.sdk.service.compute import State

from devhost.process import DevhostProcess
from tests.e2e.hosts import local_spark_devhost
from tests.support import wait_for

pytestmark = pytest.mark.spark
T = timedelta(minutes=4)


@pytest.fixture
def spark_host(tmp_path: Path) -> Iterator[DevhostProcess]:
    with local_spark_devhost(tmp_path / "data") as h:
        yield h


def alive_workers(master_ui_url: str) -> int:
    with urllib.request.urlopen(master_ui_url.rstrip("/") + "/json/", timeout=5) as r:
        return sum(1 for w in json.load(r)["workers"] if w["state"] == "ALIVE")


def cluster_pids(h: DevhostProcess, cid: str) -> set[int]:
    c = h.client().clusters.get(cid)
    raw = h.client().api_client.do("GET", "/api/2.1/clusters/get", query={"cluster_id": cid})
    nodes = [raw.get("driver", {}), *raw.get("executors", [])]
    assert c.cluster_id == cid
    return {int(p) for n in nodes for p in str(n.get("pids", "")).split(",") if p}


def test_real_spark_cluster_lifecycle(spark_host: DevhostProcess) -> None:
    from pyspark.sql import SparkSession

    w = spark_host.client()
    version = w.clusters.select_spark_version(scala="2.13")
    node = w.clusters.select_node_type(local_disk=False, min_cores=1)
    c = w.clusters.create_and_wait(
        cluster_name="e2e",
        spark_version=version,
        node_type_id=node,
        num_workers=2,
        spark_conf={"spark.sql.shuffle.partitions": "4"},
        timeout=T,
    )
    cid = c.cluster_id
    assert c.state == State.RUNNING and len(c.executors) == 2
    tags = c.default_tags
    assert tags["SparkConnectUrl"].startswith("sc://localhost:")
    assert ";token=" in tags["SparkConnectUrl"]  # the cluster's Spark Connect token
    assert tags["SparkMasterUrl"].startswith("spark://127.0.0.1:")
    assert alive_workers(tags["SparkMasterUiUrl"]) == 2
    assert c.cluster_cores and c.cluster_memory_mb and c.spark_context_id

    spark = SparkSession.builder.remote(tags["SparkConnectUrl"]).getOrCreate()
    try:
        assert spark.conf.get("spark.sql.shuffle.partitions") == "4"
        total = spark.range(1000).selectExpr("sum(id) AS s").collect()[0]["s"]
        assert total == 499500
    finally:
        spark.stop()
    # the agent reported the query: GET shows the last activity
    # (SDK 0.162's ClusterDetails has no last_activity_time field: read the raw answer)
    wait_for(
        "GET to show the last activity",
        lambda: (
            "last_activity_time"
            in w.api_client.do("GET", "/api/2.1/clusters/get", query={"cluster_id": cid})
        ),
        60,
        every=1,
    )

    c = w.clusters.resize_and_wait(cluster_id=cid, num_workers=3, timeout=T)
    assert len(c.executors) == 3
    wait_for("3 workers alive", lambda: alive_workers(tags["SparkMasterUiUrl"]) == 3, 120, 1)

    # a worker process dies: NODES_LOST, and the cluster gets back to 3
    raw = w.api_client.do("GET", "/api/2.1/clusters/get", query={"cluster_id": cid})
    victim = raw["executors"][0]
    os.kill(int(victim["pid"]), signal.SIGKILL)
    wait_for(
        "a NODES_LOST event",
        lambda: any(e.type.value == "NODES_LOST" for e in w.clusters.events(cluster_id=cid)),
        120,
        every=1,
    )
    wait_for(
        "3 workers again, without the lost one",
        lambda: (
            (g := w.clusters.get(cid)).state == State.RUNNING
            and len(g.executors) == 3
            and victim["node_id"] not in {e.node_id for e in g.executors}
        ),
        180,
        every=1,
    )
    wait_for("3 workers alive", lambda: alive_workers(tags["SparkMasterUiUrl"]) == 3, 120, 1)

    pids = cluster_pids(spark_host, cid)
    assert len(pids) >= 5
    c = w.clusters.delete_and_wait(cluster_id=cid, timeout=T)
    assert c.state == State.TERMINATED
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]

    c = w.clusters.start_and_wait(cluster_id=cid, timeout=T)
    assert c.state == State.RUNNING and len(c.executors) == 3  # the last size
    w.clusters.permanent_delete(cid)
    wait_for(
        "the cluster gone from list",
        lambda: cid not in {x.cluster_id for x in w.clusters.list()},
        30,
    )
    with pytest.raises(NotFound):
        w.clusters.get(cid)
    wait_for("no process of the cluster", lambda: not processes_of(cid), 60)


def processes_of(cluster_id: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["environ", "status"]):
        try:
            env = p.info["environ"] or {}
        except psutil.Error:
            continue
        if env.get("SPARKPLANE_CLUSTER_ID") == cluster_id and p.info["status"] != "zombie":
            out.append(p)
    return out
