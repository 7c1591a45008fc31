"""Demand forecast of one cluster: a seasonal profile plus the recent trend. Pure, no I/O.

The forecaster sees the same samples as the autoscaling policy, one at a time (`observe`), and
keeps a compact state (`ForecastState`) that the caller stores per cluster. It never looks at
anything after the time it is asked about.

1. **Bins.** Time is cut into bins of `bin_s` (15 min). A bin's value is the peak demand of the
   bin in workers, ceil((running + pending tasks) / slots), capped at the cluster's maximum. A
   bin with no sample (the cluster was terminated or silent) counts as 0. Each cluster's bins
   are shifted by its own `phase_ms`, so 10,000 clusters do not all close a bin on the same
   timer tick.
2. **Profile by time of day and day class.** When a bin closes, its value is appended to the
   list of its time of day (bin of the day) for its day class: weekdays (Monday to Friday) or
   weekends, the `days` most recent values kept. Days start at `week_start_ms` + k x 24 h, a
   Monday at 00:00 (UTC in the control plane; the simulator's traces start on a Monday).
3. **Forecast.** The demand over the next `horizon_s` (a boot period) is the highest, over the
   bins the window touches, of the `quantile` of that bin's past values in the same day class.
   A day class with fewer than `min_days` days of history uses the values of every day instead
   (the first weekend is forecast from the weekdays, scaled by the trend); with fewer than
   `min_days` values in all, nothing is forecast (the policy stays reactive until it has seen
   the pattern twice).
4. **Trend.** At every closed bin the last `trend_bins` bins' actual demand is compared with what
   the profile held for them (their median): ratio = (actual + 1) / (profile + 1). Above 1
   (busier than usual) the forecast is scaled up by it, at most `trend_max`; below
   `trend_quiet` (less than half as busy: a holiday) it is scaled down by it, at least
   `trend_min`. In between the profile stands: jobs of varying size on a schedule make the
   ratio wander, and a forecast cut by that noise would miss the next big one.

Cost: `observe` is O(1) per sample and O(days) when a bin closes; `forecast` sorts at most
`days` values per bin of the window. Nothing is recomputed from the whole history.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

DAY_MS = 86_400_000
# 1970-01-05 00:00 UTC, a Monday.
MONDAY_MS = 4 * DAY_MS


@dataclass(frozen=True, slots=True)
class ForecastParams:
    bin_s: int = 900
    days: int = 5
    min_days: int = 2
    quantile: float = 1.0
    trend_bins: int = 12
    trend_min: float = 0.5
    trend_quiet: float = 0.5
    trend_max: float = 1.5
    week_start_ms: int = MONDAY_MS


@dataclass(frozen=True, slots=True)
class ForecastState:
    """What the forecaster keeps per cluster (a few KB as JSON).

    `weekday` / `weekend`: per bin of the day, that bin's latest values (oldest first).
    `cur_bin` / `cur_peak`: the open bin and its peak so far. `recent`: the last closed bins'
    values (for the trend), `trend`: the factor computed when the last bin closed.
    `days_seen`: the days (day numbers) of each class with at least one closed bin.
    """

    phase_ms: int = 0
    cur_bin: int = -1
    cur_peak: int = 0
    weekday: tuple[tuple[int, ...], ...] = ()
    weekend: tuple[tuple[int, ...], ...] = ()
    recent: tuple[int, ...] = ()
    expected_recent: tuple[float, ...] = ()
    trend: float = 1.0
    weekday_days: int = 0
    weekend_days: int = 0
    last_day: int = -1


@dataclass(frozen=True, slots=True)
class Forecast:
    """The forecast demand in workers over a window, and what it rests on (for the events)."""

    workers: int
    basis: str

    def describe(self) -> str:
        return f"forecast {self.workers} workers ({self.basis})"


def new_state(cluster_key: str, p: ForecastParams | None = None) -> ForecastState:
    """An empty state whose bin phase is derived from the cluster's id (stable, spread out)."""
    p = p or ForecastParams()
    h = 0
    for ch in cluster_key:
        h = (h * 131 + ord(ch)) % 1_000_003
    per_day = _bins_per_day(p)
    empty: tuple[tuple[int, ...], ...] = ((),) * per_day
    return ForecastState(phase_ms=h % (p.bin_s * 1000), weekday=empty, weekend=empty)


