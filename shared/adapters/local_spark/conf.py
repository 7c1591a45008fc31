"""Configuration rendering: the Spark settings, JVM options and command lines of a node's
processes (no decisions: the sizes come from shared/domain/node_rules.py)."""

from __future__ import annotations

import re
import signal
from collections.abc import Mapping
from pathlib import Path

from shared.domain import spark_auth
from shared.ports import NodeRequest

LOOPBACK = "127.0.0.1"
# The host of connect URLs: pyspark sends a Connect token over plain gRPC only to `localhost`
# (any other host gets TLS, which the Connect server does not speak).
CONNECT_HOST = "localhost"
CONNECT_SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
EXECUTOR_CLASS = "CoarseGrainedExecutorBackend"

# JVM options of the Master, the Workers and the Connect server (the driver): C1 only and the
# serial collector start a JVM about twice as fast on a 2-core machine, and a small initial
# heap keeps an idle daemon near 140 MiB instead of 200 (the heap grows on demand up to -Xmx).
DAEMON_JAVA_OPTS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Xms32m"
# On top, per role: the young generation. The serial collector sizes it at a third of the heap
# and every page of it gets touched as objects are allocated, so it is what an idle JVM's
# resident memory grows with. A Master or a Worker allocates little (-Xmn8m: a minor
# collection every few seconds at most, each under a millisecond); the Connect server plans
# queries and holds their results (-Xmn32m: more frequent minor collections under load, still
# short, against about 80 MiB less resident; docs/local-spark.md has the measurements).
ROLE_JAVA_OPTS: Mapping[str, str] = {"master": "-Xmn8m", "worker": "-Xmn8m", "connect": "-Xmn32m"}
# Executors keep C2 (they run the queries) but take the serial collector: G1's remembered sets
# and card tables cost about 40 MiB per executor, and its concurrent threads have no spare core
# on a machine whose nodes all share the same cores. A small initial heap; the heap grows on
# demand up to spark.executor.memory. Prepended to the cluster's
# spark.executor.extraJavaOptions (later options win); a cluster whose options choose a
# collector (`-XX:+UseG1GC` ...) gets none from here, since the JVM refuses two.
EXECUTOR_JAVA_OPTS = "-Xms64m"
EXECUTOR_GC_OPTS = "-XX:+UseSerialGC"
_CHOOSES_GC = re.compile(r"-XX:\+Use\w*GC\b")
# A class-data-sharing archive mapped at the address it was made for, not relocated: since
# 17.0.x the JVM maps archives at a random address by default and then patches every pointer
# in them, which costs startup time (the Connect server's archive is 170 MiB) and turns the
# archive's pages from shared file pages into private memory of every JVM. The trade-off is
# address-space randomization of class metadata, a defence against memory-corruption exploits
# of the JVM; a node's JVMs run the cluster's own code by design (docs/local-spark.md).
CDS_MAP_OPTS = "-XX:+UnlockDiagnosticVMOptions -XX:ArchiveRelocationMode=0"

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

# Run the real command once the master's RPC port accepts connections: a Worker or an
# application that finds no master waits 5 to 20 s before it tries again (a delay Spark
# hard-codes for Workers), which would double the start time of a cluster. The master binds
# that port, then registers its endpoint at once (Master.startRpcEnvAndEndpoint), well before
# a JVM started now gets to register; its web UI, bound later in the master's onStart, would
# add a few tenths of a second.
WAIT_FOR_MASTER = r"""
port=$1; limit=$2; shift 2
end=$((SECONDS + limit))
until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
  if [ "$SECONDS" -ge "$end" ]; then
    echo "sparkplane: the master (127.0.0.1:$port) did not answer in ${limit}s" >&2
    exit 1
  fi
  sleep 0.1
done
exec "$@"
"""


def props_line(key: str, value: str) -> str:
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


def connect_base_url(ports: Mapping[str, int]) -> str:
    """The Spark Connect URL (no token) of a driver node's (or idle hot driver's) server."""
    return f"sc://{CONNECT_HOST}:{ports['connect']}"


def app_ui_url(ports: Mapping[str, int]) -> str:
    """The web UI (and REST API) of a driver node's application."""
    return f"http://{LOOPBACK}:{ports['app_ui']}/"


def spark_defaults(conf: Mapping[str, str]) -> str:
    """A spark-defaults.conf holding `conf`."""
    lines = ["# written by sparkplane (LocalSparkProvisioner)\n"]
    lines += [props_line(k, v) for k, v in sorted(conf.items())]
    return "".join(lines)


