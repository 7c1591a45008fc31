"""The cluster agent: posts heartbeats to the control plane with the cluster's own agent token.

    python -m shared.agent

On the driver node it reads Spark's REST API and posts utilization samples, and runs the
cluster's job tasks (shared/agent_tasks.py, when SPARKPLANE_TASKS_DIR is set); on every node
that has a Spark scratch directory it also reports the node's local disk (autoscaling local
storage).
A worker node runs it without SPARKPLANE_SPARK_UI_URL ("node mode"): disk reports only.

Heartbeat body: {"cluster_id": ..., "sample": {...}, "disk": {"node_id", "used_bytes",
"total_bytes"}}, each of sample and disk present when measured (node mode: disk only).

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

Settings (environment): SPARKPLANE_CONTROL_PLANE_URL, SPARKPLANE_CLUSTER_ID,
SPARKPLANE_AGENT_TOKEN_FILE (or SPARKPLANE_AGENT_TOKEN), SPARKPLANE_SPARK_UI_URL (the driver
application's UI, e.g. http://127.0.0.1:4040; unset on worker nodes), SPARKPLANE_HEARTBEAT_S
(default 10). Readiness: SPARKPLANE_CONNECT_URL, SPARKPLANE_READY_FILE,
SPARKPLANE_WORKSPACE_ID. Disk: SPARKPLANE_NODE_ID (the node id the control plane knows the node
by), SPARKPLANE_SCRATCH_DIR (a comma-separated list of directories; else SPARK_LOCAL_DIRS, the
Spark local dirs), SPARKPLANE_DISK_QUOTA_FILE (a file holding the disk's size in bytes, which
the provisioner grows; unset: the sizes of the distinct file systems holding the directories).

A node's disk is all its Spark local dirs: used is the size of the files under them, total the
quota or the file systems' sizes (each counted once). In Azure that is the VM's temporary disk
plus each data disk the control plane attached, which is also what the ARM provisioner counts
when it grows a node (shared/adapters/arm/).

The same module is what the Azure node bootstrap installs and starts on the node VMs
(infra/bootstrap/cloud-init.yaml): on the driver, and on the workers of clusters with
autoscaling local storage, in node mode.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

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


def local_dirs(env: Mapping[str, str]) -> list[str]:
    """The node's Spark local dirs: SPARKPLANE_SCRATCH_DIR, else SPARK_LOCAL_DIRS (each a
    comma-separated list), blanks and repeats left out; empty when neither names one."""
    given = env.get("SPARKPLANE_SCRATCH_DIR", "").strip() or env.get("SPARK_LOCAL_DIRS", "")
    return list(dict.fromkeys(d.strip() for d in given.split(",") if d.strip()))


def scratch_dir(env: Mapping[str, str]) -> str | None:
    """The node's first Spark local dir (see `local_dirs`), or None."""
    dirs = local_dirs(env)
    return dirs[0] if dirs else None


def used_bytes(root: str) -> int:
    """The total size of the files under `root` (symbolic links are not followed).

    Spark creates and deletes shuffle and spill files all the time: an entry that vanishes (or
    a directory replaced by a file) between listing and reading is skipped. A missing or
    unreadable `root` raises OSError.
    """
    total = 0
    stack = [root]
    first = True
    while stack:
        path = stack.pop()
        try:
            it = os.scandir(path)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            if first:
                raise
            continue
        first = False
        with it:
            for entry in it:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
                except FileNotFoundError:
                    continue
    return total


def _outermost(roots: Sequence[str]) -> list[str]:
    """`roots` less those that repeat another one or lie inside another one (symbolic links
    resolved): their files would be counted twice."""
    real = [os.path.realpath(r) for r in roots]
    out = []
    for i, (r, rr) in enumerate(zip(roots, real, strict=True)):
        inside = any(rr.startswith(o.rstrip("/") + "/") for o in real if o != rr)
        if not inside and rr not in real[:i]:
            out.append(r)
    return out


