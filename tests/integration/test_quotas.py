"""Quotas per workspace through devhost: the operator sets them (admin API), users hit them with
databricks-sdk and get Databricks' errors at the request, and nothing is left behind by a
refused request. Each test has a workspace of its own with small quotas."""

from __future__ import annotations

import base64
import io
import itertools
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from databricks.sdk import WorkspaceClient
from databricks.sdk.config import Config
from databricks.sdk.errors import BadRequest, DatabricksError
from databricks.sdk.service import compute, jobs

from devhost.process import DevhostProcess
from tests.support import http

V = "4.1.x-scala2.13"
T = timedelta(seconds=60)
SLEEP = b"import time\ntime.sleep(60)\n"
_n = itertools.count()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevhostProcess]:
    h = DevhostProcess(
        tmp_path_factory.mktemp("quotas") / "data",
        env={"SPARKPLANE_JOBS_POLL_INTERVAL_S": "0.3", "SPARKPLANE_JOBS_KILL_GRACE_S": "1"},
    ).start()
    try:
        yield h
    finally:
        h.close()


def operator(host: DevhostProcess) -> dict[str, str]:
    return bearer(host.operator_token)


def workspace(host: DevhostProcess, **quotas: int) -> tuple[str, str, WorkspaceClient]:
    """A new workspace with these quotas: (id, its first token, a client with that token)."""
    ws = f"q{next(_n)}-{int(time.time() * 1000) % 100000}"
    r = http.post(
        host.url + "/api/admin/workspaces",
        json={"name": ws, "workspace_id": ws, "quotas": quotas},
        headers=operator(host),
    )
    assert r.status_code == 200, r.text
    token = r.json()["token_value"]
    cfg = Config(host=host.url, token=token, auth_type="pat", retry_timeout_seconds=30)
    return ws, token, WorkspaceClient(config=cfg)


def refused(e: pytest.ExceptionInfo[DatabricksError], what: str) -> None:
    assert isinstance(e.value, BadRequest)
    assert e.value.error_code == "QUOTA_EXCEEDED", e.value
    assert what in str(e.value)


def test_operator_sets_reads_and_resets_quotas(host: DevhostProcess) -> None:
    ws, _, w = workspace(host, max_clusters=3)
    url = f"{host.url}/api/admin/workspaces/{ws}/quotas"
    got = http.get(url, headers=operator(host)).json()
    assert got["quotas"]["max_clusters"] == 3 and got["overrides"] == {"max_clusters": 3}
    assert got["quotas"]["max_jobs"] == 1000  # the default
    assert got["usage"] == {
        "clusters": 0,
        "total_workers": 0,
        "concurrent_runs": 0,
        "jobs": 0,
        "pools": 0,
        "file_store_bytes": 0,
    }
    r = http.patch(url, json={"max_jobs": 7, "max_clusters": None}, headers=operator(host))
    assert r.status_code == 200, r.text
    assert r.json()["quotas"]["max_jobs"] == 7 and r.json()["quotas"]["max_clusters"] == 50
    assert r.json()["overrides"] == {"max_jobs": 7}
    for bad in ({"max_jobz": 1}, {"max_jobs": -1}, {"max_jobs": "7"}):
        r = http.patch(url, json=bad, headers=operator(host))
        assert r.status_code == 400 and r.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    # users cannot read or set them; an unknown workspace has none
    assert http.get(url, headers=bearer(w.config.token)).status_code == 403
    r = http.get(f"{host.url}/api/admin/workspaces/nope/quotas", headers=operator(host))
    assert r.status_code == 404
    r = http.post(
        host.url + "/api/admin/workspaces",
        json={"name": "x", "quotas": {"max_clusters": -2}},
        headers=operator(host),
    )
    assert r.status_code == 400


