"""Deleting a workspace: everything it owns goes, in passes carried by the lifecycle queue.

The admin API marks the workspace DELETING and revokes its tokens (no new work can come in),
then sends `delete_workspace` (session `workspace:<id>`). Each pass is idempotent: it removes
what can go at once (jobs, so schedules stop firing; runs; idempotency records; upload
handles; files; tokens made meanwhile) and starts what takes time (clusters permanently
deleted, pools deleted and drained, both by their own reconciles). A pass that finds no job,
run, cluster or pool left removes the per-cluster documents (tasks, activity, samples, disks)
of every cluster the deletion saw, the provisioner's workspace resources, and last the
workspace document: the id is free, and a workspace made again with it starts empty. Until
then each pass schedules the next; the reconciler timer re-sends a pass for every DELETING
workspace, so a lost message or a crash only delays the deletion.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from shared.domain.cluster import Cluster
from shared.errors import ResourceDoesNotExist
from shared.ports import (
    Bus,
    Clock,
    FileStore,
    NotFound,
    Record,
    Store,
    WorkspaceResources,
)
from shared.services.auth import Auth, Principal
from shared.services.clusters import ClusterService
from shared.services.documents import each, retry_on_conflict
from shared.services.messages import deletion_message
from shared.services.pools import PoolService
from shared.settings import Settings

log = logging.getLogger("sparkplane.deletion")

DELETING = "DELETING"
# Documents of the workspace's own partition that go at once.
AT_ONCE = (
    "job",
    "run",
    "idempotency",
    "dbfs_handle",
    "instance_pool_name",
    "prewarm_fire",  # clusters created ahead of scheduled runs (deleted with the others)
    "boot",  # the workspace's learned start times
)
# Documents kept per cluster (partition = cluster id).
PER_CLUSTER = ("task", "activity", "sample", "disk")


class WorkspaceDeletion:
    def __init__(
        self,
        store: Store,
        bus: Bus,
        auth: Auth,
        clusters: ClusterService,
        pools: PoolService,
        workspaces: WorkspaceResources | None,
        files: FileStore,
        clock: Clock,
        settings: Settings,
    ) -> None:
        self.store = store
        self.bus = bus
        self.auth = auth
        self.clusters = clusters
        self.pools = pools
        self.workspaces = workspaces
        self.files = files
        self.clock = clock
        self.settings = settings
        self.interval_ms = max(1, int(settings.reconcile_interval_s * 1000))

    # ------------------------------------------------------------------ start

    def start(self, ws: str) -> dict[str, Any]:
        """Mark the workspace DELETING (its tokens revoked at once) and send the first pass."""

        def mark() -> None:  # an operator call writing in between: read it again
            rec = self.store.get("workspace", ws, ws)
            if rec is None:
                raise ResourceDoesNotExist(f"Workspace {ws} does not exist")
            if rec.body.get("state") == DELETING:
                return
            body = {**rec.body, "state": DELETING, "deleting_since": self.clock.now_ms()}
            self.store.replace("workspace", ws, ws, body, etag=rec.etag)

        retry_on_conflict(mark, f"workspace {ws}")
        self.auth.revoke_all(ws)
        self.bus.send(self.settings.lifecycle_queue, [deletion_message(ws, f"wsdel:{ws}")])
        return {"workspace_id": ws, "state": DELETING}

    # ------------------------------------------------------------------ passes

    def _ids(self, kind: str, pk: str) -> Iterator[Record]:
        return each(self.store, kind, pk)

    def _drop(self, kind: str, pk: str) -> int:
        n = 0
        for r in list(self._ids(kind, pk)):
            with contextlib.suppress(NotFound):  # gone meanwhile (a TTL, another pass)
                self.store.delete(kind, pk, r.id)
            n += 1
        return n

    def _remember(self, rec: Record, cluster_ids: set[str]) -> Record:
        """Keep the ids of the workspace's clusters in its document: their per-cluster
        documents are removed once the clusters are gone."""
        known = set(rec.body.get("deleting_clusters") or [])
        if cluster_ids <= known:
            return rec
        body = {**rec.body, "deleting_clusters": sorted(known | cluster_ids)}
        return self.store.replace("workspace", rec.pk, rec.id, body, etag=rec.etag)

    def step(self, ws: str) -> bool:
        """One pass; True when the workspace is gone (or was not being deleted)."""
        rec = self.store.get("workspace", ws, ws)
        if rec is None or rec.body.get("state") != DELETING:
            return True
        operator = Principal(ws, "operator", "workspace-deletion")
        self.auth.revoke_all(ws)
        busy = sum(self._drop(kind, ws) for kind in ("job", "run"))
        for kind in AT_ONCE[2:]:
            self._drop(kind, ws)
        clusters = list(self._ids("cluster", ws))
        rec = self._remember(rec, {r.id for r in clusters})
        for r in clusters:
            if r.body.get("deleted"):
                c = Cluster.model_validate(r.body)
                self.clusters.kick(c, f"wsdel:{r.id}:{r.etag}")
                continue
            with contextlib.suppress(ResourceDoesNotExist):  # removed meanwhile
                self.clusters.permanent_delete(operator, {"cluster_id": r.id})
        pools = list(self._ids("instance_pool", ws))
        for r in pools:
            if r.body.get("state") == "DELETED":
                self.pools.kick(ws, r.id, f"wsdel:{r.id}:{r.etag}")
                continue
            with contextlib.suppress(ResourceDoesNotExist):  # removed meanwhile
                self.pools.delete(operator, {"instance_pool_id": r.id})
        self.files.delete_workspace(ws)
        if busy or clusters or pools:
            self.schedule(ws, rec.etag)
            return False
        for cid in rec.body.get("deleting_clusters") or []:
            for kind in PER_CLUSTER:
                self._drop(kind, cid)
            self.store.delete_events(cid)
        if self.workspaces is not None:
            self.workspaces.delete_workspace(ws)
        with contextlib.suppress(NotFound):  # a concurrent pass finished first
            self.store.delete("workspace", ws, ws)
        log.info("workspace deleted", extra={"workspace": ws})
        return True

    def schedule(self, ws: str, etag: str) -> None:
        due = self.clock.now_ms() + self.interval_ms
        msg_id = f"wsdel:{ws}:{etag}:{due // self.interval_ms}"
        self.bus.send(self.settings.lifecycle_queue, [deletion_message(ws, msg_id, due)])

    def sweep(self) -> dict[str, int]:
        """Re-send a pass for every workspace being deleted (a lost message, a crash)."""
        bucket = self.clock.now_ms() // max(1, int(self.settings.stuck_after_s * 1000))
        n = 0
        for r in self.store.scan("workspace", field="state", values=[DELETING]):
            self.bus.send(
                self.settings.lifecycle_queue,
                [deletion_message(r.id, f"wsdel-sweep:{r.id}:{bucket}")],
            )
            n += 1
        return {"workspaces_deleting": n}
