"""The Clusters API as application services: validate, apply the pure command, store with an
ETag check (retrying on a concurrent write), write the events, send `reconcile`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

from shared.domain import cluster as dom
from shared.domain import quotas as quota
from shared.domain import serverless
from shared.domain.cluster import Cluster
from shared.domain.events import wire as event_wire
from shared.domain.pools import Pool
from shared.domain.states import State
from shared.domain.wire import integer
from shared.errors import InvalidParameterValue, InvalidState, ResourceDoesNotExist
from shared.ports import (
    AlreadyExists,
    Bus,
    Clock,
    NodeType,
    Provisioner,
    Record,
    SparkVersion,
    Store,
)
from shared.services.auth import Principal
from shared.services.cluster_wire import ClusterWire, parse_event_query
from shared.services.documents import (
    CLUSTER,
    Activity,
    ClusterRepo,
    Idempotency,
    retry_on_conflict,
)
from shared.services.messages import reconcile_message
from shared.settings import Settings

if TYPE_CHECKING:
    from shared.services.quotas import QuotaService

log = logging.getLogger("sparkplane.clusters")

KIND = CLUSTER


class Catalog:
    """Node types and Spark versions, as the provisioner offers them."""

    def __init__(self, provisioner: Provisioner, max_workers: int = dom.MAX_WORKERS) -> None:
        # The most workers one cluster may have with this provisioner (dom.worker_cap).
        self.max_workers = max_workers
        self.node_types: dict[str, NodeType] = {n.node_type_id: n for n in provisioner.node_types()}
        self.spark_versions: dict[str, SparkVersion] = {
            v.key: v for v in provisioner.spark_versions()
        }

    def validate(self, spec: dom.ClusterSpec) -> dom.ClusterSpec:
        return dom.validate_spec(
            spec,
            node_types=set(self.node_types),
            spark_versions=set(self.spark_versions),
            max_workers=self.max_workers,
        )


class PoolLookup(Protocol):
    def active(self, workspace_id: str, pool_id: Any) -> Pool: ...


class ClusterService:
    def __init__(
        self,
        store: Store,
        bus: Bus,
        catalog: Catalog,
        clock: Clock,
        settings: Settings,
        *,
        pools: PoolLookup | None = None,
        quotas: QuotaService | None = None,
    ) -> None:
        self.store = store
        self.bus = bus
        self.pools = pools
        self.quotas = quotas
        self.catalog = catalog
        self.clock = clock
        self.settings = settings
        self.repo = ClusterRepo(store, settings)
        self.activity = Activity(store)
        self.wire = ClusterWire(
            catalog.node_types, catalog.spark_versions, settings.spark_secret_key
        )
        self.idempotency = Idempotency(store, "cluster", "cluster_id")

    # ---------------------------------------------------------------- helpers

    def _get(self, p: Principal, cluster_id: Any) -> tuple[Cluster, Record]:
        if not isinstance(cluster_id, str) or not cluster_id:
            raise InvalidParameterValue("Missing required field: cluster_id")
        got = self.repo.load(p.workspace_id, cluster_id)
        if got is None or got[0].deleted:
            raise ResourceDoesNotExist(f"Cluster {cluster_id} does not exist")
        return got

    def kick(self, c: Cluster, message_id: str) -> None:
        """Send `reconcile`; a failed send is not fatal: the reconciler timer re-sends."""
        try:
            self.bus.send(self.settings.lifecycle_queue, [reconcile_message(c, message_id)])
        except Exception:
            log.exception("send reconcile failed", extra={"cluster_id": c.cluster_id})

    @contextmanager
    def _quota(self, workspace_id: str) -> Iterator[quota.Quotas | None]:
        """The workspace's cluster quotas, held while a request counts, checks and writes
        (None: quotas are off, as in unit tests that build the service alone)."""
        if self.quotas is None:
            yield None
            return
        with self.quotas.admit(workspace_id, "clusters") as q:
            yield q

    def _check_quota(
        self, q: quota.Quotas | None, ws: str, c: Cluster | None, workers: int
    ) -> None:
        """A new cluster (`c` None), or `c` about to hold `workers`, fits the quotas; a
        TERMINATED cluster only the per-cluster limit (it holds nothing until it starts)."""
        if q is None or self.quotas is None:
            return
        if c is not None and c.state == State.TERMINATED:
            quota.check_workers_per_cluster(q, workers)
            return
        without = c.cluster_id if c is not None else ""
        quota.check_clusters(q, self.quotas.clusters(ws, without=without), [workers])

    def mutate(
        self, p: Principal, cluster_id: Any, command: Callable[[Cluster], Cluster]
    ) -> Cluster:
        """Apply `command` to the stored cluster, again on a concurrent write. Commands read
        the clock when they run: one retried after a reconcile's write is stamped with the
        time it is applied, so its event never predates the events written in between."""

        def step() -> Cluster:
            c, rec = self._get(p, cluster_id)
            new = command(c)
            if new is c:
                return c
            out = self.repo.save(c, rec, new)
            self.kick(new, f"cmd:{new.cluster_id}:{out.etag}")
            return new

        return retry_on_conflict(step, f"cluster {cluster_id}")

    # ---------------------------------------------------------------- commands

    def spec(self, p: Principal, body: Mapping[str, Any]) -> dom.ClusterSpec:
        """The effective spec of a create or edit body: a serverless pool's derived settings,
        an instance pool's node types, Databricks' defaults; or INVALID_PARAMETER_VALUE."""
        marked = serverless.is_serverless_body(body)
        spec = dom.parse_spec({"spark_version": "", **body} if marked else body)
        if serverless.is_serverless(spec):
            worker = self.catalog.node_types.get(spec.node_type_id or "")
            if worker is None:
                raise InvalidParameterValue(
                    "A serverless pool needs node_type_id, a worker type listed by "
                    "GET /api/2.1/clusters/list-node-types."
                )
            spec = serverless.prepare(
                spec,
                worker=worker,
                driver=self.catalog.node_types.get(spec.driver_node_type_id or ""),
                default_spark_version=next(iter(self.catalog.spark_versions), ""),
            )
        if spec.driver_instance_pool_id and not spec.instance_pool_id:
            raise InvalidParameterValue("driver_instance_pool_id needs instance_pool_id as well.")
        if spec.instance_pool_id:
            if self.pools is None:
                raise InvalidParameterValue("Instance pools are not available here.")
            pool = self.pools.active(p.workspace_id, spec.instance_pool_id)
            driver_pool = (
                self.pools.active(p.workspace_id, spec.driver_instance_pool_id)
                if spec.driver_instance_pool_id
                else pool
            )
            for field, value, want in (
                ("node_type_id", spec.node_type_id, pool.spec.node_type_id),
                ("driver_node_type_id", spec.driver_node_type_id, driver_pool.spec.node_type_id),
            ):
                if value is not None and value != want:
                    raise InvalidParameterValue(
                        f"{field} {value} differs from the instance pool's node type {want}: "
                        f"leave {field} out when the nodes come from a pool."
                    )
            spec = spec.model_copy(
                update={
                    "node_type_id": pool.spec.node_type_id,
                    "driver_node_type_id": driver_pool.spec.node_type_id,
                }
            )
        return self.catalog.validate(spec)

    def create(self, p: Principal, body: Mapping[str, Any]) -> str:
        spec = self.spec(p, body)
        idem = body.get("idempotency_token")
        now = self.clock.now_ms()
        cluster_id = dom.new_cluster_id(now)
        if idem is not None and (not isinstance(idem, str) or not 0 < len(idem) <= 64):
            raise InvalidParameterValue("idempotency_token must be a string of 1..64 chars.")
        with self._quota(p.workspace_id) as q:
            if idem is not None:
                # A retry of a create that was answered finds its cluster, quota or not.
                earlier = self.idempotency.find(p.workspace_id, idem)
                if earlier is not None:
                    return str(earlier)
            self._check_quota(q, p.workspace_id, None, quota.cluster_workers(spec))
            if idem is not None:
                holder = self.idempotency.claim(p.workspace_id, idem, cluster_id)
                if holder is not None and holder != cluster_id:
                    return str(holder)  # a concurrent request with the token won
            c = dom.create(
                cluster_id=cluster_id, workspace_id=p.workspace_id, spec=spec, user=p.user, now=now
            )
            rec = self.repo.insert(c)
        self.kick(c, f"cmd:{c.cluster_id}:{rec.etag}")
        log.info(
            "cluster created",
            extra={
                "cluster_id": cluster_id,
                "cluster_name": c.spec.cluster_name or "",
                "workspace": p.workspace_id,
                "target_workers": c.target_workers,
            },
        )
        return cluster_id

    def edit(self, p: Principal, body: Mapping[str, Any]) -> None:
        spec = self.spec(p, body)
        workers = quota.cluster_workers(spec)
        with self._quota(p.workspace_id) as q:

            def edit(c: Cluster) -> Cluster:
                self._check_quota(q, p.workspace_id, c, workers)
                return dom.edit(c, spec, user=p.user, now=self.clock.now_ms())

            self.mutate(p, body.get("cluster_id"), edit)

    def start(self, p: Principal, body: Mapping[str, Any]) -> None:
        with self._quota(p.workspace_id) as q:

            def start(c: Cluster) -> Cluster:
                if c.state == State.TERMINATED and q is not None and self.quotas is not None:
                    usage = self.quotas.clusters(p.workspace_id, without=c.cluster_id)
                    quota.check_clusters(q, usage, [quota.cluster_workers(c.spec)])
                return dom.start(c, user=p.user, now=self.clock.now_ms())

            self.mutate(p, body.get("cluster_id"), start)

    def restart(self, p: Principal, body: Mapping[str, Any]) -> None:
        self.mutate(
            p,
            body.get("cluster_id"),
            lambda c: dom.restart(c, user=p.user, now=self.clock.now_ms()),
        )

    def resize(self, p: Principal, body: Mapping[str, Any]) -> None:
        raw = body.get("num_workers")
        nw = None if raw is None else integer(raw, "num_workers", 0, dom.MAX_WORKERS)
        auto = dom.parse_autoscale(body["autoscale"]) if body.get("autoscale") else None
        with self._quota(p.workspace_id) as q:

            def resize(c: Cluster) -> Cluster:
                new = dom.resize(
                    c,
                    num_workers=nw,
                    autoscale=auto,
                    user=p.user,
                    now=self.clock.now_ms(),
                    max_workers=self.catalog.max_workers,
                )
                self._check_quota(q, p.workspace_id, c, quota.cluster_workers(new.spec))
                return new

            self.mutate(p, body.get("cluster_id"), resize)

    def delete(self, p: Principal, body: Mapping[str, Any]) -> None:
        self.mutate(
            p,
            body.get("cluster_id"),
            lambda c: dom.terminate(
                c, reason=dom.USER_REQUEST, user=p.user, now=self.clock.now_ms()
            ),
        )

    def permanent_delete(self, p: Principal, body: Mapping[str, Any]) -> None:
        self.mutate(
            p,
            body.get("cluster_id"),
            lambda c: dom.permanent_delete(c, user=p.user, now=self.clock.now_ms()),
        )

    def pin(self, p: Principal, body: Mapping[str, Any], pinned: bool) -> None:
        self.mutate(
            p,
            body.get("cluster_id"),
            lambda c: dom.pin(c, pinned=pinned, user=p.user, now=self.clock.now_ms()),
        )

    def terminate_for_job(self, p: Principal, cluster_id: str) -> None:
        """End a job cluster when its run is done (reason JOB_FINISHED; a no-op on a cluster
        already terminating or terminated)."""
        reason = dom.TerminationReason(code="JOB_FINISHED", type="SUCCESS")
        self.mutate(
            p,
            cluster_id,
            lambda c: dom.terminate(
                c,
                reason=reason,
                user=None,
                now=self.clock.now_ms(),
                message="Job finished: terminating",
            ),
        )

    def create_for_job(
        self,
        p: Principal,
        cluster_id: str,
        body: Mapping[str, Any],
        why: Mapping[str, Any] | None = None,
    ) -> bool:
        """Create a run's job cluster under the id the run chose, unless it exists (cluster
        source JOB: a user cannot start it again). True when this call created it.
        InvalidParameterValue for a spec that is not valid; InvalidState while the workspace
        is being deleted (a run read before the deletion removed it starts nothing more).
        `why`: added to the CREATING event's details (a cluster created ahead of its run)."""
        ws = p.workspace_id
        if self.repo.load(ws, cluster_id) is not None:
            return False
        home = self.store.get("workspace", ws, ws)
        if home is not None and home.body.get("state") == "DELETING":
            raise InvalidState(f"Workspace {ws} is being deleted.")
        spec = self.spec(p, body)
        c = dom.create(
            cluster_id=cluster_id,
            workspace_id=ws,
            spec=spec,
            user=p.user,
            now=self.clock.now_ms(),
            source="JOB",
        )
        if why:
            for ev in c.pending_events:
                if ev["type"] == "CREATING":
                    ev["details"] = {**ev["details"], **why}
        try:
            rec = self.repo.insert(c)
        except AlreadyExists:  # a concurrent evaluation of the same run created it
            return False
        self.kick(c, f"cmd:{c.cluster_id}:{rec.etag}")
        return True

    def mark_active(self, cluster_id: str, now: int, *, every_ms: int) -> None:
        """`now` is a busy moment of the cluster (the idle timer reads it), written at most
        every `every_ms`."""
        self.activity.touch(cluster_id, now, every_ms=every_ms)

    # ---------------------------------------------------------------- queries

    def find(self, workspace_id: str, cluster_id: str) -> Cluster | None:
        """The cluster's document as stored (a permanently deleted one too: see `deleted`)."""
        got = self.repo.load(workspace_id, cluster_id)
        return None if got is None else got[0]

    def get(self, p: Principal, cluster_id: Any) -> dict[str, Any]:
        c, _ = self._get(p, cluster_id)
        out = self.wire.details(c)
        last = self.activity.last(c.cluster_id)
        if last is not None:
            out["last_activity_time"] = last
        return out

    def _listed(self, c: Cluster, now: int, flt: Mapping[str, Any]) -> bool:
        if c.deleted:
            return False
        if (
            c.state == State.TERMINATED
            and not c.pinned
            and c.terminated_time is not None
            and now - c.terminated_time > self.settings.terminated_list_days * 86_400_000
        ):
            return False
        states = flt.get("cluster_states")
        if states and c.state.value not in states:
            return False
        sources = flt.get("cluster_sources")
        if sources and c.cluster_source not in sources:
            return False
        pinned = flt.get("is_pinned")
        return pinned is None or c.pinned == pinned

    def list(
        self, p: Principal, *, page_size: int, page_token: str | None, flt: Mapping[str, Any]
    ) -> dict[str, Any]:
        now = self.clock.now_ms()
        try:
            page = self.store.list(KIND, p.workspace_id, page_size=page_size, page_token=page_token)
        except ValueError:
            raise InvalidParameterValue("page_token is not a token this API returned.") from None
        clusters = [Cluster.model_validate(r.body) for r in page.items]
        out: dict[str, Any] = {
            "clusters": [
                self.wire.details(c, with_spec=False) for c in clusters if self._listed(c, now, flt)
            ]
        }
        if page.next_token:
            out["next_page_token"] = page.next_token
        return out

    def events(self, p: Principal, body: Mapping[str, Any]) -> dict[str, Any]:
        c, _ = self._get(p, body.get("cluster_id"))
        q = parse_event_query(body)
        events, total = self.store.events(c.cluster_id, q)
        out: dict[str, Any] = {"events": [event_wire(e) for e in events], "total_count": total}
        if q.offset + len(events) < total:
            nxt = {k: v for k, v in body.items() if k not in ("page_token", "page_size")}
            nxt["offset"] = q.offset + q.limit
            nxt["limit"] = q.limit
            out["next_page"] = nxt
            out["next_page_token"] = str(q.offset + q.limit)
        return out

    def node_types(self) -> dict[str, Any]:
        return self.wire.node_types()

    def spark_versions(self) -> dict[str, Any]:
        return self.wire.spark_versions()
