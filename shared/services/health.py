"""Node health from the heartbeats: which RUNNING clusters the reconciler timer reads in the
cloud at this tick (the rule: shared/domain/node_health.py).

The heartbeats are already stored (shared/services/utilization.py): the driver's Spark samples
(newest first in the cluster's partition) and each node agent's latest disk report. A driver
counts as beating once its cluster has a sample; a worker once it has a disk report. Where
the provisioner has a bulk health query (ports.ClusterHealthQuery), one query per tick names
the clusters with a node down in the cloud, and those are observed too.

The beats read at one tick are remembered for the next (`Remembered`), and read again only
when the rule says the memory could answer differently from a fresh read
(node_health.beats_stale): a query per cluster every third or fourth tick rather than every
tick. The memory holds the clusters checked at the previous tick (a cluster no longer RUNNING
is forgotten) and lives in this process: after a restart the first tick reads them all."""

from __future__ import annotations

from shared.domain import node_health
from shared.domain.cluster import Cluster
from shared.ports import ClusterHealthQuery, Store
from shared.settings import Settings

# The kinds utilization.py writes (kept here as names to avoid importing the service).
SAMPLE = "sample"
DISK = "disk"


class NodeHealth:
    def __init__(self, store: Store, settings: Settings, provisioner: object = None) -> None:
        self.store = store
        # The provisioner's bulk query of clusters with a node down (ARM: Resource Graph),
        # when it has one: those clusters are observed at the next tick, agents or not.
        self.bulk = provisioner if isinstance(provisioner, ClusterHealthQuery) else None
        self.suspects: set[str] = set()
        # cluster id -> its beats as last read: those checked at the previous tick (`memory`)
        # and at this one (`_next`).
        self.memory: dict[str, node_health.Remembered] = {}
        self._next: dict[str, node_health.Remembered] = {}
        self.params = node_health.HealthParams(
            heartbeat_s=settings.heartbeat_s,
            silent_beats=settings.health_silent_beats,
            drift_check_s=settings.drift_check_s,
        )

    @property
    def every_tick(self) -> bool:
        return self.params.drift_check_s <= 0

    def beats(self, c: Cluster) -> dict[str, int]:
        """node id -> last heartbeat (ms) of the cluster's nodes that run an agent."""
        out: dict[str, int] = {}
        newest = self.store.list(SAMPLE, c.cluster_id, page_size=1, page_token=None).items
        if newest and c.driver:
            out[str(c.driver.get("node_id", "driver"))] = int(newest[0].body.get("ts_ms", 0))
        if c.spec.enable_elastic_disk:
            # A worker's agent names its reports by its VM (ARM: the instance, `instance_id`).
            nodes = {
                str(e.get("instance_id") or e.get("node_id")): str(e.get("node_id"))
                for e in c.executors
            }
            nodes.update({str(e.get("node_id")): str(e.get("node_id")) for e in c.executors})
            page = self.store.list(DISK, c.cluster_id, page_size=1000, page_token=None)
            for r in page.items:
                if r.id in nodes:
                    out[nodes[r.id]] = int(r.body.get("ts_ms", 0))
        return out

    def agent_nodes(self, c: Cluster) -> set[str]:
        """The cluster's nodes whose agent beats (the keys `beats` can give)."""
        out = {str(c.driver.get("node_id", "driver"))} if c.driver else set()
        if c.spec.enable_elastic_disk:
            out.update(str(e.get("node_id")) for e in c.executors)
        return out

    def remembered_beats(self, c: Cluster, now_ms: int) -> dict[str, int]:
        """The cluster's beats: remembered, or read again when the memory could mislead."""
        nodes = self.agent_nodes(c)
        got = self.memory.get(c.cluster_id)
        if got is None or node_health.beats_stale(got, nodes, c.running_since, now_ms, self.params):
            got = node_health.Remembered(now_ms, self.beats(c))
        self._next[c.cluster_id] = got
        return {n: t for n, t in got.beats.items() if n in nodes}

    def refresh(self) -> None:
        """Once per tick: the memory of the beats moves on to the clusters checked at the
        previous tick, and the clusters the provisioner's bulk query says have a node down
        are named. Raises ProvisionerThrottled (the tick goes on without)."""
        self.memory, self._next = self._next, {}
        self.suspects = set()
        if self.bulk is not None and not self.every_tick:
            self.suspects = self.bulk.unhealthy_clusters()

    def check(self, c: Cluster, since_ms: int, now_ms: int) -> node_health.Reason | None:
        """Why the cloud is read for this RUNNING cluster now (None: it is not)."""
        if self.every_tick:
            return "every_tick"
        if c.cluster_id in self.suspects:
            return "bulk"
        return node_health.arm_check(
            c.cluster_id,
            beats=self.remembered_beats(c, now_ms),
            running_since_ms=c.running_since,
            since_ms=since_ms,
            now_ms=now_ms,
            p=self.params,
        )

    def before_read(self, c: Cluster, reason: node_health.Reason) -> None:
        """The cluster is read now, for `reason`: the provisioner gives its reads the priority
        that reason has (a suspect's before drift)."""
        if self.bulk is not None:
            self.bulk.read_reason(c.cluster_id, reason)

    def orphans_due(self, since_ms: int, now_ms: int) -> bool:
        """The orphan listing is drift too: once per drift period (every tick without one)."""
        period = int(self.params.drift_check_s * 1000)
        return node_health.drift_due("orphans", since_ms, now_ms, period)
