"""ARM's request limits as the control plane keeps to them (pure: no I/O, no clock reads).

Azure Resource Manager throttles each subscription (per principal) with token buckets ("Understand
how Azure Resource Manager throttles requests"): reads 250 with a refill of 25 per second,
writes 200 at 10/s, deletes 200 at 10/s. Beyond them ARM answers 429 with Retry-After.

`Budget` keeps one copy of those buckets per subscription, so that the control plane throttles
itself before ARM does:

1. Every request takes a token of its kind first (`take`): GET/HEAD are reads, DELETE deletes,
   everything else (PUT, PATCH, POST) writes. With no token, the answer is how long until one
   is back, and the request is not sent.
2. Every answer corrects the copy (`remaining`): ARM's `x-ms-ratelimit-remaining-subscription-*`
   header is what ARM has left for the subscription, which other instances of the app also
   draw on, so the copy never holds more tokens than the header says.
3. A 429 empties the bucket and holds it shut until its Retry-After has passed (`throttled`).
4. Callers refused are given retry times one after the other at the refill rate (`refuse`): a
   thousand waiting reconciles come back spread over the time the bucket needs for them.
5. Reads are not all equal (`Priority`, `RESERVE`). Reading a cluster whose node is suspect (its
   agent went silent, or Resource Graph names it) is how a dead node is noticed within a minute,
   so those reads ("confirm") may empty the bucket; the reconciles of clusters in transition
   (creating, resizing, terminating) leave an eighth of it to them; a drift read (a healthy
   cluster, read now and then to catch what its agents cannot say) goes only while the bucket
   is more than half full. Each priority has its own queue of retry slots, so a confirmation is
   never told to wait behind a burst of refused creates.

Creates are admitted (`Admission.admit`) one workspace queue at a time in the order they were
first asked for (FIFO per workspace): a create goes when it is at the head of its workspace's
queue and the buckets hold what a create costs (`CREATE_COST`: its writes, and the reads of
its reconciles until it runs);
the others are told to come back after the time the buckets need for the ones ahead of them
(at least a second per create ahead). A queue entry not asked for again within `stale_s` (its
cluster was deleted, or its reconcile went elsewhere) leaves the queue, so nobody waits behind
it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["reads", "writes", "deletes"]
Priority = Literal["confirm", "transition", "drift"]
# The share of each bucket a caller of this priority leaves to those above it (point 5).
RESERVE: Mapping[Priority, float] = {"confirm": 0.0, "transition": 0.125, "drift": 0.5}
KINDS: tuple[Kind, ...] = ("reads", "writes", "deletes")
# (bucket size, refill per second) of each kind, per subscription: Azure's documented figures.
ARM_LIMITS: Mapping[Kind, tuple[float, float]] = {
    "reads": (250.0, 25.0),
    "writes": (200.0, 10.0),
    "deletes": (200.0, 10.0),
}
HEADER_PREFIX = "x-ms-ratelimit-remaining-subscription-"
# What admitting one create asks of the buckets: its two writes (the deployment PUT, the scale
# set's capacity PATCH) and the reads of its reconciles without retries (one per reconcile
# while the deployment runs, then about six per observation). bench.azure_scale measured about
# 43 reads per create in a burst, retries of throttled reconciles included.
CREATE_COST: Mapping[Kind, int] = {"writes": 2, "reads": 24}


def kind_of(method: str) -> Kind:
    """Which bucket an HTTP method draws from."""
    m = method.upper()
    if m in ("GET", "HEAD"):
        return "reads"
    if m == "DELETE":
        return "deletes"
    return "writes"


@dataclass
class Bucket:
    size: float
    refill_per_s: float
    tokens: float
    at_s: float
    # No token before this time (a 429's Retry-After).
    shut_until_s: float = 0.0
    # The retry slot the next refused caller of each priority gets (see `Budget.refuse`).
    next_retry_s: dict[str, float] = field(default_factory=dict)

    def refill(self, now_s: float) -> None:
        if now_s > self.at_s:
            self.tokens = min(self.size, self.tokens + (now_s - self.at_s) * self.refill_per_s)
            self.at_s = now_s

    def wait_s(self, now_s: float, tokens: float = 1.0) -> float:
        """Seconds until `tokens` are there (0: now)."""
        self.refill(now_s)
        if now_s < self.shut_until_s:
            return self.shut_until_s - now_s + max(0.0, tokens) / self.refill_per_s
        return max(0.0, (tokens - self.tokens) / self.refill_per_s)


@dataclass
class Budget:
    """One subscription's buckets."""

    buckets: dict[Kind, Bucket]

    @classmethod
    def new(cls, now_s: float, limits: Mapping[Kind, tuple[float, float]] = ARM_LIMITS) -> Budget:
        return cls({k: Bucket(size, rate, size, now_s) for k, (size, rate) in limits.items()})

    def take(self, kind: Kind, now_s: float) -> float:
        """0 when a token was taken (send the request), else the seconds to wait (do not).
        One request of an operation that `need` admitted: it keeps no reserve."""
        wait = self.need(kind, 1, now_s, "confirm")
        if wait == 0:
            self.buckets[kind].tokens -= 1
        return wait

    def need(
        self, kind: Kind, tokens: int, now_s: float, priority: Priority = "transition"
    ) -> float:
        """0 when `tokens` are there beyond what `priority` leaves to those above it (none is
        taken), else the seconds to wait (`refuse`)."""
        b = self.buckets[kind]
        want = min(b.size, tokens + RESERVE[priority] * b.size)
        wait = b.wait_s(now_s, want)
        return self.refuse(kind, wait, tokens, now_s, priority) if wait > 0 else 0.0

    def refuse(
        self,
        kind: Kind,
        wait_s: float,
        tokens: int,
        now_s: float,
        priority: Priority = "transition",
    ) -> float:
        """A refused caller's wait: its own, or later, a slot after the callers of its priority
        refused before it, one slot per `tokens` at the bucket's refill rate, so that refused
        callers come back spread out at the rate the bucket serves them, not all at the first
        free token."""
        b = self.buckets[kind]
        slot = max(now_s + wait_s, b.next_retry_s.get(priority, 0.0))
        b.next_retry_s[priority] = slot + tokens / b.refill_per_s
        return slot - now_s

    def remaining(self, kind: Kind, tokens: float, now_s: float) -> None:
        """ARM said how many it has left: the copy holds no more than that."""
        b = self.buckets[kind]
        b.refill(now_s)
        b.tokens = max(0.0, min(b.tokens, tokens))

    def throttled(self, kind: Kind, retry_after_s: float, now_s: float) -> None:
        """ARM answered 429: nothing of this kind until Retry-After has passed."""
        b = self.buckets[kind]
        b.refill(now_s)
        b.tokens = 0.0
        b.shut_until_s = max(b.shut_until_s, now_s + max(0.0, retry_after_s))

    def available(self, kind: Kind, now_s: float) -> float:
        b = self.buckets[kind]
        b.refill(now_s)
        return 0.0 if now_s < b.shut_until_s else b.tokens


