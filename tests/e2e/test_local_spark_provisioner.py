"""End-to-end tests of the local Spark provisioner: real Spark standalone clusters (Java 17+ and
the pyspark distribution needed). Every test stops what it started, also when it fails.

Run: .venv/bin/python -m pytest -m spark tests/e2e/test_local_spark_provisioner.py -s
(-s shows the measured start time and memory per node).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from shared.adapters.local_spark import (
    ENV_DATA_DIR,
    JavaRequirementError,
    LocalSparkProvisioner,
    check_java,
)
from shared.domain.spark_auth import cluster_credentials, connect_url
from shared.ports import Node, NodeRequest
from tests.e2e.hosts import assert_connect_refused
from tests.support import wait_for

pytestmark = pytest.mark.spark

ROOT = Path(__file__).resolve().parents[2]

try:
    check_java()
except JavaRequirementError as e:  # pragma: no cover - depends on the machine
    pytest.skip(str(e), allow_module_level=True)


def _req(cluster_id: str, **kw: Any) -> NodeRequest:
    return NodeRequest(
        cluster_id=cluster_id,
        workspace_id="ws-test",
        node_type_id="local-small",
        driver_node_type_id="local-small",
        spark_version="4.1.x-scala2.13",
        **kw,
    )


def statuses(nodes: list[Node]) -> dict[str, str]:
    return {n.node_id: n.status for n in nodes}


def marked_processes(data_dir: Path) -> list[psutil.Process]:
    """Live processes started for this data dir (they carry it in their environment)."""
    out = []
    for p in psutil.process_iter():
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            if p.environ().get(ENV_DATA_DIR) == str(data_dir.resolve()):
                out.append(p)
        except psutil.Error:
            continue
    return out


def still_running(pids: set[int], since: float) -> list[int]:
    """Pids of `pids` that are still the processes we saw (create time <= since) and not
    zombies (a zombie is an exit status waiting for its parent, not a process)."""
    left = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            if p.create_time() <= since and p.status() != psutil.STATUS_ZOMBIE:
                left.append(pid)
        except psutil.Error:
            continue
    return left


def tree_pids(provisioner: LocalSparkProvisioner, cluster_id: str) -> set[int]:
    """Every process of the cluster: the node leaders, their process groups, their children."""
    pids: set[int] = set()
    for node_pids in provisioner.node_pids(cluster_id).values():
        for pid in node_pids:
            pids.add(pid)
            with contextlib.suppress(psutil.Error):
                pids.update(c.pid for c in psutil.Process(pid).children(recursive=True))
    return pids


def ports_in_table(data_dir: Path, cluster_id: str) -> set[int]:
    with sqlite3.connect(data_dir / "local_spark.sqlite") as db:
        rows = db.execute("SELECT port FROM ports WHERE cluster_id=?", (cluster_id,))
        return {row[0] for row in rows}


def executors(spark_ui_url: str, app_id: str) -> int:
    """Active executors of the application (the Spark UI's REST API)."""
    url = f"{spark_ui_url}api/v1/applications/{app_id}/executors"
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return sum(1 for e in json.load(resp) if e["id"] != "driver" and e["isActive"])
    except OSError:
        return -1


def port_of(url: str) -> int:
    return int(url.rstrip("/").rsplit(":", 1)[1])


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def make_provisioner(data_dir: Path) -> Iterator[Callable[[], LocalSparkProvisioner]]:
    made: list[LocalSparkProvisioner] = []

    def make() -> LocalSparkProvisioner:
        p = LocalSparkProvisioner(data_dir, kill_grace_s=5, decommission_timeout_s=30)
        made.append(p)
        return p

    yield make

    # Teardown, also after a failure: stop every cluster of the data dir, wait, then kill
    # whatever still carries the data dir's marker.
    try:
        p = LocalSparkProvisioner(data_dir, kill_grace_s=3)
        for cid in p.cluster_ids():
            p.stop_cluster(cid)
        deadline = time.monotonic() + 30
        while p.cluster_ids() and time.monotonic() < deadline:
            time.sleep(0.3)
        made.append(p)
    finally:
        for q in made:
            q.close()
        for proc in marked_processes(data_dir):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                proc.kill()
    assert not marked_processes(data_dir), "Spark processes were left behind"


def test_cluster_lifecycle(
    make_provisioner: Callable[[], LocalSparkProvisioner], data_dir: Path
) -> None:
    p = make_provisioner()
    cid = "cluster-a"
    req = _req(cid, spark_conf={"spark.sql.shuffle.partitions": "4"}, spark_env_vars={"X": "1"})

    # ---- start: driver + 2 workers, all RUNNING
    t0 = time.monotonic()
    driver = p.start_driver(req)
    workers = p.add_workers(req, 2)
    assert driver.role == "driver" and driver.status == "STARTING"
    assert [w.status for w in workers] == ["STARTING", "STARTING"]
    assert len({driver.node_id, *(w.node_id for w in workers)}) == 3
    assert p.start_driver(req).node_id == driver.node_id  # idempotent

    def all_running() -> list[Node] | None:
        nodes = p.observe(cid)
        assert "LOST" not in statuses(nodes).values(), nodes
        return nodes if len(nodes) == 3 and all(n.status == "RUNNING" for n in nodes) else None

    nodes = wait_for("driver + 2 workers RUNNING", all_running, timeout=90)
    start_s = time.monotonic() - t0
    assert nodes[0].node_id == driver.node_id  # driver first

    t = time.perf_counter()
    p.observe(cid)
    observe_ms = (time.perf_counter() - t) * 1000

    # RUNNING means ready: Spark Connect answered the agent's query (its ready file) and an
    # executor of the cluster's application runs on every worker, before any query of ours.
    assert (data_dir.resolve() / "nodes" / cid / driver.node_id / "ready.json").exists()
    jvms: dict[int, str] = {}
    for pid in tree_pids(p, cid):
        with contextlib.suppress(psutil.Error):
            jvms[pid] = _role(psutil.Process(pid))
    assert sorted(r for r in jvms.values() if r not in ("agent", "other")) == [
        "connect",
        "executor",
        "executor",
        "master",
        "worker",
        "worker",
    ]
    # With the class-data-sharing archives built (make spark-cds), each JVM maps its role's.
    if p.launcher.cds_dir is not None:
        for pid, role in jvms.items():
            if role not in ("agent", "other"):
                assert f"/{role}.jsa" in Path(f"/proc/{pid}/maps").read_text(), role

    attrs = nodes[0].attrs
    assert attrs["master_url"].startswith("spark://127.0.0.1:")
    assert attrs["connect_url"].startswith("sc://localhost:")
    assert attrs["spark_ui_url"].startswith("http://127.0.0.1:")
    assert attrs["master_ui_url"].startswith("http://127.0.0.1:")
    assert Path(attrs["log_dir"]) == data_dir.resolve() / "logs" / cid / driver.node_id

    # Everything listens on 127.0.0.1 only.
    for pid in tree_pids(p, cid):
        try:
            conns = psutil.Process(pid).net_connections(kind="inet")
        except psutil.Error:
            continue
        for c in conns:
            if c.status == psutil.CONN_LISTEN:
                assert c.laddr.ip in ("127.0.0.1", "::ffff:127.0.0.1"), (pid, c)

    # spark_env_vars reach the node processes.
    worker_proc = psutil.Process(int(nodes[1].attrs["pid"]))
    assert worker_proc.environ().get("X") == "1"

    # ---- attach with Spark Connect and run a query
    from pyspark.sql import SparkSession
    from pyspark.sql.functions import udf
    from pyspark.storagelevel import StorageLevel

    t = time.monotonic()
    spark = SparkSession.builder.remote(attrs["connect_url"]).getOrCreate()
    try:
        total = spark.range(1000).selectExpr("sum(id) AS s").collect()[0]["s"]
        assert total == 499500
        first_query_s = time.monotonic() - t
        assert spark.conf.get("spark.sql.shuffle.partitions") == "4"  # spark_conf applied
        # A Python UDF runs in the executors' Python (PYSPARK_PYTHON = this interpreter).
        plus_one = udf(lambda x: x + 1, "long")
        assert [r[0] for r in spark.range(3).select(plus_one("id")).collect()] == [1, 2, 3]
    finally:
        spark.stop()

    info = p.info(cid)
    assert info["alive_workers"] == 2
    assert info["connect_url"] == attrs["connect_url"]
    assert info["app_id"], info
    rss = p.node_rss_mb(cid)

    # ---- resize up: 3 workers
    (third,) = p.add_workers(req, 1)
    wait_for("3 workers RUNNING", all_running_n(p, cid, 4))
    assert p.info(cid)["alive_workers"] == 3

    # ---- a worker process dies: LOST; removing it also ends its orphaned executor
    victim = workers[0]
    victim_pid = int(next(n for n in p.observe(cid) if n.node_id == victim.node_id).attrs["pid"])
    os.kill(victim_pid, signal.SIGKILL)
    wait_for(
        "the killed worker LOST",
        lambda: statuses(p.observe(cid)).get(victim.node_id) == "LOST",
        timeout=20,
    )
    victim_pids = set(p.node_pids(cid)[victim.node_id])  # its executor may still run
    p.remove_workers(cid, [victim.node_id])
    assert statuses(p.observe(cid)).get(victim.node_id, "STOPPING") == "STOPPING"
    wait_for(
        "the lost worker gone",
        lambda: victim.node_id not in statuses(p.observe(cid)),
        timeout=20,
    )
    assert not still_running(victim_pids, time.time())
    wait_for("the master sees 2 workers", lambda: p.info(cid)["alive_workers"] == 2, timeout=30)

    # ---- graceful removal: decommissioning (SIGPWR), STOPPING, then gone; the cached blocks
    # of its executor move to the other one. The worker to remove is one that holds blocks.
    live = [workers[1].node_id, third.node_id]
    app_id = p.info(cid)["app_id"]
    wait_for(
        "an executor on each worker",
        lambda: executors(attrs["spark_ui_url"], app_id) == 2,
        timeout=60,
        every=0.5,
    )
    spark = SparkSession.builder.remote(attrs["connect_url"]).getOrCreate()
    try:
        cached = spark.range(0, 100_000, numPartitions=16).selectExpr("id", "id % 7 AS k")
        cached = cached.persist(StorageLevel.DISK_ONLY)
        assert cached.count() == 100_000
        holders = [
            w for w in live if any((data_dir / "nodes" / cid / w / "scratch").rglob("rdd_*"))
        ]
        assert holders, "no executor wrote cached blocks"
        leaving = holders[0]
        staying = next(w for w in live if w != leaving)
        leaving_pids = set(p.node_pids(cid)[leaving])
        t = time.monotonic()
        p.remove_workers(cid, [leaving])
        assert statuses(p.observe(cid))[leaving] == "STOPPING"
        wait_for(
            "the master marks the worker DECOMMISSIONED",
            lambda: any(w["state"] == "DECOMMISSIONED" for w in p.info(cid)["workers"]),
            timeout=20,
            every=0.2,
        )
        wait_for(
            "the decommissioned worker gone",
            lambda: leaving not in statuses(p.observe(cid)),
            timeout=45,
        )
        decommission_s = time.monotonic() - t
        assert cached.selectExpr("sum(id)").collect()[0][0] == sum(range(100_000))
    finally:
        spark.stop()
    assert not still_running(leaving_pids, time.time())
    worker_log = data_dir / "logs" / cid / leaving / "worker.err"
    assert "Decommission worker" in worker_log.read_text()
    executor_logs = (data_dir / "nodes" / cid / leaving / "work").glob("app-*/*/stderr")
    assert any("migrated successfully" in f.read_text() for f in executor_logs)
    p.remove_workers(cid, [leaving])  # idempotent: an unknown node is no error

    # ---- a new provisioner (a restarted control plane) re-adopts the running nodes
    before = {n.node_id: n for n in p.observe(cid)}
    assert set(before) == {driver.node_id, staying}
    p2 = make_provisioner()
    after = {n.node_id: n for n in p2.observe(cid)}
    assert {k: (n.status, n.attrs["pids"]) for k, n in after.items()} == {
        k: ("RUNNING", n.attrs["pids"]) for k, n in before.items()
    }
    assert p2.cluster_ids() >= {cid}
    spark = SparkSession.builder.remote(attrs["connect_url"]).getOrCreate()
    try:
        assert spark.range(10).count() == 10
    finally:
        spark.stop()

    # ---- stop: STOPPING, then nothing; no process of the cluster is left
    pids = tree_pids(p2, cid)
    assert len(pids) >= 3
    since = time.time()
    p2.stop_cluster(cid)
    assert set(statuses(p2.observe(cid)).values()) <= {"STOPPING"}
    t = time.monotonic()
    wait_for("the cluster stopped", lambda: p2.observe(cid) == [], timeout=30)
    stop_s = time.monotonic() - t
    assert not still_running(pids, since), still_running(pids, since)
    assert cid not in p2.cluster_ids()
    assert not ports_in_table(data_dir, cid)
    assert not marked_processes(data_dir)

    print(
        f"\n[local spark] driver + 2 workers RUNNING in {start_s:.1f}s; first query "
        f"{first_query_s:.1f}s after; observe() {observe_ms:.1f} ms when steady; "
        f"decommission {decommission_s:.1f}s; stop {stop_s:.1f}s"
    )
    print(f"[local spark] RSS MiB per node after the first query: {json.dumps(rss)}")
    assert start_s <= 90


# Planted in the control plane's own environment: none may reach a node.
HOST_ONLY = {
    "SPARKPLANE_SECRET_PROBE": "x",
    "AWS_SECRET_ACCESS_KEY": "y",
    "DATABRICKS_TOKEN": "dapi-host-probe",
    "AZURE_CLIENT_SECRET": "z",
}


def _role(proc: psutil.Process) -> str:
    cmd = " ".join(proc.cmdline())
    for needle, role in (
        ("shared.agent", "agent"),
        ("deploy.master.Master", "master"),
        ("SparkConnectServer", "connect"),
        ("deploy.worker.Worker", "worker"),
        ("CoarseGrainedExecutorBackend", "executor"),
    ):
        if needle in cmd:
            return role
    return "other"


def test_endpoints_refuse_whoever_lacks_the_cluster_secret(
    make_provisioner: Callable[[], LocalSparkProvisioner], data_dir: Path, tmp_path: Path
) -> None:
    """A cluster started with credentials (shared/domain/spark_auth.py): its Connect server
    refuses a client without its token or with another cluster's, and serves one with it; its
    master refuses a Worker without its secret while its own worker (which has it) runs
    executors. The secret and the token are on no process's command line, and the files that
    hold them are owner-only."""
    from pyspark.sql import SparkSession

    p = make_provisioner()
    cid = "cluster-auth"
    creds = cluster_credentials("test-key", cid)
    other = cluster_credentials("test-key", "another-cluster")
    assert creds is not None and other is not None
    req = _req(cid, spark_auth_secret=creds.auth_secret, connect_token=creds.connect_token)
    p.start_driver(req)
    p.add_workers(req, 1)

    def all_running() -> list[Node] | None:
        nodes = p.observe(cid)
        assert "LOST" not in statuses(nodes).values(), nodes
        return nodes if len(nodes) == 2 and all(n.status == "RUNNING" for n in nodes) else None

    nodes = wait_for("driver + worker RUNNING", all_running, timeout=120)
    base = nodes[0].attrs["connect_url"]
    assert "token" not in base  # what the provisioner reports (and the document keeps)

    for pid in tree_pids(p, cid):
        with contextlib.suppress(psutil.Error):
            line = " ".join(psutil.Process(pid).cmdline())
            assert creds.auth_secret not in line and creds.connect_token not in line, pid
    for conf in (data_dir / "nodes" / cid).rglob("spark-defaults.conf"):
        assert conf.stat().st_mode & 0o777 == 0o600
        assert "spark.authenticate.secret=" + creds.auth_secret in conf.read_text()

    # ---- Spark Connect: no token, another cluster's token -> refused; the cluster's -> served
    for url in (base, connect_url(base, other.connect_token)):
        assert_connect_refused(url)
    spark = SparkSession.builder.remote(connect_url(base, creds.connect_token)).create()
    try:
        assert spark.range(1000).selectExpr("sum(id) AS s").collect()[0]["s"] == 499500
    finally:
        spark.stop()

    # ---- the standalone master: a Worker without the secret never registers; the same Worker
    # with it does
    java = check_java()
    master_url = nodes[0].attrs["master_url"]

    def worker(name: str, conf: str) -> tuple[subprocess.Popen[bytes], Path]:
        conf_dir = tmp_path / f"{name}-conf"
        conf_dir.mkdir()
        (conf_dir / "spark-defaults.conf").write_text(conf)
        log_file = tmp_path / f"{name}.err"
        with open(log_file, "wb") as err:
            proc = subprocess.Popen(
                [
                    str(p.spark_home / "bin" / "spark-class"),
                    "org.apache.spark.deploy.worker.Worker",
                    "--host",
                    "127.0.0.1",
                    "--cores",
                    "1",
                    "--memory",
                    "512m",
                    "--work-dir",
                    str(tmp_path / f"{name}-work"),
                    master_url,
                ],
                env={
                    "PATH": os.environ["PATH"],
                    "JAVA_HOME": str(java.home),
                    "SPARK_HOME": str(p.spark_home),
                    "SPARK_CONF_DIR": str(conf_dir),
                    "SPARK_LOCAL_IP": "127.0.0.1",
                    "SPARK_NO_DAEMONIZE": "1",
                    ENV_DATA_DIR: str(data_dir.resolve()),  # the teardown's marker
                },
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )
        started.append(proc)
        return proc, log_file

    started: list[subprocess.Popen[bytes]] = []
    try:
        _, rogue_log = worker("rogue", "")
        # The master's refusal, as the worker logs it (the SASL handshake it lacks), rather
        # than a pause long enough for a worker with the secret to register.
        wait_for(
            "the master to refuse the rogue worker",
            lambda: "Failed to connect to master" in rogue_log.read_text(errors="replace"),
            timeout=60,
        )
        info = p.info(cid)
        assert info["alive_workers"] == 1, info["workers"]
        assert [w["port"] for w in info["workers"]] == [port_of(nodes[1].attrs["worker_url"])]

        worker(
            "friend",
            f"spark.authenticate=true\nspark.authenticate.secret={creds.auth_secret}\n",
        )
        wait_for("a worker with the secret", lambda: p.info(cid)["alive_workers"] == 2, 60)
    finally:
        for proc in started:
            with contextlib.suppress(OSError):  # it gave up and exited already
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    # No log of any node (master, Connect server, worker, executors) shows either value.
    logs = [f for f in (data_dir / "logs").rglob("*") if f.is_file()]
    logs += [f for f in (data_dir / "nodes").rglob("work/**/*") if f.is_file()]
    assert logs
    for f in logs:
        text = f.read_text(errors="replace")
        assert creds.auth_secret not in text and creds.connect_token not in text, f


def test_nodes_start_from_an_allowlisted_environment(
    make_provisioner: Callable[[], LocalSparkProvisioner],
    data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No variable of the control plane's environment reaches a node process (master, Connect
    server, worker, agent, executors, Python workers); the cluster's accepted spark_env_vars
    reach the Spark processes as the same characters; names the API refuses (here a request
    that bypassed it) are dropped and their code never runs. Spark still finds Java and
    Python, and what the nodes and the provisioner write is owner-only."""
    ran = tmp_path / "ran"
    evil = tmp_path / "evil.sh"
    evil.write_text(f"touch {ran}-bash-env\n")
    for k, v in HOST_ONLY.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("BASH_ENV", str(evil))  # the host's own: bash would run it too
    user_env = {
        "MY_SETTING": f"$(touch {ran}-subst)",
        "QUOTED": f'a"; touch {ran}-quote; "',
        "TZ": "UTC",
    }
    refused = {
        "BASH_ENV": str(evil),
        "LD_PRELOAD": str(tmp_path / "nope.so"),
        "JAVA_TOOL_OPTIONS": f"-XX:OnOutOfMemoryError=touch {ran}-jvm",
        "PYTHONSTARTUP": str(evil),
    }
    agent_env = {
        "SPARKPLANE_CONTROL_PLANE_URL": "http://127.0.0.1:9",
        "SPARKPLANE_CLUSTER_ID": "cluster-env",
        "SPARKPLANE_AGENT_TOKEN": "dapi-agent-probe",
        "SPARKPLANE_HEARTBEAT_S": "60",
    }
    p = make_provisioner()
    cid = "cluster-env"
    req = _req(cid, spark_env_vars={**user_env, **refused}, agent_env=agent_env)
    driver = p.start_driver(req)
    (worker,) = p.add_workers(req, 1)
    nodes = wait_for("driver + worker RUNNING", all_running_n(p, cid, 2), timeout=90)
    assert nodes

    # A Python UDF: the executor found Java (JAVA_HOME, PATH) and Python (PYSPARK_PYTHON).
    from pyspark.sql import SparkSession
    from pyspark.sql.functions import udf

    connect_url = next(n for n in p.observe(cid) if n.role == "driver").attrs["connect_url"]
    spark = SparkSession.builder.remote(connect_url).getOrCreate()
    try:
        plus_one = udf(lambda x: x + 1, "long")
        assert [r[0] for r in spark.range(3).select(plus_one("id")).collect()] == [1, 2, 3]

        roles: dict[str, list[dict[str, str]]] = {}
        for node_id, pids in p.node_pids(cid).items():
            for pid in pids:
                try:
                    proc = psutil.Process(pid)
                    env = proc.environ()
                    role = _role(proc)
                except psutil.Error:
                    continue  # a short-lived child (a Python worker) that ended meanwhile
                roles.setdefault(role, []).append(env)
                for name in [*HOST_ONLY, *refused]:
                    assert name not in env, (role, name)
                assert "dapi-agent-probe" not in "".join(env.values()), role
                node_dir = data_dir.resolve() / "nodes" / cid / node_id
                assert env["HOME"] == str(node_dir), role
                assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent), role
                assert env["SPARKPLANE_CLUSTER_ID"] == cid, role
    finally:
        spark.stop()
    assert {"master", "connect", "worker", "agent", "executor"} <= set(roles), set(roles)
    for role in ("master", "connect", "worker", "executor"):
        for env in roles[role]:
            assert {k: env.get(k) for k in user_env} == user_env, role
            assert env["LANG"] == "C.UTF-8" and env["PYSPARK_PYTHON"] == sys.executable, role
    for env in roles["agent"]:  # the platform's process: not the cluster's settings
        assert not set(user_env) & set(env)
        # The agent, and its readiness child while it warms the executors up (shared/agent.py),
        # which never talks to the control plane and so is started without its URL.
        assert env.get("SPARKPLANE_CONTROL_PLANE_URL", "") in ("http://127.0.0.1:9", "")
    assert any("SPARKPLANE_CONTROL_PLANE_URL" in env for env in roles["agent"])
    assert not list(tmp_path.glob("ran*")), "a refused variable or a value ran code"

    # Owner-only: every directory and file under the data dir, Spark's own included.
    loose = []
    for dirpath, dirnames, filenames in os.walk(data_dir):
        for name in [".", *dirnames, *filenames]:
            path = Path(dirpath) / name
            mode = path.lstat().st_mode
            if not path.is_symlink() and mode & 0o077:
                loose.append(f"{path.relative_to(data_dir)} {oct(mode & 0o777)}")
    assert not loose, loose
    assert (data_dir.stat().st_mode & 0o777) == 0o700
    assert driver.node_id != worker.node_id


def all_running_n(p: LocalSparkProvisioner, cid: str, n: int) -> Callable[[], bool]:
    def check() -> bool:
        nodes = p.observe(cid)
        return len(nodes) == n and all(x.status == "RUNNING" for x in nodes)

    return check


_CHILD = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from shared.adapters.local_spark import LocalSparkProvisioner
from shared.ports import NodeRequest
p = LocalSparkProvisioner(Path({data_dir!r}))
req = NodeRequest("cluster-b", "ws-test", "local-small", "local-small", "4.1.x-scala2.13")
nodes = [p.start_driver(req), *p.add_workers(req, 1)]
print(json.dumps([[n.node_id, dict(n.attrs)] for n in nodes]), flush=True)
time.sleep(600)
"""


def test_ports_and_readoption_after_kill9(
    make_provisioner: Callable[[], LocalSparkProvisioner], data_dir: Path
) -> None:
    """Two clusters at once get different ports; nodes started by a control plane that is then
    killed with SIGKILL keep running and are re-adopted by a new provisioner."""
    data_dir.mkdir(parents=True, exist_ok=True)
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD.format(root=str(ROOT), data_dir=str(data_dir))],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        b_nodes = json.loads(child.stdout.readline())
    finally:
        child.kill()  # kill -9 of the "control plane" that started cluster-b
        child.wait()
    p = make_provisioner()
    a_driver = p.start_driver(_req("cluster-a"))

    b_driver_attrs = b_nodes[0][1]
    a_ports = {port_of(a_driver.attrs[k]) for k in ("master_url", "connect_url", "spark_ui_url")}
    a_ports.add(port_of(a_driver.attrs["master_ui_url"]))
    b_ports = {port_of(b_driver_attrs[k]) for k in ("master_url", "connect_url", "spark_ui_url")}
    b_ports.add(port_of(b_driver_attrs["master_ui_url"]))
    b_ports |= {port_of(b_nodes[1][1][k]) for k in ("worker_url", "worker_ui_url")}
    assert len(a_ports) == 4 and len(b_ports) == 6
    assert not a_ports & b_ports
    assert ports_in_table(data_dir, "cluster-a") == a_ports
    assert ports_in_table(data_dir, "cluster-b") == b_ports

    # cluster-b runs on without its control plane and the new provisioner adopts it.
    wait_for("cluster-a driver RUNNING", all_running_n(p, "cluster-a", 1), timeout=90)
    wait_for("cluster-b RUNNING (re-adopted)", all_running_n(p, "cluster-b", 2), timeout=90)
    assert [n.node_id for n in p.observe("cluster-b")] == [b_nodes[0][0], b_nodes[1][0]]
    assert p.cluster_ids() == {"cluster-a", "cluster-b"}
    assert p.info("cluster-b")["alive_workers"] == 1

    # A node that died while nobody watched is LOST for the new provisioner.
    b_worker_pid = int(b_nodes[1][1]["pid"])
    os.kill(b_worker_pid, signal.SIGKILL)
    wait_for(
        "cluster-b worker LOST",
        lambda: statuses(p.observe("cluster-b")).get(b_nodes[1][0]) == "LOST",
        timeout=20,
    )

    # A pid that no longer is the process we started (same pid, other create time) is LOST;
    # stopping still finds the real processes (process group + marker) and ends them.
    a_driver_id = a_driver.node_id
    with sqlite3.connect(data_dir / "local_spark.sqlite") as db:
        (procs,) = db.execute("SELECT procs FROM nodes WHERE node_id=?", (a_driver_id,)).fetchone()
        moved = [{**pr, "ctime": pr["ctime"] - 1000} for pr in json.loads(procs)]
        db.execute("UPDATE nodes SET procs=? WHERE node_id=?", (json.dumps(moved), a_driver_id))
    assert statuses(p.observe("cluster-a")) == {a_driver_id: "LOST"}

    pids = tree_pids(p, "cluster-a") | tree_pids(p, "cluster-b")
    pids |= {pr["pid"] for pr in moved}
    since = time.time()
    p.stop_cluster("cluster-a")
    p.stop_cluster("cluster-b")
    wait_for("both clusters stopped", lambda: not p.cluster_ids(), timeout=30)
    assert not still_running(pids, since)
    assert not ports_in_table(data_dir, "cluster-a") and not ports_in_table(data_dir, "cluster-b")


