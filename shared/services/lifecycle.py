"""The lifecycle work behind the `cluster-lifecycle` queue and the reconciler timer."""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import replace
from typing import Any

from shared.domain import node_health, serverless, spark_auth, storage, worker_boot
from shared.domain import reconcile as rec
from shared.domain.cluster import Cluster
from shared.domain.states import TRANSITIONAL, State
from shared.ports import (
    Bus,
    Clock,
    Node,
    NodeRequest,
    PoolCapacityReached,
    PoolRequest,
    PreconditionFailed,
    Provisioner,
    ProvisionerThrottled,
    ProvisionerUnsupported,
    SubscriptionCapacityReached,
)
from shared.services.auth import Auth
from shared.services.deletion import WorkspaceDeletion
from shared.services.documents import ClusterRepo, retry_on_conflict
from shared.services.health import NodeHealth
from shared.services.messages import reconcile_message
from shared.services.pools import PoolService
from shared.services.worker_boot import WorkerBoot
from shared.settings import Settings

log = logging.getLogger("sparkplane.lifecycle")


def agent_scope(cluster_id: str) -> str:
    """Where a cluster's agent tokens are listed (so they can all be revoked at once)."""
    return f"agent:{cluster_id}"


def node_request(c: Cluster, spark_secret_key: str = "") -> NodeRequest:
    s = c.spec
    creds = spark_auth.credentials_of(spark_secret_key, c.cluster_id, c.credential_id)
    return NodeRequest(
        cluster_id=c.cluster_id,
        workspace_id=c.workspace_id,
        node_type_id=s.node_type_id or "",
        driver_node_type_id=s.driver_node_type_id or s.node_type_id or "",
        spark_version=s.spark_version,
        spark_conf=dict(s.spark_conf),
        spark_env_vars=dict(s.spark_env_vars),
        tags={**s.custom_tags, "ClusterId": c.cluster_id, "Vendor": "sparkplane"},
        conf_files=serverless.conf_files(s),
        num_workers=c.target_workers,
        spark_auth_secret=creds.auth_secret if creds else "",
        connect_token=creds.connect_token if creds else "",
    )


class PoolGone(Exception):
    """The instance pool a cluster names was deleted."""


