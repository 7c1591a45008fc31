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
    # The retry slot the next refused caller gets (see `Budget.refuse`).
    next_retry_s: float = 0.0

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
        """0 when a token was taken (send the request), else the seconds to wait (do not)."""
        wait = self.need(kind, 1, now_s)
        if wait == 0:
            self.buckets[kind].tokens -= 1
        return wait

    def need(self, kind: Kind, tokens: int, now_s: float) -> float:
        """0 when `tokens` are there (none is taken), else the seconds to wait (`refuse`)."""
        wait = self.buckets[kind].wait_s(now_s, float(tokens))
        return self.refuse(kind, wait, tokens, now_s) if wait > 0 else 0.0

    def refuse(self, kind: Kind, wait_s: float, tokens: int, now_s: float) -> float:
        """A refused caller's wait: its own, or later, a slot after the callers refused before
        it, one slot per `tokens` at the bucket's refill rate, so that refused callers come
        back spread out at the rate the bucket serves them, not all at the first free token."""
        b = self.buckets[kind]
        slot = max(now_s + wait_s, b.next_retry_s)
        b.next_retry_s = slot + tokens / b.refill_per_s
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
        wait = max(
            budget.buckets[k].wait_s(now_s, tokens=float(n * (position + 1)))
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
