"""The Jobs API driven by databricks-sdk against a devhost subprocess (record provisioner: job
clusters are records, so a task runs as plain `python <file>`)."""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest
from databricks.sdk import WorkspaceClient
from databricks.sdk.errors import InvalidParameterValue, NotFound, ResourceDoesNotExist
from databricks.sdk.service import compute, jobs

from devhost.process import DevhostProcess
from shared.adapters.sqlite_store import SqliteStore
from tests.support import http, wait_for

V = "4.1.x-scala2.13"
# Planted in the control plane's environment: no task may see it.
PROBE = "AWS_SECRET_ACCESS_KEY"
T = timedelta(seconds=60)

OK = """
import sys, pathlib
out, n = pathlib.Path(sys.argv[1]), int(sys.argv[2])
out.write_text(str(sum(i * i for i in range(n))))
print("wrote", out)
"""
FAIL = """
import sys
print("starting")
raise ValueError("bad input: " + sys.argv[1])
"""
SLEEP = """
import sys, time
print("sleeping", flush=True)
time.sleep(float(sys.argv[1]))
"""


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevhostProcess]:
    h = DevhostProcess(
        tmp_path_factory.mktemp("jobs") / "data",
        env={
            "SPARKPLANE_JOBS_SCHEDULE": "*/1 * * * * *",
            "SPARKPLANE_JOBS_POLL_INTERVAL_S": "0.3",
            "SPARKPLANE_JOBS_STUCK_AFTER_S": "5",
            "SPARKPLANE_JOBS_KILL_GRACE_S": "2",
            PROBE: "host-only",
            # The schedule tests fire every 5 s, below the default min_schedule_period_s.
            "SPARKPLANE_QUOTA_DEFAULTS": '{"min_schedule_period_s": 1}',
        },
    ).start()
    try:
        yield h
    finally:
        h.close()


@pytest.fixture(scope="module")
def w(host: DevhostProcess) -> WorkspaceClient:
    return host.client()


@pytest.fixture(scope="module")
def scripts(w: WorkspaceClient) -> dict[str, str]:
    """The scripts, uploaded as users do: dbfs:/ paths the driver's agent fetches."""
    out = {}
    for name, text in (("ok", OK), ("fail", FAIL), ("sleep", SLEEP)):
        w.dbfs.upload(f"/scripts/{name}.py", io.BytesIO(text.encode()), overwrite=True)
        out[name] = f"dbfs:/scripts/{name}.py"
    return out


def cluster(**kw: Any) -> compute.ClusterSpec:
    return compute.ClusterSpec(spark_version=V, node_type_id="rec-small", num_workers=1, **kw)


def py_task(key: str, file: str, params: list[str], **kw: Any) -> jobs.Task:
    return jobs.Task(
        task_key=key,
        spark_python_task=jobs.SparkPythonTask(python_file=file, parameters=params),
        **kw,
    )


def gone(p: psutil.Process) -> bool:
    try:
        return p.status() == psutil.STATUS_ZOMBIE  # ended, not yet reaped by its parent
    except psutil.NoSuchProcess:
        return True


def task_pid(host: DevhostProcess, cluster_id: str, task_run_id: int) -> int:
    """The pid of a task's process group, from the driver agent's task directory."""
    info = host.data_dir / "record-agents" / cluster_id / "tasks" / str(task_run_id) / "cmd.json"
    return int(json.loads(info.read_text())["pid"])


def raw(host: DevhostProcess, path: str, **params: Any) -> dict[str, Any]:
    r = http.get(host.url + path, params=params, headers={"Authorization": f"Bearer {host.token}"})
    return r.json()


