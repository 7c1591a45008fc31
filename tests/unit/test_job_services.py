"""The jobs services on the SQLite store and the embedded bus, with a fake clock: the slots of
max_concurrent_runs (shared/services/job_runs.py) and the jobs timer's fires
(shared/services/job_scheduler.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shared.adapters.embedded_bus import EmbeddedBus
from shared.adapters.records import RecordProvisioner
from shared.adapters.sqlite_store import SqliteStore
from shared.services.auth import Principal
from shared.services.clusters import Catalog, ClusterService
from shared.services.jobs import JobService
from shared.services.tasks import TaskService
from shared.settings import Settings
from tests.support import FakeClock

P = Principal("w", "u", "t")
TASK = {
    "task_key": "t",
    "existing_cluster_id": "",
    "spark_python_task": {"python_file": "dbfs:/a.py"},
}


class World:
    def __init__(self, tmp: Path) -> None:
        self.clock = FakeClock()
        self.settings = Settings(data_dir=tmp)
        self.store = SqliteStore(tmp / "store.db", clock=self.clock.now_ms)
        self.bus = EmbeddedBus(tmp / "bus.db", clock=self.clock.now_ms)
        prov = RecordProvisioner(tmp / "records.db", boot_s=1, clock=self.clock.now_ms)
        self.clusters = ClusterService(
            self.store, self.bus, Catalog(prov), self.clock, self.settings
        )
        tasks = TaskService(self.store, self.clock, lambda ws, f: b"print(1)\n")
        self.jobs = JobService(
            self.store, self.bus, self.clusters, tasks, self.clock, self.settings
        )
        self.cluster_id = self.clusters.create(
            P, {"spark_version": "4.1.x-scala2.13", "node_type_id": "rec-small", "num_workers": 0}
        )

    def job(self, **settings: Any) -> int:
        task = {**TASK, "existing_cluster_id": self.cluster_id}
        return int(self.jobs.create(P, {"name": "j", "tasks": [task], **settings})["job_id"])

    def state(self, run_id: int) -> str:
        return str(self.jobs.get_run(P, run_id)["state"]["life_cycle_state"])

    def advances(self) -> list[tuple[str, int]]:
        """The `advance` messages receivable now: (message id, run id), each taken once."""
        out = []
        while (d := self.bus.receive(self.settings.jobs_queue)) is not None:
            out.append((d.message_id, int(json.loads(d.body)["run_id"])))
            self.bus.complete(d)
        return out


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def test_a_second_run_waits_for_the_slot_and_is_kicked_when_the_first_releases_it(
    world: World,
) -> None:
    job_id = world.job(max_concurrent_runs=1, queue={"enabled": True})
    first = world.jobs.run_now(P, {"job_id": job_id})["run_id"]
    second = world.jobs.run_now(P, {"job_id": job_id})["run_id"]
    assert world.state(first) == "PENDING"
    assert world.state(second) == "QUEUED"
    job, _ = world.jobs.docs.load_job("w", job_id)
    assert (job.active_runs, job.waiting_runs) == ([first], [second])
    world.advances()  # the runs' first advances

    world.jobs.cancel_run(P, {"run_id": first})
    world.jobs.runs.advance("w", first)  # the cancel is carried out: the run ends

    assert world.state(first) == "TERMINATED"
    job, _ = world.jobs.docs.load_job("w", job_id)
    assert (job.active_runs, job.waiting_runs) == ([], [second])
    # The slot is free: the waiting run is kicked, and its advance takes the slot.
    assert any(mid.startswith(f"slot:{second}:") for mid, _ in world.advances())
    world.jobs.runs.advance("w", second)
    assert world.state(second) == "PENDING"
    job, _ = world.jobs.docs.load_job("w", job_id)
    assert (job.active_runs, job.waiting_runs) == ([second], [])


def test_a_due_schedule_fires_once_per_fire_time(world: World) -> None:
    cron = {"quartz_cron_expression": "0 * * * * ?", "timezone_id": "UTC"}
    job_id = world.job(schedule=cron)
    assert world.jobs.scheduler.tick()["fired"] == 0

    world.clock.advance(61_000)
    assert world.jobs.scheduler.tick()["fired"] == 1
    assert world.jobs.scheduler.tick()["fired"] == 0  # the same minute: nothing more

    runs = world.jobs.list_runs(
        P,
        job_id=job_id,
        active_only=False,
        completed_only=False,
        limit=25,
        offset=0,
        page_token=None,
        run_type=None,
        start_time_from=None,
        start_time_to=None,
        expand_tasks=False,
    )["runs"]
    assert [r["trigger"] for r in runs] == ["PERIODIC"]
    job, _ = world.jobs.docs.load_job("w", job_id)
    assert job.pending_fire is None