def user_conf(req: NodeRequest) -> dict[str, str]:
    """The cluster's spark_conf without what the provisioner owns (addresses, ports, auth)."""
    return {
        k: v
        for k, v in req.spark_conf.items()
        if k not in PINNED_CONF and not spark_auth.reserved_conf(k)
    }


def daemon_conf(req: NodeRequest | None) -> dict[str, str]:
    """The spark-defaults of a Master or a Worker (of an idle pool node: no request)."""
    if req is None:
        return {**DEFAULT_CONF, **PINNED}
    auth = spark_auth.auth_conf(req.spark_auth_secret)
    return {**DEFAULT_CONF, **user_conf(req), **PINNED, **auth}


def connect_conf(
    req: NodeRequest,
    ports: Mapping[str, int],
    *,
    master_url: str,
    executor_memory_mb: int,
    driver_memory: str,
    tune_jvms: bool,
    executor_cds_opts: str = "",
) -> dict[str, str]:
    """The spark-defaults of the Spark Connect server: the cluster's one application."""
    users = user_conf(req)
    executor_opts = users.get("spark.executor.extraJavaOptions", "")
    if tune_jvms:
        gc = "" if _CHOOSES_GC.search(executor_opts) else EXECUTOR_GC_OPTS
        parts = (EXECUTOR_JAVA_OPTS, gc, executor_cds_opts, executor_opts)
        executor_opts = " ".join(part for part in parts if part)
    conf = {
        **DEFAULT_CONF,
        "spark.app.name": f"sparkplane {req.cluster_id}",
        "spark.executor.memory": f"{executor_memory_mb}m",
        "spark.driver.memory": driver_memory,
        **users,
        "spark.executor.extraJavaOptions": executor_opts,
        "spark.master": master_url,
        "spark.driver.host": LOOPBACK,
        "spark.driver.bindAddress": LOOPBACK,
        "spark.ui.port": str(ports["app_ui"]),
        "spark.connect.grpc.binding.address": LOOPBACK,
        "spark.connect.grpc.binding.port": str(ports["connect"]),
        **PINNED,
        **spark_auth.auth_conf(req.spark_auth_secret),
    }
    if not executor_opts:
        del conf["spark.executor.extraJavaOptions"]
    return conf


def daemon_opts_for(java_opts: str, conf: Mapping[str, str] | None) -> str:
    """A JVM's daemon options without their collector when the process's own settings choose
    one (the Connect server's spark.driver.extraJavaOptions, which Spark's launcher adds after
    them): the JVM refuses two collectors."""
    driver_opts = (conf or {}).get("spark.driver.extraJavaOptions", "")
    if not _CHOOSES_GC.search(driver_opts):
        return java_opts
    return " ".join(o for o in java_opts.split() if not _CHOOSES_GC.fullmatch(o))


def _props(properties_file: Path | None) -> list[str]:
    return ["--properties-file", str(properties_file)] if properties_file else []


def master_argv(
    spark_home: Path, ports: Mapping[str, int], properties_file: Path | None = None
) -> list[str]:
    return [
        str(spark_home / "bin" / "spark-class"),
        MASTER_CLASS,
        "--host",
        LOOPBACK,
        "--port",
        str(ports["master"]),
        "--webui-port",
        str(ports["master_ui"]),
        *_props(properties_file),
    ]


def connect_argv(
    spark_home: Path, cluster_id: str, properties_file: Path | None = None
) -> list[str]:
    return [
        str(spark_home / "bin" / "spark-submit"),
        *_props(properties_file),
        "--class",
        CONNECT_SERVER_CLASS,
        "--name",
        f"sparkplane {cluster_id}",
        "spark-internal",
    ]


def worker_argv(
    spark_home: Path,
    ports: Mapping[str, int],
    *,
    cores: int,
    memory_mb: int,
    work_dir: Path,
    master_url: str,
    properties_file: Path | None = None,
) -> list[str]:
    return [
        str(spark_home / "bin" / "spark-class"),
        WORKER_CLASS,
        "--host",
        LOOPBACK,
        "--port",
        str(ports["worker"]),
        "--webui-port",
        str(ports["worker_ui"]),
        "--cores",
        str(cores),
        "--memory",
        f"{memory_mb}m",
        "--work-dir",
        str(work_dir),
        *_props(properties_file),
        master_url,
    ]


def wait_for_master(name: str, master_port: int, limit_s: int, argv: list[str]) -> list[str]:
    """`argv`, run once the master's port accepts connections (at most `limit_s` later)."""
    head = ["bash", "-c", WAIT_FOR_MASTER, f"sparkplane-{name}"]
    return [*head, str(master_port), str(limit_s), *argv]
