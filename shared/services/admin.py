"""Operator services: workspaces (each with its managed resource group where the provisioner
has one, and its first token) and the lifecycle queue's dead letters."""

from __future__ import annotations

import base64
import contextlib
import re
import secrets
from typing import Any

from shared.domain import quotas
from shared.domain.states import State
from shared.domain.tokens import NO_EXPIRY
from shared.errors import (
    InvalidParameterValue,
    NotImplementedApi,
    QuotaExceeded,
    ResourceAlreadyExists,
    ResourceDoesNotExist,
)
from shared.ports import (
    Delivery,
    FileStore,
    NotFound,
    QueueAdmin,
    Store,
    SubscriptionCapacityReached,
    WorkspaceResources,
)
from shared.services.auth import OPERATOR_WORKSPACE, Auth, Principal, parse_lifetime
from shared.services.clusters import ClusterService
from shared.services.deletion import DELETING, WorkspaceDeletion
from shared.services.documents import retry_on_conflict
from shared.services.quotas import QuotaService

_WS_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")


def _delivery(d: Delivery, *, with_body: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "sequence_number": d.sequence_number,
        "message_id": d.message_id,
        "session_id": d.session_id,
        "delivery_count": d.delivery_count,
        "enqueued_time": d.enqueued_ms,
        "dead_letter_reason": d.dead_letter_reason,
        "dead_letter_description": d.dead_letter_description,
    }
    if with_body:
        try:
            out["body"] = d.body.decode()
        except UnicodeDecodeError:
            out["body_base64"] = base64.b64encode(d.body).decode()
    return out


def _overrides(body: Any, defaults: quotas.Quotas) -> dict[str, int]:
    """The limits an operator names (validated against the known quotas)."""
    quotas.parse(body, defaults)
    return dict(body)


