"""The record provisioner: nodes are rows in a SQLite file that "boot" after a delay.

It exercises the whole lifecycle flow (and the benchmarks) without real machines. Nodes are
kept on disk, so they survive a restart of the control plane like real nodes would.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from shared.ports import Node, NodeRequest, NodeType, SparkVersion

NODE_TYPES = [
    NodeType("rec-small", 2, 4096, "Record node, 2 cores, 4 GB"),
    NodeType("rec-medium", 4, 8192, "Record node, 4 cores, 8 GB"),
    NodeType("rec-large", 8, 16384, "Record node, 8 cores, 16 GB"),
]
SPARK_VERSIONS = [
    SparkVersion("4.1.x-scala2.13", "4.1 (Apache Spark 4.1.4, Scala 2.13)"),
    SparkVersion("4.1.x-scala2.12", "4.1 (Apache Spark 4.1.4, Scala 2.12 key alias)"),
]


class RecordProvisioner:
    def __init__(
        self,
        path: Path,
        *,
        boot_s: float = 1.0,
        stop_s: float = 0.2,
        clock: Callable[[], int] | None = None,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.boot_ms = int(boot_s * 1000)
        self.stop_ms = int(stop_s * 1000)
        self._clock = clock or (lambda: int(time.time() * 1000))
        self._local = threading.local()
        with self._db() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS nodes (cluster_id TEXT, node_id TEXT PRIMARY KEY,"
                " role TEXT, start_ms INTEGER, ready_ms INTEGER, stop_ms INTEGER,"
                " lost INTEGER DEFAULT 0)"
            )
            db.execute("CREATE INDEX IF NOT EXISTS nodes_cluster ON nodes(cluster_id)")

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    def node_types(self) -> list[NodeType]:
        return list(NODE_TYPES)

    def spark_versions(self) -> list[SparkVersion]:
        return list(SPARK_VERSIONS)

    def observe(self, cluster_id: str) -> list[Node]:
        now = self._clock()
        db = self._db()
        db.execute(
            "DELETE FROM nodes WHERE cluster_id=? AND stop_ms IS NOT NULL AND stop_ms<=?",
            (cluster_id, now),
        )
        rows = db.execute(
            "SELECT node_id, role, start_ms, ready_ms, stop_ms, lost FROM nodes"
            " WHERE cluster_id=? ORDER BY role='worker', start_ms, node_id",
            (cluster_id,),
        ).fetchall()
        out = []
        for node_id, role, start_ms, ready_ms, stop_ms, lost in rows:
            if stop_ms is not None:
                status = "STOPPING"
            elif lost:
                status = "LOST"
            elif ready_ms <= now:
                status = "RUNNING"
            else:
                status = "STARTING"
            out.append(Node(node_id, role, status, start_ms, instance_id=node_id))
        return out

    def _add(self, cluster_id: str, role: str, count: int) -> list[Node]:
        now = self._clock()
        nodes = [
            Node(f"{cluster_id}-{role[0]}-{uuid.uuid4().hex[:8]}", role, "STARTING", now)  # type: ignore[arg-type]
            for _ in range(count)
        ]
        self._db().executemany(
            "INSERT INTO nodes(cluster_id,node_id,role,start_ms,ready_ms) VALUES (?,?,?,?,?)",
            [(cluster_id, n.node_id, role, now, now + self.boot_ms) for n in nodes],
        )
        return nodes

    def start_driver(self, req: NodeRequest) -> Node:
        return self._add(req.cluster_id, "driver", 1)[0]

    def add_workers(self, req: NodeRequest, count: int) -> list[Node]:
        return self._add(req.cluster_id, "worker", count)

    def remove_workers(self, cluster_id: str, node_ids: Sequence[str]) -> None:
        due = self._clock() + self.stop_ms
        self._db().executemany(
            "UPDATE nodes SET stop_ms=? WHERE cluster_id=? AND node_id=? AND stop_ms IS NULL",
            [(due, cluster_id, n) for n in node_ids],
        )

    def stop_cluster(self, cluster_id: str) -> None:
        self._db().execute(
            "UPDATE nodes SET stop_ms=? WHERE cluster_id=? AND stop_ms IS NULL",
            (self._clock() + self.stop_ms, cluster_id),
        )

    def cluster_ids(self) -> set[str]:
        return {r[0] for r in self._db().execute("SELECT DISTINCT cluster_id FROM nodes")}

    # Test and chaos hook: a node dies (like a process killed or a VM evicted).
    def lose_node(self, node_id: str) -> None:
        self._db().execute("UPDATE nodes SET lost=1 WHERE node_id=?", (node_id,))
