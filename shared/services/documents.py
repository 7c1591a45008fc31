"""Documents in the store as the services use them: typed load / save with an ETag / create /
delete, the one bounded retry on a concurrent write, and the records every service shares.

Optimistic concurrency. Every write of a document that others may write too is a
compare-and-swap: read it (with its ETag), decide, replace it with that ETag. A concurrent write
makes the replace raise PreconditionFailed; the writer then reads again and decides again.
`retry_on_conflict` is that loop, written once: it runs a read-decide-write step until the step
does not meet a conflict, at most ATTEMPTS times. A step that keeps losing, ATTEMPTS times in a
row, gives up with PreconditionFailed, which the HTTP translation answers 409 ABORTED ("retry
the request") and a queue function lets through (the message is delivered again).

Why 20. A conflict needs another writer between one step's read and its write (a few
milliseconds). The documents written this way have a handful of writers at most (an API call,
the run or lifecycle handler of that one document, a timer), so losing 20 times in a row means
something is writing in a loop; giving up then keeps a request from spinning forever.

Also here: the idempotency-token records of create-like requests (`Idempotency`), the last busy
moment of a cluster (`Activity`, written by heartbeats and by runs of tasks), and the cluster
documents with their events (`ClusterRepo`, the one writer of both).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from shared.domain.cluster import Cluster
from shared.domain.states import State
from shared.ports import AlreadyExists, PreconditionFailed, Record, Store
from shared.settings import Settings

log = logging.getLogger("sparkplane.documents")
# State changes of clusters are logged where the clusters service logs.
cluster_log = logging.getLogger("sparkplane.clusters")

# How many times one read-decide-write step is tried before PreconditionFailed (module doc).
ATTEMPTS = 20

T = TypeVar("T")
K = TypeVar("K")
M = TypeVar("M", bound=BaseModel)


def retry_on_conflict(step: Callable[[], T], what: str = "the document") -> T:
    """Run `step` (which reads, decides and writes) again while it raises PreconditionFailed,
    at most ATTEMPTS times; then PreconditionFailed("<what> changed too often; retry")."""
    for _ in range(ATTEMPTS):
        try:
            return step()
        except PreconditionFailed:
            continue  # somebody wrote in between: the step reads again
    raise PreconditionFailed(f"{what} changed too often; retry")


def each(store: Store, kind: str, pk: str, page_size: int = 500) -> Iterator[Record]:
    """Every document of one partition, page by page."""
    token: str | None = None
    while True:
        page = store.list(kind, pk, page_size=page_size, page_token=token)
        yield from page.items
        token = page.next_token
        if not token:
            return


class TickMemo(Generic[K, T]):
    """Values read from the store once per timer tick (a tick is one `now`): the autoscaler
    asks for the same pool's or node type's figure for every cluster that uses it."""

    def __init__(self) -> None:
        self._tick = -1
        self._values: dict[K, T] = {}

    def get(self, now_ms: int, key: K, read: Callable[[], T]) -> T:
        if now_ms != self._tick:
            self._tick = now_ms
            self._values.clear()
        if key not in self._values:
            self._values[key] = read()
        return self._values[key]


def update(
    store: Store,
    kind: str,
    pk: str,
    id: str,
    change: Callable[[dict[str, Any] | None], dict[str, Any] | None],
    *,
    ttl_s: int | None = None,
) -> dict[str, Any] | None:
    """Read-modify-write one document: `change(stored body, None when absent)` returns the
    body to write, or None to leave the document as it is. A concurrent write (a replace that
    lost, a create that found the document made) makes it read and change again, within
    `retry_on_conflict`'s bound. Returns the body written (None: nothing was)."""

    def step() -> dict[str, Any] | None:
        rec = store.get(kind, pk, id)
        body = change(rec.body if rec else None)
        if body is None:
            return None
        try:
            if rec is None:
                store.create(kind, pk, id, body, ttl_s=ttl_s)
            else:
                store.replace(kind, pk, id, body, etag=rec.etag)
        except AlreadyExists:  # created in between: a conflict like any other
            raise PreconditionFailed(f"{kind} {id} created concurrently") from None
        return body

    return retry_on_conflict(step, f"{kind} {id}")


def upsert(
    store: Store,
    kind: str,
    pk: str,
    id: str,
    body: dict[str, Any],
    *,
    newer: Callable[[dict[str, Any]], bool] = lambda old: True,
    ttl_s: int | None = None,
) -> None:
    """Create the document, or replace it when `newer(stored body)`. One that keeps losing
    to concurrent writes leaves the document to the writers that won (each writes the newest
    it knows, so the document never goes back)."""

    def change(old: dict[str, Any] | None) -> dict[str, Any] | None:
        return body if old is None or newer(old) else None

    try:
        update(store, kind, pk, id, change, ttl_s=ttl_s)
    except PreconditionFailed:  # others kept writing: theirs stands (see above)
        log.warning("upsert gave up", extra={"kind": kind, "id": id})


