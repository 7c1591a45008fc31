"""The agent's readiness check and warm-up on the driver node (used by shared/agent.py,
which is what a node runs: `python -m shared.agent`).

Readiness (the driver, SPARKPLANE_CONNECT_URL set): a cluster is RUNNING only once it is ready
to run a query. From its start the agent asks the Spark Connect server to run READY_QUERY every
READY_POLL_S; the moment it answers, the agent writes SPARKPLANE_READY_FILE (the provisioner
reads it: the driver node is ready) and posts a `ready` heartbeat, {"cluster_id": ...,
"ready": {"workspace_id", "node_id", "executors": n}}, which makes the control plane
reconcile the cluster at once. For READY_WATCH_S after that it watches the application's
executors just as often and posts `ready` again whenever their number changes (a worker node
is ready once an executor on it has registered with the driver), so the reconcile that makes
the cluster RUNNING follows the last registration, not a polling interval. Without
SPARKPLANE_CONTROL_PLANE_URL (a node started outside the control plane) the agent only writes
the ready file, then exits; the long-lived agent runs the Connect check in such a child, so the
gRPC stubs do not stay in its memory.

Warm-up: once Spark Connect answered, the readiness child plans and compiles WARMUP_QUERY on
the driver (DRIVER_WARMUP_QUERY, which needs no executor, while the executors still start),
then runs it (an aggregation with a shuffle, one task per executor core) as soon as executors
have registered,
and again while more register (at most WARMUP_S), then exits. The first query of a fresh
application pays for loading and compiling the query path on the driver and on every executor
(measured: several seconds, against under one for the second query); the warm-up pays it while
the user's client is still importing pyspark and opening its session. It does not hold back
the ready report.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from shared import agent_http

log = logging.getLogger("sparkplane.agent")

# An inline table: the Connect server answers it from the driver (a local relation), so a
# cluster whose executors are not there yet, or that has none, answers it too.
READY_QUERY = "VALUES (1)"
READY_POLL_S = 0.2  # how often readiness is checked while the cluster starts
READY_WATCH_S = 120.0  # how long after readiness new executors are reported at once
# A shuffle (partial and final aggregation) over one partition per executor core.
WARMUP_QUERY = "SELECT sum(id) FROM range(0, 1000, 1, {partitions})"
# The driver's half of the warm-up, which needs no executor: planning the same query and
# generating and compiling its code.
DRIVER_WARMUP_QUERY = "EXPLAIN CODEGEN " + WARMUP_QUERY.format(partitions=1)
WARMUP_S = 30.0  # how long the readiness child waits for executors to warm up
WARMUP_SETTLE_S = 1.0  # after a warm-up, how long it waits for more executors


def worker_key(executor: Mapping[str, Any]) -> str:
    """The worker an executor runs on, as the worker web UI's base URL (from its log links);
    the control plane maps it to the node id."""
    for url in (executor.get("executorLogs") or {}).values():
        parts = urlsplit(str(url))
        if parts.scheme and parts.netloc:
            return f"{parts.scheme}://{parts.netloc}/"
    return str(executor.get("hostPort", executor.get("id", "")))


def connect_target(connect_url: str) -> tuple[str, str]:
    """("host:port", token) of a Spark Connect URL, sc://host:port[/;token=...;...]."""
    rest = connect_url.removeprefix("sc://")
    address, _, params = rest.partition("/")
    token = ""
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key == "token":
            token = unquote(value)
    return address, token


def connect_answers(connect_url: str, timeout_s: float = 10.0, query: str = READY_QUERY) -> bool:
    """Whether the Spark Connect server runs `query` (READY_QUERY) now. The gRPC stubs are
    imported here: only the driver's agent needs them."""
    import grpc  # type: ignore[import-untyped]
    from pyspark.sql.connect.proto import base_pb2, base_pb2_grpc, relations_pb2

    address, token = connect_target(connect_url)
    metadata = [("authorization", f"Bearer {token}")] if token else []
    session = str(uuid.uuid4())
    user = base_pb2.UserContext(user_id="sparkplane-agent")
    plan = base_pb2.Plan(root=relations_pb2.Relation(sql=relations_pb2.SQL(query=query)))
    with grpc.insecure_channel(address) as channel:
        stub = base_pb2_grpc.SparkConnectServiceStub(channel)
        request = base_pb2.ExecutePlanRequest(
            session_id=session, user_context=user, plan=plan, client_type="sparkplane-agent"
        )
        try:
            for _ in stub.ExecutePlan(request, metadata=metadata, timeout=timeout_s):
                pass
        except grpc.RpcError:
            return False  # not listening yet, or the session cannot run yet
        release = base_pb2.ReleaseSessionRequest(session_id=session, user_context=user)
        try:
            stub.ReleaseSession(release, metadata=metadata, timeout=timeout_s)
        except grpc.RpcError as e:
            # The server keeps the session until its idle timeout: harmless.
            log.info("readiness session not released", extra={"error": str(e.code())})
    return True


def executor_cores(client: agent_http.Client, ui_url: str) -> dict[str, int]:
    """Executor id -> cores, of the executors registered with the driver application."""
    base = ui_url.rstrip("/") + "/api/v1/applications"
    out: dict[str, int] = {}
    for app in client.get(base, params={"status": "running"}).json():
        for ex in client.get(f"{base}/{app['id']}/executors").json():
            if ex.get("id") != "driver" and ex.get("isActive", True):
                out[str(ex.get("id"))] = int(ex.get("totalCores", 1) or 1)
    return out


