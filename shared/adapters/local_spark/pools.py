"""Pool nodes: idle nodes kept hot (each runs a standalone master already, and its Spark Connect
server when the provisioner derives credentials), taken by clusters and given back to their
pool when the cluster lets them go."""

from __future__ import annotations

import logging
import secrets
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from shared.adapters.local_spark import conf as cf
from shared.adapters.local_spark import processes as procs
from shared.adapters.local_spark.hot_workers import HotWorkers
from shared.adapters.local_spark.node_start import HOT_MASTER_ATTR
from shared.adapters.local_spark.store import COLS, Rec, rec_of
from shared.adapters.local_spark.supervision import (
    CREDENTIAL_ID_FILE,
    NODE_TYPE_FILE,
    READY_FILE,
    SECRET_FILE,
    driver_of,
)
from shared.domain import node_rules, spark_auth
from shared.ports import NodeRequest, PoolCapacityReached, PoolNode, PoolRequest
from shared.private_files import write_private

log = logging.getLogger("sparkplane.local_spark")


class PoolNodes(HotWorkers):
    """The pool half of the Provisioner port (shared/ports.py)."""

    def pool_nodes(self, pool_id: str) -> list[PoolNode]:
        """The pool's nodes. A node taken by a cluster is USED once it runs its Spark role,
        whether or not observe() of its cluster saw that first (the master of each cluster
        with a node not known to run yet is asked once)."""
        procs.reap()
        out: list[PoolNode] = []
        masters: dict[str, dict[str, Any] | None] = {}
        executors: dict[str, Callable[[], set[int]]] = {}
        recs = self.store.load_pool(pool_id)
        self._stray_hot_workers(recs)  # their master went: restarted (PENDING_IDLE below)
        for r in recs:
            status: str
            if r.phase == "idle":
                if not self._alive(r):
                    self._active_status(r, False, None)  # records the loss once
                    status = "LOST"
                elif r.ready_s is None and self._idle_up(r):
                    r.ready_s = time.time()
                    self.store.update(r, ready_s=r.ready_s)
                    status = "IDLE"
                else:
                    status = "IDLE" if r.ready_s is not None else "PENDING_IDLE"
            elif r.phase == "active":
                if not self._alive(r):
                    status = "LOST"
                else:
                    if r.ready_s is None:
                        if r.cluster_id not in masters:
                            driver = driver_of(self.store.load(r.cluster_id))
                            masters[r.cluster_id] = self._master_json(driver)
                            executors[r.cluster_id] = self._executors(driver)
                        # sets ready_s
                        self._active_status(r, True, masters[r.cluster_id], executors[r.cluster_id])
                    status = "USED" if r.ready_s is not None else "PENDING_USED"
            elif self._advance(r, None):
                if r.phase == "idle":  # given back just now: warm again soon
                    out.append(self._pool_node(r, "PENDING_IDLE"))
                continue
            else:
                status = "STOPPING" if r.phase == "stopping" and not r.cluster_id else "RETURNING"
            out.append(self._pool_node(r, status))
        return out

    def _idle_up(self, r: Rec) -> bool:
        """An idle node is IDLE once its hot processes answer: the master's UI, and the
        Spark Connect server's port and its application UI's REST API (asked once while idle,
        so the cluster's readiness check of its executors finds it built) when it runs one;
        a hot Worker's UI."""
        if r.attrs.get(HOT_MASTER_ATTR):
            return procs.port_open(r.ports["worker_ui"])
        if not procs.port_open(r.ports["master_ui"]):
            return False
        if procs.leader(r, "connect") is None:
            return True
        return procs.port_open(r.ports["connect"]) and self._app_ui_answers(r)

    def _pool_node(self, r: Rec, status: str) -> PoolNode:
        ran = status == "USED" and r.ready_s is not None and r.taken_ms is not None
        return PoolNode(
            node_id=r.node_id,
            status=status,  # type: ignore[arg-type]
            cluster_id=r.cluster_id,
            start_ms=r.start_ms,
            idle_since_ms=r.idle_since_ms or 0,
            taken_ms=r.taken_ms or 0,
            ready_ms=int(r.ready_s * 1000) if ran and r.ready_s is not None else 0,
        )

    def add_idle(self, req: PoolRequest, count: int) -> list[PoolNode]:
        """Warm idle nodes: each runs a standalone master already, so as a driver it only has
        to start its Spark Connect server (as a worker, the master makes way for a Worker)."""
        if count <= 0:
            return []
        node_rules.node_type(req.node_type_id)
        with self.store.tx() as db:
            n = node_rules.idle_to_add(
                count,
                max_capacity=req.max_capacity,
                pool_size=self.store.pool_size(db, req.pool_id),
            )
            recs = [
                self.store.new_record(
                    "", uuid.uuid4().hex, "pool", node_rules.PORTS_POOL, pool_id=req.pool_id, db=db
                )
                for _ in range(n)
            ]
        for rec in recs:
            write_private(self.launcher.dirs(rec)[0] / NODE_TYPE_FILE, req.node_type_id)
            self._warm(rec)
        if recs:
            log.info("pool nodes started", extra={"pool_id": req.pool_id, "count": len(recs)})
        return [self._pool_node(r, "PENDING_IDLE") for r in recs]

    def remove_idle(self, pool_id: str, node_ids: Sequence[str]) -> None:
        now = time.time()
        with self.store.tx() as db:
            db.executemany(
                "UPDATE nodes SET phase='stopping', phase_s=? WHERE node_id=? AND pool_id=?"
                " AND phase='idle'",
                [(now, nid, pool_id) for nid in node_ids],
            )
        wanted = set(node_ids)
        for r in self.store.load_pool(pool_id):
            if r.node_id in wanted and r.phase == "stopping" and r.term_s is None:
                self._terminate(r, "stopping", now)
                self._advance(r, None)
        self._kick_reaper()

    def pool_ids(self) -> set[str]:
        return self.store.pool_ids()

    def _take(
        self,
        pool: PoolRequest,
        cluster_id: str,
        role: node_rules.Role,
        count: int,
        driver_node: str = "",
    ) -> list[Rec]:
        """Nodes of `pool` for a cluster, in one transaction (shared/domain/node_rules.py
        decides which: a driver among the idle masters first, workers among the hot Workers
        of `driver_node` first); all or nothing (PoolCapacityReached)."""
        now = time.time()
        now_ms = self._now_ms()
        with self.store.tx() as db:
            rows = db.execute(
                f"SELECT {COLS} FROM nodes WHERE pool_id=? AND phase='idle' AND lost_s IS NULL",
                (pool.pool_id,),
            ).fetchall()
            idle = {r.node_id: r for r in map(rec_of, rows) if self._alive(r)}
            take = node_rules.take_from_pool(
                pool.pool_id,
                [
                    node_rules.IdleNode(
                        r.node_id,
                        r.ready_s is not None,
                        r.idle_since_ms or 0,
                        r.attrs.get(HOT_MASTER_ATTR, ""),
                    )
                    for r in idle.values()
                ],
                count,
                max_capacity=pool.max_capacity,
                pool_size=self.store.pool_size(db, pool.pool_id),
                role="driver" if role == "driver" else "worker",
                driver_node=driver_node,
            )
            if take.refused:
                raise PoolCapacityReached(take.refused)
            taken = [idle[node_id] for node_id in take.taken]
            for r in taken:
                r.cluster_id, r.role, r.phase, r.phase_s = cluster_id, role, "active", now
                # taken_ms on the wall clock, as ready_s: the acquisition time is their gap.
                r.start_ms, r.ready_s, r.taken_ms = now_ms, None, int(now * 1000)
                db.execute(
                    "UPDATE nodes SET cluster_id=?, role=?, phase='active', phase_s=?,"
                    " start_ms=?, ready_s=NULL, taken_ms=? WHERE node_id=?",
                    (cluster_id, role, now, now_ms, r.taken_ms, r.node_id),
                )
                db.execute("UPDATE ports SET cluster_id=? WHERE node_id=?", (cluster_id, r.node_id))
            fresh = [
                self.store.new_record(
                    cluster_id,
                    uuid.uuid4().hex,
                    role,
                    node_rules.PORTS_POOL,
                    pool_id=pool.pool_id,
                    db=db,
                )
                for _ in range(take.fresh)
            ]
        if taken:
            log.info(
                "pool nodes taken",
                extra={"pool_id": pool.pool_id, "cluster_id": cluster_id, "warm": len(taken)},
            )
        return taken + fresh

    def _warm(self, r: Rec) -> None:
        """Start the hot processes of an idle pool node: its master and, when the provisioner
        derives credentials, its Spark Connect server (with its application), both with
        credentials of a credential id of the node's own, new each time the node becomes idle,
        so at most one cluster ever uses them: the one that takes the node as its driver
        adopts the id (shared/domain/spark_auth.py, "Adopted credentials"). Without a deriver,
        a random secret of the node's own and no Connect server (docs/pools.md, "Hot nodes").
        Or, when an idle master of the pool still lacks its hot Worker, a Worker registered
        with it instead (hot_workers.py)."""
        try:
            master = self._hot_master_for(r)
            if master is not None:
                self._warm_worker(r, master)
                return
        except Exception:
            log.exception("hot worker failed", extra={"pool_id": r.pool_id, "node_id": r.node_id})
            return
        try:
            node_dir, _ = self.launcher.dirs(r)
            secret = secrets.token_hex(32)
            idle_req: NodeRequest | None = None
            if self._credentials is not None:
                cid = spark_auth.pool_node_credential_id(r.node_id, secrets.token_hex(16))
                write_private(node_dir / CREDENTIAL_ID_FILE, cid)
                creds = self._credentials(cid)
                secret = creds.auth_secret if creds else ""
                nt = self._pool_node_type(r)
                idle_req = NodeRequest(
                    cluster_id=r.node_id,
                    workspace_id="",
                    node_type_id=nt,
                    driver_node_type_id=nt,
                    spark_version=self.spark_version,
                    spark_auth_secret=secret,
                    connect_token=creds.connect_token if creds else "",
                )
            else:
                (node_dir / CREDENTIAL_ID_FILE).unlink(missing_ok=True)
            write_private(node_dir / SECRET_FILE, secret)
            props = (
                self.launcher.properties_file(r, "master") if self.launcher.cds_for(None) else None
            )
            argv = cf.master_argv(self.launcher.spark_home, r.ports, props)
            self.launcher.spawn(
                r,
                "master",
                argv,
                {**cf.daemon_conf(None), **spark_auth.auth_conf(secret)},
                None,
                node_rules.DAEMON_MEMORY,
                cds_role="master",
            )
            if idle_req is not None:  # a deriver: the Connect server runs hot too, warmed up
                self._spawn_connect(r, idle_req)
                self._spawn_idle_warmup(r, idle_req)
        except Exception:
            # The node stays idle without a master: it is seen LOST and replaced.
            log.exception("warm master failed", extra={"pool_id": r.pool_id, "node_id": r.node_id})

    def _rewarm(self, r: Rec) -> None:
        """A pool node whose cluster processes are gone: clean, idle and warm again."""
        procs.reap()
        node_dir, _ = self.launcher.dirs(r)
        shutil.rmtree(node_dir / "scratch", ignore_errors=True)
        shutil.rmtree(node_dir / "work", ignore_errors=True)
        (node_dir / "agent-token").unlink(missing_ok=True)
        (node_dir / READY_FILE).unlink(missing_ok=True)
        (node_dir / CREDENTIAL_ID_FILE).unlink(missing_ok=True)  # the next idle period's is new
        now = time.time()
        r.cluster_id, r.role, r.phase, r.phase_s = "", "pool", "idle", now
        r.procs, r.attrs = [], {}
        r.term_s = r.kill_s = r.ready_s = r.lost_s = None
        r.taken_ms = None
        r.idle_since_ms = r.start_ms = self._now_ms()
        r.disk_bytes = self._scratch_quota
        with self.store.tx() as db:
            done = db.execute(
                "UPDATE nodes SET cluster_id='', role='pool', phase='idle', phase_s=?,"
                " procs='[]', attrs='{}', term_s=NULL, kill_s=NULL, ready_s=NULL, lost_s=NULL,"
                " taken_ms=NULL,"
                " idle_since_ms=?, start_ms=?, disk_bytes=? WHERE node_id=? AND phase='returning'",
                (now, r.idle_since_ms, r.start_ms, r.disk_bytes, r.node_id),
            ).rowcount
            db.execute("UPDATE ports SET cluster_id='' WHERE node_id=?", (r.node_id,))
        if not done:
            return  # another thread gave it back first
        self._warm(r)
        log.info("node back in its pool", extra={"pool_id": r.pool_id, "node_id": r.node_id})