def test_catalog_works_with_the_sdk_helpers(
    make_provisioner: Callable[[], LocalSparkProvisioner],
) -> None:
    """databricks-sdk's select_spark_version()/select_node_type() pick from our catalogue, in
    the shape the control plane serves it."""
    from databricks.sdk.mixins.compute import ClustersExt
    from databricks.sdk.service import compute

    p = make_provisioner()
    versions = compute.GetSparkVersionsResponse(
        versions=[compute.SparkVersion(key=v.key, name=v.name) for v in p.spark_versions()]
    )
    node_types = compute.ListNodeTypesResponse.from_dict(
        {
            "node_types": [
                {
                    "node_type_id": n.node_type_id,
                    "memory_mb": n.memory_mb,
                    "num_cores": n.num_cores,
                    "description": n.description,
                    "instance_type_id": n.node_type_id,
                    "category": n.category,
                    "is_deprecated": False,
                    "num_gpus": 0,
                }
                for n in p.node_types()
            ]
        }
    )
    ext = ClustersExt.__new__(ClustersExt)
    ext.spark_versions = lambda: versions  # type: ignore[method-assign]
    ext.list_node_types = lambda: node_types  # type: ignore[method-assign]

    # The SDK's default is scala="2.12": the alias key answers it.
    assert ext.select_spark_version(latest=True) == "4.1.x-scala2.12"
    assert ext.select_spark_version(latest=True, scala="2.13") == "4.1.x-scala2.13"
    assert ext.select_spark_version(spark_version="4.1", scala="2.13") == "4.1.x-scala2.13"
    with pytest.raises(ValueError):
        ext.select_spark_version(long_term_support=True)
    assert ext.select_node_type(local_disk=False, min_cores=1) == "local-small"
    assert ext.select_node_type(min_cores=2) == "local-medium"
    assert ext.select_node_type(min_memory_gb=4) == "local-memory"
    assert ext.select_node_type(min_cores=4) == "local-large"


