"""What the ARM provisioner keeps of a cluster's nodes besides ARM: its worker slots (the ids
it handed out, matched to scale-set instances: shared/domain/azure_nodes.py) and the driver
agent's last `ready` report. Both live in the app's store (kind "arm-nodes", partition the
cluster id), so every instance of the app sees the same ids and the same readiness; without a
store (a provisioner used alone, as in its own tests) they live in this process's memory.

The book is read once per observe (a point read, no ARM request) and written only when it
changed, with the document's ETag: a concurrent writer makes the step read again
(`ATTEMPTS` times at most, then the caller's reconcile tries later).
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Callable
from typing import Any

from shared.domain.azure_nodes import ReadyReport, WorkerBook
from shared.ports import AlreadyExists, NotFound, PreconditionFailed, Store

KIND = "arm-nodes"
SLOTS = "slots"
READY = "ready"
# Concurrent writers of one cluster's book are a few app instances at most.
ATTEMPTS = 10


class NodeBook:
    def __init__(self, store: Store | None = None) -> None:
        self.store = store
        self._mem: dict[tuple[str, str], tuple[dict[str, Any], str]] = {}
        self._etags = itertools.count(1)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ documents

    def _get(self, cluster_id: str, id: str) -> tuple[dict[str, Any], str] | None:
        if self.store is not None:
            rec = self.store.get(KIND, cluster_id, id)
            return None if rec is None else (dict(rec.body), rec.etag)
        with self._lock:
            return self._mem.get((cluster_id, id))

    def _put(self, cluster_id: str, id: str, body: dict[str, Any], etag: str | None) -> None:
        """Create (etag None) or replace with the ETag; PreconditionFailed when somebody
        wrote in between."""
        if self.store is not None:
            try:
                if etag is None:
                    self.store.create(KIND, cluster_id, id, body)
                else:
                    self.store.replace(KIND, cluster_id, id, body, etag=etag)
            except (AlreadyExists, NotFound):  # created or deleted in between: read again
                raise PreconditionFailed(f"{KIND} {cluster_id}/{id} changed") from None
            return
        with self._lock:
            have = self._mem.get((cluster_id, id))
            if (have[1] if have else None) != etag:
                raise PreconditionFailed(f"{KIND} {cluster_id}/{id} changed")
            self._mem[(cluster_id, id)] = (body, str(next(self._etags)))

    def forget(self, cluster_id: str) -> None:
        """The cluster has no node left: its book goes."""
        for id in (SLOTS, READY):
            if self.store is not None:
                # NotFound: never written, or deleted by another instance.
                with contextlib.suppress(NotFound):
                    self.store.delete(KIND, cluster_id, id)
            else:
                with self._lock:
                    self._mem.pop((cluster_id, id), None)

    # ------------------------------------------------------------------ worker slots

    def slots(self, cluster_id: str) -> WorkerBook:
        got = self._get(cluster_id, SLOTS)
        return WorkerBook() if got is None else WorkerBook.from_body(got[0])

    def change(self, cluster_id: str, step: Callable[[WorkerBook], WorkerBook]) -> WorkerBook:
        """Apply `step` to the stored book and save the result if it differs."""
        for _ in range(ATTEMPTS):
            got = self._get(cluster_id, SLOTS)
            book = WorkerBook() if got is None else WorkerBook.from_body(got[0])
            new = step(book)
            if new == book:
                return book
            try:
                self._put(cluster_id, SLOTS, new.to_body(), None if got is None else got[1])
            except PreconditionFailed:
                continue  # another instance wrote the book: decide again on what it wrote
            return new
        raise PreconditionFailed(f"the worker slots of {cluster_id} changed too often; retry")

    # ------------------------------------------------------------------ readiness

    def ready(self, cluster_id: str) -> ReadyReport | None:
        got = self._get(cluster_id, READY)
        if got is None:
            return None
        b = got[0]
        return ReadyReport(str(b["node_id"]), int(b["executors"]), int(b["at_ms"]))

    def report_ready(self, cluster_id: str, report: ReadyReport) -> None:
        """Keep the newest report (an older one arriving late changes nothing)."""
        body = {"node_id": report.node_id, "executors": report.executors, "at_ms": report.at_ms}
        for _ in range(ATTEMPTS):
            got = self._get(cluster_id, READY)
            if got is not None and int(got[0].get("at_ms", 0)) > report.at_ms:
                return
            try:
                self._put(cluster_id, READY, body, None if got is None else got[1])
            except PreconditionFailed:
                continue  # a report written in between: compare with it
            return