def test_scheduled_job_on_a_job_cluster(
    host: DevhostProcess, w: WorkspaceClient, scripts: dict[str, str], tmp_path: Path
) -> None:
    job = w.jobs.create(
        name="squares",
        schedule=jobs.CronSchedule(
            quartz_cron_expression="*/5 * * * * ?",
            timezone_id="Europe/Berlin",
            pause_status=jobs.PauseStatus.UNPAUSED,
        ),
        job_clusters=[jobs.JobCluster(job_cluster_key="main", new_cluster=cluster())],
        tasks=[
            py_task(
                "square_sum",
                scripts["ok"],
                [str(tmp_path / "{{job.run_id}}.txt"), "100"],
                job_cluster_key="main",
            )
        ],
        max_concurrent_runs=1,
        queue=jobs.QueueSettings(enabled=True),
    )
    got = w.jobs.get(job.job_id)
    assert got.settings.name == "squares" and got.settings.tasks[0].task_key == "square_sum"
    assert got.settings.schedule.pause_status == jobs.PauseStatus.UNPAUSED
    assert got.creator_user_name

    def periodic_success() -> jobs.BaseRun | None:
        for r in w.jobs.list_runs(job_id=job.job_id):
            if r.trigger == jobs.TriggerType.PERIODIC and r.state.result_state is not None:
                return r
        return None

    periodic = wait_for("a PERIODIC run to finish", periodic_success)
    assert periodic.state.life_cycle_state == jobs.RunLifeCycleState.TERMINATED
    assert periodic.state.result_state == jobs.RunResultState.SUCCESS, periodic.state
    assert (tmp_path / f"{periodic.run_id}.txt").read_text() == str(sum(i * i for i in range(100)))
    full = w.jobs.get_run(periodic.run_id)
    assert full.schedule.quartz_cron_expression == "*/5 * * * * ?"
    assert full.number_in_job == full.run_id and full.run_duration is not None

    # Pause: no more PERIODIC runs; then run-now with overriding python_params.
    w.jobs.update(
        job.job_id,
        new_settings=jobs.JobSettings(
            schedule=jobs.CronSchedule(
                quartz_cron_expression="*/5 * * * * ?",
                timezone_id="Europe/Berlin",
                pause_status=jobs.PauseStatus.PAUSED,
            )
        ),
    )
    run = w.jobs.run_now_and_wait(
        job.job_id, python_params=[str(tmp_path / "now.txt"), "10"], timeout=T
    )
    assert run.state.result_state == jobs.RunResultState.SUCCESS, run.state
    assert run.trigger == jobs.TriggerType.ONE_TIME
    assert (tmp_path / "now.txt").read_text() == "285"
    task = run.tasks[0]
    assert task.task_key == "square_sum" and task.attempt_number == 0
    out = w.jobs.get_run_output(task.run_id)
    assert "wrote" in out.logs and out.error is None
    assert out.metadata.run_id == task.run_id and out.metadata.job_run_id == run.run_id
    assert w.jobs.get_run_output(run.run_id).logs == out.logs  # a one-task run's own output

    # The job cluster ended with the run, and cannot be started again.
    cid = task.cluster_instance.cluster_id
    c = w.clusters.get(cid)
    assert c.cluster_source == compute.ClusterSource.JOB
    assert c.state == compute.State.TERMINATED
    assert c.termination_reason.code == compute.TerminationReasonCode.JOB_FINISHED
    with pytest.raises(InvalidParameterValue, match="job cluster"):
        w.clusters.start(cid)

    # Paused: the PERIODIC runs stop.
    time.sleep(1.5)
    count = len(list(w.jobs.list_runs(job_id=job.job_id)))
    time.sleep(6)
    assert len(list(w.jobs.list_runs(job_id=job.job_id))) == count

    # runs/list paging (newest first), and the last page leaves next_page_token out.
    ids = [r.run_id for r in w.jobs.list_runs(job_id=job.job_id, limit=1)]
    assert len(ids) == count >= 2 and len(set(ids)) == len(ids)
    assert ids == sorted(ids, reverse=True) and ids[0] == run.run_id
    pages, token = [], None
    while True:
        params: dict[str, Any] = {"job_id": job.job_id, "limit": 1}
        if token:
            params["page_token"] = token
        page = raw(host, "/api/2.2/jobs/runs/list", **params)
        pages.append(page)
        token = page.get("next_page_token")
        if not token:
            break
    assert "next_page_token" not in pages[-1] and pages[-1]["has_more"] is False
    assert [r["run_id"] for p in pages for r in p["runs"]] == ids
    assert all(r.job_id == job.job_id for r in w.jobs.list_runs(job_id=job.job_id, limit=2))
    assert {r.run_id for r in w.jobs.list_runs(job_id=job.job_id, completed_only=True)} == set(ids)
    assert not list(w.jobs.list_runs(job_id=job.job_id, active_only=True))
    # runs/get: `state` always there, and no next_page_token (the SDK would loop on it).
    body = raw(host, "/api/2.2/jobs/runs/get", run_id=run.run_id)
    assert body["state"]["life_cycle_state"] == "TERMINATED" and "next_page_token" not in body
    # 2.1 serves the same bodies.
    assert raw(host, "/api/2.1/jobs/get", job_id=job.job_id)["settings"]["name"] == "squares"


