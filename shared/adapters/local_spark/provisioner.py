"""The `Provisioner` port over real local Spark standalone clusters (see the package doc)."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil

from shared.adapters.local_spark import cds
from shared.adapters.local_spark import conf as cf
from shared.adapters.local_spark import processes as procs
from shared.adapters.local_spark.java import check_java, check_spark_home, default_spark_home
from shared.adapters.local_spark.launch import Launches
from shared.adapters.local_spark.pools import PoolNodes
from shared.adapters.local_spark.processes import Launcher
from shared.adapters.local_spark.store import COLS, NodeStore, rec_of
from shared.adapters.local_spark.supervision import (
    driver_of,
    master_view,
)
from shared.domain import node_rules
from shared.domain.spark_auth import SparkCredentials
from shared.ports import Clock, Node, NodeRequest, NodeType, SparkVersion
from shared.private_files import private_dir, private_file

log = logging.getLogger("sparkplane.local_spark")


class LocalSparkProvisioner(PoolNodes):
    """The `Provisioner` port over real local Spark standalone clusters (see the package doc)."""

    def __init__(
        self,
        data_dir: Path,
        *,
        clock: Clock | Callable[[], int] | None = None,
        spark_home: Path | None = None,
        java: str | None = None,
        port_range: tuple[int, int] = (20000, 32000),
        decommission_timeout_s: float = 120.0,
        kill_grace_s: float = 10.0,
        master_wait_s: int = 120,
        http_timeout_s: float = 1.0,
        tune_jvms: bool = True,
        scratch_quota_bytes: int = 10 * 2**30,
        ready_timeout_s: float = node_rules.READY_TIMEOUT_S,
        executor_wait_s: float = node_rules.EXECUTOR_WAIT_S,
        cds_root: Path | None = cds.DEFAULT_ROOT,
        cds_dump: frozenset[str] = frozenset(),
        credentials: Callable[[str], SparkCredentials | None] | None = None,
    ) -> None:
        """`credentials`: derives the Spark credentials of a credential id (the control
        plane's spark_auth.cluster_credentials with its key); with it, idle pool nodes run
        their Spark Connect server hot and a cluster taking one as its driver adopts the
        node's credential id (shared/domain/spark_auth.py, "Adopted credentials")."""
        self._credentials = credentials
        self.java = check_java(java)
        self.spark_home = Path(spark_home) if spark_home else default_spark_home()
        self.spark_version, self.scala_version = check_spark_home(self.spark_home)
        self.data_dir = private_dir(Path(data_dir).resolve())
        if clock is None:
            self._now_ms: Callable[[], int] = lambda: int(time.time() * 1000)
        elif hasattr(clock, "now_ms"):
            self._now_ms = clock.now_ms
        else:
            self._now_ms = clock
        lo, hi = port_range
        if not 1024 <= lo < hi <= 65536:
            raise ValueError(f"bad port_range {port_range}")
        self._decommission_timeout_s = decommission_timeout_s
        self._kill_grace_s = kill_grace_s
        self._master_wait_s = master_wait_s
        self._http_timeout_s = http_timeout_s
        self._tune_jvms = tune_jvms
        self._ready_timeout_s = ready_timeout_s
        self._executor_wait_s = executor_wait_s
        self._lock = threading.Lock()
        self._reaper: threading.Thread | None = None
        self._closed = threading.Event()
        self._scratch_quota = scratch_quota_bytes
        self.store = NodeStore(
            private_file(self.data_dir / "local_spark.sqlite"),
            port_range=(lo, hi),
            now_ms=self._now_ms,
            scratch_quota=scratch_quota_bytes,
        )
        # Class-data-sharing archives of this Spark and Java, when built (`make spark-cds`).
        cds_dir = None
        if tune_jvms and cds_root is not None:
            cds_dir = cds.archive_dir(cds_root, self.spark_version, self.java)
            if not (cds_dump or cds.complete(cds_dir)):
                cds_dir = None
        self.launcher = Launcher(
            data_dir=self.data_dir,
            spark_home=self.spark_home,
            java_home=self.java.home,
            store=self.store,
            daemon_java_opts=cf.DAEMON_JAVA_OPTS if tune_jvms else "",
            role_java_opts=cf.ROLE_JAVA_OPTS if tune_jvms else {},
            cds_dir=cds_dir,
            cds_dump=cds_dump,
            launches=(
                Launches(
                    self.spark_home,
                    self.java.home,
                    self.scala_version,
                    self.spark_version,
                    cache_file=self.data_dir / "launches.json",
                )
                if tune_jvms
                else None
            ),
        )
        # Carry on with removals a previous instance started (a restart of the control plane).
        self._kick_reaper()

    # ---------------------------------------------------------------------------- catalog

    def node_types(self) -> list[NodeType]:
        return list(node_rules.NODE_TYPES)

    def spark_versions(self) -> list[SparkVersion]:
        major_minor = ".".join(self.spark_version.split(".")[:2])
        scala = self.scala_version
        versions = [
            SparkVersion(
                f"{major_minor}.x-scala{scala}",
                f"Apache Spark {self.spark_version} (local, Scala {scala})",
            )
        ]
        if scala != "2.12":
            # databricks-sdk's select_spark_version() defaults to scala="2.12" and keeps only
            # keys containing "-scala2.12": this alias (same Spark) makes the default call work.
            versions.append(
                SparkVersion(
                    f"{major_minor}.x-scala2.12",
                    f"Apache Spark {self.spark_version} (local, Scala {scala}; "
                    "-scala2.12 key alias for SDK defaults)",
                )
            )
        return versions

    # ---------------------------------------------------------------------------- the port

    def observe(self, cluster_id: str) -> list[Node]:
        """The nodes of the cluster, driver first. At most one HTTP call (the master's JSON),
        and only while a node is starting or a worker is being decommissioned."""
        procs.reap()
        recs = self.store.load(cluster_id)
        if not recs:
            return []
        alive = {r.node_id: self._alive(r) for r in recs}
        need_master = any(
            (r.phase == "active" and r.ready_s is None and alive[r.node_id])
            or r.phase == "decommissioning"
            for r in recs
        )
        driver = driver_of(recs)
        master = self._master_json(driver) if need_master and driver is not None else None
        executors = self._executors(driver)
        nodes: list[Node] = []
        for r in recs:
            if r.phase == "active":
                status = self._active_status(r, alive[r.node_id], master, executors)
            elif self._advance(r, master):
                continue  # gone
            else:
                status = "STOPPING"
            nodes.append(self._node(r, status))
        return nodes

    def start_driver(self, req: NodeRequest) -> Node:
        existing = driver_of(self.store.load(req.cluster_id))
        if existing is not None:  # idempotent: a replayed reconcile gets the same driver
            return self._node(existing, self._active_status(existing, self._alive(existing), None))
        worker_type = node_rules.node_type(req.node_type_id)
        driver_type = node_rules.node_type(req.driver_node_type_id or req.node_type_id)
        if req.driver_pool is not None:
            [rec] = self._take(req.driver_pool, req.cluster_id, "driver", 1)
        else:
            rec = self.store.new_record(
                req.cluster_id, uuid.uuid4().hex, "driver", node_rules.PORTS_DRIVER
            )
        warm = procs.leader(rec, "master") is not None
        try:
            if warm:  # its hot Workers that the cluster does not take go first
                self._release_hot_workers(rec, req)
            self._run_driver(rec, req, worker_type, driver_type)
        except BaseException:
            self._abort(rec)
            raise
        log.info(
            "driver started",
            extra={
                "cluster_id": req.cluster_id,
                "node_id": rec.node_id,
                "master_url": rec.attrs["master_url"],
                "warm": warm,
            },
        )
        return self._node(rec, "STARTING")

    def add_workers(self, req: NodeRequest, count: int) -> list[Node]:
        if count <= 0:
            return []
        driver = driver_of(self.store.load(req.cluster_id))
        if driver is None:
            raise RuntimeError(f"cluster {req.cluster_id} has no driver: start_driver first")
        nt = node_rules.node_type(req.node_type_id)
        driver_secret = self._node_secret(driver)
        if driver_secret:  # the driver is a hot pool node: its secret is the cluster's
            req = replace(req, spark_auth_secret=driver_secret)
        out: list[Node] = []
        recs = (
            self._take(req.pool, req.cluster_id, "worker", count, driver.node_id)
            if req.pool
            else []
        )
        for i in range(count):
            if i < len(recs):
                rec = recs[i]
            else:
                rec = self.store.new_record(
                    req.cluster_id, uuid.uuid4().hex, "worker", node_rules.PORTS_WORKER
                )
            try:
                self._run_worker(rec, req, nt, driver)
            except BaseException:
                self._abort(rec)
                for rest in recs[i + 1 :]:
                    self._abort(rest)
                raise
            out.append(self._node(rec, "STARTING"))
        log.info(
            "workers started",
            extra={"cluster_id": req.cluster_id, "node_ids": [n.node_id for n in out]},
        )
        return out

    def remove_workers(self, cluster_id: str, node_ids: Sequence[str]) -> None:
        """Graceful removal: a running worker gets SIGPWR (Spark worker decommissioning: the
        master stops scheduling on it, its executors migrate their blocks and exit); once its
        executors are gone, or after `decommission_timeout_s`, SIGTERM, then SIGKILL after
        `kill_grace_s`. A worker that is not running yet, or is LOST, goes at once. A pool
        node goes back to its pool (warm again) instead of away."""
        wanted = set(node_ids)
        now = time.time()
        for r in self.store.load(cluster_id):
            if r.node_id not in wanted or r.phase != "active":
                continue
            if r.role != "worker":
                raise ValueError(f"{r.node_id} is the driver of {cluster_id}: use stop_cluster")
            leader = procs.leader(r, "worker")
            if leader is not None and r.ready_s is not None and cf.DECOMMISSION_SIGNAL:
                try:
                    leader.send_signal(cf.DECOMMISSION_SIGNAL)
                except psutil.Error:
                    pass  # it exited meanwhile: stopped below like a LOST worker
                else:
                    self.store.set_phase(r, "decommissioning", now)
                    log.info(
                        "worker decommissioning",
                        extra={"cluster_id": cluster_id, "node_id": r.node_id},
                    )
                    continue
            self._terminate(r, node_rules.ending_phase(r.pool_id), now)
            self._advance(r, None)
        self._kick_reaper()

    def stop_cluster(self, cluster_id: str) -> None:
        """SIGTERM to every node now, SIGKILL to what is left after `kill_grace_s` (by a later
        observe() or the background reaper); observe() says STOPPING until no process of the
        cluster is left, then returns nothing. Pool nodes go back to their pools."""
        now = time.time()
        for r in self.store.load(cluster_id):
            if r.phase not in ("stopping", "terminating", "returning"):
                self._terminate(r, "returning" if r.pool_id else "stopping", now)
            self._advance(r, None)
        self._kick_reaper()

    def cluster_ids(self) -> set[str]:
        """Every cluster that owns a node (removals in progress are carried on first)."""
        procs.reap()
        for cid in self.store.busy():
            self._advance_cluster(cid)
        return self.store.cluster_ids()

    # ---------------------------------------------------------------------------- storage

    def grow_storage(self, cluster_id: str, node_id: str, total_bytes: int) -> None:
        """Locally a node's disk is its scratch directory (SPARK_LOCAL_DIRS) with a quota: the
        quota file the node agent reports against. The quota is advisory (enforcing one needs
        root: filesystem quotas or a loop device per node)."""
        with self.store.tx() as db:
            row = db.execute(
                f"SELECT {COLS} FROM nodes WHERE node_id=? AND cluster_id=?",
                (node_id, cluster_id),
            ).fetchone()
            if row is None:
                return  # the node is gone
            r = rec_of(row)
            if (r.disk_bytes or 0) >= total_bytes:
                return
            r.disk_bytes = total_bytes
            db.execute("UPDATE nodes SET disk_bytes=? WHERE node_id=?", (total_bytes, node_id))
        self._write_quota(r)
        log.info(
            "scratch quota grown",
            extra={"cluster_id": cluster_id, "node_id": node_id, "bytes": total_bytes},
        )

    # ---------------------------------------------------------------------------- extras

    def info(self, cluster_id: str) -> dict[str, Any]:
        """What GET cluster shows of the Spark side: URLs, the master's view, memory per node.
        Empty when the cluster has no driver."""
        driver = driver_of(self.store.load(cluster_id))
        if driver is None:
            return {}
        master = self._master_json(driver)
        out: dict[str, Any] = {
            "master_url": driver.attrs["master_url"],
            "connect_url": driver.attrs["connect_url"],
            "spark_ui_url": driver.attrs["spark_ui_url"],
            "master_ui_url": driver.attrs["master_ui_url"],
            "spark_version": self.spark_version,
            "master_status": None,
            "alive_workers": None,
            "cores": None,
            "memory_mb": None,
            "app_id": None,
            "workers": [],
            "node_rss_mb": self.node_rss_mb(cluster_id),
        }
        if master is not None:
            out.update(master_view(master))
        return out

    def node_rss_mb(self, cluster_id: str) -> dict[str, float]:
        """Resident memory of each node: its processes and all their children (executors,
        Python workers), in MiB."""
        out: dict[str, float] = {}
        for r in self.store.load(cluster_id):
            total = 0
            for pr in r.procs:
                p = procs.live(pr.pid, pr.ctime)
                if p is not None:
                    total += procs.tree_rss(p)
            out[r.node_id] = round(total / 2**20, 1)
        return out

    def node_pids(self, cluster_id: str) -> dict[str, list[int]]:
        """Every live process of each node (the leaders and their descendants)."""
        return {
            r.node_id: sorted(p.pid for p in procs.members(r)) for r in self.store.load(cluster_id)
        }

    def close(self) -> None:
        """Stop the background reaper (nodes keep running; a new instance re-adopts them)."""
        self._closed.set()
        t = self._reaper
        if t is not None:
            t.join(timeout=5)
