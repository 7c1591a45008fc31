"""The Clusters API driven by databricks-sdk against a devhost subprocess."""

from __future__ import annotations

import time
from datetime import timedelta

import httpx
import pytest
from databricks.sdk.errors import InvalidParameterValue, InvalidState, NotFound
from databricks.sdk.service.compute import AutoScale, EventType, GetEventsOrder, State

from devhost.process import DevhostProcess
from shared.adapters.sqlite_store import SqliteStore
from shared.services.auth import Auth
from shared.wiring import SystemClock
from tests.support import http

V = "4.1.x-scala2.13"
T = timedelta(seconds=60)


def test_cluster_lifecycle_with_the_sdk(devhost: DevhostProcess) -> None:
    w = devhost.client()
    assert w.clusters.select_spark_version(scala="2.13") == V
    node = w.clusters.select_node_type(local_disk=False, min_cores=2)

    c = w.clusters.create_and_wait(
        cluster_name="etl", spark_version=V, node_type_id=node, num_workers=2, timeout=T
    )
    assert c.state == State.RUNNING
    assert len(c.executors or []) == 2 and c.driver is not None
    assert c.spark_context_id and c.cluster_cores and c.cluster_memory_mb
    cid = c.cluster_id

    got = w.clusters.get(cid)
    assert got.cluster_name == "etl" and got.num_workers == 2 and got.spec is not None

    # list with paging: 3 more clusters, page_size 1
    others = [
        w.clusters.create(cluster_name=f"n{i}", spark_version=V, node_type_id=node, num_workers=0)
        for i in range(3)
    ]
    ids = [x.cluster_id for x in w.clusters.list(page_size=1)]
    assert sorted(ids) == sorted([cid, *[o.cluster_id for o in others]])
    assert len(ids) == len(set(ids))

    c = w.clusters.edit_and_wait(
        cluster_id=cid,
        spark_version=V,
        node_type_id=node,
        num_workers=1,
        cluster_name="etl2",
        autotermination_minutes=30,
        timeout=T,
    )
    assert c.state == State.RUNNING and c.cluster_name == "etl2" and len(c.executors) == 1
    assert c.last_restarted_time

    c = w.clusters.resize_and_wait(cluster_id=cid, num_workers=3, timeout=T)
    assert c.state == State.RUNNING and len(c.executors) == 3
    c = w.clusters.resize_and_wait(
        cluster_id=cid, autoscale=AutoScale(min_workers=1, max_workers=2), timeout=T
    )
    assert c.state == State.RUNNING and len(c.executors) == 2 and c.autoscale.max_workers == 2

    w.clusters.pin(cid)
    w.clusters.unpin(cid)

    c = w.clusters.delete_and_wait(cluster_id=cid, timeout=T)
    assert c.state == State.TERMINATED
    assert c.termination_reason.code.value == "USER_REQUEST"
    assert not c.executors and c.terminated_time

    c = w.clusters.start_and_wait(cluster_id=cid, timeout=T)
    assert c.state == State.RUNNING and len(c.executors) == 1  # autoscale starts at min

    # events over several pages (the SDK follows `next_page`)
    events = list(w.clusters.events(cluster_id=cid, limit=3))
    types = [e.type for e in events]
    for t in (
        EventType.CREATING,
        EventType.RUNNING,
        EventType.EDITED,
        EventType.RESIZING,
        EventType.UPSIZE_COMPLETED,
        EventType.PINNED,
        EventType.UNPINNED,
        EventType.TERMINATING,
        EventType.STARTING,
    ):
        assert t in types, t
    stamps = [e.timestamp for e in events]
    assert stamps == sorted(stamps, reverse=True)  # DESC by default
    asc = list(
        w.clusters.events(cluster_id=cid, order=GetEventsOrder.ASC, event_types=[EventType.RUNNING])
    )
    assert [e.type for e in asc] == [EventType.RUNNING] * len(asc) and len(asc) >= 3
    # every event exactly once, though the pages were 3 long
    raw = http.post(
        devhost.url + "/api/2.1/clusters/events",
        json={"cluster_id": cid, "limit": 500},
        headers={"Authorization": f"Bearer {devhost.token}"},
    ).json()
    assert raw["total_count"] == len(events) == len(raw["events"])
    assert "next_page" not in raw

    w.clusters.permanent_delete(cid)
    with pytest.raises(NotFound):
        w.clusters.get(cid)
    assert cid not in [x.cluster_id for x in w.clusters.list()]