def retry_after_s(value: str | None, default_s: float = 1.0) -> float:
    """A Retry-After header in seconds (ARM sends whole seconds); `default_s` when absent or
    not a number."""
    try:
        s = float(value) if value is not None else default_s
    except ValueError:
        return default_s
    return s if math.isfinite(s) and s >= 0 else default_s


@dataclass
class Admission:
    """Creates in FIFO order per workspace (see the module docstring)."""

    stale_s: float = 60.0
    # workspace -> cluster id -> (first asked, last asked), in the order first asked.
    queues: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)

    def admit(
        self,
        workspace_id: str,
        cluster_id: str,
        now_s: float,
        budget: Budget,
        cost: Mapping[Kind, int] = CREATE_COST,
    ) -> float:
        """0: the create may go now (its requests take their tokens from `budget`
        themselves); else the seconds after which to ask again: the time until the buckets
        hold what the creates ahead of it in its workspace and itself cost (`cost` each)."""
        q = self.queues.setdefault(workspace_id, {})
        first, _ = q.get(cluster_id, (now_s, now_s))
        q[cluster_id] = (first, now_s)
        for cid in [c for c, (_, last) in q.items() if now_s - last > self.stale_s]:
            del q[cid]
        position = list(q).index(cluster_id)
        # A create is a transition: it leaves the confirmations their reserve.
        wait = max(
            budget.buckets[k].wait_s(
                now_s,
                tokens=n * (position + 1) + RESERVE["transition"] * budget.buckets[k].size,
            )
            for k, n in cost.items()
        )
        if position == 0 and wait == 0:
            del q[cluster_id]
            if not q:
                del self.queues[workspace_id]
            return 0.0
        # Those behind ask again no sooner than a second per create ahead of them.
        return max(wait, float(position + 1))

    def waiting(self, cluster_id: str) -> bool:
        """The create is queued (asked for, not admitted), in whichever workspace."""
        return any(cluster_id in q for q in self.queues.values())

    def forget(self, workspace_id: str, cluster_id: str) -> None:
        q = self.queues.get(workspace_id)
        if q is not None:
            q.pop(cluster_id, None)


# Why a cluster is read (shared/domain/node_health.py's reasons) -> the priority of its reads.
READ_PRIORITY: Mapping[str, Priority] = {
    "silent": "confirm",
    "bulk": "confirm",
    "drift": "drift",
    "every_tick": "transition",
}
# How long a suspect cluster's reads keep their priority: the reconciler timer's read of it and
# the reconcile that read sends (which replaces the node or ends the cluster).
CONFIRM_HOLD_S = 120.0


@dataclass
class ReadPriorities:
    """The priority of the next reads of each cluster (point 5 of the module docstring): a
    suspect's for CONFIRM_HOLD_S, a drift read's for the one observation it is made for;
    every other read is a transition's."""

    marks: dict[str, tuple[Priority, float]] = field(default_factory=dict)

    def mark(self, cluster_id: str, reason: str, now_s: float) -> None:
        priority = READ_PRIORITY.get(reason, "transition")
        held, until = self.marks.get(cluster_id, ("transition", 0.0))
        if held == "confirm" and now_s < until and priority != "confirm":
            return  # a suspect stays one until it was read
        hold = CONFIRM_HOLD_S if priority == "confirm" else 0.0
        self.marks[cluster_id] = (priority, now_s + hold)
        if len(self.marks) > 10_000:  # suspects never read again (deleted): forget them
            for cid in [c for c, (p, t) in self.marks.items() if p == "confirm" and now_s >= t]:
                del self.marks[cid]

    def take(self, cluster_id: str, now_s: float) -> Priority:
        """The priority of a read of the cluster now; a drift mark is used up by it."""
        got = self.marks.get(cluster_id)
        if got is None:
            return "transition"
        priority, until = got
        if priority == "drift":
            del self.marks[cluster_id]
            return "drift"
        if now_s >= until:
            del self.marks[cluster_id]
            return "transition"
        return priority
