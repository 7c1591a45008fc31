"""The cluster agent: runs on the driver node, reads Spark's REST API and posts utilization
samples to the control plane's heartbeat endpoint with the cluster's own agent token.

    python -m shared.agent

Settings (environment): SPARKPLANE_CONTROL_PLANE_URL, SPARKPLANE_CLUSTER_ID,
SPARKPLANE_AGENT_TOKEN_FILE (or SPARKPLANE_AGENT_TOKEN), SPARKPLANE_SPARK_UI_URL (the driver
application's UI, e.g. http://127.0.0.1:4040), SPARKPLANE_HEARTBEAT_S (default 10).

The same module is what the Azure node bootstrap installs and starts on the driver VM.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

log = logging.getLogger("sparkplane.agent")


def worker_key(executor: Mapping[str, Any]) -> str:
    """The worker an executor runs on, as the worker web UI's base URL (from its log links);
    the control plane maps it to the node id."""
    for url in (executor.get("executorLogs") or {}).values():
        parts = urlsplit(str(url))
        if parts.scheme and parts.netloc:
            return f"{parts.scheme}://{parts.netloc}/"
    return str(executor.get("hostPort", executor.get("id", "")))


def summarize(apps: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One sample from the REST payloads of every application on the cluster.

    Each app is {"jobs": [...running jobs], "stages": [...active and pending stages],
    "executors": [...], "sql": [...executions]} as Spark's /api/v1 returns them.
    """
    running = pending = jobs = queries = slots = 0
    workers: dict[str, dict[str, Any]] = {}
    for app in apps:
        jobs += len(app.get("jobs", []))
        for st in app.get("stages", []):
            active = int(st.get("numActiveTasks", 0))
            total = int(st.get("numTasks", 0))
            done = int(st.get("numCompleteTasks", 0)) + int(st.get("numKilledTasks", 0))
            running += active
            pending += max(0, total - active - done)
        queries += sum(1 for q in app.get("sql", []) if q.get("status") == "RUNNING")
        for ex in app.get("executors", []):
            if ex.get("id") == "driver" or not ex.get("isActive", True):
                continue
            slots += int(ex.get("totalCores", 0))
            w = workers.setdefault(
                worker_key(ex),
                {"running_tasks": 0, "shuffle_bytes": 0, "cached_bytes": 0},
            )
            w["running_tasks"] += int(ex.get("activeTasks", 0))
            w["shuffle_bytes"] += int(ex.get("totalShuffleWrite", 0))
            w["cached_bytes"] += int(ex.get("memoryUsed", 0)) + int(ex.get("diskUsed", 0))
    return {
        "running_tasks": running,
        "pending_tasks": pending,
        "active_jobs": jobs,
        "active_queries": queries,
        "total_slots": slots,
        "workers": [{"node_id": k, **v} for k, v in sorted(workers.items())],
    }


def collect(client: httpx.Client, ui_url: str) -> dict[str, Any]:
    base = ui_url.rstrip("/") + "/api/v1/applications"
    apps = []
    for app in client.get(base, params={"status": "running"}).json():
        a = f"{base}/{app['id']}"

        def get(path: str, a: str = a, **params: str) -> list[Any]:
            r = client.get(a + path, params=params)
            return r.json() if r.is_success else []

        apps.append(
            {
                "jobs": get("/jobs", status="running"),
                "stages": get("/stages", status="active") + get("/stages", status="pending"),
                "executors": get("/executors"),
                "sql": get("/sql", details="false"),
            }
        )
    return summarize(apps)


def run(stop: threading.Event, env: Mapping[str, str] = os.environ) -> None:
    url = env["SPARKPLANE_CONTROL_PLANE_URL"].rstrip("/") + "/api/sparkplane/agent/heartbeat"
    cluster_id = env["SPARKPLANE_CLUSTER_ID"]
    token_file = env.get("SPARKPLANE_AGENT_TOKEN_FILE")
    token = Path(token_file).read_text().strip() if token_file else env["SPARKPLANE_AGENT_TOKEN"]
    ui = env["SPARKPLANE_SPARK_UI_URL"]
    period = float(env.get("SPARKPLANE_HEARTBEAT_S", "10"))
    with (
        httpx.Client(timeout=5) as spark,
        httpx.Client(timeout=10, headers={"Authorization": f"Bearer {token}"}) as cp,
    ):
        while not stop.is_set():
            started = time.monotonic()
            try:
                sample = collect(spark, ui)
            except (httpx.HTTPError, ValueError) as e:
                # The driver application is not up (yet): report nothing rather than "idle".
                log.info("spark not reachable", extra={"error": type(e).__name__})
            else:
                try:
                    r = cp.post(url, json={"cluster_id": cluster_id, "sample": sample})
                    if not r.is_success:
                        log.warning("heartbeat refused", extra={"status": r.status_code})
                except httpx.HTTPError as e:
                    log.warning("heartbeat failed", extra={"error": type(e).__name__})
            stop.wait(max(0.0, period - (time.monotonic() - started)))


def main() -> None:
    from shared import logs

    logs.setup(os.environ.get("SPARKPLANE_LOG_LEVEL", "INFO"))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    run(stop)


if __name__ == "__main__":
    main()
