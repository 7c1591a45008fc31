"""Supervision: the status of nodes (alive, ready, lost) and their removal step by step
(decommissioning, SIGTERM, SIGKILL after a grace period), carried on by `observe`, the
provisioner's listings and a small background reaper."""

from __future__ import annotations

import json
import logging
import shutil
import signal
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

from shared.adapters.local_spark import processes as procs
from shared.adapters.local_spark.conf import LOOPBACK
from shared.adapters.local_spark.processes import Launcher
from shared.adapters.local_spark.store import NodeStore, Rec
from shared.domain import node_rules
from shared.ports import Node
from shared.private_files import write_private

log = logging.getLogger("sparkplane.local_spark")

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# Written by the driver's agent once Spark Connect answered a query (shared/agent.py).
READY_FILE = "ready.json"
# An idle pool node's own Spark secret (0600): its hot master runs with it, and the cluster that
# takes the node as its driver uses it as its Spark secret (docs/pools.md, "Hot nodes").
SECRET_FILE = "spark-secret"
# The credential id that secret (and the Connect token) of a hot pool node is derived from, new
# each idle period (shared/domain/spark_auth.py, "Adopted credentials"). Not a secret.
CREDENTIAL_ID_FILE = "credential-id"
# A pool node's node type (its hot Connect server's driver and executor sizes).
NODE_TYPE_FILE = "pool-node-type"


def worker_states(master: Mapping[str, Any] | None) -> dict[int, str]:
    """Worker port -> state in the master's JSON (a port seen twice, e.g. DEAD then a new
    worker, counts as its best state)."""
    rank = {"ALIVE": 3, "DECOMMISSIONED": 2}
    out: dict[int, str] = {}
    for w in (master or {}).get("workers") or []:
        try:
            port, state = int(w["port"]), str(w["state"])
        except (KeyError, TypeError, ValueError):
            continue  # not a worker entry this code understands
        if rank.get(state, 0) >= rank.get(out.get(port, ""), 0):
            out[port] = state
    return out


def master_view(master: Mapping[str, Any]) -> dict[str, Any]:
    """The master's JSON as `info` shows it."""
    apps = master.get("activeapps") or []
    return {
        "master_status": master.get("status"),
        "alive_workers": master.get("aliveworkers"),
        "cores": master.get("cores"),
        "memory_mb": master.get("memory"),
        "app_id": apps[0].get("id") if apps else None,
        "workers": [
            {
                "id": w.get("id"),
                "port": w.get("port"),
                "state": w.get("state"),
                "cores": w.get("cores"),
                "memory_mb": w.get("memory"),
            }
            for w in master.get("workers") or []
        ],
    }


def driver_of(recs: Sequence[Rec]) -> Rec | None:
    return next((r for r in recs if r.role == "driver" and r.phase == "active"), None)


