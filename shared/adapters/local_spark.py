"""The local Spark provisioner: every cluster is a real Apache Spark standalone cluster made of
local processes (the default provisioner of `make run`).

- A driver node is a standalone Master plus a Spark Connect server: a Spark application in
  client mode attached to that master. Attaching with `SparkSession.builder.remote(connect_url)`
  is this system's "notebook attached to the cluster".
- A worker node is one standalone Worker process (its executors and Python workers are its
  child processes).
- Spark is the one bundled in the installed `pyspark` package (bin/spark-class,
  bin/spark-submit, jars/). Java 17+ is checked when the provisioner is built.
- Every process binds 127.0.0.1 and runs in a session (and process group) of its own: nodes
  outlive a crash of the control plane, and a whole node (the JVM, its executors, their Python
  workers) is signalled at once.
- Every process starts from an environment built from nothing (`node_environment`,
  shared/domain/node_env.py): PATH (this interpreter's bin dir, JAVA_HOME/bin, the system's),
  HOME (the node's directory), LANG=C.UTF-8, PYSPARK_PYTHON (this interpreter), the cluster's
  accepted spark_env_vars (not for the agent), then the node's Spark and SPARKPLANE_* settings.
  Nothing of the control plane's own environment (its settings, cloud keys, tokens) reaches a
  node. The processes run with umask 077.
- A request with credentials (`NodeRequest.spark_auth_secret`, `connect_token`;
  shared/domain/spark_auth.py) makes an authenticated cluster: `spark.authenticate` and the
  secret in every process's 0600 spark-defaults.conf (executors get it from their Worker), the
  Connect token in the Connect server's environment, the connect URL on `localhost` (where
  pyspark sends a token without TLS). A pool node's warm master, started before its cluster,
  is restarted with the secret when the node becomes a driver.
- Everything the provisioner knows is on disk (SQLite under `data_dir`), so a new instance
  re-adopts the nodes still running (pid and process create time checked) and reports the dead
  ones LOST. Ports come from an allocation table in the same file and are checked free before
  use, so clusters never collide, across restarts too.

Node lifecycle (the `phase` column): `active` (STARTING until ready, then RUNNING; LOST when a
process died), `decommissioning` (a worker that got SIGPWR: Spark moves its blocks away and its
executors exit), `terminating`/`stopping` (SIGTERM sent; SIGKILL after a grace period). Removed
nodes disappear once no process of theirs is left. The slow steps are carried on by `observe`,
`cluster_ids` and a small background thread, so every public call returns quickly.

Files under `data_dir` (0700, and so is every directory made here; files 0600):

    local_spark.sqlite              nodes and port allocations
    logs/<cluster_id>/<node_id>/    <process>.out and <process>.err (Spark logs to stderr)
    nodes/<cluster_id>/<node_id>/   conf-<process>/spark-defaults.conf, work/ (SPARK_WORKER_DIR,
                                    executor logs), scratch/ (SPARK_LOCAL_DIRS, shuffle files)
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psutil

from shared.domain import spark_auth
from shared.domain.node_env import node_environment, spark_env_problem
from shared.ports import (
    Clock,
    Node,
    NodeRequest,
    NodeType,
    PoolCapacityReached,
    PoolNode,
    PoolRequest,
    SparkVersion,
)
from shared.private_files import PRIVATE_UMASK, private, private_dir, private_file, write_private

log = logging.getLogger("sparkplane.local_spark")

LOOPBACK = "127.0.0.1"
# The host of connect URLs: pyspark sends a Connect token over plain gRPC only to `localhost`
# (any other host gets TLS, which the Connect server does not speak).
CONNECT_HOST = "localhost"
MIN_JAVA = 17
CONNECT_SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
EXECUTOR_CLASS = "CoarseGrainedExecutorBackend"

DAEMON_MEMORY = "256m"  # heap of the Master and Worker daemons
DRIVER_MEMORY = "512m"  # heap of the Spark Connect server (the driver), unless spark_conf says
# JVM options of the Master, the Workers and the Connect server (the driver): C1 only and the
# serial collector start a JVM about twice as fast on a 2-core machine, and a small initial
# heap keeps an idle daemon near 140 MiB instead of 200 (the heap grows on demand up to -Xmx).
DAEMON_JAVA_OPTS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Xms32m"
# Executors keep the JVM's own choices (C2, G1) for speed; only their initial heap is small.
# Prepended to the cluster's spark.executor.extraJavaOptions (later options win).
EXECUTOR_JAVA_OPTS = "-Xms64m"

NODE_TYPES: tuple[NodeType, ...] = (
    NodeType("local-small", 1, 1024, "Local worker: 1 core, 1 GiB executor memory"),
    NodeType("local-medium", 2, 2048, "Local worker: 2 cores, 2 GiB executor memory"),
    NodeType("local-large", 4, 4096, "Local worker: 4 cores, 4 GiB executor memory"),
    NodeType(
        "local-memory",
        2,
        4096,
        "Local worker: 2 cores, 4 GiB executor memory",
        category="Memory Optimized",
    ),
)

# Spark settings every cluster gets (spark_conf may override them).
DEFAULT_CONF: Mapping[str, str] = {
    "spark.decommission.enabled": "true",
    "spark.storage.decommission.enabled": "true",
    "spark.storage.decommission.shuffleBlocks.enabled": "true",
    "spark.storage.decommission.rddBlocks.enabled": "true",
    # A decommissioning executor exits one migration round after its last task: rounds every
    # 5 s instead of 30 s make a graceful removal take seconds, not a minute.
    "spark.storage.decommission.replicationReattemptInterval": "5s",
    "spark.ui.showConsoleProgress": "false",
}
# Settings the provisioner owns: addresses and ports (spark_conf can't move them). No port
# retries: a process whose allocated port was taken fails (and is seen LOST) instead of
# silently listening on the next port, where nobody would find it. The master's REST
# submission server (on by default, fixed port 6066) is off: clusters would fight over it.
PINNED = {"spark.port.maxRetries": "0", "spark.master.rest.enabled": "false"}
PINNED_CONF = (
    "spark.port.maxRetries",
    "spark.master",
    "spark.driver.host",
    "spark.driver.bindAddress",
    "spark.ui.port",
    "spark.master.ui.port",
    "spark.master.rest.enabled",
    "spark.worker.ui.port",
    "spark.connect.grpc.binding.address",
    "spark.connect.grpc.binding.port",
)
# Spark's worker decommissioning signal (spark.worker.decommission.signal defaults to PWR).
# Platforms without SIGPWR (macOS) remove workers with SIGTERM instead.
DECOMMISSION_SIGNAL: signal.Signals | None = getattr(signal, "SIGPWR", None)
ENV_NODE = "SPARKPLANE_NODE_ID"
ENV_CLUSTER = "SPARKPLANE_CLUSTER_ID"
ENV_DATA_DIR = "SPARKPLANE_DATA_DIR"

# Run the real command once the master's web UI answers (the master registers its RPC endpoint
# before it binds the UI): a Worker or an application that finds no master waits 5 to 20 s
# before it tries again, which would double the start time of a cluster.
_WAIT_FOR_MASTER = r"""
port=$1; limit=$2; shift 2
end=$((SECONDS + limit))
until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
  if [ "$SECONDS" -ge "$end" ]; then
    echo "sparkplane: the master (web UI 127.0.0.1:$port) did not answer in ${limit}s" >&2
    exit 1
  fi
  sleep 0.1
