"""Idle termination: pure functions of utilization samples (no I/O, no clock reads).

Terminate when the last activity (a running or pending task, an active job or an executing
Spark Connect query; see `last_activity`) is older than `autotermination_minutes`; never while
the cluster is busy; 0 or None disables it. A driver-only phase (a long notebook command with
no Spark task) must be reported as an executing query, or it looks idle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only the attributes are used; shared.domain.autoscale re-exports this module
    from shared.domain.autoscale import Sample

_MS_PER_MIN = 60_000


@dataclass(frozen=True, slots=True)
class IdleDecision:
    """Terminate the cluster for inactivity (event TERMINATING, code INACTIVITY)."""

    inactivity_duration_min: int
    reason: str


def last_activity(samples: Sequence[Sample], previous_last_activity_ms: int) -> int:
    """The latest time the cluster was busy: running or pending tasks, an active job, or an
    executing Spark Connect query. Never earlier than `previous_last_activity_ms`."""
    latest = previous_last_activity_ms
    for s in samples:
        if s.ts_ms > latest and s.busy:
            latest = s.ts_ms
    return latest


def idle_decision(
    last_activity_ms: int,
    autotermination_minutes: int | None,
    now_ms: int,
    busy_now: bool,
) -> IdleDecision | None:
    """Terminate when idle for at least `autotermination_minutes` (0 or None: never); never
    while the cluster is busy."""
    if busy_now or not autotermination_minutes or autotermination_minutes <= 0:
        return None
    idle_ms = now_ms - last_activity_ms
    if idle_ms < autotermination_minutes * _MS_PER_MIN:
        return None
    minutes = idle_ms // _MS_PER_MIN
    return IdleDecision(
        inactivity_duration_min=minutes,
        reason=(
            f"inactive for {minutes} min (no running or pending tasks, jobs or queries); "
            f"auto-termination after {autotermination_minutes} min"
        ),
    )
