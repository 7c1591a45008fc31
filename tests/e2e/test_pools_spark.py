"""Instance pools and serverless pools with real local Spark, driven by databricks-sdk.

- An instance pool keeps 2 warm idle nodes; a cluster from it runs on exactly those nodes, the
  nodes come back to the pool when it terminates, and a cluster larger than max_capacity fails
  with INSTANCE_POOL_MAX_CAPACITY_REACHED.
- A pooled cluster adopts its hot driver's credentials (shared/domain/spark_auth.py, "Adopted
  credentials"): the Connect server started while the node was idle serves it (same process),
  its connect URL works, and no other token does: not another cluster's, not the one of the
  cluster's own id, and not its own once the node went back to the pool. Its worker is the
  hot Worker that was registered with that driver while idle (same Worker and executor
  processes), its executor registered when it is RUNNING; a cluster that takes a hot driver
  without its Worker gets no executor from it (the Worker restarts toward another master).
- A serverless pool (autoscale 1..3) under two Spark Connect users: both users' jobs run side
  by side (fair scheduling), both finish, the pool grows and shrinks within its bounds, and a
  worker's local storage grows as its shuffle files fill it (EXPANDED_DISK).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil
import pytest
from databricks.sdk.service.compute import AutoScale, State

from devhost.process import DevhostProcess
from shared.adapters.local_spark import LocalSparkProvisioner
from shared.adapters.local_spark import processes as procs
from shared.adapters.local_spark.conf import app_ui_url
from shared.adapters.local_spark.node_start import HOT_MASTER_ATTR
from shared.adapters.local_spark.store import Rec
from shared.domain.spark_auth import cluster_credentials, connect_url, strip_token
from tests.e2e.hosts import FAST_AUTOSCALE, assert_connect_refused, local_spark_devhost
from tests.support import wait_for

pytestmark = pytest.mark.spark

T = timedelta(minutes=4)

# Pool nodes are real Spark processes: they take a while on a busy 2-core machine.
WAIT_S = 120


@pytest.fixture
def host(tmp_path: Path) -> Iterator[DevhostProcess]:
    env = {
        "SPARKPLANE_AUTOSCALE_SCHEDULE": "*/2 * * * * *",
        "SPARKPLANE_AUTOSCALE_PARAMS": json.dumps(FAST_AUTOSCALE),
        # small scratch quotas and steps, so a few MB of shuffle files make them grow
        "SPARKPLANE_LOCAL_SCRATCH_MB": "4",
        "SPARKPLANE_STORAGE_MIN_STEP_MB": "4",
    }
    with local_spark_devhost(tmp_path / "data", env) as h:
        yield h


def test_instance_pool_lends_warm_nodes_and_takes_them_back(host: DevhostProcess) -> None:
    from pyspark.sql import SparkSession

    w = host.client()
    version = w.clusters.select_spark_version(scala="2.13")
    pool_id = w.instance_pools.create(
        instance_pool_name="warm", node_type_id="local-small", min_idle_instances=2, max_capacity=3
    ).instance_pool_id
    prov = LocalSparkProvisioner(host.data_dir / "local_spark")
    try:

        def idle() -> set[str]:
            return {n.node_id for n in prov.pool_nodes(pool_id) if n.status == "IDLE"}

        warm = wait_for(
            "2 warm idle nodes", lambda: (ids := idle()) and len(ids) == 2 and ids, WAIT_S
        )
        wait_for(
            "stats: 2 idle", lambda: w.instance_pools.get(pool_id).stats.idle_count == 2, WAIT_S
        )

        c = w.clusters.create_and_wait(
            cluster_name="pooled",
            spark_version=version,
            instance_pool_id=pool_id,
            num_workers=1,
            timeout=T,
        )
        used = {c.driver.node_id, *(e.node_id for e in c.executors)}
        assert used == warm  # the cluster runs on the nodes that were idle
        spark = SparkSession.builder.remote(c.default_tags["SparkConnectUrl"]).getOrCreate()
        try:
            assert spark.range(100).selectExpr("sum(id)").collect()[0][0] == 4950
        finally:
            spark.stop()
        wait_for(
            "used 2 and the pool topped up to its capacity",
            lambda: (
                (x := w.instance_pools.get(pool_id).stats).used_count == 2
                and (x.idle_count or 0) + (x.pending_idle_count or 0) == 1
            ),
            WAIT_S,
        )

        w.clusters.delete_and_wait(cluster_id=c.cluster_id, timeout=T)
        wait_for("the cluster's nodes back in the pool, warm", lambda: used <= idle(), WAIT_S)

        big = w.clusters.create(
            cluster_name="big", spark_version=version, instance_pool_id=pool_id, num_workers=3
        ).cluster_id
        g = w.clusters.wait_get_cluster_terminated(big, timeout=T)
        assert g.termination_reason.code.value == "INSTANCE_POOL_MAX_CAPACITY_REACHED"

        pids = [p for n in prov.node_pids("").values() for p in n]
        assert pids  # the idle nodes' warm masters
        w.instance_pools.delete(pool_id)
        wait_for("the pool's nodes terminated", lambda: prov.pool_nodes(pool_id) == [], 60)
        assert not [p for p in pids if psutil.pid_exists(p) and _not_zombie(p)]
    finally:
        prov.close()


def _sum(url: str) -> int:
    from pyspark.sql import SparkSession

    spark = SparkSession.builder.remote(url).create()
    try:
        return int(spark.range(100).selectExpr("sum(id)").collect()[0][0])
    finally:
        spark.stop()


def test_a_pooled_cluster_adopts_its_hot_drivers_credentials(tmp_path: Path) -> None:
    with local_spark_devhost(tmp_path / "data") as host:
        w = host.client()
        key = (host.data_dir / "spark-secret-key").read_text().strip()
        version = w.clusters.select_spark_version(scala="2.13")
        pool_id = w.instance_pools.create(
            instance_pool_name="hot",
            node_type_id="local-small",
            min_idle_instances=2,
            max_capacity=3,
        ).instance_pool_id
        # Built as the control plane builds it: a node it gives back is made hot again.
        prov = LocalSparkProvisioner(
            host.data_dir / "local_spark",
            credentials=lambda cid: cluster_credentials(key, cid),
        )
        try:
            wait_for(
                "2 hot idle nodes",
                lambda: [n.status for n in prov.pool_nodes(pool_id)] == ["IDLE", "IDLE"],
                WAIT_S,
            )
            # One runs a master and the Connect server, the other a Worker registered with
            # that master, and the hot application's executor on it.
            (hot_worker, hot_master), *_ = _hot_workers(prov, pool_id).items()
            wait_for(
                "the hot application's executor on the idle Worker",
                lambda: len(prov.node_pids("")[hot_worker]) >= 2,
                WAIT_S,
            )
            # ... and the idle node's warm-up agent ran the warm-up query on that executor
            # (its first tasks, which cost seconds in a fresh application, are behind it).
            idle_ui = app_ui_url(_pool_rec(prov, pool_id, hot_master).ports)
            wait_for(
                "the warm-up's tasks on the idle executor",
                lambda: _executor_tasks(idle_ui) >= 1,
                WAIT_S,
            )
            # ... and then exited (it does not stay on an idle node).
            wait_for(
                "the idle warm-up agent gone",
                lambda: procs.leader(_pool_rec(prov, pool_id, hot_master), "agent") is None,
                WAIT_S,
            )
            idle_pids = prov.node_pids("")
            a = w.clusters.create(
                cluster_name="a", spark_version=version, instance_pool_id=pool_id, num_workers=1
            ).cluster_id
            ca = w.clusters.wait_get_cluster_running(a, timeout=T)
            # RUNNING with its executor registered.
            assert _executors(ca.default_tags["SparkUiUrl"]) == 1
            # The Connect server started while the node was idle serves the cluster, and the
            # Worker registered with it is the cluster's: the same processes (master,
            # Connect server, the Worker and its executor) run on.
            node_a = ca.driver.node_id
            assert (node_a, [e.node_id for e in ca.executors]) == (hot_master, [hot_worker])
            now_pids = prov.node_pids(a)
            for node in (node_a, hot_worker):
                assert set(idle_pids[node]) <= set(now_pids[node])
            url_a = ca.default_tags["SparkConnectUrl"]
            assert _sum(url_a) == 4950
            # A second cluster (no worker: its Connect server only has to refuse a's token).
            b = w.clusters.create(
                cluster_name="b", spark_version=version, instance_pool_id=pool_id, num_workers=0
            ).cluster_id
            url_b = w.clusters.wait_get_cluster_running(b, timeout=T).default_tags[
                "SparkConnectUrl"
            ]
            base_a, base_b = strip_token(url_a), strip_token(url_b)
            token_a = url_a.partition(";token=")[2]
            token_b = url_b.partition(";token=")[2]
            own_a = cluster_credentials(key, a)
            assert own_a is not None and own_a.connect_token not in (token_a, token_b)
            for url in (
                base_a,  # no token
                connect_url(base_a, token_b),  # the other cluster's
                connect_url(base_b, token_a),
                connect_url(base_a, own_a.connect_token),  # from the cluster's own id
            ):
                assert_connect_refused(url)

            # Given back, the node is hot again with new credentials: a's token is refused. (It
            # may come back as a hot Worker of the other node given back, which then runs the
            # master: then nothing serves a's Connect port at all.)
            w.clusters.permanent_delete(a)
            wait_for(
                "a's driver node hot and idle again",
                lambda: any(
                    n.node_id == node_a and n.status == "IDLE" for n in prov.pool_nodes(pool_id)
                ),
                WAIT_S,
            )
            if node_a in _hot_workers(prov, pool_id):
                assert not procs.port_open(urlsplit(strip_token(url_a)).port or 0)
            else:
                assert_connect_refused(url_a)

            # A cluster without workers takes a hot driver, not its Worker: the Worker is
            # restarted toward another master (or as one) and the cluster gets no executor.
            wait_for(
                "a hot Worker registered with an idle master",
                lambda: (
                    (hw := _hot_workers(prov, pool_id))
                    and all(
                        len(prov.node_pids("").get(node, [])) >= 2 for node in (*hw, *hw.values())
                    )
                ),
                WAIT_S,
            )
            ((loose, its_master),) = _hot_workers(prov, pool_id).items()
            c = w.clusters.create(
                cluster_name="c", spark_version=version, instance_pool_id=pool_id, num_workers=0
            ).cluster_id
            cc = w.clusters.wait_get_cluster_running(c, timeout=T)
            assert cc.driver.node_id == its_master
            assert _executors(cc.default_tags["SparkUiUrl"]) == 0
            assert prov.info(c)["alive_workers"] == 0
            assert loose not in _hot_workers(prov, pool_id)  # no longer that master's Worker
            w.clusters.permanent_delete(b)
            w.clusters.permanent_delete(c)
            w.instance_pools.delete(pool_id)
            wait_for("the pool's nodes terminated", lambda: prov.pool_nodes(pool_id) == [], 60)
        finally:
            prov.close()


def _hot_workers(prov: LocalSparkProvisioner, pool_id: str) -> dict[str, str]:
    """Idle pool nodes that run a hot Worker -> the idle master it is registered with."""
    return {
        r.node_id: r.attrs[HOT_MASTER_ATTR]
        for r in prov.store.load_pool(pool_id)
        if r.phase == "idle" and r.attrs.get(HOT_MASTER_ATTR)
    }


def _pool_rec(prov: LocalSparkProvisioner, pool_id: str, node_id: str) -> Rec:
    """The provisioner's record of one node of the pool."""
    [rec] = [r for r in prov.store.load_pool(pool_id) if r.node_id == node_id]
    return rec