class Documents(Generic[M]):
    """The documents of one kind, as a pydantic model type: load with the record (its ETag),
    create, save with an ETag check (PreconditionFailed on a concurrent write), delete."""

    def __init__(
        self, store: Store, kind: str, model: type[M], *, ttl_s: int | None = None
    ) -> None:
        self.store = store
        self.kind = kind
        self.model = model
        self.ttl_s = ttl_s

    def load(self, pk: str, id: str) -> tuple[M, Record] | None:
        rec = self.store.get(self.kind, pk, id)
        if rec is None:
            return None
        return self.model.model_validate(rec.body), rec

    def parse(self, rec: Record) -> M:
        return self.model.model_validate(rec.body)

    def create(self, pk: str, id: str, doc: M) -> Record:
        """Raises AlreadyExists when (kind, pk, id) is taken."""
        return self.store.create(self.kind, pk, id, doc.model_dump(mode="json"), ttl_s=self.ttl_s)

    def save(self, rec: Record, doc: M) -> Record:
        """Replace the document `rec` was read as; PreconditionFailed if it changed since."""
        return self.store.replace(
            self.kind, rec.pk, rec.id, doc.model_dump(mode="json"), etag=rec.etag
        )

    def delete(self, pk: str, id: str, etag: str | None = None) -> None:
        """Raises NotFound when it is gone, PreconditionFailed when `etag` is stale."""
        self.store.delete(self.kind, pk, id, etag=etag)

    def each(self, pk: str) -> Iterator[M]:
        for rec in each(self.store, self.kind, pk):
            yield self.model.model_validate(rec.body)


class Idempotency:
    """The idempotency tokens of one kind of create request (`scope`: "cluster", "run"): a
    record per workspace and token, holding what the first request made (kept 7 days)."""

    KIND = "idempotency"
    TTL_S = 7 * 86400

    def __init__(self, store: Store, scope: str, field: str) -> None:
        self.store = store
        self.scope = scope
        self.field = field

    def _id(self, token: str) -> str:
        return f"{self.scope}:{token}"

    def find(self, workspace_id: str, token: str) -> Any | None:
        """What an earlier request with this token made, or None."""
        rec = self.store.get(self.KIND, workspace_id, self._id(token))
        return None if rec is None else rec.body[self.field]

    def claim(self, workspace_id: str, token: str, value: Any) -> Any | None:
        """Write `value` under the token unless a concurrent request did first: what the token
        holds now (`value` when this request won; None if the winner's record expired)."""
        try:
            self.store.create(
                self.KIND, workspace_id, self._id(token), {self.field: value}, ttl_s=self.TTL_S
            )
        except AlreadyExists:  # a concurrent request with the token was first: its value
            return self.find(workspace_id, token)
        return value


class Activity:
    """The last busy moment of each cluster (kind "activity", partition and id the cluster id):
    written by the cluster agent's heartbeats and by runs of tasks on the cluster, read by the
    idle timer and by clusters/get (last_activity_time)."""

    KIND = "activity"

    def __init__(self, store: Store) -> None:
        self.store = store

    def last(self, cluster_id: str) -> int | None:
        rec = self.store.get(self.KIND, cluster_id, cluster_id)
        return None if rec is None else int(rec.body["last_activity_ms"])

    def touch(self, cluster_id: str, now: int, *, every_ms: int = 1) -> None:
        """Record `now`, unless the stored moment is less than `every_ms` older (a busy cluster
        is not written on every look)."""
        upsert(
            self.store,
            self.KIND,
            cluster_id,
            cluster_id,
            {"cluster_id": cluster_id, "last_activity_ms": now},
            newer=lambda old: now - int(old.get("last_activity_ms", 0)) >= every_ms,
        )


# ---------------------------------------------------------------------------------------------
# Clusters

CLUSTER = "cluster"


def _log_change(old: Cluster, new: Cluster) -> None:
    """A state change, or nodes coming and going, as a log record (what `make run` shows and
    Application Insights keeps): the cluster's name and the reason, never a decision."""
    workers = len(new.executors)
    changed = new.state != old.state
    if (
        not changed
        and workers == len(old.executors)
        and (new.driver is None) == (old.driver is None)
    ):
        return
    reason = new.state_message
    if not reason and new.termination_reason is not None and new.state == State.TERMINATED:
        reason = new.termination_reason.code
    cluster_log.info(
        "cluster state" if changed else "cluster nodes",
        extra={
            "cluster_id": new.cluster_id,
            "cluster_name": new.spec.cluster_name or "",
            "workspace": new.workspace_id,
            "state": new.state.value,
            "previous_state": old.state.value,
            "reason": reason,
            "driver_up": new.driver is not None,
            "workers": workers,
            "target_workers": new.target_workers,
        },
    )


class ClusterRepo:
    """Loads and saves cluster documents; the one place that writes them (events included).

    A document carries the events of its last write (`pending_events`). They are appended with
    ids that make a second append a no-op, before and after every write, so an event is never
    lost to a crash between the two writes and never stored twice. `flush` is that append.
    """

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.event_ttl_s = settings.event_ttl_days * 86400

    def load(self, workspace_id: str, cluster_id: str) -> tuple[Cluster, Record] | None:
        rec = self.store.get(CLUSTER, workspace_id, cluster_id)
        if rec is None:
            return None
        return Cluster.model_validate(rec.body), rec

    def flush(self, c: Cluster) -> None:
        if c.pending_events:
            self.store.append_events(c.cluster_id, c.pending_events, ttl_s=self.event_ttl_s)

    def insert(self, c: Cluster) -> Record:
        """Raises AlreadyExists when the cluster id is taken."""
        rec = self.store.create(CLUSTER, c.workspace_id, c.cluster_id, c.doc())
        self.flush(c)
        return rec

    def save(self, old: Cluster, rec: Record, new: Cluster) -> Record:
        """Replace with an ETag check; raises PreconditionFailed on a concurrent write."""
        self.flush(old)
        out = self.store.replace(
            CLUSTER, new.workspace_id, new.cluster_id, new.doc(), etag=rec.etag
        )
        self.flush(new)
        _log_change(old, new)
        return out

    def remove(self, c: Cluster, rec: Record) -> None:
        """Delete the document (ETag-checked) and the cluster's events, its last events
        appended first."""
        self.flush(c)
        self.store.delete(CLUSTER, c.workspace_id, c.cluster_id, etag=rec.etag)
        self.store.delete_events(c.cluster_id)
