"""Which subscription a new workspace's managed resource group goes to (pure: no I/O).

ARM limits requests per subscription (shared/domain/arm_budget.py): reads 25/s, writes and
deletes 10/s each. One subscription brings about 0.6 clusters a second to RUNNING and reads a
few ten thousand running clusters for drift; the operator lists several subscriptions
(`SPARKPLANE_ARM_SUBSCRIPTION_ID` and `SPARKPLANE_ARM_SUBSCRIPTION_IDS`) to multiply that.

The unit of placement is the workspace, not the cluster: a workspace's clusters all live in its
one managed resource group (its VNet and subnet, its storage account, the deny assignment of its
deployment stack), and a group lives in one subscription. Splitting a workspace's clusters over
subscriptions would need a group, a network and a guard per subscription and per workspace, and
peering between them for nothing a cluster needs. So a workspace is placed once, when it is
created, and its clusters follow it; later reads, deletes and orphan sweeps go to the
subscription that holds its group (the group is the record: ARM cannot disagree with itself).

The rule (`place`): the subscription with the most room, where room is what ARM has left to
give there, counted in clusters: fewest clusters first (each running cluster is drift reads, and
each cluster in transition reads and writes), then fewest workspaces (a new workspace brings
clusters the counts do not show yet), then the order the operator listed them (the first, the
one that held every workspace before there were several, last among equals only by that order).
All subscriptions are taken as alike (the same limits; quotas raised alike): a subscription
with a smaller VM quota would need a weight, which nothing asks for yet.

Capacity (`max_clusters`, `SPARKPLANE_ARM_SUBSCRIPTION_MAX_CLUSTERS`; 0: none): the most
clusters with nodes in ARM that one subscription may hold (what its VM quota and its request
limits carry, as the operator judges them). A new workspace goes only to a subscription below
it (`place` gives None when every one is full: the workspace is refused); a cluster starts
only while its workspace's subscription is below it, not counting itself (`has_room`): a
workspace cannot move, so a cluster of a full subscription fails to start.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SubscriptionLoad:
    subscription_id: str
    workspaces: int
    clusters: int


def has_room(clusters: int, max_clusters: int) -> bool:
    """A subscription holding `clusters` (not counting the one asking) may take one more."""
    return max_clusters <= 0 or clusters < max_clusters


def place(loads: Sequence[SubscriptionLoad], max_clusters: int = 0) -> str | None:
    """The subscription for a new workspace (see the module docstring), None when every one
    holds `max_clusters`. `loads` in the order the operator listed the subscriptions; at
    least one."""
    if not loads:
        raise ValueError("no subscription to place a workspace in")
    open_ = [(i, x) for i, x in enumerate(loads) if has_room(x.clusters, max_clusters)]
    if not open_:
        return None
    _, best = min(open_, key=lambda p: (p[1].clusters, p[1].workspaces, p[0]))
    return best.subscription_id
