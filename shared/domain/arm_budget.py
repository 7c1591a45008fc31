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

Creates are admitted (`Admission.admit`, one per subscription) one workspace queue at a time
in the order they were first asked for (FIFO per workspace), at a pace: one create per
1 / `admission_rate` (what a create costs, `CREATE_COST`, at the buckets' refill: reads decide,
about one a second), after as many at once as full buckets pay for. A create goes when it is
at the head of its workspace's queue, its pace has come, and the buckets hold its writes
beyond the reserve; its reads come over its start, kept within the refill by the pace. The
others are given retry times spread at that rate: the k-th waiting create (in first-asked
order over the subscription's workspaces) comes back k / rate after the next pace moment.
Before, a create waited until the bucket held all of its reads at one moment, and every
workspace's k-th create was told the same time: with twenty workspaces twenty creates came
back together, mostly to a bucket the reconciles of the creates already started kept near the
reserve, and were refused again, each refusal a rescheduled reconcile (a Service Bus message
sent, received and completed). A queue entry not asked for again within `stale_s` after the
time it was told (its cluster was deleted, or its reconcile went elsewhere) leaves the queue,
so nobody waits behind it.
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
# What one create costs the buckets: its two writes (the deployment PUT, the scale set's
# capacity PATCH), needed at admission, and the reads of its reconciles without retries (one
# per reconcile while the deployment runs, then about six per observation), which set the pace
# of admissions. bench.azure_scale measured about 37-43 reads per create in a burst, retries
# of throttled reconciles included; pacing at 40 was slower and sent more messages than at 24.
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


def admission_rate(budget: Budget, cost: Mapping[Kind, int] = CREATE_COST) -> float:
    """Creates a second the buckets' refills allow (the slowest kind decides): with ARM's
    limits, reads, 25/s for `CREATE_COST` reads a create."""
    return min(budget.buckets[k].refill_per_s / n for k, n in cost.items() if n > 0)


def admission_burst(budget: Budget, cost: Mapping[Kind, int] = CREATE_COST) -> float:
    """Creates a full set of buckets pays for at once (beyond the confirmations' reserve)."""
    keep = 1.0 - RESERVE["transition"]
    return min(budget.buckets[k].size * keep / n for k, n in cost.items() if n > 0)


@dataclass
class Admission:
    """One subscription's creates in FIFO order per workspace (module docstring)."""

    stale_s: float = 60.0
    # workspace -> cluster id -> (sequence of its first ask, when it was told to ask again),
    # in the order first asked.
    queues: dict[str, dict[str, tuple[int, float]]] = field(default_factory=dict)
    seq: int = 0
    # The pace: no create is admitted before this moment (one per 1 / admission_rate).
    next_s: float = -math.inf

    def admit(
        self,
        workspace_id: str,
        cluster_id: str,
        now_s: float,
        budget: Budget,
        cost: Mapping[Kind, int] = CREATE_COST,
    ) -> float:
        """0: the create may go now (its requests take their tokens from `budget`
        themselves); else the seconds after which to ask again.

        A create goes when it is at the head of its workspace's queue, its pace has come
        (one create per 1 / `admission_rate`, with `admission_burst` of them at once after a
        quiet time), and the buckets hold, beyond the confirmations' reserve, its writes (its
        PUT and PATCH follow at once) and a read. Its reads come over its start, a few per
        reconcile: the pace keeps them within the refill, instead of waiting until the
        bucket holds all of them at one moment, which the reconciles of the creates already
        started, drawing the bucket down to the reserve, rarely let happen.

        A refused create with k creates waiting ahead of it (asked for first, in any
        workspace of the subscription) is told to come back at the next pace moment plus
        k / rate: the refused creates come back one after the other, each when it can go,
        rather than together (where all but one would be refused again, each refusal a
        reconcile rescheduled), and those ahead in a workspace always before those behind."""
        q = self.queues.setdefault(workspace_id, {})
        got = q.get(cluster_id)
        if got is None:
            self.seq += 1
            got = (self.seq, now_s)
        q[cluster_id] = (got[0], now_s)
        self._drop_stale(now_s)
        position = list(q).index(cluster_id)
        rate = admission_rate(budget, cost)
        # A create is a transition: it leaves the confirmations their reserve.
        wait = max(
            budget.buckets[k].wait_s(
                now_s,
                tokens=(1 if k == "reads" else n) + RESERVE["transition"] * budget.buckets[k].size,
            )
            for k, n in cost.items()
        )
        start = max(self.next_s, now_s - admission_burst(budget, cost) / rate)
        wait = max(wait, start - now_s)
        if wait < 0.001:
            wait = 0.0
        if position == 0 and wait == 0:
            self.next_s = start + 1.0 / rate
            del q[cluster_id]
            if not q:
                del self.queues[workspace_id]
            return 0.0
        ahead = sum(1 for w in self.queues.values() for s, _ in w.values() if s < got[0])
        # Whole milliseconds, rounded up: a retry scheduled by the millisecond is not early.
        delay = math.ceil(round((wait + ahead / rate) * 1000, 6)) / 1000
        q[cluster_id] = (got[0], now_s + delay)
        return delay

    def _drop_stale(self, now_s: float) -> None:
        """Entries not asked for again within `stale_s` after the time they were told (the
        cluster was deleted, or its reconcile went to another instance) leave the queues."""
        for ws in list(self.queues):
            q = self.queues[ws]
            for cid in [c for c, (_, due) in q.items() if now_s - due > self.stale_s]:
                del q[cid]
            if not q:
                del self.queues[ws]

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
