"""Each autoscaled cluster's recent samples and policy memory, kept between autoscaling ticks.

The autoscaling timer evaluates every running autoscale cluster on every tick (every 10 s)
over its newest `autoscale_samples` heartbeat samples (90: 15 minutes). Reading and converting
all of them each time costs 10,000 clusters x 90 documents a tick; but samples are append-only
(an agent creates one per heartbeat, nothing rewrites one, the store's time to live deletes the
old ones) and 89 of the 90 were read by the previous tick. So a window per cluster keeps the
converted samples, and a tick reads only the newest page of the partition (newest first:
sample ids are inverted timestamps) down to the newest sample it holds.

The policy's memory (`ScalingMemory`) is stored on the cluster only when the size changes;
between changes the policy folds every sample since the last change into it again (those of
the newest `autoscale_samples`). The window keeps the memory of its last decision too: folding
is sequential, so the kept memory plus the new samples is the stored one plus every sample
since the change; the same memory while the change is among the newest samples, and one that
saw more when it is older. The kept memory is used only while it descends from the stored one
(same last change), so a change written by another instance wins.

A cache in one process: another timer instance (or a restart) starts with empty windows and
reads full pages once. Windows of clusters a tick did not evaluate are dropped after it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.domain import autoscale as pol
from shared.ports import Store

SAMPLE = "sample"
# Samples read by the first page of a window's catch-up: a tick usually finds one new sample,
# and the page's second sample, held already, ends the read (a page's documents are decoded).
STEP = 2

Convert = Callable[[int, dict[str, Any], Mapping[str, str] | None], pol.Sample]


@dataclass(slots=True)
class _Window:
    node_ids: dict[str, str]
    ids: deque[str] = field(default_factory=deque)  # oldest first, as `samples`
    samples: deque[pol.Sample] = field(default_factory=deque)
    memory: pol.ScalingMemory | None = None


class SampleWindows:
    def __init__(self, store: Store, convert: Convert) -> None:
        self.store = store
        self.convert = convert
        self._windows: dict[str, _Window] = {}
        self._used: set[str] = set()

    def samples(self, cluster_id: str, limit: int, node_ids: Mapping[str, str]) -> list[pol.Sample]:
        """The newest `limit` samples of the cluster, oldest first."""
        self._used.add(cluster_id)
        w = self._windows.get(cluster_id)
        if w is None or w.node_ids != node_ids:
            # New, or the workers changed (samples name workers by address): read it all.
            w = _Window(dict(node_ids))
            self._windows[cluster_id] = w
        fresh = self._newer(cluster_id, w, limit)
        for rid, body in reversed(fresh):  # oldest of the new ones first
            w.ids.append(rid)
            w.samples.append(self.convert(body["ts_ms"], body, w.node_ids))
        while len(w.samples) > limit:
            w.ids.popleft()
            w.samples.popleft()
        return list(w.samples)

    def _newer(self, cluster_id: str, w: _Window, limit: int) -> list[tuple[str, dict[str, Any]]]:
        """The stored samples newer than the window's newest, newest first (at most `limit`)."""
        newest = w.ids[-1] if w.ids else None
        out: list[tuple[str, dict[str, Any]]] = []
        token: str | None = None
        size = STEP if newest is not None else limit
        while len(out) < limit:
            page = self.store.list(SAMPLE, cluster_id, page_size=size, page_token=token)
            for r in page.items:
                # Ids sort newest first, so an id at or past the newest held is held already
                # (two samples of one cluster in the same millisecond could hide one another:
                # one agent reports every `heartbeat_s`).
                if newest is not None and r.id >= newest:
                    return out
                out.append((r.id, r.body))
                if len(out) == limit:
                    return out
            if page.next_token is None:
                return out
            token = page.next_token
            size = min(limit, size * 4)
        return out

    def memory(self, cluster_id: str, stored: pol.ScalingMemory | None) -> pol.ScalingMemory | None:
        """The policy's memory to decide with: the window's, when it descends from `stored`
        (the same last change, at least as many samples folded in)."""
        w = self._windows.get(cluster_id)
        kept = w.memory if w is not None else None
        if kept is None:
            return stored
        if stored is None:
            return kept if kept.changed_at_ms is None else None
        same = (kept.changed_at_ms, kept.direction, kept.from_workers, kept.to_workers) == (
            stored.changed_at_ms,
            stored.direction,
            stored.from_workers,
            stored.to_workers,
        )
        return kept if same and kept.seen_until_ms >= stored.seen_until_ms else stored

    def remember(self, cluster_id: str, memory: pol.ScalingMemory | None) -> None:
        w = self._windows.get(cluster_id)
        if w is not None:
            w.memory = memory

    def end_tick(self) -> None:
        """Drop the windows of clusters this tick did not evaluate (stopped, deleted, fixed)."""
        for cluster_id in set(self._windows) - self._used:
            del self._windows[cluster_id]
        self._used = set()
