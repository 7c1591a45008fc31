"""End-to-end: jobs on real local Spark clusters, driven by databricks-sdk against a devhost with
the local Spark provisioner (Java 17+ and the pyspark distribution needed).

The code comes the way users bring it: uploaded with `w.dbfs.upload` and `w.workspace.upload`.
Every task runs on its cluster's driver node, started by the driver's agent, inside the
cluster's one Spark application (SPARK_REMOTE: its Spark Connect server), with the clusters'
default settings: no `spark.cores.max` or other setting makes room for a second application.

- a scheduled job on a job cluster runs a `/Workspace/...` file: a PERIODIC run and a run-now
  finish SUCCESS with the Spark result in runs/get-output;
- runs/submit of a `dbfs:/` file on a new cluster: SUCCESS; a failing script: FAILED with the
  Spark error; a cancel kills the task's process group;
- a task on an all-purpose cluster while a notebook-like Spark Connect session is attached
  runs to SUCCESS, and its process is a descendant of the driver node's agent, not of the
  control plane, and sees none of the control plane's environment;
- no job cluster is left running.

Run: .venv/bin/python -m pytest -m spark tests/e2e/test_jobs_spark.py -s
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import psutil
import pytest
from databricks.sdk import WorkspaceClient
from databricks.sdk.service import compute, jobs, workspace

from devhost.process import DevhostProcess
from tests.e2e.hosts import local_spark_devhost
from tests.support import wait_for

pytestmark = [pytest.mark.spark, pytest.mark.slow]

try:
    from shared.adapters.local_spark import JavaRequirementError, check_java

    check_java()
except (ImportError, JavaRequirementError) as e:  # pragma: no cover - depends on the machine
    pytest.skip(f"local Spark is not available: {e}", allow_module_level=True)

V = "4.1.x-scala2.13"
T = timedelta(minutes=5)
# Planted in the control plane's environment: no task may see it.
PROBE = "SPARKPLANE_TEST_HOST_SECRET"

SUM = b"""
import sys
from pyspark.sql import SparkSession

spark = SparkSession.builder.appName("sparkplane-e2e").getOrCreate()
n = int(sys.argv[1])
print("total", spark.range(1, n + 1).selectExpr("sum(id) AS s").collect()[0]["s"])
"""
FAIL = b"""
from pyspark.sql import SparkSession

spark = SparkSession.builder.appName("sparkplane-e2e-fail").getOrCreate()
spark.sql("SELECT * FROM no_such_table").collect()
"""
SLEEP = b"""
import time
from pyspark.sql import SparkSession

