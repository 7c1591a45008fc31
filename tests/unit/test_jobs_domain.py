"""The jobs rules (pure, no I/O): settings validation, jobs/update merging, schedule firing,
admission, and the run state machine with retries, timeouts, cancels and job clusters."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest

from shared.domain import jobs as dom
from shared.domain.jobs import LifeCycle as L
from shared.domain.jobs import Result as R
from shared.domain.tasks import SubmissionStatus
from shared.errors import InvalidParameterValue

NOW = 1_750_000_000_000  # 2025-06-15
RUN_ID = 1_750_000_000_000_000
CLUSTER = {"spark_version": "4.1.x-scala2.13", "node_type_id": "small", "num_workers": 1}


def task(key: str = "t", **kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "task_key": key,
        "spark_python_task": {"python_file": "/jobs/x.py", "parameters": ["a"]},
    }
    if not any(k in kw for k in ("existing_cluster_id", "new_cluster", "job_cluster_key")):
        body["new_cluster"] = CLUSTER
    body.update(kw)
    return body


def settings(**kw: Any) -> dom.JobSettings:
    body: dict[str, Any] = {"name": "j", "tasks": [task()], **kw}
    s = dom.parse_settings(body)
    dom.validate_settings(s, now_ms=NOW)
    return s


# ---------------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"tasks": [task(), task()]}, "task_key values must be unique"),
        ({"tasks": [task(new_cluster=None)]}, "exactly one of"),
        ({"tasks": [task(existing_cluster_id="c", new_cluster=CLUSTER)]}, "exactly one of"),
        (
            {"tasks": [task(new_cluster=None, job_cluster_key="nope")]},
            "not defined in job_clusters",
        ),
        ({"tasks": [task(depends_on=[{"task_key": "zz"}])]}, "unknown task 'zz'"),
        ({"tasks": [task(depends_on=[{"task_key": "t"}])]}, "cannot depend on itself"),
        (
            {
                "tasks": [
                    task("a", depends_on=[{"task_key": "b"}]),
                    task("b", depends_on=[{"task_key": "a"}]),
                ]
            },
            "form a cycle",
        ),
        ({"tasks": [{"task_key": "n", "notebook_task": {"notebook_path": "/x"}}]}, "notebook_task"),
        (
            {"tasks": [task(spark_python_task={"python_file": "rel/x.py"})]},
            "python_file must be absolute",
        ),
        ({"tasks": [task(run_if="SOMETIMES")]}, "run_if must be one of"),
        ({"tasks": [task(task_key="has space")]}, "tasks.0.task_key"),
        ({"tasks": [task(max_retries=-2)]}, "max_retries"),
        ({"max_concurrent_runs": 1001}, "max_concurrent_runs"),
        ({"timeout_seconds": -1}, "timeout_seconds"),
        ({"timeout_seconds": "-1"}, "timeout_seconds"),
        ({"timeout_seconds": "600s"}, "timeout_seconds"),
        ({"timeout_seconds": ""}, "timeout_seconds"),
        ({"timeout_seconds": 1.5}, "timeout_seconds"),
        ({"timeout_seconds": True}, "timeout_seconds"),
        ({"max_concurrent_runs": "1001"}, "max_concurrent_runs"),
        ({"tasks": [task(max_retries="1.0")]}, "max_retries"),
        ({"tasks": [task(min_retry_interval_millis="abc")]}, "min_retry_interval_millis"),
        (
            {"schedule": {"quartz_cron_expression": "0 0 12 * *", "timezone_id": "UTC"}},
            "Invalid Quartz cron expression",
        ),
        ({"schedule": {"quartz_cron_expression": "0 0 12 * * ?"}}, "schedule.timezone_id"),
        (
            {
                "job_clusters": [
                    {"job_cluster_key": "c", "new_cluster": CLUSTER},
                    {"job_cluster_key": "c", "new_cluster": CLUSTER},
                ]
            },
            "job_cluster_key values must be unique",
        ),
    ],
)
def test_invalid_settings(body: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidParameterValue, match=message):
        s = dom.parse_settings({"name": "j", "tasks": [task()], **body})
        dom.validate_settings(s, now_ms=NOW)


def test_valid_settings_keep_unknown_fields_and_check_clusters_through_callbacks() -> None:
    s = dom.parse_settings(
        {
            "name": "nightly",
            "email_notifications": {"on_failure": ["a@b"]},
            "job_clusters": [{"job_cluster_key": "c", "new_cluster": CLUSTER}],
            "tasks": [task(new_cluster=None, job_cluster_key="c", libraries=[{"pypi": {}}])],
        }
    )
    seen: list[str] = []
    dom.validate_settings(s, now_ms=NOW, check_cluster_spec=lambda spec, where: seen.append(where))
    assert seen == ["job_clusters[0].new_cluster"]
    wire = s.wire()
    assert wire["email_notifications"] == {"on_failure": ["a@b"]}
    assert wire["tasks"][0]["libraries"] == [{"pypi": {}}]
    assert "tasks" not in s.wire(with_tasks=False)
    with pytest.raises(InvalidParameterValue, match="job_cluster_key is not allowed"):
        dom.validate_settings(s, now_ms=NOW, submit=True)


def test_numbers_sent_as_strings_are_kept_as_numbers() -> None:
    """Airflow's operators send every number as a string (`normalise_json_content`), in the
    settings, the tasks and their clusters; Databricks accepts them, and so do these rules."""
    cluster = {**CLUSTER, "num_workers": "2", "autotermination_minutes": "30"}
    s = settings(
        max_concurrent_runs="2",
        timeout_seconds="600",
        job_clusters=[{"job_cluster_key": "c", "new_cluster": cluster}],
        tasks=[
            task(
                "a",
                new_cluster=None,
                job_cluster_key="c",
                max_retries="-1",
                min_retry_interval_millis="500",
                timeout_seconds="60",
            ),
            task("b", new_cluster=cluster),
        ],
    )
    wire = s.wire()
    assert (wire["max_concurrent_runs"], wire["timeout_seconds"]) == (2, 600)
    a, b = wire["tasks"]
    assert (a["max_retries"], a["min_retry_interval_millis"], a["timeout_seconds"]) == (-1, 500, 60)
    typed = {**CLUSTER, "num_workers": 2, "autotermination_minutes": 30}
    assert b["new_cluster"] == typed
    assert wire["job_clusters"][0]["new_cluster"] == typed


def test_submit_settings_are_a_one_time_runs_tasks_name_and_timeout() -> None:
    s = dom.submit_settings({"run_name": "once", "tasks": [task()], "timeout_seconds": "600"})
    assert (s.name, s.timeout_seconds, s.max_concurrent_runs) == ("once", 600, 1)
    assert dom.submit_settings({"tasks": [task()]}).name == "Untitled"
    for body, message in (
        ({}, "tasks must be a list"),
        ({"tasks": []}, "Missing required field: tasks"),
        ({"tasks": [task()], "run_name": 5}, "run_name must be a string"),
        ({"tasks": [task()], "timeout_seconds": "1.5"}, "timeout_seconds"),
        ({"tasks": [task()], "timeout_seconds": -1}, "timeout_seconds"),
        ({"tasks": [task()], "run_name": "x" * 4097}, "name"),
    ):
        with pytest.raises(InvalidParameterValue, match=message):
            dom.submit_settings(body)


def test_a_one_time_run_shows_its_own_id_as_its_job_id() -> None:
    s = settings()
    job_run = dom.new_run(run_id=RUN_ID, workspace_id="w", settings=s, user="u", now=NOW, job_id=7)
    once = dom.new_run(
        run_id=RUN_ID, workspace_id="w", settings=s, user="u", now=NOW, run_type="SUBMIT_RUN"
    )
    assert (job_run.shown_job_id, once.shown_job_id) == (7, RUN_ID)
    assert once.job_id is None  # it holds no job's slot
    ctx = dom.reference_context(once, dom.Attempt(task_key="t", run_id=RUN_ID + 1))
    assert ctx["job.id"] == ctx["job_id"] == str(RUN_ID)
    # A job id is the millisecond clock, a run id a thousand times that: never the same.
    assert dom.shown_job_id(None, RUN_ID) > NOW


def test_update_merges_tasks_by_key_and_removes_fields() -> None:
    s = settings(tasks=[task("a"), task("b")], timeout_seconds=5)
    merged = dom.merge_update(
        s,
        {"name": "new", "tasks": [{**task("b"), "max_retries": 3}, task("c")]},
        ["timeout_seconds", "tasks/a"],
    )
    out = dom.parse_settings(merged)
    assert out.name == "new" and out.timeout_seconds == 0
    assert [t.task_key for t in out.tasks] == ["b", "c"]
    assert out.tasks[0].max_retries == 3


def test_topological_order_is_stable() -> None:
    s = settings(
        tasks=[
            task("c", depends_on=[{"task_key": "a"}, {"task_key": "b"}]),
            task("a"),
            task("b", depends_on=[{"task_key": "a"}]),
        ]
    )
    assert dom.topological_order(s.tasks) == ["a", "b", "c"]


# ---------------------------------------------------------------------------------- schedule


def scheduled_job(cron: str = "0 * * * * ?", pause: str = "UNPAUSED") -> dom.Job:
    s = settings(
        schedule={"quartz_cron_expression": cron, "timezone_id": "UTC", "pause_status": pause}
    )
    job = dom.Job(job_id=1, workspace_id="w", settings=dom.JobSettings())
    return dom.with_settings(job, s, now=NOW)


def test_a_schedule_starts_from_now_and_pausing_stops_it() -> None:
    job = scheduled_job()
    assert job.state == "SCHEDULED"
    assert job.schedule_next_ms == NOW + 60_000 - NOW % 60_000
    paused = dom.with_settings(job, scheduled_job(pause="PAUSED").settings, now=NOW)
    assert paused.state == "IDLE" and paused.schedule_next_ms is None
    # Other changes keep the schedule's position.
    renamed = job.settings.model_copy(update={"name": "other"})
    assert dom.with_settings(job, renamed, now=NOW + 10**6).schedule_next_ms == job.schedule_next_ms


def test_the_timer_fires_once_after_downtime_and_keeps_the_fire_until_cleared() -> None:
    job = scheduled_job()
    due = job.schedule_next_ms
    assert due is not None
    same, fire = dom.schedule_tick(job, now=due - 1, new_run_id=5000)
    assert fire is None and same is job
    # Three hours later: one fire, and the next one after now.
    later = due + 3 * 3600_000 + 30_000
    fired, fire = dom.schedule_tick(job, now=later, new_run_id=5000)
    assert fire == dom.PendingFire(fire_ms=due, run_id=5000)
    assert fired.schedule_last_fire_ms == due
    assert fired.schedule_next_ms == due + 3 * 3600_000 + 60_000
    # Until the service clears it, the same fire comes back (a crash never loses it) ...
    again, fire2 = dom.schedule_tick(fired, now=later + 10, new_run_id=9000)
    assert fire2 == fire and again is fired
    # ... and once cleared nothing is due before the next fire time.
    cleared = fired.model_copy(update={"pending_fire": None})
    assert dom.schedule_tick(cleared, now=later + 10, new_run_id=9000)[1] is None


# ---------------------------------------------------------------------------------- admission


def test_admission_by_slots_and_queue_order() -> None:
    job = dom.Job(job_id=1, workspace_id="w", settings=settings(max_concurrent_runs=1))
    assert dom.admission(job, 1000, queue_enabled=False) == "ADMIT"
    job = dom.take_slot(job, 1000, "ADMIT")
    assert dom.admission(job, 1000, queue_enabled=False) == "HELD"
    assert dom.admission(job, 2000, queue_enabled=False) == "SKIP"
    assert dom.admission(job, 2000, queue_enabled=True) == "WAIT"
    job = dom.take_slot(job, 3000, "WAIT")
    job = dom.take_slot(job, 2000, "WAIT")
    assert job.waiting_runs == [2000, 3000]
    job = dom.release(job, [1000])
    # The earlier queued run goes first.
    assert dom.admission(job, 3000, queue_enabled=True) == "WAIT"
    assert dom.admission(job, 2000, queue_enabled=True) == "ADMIT"
    job = dom.take_slot(job, 2000, "ADMIT")
    assert job.active_runs == [2000] and job.waiting_runs == [3000]
    zero = dom.Job(job_id=1, workspace_id="w", settings=settings(max_concurrent_runs=0))
    assert dom.admission(zero, 1000, queue_enabled=False) == "SKIP"


def test_skips_and_queued_cancels() -> None:
    r = dom.new_run(run_id=RUN_ID, workspace_id="w", settings=settings(), user="u", now=NOW)
    s = dom.skip_max_concurrent(r, now=NOW, max_concurrent=1)
    assert (s.state, s.result, s.code) == (
        L.SKIPPED,
        R.MAXIMUM_CONCURRENT_RUNS_REACHED,
        "MAX_CONCURRENT_RUNS_EXCEEDED",
    )
    assert "maximum concurrent runs" in s.message and s.final
    q = dom.wait_in_queue(r, now=NOW, max_concurrent=1)
    assert q.state == L.QUEUED and q.queue_reason
    c = dom.request_cancel(q, now=NOW + 1, user="u")
    assert (c.state, c.result, c.user_cancelled_or_timedout) == (L.TERMINATED, R.CANCELED, True)
    assert dom.request_cancel(c, now=NOW + 2, user="u") is c


# ---------------------------------------------------------------------------------- the planner


class Sim:
    """Drives `advance` with observations a test sets, like the service does."""

    def __init__(self, s: dom.JobSettings, **kw: Any) -> None:
        self.now = NOW
        self.ids: Iterator[str] = (f"cl-{i}" for i in itertools.count())
        run = dom.new_run(
            run_id=RUN_ID, workspace_id="w", settings=s, user="u", now=NOW, job_id=7, **kw
        )
        self.run = dom.admit(run, now=NOW)
        self.clusters: dict[str, dom.ClusterView] = {}
        self.subs: dict[str, SubmissionStatus | None] = {}
        self.actions: list[Any] = []

    def step(self, dt: int = 100, **timing: int) -> dom.Plan:
        self.now += dt
        obs = dom.Observed(clusters=dict(self.clusters), submissions=dict(self.subs))
        plan = dom.advance(
            self.run,
            obs,
            now=self.now,
            new_cluster_id=lambda: next(self.ids),
            timing=dom.Timing(**timing),
        )
        self.run = plan.run
        self.actions = plan.actions
        return plan

    def kinds(self) -> list[str]:
        return [type(a).__name__ for a in self.actions]

    def cluster(self, cid: str, state: str, **kw: Any) -> None:
        self.clusters[cid] = dom.ClusterView(state=state, **kw)

    def proc(self, key: str, state: str | None, **kw: Any) -> None:
        self.subs[key] = None if state is None else SubmissionStatus(state=state, **kw)  # type: ignore[arg-type]


def key_of(run: dom.Run, task_key: str = "t") -> str:
    a = run.latest()[task_key]
    assert a.submission_key is not None
    return a.submission_key


def test_a_run_on_a_new_cluster_from_start_to_success() -> None:
    sim = Sim(
        settings(
            tasks=[
                task(
                    spark_python_task={
                        "python_file": "dbfs:/jobs/x.py",
                        "parameters": ["{{job.run_id}}", "{{task.name}}", "{{job.id}}", "{{nope}}"],
                    }
                )
            ]
        )
    )
    assert sim.run.state == L.PENDING and sim.run.tasks[0].run_id == RUN_ID + 1
    plan = sim.step()
    ensure = sim.actions[0]
    assert isinstance(ensure, dom.EnsureCluster) and ensure.cluster_id == "cl-0"
    assert ensure.spec["cluster_name"] == f"job-7-run-{RUN_ID}"
    assert sim.run.owned_clusters == ["cl-0"] and plan.requeue_ms == 2000
    # Level-triggered: the same observation gives the same ensure action and no change.
    again = sim.step()
    assert not again.changed and sim.kinds() == ["EnsureCluster"]
    sim.cluster("cl-0", "PENDING")
    sim.step()
    assert sim.actions == [] and sim.run.tasks[0].state == L.PENDING
    sim.cluster("cl-0", "RUNNING", spark_context_id=42)
    sim.step()
    submit = sim.actions[0]
    assert isinstance(submit, dom.Submit)
    # The task goes to the cluster's driver node as the user wrote it: its agent fetches the
    # workspace's own file.
    assert (submit.cluster_id, submit.workspace_id) == ("cl-0", "w")
    assert submit.python_file == "dbfs:/jobs/x.py"
    assert submit.parameters == (str(RUN_ID), "t", "7", "{{nope}}")
    assert submit.env["SPARKPLANE_TASK_RUN_ID"] == str(RUN_ID + 1)
    assert sim.run.state == L.RUNNING and sim.run.exec_start == sim.now
    assert sim.run.tasks[0].spark_context_id == 42
    key = key_of(sim.run)
    sim.proc(key, "RUNNING")
    assert not sim.step().changed and sim.actions == []
    sim.proc(key, "SUCCEEDED", exit_code=0, stdout_tail="hello\n")
    sim.step()
    assert sim.kinds() == ["TerminateCluster"] and sim.run.state == L.TERMINATING
    assert sim.run.tasks[0].result == R.SUCCESS and sim.run.tasks[0].logs == "hello\n"
    sim.cluster("cl-0", "TERMINATING")
    sim.step()
    assert sim.actions == [] and sim.run.state == L.TERMINATING
    sim.cluster("cl-0", "TERMINATED", reason="JOB_FINISHED")
    plan = sim.step()
    r = sim.run
    assert (r.state, r.result, r.code, r.message) == (L.TERMINATED, R.SUCCESS, "SUCCESS", "")
    assert plan.requeue_ms is None and r.end_time == sim.now
    assert r.setup_start is not None and r.exec_start is not None and r.exec_end is not None
    assert r.setup_start <= r.exec_start <= r.exec_end <= r.end_time
    # A finished run is left alone.
    assert dom.advance(r, dom.Observed(), now=sim.now + 1, new_cluster_id=lambda: "x").actions == []


def run_to_running(sim: Sim, task_key: str = "t") -> str:
    sim.step()
    sim.cluster("cl-0", "RUNNING")
    sim.step()
    key = key_of(sim.run, task_key)
    sim.proc(key, "RUNNING")
    return key


def test_failures_are_retried_after_the_interval_then_fail_with_the_error() -> None:
    sim = Sim(settings(tasks=[task(max_retries=1, min_retry_interval_millis=5000)]))
    key = run_to_running(sim)
    stderr = 'Traceback (most recent call last):\n  File "x.py"\nValueError: bad input\n'
    sim.proc(key, "FAILED", exit_code=1, stderr_tail=stderr)
    plan = sim.step()
    first, retry = sim.run.tasks
    assert (first.state, first.result, first.message) == (
        L.TERMINATED,
        R.FAILED,
        "ValueError: bad input",
    )
    assert first.error_trace.startswith("Traceback")
    assert retry.state == L.WAITING_FOR_RETRY and retry.attempt_number == 1
    assert retry.run_id == RUN_ID + 2 and retry.not_before == sim.now + 5000
    assert sim.run.state == L.RUNNING and plan.requeue_ms == 2000
    assert sim.actions == []  # the job cluster is kept for the retry
    sim.step(dt=4000)
    assert sim.run.tasks[1].state == L.WAITING_FOR_RETRY
    sim.step(dt=1000)
    assert isinstance(sim.actions[0], dom.Submit)  # same cluster, still RUNNING
    key2 = key_of(sim.run)
    assert key2 != key
    sim.proc(key2, "FAILED", exit_code=1, stderr_tail="ValueError: bad input again\n")
    sim.step()
    assert len(sim.run.tasks) == 2 and sim.kinds() == ["TerminateCluster"]
    sim.cluster("cl-0", "TERMINATED")
    sim.step()
    r = sim.run
    assert (r.state, r.result, r.code) == (L.TERMINATED, R.FAILED, "RUN_EXECUTION_ERROR")
    assert r.message == "ValueError: bad input again"


def test_unlimited_retries_and_no_retry_after_a_cancel() -> None:
    t = dom.parse_settings({"tasks": [task(max_retries=-1)]}).tasks[0]
    a = dom.Attempt(task_key="t", run_id=1, attempt_number=99, state=L.TERMINATED, result=R.FAILED)
    assert dom.should_retry(t, a)
    assert not dom.should_retry(t, a.model_copy(update={"cancel_requested": True}))
    assert not dom.should_retry(t, a.model_copy(update={"result": R.TIMEDOUT}))
    t2 = t.model_copy(update={"retry_on_timeout": True, "max_retries": 1})
    assert dom.should_retry(t2, a.model_copy(update={"result": R.TIMEDOUT, "attempt_number": 0}))
    assert not dom.should_retry(t2, a.model_copy(update={"result": R.SUCCESS, "attempt_number": 0}))


def test_a_task_timeout_cancels_the_process_and_may_retry() -> None:
    sim = Sim(settings(tasks=[task(timeout_seconds=10, retry_on_timeout=True, max_retries=1)]))
    key = run_to_running(sim)
    sim.step(dt=9000)
    assert sim.actions == []
    sim.step(dt=1000)
    first = sim.run.tasks[0]
    assert (first.result, first.code, first.user_cancelled_or_timedout) == (
        R.TIMEDOUT,
        "CANCELED",
        True,
    )
    assert sim.actions == [dom.CancelSubmission(key, "cl-0")]
    assert sim.run.tasks[1].state == L.WAITING_FOR_RETRY
    # The process is cancelled on every evaluation until it is seen gone.
    sim.step()
    assert dom.CancelSubmission(key, "cl-0") in sim.actions
    sim.proc(key, "CANCELED", exit_code=143)
    sim.step()
    assert dom.CancelSubmission(key, "cl-0") not in sim.actions and sim.run.tasks[0].process_done


def test_the_job_timeout_ends_the_run_timedout() -> None:
    sim = Sim(settings(timeout_seconds=30))
    key = run_to_running(sim)
    sim.step(dt=30_000)
    assert dom.CancelSubmission(key, "cl-0") in sim.actions
    assert dom.TerminateCluster("cl-0") in sim.actions
    sim.proc(key, "CANCELED")
    sim.cluster("cl-0", "TERMINATED")
    sim.step()
    r = sim.run
    assert (r.state, r.result, r.user_cancelled_or_timedout) == (L.TERMINATED, R.TIMEDOUT, True)
    assert r.message == "Run timed out after 30 seconds."


def test_cancel_while_running_cancels_the_process_and_the_cluster() -> None:
    sim = Sim(settings())
    key = run_to_running(sim)
    sim.run = dom.request_cancel(sim.run, now=sim.now, user="ann")
    assert sim.run.state == L.TERMINATING
    sim.step()
    assert set(sim.kinds()) == {"CancelSubmission", "TerminateCluster"}
    assert sim.run.tasks[0].result == R.CANCELED
    sim.proc(key, "CANCELED", exit_code=143)
    sim.cluster("cl-0", "TERMINATED")
    sim.step()
    r = sim.run
    assert (r.state, r.result, r.code) == (L.TERMINATED, R.CANCELED, "USER_CANCELED")
    assert r.message == "Run was canceled by ann." and r.exec_end is not None


def test_cancel_while_the_cluster_starts() -> None:
    sim = Sim(settings())
    sim.step()
    sim.cluster("cl-0", "PENDING")
    sim.run = dom.request_cancel(sim.run, now=sim.now, user="u")
    sim.step()
    assert sim.kinds() == ["TerminateCluster"]
    sim.cluster("cl-0", "TERMINATED")
    sim.step()
    assert (sim.run.state, sim.run.result) == (L.TERMINATED, R.CANCELED)


def test_a_lost_submit_is_sent_again_and_a_lost_process_is_an_internal_error() -> None:
    sim = Sim(settings())
    run_to_running(sim)
    key = key_of(sim.run)
    sim.proc(key, None)  # saved as RUNNING, but the submit never happened (a crash)
    sim.step()
    assert isinstance(sim.actions[0], dom.Submit) and sim.actions[0].key == key
    sim.proc(key, "LOST")
    sim.step()
    a = sim.run.tasks[0]
    assert (a.state, a.result, a.code) == (L.INTERNAL_ERROR, R.FAILED, "INTERNAL_ERROR")
    sim.cluster("cl-0", "TERMINATED")
    sim.step()
    assert (sim.run.state, sim.run.result) == (L.INTERNAL_ERROR, R.FAILED)


def test_a_job_cluster_that_fails_to_start_fails_the_run() -> None:
    sim = Sim(settings())
    sim.step()
    sim.cluster("cl-0", "TERMINATED", reason="SPARK_STARTUP_FAILURE", message="boom")
    sim.step()
    a = sim.run.tasks[0]
    assert (a.state, a.code) == (L.INTERNAL_ERROR, "CLUSTER_ERROR")
    assert "SPARK_STARTUP_FAILURE" in a.message and "boom" in a.message
    assert (sim.run.state, sim.run.result, sim.run.code) == (
        L.INTERNAL_ERROR,
        R.FAILED,
        "CLUSTER_ERROR",
    )


def test_a_job_cluster_that_dies_during_the_run_fails_the_task_and_a_retry_gets_a_new_one() -> None:
    sim = Sim(settings(tasks=[task(max_retries=1)]))
    key = run_to_running(sim)
    sim.cluster("cl-0", "TERMINATED", reason="DRIVER_UNREACHABLE")
    sim.step()
    assert sim.run.tasks[0].result == R.FAILED
    assert sim.actions == [dom.CancelSubmission(key, "cl-0")]
    sim.proc(key, "CANCELED")
    sim.step()
    assert isinstance(sim.actions[0], dom.EnsureCluster) and sim.actions[0].cluster_id == "cl-1"
    assert sim.run.owned_clusters == ["cl-0", "cl-1"]


def test_a_cluster_that_never_starts_times_out() -> None:
    sim = Sim(settings())
    sim.step()
    sim.cluster("cl-0", "PENDING")
    sim.step(dt=59_000, setup_timeout_ms=60_000)
    assert sim.run.tasks[0].state == L.PENDING
    sim.step(dt=1_000, setup_timeout_ms=60_000)
    assert sim.run.tasks[0].state == L.INTERNAL_ERROR and "did not become RUNNING" in (
        sim.run.tasks[0].message
    )


def test_existing_clusters_are_started_once_and_never_terminated() -> None:
    sim = Sim(settings(tasks=[task(existing_cluster_id="mine")]))
    sim.cluster("mine", "TERMINATED")
    sim.step()
    assert sim.actions == [dom.StartCluster("mine")]
    sim.cluster("mine", "PENDING")
    sim.step()
    # (BASH_ENV: a cluster stored before shared/domain/node_env.py; a task never gets it)
    sim.cluster("mine", "RUNNING", spark_env_vars={"A": "1", "BASH_ENV": "/tmp/x.sh"})
    sim.step()
    submit = sim.actions[0]
    assert isinstance(submit, dom.Submit)
    assert submit.cluster_id == "mine" and submit.env["A"] == "1"
    assert "BASH_ENV" not in submit.env
    sim.proc(submit.key, "SUCCEEDED", exit_code=0)
    sim.step()
    assert sim.actions == [] and (sim.run.state, sim.run.result) == (L.TERMINATED, R.SUCCESS)

    gone = Sim(settings(tasks=[task(existing_cluster_id="gone")]))
    gone.step()
    a = gone.run.tasks[0]
    assert (a.state, a.code, a.message) == (
        L.INTERNAL_ERROR,
        "RESOURCE_NOT_FOUND",
        "Cluster gone does not exist",
    )

    broken = Sim(settings(tasks=[task(existing_cluster_id="b")]))
    broken.cluster("b", "TERMINATED", message="bad init script")
    broken.step()
    broken.step()  # started, but TERMINATED again
    assert broken.run.tasks[0].state == L.INTERNAL_ERROR
    assert "bad init script" in broken.run.tasks[0].message


def dag(**kw: Any) -> dom.JobSettings:
    return settings(
        job_clusters=[{"job_cluster_key": "shared", "new_cluster": CLUSTER}],
        tasks=[
            task("a", new_cluster=None, job_cluster_key="shared"),
            task("b", new_cluster=None, job_cluster_key="shared", depends_on=[{"task_key": "a"}]),
            task(
                "c",
                new_cluster=None,
                job_cluster_key="shared",
                depends_on=[{"task_key": "b"}],
                **kw,
            ),
        ],
    )


def test_tasks_run_in_dependency_order_on_a_shared_job_cluster() -> None:
    sim = Sim(dag())
    assert [a.state for a in sim.run.tasks] == [L.PENDING, L.BLOCKED, L.BLOCKED]
    key_a = run_to_running(sim, "a")
    sim.proc(key_a, "SUCCEEDED", exit_code=0)
    sim.step()
    # b starts on the same cluster, which is kept (c still needs it).
    assert sim.kinds() == ["Submit"] and sim.run.latest()["b"].cluster_id == "cl-0"
    key_b = key_of(sim.run, "b")
    sim.proc(key_b, "SUCCEEDED", exit_code=0)
    sim.step()
    key_c = key_of(sim.run, "c")
    sim.proc(key_c, "SUCCEEDED", exit_code=0)
    sim.step()
    assert sim.kinds() == ["TerminateCluster"] and sim.run.owned_clusters == ["cl-0"]


def test_an_upstream_failure_skips_downstream_tasks_unless_run_if_says_otherwise() -> None:
    sim = Sim(dag())
    key_a = run_to_running(sim, "a")
    sim.proc(key_a, "FAILED", exit_code=1, stderr_tail="RuntimeError: nope")
    sim.step()
    states = {a.task_key: (a.state, a.result) for a in sim.run.tasks}
    assert states["b"] == (L.SKIPPED, R.UPSTREAM_FAILED)
    assert states["c"] == (L.SKIPPED, R.UPSTREAM_FAILED)
    assert sim.kinds() == ["TerminateCluster"]
    sim.cluster("cl-0", "TERMINATED")
    sim.step()
    assert sim.run.result == R.FAILED
    assert sim.run.message == (
        "Task a failed with message: RuntimeError: nope "
        "This caused all downstream tasks to get skipped."
    )

    done = Sim(dag(run_if="ALL_DONE"))
    key_a = run_to_running(done, "a")
    done.proc(key_a, "FAILED", exit_code=1)
    done.step()
    latest = done.run.latest()
    # c runs (on the shared cluster, still up) although its upstream was skipped.
    assert latest["b"].result == R.UPSTREAM_FAILED and latest["c"].state == L.RUNNING


@pytest.mark.parametrize(
    ("run_if", "upstream", "met"),
    [
        ("ALL_SUCCESS", [R.SUCCESS, R.SUCCESS], True),
        ("ALL_SUCCESS", [R.SUCCESS, R.FAILED], False),
        ("ALL_DONE", [R.CANCELED], True),
        ("NONE_FAILED", [R.SUCCESS, R.EXCLUDED], True),
        ("NONE_FAILED", [R.SUCCESS, R.TIMEDOUT], False),
        ("AT_LEAST_ONE_SUCCESS", [R.FAILED, R.SUCCESS], True),
        ("ALL_FAILED", [R.FAILED, R.FAILED], True),
        ("AT_LEAST_ONE_FAILED", [R.SUCCESS, R.SUCCESS], False),
    ],
)
def test_run_if(run_if: str, upstream: list[R], met: bool) -> None:
    assert dom.run_if_met(run_if, upstream) is met


def test_cancelling_one_task_run_skips_its_downstream() -> None:
    sim = Sim(dag())
    key_a = run_to_running(sim, "a")
    a_id = sim.run.latest()["a"].run_id
    sim.run = dom.request_cancel(sim.run, now=sim.now, user="u", task_run_id=a_id)
    sim.step()
    assert dom.CancelSubmission(key_a, "cl-0") in sim.actions
    latest = sim.run.latest()
    assert latest["a"].result == R.CANCELED and latest["b"].result == R.UPSTREAM_CANCELED


def test_a_run_without_tasks_succeeds_at_once() -> None:
    r = dom.new_run(run_id=RUN_ID, workspace_id="w", settings=dom.JobSettings(), user="u", now=NOW)
    r = dom.admit(r, now=NOW)
    assert (r.state, r.result) == (L.TERMINATED, R.SUCCESS)


def test_python_params_override_and_job_parameters() -> None:
    s = settings(parameters=[{"name": "day", "default": "mon"}])
    s.tasks[0].spark_python_task.parameters = ["{{job.parameters.day}}"]  # type: ignore[union-attr]
    sim = Sim(s, job_parameters={"day": "tue"})
    sim.step()
    sim.cluster("cl-0", "RUNNING")
    sim.step()
    assert sim.actions[0].parameters == ("tue",)  # type: ignore[union-attr]
    sim2 = Sim(s, python_params=["x", "y"])
    sim2.step()
    sim2.cluster("cl-0", "RUNNING")
    sim2.step()
    assert sim2.actions[0].parameters == ("x", "y")  # type: ignore[union-attr]


SPARK_STDERR = """WARNING: Using incubator modules: jdk.incubator.vector
Using Spark's default log4j profile: org/apache/spark/log4j2-defaults.properties
26/11/26 04:26:21 INFO SparkContext: Running Spark version 4.1.4
Setting Spark log level to "WARN".
"""
# spark-submit merges the Python driver's stderr into its stdout.
SPARK_STDOUT = """{"ts": "...", "level": "ERROR", "msg": "[TABLE_OR_VIEW_NOT_FOUND] ..."}
Traceback (most recent call last):
  File "/jobs/fail.py", line 5, in <module>
    spark.sql("SELECT * FROM no_such_table").collect()
    ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/pyspark/errors/exceptions/captured.py", line 269, in deco