done
exec "$@"
"""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
  node_id TEXT PRIMARY KEY,
  cluster_id TEXT NOT NULL,
  role TEXT NOT NULL,
  start_ms INTEGER NOT NULL,
  created_s REAL NOT NULL,
  procs TEXT NOT NULL,
  ports TEXT NOT NULL,
  attrs TEXT NOT NULL,
  phase TEXT NOT NULL,
  phase_s REAL NOT NULL,
  term_s REAL,
  kill_s REAL,
  ready_s REAL,
  lost_s REAL
);
CREATE INDEX IF NOT EXISTS nodes_cluster ON nodes(cluster_id);
CREATE TABLE IF NOT EXISTS ports (
  port INTEGER PRIMARY KEY,
  node_id TEXT NOT NULL,
  cluster_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# Columns added after the first release (ALTER TABLE on an older file).
_MIGRATIONS = (
    ("pool_id", "ALTER TABLE nodes ADD COLUMN pool_id TEXT"),
    ("idle_since_ms", "ALTER TABLE nodes ADD COLUMN idle_since_ms INTEGER"),
    ("disk_bytes", "ALTER TABLE nodes ADD COLUMN disk_bytes INTEGER"),
)
_COLS = (
    "node_id, cluster_id, role, start_ms, created_s, procs, ports, attrs, phase, phase_s,"
    " term_s, kill_s, ready_s, lost_s, pool_id, idle_since_ms, disk_bytes"
)

# Node processes started by this Python process, so the finished ones are reaped (a dead child
# that is not waited for stays a zombie). Shared by every provisioner of the process.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
_CHILDREN_LOCK = threading.Lock()


class JavaRequirementError(RuntimeError):
    """No Java, or a Java older than 17: Spark 4 needs Java 17 or newer."""


class SparkHomeError(RuntimeError):
    """The Spark distribution (the pyspark package) is missing or incomplete."""


@dataclass(frozen=True, slots=True)
class JavaInfo:
    executable: str
    version: str
    major: int
    home: Path


@dataclass(slots=True)
class _Proc:
    name: str
    pid: int
    ctime: float


@dataclass(slots=True)
class _Rec:
    node_id: str
    cluster_id: str
    role: str
    start_ms: int
    created_s: float
    procs: list[_Proc]
    ports: dict[str, int]
    attrs: dict[str, str]
    phase: str
    phase_s: float
    term_s: float | None = None
    kill_s: float | None = None
    ready_s: float | None = None
    lost_s: float | None = None
    pool_id: str | None = None
    idle_since_ms: int | None = None
    disk_bytes: int | None = None

    @property
    def expected_procs(self) -> int:
        """Processes that make the node (a driver: master and Connect server; a worker: its
        Worker; an idle pool node: its warm master)."""
        return 2 if self.role == "driver" else 1


_JAVA_HINT = (
    "Install Java 17 or newer, e.g. `sudo apt-get install openjdk-17-jre-headless` "
    "(Debian/Ubuntu), `sudo dnf install java-17-openjdk-headless` (Fedora/RHEL) or "
    "`brew install openjdk@17` (macOS), then put `java` on PATH or set JAVA_HOME "
    "(or pass java=... to LocalSparkProvisioner)."
)


def check_java(java: str | None = None) -> JavaInfo:
    """Find Java (the `java` argument, else $JAVA_HOME/bin/java, else `java` on PATH) and check
    that it is 17 or newer; raise JavaRequirementError with install instructions if not."""
    candidate = java
    if candidate is None and os.environ.get("JAVA_HOME"):
        candidate = str(Path(os.environ["JAVA_HOME"]) / "bin" / "java")
    if candidate is None:
        candidate = "java"
    exe = candidate if os.sep in candidate else shutil.which(candidate)
    if not exe or not os.access(exe, os.X_OK):
        raise JavaRequirementError(
            f"Java was not found ({candidate!r}); Apache Spark needs Java {MIN_JAVA}+. "
            + _JAVA_HINT
        )
    try:
        out = subprocess.run(
            [exe, "-version"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.SubprocessError) as e:
        raise JavaRequirementError(f"Could not run {exe} -version: {e}. " + _JAVA_HINT) from e
    text = out.stderr + out.stdout
    m = re.search(r'version "(\d+)(?:\.(\d+))?[^"]*"', text)
    if not m:
        raise JavaRequirementError(
            f"Could not tell the Java version of {exe} from {text.strip()[:200]!r}. " + _JAVA_HINT
        )
    major = int(m.group(1))
    if major == 1 and m.group(2):  # "1.8.0_412" is Java 8
        major = int(m.group(2))
    version = m.group(0).split('"')[1]
    if major < MIN_JAVA:
        raise JavaRequirementError(
            f"{exe} is Java {version}; Apache Spark 4 needs Java {MIN_JAVA} or newer. " + _JAVA_HINT
        )
    home = Path(os.path.realpath(exe)).parent.parent
    return JavaInfo(executable=exe, version=version, major=major, home=home)


def default_spark_home() -> Path:
    """The Spark distribution bundled in the installed pyspark package."""
    spec = importlib.util.find_spec("pyspark")
    if spec is None or not spec.origin:
        raise SparkHomeError("pyspark is not installed: pip install 'pyspark[connect]~=4.1.0'")
    return Path(spec.origin).parent


def spark_build(spark_home: Path) -> tuple[str, str]:
    """(Spark version, Scala version) of a distribution, read from its spark-core jar."""
    for jar in sorted((spark_home / "jars").glob("spark-core_*.jar")):
        m = re.fullmatch(r"spark-core_(\d+\.\d+)-(\d+\.\d+\.\d+)(?:[-.].*)?\.jar", jar.name)
        if m:
            return m.group(2), m.group(1)
    raise SparkHomeError(f"no jars/spark-core_*.jar under {spark_home}: not a Spark distribution")


def _props_line(key: str, value: str) -> str:
    """One line of a Java properties file (spark-defaults.conf)."""

    def esc(s: str, is_key: bool) -> str:
        out = []
        for ch in s:
            if ch == "\\":
                out.append("\\\\")
            elif ch == "\n":
                out.append("\\n")
            elif ch == "\r":
                out.append("\\r")
            elif ch == "\t":
                out.append("\\t")
            elif ch in " =:#!" and is_key:
                out.append("\\" + ch)
            else:
                out.append(ch)
        return "".join(out)

    return f"{esc(key, True)}={esc(value, False)}\n"


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _port_open(port: int, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout):
            return True
    except OSError:
        return False


def _live(pid: int, ctime: float) -> psutil.Process | None:
    """The process if `pid` still is the process started at `ctime` and it has not exited."""
    try:
        p = psutil.Process(pid)
        if abs(p.create_time() - ctime) > 0.5:
            return None  # the pid was reused
        if p.status() == psutil.STATUS_ZOMBIE:
            return None
        return p
    except psutil.Error:
        return None


def _reap() -> None:
    with _CHILDREN_LOCK:
        for pid, popen in list(_CHILDREN.items()):
            if popen.poll() is not None:
                del _CHILDREN[pid]


def _tree_rss(p: psutil.Process) -> int:
    total = 0
    with contextlib.suppress(psutil.Error):
        total += p.memory_info().rss
        for c in p.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if c.status() != psutil.STATUS_ZOMBIE:
                    total += c.memory_info().rss
    return total


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class LocalSparkProvisioner:
    """The `Provisioner` port over real local Spark standalone clusters (see the module doc)."""

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
    ) -> None:
        self.java = check_java(java)
        self.spark_home = Path(spark_home) if spark_home else default_spark_home()
        for rel in ("bin/spark-class", "bin/spark-submit"):
            if not (self.spark_home / rel).exists():
                raise SparkHomeError(f"{self.spark_home / rel} is missing")
        if not list((self.spark_home / "jars").glob("spark-connect_*.jar")):
            raise SparkHomeError(
                f"no jars/spark-connect_*.jar under {self.spark_home}: Spark Connect is needed "
                "(pip install 'pyspark[connect]~=4.1.0')"
            )
        self.spark_version, self.scala_version = spark_build(self.spark_home)
        self.data_dir = private_dir(Path(data_dir).resolve())
        self._db_path = private_file(self.data_dir / "local_spark.sqlite")
        if clock is None:
            self._now_ms: Callable[[], int] = lambda: int(time.time() * 1000)
        elif hasattr(clock, "now_ms"):
            self._now_ms = clock.now_ms
        else:
            self._now_ms = clock
        lo, hi = port_range
        if not 1024 <= lo < hi <= 65536:
            raise ValueError(f"bad port_range {port_range}")
        self._port_range = (lo, hi)
        self._decommission_timeout_s = decommission_timeout_s
        self._kill_grace_s = kill_grace_s
        self._master_wait_s = master_wait_s
        self._http_timeout_s = http_timeout_s
        self._tune_jvms = tune_jvms
        self._lock = threading.Lock()
        self._reaper: threading.Thread | None = None
        self._closed = threading.Event()
        self._scratch_quota = scratch_quota_bytes
        with self._db() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            have = {row[1] for row in db.execute("PRAGMA table_info(nodes)")}
            for column, ddl in _MIGRATIONS:
                if column not in have:
                    db.execute(ddl)
        # Carry on with removals a previous instance started (a restart of the control plane).
        self._kick_reaper()

    # ---------------------------------------------------------------------------- catalog

    def node_types(self) -> list[NodeType]:
        return list(NODE_TYPES)

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

    def _node_type(self, node_type_id: str) -> NodeType:
        for nt in NODE_TYPES:
            if nt.node_type_id == node_type_id:
                return nt
        known = ", ".join(nt.node_type_id for nt in NODE_TYPES)
        raise ValueError(f"unknown node type {node_type_id!r} (known: {known})")

    # ---------------------------------------------------------------------------- the port

    def observe(self, cluster_id: str) -> list[Node]:
        """The nodes of the cluster, driver first. At most one HTTP call (the master's JSON),
        and only while a node is starting or a worker is being decommissioned."""
        _reap()
        recs = self._load(cluster_id)
        if not recs:
            return []
        alive = {r.node_id: self._alive(r) for r in recs}
        need_master = any(
            (r.phase == "active" and r.ready_s is None and alive[r.node_id])
            or r.phase == "decommissioning"
            for r in recs
        )
        driver = self._driver(recs)
        master = self._master_json(driver) if need_master and driver is not None else None
        nodes: list[Node] = []
        for r in recs:
            if r.phase == "active":
                status = self._active_status(r, alive[r.node_id], master)
            elif self._advance(r, master):
                continue  # gone
            else:
                status = "STOPPING"
            nodes.append(self._node(r, status))
        return nodes

    def start_driver(self, req: NodeRequest) -> Node:
        existing = self._driver(self._load(req.cluster_id))
        if existing is not None:  # idempotent: a replayed reconcile gets the same driver
            return self._node(existing, self._active_status(existing, self._alive(existing), None))
        worker_type = self._node_type(req.node_type_id)
        driver_type = self._node_type(req.driver_node_type_id or req.node_type_id)
        if req.driver_pool is not None:
            [rec] = self._take(req.driver_pool, req.cluster_id, "driver", 1)
        else:
            rec = self._new_record(req.cluster_id, uuid.uuid4().hex, "driver", PORTS_DRIVER)
        warm = self._leader(rec, "master") is not None
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
        self, rec: _Rec, req: NodeRequest, worker_type: NodeType, driver_type: NodeType
    ) -> None:
        """The driver's processes: the master (kept when a warm pool node already runs one),
        the Spark Connect server, and the cluster agent."""
        p = rec.ports
        master_url = f"spark://{LOOPBACK}:{p['master']}"
        _, log_dir = self._dirs(rec)
        rec.attrs = {
            "node_type_id": driver_type.node_type_id,
            "spark_version": self.spark_version,
            "master_url": master_url,
            "connect_url": f"sc://{CONNECT_HOST}:{p['connect']}",
            "spark_ui_url": f"http://{LOOPBACK}:{p['app_ui']}/",
            "master_ui_url": f"http://{LOOPBACK}:{p['master_ui']}/",
            "log_dir": str(log_dir),
        }
        self._write_quota(rec)
        user_conf = _user_conf(req)
        auth = spark_auth.auth_conf(req.spark_auth_secret)
        daemon_conf = {**DEFAULT_CONF, **user_conf, **PINNED, **auth}
        driver_memory = user_conf.get("spark.driver.memory", DRIVER_MEMORY)
        executor_opts = user_conf.get("spark.executor.extraJavaOptions", "")
        if self._tune_jvms:
            executor_opts = f"{EXECUTOR_JAVA_OPTS} {executor_opts}".strip()
        app_conf = {
            **DEFAULT_CONF,
            "spark.app.name": f"sparkplane {req.cluster_id}",
            "spark.executor.memory": f"{worker_type.memory_mb}m",
            "spark.driver.memory": driver_memory,
            **user_conf,
            "spark.executor.extraJavaOptions": executor_opts,
            "spark.master": master_url,
            "spark.driver.host": LOOPBACK,
            "spark.driver.bindAddress": LOOPBACK,
            "spark.ui.port": str(p["app_ui"]),
            "spark.connect.grpc.binding.address": LOOPBACK,
            "spark.connect.grpc.binding.port": str(p["connect"]),
            **PINNED,
            **auth,
        }
        if not executor_opts:
            del app_conf["spark.executor.extraJavaOptions"]
        warm_master = self._leader(rec, "master")
        if warm_master is not None and auth:
            # A pool node's warm master was started before its cluster existed, so without the
            # cluster's secret: it makes way for one that has it.
            self._stop_process(warm_master)
            warm_master = None
        if warm_master is None:
            rec.procs = [pr for pr in rec.procs if pr.name != "master"]
            self._spawn(rec, "master", self._master_argv(rec), daemon_conf, req, DAEMON_MEMORY)
        connect_argv = [
            str(self.spark_home / "bin" / "spark-submit"),
            "--class",
            CONNECT_SERVER_CLASS,
            "--name",
            f"sparkplane {req.cluster_id}",
            "spark-internal",
        ]
        # The launcher sizes the Connect server (a "daemon" to it) with SPARK_DAEMON_MEMORY.
        # Its token goes in its environment (readable by this user only), not on its command
        # line (which every user sees); the secret is in its 0600 spark-defaults.conf.
        token_env = {spark_auth.CONNECT_TOKEN_ENV: req.connect_token} if req.connect_token else {}
        self._spawn(
            rec,
            "connect",
            connect_argv,
            app_conf,
            req,
            driver_memory,
            wait_port=p["master_ui"],
            extra_env=token_env,
        )
        if req.agent_env:
            self._spawn_agent(rec, req)

    def _master_argv(self, rec: _Rec) -> list[str]:
        return [
            str(self.spark_home / "bin" / "spark-class"),
            MASTER_CLASS,
            "--host",
            LOOPBACK,
            "--port",
            str(rec.ports["master"]),
            "--webui-port",
            str(rec.ports["master_ui"]),
        ]

    def _spawn_agent(self, rec: _Rec, req: NodeRequest) -> None:
        """The cluster agent (shared/agent.py) on the node: on the driver it reads the
        application UI and posts heartbeats; on a worker it reports the node's local disk.
        Its token goes in a 0600 file, not in the environment. The agent is the platform's
        process: the cluster's spark_env_vars are not in its environment."""
        node_dir, _ = self._dirs(rec)
        env = dict(req.agent_env)
        token_file = node_dir / "agent-token"
        write_private(token_file, env.pop("SPARKPLANE_AGENT_TOKEN", ""))
        env["SPARKPLANE_AGENT_TOKEN_FILE"] = str(token_file)
        if "spark_ui_url" in rec.attrs:  # the driver: heartbeats and the cluster's job tasks
            env["SPARKPLANE_SPARK_UI_URL"] = rec.attrs["spark_ui_url"]
            env["SPARKPLANE_CONNECT_URL"] = spark_auth.connect_url(
                rec.attrs["connect_url"], req.connect_token
            )
            env["SPARKPLANE_TASKS_DIR"] = str(node_dir / "tasks")
        env["SPARKPLANE_SCRATCH_DIR"] = str(node_dir / "scratch")
        env["SPARKPLANE_DISK_QUOTA_FILE"] = str(node_dir / "scratch-quota")
        env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
        self._spawn(
            rec,
            "agent",
            [sys.executable, "-m", "shared.agent"],
            {},
            replace(req, spark_env_vars={}),
            DAEMON_MEMORY,
            extra_env=env,
        )

    def add_workers(self, req: NodeRequest, count: int) -> list[Node]:
        if count <= 0:
            return []
        driver = self._driver(self._load(req.cluster_id))
        if driver is None:
            raise RuntimeError(f"cluster {req.cluster_id} has no driver: start_driver first")
        nt = self._node_type(req.node_type_id)
        out: list[Node] = []
        recs = self._take(req.pool, req.cluster_id, "worker", count) if req.pool else []
        for i in range(count):
            if i < len(recs):
                rec = recs[i]
            else:
                rec = self._new_record(req.cluster_id, uuid.uuid4().hex, "worker", PORTS_WORKER)
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

    def _run_worker(self, rec: _Rec, req: NodeRequest, nt: NodeType, driver: _Rec) -> None:
        """The worker's processes: a Worker of the cluster's master (a warm pool node's own
        master goes first) and, with elastic disk, the node agent."""
        warm_master = self._leader(rec, "master")
        if warm_master is not None:
            with contextlib.suppress(OSError):
                os.killpg(warm_master.pid, signal.SIGTERM)
        if rec.procs:
            rec.procs = []
            self._update(rec, procs=rec.procs)
        conf = {
            **DEFAULT_CONF,
            **_user_conf(req),
            **PINNED,
            **spark_auth.auth_conf(req.spark_auth_secret),
        }
        master_url = driver.attrs["master_url"]
        node_dir, log_dir = self._dirs(rec)
        p = rec.ports
        cores = max(1, round(nt.num_cores))
        rec.attrs = {
            "node_type_id": nt.node_type_id,
            "spark_version": self.spark_version,
            "master_url": master_url,
            "worker_url": f"spark://{LOOPBACK}:{p['worker']}",
            "worker_ui_url": f"http://{LOOPBACK}:{p['worker_ui']}/",
            "cores": str(cores),
            "memory_mb": str(nt.memory_mb),
            "work_dir": str(node_dir / "work"),
            "log_dir": str(log_dir),
        }
        self._write_quota(rec)
        argv = [
            str(self.spark_home / "bin" / "spark-class"),
            WORKER_CLASS,
            "--host",
            LOOPBACK,
            "--port",
            str(p["worker"]),
            "--webui-port",
            str(p["worker_ui"]),
            "--cores",
            str(cores),
            "--memory",
            f"{nt.memory_mb}m",
            "--work-dir",
            str(node_dir / "work"),
            master_url,
        ]
        self._spawn(
            rec,
            "worker",
            argv,
            conf,
            req,
            DAEMON_MEMORY,
            wait_port=driver.ports["master_ui"],
            extra_env={"SPARK_WORKER_DIR": str(node_dir / "work")},
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
        for r in self._load(cluster_id):
            if r.node_id not in wanted or r.phase != "active":
                continue
            if r.role != "worker":
                raise ValueError(f"{r.node_id} is the driver of {cluster_id}: use stop_cluster")
            leader = self._leader(r, "worker")
            if leader is not None and r.ready_s is not None and DECOMMISSION_SIGNAL:
                try:
                    leader.send_signal(DECOMMISSION_SIGNAL)
                except psutil.Error:
                    pass
                else:
                    self._set_phase(r, "decommissioning", now)
                    log.info(
                        "worker decommissioning",
                        extra={"cluster_id": cluster_id, "node_id": r.node_id},
                    )
                    continue
            self._terminate(r, _ending(r), now)
            self._advance(r, None)
        self._kick_reaper()

    def stop_cluster(self, cluster_id: str) -> None:
        """SIGTERM to every node now, SIGKILL to what is left after `kill_grace_s` (by a later
        observe() or the background reaper); observe() says STOPPING until no process of the
        cluster is left, then returns nothing. Pool nodes go back to their pools."""
        now = time.time()
        for r in self._load(cluster_id):
            if r.phase not in ("stopping", "terminating", "returning"):
                self._terminate(r, "returning" if r.pool_id else "stopping", now)
            self._advance(r, None)
        self._kick_reaper()

    def cluster_ids(self) -> set[str]:
        """Every cluster that owns a node (removals in progress are carried on first)."""
        _reap()
        for cid in self._busy():
            self._advance_cluster(cid)
        with self._db() as db:
            rows = db.execute("SELECT DISTINCT cluster_id FROM nodes WHERE cluster_id!=''")
            return {row[0] for row in rows}

    def _busy(self) -> list[str]:
        """Clusters (and '' for pools) with nodes being removed or given back."""
        with self._db() as db:
            rows = db.execute(
                "SELECT DISTINCT cluster_id FROM nodes WHERE phase NOT IN ('active', 'idle')"
            )
            return [row[0] for row in rows]

    # ---------------------------------------------------------------------------- storage

    def grow_storage(self, cluster_id: str, node_id: str, total_bytes: int) -> None:
        """Locally a node's disk is its scratch directory (SPARK_LOCAL_DIRS) with a quota: the
        quota file the node agent reports against. The quota is advisory (enforcing one needs
        root: filesystem quotas or a loop device per node)."""
        with self._tx() as db:
            row = db.execute(
                f"SELECT {_COLS} FROM nodes WHERE node_id=? AND cluster_id=?",
                (node_id, cluster_id),
            ).fetchone()
            if row is None:
                return  # the node is gone
            r = _rec(row)
            if (r.disk_bytes or 0) >= total_bytes:
                return
            r.disk_bytes = total_bytes
            db.execute("UPDATE nodes SET disk_bytes=? WHERE node_id=?", (total_bytes, node_id))
        self._write_quota(r)
        log.info(
            "scratch quota grown",
            extra={"cluster_id": cluster_id, "node_id": node_id, "bytes": total_bytes},
        )

    def _write_quota(self, r: _Rec) -> None:
        node_dir, _ = self._dirs(r)
        tmp = node_dir / "scratch-quota.tmp"
        write_private(tmp, str(r.disk_bytes or self._scratch_quota))
        tmp.replace(node_dir / "scratch-quota")

    # ---------------------------------------------------------------------------- pools

    def pool_nodes(self, pool_id: str) -> list[PoolNode]:
        """The pool's nodes. A node taken by a cluster is USED once it runs its Spark role,
        whether or not observe() of its cluster saw that first (the master of each cluster
        with a node not known to run yet is asked once)."""
        _reap()
        out: list[PoolNode] = []
        masters: dict[str, dict[str, Any] | None] = {}
        for r in self._load_pool(pool_id):
            status: str
            if r.phase == "idle":
                if not self._alive(r):
                    self._active_status(r, False, None)  # records the loss once
                    status = "LOST"
                elif r.ready_s is None and _port_open(r.ports["master_ui"]):
                    r.ready_s = time.time()
                    self._update(r, ready_s=r.ready_s)
                    status = "IDLE"
                else:
                    status = "IDLE" if r.ready_s is not None else "PENDING_IDLE"
            elif r.phase == "active":
                if not self._alive(r):
                    status = "LOST"
                else:
                    if r.ready_s is None:
                        if r.cluster_id not in masters:
                            driver = self._driver(self._load(r.cluster_id))
                            masters[r.cluster_id] = self._master_json(driver)
                        self._active_status(r, True, masters[r.cluster_id])  # sets ready_s
                    status = "USED" if r.ready_s is not None else "PENDING_USED"
            elif self._advance(r, None):
                if r.phase == "idle":  # given back just now: warm again soon
                    out.append(self._pool_node(r, "PENDING_IDLE"))
                continue
            else:
                status = "STOPPING" if r.phase == "stopping" and not r.cluster_id else "RETURNING"
            out.append(self._pool_node(r, status))
        return out

    def _pool_node(self, r: _Rec, status: str) -> PoolNode:
        return PoolNode(
            node_id=r.node_id,
            status=status,  # type: ignore[arg-type]
            cluster_id=r.cluster_id,
            start_ms=r.start_ms,
            idle_since_ms=r.idle_since_ms or 0,
        )

    def add_idle(self, req: PoolRequest, count: int) -> list[PoolNode]:
        """Warm idle nodes: each runs a standalone master already, so as a driver it only has
        to start its Spark Connect server (as a worker, the master makes way for a Worker)."""
        if count <= 0:
            return []
        self._node_type(req.node_type_id)
        with self._tx() as db:
            total = self._pool_size(db, req.pool_id)
            room = count if req.max_capacity is None else req.max_capacity - total
            recs = [
                self._new_record(
                    "", uuid.uuid4().hex, "pool", PORTS_POOL, pool_id=req.pool_id, db=db
                )
                for _ in range(max(0, min(count, room)))
            ]
        for rec in recs:
            self._warm(rec)
        if recs:
            log.info("pool nodes started", extra={"pool_id": req.pool_id, "count": len(recs)})
        return [self._pool_node(r, "PENDING_IDLE") for r in recs]

    def remove_idle(self, pool_id: str, node_ids: Sequence[str]) -> None:
        now = time.time()
        with self._tx() as db:
            db.executemany(
                "UPDATE nodes SET phase='stopping', phase_s=? WHERE node_id=? AND pool_id=?"
                " AND phase='idle'",
                [(now, nid, pool_id) for nid in node_ids],
            )
        wanted = set(node_ids)
        for r in self._load_pool(pool_id):
            if r.node_id in wanted and r.phase == "stopping" and r.term_s is None:
                self._terminate(r, "stopping", now)
                self._advance(r, None)
        self._kick_reaper()

    def pool_ids(self) -> set[str]:
        with self._db() as db:
            rows = db.execute("SELECT DISTINCT pool_id FROM nodes WHERE pool_id IS NOT NULL")
            return {row[0] for row in rows}

    @staticmethod
    def _pool_size(db: sqlite3.Connection, pool_id: str) -> int:
        """Nodes that count toward max_capacity: all but the ones being removed."""
        row = db.execute(
            "SELECT COUNT(*) FROM nodes"
            " WHERE pool_id=? AND phase NOT IN ('stopping', 'terminating')",
            (pool_id,),
        ).fetchone()
        return int(row[0])

    def _take(self, pool: PoolRequest, cluster_id: str, role: str, count: int) -> list[_Rec]:
        """Nodes of `pool` for a cluster, in one transaction: idle ones first (ready before
        starting, longest idle first), then new pool nodes while under max_capacity; all or
        nothing (PoolCapacityReached)."""
        now = time.time()
        now_ms = self._now_ms()
        with self._tx() as db:
            rows = db.execute(
                f"SELECT {_COLS} FROM nodes WHERE pool_id=? AND phase='idle' AND lost_s IS NULL"
                " ORDER BY ready_s IS NULL, idle_since_ms, node_id",
                (pool.pool_id,),
            ).fetchall()
            idle = [r for r in map(_rec, rows) if self._alive(r)]
            taken = idle[:count]
            missing = count - len(taken)
            if missing and pool.max_capacity is not None:
                room = pool.max_capacity - self._pool_size(db, pool.pool_id)
                if missing > room:
                    raise PoolCapacityReached(
                        f"Instance pool {pool.pool_id} is at its max_capacity "
                        f"({pool.max_capacity}): {len(idle)} idle node(s) and room for "
                        f"{max(0, room)} more, {count} needed."
                    )
            for r in taken:
                r.cluster_id, r.role, r.phase, r.phase_s = cluster_id, role, "active", now
                r.start_ms, r.ready_s = now_ms, None
                db.execute(
                    "UPDATE nodes SET cluster_id=?, role=?, phase='active', phase_s=?,"
                    " start_ms=?, ready_s=NULL WHERE node_id=?",
                    (cluster_id, role, now, now_ms, r.node_id),
                )
                db.execute("UPDATE ports SET cluster_id=? WHERE node_id=?", (cluster_id, r.node_id))
            fresh = [
                self._new_record(
                    cluster_id, uuid.uuid4().hex, role, PORTS_POOL, pool_id=pool.pool_id, db=db
                )
                for _ in range(missing)
            ]
        if taken:
            log.info(
                "pool nodes taken",
                extra={"pool_id": pool.pool_id, "cluster_id": cluster_id, "warm": len(taken)},
            )
        return taken + fresh

    def _warm(self, r: _Rec) -> None:
        """Start the warm master of an idle pool node."""
        try:
            conf = {**DEFAULT_CONF, **PINNED}
            self._spawn(r, "master", self._master_argv(r), conf, None, DAEMON_MEMORY)
        except Exception:
            log.exception("warm master failed", extra={"pool_id": r.pool_id, "node_id": r.node_id})

    def _rewarm(self, r: _Rec) -> None:
        """A pool node whose cluster processes are gone: clean, idle and warm again."""
        _reap()
        node_dir, _ = self._dirs(r)
        shutil.rmtree(node_dir / "scratch", ignore_errors=True)
        shutil.rmtree(node_dir / "work", ignore_errors=True)
        (node_dir / "agent-token").unlink(missing_ok=True)
        now = time.time()
        r.cluster_id, r.role, r.phase, r.phase_s = "", "pool", "idle", now
        r.procs, r.attrs = [], {}
        r.term_s = r.kill_s = r.ready_s = r.lost_s = None
        r.idle_since_ms = r.start_ms = self._now_ms()
        r.disk_bytes = self._scratch_quota
        with self._tx() as db:
            done = db.execute(
                "UPDATE nodes SET cluster_id='', role='pool', phase='idle', phase_s=?,"
                " procs='[]', attrs='{}', term_s=NULL, kill_s=NULL, ready_s=NULL, lost_s=NULL,"
                " idle_since_ms=?, start_ms=?, disk_bytes=? WHERE node_id=? AND phase='returning'",
                (now, r.idle_since_ms, r.start_ms, r.disk_bytes, r.node_id),
            ).rowcount
            db.execute("UPDATE ports SET cluster_id='' WHERE node_id=?", (r.node_id,))
        if not done:
            return  # another thread gave it back first
        self._warm(r)
        log.info("node back in its pool", extra={"pool_id": r.pool_id, "node_id": r.node_id})

    # ---------------------------------------------------------------------------- extras

    def info(self, cluster_id: str) -> dict[str, Any]:
        """What GET cluster shows of the Spark side: URLs, the master's view, memory per node.
        Empty when the cluster has no driver."""
        recs = self._load(cluster_id)
        driver = self._driver(recs)
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
            apps = master.get("activeapps") or []
            out.update(
                master_status=master.get("status"),
                alive_workers=master.get("aliveworkers"),
                cores=master.get("cores"),
                memory_mb=master.get("memory"),
                app_id=apps[0].get("id") if apps else None,
                workers=[
                    {
                        "id": w.get("id"),
                        "port": w.get("port"),
                        "state": w.get("state"),
                        "cores": w.get("cores"),
                        "memory_mb": w.get("memory"),
                    }
                    for w in master.get("workers") or []
                ],
            )
        return out

    def node_rss_mb(self, cluster_id: str) -> dict[str, float]:
        """Resident memory of each node: its processes and all their children (executors,
        Python workers), in MiB."""
        out: dict[str, float] = {}
        for r in self._load(cluster_id):
            total = 0
            for pr in r.procs:
                p = _live(pr.pid, pr.ctime)
                if p is not None:
                    total += _tree_rss(p)
            out[r.node_id] = round(total / 2**20, 1)
        return out

    def node_pids(self, cluster_id: str) -> dict[str, list[int]]:
        """Every live process of each node (the leaders and their descendants)."""
        out: dict[str, list[int]] = {}
        for r in self._load(cluster_id):
            out[r.node_id] = sorted(p.pid for p in self._members(r))
        return out

    def close(self) -> None:
        """Stop the background reaper (nodes keep running; a new instance re-adopts them)."""
        self._closed.set()
        t = self._reaper
        if t is not None:
            t.join(timeout=5)

    # ---------------------------------------------------------------------------- status

    def _active_status(self, r: _Rec, alive: bool, master: dict[str, Any] | None) -> str:
        if not alive:
            if r.lost_s is None:
                r.lost_s = time.time()
                self._update(r, lost_s=r.lost_s)
                log.warning(
                    "node lost",
                    extra={"cluster_id": r.cluster_id, "node_id": r.node_id, "role": r.role},
                )
            return "LOST"
        if r.ready_s is not None:
            return "RUNNING"
        if master is None or not self._ready(r, master):
            return "STARTING"
        r.ready_s = time.time()
        self._update(r, ready_s=r.ready_s)
        return "RUNNING"

    def _ready(self, r: _Rec, master: dict[str, Any]) -> bool:
        if r.role == "driver":
            return master.get("status") == "ALIVE" and _port_open(r.ports["connect"])
        return _worker_states(master).get(r.ports["worker"]) == "ALIVE"

    def _alive(self, r: _Rec) -> bool:
        """Every process of the node is the one started (pid and create time) and running."""
        if r.lost_s is not None:
            return False
        if len(r.procs) < r.expected_procs and time.time() - max(r.created_s, r.phase_s) >= 30:
            return False  # a crash between the spawns of start_driver left it half-made
        # The agent does not make the node: a dead agent only means no heartbeats.
        return all(_live(p.pid, p.ctime) is not None for p in r.procs if p.name != "agent")

    def _leader(self, r: _Rec, name: str) -> psutil.Process | None:
        for pr in r.procs:
            if pr.name == name:
                return _live(pr.pid, pr.ctime)
        return None

    def _node(self, r: _Rec, status: str) -> Node:
        pids = [str(p.pid) for p in r.procs]
        attrs = dict(r.attrs)
        if pids:
            attrs["pid"] = pids[0]
            attrs["pids"] = ",".join(pids)
        if r.disk_bytes:
            attrs["disk_total_bytes"] = str(r.disk_bytes)
        if r.pool_id:
            attrs["instance_pool_id"] = r.pool_id
        return Node(
            node_id=r.node_id,
            role="driver" if r.role == "driver" else "worker",
            status=status,  # type: ignore[arg-type]
            start_ms=r.start_ms,
            private_ip=LOOPBACK,
            instance_id=f"local-{pids[0]}" if pids else "",
            attrs=attrs,
        )

    # ---------------------------------------------------------------------------- removal

    def _advance_cluster(self, cluster_id: str) -> None:
        every = self._load(cluster_id)
        recs = [r for r in every if r.phase not in ("active", "idle")]
        if not recs:
            return
        master = None
        if any(r.phase == "decommissioning" for r in recs):
            master = self._master_json(self._driver(every))
        for r in recs:
            self._advance(r, master)

    def _advance(self, r: _Rec, master: dict[str, Any] | None) -> bool:
        """One step of a removal; True when the node is gone (its record deleted, or a pool
        node back in its pool)."""
        members = self._members(r)
        if not members:
            if r.phase == "returning":
                self._rewarm(r)
            else:
                self._delete(r)
            return True
        now = time.time()
        if r.phase == "decommissioning":
            # The master took note (the worker is no longer ALIVE there), or it can't be asked.
            if master is not None:
                acknowledged = _worker_states(master).get(r.ports["worker"]) != "ALIVE"
            else:
                acknowledged = now - r.phase_s >= 5
            if (acknowledged and not _has_executors(members)) or (
                now - r.phase_s >= self._decommission_timeout_s
            ):
                self._terminate(r, _ending(r), now, members)
        elif r.kill_s is None and r.term_s is not None and now - r.term_s >= self._kill_grace_s:
            self._signal(r, signal.SIGKILL, members)
            r.kill_s = now
            self._update(r, kill_s=now)
            log.warning(
                "node killed after grace period",
                extra={"cluster_id": r.cluster_id, "node_id": r.node_id},
            )
        elif r.kill_s is not None and now - r.kill_s >= 1:
            self._signal(r, signal.SIGKILL, members)  # stragglers (children forked late)
        return False

    def _terminate(
        self, r: _Rec, phase: str, now: float, members: list[psutil.Process] | None = None
    ) -> None:
        self._signal(r, signal.SIGTERM, members)
        r.term_s = now
        self._set_phase(r, phase, now, term_s=now)

    def _members(self, r: _Rec) -> list[psutil.Process]:
        """Live processes of the node: its leaders (pid and create time checked) and the
        members of their process groups that carry the node's marker in their environment
        (executors, Python workers). A node whose pids were never recorded (a crash right
        after a spawn) is found by the marker alone."""
        out: dict[int, psutil.Process] = {}
        for pr in r.procs:
            p = _live(pr.pid, pr.ctime)
            if p is not None:
                out[p.pid] = p
        groups = {pr.pid for pr in r.procs}
        scan_all = len(r.procs) < r.expected_procs
        for pid in psutil.pids():
            if pid in out:
                continue
            if not scan_all:
                try:
                    if os.getpgid(pid) not in groups:
                        continue
                except OSError:
                    continue
            try:
                p = psutil.Process(pid)
                if p.status() == psutil.STATUS_ZOMBIE:
                    continue
                if p.environ().get(ENV_NODE) != r.node_id:
                    continue
            except psutil.Error:
                continue
            out[pid] = p
        return list(out.values())

    def _signal(
        self, r: _Rec, sig: signal.Signals, members: list[psutil.Process] | None = None
    ) -> None:
        members = self._members(r) if members is None else members
        leaders = {pr.pid for pr in r.procs}
        for p in members:
            try:
                if p.pid in leaders:
                    os.killpg(p.pid, sig)  # the leader's whole group (its session)
                else:
                    p.send_signal(sig)
            except (OSError, psutil.Error):
                pass

    def _stop_process(self, proc: psutil.Process) -> None:
        """Stop one process group now (SIGTERM, SIGKILL after `kill_grace_s`) and wait for it."""
        with contextlib.suppress(OSError):  # the group is gone already
            os.killpg(proc.pid, signal.SIGTERM)
        _, alive = psutil.wait_procs([proc], timeout=self._kill_grace_s)
        for p in alive:
            with contextlib.suppress(OSError):  # it exited after all
                os.killpg(p.pid, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=5)
        _reap()

    def _abort(self, r: _Rec) -> None:
        """A start failed half-way: kill what was started and forget the node."""
        self._signal(r, signal.SIGKILL)
        self._delete(r)

    def _kick_reaper(self) -> None:
        with self._lock:
            if self._closed.is_set() or (self._reaper is not None and self._reaper.is_alive()):
                return
            self._reaper = threading.Thread(
                target=self._reap_loop, name="local-spark-reaper", daemon=True
            )
            self._reaper.start()

    def _reap_loop(self) -> None:
        while not self._closed.wait(0.5):
            with self._lock:
                busy = self._busy()
                if not busy:
                    self._reaper = None
                    return
            _reap()
            for cid in busy:
                try:
                    self._advance_cluster(cid)
                except Exception:
                    log.exception("reaper failed", extra={"cluster_id": cid})

    # ---------------------------------------------------------------------------- spawning

    def _home(self, r: _Rec) -> str:
        """A node's directories live under its cluster, or under its pool (for good)."""
        return f"pool-{r.pool_id}" if r.pool_id else r.cluster_id

    def _dirs(self, r: _Rec) -> tuple[Path, Path]:
        node_dir = self.data_dir / "nodes" / self._home(r) / r.node_id
        log_dir = self.data_dir / "logs" / self._home(r) / r.node_id
        for d in (node_dir / "scratch", node_dir / "work", log_dir):
            private_dir(d)
        return node_dir, log_dir

    def _spawn(
        self,
        r: _Rec,
        name: str,
        argv: list[str],
        conf: Mapping[str, str],
        req: NodeRequest | None,
        daemon_memory: str,
        *,
        wait_port: int | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        node_dir, log_dir = self._dirs(r)
        conf_dir = private_dir(node_dir / f"conf-{name}")
        lines = ["# written by sparkplane (LocalSparkProvisioner)\n"]
        lines += [_props_line(k, v) for k, v in sorted(conf.items())]
        write_private(conf_dir / "spark-defaults.conf", "".join(lines))
        for file_name, content in (req.conf_files if req else {}).items():
            if Path(file_name).name != file_name or file_name == "spark-defaults.conf":
                raise ValueError(f"bad configuration file name {file_name!r}")
            write_private(conf_dir / file_name, content)

        # From nothing (shared/domain/node_env.py): nothing of this process's environment.
        user_env = req.spark_env_vars if req is not None else {}
        refused = sorted(k for k, v in user_env.items() if spark_env_problem(k, v))
        if refused:  # the API refuses them: a request made elsewhere cannot set them either
            log.warning(
                "spark_env_vars not set on the node",
                extra={"cluster_id": r.cluster_id, "names": refused},
            )
        env = node_environment(
            python=sys.executable,
            java_home=str(self.java.home),
            home=str(node_dir),
            spark_env_vars=user_env,
            settings={
                "SPARK_DAEMON_MEMORY": daemon_memory,
                "SPARK_DAEMON_JAVA_OPTS": DAEMON_JAVA_OPTS if self._tune_jvms else "",
                "SPARK_HOME": str(self.spark_home),
                "SPARK_CONF_DIR": str(conf_dir),
                "SPARK_LOG_DIR": str(log_dir),
                "SPARK_PID_DIR": str(node_dir),
                "SPARK_LOCAL_DIRS": str(node_dir / "scratch"),
                "SPARK_LOCAL_IP": LOOPBACK,
                "SPARK_LOCAL_HOSTNAME": LOOPBACK,
                "SPARK_PUBLIC_DNS": LOOPBACK,
                "SPARK_NO_DAEMONIZE": "1",
                ENV_NODE: r.node_id,
                ENV_CLUSTER: r.cluster_id,
                ENV_DATA_DIR: str(self.data_dir),
                **(extra_env or {}),
            },
        )
        if wait_port is not None:
            argv = [
                "bash",
                "-c",
                _WAIT_FOR_MASTER,
                f"sparkplane-{name}",
                str(wait_port),
                str(self._master_wait_s),
                *argv,
            ]
        with (
            open(log_dir / f"{name}.out", "ab", opener=private) as out,
            open(log_dir / f"{name}.err", "ab", opener=private) as err,
        ):
            popen = subprocess.Popen(
                argv,
                env=env,
                cwd=node_dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                close_fds=True,
                umask=PRIVATE_UMASK,  # what the node writes under the data dir is private too
            )
        with _CHILDREN_LOCK:
            _CHILDREN[popen.pid] = popen
        try:
            ctime = psutil.Process(popen.pid).create_time()
        except psutil.Error:
            ctime = time.time()  # exited at once: _live() will call it dead
        r.procs.append(_Proc(name, popen.pid, ctime))
        self._update(r, procs=r.procs, attrs=r.attrs)

    # ---------------------------------------------------------------------------- master

    def _master_json(self, driver: _Rec | None) -> dict[str, Any] | None:
        if driver is None or "master_ui" not in driver.ports:
            return None
        url = f"http://{LOOPBACK}:{driver.ports['master_ui']}/json/"
        try:
            with _NO_PROXY.open(url, timeout=self._http_timeout_s) as resp:
                data = json.load(resp)
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    @staticmethod
    def _driver(recs: Sequence[_Rec]) -> _Rec | None:
        return next((r for r in recs if r.role == "driver" and r.phase == "active"), None)

    # ---------------------------------------------------------------------------- storage

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self._db_path, timeout=30, isolation_level=None)
        try:
            yield db
        finally:
            db.close()

    def _load(self, cluster_id: str) -> list[_Rec]:
        with self._db() as db:
            rows = db.execute(
                f"SELECT {_COLS} FROM nodes"
                " WHERE cluster_id=? ORDER BY role!='driver', start_ms, node_id",
                (cluster_id,),
            ).fetchall()
        return [_rec(row) for row in rows]

    def _load_pool(self, pool_id: str) -> list[_Rec]:
        with self._db() as db:
            rows = db.execute(
                f"SELECT {_COLS} FROM nodes WHERE pool_id=? ORDER BY start_ms, node_id",
                (pool_id,),
            ).fetchall()
        return [_rec(row) for row in rows]

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: provisioners over the same data_dir take
        turns, so ports and pool capacity are never handed out twice)."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _new_record(
        self,
        cluster_id: str,
        node_id: str,
        role: str,
        names: Sequence[str],
        *,
        pool_id: str | None = None,
        db: sqlite3.Connection | None = None,
    ) -> _Rec:
        """Insert the node with freshly allocated ports (in `db`'s open transaction, or one of
        its own)."""
        if db is None:
            with self._tx() as tx:
                return self._new_record(cluster_id, node_id, role, names, pool_id=pool_id, db=tx)
        lo, hi = self._port_range
        span = hi - lo
        now = time.time()
        used = {row[0] for row in db.execute("SELECT port FROM ports")}
        row = db.execute("SELECT value FROM meta WHERE key='next_port'").fetchone()
        cursor = int(row[0]) if row else random.randrange(lo, hi)
        ports: dict[str, int] = {}
        for _ in range(span):
            if len(ports) == len(names):
                break
            port = lo + (cursor - lo) % span
            cursor = port + 1
            if port not in used and _port_free(port):
                ports[names[len(ports)]] = port
        if len(ports) < len(names):
            raise RuntimeError(f"no free port left in {self._port_range}")
        rec = _Rec(
            node_id=node_id,
            cluster_id=cluster_id,
            role=role,
            start_ms=self._now_ms(),
            created_s=now,
            procs=[],
            ports=ports,
            attrs={},
            phase="idle" if role == "pool" else "active",
            phase_s=now,
            pool_id=pool_id,
            idle_since_ms=self._now_ms() if role == "pool" else None,
            disk_bytes=self._scratch_quota,
        )
        db.executemany(
            "INSERT INTO ports(port, node_id, cluster_id) VALUES (?, ?, ?)",
            [(port, node_id, cluster_id) for port in ports.values()],
        )
        db.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES ('next_port', ?)", (str(cursor),)
        )
        db.execute(
            "INSERT INTO nodes(node_id, cluster_id, role, start_ms, created_s, procs, ports,"
            " attrs, phase, phase_s, pool_id, idle_since_ms, disk_bytes)"
            " VALUES (?, ?, ?, ?, ?, '[]', ?, '{}', ?, ?, ?, ?, ?)",
            (
                node_id,
                cluster_id,
                role,
                rec.start_ms,
                now,
                json.dumps(ports),
                rec.phase,
                now,
                pool_id,
                rec.idle_since_ms,
                rec.disk_bytes,
            ),
        )
        return rec

    def _update(self, r: _Rec, **values: Any) -> None:
        cols, args = [], []
        for k, v in values.items():
            cols.append(f"{k}=?")
            if k == "procs":
                v = json.dumps([{"name": p.name, "pid": p.pid, "ctime": p.ctime} for p in v])
            elif k == "attrs":
                v = json.dumps(v)
            args.append(v)
        with self._db() as db:
            db.execute(f"UPDATE nodes SET {', '.join(cols)} WHERE node_id=?", (*args, r.node_id))

    def _set_phase(self, r: _Rec, phase: str, now: float, **values: Any) -> None:
        r.phase, r.phase_s = phase, now
        self._update(r, phase=phase, phase_s=now, **values)

    def _delete(self, r: _Rec) -> None:
        _reap()  # the node's processes are gone: don't leave our dead children as zombies
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM ports WHERE node_id=?", (r.node_id,))
            db.execute("DELETE FROM nodes WHERE node_id=?", (r.node_id,))
            db.execute("COMMIT")
        node_dir = self.data_dir / "nodes" / self._home(r) / r.node_id
        shutil.rmtree(node_dir / "scratch", ignore_errors=True)  # shuffle files; logs stay
        log.info("node gone", extra={"cluster_id": r.cluster_id, "node_id": r.node_id})


