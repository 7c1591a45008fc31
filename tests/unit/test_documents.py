"""The services' document repository (shared/services/documents.py) on the SQLite store: the
bounded retry on a concurrent write, typed documents, idempotency tokens and activity."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from shared.adapters.sqlite_store import SqliteStore
from shared.ports import AlreadyExists, PreconditionFailed
from shared.services.documents import (
    ATTEMPTS,
    Activity,
    Documents,
    Idempotency,
    each,
    retry_on_conflict,
    update,
)
from tests.support import FakeClock


class Counter(BaseModel):
    name: str
    n: int = 0


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    return SqliteStore(tmp_path / "s.db", clock=FakeClock())


def test_a_step_that_meets_a_concurrent_write_reads_again_and_lands(store: SqliteStore) -> None:
    docs = Documents(store, "counter", Counter)
    docs.create("p", "a", Counter(name="a"))
    calls = 0

    def increment() -> Counter:
        nonlocal calls
        calls += 1
        c, rec = docs.load("p", "a") or pytest.fail("missing")
        if calls == 1:  # another writer lands between this step's read and its write
            other, orec = docs.load("p", "a") or pytest.fail("missing")
            docs.save(orec, other.model_copy(update={"n": other.n + 10}))
        new = c.model_copy(update={"n": c.n + 1})
        docs.save(rec, new)
        return new

    assert retry_on_conflict(increment).n == 11
    assert calls == 2
    got = docs.load("p", "a")
    assert got is not None and got[0].n == 11


def test_a_step_that_always_loses_gives_up_after_the_bound_with_precondition_failed() -> None:
    calls = 0

    def losing() -> None:
        nonlocal calls
        calls += 1
        raise PreconditionFailed("lost")

    with pytest.raises(PreconditionFailed, match="job 7 changed too often; retry"):
        retry_on_conflict(losing, "job 7")
    assert calls == ATTEMPTS == 20


def test_update_folds_into_what_a_concurrent_writer_left(store: SqliteStore) -> None:
    """A read-modify-write whose create, then whose replace, loses to another writer: each
    time it changes the body that writer left, so no one's fold is lost."""
    seen: list[dict | None] = []

    def add(n: int):  # type: ignore[no-untyped-def]
        def change(old: dict | None) -> dict:
            seen.append(old)
            if len(seen) == 1:  # another writer creates it between this read and the create
                update(store, "stats", "w", "k", lambda o: {"sum": 100})
            if len(seen) == 3:  # and replaces it between this read and the replace
                update(store, "stats", "w", "k", lambda o: {"sum": (o or {})["sum"] + 1000})
            return {"sum": (old or {"sum": 0})["sum"] + n}

        return change

    assert update(store, "stats", "w", "k", add(1)) == {"sum": 101}
    assert seen == [None, {"sum": 100}]
    assert update(store, "stats", "w", "k", add(2)) == {"sum": 1103}
    assert seen[2:] == [{"sum": 101}, {"sum": 1101}]
    assert store.get("stats", "w", "k").body == {"sum": 1103}  # type: ignore[union-attr]


def test_update_writes_nothing_when_the_change_says_so(store: SqliteStore) -> None:
    assert update(store, "stats", "w", "k", lambda old: None) is None
    assert store.get("stats", "w", "k") is None
    update(store, "stats", "w", "k", lambda old: {"v": 1})
    etag = store.get("stats", "w", "k").etag  # type: ignore[union-attr]
    assert update(store, "stats", "w", "k", lambda old: None) is None
    assert store.get("stats", "w", "k").etag == etag  # type: ignore[union-attr]


def test_documents_refuse_a_second_create_and_a_stale_save(store: SqliteStore) -> None:
    docs = Documents(store, "counter", Counter)
    rec = docs.create("p", "a", Counter(name="a"))
    with pytest.raises(AlreadyExists):
        docs.create("p", "a", Counter(name="a"))
    docs.save(rec, Counter(name="a", n=1))
    with pytest.raises(PreconditionFailed):
        docs.save(rec, Counter(name="a", n=2))
    docs.create("p", "b", Counter(name="b"))
    assert sorted(c.name for c in docs.each("p")) == ["a", "b"]
    assert [r.id for r in each(store, "counter", "p", page_size=1)] == ["a", "b"]


def test_an_idempotency_token_holds_what_the_first_request_made(store: SqliteStore) -> None:
    runs = Idempotency(store, "run", "run_id")
    assert runs.find("ws", "t1") is None
    assert runs.claim("ws", "t1", 1000) == 1000
    # A concurrent request with the same token lost: it is told the winner's run.
    assert runs.claim("ws", "t1", 2000) == 1000
    assert runs.find("ws", "t1") == 1000
    # Scopes and workspaces do not share tokens.
    assert Idempotency(store, "cluster", "cluster_id").find("ws", "t1") is None
    assert runs.find("other", "t1") is None


def test_activity_keeps_the_latest_moment_and_is_written_at_most_every_interval(
    store: SqliteStore,
) -> None:
    activity = Activity(store)
    assert activity.last("c1") is None
    activity.touch("c1", 1_000)
    activity.touch("c1", 900)  # an older heartbeat, replayed: never goes back
    assert activity.last("c1") == 1_000
    activity.touch("c1", 20_000, every_ms=30_000)  # a run's mark: not yet due
    assert activity.last("c1") == 1_000
    activity.touch("c1", 31_000, every_ms=30_000)
    assert activity.last("c1") == 31_000