def test_cluster_quotas_on_create_edit_resize_and_start(host: DevhostProcess) -> None:
    ws, _, w = workspace(host, max_clusters=2, max_total_workers=3, max_workers_per_cluster=2)
    with pytest.raises(DatabricksError) as e:
        w.clusters.create(spark_version=V, node_type_id="rec-small", num_workers=3)
    refused(e, "workers of one cluster")
    with pytest.raises(DatabricksError) as e:
        w.clusters.create(
            spark_version=V,
            node_type_id="rec-small",
            autoscale=compute.AutoScale(min_workers=1, max_workers=5),
        )
    refused(e, "workers of one cluster")
    a = w.clusters.create_and_wait(spark_version=V, node_type_id="rec-small", num_workers=2)
    b = w.clusters.create_and_wait(spark_version=V, node_type_id="rec-small", num_workers=1)
    with pytest.raises(DatabricksError) as e:
        w.clusters.create(spark_version=V, node_type_id="rec-small", num_workers=0)
    refused(e, "number of clusters")
    with pytest.raises(DatabricksError) as e:
        w.clusters.resize(b.cluster_id, num_workers=2)
    refused(e, "total number of workers")
    with pytest.raises(DatabricksError) as e:
        w.clusters.edit(a.cluster_id, spark_version=V, node_type_id="rec-small", num_workers=3)
    refused(e, "workers of one cluster")
    w.clusters.resize(a.cluster_id, num_workers=1)  # within every quota
    w.clusters.wait_get_cluster_running(a.cluster_id, timeout=T)
    w.clusters.resize(b.cluster_id, num_workers=2)
    # a terminated cluster holds nothing: another may start, then it may not
    w.clusters.delete_and_wait(b.cluster_id, timeout=T)
    c = w.clusters.create_and_wait(spark_version=V, node_type_id="rec-small", num_workers=1)
    with pytest.raises(DatabricksError) as e:
        w.clusters.start(b.cluster_id)
    refused(e, "number of clusters")
    # a terminated cluster can be edited within the per-cluster limit only
    w.clusters.edit(b.cluster_id, spark_version=V, node_type_id="rec-small", num_workers=2)
    # nothing was made by a refused request
    listed = {x.cluster_id for x in w.clusters.list()}
    assert listed == {a.cluster_id, b.cluster_id, c.cluster_id}
    usage = http.get(f"{host.url}/api/admin/workspaces/{ws}/quotas", headers=operator(host)).json()[
        "usage"
    ]
    assert usage["clusters"] == 2 and usage["total_workers"] == 2
    for cid in (a.cluster_id, c.cluster_id):
        w.clusters.permanent_delete(cid)


def test_cluster_quota_holds_under_concurrent_creates(host: DevhostProcess) -> None:
    from concurrent.futures import ThreadPoolExecutor

    _, token, w = workspace(host, max_clusters=3)
    body = {"spark_version": V, "node_type_id": "rec-small", "num_workers": 0}

    def create(_: int) -> int:
        r = http.post(
            host.url + "/api/2.1/clusters/create", json=body, headers=bearer(token), timeout=30
        )
        return r.status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(create, range(8)))
    assert sorted(codes) == [200] * 3 + [400] * 5
    assert len(list(w.clusters.list())) == 3


def _job_task(file: str, **kw: Any) -> jobs.Task:
    return jobs.Task(task_key="t", spark_python_task=jobs.SparkPythonTask(python_file=file), **kw)