class Lifecycle:
    def __init__(
        self,
        repo: ClusterRepo,
        bus: Bus,
        provisioner: Provisioner,
        clock: Clock,
        settings: Settings,
        auth: Auth,
        pools: PoolService,
        deletion: WorkspaceDeletion | None = None,
    ) -> None:
        self.deletion = deletion
        self.auth = auth
        self.pools = pools
        self.repo = repo
        self.bus = bus
        self.provisioner = provisioner
        self.clock = clock
        self.settings = settings
        self.interval_ms = max(1, int(settings.reconcile_interval_s * 1000))
        self.health = NodeHealth(repo.store, settings, provisioner)
        self.worker_boot = WorkerBoot(repo.store)
        self._last_sweep_ms = 0

    def handle(self, body: bytes) -> None:
        msg: dict[str, Any] = json.loads(body)
        if msg.get("type") == "reconcile":
            try:
                self.reconcile(str(msg["workspace_id"]), str(msg["cluster_id"]))
            except ProvisionerThrottled as e:
                # The cloud's request limits: the same reconcile later, never a failed cluster.
                self.throttled(str(msg["workspace_id"]), str(msg["cluster_id"]), e)
        elif msg.get("type") == "pool":
            self.pools.reconcile(str(msg["workspace_id"]), str(msg["pool_id"]))
        elif msg.get("type") == "delete_workspace" and self.deletion is not None:
            self.deletion.step(str(msg["workspace_id"]))
        else:
            raise ValueError(f"unknown lifecycle message type {msg.get('type')!r}")

    def reconcile(self, workspace_id: str, cluster_id: str) -> None:
        retry_on_conflict(
            lambda: self._reconcile(workspace_id, cluster_id), f"cluster {cluster_id}"
        )

    def _reconcile(self, workspace_id: str, cluster_id: str) -> None:
        """One evaluation; PreconditionFailed when somebody wrote in between (evaluated again
        on the new document)."""
        got = self.repo.load(workspace_id, cluster_id)
        if got is None:
            return
        cluster, record = got
        nodes = self.provisioner.observe(cluster_id)
        now = self.clock.now_ms()
        p = rec.plan(cluster, nodes, now=now)
        try:
            self._carry_out(p)
        except (
            PoolCapacityReached,
            PoolGone,
            ProvisionerUnsupported,
            SubscriptionCapacityReached,
        ) as e:
            p = self._nodes_unavailable(p, nodes, e, now)
        if p.delete_document:
            self.auth.revoke_all(agent_scope(cluster_id))
            self.repo.remove(cluster, record)
            log.info("cluster removed", extra={"cluster_id": cluster_id})
            return
        etag = record.etag
        if p.changed:
            etag = self.repo.save(cluster, record, p.cluster).etag
            # Timed only once the snapshot that shows the join is saved: a replay sees none.
            joined = worker_boot.joins(cluster, p.cluster, now)
            self.worker_boot.learn(workspace_id, cluster.spec.node_type_id or "", joined)
        if p.cluster.state == State.TERMINATED and cluster.state != State.TERMINATED:
            self.auth.revoke_all(agent_scope(cluster_id))
        if p.requeue:
            self.schedule(p.cluster, etag)

    def _carry_out(self, p: rec.Plan) -> None:
        c = p.cluster
        req = node_request(c, self.settings.spark_secret_key)
        pooled = {i for i in (c.spec.instance_pool_id, c.spec.driver_instance_pool_id) if i}
        for a in p.actions:
            match a:
                case rec.StopCluster():
                    self.provisioner.stop_cluster(c.cluster_id)
                case rec.StartDriver():
                    driver_pool = c.spec.driver_instance_pool_id or c.spec.instance_pool_id
                    self.provisioner.start_driver(
                        replace(
                            req,
                            agent_env=self._agent_env(c),
                            driver_pool=self._pool(c, driver_pool),
                            # the workers' pool too: a hot driver's Workers may serve them
                            pool=self._pool(c, c.spec.instance_pool_id),
                        )
                    )
                case rec.AddWorkers(count=n):
                    env = self._agent_env(c) if storage.elastic(c.spec) else {}
                    pool = self._pool(c, c.spec.instance_pool_id)
                    self.provisioner.add_workers(replace(req, agent_env=env, pool=pool), n)
                case rec.RemoveWorkers(node_ids=ids):
                    self.provisioner.remove_workers(c.cluster_id, ids)
        if p.actions and pooled:
            # Nodes were taken from or given back to a pool: its stats and idle count change.
            for pool_id in pooled:
                self.pools.kick(
                    c.workspace_id,
                    pool_id,
                    f"pool-use:{pool_id}:{c.cluster_id}:{c.generation}:{len(p.actions)}",
                )

    def _pool(self, c: Cluster, pool_id: str | None) -> PoolRequest | None:
        if not pool_id:
            return None
        got = self.pools.load(c.workspace_id, pool_id)
        if got is None or got[0].state != "ACTIVE":
            raise PoolGone(f"Instance pool {pool_id} does not exist any more.")
        return self.pools.request(got[0])

    def _nodes_unavailable(
        self, p: rec.Plan, nodes: list[Node], e: Exception, now: int
    ) -> rec.Plan:
        pool_id = p.cluster.spec.instance_pool_id or p.cluster.spec.driver_instance_pool_id or ""
        code = {
            PoolCapacityReached: "INSTANCE_POOL_MAX_CAPACITY_REACHED",
            PoolGone: "INSTANCE_POOL_NOT_FOUND",
            # The subscription holds the operator's maximum of clusters (a cloud quota).
            SubscriptionCapacityReached: "AZURE_QUOTA_EXCEEDED_EXCEPTION",
        }.get(type(e), "INSTANCE_POOL_CLUSTER_FAILURE")
        params = (
            {"azure_error_code": "SubscriptionCapacityReached", "azure_error_message": str(e)}
            if isinstance(e, SubscriptionCapacityReached)
            else {"instance_pool_id": pool_id}
        )
        live = sum(1 for n in nodes if n.role == "worker" and n.status in ("STARTING", "RUNNING"))
        log.warning(
            "nodes unavailable",
            extra={"cluster_id": p.cluster.cluster_id, "code": code, "pool_id": pool_id},
        )
        return rec.nodes_unavailable(
            p, code=code, message=str(e), live_workers=live, now=now, **params
        )

    def _agent_env(self, c: Cluster) -> dict[str, str]:
        """The driver's agent reports with a token of its own cluster (revoked at the end)."""
        token, _ = self.auth.issue_token(
            agent_scope(c.cluster_id),
            user="agent",
            role="agent",
            scope=c.cluster_id,
            comment="cluster agent",
        )
        return {
            "SPARKPLANE_CONTROL_PLANE_URL": self.settings.agent_callback_url
            or f"http://{self.settings.host}:{self.settings.port}",
            "SPARKPLANE_CLUSTER_ID": c.cluster_id,
            # Where the cluster's document is: its `ready` reports name it (shared/agent.py).
            "SPARKPLANE_WORKSPACE_ID": c.workspace_id,
            "SPARKPLANE_AGENT_TOKEN": token,
            "SPARKPLANE_HEARTBEAT_S": str(self.settings.heartbeat_s),
            "SPARKPLANE_KILL_GRACE_S": str(self.settings.jobs_kill_grace_s),
        }

    def throttled(self, workspace_id: str, cluster_id: str, e: ProvisionerThrottled) -> None:
        """Reschedule a reconcile the provisioner was throttled in, after `e.retry_after_s`,
        and write when it is due (rec.refused: the timer does not kick the cluster before; a
        concurrent write wins, and that writer's reconcile runs)."""
        got = self.repo.load(workspace_id, cluster_id)
        if got is None:
            return
        c, record = got
        etag = record.etag
        delay_ms = max(1, int(e.retry_after_s * 1000))
        new = rec.refused(c, self.clock.now_ms(), delay_ms)
        if new is not None:
            with contextlib.suppress(PreconditionFailed):  # somebody wrote: that reconcile runs
                etag = self.repo.save(c, record, new).etag
        self.schedule(c, etag, delay_ms=delay_ms)

    def schedule(self, c: Cluster, etag: str, *, delay_ms: int | None = None) -> None:
        """The follow-up reconcile, a scheduled message. Its id is (cluster, document version,
        due-time bucket): two chains for one cluster merge by duplicate detection, while one
        chain's successive follow-ups fall in different buckets and are never dropped. A retry
        after `delay_ms` (throttled) is named by its due time: successive ones within one bucket
        are not dropped as duplicates either."""
        due = self.clock.now_ms() + (self.interval_ms if delay_ms is None else delay_ms)
        bucket = due // self.interval_ms if delay_ms is None else f"t{due}"
        msg_id = f"r:{c.cluster_id}:{etag}:{bucket}"
        self.bus.send(self.settings.lifecycle_queue, [reconcile_message(c, msg_id, due)])

    # ------------------------------------------------------------------ reconciler timer

    def sweep(self) -> dict[str, int]:
        """Re-send reconcile for clusters away from their desired state for a while (a lost
        send, a crash) and for running clusters whose nodes no longer match (a dead worker or
        driver), flush events left behind, and stop nodes no cluster owns."""
        # Nodes first, documents second: a cluster's document is written before its first
        # node, so a node seen here belongs to a document the scan below sees.
        now = self.clock.now_ms()
        since, self._last_sweep_ms = self._last_sweep_ms or now - self.interval_ms, now
        # The cloud is read for drift and orphans at a slow cadence, for node health only when
        # the heartbeats say so (services/health.py); a throttled read waits for the next tick.
        owners: set[str] = set()
        # Throttled, the bulk query waits for the next tick (the heartbeats still say who is
        # silent), and the orphan listing, drift, for the next period's moment.
        with contextlib.suppress(ProvisionerThrottled):
            self.health.refresh()
        with contextlib.suppress(ProvisionerThrottled):
            if self.health.orphans_due(since, now):
                owners = self.provisioner.cluster_ids()
        # RUNNING clusters to read in the cloud, suspects first (node_health.READ_ORDER).
        due: list[tuple[int, int, Cluster, str, node_health.Reason]] = []
        stuck_ms = int(self.settings.stuck_after_s * 1000)
        kicked = 0
        known: set[str] = set()
        store = self.repo.store
        transitional = {s.value for s in TRANSITIONAL}
        bucket = now // max(stuck_ms, 1)
        for r in store.scan("cluster", field="state", values=[s.value for s in State]):
            known.add(r.id)
            state = r.body.get("state")
            recent = now - int(r.body.get("state_since", 0)) < 5 * 60_000
            if state != State.RUNNING.value and state not in transitional and not recent:
                continue
            c = Cluster.model_validate(r.body)
            self.repo.flush(c)
            if c.state == State.RUNNING:
                # Passive check of a converged cluster: a node that died (or vanished) makes
                # the planner act; then a reconcile replaces it or ends the cluster.
                reason = self.health.check(c, since, now)
                if reason is not None:
                    due.append((node_health.READ_ORDER[reason], len(due), c, r.etag, reason))
                continue
            if rec.stuck(c, now, stuck_ms):
                self.bus.send(
                    self.settings.lifecycle_queue,
                    [reconcile_message(c, f"kick:{c.cluster_id}:{r.etag}:{bucket}")],
                )
                kicked += 1
        for _, _, c, etag, reason in sorted(due, key=lambda d: d[:2]):
            self.health.before_read(c, reason)
            try:
                p = rec.plan(c, self.provisioner.observe(c.cluster_id), now=now)
            except ProvisionerThrottled:
                break  # the rest come after it (same or lower priority): the next tick
            if p.actions or p.changed:
                self.bus.send(
                    self.settings.lifecycle_queue,
                    [reconcile_message(c, f"heal:{c.cluster_id}:{etag}:{bucket}")],
                )
                kicked += 1
        orphans = owners - known
        for cid in orphans:
            self.provisioner.stop_cluster(cid)
        purged = store.purge_expired()
        deleting = self.deletion.sweep() if self.deletion is not None else {}
        return {
            "kicked": kicked,
            "orphans": len(orphans),
            "purged": purged,
            **self.pools.sweep(),
            **deleting,
        }
