"""The autoscaling and idle-termination policies (shared.domain.autoscale): pure and fast."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.domain.autoscale import (
    AutoscaleParams,
    Decision,
    Sample,
    ScalingMemory,
    WorkerLoad,
    _covers,
    decide_size,
    idle_decision,
    last_activity,
)

S = 4  # slots per worker
P = AutoscaleParams()


def workers(n: int, *, busy: int = 0, shuffle: set[int] | frozenset[int] = frozenset()) -> tuple:
    return tuple(
        WorkerLoad(f"w{i}", running_tasks=busy, shuffle_bytes=(1 << 20) if i in shuffle else 0)
        for i in range(n)
    )


def sample(ts_s: float, running: int = 0, pending: int = 0, n: int = 4, **kw) -> Sample:
    ws = kw.pop("ws", None)
    if ws is None:
        ws = workers(n, busy=min(S, running // max(1, n)))
    return Sample(
        ts_ms=int(ts_s * 1000),
        running_tasks=running,
        pending_tasks=pending,
        active_jobs=1 if running or pending else 0,
        total_slots=len(ws) * S,
        workers=ws,
        **kw,
    )


def run(samples, cur, *, lo=1, hi=10, mem=None, now_s=None, params=P) -> Decision:
    now = int(now_s * 1000) if now_s is not None else samples[-1].ts_ms
    return decide_size(samples, lo, hi, cur, S, mem, now, params)


def steady(t0: float, t1: float, running: int, pending: int = 0, n: int = 4, step=10.0):
    out, t = [], t0
    while t <= t1 + 1e-9:
        out.append(sample(t, running, pending, n))
        t += step
    return out


# ---------------------------------------------------------------------------- bounds & freshness


def test_below_minimum_goes_to_minimum_at_once():
    d = run([sample(0)], cur=0, lo=2)
    assert d.target == 2 and "minimum" in d.reason and d.remove == ()


def test_above_maximum_removes_down_to_maximum_preferring_stateless_idle():
    ws = (
        WorkerLoad("a", running_tasks=4),
        WorkerLoad("b", running_tasks=0, shuffle_bytes=10),
        WorkerLoad("c", running_tasks=1),
        WorkerLoad("d", running_tasks=0),
    )
    d = run([sample(0, ws=ws)], cur=4, hi=2)
    assert d.target == 2
    assert d.remove == ("d", "c")


def test_above_maximum_with_workers_still_joining_cancels_the_rest():
    # 1 alive, 3 joining: the joining ones are cancelled first, as the reconciler does.
    d = run([sample(0, n=1)], cur=4, hi=2)
    assert d.target == 2 and d.remove == ()
    assert "2 not joined yet are cancelled" in d.reason
    d = run([sample(0, n=3)], cur=4, hi=2)
    assert d.target == 2 and len(d.remove) == 1


def test_no_fresh_sample_holds():
    d = run([sample(0, pending=100)], cur=3, now_s=600)
    assert d.target == 3 and "no sample" in d.reason
    assert run([], cur=3, now_s=10).target == 3


# ---------------------------------------------------------------------------- scale up


def test_backlog_scales_up_to_its_demand_in_one_step():
    d = run([sample(0, running=16, pending=20, n=4)], cur=4)
    assert d.target == 9  # ceil(36 / 4)
    assert "20 pending + 16 running" in d.reason
    assert d.memory is not None and d.memory.direction == "up"
    assert d.stats["needed_workers"] == 9


def test_scale_up_is_capped_at_max():
    d = run([sample(0, running=16, pending=1000)], cur=4, hi=10)
    assert d.target == 10


def test_backlog_covered_by_joining_workers_adds_nothing():
    d = run([sample(0, running=8, pending=8, n=2)], cur=6)
    assert d.target == 6 and "joining" in d.reason


def test_backlog_that_drains_before_new_workers_join_adds_nothing():
    # 16 slots busy, backlog shrinking by 40 tasks in 10 s: gone long before 120 s.
    s = [sample(0, running=16, pending=80), sample(10, running=16, pending=40)]
    d = run(s, cur=4)
    assert d.target == 4 and "draining" in d.reason


def test_first_sample_of_a_backlog_is_projected_with_the_last_backlog_drain_rate():
    # 60 s ago a backlog of 16 + 80 tasks was gone 10 s later (9.6 tasks/s): a new backlog of
    # 16 + 40 is gone long before a new worker joins, so the 4 workers are enough.
    s = [sample(0), sample(10, running=16, pending=80), sample(20, running=0)]
    s += [*steady(30, 60, 0), sample(70, running=16, pending=40)]
    d = run(s, cur=4, hi=20)
    assert d.target == 4 and "draining at 9.6" in d.reason
    assert d.stats["drain_tasks_per_s"] == 9.6


def test_first_sample_of_a_backlog_without_a_recent_drain_scales_to_demand():
    # The last backlog is older than drain_memory_s.
    old = [sample(0, running=16, pending=80), sample(10, running=0)]
    s = old + steady(20, 1000, 0, step=30) + [sample(1010, running=16, pending=40)]
    assert run(s, cur=4, hi=20).target == 14


def test_the_drain_rate_is_remembered_beyond_the_samples_passed():
    # The backlog drained 10 minutes ago; the caller passes only the last few minutes of
    # samples, and the memory carries the rate.
    old = [sample(0, running=16, pending=80), sample(10, running=0)]
    mem = run(old, cur=4, hi=20).memory
    recent = steady(400, 600, 0, step=10)
    mem = run(recent, cur=4, hi=20, mem=mem).memory
    d = run([*recent, sample(610, running=16, pending=40)], cur=4, hi=20, mem=mem)
    assert d.target == 4 and d.stats["drain_tasks_per_s"] == 9.6


def test_tasks_pending_beside_free_slots_are_not_a_backlog_to_take_a_drain_rate_from():
    # 60 s ago a job's 4 tasks were caught pending while 16 slots were free (submitted, not
    # started yet), and were done 10 s later: that is no drain rate, so a real backlog of
    # 16 + 40 tasks now asks for its whole demand.
    s = [sample(0), sample(10, running=0, pending=4), sample(20, running=0)]
    s += [*steady(30, 60, 0), sample(70, running=16, pending=40)]
    d = run(s, cur=4, hi=20)
    assert d.target == 14 and "drain_tasks_per_s" not in d.stats


def test_recent_drain_rate_is_scaled_down_to_a_smaller_cluster():
    # The backlog drained at 9.6 tasks/s on 4 workers; 2 are left: 4.8 tasks/s.
    s = [sample(0, running=16, pending=80), sample(10, running=0)]
    s += [sample(20, running=8, pending=500, n=2)]
    d = run(s, cur=2, hi=20)
    assert d.stats["drain_tasks_per_s"] == 4.8


def test_growing_backlog_is_not_projected_away():
    s = [sample(0, running=16, pending=10), sample(10, running=16, pending=40)]
    assert run(s, cur=4, hi=20).target == 14


def test_up_backlog_s_waits_for_a_lasting_backlog():
    params = replace(P, up_backlog_s=20)
    s = [sample(0), sample(10, running=16, pending=40)]
    assert run(s, cur=4, params=params).target == 4
    s += [sample(20, running=16, pending=40), sample(30, running=16, pending=40)]
    assert run(s, cur=4, hi=20, params=params).target == 14


def test_a_backlog_seen_one_sample_period_apart_has_lasted_the_period():
    # Agents post samples every 10 s give or take milliseconds: a backlog in two samples
    # 9.998 s apart has lasted up_backlog_s = 10 s (a live run of `cost` never scaled so).
    params = replace(P, up_backlog_s=10)
    s = [sample(0), sample(10.002, running=0, pending=6), sample(20.000, running=3, pending=6)]
    assert run(s, cur=1, hi=4, params=params).target == 3  # 9 tasks, 4 slots per worker
    # one sample alone is still not a lasting backlog
    assert run(s[:2], cur=1, hi=4, params=params).target == 1


def test_a_backlog_within_the_clusters_slots_waits_a_sample():
    # 8 running on 2 workers of 4 slots and 6 pending: the running tasks free their slots in
    # seconds on a stream of small queries, so the first sample asks for nothing ...
    s = [sample(0, n=2), sample(10, running=8, pending=6, n=2)]
    d = run(s, cur=2)
    assert d.target == 2 and "once the backlog has lasted 10 s" in d.reason
    # ... a sample later the backlog is still there: met (its own drain rate projects it).
    s.append(sample(20, running=8, pending=6, n=2))
    assert run(s, cur=2).target == 4


def test_a_backlog_beyond_the_clusters_slots_is_met_at_once():
    s = [sample(0, n=2), sample(10, running=8, pending=9, n=2)]
    assert run(s, cur=2, hi=20).target == 5


def test_the_small_backlog_wait_can_be_turned_off():
    s = [sample(0, n=2), sample(10, running=8, pending=6, n=2)]
    assert run(s, cur=2, params=replace(P, up_small_backlog_s=0)).target == 4


# ---------------------------------------------------------------------------- scale down


def test_no_scale_down_while_tasks_are_pending():
    s = [*steady(0, 600, running=1, pending=0), sample(610, running=0, pending=1)]
    d = run(s, cur=8, lo=1)
    assert d.target >= 8


def test_scale_down_needs_sustained_under_use_covered_by_samples():
    # only 30 s of samples: the hold window is not covered yet
    s = steady(0, 30, running=0, n=8)
    assert run(s, cur=8).target == 8
    s = steady(0, 400, running=0, n=8)
    d = run(s, cur=8, lo=1)
    assert d.target == 1 and len(d.remove) == 7
    assert d.memory is not None and d.memory.direction == "down"


def test_recent_peak_keeps_workers_and_old_peaks_decay():
    # busy at 8 workers' demand until t=300, then idle
    busy = steady(0, 300, running=32, n=8)
    idle = steady(310, 3000, running=0, n=8)
    mem = None
    d = None
    for i in range(len(busy)):
        d = run(busy[: i + 1], cur=8, lo=1, mem=mem)
        mem = d.memory
    targets = []
    cur = 8
    window = busy[-20:]
    for s in idle:
        window = [*window, s][-20:]
        d = run(window, cur=cur, lo=1, mem=mem)
        mem = d.memory
        cur = d.target
        targets.append((s.ts_ms // 1000, cur))
    # within the hold window after the burst nothing goes
    assert all(c == 8 for t, c in targets if t < 300 + P.down_hold_s)
    # then the size steps down gradually, never up, and ends at the minimum
    sizes = [c for _, c in targets]
    assert sizes == sorted(sizes, reverse=True)
    assert sizes[-1] == 1
    assert len(set(sizes)) > 2


def test_a_peak_decays_from_when_it_leaves_the_hold_window_whatever_follows_it():
    """Demand of 8 workers until t=300, then 2. From t=480 the 8 has left the hold window and
    decays (half-life 120 s): 6.73 workers at t=510, 4.76 at t=570, more than the 2 that follow
    it. (Folded in as they arrived, the 2s replaced the 8 that had just left the window, and
    the cluster fell from 8 to 2 workers at the end of the hold.)"""
    params = replace(P, floor_factor=0.0)  # the decaying peak alone
    samples = steady(0, 300, running=32, n=8) + steady(310, 900, running=8, n=8)
    mem, cur, seen = None, 8, {}
    for i, s in enumerate(samples):
        d = run(samples[max(0, i - 25) : i + 1], cur=cur, mem=mem, params=params)
        mem, cur = d.memory, d.target
        seen[s.ts_ms // 1000] = (d.stats.get("decaying_peak_workers"), cur)
    assert seen[500] == (7.13, 8)
    assert seen[510] == (6.73, 7)  # then one scale-down a minute (down_interval_s)
    assert seen[570] == (4.76, 5)
    assert seen[900][1] == 2


def test_floor_keeps_a_warm_share_of_average_demand():
    # the samples are already folded into the memory: average demand 3 workers
    mem = ScalingMemory(seen_until_ms=1_300_000, avg_workers=3.0, full_at_ms=0)
    s = steady(1000, 1300, running=0, n=10)
    d = run(s, cur=10, lo=1, hi=20, mem=mem)
    assert d.target == 6  # 2 x average 3
    assert "average" in d.reason


def test_floor_does_not_depend_on_whether_the_first_sample_caught_a_burst():
    # a new cluster runs one 2-minute burst that fills 8 workers, then idles for 10 minutes;
    # whether the policy's first sample came just before the burst or inside it, the floor
    # (2 x an average started at zero, over 15 minutes) is small: no more than 2 workers stay
    def ends_at(history: list[Sample]) -> int:
        mem, cur = None, 8
        for i in range(1, len(history) + 1):
            d = run(history[:i], cur, lo=1, hi=10, mem=mem)
            mem, cur = d.memory, d.target
        return cur

    burst = steady(10, 120, running=32, n=8)
    idle = steady(130, 720, running=0, n=8)
    caught = ends_at([*burst, *idle])
    before = ends_at([sample(0, running=0, n=8), *burst, *idle])
    assert caught <= 2 and before <= 2


def test_floor_is_capped_at_three_quarters_of_max_workers():
    # average demand 10 of max 20: 2 x 10 = 20 would keep the whole cluster; the cap keeps 15
    mem = ScalingMemory(seen_until_ms=1_300_000, avg_workers=10.0, full_at_ms=0)
    s = steady(1000, 1300, running=0, n=20)
    assert run(s, cur=20, lo=1, hi=20, mem=mem).target == 15
    # an overloaded cluster (average demand at max) keeps three quarters of it warm, not all
    mem = replace(mem, avg_workers=20.0)
    assert run(s, cur=20, lo=1, hi=20, mem=mem).target == 15
    # the cap never goes below the recent peak or the minimum
    busy = [*steady(1000, 1290, running=0, n=20), sample(1300, running=68, n=20)]
    assert run(busy, cur=20, lo=1, hi=20, mem=mem).target == 17
    assert run(s, cur=20, lo=16, hi=20, mem=mem).target == 16
    # uncapped (1.0), the floor keeps the whole cluster
    uncapped = replace(P, floor_max_fraction=1.0)
    assert run(s, cur=20, lo=1, hi=20, mem=mem, params=uncapped).target == 20


def _periodic(quiet_s: float, bursts: int, t: float = 0.0) -> list[Sample]:
    """`bursts` bursts of 8 workers' demand for 60 s, `quiet_s` apart (no task between)."""
    out: list[Sample] = []
    for _ in range(bursts):
        out += steady(t, t + 60, running=32, n=8)
        out += steady(t + 70, t + 60 + quiet_s, 0, n=8)
        t += 60 + quiet_s + 10
    return out