def test_a_failing_script_is_retried_and_fails_with_its_error(
    w: WorkspaceClient, scripts: dict[str, str]
) -> None:
    job = w.jobs.create(
        name="fails",
        tasks=[
            py_task(
                "bad",
                scripts["fail"],
                ["42"],
                new_cluster=cluster(),
                max_retries=1,
                min_retry_interval_millis=200,
            )
        ],
    )
    run = w.jobs.run_now_and_wait(job.job_id, timeout=T)
    assert run.state.life_cycle_state == jobs.RunLifeCycleState.TERMINATED
    assert run.state.result_state == jobs.RunResultState.FAILED
    assert "ValueError: bad input: 42" in run.state.state_message
    assert run.status.termination_details.code == jobs.TerminationCodeCode.RUN_EXECUTION_ERROR
    attempts = [t for t in run.tasks if t.task_key == "bad"]
    assert [t.attempt_number for t in attempts] == [0, 1]
    assert all(t.state.result_state == jobs.RunResultState.FAILED for t in attempts)
    assert attempts[0].run_id != attempts[1].run_id
    out = w.jobs.get_run_output(attempts[-1].run_id)
    assert out.error == "ValueError: bad input: 42"
    assert "Traceback" in out.error_trace and "starting" in out.logs
    assert w.jobs.get_run(attempts[0].run_id).state.result_state == jobs.RunResultState.FAILED


def test_cancel_timeout_and_idempotent_submit(
    w: WorkspaceClient, scripts: dict[str, str], host: DevhostProcess
) -> None:
    # runs/submit on a new cluster, cancelled while it runs.
    run_id = w.jobs.submit(
        run_name="sleepy",
        tasks=[
            jobs.SubmitTask(
                task_key="nap",
                spark_python_task=jobs.SparkPythonTask(
                    python_file=scripts["sleep"], parameters=["60"]
                ),
                new_cluster=cluster(),
            )
        ],
    ).run_id
    wait_for(
        "the task to run",
        lambda: w.jobs.get_run(run_id).state.life_cycle_state == jobs.RunLifeCycleState.RUNNING,
    )
    task = w.jobs.get_run(run_id).tasks[0]
    wait_for("its output", lambda: "sleeping" in (w.jobs.get_run_output(task.run_id).logs or ""))
    pid = task_pid(host, task.cluster_instance.cluster_id, task.run_id)
    run = w.jobs.cancel_run_and_wait(run_id, timeout=T)
    assert run.state.life_cycle_state == jobs.RunLifeCycleState.TERMINATED
    assert run.state.result_state == jobs.RunResultState.CANCELED
    assert run.state.user_cancelled_or_timedout is True
    assert run.run_type == jobs.RunType.SUBMIT_RUN
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    c = w.clusters.get(run.tasks[0].cluster_instance.cluster_id)
    assert c.state == compute.State.TERMINATED
    assert c.termination_reason.code == compute.TerminationReasonCode.JOB_FINISHED

    # timeout_seconds: TIMEDOUT.
    run = w.jobs.submit_and_wait(
        run_name="too slow",
        timeout_seconds=1,
        tasks=[
            jobs.SubmitTask(
                task_key="nap",
                spark_python_task=jobs.SparkPythonTask(
                    python_file=scripts["sleep"], parameters=["60"]
                ),
                new_cluster=cluster(),
            )
        ],
        timeout=T,
    )
    assert run.state.result_state == jobs.RunResultState.TIMEDOUT
    assert "timed out" in run.state.state_message

    # idempotency_token: a retried submit answers the same run.
    task = jobs.SubmitTask(
        task_key="quick",
        spark_python_task=jobs.SparkPythonTask(python_file=scripts["sleep"], parameters=["0"]),
        new_cluster=cluster(),
    )
    first = w.jobs.submit(run_name="once", tasks=[task], idempotency_token="tok-1").run_id
    again = w.jobs.submit(run_name="once", tasks=[task], idempotency_token="tok-1").run_id
    assert first == again
    assert w.jobs.wait_get_run_job_terminated_or_skipped(first, timeout=T).state.result_state == (
        jobs.RunResultState.SUCCESS
    )


