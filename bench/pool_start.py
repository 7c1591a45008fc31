"""Warm instance-pool nodes against cold nodes: time from create to RUNNING and to the first
query result of real local Spark clusters.

    .venv/bin/python -m bench.pool_start --runs 5 --json bench/out/pool_start.json

Starts devhost with the local Spark provisioner and an instance pool whose min_idle_instances
covers one cluster (driver + workers). Runs alternate: a cluster from the pool (its nodes are
hot: the driver keeps its master and Spark Connect server, started while idle with
credentials the cluster adopts, and a worker keeps the Worker registered with that master
and its executor: docs/pools.md, "Hot Workers"), then the same cluster from fresh nodes. Before
each pool run the pool is back to its idle nodes, all warm. The first pool start is also shown
phase by phase, and a bare `spark-class` master + worker start, measured in the same run, gives
the floor (bench/start_timeline.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.cluster_start import start_and_query
from bench.report import emit
from bench.start_timeline import Timeline, bare_floor_s
from devhost.process import DevhostProcess


def _timed_start(
    w: Any,
    name: str,
    version: str,
    workers: int,
    watch: tuple[Path, dict[str, float]] | None = None,
    **where: Any,
) -> dict[str, float]:
    """One start; with `watch` (the devhost's data dir, a dict to fill) its phase timeline."""
    seen: list[Timeline] = []

    def watched(cid: str, t0: float) -> None:
        if watch is not None:
            seen.append(Timeline(watch[0], cid, workers, t0))

    c, running_s, first_query_s = start_and_query(
        w,
        on_created=watched,
        cluster_name=name,
        spark_version=version,
        num_workers=workers,
        **where,
    )
    if watch is not None and seen:
        watch[1].update(seen[0].stop())
        watch[1]["RUNNING"] = round(running_s, 2)
        watch[1]["first query result"] = round(first_query_s, 2)
    w.clusters.permanent_delete(c.cluster_id)
    return {"running_s": round(running_s, 2), "first_query_s": round(first_query_s, 2)}


def _pool_idle(w: Any, pool_id: str, n: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = w.instance_pools.get(pool_id).stats
        if (s.idle_count or 0) >= n and not (s.pending_idle_count or s.used_count):
            return
        time.sleep(0.5)
    raise TimeoutError(f"the pool did not get back to {n} idle nodes")


def run(runs: int, workers: int) -> dict[str, Any]:
    from shared.adapters.local_spark import check_java, default_spark_home

    floor_s = bare_floor_s(default_spark_home(), check_java().home)
    timeline: dict[str, float] = {}
    tmp = Path(tempfile.mkdtemp(prefix="sp-pool-"))
    h = DevhostProcess(
        tmp / "data",
        env={
            "SPARKPLANE_PROVISIONER": "local",
            "SPARKPLANE_RECONCILE_INTERVAL_S": "0.5",
            "SPARKPLANE_RECONCILER_SCHEDULE": "*/2 * * * * *",
            "SPARKPLANE_LOG_LEVEL": "WARNING",
        },
    ).start()
    rows: list[dict[str, Any]] = []
    try:
        w = h.client()
        version = w.clusters.select_spark_version(scala="2.13")
        node = "local-small"
        pool_id = w.instance_pools.create(
            instance_pool_name="bench",
            node_type_id=node,
            min_idle_instances=workers + 1,
            max_capacity=workers + 1,
        ).instance_pool_id
        for i in range(runs):
            _pool_idle(w, pool_id, workers + 1)
            time.sleep(2)  # the warm masters are up; let the machine settle
            watch = (tmp / "data", timeline) if i == 0 else None
            warm = _timed_start(w, f"warm-{i}", version, workers, watch, instance_pool_id=pool_id)
            rows.append({"run": i, "kind": "pool (warm)", **warm})
            _pool_idle(w, pool_id, workers + 1)
            time.sleep(2)
            cold = _timed_start(w, f"cold-{i}", version, workers, node_type_id=node)
            rows.append({"run": i, "kind": "cold", **cold})
            time.sleep(2)
        w.instance_pools.delete(pool_id)
    finally:
        h.stop()
        h.kill_leftovers()

    def median(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in rows if r["kind"] == kind)

    return {
        "runs": runs,
        "workers": workers,
        "node_type_id": "local-small",
        "median_running_s": {
            "pool": median("pool (warm)", "running_s"),
            "cold": median("cold", "running_s"),
        },
        "median_first_query_s": {
            "pool": median("pool (warm)", "first_query_s"),
            "cold": median("cold", "first_query_s"),
        },
        "rows": rows,
        "timeline_first_pool_run_s": timeline,
        "bare_master_worker_s": floor_s,
        "pool_running_to_bare_ratio": round(median("pool (warm)", "running_s") / floor_s, 2),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    result = run(args.runs, args.workers)
    table = Table(title="per run")
    for col in ("run", "kind", "running_s", "first_query_s"):
        table.add_column(col, justify="right")
    for r in result["rows"]:
        table.add_row(*(str(r[k]) for k in ("run", "kind", "running_s", "first_query_s")))
    Console().print(table)
    emit(
        f"warm pool nodes vs cold nodes, {args.workers} worker(s), median of {args.runs}",
        {k: v for k, v in result.items() if k != "rows"},
        None,
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
