"""Workspaces and personal access tokens. Tokens are stored only as SHA-256 hashes."""

from __future__ import annotations

import contextlib
import hashlib
import secrets
from dataclasses import dataclass

from shared.errors import Unauthenticated
from shared.ports import AlreadyExists, Clock, Store

LOCAL_WORKSPACE = "local"


@dataclass(frozen=True)
class Principal:
    workspace_id: str
    user: str
    token_id: str


def token_hash(token: str) -> str:
    # Tokens are 128-bit random strings, so a fast unsalted hash is safe (no dictionary attack).
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "dapi" + secrets.token_hex(16)


class Auth:
    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    def ensure_workspace(self, workspace_id: str, name: str) -> None:
        with contextlib.suppress(AlreadyExists):
            self.store.create(
                "workspace",
                workspace_id,
                workspace_id,
                {"workspace_id": workspace_id, "name": name, "created": self.clock.now_ms()},
            )

    def issue_token(
        self,
        workspace_id: str,
        *,
        user: str,
        comment: str = "",
        lifetime_s: int | None = None,
        token: str | None = None,
    ) -> tuple[str, str]:
        """Make a token; returns (token value, token id). The value is never stored."""
        token = token or new_token()
        h = token_hash(token)
        now = self.clock.now_ms()
        token_id = h[:32]
        body = {
            "token_id": token_id,
            "workspace_id": workspace_id,
            "user": user,
            "comment": comment,
            "creation_time": now,
            "expiry_time": now + lifetime_s * 1000 if lifetime_s else -1,
        }
        with contextlib.suppress(AlreadyExists):  # the same token again (local restart)
            self.store.create("token", h, h, body, ttl_s=lifetime_s)
        return token, token_id

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization or not authorization.startswith("Bearer "):
            raise Unauthenticated("Missing or malformed Authorization header (Bearer token).")
        token = authorization[len("Bearer ") :].strip()
        h = token_hash(token)
        rec = self.store.get("token", h, h)
        if rec is None:
            raise Unauthenticated("Invalid access token.")
        exp = rec.body.get("expiry_time", -1)
        if exp != -1 and exp <= self.clock.now_ms():
            raise Unauthenticated("Invalid access token (expired).")
        return Principal(rec.body["workspace_id"], rec.body["user"], rec.body["token_id"])
