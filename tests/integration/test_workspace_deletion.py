"""Deleting a workspace through devhost removes everything it owns: every document kind, every
file, every node and process (record provisioner: a driver's agent is a real process that runs
job tasks), counted before it was made and after it is gone; the deletion is DELETING in the
admin API meanwhile, and a workspace made again with the same id starts empty."""

from __future__ import annotations

import base64
import io
import sqlite3
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from databricks.sdk import WorkspaceClient
from databricks.sdk.config import Config
from databricks.sdk.service import compute, jobs

from devhost.process import DevhostProcess
from tests.support import http, owned_counts, wait_for

V = "4.1.x-scala2.13"
T = timedelta(seconds=60)
WS = "doomed"


@pytest.fixture
def host(tmp_path: Any) -> Iterator[DevhostProcess]:
    h = DevhostProcess(
        tmp_path / "data",
        env={
            "SPARKPLANE_JOBS_SCHEDULE": "*/1 * * * * *",
            "SPARKPLANE_JOBS_POLL_INTERVAL_S": "0.3",
            "SPARKPLANE_JOBS_KILL_GRACE_S": "1",
            "SPARKPLANE_HEARTBEAT_S": "0.5",
            "SPARKPLANE_QUOTA_DEFAULTS": '{"min_schedule_period_s": 1}',
            # Nodes that take seconds to stop, as VMs do: the deletion is still under way
            # while the test looks at it, however slow the machine is.
            "SPARKPLANE_RECORD_STOP_S": "5",
        },
    ).start()
    try:
        yield h
    finally:
        h.close()


def wait_same(h: DevhostProcess, before: dict[str, int], timeout: float = 60) -> None:
    """Wait until the snapshot is `before` again (else fail showing what is left)."""
    deadline = time.monotonic() + timeout
    while (now := snapshot(h)) != before:
        if time.monotonic() > deadline:
            left = {k: (before.get(k, 0), now.get(k, 0)) for k in before.keys() | now.keys()}
            files = [str(p) for p in (h.data_dir / "files").rglob("*")]
            raise AssertionError({k: v for k, v in left.items() if v[0] != v[1]}, files)
        time.sleep(0.25)


def operator(h: DevhostProcess) -> dict[str, str]:
    return {"Authorization": "Bearer " + h.operator_token}


def snapshot(h: DevhostProcess) -> dict[str, int]:
    """Everything countable: documents per kind, events, files and directories of the file
    store, node records, and processes started for the data directory (but the host)."""
    assert h.proc is not None
    out = owned_counts(h.data_dir, h.proc.pid)
    with sqlite3.connect(f"file:{h.data_dir / 'records.db'}?mode=ro", uri=True) as db:
        out["nodes"] = db.execute("SELECT count(*) FROM nodes").fetchone()[0]
    return {k: v for k, v in out.items() if v}


def client(h: DevhostProcess, token: str) -> WorkspaceClient:
    return WorkspaceClient(
        config=Config(host=h.url, token=token, auth_type="pat", retry_timeout_seconds=30)
    )


def create_cluster(h: DevhostProcess, w: WorkspaceClient, num_workers: int) -> str:
    """A cluster created with an idempotency_token (the SDK's create has none)."""
    body = {
        "spark_version": V,
        "node_type_id": "rec-small",
        "num_workers": num_workers,
        "idempotency_token": "c-1",
    }
    auth = {"Authorization": f"Bearer {w.config.token}"}
    r = http.post(h.url + "/api/2.1/clusters/create", json=body, headers=auth)
    assert r.status_code == 200, r.text
    return str(r.json()["cluster_id"])


def populate(h: DevhostProcess, w: WorkspaceClient) -> dict[str, Any]:
    """One of everything a workspace can own, work in flight included."""
    sleep = b"import time\nprint('sleeping', flush=True)\ntime.sleep(120)\n"
    w.dbfs.upload("/jobs/sleep.py", io.BytesIO(sleep))
    w.workspace.mkdirs("/Shared/etl")
    w.workspace.upload("/Shared/etl/notes.py", b"print('notes')\n")
    open_upload = w.dbfs.create("/half/written.bin").handle  # left open: a handle, a block
    w.dbfs.add_block(open_upload, base64.b64encode(b"x" * 100).decode())
    w.tokens.create(comment="second", lifetime_seconds=3600)
    c = create_cluster(h, w, num_workers=1)
    w.clusters.wait_get_cluster_running(c, timeout=T)
    pool = w.instance_pools.create(
        instance_pool_name="warm", node_type_id="rec-small", min_idle_instances=1
    ).instance_pool_id
    task = jobs.Task(
        task_key="t",
        existing_cluster_id=c,
        spark_python_task=jobs.SparkPythonTask(python_file="dbfs:/jobs/sleep.py"),
    )
    long_job = w.jobs.create(name="long", tasks=[task]).job_id
    running = w.jobs.run_now(long_job).run_id
    scheduled = w.jobs.create(
        name="every second",
        max_concurrent_runs=5,
        tasks=[
            jobs.Task(
                task_key="t",
                new_cluster=compute.ClusterSpec(
                    spark_version=V, node_type_id="rec-small", num_workers=0
                ),
                spark_python_task=jobs.SparkPythonTask(python_file="dbfs:/jobs/sleep.py"),
            )
        ],
        schedule=jobs.CronSchedule(quartz_cron_expression="* * * * * ?", timezone_id="UTC"),
    ).job_id
    w.jobs.submit(
        run_name="once",
        idempotency_token="r-1",
        tasks=[
            jobs.SubmitTask(
                task_key="t",
                existing_cluster_id=c,
                spark_python_task=jobs.SparkPythonTask(python_file="dbfs:/jobs/sleep.py"),
            )
        ],
    )
    wait_for(
        "the task to run",
        lambda: w.jobs.get_run(running).state.life_cycle_state == jobs.RunLifeCycleState.RUNNING,
    )
    wait_for("the schedule to fire", lambda: list(w.jobs.list_runs(job_id=scheduled)))
    wait_for("a warm pool node", lambda: w.instance_pools.get(pool).stats.idle_count)
    return {"cluster": c, "pool": pool}


