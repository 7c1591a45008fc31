"""Workspaces and tokens. Token values are never stored: only their SHA-256 hashes.

Roles: "user" tokens call the workspace APIs; "operator" tokens call the admin endpoints;
"agent" tokens belong to one cluster and only post that cluster's heartbeats.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any, Literal

from shared.domain.tokens import NO_EXPIRY, new_token_expiry, ttl_s
from shared.errors import (
    InvalidParameterValue,
    PermissionDenied,
    ResourceDoesNotExist,
    Unauthenticated,
)
from shared.ports import AlreadyExists, Clock, NotFound, Store
from shared.services.documents import each

LOCAL_WORKSPACE = "local"
OPERATOR_WORKSPACE = "_operator"
Role = Literal["user", "operator", "agent"]


@dataclass(frozen=True)
class Principal:
    workspace_id: str
    user: str
    token_id: str
    role: Role = "user"
    # For agent tokens: the one cluster they may report for.
    scope: str = ""
    # The token's own expiry (ms since the epoch, -1: none): tokens it makes expire no later.
    expiry_time: int = NO_EXPIRY


def token_hash(token: str) -> str:
    # Tokens are 128-bit random strings, so a fast unsalted hash is safe (no dictionary attack).
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "dapi" + secrets.token_hex(16)


def _public(info: dict[str, Any]) -> dict[str, Any]:
    return {k: info[k] for k in ("token_id", "creation_time", "expiry_time", "comment")}


class TokenRevoked(Exception):
    """A token value given to `issue_token` was revoked before: it stays revoked."""


class Auth:
    def __init__(self, store: Store, clock: Clock, *, max_lifetime_s: int = 0) -> None:
        self.store = store
        self.clock = clock
        # The operator's maximum lifetime of tokens made through the APIs (0: none).
        self.max_lifetime_s = max_lifetime_s

    # ------------------------------------------------------------------ workspaces

    def ensure_workspace(self, workspace_id: str, name: str, **extra: Any) -> dict[str, Any]:
        body = {
            "workspace_id": workspace_id,
            "name": name,
            "state": "ACTIVE",
            "created": self.clock.now_ms(),
        }
        body.update(extra)
        with contextlib.suppress(AlreadyExists):
            return self.store.create("workspace", workspace_id, workspace_id, body).body
        rec = self.store.get("workspace", workspace_id, workspace_id)
        return rec.body if rec else body

    # ------------------------------------------------------------------ tokens

    def issue_token(
        self,
        workspace_id: str,
        *,
        user: str,
        comment: str = "",
        lifetime_s: int | None = None,
        token: str | None = None,
        role: Role = "user",
        scope: str = "",
        expiry_ms: int | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """Make a token (expiring at `expiry_ms`, else after `lifetime_s`, else never);
        returns (token value, public token info). The value is not stored. A given `token`
        that was revoked raises TokenRevoked (a bootstrap file cannot bring it back)."""
        if token and self.store.get("token-revoked", token_hash(token), token_hash(token)):
            raise TokenRevoked("This token was revoked.")
        token = token or new_token()
        h = token_hash(token)
        now = self.clock.now_ms()
        if expiry_ms is None:
            expiry_ms = now + lifetime_s * 1000 if lifetime_s else NO_EXPIRY
        keep_s = ttl_s(now, expiry_ms)
        info: dict[str, Any] = {
            "token_id": h[:32],
            "workspace_id": workspace_id,
            "user": user,
            "comment": comment,
            "creation_time": now,
            "expiry_time": expiry_ms,
            "role": role,
            "scope": scope,
            "hash": h,
        }
        # The listing record first, then the lookup record: a crash in between leaves a
        # listed token that does not authenticate (harmless), never an unlisted live one.
        with contextlib.suppress(AlreadyExists):
            self.store.create("token-info", workspace_id, info["token_id"], info, ttl_s=keep_s)
        with contextlib.suppress(AlreadyExists):  # the same token again (local restart)
            self.store.create("token", h, h, info, ttl_s=keep_s)
        return token, _public(info)

    def create_token(
        self, p: Principal, *, comment: str, lifetime_s: int | None
    ) -> tuple[str, dict[str, Any]]:
        """A token made by the caller `p` for itself (same workspace, user and role): at most
        the maximum lifetime, and never past `p`'s own expiry (shared/domain/tokens.py)."""
        expiry = new_token_expiry(
            self.clock.now_ms(),
            lifetime_s,
            max_lifetime_s=self.max_lifetime_s,
            parent_expiry_ms=p.expiry_time,
        )
        return self.issue_token(
            p.workspace_id, user=p.user, comment=comment, role=p.role, expiry_ms=expiry
        )

    def list_tokens(self, p: Principal) -> list[dict[str, Any]]:
        return [
            _public(r.body)
            for r in each(self.store, "token-info", p.workspace_id)
            if r.body["user"] == p.user and r.body["role"] == "user"
        ]

    def revoke(self, workspace_id: str, token_id: str, *, user: str | None = None) -> None:
        rec = self.store.get("token-info", workspace_id, token_id)
        if rec is None or (user is not None and rec.body["user"] != user):
            raise ResourceDoesNotExist(f"Token {token_id} does not exist")
        h = rec.body["hash"]
        if rec.body.get("role") != "agent":
            # First, so that no restart re-registers it from a bootstrap file (agent tokens
            # are never given by value). Kept while the token would have lived.
            now = self.clock.now_ms()
            with contextlib.suppress(AlreadyExists):  # a revocation retried
                self.store.create(
                    "token-revoked",
                    h,
                    h,
                    {"token_id": token_id, "revoked_time": now},
                    ttl_s=ttl_s(now, rec.body.get("expiry_time", NO_EXPIRY)),
                )
        with contextlib.suppress(NotFound):
            self.store.delete("token", h, h)
        with contextlib.suppress(NotFound):
            self.store.delete("token-info", workspace_id, token_id)

    def list_role_tokens(self, workspace_id: str, role: Role) -> list[dict[str, Any]]:
        """The tokens of a role in a workspace, every user's (the admin API's listing of
        operator tokens), each with its user."""
        return [
            {**_public(r.body), "user": r.body["user"]}
            for r in each(self.store, "token-info", workspace_id)
            if r.body["role"] == role
        ]

    def revoke_all(self, workspace_id: str) -> int:
        n = 0
        while True:
            page = self.store.list("token-info", workspace_id, page_size=500, page_token=None)
            if not page.items:
                return n
            for r in page.items:
                self.revoke(workspace_id, r.id)
                n += 1

    def authenticate(self, authorization: str | None) -> Principal:
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("Missing or malformed Authorization header (Bearer token).")
        h = token_hash(token)
        rec = self.store.get("token", h, h)
        if rec is None:
            raise Unauthenticated("Invalid access token.")
        b = rec.body
        exp = b.get("expiry_time", -1)
        if exp != -1 and exp <= self.clock.now_ms():
            raise Unauthenticated("Invalid access token (expired).")
        return Principal(
            b["workspace_id"],
            b["user"],
            b["token_id"],
            b.get("role", "user"),
            b.get("scope", ""),
            exp,
        )

    def user(self, authorization: str | None) -> Principal:
        p = self.authenticate(authorization)
        if p.role != "user":
            raise PermissionDenied("This token cannot call the workspace APIs.")
        return p

    def operator(self, authorization: str | None) -> Principal:
        p = self.authenticate(authorization)
        if p.role != "operator":
            raise PermissionDenied("Only an operator token can call the admin endpoints.")
        return p


def parse_lifetime(body: dict[str, Any]) -> int | None:
    v = body.get("lifetime_seconds")
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 0 or v > 10 * 365 * 86400:
        raise InvalidParameterValue("lifetime_seconds must be a non-negative integer.")
    return v or None
