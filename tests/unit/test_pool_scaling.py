"""Pool-aware scaling rules (pure): acquisition times, the policy's expected boot, the asks of
forecasting clusters and the pool's idle target."""

from __future__ import annotations

import pytest

from shared.domain import autoscale_prewarm as boot
from shared.domain import pool_scaling as ps
from shared.domain import pools
from shared.domain.forecast import Forecast
from shared.domain.pools import Pool, PoolSpec
from shared.ports import PoolNode

P = ps.PoolScalingParams()


def node(i: int, status: str, taken: int, ready: int = 0) -> PoolNode:
    return PoolNode(f"n{i}", status, "c", taken_ms=taken, ready_ms=ready)  # type: ignore[arg-type]


def test_acquisitions_time_each_node_taken_idle_once_in_the_order_taken() -> None:
    nodes = [
        node(1, "USED", 1000, 3000),
        node(2, "USED", 5000, 9000),
        node(3, "USED", 0, 4000),  # started for the cluster, not taken idle: not timed
        node(4, "IDLE", 0),
    ]
    times, mark = ps.acquisitions(nodes, 0)
    assert (times, mark) == ([2.0, 4.0], 5000)
    assert ps.acquisitions(nodes, mark) == ([], 5000)


def test_a_node_still_joining_holds_back_the_later_ones_and_its_own_group() -> None:
    nodes = [
        node(1, "USED", 1000, 2000),
        node(2, "USED", 4000, 5000),
        node(3, "PENDING_USED", 4000),
        node(4, "USED", 6000, 6500),
    ]
    assert ps.acquisitions(nodes, 0) == ([1.0], 1000)
    done = [*nodes[:2], node(3, "USED", 4000, 7000), nodes[3]]
    assert ps.acquisitions(done, 1000) == ([1.0, 3.0, 0.5], 6000)


def test_a_node_given_back_before_it_ran_is_skipped_not_waited_for() -> None:
    nodes = [node(1, "RETURNING", 1000), node(2, "USED", 2000, 2500)]
    assert ps.acquisitions(nodes, 0) == ([0.5], 2000)


def test_the_acquisition_time_is_the_default_until_three_are_timed() -> None:
    stats = None
    for i, seconds in enumerate((4.0, 4.0, 4.0)):
        assert ps.expected_acquire_s(stats, P) == P.default_acquire_s
        stats = boot.learn_boot(stats, seconds, P.learn)
        assert stats.n == i + 1
    learned = ps.expected_acquire_s(stats, P)
    assert learned == pytest.approx(4.0 * (1 + 2 * (0.15 + 0.85 / 3)))
    assert learned < P.default_acquire_s


def test_the_expected_boot_is_the_acquisition_only_while_the_pool_has_idle_nodes() -> None:
    assert ps.expected_boot_s(120.0, 7.0, pool_idle=2) == 7.0
    assert ps.expected_boot_s(120.0, 7.0, pool_idle=0) == 120.0
    assert ps.expected_boot_s(120.0, None, pool_idle=2) == 120.0


def test_a_cluster_asks_for_its_forecast_beyond_what_it_holds_within_max_workers() -> None:
    f = Forecast(workers=9, basis="p90 of Tuesdays 10:00")
    ask = ps.pool_ask(f, current_workers=3, max_workers=8, horizon_s=180)
    assert ask.extra == 5
    assert "forecast 9 workers (p90 of Tuesdays 10:00)" in ask.why and "asks 5" in ask.why
    assert ps.pool_ask(f, current_workers=9, max_workers=10, horizon_s=180).extra == 0
    assert ps.pool_ask(None, current_workers=1, max_workers=10, horizon_s=180).extra == 0


def test_an_ask_is_written_when_it_changes_or_every_two_minutes() -> None:
    five = ps.PoolAsk(5, "x")
    assert ps.ask_due(None, five, 0, P)
    assert not ps.ask_due(None, ps.PoolAsk(0, "x"), 0, P)
    prev = ps.ask_doc(five, cluster_id="c", pool_id="p", now_ms=0, p=P)
    assert prev["expires_ms"] == 300_000
    assert not ps.ask_due(prev, five, 119_000, P)
    assert ps.ask_due(prev, five, 120_000, P)
    assert ps.ask_due(prev, ps.PoolAsk(4, "x"), 10_000, P)
    assert ps.ask_due(prev, ps.PoolAsk(0, "x"), 10_000, P)  # withdrawn at once
    zero = ps.ask_doc(ps.PoolAsk(0, "x"), cluster_id="c", pool_id="p", now_ms=0, p=P)
    assert not ps.ask_due(zero, ps.PoolAsk(0, "x"), 500_000, P)


def ask(cluster: str, extra: int, expires_ms: int) -> dict[str, object]:
    return {"cluster_id": cluster, "extra": extra, "expires_ms": expires_ms, "why": f"{cluster}!"}


def test_the_idle_target_is_min_idle_or_the_live_asks_within_max_capacity() -> None:
    asks = [ask("a", 3, 10_000), ask("b", 2, 10_000), ask("c", 9, 5_000)]  # c has lapsed
    t = ps.idle_target(1, None, asks, 6_000)
    assert (t.idle, t.forecast_idle) == (5, 5)
    assert t.why == "cluster a: a!; cluster b: b!"
    capped = ps.idle_target(1, 4, asks, 6_000)
    assert (capped.idle, capped.forecast_idle) == (4, 4)
    assert "5 asked, capped at max_capacity 4" in capped.why
    assert ps.idle_target(6, None, asks, 6_000).idle == 6
    assert ps.idle_target(2, None, asks, 20_000) == ps.IdleTarget(2, 0, "")


def test_the_pool_plan_keeps_the_forecast_idle_target_and_releases_down_to_it() -> None:
    spec = {"instance_pool_name": "p", "node_type_id": "n", "min_idle_instances": 1}
    pool = Pool(instance_pool_id="P", workspace_id="w", spec=PoolSpec.model_validate(spec))
    idle = [PoolNode(f"i{i}", "IDLE", idle_since_ms=0) for i in range(2)]
    assert pools.plan(pool, idle, now=0, idle_target=4).add_idle == 2
    assert pools.plan(pool, idle, now=0).add_idle == 0
    late = 10**9  # long past the idle timeout
    assert pools.plan(pool, idle, now=late, idle_target=2).remove_idle == []
    assert len(pools.plan(pool, idle, now=late).remove_idle) == 1
    capped = pool.model_copy(update={"spec": PoolSpec.model_validate({**spec, "max_capacity": 3})})
    assert pools.plan(capped, idle, now=0, idle_target=5).add_idle == 1


def test_a_forecasting_cluster_looks_one_acquisition_ahead_only_when_the_pool_covers_it() -> None:
    assert ps.hold_join_s(120.0, 20.0, pool_idle=5, forecast_extra=5) == 20.0
    assert ps.hold_join_s(120.0, 20.0, pool_idle=1, forecast_extra=5) == 120.0
    assert ps.hold_join_s(120.0, 20.0, pool_idle=0, forecast_extra=0) == 120.0
    assert ps.hold_join_s(120.0, None, pool_idle=5, forecast_extra=0) == 120.0
