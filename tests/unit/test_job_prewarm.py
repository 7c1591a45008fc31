"""Job clusters of a scheduled run created ahead of the fire: the pure rule
(shared/domain/job_prewarm.py) and the services on the SQLite store, the record provisioner and
a fake clock (shared/services/job_prewarm.py, the fire in job_scheduler.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from databricks.sdk.service.compute import EventDetails

from shared.domain import job_prewarm as jp
from shared.domain import jobs as dom
from shared.domain.states import State
from shared.services.job_prewarm import KIND, JobPrewarm
from shared.services.jobs import JobService
from shared.services.tasks import TaskService
from tests.unit.test_utilization_service import World

MIN = 60_000
SPEC = {"spark_version": "4.1.x-scala2.13", "node_type_id": "rec-small", "num_workers": 1}
CRON = {"quartz_cron_expression": "0 * * * * ?", "timezone_id": "UTC"}
PY = {"python_file": "dbfs:/a.py"}


def settings(**extra: Any) -> dom.JobSettings:
    body = {
        "name": "j",
        "schedule": CRON,
        "job_clusters": [{"job_cluster_key": "shared", "new_cluster": SPEC}],
        "tasks": [
            {"task_key": "a", "new_cluster": SPEC, "spark_python_task": PY},
            {"task_key": "b", "job_cluster_key": "shared", "spark_python_task": PY},
            {"task_key": "c", "job_cluster_key": "shared", "spark_python_task": PY},
            {
                "task_key": "after",
                "depends_on": [{"task_key": "a"}],
                "new_cluster": SPEC,
                "spark_python_task": PY,
            },
            {"task_key": "old", "existing_cluster_id": "x", "spark_python_task": PY},
        ],
        **extra,
    }
    return dom.JobSettings.model_validate(body)


def job(next_ms: int = 10 * MIN, **extra: Any) -> dom.Job:
    fields: dict[str, Any] = {"state": "SCHEDULED", **extra}
    return dom.Job(
        job_id=7,
        workspace_id="w",
        creator_user_name="u",
        settings=settings(),
        schedule_next_ms=next_ms,
        **fields,
    )


def ids() -> Any:
    n = iter(range(100))
    return lambda: f"c{next(n)}"


P = jp.JobPrewarmParams()


# ---------------------------------------------------------------------------------- the rule


def test_the_root_tasks_clusters_are_planned_once_the_fire_is_an_expected_start_away() -> None:
    j = job()
    assert (
        jp.plan(j, now=10 * MIN - 61_000, expected_start_s=50, run_id=5000, new_cluster_id=ids())
        is None
    )
    rec = jp.plan(j, now=10 * MIN - 59_000, expected_start_s=50, run_id=5000, new_cluster_id=ids())
    assert rec is not None
    # One cluster per compute key of the root tasks: "after" waits for "a", "old" has its own.
    assert rec.clusters == {"task:a": "c0", "jc:shared": "c1"}
    assert rec.specs["task:a"]["cluster_name"] == "job-7-run-5000"  # named after its run
    assert (rec.fire_ms, rec.run_id, rec.expected_start_s, rec.lead_s) == (10 * MIN, 5000, 50, 60)
    # A fire already past, being carried out, or a paused job: nothing.
    assert jp.plan(j, now=10 * MIN, expected_start_s=50, run_id=5000, new_cluster_id=ids()) is None
    firing = job(pending_fire=dom.PendingFire(fire_ms=9 * MIN, run_id=4000))
    assert (
        jp.plan(firing, now=9 * MIN, expected_start_s=590, run_id=5000, new_cluster_id=ids())
        is None
    )
    busy = job(active_runs=[3000])  # max_concurrent_runs 1: the fired run would wait
    assert (
        jp.plan(busy, now=9 * MIN, expected_start_s=590, run_id=5000, new_cluster_id=ids()) is None
    )
    opted_out = job()
    opted_out.settings.tags[jp.OPT_OUT_TAG] = "False"
    assert (
        jp.plan(opted_out, now=9 * MIN, expected_start_s=590, run_id=5000, new_cluster_id=ids())
        is None
    )
    paused = job(state="IDLE")
    assert (
        jp.plan(paused, now=9 * MIN, expected_start_s=590, run_id=5000, new_cluster_id=ids())
        is None
    )


def test_the_fire_takes_the_reserved_run_id_and_adopts_clusters_whose_spec_is_unchanged() -> None:
    j = job()
    rec = jp.plan(j, now=9 * MIN, expected_start_s=110, run_id=5000, new_cluster_id=ids())
    assert rec is not None
    assert jp.fire_run_id(rec, 10 * MIN, 9999) == 5000
    assert jp.fire_run_id(rec, 11 * MIN, 9999) == 9999  # another fire (collapsed catch-up)

    def fired(s: dom.JobSettings, run_id: int = 5000) -> dom.Run:
        return dom.new_run(
            run_id=run_id,
            workspace_id="w",
            settings=s,
            user="u",
            now=10 * MIN,
            job_id=7,
            trigger="PERIODIC",
            fire_ms=10 * MIN,
        )

    run = jp.adopt(fired(j.settings), rec)
    assert run.clusters == {"task:a": "c0", "jc:shared": "c1"}
    assert run.owned_clusters == ["c0", "c1"]  # terminated at the run's end like its own
    # The task's cluster spec changed since: that cluster is not adopted.
    changed = settings()
    changed.tasks[0].new_cluster = {**SPEC, "num_workers": 3}
    assert jp.adopt(fired(changed), rec).clusters == {"jc:shared": "c1"}
    assert jp.adopt(fired(j.settings, run_id=6000), rec).clusters == {}


def test_the_sweep_ends_clusters_no_run_will_use() -> None:
    j = job()
    rec = jp.plan(j, now=9 * MIN, expected_start_s=110, run_id=5000, new_cluster_id=ids())
    assert rec is not None
    both = ("c0", "c1")

    def judge(job_: dom.Job | None, run: dom.Run | None = None, now: int = 9 * MIN) -> jp.Sweep:
        return jp.sweep(rec, job_, run, now=now, p=P)

    assert judge(j) == jp.KEEP  # waiting for its fire
    assert judge(j, now=10 * MIN + P.grace_ms) == jp.Sweep(
        both, finish=True, why="the fire did not happen"
    )
    assert judge(None).terminate == both  # the job was deleted
    assert judge(job(state="IDLE")).terminate == both  # paused
    assert judge(job(next_ms=12 * MIN)).terminate == both  # schedule changed
    firing = job(next_ms=11 * MIN, pending_fire=dom.PendingFire(fire_ms=10 * MIN, run_id=5000))
    assert judge(firing) == jp.KEEP  # the fire is being carried out

    run = dom.new_run(
        run_id=5000,
        workspace_id="w",
        settings=j.settings,
        user="u",
        now=10 * MIN,
        job_id=7,
        trigger="PERIODIC",
        fire_ms=10 * MIN,
    )
    moved = job(next_ms=11 * MIN)
    run.owned_clusters = ["c0", "c1"]
    assert judge(moved, run) == jp.KEEP  # queued, both adopted: they wait with it
    run.owned_clusters = ["c0"]
    assert judge(moved, run) == jp.Sweep(("c1",), why="the run waits")
    run.admitted = True
    assert judge(moved, run) == jp.Sweep(("c1",), finish=True, why="adopted by the run")
    run.state = dom.L.SKIPPED
    assert judge(moved, run) == jp.Sweep(both, finish=True, why="the run ended")
    run.job_id = 8  # the id went to another job's run: not ours
    assert judge(moved, run).terminate == both
    rec.done = True
    assert judge(j).terminate == both  # a sweep that crashed after marking it: again


def test_the_creating_event_names_the_schedule() -> None:
    rec = jp.plan(job(), now=9 * MIN, expected_start_s=75.3, run_id=5000, new_cluster_id=ids())
    assert rec is not None
    d = jp.creation_details(rec, 9 * MIN)
    assert d["cause"] == "SCHEDULED_RUN"
    assert (d["job_id"], d["fire_time"], d["expected_start_s"]) == (7, 10 * MIN, 75.3)
    assert d["lead_s"] == 85.3
    assert d["schedule"] == "0 * * * * ? UTC"
    assert "fires in 60 s" in d["why"]
    # What the SDK makes of it (it parses `reason` as a TerminationReason: none here).
    assert EventDetails.from_dict(d).cause is None  # an unknown cause reads as None


# ---------------------------------------------------------------------------------- services


class Jobs:
    def __init__(self, tmp: Path) -> None:
        self.w = World(tmp)
        tasks = TaskService(self.w.store, self.w.clock, lambda ws, f: b"print(1)\n")
        self.jobs = JobService(
            self.w.store, self.w.bus, self.w.clusters, tasks, self.w.clock, self.w.settings
        )
        self.pre = self.jobs.scheduler.job_prewarm
        assert self.pre is not None

    def create(self, **extra: Any) -> int:
        body = {
            "name": "j",
            "schedule": CRON,
            "tasks": [{"task_key": "a", "new_cluster": SPEC, "spark_python_task": PY}],
            **extra,
        }
        return int(self.jobs.create(self.w.user, body)["job_id"])

    def to_next_minute(self, before_ms: int = 0) -> None:
        c = self.w.clock
        c.ms = (c.ms // MIN + 1) * MIN - before_ms

    def clusters(self) -> dict[str, State]:
        page = self.w.store.list("cluster", "w", page_size=100, page_token=None)
        return {r.id: State(r.body["state"]) for r in page.items}

    def run_up(self, cid: str) -> None:
        for _ in range(4):
            self.w.lifecycle.reconcile("w", cid)
            self.w.clock.ms += 500

    def record(self, job_id: int) -> jp.Prewarmed | None:
        assert self.pre is not None
        return self.pre.load("w", job_id)


@pytest.fixture
def js(tmp_path: Path) -> Jobs:
    return Jobs(tmp_path)


def test_the_fired_run_starts_its_task_at_once_on_the_cluster_created_ahead(js: Jobs) -> None:
    js.to_next_minute(before_ms=50_000)
    job_id = js.create()
    js.jobs.scheduler.tick()  # the fire is 50 s away; a start takes ~300 s (nothing learned)
    rec = js.record(job_id)
    assert rec is not None
    (cid,) = rec.clusters.values()
    assert js.clusters() == {cid: State.PENDING}
    creating = next(e for e in js.w.events(cid) if e["type"] == "CREATING")
    assert creating["details"]["cause"] == "SCHEDULED_RUN"
    assert creating["details"]["fire_time"] == rec.fire_ms
    assert creating["details"]["expected_start_s"] == 300  # nothing learned yet: the default
    assert creating["details"]["lead_s"] == 310
    js.run_up(cid)
    assert js.clusters()[cid] == State.RUNNING

    js.w.clock.ms = rec.fire_ms
    assert js.jobs.scheduler.tick()["fired"] == 1
    run = js.jobs.get_run(js.w.user, rec.run_id)  # the run id reserved for the fire
    js.jobs.runs.advance("w", rec.run_id)
    run = js.jobs.get_run(js.w.user, rec.run_id)
    task = run["tasks"][0]
    assert task["state"]["life_cycle_state"] == "RUNNING"
    assert task["cluster_instance"]["cluster_id"] == cid
    assert task["setup_duration"] == 0  # no cluster start after the fire
    assert run["start_time"] - rec.fire_ms == 0
    assert set(js.clusters()) == {cid}  # no second cluster for this fire
    js.jobs.scheduler.tick()
    assert js.record(job_id) is None  # adopted: the record is done with

    # The run ends (cancelled here): its adopted cluster is terminated like a job cluster.
    js.jobs.cancel_run(js.w.user, {"run_id": rec.run_id})
    js.jobs.runs.advance("w", rec.run_id)
    assert js.clusters()[cid] in (State.TERMINATING, State.TERMINATED)
    ends = [e for e in js.w.events(cid) if e["type"] == "TERMINATING"]
    assert ends and ends[0]["details"]["reason"]["code"] == "JOB_FINISHED"


def test_two_timer_instances_and_repeated_ticks_create_one_cluster_per_fire(js: Jobs) -> None:
    js.to_next_minute(before_ms=40_000)
    job_id = js.create()
    other = JobPrewarm(js.jobs.docs, js.jobs.scheduler.prewarm)  # type: ignore[arg-type]
    assert js.pre is not None
    for _ in range(3):
        js.pre.tick()
        other.tick()
        js.w.clock.ms += 1000
    rec = js.record(job_id)
    assert rec is not None
    assert set(js.clusters()) == set(rec.clusters.values())
    assert len(js.clusters()) == 1


@pytest.mark.parametrize("how", ["pause", "delete", "reschedule", "never fired"])
def test_a_pre_created_cluster_no_run_will_use_is_terminated(js: Jobs, how: str) -> None:
    js.to_next_minute(before_ms=40_000)
    job_id = js.create()
    js.jobs.scheduler.tick()
    rec = js.record(job_id)
    assert rec is not None
    (cid,) = rec.clusters.values()
    js.run_up(cid)
    cron = {**CRON, "quartz_cron_expression": "0 0 3 * * ?"}
    match how:
        case "pause":
            paused = {**CRON, "pause_status": "PAUSED"}
            js.jobs.update(js.w.user, {"job_id": job_id, "new_settings": {"schedule": paused}})
        case "delete":
            js.jobs.delete(js.w.user, {"job_id": job_id})
        case "reschedule":
            js.jobs.update(js.w.user, {"job_id": job_id, "new_settings": {"schedule": cron}})
        case "never fired":
            js.w.clock.ms = rec.fire_ms + jp.JobPrewarmParams().grace_ms
            assert js.pre is not None
            js.pre.tick()  # the jobs timer itself is late or down: only the sweep runs
    if how != "never fired":
        js.jobs.scheduler.tick()
    assert js.clusters()[cid] in (State.TERMINATING, State.TERMINATED)
    assert js.w.store.get(KIND, "w", f"{job_id:020d}") is None


def test_a_fire_within_the_margin_is_sent_for_its_exact_time(js: Jobs) -> None:
    js.to_next_minute(before_ms=30_000)
    job_id = js.create()
    js.w.bus.sent.clear()
    js.jobs.scheduler.tick()
    assert not [m for m in js.w.bus.sent if b'"fire"' in m.body]  # 30 s away: not yet
    js.w.clock.ms += 25_000
    js.jobs.scheduler.tick()
    (msg,) = [m for m in js.w.bus.sent if b'"fire"' in m.body]
    fire_ms = (js.w.clock.ms // MIN + 1) * MIN
    assert msg.scheduled_enqueue_ms == fire_ms
    assert msg.message_id == f"fire:w:{job_id}:{fire_ms}"
    js.w.clock.ms = fire_ms
    js.jobs.runs.handle(msg.body)  # delivered at its time: the run is created then
    job, _ = js.jobs.docs.load_job("w", job_id)
    assert job.schedule_last_fire_ms == fire_ms
    assert json.loads(msg.body)["type"] == "fire"


def test_a_job_tagged_out_gets_no_cluster_ahead_and_its_run_creates_one_at_the_fire(
    js: Jobs,
) -> None:
    js.to_next_minute(before_ms=40_000)
    job_id = js.create(tags={jp.OPT_OUT_TAG: "false"})
    js.jobs.scheduler.tick()
    assert js.record(job_id) is None and js.clusters() == {}
    js.w.clock.ms += 40_000
    assert js.jobs.scheduler.tick()["fired"] == 1
    (run,) = js.jobs.list_runs(
        js.w.user,
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
    js.jobs.runs.advance("w", run["run_id"])
    (cid,) = js.clusters()  # created by the run, at the fire, as before
    js.run_up(cid)  # 2 s
    js.jobs.runs.advance("w", run["run_id"])
    got = js.jobs.get_run(js.w.user, run["run_id"])
    task = got["tasks"][0]
    # The task run waited 2 s for its cluster (setup_duration, from its start_time); the run
    # itself reports 0, as Databricks does for a multitask run.
    assert task["state"]["life_cycle_state"] == "RUNNING"
    assert (task["start_time"], task["setup_duration"]) == (got["start_time"], 2000)
    assert (got["setup_duration"], got["execution_duration"], got["queue_duration"]) == (0, 0, 0)


def test_a_record_whose_cluster_a_crash_never_created_still_gives_one_cluster(js: Jobs) -> None:
    js.to_next_minute(before_ms=40_000)
    job_id = js.create()
    job, _ = js.jobs.docs.load_job("w", job_id)
    assert js.pre is not None
    # A timer instance wrote the record and crashed before creating the cluster.
    rec = jp.plan(
        job, now=js.w.clock.ms, expected_start_s=300, run_id=7000, new_cluster_id=lambda: "c-1"
    )
    assert rec is not None
    js.pre.records.create("w", f"{job_id:020d}", rec)
    js.w.clock.ms = rec.fire_ms
    assert js.jobs.scheduler.tick()["fired"] == 1  # the fire comes first in the tick
    js.jobs.runs.advance("w", 7000)  # the run creates its adopted cluster under the same id
    js.jobs.scheduler.tick()
    js.jobs.runs.advance("w", 7000)
    assert list(js.clusters()) == ["c-1"]
    run = js.jobs.get_run(js.w.user, 7000)
    assert run["tasks"][0]["cluster_instance"]["cluster_id"] == "c-1"
