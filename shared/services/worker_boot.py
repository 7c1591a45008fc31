"""Worker join times per workspace and node type: folded in by the reconcile that sees a
worker join, read by the autoscaler once per tick (the rule: shared/domain/worker_boot.py)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from shared.domain import worker_boot as rules
from shared.domain.autoscale_prewarm import BootStats
from shared.ports import Store
from shared.services.documents import TickMemo, update
from shared.services.prewarm import BOOT_KIND

log = logging.getLogger("sparkplane.worker_boot")


class WorkerBoot:
    def __init__(self, store: Store) -> None:
        self.store = store
        # The learned statistics read during one autoscaler tick.
        self._read: TickMemo[tuple[str, str], BootStats | None] = TickMemo()

    def learn(self, workspace_id: str, node_type: str, seconds: Sequence[float]) -> None:
        """Fold joins timed by a reconcile into the node type's document. A sample lost to a
        store failure costs only a slower-learned mean: logged, never raised into the
        reconcile, whose own write has already landed."""
        if not seconds or not node_type:
            return
        key = rules.key(node_type)

        def fold(old: dict[str, Any] | None) -> dict[str, Any]:
            stats = rules.learn(rules.stats_of(old), seconds)
            assert stats is not None
            return {"node_type": node_type, "stats": stats.as_dict()}

        try:
            update(self.store, BOOT_KIND, workspace_id, key, fold)
        except Exception:
            log.exception("worker join not learned", extra={"node_type": node_type})
            return
        log.info("worker join timed", extra={"node_type": node_type, "seconds": list(seconds)})

    def projection_boot_s(
        self, workspace_id: str, node_type: str, prior_s: float, now_ms: int
    ) -> float:
        """The boot the autoscaler projects over for this node type (read once per tick)."""
        if prior_s <= 0:
            return prior_s

        def read() -> BootStats | None:
            rec = self.store.get(BOOT_KIND, workspace_id, rules.key(node_type))
            return rules.stats_of(rec.body if rec else None)

        stats = self._read.get(now_ms, (workspace_id, node_type), read)
        return rules.projection_boot_s(stats, prior_s)
