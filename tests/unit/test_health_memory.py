"""The reconciler timer remembers the beats it read (shared/domain/node_health.py
`beats_stale`, shared/services/health.py): it reads a cluster's heartbeats again only when the
memory could answer differently, and its decisions are those of reading every tick."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from shared.adapters.sqlite_store import SqliteStore
from shared.domain.cluster import Cluster, ClusterSpec
from shared.domain.node_health import HealthParams, Remembered, arm_check, beats_stale
from shared.domain.states import State
from shared.ports import Page, Record
from shared.services.health import SAMPLE, NodeHealth
from shared.settings import Settings
from tests.support import FakeClock

P = HealthParams(heartbeat_s=10, silent_beats=3, drift_check_s=7200)
T0 = 1_800_000_000_000


def test_a_remembered_beat_within_the_limit_is_not_read_again() -> None:
    mem = Remembered(T0, {"driver": T0 - 5_000})
    assert not beats_stale(mem, {"driver"}, T0 - 600_000, T0 + 25_000, P)
    # Beyond the limit by memory: a newer beat may have come, so it is read again.
    assert beats_stale(mem, {"driver"}, T0 - 600_000, T0 + 26_000, P)
    # Nothing remembered: read.
    assert beats_stale(None, {"driver"}, T0 - 600_000, T0, P)


def test_a_node_without_a_beat_is_read_again_once_its_first_beat_could_be_silent() -> None:
    mem = Remembered(T0, {})
    assert not beats_stale(mem, {"driver"}, T0 - 600_000, T0 + 30_000, P)
    assert beats_stale(mem, {"driver"}, T0 - 600_000, T0 + 31_000, P)
    # A node the cluster no longer has does not count; a new one does.
    gone = Remembered(T0, {"old": T0 - 600_000})
    assert not beats_stale(gone, {"driver"}, T0 - 900_000, T0 + 10_000, P)


def test_the_rule_never_hides_a_silence_a_fresh_read_would_show() -> None:
    """Against every history of one node's beats on a 1 s grid: whenever the memory is
    trusted, arm_check on it answers what arm_check on a fresh read answers."""
    running = T0
    for period in (7_000, 10_000, 13_000, 40_000):
        beats_at = list(range(T0 + 3_000, T0 + 200_000, period))
        for stop in (None, T0 + 60_000, T0 + 100_000):
            sent = [t for t in beats_at if stop is None or t < stop]
            mem: Remembered | None = None
            for now in range(T0 + 10_000, T0 + 200_000, 10_000):

                def fresh(now: int = now, sent: list[int] = sent) -> dict[str, int]:
                    last = [t for t in sent if t <= now]
                    return {"driver": last[-1]} if last else {}

                if beats_stale(mem, {"driver"}, running, now, P):
                    mem = Remembered(now, fresh())
                assert mem is not None
                got = arm_check(
                    "c", beats=mem.beats, running_since_ms=running, since_ms=now, now_ms=now, p=P
                )
                want = arm_check(
                    "c", beats=fresh(), running_since_ms=running, since_ms=now, now_ms=now, p=P
                )
                assert got == want, (period, stop, now)


class CountingStore:
    """The SQLite store, its sample queries counted."""

    def __init__(self, inner: SqliteStore) -> None:
        self.inner = inner
        self.sample_queries = 0

    def list(self, kind: str, pk: str, *, page_size: int, page_token: str | None) -> Page:
        self.sample_queries += kind == SAMPLE
        return self.inner.list(kind, pk, page_size=page_size, page_token=page_token)

    def scan(self, kind: str, *, field: str, values: Sequence[str]) -> Iterator[Record]:
        return self.inner.scan(kind, field=field, values=values)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _cluster(i: int) -> Cluster:
    return Cluster(
        cluster_id=f"c{i}",
        workspace_id="ws1",
        spec=ClusterSpec(spark_version="4.1.x-scala2.13"),
        state=State.RUNNING,
        running_since=T0,
        driver={"node_id": f"d{i}"},
    )


def test_the_timer_reads_the_beats_less_often_and_decides_the_same(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    store = CountingStore(SqliteStore(tmp_path / "store.db", clock=clock))
    settings = Settings(data_dir=tmp_path / "data", drift_check_s=7200, health_silent_beats=3)
    remembering = NodeHealth(store, settings)  # type: ignore[arg-type]
    clusters = [_cluster(i) for i in range(20)]
    quiet = {"c3", "c11"}  # their agents stop beating after two minutes
    ticks = 0
    for t in range(1, 60):  # ten minutes, a beat every 10 s per cluster, spread by cluster
        for s in range(10):
            clock.ms = T0 + t * 10_000 + s * 1000
            for c in clusters[s::10]:
                if c.cluster_id in quiet and t > 12:
                    continue
                sid = f"{9_999_999_999_999 - clock.ms:013d}"
                store.inner.create(SAMPLE, c.cluster_id, sid, {"ts_ms": clock.ms}, ttl_s=3600)
        now = T0 + t * 10_000 + 9_500
        since = now - 10_000
        remembering.refresh()
        reading = NodeHealth(store.inner, settings)  # no memory: reads every cluster
        for c in clusters:
            assert remembering.check(c, since, now) == reading.check(c, since, now), (t, c)
        ticks += 1
    # The quiet ones are found silent by both, a few ticks after their last beat.
    now = T0 + 59 * 10_000 + 9_500
    reading = NodeHealth(store.inner, settings)
    assert {c.cluster_id for c in clusters if reading.check(c, now - 10_000, now) == "silent"} == (
        quiet
    )
    # Every tick read every cluster's newest sample before; now about one tick in three does.
    assert store.sample_queries < len(clusters) * ticks * 0.45