def test_java_check_explains_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(JavaRequirementError, match="apt-get install openjdk-17-jre-headless"):
        check_java(str(tmp_path / "no-java"))
    old = tmp_path / "java"
    old.write_text("#!/bin/sh\necho 'java version \"1.8.0_412\"' >&2\n")
    old.chmod(0o755)
    with pytest.raises(JavaRequirementError, match=r"Java 1\.8\.0_412.*needs Java 17"):
        LocalSparkProvisioner(tmp_path / "d", java=str(old))


def test_a_hot_pool_driver_keeps_its_master_and_its_own_secret(
    make_provisioner: Callable[[], LocalSparkProvisioner], data_dir: Path
) -> None:
    """An idle pool node runs a master with a Spark secret of its own (docs/pools.md, "Hot
    nodes"), and the other a hot Worker registered with it, with its secret ("Hot Workers").
    A cluster that takes the master's node as its driver keeps that master (same process)
    and the Worker, and uses the node's secret for its Connect server and workers; queries
    run with the cluster's Connect token. Given back, the nodes get a new secret: no two
    clusters share one."""
    from pyspark.sql import SparkSession

    from shared.ports import PoolRequest

    p = make_provisioner()
    pool = PoolRequest("pool-hot", "ws-test", "local-small", "4.1.x-scala2.13", max_capacity=2)
    idle = [n.node_id for n in p.add_idle(pool, 2)]
    wait_for(
        "two idle nodes",
        lambda: [n.status for n in p.pool_nodes(pool.pool_id)] == ["IDLE", "IDLE"],
        timeout=120,
    )
    recs = {r.node_id: r for r in p.store.load_pool(pool.pool_id)}
    secret_files = {n: p.launcher.node_dir(recs[n]) / "spark-secret" for n in idle}
    first_secrets = {n: f.read_text() for n, f in secret_files.items()}
    assert len(set(first_secrets.values())) == 1  # the hot Worker has its master's
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in secret_files.values())
    pids = {n: {pr.name: pr.pid for pr in recs[n].procs} for n in idle}
    (master_node,) = [n for n in idle if "master" in pids[n]]
    (worker_node,) = [n for n in idle if "worker" in pids[n]]

    cid = "cluster-hot"
    creds = cluster_credentials("test-key", cid)
    assert creds is not None
    req = _req(
        cid,
        spark_auth_secret=creds.auth_secret,
        connect_token=creds.connect_token,
        pool=pool,
        driver_pool=pool,
        num_workers=1,
    )
    driver = p.start_driver(req)
    (worker,) = p.add_workers(req, 1)
    assert (driver.node_id, worker.node_id) == (master_node, worker_node)
    assert driver.attrs["pid"] == str(pids[master_node]["master"])  # the hot master is kept
    assert worker.attrs["pid"] == str(pids[worker_node]["worker"])  # and its hot Worker

    def all_running() -> list[Node] | None:
        nodes = p.observe(cid)
        assert "LOST" not in statuses(nodes).values(), nodes
        return nodes if len(nodes) == 2 and all(n.status == "RUNNING" for n in nodes) else None

    nodes = wait_for("driver + worker RUNNING", all_running, timeout=120)

    def warm_up_jobs() -> int:
        """Succeeded jobs of the application: the agent's warm-up (shared/agent.py) runs one
        on the executors before any client does."""
        base = f"{nodes[0].attrs['spark_ui_url']}api/v1/applications"
        try:
            with urllib.request.urlopen(f"{base}?status=running", timeout=2) as resp:
                (app,) = json.load(resp)
            with urllib.request.urlopen(f"{base}/{app['id']}/jobs", timeout=2) as resp:
                return sum(1 for j in json.load(resp) if j["status"] == "SUCCEEDED")
        except (OSError, ValueError):
            return 0  # the UI did not answer this time

    wait_for("the agent's warm-up job", lambda: warm_up_jobs() > 0, timeout=60)
    node_secret = first_secrets[driver.node_id]
    confs = list((data_dir / "nodes" / f"pool-{pool.pool_id}").rglob("spark-defaults.conf"))
    for conf in confs:
        text = conf.read_text()
        if "spark.authenticate.secret=" in text:
            assert creds.auth_secret not in text  # the node's secret, not a derived one
    spark = SparkSession.builder.remote(
        connect_url(nodes[0].attrs["connect_url"], creds.connect_token)
    ).create()
    try:
        assert spark.range(1000).selectExpr("sum(id) AS s").collect()[0]["s"] == 499500
    finally:
        spark.stop()
    for pid in tree_pids(p, cid):
        with contextlib.suppress(psutil.Error):
            assert node_secret not in " ".join(psutil.Process(pid).cmdline()), pid

    p.stop_cluster(cid)
    wait_for(
        "both nodes idle again",
        lambda: [n.status for n in p.pool_nodes(pool.pool_id)] == ["IDLE", "IDLE"],
        timeout=120,
    )
    again = {n: f.read_text() for n, f in secret_files.items()}
    assert not set(again.values()) & set(first_secrets.values())
    p.remove_idle(pool.pool_id, idle)
    wait_for("the pool empty", lambda: not p.pool_nodes(pool.pool_id), timeout=60)


