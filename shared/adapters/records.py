"""The record provisioner: nodes are rows in a SQLite file that "boot" after a delay.

It exercises the whole lifecycle flow (and the benchmarks) without real machines. Nodes are
kept on disk, so they survive a restart of the control plane like real nodes would.

A node is ready at `ready_ms` (STARTING before, RUNNING after) and, once asked to stop, gone
at `stop_ms`. Times are compared with the clock when the nodes are read; nothing runs in the
background.

Instance pools: a pool node has a `pool_id`. While no cluster uses it (`cluster_id` '') it is
PENDING_IDLE until `ready_ms`, then IDLE since `idle_since_ms`. A cluster takes idle nodes
first (a warm node is ready after `warm_boot_s`, a new one after `boot_s`; a node taken idle
records `taken_ms`, so that its acquisition time is `ready_ms - taken_ms`) and starts new
pool nodes while the pool is under its max_capacity. A pool node a cluster lets go is RETURNING
until `stop_ms`, then warms up again (PENDING_IDLE for `warm_boot_s`) instead of being
deleted; removing an idle node (remove_idle) deletes it after `stop_s`. Each idle period has a
nonce of its own: a driver taken idle reports the credential id made of it, which its cluster
adopts (shared/domain/spark_auth.py, "Adopted credentials"), as a hot local pool node does.
Taking and adding check the pool's size and write in one `BEGIN IMMEDIATE` transaction, so that
concurrent callers (threads or processes) never exceed max_capacity.

Every node has a local disk of `disk_bytes` (shown as the `disk_total_bytes` attribute);
grow_storage only ever grows it.

With `agents_dir`, a driver row also runs the one real part of a driver node: the cluster agent
(`python -m shared.agent`, a process group of its own), which runs the cluster's job tasks as
plain Python (there is no Spark). stop_cluster stops it (SIGTERM: the agent ends its tasks).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

import psutil

from shared.adapters.sqlite_tx import write_transaction
from shared.domain import spark_auth
from shared.domain.node_env import node_environment
from shared.ports import (
    Node,
    NodeRequest,
    NodeStatus,
    NodeType,
    PoolCapacityReached,
    PoolNode,
    PoolNodeStatus,
    PoolRequest,
    SparkVersion,
)
from shared.private_files import PRIVATE_UMASK, private, private_dir, private_file, write_private

NODE_TYPES = [
    NodeType("rec-small", 2, 4096, "Record node, 2 cores, 4 GB"),
    NodeType("rec-medium", 4, 8192, "Record node, 4 cores, 8 GB"),
    NodeType("rec-large", 8, 16384, "Record node, 8 cores, 16 GB"),
]
SPARK_VERSIONS = [
    SparkVersion("4.1.x-scala2.13", "4.1 (Apache Spark 4.1.4, Scala 2.13)"),
    SparkVersion("4.1.x-scala2.12", "4.1 (Apache Spark 4.1.4, Scala 2.12 key alias)"),
]

# Columns added after the first version of the table (added to existing files on open).
_ADDED_COLUMNS = {
    "pool_id": "TEXT",
    "idle_since_ms": "INTEGER",
    "disk_bytes": "INTEGER",
    "taken_ms": "INTEGER",
    # A pool node's nonce of its current idle period (its credential id's; NULL for a node
    # never idle), and whether the cluster took it idle.
    "idle_nonce": "TEXT",
}
_COLUMNS = (
    "node_id, cluster_id, role, start_ms, ready_ms, stop_ms, lost, disk_bytes,"
    " CASE WHEN taken_ms IS NOT NULL THEN idle_nonce END"
)
# A new nonce for each idle period (shared/domain/spark_auth.py, "Adopted credentials").
_NEW_NONCE = "lower(hex(randomblob(16)))"
# The pool nodes that count against max_capacity: all but the lost ones and those being
# removed (a returning node is still in a cluster, so it counts).
_LIVE = "pool_id=? AND lost=0 AND (stop_ms IS NULL OR cluster_id!='')"
# The pool nodes no cluster uses (taken in this order: IDLE first, longest idle first).
_UNUSED = "pool_id=? AND cluster_id='' AND stop_ms IS NULL AND lost=0"

Row = tuple[str, str, str, int, int, int | None, int, int | None, str | None]
# The agents this process started (reaped when they end: a zombie would look alive).
_AGENTS: dict[int, subprocess.Popen[bytes]] = {}


def _reap_agents() -> None:
    """Collect the exit status of the agents that ended (a zombie would look alive)."""
    for pid, proc in list(_AGENTS.items()):
        if proc.poll() is not None:
            _AGENTS.pop(pid, None)


def _alive_agent(d: Path) -> int | None:
    """The pid of the cluster's agent when it still runs (pid and create time match)."""
    try:
        info = json.loads((d / "agent.json").read_text())
        p = psutil.Process(int(info["pid"]))
        if p.status() != psutil.STATUS_ZOMBIE and abs(p.create_time() - info["create_time"]) < 0.01:
            return p.pid
    except (OSError, ValueError, KeyError, psutil.Error):
        pass  # no agent file, or its process is gone
    return None


