"""Pool-aware scaling: the rules, pure (shared/services/pool_scaling.py feeds and applies them).

1. **Acquisition time, learned per pool** (`acquisitions`, `expected_acquire_s`): a worker a
   cluster takes from its pool's idle nodes joins in the pool's acquisition time (attach and
   start the Spark role), not a VM boot. The provisioner stamps `taken_ms` on a node taken idle
   and `ready_ms` when it runs for its cluster; each such node is timed once, in the order the
   nodes were taken (`seen_ms` is how far the pool's record got; a node not ready yet holds the
   later ones back). The times are folded with the boot-learning rule of
   shared/domain/autoscale_prewarm.py (`learn_boot`: weighted mean and variance), keyed
   `pool:<pool_id>`. Until `min_samples` (3) acquisitions are timed the expected acquisition is
   `default_acquire_s` (20 s, the simulator's default, about what attaching a warm VM and
   starting a Spark worker takes on Azure); then the learned mean plus its margin.
2. **The policy's expected boot** (`expected_boot_s`): the acquisition time when the cluster's
   pool had idle nodes at its last reconcile, else the node boot time. The policy uses it to
   project a shrinking backlog over the time new workers take to join.
3. **The pool's forecast idle target** (`pool_ask`, `ask_due`, `idle_target`): a cluster with
   the forecast on (`spark.sparkplane.autoscaling.forecast`) that draws its workers from a pool
   asks the pool for the workers its forecast wants over the next node boot plus join time
   (plus the timer's period) beyond what it holds: the cluster itself holds the forecast of
   one join time (+ period) ahead, so the pool's nodes must be idle by then, and a node the
   pool starts is idle after a boot. (Looking one boot ahead only left the pool's nodes
   still booting when the cluster came to take them: docs/autoscaling.md, "Pools".) An ask is
   rewritten when it changes or every `refresh_s` (2 min) and lapses `ttl_s` (5 min) after
   its last write, so a cluster that stops asking (terminated, forecast
   off) stops counting by itself. The pool keeps max(min_idle_instances, sum of the live
   asks) idle nodes, within max_capacity, and says why (`IdleTarget.why` names each forecast).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.domain import autoscale_prewarm as boot
from shared.domain.forecast import Forecast
from shared.domain.nodes import PoolNode

KEY_PREFIX = "pool:"


@dataclass(frozen=True, slots=True)
class PoolScalingParams:
    default_acquire_s: float = 20.0
    min_samples: int = 3
    # Asks: rewritten at least this often while they stand, and lapse this long after a write.
    refresh_s: float = 120.0
    ttl_s: float = 300.0
    # Acquisition times are short: a floor of 1 s instead of the cluster starts' 10 s.
    learn: boot.PrewarmParams = field(
        default_factory=lambda: boot.PrewarmParams(default_boot_s=20.0, min_boot_s=1.0)
    )


def acquire_key(pool_id: str) -> str:
    """The id of a pool's learned acquisition time (next to the node types' start times)."""
    return KEY_PREFIX + pool_id


def acquisitions(nodes: Iterable[PoolNode], seen_ms: int) -> tuple[list[float], int]:
    """The acquisition times (seconds) of the nodes taken idle after `seen_ms` that are ready,
    and how far that gets `seen_ms`. Nodes are timed in the order they were taken; a group
    taken at the same moment waits until none of it is still joining. A node let go or lost
    before it ran is skipped."""
    groups: dict[int, list[PoolNode]] = {}
    for n in nodes:
        if n.taken_ms > seen_ms:
            groups.setdefault(n.taken_ms, []).append(n)
    out: list[float] = []
    mark = seen_ms
    for taken_ms in sorted(groups):
        group = groups[taken_ms]
        if any(n.status == "PENDING_USED" for n in group):
            break
        out.extend(
            (n.ready_ms - n.taken_ms) / 1000
            for n in group
            if n.status == "USED" and n.ready_ms >= n.taken_ms
        )
        mark = taken_ms
    return out, mark


def expected_acquire_s(stats: boot.BootStats | None, p: PoolScalingParams) -> float:
    """The pool's expected acquisition time: the default until `min_samples` are timed."""
    if stats is None or stats.n < p.min_samples:
        return p.default_acquire_s
    return boot.expected_boot_s(stats, p.learn)


