"""Where the seconds of one local Spark cluster start go, and the floor they compare with.

`Timeline` watches one cluster start from outside (every 0.05 s): the provisioner's node table,
the master's JSON, the application's REST API and the driver agent's ready file, and notes the
first moment each phase was seen. `bare_floor_s` starts a bare `spark-class` Master and Worker
(no sparkplane, the distribution's defaults) and times them until the worker is ALIVE at the
master: the floor a cluster start is compared with (bench.cluster_start prints the ratio).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))

PHASES = (
    "driver processes started",
    "master ALIVE",
    "workers ALIVE at the master",
    "application registered",
    "Spark Connect answered (ready file)",
    "executors registered",
)


def get_json(url: str) -> Any:
    try:
        with _NO_PROXY.open(url, timeout=1) as resp:
            return json.load(resp)
    except (OSError, ValueError):
        return None  # not up yet


class Timeline:
    """First time each phase of one cluster's start was seen, in seconds after `t0`."""

    def __init__(self, data_dir: Path, cluster_id: str, workers: int, t0: float) -> None:
        self.db = data_dir / "local_spark" / "local_spark.sqlite"
        self.nodes = data_dir / "local_spark" / "nodes"  # <cluster or pool-<id>>/<node>/
        self.cluster_id, self.workers, self.t0 = cluster_id, workers, t0
        self.seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def mark(self, phase: str) -> None:
        self.seen.setdefault(phase, round(time.perf_counter() - self.t0, 2))

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join(timeout=5)
        return dict(sorted(self.seen.items(), key=lambda kv: kv[1]))

    def _driver_ports(self) -> tuple[str, dict[str, int]] | None:
        with contextlib.closing(sqlite3.connect(self.db, timeout=5)) as db:
            row = db.execute(
                "SELECT node_id, ports, procs FROM nodes WHERE cluster_id=? AND role='driver'",
                (self.cluster_id,),
            ).fetchone()
        if row is None or row[2] == "[]":
            return None
        return row[0], json.loads(row[1])

    def _watch(self) -> None:
        driver: tuple[str, dict[str, int]] | None = None
        while not self._stop.wait(0.05):
            try:
                driver = driver or self._driver_ports()
            except sqlite3.Error:
                continue  # the provisioner is writing: next time
            if driver is None:
                continue
            self.mark("driver processes started")
            node_id, ports = driver
            master = get_json(f"http://127.0.0.1:{ports['master_ui']}/json/")
            if isinstance(master, dict):
                if master.get("status") == "ALIVE":
                    self.mark("master ALIVE")
                alive = sum(1 for w in master.get("workers") or [] if w.get("state") == "ALIVE")
                if alive >= self.workers:
                    self.mark("workers ALIVE at the master")
                if master.get("activeapps"):
                    self.mark("application registered")
            if any(self.nodes.glob(f"*/{node_id}/ready.json")):
                self.mark("Spark Connect answered (ready file)")
            if "executors registered" not in self.seen:
                base = f"http://127.0.0.1:{ports['app_ui']}/api/v1/applications"
                apps = get_json(f"{base}?status=running") or []
                for app in apps:
                    executors = get_json(f"{base}/{app['id']}/executors") or []
                    if sum(1 for e in executors if e.get("id") != "driver") >= self.workers:
                        self.mark("executors registered")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bare_floor_s(spark_home: Path, java_home: Path, timeout: float = 180) -> float:
    """Seconds from spawning a bare standalone Master to a bare Worker ALIVE at it (the
    Worker is spawned once the master's UI answers, as a Worker that finds no master waits
    5 to 20 s before it retries)."""
    port, ui, wport, wui = (free_port() for _ in range(4))
    tmp = Path(tempfile.mkdtemp(prefix="sp-floor-"))
    env = {
        "PATH": f"{java_home}/bin:/usr/bin:/bin",
        "JAVA_HOME": str(java_home),
        "SPARK_HOME": str(spark_home),
        "SPARK_LOG_DIR": str(tmp),
        "SPARK_WORKER_DIR": str(tmp / "work"),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "HOME": str(tmp),
    }
    cls = str(spark_home / "bin" / "spark-class")
    master_argv = [cls, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1"]
    master_argv += ["--port", str(port), "--webui-port", str(ui)]
    worker_argv = [cls, "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1"]
    worker_argv += ["--port", str(wport), "--webui-port", str(wui), "--cores", "1"]
    worker_argv += ["--memory", "1g", f"spark://127.0.0.1:{port}"]
    procs: list[subprocess.Popen[bytes]] = []
    t0 = time.perf_counter()
    try:
        procs.append(_spawn(master_argv, env, tmp / "master.log"))
        deadline = t0 + timeout
        while get_json(f"http://127.0.0.1:{ui}/json/") is None:
            if time.perf_counter() > deadline:
                raise TimeoutError("bare master did not start")
            time.sleep(0.05)
        procs.append(_spawn(worker_argv, env, tmp / "worker.log"))
        while True:
            master = get_json(f"http://127.0.0.1:{ui}/json/") or {}
            if any(w.get("state") == "ALIVE" for w in master.get("workers") or []):
                return round(time.perf_counter() - t0, 2)
            if time.perf_counter() > deadline:
                raise TimeoutError("bare worker did not register")
            time.sleep(0.05)
    finally:
        for p in procs:
            with contextlib.suppress(OSError):
                os.killpg(p.pid, 9)
            p.wait(timeout=10)


def _spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
