"""Chaos, short: kill -9 of devhost while cluster operations run, five times (bench.chaos)."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from bench.chaos import run_chaos
from devhost.process import DevhostProcess
from tests.support import wait_for

TRIALS = 5


@pytest.mark.timeout(300)
def test_chaos_kill9_during_operations_loses_doubles_and_orphans_nothing() -> None:
    summary = run_chaos(TRIALS, seed=20260615)
    failures = json.dumps(summary["failures"], indent=1)[:6000]
    assert summary["trials"] == TRIALS
    assert summary["operations"] > 0 and summary["accepted"] > 0
    assert summary["lost"] == 0, failures
    assert summary["duplicated"] == 0, failures
    assert summary["orphaned"] == 0, failures
    assert summary["converged"] == TRIALS, failures


def test_downsize_then_pin_reaches_running(devhost: DevhostProcess) -> None:
    """What the chaos runs that do not converge have in common, made deterministic: a write
    (here a pin) shortly after a downsize makes a reconcile run while the removed workers are
    STOPPING; it saves the smaller executor list, and the reconcile that then finds the cluster
    converged changes nothing else, so RESIZING -> RUNNING is never saved."""
    c = httpx.Client(base_url=devhost.url, headers={"Authorization": f"Bearer {devhost.token}"})
    spec = {"spark_version": "4.1.x-scala2.13", "node_type_id": "rec-small", "num_workers": 2}
    cid = c.post("/api/2.1/clusters/create", json=spec).json()["cluster_id"]

    def state() -> str:
        return str(c.get("/api/2.1/clusters/get", params={"cluster_id": cid}).json()["state"])

    wait_for("RUNNING", lambda: state() == "RUNNING", 30, every=0.1)
    resize = {"cluster_id": cid, "num_workers": 0}
    assert c.post("/api/2.1/clusters/resize", json=resize).is_success
    time.sleep(0.05)
    assert c.post("/api/2.1/clusters/pin", json={"cluster_id": cid}).is_success
    wait_for("RUNNING again", lambda: state() == "RUNNING", 10, every=0.2)
    g = c.get("/api/2.1/clusters/get", params={"cluster_id": cid}).json()
    assert (g["state"], len(g.get("executors", []))) == ("RUNNING", 0)
