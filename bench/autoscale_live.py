"""The autoscaling simulator against real Spark: one trace, replayed live and simulated.

    .venv/bin/python -m bench.autoscale_live --json /tmp/al20.json       # the default 20-min trace
    .venv/bin/python -m bench.autoscale_live --trace FILE.csv --compress 18 --minutes 20
    .venv/bin/python -m bench.autoscale_live --live-from /tmp/al20.json  # simulator only, again

Live: devhost as `make run` starts it (the local Spark provisioner, the autoscaler every 10 s,
agents reporting every 10 s), one autoscaling all-purpose cluster created through the REST API
with Spark FAIR scheduling (every job shares the default pool fairly, as the simulator assumes),
and each job of the trace submitted at its time as a Spark Connect query: `tasks` partitions,
each sleeping its task's duration (task_s times the simulator's own +-20% factor of that task,
bench/sim/model.py task_factor). Recorded: each job's submit and finish, each worker's life
(from the autoscaler's request to its processes' exit), and the autoscaler's RESIZING events.

Simulated: bench/sim with the "sparkplane" policy on the same jobs, the same cluster (min/max
workers, slots per worker = the node type's cores, the same autoscaling preference), starting at
the live cluster's initial size, with the boot delay measured live (the median time from a
scale-up request to the new worker's join) unless --boot is given.

The CSV format is bench.autoscale's (`submit_s,tasks,task_s[,shuffle_mb]`); the live replay
runs one stage per job, so shuffle_mb must be 0 and tasks > 0. `--compress F` divides submit
times and task durations by F; `--minutes M` keeps the jobs submitted in the first M minutes
(of the compressed trace), and the run lasts M minutes or until the last job ends.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from bench.live_compare import (
    Interval,
    JobRun,
    billed_from,
    compare,
    format_table,
    join_times,
    metrics,
)
from bench.sim.engine import Sim
from bench.sim.model import ClusterSpec, JobSpec, Stage, Trace, task_factor
from bench.sim.policies import Sparkplane
from bench.sim.traces import load_csv
from shared.domain.autoscale_settings import PREFERENCE, PREFERENCES

DEFAULT_TRACE = Path(__file__).resolve().parent / "traces" / "live-20min.csv"
JITTER = 0.2  # the simulator's task-duration spread (bench/sim/engine.py Sim(jitter=...))
# `make run`'s pacing (shared/settings.py defaults, devhost.settings.json schedules), which
# DevhostProcess would otherwise shorten for tests.
MAKE_RUN_ENV = {
    "SPARKPLANE_PROVISIONER": "local",
    "SPARKPLANE_RECONCILE_INTERVAL_S": "2",
    "SPARKPLANE_RECONCILER_SCHEDULE": "*/10 * * * * *",
    "SPARKPLANE_AUTOSCALE_SCHEDULE": "*/10 * * * * *",
    "SPARKPLANE_IDLE_SCHEDULE": "*/30 * * * * *",
    "SPARKPLANE_HEARTBEAT_S": "10",
    "SPARKPLANE_STUCK_AFTER_S": "20",
    "SPARKPLANE_BUS_LOCK_S": "30",
    "SPARKPLANE_LOG_LEVEL": "WARNING",
}
# Every job in Spark's default pool, shared fairly between the pool's jobs (without this file
# the default pool is FIFO inside, and the first job takes every free slot).
FAIR_POOLS = """<?xml version="1.0"?>
<allocations>
  <pool name="default"><schedulingMode>FAIR</schedulingMode><weight>1</weight>
    <minShare>0</minShare></pool>