def test_nodes_that_become_idle_at_once_are_a_master_and_its_hot_worker(
    make_provisioner: Callable[[], LocalSparkProvisioner],
) -> None:
    """Two nodes of a pool warmed at the same moment (as a cluster's driver and worker given
    back together): one runs a master, the other a hot Worker registered with it, never two
    masters. The node that decides to run a master marks itself so in the same transaction,
    and a node deciding meanwhile waits for that master (hot_workers.py)."""
    import threading

    from shared.adapters.local_spark.node_start import HOT_MASTER_ATTR
    from shared.ports import PoolRequest

    p = make_provisioner()
    pool = PoolRequest("pool-race", "ws-test", "local-small", "4.1.x-scala2.13", max_capacity=2)
    barrier = threading.Barrier(2)

    def add() -> None:
        barrier.wait()
        p.add_idle(pool, 1)

    threads = [threading.Thread(target=add) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    wait_for(
        "two idle nodes",
        lambda: [n.status for n in p.pool_nodes(pool.pool_id)] == ["IDLE", "IDLE"],
        timeout=120,
    )
    recs = p.store.load_pool(pool.pool_id)
    (worker,) = [r for r in recs if r.attrs.get(HOT_MASTER_ATTR)]
    (master,) = [r for r in recs if not r.attrs.get(HOT_MASTER_ATTR)]
    assert worker.attrs[HOT_MASTER_ATTR] == master.node_id
    assert [pr.name for pr in master.procs] == ["master"]
    assert [pr.name for pr in worker.procs] == ["worker"]
    p.remove_idle(pool.pool_id, [r.node_id for r in recs])
    wait_for("the pool's nodes gone", lambda: p.pool_nodes(pool.pool_id) == [], timeout=60)