def warm_up(
    stop: threading.Event,
    connect_url: str,
    ui_url: str,
    *,
    poll_s: float = READY_POLL_S,
    limit_s: float = WARMUP_S,
    settle_s: float = WARMUP_SETTLE_S,
) -> int:
    """Run WARMUP_QUERY over the executors registered so far, again whenever more register
    (see the module doc), for at most `limit_s`; the number of warm-ups that ran."""
    until = time.monotonic() + limit_s
    warmed: set[str] = set()
    runs = 0
    quiet_since: float | None = None
    seen: dict[str, int] = {}
    with agent_http.Client(timeout=5) as spark:
        while not stop.is_set() and time.monotonic() < until:
            try:
                cores = executor_cores(spark, ui_url)
            except (agent_http.HTTPError, ValueError, KeyError, TypeError):
                cores = {}  # the UI did not answer this time: ask again
            if set(cores) - warmed and cores != seen:
                seen = cores  # executors register in bursts: wait one poll for the rest
            elif set(cores) - warmed:
                query = WARMUP_QUERY.format(partitions=max(1, sum(cores.values())))
                left = max(1.0, until - time.monotonic())
                if connect_answers(connect_url, timeout_s=left, query=query):
                    runs += 1
                warmed |= set(cores)
                quiet_since = time.monotonic()
            elif quiet_since is not None and time.monotonic() - quiet_since >= settle_s:
                break  # no executor joined since the last warm-up
            stop.wait(poll_s)
    return runs


def registered_workers(client: agent_http.Client, ui_url: str) -> list[str]:
    """The workers (web UI base URLs, see `worker_key`) with an executor registered with the
    driver application."""
    base = ui_url.rstrip("/") + "/api/v1/applications"
    out: set[str] = set()
    for app in client.get(base, params={"status": "running"}).json():
        for ex in client.get(f"{base}/{app['id']}/executors").json():
            if ex.get("id") != "driver" and ex.get("isActive", True):
                out.add(worker_key(ex))
    return sorted(out)


def write_ready(path: str, workers: Sequence[str]) -> None:
    """The ready file: written whole, then renamed (a reader never sees half of it)."""
    tmp = f"{path}.tmp"
    Path(tmp).write_text(json.dumps({"connect": True, "workers": list(workers)}))
    os.replace(tmp, path)


def connect_answered_in_child(
    stop: threading.Event, env: Mapping[str, str], ready_file: str
) -> bool:
    """Wait for Spark Connect's answer in a child agent in readiness-only mode (it writes the
    ready file, then exits): the gRPC stubs it imports (about 40 MB) leave with it instead of
    staying in this long-lived process. True once the ready file is written."""
    child_env = {k: v for k, v in env.items() if k != "SPARKPLANE_CONTROL_PLANE_URL"}
    child = subprocess.Popen([sys.executable, "-m", "shared.agent"], env=child_env)

    def reap() -> None:
        """The child goes on with its warm-up after the ready file: it is waited for (or
        stopped with the agent) here."""
        while child.poll() is None:
            if stop.wait(0.05):
                child.terminate()
                child.wait()
                return

    while child.poll() is None and not os.path.exists(ready_file):
        if stop.wait(0.05):
            child.terminate()
            child.wait()
            return False
    threading.Thread(target=reap, name="readiness-child", daemon=True).start()
    return child.returncode in (None, 0) and os.path.exists(ready_file)


def watch_ready(
    stop: threading.Event,
    env: Mapping[str, str],
    report: Callable[[int], None] | None,
    *,
    poll_s: float = READY_POLL_S,
    watch_s: float = READY_WATCH_S,
) -> None:
    """Readiness (see the module doc): wait until the Connect server answers, write the ready
    file, `report(executors)`, then report every change of the executors for `watch_s`."""
    connect_url = env["SPARKPLANE_CONNECT_URL"]
    ready_file = env.get("SPARKPLANE_READY_FILE", "")
    ui = env.get("SPARKPLANE_SPARK_UI_URL") or None
    started = time.monotonic()
    if report is not None and ready_file:
        if not connect_answered_in_child(stop, env, ready_file):
            return
    else:
        while not stop.is_set() and not connect_answers(connect_url):
            stop.wait(poll_s)
        if stop.is_set():
            return
    log.info("spark connect answered", extra={"after_s": round(time.monotonic() - started, 2)})
    workers: list[str] = []
    # At once, before the application's REST API is asked: its first answer is slow (Spark's
    # REST servlets start then; 1.6 s measured under load), and the ready file and the first
    # report only need the Connect server's answer.
    if ready_file:
        write_ready(ready_file, workers)
    if report is None:
        return
    report(len(workers))
    with agent_http.Client(timeout=5) as spark:

        def current() -> list[str]:
            if ui is None:
                return []
            try:
                return registered_workers(spark, ui)
            except (agent_http.HTTPError, ValueError, KeyError, TypeError):
                return workers  # the UI did not answer this time: no change

        until = time.monotonic() + watch_s
        while not stop.is_set() and time.monotonic() < until:
            now = current()
            if now != workers:
                workers = now
                if ready_file:
                    write_ready(ready_file, workers)
                report(len(workers))
            stop.wait(poll_s)