def used_bytes_of(roots: Sequence[str]) -> int:
    """The total size of the files under all of `roots` (a directory inside another, or named
    twice, counted once). Raises OSError when one of them is missing or unreadable."""
    return sum(used_bytes(r) for r in _outermost(roots))


def filesystems_bytes(roots: Sequence[str]) -> int:
    """What the file systems holding `roots` add up to, each counted once (by st_dev): two
    local dirs on the temporary disk are one disk."""
    sizes: dict[int, int] = {}
    for r in roots:
        dev = _device(r)
        if dev not in sizes:
            sizes[dev] = shutil.disk_usage(r).total
    return sum(sizes.values())


def _device(path: str) -> int:
    """The file system (device number) holding `path`."""
    return os.stat(path).st_dev


def total_bytes(roots: str | Sequence[str], quota_file: str | None) -> int:
    """The disk's size: the integer in `quota_file` when given, else the size of the file
    systems holding `roots` (one directory or several)."""
    if quota_file:
        return int(Path(quota_file).read_text().strip())
    return filesystems_bytes([roots] if isinstance(roots, str) else roots)


def measure_disk(env: Mapping[str, str]) -> dict[str, Any] | None:
    """The `disk` object of a heartbeat, or None when the node has no Spark local dir or no
    SPARKPLANE_NODE_ID.

    A local dir that does not exist is left out, as Spark leaves out a local dir it cannot
    create; none existing raises FileNotFoundError. Raises OSError/ValueError when a directory
    or the quota file cannot be read."""
    roots = local_dirs(env)
    node_id = env.get("SPARKPLANE_NODE_ID", "")
    if not roots or not node_id:
        return None
    present = [r for r in roots if os.path.isdir(r)]
    if not present:
        raise FileNotFoundError(f"no Spark local dir exists: {', '.join(roots)}")
    return {
        "node_id": node_id,
        "used_bytes": used_bytes_of(present),
        "total_bytes": total_bytes(present, env.get("SPARKPLANE_DISK_QUOTA_FILE")),
    }


def agent_token(env: Mapping[str, str]) -> str:
    token_file = env.get("SPARKPLANE_AGENT_TOKEN_FILE")
    return Path(token_file).read_text().strip() if token_file else env["SPARKPLANE_AGENT_TOKEN"]


def control_plane(env: Mapping[str, str], timeout: float = 10) -> httpx.Client:
    """A client of the control plane that carries the cluster's agent token."""
    return httpx.Client(timeout=timeout, headers={"Authorization": f"Bearer {agent_token(env)}"})


# ------------------------------------------------------------------------------- readiness


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


def executor_cores(client: httpx.Client, ui_url: str) -> dict[str, int]:
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
    with httpx.Client(timeout=5) as spark:
        while not stop.is_set() and time.monotonic() < until:
            try:
                cores = executor_cores(spark, ui_url)
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
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


def registered_workers(client: httpx.Client, ui_url: str) -> list[str]:
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
    with httpx.Client(timeout=5) as spark:

        def current() -> list[str]:
            if ui is None:
                return []
            try:
                return registered_workers(spark, ui)
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
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


# ------------------------------------------------------------------------------- heartbeats


def heartbeat_url(env: Mapping[str, str]) -> str:
    return env["SPARKPLANE_CONTROL_PLANE_URL"].rstrip("/") + "/api/sparkplane/agent/heartbeat"


def ready_reporter(
    stop: threading.Event, env: Mapping[str, str], cp: httpx.Client
) -> Callable[[int], None]:
    """Posts `ready` heartbeats (see the module doc)."""
    url = heartbeat_url(env)
    cluster_id = env["SPARKPLANE_CLUSTER_ID"]
    ready = {
        "workspace_id": env.get("SPARKPLANE_WORKSPACE_ID", ""),
        "node_id": env.get("SPARKPLANE_NODE_ID", ""),
    }

    def report(executors: int) -> None:
        body = {"cluster_id": cluster_id, "ready": {**ready, "executors": executors}}
        try:
            r = cp.post(url, json=body)
        except httpx.HTTPError as e:
            # The reconcile interval (and the next change) still move the cluster on.
            log.warning("ready report failed", extra={"error": type(e).__name__})
            return
        if r.status_code == 401:
            log.info("agent token revoked: stopping")
            stop.set()
        elif not r.is_success:
            log.warning("ready report refused", extra={"status": r.status_code})

    return report