def _executor_list(spark_ui_url: str) -> list[dict[str, Any]]:
    """The executors (the driver left out) of the one application behind a Spark UI."""
    ui = spark_ui_url.rstrip("/")
    with httpx.Client(timeout=5) as http:
        (app,) = http.get(f"{ui}/api/v1/applications").json()
        found = http.get(f"{ui}/api/v1/applications/{app['id']}/executors").json()
    return [e for e in found if e["id"] != "driver"]


def _executors(spark_ui_url: str) -> int:
    """Active executors of the application behind a Spark UI."""
    return sum(1 for e in _executor_list(spark_ui_url) if e.get("isActive", True))


def _executor_tasks(spark_ui_url: str) -> int:
    """Tasks its executors completed (0 while its REST API does not answer)."""
    try:
        return sum(int(e.get("completedTasks", 0)) for e in _executor_list(spark_ui_url))
    except (httpx.HTTPError, ValueError):
        return 0


def _not_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_serverless_pool_serves_two_users_and_sizes_compute_and_storage(
    host: DevhostProcess,
) -> None:
    from pyspark.sql import SparkSession

    w = host.client()
    c = w.clusters.create_and_wait(
        cluster_name="shared",
        spark_version="",
        node_type_id="local-small",
        autoscale=AutoScale(min_workers=1, max_workers=3),
        spark_conf={"spark.databricks.cluster.profile": "serverless"},
        timeout=T,
    )
    cid = c.cluster_id
    assert len(c.executors) == 1 and c.enable_elastic_disk
    url = c.default_tags["SparkConnectUrl"]
    ui = c.default_tags["SparkUiUrl"].rstrip("/")
    users = [SparkSession.builder.remote(url).create() for _ in range(2)]
    try:
        _two_users(w, cid, ui, users)
    finally:
        for u in users:
            u.stop()

    # back to the minimum when the users are done
    wait_for(
        "back to 1 worker",
        lambda: (g := w.clusters.get(cid)).state == State.RUNNING and len(g.executors) == 1,
        180,
    )
    targets = [e.details.target_num_workers for e in reversed(events(w, cid, "RESIZING"))]
    assert max(targets) > 1 and targets[-1] == 1 and all(1 <= t <= 3 for t in targets)
    w.clusters.permanent_delete(cid)