def test_job_and_schedule_quotas(host: DevhostProcess) -> None:
    _, _, w = workspace(host, max_jobs=2, min_schedule_period_s=300, max_workers_per_cluster=2)
    new = compute.ClusterSpec(spark_version=V, node_type_id="rec-small", num_workers=1)
    every_minute = jobs.CronSchedule(quartz_cron_expression="0 * * * * ?", timezone_id="UTC")
    with pytest.raises(DatabricksError) as e:
        w.jobs.create(
            name="fast", tasks=[_job_task("dbfs:/x.py", new_cluster=new)], schedule=every_minute
        )
    refused(e, "minimum period of a schedule")
    big = compute.ClusterSpec(spark_version=V, node_type_id="rec-small", num_workers=3)
    with pytest.raises(DatabricksError) as e:
        w.jobs.create(name="big", tasks=[_job_task("dbfs:/x.py", new_cluster=big)])
    refused(e, "workers of one cluster")
    hourly = jobs.CronSchedule(quartz_cron_expression="0 0 * * * ?", timezone_id="UTC")
    j1 = w.jobs.create(name="a", tasks=[_job_task("dbfs:/x.py", new_cluster=new)], schedule=hourly)
    w.jobs.create(name="b", tasks=[_job_task("dbfs:/x.py", new_cluster=new)])
    with pytest.raises(DatabricksError) as e:
        w.jobs.create(name="c", tasks=[_job_task("dbfs:/x.py", new_cluster=new)])
    refused(e, "number of jobs")
    with pytest.raises(DatabricksError) as e:
        w.jobs.update(j1.job_id, new_settings=jobs.JobSettings(schedule=every_minute))
    refused(e, "minimum period of a schedule")
    with pytest.raises(DatabricksError) as e:
        w.jobs.reset(
            j1.job_id,
            new_settings=jobs.JobSettings(
                name="a", tasks=[_job_task("dbfs:/x.py", new_cluster=new)], schedule=every_minute
            ),
        )
    refused(e, "minimum period of a schedule")
    assert len(list(w.jobs.list())) == 2
    w.jobs.delete(j1.job_id)
    w.jobs.create(name="c", tasks=[_job_task("dbfs:/x.py", new_cluster=new)])


def test_concurrent_runs_are_resource_exhausted_and_job_clusters_count(
    host: DevhostProcess,
) -> None:
    _, token, w = workspace(host, max_concurrent_runs=1, max_clusters=2)
    w.dbfs.upload("/sleep.py", io.BytesIO(SLEEP))
    c = w.clusters.create_and_wait(spark_version=V, node_type_id="rec-small", num_workers=0)
    run = w.jobs.submit(
        run_name="one", tasks=[_job_task("dbfs:/sleep.py", existing_cluster_id=c.cluster_id)]
    ).response
    # a second run while the first is active: 429 RESOURCE_EXHAUSTED with Retry-After
    body = {
        "run_name": "two",
        "tasks": [
            {
                "task_key": "t",
                "existing_cluster_id": c.cluster_id,
                "spark_python_task": {"python_file": "dbfs:/sleep.py"},
            }
        ],
    }
    r = http.post(host.url + "/api/2.2/jobs/runs/submit", json=body, headers=bearer(token))
    assert r.status_code == 429 and r.json()["error_code"] == "RESOURCE_EXHAUSTED"
    assert int(r.headers["Retry-After"]) >= 1
    job = w.jobs.create(
        name="j", tasks=[_job_task("dbfs:/sleep.py", existing_cluster_id=c.cluster_id)]
    )
    r = http.post(
        host.url + "/api/2.2/jobs/run-now", json={"job_id": job.job_id}, headers=bearer(token)
    )
    assert r.status_code == 429
    # the same request again (idempotency_token) is answered with the run it made
    w.jobs.cancel_run_and_wait(run.run_id, timeout=T)
    first = w.jobs.submit(
        run_name="idem",
        idempotency_token="tok-1",
        tasks=[_job_task("dbfs:/sleep.py", existing_cluster_id=c.cluster_id)],
    ).response
    again = w.jobs.submit(
        run_name="idem",
        idempotency_token="tok-1",
        tasks=[_job_task("dbfs:/sleep.py", existing_cluster_id=c.cluster_id)],
    ).response
    assert again.run_id == first.run_id
    w.jobs.cancel_run_and_wait(first.run_id, timeout=T)
    # a run whose job clusters do not fit the clusters quota is refused at the request
    two = [
        jobs.SubmitTask(
            task_key=k,
            new_cluster=compute.ClusterSpec(
                spark_version=V, node_type_id="rec-small", num_workers=0
            ),
            spark_python_task=jobs.SparkPythonTask(python_file="dbfs:/sleep.py"),
        )
        for k in ("a", "b")
    ]
    with pytest.raises(DatabricksError) as e:
        w.jobs.submit(run_name="wide", tasks=two)
    refused(e, "number of clusters")
    w.clusters.permanent_delete(c.cluster_id)


