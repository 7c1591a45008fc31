"""A reconcile the cloud's request limits refused is retried by a scheduled message; the
reconciler timer does not kick the cluster while that retry is on its way (each kick would
start one more chain of retries), only once it is overdue (shared/domain/reconcile.py
`refused`, `stuck`; services/lifecycle.py)."""

from __future__ import annotations

from pathlib import Path

from shared.domain import reconcile as rec
from shared.domain.cluster import Cluster, ClusterSpec
from shared.domain.states import State
from shared.ports import ProvisionerThrottled
from tests.unit.test_utilization_service import World

STUCK_MS = 20_000


def cluster(state: State, since: int) -> Cluster:
    spec = ClusterSpec(spark_version="4.1.x-scala2.13", node_type_id="rec-small")
    return Cluster(cluster_id="c", workspace_id="w", spec=spec, state=state, state_since=since)


def test_a_refused_pending_cluster_waits_from_the_refusal_until_its_retry() -> None:
    c = rec.refused(cluster(State.PENDING, since=0), now=100_000, retry_ms=300_000)
    assert c is not None and c.state_since == 100_000 and c.retry_at == 400_000
    assert not rec.stuck(c, 400_000 + STUCK_MS - 1, STUCK_MS)
    assert rec.stuck(c, 400_000 + STUCK_MS, STUCK_MS)  # the retry was lost


def test_a_refused_resize_keeps_its_state_time_and_waits_for_its_retry() -> None:
    c = rec.refused(cluster(State.RESIZING, since=5_000), now=100_000, retry_ms=60_000)
    assert c is not None and c.state_since == 5_000 and c.retry_at == 160_000
    assert not rec.stuck(c, 170_000, STUCK_MS) and rec.stuck(c, 180_000, STUCK_MS)


def test_a_cluster_on_its_way_nowhere_is_neither_written_nor_stuck() -> None:
    for state in (State.RUNNING, State.TERMINATED):
        assert rec.refused(cluster(state, since=0), now=100_000, retry_ms=1000) is None
        assert not rec.stuck(cluster(state, since=0), 10**9, STUCK_MS)
    assert rec.stuck(cluster(State.PENDING, since=0), STUCK_MS, STUCK_MS)  # never refused


def test_the_timer_kicks_a_refused_cluster_only_once_its_retry_is_overdue(tmp_path: Path) -> None:
    w = World(tmp_path)
    body = {"spark_version": "4.1.x-scala2.13", "node_type_id": "rec-small", "num_workers": 0}
    cid = w.clusters.create(w.user, body)
    w.clock.ms += 1000
    w.lifecycle.throttled("w", cid, ProvisionerThrottled(300))
    retry = w.bus.sent[-1]
    assert (
        retry.message_id.startswith(f"r:{cid}:")
        and retry.scheduled_enqueue_ms == w.clock.ms + 300_000
    )

    def kicks() -> list[str]:
        return [m.message_id for m in w.bus.sent if m.message_id.startswith("kick:")]

    for _ in range(31):  # the timer's ticks while the retry waits
        w.clock.ms += 10_000
        w.lifecycle.sweep()
    assert kicks() == []
    w.clock.ms += 10_000  # the retry is 20 s overdue: lost, so the timer sends one
    w.lifecycle.sweep()
    assert len(kicks()) == 1
