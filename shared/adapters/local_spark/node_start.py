"""Starting a node's processes: the driver's master (kept when a hot pool node runs one), its
Spark Connect server and agent; a worker's Worker and agent. What each process gets (its
command line, configuration, environment) is rendered in conf.py; spawning and supervising
them is processes.py's and supervision.py's."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from shared.adapters.local_spark import conf as cf
from shared.adapters.local_spark import processes as procs
from shared.adapters.local_spark.store import Rec
from shared.adapters.local_spark.supervision import (
    CREDENTIAL_ID_FILE,
    NODE_TYPE_FILE,
    READY_FILE,
    SECRET_FILE,
    Supervisor,
)
from shared.domain import node_rules, spark_auth
from shared.domain.spark_auth import SparkCredentials
from shared.ports import NodeRequest, NodeType
from shared.private_files import write_private

# The node attribute of an idle pool node that runs a hot Worker: the idle master it is
# registered with (hot_workers.py).
HOT_MASTER_ATTR = "hot_master"
# An idle pool node that decided to run a master of its own ("master"; hot_workers.py).
WARMING_ATTR = "warming"
# How long an idle hot driver's warm-up agent waits for the hot application's first executor:
# a hot Worker registers when a second node of the pool becomes idle, seconds to a minute later.
IDLE_WARMUP_S = 120.0
IDLE_WARMUP_POLL_S = 1.0  # how often it looks meanwhile (the cluster agent's: 0.2 s)


class NodeStart(Supervisor):
    """The node-start half of LocalSparkProvisioner."""

    spark_home: Path
    spark_version: str
    # Derives a credential id's Spark credentials (None: idle pool nodes run no Connect server).
    _credentials: Callable[[str], SparkCredentials | None] | None
    _tune_jvms: bool
    _master_wait_s: int

    def _run_driver(
        self, rec: Rec, req: NodeRequest, worker_type: NodeType, driver_type: NodeType
    ) -> None:
        """The driver's processes: the master (kept when a warm pool node already runs one),
        the Spark Connect server, and the cluster agent."""
        p = rec.ports
        master_url = f"spark://{cf.LOOPBACK}:{p['master']}"
        node_dir, log_dir = self.launcher.dirs(rec)
        (node_dir / READY_FILE).unlink(missing_ok=True)  # a pool node's, from its last cluster
        hot_worker = procs.leader(rec, "worker")
        if hot_worker is not None:  # an idle node's hot Worker (of another master) goes first
            procs.stop_process(hot_worker, self._kill_grace_s)
            rec.procs = [pr for pr in rec.procs if pr.name != "worker"]
        idle_agent = procs.leader(rec, "agent")
        if idle_agent is not None:  # the idle warm-up's: the cluster's agent replaces it
            procs.stop_process(idle_agent, self._kill_grace_s)
        rec.procs = [pr for pr in rec.procs if pr.name != "agent"]
        rec.attrs = {
            "node_type_id": driver_type.node_type_id,
            "spark_version": self.spark_version,
            "master_url": master_url,
            "connect_url": cf.connect_base_url(p),
            "spark_ui_url": cf.app_ui_url(p),
            "master_ui_url": f"http://{cf.LOOPBACK}:{p['master_ui']}/",
            "log_dir": str(log_dir),
        }
        self._write_quota(rec)
        warm_master = procs.leader(rec, "master")
        node_secret = self._node_secret(rec) if warm_master is not None else ""
        credential_id = self._credential_id(rec) if warm_master is not None else ""
        hot_connect = procs.leader(rec, "connect") if warm_master is not None else None
        if credential_id and self._credentials is not None:
            # A hot pool node: its master and Connect server run with the credentials of its
            # own credential id, which the cluster adopts (shared/domain/spark_auth.py).
            creds = self._credentials(credential_id)
            req = replace(
                req,
                spark_auth_secret=creds.auth_secret if creds else "",
                connect_token=creds.connect_token if creds else "",
            )
            rec.attrs[spark_auth.CREDENTIAL_ID_ATTR] = credential_id
        elif node_secret:
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
        if hot_connect is not None:
            # Kept only where the cluster adopts the node's credentials (its token).
            keep = bool(credential_id) and self._credentials is not None
            keep = keep and self._keeps_hot(rec, req)
            if not keep or warm_master is None:
                procs.stop_process(hot_connect, self._kill_grace_s)
                rec.procs = [pr for pr in rec.procs if pr.name != "connect"]
                hot_connect = None
        if warm_master is None:
            rec.procs = [pr for pr in rec.procs if pr.name != "master"]
            props = (
                self.launcher.properties_file(rec, "master") if self.launcher.cds_for(req) else None
            )
            self.launcher.spawn(
                rec,
                "master",
                cf.master_argv(self.spark_home, p, props),
                cf.daemon_conf(req),
                req,
                node_rules.DAEMON_MEMORY,
                cds_role="master",
            )
        if hot_connect is None:
            self._spawn_connect(rec, req, worker_type)
        self.store.update(rec, attrs=rec.attrs)
        # Always on the driver: its readiness report makes the node RUNNING.
        self._spawn_agent(rec, req)

    def _spawn_connect(
        self,
        rec: Rec,
        req: NodeRequest,
        worker_type: NodeType | None = None,
    ) -> None:
        """The Spark Connect server (the cluster's application) of a driver node, or of an idle
        pool node (its request names the node and the pool's node type). The launcher sizes
        it (a "daemon" to it) with SPARK_DAEMON_MEMORY. Its token goes in its environment
        (readable by this user only), not on its command line (which every user sees); the
        secret is in its 0600 spark-defaults.conf."""
        p = rec.ports
        worker_type = worker_type or node_rules.node_type(req.node_type_id)
        driver_memory = node_rules.driver_memory(cf.user_conf(req))
        cds_on = self.launcher.cds_for(req)
        app_conf = cf.connect_conf(
            req,
            p,
            master_url=f"spark://{cf.LOOPBACK}:{p['master']}",
            executor_memory_mb=worker_type.memory_mb,
            driver_memory=driver_memory,
            tune_jvms=self._tune_jvms,
            executor_cds_opts=self.launcher.cds_opts("executor") if cds_on else "",
        )
        token_env = {spark_auth.CONNECT_TOKEN_ENV: req.connect_token} if req.connect_token else {}
        props = self.launcher.properties_file(rec, "connect") if cds_on else None
        self.launcher.spawn(
            rec,
            "connect",
            cf.connect_argv(self.spark_home, req.cluster_id, props),
            app_conf,
            req,
            driver_memory,
            extra_env=token_env,
            cds_role="connect",
            after_port=(p["master"], self._master_wait_s),
        )

    def _keeps_hot(self, pool_rec: Rec, req: NodeRequest) -> bool:
        """Whether the hot processes a pool node started while idle (its Connect server, the
        hot Workers registered with its master) serve the cluster as they are
        (node_rules.keeps_hot_connect)."""
        worker_type = req.node_type_id
        return node_rules.keeps_hot_connect(
            user_conf=cf.user_conf(req),
            spark_env_vars=req.spark_env_vars,
            conf_files=req.conf_files,
            driver_type_id=req.driver_node_type_id or worker_type,
            worker_type_id=worker_type,
            pool_type_id=self._pool_node_type(pool_rec),
        )

    def _credential_id(self, rec: Rec) -> str:
        """The credential id a hot pool node runs with, or ""."""
        try:
            return (self.launcher.node_dir(rec) / CREDENTIAL_ID_FILE).read_text().strip()
        except OSError:
            return ""

    def _pool_node_type(self, rec: Rec) -> str:
        """The node type of a pool node (written when it was added)."""
        try:
            return (self.launcher.node_dir(rec) / NODE_TYPE_FILE).read_text().strip()
        except OSError:
            return node_rules.NODE_TYPES[0].node_type_id

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
        self._launch_agent(rec, req, env)

    def _spawn_idle_warmup(self, rec: Rec, req: NodeRequest) -> None:
        """An idle hot driver's agent, in readiness-only mode (no control plane, no ready file,
        shared/agent_ready.py): once the node's Connect server answers it runs the warm-up
        query on the driver, then on the hot application's executor as soon as a hot Worker
        registers (within IDLE_WARMUP_S), and exits. The cluster that takes the node then finds
        its driver and executor past their first query, which costs seconds in a fresh
        application (docs/pools.md, "Warm-up while idle"). The query is the platform's own;
        the token is the idle node's, in the environment as for the cluster's agent."""
        env = {
            "SPARKPLANE_CONNECT_URL": spark_auth.connect_url(
                cf.connect_base_url(rec.ports), req.connect_token
            ),
            "SPARKPLANE_SPARK_UI_URL": cf.app_ui_url(rec.ports),
            "SPARKPLANE_WARMUP_S": str(IDLE_WARMUP_S),
            "SPARKPLANE_WARMUP_POLL_S": str(IDLE_WARMUP_POLL_S),
        }
        self._launch_agent(rec, req, env)

    def _launch_agent(self, rec: Rec, req: NodeRequest, env: dict[str, str]) -> None:
        """Start `python -m shared.agent` as the node's "agent" process with `env` (and this
        checkout on its path), never the cluster's spark_env_vars."""
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

    def _run_worker(self, rec: Rec, req: NodeRequest, nt: NodeType, driver: Rec) -> None:
        """The worker's processes: a Worker of the cluster's master (a warm pool node's own
        master goes first; a hot Worker registered with the cluster's driver is kept, when
        the cluster's settings are the pool's) and, with elastic disk, the node agent."""
        hot = procs.leader(rec, "worker")
        keep = (
            hot is not None
            and rec.attrs.get(HOT_MASTER_ATTR) == driver.node_id
            and nt.node_type_id == self._pool_node_type(rec)
            and self._node_secret(rec) == self._node_secret(driver) != ""
            and self._keeps_hot(driver, req)
        )
        for name in ("master", "connect", "agent"):  # a hot pool node's processes go first
            warm = procs.leader(rec, name)
            if warm is not None:
                with contextlib.suppress(OSError):  # it exited meanwhile
                    os.killpg(warm.pid, signal.SIGTERM)
        if hot is not None and not keep:  # a Worker of another master: its ports are needed
            procs.stop_process(hot, self._kill_grace_s)
        kept = [pr for pr in rec.procs if keep and pr.name == "worker"]
        if rec.procs != kept:
            rec.procs = kept
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
        if keep:  # registered with the cluster's master already, its executor running
            self.store.update(rec, attrs=rec.attrs)
            if req.agent_env:
                self._spawn_agent(rec, req)
            return
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
