"""Token lifetime rules (shared/domain/tokens.py) and their use by the Auth service."""

from __future__ import annotations

import pytest

from shared.adapters.sqlite_store import SqliteStore
from shared.domain.tokens import NO_EXPIRY, new_token_expiry, ttl_s
from shared.errors import InvalidParameterValue
from shared.services.auth import Auth
from tests.support import FakeClock

NOW = 1_000_000_000


def test_no_maximum_and_a_non_expiring_parent_allow_any_lifetime() -> None:
    assert new_token_expiry(NOW, None, max_lifetime_s=0) == NO_EXPIRY
    assert new_token_expiry(NOW, 3600, max_lifetime_s=0) == NOW + 3_600_000


def test_the_maximum_lifetime_caps_an_unspecified_lifetime_and_refuses_a_longer_one() -> None:
    assert new_token_expiry(NOW, None, max_lifetime_s=86400) == NOW + 86_400_000
    assert new_token_expiry(NOW, 86400, max_lifetime_s=86400) == NOW + 86_400_000
    with pytest.raises(InvalidParameterValue, match="maximum token lifetime"):
        new_token_expiry(NOW, 86401, max_lifetime_s=86400)


def test_a_token_cannot_outlive_the_token_that_made_it() -> None:
    parent = NOW + 60_000
    # a short-lived token asking for a non-expiring one gets one that expires with it
    assert new_token_expiry(NOW, None, max_lifetime_s=0, parent_expiry_ms=parent) == parent
    assert new_token_expiry(NOW, 30, max_lifetime_s=0, parent_expiry_ms=parent) == NOW + 30_000
    with pytest.raises(InvalidParameterValue, match="expires sooner"):
        new_token_expiry(NOW, 61, max_lifetime_s=0, parent_expiry_ms=parent)
    # the stricter of the two bounds wins
    assert new_token_expiry(NOW, None, max_lifetime_s=10, parent_expiry_ms=parent) == NOW + 10_000
    with pytest.raises(InvalidParameterValue, match="maximum"):
        new_token_expiry(NOW, 11, max_lifetime_s=10, parent_expiry_ms=parent)


def test_records_are_kept_until_expiry() -> None:
    assert ttl_s(NOW, NO_EXPIRY) is None
    assert ttl_s(NOW, NOW + 1500) == 2
    assert ttl_s(NOW, NOW) == 1


def test_auth_applies_the_rules_down_a_chain_of_tokens(tmp_path) -> None:  # type: ignore[no-untyped-def]
    clock = FakeClock(NOW)
    auth = Auth(SqliteStore(tmp_path / "s.db"), clock, max_lifetime_s=3600)
    root, _ = auth.issue_token("ws", user="u")  # the operator's first token: no expiry
    p = auth.authenticate("Bearer " + root)
    assert p.expiry_time == NO_EXPIRY
    child, info = auth.create_token(p, comment="c", lifetime_s=None)
    assert info["expiry_time"] == NOW + 3_600_000
    clock.ms += 3_000_000
    pc = auth.authenticate("Bearer " + child)
    _, grandchild = auth.create_token(pc, comment="g", lifetime_s=None)
    assert grandchild["expiry_time"] == info["expiry_time"]  # not now + 3600 s
    with pytest.raises(InvalidParameterValue):
        auth.create_token(pc, comment="g", lifetime_s=3600)