pyspark.errors.exceptions.captured.AnalysisException: [TABLE_OR_VIEW_NOT_FOUND] The table.
If you did not qualify the name with a schema, verify the current_schema() output.
'Project [*]
"""


@pytest.mark.parametrize(
    ("stderr", "stdout", "error"),
    [
        (
            'Traceback (most recent call last):\n  File "x"\nValueError: bad\n',
            "",
            "ValueError: bad",
        ),
        (
            SPARK_STDERR,
            SPARK_STDOUT,
            "pyspark.errors.exceptions.captured.AnalysisException: "
            "[TABLE_OR_VIEW_NOT_FOUND] The table.",
        ),
        (
            'Traceback (most recent call last):\n  File "a"\nKeyError: 1\n\nDuring handling of the '
            "above exception, another exception occurred:\n\nTraceback (most recent call last):\n"
            '  File "b"\nRuntimeError: wrapped\n',
            "",
            "RuntimeError: wrapped",
        ),
        (
            "py4j.protocol.Py4JJavaError: An error occurred\nlog line\n",
            "",
            "py4j.protocol.Py4JJavaError: An error occurred",
        ),
        ("custom exit message\n", "", "custom exit message"),
        (SPARK_STDERR, "no traceback here\n", ""),
        ("", "", ""),
    ],
)
def test_the_error_of_a_failed_program(stderr: str, stdout: str, error: str) -> None:
    got, trace = dom.error_of(stderr, stdout)
    assert got == error
    if "Traceback" in stderr + stdout:
        assert trace.startswith("Traceback") and got in trace


@pytest.mark.parametrize(
    "python_file",
    [
        "dbfs:/../x.py",
        "/Workspace/../../etc/passwd",
        "/dbfs/a/../../x.py",
        "file:/etc/passwd",
        "file:///usr/lib/python3/dist-packages/x.py",
        "s3://bucket/x.py",
        "rel/x.py",
        "/a/b\x00.py",
        "dbfs:/",
    ],
)
def test_task_files_outside_the_workspace_are_refused(python_file: str) -> None:
    body = {"name": "j", "tasks": [task(spark_python_task={"python_file": python_file})]}
    with pytest.raises(InvalidParameterValue, match="python_file"):
        dom.validate_settings(dom.parse_settings(body), now_ms=NOW)


def test_task_files_the_workspace_can_hold_are_accepted() -> None:
    for python_file in ("dbfs:/a/b.py", "/dbfs/a/b.py", "/Workspace/Users/me/etl.py", "/x.py"):
        s = settings(tasks=[task(spark_python_task={"python_file": python_file})])
        assert s.tasks[0].spark_python_task is not None
        assert s.tasks[0].spark_python_task.python_file == python_file


def test_a_task_on_a_cluster_that_is_gone_is_not_lost_but_failed_with_its_cluster() -> None:
    sim = Sim(settings(tasks=[task(existing_cluster_id="mine")]))
    sim.cluster("mine", "RUNNING")
    sim.step()
    submit = sim.actions[0]
    sim.proc(submit.key, "LOST")
    sim.cluster("mine", "TERMINATED", reason="USER_REQUEST")
    sim.step()
    a = sim.run.tasks[0]
    assert (a.result, a.code) == (R.FAILED, "CLUSTER_ERROR")
    assert "was terminated during the run (USER_REQUEST)" in a.message
    assert a.process_done


def test_task_run_ids_belong_to_their_parent() -> None:
    assert dom.parent_run_id(RUN_ID + 17) == RUN_ID
    assert dom.parent_run_id(RUN_ID) == RUN_ID
    with pytest.raises(ValueError):
        dom.new_run(run_id=RUN_ID + 1, workspace_id="w", settings=settings(), user="u", now=NOW)


def test_a_task_no_agent_takes_fails_after_the_setup_timeout() -> None:
    sim = Sim(settings(tasks=[task(existing_cluster_id="mine")]))
    sim.cluster("mine", "RUNNING")
    sim.step()
    key = key_of(sim.run)
    sim.proc(key, "PENDING")
    sim.step(dt=60_000, setup_timeout_ms=120_000)
    assert sim.run.tasks[0].state == L.RUNNING and sim.actions == []
    sim.step(dt=60_000, setup_timeout_ms=120_000)
    a = sim.run.tasks[0]
    assert (a.state, a.result, a.code) == (L.INTERNAL_ERROR, R.FAILED, "CLUSTER_ERROR")
    assert "did not start the task within 2 minutes" in a.message
    assert sim.actions == [dom.CancelSubmission(key, "mine")]  # it must not start later