def _walk(samples: list[Sample], params: AutoscaleParams) -> dict[int, int]:
    mem, cur, sizes = None, 8, {}
    for i, s in enumerate(samples):
        if s.running_tasks:
            cur = 8  # each burst has its 8 workers (scaled up for it)
        d = run(samples[max(0, i - 25) : i + 1], cur=cur, hi=10, mem=mem, params=params)
        mem, cur = d.memory, d.target
        sizes[s.ts_ms // 1000] = cur
    return sizes


def test_quiet_periods_longer_than_a_decayed_hold_release_the_peak_after_a_minute():
    # Bursts 10 minutes apart: after the third quiet period, the fourth burst's peak is gone
    # a minute after it ends (the floor keeps its share); before that the hold keeps it.
    params = replace(P, floor_factor=0.0)
    sizes = _walk(_periodic(600, 4), params)
    fourth_end = 3 * 670 + 60
    assert sizes[fourth_end + 60] == 8  # 60 s quiet: not yet
    assert sizes[fourth_end + 70] == 1
    first_end = 60
    assert sizes[first_end + 70] == 8  # no quiet periods seen yet: the hold keeps them
    assert sizes[first_end + 170] == 8


def test_one_short_quiet_period_among_the_last_three_keeps_the_hold():
    params = replace(P, floor_factor=0.0)
    samples = _periodic(600, 2) + _periodic(120, 1, t=2 * 670) + _periodic(600, 1, t=2 * 670 + 190)
    sizes = _walk(samples, params)
    last_end = 2 * 670 + 190 + 60
    assert sizes[last_end + 70] == 8 and sizes[last_end + 170] == 8


def test_scale_down_prefers_stateless_then_least_loaded():
    ws = (
        WorkerLoad("busy", running_tasks=3),
        WorkerLoad("shuffle", running_tasks=0, shuffle_bytes=1 << 30),
        WorkerLoad("light", running_tasks=1),
        WorkerLoad("idle", running_tasks=0),
    )
    s = [sample(t, running=8, ws=ws) for t in range(0, 400, 10)]
    params = replace(P, floor_factor=0.0)
    d = run(s, cur=4, lo=1, params=params)
    assert d.target == 2
    assert d.remove == ("idle", "light")


def test_stateful_workers_go_only_after_the_longer_window():
    ws = tuple(WorkerLoad(f"s{i}", shuffle_bytes=100) for i in range(4))
    params = replace(P, floor_factor=0.0, down_half_life_s=0.0)
    s = [sample(t, ws=ws) for t in range(0, 400, 10)]
    mem = ScalingMemory(seen_until_ms=-1)
    d = run(s, cur=4, lo=1, mem=mem, params=params)
    assert d.target == 4 and "shuffle" in d.reason
    s = [sample(t, ws=ws) for t in range(0, 1300, 10)]
    d = run(s, cur=4, lo=1, params=params)
    assert d.target == 1 and "holding shuffle" in d.reason


def test_scale_down_cancels_workers_not_joined_yet_before_alive_ones():
    # 8 set, 5 alive (3 still joining), no demand for the hold window: the 3 joining are
    # cancelled first, then alive workers go for the rest (rule 4's reduction; the early
    # cancellation is off, as in the settings other than `balanced`).
    s = steady(0, 400, running=0, n=5)
    params = replace(P, floor_factor=0.0, down_half_life_s=0.0, cancel_joining=False)
    d = run(s, cur=8, lo=4, params=params)
    assert d.target == 4 and d.cancel == 3 and not d.cancels_only
    assert d.remove == ("w0",)
    assert "cancelling 3 not joined yet" in d.reason


def test_joining_workers_are_cancelled_even_when_every_alive_one_holds_state():
    ws = tuple(WorkerLoad(f"s{i}", shuffle_bytes=100) for i in range(2))
    s = [sample(t, running=4, ws=ws) for t in range(0, 400, 10)]
    params = replace(P, floor_factor=0.0, down_half_life_s=0.0, cancel_joining=False)
    d = run(s, cur=5, lo=1, params=params)
    assert d.target == 2 and d.remove == () and d.cancels_only
    assert "cancelling 3 not joined yet" in d.reason


def backlog_then_gone(alive: int = 2) -> list[Sample]:
    """A backlog met at 0 s (the scale-up), gone by 10 s while the new workers boot."""
    return [sample(0, running=2 * S, pending=6 * S, n=alive), sample(10, running=S, n=alive)]


def test_joining_workers_go_as_soon_as_their_backlog_is_gone():
    # 8 set, 2 alive, 1 worker's tasks running, nothing pending: no hold window, no cooldown
    # after the scale-up; the 6 joining go, down to the alive workers.
    mem = ScalingMemory(changed_at_ms=0, direction="up", from_workers=2, to_workers=8)
    d = run(backlog_then_gone(), cur=8, lo=1, mem=mem)
    assert d.target == 2 and d.cancel == 6 and d.remove == () and d.cancels_only
    assert "cancelling 6 not joined yet" in d.reason
    assert d.memory is not None and d.memory.direction == "down"


def test_cancelling_joining_workers_keeps_the_floor_and_the_minimum():
    # An average demand of 2.5 workers: the floor (2x, capped at 3/4 of 10) keeps 5 of 8.
    mem = ScalingMemory(avg_workers=2.5, seen_until_ms=10_000)
    assert run(backlog_then_gone(), cur=8, lo=1, mem=mem).target == 5
    assert run(backlog_then_gone(), cur=8, lo=3).target == 3
    # every worker has joined: nothing to cancel, rule 4 waits for its hold window
    held = run(backlog_then_gone(alive=8), cur=8, lo=1)
    assert held.target == 8 and held.cancel == 0


def test_joining_workers_stay_while_tasks_are_pending_or_when_turned_off():
    s = [sample(0, running=2 * S, pending=6 * S, n=2), sample(10, running=2 * S, pending=1, n=2)]
    assert run(s, cur=8, lo=1).target == 8
    off = replace(P, cancel_joining=False)
    assert run(backlog_then_gone(), cur=8, lo=1, params=off).target == 8


def test_down_interval_limits_consecutive_scale_downs():
    s = steady(0, 400, running=0, n=8)
    mem = ScalingMemory(changed_at_ms=390_000, direction="down", from_workers=9, to_workers=8)
    d = run(s, cur=8, lo=1, mem=mem)
    assert d.target == 8 and "last one" in d.reason


def test_down_max_fraction_limits_a_step():
    s = steady(0, 400, running=0, n=8)
    d = run(s, cur=8, lo=1, params=replace(P, down_max_fraction=0.25))
    assert d.target == 6


def _square_wave_reversals(period_s: float, low: int, high: int) -> tuple[int, int]:
    """Feed a square wave of demand through the policy (workers join at once); count
    reversals (opposite changes within 10 minutes) after the first 20 minutes."""
    cur, mem, window, changes = 2, None, [], []
    t = 0.0
    while t < 4 * 3600:
        level = high if int(t // (period_s / 2)) % 2 else low
        window = [
            *window,
            sample(t, running=min(level, cur) * S, pending=max(0, level - cur) * S, n=cur),
        ][-30:]
        d = decide_size(window, 1, 12, cur, S, mem, int(t * 1000), P)
        mem = d.memory
        if d.target != cur:
            changes.append((t, 1 if d.target > cur else -1))
            cur = d.target
        t += 10
    late = [c for c in changes if c[0] > 1200]
    rev = sum(1 for (t0, d0), (t1, d1) in itertools.pairwise(late) if d0 != d1 and t1 - t0 <= 600)
    return rev, len(late)


@pytest.mark.parametrize("period_s", [120, 180, 240, 300])
def test_square_wave_around_the_threshold_does_not_flap(period_s):
    rev, changes = _square_wave_reversals(period_s, low=3, high=6)
    assert rev == 0
    assert changes <= 1


def test_memory_folds_samples_once_and_is_returned_on_hold():
    s = steady(0, 100, running=8, n=2)
    d1 = run(s, cur=2, lo=1)
    assert d1.memory is not None and d1.memory.seen_until_ms == 100_000
    d2 = run(s, cur=2, lo=1, mem=d1.memory)
    assert d2.memory == d1.memory


# ---------------------------------------------------------------------------- idle termination


def test_idle_decision_fires_after_the_period_with_minutes():
    d = idle_decision(0, 30, 31 * 60_000, busy_now=False)
    assert d is not None and d.inactivity_duration_min == 31
    assert "30 min" in d.reason
    assert idle_decision(0, 30, 29 * 60_000, busy_now=False) is None


def test_idle_decision_never_while_busy_and_disabled_by_zero_or_none():
    assert idle_decision(0, 30, 10 * 3_600_000, busy_now=True) is None
    assert idle_decision(0, 0, 10 * 3_600_000, busy_now=False) is None
    assert idle_decision(0, None, 10 * 3_600_000, busy_now=False) is None


def test_last_activity_counts_tasks_jobs_and_queries():
    s = [
        Sample(1000, running_tasks=1),
        Sample(2000),
        Sample(3000, active_queries=1),
        Sample(4000),
        Sample(5000, active_jobs=1),
        Sample(6000),
    ]
    assert last_activity(s, 0) == 5000
    assert last_activity(s[:2], 0) == 1000
    assert last_activity([Sample(2000)], 1500) == 1500
    assert last_activity([Sample(1000, pending_tasks=3)], 5000) == 5000


def test_a_driver_only_phase_keeps_the_cluster_busy():
    # a long notebook command with no Spark task: active query, no tasks
    s = [Sample(t * 60_000, active_queries=1) for t in range(0, 120)]
    la = last_activity(s, 0)
    assert idle_decision(la, 30, s[-1].ts_ms, s[-1].busy) is None


# ---------------------------------------------------------------------------- properties


@st.composite
def scenarios(draw):
    lo = draw(st.integers(0, 5))
    hi = lo + draw(st.integers(0, 20))
    cur = draw(st.integers(0, 30))
    slots = draw(st.sampled_from([1, 4, 8]))
    n = draw(st.integers(0, 12))
    ts = sorted(draw(st.lists(st.integers(0, 1_000_000), min_size=0, max_size=12, unique=True)))
    samples = []
    for t in ts:
        ws = tuple(
            WorkerLoad(
                f"w{i}",
                draw(st.integers(0, slots)),
                draw(st.sampled_from([0, 0, 5])),
                draw(st.sampled_from([0, 0, 7])),
            )
            for i in range(draw(st.integers(0, n)))
        )
        samples.append(
            Sample(
                t,
                running_tasks=draw(st.integers(0, 200)),
                pending_tasks=draw(st.sampled_from([0, 0, 1, 50, 5000])),
                active_jobs=draw(st.integers(0, 2)),
                active_queries=draw(st.integers(0, 1)),
                total_slots=len(ws) * slots,
                workers=ws,
            )
        )
    now = (ts[-1] if ts else 0) + draw(st.integers(0, 200_000))
    mem = draw(
        st.none()
        | st.builds(
            ScalingMemory,
            changed_at_ms=st.none() | st.integers(0, 1_200_000),
            direction=st.sampled_from(["up", "down"]),
            seen_until_ms=st.integers(-1, 1_000_000),
            tail_workers=st.floats(0, 50),
            tail_ref_ms=st.integers(0, 1_200_000),
            avg_workers=st.floats(0, 50),
            full_at_ms=st.integers(0, 1_200_000),
        )
    )
    return samples, lo, hi, cur, slots, mem, now


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_properties_of_decide_size(case):
    samples, lo, hi, cur, slots, mem, now = case
    d = decide_size(samples, lo, hi, cur, slots, mem, now)
    # always within [min, max]
    assert lo <= d.target <= hi
    fresh = [s for s in samples if s.ts_ms <= now]
    latest = fresh[-1] if fresh else None
    # no scale-down while tasks are pending (unless above a lowered maximum)
    if latest is not None and latest.pending_tasks > 0 and cur <= hi:
        assert d.target >= cur
    # removals: a subset of the alive workers, no duplicates, and the right count
    alive = {w.node_id for w in latest.workers} if latest is not None else set()
    assert set(d.remove) <= alive
    assert len(set(d.remove)) == len(d.remove)
    if d.target >= cur:
        assert d.remove == ()
    else:
        # workers not joined yet (set but not alive) are cancelled first; alive ones go for
        # the rest of the reduction
        joining = max(0, cur - len(alive))
        assert len(d.remove) == max(0, cur - d.target - joining)
    assert d.memory is not None


@settings(max_examples=300, deadline=None)
@given(
    last=st.integers(0, 10**9),
    minutes=st.none() | st.integers(0, 10_000),
    now=st.integers(0, 2 * 10**9),
    busy=st.booleans(),
)
def test_idle_never_fires_while_busy(last, minutes, now, busy):
    d = idle_decision(last, minutes, now, busy)
    if busy or not minutes:
        assert d is None
    elif d is not None:
        assert now - last >= minutes * 60_000
        assert d.inactivity_duration_min >= minutes


def _covers_forward(samples: list[Sample], start_ms: int, now_ms: int, max_gap_ms: int) -> bool:
    """The coverage rule read forward, oldest sample first (the policy walks it backwards)."""
    prev: int | None = None
    for s in samples:
        if s.ts_ms > now_ms:
            break
        if s.ts_ms <= start_ms:
            prev = s.ts_ms
            continue
        if s.ts_ms - (start_ms if prev is None else prev) > max_gap_ms:
            return False
        prev = s.ts_ms
    return prev is not None and now_ms - prev <= max_gap_ms


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=600), max_size=40),
    st.integers(min_value=0, max_value=600),
    st.integers(min_value=0, max_value=300),
    st.integers(min_value=1, max_value=60),
)
def test_coverage_read_backwards_is_the_rule_read_forwards(
    times: list[int], now_s: int, window_s: int, gap_s: int
) -> None:
    samples = [Sample(ts_ms=t * 1000) for t in sorted(times)]
    now, start, gap = now_s * 1000, (now_s - window_s) * 1000, gap_s * 1000
    assert _covers(samples, start, now, gap) == _covers_forward(samples, start, now, gap)


def test_the_memory_read_back_from_its_json_document_is_the_memory_stored():
    import json
    from dataclasses import asdict

    mem = ScalingMemory(changed_at_ms=5, direction="up", quiet_since_ms=9, quiet_gaps=(1, 2, 3))
    doc = json.loads(json.dumps(asdict(mem)))
    assert doc["quiet_gaps"] == [1, 2, 3]  # JSON has no tuples
    assert ScalingMemory.from_doc(doc) == mem
    # a key another version of the policy wrote is left out, not an error
    assert ScalingMemory.from_doc({**doc, "busy_peaks": [4]}) == mem
