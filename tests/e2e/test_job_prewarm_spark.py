"""End-to-end: a job scheduled every minute (Quartz cron, as Databricks takes it) on a
`new_cluster` starts its task within 2 s of the cron time, on real local Spark: its job cluster
is created ahead of the fire (shared/services/job_prewarm.py) and the fire is carried out at
its time (a `fire` message scheduled for it), with the jobs timer at its default period. Two
fires: the first with the default expected start (nothing timed yet), the second with the
start learned from the first cluster.

The delay is read from the run's JSON as Databricks has it: the task run's `start_time` plus its
`setup_duration` (when the task was handed to the cluster) minus the cron time. The program also
prints the time it started on the driver node (printed, not asserted: it adds the agent's poll).

Run: .venv/bin/python -m pytest -m spark tests/e2e/test_job_prewarm_spark.py -s
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator

import pytest
from databricks.sdk import WorkspaceClient
from databricks.sdk.service import compute, jobs

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
STAMP = b"""
import time
print("started_ms", int(time.time() * 1000), flush=True)
from pyspark.sql import SparkSession

spark = SparkSession.builder.getOrCreate()
print("rows", spark.range(10).count(), flush=True)
"""


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkspaceClient]:
    # The jobs timer keeps its default period (devhost.settings.json): nothing is tuned here.
    with local_spark_devhost(tmp_path_factory.mktemp("job-prewarm") / "data") as h:
        yield _client(h)


def _client(h: DevhostProcess) -> WorkspaceClient:
    c = h.client()
    c.dbfs.upload("/e2e/stamp.py", io.BytesIO(STAMP), overwrite=True)
    return c


def _delays(w: WorkspaceClient, run: jobs.BaseRun) -> tuple[int, dict[str, object]]:
    """(task handed to its cluster minus the cron time, the CREATING event's details); prints
    what was measured."""
    assert run.state.result_state == jobs.RunResultState.SUCCESS, run.state
    task = run.tasks[0]
    assert run.start_time is not None and task.start_time is not None
    cron_ms = run.start_time // 60_000 * 60_000
    handed_ms = task.start_time + (task.setup_duration or 0)
    out = w.jobs.get_run_output(task.run_id).logs or ""
    started = next(int(ln.split()[1]) for ln in out.splitlines() if ln.startswith("started_ms"))
    # The cluster was created ahead of the fire, for this reason.
    cid = task.cluster_instance.cluster_id
    assert w.clusters.get(cid).cluster_source == compute.ClusterSource.JOB
    raw = w.api_client.do("POST", "/api/2.1/clusters/events", body={"cluster_id": cid})
    assert isinstance(raw, dict)
    created = next(e for e in raw["events"] if e["type"] == "CREATING")
    details = created["details"]
    assert created["timestamp"] < cron_ms
    assert (details["cause"], details["fire_time"]) == ("SCHEDULED_RUN", cron_ms)
    assert details["schedule"] == "0 * * * * ? UTC"
    print(
        f"\n[job prewarm e2e] run {run.run_id}: fire {run.start_time - cron_ms} ms after the"
        f" cron time; task handed to its cluster after {handed_ms - cron_ms} ms"
        f" (setup_duration {task.setup_duration} ms); the program started after"
        f" {started - cron_ms} ms; cluster created {cron_ms - created['timestamp']} ms ahead"
        f" (expected start {details['expected_start_s']} s, lead {details['lead_s']} s)"
    )
    return handed_ms - cron_ms, details


@pytest.mark.timeout(480)
def test_a_job_scheduled_every_minute_starts_its_task_within_2_s_of_the_cron_time(
    w: WorkspaceClient,
) -> None:
    # The first fire at least 50 s away: the cluster has an expected start to come up.
    wait_for("the start of a minute", lambda: 1 <= time.time() % 60 <= 8 or None, timeout=70)
    job = w.jobs.create(
        name="every minute",
        schedule=jobs.CronSchedule(
            quartz_cron_expression="0 * * * * ?",
            timezone_id="UTC",
            pause_status=jobs.PauseStatus.UNPAUSED,
        ),
        tasks=[
            jobs.Task(
                task_key="stamp",
                new_cluster=compute.ClusterSpec(
                    spark_version=V, node_type_id="local-medium", num_workers=1
                ),
                spark_python_task=jobs.SparkPythonTask(python_file="dbfs:/e2e/stamp.py"),
            )
        ],
        max_concurrent_runs=1,
    )
    assert job.job_id is not None
    try:

        def two_done() -> list[jobs.BaseRun] | None:
            done = [
                r
                for r in w.jobs.list_runs(job_id=job.job_id, expand_tasks=True)
                if r.trigger == jobs.TriggerType.PERIODIC and r.state.result_state is not None
            ]
            return sorted(done, key=lambda r: r.start_time or 0) if len(done) >= 2 else None

        first, second = wait_for("two PERIODIC runs to finish", two_done, timeout=300)[:2]
    finally:
        w.jobs.delete(job.job_id)
    delay, details = _delays(w, first)
    assert delay <= 2000
    assert details["expected_start_s"] == 300  # nothing timed yet: the default
    # The second fire: its cluster is created an expected start learned from the first ahead.
    delay, details = _delays(w, second)
    assert delay <= 2000
    assert isinstance(details["expected_start_s"], float | int)
    assert details["expected_start_s"] < 300

    def none_left() -> list[compute.ClusterDetails] | None:
        mine = [c for c in w.clusters.list() if c.cluster_source == compute.ClusterSource.JOB]
        return mine if all(c.state == compute.State.TERMINATED for c in mine) else None

    wait_for("every job cluster to terminate", none_left, timeout=120)
