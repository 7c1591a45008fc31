"""End-to-end: deleting a workspace with real local Spark (Java 17+ and pyspark needed) leaves
nothing behind: every document kind, cluster event, file of the file store, node the local
provisioner knows and process started for the data directory (Spark masters, workers, Connect
servers, cluster agents, job tasks) counted before the workspace was made equals the count
after it is gone. Meanwhile it has a running cluster running a job task, a warm instance pool,
a scheduled job and files.

Run: .venv/bin/python -m pytest -m spark tests/e2e/test_workspace_deletion_spark.py -s
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from databricks.sdk import WorkspaceClient
from databricks.sdk.config import Config
from databricks.sdk.service import jobs

from devhost.process import DevhostProcess
from shared.adapters.local_spark import LocalSparkProvisioner
from tests.e2e.hosts import local_spark_devhost
from tests.support import http, owned_counts, wait_for

pytestmark = [pytest.mark.spark, pytest.mark.slow]

try:
    from shared.adapters.local_spark import JavaRequirementError, check_java

    check_java()
except (ImportError, JavaRequirementError) as e:  # pragma: no cover - depends on the machine
    pytest.skip(f"local Spark is not available: {e}", allow_module_level=True)

V = "4.1.x-scala2.13"
T = timedelta(minutes=5)
WS = "doomed"
SLEEP = b"""
import time
from pyspark.sql import SparkSession

spark = SparkSession.builder.appName("doomed").getOrCreate()
print("started", spark.range(3).count(), flush=True)
time.sleep(600)
"""


@pytest.fixture
def host(tmp_path: Path) -> Iterator[DevhostProcess]:
    env = {"SPARKPLANE_JOBS_SCHEDULE": "*/2 * * * * *", "SPARKPLANE_JOBS_POLL_INTERVAL_S": "1"}
    with local_spark_devhost(tmp_path / "data", env) as h:
        yield h


def operator(h: DevhostProcess) -> dict[str, str]:
    return {"Authorization": "Bearer " + h.operator_token}


def snapshot(h: DevhostProcess) -> dict[str, int]:
    assert h.proc is not None
    out = owned_counts(h.data_dir, h.proc.pid)
    prov = LocalSparkProvisioner(h.data_dir / "local_spark")
    out["clusters with nodes"] = len(prov.cluster_ids())
    out["pools with nodes"] = len(prov.pool_ids())
    return {k: v for k, v in out.items() if v}


def test_deleting_a_workspace_stops_and_removes_everything(host: DevhostProcess) -> None:
    before = snapshot(host)
    r = http.post(
        host.url + "/api/admin/workspaces",
        json={"name": "doomed", "workspace_id": WS},
        headers=operator(host),
    )
    assert r.status_code == 200, r.text
    w = WorkspaceClient(
        config=Config(host=host.url, token=r.json()["token_value"], auth_type="pat")
    )
    w.dbfs.upload("/e2e/sleep.py", io.BytesIO(SLEEP))
    w.workspace.mkdirs("/Shared/e2e")
    w.workspace.upload("/Shared/e2e/notes.py", b"print('notes')\n")
    pool = w.instance_pools.create(
        instance_pool_name="warm", node_type_id="local-small", min_idle_instances=1
    ).instance_pool_id
    c = w.clusters.create_and_wait(
        spark_version=V, node_type_id="local-small", num_workers=1, timeout=T
    )
    task = jobs.Task(
        task_key="t",
        existing_cluster_id=c.cluster_id,
        spark_python_task=jobs.SparkPythonTask(python_file="dbfs:/e2e/sleep.py"),
    )
    job = w.jobs.create(
        name="sleeper",
        tasks=[task],
        schedule=jobs.CronSchedule(quartz_cron_expression="0 0 * * * ?", timezone_id="UTC"),
    ).job_id
    run = w.jobs.run_now(job).run_id
    wait_for(
        "the task to run",
        lambda: w.jobs.get_run(run).state.life_cycle_state == jobs.RunLifeCycleState.RUNNING,
        timeout=300,
    )
    wait_for("a warm pool node", lambda: w.instance_pools.get(pool).stats.idle_count, 300)
    during = snapshot(host)
    for key in ("doc:cluster", "doc:job", "doc:run", "files", "clusters with nodes"):
        assert during.get(key, 0) > before.get(key, 0), (key, during)
    assert during["processes"] >= before.get("processes", 0) + 4, during  # master, worker, ...

    url = f"{host.url}/api/admin/workspaces/{WS}"
    r = http.delete(url, headers=operator(host))
    assert r.status_code == 200 and r.json()["state"] == "DELETING"
    wait_for(
        "the workspace to go",
        lambda: http.get(url, headers=operator(host)).status_code == 404,
        timeout=300,
    )
    deadline = time.monotonic() + 120
    while (now := snapshot(host)) != before:
        if time.monotonic() > deadline:
            raise AssertionError({"before": before, "after": now})
        time.sleep(1)
