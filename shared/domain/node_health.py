"""When a running cluster's nodes are checked in the cloud (pure: no I/O, no clock reads).

The nodes tell first: every node that runs an agent heartbeats every `heartbeat_s` (the
driver's cluster agent with a Spark sample, a worker's node agent with its disk report).
Polling the cloud for every running cluster on every reconciler tick costs about four ARM
reads per cluster and tick, which at ten thousand clusters is far beyond a subscription's
25 reads/s. So, for a RUNNING cluster (`arm_check`):

1. A node silent for `silent_beats` heartbeats is suspect: its last beat (or, before any, the
   moment the cluster became RUNNING) is older than silent_beats * heartbeat_s. Then the cloud
   is asked (observe), and the planner replaces the node or ends the cluster.
2. Otherwise the cloud is read only for drift, once every `drift_check_s` per cluster, at a
   moment spread over that period by a hash of the cluster id (`drift_due`), so ten thousand
   clusters cost ten thousand observes per period, evenly, never all at one tick.
3. A provisioner with a bulk health query (ARM: one Resource Graph query, paged, for every
   cluster's VMs at once) names the clusters with a node failed or stopped at each tick; those
   are read too ("bulk"), agents or not.
4. `drift_check_s` = 0 keeps reading the cloud at every tick (the local provisioners, whose
   observe reads local processes or rows and has no request limits).

When the cloud's request budget is short, suspects (`silent`, `bulk`) are read first and drift
reads last (`READ_ORDER`; the budget's side of it is shared/domain/arm_budget.py, point 5): a
dead node is noticed within a minute even right after a burst of creates has spent the budget.

The beats themselves are read from the store (a query of the driver's newest sample per
cluster), not at every tick: the timer remembers what it read (`Remembered`) and reads again
only when that memory could now give another answer than a fresh read (`beats_stale`). Beats
only move forward, so a remembered beat still within the silence limit cannot be silent in a
fresh read either; one beyond it may have been followed by a newer one, so it is read again.
A node with no beat when it was read is not judged, unless its first beat since could already
be older than the limit (the read itself is older than the limit). For a driver beating every
10 s against a 30 s limit, that is a read every third or fourth tick instead of every tick.

Transitions (creating, resizing, terminating) are not decided here: their reconciles read the
cloud as they go, as before. A node that runs no agent is judged by the drift reads alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Literal

Reason = Literal["every_tick", "silent", "drift", "bulk"]
# The order in which one tick reads the clusters it must read (suspects first).
READ_ORDER: dict[Reason, int] = {"bulk": 0, "silent": 0, "every_tick": 1, "drift": 2}


@dataclass(frozen=True, slots=True)
class HealthParams:
    heartbeat_s: float = 10.0
    silent_beats: int = 3
    drift_check_s: float = 0.0

    @property
    def silent_ms(self) -> int:
        return int(self.silent_beats * self.heartbeat_s * 1000)


def offset_ms(cluster_id: str, period_ms: int) -> int:
    """Where in each drift period a cluster's read falls (stable across instances)."""
    digest = hashlib.sha256(cluster_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % max(1, period_ms)


def drift_due(cluster_id: str, since_ms: int, now_ms: int, period_ms: int) -> bool:
    """Whether the cluster's drift moment (offset + k * period) falls in (since, now]."""
    if period_ms <= 0:
        return True
    if now_ms <= since_ms:
        return False
    if now_ms - since_ms >= period_ms:
        return True
    off = offset_ms(cluster_id, period_ms)
    # The last drift moment at or before now.
    last = now_ms - ((now_ms - off) % period_ms)
    return last > since_ms


def silent_nodes(
    beats: Mapping[str, int], running_since_ms: int, now_ms: int, p: HealthParams
) -> list[str]:
    """The nodes (of those expected to beat) whose last beat, or the cluster's RUNNING moment
    before any, is older than the silence limit."""
    return sorted(
        node for node, last in beats.items() if now_ms - max(last, running_since_ms) > p.silent_ms
    )


def arm_check(
    cluster_id: str,
    *,
    beats: Mapping[str, int],
    running_since_ms: int,
    since_ms: int,
    now_ms: int,
    p: HealthParams,
) -> Reason | None:
    """Why the cloud must be read for this RUNNING cluster at this tick (None: it need not).
    `beats`: node -> last heartbeat (ms; 0 for none yet) of the nodes that run an agent;
    `since_ms`: the previous tick."""
    if p.drift_check_s <= 0:
        return "every_tick"
    if silent_nodes(beats, running_since_ms, now_ms, p):
        return "silent"
    if drift_due(cluster_id, since_ms, now_ms, int(p.drift_check_s * 1000)):
        return "drift"
    return None


@dataclass(frozen=True, slots=True)
class Remembered:
    """A cluster's beats as the timer last read them: node -> last beat (ms) of the nodes that
    had one, and when they were read."""

    read_ms: int
    beats: Mapping[str, int]


def beats_stale(
    remembered: Remembered | None,
    nodes: Collection[str],
    running_since_ms: int,
    now_ms: int,
    p: HealthParams,
) -> bool:
    """Whether the cluster's beats must be read again before `arm_check` at `now_ms`: True
    unless the remembered ones give the answer a fresh read would (module docstring).
    `nodes`: the cluster's nodes that run an agent, now."""
    if remembered is None:
        return True
    for node in nodes:
        last = remembered.beats.get(node)
        if last is None:
            # No beat when read: a first beat since is newer than the read.
            if now_ms - max(remembered.read_ms, running_since_ms) > p.silent_ms:
                return True
        elif now_ms - max(last, running_since_ms) > p.silent_ms:
            return True  # silent by memory: a newer beat may have come since
    return False
