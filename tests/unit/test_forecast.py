"""The demand forecaster (shared/domain/forecast.py) and the rules that use it
(shared/domain/autoscale_forecast.py)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as hs

from shared.domain.autoscale import Decision, ScalingMemory
from shared.domain.autoscale_forecast import resume_decision, with_forecast
from shared.domain.forecast import (
    DAY_MS,
    Forecast,
    ForecastParams,
    ForecastState,
    demand_workers,
    forecast,
    new_state,
    next_use,
    observe,
    window_key,
)

P = ForecastParams(week_start_ms=0)  # day 0 is a Monday
H = 3_600_000


def feed(state: ForecastState, start_ms: int, end_ms: int, workers_at) -> ForecastState:  # type: ignore[no-untyped-def]
    t = start_ms
    while t < end_ms:
        state = observe(state, t, workers_at(t), P)
        t += 10_000
    return state


def office(t: int) -> int:
    """8 workers from 09:00 to 17:00 on weekdays, nothing otherwise."""
    day, tod = divmod(t, DAY_MS)
    return 8 if day % 7 < 5 and 9 * H <= tod < 17 * H else 0


def test_nothing_is_forecast_before_two_days_of_history():
    s = feed(new_state("c", P), 0, DAY_MS, office)
    assert forecast(s, DAY_MS + 10 * H, 120, P) is None


def test_the_weekday_profile_predicts_the_next_working_day_and_not_the_night():
    s = feed(new_state("c", P), 0, 3 * DAY_MS, office)
    morning = forecast(s, 3 * DAY_MS + 9 * H - 60_000, 120, P)
    assert morning is not None and morning.workers == 8
    assert "weekdays" in morning.basis
    night = forecast(s, 3 * DAY_MS + 2 * H, 120, P)
    assert night is not None and night.workers == 0


def test_the_first_weekend_pools_every_day_and_later_weekends_use_their_own():
    s = feed(new_state("c", P), 0, 5 * DAY_MS + 8 * H, office)
    saturday = forecast(s, 5 * DAY_MS + 10 * H, 120, P)
    assert saturday is not None and "all" in saturday.basis
    s = feed(s, 5 * DAY_MS + 8 * H, 14 * DAY_MS, office)
    assert (sat := forecast(s, 19 * DAY_MS + 10 * H, 120, P)) is not None
    assert "weekend" in sat.basis


def test_a_quiet_day_halves_the_forecast():
    s = feed(new_state("c", P), 0, 3 * DAY_MS, office)
    # day 3 is a holiday: nothing from 09:00 to 12:00
    s = feed(s, 3 * DAY_MS, 3 * DAY_MS + 12 * H, lambda t: 0)
    f = forecast(s, 3 * DAY_MS + 12 * H, 120, P)
    assert f is not None and f.workers == 4 and "trend x0.50" in f.basis


def test_a_silent_gap_counts_as_no_demand():
    s = feed(new_state("c", P), 0, 10 * H, office)
    s = observe(s, 2 * DAY_MS + 8 * H, 0, P)  # the cluster was terminated in between
    assert s.weekday_days == 3
    at_nine = 2 * DAY_MS + 9 * H + 60_000
    f = forecast(s, at_nine, 60, P)
    assert f is not None and f.workers == 8 and "last 2 weekdays" in f.basis
    low = forecast(s, at_nine, 60, replace(P, quantile=0.0))
    assert low is not None and low.workers == 0  # day 1 had no demand at 09:00, day 0 had 8


def test_next_use_finds_the_first_busy_bin():
    s = feed(new_state("c", P), 0, 3 * DAY_MS + 6 * H, office)
    nxt = next_use(s, 3 * DAY_MS + 8 * H, 2 * 3600, P)
    assert nxt is not None and 3 * DAY_MS + 8 * H < nxt <= 3 * DAY_MS + 9 * H
    assert next_use(s, 3 * DAY_MS + 6 * H, 600, P) is None


def test_clusters_close_their_bins_at_different_times():
    phases = {new_state(f"c{i}", P).phase_ms for i in range(50)}
    assert len(phases) > 40


@settings(max_examples=50, deadline=None)
@given(hs.lists(hs.tuples(hs.integers(0, 600_000), hs.integers(0, 40)), max_size=80))
def test_the_forecast_never_exceeds_what_was_seen_times_the_trend_cap(steps):
    s = new_state("c", P)
    t = 0
    seen = 0
    for dt, w in steps:
        t += dt
        s = observe(s, t, w, P)
        seen = max(seen, w)
    f = forecast(s, t, 300, P)
    if f is not None:
        assert 0 <= f.workers <= seen * P.trend_max + 1


def test_demand_workers_caps_at_the_maximum():
    assert demand_workers(0, 0, 4, 10) == 0
    assert demand_workers(5, 0, 4, 10) == 2
    assert demand_workers(400, 10, 4, 10) == 10


FC = Forecast(workers=6, basis="test")


def test_the_policy_scales_up_ahead_to_the_forecast_and_says_so():
    d = Decision(target=2, reason="reactive hold", memory=ScalingMemory(seen_until_ms=5))
    out = with_forecast(
        d, FC, min_workers=1, max_workers=5, current_workers=2, last_change=None, now_ms=100
    )
    assert out.target == 5 and "forecast 6 workers (test)" in out.reason
    assert out.stats["forecast_workers"] == 6.0
    assert out.memory is not None and out.memory.direction == "up"


def test_the_policy_removes_only_down_to_the_forecast():
    d = Decision(
        target=2,
        reason="no backlog",
        remove=("a", "b", "c", "d", "e", "f"),
        memory=ScalingMemory(changed_at_ms=100, direction="down", from_workers=8, to_workers=2),
    )
    kw = {"min_workers": 1, "max_workers": 10, "current_workers": 8, "now_ms": 100}
    out = with_forecast(d, FC, last_change=None, **kw)  # type: ignore[arg-type]
    assert out.target == 6 and out.remove == ("a", "b")
    held = with_forecast(d, Forecast(8, "t"), last_change=None, **kw)  # type: ignore[arg-type]
    assert held.target == 8 and held.remove == ()
    assert held.memory is not None and held.memory.changed_at_ms is None
    # a reactive target at or above the forecast is left alone
    assert with_forecast(d, Forecast(1, "t"), last_change=None, **kw) is d  # type: ignore[arg-type]


def test_the_forecast_keeps_joining_workers_before_alive_ones():
    # 8 set: 3 not joined yet are cancelled and 3 alive ones go; the forecast wants 6 (FC).
    d = Decision(target=2, reason="no backlog", remove=("a", "b", "c"), cancel=3)
    kw = {"min_workers": 1, "max_workers": 10, "current_workers": 8, "now_ms": 100}
    out = with_forecast(d, FC, last_change=None, **kw)  # type: ignore[arg-type]
    assert out.target == 6 and out.cancel == 2 and out.remove == () and out.cancels_only
    only_joining = Decision(target=5, reason="no backlog", cancel=3)
    kept = with_forecast(only_joining, FC, last_change=None, **kw)  # type: ignore[arg-type]
    assert kept.target == 6 and kept.cancel == 2 and kept.cancels_only


def test_proactive_resume_only_within_the_lead_and_the_autotermination_window():
    kw = {"now_ms": 0, "lead_s": 300.0, "autotermination_minutes": 60}
    assert resume_decision(200_000, FC, **kw) is not None  # type: ignore[arg-type]
    assert resume_decision(400_000, FC, **kw) is None  # type: ignore[arg-type]
    assert resume_decision(None, None, **kw) is None  # type: ignore[arg-type]
    short = {"now_ms": 0, "lead_s": 300.0, "autotermination_minutes": 2}
    assert resume_decision(200_000, FC, **short) is None  # type: ignore[arg-type]
    r = resume_decision(100_000, FC, **kw)  # type: ignore[arg-type]
    assert r is not None and "forecast 6 workers" in r.reason


def test_the_forecast_depends_only_on_its_window_key():
    s = feed(new_state("c", P), 0, 3 * DAY_MS + 9 * H, office)
    seen: dict[tuple[int, int, int], Forecast | None] = {}
    for k in range(0, 4 * H, 10_000):
        now = 3 * DAY_MS + 7 * H + k
        key = window_key(s, now, 180, P)
        f = forecast(s, now, 180, P)
        assert seen.setdefault(key, f) == f
    assert len(seen) > 10