</allocations>
"""


# ------------------------------------------------------------------------------------------
# The trace


def load_trace(
    path: Path, cluster: ClusterSpec, *, compress: float = 1.0, minutes: float = 20.0
) -> Trace:
    """The CSV trace, compressed, cut at `minutes`, one single-stage job per row."""
    raw = load_csv(path, cluster)
    duration = minutes * 60.0
    jobs = []
    for j in raw.jobs:
        if len(j.stages) != 1 or j.stages[0].tasks <= 0:
            raise ValueError(
                f"{path}: job {j.job_id}: the live replay runs one stage of tasks per job "
                "(shuffle_mb 0, tasks > 0)"
            )
        submit = j.submit_s / compress
        if submit >= duration:
            continue
        st = j.stages[0]
        jobs.append(JobSpec(len(jobs), submit, (Stage(st.tasks, st.task_s / compress),)))
    return Trace(path.stem, "csv", 0, tuple(jobs), cluster, duration)


def task_sleeps_ms(job: JobSpec, jitter: float = JITTER) -> list[int]:
    """Each task's sleep, by partition: the simulator's duration of the task launched k-th."""
    st = job.stages[0]
    return [
        round(st.task_s * task_factor(job.job_id, 0, k, jitter) * 1000) for k in range(st.tasks)
    ]


# ------------------------------------------------------------------------------------------
# Live


class NodeWatch:
    """Polls the cluster every second: when each worker joined (listed RUNNING), its start
    time and processes, and when the processes of a worker no longer listed have all exited
    (its release)."""

    def __init__(self, w: Any, cluster_id: str) -> None:
        self.w = w
        self.cluster_id = cluster_id
        # node id -> {"start_ms", "joined", "pids", "gone"} (wall-clock seconds)
        self.nodes: dict[str, dict[str, Any]] = {}
        self.sizes: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> NodeWatch:
        self.poll()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.poll()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.poll()
            except Exception as e:
                # A failed poll (the host busy for a moment) is retried a second later.
                print(f"node poll failed: {e}", flush=True)

    def poll(self) -> None:
        now = time.time()
        raw = self.w.api_client.do(
            "GET", "/api/2.1/clusters/get", query={"cluster_id": self.cluster_id}
        )
        listed = set()
        for e in raw.get("executors") or []:
            nid = e["node_id"]
            listed.add(nid)
            rec = self.nodes.setdefault(
                nid, {"start_ms": e.get("start_timestamp"), "joined": now, "gone": None}
            )
            rec["pids"] = [int(p) for p in str(e.get("pids", "")).split(",") if p]
        self.sizes.append((now, len(listed)))
        for nid, rec in self.nodes.items():
            if nid in listed or rec["gone"] is not None:
                continue
            if not any(psutil.pid_exists(p) for p in rec.get("pids", [])):
                rec["gone"] = now


def _run_job(url: str, job: JobSpec, t0: float, out: dict[int, float]) -> None:
    from pyspark.sql import SparkSession

    sleeps = task_sleeps_ms(job)
    n = len(sleeps)
    spark = SparkSession.builder.remote(url).create()
    try:
        arr = ",".join(str(ms) for ms in sleeps)
        # One row per partition (range of n over n slices): partition k sleeps sleeps[k].
        rows = (
            spark.range(0, n, 1, n)
            .selectExpr(
                "reflect('java.lang.Thread', 'sleep', "
                f"cast(element_at(array({arr}), cast(id AS int) + 1) AS bigint)) AS s"
            )
            .collect()
        )
        if len(rows) == n:
            out[job.job_id] = time.time() - t0
    finally:
        spark.stop()


def run_live(
    trace: Trace, node_type: str, preference: str | None, work_dir: Path | None = None
) -> dict[str, Any]:
    from databricks.sdk.service.compute import AutoScale, State

    from devhost.process import DevhostProcess

    tmp = work_dir or Path(tempfile.mkdtemp(prefix="sp-autolive-"))
    tmp.mkdir(parents=True, exist_ok=True)
    pools = tmp / "fairscheduler.xml"
    pools.write_text(FAIR_POOLS)
    spec = trace.cluster
    h = DevhostProcess(tmp / "data", env=MAKE_RUN_ENV)
    h.start()
    try:
        w = h.client()
        conf = {
            "spark.scheduler.mode": "FAIR",
            "spark.scheduler.allocation.file": str(pools),
        }
        if preference is not None:
            conf[PREFERENCE] = preference
        c = w.clusters.create(
            cluster_name="autoscale-live",
            spark_version=w.clusters.select_spark_version(scala="2.13"),
            node_type_id=node_type,
            autoscale=AutoScale(min_workers=spec.min_workers, max_workers=spec.max_workers),
            autotermination_minutes=spec.autotermination_minutes or 0,
            spark_conf=conf,
        ).result()
        cid = c.cluster_id
        if c.state != State.RUNNING:
            raise RuntimeError(f"cluster not RUNNING: {c.state} {c.state_message}")
        url = c.default_tags["SparkConnectUrl"]
        _run_job(url, JobSpec(-1, 0.0, (Stage(1, 0.1),)), time.time(), {})  # warm-up
        initial = len(c.executors or [])
        watch = NodeWatch(w, cid).start()
        t0 = time.time()
        finish: dict[int, float] = {}
        threads = []
        for job in trace.jobs:
            time.sleep(max(0.0, t0 + job.submit_s - time.time()))
            t = threading.Thread(target=_run_job, args=(url, job, t0, finish), daemon=True)
            t.start()
            threads.append(t)
        for t in threads:
            t.join(max(60.0, t0 + 4 * trace.duration_s - time.time()))
        time.sleep(max(0.0, t0 + trace.duration_s - time.time()))
        end_wall = time.time()
        watch.stop()
        events = [e.as_dict() for e in w.clusters.events(cluster_id=cid, limit=500)]
        w.clusters.permanent_delete(cid)
    finally:
        try:
            h.stop()
        finally:
            h.kill_leftovers()
    return _live_record(trace, t0, end_wall, initial, watch, events, finish)


def _live_record(
    trace: Trace,
    t0: float,
    end_wall: float,
    initial: int,
    watch: NodeWatch,
    events: list[dict],
    finish: dict[int, float],
) -> dict[str, Any]:
    """What the live run measured, in seconds from t0 (the first job's time zero)."""
    resizes = [
        {
            "t": round(e["timestamp"] / 1000 - t0, 2),
            "target": e.get("details", {}).get("target_num_workers"),
            "current": e.get("details", {}).get("current_num_workers"),
            "cause": e.get("details", {}).get("cause"),
        }
        for e in events
        if e.get("type") == "RESIZING"
    ]
    ups = upsizes(resizes)
    joined = {
        nid: (rec["start_ms"] / 1000 - t0, rec["joined"] - t0)
        for nid, rec in watch.nodes.items()
        if rec.get("start_ms")
    }
    joins = join_times(ups, joined)
    nodes = []
    for nid, rec in watch.nodes.items():
        start, _ = joined.get(nid, (0.0, 0.0))
        gone = rec["gone"]
        nodes.append(
            {
                "node_id": nid,
                "started": round(start, 2),
                "joined": round(rec["joined"] - t0, 2),
                "released": None if gone is None else round(gone - t0, 2),
            }
        )
    jobs = [
        {
            "job_id": j.job_id,
            "submit_s": j.submit_s,
            "tasks": j.stages[0].tasks,
            "task_s": j.stages[0].task_s,
            "ideal_s": round(j.ideal_s(JITTER), 3),
            "finish_s": round(finish[j.job_id], 2) if j.job_id in finish else None,
        }
        for j in trace.jobs
    ]
    return {
        "initial_workers": initial,
        "wall_s": round(end_wall - t0, 1),
        "jobs": jobs,
        "nodes": nodes,
        "resizes": resizes,
        "autoscaler": [
            {
                "t": round(e["timestamp"] / 1000 - t0, 2),
                "explanation": e.get("details", {})
                .get("reason", {})
                .get("parameters", {})
                .get("explanation"),
            }
            for e in events
            if e.get("type") == "AUTOSCALING_STATS_REPORT"
        ],
        "join_s": [round(x, 2) for x in joins],
        "sizes": [(round(t - t0, 1), n) for t, n in watch.sizes[::5]],
    }


def upsizes(resizes: list[dict[str, Any]]) -> list[float]:
    return sorted(r["t"] for r in resizes if (r["target"] or 0) > (r["current"] or 0))


def live_metrics(live: dict[str, Any], duration_s: float) -> dict[str, Any]:
    jobs = [JobRun(j["job_id"], j["submit_s"], j["ideal_s"], j["finish_s"]) for j in live["jobs"]]
    ups = upsizes(live["resizes"])
    ivs = [
        Interval(n["node_id"], billed_from(n["started"], ups), n["released"]) for n in live["nodes"]
    ]
    m = metrics(jobs, ivs, duration_s)
    m["scaling_actions"] = len(live["resizes"])
    m["max_workers_seen"] = max((n for _, n in live["sizes"]), default=0)
    return m


# ------------------------------------------------------------------------------------------
# Simulated


# The live timer's timing in the simulator (bench/sim/policies.py Sparkplane): the agent's
# report read at the autoscaler's tick is on average half a report period old (both every
# 10 s, in no fixed phase), and a RESIZING cluster is left alone until it has converged.
LIVE_TIMER = {"report_lag_s": 5.0, "hold_while_resizing": True}
SIM_VARIANTS = {"sim": {}, "sim+timer": LIVE_TIMER}


def run_sim(
    trace: Trace, boot_s: float, initial: int, timing: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[int, float]]:
    """The simulator on the same trace, starting at the live cluster's initial size; `timing`:
    Sparkplane's live-timer options (none: the simulator as bench.autoscale runs it)."""
    policy = Sparkplane(**(timing or {}))
    sim = Sim(trace, policy, boot_s, jitter=JITTER, initial_workers=initial)
    r = sim.run()
    row = {
        "node_seconds": round(r.node_hours * 3600, 1),
        "slowdown_p50": round(r.slowdown_p50, 4),
        "slowdown_p95": round(r.slowdown_p95, 4),
        "slowdown_mean": round(r.slowdown_mean, 4),
        "jobs": r.jobs,
        "jobs_finished": r.jobs_finished,
        "end_s": round(r.end_s, 1),
        "scaling_actions": r.scaling_actions,
        "boot_s": round(boot_s, 2),
    }
    return row, dict(sim.finish_s)


# ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    ap.add_argument("--compress", type=float, default=1.0, help="time compression factor")
    ap.add_argument("--minutes", type=float, default=20.0, help="length of the replay")
    ap.add_argument("--min-workers", type=int, default=1)
    ap.add_argument("--max-workers", type=int, default=4)
    ap.add_argument("--node-type", default="local-medium", help="its cores = slots per worker")
    ap.add_argument(
        "--preference",
        default="cost",
        choices=[*PREFERENCES, "none"],
        help="spark.sparkplane.autoscaling.preference of the cluster (none: not set)",
    )
    ap.add_argument("--boot", type=float, help="the simulator's boot delay (default: measured)")
    ap.add_argument("--live-from", type=Path, help="a previous run's JSON: simulate only")
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--work-dir", type=Path, help="devhost's data and logs (default: a new temporary one)"
    )
    args = ap.parse_args(argv)

    from shared.domain.node_rules import NODE_TYPES

    slots = int(next(n.num_cores for n in NODE_TYPES if n.node_type_id == args.node_type))
    pref = None if args.preference == "none" else args.preference
    cluster = ClusterSpec(
        args.min_workers,
        args.max_workers,
        slots_per_worker=slots,
        kind="all-purpose",
        autotermination_minutes=60,
        preference=pref,
    )
    trace = load_trace(args.trace, cluster, compress=args.compress, minutes=args.minutes)
    if args.live_from:
        live = json.loads(args.live_from.read_text())["live"]
    else:
        print(
            f"live: {len(trace.jobs)} jobs over {trace.duration_s:.0f} s on real local Spark ...",
            flush=True,
        )
        live = run_live(trace, args.node_type, pref, args.work_dir)
    lm = live_metrics(live, trace.duration_s)
    measured_boot = statistics.median(live["join_s"]) if live["join_s"] else None
    boot = args.boot if args.boot is not None else (measured_boot or 30.0)
    sims: dict[str, dict[str, Any]] = {}
    finishes: dict[str, dict[int, float]] = {}
    for name, timing in SIM_VARIANTS.items():
        sims[name], finishes[name] = run_sim(trace, boot, live["initial_workers"], timing)
    per_job = [
        {
            "job_id": j["job_id"],
            "submit_s": j["submit_s"],
            "ideal_s": j["ideal_s"],
            "live_s": None if j["finish_s"] is None else round(j["finish_s"] - j["submit_s"], 2),
            **{
                f"{name}_s": round(f[j["job_id"]] - j["submit_s"], 2) if j["job_id"] in f else None
                for name, f in finishes.items()
            },
        }
        for j in live["jobs"]
    ]
    result = {
        "trace": str(args.trace),
        "compress": args.compress,
        "minutes": args.minutes,
        "cluster": {
            "min_workers": args.min_workers,
            "max_workers": args.max_workers,
            "node_type": args.node_type,
            "slots_per_worker": slots,
            "preference": pref,
        },
        "worker_join_s": {
            "median": measured_boot,
            "min": min(live["join_s"], default=None),
            "max": max(live["join_s"], default=None),
            "n": len(live["join_s"]),
        },
        "live_metrics": lm,
        **sims,
        "compare": {name: compare(lm, sm) for name, sm in sims.items()},
        "per_job": per_job,
        "live": live,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    print(format_table(lm, sims))
    print(f"jobs finished: live {lm['jobs_finished']}/{lm['jobs']}", end="")
    for name, sm in sims.items():
        print(f", {name} {sm['jobs_finished']}/{sm['jobs']}", end="")
    print(f"; scaling actions: live {lm['scaling_actions']}", end="")
    for name, sm in sims.items():
        print(f", {name} {sm['scaling_actions']}", end="")
    print(
        f"\nworker join (request to RUNNING) median {measured_boot} s over "
        f"{len(live['join_s'])} workers (sim boot {boot:.1f} s); load average "
        f"{result['load_average']}"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