def test_max_concurrent_runs_skips_without_a_queue(
    w: WorkspaceClient, scripts: dict[str, str]
) -> None:
    job = w.jobs.create(
        name="one at a time",
        max_concurrent_runs=1,
        tasks=[py_task("nap", scripts["sleep"], ["30"], new_cluster=cluster())],
    )
    first = w.jobs.run_now(job.job_id).run_id
    second = w.jobs.run_now(job.job_id).run_id
    skipped = w.jobs.get_run(second)
    assert skipped.state.life_cycle_state == jobs.RunLifeCycleState.SKIPPED
    assert skipped.state.result_state == jobs.RunResultState.MAXIMUM_CONCURRENT_RUNS_REACHED
    assert "maximum concurrent runs" in skipped.state.state_message
    # With queueing asked for, the next run waits for the slot instead.
    queued = w.jobs.run_now(job.job_id, queue=jobs.QueueSettings(enabled=True)).run_id
    assert w.jobs.get_run(queued).state.life_cycle_state == jobs.RunLifeCycleState.QUEUED
    w.jobs.cancel_run(queued)
    assert w.jobs.get_run(queued).state.result_state == jobs.RunResultState.CANCELED
    w.jobs.delete(job.job_id)  # cancels the active run
    done = w.jobs.wait_get_run_job_terminated_or_skipped(first, timeout=T)
    assert done.state.result_state == jobs.RunResultState.CANCELED
    with pytest.raises(ResourceDoesNotExist):
        w.jobs.get(job.job_id)


def test_errors_and_job_listing(w: WorkspaceClient, scripts: dict[str, str]) -> None:
    with pytest.raises(ResourceDoesNotExist, match="Job 12345 does not exist"):
        w.jobs.get(12345)
    with pytest.raises(NotFound, match="Run 12345000 does not exist"):
        w.jobs.get_run(12345000)
    with pytest.raises(ResourceDoesNotExist):
        w.jobs.run_now(12345)
    bad_cron = jobs.CronSchedule(quartz_cron_expression="0 0 12 * *", timezone_id="UTC")
    with pytest.raises(InvalidParameterValue, match="Invalid Quartz cron expression"):
        w.jobs.create(name="x", schedule=bad_cron)
    bad_tz = jobs.CronSchedule(quartz_cron_expression="0 0 12 * * ?", timezone_id="Mars/Base")
    with pytest.raises(InvalidParameterValue, match="timezone_id"):
        w.jobs.create(name="x", schedule=bad_tz)
    with pytest.raises(InvalidParameterValue, match="exactly one of"):
        w.jobs.create(
            name="x",
            tasks=[py_task("t", scripts["ok"], [], new_cluster=cluster(), existing_cluster_id="c")],
        )
    with pytest.raises(InvalidParameterValue, match="does not exist"):
        w.jobs.create(name="x", tasks=[py_task("t", scripts["ok"], [], existing_cluster_id="c")])
    with pytest.raises(InvalidParameterValue, match="spark version"):
        w.jobs.create(
            name="x",
            tasks=[
                py_task(
                    "t",
                    scripts["ok"],
                    [],
                    new_cluster=compute.ClusterSpec(spark_version="0.0", node_type_id="rec-small"),
                )
            ],
        )
    with pytest.raises(InvalidParameterValue, match="cycle"):
        w.jobs.create(
            name="x",
            job_clusters=[jobs.JobCluster(job_cluster_key="c", new_cluster=cluster())],
            tasks=[
                py_task(
                    "a",
                    scripts["ok"],
                    [],
                    job_cluster_key="c",
                    depends_on=[jobs.TaskDependency(task_key="b")],
                ),
                py_task(
                    "b",
                    scripts["ok"],
                    [],
                    job_cluster_key="c",
                    depends_on=[jobs.TaskDependency(task_key="a")],
                ),
            ],
        )

    # jobs/list pages by page_token; name filters (case-insensitive, exact).
    made = [w.jobs.create(name=f"listed-{i}").job_id for i in range(3)]
    listed = [j.job_id for j in w.jobs.list(limit=1)]
    assert set(made) <= set(listed) and len(listed) == len(set(listed))
    assert [j.job_id for j in w.jobs.list(name="LISTED-1")] == [made[1]]
    w.jobs.reset(made[0], new_settings=jobs.JobSettings(name="renamed", max_concurrent_runs=3))
    got = w.jobs.get(made[0]).settings
    assert got.name == "renamed" and got.max_concurrent_runs == 3


