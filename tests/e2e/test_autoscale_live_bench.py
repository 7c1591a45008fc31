"""`python -m bench.autoscale_live` end to end on real local Spark: a 2-minute trace whose
backlog makes the live autoscaler grow the cluster is replayed through devhost and simulated;
the JSON has both sides, every job finished on both, and the live numbers are sane. Then
`--live-from` re-runs only the simulator on the recorded live run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from devhost.process import ROOT, DevhostProcess

pytestmark = pytest.mark.spark

# 4 jobs in 2 minutes; the second one's 6 tasks of 15 s are a backlog on one 2-slot worker.
TRACE = "submit_s,tasks,task_s\n2,2,10\n15,6,15\n30,3,10\n70,1,5\n"


def _bench(*args: str, timeout: float) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.autoscale_live", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "node-seconds" in out.stdout and "sim/live" in out.stdout


def test_replays_live_then_simulates_the_same_trace(tmp_path: Path) -> None:
    trace = tmp_path / "mini.csv"
    trace.write_text(TRACE)
    work = tmp_path / "work"
    out = tmp_path / "al.json"
    try:
        _bench(
            "--trace",
            str(trace),
            "--minutes",
            "2",
            "--work-dir",
            str(work),
            "--json",
            str(out),
            timeout=300,
        )
    finally:
        DevhostProcess(work / "data").kill_leftovers()
    r = json.loads(out.read_text())
    live, sim = r["live_metrics"], r["sim"]
    assert live["jobs"] == sim["jobs"] == 4
    assert live["jobs_finished"] == sim["jobs_finished"] == 4
    assert live["node_seconds"] > 0 and sim["node_seconds"] > 0
    # at least the initial worker for the whole run, at most the maximum of 4 for it
    assert 120 <= live["node_seconds"] <= 4 * live["end_s"]
    assert live["slowdown_p50"] >= 1.0 and live["slowdown_p95"] >= live["slowdown_p50"]
    assert all(j["live_s"] >= j["ideal_s"] for j in r["per_job"])
    # the backlog made the live autoscaler grow the cluster: workers joined, the join time
    # was measured and the simulator booted its workers in that time
    assert r["live"]["initial_workers"] == 1
    assert any(x["cause"] == "AUTOSCALE" for x in r["live"]["resizes"])
    assert live["max_workers_seen"] > 1
    assert r["worker_join_s"]["n"] >= 1 and r["worker_join_s"]["median"] > 0
    assert sim["boot_s"] == pytest.approx(r["worker_join_s"]["median"], abs=0.01)
    # the simulator as bench.autoscale runs it, and with the live timer's timing
    assert r["sim+timer"]["jobs_finished"] == 4 and r["sim+timer"]["node_seconds"] > 0
    for name in ("sim", "sim+timer"):
        assert [row["metric"] for row in r["compare"][name]] == [
            "node-seconds",
            "slowdown p50",
            "slowdown p95",
        ]

    # the simulator alone, on the recorded live run, with another boot delay
    again = tmp_path / "again.json"
    _bench(
        "--trace",
        str(trace),
        "--minutes",
        "2",
        "--live-from",
        str(out),
        "--boot",
        "60",
        "--json",
        str(again),
        timeout=60,
    )
    r2 = json.loads(again.read_text())
    assert r2["live_metrics"] == live
    assert r2["sim"]["boot_s"] == 60
    assert r2["sim"]["jobs_finished"] == 4
