"""The autoscaling policy's memory between evaluations (`ScalingMemory`) and how samples are
folded into it (`remember`): pure, as shared/domain/autoscale.py, whose rules 3 and 4 read it.

The caller stores the memory per cluster (the cluster document's `scaling_memory`) and reads
it back with `ScalingMemory.from_doc`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from shared.domain.autoscale import AutoscaleParams, Sample


@dataclass(frozen=True, slots=True)
class ScalingMemory:
    """What the policy remembers between evaluations; the caller stores it per cluster.

    The last size change (`changed_at_ms`, `direction`, `from_workers`, `to_workers`), and the
    demand history folded in from the samples up to `seen_until_ms`: the decaying peak
    (`tail_workers`, whose decay starts at `tail_ref_ms`), the average demand in workers
    (`avg_workers`), and the last time a sample used the whole cluster (`full_at_ms`).
    """

    changed_at_ms: int | None = None
    direction: Literal["up", "down"] | None = None
    from_workers: int = 0
    to_workers: int = 0
    seen_until_ms: int = -1
    tail_workers: float = 0.0
    tail_ref_ms: int = 0
    avg_workers: float = 0.0
    full_at_ms: int = 0
    # The newest sample folded into the decaying peak (samples join it as they leave the
    # hold window).
    tail_seen_ms: int = -1
    # The newest backlog the cluster had with every slot busy (`drain_at_ms`, -1: none yet):
    # the tasks per second it drained at, to the next sample (0: it grew), on `drain_slots`.
    drain_at_ms: int = -1
    drain_rate: float = 0.0
    drain_slots: int = 0
    # Since when no task has run or waited (-1: tasks now), and how long the last quiet
    # periods lasted (ms, oldest first).
    quiet_since_ms: int = -1
    quiet_gaps: tuple[int, ...] = ()

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> ScalingMemory:
        """The memory as stored (JSON): its lists back to tuples, keys it does not know left
        out (a document written by another version of the policy)."""
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in doc.items() if k in known}
        if "quiet_gaps" in kw:
            kw["quiet_gaps"] = tuple(kw["quiet_gaps"])
        return cls(**kw)


def ceil_div(a: float, b: float) -> int:
    q = a / b
    n = int(q)
    return n if n >= q else n + 1


def decay(value: float, age_ms: float, half_ms: float) -> float:
    if age_ms <= 0:
        return value
    if half_ms <= 0:
        return 0.0
    return value * math.pow(0.5, age_ms / half_ms)


def remember(
    mem: ScalingMemory,
    samples: Sequence[Sample],
    now_ms: int,
    per_worker: float,
    hi: int,
    p: AutoscaleParams,
) -> ScalingMemory:
    """Fold the samples not seen yet into the memory's demand history."""
    seen = mem.seen_until_ms
    tail, tail_ref, tail_seen, avg, full_at = (
        mem.tail_workers,
        mem.tail_ref_ms,
        mem.tail_seen_ms,
        mem.avg_workers,
        mem.full_at_ms,
    )
    hold_ms = int(p.down_hold_s * 1000)
    half_ms = p.down_half_life_s * 1000
    tau_ms = p.floor_tau_s * 1000
    first = seen < 0
    changed = False
    # The decaying peak holds the demand of the samples that left the hold window (those in
    # it are rule 4's peak), each from the moment it left: folded in only then, a sample
    # replaces the peak only where its own demand is the larger from now on (both decay at
    # one rate). Folded in as it arrived, with its start in the future, a smaller sample
    # replaced a larger one that had just left the window and was worth more for a while:
    # capacity dropped from the peak to the newest demand at the end of the hold.
    leave_ms = now_ms - hold_ms
    for s in samples:
        if s.ts_ms <= tail_seen or s.ts_ms > leave_ms:
            continue
        changed = True
        d = s.running_tasks + s.pending_tasks
        n = min(hi, ceil_div(d, per_worker)) if d > 0 else 0
        ref = s.ts_ms + hold_ms
        if n > 0 and n >= decay(tail, ref - tail_ref, half_ms):
            tail, tail_ref = float(n), ref
        tail_seen = s.ts_ms
    drain_at, drain_rate, drain_slots = mem.drain_at_ms, mem.drain_rate, mem.drain_slots
    quiet_since, quiet_gaps = mem.quiet_since_ms, mem.quiet_gaps
    before: Sample | None = None
    for s in samples:
        if s.ts_ms > now_ms:
            continue
        b, before = before, s
        if s.ts_ms <= seen:
            continue
        changed = True
        d = s.running_tasks + s.pending_tasks
        if d == 0 and quiet_since < 0:
            quiet_since = s.ts_ms
        elif d > 0 and quiet_since >= 0:
            quiet_gaps = (*quiet_gaps, s.ts_ms - quiet_since)[-3:]
            quiet_since = -1
        if b is not None and b.pending_tasks > 0 and b.running_tasks >= b.total_slots > 0:
            # A backlog with every slot busy: tasks pending beside free slots are a job's
            # tasks caught between their submission and their start, not a backlog.
            dt_s = (s.ts_ms - b.ts_ms) / 1000
            fall = b.running_tasks + b.pending_tasks - d
            if dt_s > 0:
                drain_at, drain_slots = b.ts_ms, b.total_slots
                drain_rate = fall / dt_s if fall > 0 else 0.0  # it grew: no rate to trust
        n = min(hi, ceil_div(d, per_worker)) if d > 0 else 0
        if first:
            # The average starts at zero, not at this sample's demand: a floor is earned by
            # use over floor_tau_s. Seeded with the first sample, a cluster first seen under a
            # burst kept the burst's size for a quarter of an hour after it, and one first seen
            # a moment earlier, idle, did not.
            full_at = s.ts_ms
            first = False
        elif tau_ms > 0:
            a = 1.0 - math.exp(-(s.ts_ms - seen) / tau_ms)
            avg += a * (n - avg)
        if s.pending_tasks > 0 or (s.workers and d >= len(s.workers) * per_worker):
            full_at = s.ts_ms
        seen = s.ts_ms
    if not changed:
        return mem
    # Built field by field: dataclasses.replace costs several times more, and the autoscaling
    # timer calls this for every running cluster on every tick.
    return ScalingMemory(
        mem.changed_at_ms,
        mem.direction,
        mem.from_workers,
        mem.to_workers,
        seen_until_ms=seen,
        tail_workers=tail,
        tail_ref_ms=tail_ref,
        avg_workers=avg,
        full_at_ms=full_at,
        tail_seen_ms=tail_seen,
        drain_at_ms=drain_at,
        drain_rate=drain_rate,
        drain_slots=drain_slots,
        quiet_since_ms=quiet_since,
        quiet_gaps=quiet_gaps,
    )