def _bins_per_day(p: ForecastParams) -> int:
    return max(1, 86_400 // p.bin_s)


def _bin(ts_ms: int, state: ForecastState, p: ForecastParams) -> int:
    return (ts_ms - p.week_start_ms - state.phase_ms) // (p.bin_s * 1000)


def _weekend(bin_index: int, p: ForecastParams) -> bool:
    return (bin_index // _bins_per_day(p)) % 7 >= 5


def _quantile(values: tuple[int, ...], q: float) -> float:
    xs = sorted(values)
    pos = (len(xs) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _median(values: tuple[int, ...]) -> float:
    return _quantile(values, 0.5) if values else 0.0


def demand_workers(running: int, pending: int, slots: int, max_workers: int) -> int:
    """A sample's demand in workers, as the profile counts it."""
    d = running + pending
    if d <= 0:
        return 0
    return min(max_workers, -(-d // max(1, slots)))


def observe(
    state: ForecastState, ts_ms: int, workers: int, p: ForecastParams | None = None
) -> ForecastState:
    """Fold one sample's demand (in workers) into the state. Samples older than the open bin
    are ignored; bins skipped since the last sample close with 0."""
    p = p or ForecastParams()
    b = _bin(ts_ms, state, p)
    if b == state.cur_bin:
        if workers > state.cur_peak:
            return replace(state, cur_peak=workers)
        return state
    if b < state.cur_bin:
        return state
    s = state
    if s.cur_bin >= 0:
        # Close the open bin, then the empty ones up to b (at most `days` days of them).
        s = _close(s, s.cur_bin, s.cur_peak, p)
        first_gap = max(s.cur_bin + 1, b - p.days * _bins_per_day(p))
        for k in range(first_gap, b):
            s = _close(s, k, 0, p)
    return replace(s, cur_bin=b, cur_peak=max(0, workers))


def _close(s: ForecastState, b: int, value: int, p: ForecastParams) -> ForecastState:
    per_day = _bins_per_day(p)
    slot = b % per_day
    day = b // per_day
    weekend = _weekend(b, p)
    table = s.weekend if weekend else s.weekday
    if len(table) != per_day:
        table = ((),) * per_day
    old = table[slot]
    expected = _median(old)
    values = (*old[-(p.days - 1) :], value) if p.days > 1 else (value,)
    table = (*table[:slot], values, *table[slot + 1 :])
    recent = (*s.recent[-(p.trend_bins - 1) :], value) if p.trend_bins > 1 else (value,)
    # The trend: actual demand of the recent bins against what the profile held for them.
    expect_hist = (*s.expected_recent, expected)[-p.trend_bins :]
    ratio = (sum(recent) + 1.0) / (sum(expect_hist) + 1.0)
    trend = 1.0 if p.trend_quiet <= ratio <= 1.0 else min(p.trend_max, max(p.trend_min, ratio))
    new_day = day != s.last_day
    return replace(
        s,
        weekend=table if weekend else s.weekend,
        weekday=s.weekday if weekend else table,
        recent=recent,
        trend=trend,
        weekend_days=s.weekend_days + (1 if new_day and weekend else 0),
        weekday_days=s.weekday_days + (1 if new_day and not weekend else 0),
        last_day=day,
        expected_recent=expect_hist,
    )


def forecast(
    state: ForecastState, now_ms: int, horizon_s: float, p: ForecastParams | None = None
) -> Forecast | None:
    """The demand forecast over [now, now + horizon_s], or None without enough history."""
    p = p or ForecastParams()
    per_day = _bins_per_day(p)
    b0 = _bin(now_ms, state, p)
    b1 = _bin(now_ms + int(horizon_s * 1000), state, p)
    best = 0.0
    days = 0
    pooled = False
    for b in range(b0, b1 + 1):
        weekend = _weekend(b, p)
        slot = b % per_day
        values = (state.weekend if weekend else state.weekday)[slot]
        class_days = state.weekend_days if weekend else state.weekday_days
        if class_days < p.min_days or len(values) < p.min_days:
            # Too few days of this class yet: every day's values, which the trend corrects.
            values = state.weekday[slot] + state.weekend[slot]
            pooled = True
        if len(values) < p.min_days:
            continue
        days = max(days, len(values))
        best = max(best, _quantile(values, p.quantile))
    if days == 0:
        return None
    workers = math.ceil(best * state.trend - 1e-9)
    kind = "all" if pooled else ("weekend" if _weekend(b0, p) else "week")
    basis = (
        f"q{p.quantile:g} of the last {days} {kind}days at this time over {horizon_s:.0f} s, "
        f"trend x{state.trend:.2f}"
    )
    return Forecast(workers=workers, basis=basis)


def window_key(
    state: ForecastState, now_ms: int, horizon_s: float, p: ForecastParams | None = None
) -> tuple[int, int, int]:
    """What `forecast(state, now_ms, horizon_s)` depends on besides the parameters: the first
    and last bin of the window and the open bin (the profile and trend change only when a bin
    closes). A caller may keep the last forecast while the key stays the same."""
    p = p or ForecastParams()
    b0 = _bin(now_ms, state, p)
    return b0, _bin(now_ms + int(horizon_s * 1000), state, p), state.cur_bin


def next_use(
    state: ForecastState, now_ms: int, within_s: float, p: ForecastParams | None = None
) -> int | None:
    """The start (ms) of the first bin within `within_s` of now whose forecast demand is at
    least one worker, or None."""
    p = p or ForecastParams()
    step = p.bin_s * 1000
    origin = p.week_start_ms + state.phase_ms
    first = _bin(now_ms, state, p)
    last = _bin(now_ms + int(within_s * 1000), state, p)
    for b in range(first, last + 1):
        start = origin + b * step
        f = forecast(state, max(now_ms, start), 0.0, p)
        if f is not None and f.workers > 0:
            return max(now_ms, start)
    return None


def to_doc(state: ForecastState) -> dict[str, object]:
    """The state as a JSON document (tuples as lists)."""
    return {
        "phase_ms": state.phase_ms,
        "cur_bin": state.cur_bin,
        "cur_peak": state.cur_peak,
        "weekday": [list(v) for v in state.weekday],
        "weekend": [list(v) for v in state.weekend],
        "recent": list(state.recent),
        "expected_recent": list(state.expected_recent),
        "trend": state.trend,
        "weekday_days": state.weekday_days,
        "weekend_days": state.weekend_days,
        "last_day": state.last_day,
    }


def from_doc(doc: dict[str, object]) -> ForecastState:
    """The state of `to_doc`'s document."""

    # The document is the one `to_doc` wrote (JSON ints stay ints): converted in bulk, not
    # value by value (the first autoscaling tick after a start reads thousands of them).
    def table(key: str) -> tuple[tuple[int, ...], ...]:
        raw = doc.get(key) or []
        assert isinstance(raw, list)
        return tuple(map(tuple, raw))

    def ints(key: str) -> tuple[int, ...]:
        raw = doc.get(key) or []
        assert isinstance(raw, list)
        return tuple(raw)

    def num(key: str, default: float) -> float:
        v = doc.get(key, default)
        assert isinstance(v, int | float)
        return float(v)

    raw_expected = doc.get("expected_recent") or []
    assert isinstance(raw_expected, list)
    return ForecastState(
        phase_ms=int(num("phase_ms", 0)),
        cur_bin=int(num("cur_bin", -1)),
        cur_peak=int(num("cur_peak", 0)),
        weekday=table("weekday"),
        weekend=table("weekend"),
        recent=ints("recent"),
        expected_recent=tuple(float(x) for x in raw_expected),
        trend=num("trend", 1.0),
        weekday_days=int(num("weekday_days", 0)),
        weekend_days=int(num("weekend_days", 0)),
        last_day=int(num("last_day", -1)),
    )