spark = SparkSession.builder.appName("sparkplane-e2e-sleep").getOrCreate()
print("started", spark.range(3).count(), flush=True)
time.sleep(600)
"""
WS_SUM = "/Users/admin@local/jobs/sum.py"


def new_cluster() -> compute.ClusterSpec:
    # Default settings: no spark_conf at all.
    return compute.ClusterSpec(spark_version=V, node_type_id="local-medium", num_workers=1)


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevhostProcess]:
    env = {
        "SPARKPLANE_STUCK_AFTER_S": "30",
        "SPARKPLANE_JOBS_SCHEDULE": "*/2 * * * * *",
        "SPARKPLANE_JOBS_POLL_INTERVAL_S": "1",
        "SPARKPLANE_JOBS_KILL_GRACE_S": "5",
        PROBE: "do-not-leak",
    }
    with local_spark_devhost(tmp_path_factory.mktemp("jobs-spark") / "data", env) as h:
        yield h


@pytest.fixture(scope="module")
def w(host: DevhostProcess) -> WorkspaceClient:
    c = host.client()
    for name, text in (("sum", SUM), ("fail", FAIL), ("sleep", SLEEP)):
        c.dbfs.upload(f"/e2e/{name}.py", io.BytesIO(text), overwrite=True)
    c.workspace.mkdirs(str(Path(WS_SUM).parent))
    c.workspace.upload(WS_SUM, SUM, format=workspace.ImportFormat.AUTO, overwrite=True)
    return c


# Its own waits (a PERIODIC run within 360 s, then a run within T) bound it, not pytest's
# 300 s hang guard: two real job clusters start one after the other, slower beside other lanes.
@pytest.mark.timeout(900)
def test_a_scheduled_job_runs_a_workspace_file_on_a_job_cluster(w: WorkspaceClient) -> None:
    t0 = time.monotonic()
    job = w.jobs.create(
        name="spark sum",
        schedule=jobs.CronSchedule(
            quartz_cron_expression="0/20 * * * * ?",
            timezone_id="UTC",
            pause_status=jobs.PauseStatus.UNPAUSED,
        ),
        job_clusters=[jobs.JobCluster(job_cluster_key="main", new_cluster=new_cluster())],
        tasks=[
            jobs.Task(
                task_key="sum",
                job_cluster_key="main",
                spark_python_task=jobs.SparkPythonTask(
                    python_file=f"/Workspace{WS_SUM}", parameters=["1000"]
                ),
            )
        ],
        max_concurrent_runs=1,
        queue=jobs.QueueSettings(enabled=True),
    )

    def periodic_done() -> jobs.BaseRun | None:
        for r in w.jobs.list_runs(job_id=job.job_id, expand_tasks=True):
            if r.trigger == jobs.TriggerType.PERIODIC and r.state.result_state is not None:
                return r
        return None

    periodic = wait_for("a PERIODIC run to finish", periodic_done, timeout=360)
    print(f"\n[jobs e2e] first PERIODIC run finished after {time.monotonic() - t0:.0f}s")
    assert periodic.state.result_state == jobs.RunResultState.SUCCESS, periodic.state
    assert "total 500500" in w.jobs.get_run_output(periodic.tasks[0].run_id).logs
    w.jobs.update(
        job.job_id,
        new_settings=jobs.JobSettings(
            schedule=jobs.CronSchedule(
                quartz_cron_expression="0/20 * * * * ?",
                timezone_id="UTC",
                pause_status=jobs.PauseStatus.PAUSED,
            )
        ),
    )

    run = w.jobs.run_now_and_wait(job.job_id, python_params=["100"], timeout=T)
    assert run.state.result_state == jobs.RunResultState.SUCCESS, run.state
    out = w.jobs.get_run_output(run.tasks[0].run_id)
    assert "total 5050" in out.logs
    c = w.clusters.get(run.tasks[0].cluster_instance.cluster_id)
    assert c.state == compute.State.TERMINATED and c.cluster_source == compute.ClusterSource.JOB
    assert c.termination_reason.code == compute.TerminationReasonCode.JOB_FINISHED


def test_submitted_dbfs_files_a_failing_script_and_a_cancel(w: WorkspaceClient) -> None:
    run = w.jobs.submit_and_wait(
        run_name="sums",
        tasks=[
            jobs.SubmitTask(
                task_key="sum",
                new_cluster=new_cluster(),
                spark_python_task=jobs.SparkPythonTask(
                    python_file="dbfs:/e2e/sum.py", parameters=["10"]
                ),
            ),
            jobs.SubmitTask(
                task_key="bad",
                new_cluster=new_cluster(),
                spark_python_task=jobs.SparkPythonTask(python_file="dbfs:/e2e/fail.py"),
            ),
        ],
        timeout=T,
    )
    by_key = {t.task_key: t for t in run.tasks}
    assert by_key["sum"].state.result_state == jobs.RunResultState.SUCCESS
    assert "total 55" in w.jobs.get_run_output(by_key["sum"].run_id).logs
    bad = by_key["bad"].state
    assert bad.result_state == jobs.RunResultState.FAILED
    assert "AnalysisException" in bad.state_message and "no_such_table" in bad.state_message

    run_id = w.jobs.submit(
        run_name="sleeps",
        tasks=[
            jobs.SubmitTask(
                task_key="nap",
                new_cluster=new_cluster(),
                spark_python_task=jobs.SparkPythonTask(python_file="dbfs:/e2e/sleep.py"),
            )
        ],
    ).run_id
    task_run = wait_for("the task run", lambda: w.jobs.get_run(run_id).tasks[0].run_id, timeout=300)
    wait_for(
        "the script to start",
        lambda: "started" in (w.jobs.get_run_output(task_run).logs or ""),
        timeout=300,
    )
    [proc] = task_processes("sleep.py")
    done = w.jobs.cancel_run_and_wait(run_id, timeout=T)
    assert done.state.result_state == jobs.RunResultState.CANCELED
    wait_for("the task's process to end", lambda: not proc.is_running(), timeout=30)


def task_processes(file_name: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if len(cmd) >= 2 and cmd[1] == file_name and "python" in Path(cmd[0]).name:
            out.append(p)
    return out


def test_a_task_shares_a_running_cluster_with_a_notebook_session_on_its_driver_node(
    host: DevhostProcess, w: WorkspaceClient
) -> None:
    from pyspark.sql import SparkSession

    c = w.clusters.create_and_wait(
        cluster_name="shared", spark_version=V, node_type_id="local-medium", num_workers=1
    )
    connect_url = c.default_tags["SparkConnectUrl"]
    spark = SparkSession.builder.remote(connect_url).getOrCreate()
    try:
        assert spark.range(10).count() == 10  # a notebook attached, holding the cluster
        run = w.jobs.submit_and_wait(
            run_name="beside a notebook",
            tasks=[
                jobs.SubmitTask(
                    task_key="sum",
                    existing_cluster_id=c.cluster_id,
                    spark_python_task=jobs.SparkPythonTask(
                        python_file="dbfs:/e2e/sum.py", parameters=["20"]
                    ),
                )
            ],
            timeout=T,
        )
        assert run.state.result_state == jobs.RunResultState.SUCCESS, run.state
        assert "total 210" in w.jobs.get_run_output(run.tasks[0].run_id).logs
        assert spark.range(5).count() == 5  # the notebook's session goes on

        # Where a task runs: under the driver node's agent, with the node's environment.
        run_id = w.jobs.submit(
            run_name="where",
            tasks=[
                jobs.SubmitTask(
                    task_key="nap",
                    existing_cluster_id=c.cluster_id,
                    spark_python_task=jobs.SparkPythonTask(python_file="dbfs:/e2e/sleep.py"),
                )
            ],
        ).run_id
        task_run = wait_for(
            "the task run", lambda: w.jobs.get_run(run_id).tasks[0].run_id, timeout=300
        )
        wait_for(
            "the script to start",
            lambda: "started" in (w.jobs.get_run_output(task_run).logs or ""),
            timeout=300,
        )
        [proc] = task_processes("sleep.py")
        ancestors = proc.parents()
        agents = [
            p
            for p in ancestors
            if "shared.agent" in p.cmdline()
            and p.environ().get("SPARKPLANE_CLUSTER_ID") == c.cluster_id
        ]
        assert agents, [p.cmdline() for p in ancestors]
        assert host.proc is not None
        assert proc.ppid() != host.proc.pid
        # Its own process group and session, under the agent's, none of them the host's.
        assert os.getpgid(proc.pid) not in (os.getpgid(host.proc.pid), os.getpgid(agents[0].pid))
        assert os.getsid(proc.pid) != os.getsid(host.proc.pid)
        env = proc.environ()
        assert env["SPARK_REMOTE"] == connect_url
        assert PROBE not in env and PROBE in psutil.Process(host.proc.pid).environ()
        # Of the platform's variables only the run's ids (no token file, no data dir).
        ids = {"JOB_ID", "RUN_ID", "TASK_RUN_ID", "TASK_KEY", "CLUSTER_ID"}
        assert {k for k in env if k.startswith("SPARKPLANE_")} == {f"SPARKPLANE_{k}" for k in ids}
        assert Path(proc.cwd()).name == str(task_run)  # its own directory on the node
        w.jobs.cancel_run_and_wait(run_id, timeout=T)
        wait_for("the task's process to end", lambda: not proc.is_running(), timeout=30)
    finally:
        spark.stop()
        w.clusters.delete(c.cluster_id)


def test_no_job_cluster_is_left_running(w: WorkspaceClient) -> None:
    def all_terminated() -> list[compute.ClusterDetails] | None:
        mine = [c for c in w.clusters.list() if c.cluster_source == compute.ClusterSource.JOB]
        return mine if all(c.state == compute.State.TERMINATED for c in mine) else None

    clusters = wait_for("every job cluster to terminate", all_terminated, timeout=120)
    assert len(clusters) >= 3
    assert {c.termination_reason.code for c in clusters} == {
        compute.TerminationReasonCode.JOB_FINISHED
    }