def run(stop: threading.Event, env: Mapping[str, str] = os.environ) -> None:
    url = heartbeat_url(env)
    cluster_id = env["SPARKPLANE_CLUSTER_ID"]
    ui = env.get("SPARKPLANE_SPARK_UI_URL") or None
    disk_wanted = bool(local_dirs(env))
    if disk_wanted and not env.get("SPARKPLANE_NODE_ID"):
        log.warning("SPARKPLANE_NODE_ID is not set: no disk reports")
        disk_wanted = False
    if ui is None and not disk_wanted:
        log.info("no heartbeats: neither SPARKPLANE_SPARK_UI_URL nor a scratch directory")
        return
    period = float(env.get("SPARKPLANE_HEARTBEAT_S", "10"))
    disk_error = ""
    with (
        httpx.Client(timeout=5) as spark,
        control_plane(env) as cp,
    ):
        while not stop.is_set():
            started = time.monotonic()
            body: dict[str, Any] = {"cluster_id": cluster_id}
            if ui is not None:
                try:
                    body["sample"] = collect(spark, ui)
                except (httpx.HTTPError, ValueError) as e:
                    # The driver application is not up (yet): report no sample rather than
                    # "idle".
                    log.info("spark not reachable", extra={"error": type(e).__name__})
            if disk_wanted:
                try:
                    disk = measure_disk(env)
                except (OSError, ValueError) as e:
                    # E.g. no quota file yet: logged once per kind of error, not every beat.
                    if type(e).__name__ != disk_error:
                        disk_error = type(e).__name__
                        log.info("disk not measured", extra={"error": disk_error})
                else:
                    disk_error = ""
                    if disk is not None:
                        body["disk"] = disk
            if "sample" in body or "disk" in body:
                try:
                    r = cp.post(url, json=body)
                    if r.status_code == 401:
                        # The cluster ended and its agent tokens were revoked.
                        log.info("agent token revoked: stopping")
                        stop.set()
                    elif not r.is_success:
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
    readiness = bool(os.environ.get("SPARKPLANE_CONNECT_URL"))
    if not os.environ.get("SPARKPLANE_CONTROL_PLANE_URL"):
        # A node started outside the control plane, or the long-lived agent's child:
        # readiness only (the ready file), then the warm-up.
        if readiness:
            watch_ready(stop, os.environ, None)
            ui = os.environ.get("SPARKPLANE_SPARK_UI_URL")
            if ui and not stop.is_set():
                url = os.environ["SPARKPLANE_CONNECT_URL"]
                # The driver's half first, while the executors are still starting.
                connect_answers(url, query=DRIVER_WARMUP_QUERY)
                warm_up(stop, url, ui)
        return
    threads = [threading.Thread(target=run, args=(stop,), name="heartbeats")]
    if readiness:

        def ready() -> None:
            with control_plane(os.environ) as cp:
                watch_ready(stop, os.environ, ready_reporter(stop, os.environ, cp))

        threads.append(threading.Thread(target=ready, name="readiness"))
    if os.environ.get("SPARKPLANE_TASKS_DIR"):
        from shared import agent_tasks

        def tasks() -> None:
            with control_plane(os.environ) as cp:
                agent_tasks.run(stop, cp, os.environ)

        threads.append(threading.Thread(target=tasks, name="tasks"))
    for t in threads:
        t.start()
    for t in threads:
        t.join()


if __name__ == "__main__":
    main()
