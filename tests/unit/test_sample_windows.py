"""The autoscaler's per-cluster sample windows: what a tick reads and decides with must equal a
full read of the newest samples and the stored policy memory."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from shared.adapters.sqlite_store import SqliteStore
from shared.domain import autoscale as pol
from shared.services.sample_windows import SAMPLE, SampleWindows
from shared.services.utilization import to_sample
from tests.support import FakeClock

TS_MAX = 10**13


class CountingStore(SqliteStore):
    """The SQLite store, counting the sample documents its list() returns."""

    listed = 0

    def list(self, kind: str, pk: str, *, page_size: int, page_token: str | None):  # type: ignore[no-untyped-def]
        page = super().list(kind, pk, page_size=page_size, page_token=page_token)
        self.listed += len(page.items)
        return page


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> CountingStore:
    return CountingStore(tmp_path / "store.db", clock=clock.now_ms)


def put(store: SqliteStore, cid: str, ts: int, **sample: Any) -> None:
    body = {"ts_ms": ts, "running_tasks": 0, "pending_tasks": 0, "workers": [], **sample}
    store.create(SAMPLE, cid, f"{TS_MAX - ts:013d}-0000", body, ttl_s=3600)


def full_read(store: SqliteStore, cid: str, limit: int, ids: dict[str, str]) -> list[pol.Sample]:
    page = store.list(SAMPLE, cid, page_size=limit, page_token=None)
    return [to_sample(r.body["ts_ms"], r.body, ids) for r in reversed(page.items)]


def test_a_window_equals_a_full_read_and_reads_only_new_samples(store: CountingStore) -> None:
    w = SampleWindows(store, to_sample)
    t = 1_000_000
    for k in range(30):
        put(store, "c", t + k * 10_000, running_tasks=k)
    assert w.samples("c", 20, {}) == full_read(store, "c", 20, {})
    for k in range(30, 36):
        put(store, "c", t + k * 10_000, running_tasks=k)
        store.listed = 0
        got = w.samples("c", 20, {})
        # The new sample and the one that shows where the window stands.
        assert store.listed == 2
        assert got == full_read(store, "c", 20, {})
        assert [s.running_tasks for s in got] == list(range(k - 19, k + 1))


def test_many_new_samples_are_read_across_pages(store: CountingStore) -> None:
    w = SampleWindows(store, to_sample)
    put(store, "c", 1_000)
    w.samples("c", 50, {})
    for k in range(1, 41):
        put(store, "c", 1_000 + k * 10_000, pending_tasks=k)
    assert w.samples("c", 50, {}) == full_read(store, "c", 50, {})
    for k in range(41, 120):
        put(store, "c", 1_000 + k * 10_000, pending_tasks=k)
    assert w.samples("c", 50, {}) == full_read(store, "c", 50, {})


def test_new_worker_addresses_convert_the_window_again(store: CountingStore) -> None:
    w = SampleWindows(store, to_sample)
    for k in range(3):
        put(store, "c", 1_000 + k, workers=[{"node_id": "10.0.0.5:8081", "running_tasks": 1}])
    before = w.samples("c", 10, {})
    assert before[-1].workers[0].node_id == "10.0.0.5:8081"
    after = w.samples("c", 10, {"10.0.0.5:8081": "node-1"})
    assert [s.workers[0].node_id for s in after] == ["node-1"] * 3


def test_windows_of_clusters_not_evaluated_are_dropped(store: CountingStore) -> None:
    w = SampleWindows(store, to_sample)
    put(store, "a", 1_000)
    put(store, "b", 1_000)
    w.samples("a", 10, {})
    w.samples("b", 10, {})
    w.end_tick()
    w.samples("a", 10, {})
    w.end_tick()
    store.listed = 0
    w.samples("b", 10, {})  # read again from the start: its window was dropped
    w.samples("a", 10, {})
    assert store.listed == 1 + 1


def test_the_kept_memory_is_used_only_while_it_descends_from_the_stored_one(
    store: CountingStore,
) -> None:
    w = SampleWindows(store, to_sample)
    put(store, "c", 1_000)
    w.samples("c", 10, {})
    stored = pol.ScalingMemory(changed_at_ms=500, direction="up", from_workers=1, to_workers=3)
    kept = replace(stored, seen_until_ms=1_000, avg_workers=2.5)
    w.remember("c", kept)
    assert w.memory("c", stored) == kept
    # Another writer stored a newer change: its memory wins.
    newer = replace(stored, changed_at_ms=900, direction="down", to_workers=2)
    assert w.memory("c", newer) == newer
    # The stored memory folded more than the kept one (written by another instance).
    ahead = replace(stored, seen_until_ms=2_000)
    assert w.memory("c", ahead) == ahead
    # No change ever stored: a kept memory without a change descends from nothing.
    w.remember("c", replace(kept, changed_at_ms=None, direction=None))
    assert w.memory("c", None) == replace(kept, changed_at_ms=None, direction=None)
    w.remember("c", kept)  # a change decided but never stored
    assert w.memory("c", None) is None


def test_decisions_with_windows_equal_decisions_from_a_full_read(store: CountingStore) -> None:
    """The timer's path (window + kept memory) against the stateless one (the newest samples
    and the memory stored at the last change), over a random load with size changes. The
    windows hold every sample here: with fewer, the stateless path folds only the newest into
    the stored memory, and the kept memory, which saw them all, may differ (by design)."""
    rng = random.Random(5)
    w = SampleWindows(store, to_sample)
    limit, lo, hi, slots = 500, 1, 8, 4
    current, stored = 2, None
    changes = kept_used = 0
    t = 10_000_000
    # 1,000 ticks: the first-sample drain projection (rule 3) projects most of this random
    # load's backlogs as drained, and the comparison needs more than 20 size changes.
    for _ in range(1000):
        t += 10_000
        busy = rng.random() < 0.4
        put(
            store,
            "c",
            t - 500,
            running_tasks=rng.randint(0, 12) if busy else 0,
            pending_tasks=rng.randint(0, 30) if busy and rng.random() < 0.5 else 0,
            workers=[{"node_id": f"n{i}", "running_tasks": 0} for i in range(current)],
        )
        samples = w.samples("c", limit, {})
        memory = w.memory("c", stored)
        kept_used += memory is not stored
        a = pol.decide_size(samples, lo, hi, current, slots, memory, t)
        b = pol.decide_size(full_read(store, "c", limit, {}), lo, hi, current, slots, stored, t)
        assert (a.target, a.remove, a.reason) == (b.target, b.remove, b.reason)
        w.remember("c", a.memory)
        w.end_tick()
        if a.target != current:
            current, stored = a.target, a.memory  # stored on a change, as the service does
            changes += 1
    assert changes > 20 and kept_used > 300