def expected_boot_s(node_boot_s: float, acquire_s: float | None, pool_idle: int) -> float:
    """How long a new worker of the cluster takes to join: the pool's acquisition time while
    its pool has idle nodes, else the node boot time (no pool, or an empty one)."""
    if acquire_s is None or pool_idle <= 0:
        return node_boot_s
    return acquire_s


def hold_join_s(
    node_boot_s: float, acquire_s: float | None, pool_idle: int, forecast_extra: int
) -> float:
    """How far ahead a forecasting cluster holds its forecast: the pool's acquisition time
    when the pool's idle nodes cover the workers the forecast of the next node boot adds
    (`forecast_extra`), else a node boot. One idle node does not make twenty workers join in
    an acquisition time: the others boot, so the cluster must ask for them a boot ahead."""
    if acquire_s is None or pool_idle <= 0 or pool_idle < forecast_extra:
        return node_boot_s
    return acquire_s


@dataclass(frozen=True, slots=True)
class PoolAsk:
    """One cluster's ask for idle nodes in its pool, and the forecast behind it."""

    extra: int
    why: str


def pool_ask(
    f: Forecast | None, *, current_workers: int, max_workers: int, horizon_s: float
) -> PoolAsk:
    """The idle nodes a cluster asks of its pool: its forecast demand of the next node boot
    period beyond the workers it has, within its max_workers."""
    if f is None:
        return PoolAsk(0, "no forecast yet")
    want = min(f.workers, max_workers)
    extra = max(0, want - current_workers)
    return PoolAsk(
        extra,
        f"{f.describe()} within {horizon_s:.0f} s; holds {current_workers}: asks {extra}",
    )


def ask_due(
    prev: Mapping[str, Any] | None, ask: PoolAsk, now_ms: int, p: PoolScalingParams
) -> bool:
    """Write the ask now: it changed, or the last write is `refresh_s` old (a standing ask is
    kept alive; a zero ask nobody holds is not written)."""
    if prev is None:
        return ask.extra > 0
    if int(prev.get("extra", 0)) != ask.extra:
        return True
    if ask.extra == 0:
        return False
    return now_ms - int(prev.get("written_ms", 0)) >= p.refresh_s * 1000


def ask_doc(
    ask: PoolAsk, *, cluster_id: str, pool_id: str, now_ms: int, p: PoolScalingParams
) -> dict[str, Any]:
    return {
        "cluster_id": cluster_id,
        "pool_id": pool_id,
        "extra": ask.extra,
        "why": ask.why,
        "written_ms": now_ms,
        "expires_ms": now_ms + int(p.ttl_s * 1000),
    }


@dataclass(frozen=True, slots=True)
class IdleTarget:
    idle: int  # the idle nodes the pool keeps
    forecast_idle: int  # the live asks' sum, within max_capacity (0: min_idle alone counts)
    why: str  # the forecasts that set it ("" without live asks)


def idle_target(
    min_idle: int, max_capacity: int | None, asks: Sequence[Mapping[str, Any]], now_ms: int
) -> IdleTarget:
    """max(min_idle, sum of the live asks), the asks within max_capacity."""
    live = sorted(
        (a for a in asks if int(a.get("expires_ms", 0)) > now_ms and int(a.get("extra", 0)) > 0),
        key=lambda a: str(a.get("cluster_id", "")),
    )
    total = sum(int(a["extra"]) for a in live)
    if not live:
        return IdleTarget(min_idle, 0, "")
    capped = total if max_capacity is None else min(total, max_capacity)
    parts = [f"cluster {a.get('cluster_id', '')}: {a.get('why', '')}" for a in live]
    why = "; ".join(parts)
    if capped < total:
        why += f"; {total} asked, capped at max_capacity {max_capacity}"
    if capped <= min_idle:
        why += f"; min_idle_instances {min_idle} covers it"
    return IdleTarget(max(min_idle, capped), capped, why)
