"""Control-plane throughput: clusters created through the HTTP API with the record provisioner.

    .venv/bin/python -m bench.control_plane --clusters 1000 --json bench/out/control_plane.json

Starts devhost as a subprocess (embedded store and bus, record provisioner with a short boot)
and creates N clusters from concurrent clients (create latency). Then it measures the lifecycle
throughput on its own: the N clusters are created once more with the lifecycle function
disabled (`AzureWebJobs.cluster_lifecycle.Disabled`, as in Azure), so their messages wait in
the durable bus; devhost restarts with it enabled, and the messages handled until every cluster
is RUNNING (read from the store's file, then confirmed once through the list API) and the queue
is empty, over that time, give `lifecycle_msgs_per_s`. Get latency is measured last, with
`--get-clients` clients, on the settled system. Peak RSS is the devhost process's.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil

from bench.report import emit
from devhost.process import DevhostProcess

SPEC = {"spark_version": "4.1.x-scala2.13", "node_type_id": "rec-small", "num_workers": 2}


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def bus_sequence(data_dir: Path) -> int:
    """Messages ever enqueued (duplicates dropped by detection are not counted)."""
    db = sqlite3.connect(data_dir / "bus.db")
    try:
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name='messages'").fetchone()
        return int(row[0]) if row else 0
    finally:
        db.close()


def bus_pending(data_dir: Path) -> int:
    db = sqlite3.connect(data_dir / "bus.db")
    try:
        return int(db.execute("SELECT count(*) FROM messages WHERE state=0").fetchone()[0])
    finally:
        db.close()


class RssSampler:
    def __init__(self) -> None:
        self.peak_mb = 0.0
        self.proc: psutil.Process | None = None
        self._stop = threading.Event()
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            try:
                if self.proc is not None:
                    self.peak_mb = max(self.peak_mb, self.proc.memory_info().rss / 2**20)
            except psutil.Error:
                pass

    def stop(self) -> None:
        self._stop.set()


def store_running(data_dir: Path) -> int:
    """Clusters RUNNING in the store (read from the file, like the bus counts: polling the
    list API 20 times a second made the benchmark's own requests take a fifth of devhost's
    CPU away from the lifecycle it measures)."""
    db = sqlite3.connect(f"file:{data_dir / 'store.db'}?mode=ro", uri=True)
    try:
        row = db.execute(
            "SELECT count(*) FROM docs INDEXED BY docs_by_state"
            " WHERE kind = 'cluster' AND json_extract(body, '$.state') = 'RUNNING'"
        ).fetchone()
        return int(row[0])
    finally:
        db.close()


def api_running(c: httpx.Client) -> int:
    running, token = 0, None
    while True:
        params = {"page_size": 1000, **({"page_token": token} if token else {})}
        page = c.get("/api/2.1/clusters/list", params=params).json()
        running += sum(x["state"] == "RUNNING" for x in page.get("clusters", []))
        token = page.get("next_page_token")
        if not token:
            return running


def wait_all_running(c: httpx.Client, data_dir: Path, n: int, deadline_s: float = 600) -> None:
    """Until the store has n RUNNING clusters, then the list API must agree."""
    t0 = time.perf_counter()
    while (running := store_running(data_dir)) < n:
        if time.perf_counter() - t0 > deadline_s:
            raise TimeoutError(f"only {running}/{n} clusters RUNNING after {deadline_s} s")
        time.sleep(0.02)
    if (running := api_running(c)) != n:
        raise AssertionError(f"the store has {n} clusters RUNNING, the list API {running}")


LIFECYCLE_OFF = "AzureWebJobs.cluster_lifecycle.Disabled"


def run(n: int, clients: int, get_clients: int, boot_s: float) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="sp-bench-"))
    h = DevhostProcess(
        tmp / "data",
        env={
            "SPARKPLANE_RECORD_BOOT_S": str(boot_s),
            # clusters are rows only: no agent process per driver (no job runs here)
            "SPARKPLANE_RECORD_AGENTS": "false",
            "SPARKPLANE_RECONCILE_INTERVAL_S": "0.5",
            "SPARKPLANE_LOG_LEVEL": "WARNING",
            # the production timer period (the tests' devhost runs it every 2 s)
            "SPARKPLANE_RECONCILER_SCHEDULE": "*/10 * * * * *",
            # the benchmark measures the control plane, not the per-token rate limit
            "SPARKPLANE_RATE_LIMIT_PER_S": "1000000",
            "SPARKPLANE_RATE_LIMIT_BURST": "1000000",
            LIFECYCLE_OFF: "true",
            # thousands of clusters in one workspace: room beyond the default quotas
            "SPARKPLANE_QUOTA_DEFAULTS": '{"max_clusters": 1000000, "max_total_workers": 10000000}',
        },
    )
    rss = RssSampler()
    local = threading.local()

    def client() -> httpx.Client:
        c = getattr(local, "c", None)
        if c is None or c.base_url != httpx.URL(h.url):
            headers = {"Authorization": f"Bearer {h.token}"}
            c = local.c = httpx.Client(base_url=h.url, headers=headers, timeout=60)
        return c

    def create(i: int) -> tuple[float, str]:
        t = time.perf_counter()
        r = client().post("/api/2.1/clusters/create", json={**SPEC, "cluster_name": f"b{i}"})
        r.raise_for_status()
        return (time.perf_counter() - t) * 1000, r.json()["cluster_id"]

    def get(cid: str) -> float:
        t = time.perf_counter()
        client().get("/api/2.1/clusters/get", params={"cluster_id": cid}).raise_for_status()
        return (time.perf_counter() - t) * 1000

    try:
        h.start()
        rss.proc = psutil.Process(h.proc.pid)  # type: ignore[union-attr]
        seq0 = bus_sequence(h.data_dir)
        with ThreadPoolExecutor(clients) as pool:
            created = list(pool.map(create, range(n)))
        create_ms = [c[0] for c in created]
        ids = [c[1] for c in created]
        h.stop()
        # The create messages wait in the durable bus; now the lifecycle runs them all.
        del h.env[LIFECYCLE_OFF]
        h.start()
        t0 = time.perf_counter() - 0.1  # start() polls readiness every 0.1 s
        rss.proc = psutil.Process(h.proc.pid)  # type: ignore[union-attr]
        wait_all_running(client(), h.data_dir, n)
        all_running_s = time.perf_counter() - t0
        while bus_pending(h.data_dir) > 0 and time.perf_counter() - t0 < 660:
            time.sleep(0.02)
        drained_s = time.perf_counter() - t0
        msgs = bus_sequence(h.data_dir) - seq0
        with ThreadPoolExecutor(get_clients) as pool:
            get_ms = list(pool.map(get, [ids[i % n] for i in range(max(n, 2000))]))
    finally:
        rss.stop()
        h.stop()
    return {
        "clusters": n,
        "clients": clients,
        "get_clients": get_clients,
        "create_p50_ms": round(statistics.median(create_ms), 2),
        "create_p99_ms": round(pct(create_ms, 99), 2),
        "get_p50_ms": round(statistics.median(get_ms), 2),
        "get_p99_ms": round(pct(get_ms, 99), 2),
        "lifecycle_msgs": msgs,
        "lifecycle_msgs_per_s": round(msgs / drained_s, 1),
        "all_running_s": round(all_running_s, 2),
        "peak_rss_mb": round(rss.peak_mb, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--get-clients", type=int, default=4)
    ap.add_argument("--boot-s", type=float, default=0.5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    result = run(args.clusters, args.clients, args.get_clients, args.boot_s)
    emit(f"control plane, {args.clusters} clusters, record provisioner", result, args.json)


if __name__ == "__main__":
    main()
