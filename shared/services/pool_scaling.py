"""Pool-aware scaling: the pool's learned acquisition time and the forecast asks of its
clusters. The rules are pure (shared/domain/pool_scaling.py); this module stores and reads.

- **Acquisition time.** The pool reconcile (shared/services/pools.py) hands every observation
  of the pool's nodes to `learn`: each node a cluster took idle and that now runs for it is
  timed once (`taken_ms` to `ready_ms`, stamped by the provisioner) and folded into the
  document kind `boot` (the learned start times of shared/services/prewarm.py: partition the
  workspace) under the id `pool:<pool_id>`, with `seen_ms`, how far the pool's nodes were timed.
  `acquire_s` reads it (the default until 3 are timed), cached for one autoscaling tick.
- **Asks.** The autoscaling timer (shared/services/utilization.py) calls `ask` for each cluster
  that has the forecast on and draws its workers from a pool: the workers its forecast wants
  over the next node boot period beyond those it holds. An ask is a document of kind
  `pool_demand` (partition the pool, id the cluster, time to live 5 minutes) written when it
  changes or every 2 minutes; `target` sums the live asks of a pool for its reconcile.
"""

from __future__ import annotations

import logging
from typing import Any

from shared.domain import autoscale_prewarm as boot
from shared.domain import pool_scaling as rules
from shared.domain.forecast import Forecast
from shared.domain.nodes import PoolNode
from shared.domain.pools import Pool
from shared.ports import Store
from shared.services.documents import TickMemo, each, update, upsert
from shared.services.prewarm import BOOT_KIND

log = logging.getLogger("sparkplane.pool_scaling")

ASK_KIND = "pool_demand"


class PoolScaling:
    def __init__(self, store: Store, params: rules.PoolScalingParams | None = None) -> None:
        self.store = store
        self.params = params or rules.PoolScalingParams()
        # The asks this process wrote last, per (pool, cluster): extra and written_ms.
        self._asks: dict[tuple[str, str], dict[str, Any]] = {}
        # The expected acquisition times read during one tick.
        self._acquire: TickMemo[tuple[str, str], float] = TickMemo()

    # ------------------------------------------------------------------ acquisition time

    def learn(self, workspace_id: str, pool_id: str, nodes: list[PoolNode]) -> int:
        """Time the acquisitions the pool's nodes show that were not timed yet."""
        if not any(n.taken_ms for n in nodes):
            return 0
        timed: list[float] = []  # the acquisitions the write that landed folded in

        def fold(old: dict[str, Any] | None) -> dict[str, Any] | None:
            seen = int(old.get("seen_ms", 0)) if old else 0
            times, mark = rules.acquisitions(nodes, seen)
            if mark == seen:
                return None  # nothing new (or a replayed reconcile timed them first)
            stats = boot.BootStats(**old["stats"]) if old and old.get("stats") else None
            for seconds in times:
                stats = boot.learn_boot(stats, seconds, self.params.learn)
            timed[:] = times
            body: dict[str, Any] = {"pool_id": pool_id, "seen_ms": mark}
            if stats is not None:
                body["stats"] = stats.as_dict()
            return body

        body = update(self.store, BOOT_KIND, workspace_id, rules.acquire_key(pool_id), fold)
        if body is None or not timed:
            return 0
        stats = boot.BootStats(**body["stats"]) if body.get("stats") else None
        log.info(
            "pool acquisition timed",
            extra={"pool_id": pool_id, "seconds": timed, "expected_s": self._expected(stats)},
        )
        return len(timed)

    def _expected(self, stats: boot.BootStats | None) -> float:
        return rules.expected_acquire_s(stats, self.params)

    def acquire_s(self, workspace_id: str, pool_id: str, now_ms: int) -> float:
        """The pool's expected acquisition time (read once per tick)."""

        def read() -> float:
            rec = self.store.get(BOOT_KIND, workspace_id, rules.acquire_key(pool_id))
            stats = boot.BootStats(**rec.body["stats"]) if rec and rec.body.get("stats") else None
            return self._expected(stats)

        return self._acquire.get(now_ms, (workspace_id, pool_id), read)

    def expected_boot_s(self, pool: Pool | None, node_boot_s: float, now_ms: int) -> float:
        """The policy's expected boot for a cluster drawing from `pool` (or from none)."""
        if pool is None:
            return node_boot_s
        idle = int(pool.stats.get("idle_count", 0))
        acquire = self.acquire_s(pool.workspace_id, pool.instance_pool_id, now_ms) if idle else None
        return rules.expected_boot_s(node_boot_s, acquire, idle)

    def hold_join_s(
        self,
        pool: Pool,
        node_boot_s: float,
        acquire_s: float,
        f: Forecast | None,
        *,
        current: int,
        max_workers: int,
    ) -> float:
        """How far ahead a forecasting cluster on `pool` holds its forecast: one acquisition
        when the pool's idle nodes cover what `f` (the forecast of the next node boot) adds,
        else a node boot."""
        extra = rules.pool_ask(
            f, current_workers=current, max_workers=max_workers, horizon_s=node_boot_s
        ).extra
        idle = int(pool.stats.get("idle_count", 0))
        return rules.hold_join_s(node_boot_s, acquire_s, idle, extra)

    # ------------------------------------------------------------------ asks

    def ask(self, pool_id: str, cluster_id: str, ask: rules.PoolAsk, now_ms: int) -> bool:
        """Write the cluster's ask when it is due; True when written (the pool should look)."""
        key = (pool_id, cluster_id)
        prev = self._asks.get(key)
        if prev is None:
            rec = self.store.get(ASK_KIND, pool_id, cluster_id)
            prev = rec.body if rec is not None else None
            if prev is not None and int(prev.get("expires_ms", 0)) <= now_ms:
                prev = None  # lapsed: as if none (the store removes it in its time)
        if not rules.ask_due(prev, ask, now_ms, self.params):
            if prev is not None:
                self._asks[key] = prev
            return False
        doc = rules.ask_doc(
            ask, cluster_id=cluster_id, pool_id=pool_id, now_ms=now_ms, p=self.params
        )
        upsert(self.store, ASK_KIND, pool_id, cluster_id, doc, ttl_s=int(self.params.ttl_s))
        self._asks[key] = doc
        log.info("pool ask", extra={"pool_id": pool_id, "cluster_id": cluster_id, "why": ask.why})
        return True

    def target(self, pool: Pool, now_ms: int) -> rules.IdleTarget:
        """The pool's idle target: min_idle_instances and the live asks of its clusters."""
        asks = [r.body for r in each(self.store, ASK_KIND, pool.instance_pool_id)]
        return rules.idle_target(pool.spec.min_idle_instances, pool.spec.max_capacity, asks, now_ms)
