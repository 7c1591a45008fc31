"""Real local Spark clusters: time from create to RUNNING and to the first query result.

    .venv/bin/python -m bench.cluster_start --runs 5 --json bench/out/cluster_start.json

Starts devhost with the local Spark provisioner, then per run creates a 2-worker cluster with
databricks-sdk, waits for RUNNING, attaches with Spark Connect and runs a query, and measures
each node's memory (RSS of its processes and their children) before terminating it. The
first run's start is also shown phase by phase (bench/start_timeline.py), and a bare
`spark-class` master + worker start, measured in the same run, gives the floor: the table ends
with the ratio of the median time to RUNNING to that floor.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from databricks.sdk.service.compute import State
from rich.console import Console
from rich.table import Table

from bench.start_timeline import Timeline, bare_floor_s
from devhost.process import DevhostProcess


def node_rss_mb(pids: str) -> float:
    total = 0
    for pid in (int(p) for p in pids.split(",") if p):
        try:
            proc = psutil.Process(pid)
            total += sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
        except psutil.Error:
            continue
    return total / 2**20


def start_and_query(
    w: Any, *, on_created: Callable[[str, float], Any] | None = None, **create: Any
) -> tuple[Any, float, float]:
    """Create a cluster, poll it to RUNNING, run a Spark Connect query on it: (the cluster as
    GET returned it when RUNNING, seconds to RUNNING, seconds to the query's result).
    `on_created(cluster_id, t0)` is called as soon as the create returned."""
    from pyspark.sql import SparkSession

    t0 = time.perf_counter()
    cid = w.clusters.create(**create).cluster_id
    if on_created is not None:
        on_created(cid, t0)
    # Poll every 0.2 s (the SDK waiter backs off 1, 2, 3 ... s between polls, which would
    # measure its own schedule rather than the control plane).
    while (c := w.clusters.get(cid)).state != State.RUNNING:
        if c.state in (State.TERMINATED, State.ERROR):
            raise RuntimeError(f"cluster failed: {c.state_message}")
        if time.perf_counter() - t0 > 300:
            raise TimeoutError("cluster not RUNNING after 300 s")
        time.sleep(0.2)
    running_s = time.perf_counter() - t0
    spark = SparkSession.builder.remote(c.default_tags["SparkConnectUrl"]).getOrCreate()
    try:
        assert spark.range(1000).selectExpr("sum(id)").collect()[0][0] == 499500
    finally:
        spark.stop()
    return c, running_s, time.perf_counter() - t0


def run(runs: int, workers: int) -> dict[str, object]:
    from shared.adapters.local_spark import check_java, default_spark_home

    floor_s = bare_floor_s(default_spark_home(), check_java().home)
    tmp = Path(tempfile.mkdtemp(prefix="sp-start-"))
    h = DevhostProcess(
        tmp / "data",
        env={
            "SPARKPLANE_PROVISIONER": "local",
            "SPARKPLANE_RECONCILE_INTERVAL_S": "0.5",
            "SPARKPLANE_LOG_LEVEL": "WARNING",
        },
    ).start()
    rows = []
    try:
        w = h.client()
        version = w.clusters.select_spark_version(scala="2.13")
        node = w.clusters.select_node_type(local_disk=False, min_cores=1)
        timeline: dict[str, float] = {}
        for i in range(runs):
            watch: list[Timeline] = []

            def watched(
                cid: str, t0: float, first: bool = i == 0, into: list[Timeline] = watch
            ) -> None:
                if first:
                    into.append(Timeline(tmp / "data", cid, workers, t0))

            c, running_s, first_query_s = start_and_query(
                w,
                on_created=watched,
                cluster_name=f"bench-{i}",
                spark_version=version,
                node_type_id=node,
                num_workers=workers,
            )
            if watch:
                watch[0].mark("RUNNING")
                timeline = watch[0].stop()
                timeline["RUNNING"] = round(running_s, 2)
                timeline["first query result"] = round(first_query_s, 2)
            raw = w.api_client.do(
                "GET", "/api/2.1/clusters/get", query={"cluster_id": c.cluster_id}
            )
            rows.append(
                {
                    "running_s": round(running_s, 2),
                    "first_query_s": round(first_query_s, 2),
                    "driver_rss_mb": round(node_rss_mb(raw["driver"].get("pids", "")), 1),
                    "worker_rss_mb": round(
                        statistics.mean(node_rss_mb(e.get("pids", "")) for e in raw["executors"]),
                        1,
                    ),
                }
            )
            w.clusters.permanent_delete(c.cluster_id)
            time.sleep(2)
    finally:
        h.stop()
    running_median = statistics.median(r["running_s"] for r in rows)
    return {
        "runs": runs,
        "workers": workers,
        "running_s_median": running_median,
        "first_query_s_median": statistics.median(r["first_query_s"] for r in rows),
        "node_rss_mb": {
            "driver": statistics.median(r["driver_rss_mb"] for r in rows),
            "worker": statistics.median(r["worker_rss_mb"] for r in rows),
        },
        "per_run": rows,
        "timeline_first_run_s": timeline,
        "bare_master_worker_s": floor_s,
        "running_to_bare_ratio": round(running_median / floor_s, 2),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    result = run(args.runs, args.workers)
    table = Table(title=f"local Spark cluster start, {args.workers} workers, {args.runs} runs")
    for col in ("run", "running_s", "first_query_s", "driver_rss_mb", "worker_rss_mb"):
        table.add_column(col, justify="right")
    for i, r in enumerate(result["per_run"]):  # type: ignore[arg-type]
        table.add_row(str(i), *(str(r[k]) for k in list(r)))
    Console().print(table)
    Console().print(
        f"median to RUNNING {result['running_s_median']} s, to first query "
        f"{result['first_query_s_median']} s, node RSS {result['node_rss_mb']} MB"
    )
    phases = Table(title="run 0, phase by phase (s after create)")
    phases.add_column("phase")
    phases.add_column("s", justify="right")
    for phase, at in result["timeline_first_run_s"].items():  # type: ignore[attr-defined]
        phases.add_row(phase, str(at))
    Console().print(phases)
    Console().print(
        f"bare spark-class master + worker: {result['bare_master_worker_s']} s; median to "
        f"RUNNING / bare = {result['running_to_bare_ratio']} "
        f"(load average {result['load_average']})"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
