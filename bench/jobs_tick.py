"""One jobs timer tick over many scheduled jobs, on the embedded store.

    .venv/bin/python -m bench.jobs_tick --jobs 5000 --json bench/out/jobs_tick.json

Writes N SCHEDULED jobs (an hourly cron, next fires spread over the next hour) into a fresh
SQLite store: a third run on a job cluster (pre-warmed ahead of their fires), a third on an
existing all-purpose cluster (terminated, started ahead of their fires), a third on a running
one. Then times `Scheduler.tick()` (the jobs timer function's work: fire due schedules, heal
slot ledgers, re-kick stuck runs, and both pre-warming passes) on a clock that does not move,
so every tick reads the same jobs and none fires.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.report import emit
from shared.adapters.records import RecordProvisioner
from shared.adapters.sqlite_store import SqliteStore
from shared.domain import cluster as cdom
from shared.domain import jobs as dom
from shared.domain.states import State
from shared.ports import OutMessage
from shared.services.clusters import Catalog, ClusterService
from shared.services.job_docs import JOB, job_doc_id
from shared.services.jobs import JobService
from shared.services.tasks import TaskService
from shared.settings import Settings

NOW_MS = 1_800_000_000_000
HOUR_MS = 3_600_000
SPEC = {"spark_version": "4.1.x-scala2.13", "node_type_id": "rec-small", "num_workers": 1}


class NullBus:
    def send(self, queue: str, messages: Sequence[OutMessage]) -> None:
        pass


class Clock:
    def now_ms(self) -> int:
        return NOW_MS


def populate(store: SqliteStore, n: int, rng: random.Random) -> None:
    for state, cid in ((State.TERMINATED, "stopped"), (State.RUNNING, "running")):
        c = cdom.create(
            cluster_id=cid, workspace_id="w", spec=cdom.parse_spec(SPEC), user="u", now=NOW_MS
        )
        c.state, c.pending_events = state, []
        store.create("cluster", "w", cid, c.doc())
    for i in range(n):
        target: dict[str, object] = (
            {"new_cluster": SPEC}
            if i % 3 == 0
            else {"existing_cluster_id": "stopped" if i % 3 == 1 else "running"}
        )
        task = {"task_key": "t", "spark_python_task": {"python_file": "/a.py"}, **target}
        settings = {
            "name": f"j{i}",
            "schedule": {"quartz_cron_expression": "0 0 * * * ?", "timezone_id": "UTC"},
            "tasks": [task],
        }
        job = dom.Job.model_validate(
            {
                "job_id": i + 1,
                "workspace_id": "w",
                "settings": settings,
                "state": "SCHEDULED",
                "schedule_next_ms": NOW_MS + rng.randint(30_000, HOUR_MS),
            }
        )
        store.create(JOB, "w", job_doc_id(job.job_id), job.model_dump(mode="json"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=5000)
    ap.add_argument("--ticks", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp))
        store = SqliteStore(Path(tmp) / "store.db", clock=Clock().now_ms)
        populate(store, args.jobs, random.Random(7))
        prov = RecordProvisioner(Path(tmp) / "records.db", clock=Clock().now_ms)
        clusters = ClusterService(store, NullBus(), Catalog(prov), Clock(), settings)
        tasks = TaskService(store, Clock(), lambda ws, f: b"")
        jobs = JobService(store, NullBus(), clusters, tasks, Clock(), settings)
        seconds, cpu = [], []
        for _ in range(args.ticks):
            t0, c0 = time.perf_counter(), time.process_time()
            got = jobs.scheduler.tick()
            seconds.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            assert got["fired"] == 0
    emit(
        f"jobs timer tick, {args.jobs} scheduled jobs",
        {
            "jobs": args.jobs,
            "ticks": args.ticks,
            "tick_s_median": round(statistics.median(seconds), 3),
            "tick_cpu_s_median": round(statistics.median(cpu), 3),
            "tick_s_all": [round(s, 3) for s in seconds],
        },
        args.json,
    )


if __name__ == "__main__":
    main()
