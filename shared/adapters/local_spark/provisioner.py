"""The `Provisioner` port over real local Spark standalone clusters (see the package doc)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
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
from shared.adapters.local_spark.store import COLS, NodeStore, Rec, rec_of
from shared.adapters.local_spark.supervision import (
    READY_FILE,
    SECRET_FILE,
    driver_of,
    master_view,
)
from shared.domain import node_rules, spark_auth
from shared.ports import Clock, Node, NodeRequest, NodeType, SparkVersion
from shared.private_files import private_dir, private_file, write_private

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
        cds_dump: bool = False,
    ) -> None:
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

    def _run_driver(
        self, rec: Rec, req: NodeRequest, worker_type: NodeType, driver_type: NodeType
    ) -> None:
        """The driver's processes: the master (kept when a warm pool node already runs one),
        the Spark Connect server, and the cluster agent."""
        p = rec.ports
        master_url = f"spark://{cf.LOOPBACK}:{p['master']}"
        node_dir, log_dir = self.launcher.dirs(rec)
        (node_dir / READY_FILE).unlink(missing_ok=True)  # a pool node's, from its last cluster
        rec.attrs = {
            "node_type_id": driver_type.node_type_id,
            "spark_version": self.spark_version,
            "master_url": master_url,
            "connect_url": f"sc://{cf.CONNECT_HOST}:{p['connect']}",
            "spark_ui_url": f"http://{cf.LOOPBACK}:{p['app_ui']}/",
            "master_ui_url": f"http://{cf.LOOPBACK}:{p['master_ui']}/",
            "log_dir": str(log_dir),
        }
        self._write_quota(rec)
        warm_master = procs.leader(rec, "master")
        node_secret = self._node_secret(rec) if warm_master is not None else ""
        if node_secret:
            # A pool node's hot master runs with a secret of the node's own, made for this one
            # cluster: the cluster's processes use it, and the master stays (docs/pools.md).
            req = replace(req, spark_auth_secret=node_secret)
        else:
            (node_dir / SECRET_FILE).unlink(missing_ok=True)
        if warm_master is not None and not node_secret and req.spark_auth_secret:
            # A warm master without a secret of its own (started by an older version): it
            # makes way for one that has the cluster's.
            procs.stop_process(warm_master, self._kill_grace_s)
            warm_master = None
        driver_memory = node_rules.driver_memory(cf.user_conf(req))
        cds_on = self.launcher.cds_for(req)
        app_conf = cf.connect_conf(
            req,
            p,
            master_url=master_url,
            executor_memory_mb=worker_type.memory_mb,
            driver_memory=driver_memory,
            tune_jvms=self._tune_jvms,
            executor_cds_opts=self.launcher.cds_opts("executor") if cds_on else "",
        )
        if warm_master is None:
            rec.procs = [pr for pr in rec.procs if pr.name != "master"]
            props = self.launcher.properties_file(rec, "master") if cds_on else None
            self.launcher.spawn(
                rec,
                "master",
                cf.master_argv(self.spark_home, p, props),
                cf.daemon_conf(req),
                req,
                node_rules.DAEMON_MEMORY,
                cds_role="master",
            )
        # The launcher sizes the Connect server (a "daemon" to it) with SPARK_DAEMON_MEMORY.
        # Its token goes in its environment (readable by this user only), not on its command
        # line (which every user sees); the secret is in its 0600 spark-defaults.conf.
        token_env = {spark_auth.CONNECT_TOKEN_ENV: req.connect_token} if req.connect_token else {}
        props = self.launcher.properties_file(rec, "connect") if cds_on else None
        argv = cf.connect_argv(self.spark_home, req.cluster_id, props)
        self.launcher.spawn(
            rec,
            "connect",
            argv,
            app_conf,
            req,
            driver_memory,
            extra_env=token_env,
            cds_role="connect",
            after_port=(p["master"], self._master_wait_s),
        )
        # Always on the driver: its readiness report makes the node RUNNING.
        self._spawn_agent(rec, req)

    def _node_secret(self, rec: Rec) -> str:
        """The node's own Spark secret (a hot pool node's), or ""."""
        try:
            return (self.launcher.node_dir(rec) / SECRET_FILE).read_text().strip()
        except OSError:
            return ""  # none: the node is not a hot pool node

    def _spawn_agent(self, rec: Rec, req: NodeRequest) -> None:
        """The cluster agent (shared/agent.py) on the node: on the driver it reports readiness
        (the ready file), reads the application UI and posts heartbeats; on a worker it reports
        the node's local disk. Its token goes in a 0600 file, not in the environment. The agent
        is the platform's process: the cluster's spark_env_vars are not in its environment.
        Without `req.agent_env` (a node started outside the control plane) the driver's agent
        only writes the ready file."""
        node_dir, _ = self.launcher.dirs(rec)
        env = dict(req.agent_env)
        if "SPARKPLANE_AGENT_TOKEN" in env:
            token_file = node_dir / "agent-token"
            write_private(token_file, env.pop("SPARKPLANE_AGENT_TOKEN"))
            env["SPARKPLANE_AGENT_TOKEN_FILE"] = str(token_file)
        if "spark_ui_url" in rec.attrs:  # the driver: readiness, heartbeats, job tasks
            env["SPARKPLANE_SPARK_UI_URL"] = rec.attrs["spark_ui_url"]
            env["SPARKPLANE_CONNECT_URL"] = spark_auth.connect_url(
                rec.attrs["connect_url"], req.connect_token
            )
            env["SPARKPLANE_READY_FILE"] = str(node_dir / READY_FILE)
            if req.agent_env:
                env["SPARKPLANE_TASKS_DIR"] = str(node_dir / "tasks")
        env["SPARKPLANE_SCRATCH_DIR"] = str(node_dir / "scratch")
        env["SPARKPLANE_DISK_QUOTA_FILE"] = str(node_dir / "scratch-quota")
        env["PYTHONPATH"] = str(Path(__file__).resolve().parents[3])
        self.launcher.spawn(
            rec,
            "agent",
            [sys.executable, "-m", "shared.agent"],
            None,
            replace(req, spark_env_vars={}),
            node_rules.DAEMON_MEMORY,
            extra_env=env,
        )

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
        recs = self._take(req.pool, req.cluster_id, "worker", count) if req.pool else []
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

    def _run_worker(self, rec: Rec, req: NodeRequest, nt: NodeType, driver: Rec) -> None:
        """The worker's processes: a Worker of the cluster's master (a warm pool node's own
        master goes first) and, with elastic disk, the node agent."""
        warm_master = procs.leader(rec, "master")
        if warm_master is not None:
            with contextlib.suppress(OSError):  # it exited meanwhile
                os.killpg(warm_master.pid, signal.SIGTERM)
        if rec.procs:
            rec.procs = []
            self.store.update(rec, procs=rec.procs)
        master_url = driver.attrs["master_url"]
        node_dir, log_dir = self.launcher.dirs(rec)
        p = rec.ports
        cores = node_rules.worker_cores(nt)
        rec.attrs = {
            "node_type_id": nt.node_type_id,
            "spark_version": self.spark_version,
            "master_url": master_url,
            "worker_url": f"spark://{cf.LOOPBACK}:{p['worker']}",
            "worker_ui_url": f"http://{cf.LOOPBACK}:{p['worker_ui']}/",
            "cores": str(cores),
            "memory_mb": str(nt.memory_mb),
            "work_dir": str(node_dir / "work"),
            "log_dir": str(log_dir),
        }
        self._write_quota(rec)
        argv = cf.worker_argv(
            self.spark_home,
            p,
            cores=cores,
            memory_mb=nt.memory_mb,
            work_dir=node_dir / "work",
            master_url=master_url,
            properties_file=(
                self.launcher.properties_file(rec, "worker") if self.launcher.cds_for(req) else None
            ),
        )
        self.launcher.spawn(
            rec,
            "worker",
            argv,
            cf.daemon_conf(req),
            req,
            node_rules.DAEMON_MEMORY,
            extra_env={"SPARK_WORKER_DIR": str(node_dir / "work")},
            cds_role="worker",
            after_port=(driver.ports["master"], self._master_wait_s),
        )
        if req.agent_env:
            self._spawn_agent(rec, req)

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