def events(w: Any, cid: str, kind: str) -> list[Any]:
    return [e for e in w.clusters.events(cluster_id=cid, limit=500) if e.type.value == kind]


def _two_users(w: Any, cid: str, ui: str, users: list[Any]) -> None:
    assert users[0].conf.get("spark.scheduler.mode") == "FAIR"
    assert users[1].conf.get("spark.dynamicAllocation.shuffleTracking.enabled") == "true"
    results: dict[int, int] = {}

    def load(i: int) -> None:
        # 30 tasks of 2 s per user: a backlog on one 1-core worker
        rows = (
            users[i]
            .range(0, 30, 1, 30)
            .selectExpr("reflect('java.lang.Thread', 'sleep', cast(2000 as bigint)) AS s")
        )
        results[i] = rows.selectExpr("count(s) AS n").collect()[0]["n"]

    threads = [threading.Thread(target=load, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
        time.sleep(1)
    sizes: list[int] = []
    side_by_side = False
    deadline = time.monotonic() + 300
    with httpx.Client(timeout=5) as http:
        app = http.get(f"{ui}/api/v1/applications").json()[0]["id"]
        while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
            g = w.clusters.get(cid)
            sizes.append(len(g.executors or []))
            stages = http.get(f"{ui}/api/v1/applications/{app}/stages?status=active").json()
            running = [s for s in stages if s.get("numActiveTasks", 0) > 0]
            side_by_side = side_by_side or len(running) >= 2
            time.sleep(1)
    for t in threads:
        t.join(60)
    assert results == {0: 30, 1: 30}
    assert min(sizes) >= 1 and max(sizes) <= 3
    assert max(sizes) > 1, sizes  # grew under the two users' backlog
    assert side_by_side  # the fair scheduler ran both users' jobs at the same time

    # shuffle files fill the workers' scratch space: their storage grows, with events
    # (about 20 MB of random text; sum(length(u)) needs every value, so none is pruned)
    df = users[0].range(0, 600_000, 1, 4).selectExpr("id % 97 AS k", "uuid() AS u")
    total = df.repartition(4, "k").selectExpr("sum(length(u)) AS n").collect()[0]["n"]
    assert total == 600_000 * 36

    grown = wait_for("EXPANDED_DISK", lambda: events(w, cid, "EXPANDED_DISK"), 60)
    assert all(e.details.disk_size > e.details.previous_disk_size for e in grown)