class Admin:
    def __init__(
        self,
        auth: Auth,
        store: Store,
        clusters: ClusterService,
        queues: QueueAdmin | None,
        workspaces: WorkspaceResources | None,
        files: FileStore,
        quotas: QuotaService,
        deletion: WorkspaceDeletion,
    ) -> None:
        self.quotas = quotas
        self.deletion = deletion
        self.auth = auth
        self.store = store
        self.clusters = clusters
        self.queues = queues
        self.workspaces = workspaces
        self.files = files

    # ------------------------------------------------------------------ workspaces

    def create_workspace(
        self, body: dict[str, Any], operator: Principal | None = None
    ) -> dict[str, Any]:
        name = body.get("name")
        if not isinstance(name, str) or not 0 < len(name) <= 100:
            raise InvalidParameterValue("name must be a string of 1..100 characters.")
        ws = body.get("workspace_id") or f"ws-{secrets.token_hex(6)}"
        if not isinstance(ws, str) or not _WS_ID.match(ws) or ws == OPERATOR_WORKSPACE:
            raise InvalidParameterValue(
                "workspace_id must be 1..40 lowercase letters, digits or dashes."
            )
        region = body.get("region")
        overrides = _overrides(body.get("quotas") or {}, self.quotas.defaults)
        old = self.store.get("workspace", ws, ws)
        if old is not None:
            deleting = " and is being deleted" if old.body.get("state") == DELETING else ""
            raise ResourceAlreadyExists(f"Workspace {ws} already exists{deleting}.")
        self.auth.ensure_workspace(ws, name, region=region, quotas=overrides)
        if self.workspaces is not None:
            try:
                self.workspaces.create_workspace(ws, region)
            except SubscriptionCapacityReached as e:
                # Every cloud subscription is full: the workspace is not made at all.
                with contextlib.suppress(NotFound):  # nobody else had written it
                    self.store.delete("workspace", ws, ws)
                raise QuotaExceeded(str(e)) from None
        user = body.get("admin_user") or "admin"
        # The workspace's root token: not bounded by the maximum lifetime (docs/security.md),
        # but no longer-lived than the operator token that made it.
        expiry = operator.expiry_time if operator is not None else NO_EXPIRY
        token, info = self.auth.issue_token(
            ws, user=str(user), comment="first token", expiry_ms=expiry
        )
        return {"workspace_id": ws, "name": name, "token_value": token, "token_info": info}

    def _workspace(self, ws: str) -> dict[str, Any]:
        rec = self.store.get("workspace", ws, ws)
        if rec is None or ws == OPERATOR_WORKSPACE:
            raise ResourceDoesNotExist(f"Workspace {ws} does not exist")
        out = dict(rec.body)
        if self.workspaces is not None:
            out["provisioning_state"] = self.workspaces.workspace_status(ws)
        return out

    def get_workspace(self, ws: str) -> dict[str, Any]:
        return self._workspace(ws)

    def list_workspaces(self) -> dict[str, Any]:
        recs = self.store.scan("workspace", field="state", values=["ACTIVE", DELETING])
        return {
            "workspaces": sorted(
                (r.body for r in recs if r.id != OPERATOR_WORKSPACE),
                key=lambda b: b["workspace_id"],
            )
        }

    def delete_workspace(self, ws: str) -> dict[str, Any]:
        """Start deleting the workspace and all it owns (shared/services/deletion.py): it is
        DELETING at once, and gone when the lifecycle queue has removed everything."""
        self._workspace(ws)
        return self.deletion.start(ws)

    # ------------------------------------------------------------------ quotas

    def get_quotas(self, ws: str) -> dict[str, Any]:
        body = self._workspace(ws)
        return {
            "workspace_id": ws,
            "quotas": self.quotas.of(ws).wire(),
            "overrides": body.get("quotas") or {},
            "usage": self.quotas.usage(ws),
        }

    def set_quotas(self, ws: str, body: dict[str, Any]) -> dict[str, Any]:
        """Set the named limits of a workspace; a limit given as null goes back to the
        default. Requests already admitted keep what they hold."""

        def step() -> None:  # another operator call writing in between: merge again
            rec = self.store.get("workspace", ws, ws)
            if rec is None or ws == OPERATOR_WORKSPACE or rec.body.get("state") != "ACTIVE":
                raise ResourceDoesNotExist(f"Workspace {ws} does not exist")
            merged = {**(rec.body.get("quotas") or {}), **body}
            kept = {k: v for k, v in merged.items() if v is not None}
            overrides = _overrides(kept, self.quotas.defaults)
            self.store.replace(
                "workspace", ws, ws, {**rec.body, "quotas": overrides}, etag=rec.etag
            )

        retry_on_conflict(step, f"workspace {ws}")
        return self.get_quotas(ws)

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        """Every workspace's clusters (not deleted) and, where the bus can count them, the
        lifecycle and job queues' messages: what `sparkplane status` shows."""
        recs = self.store.scan("cluster", field="state", values=[s.value for s in State])
        clusters = [
            {
                "workspace_id": b["workspace_id"],
                "cluster_id": b["cluster_id"],
                "cluster_name": (b.get("spec") or {}).get("cluster_name") or "",
                "state": b["state"],
                "state_message": b.get("state_message") or "",
                "workers": len(b.get("executors") or []),
                "target_workers": b.get("target_workers", 0),
                "start_time": b.get("start_time", 0),
            }
            for b in (r.body for r in recs)
            if not b.get("deleted")
        ]
        clusters.sort(key=lambda c: (c["workspace_id"], c["cluster_name"], c["cluster_id"]))
        out: dict[str, Any] = {"clusters": clusters}
        if self.queues is not None:
            settings = self.clusters.settings
            out["queues"] = [
                {"queue": q, **self.queues.counts(q)}
                for q in (settings.lifecycle_queue, settings.jobs_queue)
            ]
        return out

    # ------------------------------------------------------------------ operator tokens

    def list_operator_tokens(self) -> dict[str, Any]:
        tokens = self.auth.list_role_tokens(OPERATOR_WORKSPACE, "operator")
        return {"token_infos": sorted(tokens, key=lambda t: (t["creation_time"], t["token_id"]))}

    def create_operator_token(self, operator: Principal, body: dict[str, Any]) -> dict[str, Any]:
        """A new operator token for the caller's user, under the same lifetime rules as the
        Token API (never past the caller's own token)."""
        comment = body.get("comment") or ""
        if not isinstance(comment, str) or len(comment) > 1000:
            raise InvalidParameterValue("comment must be a string of at most 1000 characters.")
        token, info = self.auth.create_token(
            operator, comment=comment, lifetime_s=parse_lifetime(body)
        )
        return {"token_value": token, "token_info": {**info, "user": operator.user}}

    def revoke_operator_token(self, token_id: str) -> None:
        """Revoke any operator token (the caller's own included); it stays revoked across
        restarts, and devhost then writes a new one to `<data_dir>/operator-token`."""
        self.auth.revoke(OPERATOR_WORKSPACE, token_id)

    # ------------------------------------------------------------------ dead letters

    def _receiver(self) -> QueueAdmin:
        if self.queues is None:
            raise NotImplementedApi("This bus adapter does not expose its dead-letter queue.")
        return self.queues

    def dead_letters(self, queue: str) -> dict[str, Any]:
        rx = self._receiver()
        return {"messages": [_delivery(d, with_body=False) for d in rx.dead_letters(queue)]}

    def dead_letter(self, queue: str, seq: int) -> dict[str, Any]:
        for d in self._receiver().dead_letters(queue):
            if d.sequence_number == seq:
                return _delivery(d, with_body=True)
        raise ResourceDoesNotExist(f"Dead-lettered message {seq} does not exist in {queue}")

    def resubmit(self, queue: str, seq: int) -> None:
        if not self._receiver().resubmit_dead_letter(queue, seq):
            raise ResourceDoesNotExist(f"Dead-lettered message {seq} does not exist in {queue}")

    def purge(self, queue: str, seq: int | None = None) -> dict[str, Any]:
        """Delete the queue's dead letters (one, given its sequence number) once looked at."""
        purged = self._receiver().purge_dead_letters(queue, seq)
        if seq is not None and not purged:
            raise ResourceDoesNotExist(f"Dead-lettered message {seq} does not exist in {queue}")
        return {"purged": purged}
