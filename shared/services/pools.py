"""The Instance Pools API and the pool reconcile behind the lifecycle queue.

A pool document holds the user's spec and the last reconcile's snapshot (`stats`, errors);
the nodes themselves are the provisioner's. Reconciles of one pool run one at a time (the
lifecycle queue's session `pool:<id>`); the provisioner enforces max_capacity atomically, so a
cluster taking nodes meanwhile never pushes a pool past it.

Each reconcile also times the acquisitions its nodes show and keeps as many idle nodes as
the forecasts of its clusters ask for, when that is more than min_idle_instances
(shared/services/pool_scaling.py; the document's `forecast_idle` and `forecast_why` say so).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

from shared.domain import pools as dom
from shared.domain import quotas as quota
from shared.domain.pools import Pool
from shared.errors import InvalidParameterValue, ResourceAlreadyExists, ResourceDoesNotExist
from shared.ports import (
    AlreadyExists,
    Bus,
    Clock,
    NotFound,
    PoolRequest,
    PreconditionFailed,
    Provisioner,
    ProvisionerUnsupported,
    Record,
    Store,
)
from shared.services.auth import Principal
from shared.services.clusters import Catalog
from shared.services.documents import each, retry_on_conflict
from shared.services.messages import pool_message
from shared.services.pool_scaling import PoolScaling
from shared.settings import Settings

if TYPE_CHECKING:
    from shared.services.quotas import QuotaService

log = logging.getLogger("sparkplane.pools")

KIND = "instance_pool"
# One document per pool name and workspace: makes names unique without a race.
NAME_KIND = "instance_pool_name"


class PoolService:
    def __init__(
        self,
        store: Store,
        bus: Bus,
        catalog: Catalog,
        provisioner: Provisioner,
        clock: Clock,
        settings: Settings,
        *,
        quotas: QuotaService | None = None,
    ) -> None:
        self.store = store
        self.bus = bus
        self.quotas = quotas
        self.catalog = catalog
        self.provisioner = provisioner
        self.clock = clock
        self.settings = settings
        self.interval_ms = max(1, int(settings.reconcile_interval_s * 1000))
        self.minute_ms = max(1, int(settings.idle_minute_s * 1000))
        self.scaling = PoolScaling(store)

    # ---------------------------------------------------------------- documents

    def load(self, workspace_id: str, pool_id: str) -> tuple[Pool, Record] | None:
        rec = self.store.get(KIND, workspace_id, pool_id)
        return (Pool.model_validate(rec.body), rec) if rec else None

    def active(self, workspace_id: str, pool_id: Any) -> Pool:
        """The pool a cluster names (instance_pool_id), or INVALID_PARAMETER_VALUE."""
        got = self.load(workspace_id, pool_id) if isinstance(pool_id, str) and pool_id else None
        if got is None or got[0].state != "ACTIVE":
            raise InvalidParameterValue(f"Instance pool {pool_id} does not exist or was deleted.")
        return got[0]

    def request(self, pool: Pool) -> PoolRequest:
        s = pool.spec
        versions = s.preloaded_spark_versions or list(self.catalog.spark_versions)[:1]
        return PoolRequest(
            pool_id=pool.instance_pool_id,
            workspace_id=pool.workspace_id,
            node_type_id=s.node_type_id,
            spark_version=versions[0] if versions else "",
            max_capacity=s.max_capacity,
            tags={**s.custom_tags, **self._default_tags(pool)},
        )

    def _save(self, new: Pool, rec: Record) -> Record:
        return self.store.replace(
            KIND, new.workspace_id, new.instance_pool_id, new.doc(), etag=rec.etag
        )

    def _get(self, p: Principal, pool_id: Any) -> tuple[Pool, Record]:
        pool_id = dom.pool_id_of(pool_id)
        got = self.load(p.workspace_id, pool_id)
        if got is None or got[0].state == "DELETED":
            raise ResourceDoesNotExist(f"Instance pool {pool_id} does not exist.")
        return got

    def _spec(self, p: Principal, body: Mapping[str, Any]) -> dom.PoolSpec:
        """The spec of a create or edit body; max_capacity within the workspace's quota (a
        pool without one gets the quota's)."""
        spec = dom.parse_spec(
            body,
            node_types=set(self.catalog.node_types),
            spark_versions=set(self.catalog.spark_versions),
        )
        if self.quotas is None:
            return spec
        q = self.quotas.of(p.workspace_id)
        cap = quota.pool_capacity(q, spec.min_idle_instances, spec.max_capacity)
        return spec.model_copy(update={"max_capacity": cap})

    def _claim_name(self, p: Principal, name: str, pool_id: str) -> None:
        try:
            self.store.create(NAME_KIND, p.workspace_id, name, {"instance_pool_id": pool_id})
        except AlreadyExists:
            rec = self.store.get(NAME_KIND, p.workspace_id, name)
            if rec is not None and rec.body.get("instance_pool_id") != pool_id:
                raise ResourceAlreadyExists(
                    f"An instance pool named {name!r} already exists."
                ) from None

    def _release_name(self, p: Principal, name: str, pool_id: str) -> None:
        rec = self.store.get(NAME_KIND, p.workspace_id, name)
        if rec is not None and rec.body.get("instance_pool_id") == pool_id:
            with contextlib.suppress(NotFound, PreconditionFailed):
                self.store.delete(NAME_KIND, p.workspace_id, name, etag=rec.etag)

    # ---------------------------------------------------------------- API

    def create(self, p: Principal, body: Mapping[str, Any]) -> dict[str, Any]:
        spec = self._spec(p, body)
        admit = self.quotas.admit(p.workspace_id, "pools") if self.quotas else nullcontext()
        with admit as q:
            if q is not None and self.quotas is not None:
                quota.check_pools(q, self.quotas.pools(p.workspace_id))
            return self._create(p, spec)

    def _create(self, p: Principal, spec: dom.PoolSpec) -> dict[str, Any]:
        now = self.clock.now_ms()
        pool_id = dom.new_pool_id(now)
        self._claim_name(p, spec.instance_pool_name, pool_id)
        pool = Pool(
            instance_pool_id=pool_id,
            workspace_id=p.workspace_id,
            spec=spec,
            creator_user_name=p.user,
            created_ms=now,
            stats=dom.stats([]),
        )
        try:
            rec = self.store.create(KIND, p.workspace_id, pool_id, pool.doc())
        except BaseException:
            self._release_name(p, spec.instance_pool_name, pool_id)
            raise
        self.kick(p.workspace_id, pool_id, f"pool-cmd:{pool_id}:{rec.etag}")
        log.info("pool created", extra={"pool_id": pool_id, "workspace": p.workspace_id})
        return {"instance_pool_id": pool_id}

    def edit(self, p: Principal, body: Mapping[str, Any]) -> None:
        spec = self._spec(p, body)
        claimed = ""
        try:

            def step() -> None:
                nonlocal claimed
                pool, rec = self._get(p, body.get("instance_pool_id"))
                if spec.node_type_id != pool.spec.node_type_id:
                    raise InvalidParameterValue(
                        "node_type_id of an instance pool cannot be changed "
                        f"(it is {pool.spec.node_type_id})."
                    )
                renamed = spec.instance_pool_name != pool.spec.instance_pool_name
                if renamed and not claimed:
                    self._claim_name(p, spec.instance_pool_name, pool.instance_pool_id)
                    claimed = pool.instance_pool_id
                out = self._save(pool.model_copy(update={"spec": spec}), rec)
                claimed = ""
                if renamed:
                    self._release_name(p, pool.spec.instance_pool_name, pool.instance_pool_id)
                self.kick(
                    p.workspace_id,
                    pool.instance_pool_id,
                    f"pool-cmd:{pool.instance_pool_id}:{out.etag}",
                )

            retry_on_conflict(step, "instance pool")
        finally:
            if claimed:  # the edit did not land: the new name stays free
                self._release_name(p, spec.instance_pool_name, claimed)

    def delete(self, p: Principal, body: Mapping[str, Any]) -> None:
        """The pool is DELETED at once (clusters can no longer use it); its idle nodes are
        terminated by the reconcile, and nodes in use when their cluster gives them back."""

        def step() -> None:
            pool, rec = self._get(p, body.get("instance_pool_id"))
            out = self._save(pool.model_copy(update={"state": "DELETED"}), rec)
            self._release_name(p, pool.spec.instance_pool_name, pool.instance_pool_id)
            self.kick(
                p.workspace_id,
                pool.instance_pool_id,
                f"pool-cmd:{pool.instance_pool_id}:{out.etag}",
            )

        retry_on_conflict(step, "instance pool")

    def get(self, p: Principal, pool_id: Any) -> dict[str, Any]:
        pool, _ = self._get(p, pool_id)
        return self.details(pool)

    def list(self, p: Principal) -> dict[str, Any]:
        # Not paginated in the API; pools per workspace are few.
        pools = [pool for pool in self._all(p.workspace_id) if pool.state != "DELETED"]
        return {"instance_pools": [self.details(pool) for pool in pools]}

    def _all(self, workspace_id: str) -> Iterator[Pool]:
        return (Pool.model_validate(r.body) for r in each(self.store, KIND, workspace_id))

    def _default_tags(self, pool: Pool) -> dict[str, str]:
        return {
            "Vendor": "sparkplane",
            "InstancePoolCreator": pool.creator_user_name,
            "InstancePoolName": pool.spec.instance_pool_name,
            "InstancePoolId": pool.instance_pool_id,
        }

    def details(self, pool: Pool) -> dict[str, Any]:
        out = pool.spec.wire()
        out.update(
            {
                "instance_pool_id": pool.instance_pool_id,
                "idle_instance_autotermination_minutes": dom.idle_minutes(pool.spec),
                "default_tags": self._default_tags(pool),
                "state": pool.state,
                "stats": {**dom.stats([]), **pool.stats},
            }
        )
        if pool.forecast_why:
            out["forecast_idle"] = pool.forecast_idle
            out["forecast_why"] = pool.forecast_why
        if pool.errors:
            out["status"] = {"pending_instance_errors": [{"message": e} for e in pool.errors]}
        return out

    # ---------------------------------------------------------------- reconcile

    def kick(
        self, workspace_id: str, pool_id: str, message_id: str, due_ms: int | None = None
    ) -> None:
        """Send a pool reconcile; a failed send is not fatal: the reconciler timer re-sends."""
        msg = pool_message(workspace_id, pool_id, message_id, due_ms)
        try:
            self.bus.send(self.settings.lifecycle_queue, [msg])
        except Exception:
            log.exception("send pool reconcile failed", extra={"pool_id": pool_id})

    def reconcile(self, workspace_id: str, pool_id: str) -> None:
        retry_on_conflict(lambda: self._reconcile(workspace_id, pool_id), f"pool {pool_id}")

    def _reconcile(self, workspace_id: str, pool_id: str) -> None:
        """One evaluation; PreconditionFailed when somebody wrote in between."""
        got = self.load(workspace_id, pool_id)
        if got is None:
            return
        pool, rec = got
        now = self.clock.now_ms()
        nodes = self.provisioner.pool_nodes(pool_id)
        self.scaling.learn(workspace_id, pool_id, nodes)
        target = self.scaling.target(pool, now) if pool.state == "ACTIVE" else None
        plan = dom.plan(
            pool,
            nodes,
            now=now,
            minute_ms=self.minute_ms,
            idle_target=target.idle if target else None,
        )
        if target is not None and target.forecast_idle and plan.add_idle:
            log.info(
                "pool pre-warmed by forecast",
                extra={"pool_id": pool_id, "add": plan.add_idle, "why": target.why},
            )
        errors: list[str] = []
        if plan.remove_idle:
            self.provisioner.remove_idle(pool_id, plan.remove_idle)
        if plan.add_idle:
            try:
                self.provisioner.add_idle(self.request(pool), plan.add_idle)
            except ProvisionerUnsupported as e:
                errors.append(str(e))
                plan.requeue = False  # nothing will change by itself: the timer retries
        if plan.gone:
            # Deleted, and its last node is gone: nothing refers to the pool any more.
            with contextlib.suppress(NotFound, PreconditionFailed):
                self.store.delete(KIND, workspace_id, pool_id, etag=rec.etag)
            log.info("pool removed", extra={"pool_id": pool_id})
            return
        if plan.add_idle or plan.remove_idle:
            plan.stats = dom.stats(self.provisioner.pool_nodes(pool_id))
        new = pool.model_copy(
            update={
                "stats": plan.stats,
                "errors": errors,
                "forecast_idle": target.forecast_idle if target else 0,
                "forecast_why": target.why if target else "",
            }
        )
        etag = rec.etag
        if new != pool:
            etag = self._save(new, rec).etag
        if plan.requeue:
            due = now + self.interval_ms
            self.kick(
                workspace_id, pool_id, f"pool:{pool_id}:{etag}:{due // self.interval_ms}", due
            )

    def sweep(self) -> dict[str, int]:
        """Kick every pool (idle nodes expire with time, not with a message) and terminate the
        idle nodes of pools no document knows."""
        # Nodes first, documents second: a pool's document is written before its first node,
        # so a node seen here belongs to a document the scan below sees.
        owners = self.provisioner.pool_ids()
        now = self.clock.now_ms()
        bucket = now // max(1, int(self.settings.stuck_after_s * 1000) // 2 or 1)
        known: set[str] = set()
        kicked = 0
        for r in self.store.scan(KIND, field="state", values=["ACTIVE", "STOPPED", "DELETED"]):
            known.add(r.id)
            self.kick(r.pk, r.id, f"pool-sweep:{r.id}:{bucket}")
            kicked += 1
        orphans = owners - known
        for pool_id in orphans:
            idle = [
                n.node_id
                for n in self.provisioner.pool_nodes(pool_id)
                if n.status in ("IDLE", "PENDING_IDLE", "LOST") and not n.cluster_id
            ]
            if idle:
                self.provisioner.remove_idle(pool_id, idle)
        return {"pools": kicked, "pool_orphans": len(orphans)}