def test_deleting_a_workspace_removes_everything_it_owns(host: DevhostProcess) -> None:
    before = snapshot(host)
    r = http.post(
        host.url + "/api/admin/workspaces",
        json={"name": "doomed", "workspace_id": WS},
        headers=operator(host),
    )
    token = r.json()["token_value"]
    w = client(host, token)
    populate(host, w)
    during = snapshot(host)
    for kind in (
        "doc:cluster",
        "doc:instance_pool",
        "doc:instance_pool_name",
        "doc:job",
        "doc:run",
        "doc:task",
        "doc:idempotency",
        "doc:dbfs_handle",
        "doc:token-info",
        "doc:activity",
        "events",
        "nodes",
        "files",
        "processes",
    ):
        assert during.get(kind, 0) > before.get(kind, 0), (kind, during)

    url = f"{host.url}/api/admin/workspaces/{WS}"
    r = http.delete(url, headers=operator(host))
    assert r.status_code == 200 and r.json() == {"workspace_id": WS, "state": "DELETING"}
    got = http.get(url, headers=operator(host))
    assert got.status_code == 200 and got.json()["state"] == "DELETING"
    # its tokens stop working at once; the id is not free until it is gone
    r = http.get(host.url + "/api/2.1/clusters/list", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401
    r = http.post(
        host.url + "/api/admin/workspaces",
        json={"name": "again", "workspace_id": WS},
        headers=operator(host),
    )
    assert r.status_code == 409, r.text
    wait_for(
        "the workspace to go", lambda: http.get(url, headers=operator(host)).status_code == 404
    )
    wait_same(host, before)

    # made again with the same id: it starts empty
    r = http.post(
        host.url + "/api/admin/workspaces",
        json={"name": "again", "workspace_id": WS},
        headers=operator(host),
    )
    assert r.status_code == 200, r.text
    w = client(host, r.json()["token_value"])
    assert list(w.clusters.list()) == []
    assert list(w.instance_pools.list()) == []
    assert list(w.jobs.list()) == []
    assert list(w.jobs.list_runs()) == []
    assert list(w.dbfs.list("/")) == []
    assert len(list(w.tokens.list())) == 1
    # an idempotency token of the old workspace makes a new cluster
    c = create_cluster(host, w, num_workers=0)
    assert [x.cluster_id for x in w.clusters.list()] == [c]
    http.delete(url, headers=operator(host))
    wait_for(
        "the workspace to go", lambda: http.get(url, headers=operator(host)).status_code == 404
    )
    wait_same(host, before)


def test_a_deletion_resumes_after_a_crash(host: DevhostProcess) -> None:
    """The host is killed mid-deletion; on restart the reconciler timer carries it on."""
    before = snapshot(host)
    r = http.post(
        host.url + "/api/admin/workspaces",
        json={"name": "doomed", "workspace_id": WS},
        headers=operator(host),
    )
    w = client(host, r.json()["token_value"])
    c = w.clusters.create_and_wait(spark_version=V, node_type_id="rec-small", num_workers=2)
    w.dbfs.upload("/a.txt", io.BytesIO(b"a"))
    w.jobs.create(
        name="j",
        tasks=[
            jobs.Task(
                task_key="t",
                existing_cluster_id=c.cluster_id,
                spark_python_task=jobs.SparkPythonTask(python_file="dbfs:/a.txt"),
            )
        ],
    )
    url = f"{host.url}/api/admin/workspaces/{WS}"
    assert http.delete(url, headers=operator(host)).status_code == 200
    host.kill9()
    host.start()
    wait_for(
        "the workspace to go", lambda: http.get(url, headers=operator(host)).status_code == 404
    )
    wait_same(host, before)