def test_pool_quotas(host: DevhostProcess) -> None:
    _, _, w = workspace(host, max_pools=1, max_pool_capacity=4)
    with pytest.raises(DatabricksError) as e:
        w.instance_pools.create(instance_pool_name="big", node_type_id="rec-small", max_capacity=5)
    refused(e, "capacity of an instance pool")
    with pytest.raises(DatabricksError) as e:
        w.instance_pools.create(
            instance_pool_name="warm", node_type_id="rec-small", min_idle_instances=5
        )
    refused(e, "min_idle_instances")
    p = w.instance_pools.create(instance_pool_name="p", node_type_id="rec-small")
    assert w.instance_pools.get(p.instance_pool_id).max_capacity == 4  # the quota's
    with pytest.raises(DatabricksError) as e:
        w.instance_pools.create(instance_pool_name="q", node_type_id="rec-small")
    refused(e, "number of instance pools")
    with pytest.raises(DatabricksError) as e:
        w.instance_pools.edit(
            p.instance_pool_id, instance_pool_name="p", node_type_id="rec-small", max_capacity=9
        )
    refused(e, "capacity of an instance pool")
    w.instance_pools.delete(p.instance_pool_id)
    w.instance_pools.create(instance_pool_name="q", node_type_id="rec-small")


def test_tokens_per_user(host: DevhostProcess) -> None:
    _, _, w = workspace(host, max_tokens_per_user=2)  # the first token is one
    made = w.tokens.create(comment="second")
    with pytest.raises(DatabricksError) as e:
        w.tokens.create(comment="third")
    refused(e, "number of tokens of a user")
    assert len(list(w.tokens.list())) == 2
    w.tokens.delete(made.token_info.token_id)
    w.tokens.create(comment="third")


def test_file_store_bytes_on_dbfs_and_workspace_files(host: DevhostProcess) -> None:
    _, token, w = workspace(host, max_file_store_bytes=1000)
    w.dbfs.upload("/a.bin", io.BytesIO(b"a" * 600))
    with pytest.raises(DatabricksError) as e:
        w.dbfs.put("/b.bin", contents=base64.b64encode(b"b" * 401).decode())
    refused(e, "bytes of the workspace's files")
    w.dbfs.upload("/a.bin", io.BytesIO(b"a" * 700), overwrite=True)  # replaces: 700 in all
    with pytest.raises(DatabricksError) as e:
        w.workspace.upload("/Shared/x.py", b"x" * 301)
    refused(e, "bytes of the workspace's files")
    w.workspace.upload("/Shared/x.py", b"x" * 300)  # exactly at the quota
    w.dbfs.delete("/a.bin")
    # streaming upload: refused at the add-block that passes the quota; nothing published
    h = w.dbfs.create("/c.bin").handle
    w.dbfs.add_block(h, base64.b64encode(b"c" * 400).decode())
    with pytest.raises(DatabricksError) as e:
        w.dbfs.add_block(h, base64.b64encode(b"c" * 301).decode())
    refused(e, "bytes of the workspace's files")
    w.dbfs.add_block(h, base64.b64encode(b"c" * 300).decode())
    w.dbfs.close(h)
    assert w.dbfs.get_status("/c.bin").file_size == 700
    r = http.post(
        host.url + "/api/2.0/dbfs/put",
        json={"path": "/d.bin", "contents": base64.b64encode(b"d").decode()},
        headers=bearer(token),
    )
    assert r.status_code == 400 and r.json()["error_code"] == "QUOTA_EXCEEDED"
    names = {f.path for f in w.dbfs.list("/")}
    assert names == {"/c.bin"}