def test_existing_cluster_and_task_dependencies(
    host: DevhostProcess, w: WorkspaceClient, scripts: dict[str, str], tmp_path: Path
) -> None:
    c = w.clusters.create_and_wait(spark_version=V, node_type_id="rec-small", num_workers=0)
    run = w.jobs.submit_and_wait(
        run_name="dag",
        tasks=[
            jobs.SubmitTask(
                task_key="first",
                existing_cluster_id=c.cluster_id,
                spark_python_task=jobs.SparkPythonTask(
                    python_file=scripts["ok"], parameters=[str(tmp_path / "a.txt"), "3"]
                ),
            ),
            jobs.SubmitTask(
                task_key="second",
                depends_on=[jobs.TaskDependency(task_key="first")],
                existing_cluster_id=c.cluster_id,
                spark_python_task=jobs.SparkPythonTask(
                    python_file=scripts["fail"], parameters=["x"]
                ),
            ),
            jobs.SubmitTask(
                task_key="third",
                depends_on=[jobs.TaskDependency(task_key="second")],
                existing_cluster_id=c.cluster_id,
                spark_python_task=jobs.SparkPythonTask(python_file=scripts["ok"], parameters=[]),
            ),
        ],
        timeout=T,
    )
    by_key = {t.task_key: t for t in run.tasks}
    assert by_key["first"].state.result_state == jobs.RunResultState.SUCCESS
    assert by_key["second"].state.result_state == jobs.RunResultState.FAILED
    assert by_key["third"].state.result_state == jobs.RunResultState.UPSTREAM_FAILED
    assert run.state.result_state == jobs.RunResultState.FAILED
    assert "Task second failed" in run.state.state_message
    assert (tmp_path / "a.txt").read_text() == "5"
    # The user's cluster is not the run's to terminate, and the job counted as its activity.
    assert w.clusters.get(c.cluster_id).state == compute.State.RUNNING
    details = raw(host, "/api/2.1/clusters/get", cluster_id=c.cluster_id)
    assert details["last_activity_time"] >= run.start_time
    with pytest.raises(InvalidParameterValue, match="multiple tasks"):
        w.jobs.get_run_output(run.run_id)
    w.clusters.delete(c.cluster_id)


def test_no_job_cluster_is_left_running(w: WorkspaceClient) -> None:
    def all_done() -> list[compute.ClusterDetails] | None:
        job_clusters = [
            c for c in w.clusters.list() if c.cluster_source == compute.ClusterSource.JOB
        ]
        if all(c.state == compute.State.TERMINATED for c in job_clusters):
            return job_clusters
        return None

    job_clusters = wait_for("every job cluster to be TERMINATED", all_done, timeout=30)
    assert len(job_clusters) >= 5
    for c in job_clusters:
        assert c.termination_reason.code == compute.TerminationReasonCode.JOB_FINISHED


ENV = """
import json, os, sys
print(json.dumps({"env": dict(os.environ), "pid": os.getpid()}), flush=True)
"""


