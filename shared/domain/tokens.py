"""Token lifetime rules (pure: the caller passes the time).

A new token's expiry is bounded twice: by the operator's maximum lifetime, and by the expiry of
the token that asked for it (a token cannot outlive the one that made it). A request that names
a longer lifetime is refused (INVALID_PARAMETER_VALUE, as Databricks refuses a lifetime beyond
the workspace's maximum); a request that names none gets the longest one allowed.
"""

from __future__ import annotations

from shared.errors import InvalidParameterValue

NO_EXPIRY = -1


def new_token_expiry(
    now_ms: int,
    lifetime_s: int | None,
    *,
    max_lifetime_s: int,
    parent_expiry_ms: int = NO_EXPIRY,
) -> int:
    """The expiry (ms since the epoch, or NO_EXPIRY) of a token asked for at `now_ms` with
    `lifetime_s` (None: as long as allowed). `max_lifetime_s` 0 means no maximum;
    `parent_expiry_ms` is the expiry of the token that makes the request."""
    bounds = []
    if max_lifetime_s > 0:
        bounds.append(now_ms + max_lifetime_s * 1000)
    if parent_expiry_ms != NO_EXPIRY:
        bounds.append(parent_expiry_ms)
    limit = min(bounds) if bounds else NO_EXPIRY
    if lifetime_s is None:
        return limit
    wanted = now_ms + lifetime_s * 1000
    if limit != NO_EXPIRY and wanted > limit:
        allowed = max(0, (limit - now_ms) // 1000)
        why = (
            "the token making the request expires sooner"
            if limit == parent_expiry_ms
            else "the maximum token lifetime"
        )
        raise InvalidParameterValue(
            f"lifetime_seconds {lifetime_s} is longer than allowed ({allowed} s: {why})."
        )
    return wanted


def ttl_s(now_ms: int, expiry_ms: int) -> int | None:
    """Seconds a token's records are kept: until it expires (at least 1), or forever."""
    if expiry_ms == NO_EXPIRY:
        return None
    return max(1, -(-(expiry_ms - now_ms) // 1000))