class RecordProvisioner:
    def __init__(
        self,
        path: Path,
        *,
        boot_s: float = 1.0,
        stop_s: float = 0.2,
        warm_boot_s: float = 0.1,
        disk_bytes: int = 64 * 2**30,
        clock: Callable[[], int] | None = None,
        agents_dir: Path | None = None,
    ) -> None:
        self.path = Path(path)
        self.agents_dir = agents_dir
        self.path.parent.mkdir(parents=True, exist_ok=True)
        private_file(self.path)  # its -wal and -shm files get the same mode
        self.boot_ms = int(boot_s * 1000)
        self.stop_ms = int(stop_s * 1000)
        self.warm_boot_ms = int(warm_boot_s * 1000)
        self.disk_bytes = disk_bytes
        self._clock = clock or (lambda: int(time.time() * 1000))
        self._local = threading.local()
        with self._tx() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS nodes (cluster_id TEXT, node_id TEXT PRIMARY KEY,"
                " role TEXT, start_ms INTEGER, ready_ms INTEGER, stop_ms INTEGER,"
                " lost INTEGER DEFAULT 0)"
            )
            have = {r[1] for r in db.execute("PRAGMA table_info(nodes)")}
            for name, sql_type in _ADDED_COLUMNS.items():
                if name not in have:
                    db.execute(f"ALTER TABLE nodes ADD COLUMN {name} {sql_type}")
            db.execute("CREATE INDEX IF NOT EXISTS nodes_cluster ON nodes(cluster_id)")
            db.execute("CREATE INDEX IF NOT EXISTS nodes_pool ON nodes(pool_id)")
            db.execute("CREATE INDEX IF NOT EXISTS nodes_stop ON nodes(stop_ms)")

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        """One write transaction (taken at once, so a read in it is not stale when writing)."""
        return write_transaction(self._db())

    def _settle(self, db: sqlite3.Connection, now: int) -> None:
        """Apply the stops that are due: pool nodes a cluster let go warm up again, the other
        stopped nodes are gone. (Each statement is safe on its own, in or out of a
        transaction.) Most calls find nothing due: a read says so without taking the write
        lock, which every observe() of every thread would otherwise queue for."""
        if db.execute("SELECT 1 FROM nodes WHERE stop_ms<=? LIMIT 1", (now,)).fetchone() is None:
            return
        db.execute(
            "UPDATE nodes SET cluster_id='', role='worker', ready_ms=stop_ms+?,"
            f" idle_since_ms=stop_ms+?, stop_ms=NULL, taken_ms=NULL, idle_nonce={_NEW_NONCE}"
            " WHERE stop_ms<=? AND pool_id IS NOT NULL AND cluster_id!=''",
            (self.warm_boot_ms, self.warm_boot_ms, now),
        )
        db.execute(
            "DELETE FROM nodes WHERE stop_ms<=? AND (pool_id IS NULL OR cluster_id='')", (now,)
        )

    def node_types(self) -> list[NodeType]:
        return list(NODE_TYPES)

    def spark_versions(self) -> list[SparkVersion]:
        return list(SPARK_VERSIONS)

    @staticmethod
    def _rows(db: sqlite3.Connection, clause: str, args: Sequence[object]) -> list[Row]:
        return db.execute(f"SELECT {_COLUMNS} FROM nodes WHERE {clause}", args).fetchall()

    @staticmethod
    def _node(row: Row, now: int) -> Node:
        node_id, _, role, start_ms, ready_ms, stop_ms, lost, disk_bytes, nonce = row
        status: NodeStatus
        if stop_ms is not None:
            status = "STOPPING"
        elif lost:
            status = "LOST"
        elif ready_ms <= now:
            status = "RUNNING"
        else:
            status = "STARTING"
        attrs = {} if disk_bytes is None else {"disk_total_bytes": str(disk_bytes)}
        if role == "driver" and nonce:  # a pool node taken idle: the cluster adopts its id
            attrs[spark_auth.CREDENTIAL_ID_ATTR] = spark_auth.pool_node_credential_id(
                node_id, nonce
            )
        return Node(node_id, role, status, start_ms, instance_id=node_id, attrs=attrs)  # type: ignore[arg-type]

    def observe(self, cluster_id: str) -> list[Node]:
        now = self._clock()
        db = self._db()
        self._settle(db, now)
        rows = self._rows(
            db, "cluster_id=? ORDER BY role='worker', start_ms, node_id", (cluster_id,)
        )
        return [self._node(r, now) for r in rows]

    def _add(self, cluster_id: str, role: str, count: int) -> list[Node]:
        now = self._clock()
        nodes = [
            Node(f"{cluster_id}-{role[0]}-{uuid.uuid4().hex[:8]}", role, "STARTING", now)  # type: ignore[arg-type]
            for _ in range(count)
        ]
        self._db().executemany(
            "INSERT INTO nodes(cluster_id,node_id,role,start_ms,ready_ms,disk_bytes)"
            " VALUES (?,?,?,?,?,?)",
            [
                (cluster_id, n.node_id, role, now, now + self.boot_ms, self.disk_bytes)
                for n in nodes
            ],
        )
        return nodes

    def _take(self, cluster_id: str, pool: PoolRequest, role: str, count: int) -> list[Node]:
        """Give `count` nodes of the pool to the cluster: idle ones first, then new ones."""
        with self._tx() as db:
            now = self._clock()
            self._settle(db, now)
            unused = db.execute(
                f"SELECT node_id FROM nodes WHERE {_UNUSED}"
                " ORDER BY ready_ms>?, idle_since_ms, node_id LIMIT ?",
                (pool.pool_id, now, count),
            ).fetchall()
            new = count - len(unused)
            room = self._room(db, pool)
            if new > room:
                raise PoolCapacityReached(
                    f"Instance pool {pool.pool_id} has {len(unused)} idle node(s) and room for "
                    f"{room} more (max_capacity {pool.max_capacity}): {count} were asked for."
                )
            # A warm node runs its Spark role soon; a node still warming up when it is
            # taken is ready when both are done.
            db.executemany(
                "UPDATE nodes SET cluster_id=?, role=?, ready_ms=MAX(ready_ms, ?), taken_ms=?"
                " WHERE node_id=?",
                [(cluster_id, role, now + self.warm_boot_ms, now, r[0]) for r in unused],
            )
            created = [self._new_pool_node_id(pool) for _ in range(new)]
            db.executemany(
                "INSERT INTO nodes(cluster_id,node_id,role,start_ms,ready_ms,pool_id,disk_bytes)"
                " VALUES (?,?,?,?,?,?,?)",
                [
                    (cluster_id, n, role, now, now + self.boot_ms, pool.pool_id, self.disk_bytes)
                    for n in created
                ],
            )
            ids = [r[0] for r in unused] + created
            rows = {r[0]: r for r in self._rows(db, "cluster_id=?", (cluster_id,))}
        return [self._node(rows[n], now) for n in ids]

    @staticmethod
    def _new_pool_node_id(pool: PoolRequest) -> str:
        return f"{pool.pool_id}-p-{uuid.uuid4().hex[:8]}"

    @staticmethod
    def _room(db: sqlite3.Connection, pool: PoolRequest) -> int:
        """How many more nodes the pool may start (call it in the transaction that starts
        them)."""
        if pool.max_capacity is None:
            return sys.maxsize
        (live,) = db.execute(
            f"SELECT COUNT(*) FROM nodes WHERE {_LIVE}", (pool.pool_id,)
        ).fetchone()
        return pool.max_capacity - live

    def start_driver(self, req: NodeRequest) -> Node:
        if req.driver_pool is not None:
            node = self._take(req.cluster_id, req.driver_pool, "driver", 1)[0]
        else:
            node = self._add(req.cluster_id, "driver", 1)[0]
        if self.agents_dir is not None and req.agent_env:
            self._start_agent(req.cluster_id, req.agent_env)
        return node

    def _agent_dir(self, cluster_id: str) -> Path:
        assert self.agents_dir is not None
        if not cluster_id or "/" in cluster_id or cluster_id in (".", ".."):
            raise ValueError(f"bad cluster id {cluster_id!r}")
        return self.agents_dir / cluster_id

    def _start_agent(self, cluster_id: str, agent_env: Mapping[str, str]) -> None:
        """The driver's agent, once per cluster (a replayed start_driver finds it running)."""
        d = self._agent_dir(cluster_id)
        if _alive_agent(d) is not None:
            return
        private_dir(d)
        settings = dict(agent_env)
        token_file = d / "agent-token"
        write_private(token_file, settings.pop("SPARKPLANE_AGENT_TOKEN", ""))
        settings["SPARKPLANE_AGENT_TOKEN_FILE"] = str(token_file)
        settings["SPARKPLANE_TASKS_DIR"] = str(d / "tasks")
        settings["SPARKPLANE_DATA_DIR"] = str(
            d.parent.parent
        )  # <data dir>/<agents>/<cluster>  # (for devhost's clean-up)
        settings["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
        # From nothing, like a real node's (shared/domain/node_env.py); no Java here.
        env = node_environment(
            python=sys.executable, java_home=None, home=str(d), settings=settings
        )
        with open(d / "agent.log", "ab", opener=private) as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "shared.agent"],
                cwd=d,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
                umask=PRIVATE_UMASK,
            )
        _AGENTS[proc.pid] = proc
        info = {"pid": proc.pid, "create_time": psutil.Process(proc.pid).create_time()}
        write_private(d / "agent.json", json.dumps(info))

    def _stop_agent(self, cluster_id: str) -> None:
        if self.agents_dir is None:
            return
        pid = _alive_agent(self._agent_dir(cluster_id))
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
        _reap_agents()

    def add_workers(self, req: NodeRequest, count: int) -> list[Node]:
        if req.pool is not None:
            return self._take(req.cluster_id, req.pool, "worker", count)
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
        self._stop_agent(cluster_id)

    def cluster_ids(self) -> set[str]:
        _reap_agents()
        db = self._db()
        self._settle(db, self._clock())
        rows = db.execute("SELECT DISTINCT cluster_id FROM nodes WHERE cluster_id!=''")
        return {r[0] for r in rows}

    # Local storage.

    def grow_storage(self, cluster_id: str, node_id: str, total_bytes: int) -> None:
        self._db().execute(
            "UPDATE nodes SET disk_bytes=MAX(COALESCE(disk_bytes, 0), ?)"
            " WHERE cluster_id=? AND node_id=?",
            (total_bytes, cluster_id, node_id),
        )

    # Instance pools.

    def pool_nodes(self, pool_id: str) -> list[PoolNode]:
        now = self._clock()
        db = self._db()
        self._settle(db, now)
        rows = db.execute(
            "SELECT node_id, cluster_id, start_ms, ready_ms, stop_ms, lost, idle_since_ms,"
            " taken_ms FROM nodes WHERE pool_id=? ORDER BY start_ms, node_id",
            (pool_id,),
        ).fetchall()
        out = []
        for node_id, cluster_id, start_ms, ready_ms, stop_ms, lost, idle_since_ms, taken in rows:
            status: PoolNodeStatus
            if stop_ms is not None:
                status = "RETURNING" if cluster_id else "STOPPING"
            elif lost:
                status = "LOST"
            elif cluster_id:
                status = "USED" if ready_ms <= now else "PENDING_USED"
            else:
                status = "IDLE" if ready_ms <= now else "PENDING_IDLE"
            ran = ready_ms if status == "USED" and taken else 0
            out.append(
                PoolNode(node_id, status, cluster_id, start_ms, idle_since_ms or 0, taken or 0, ran)
            )
        return out

    def add_idle(self, req: PoolRequest, count: int) -> list[PoolNode]:
        with self._tx() as db:
            now = self._clock()
            ready = now + self.boot_ms
            nodes = [
                PoolNode(self._new_pool_node_id(req), "PENDING_IDLE", "", now, ready)
                for _ in range(max(0, min(count, self._room(db, req))))
            ]
            db.executemany(
                "INSERT INTO nodes(cluster_id,node_id,role,start_ms,ready_ms,pool_id,"
                "idle_since_ms,disk_bytes,idle_nonce)"
                f" VALUES ('',?,'worker',?,?,?,?,?,{_NEW_NONCE})",
                [(n.node_id, now, ready, req.pool_id, ready, self.disk_bytes) for n in nodes],
            )
        return nodes

    def remove_idle(self, pool_id: str, node_ids: Sequence[str]) -> None:
        with self._tx() as db:
            now = self._clock()
            self._settle(db, now)
            # A lost node no cluster uses goes too.
            db.executemany(
                "UPDATE nodes SET stop_ms=? WHERE pool_id=? AND node_id=? AND cluster_id=''"
                " AND stop_ms IS NULL",
                [(now + self.stop_ms, pool_id, n) for n in node_ids],
            )

    def pool_ids(self) -> set[str]:
        db = self._db()
        self._settle(db, self._clock())
        rows = db.execute("SELECT DISTINCT pool_id FROM nodes WHERE pool_id IS NOT NULL")
        return {r[0] for r in rows}

    # Test and chaos hook: a node dies (like a process killed or a VM evicted).
    def lose_node(self, node_id: str) -> None:
        self._db().execute("UPDATE nodes SET lost=1 WHERE node_id=?", (node_id,))
