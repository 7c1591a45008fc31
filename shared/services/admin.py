"""Operator services: workspaces (each with its managed resource group where the provisioner
has one, and its first token) and the lifecycle queue's dead letters."""

from __future__ import annotations

import base64
import contextlib
import re
import secrets
from typing import Any

from shared.domain.tokens import NO_EXPIRY
from shared.errors import (
    InvalidParameterValue,
    NotImplementedApi,
    ResourceAlreadyExists,
    ResourceDoesNotExist,
)
from shared.ports import Bus, Delivery, FileStore, Provisioner, Store
from shared.services.auth import OPERATOR_WORKSPACE, Auth, Principal, parse_lifetime
from shared.services.clusters import ClusterService

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


class Admin:
    def __init__(
        self,
        auth: Auth,
        store: Store,
        clusters: ClusterService,
        bus: Bus,
        provisioner: Provisioner,
        files: FileStore,
    ) -> None:
        self.auth = auth
        self.store = store
        self.clusters = clusters
        self.bus = bus
        self.provisioner = provisioner
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
        if self.store.get("workspace", ws, ws) is not None:
            raise ResourceAlreadyExists(f"Workspace {ws} already exists.")
        self.auth.ensure_workspace(ws, name, region=region)
        create = getattr(self.provisioner, "create_workspace", None)
        if create is not None:
            create(ws, region)
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
        status = getattr(self.provisioner, "workspace_status", None)
        if status is not None:
            out["provisioning_state"] = status(ws)
        return out

    def get_workspace(self, ws: str) -> dict[str, Any]:
        return self._workspace(ws)

    def list_workspaces(self) -> dict[str, Any]:
        recs = self.store.scan("workspace", field="state", values=["ACTIVE"])
        return {
            "workspaces": sorted(
                (r.body for r in recs if r.id != OPERATOR_WORKSPACE),
                key=lambda b: b["workspace_id"],
            )
        }

    def delete_workspace(self, ws: str, operator: Principal) -> None:
        self._workspace(ws)
        self.auth.revoke_all(ws)
        page_token: str | None = None
        while True:
            page = self.store.list("cluster", ws, page_size=500, page_token=page_token)
            for r in page.items:
                p = Principal(ws, operator.user, operator.token_id)
                with contextlib.suppress(ResourceDoesNotExist):
                    self.clusters.permanent_delete(p, {"cluster_id": r.id})
            page_token = page.next_token
            if not page_token:
                break
        delete = getattr(self.provisioner, "delete_workspace", None)
        if delete is not None:
            delete(ws)
        # Its files too: a workspace made again with the same id starts empty.
        self.files.delete_workspace(ws)
        self.store.delete("workspace", ws, ws)

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

    def _receiver(self) -> Any:
        if not hasattr(self.bus, "dead_letters"):
            raise NotImplementedApi("This bus adapter does not expose its dead-letter queue.")
        return self.bus

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
