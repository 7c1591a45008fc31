"""kill -9 of devhost mid-flight, then a restart: every cluster converges, nothing twice."""

from __future__ import annotations

import sqlite3
from collections import Counter
from datetime import timedelta
from pathlib import Path

from databricks.sdk.service.compute import State

from devhost.process import DevhostProcess

V = "4.1.x-scala2.13"
T = timedelta(seconds=90)


def node_counts(data_dir: Path, cluster_id: str) -> Counter[str]:
    db = sqlite3.connect(data_dir / "records.db")
    try:
        rows = db.execute(
            "SELECT role FROM nodes WHERE cluster_id=? AND stop_ms IS NULL AND lost=0",
            (cluster_id,),
        ).fetchall()
    finally:
        db.close()
    return Counter(r[0] for r in rows)


def test_kill9_while_pending_resizing_and_terminating(tmp_path: Path) -> None:
    # Slow "boots" and "stops" so that clusters are caught in their transitional states (with
    # the default 0.2 s stop, a loaded machine saw the deleted cluster TERMINATED already).
    env = {"SPARKPLANE_RECORD_BOOT_S": "3", "SPARKPLANE_RECORD_STOP_S": "3"}
    h = DevhostProcess(tmp_path / "data", env=env).start()
    try:
        w = h.client()
        b = w.clusters.create_and_wait(
            spark_version=V, node_type_id="rec-small", num_workers=1, timeout=T
        ).cluster_id
        c = w.clusters.create_and_wait(
            spark_version=V, node_type_id="rec-small", num_workers=2, timeout=T
        ).cluster_id
        a = w.clusters.create(spark_version=V, node_type_id="rec-small", num_workers=2).cluster_id
        w.clusters.resize(b, num_workers=3)
        w.clusters.delete(c)
        states = {x: w.clusters.get(x).state for x in (a, b, c)}
        assert states == {a: State.PENDING, b: State.RESIZING, c: State.TERMINATING}
        h.kill9()

        h.start()
        w = h.client()
        assert w.clusters.wait_get_cluster_running(a, timeout=T).state == State.RUNNING
        assert w.clusters.wait_get_cluster_running(b, timeout=T).state == State.RUNNING
        assert w.clusters.wait_get_cluster_terminated(c, timeout=T).state == State.TERMINATED
        assert len(w.clusters.get(a).executors) == 2
        assert len(w.clusters.get(b).executors) == 3
        # nothing took effect twice: exactly the nodes asked for, and each event once
        assert node_counts(h.data_dir, a) == {"driver": 1, "worker": 2}
        assert node_counts(h.data_dir, b) == {"driver": 1, "worker": 3}
        assert node_counts(h.data_dir, c) == {}
        ev = {x: Counter(e.type.value for e in w.clusters.events(cluster_id=x)) for x in (a, b, c)}
        assert ev[a]["CREATING"] == 1 and ev[a]["RUNNING"] == 1
        assert ev[b]["RESIZING"] == 1 and ev[b]["UPSIZE_COMPLETED"] == 1
        assert ev[c]["TERMINATING"] == 1
    finally:
        h.close()


def test_restart_resumes_and_ctrl_c_is_clean(tmp_path: Path) -> None:
    h = DevhostProcess(tmp_path / "data", env={"SPARKPLANE_RECORD_BOOT_S": "2"}).start()
    try:
        w = h.client()
        a = w.clusters.create(spark_version=V, node_type_id="rec-small", num_workers=1).cluster_id
        assert h.stop() == 0  # Ctrl-C (SIGINT): a graceful stop
        assert "sparkplane stopped" in h.out.read_text()
        assert "Traceback" not in h.log.read_text()
        token = h.token
        h.start()
        assert h.token == token  # the same local token after a restart
        w = h.client()
        assert w.clusters.wait_get_cluster_running(a, timeout=T).state == State.RUNNING
        assert (h.data_dir / "token").stat().st_mode & 0o777 == 0o600
    finally:
        h.close()
