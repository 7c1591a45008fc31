"""End-to-end: scheduled jobs on real local Spark clusters, driven by databricks-sdk against a
devhost with the local Spark provisioner (Java 17+ and the pyspark distribution needed).

A job scheduled every minute runs a PySpark script on a new job cluster (spark-submit to the
cluster's standalone master); a PERIODIC run finishes SUCCESS and the result file holds the
right sum; run_now_and_wait works; a failing script gives FAILED with the Spark error in
state_message; cancel works; no job cluster is left running.

Run: .venv/bin/python -m pytest -m spark tests/e2e/test_jobs_spark.py -s
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import psutil
import pytest
from databricks.sdk import WorkspaceClient
from databricks.sdk.service import compute, jobs

from devhost.process import DevhostProcess

pytestmark = [pytest.mark.spark, pytest.mark.slow]

try:
    from shared.adapters.local_spark import ENV_DATA_DIR, JavaRequirementError, check_java

    check_java()
except (ImportError, JavaRequirementError) as e:  # pragma: no cover - depends on the machine
    pytest.skip(f"local Spark is not available: {e}", allow_module_level=True)

V = "4.1.x-scala2.13"
T = timedelta(minutes=5)
X = TypeVar("X")

# The driver node's Spark Connect server is an application of the cluster's master too: capped
# at one core and a small executor, it leaves the worker's other core to the job's application.
SPARK_CONF = {"spark.cores.max": "1", "spark.executor.memory": "512m"}

SUM = """
import sys
from pyspark.sql import SparkSession

spark = SparkSession.builder.appName("sparkplane-e2e").getOrCreate()
n = int(sys.argv[2])
total = spark.range(1, n + 1).selectExpr("sum(id) AS s").collect()[0]["s"]
with open(sys.argv[1], "w") as f:
    f.write(str(total))
print("total", total)
spark.stop()
"""
FAIL = """
from pyspark.sql import SparkSession

spark = SparkSession.builder.appName("sparkplane-e2e-fail").getOrCreate()
spark.sql("SELECT * FROM no_such_table").collect()
"""
SLEEP = """
import time
from pyspark.sql import SparkSession

spark = SparkSession.builder.appName("sparkplane-e2e-sleep").getOrCreate()
print("started", flush=True)
time.sleep(600)
"""


def wait_for(what: str, fn: Callable[[], X | None], timeout: float = 300) -> X:
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(1)


def job_cluster() -> compute.ClusterSpec:
    return compute.ClusterSpec(
        spark_version=V, node_type_id="local-medium", num_workers=1, spark_conf=SPARK_CONF
    )


def _kill_leftovers(data_dir: Path) -> None:
    """Teardown, also after a failure: task processes and the data dir's Spark processes."""
    for info in (data_dir / "runs").glob("*/cmd.json"):
        with contextlib.suppress(ValueError, KeyError, ProcessLookupError, PermissionError):
            os.killpg(int(json.loads(info.read_text())["pid"]), signal.SIGKILL)
    marker = str(data_dir.resolve())
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
            if p.environ().get(ENV_DATA_DIR) == marker:
                os.killpg(p.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevhostProcess]:
    data = tmp_path_factory.mktemp("jobs-spark") / "data"
    h = DevhostProcess(
        data,
        env={
            "SPARKPLANE_PROVISIONER": "local",
            "SPARKPLANE_RECONCILE_INTERVAL_S": "1",
            "SPARKPLANE_STUCK_AFTER_S": "30",
            "SPARKPLANE_JOBS_SCHEDULE": "*/2 * * * * *",
            "SPARKPLANE_JOBS_POLL_INTERVAL_S": "1",
            "SPARKPLANE_JOBS_KILL_GRACE_S": "5",
        },
    )
    try:
        h.start(timeout=120)
        yield h
    finally:
        try:
            h.stop()
        finally:
            _kill_leftovers(data)


@pytest.fixture(scope="module")
def w(host: DevhostProcess) -> WorkspaceClient:
    return host.client()


@pytest.fixture(scope="module")
def scripts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("spark-scripts")
    out = {}
    for name, text in (("sum", SUM), ("fail", FAIL), ("sleep", SLEEP)):
        (d / f"{name}.py").write_text(text)
        out[name] = str(d / f"{name}.py")
    return out


