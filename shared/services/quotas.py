"""Quotas of each workspace: the limits (the operator's, kept in the workspace document, over
the defaults of SPARKPLANE_QUOTA_DEFAULTS) and the counts the rules of shared/domain/quotas.py
check a request against.

Counting reads the store at the request. Check and write happen under one lock per workspace
and resource (`admit`), so within one process two requests never both take the last unit.
Across processes (several Functions instances) two requests racing for the last unit can both
pass: the overshoot is at most one unit per instance racing (docs/security.md).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from shared.domain import jobs as jobs_dom
from shared.domain import quotas as dom
from shared.domain.states import State
from shared.ports import FileMissing, FileStore, Store
from shared.services.documents import each
from shared.settings import Settings

WORKSPACE = "workspace"


def default_quotas(settings: Settings) -> dom.Quotas:
    """The defaults of shared.domain.quotas.Quotas, overridden by SPARKPLANE_QUOTA_DEFAULTS."""
    if not settings.quota_defaults:
        return dom.Quotas()
    return dom.parse(json.loads(settings.quota_defaults), where="SPARKPLANE_QUOTA_DEFAULTS")


class QuotaService:
    def __init__(self, store: Store, files: FileStore, settings: Settings) -> None:
        self.store = store
        self.files = files
        self.defaults = default_quotas(settings)
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._locks_lock = threading.Lock()

    # ------------------------------------------------------------------ limits

    def of(self, workspace_id: str) -> dom.Quotas:
        """The workspace's limits: the operator's overrides over the defaults."""
        rec = self.store.get(WORKSPACE, workspace_id, workspace_id)
        overrides = (rec.body.get("quotas") if rec else None) or {}
        return dom.parse(overrides, self.defaults)

    @contextmanager
    def admit(self, workspace_id: str, resource: str) -> Iterator[dom.Quotas]:
        """Hold the workspace's lock of one resource while its request counts, checks and
        writes; yields the limits."""
        key = (workspace_id, resource)
        with self._locks_lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            yield self.of(workspace_id)

    # ------------------------------------------------------------------ counts

    def _docs(self, kind: str, pk: str) -> Iterator[dict[str, Any]]:
        return (r.body for r in each(self.store, kind, pk))

    def clusters(self, workspace_id: str, *, without: str = "") -> dom.ClusterUsage:
        """Clusters that count (not deleted, not TERMINATED) and their workers; `without`: a
        cluster left out (the one being edited or started)."""
        n = workers = 0
        for body in self._docs("cluster", workspace_id):
            if body["cluster_id"] == without or body.get("deleted"):
                continue
            if body["state"] == State.TERMINATED.value:
                continue
            n += 1
            workers += dom.stored_workers(body["spec"])
        return dom.ClusterUsage(n, workers)

    def jobs(self, workspace_id: str) -> int:
        return sum(1 for _ in self._docs("job", workspace_id))

    def active_runs(self, workspace_id: str) -> int:
        active = [s.value for s in jobs_dom.LifeCycle if s not in jobs_dom.FINAL]
        return sum(
            1 for r in self.store.scan("run", field="state", values=active) if r.pk == workspace_id
        )

    def pools(self, workspace_id: str) -> int:
        return sum(1 for b in self._docs("instance_pool", workspace_id) if b["state"] != "DELETED")

    def tokens(self, workspace_id: str, user: str) -> int:
        return sum(
            1
            for b in self._docs("token-info", workspace_id)
            if b["user"] == user and b.get("role", "user") == "user"
        )

    def file_bytes(self, workspace_id: str) -> int:
        """Bytes of every file of the workspace (a walk of its tree: O(files))."""
        total = 0
        todo = ["/"]
        while todo:
            try:
                entries = self.files.list(workspace_id, todo.pop())
            except FileMissing:  # removed meanwhile, or a workspace nothing was written to
                continue
            for e in entries:
                if e.is_dir:
                    todo.append(e.path)
                else:
                    total += e.size
        return total

    def usage(self, workspace_id: str) -> dict[str, int]:
        """What the admin API shows next to the limits."""
        c = self.clusters(workspace_id)
        return {
            "clusters": c.clusters,
            "total_workers": c.workers,
            "concurrent_runs": self.active_runs(workspace_id),
            "jobs": self.jobs(workspace_id),
            "pools": self.pools(workspace_id),
            "file_store_bytes": self.file_bytes(workspace_id),
        }
