"""Several subscriptions behind one provisioner: an `ArmProvisioner` per subscription
(`SPARKPLANE_ARM_SUBSCRIPTION_ID` first, then `SPARKPLANE_ARM_SUBSCRIPTION_IDS`), all sending
through one `ArmThrottle`, whose budgets are per subscription (ARM's limits are).

Each workspace's managed resource group lives in one subscription, chosen when the workspace
is created by shared/domain/arm_placement.py (fewest clusters, then fewest workspaces), and its
clusters go there with it. The record of where is the group itself: which subscription holds
`<prefix>W-managed` (ARM cannot disagree with it, as a copy in the store could after a crash
between the PUT and the write). It is read with Azure Resource Graph, which spans
subscriptions in one query (not the subscriptions' read budgets): the groups (workspace ->
subscription) and the driver VMs (cluster -> subscription) are listed once, paged, and then
kept; what this instance creates it remembers. A cluster not found there (its deployment has
just started on another instance; Resource Graph is also seconds behind) is looked for with
each subscription's tag query. The bulk health query is one query over every subscription.

With a maximum of clusters per subscription (`SPARKPLANE_ARM_SUBSCRIPTION_MAX_CLUSTERS`; the
rule is shared/domain/arm_placement.py's), the clusters each subscription holds are counted
from Resource Graph's driver VMs, read again at most every `COUNT_REFRESH_S`, with this
instance's own starts and stops since (Resource Graph is seconds behind, and other instances'
starts are seen at the next read): a burst spread over instances may overshoot the maximum by
what they start within that time. A create in a full subscription raises
SubscriptionCapacityReached (its cluster fails to start), as does placing a workspace when
every subscription is full. One subscription with a maximum goes through this router too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from shared.adapters.arm.provisioner import ArmProvisioner
from shared.adapters.arm.throttle import ArmThrottle
from shared.domain.arm_placement import SubscriptionLoad, has_room, place
from shared.ports import (
    Node,
    NodeRequest,
    NodeType,
    PoolNode,
    PoolRequest,
    SparkVersion,
    SubscriptionCapacityReached,
)

if TYPE_CHECKING:
    from shared.settings import Settings

GROUPS_QUERY = """\
resourcecontainers
| where type =~ 'microsoft.resources/subscriptions/resourcegroups' and tags.Vendor =~ 'sparkplane'
| project workspaceId = tostring(tags.WorkspaceId), subscriptionId
| order by workspaceId asc"""
CLUSTERS_QUERY = """\
resources
| where type =~ 'microsoft.compute/virtualmachines' and tags.Vendor =~ 'sparkplane'
| project clusterId = tostring(tags.ClusterId), subscriptionId
| order by clusterId asc"""
# How long the clusters counted per subscription (for the maximum) are trusted.
COUNT_REFRESH_S = 60.0


class ShardedArmProvisioner:
    """`Provisioner`, the workspace operations and the bulk health query over several
    subscriptions (module docstring)."""

    def __init__(
        self,
        shards: Sequence[ArmProvisioner],
        throttle: ArmThrottle,
        clock: Callable[[], float],
        max_clusters: int = 0,
    ) -> None:
        self.shards = {s.subscription_id.lower(): s for s in shards}
        self.order = [s.subscription_id.lower() for s in shards]
        self.throttle = throttle
        self.clock = clock
        first = shards[0]
        # The bulk queries go through the first subscription's client, over all of them.
        first.graph_subscriptions = [s.subscription_id for s in shards]
        self.first = first
        self._lock = threading.Lock()
        self._ws: dict[str, str] = {}
        self._clusters: dict[str, str] = {}
        self._indexed = False
        # The maximum of clusters per subscription (0: none) and the count behind it: Resource
        # Graph's clusters (cluster -> subscription) as of `_counted_at`, and this instance's
        # starts (True) and stops (False) since shortly before (cluster -> (sub, started, at)).
        self.max_clusters = max_clusters
        self._graph: dict[str, str] = {}
        self._counted_at = float("-inf")
        self._changes: dict[str, tuple[str, bool, float]] = {}

    @classmethod
    def from_settings(
        cls, s: Settings, *, clock: Callable[[], float] = time.time, **kw: Any
    ) -> ShardedArmProvisioner:
        throttle = ArmThrottle(clock)
        shards = [
            ArmProvisioner.from_settings(
                s.model_copy(update={"arm_subscription_id": sub}),
                clock=clock,
                throttle=throttle,
                **kw,
            )
            for sub in s.arm_subscriptions
        ]
        return cls(shards, throttle, clock, s.arm_subscription_max_clusters)

    # ------------------------------------------------------------------ where things are

    def _index(self) -> None:
        """Workspace and cluster -> subscription, from Resource Graph (once)."""
        if self._indexed:
            return
        groups = self.first.graph_rows(GROUPS_QUERY)
        vms = self.first.graph_rows(CLUSTERS_QUERY)
        with self._lock:
            for row in groups:
                self._ws.setdefault(str(row["workspaceId"]), str(row["subscriptionId"]).lower())
            for row in vms:
                cid = str(row["clusterId"])
                self._clusters.setdefault(cid, str(row["subscriptionId"]).lower())
            self._indexed = True

    def loads(self) -> list[SubscriptionLoad]:
        """Workspaces and clusters per subscription: with a maximum, the clusters counted for
        it (`live`); without, every cluster this instance knows of."""
        live = self.live() if self.max_clusters else None
        with self._lock:
            ws = list(self._ws.values())
            cl = list((live if live is not None else self._clusters).values())
        return [SubscriptionLoad(sub, ws.count(sub), cl.count(sub)) for sub in self.order]

    def live(self) -> dict[str, str]:
        """cluster -> subscription of the clusters with nodes in ARM, as counted for the
        maximum (module docstring)."""
        now = self.clock()
        if now - self._counted_at >= COUNT_REFRESH_S:
            rows = self.first.graph_rows(CLUSTERS_QUERY)
            with self._lock:
                self._graph = {str(r["clusterId"]): str(r["subscriptionId"]).lower() for r in rows}
                self._counted_at = now
                # Older changes are in the rows read now (Resource Graph is seconds behind).
                self._changes = {
                    c: v for c, v in self._changes.items() if v[2] > now - COUNT_REFRESH_S
                }
        with self._lock:
            out = dict(self._graph)
            for cid, (sub, started, _) in self._changes.items():
                if started:
                    out[cid] = sub
                else:
                    out.pop(cid, None)
        return out

    def _count(self, cluster_id: str, sub: str, started: bool) -> None:
        if self.max_clusters:
            with self._lock:
                self._changes[cluster_id] = (sub, started, self.clock())

    def for_workspace(self, workspace_id: str) -> ArmProvisioner:
        """The subscription of the workspace's group; a new workspace is placed
        (SubscriptionCapacityReached when every subscription is full)."""
        self._index()
        with self._lock:
            sub = self._ws.get(workspace_id)
        if sub is None:
            placed = place(self.loads(), self.max_clusters)
            if placed is None:
                raise SubscriptionCapacityReached(
                    f"Every subscription holds its maximum of {self.max_clusters} clusters; "
                    "no new workspace can be placed."
                )
            with self._lock:
                sub = self._ws.setdefault(workspace_id, placed.lower())
        return self.shards[sub]

    def for_cluster(self, cluster_id: str) -> ArmProvisioner | None:
        self._index()
        with self._lock:
            sub = self._clusters.get(cluster_id)
        if sub is not None:
            return self.shards[sub]
        for shard in self.shards.values():
            group, _ = shard._locate(cluster_id, probe=False)
            if group is not None:
                self._remember(cluster_id, shard)
                return shard
        return None

    def _remember(self, cluster_id: str, shard: ArmProvisioner) -> None:
        with self._lock:
            self._clusters[cluster_id] = shard.subscription_id.lower()

    def _all(self) -> Iterator[ArmProvisioner]:
        return iter(self.shards.values())

    # ------------------------------------------------------------------ Provisioner

    def node_types(self) -> list[NodeType]:
        return self.first.node_types()

    def spark_versions(self) -> list[SparkVersion]:
        return self.first.spark_versions()

    def observe(self, cluster_id: str) -> list[Node]:
        if self.throttle.waiting(cluster_id):
            return []  # its create waits for admission: nothing of it is in ARM yet
        shard = self.for_cluster(cluster_id)
        return shard.observe(cluster_id) if shard is not None else []

    def start_driver(self, req: NodeRequest) -> Node:
        """Starts the cluster in its workspace's subscription, if that has room for it
        (else SubscriptionCapacityReached: nothing is made)."""
        shard = self.for_workspace(req.workspace_id)
        sub = shard.subscription_id.lower()
        if self.max_clusters:
            others = [c for c, s in self.live().items() if s == sub and c != req.cluster_id]
            if not has_room(len(others), self.max_clusters):
                raise SubscriptionCapacityReached(
                    f"The workspace's Azure subscription holds {len(others)} clusters, its "
                    f"maximum ({self.max_clusters}); terminate a cluster and start again."
                )
        self._remember(req.cluster_id, shard)
        node = shard.start_driver(req)
        self._count(req.cluster_id, sub, True)
        return node

    def add_workers(self, req: NodeRequest, count: int) -> list[Node]:
        shard = self.for_workspace(req.workspace_id)
        self._remember(req.cluster_id, shard)
        return shard.add_workers(req, count)

    def ready_reported(self, cluster_id: str, node_id: str, executors: int, at_ms: int) -> None:
        """ports.ReadyReports: kept by the cluster's subscription (its observe reads it)."""
        shard = self.for_cluster(cluster_id) or self.first
        shard.ready_reported(cluster_id, node_id, executors, at_ms)

    def remove_workers(self, cluster_id: str, node_ids: Sequence[str]) -> None:
        shard = self.for_cluster(cluster_id)
        if shard is not None:
            shard.remove_workers(cluster_id, node_ids)

    def stop_cluster(self, cluster_id: str) -> None:
        shard = self.for_cluster(cluster_id)
        # Not found anywhere: each subscription probes its groups for the deployment.
        for s in [shard] if shard is not None else list(self._all()):
            s.stop_cluster(cluster_id)
        if shard is not None:
            self._count(cluster_id, shard.subscription_id.lower(), False)

    def cluster_ids(self) -> set[str]:
        out: set[str] = set()
        for s in self._all():
            out |= s.cluster_ids()
        return out

    def grow_storage(self, cluster_id: str, node_id: str, total_bytes: int) -> None:
        shard = self.for_cluster(cluster_id)
        if shard is not None:
            shard.grow_storage(cluster_id, node_id, total_bytes)

    def pool_nodes(self, pool_id: str) -> list[PoolNode]:
        return self.first.pool_nodes(pool_id)

    def add_idle(self, req: PoolRequest, count: int) -> list[PoolNode]:
        return self.first.add_idle(req, count)

    def remove_idle(self, pool_id: str, node_ids: Sequence[str]) -> None:
        self.first.remove_idle(pool_id, node_ids)

    def pool_ids(self) -> set[str]:
        return self.first.pool_ids()

    # ------------------------------------------------------------------ workspaces

    def create_workspace(self, workspace_id: str, region: str | None = None) -> None:
        self.for_workspace(workspace_id).create_workspace(workspace_id, region)

    def workspace_status(self, workspace_id: str) -> str:
        return self.for_workspace(workspace_id).workspace_status(workspace_id)

    def delete_workspace(self, workspace_id: str) -> None:
        self.for_workspace(workspace_id).delete_workspace(workspace_id)
        with self._lock:
            self._ws.pop(workspace_id, None)

    # ------------------------------------------------------------------ bulk health

    def unhealthy_clusters(self) -> set[str]:
        return self.first.unhealthy_clusters()  # one query over every subscription

    def read_reason(self, cluster_id: str, reason: str) -> None:
        self.throttle.mark(cluster_id, reason)


def arm_from_settings(s: Settings, **kw: Any) -> ArmProvisioner | ShardedArmProvisioner:
    """One subscription: the ArmProvisioner; several, or a maximum of clusters per
    subscription: one per subscription behind the router (which counts them)."""
    subs = s.arm_subscriptions
    if len(subs) > 1 or s.arm_subscription_max_clusters > 0:
        return ShardedArmProvisioner.from_settings(s, **kw)
    if subs:
        s = s.model_copy(update={"arm_subscription_id": subs[0]})
    return ArmProvisioner.from_settings(s, **kw)
