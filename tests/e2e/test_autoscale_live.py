"""Autoscaling and idle termination live: a real autoscale(1..3) local Spark cluster under a
Spark load grows to 3 workers, shrinks back when the load ends (events explain each step), is
never terminated while its long query runs, and is terminated for inactivity afterwards."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from databricks.sdk.service.compute import AutoScale, State

from devhost.process import DevhostProcess
from tests.e2e.hosts import FAST_AUTOSCALE, local_spark_devhost

pytestmark = pytest.mark.spark


@pytest.fixture
def host(tmp_path: Path) -> Iterator[DevhostProcess]:
    env = {
        "SPARKPLANE_AUTOSCALE_SCHEDULE": "*/2 * * * * *",
        "SPARKPLANE_IDLE_SCHEDULE": "*/2 * * * * *",
        "SPARKPLANE_AUTOSCALE_PARAMS": json.dumps(FAST_AUTOSCALE),
        # a "minute" of auto-termination lasts 4 s here: 10 minutes = 40 s
        "SPARKPLANE_IDLE_MINUTE_S": "4",
    }
    with local_spark_devhost(tmp_path / "data", env) as h:
        yield h


def test_scales_with_load_and_terminates_when_idle(host: DevhostProcess) -> None:
    from pyspark.sql import SparkSession

    w = host.client()
    c = w.clusters.create_and_wait(
        cluster_name="auto",
        spark_version=w.clusters.select_spark_version(scala="2.13"),
        node_type_id="local-small",
        autoscale=AutoScale(min_workers=1, max_workers=3),
        autotermination_minutes=10,
        timeout=timedelta(minutes=4),
    )
    cid = c.cluster_id
    assert len(c.executors) == 1
    spark = SparkSession.builder.remote(c.default_tags["SparkConnectUrl"]).getOrCreate()
    result: list[int] = []

    def load() -> None:
        # 60 tasks of 2 s each: a long query with a backlog on one 1-core worker (count(s)
        # needs every s, so the optimizer cannot prune the sleeping expression away)
        rows = spark.range(0, 60, 1, 60).selectExpr(
            "reflect('java.lang.Thread', 'sleep', cast(2000 as bigint)) AS s"
        )
        result.append(rows.selectExpr("count(s) AS n").collect()[0]["n"])

    t = threading.Thread(target=load)
    t.start()
    sizes: list[int] = []
    states: list[State] = []
    deadline = time.monotonic() + 240
    while t.is_alive() and time.monotonic() < deadline:
        g = w.clusters.get(cid)
        sizes.append(len(g.executors or []))
        states.append(g.state)
        time.sleep(1)
    t.join(60)
    spark.stop()
    assert result == [60]
    assert max(sizes) == 3, sizes  # grew to the maximum under the backlog
    # the query ran for longer than the 10 (2-second) minutes: never terminated meanwhile
    assert State.TERMINATING not in states and State.TERMINATED not in states

    def events(kind: str) -> list:
        return [e for e in w.clusters.events(cluster_id=cid, limit=500) if e.type.value == kind]

    # back to the minimum after the load (unless the idle timer is already ending it)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        g = w.clusters.get(cid)
        if g.state in (State.TERMINATING, State.TERMINATED):
            break
        if g.state == State.RUNNING and len(g.executors or []) == 1:
            break
        time.sleep(1)
    resizes = events("RESIZING")
    assert {e.details.cause.value for e in resizes} == {"AUTOSCALE"}
    targets = [e.details.target_num_workers for e in reversed(resizes)]  # oldest first
    assert max(targets) == 3 and targets[-1] == 1
    reports = events("AUTOSCALING_STATS_REPORT")
    assert len(reports) == len(resizes)
    assert all(r.details.reason.parameters.get("explanation") for r in reports)
    g = w.clusters.wait_get_cluster_terminated(cid, timeout=timedelta(minutes=3))
    assert g.termination_reason.code.value == "INACTIVITY"
    assert int(g.termination_reason.parameters["inactivity_duration_min"]) >= 10
    assert g.state_message.startswith("Inactive cluster terminated")
    # the idle termination came after the last scale-down decision
    [terminating] = events("TERMINATING")
    assert terminating.timestamp > resizes[0].timestamp
