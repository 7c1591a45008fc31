"""The cluster agent: posts heartbeats to the control plane with the cluster's own agent token.

    python -m shared.agent

On the driver node it reads Spark's REST API and posts utilization samples, and runs the
cluster's job tasks (shared/agent_tasks.py, when SPARKPLANE_TASKS_DIR is set); on every node
that has a Spark scratch directory it also reports the node's local disk (autoscaling local
storage).
A worker node runs it without SPARKPLANE_SPARK_UI_URL ("node mode"): disk reports only.

Heartbeat body: {"cluster_id": ..., "sample": {...}, "disk": {"node_id", "used_bytes",
"total_bytes"}}, each of sample and disk present when measured (node mode: disk only).

Readiness and the warm-up (the driver, SPARKPLANE_CONNECT_URL set): shared/agent_ready.py.
A cluster is RUNNING only once it is ready to run a query; the agent writes
SPARKPLANE_READY_FILE and posts `ready` heartbeats, {"cluster_id": ..., "ready":
{"workspace_id", "node_id", "executors": n}}, which make the control plane reconcile the
cluster at once. Without SPARKPLANE_CONTROL_PLANE_URL (a node started outside the control
plane, or the long-lived agent's readiness child) the agent checks readiness, writes the ready
file, warms the executors up, then exits.

Settings (environment): SPARKPLANE_CONTROL_PLANE_URL, SPARKPLANE_CLUSTER_ID,
SPARKPLANE_AGENT_TOKEN_FILE (or SPARKPLANE_AGENT_TOKEN), SPARKPLANE_SPARK_UI_URL (the driver
application's UI, e.g. http://127.0.0.1:4040; unset on worker nodes), SPARKPLANE_HEARTBEAT_S
(default 10). Readiness: SPARKPLANE_CONNECT_URL, SPARKPLANE_READY_FILE,
SPARKPLANE_WORKSPACE_ID, SPARKPLANE_WARMUP_S and SPARKPLANE_WARMUP_POLL_S (how long the
warm-up waits for executors and how often it looks; an idle pool node's waits longer and looks
less often). Disk: SPARKPLANE_NODE_ID (the node id the control plane knows the node
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

import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from shared import agent_http
from shared.agent_ready import (
    DRIVER_WARMUP_QUERY,
    READY_POLL_S,
    WARMUP_S,
    connect_answers,
    warm_up,
    watch_ready,
    worker_key,
)

log = logging.getLogger("sparkplane.agent")


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
            # Storage used counts broadcast blocks too (every task's serialized code is one,
            # fetched again from the driver at no cost): cached data only with RDD blocks.
            if int(ex.get("rddBlocks", 0)) > 0:
                w["cached_bytes"] += int(ex.get("memoryUsed", 0)) + int(ex.get("diskUsed", 0))
    return {
        "running_tasks": running,
        "pending_tasks": pending,
        "active_jobs": jobs,
        "active_queries": queries,
        "total_slots": slots,
        "workers": [{"node_id": k, **v} for k, v in sorted(workers.items())],
    }


def collect(client: agent_http.Client, ui_url: str) -> dict[str, Any]:
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


def control_plane(env: Mapping[str, str], timeout: float = 10) -> agent_http.Client:
    """A client of the control plane that carries the cluster's agent token."""
    auth = {"Authorization": f"Bearer {agent_token(env)}"}
    return agent_http.Client(timeout=timeout, headers=auth)


# ------------------------------------------------------------------------------- heartbeats


def heartbeat_url(env: Mapping[str, str]) -> str:
    return env["SPARKPLANE_CONTROL_PLANE_URL"].rstrip("/") + "/api/sparkplane/agent/heartbeat"


def ready_reporter(
    stop: threading.Event, env: Mapping[str, str], cp: agent_http.Client
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
        except agent_http.HTTPError as e:
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
        agent_http.Client(timeout=5) as spark,
        control_plane(env) as cp,
    ):
        while not stop.is_set():
            started = time.monotonic()
            body: dict[str, Any] = {"cluster_id": cluster_id}
            if ui is not None:
                try:
                    body["sample"] = collect(spark, ui)
                except (agent_http.HTTPError, ValueError) as e:
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
                except agent_http.HTTPError as e:
                    log.warning("heartbeat failed", extra={"error": type(e).__name__})
            stop.wait(max(0.0, period - (time.monotonic() - started)))


def main() -> None:
    from shared import logs

    logs.setup(os.environ.get("SPARKPLANE_LOG_LEVEL", "INFO"))
    stop = threading.Event()
    readiness = bool(os.environ.get("SPARKPLANE_CONNECT_URL"))
    if os.environ.get("SPARKPLANE_CONTROL_PLANE_URL"):
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
    # Else SIGTERM keeps its default and ends the process at once: the readiness-only mode has
    # nothing to finish, and a handler setting `stop` while the main thread waits in gRPC could
    # deadlock on the event's lock, which left the child running after its node was stopped.
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
                # An idle pool node's warm-up waits longer for its first executor, and asks
                # less often: nobody waits for it.
                limit_s = float(os.environ.get("SPARKPLANE_WARMUP_S") or WARMUP_S)
                poll_s = float(os.environ.get("SPARKPLANE_WARMUP_POLL_S") or READY_POLL_S)
                warm_up(stop, url, ui, limit_s=limit_s, poll_s=poll_s)
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
