"""`make run`'s readable output (devhost --readable): a line per cluster state change with the
cluster's name and reason, the nodes while it starts; the JSON lines in <data_dir>/log.jsonl."""

from __future__ import annotations

import io
import json
import logging
from datetime import timedelta
from pathlib import Path

from databricks.sdk.service import compute, jobs

from devhost.console import render
from devhost.process import DevhostProcess
from tests.support import wait_for


def test_readable_lines_and_json_log_file(tmp_path: Path) -> None:
    env = {
        "SPARKPLANE_JOBS_SCHEDULE": "*/1 * * * * *",
        "SPARKPLANE_JOBS_POLL_INTERVAL_S": "0.3",
        # Nodes that take a while to boot: the driver is there before the workers are.
        "SPARKPLANE_RECORD_BOOT_S": "1.5",
    }
    h = DevhostProcess(tmp_path / "data", env=env, args=["--readable"]).start()
    try:
        w = h.client()
        w.dbfs.upload("/hello.py", io.BytesIO(b"print('hello')"), overwrite=True)
        run = w.jobs.submit_and_wait(
            run_name="hello-run",
            tasks=[
                jobs.SubmitTask(
                    task_key="hello",
                    spark_python_task=jobs.SparkPythonTask(python_file="dbfs:/hello.py"),
                    new_cluster=compute.ClusterSpec(
                        spark_version="4.1.x-scala2.13", node_type_id="rec-small", num_workers=1
                    ),
                )
            ],
            timeout=timedelta(seconds=60),
        )
        run_lines = wait_for(
            "the run's final line",
            lambda: [
                ln
                for ln in h.out.read_text().splitlines()
                if f"run {run.run_id} hello-run" in ln and "SUCCESS" in ln
            ],
            timeout=30,
        )
        assert "→ TERMINATED SUCCESS" in run_lines[0]
        v = w.clusters.spark_versions().versions[0].key
        c = w.clusters.create_and_wait(
            cluster_name="readable",
            spark_version=v,
            node_type_id="rec-small",
            num_workers=2,
            timeout=timedelta(seconds=60),
        )
        w.clusters.delete_and_wait(c.cluster_id, timeout=timedelta(seconds=60))
        out = h.out

        def lines() -> list[str]:
            return [ln for ln in out.read_text().splitlines() if "readable" in ln]

        wait_for("TERMINATED", lambda: any("→ TERMINATED" in ln for ln in lines()), timeout=30)
        shown = lines()
        assert any(f"cluster readable ({c.cluster_id}) created → PENDING" in ln for ln in shown)
        assert any("cluster readable" in ln and "driver started, 0/2 workers" in ln for ln in shown)
        assert any(f"cluster readable ({c.cluster_id}) PENDING → RUNNING" in ln for ln in shown)
        assert any("TERMINATING → TERMINATED" in ln for ln in shown), shown
        assert not any(ln.lstrip().startswith("{") for ln in out.read_text().splitlines())
        records = [json.loads(ln) for ln in (h.data_dir / "log.jsonl").read_text().splitlines()]
        states = [r["state"] for r in records if r["msg"] == "cluster state"]
        assert states[-2:] == ["TERMINATING", "TERMINATED"] and "RUNNING" in states
        assert h.token not in (h.data_dir / "log.jsonl").read_text()
    finally:
        h.close()


def _record(msg: str, level: int = logging.INFO, **extra: object) -> logging.LogRecord:
    r = logging.LogRecord("sparkplane.jobs", level, __file__, 1, msg, None, None)
    r.__dict__.update(extra)
    return r


def test_run_states_and_warnings_render_in_one_line() -> None:
    line = render(
        _record(
            "run state",
            run_id=7,
            job_id=3,
            run_name="nightly",
            state="TERMINATED",
            result="FAILED",
            reason="Task x failed",
        )
    )
    assert line is not None and "run [bold]7[/] nightly" in line and "FAILED" in line
    assert "Task x failed" in line
    warn = render(_record("bad token dapi0123456789abcdef0123", logging.WARNING))
    assert warn is not None and "dapi01234567***" in warn and "abcdef0123" not in warn
    starting = render(
        _record(
            "cluster nodes",
            cluster_id="c1",
            cluster_name="big",
            state="PENDING",
            driver_up=True,
            workers=1,
            target_workers=3,
        )
    )
    assert starting is not None and "driver started, 1/3 workers" in starting
    assert render(_record("cluster nodes", state="RUNNING", workers=2)) is None
    assert render(_record("jobs tick")) is None, "routine records stay in the JSON file"