def test_errors_map_to_sdk_exceptions(devhost: DevhostProcess) -> None:
    w = devhost.client()
    with pytest.raises(InvalidParameterValue, match="spark version"):
        w.clusters.create(spark_version="0.0.x", node_type_id="rec-small", num_workers=1)
    with pytest.raises(InvalidParameterValue, match="not supported"):
        w.clusters.create(spark_version=V, node_type_id="nope", num_workers=1)
    with pytest.raises(InvalidParameterValue, match="between 10 and 10000"):
        w.clusters.create(
            spark_version=V, node_type_id="rec-small", num_workers=1, autotermination_minutes=3
        )
    with pytest.raises(InvalidParameterValue, match="greater than"):
        w.clusters.create(
            spark_version=V,
            node_type_id="rec-small",
            autoscale=AutoScale(min_workers=3, max_workers=3),
        )
    with pytest.raises(InvalidParameterValue, match="Only one of"):
        w.clusters.create(
            spark_version=V,
            node_type_id="rec-small",
            num_workers=2,
            autoscale=AutoScale(min_workers=1, max_workers=3),
        )
    with pytest.raises(NotFound):
        w.clusters.get("0000-000000-missing0")
    c = w.clusters.create(spark_version=V, node_type_id="rec-small", num_workers=0)
    with pytest.raises(InvalidState, match="unexpected state"):
        w.clusters.start(c.cluster_id)  # PENDING, not TERMINATED
    w.clusters.delete_and_wait(c.cluster_id, timeout=T)
    with pytest.raises(InvalidState):
        w.clusters.resize(c.cluster_id, num_workers=2)
    w.clusters.delete(c.cluster_id)  # no-op on a terminated cluster


def test_spark_env_vars_that_inject_code_are_refused(devhost: DevhostProcess) -> None:
    """Create, edit and a job's new_cluster refuse spark_env_vars names that make a shell, the
    loader or the JVM run code (shared/domain/node_env.py); shell-looking values are data."""
    from databricks.sdk.service import jobs
    from databricks.sdk.service.compute import ClusterSpec

    w = devhost.client()
    bad = [
        {"BASH_ENV": "$(touch /tmp/sparkplane-pwned)"},
        {"LD_PRELOAD": "/tmp/evil.so"},
        {"JAVA_TOOL_OPTIONS": "-javaagent:/tmp/evil.jar"},
        {"PATH": "/tmp"},
    ]
    for env in bad:
        [name] = env
        with pytest.raises(InvalidParameterValue, match=f"spark_env_vars: {name} "):
            w.clusters.create(
                spark_version=V, node_type_id="rec-small", num_workers=0, spark_env_vars=env
            )
    assert list(w.clusters.list()) == []

    inert = {"MY_SETTING": "$(touch /tmp/sparkplane-pwned)", "QUOTED": 'a"; rm -rf /'}
    c = w.clusters.create(
        spark_version=V, node_type_id="rec-small", num_workers=0, spark_env_vars=inert
    )
    assert w.clusters.get(c.cluster_id).spark_env_vars == inert
    for env in bad:
        [name] = env
        with pytest.raises(InvalidParameterValue, match=f"spark_env_vars: {name} "):
            w.clusters.edit(
                cluster_id=c.cluster_id,
                spark_version=V,
                node_type_id="rec-small",
                num_workers=0,
                spark_env_vars={**inert, **env},
            )
    assert w.clusters.get(c.cluster_id).spark_env_vars == inert

    with pytest.raises(InvalidParameterValue, match=r"new_cluster: .*BASH_ENV cannot be set"):
        w.jobs.create(
            name="j",
            tasks=[
                jobs.Task(
                    task_key="t",
                    spark_python_task=jobs.SparkPythonTask(python_file="/x.py"),
                    new_cluster=ClusterSpec(
                        spark_version=V,
                        node_type_id="rec-small",
                        num_workers=0,
                        spark_env_vars={"BASH_ENV": "/tmp/x.sh"},
                    ),
                )
            ],
        )
    w.clusters.delete(c.cluster_id)


