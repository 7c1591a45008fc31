"""Starting a cluster ahead of a scheduled run: how long a start takes, and when to begin. Pure.

1. **Expected start, learned per node type** (`learn_boot`, `expected_boot_s`): every start
   that the control plane made ahead of time is timed (requested to RUNNING). The time of a
   node type is an exponentially weighted mean and variance of those starts (weight `alpha` to
   the newest); the expected start is the mean plus `margin_sigmas` standard deviations, within
   [`min_boot_s`, `max_boot_s`]. With no start timed yet it is `default_boot_s`. The standard
   deviation counts as at least `min_sd_frac + few_starts_frac / n` of the mean after `n`
   timed starts: a few similar starts (one start has no variance at all) say little about the
   next one, which on a loaded host can take twice as long, so the margin starts wide (with
   the defaults, one timed start of 20 s gives an expected start of 60 s, four of 20 s one of
   34.5 s) and narrows to 0.3 of the mean as starts are timed. Being late costs the run a
   cluster start; being early costs only the idle time of the margin.
2. **When** (`start_ahead`): a terminated cluster that a scheduled run will use is started once
   the fire time is at most the expected start (plus the scheduler's tick) away, so its task
   starts on time instead of one cluster start late. A fire time already past is left to the
   run itself (it starts the cluster as it always did).
3. **What** (`start_for_schedule`): the start is an ordinary start of the cluster, its STARTING
   event saying why (cause `SCHEDULED_RUN`, and in `why` the fire time and expected start).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from shared.domain import cluster as cluster_dom
from shared.domain.cluster import Cluster
from shared.domain.states import State

START_USER = "sparkplane-scheduler"


@dataclass(frozen=True, slots=True)
class PrewarmParams:
    default_boot_s: float = 300.0
    alpha: float = 0.3
    margin_sigmas: float = 2.0
    min_boot_s: float = 10.0
    max_boot_s: float = 1800.0
    min_sd_frac: float = 0.15
    few_starts_frac: float = 0.85


@dataclass(frozen=True, slots=True)
class BootStats:
    """Start times of one node type: weighted mean and variance (seconds), and the count."""

    mean_s: float
    var_s2: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def learn_boot(prev: BootStats | None, seconds: float, p: PrewarmParams) -> BootStats:
    """Fold one timed start into the node type's statistics."""
    x = max(0.0, seconds)
    if prev is None or prev.n == 0:
        return BootStats(mean_s=x, var_s2=0.0, n=1)
    d = x - prev.mean_s
    mean = prev.mean_s + p.alpha * d
    var = (1 - p.alpha) * (prev.var_s2 + p.alpha * d * d)
    return BootStats(mean_s=mean, var_s2=var, n=prev.n + 1)


def expected_boot_s(stats: BootStats | None, p: PrewarmParams) -> float:
    """How long a start of the node type is expected to take, with a margin."""
    if stats is None or stats.n == 0:
        return p.default_boot_s
    floor = (p.min_sd_frac + p.few_starts_frac / stats.n) * stats.mean_s
    sd = max(math.sqrt(max(0.0, stats.var_s2)), floor)
    value = stats.mean_s + p.margin_sigmas * sd
    return min(p.max_boot_s, max(p.min_boot_s, value))


def start_ahead(fire_ms: int, now_ms: int, lead_s: float) -> str | None:
    """Why to start now, or None: the fire is at most `lead_s` away and not past."""
    ahead_s = (fire_ms - now_ms) / 1000
    if ahead_s < 0 or ahead_s > lead_s:
        return None
    return f"a scheduled run fires in {ahead_s:.0f} s; a start takes about {lead_s:.0f} s"


def start_for_schedule(c: Cluster, why: str, *, now: int) -> Cluster:
    """Start the terminated all-purpose cluster for a scheduled run (unchanged otherwise)."""
    if c.state != State.TERMINATED or c.cluster_source == "JOB" or c.deleted:
        return c
    out = cluster_dom.start(c, user=START_USER, now=now)
    for ev in out.pending_events:
        if ev["type"] == "STARTING":
            # "why", not "reason": the SDK parses `reason` as a TerminationReason object.
            ev["details"] = {**ev["details"], "cause": "SCHEDULED_RUN", "why": why}
    return out
