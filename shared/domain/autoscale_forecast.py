"""Prediction on top of the reactive policy: hold the forecast, resume ahead of use. Pure.

Both rules take the forecast of shared/domain/forecast.py, which the caller computes from the
cluster's own history, and are per-cluster opt-in settings (shared/domain/autoscale_settings.py:
`spark.sparkplane.autoscaling.forecast`, `...proactiveResume`, both `off` by default).

1. **Hold the forecast** (`with_forecast`): the target is max(reactive target, forecast
   demand of the next boot period), within [min, max]. Where the forecast is above the current
   size, the workers are requested now, one boot ahead of the demand the history predicts (the
   reactive policy would request them one boot too late). Where the reactive policy would scale
   down below the forecast, it removes only down to the forecast. The reason and the stats name
   the forecast, so the event that reports the action says what caused it.
2. **Proactive resume** (`resume_decision`): a terminated cluster is started when its predicted
   next use is at most `lead_s` away (the expected cold start and boot), and only when that
   use falls within its auto-termination window (otherwise it would go idle and be terminated
   again before the use).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from shared.domain import cluster as cluster_dom
from shared.domain.autoscale import Decision, ScalingMemory
from shared.domain.cluster import Cluster
from shared.domain.forecast import Forecast
from shared.domain.states import State


def with_forecast(
    d: Decision,
    fc: Forecast | None,
    *,
    min_workers: int,
    max_workers: int,
    current_workers: int,
    last_change: ScalingMemory | None,
    now_ms: int,
) -> Decision:
    """The reactive decision `d`, raised to the forecast demand `fc` (None: unchanged)."""
    if fc is None:
        return d
    want = min(max(fc.workers, min_workers), max_workers)
    if d.target >= want:
        return d
    cur = current_workers
    stats = {**d.stats, "forecast_workers": float(fc.workers)}
    mem = d.memory or ScalingMemory()
    if want > cur:
        m = replace(mem, changed_at_ms=now_ms, direction="up", from_workers=cur, to_workers=want)
        reason = f"{fc.describe()}: scaling up {cur} -> {want} ahead of the predicted demand"
        return Decision(target=want, reason=reason, memory=m, stats=stats)
    # The reactive policy scales down (d.target < cur) or holds below the forecast: of its
    # reduction, the workers not joined yet go first, as in the reactive decision.
    cancel = min(d.cancel, max(0, cur - want))
    remove = d.remove[: max(0, cur - want - cancel)]
    if want >= cur or not (cancel or remove):
        # A hold: the memory keeps the previous change, not the one the reactive rule made.
        last = last_change or ScalingMemory()
        held = replace(
            mem,
            changed_at_ms=last.changed_at_ms,
            direction=last.direction,
            from_workers=last.from_workers,
            to_workers=last.to_workers,
        )
        return Decision(
            target=cur, reason=f"{fc.describe()}: keeping {cur}", memory=held, stats=stats
        )
    target = cur - cancel - len(remove)
    m = replace(mem, to_workers=target)
    reason = f"{d.reason}; {fc.describe()}: removing only {cur - target}"
    return Decision(
        target=target, reason=reason, remove=remove, cancel=cancel, memory=m, stats=stats
    )


@dataclass(frozen=True, slots=True)
class ResumeDecision:
    """Start the terminated cluster now (event STARTING with the forecast in its details)."""

    next_use_ms: int
    reason: str


def resume_decision(
    next_use_ms: int | None,
    fc: Forecast | None,
    *,
    now_ms: int,
    lead_s: float,
    autotermination_minutes: int | None,
) -> ResumeDecision | None:
    """Resume when the predicted next use is within `lead_s` and within the auto-termination
    window; `next_use_ms` and `fc` come from shared.domain.forecast (next_use, forecast)."""
    if next_use_ms is None or fc is None:
        return None
    ahead_s = (next_use_ms - now_ms) / 1000
    if ahead_s > lead_s:
        return None
    if autotermination_minutes and ahead_s > autotermination_minutes * 60:
        return None
    return ResumeDecision(
        next_use_ms=next_use_ms,
        reason=(
            f"predicted use in {max(0.0, ahead_s):.0f} s ({fc.describe()}); starting "
            f"{lead_s:.0f} s ahead"
        ),
    )


def proactive_start(c: Cluster, r: ResumeDecision, *, now: int) -> Cluster:
    """Start a cluster that idle termination stopped, ahead of its predicted use: the STARTING
    event names the forecast. Only an all-purpose cluster terminated for inactivity is resumed
    (a cluster a user terminated stays terminated); anything else is returned unchanged."""
    reason = c.termination_reason
    if (
        c.state != State.TERMINATED
        or c.cluster_source == "JOB"
        or c.deleted
        or reason is None
        or reason.code != "INACTIVITY"
    ):
        return c
    out = cluster_dom.start(c, user=RESUME_USER, now=now)
    for ev in out.pending_events:
        if ev["type"] == "STARTING":
            # "why", not "reason": the SDK parses `reason` as a TerminationReason object.
            ev["details"] = {**ev["details"], "cause": "PROACTIVE_RESUME", "why": r.reason}
    return out


RESUME_USER = "sparkplane-forecast"
