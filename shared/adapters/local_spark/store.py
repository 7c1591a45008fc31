"""What the local Spark provisioner knows, on disk: nodes and port allocations in SQLite (a
new provisioner over the same data_dir re-adopts the nodes still running)."""

from __future__ import annotations

import contextlib
import json
import random
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.adapters.sqlite_tx import write_transaction
from shared.domain import node_rules

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
  node_id TEXT PRIMARY KEY,
  cluster_id TEXT NOT NULL,
  role TEXT NOT NULL,
  start_ms INTEGER NOT NULL,
  created_s REAL NOT NULL,
  procs TEXT NOT NULL,
  ports TEXT NOT NULL,
  attrs TEXT NOT NULL,
  phase TEXT NOT NULL,
  phase_s REAL NOT NULL,
  term_s REAL,
  kill_s REAL,
  ready_s REAL,
  lost_s REAL
);
CREATE INDEX IF NOT EXISTS nodes_cluster ON nodes(cluster_id);
CREATE TABLE IF NOT EXISTS ports (
  port INTEGER PRIMARY KEY,
  node_id TEXT NOT NULL,
  cluster_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# Columns added after the first release (ALTER TABLE on an older file).
_MIGRATIONS = (
    ("pool_id", "ALTER TABLE nodes ADD COLUMN pool_id TEXT"),
    ("idle_since_ms", "ALTER TABLE nodes ADD COLUMN idle_since_ms INTEGER"),
    ("disk_bytes", "ALTER TABLE nodes ADD COLUMN disk_bytes INTEGER"),
    ("taken_ms", "ALTER TABLE nodes ADD COLUMN taken_ms INTEGER"),
)
COLS = (
    "node_id, cluster_id, role, start_ms, created_s, procs, ports, attrs, phase, phase_s,"
    " term_s, kill_s, ready_s, lost_s, pool_id, idle_since_ms, disk_bytes, taken_ms"
)

LOOPBACK = "127.0.0.1"


@dataclass(slots=True)
class Proc:
    name: str
    pid: int
    ctime: float


@dataclass(slots=True)
class Rec:
    node_id: str
    cluster_id: str
    role: str
    start_ms: int
    created_s: float
    procs: list[Proc]
    ports: dict[str, int]
    attrs: dict[str, str]
    phase: str
    phase_s: float
    term_s: float | None = None
    kill_s: float | None = None
    ready_s: float | None = None
    lost_s: float | None = None
    pool_id: str | None = None
    idle_since_ms: int | None = None
    disk_bytes: int | None = None
    # When a cluster took the pool node idle (wall clock, like ready_s): its acquisition time
    # is ready_s - taken_ms (shared/domain/pool_scaling.py).
    taken_ms: int | None = None

    @property
    def expected_procs(self) -> int:
        return node_rules.expected_procs(self.role)


def rec_of(row: Sequence[Any]) -> Rec:
    return Rec(
        node_id=row[0],
        cluster_id=row[1],
        role=row[2],
        start_ms=row[3],
        created_s=row[4],
        procs=[Proc(**p) for p in json.loads(row[5])],
        ports=json.loads(row[6]),
        attrs=json.loads(row[7]),
        phase=row[8],
        phase_s=row[9],
        term_s=row[10],
        kill_s=row[11],
        ready_s=row[12],
        lost_s=row[13],
        pool_id=row[14],
        idle_since_ms=row[15],
        disk_bytes=row[16],
        taken_ms=row[17],
    )


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


class NodeStore:
    """The nodes and port allocations table (one SQLite file, WAL)."""

    def __init__(
        self,
        db_path: Path,
        *,
        port_range: tuple[int, int],
        now_ms: Callable[[], int],
        scratch_quota: int,
    ) -> None:
        self._db_path = db_path
        self._port_range = port_range
        self._now_ms = now_ms
        self._scratch_quota = scratch_quota
        with self.db() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            have = {row[1] for row in db.execute("PRAGMA table_info(nodes)")}
            for column, ddl in _MIGRATIONS:
                if column not in have:
                    db.execute(ddl)

    @contextlib.contextmanager
    def db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self._db_path, timeout=30, isolation_level=None)
        try:
            yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: provisioners over the same data_dir take
        turns, so ports and pool capacity are never handed out twice)."""
        with self.db() as db, write_transaction(db):
            yield db

    # ---------------------------------------------------------------------------- reads

    def load(self, cluster_id: str) -> list[Rec]:
        with self.db() as db:
            rows = db.execute(
                f"SELECT {COLS} FROM nodes"
                " WHERE cluster_id=? ORDER BY role!='driver', start_ms, node_id",
                (cluster_id,),
            ).fetchall()
        return [rec_of(row) for row in rows]

    def load_pool(self, pool_id: str) -> list[Rec]:
        with self.db() as db:
            rows = db.execute(
                f"SELECT {COLS} FROM nodes WHERE pool_id=? ORDER BY start_ms, node_id",
                (pool_id,),
            ).fetchall()
        return [rec_of(row) for row in rows]

    def busy(self) -> list[str]:
        """Clusters (and '' for pools) with nodes being removed or given back."""
        with self.db() as db:
            rows = db.execute(
                "SELECT DISTINCT cluster_id FROM nodes WHERE phase NOT IN ('active', 'idle')"
            )
            return [row[0] for row in rows]

    def cluster_ids(self) -> set[str]:
        with self.db() as db:
            rows = db.execute("SELECT DISTINCT cluster_id FROM nodes WHERE cluster_id!=''")
            return {row[0] for row in rows}

    def pool_ids(self) -> set[str]:
        with self.db() as db:
            rows = db.execute("SELECT DISTINCT pool_id FROM nodes WHERE pool_id IS NOT NULL")
            return {row[0] for row in rows}

    @staticmethod
    def pool_size(db: sqlite3.Connection, pool_id: str) -> int:
        """Nodes that count toward max_capacity: all but the ones being removed."""
        row = db.execute(
            "SELECT COUNT(*) FROM nodes"
            " WHERE pool_id=? AND phase NOT IN ('stopping', 'terminating')",
            (pool_id,),
        ).fetchone()
        return int(row[0])

    # ---------------------------------------------------------------------------- writes

    def new_record(
        self,
        cluster_id: str,
        node_id: str,
        role: str,
        names: Sequence[str],
        *,
        pool_id: str | None = None,
        db: sqlite3.Connection | None = None,
    ) -> Rec:
        """Insert the node with freshly allocated ports (in `db`'s open transaction, or one of
        its own)."""
        if db is None:
            with self.tx() as tx:
                return self.new_record(cluster_id, node_id, role, names, pool_id=pool_id, db=tx)
        lo, hi = self._port_range
        span = hi - lo
        now = time.time()
        used = {row[0] for row in db.execute("SELECT port FROM ports")}
        row = db.execute("SELECT value FROM meta WHERE key='next_port'").fetchone()
        cursor = int(row[0]) if row else random.randrange(lo, hi)
        ports: dict[str, int] = {}
        for _ in range(span):
            if len(ports) == len(names):
                break
            port = lo + (cursor - lo) % span
            cursor = port + 1
            if port not in used and port_free(port):
                ports[names[len(ports)]] = port
        if len(ports) < len(names):
            raise RuntimeError(f"no free port left in {self._port_range}")
        rec = Rec(
            node_id=node_id,
            cluster_id=cluster_id,
            role=role,
            start_ms=self._now_ms(),
            created_s=now,
            procs=[],
            ports=ports,
            attrs={},
            phase="idle" if role == "pool" else "active",
            phase_s=now,
            pool_id=pool_id,
            idle_since_ms=self._now_ms() if role == "pool" else None,
            disk_bytes=self._scratch_quota,
        )
        db.executemany(
            "INSERT INTO ports(port, node_id, cluster_id) VALUES (?, ?, ?)",
            [(port, node_id, cluster_id) for port in ports.values()],
        )
        db.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES ('next_port', ?)", (str(cursor),)
        )
        db.execute(
            "INSERT INTO nodes(node_id, cluster_id, role, start_ms, created_s, procs, ports,"
            " attrs, phase, phase_s, pool_id, idle_since_ms, disk_bytes)"
            " VALUES (?, ?, ?, ?, ?, '[]', ?, '{}', ?, ?, ?, ?, ?)",
            (
                node_id,
                cluster_id,
                role,
                rec.start_ms,
                now,
                json.dumps(ports),
                rec.phase,
                now,
                pool_id,
                rec.idle_since_ms,
                rec.disk_bytes,
            ),
        )
        return rec

    def update(self, r: Rec, **values: Any) -> None:
        cols, args = [], []
        for k, v in values.items():
            cols.append(f"{k}=?")
            if k == "procs":
                v = json.dumps([{"name": p.name, "pid": p.pid, "ctime": p.ctime} for p in v])
            elif k == "attrs":
                v = json.dumps(v)
            args.append(v)
        with self.db() as db:
            db.execute(f"UPDATE nodes SET {', '.join(cols)} WHERE node_id=?", (*args, r.node_id))

    def set_phase(self, r: Rec, phase: str, now: float, **values: Any) -> None:
        r.phase, r.phase_s = phase, now
        self.update(r, phase=phase, phase_s=now, **values)

    def delete(self, r: Rec) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM ports WHERE node_id=?", (r.node_id,))
            db.execute("DELETE FROM nodes WHERE node_id=?", (r.node_id,))