def _post(h: DevhostProcess, path: str, content: bytes, token: str | None) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return http.post(h.url + path, content=content, headers=headers)


def test_http_edges_auth_aliases_and_isolation(devhost: DevhostProcess) -> None:
    tok = devhost.token
    body = b'{"spark_version": "4.1.x-scala2.13", "node_type_id": "rec-small", "num_workers": 0}'
    r = _post(devhost, "/api/2.1/clusters/create", body, None)
    assert r.status_code == 401 and r.json()["error_code"] == "UNAUTHENTICATED"
    r = _post(devhost, "/api/2.1/clusters/create", body, "dapi-wrong")
    assert r.status_code == 401
    r = _post(devhost, "/api/2.1/clusters/create", b'{"spark_version": ', tok)
    assert r.status_code == 400 and r.json()["error_code"] == "MALFORMED_REQUEST"
    r = _post(devhost, "/api/2.1/clusters/create", b"[1]", tok)
    assert r.status_code == 400 and "message" in r.json()
    r = _post(devhost, "/api/2.1/clusters/nope", b"{}", tok)
    assert r.status_code == 404 and r.json()["error_code"] == "ENDPOINT_NOT_FOUND"
    r = _post(devhost, "/api/2.0/clusters/create", body, tok)  # the 2.0 alias
    assert r.status_code == 200
    cid = r.json()["cluster_id"]
    got = http.get(
        devhost.url + "/api/2.0/clusters/get",
        params={"cluster_id": cid},
        headers={"Authorization": f"Bearer {tok}"},
    )
    assert got.status_code == 200 and got.json()["state"] in ("PENDING", "RUNNING")

    # idempotency_token: a retried create returns the same cluster
    ib = body[:-1] + b', "idempotency_token": "abc"}'
    first = _post(devhost, "/api/2.1/clusters/create", ib, tok).json()["cluster_id"]
    again = _post(devhost, "/api/2.1/clusters/create", ib, tok).json()["cluster_id"]
    assert first == again

    # a token of another workspace sees 404 for this workspace's cluster
    store = SqliteStore(devhost.data_dir / "store.db")
    try:
        auth = Auth(store, SystemClock())
        auth.ensure_workspace("other", "other")
        other, _ = auth.issue_token("other", user="eve@other")
    finally:
        store.close()
    r = http.get(
        devhost.url + "/api/2.1/clusters/get",
        params={"cluster_id": cid},
        headers={"Authorization": f"Bearer {other}"},
    )
    assert r.status_code == 404 and r.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    r = http.get(
        devhost.url + "/api/2.1/clusters/list", headers={"Authorization": f"Bearer {other}"}
    )
    assert r.json() == {"clusters": []}


def test_transitional_state_is_stored_before_the_response(devhost: DevhostProcess) -> None:
    w = devhost.client()
    c = w.clusters.create_and_wait(spark_version=V, node_type_id="rec-small", num_workers=1)
    w.clusters.resize(c.cluster_id, num_workers=2)
    assert w.clusters.get(c.cluster_id).state == State.RESIZING
    w.clusters.wait_get_cluster_running(c.cluster_id, timeout=T)
    w.clusters.restart(c.cluster_id)
    assert w.clusters.get(c.cluster_id).state == State.RESTARTING
    w.clusters.wait_get_cluster_running(c.cluster_id, timeout=T)
    w.clusters.delete(c.cluster_id)
    assert w.clusters.get(c.cluster_id).state == State.TERMINATING
    t0 = time.monotonic()
    w.clusters.wait_get_cluster_terminated(c.cluster_id, timeout=T)
    assert time.monotonic() - t0 < 30