class Supervisor:
    """Node status and removal; the provisioner's base (shared/adapters/local_spark/)."""

    data_dir: Path
    store: NodeStore
    launcher: Launcher
    _now_ms: Callable[[], int]
    _decommission_timeout_s: float
    _kill_grace_s: float
    _http_timeout_s: float
    _ready_timeout_s: float
    _executor_wait_s: float
    _scratch_quota: int
    _lock: threading.Lock
    _reaper: threading.Thread | None
    _closed: threading.Event

    def _rewarm(self, r: Rec) -> None:
        """A pool node whose cluster processes are gone goes back to its pool (pools.py)."""
        raise NotImplementedError

    # ---------------------------------------------------------------------------- status

    def _active_status(
        self,
        r: Rec,
        alive: bool,
        master: dict[str, Any] | None,
        executors: Callable[[], set[int]] | None = None,
    ) -> str:
        """STARTING, RUNNING or LOST (shared/domain/node_rules.py, rule 4); `executors` gives
        the worker UI ports of the executors registered with the driver (asked only when a
        worker's readiness depends on it)."""
        now = time.time()
        ready_now = (
            alive and r.ready_s is None and master is not None and self._ready(r, master, executors)
        )
        if (
            alive
            and r.ready_s is None
            and not ready_now
            and node_rules.ready_overdue(
                r.role, starting_for_s=now - r.phase_s, ready_timeout_s=self._ready_timeout_s
            )
        ):
            log.error(
                "driver not ready in time: the node agent did not report that Spark Connect"
                " answered a query",
                extra={
                    "cluster_id": r.cluster_id,
                    "node_id": r.node_id,
                    "ready_timeout_s": self._ready_timeout_s,
                },
            )
            alive = False
        if not alive:
            if r.lost_s is None:
                r.lost_s = now
                self.store.update(r, lost_s=r.lost_s)
                log.warning(
                    "node lost",
                    extra={"cluster_id": r.cluster_id, "node_id": r.node_id, "role": r.role},
                )
            return "LOST"
        status = node_rules.active_status(
            alive=True, was_ready=r.ready_s is not None, ready_now=ready_now
        )
        if ready_now:
            r.ready_s = now
            self.store.update(r, ready_s=r.ready_s)
        return status

    def _ready(
        self, r: Rec, master: dict[str, Any], executors: Callable[[], set[int]] | None
    ) -> bool:
        if r.role == "driver":
            return node_rules.node_ready(
                "driver",
                master_alive=master.get("status") == "ALIVE",
                connect_answered=(self.launcher.node_dir(r) / READY_FILE).exists(),
            )
        state = worker_states(master).get(r.ports["worker"])
        return node_rules.node_ready(
            r.role,
            master_alive=True,
            worker_state=state,
            executor_registered=state == "ALIVE"
            and executors is not None
            and r.ports["worker_ui"] in executors(),
            starting_for_s=time.time() - r.phase_s,
            executor_wait_s=self._executor_wait_s,
        )

    def _executors(self, driver: Rec | None) -> Callable[[], set[int]]:
        """The worker UI ports of the executors registered with the driver's application
        (its REST API, asked at most once per call of the result's owner)."""
        found: list[set[int]] = []

        def get() -> set[int]:
            if not found:
                found.append(self._app_executors(driver))
            return found[0]

        return get

    def _app_executors(self, driver: Rec | None) -> set[int]:
        if driver is None or "app_ui" not in driver.ports:
            return set()
        base = f"http://{LOOPBACK}:{driver.ports['app_ui']}/api/v1/applications"
        out: set[int] = set()
        try:
            with _NO_PROXY.open(f"{base}?status=running", timeout=self._http_timeout_s) as resp:
                apps = json.load(resp)
            for app in apps:
                url = f"{base}/{app['id']}/executors"
                with _NO_PROXY.open(url, timeout=self._http_timeout_s) as resp:
                    for ex in json.load(resp):
                        if ex.get("id") == "driver" or not ex.get("isActive", True):
                            continue
                        for link in (ex.get("executorLogs") or {}).values():
                            port = urlsplit(str(link)).port
                            if port is not None:
                                out.add(port)
        except (OSError, ValueError, KeyError, TypeError):
            return out  # the application UI is not up (yet): no executor known
        return out

    def _app_ui_answers(self, r: Rec) -> bool:
        """The application UI's REST API answers (its first answer builds the API and takes
        seconds on a loaded machine: an idle node asks while idle, not the cluster's first
        readiness check)."""
        url = f"http://{LOOPBACK}:{r.ports['app_ui']}/api/v1/applications"
        try:
            with _NO_PROXY.open(url, timeout=self._http_timeout_s) as resp:
                json.load(resp)
        except (OSError, ValueError):
            return False
        return True

    def _alive(self, r: Rec) -> bool:
        """Every process of the node is the one started (pid and create time) and running."""
        if r.lost_s is not None:
            return False
        if len(r.procs) < r.expected_procs and time.time() - max(r.created_s, r.phase_s) >= 30:
            return False  # a crash between the spawns of start_driver left it half-made
        # The agent does not make the node: a dead agent only means no heartbeats.
        return all(procs.live(p.pid, p.ctime) is not None for p in r.procs if p.name != "agent")

    def _node(self, r: Rec, status: str) -> Node:
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

    def _master_json(self, driver: Rec | None) -> dict[str, Any] | None:
        if driver is None or "master_ui" not in driver.ports:
            return None
        url = f"http://{LOOPBACK}:{driver.ports['master_ui']}/json/"
        try:
            with _NO_PROXY.open(url, timeout=self._http_timeout_s) as resp:
                data = json.load(resp)
        except (OSError, ValueError):
            return None  # not up (yet), or going: the caller decides without it
        return data if isinstance(data, dict) else None

    def _write_quota(self, r: Rec) -> None:
        node_dir, _ = self.launcher.dirs(r)
        tmp = node_dir / "scratch-quota.tmp"
        write_private(tmp, str(r.disk_bytes or self._scratch_quota))
        tmp.replace(node_dir / "scratch-quota")

    # ---------------------------------------------------------------------------- removal

    def _advance_cluster(self, cluster_id: str) -> None:
        every = self.store.load(cluster_id)
        recs = [r for r in every if r.phase not in ("active", "idle")]
        if not recs:
            return
        master = None
        if any(r.phase == "decommissioning" for r in recs):
            master = self._master_json(driver_of(every))
        for r in recs:
            self._advance(r, master)

    def _advance(self, r: Rec, master: dict[str, Any] | None) -> bool:
        """One step of a removal; True when the node is gone (its record deleted, or a pool
        node back in its pool)."""
        found = procs.members(r)
        if not found:
            if r.phase == "returning":
                self._rewarm(r)
            else:
                self._delete(r)
            return True
        now = time.time()
        if r.phase == "decommissioning":
            # The master took note (the worker is no longer ALIVE there), or it can't be asked.
            if master is not None:
                acknowledged = worker_states(master).get(r.ports["worker"]) != "ALIVE"
            else:
                acknowledged = now - r.phase_s >= 5
            if node_rules.decommission_done(
                acknowledged=acknowledged,
                has_executors=procs.has_executors(found),
                elapsed_s=now - r.phase_s,
                timeout_s=self._decommission_timeout_s,
            ):
                self._terminate(r, node_rules.ending_phase(r.pool_id), now, found)
        elif r.kill_s is None and r.term_s is not None and now - r.term_s >= self._kill_grace_s:
            procs.signal_node(r, signal.SIGKILL, found)
            r.kill_s = now
            self.store.update(r, kill_s=now)
            log.warning(
                "node killed after grace period",
                extra={"cluster_id": r.cluster_id, "node_id": r.node_id},
            )
        elif r.kill_s is not None and now - r.kill_s >= 1:
            procs.signal_node(r, signal.SIGKILL, found)  # stragglers (children forked late)
        return False

    def _terminate(
        self, r: Rec, phase: str, now: float, found: list[psutil.Process] | None = None
    ) -> None:
        procs.signal_node(r, signal.SIGTERM, found)
        r.term_s = now
        self.store.set_phase(r, phase, now, term_s=now)

    def _abort(self, r: Rec) -> None:
        """A start failed half-way: kill what was started and forget the node."""
        procs.signal_node(r, signal.SIGKILL)
        self._delete(r)

    def _delete(self, r: Rec) -> None:
        procs.reap()  # the node's processes are gone: don't leave our dead children as zombies
        self.store.delete(r)
        node_dir = self.launcher.node_dir(r)
        shutil.rmtree(node_dir / "scratch", ignore_errors=True)  # shuffle files; logs stay
        log.info("node gone", extra={"cluster_id": r.cluster_id, "node_id": r.node_id})

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
                busy = self.store.busy()
                if not busy:
                    self._reaper = None
                    return
            procs.reap()
            for cid in busy:
                try:
                    self._advance_cluster(cid)
                except Exception:
                    # One cluster's failure must not stop the removals of the others.
                    log.exception("reaper failed", extra={"cluster_id": cid})