PORTS_DRIVER = ("master", "master_ui", "connect", "app_ui")
PORTS_WORKER = ("worker", "worker_ui")
# A pool node can become either.
PORTS_POOL = PORTS_DRIVER + PORTS_WORKER


def _user_conf(req: NodeRequest) -> dict[str, str]:
    """The cluster's spark_conf without what the provisioner owns (addresses, ports, auth)."""
    return {
        k: v
        for k, v in req.spark_conf.items()
        if k not in PINNED_CONF and not spark_auth.reserved_conf(k)
    }


def _ending(r: _Rec) -> str:
    """The phase of a node whose processes are being stopped for good or for its pool."""
    return "returning" if r.pool_id else "terminating"


def _rec(row: Sequence[Any]) -> _Rec:
    return _Rec(
        node_id=row[0],
        cluster_id=row[1],
        role=row[2],
        start_ms=row[3],
        created_s=row[4],
        procs=[_Proc(**p) for p in json.loads(row[5])],
        ports=json.loads(row[6]),
        attrs=json.loads(row[7]),
        phase=row[8],
        phase_s=row[9],
        term_s=row[10],
        kill_s=row[11],
        ready_s=row[12],
        lost_s=row[13],
        pool_id=row[14],
        idle_since_ms=row[15],
        disk_bytes=row[16],
    )


def _worker_states(master: Mapping[str, Any] | None) -> dict[int, str]:
    """Worker port -> state in the master's JSON (a port seen twice, e.g. DEAD then a new
    worker, counts as its best state)."""
    rank = {"ALIVE": 3, "DECOMMISSIONED": 2}
    out: dict[int, str] = {}
    for w in (master or {}).get("workers") or []:
        try:
            port, state = int(w["port"]), str(w["state"])
        except (KeyError, TypeError, ValueError):
            continue
        if rank.get(state, 0) >= rank.get(out.get(port, ""), 0):
            out[port] = state
    return out


def _has_executors(members: Sequence[psutil.Process]) -> bool:
    for p in members:
        with contextlib.suppress(psutil.Error):
            if any(EXECUTOR_CLASS in part for part in p.cmdline()):
                return True
    return False
