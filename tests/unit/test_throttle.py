"""Throttling of requests without a valid token per client address (shared/services/throttle.py
and functions/http.py), on the real SQLite store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest

from functions import http
from shared.adapters.sqlite_store import SqliteStore
from shared.services.throttle import AddressThrottle
from shared.settings import Settings
from shared.wiring import Container, bootstrap_local, build
from tests.support import FakeClock


class CountingStore:
    """The real store, counting the calls that reach it."""

    def __init__(self, store: Any) -> None:
        self.inner = store
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(f"{name}:{args[0] if args else ''}")
            return attr(*args, **kwargs)

        return call


def test_a_spent_address_is_refused_from_memory_and_others_are_not(tmp_path: Path) -> None:
    store = CountingStore(SqliteStore(tmp_path / "s.db"))
    t = AddressThrottle(store, FakeClock(), rate=0.001, burst=3, window_s=60, shared=False)
    for _ in range(3):
        assert t.check("198.51.100.1", "Bearer x") is None
        t.failed("198.51.100.1", "Bearer x")
    wait = t.check("198.51.100.1", "Bearer x")
    assert wait is not None and wait > 1
    assert t.check("198.51.100.2", "Bearer x") is None
    assert store.calls == []  # neither check nor (unshared) failed touches the store


def test_the_limit_holds_across_instances_sharing_the_store(tmp_path: Path) -> None:
    """Three instances with a local burst of 4 each: without sharing, 12 failures would get
    through; with the shared count, the allowance of one bucket (4 + 0 in this window) plus at
    most one per instance."""
    db = SqliteStore(tmp_path / "s.db")
    clock = FakeClock()
    instances = [
        AddressThrottle(db, clock, rate=0.001, burst=4, window_s=60, shared=True) for _ in range(3)
    ]
    through = 0
    for _ in range(10):
        for t in instances:
            if t.check("203.0.113.9", None) is None:
                through += 1
                t.failed("203.0.113.9", None)
    assert through <= 4 + len(instances)
    assert all(t.check("203.0.113.9", None) is not None for t in instances)
    assert all(t.check("203.0.113.10", None) is None for t in instances)
    # the next window starts afresh (the local buckets refill at their own rate)
    clock.ms += 60_000
    fresh = AddressThrottle(db, clock, rate=0.001, burst=4, window_s=60, shared=True)
    assert fresh.check("203.0.113.9", None) is None
    fresh.failed("203.0.113.9", None)
    assert fresh.check("203.0.113.9", None) is None


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Container, str]]:
    s = Settings(
        data_dir=tmp_path / "data",
        provisioner="records",
        bad_auth_rate_limit_per_s=0.001,
        bad_auth_rate_limit_burst=2,
    )
    c = build(s)
    token = bootstrap_local(c)
    c.store = CountingStore(c.store)  # type: ignore[assignment]
    c.__dict__.pop("auth", None)
    c.__dict__.pop("throttle", None)
    monkeypatch.setattr(http, "container", lambda: c)
    yield c, token
    c.store.close()


def _call(authorization: str, forwarded_for: str) -> func.HttpResponse:
    req = func.HttpRequest(
        "GET",
        "http://h/api/2.1/clusters/list",
        headers={"Authorization": authorization, "X-Forwarded-For": forwarded_for},
        body=b"",
    )
    return http.api(req, "user", lambda c, p: {"ok": True})


def test_bad_tokens_are_throttled_per_address_before_any_store_read(
    app: tuple[Container, str],
) -> None:
    c, token = app
    store: CountingStore = c.store  # type: ignore[assignment]
    bad = "Bearer dapi" + "0" * 32
    assert [_call(bad, "192.0.2.1:1000").status_code for _ in range(2)] == [401, 401]
    store.calls.clear()
    r = _call(bad, "192.0.2.1:1001")
    assert r.status_code == 429 and store.calls == []
    assert json.loads(r.get_body())["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    assert int(r.headers["Retry-After"]) >= 1
    # no token at all counts the same; a client's own X-Forwarded-For entries change nothing
    assert _call("", "10.9.9.9, 192.0.2.1:1002").status_code == 429
    assert store.calls == []
    # a good token not seen by this instance lately is refused from a spent address...
    assert _call("Bearer " + token, "192.0.2.1:1003").status_code == 429
    # another address is served, and so is a good token from it
    assert _call(bad, "192.0.2.2:1000").status_code == 401
    assert _call("Bearer " + token, "192.0.2.3:1000").status_code == 200
    # ... and once it has authenticated, it is let through (a client behind the same NAT)
    assert _call("Bearer " + token, "192.0.2.1:1004").status_code == 200
    # until it fails: revoked, it spends a unit and is forgotten
    tid = next(t["token_id"] for t in c.auth.list_role_tokens("local", "user"))
    c.auth.revoke("local", tid)
    assert _call("Bearer " + token, "192.0.2.1:1005").status_code == 401
    assert _call("Bearer " + token, "192.0.2.1:1006").status_code == 429