def test_a_scheduled_pyspark_job_on_a_job_cluster(
    w: WorkspaceClient, scripts: dict[str, str], tmp_path: Path
) -> None:
    t0 = time.monotonic()
    job = w.jobs.create(
        name="spark sum",
        schedule=jobs.CronSchedule(
            quartz_cron_expression="0 * * * * ?",  # every minute
            timezone_id="UTC",
            pause_status=jobs.PauseStatus.UNPAUSED,
        ),
        job_clusters=[jobs.JobCluster(job_cluster_key="main", new_cluster=job_cluster())],
        tasks=[
            jobs.Task(
                task_key="sum",
                job_cluster_key="main",
                spark_python_task=jobs.SparkPythonTask(
                    python_file=scripts["sum"],
                    parameters=[str(tmp_path / "{{job.run_id}}.txt"), "1000"],
                ),
            )
        ],
        max_concurrent_runs=1,
        queue=jobs.QueueSettings(enabled=True),
    )

    def periodic_done() -> jobs.BaseRun | None:
        for r in w.jobs.list_runs(job_id=job.job_id):
            if r.trigger == jobs.TriggerType.PERIODIC and r.state.result_state is not None:
                return r
        return None

    periodic = wait_for("a PERIODIC run to finish", periodic_done, timeout=360)
    print(f"\n[jobs e2e] first PERIODIC run finished after {time.monotonic() - t0:.0f}s")
    assert periodic.state.result_state == jobs.RunResultState.SUCCESS, periodic.state
    assert (tmp_path / f"{periodic.run_id}.txt").read_text() == str(sum(range(1, 1001)))
    w.jobs.update(
        job.job_id,
        new_settings=jobs.JobSettings(
            schedule=jobs.CronSchedule(
                quartz_cron_expression="0 * * * * ?",
                timezone_id="UTC",
                pause_status=jobs.PauseStatus.PAUSED,
            )
        ),
    )

    run = w.jobs.run_now_and_wait(
        job.job_id, python_params=[str(tmp_path / "now.txt"), "100"], timeout=T
    )
    assert run.state.result_state == jobs.RunResultState.SUCCESS, run.state
    assert (tmp_path / "now.txt").read_text() == "5050"
    out = w.jobs.get_run_output(run.tasks[0].run_id)
    assert "total 5050" in out.logs
    c = w.clusters.get(run.tasks[0].cluster_instance.cluster_id)
    assert c.state == compute.State.TERMINATED and c.cluster_source == compute.ClusterSource.JOB
    assert c.termination_reason.code == compute.TerminationReasonCode.JOB_FINISHED


def test_a_failing_script_and_a_cancel(w: WorkspaceClient, scripts: dict[str, str]) -> None:
    run = w.jobs.submit_and_wait(
        run_name="fails",
        tasks=[
            jobs.SubmitTask(
                task_key="bad",
                new_cluster=job_cluster(),
                spark_python_task=jobs.SparkPythonTask(python_file=scripts["fail"]),
            )
        ],
        timeout=T,
    )
    assert run.state.result_state == jobs.RunResultState.FAILED
    assert "AnalysisException" in run.state.state_message, run.state.state_message
    assert "no_such_table" in run.state.state_message

    run_id = w.jobs.submit(
        run_name="sleeps",
        tasks=[
            jobs.SubmitTask(
                task_key="nap",
                new_cluster=job_cluster(),
                spark_python_task=jobs.SparkPythonTask(python_file=scripts["sleep"]),
            )
        ],
    ).run_id
    wait_for(
        "the script to start",
        lambda: (
            "started" in (w.jobs.get_run_output(w.jobs.get_run(run_id).tasks[0].run_id).logs or "")
        ),
    )
    done = w.jobs.cancel_run_and_wait(run_id, timeout=T)
    assert done.state.result_state == jobs.RunResultState.CANCELED


def test_no_job_cluster_is_left_running(w: WorkspaceClient) -> None:
    def all_terminated() -> list[compute.ClusterDetails] | None:
        mine = [c for c in w.clusters.list() if c.cluster_source == compute.ClusterSource.JOB]
        return mine if all(c.state == compute.State.TERMINATED for c in mine) else None

    clusters = wait_for("every job cluster to terminate", all_terminated, timeout=120)
    assert len(clusters) >= 2
    assert {c.termination_reason.code for c in clusters} == {
        compute.TerminationReasonCode.JOB_FINISHED
    }