def test_a_task_runs_under_its_driver_nodes_agent_not_in_the_control_plane(
    host: DevhostProcess, w: WorkspaceClient
) -> None:
    w.dbfs.upload("/scripts/env.py", io.BytesIO(ENV.encode()), overwrite=True)
    w.dbfs.upload("/scripts/sleep-env.py", io.BytesIO(SLEEP.encode()), overwrite=True)
    c = w.clusters.create_and_wait(
        spark_version=V, node_type_id="rec-small", num_workers=0, spark_env_vars={"MINE": "1"}
    )
    run = w.jobs.submit_and_wait(
        run_name="env",
        tasks=[
            jobs.SubmitTask(
                task_key="env",
                existing_cluster_id=c.cluster_id,
                spark_python_task=jobs.SparkPythonTask(python_file="dbfs:/scripts/env.py"),
            )
        ],
        timeout=T,
    )
    assert run.state.result_state == jobs.RunResultState.SUCCESS, run.state
    seen = json.loads(w.jobs.get_run_output(run.tasks[0].run_id).logs.strip().splitlines()[-1])
    env = seen["env"]
    assert env["MINE"] == "1" and env["SPARKPLANE_CLUSTER_ID"] == c.cluster_id
    assert env["DATABRICKS_RUNTIME_VERSION"] == V
    assert PROBE not in env and "SPARKPLANE_DATA_DIR" not in env
    assert "SPARKPLANE_AGENT_TOKEN_FILE" not in env and "SPARKPLANE_AGENT_TOKEN" not in env
    # The run holds the task's end: the task's document has left the cluster's list.
    store = SqliteStore(host.data_dir / "store.db")
    try:
        key = str(run.tasks[0].run_id)
        assert wait_for(
            "the task to be forgotten", lambda: not store.get("task", c.cluster_id, key)
        )
    finally:
        store.close()

    run_id = w.jobs.submit(
        run_name="where",
        tasks=[
            jobs.SubmitTask(
                task_key="nap",
                existing_cluster_id=c.cluster_id,
                spark_python_task=jobs.SparkPythonTask(
                    python_file="dbfs:/scripts/sleep-env.py", parameters=["60"]
                ),
            )
        ],
    ).run_id
    task = wait_for("the task run", lambda: w.jobs.get_run(run_id).tasks[0])
    wait_for("its output", lambda: "sleeping" in (w.jobs.get_run_output(task.run_id).logs or ""))
    proc = psutil.Process(task_pid(host, c.cluster_id, task.run_id))
    chain = [proc, *proc.parents()]
    agents = [p for p in chain if "shared.agent" in p.cmdline()]
    assert agents, [p.cmdline() for p in chain]
    assert agents[0].environ()["SPARKPLANE_CLUSTER_ID"] == c.cluster_id
    assert host.proc is not None and proc.ppid() != host.proc.pid
    assert os.getsid(proc.pid) != os.getsid(host.proc.pid)
    w.jobs.cancel_run_and_wait(run_id, timeout=T)
    w.clusters.permanent_delete(c.cluster_id)
    # The cluster's end stops its agent (SIGTERM; its tasks end with it).
    wait_for("the agent to stop", lambda: gone(agents[0]), timeout=30)


@pytest.mark.parametrize(
    "python_file",
    ["dbfs:/../operator-token", "/Workspace/../../operator-token", "file:/etc/passwd", "s3://b/x"],
)
def test_task_files_outside_the_workspace_are_refused(w: WorkspaceClient, python_file: str) -> None:
    task = jobs.SubmitTask(
        task_key="t",
        spark_python_task=jobs.SparkPythonTask(python_file=python_file),
        new_cluster=cluster(),
    )
    with pytest.raises(InvalidParameterValue, match="python_file"):
        w.jobs.submit(run_name="escape", tasks=[task])


def test_host_files_and_scripts_are_never_run_or_shown(
    host: DevhostProcess, w: WorkspaceClient, tmp_path: Path
) -> None:
    """An absolute path names a workspace file (as on Databricks), never a host file: not the
    operator token, not a standard-library script whose parameters would run code."""
    marker = tmp_path / "pwned"
    timeit = str(Path(json.__file__).parent.parent / "timeit.py")
    secret = host.operator_token
    tasks = [
        jobs.SubmitTask(
            task_key="token",
            spark_python_task=jobs.SparkPythonTask(
                python_file=str(host.data_dir / "operator-token")
            ),
            new_cluster=cluster(),
        ),
        jobs.SubmitTask(
            task_key="timeit",
            spark_python_task=jobs.SparkPythonTask(
                python_file=timeit,
                parameters=["-s", f"open({str(marker)!r}, 'w').write('x')", "pass"],
            ),
            new_cluster=cluster(),
        ),
    ]
    run = w.jobs.submit_and_wait(run_name="host files", tasks=tasks, timeout=T)
    assert run.state.result_state == jobs.RunResultState.FAILED
    for t in run.tasks:
        assert t.state.result_state == jobs.RunResultState.FAILED
        assert "does not exist" in t.state.state_message, t.state.state_message
        out = w.jobs.get_run_output(t.run_id)
        assert secret not in json.dumps(out.as_dict())
    assert not marker.exists()
