"""How long a new worker takes to join a running cluster, learned per node type. Pure.

The autoscaling policy projects a shrinking backlog over a new worker's boot (rule 3 of
shared/domain/autoscale.py, `expected_boot_s`). No constant is right on every host: a local
Spark worker joins in seconds, an Azure VM in minutes. So the boot is learned:

1. **What is timed** (`joins`): a worker that is RUNNING in a reconcile's snapshot and was not
   in the one before it, when the cluster was RUNNING or RESIZING as the reconcile began (a
   starting cluster's workers also wait for its driver), and its workers come from no instance
   pool (acquisitions are timed per pool: shared/domain/pool_scaling.py). The time is from the
   worker's request (its `start_timestamp`) to that reconcile.
2. **Learned** (`learn`) with the start times' rule (`learn_boot`,
   shared/domain/autoscale_prewarm.py: a weighted mean, 0.3 to the newest), per workspace and
   worker node type.
3. **Used** (`projection_boot_s`): the weighted mean, without the margin a scheduled start
   takes. The projection estimates the backlog left when the worker joins; a boot longer than
   the real one projects more drain than happens and scales up too little, a shorter one too
   much, so the best estimate is the mean. Before any join is timed the policy's own
   `expected_boot_s` stands, and 0 stays 0 (the projection off).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from shared.domain.autoscale_prewarm import BootStats, PrewarmParams, learn_boot
from shared.domain.cluster import Cluster
from shared.domain.states import State

KEY_PREFIX = "join:"
LEARN = PrewarmParams()


def key(node_type: str) -> str:
    """The id of a node type's learned join time (next to its start time and the pools')."""
    return KEY_PREFIX + node_type


def joins(before: Cluster, after: Cluster, now_ms: int) -> list[float]:
    """Seconds from request to RUNNING of each worker that joined between the two snapshots."""
    if before.state not in (State.RUNNING, State.RESIZING) or before.spec.instance_pool_id:
        return []
    seen = {e.get("node_id") for e in before.executors}
    return [
        (now_ms - int(e["start_timestamp"])) / 1000
        for e in after.executors
        if e.get("node_id") not in seen and 0 < int(e.get("start_timestamp") or 0) <= now_ms
    ]


def learn(prev: BootStats | None, seconds: Sequence[float]) -> BootStats | None:
    """Fold timed joins, oldest first, into the node type's statistics."""
    stats = prev
    for s in seconds:
        stats = learn_boot(stats, s, LEARN)
    return stats


def stats_of(body: Mapping[str, Any] | None) -> BootStats | None:
    return BootStats(**body["stats"]) if body and body.get("stats") else None


def projection_boot_s(stats: BootStats | None, prior_s: float) -> float:
    """The boot the policy projects over: the learned mean, else `prior_s` (0: off)."""
    if prior_s <= 0 or stats is None or stats.n == 0:
        return prior_s
    return stats.mean_s
