"""Hot Workers: an idle pool node that runs a Spark Worker registered with an idle master of
its pool (with that master's secret of its idle period), so the hot application of that master
has its executors while idle, and the cluster that takes the master takes its Workers with it.
The decisions are shared/domain/node_rules.py's (rule 3); this module carries them out
(docs/pools.md, "Hot Workers")."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Sequence

from shared.adapters.local_spark import conf as cf
from shared.adapters.local_spark import processes as procs
from shared.adapters.local_spark.node_start import HOT_MASTER_ATTR, WARMING_ATTR, NodeStart
from shared.adapters.local_spark.store import COLS, Rec, rec_of
from shared.adapters.local_spark.supervision import CREDENTIAL_ID_FILE, SECRET_FILE
from shared.domain import node_rules, spark_auth
from shared.ports import NodeRequest
from shared.private_files import write_private

log = logging.getLogger("sparkplane.local_spark")


class HotWorkers(NodeStart):
    """The hot-Worker half of the pool nodes (pools.py)."""

    def _warm(self, r: Rec) -> None:
        """Start the hot processes of an idle pool node (pools.py)."""
        raise NotImplementedError

    def _hot_master_for(self, r: Rec) -> Rec | None:
        """The idle master a node becoming idle runs a Worker for (node_rules.hot_worker_master),
        recorded on the node in the same transaction; None: it runs a master of its own, and is
        marked so in that transaction (`WARMING_ATTR`). The mark makes a master that is still
        starting count for a node deciding at the same time (two nodes given back at once would
        otherwise both run masters); such a node's Worker waits for its master to start."""
        if not r.pool_id:
            return None
        with self.store.tx() as db:
            rows = db.execute(
                f"SELECT {COLS} FROM nodes WHERE pool_id=? AND phase='idle' AND lost_s IS NULL"
                " AND node_id<>?",
                (r.pool_id, r.node_id),
            ).fetchall()
            idle = [rec_of(row) for row in rows]
            attached = Counter(x.attrs.get(HOT_MASTER_ATTR, "") for x in idle)
            masters = {
                x.node_id: x
                for x in idle
                if not x.attrs.get(HOT_MASTER_ATTR)
                and (
                    procs.leader(x, "master") is not None
                    or (x.attrs.get(WARMING_ATTR) == "master" and not x.procs)
                )
            }
            chosen = node_rules.hot_worker_master(
                [
                    node_rules.IdleMaster(m.node_id, attached[m.node_id], m.idle_since_ms or 0)
                    for m in masters.values()
                ]
            )
            r.attrs = {HOT_MASTER_ATTR: chosen} if chosen else {WARMING_ATTR: "master"}
            db.execute("UPDATE nodes SET attrs=? WHERE node_id=?", (json.dumps(r.attrs), r.node_id))
        if not chosen:
            return None
        master = self._started_master(chosen)
        if master is not None and self._node_secret(master):
            return master
        # Its master never started (or was taken meanwhile): a master of its own.
        r.attrs = {WARMING_ATTR: "master"}
        self.store.update(r, attrs=r.attrs)
        return None

    def _started_master(self, node_id: str) -> Rec | None:
        """The idle master `node_id` once its master process runs (its secret is written
        before), waiting while it is still starting; None when it is not an idle, starting or
        running master any more."""
        deadline = time.monotonic() + self._master_wait_s
        while True:
            with self.store.tx() as db:
                row = db.execute(f"SELECT {COLS} FROM nodes WHERE node_id=?", (node_id,)).fetchone()
            m = rec_of(row) if row is not None else None
            if m is None or m.phase != "idle" or m.lost_s is not None:
                return None
            if procs.leader(m, "master") is not None:
                return m
            if m.procs or time.monotonic() > deadline:
                return None  # started and gone, or never started
            time.sleep(0.05)

    def _warm_worker(self, r: Rec, master: Rec) -> None:
        """An idle node's hot Worker, registered with `master` (an idle pool node) with that
        master's secret: its 0600 secret file is copied (the Worker's own spark-defaults.conf,
        0600, carries it to the JVM; no command line or log line holds it)."""
        node_dir, _ = self.launcher.dirs(r)
        (node_dir / CREDENTIAL_ID_FILE).unlink(missing_ok=True)  # a Worker adopts nothing
        secret = self._node_secret(master)
        write_private(node_dir / SECRET_FILE, secret)
        nt = node_rules.node_type(self._pool_node_type(r))
        argv = cf.worker_argv(
            self.spark_home,
            r.ports,
            cores=node_rules.worker_cores(nt),
            memory_mb=nt.memory_mb,
            work_dir=node_dir / "work",
            master_url=f"spark://{cf.LOOPBACK}:{master.ports['master']}",
            properties_file=(
                self.launcher.properties_file(r, "worker") if self.launcher.cds_for(None) else None
            ),
        )
        self.launcher.spawn(
            r,
            "worker",
            argv,
            {**cf.daemon_conf(None), **spark_auth.auth_conf(secret)},
            None,
            node_rules.DAEMON_MEMORY,
            extra_env={"SPARK_WORKER_DIR": str(node_dir / "work")},
            cds_role="worker",
            after_port=(master.ports["master"], self._master_wait_s),
        )

    def _attached(self, master: Rec) -> list[Rec]:
        """The idle hot Workers registered with `master`."""
        if not master.pool_id:
            return []
        return [
            x
            for x in self.store.load_pool(master.pool_id)
            if x.phase == "idle" and x.attrs.get(HOT_MASTER_ATTR) == master.node_id
        ]

    def _release_hot_workers(self, driver: Rec, req: NodeRequest) -> None:
        """A driver taken from a pool: its hot Workers beyond what the cluster keeps
        (node_rules.hot_workers_kept) are restarted toward another idle master at once, so
        the cluster's master offers it no Worker it did not take."""
        attached = {x.node_id: x for x in self._attached(driver)}
        if not attached:
            return
        _, released = node_rules.hot_workers_kept(
            list(attached),
            wanted=req.num_workers,
            settings_fit=self._keeps_hot(driver, req),
            same_pool=req.pool is not None and req.pool.pool_id == driver.pool_id,
        )
        for node_id in released:
            self._rehome(attached[node_id])

    def _stray_hot_workers(self, recs: Sequence[Rec]) -> set[str]:
        """Restart the idle hot Workers of a pool whose master is not idle any more
        (node_rules.hot_worker_stray); returns their ids."""
        by_id = {x.node_id: x for x in recs}
        now = time.time()
        out: set[str] = set()
        for r in recs:
            master_id = r.attrs.get(HOT_MASTER_ATTR) if r.phase == "idle" else None
            if not master_id:
                continue
            m = by_id.get(master_id)
            if node_rules.hot_worker_stray(
                alive=self._alive(r),
                master_phase=m.phase if m is not None else None,
                master_alive=m is not None and self._alive(m),
                master_taken_for_s=now - m.phase_s if m is not None else 0.0,
            ):
                self._rehome(r)
                out.add(r.node_id)
        return out

    def _rehome(self, r: Rec) -> None:
        """Stop an idle node's hot Worker (and its executors) now and warm it again: a Worker
        of another idle master, or a master of its own."""
        with self.store.tx() as db:
            row = db.execute(f"SELECT {COLS} FROM nodes WHERE node_id=?", (r.node_id,)).fetchone()
            now = rec_of(row) if row is not None else None
            if now is None or (now.phase, now.procs, now.attrs) != ("idle", r.procs, r.attrs):
                return  # taken, or restarted by another instance, meanwhile
            db.execute(
                "UPDATE nodes SET procs='[]', attrs='{}', ready_s=NULL WHERE node_id=?",
                (r.node_id,),
            )
        for pr in r.procs:
            p = procs.live(pr.pid, pr.ctime)
            if p is not None:
                procs.stop_process(p, self._kill_grace_s)
        r.procs, r.attrs, r.ready_s = [], {}, None
        with self.store.tx() as db:
            row = db.execute(
                "SELECT phase, procs FROM nodes WHERE node_id=?", (r.node_id,)
            ).fetchone()
        if row is None or tuple(row) != ("idle", "[]"):
            return  # taken (or removed) while it stopped: not warmed here
        log.info("hot worker restarted", extra={"pool_id": r.pool_id, "node_id": r.node_id})
        self._warm(r)
