"""When a running cluster's nodes are checked in the cloud (shared/domain/node_health.py)."""

from __future__ import annotations

from shared.domain.node_health import HealthParams, arm_check, drift_due, offset_ms

P = HealthParams(heartbeat_s=10, silent_beats=3, drift_check_s=7200)
T0 = 1_800_000_000_000


def check(beats: dict[str, int], now: int, since: int | None = None) -> str | None:
    return arm_check(
        "c1",
        beats=beats,
        running_since_ms=T0,
        since_ms=now - 10_000 if since is None else since,
        now_ms=now,
        p=P,
    )


def test_a_node_silent_for_three_beats_is_checked() -> None:
    now = T0 + 3600_000
    assert check({"driver": now - 25_000}, now) in (None, "drift")
    assert check({"driver": now - 31_000}, now) == "silent"
    # Before its first beat, the silence counts from when the cluster became RUNNING.
    assert check({"driver": 0}, T0 + 29_000) in (None, "drift")
    assert check({"driver": 0}, T0 + 31_000) == "silent"


def test_drift_reads_once_per_period_at_a_spread_out_moment() -> None:
    period = 7200_000
    ticks = range(T0, T0 + 2 * period, 10_000)
    due = [t for t in ticks if drift_due("c1", t - 10_000, t, period)]
    assert len(due) == 2 and due[1] - due[0] == period
    offsets = {offset_ms(f"c{i}", period) // 600_000 for i in range(1000)}
    assert len(offsets) == 12  # spread over every ten minutes of the two hours


def test_without_a_drift_period_the_cloud_is_read_at_every_tick() -> None:
    p = HealthParams(drift_check_s=0)
    got = arm_check("c1", beats={}, running_since_ms=T0, since_ms=T0, now_ms=T0 + 1, p=p)
    assert got == "every_tick"


def test_a_long_pause_between_ticks_reads_every_cluster() -> None:
    assert drift_due("c1", T0, T0 + 7200_000, 7200_000)
