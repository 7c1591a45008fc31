"""bench.azure_scale run small: the goals of the benchmark hold at 50 clusters (the recorded
run at ten thousand is in docs/deploy.md)."""

from __future__ import annotations

from bench.azure_scale import run


def test_the_azure_scale_benchmark_meets_its_goals_small() -> None:
    r = run(50, hours=0.1, burst=20, drift_check_s=7200, workspaces=3)
    assert r["running_at_steady_state"] == 30
    assert r["arm_429_steady"] == 0
    assert r["arm_reads_pct_of_refill"] <= 50
    assert r["burst_running"] == 20 and r["burst_lost"] == 0 and r["burst_created_twice"] == 0
    assert r["burst_failed"] == 0
    sent = r["burst_messages_sent_by_kind"]  # each create's command, then its reconciles
    assert sent["command"] >= 20 and sent["follow-up"] > 0
    assert sum(sent.values()) <= r["burst_servicebus_ops"]
    assert r["kill_noticed_s"] is not None and r["kill_noticed_s"] <= 60


def test_over_two_subscriptions_each_keeps_its_own_limits() -> None:
    r = run(40, hours=0.05, burst=20, drift_check_s=7200, workspaces=4, subscriptions=2)
    assert r["subscriptions"] == 2 and r["running_at_steady_state"] == 20
    assert r["arm_429_steady"] == 0 and r["burst_arm_429"] == 0
    assert r["burst_running"] == 20 and r["burst_lost"] == 0 and r["burst_created_twice"] == 0
    assert r["kill_noticed_s"] is not None and r["kill_noticed_s"] <= 60
