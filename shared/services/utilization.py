"""Heartbeats from the cluster agent, and the autoscaling and idle timers that read them.

Samples live apart from the cluster document (their own kind, partitioned by cluster, with a
time to live), so heartbeats never race the lifecycle's ETag-checked writes. The policies are
the pure functions of shared/domain/autoscale.py; this module only feeds and applies them.

A cluster drawing its workers from an instance pool is decided with the pool's learned
acquisition time as its expected boot while the pool has idle nodes; with the forecast on, it
also asks its pool for idle nodes ahead of its forecast demand (shared/services/pool_scaling.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
from collections.abc import Mapping
from dataclasses import asdict, replace
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from shared.domain import autoscale as pol
from shared.domain import autoscale_settings, storage
from shared.domain import cluster as dom
from shared.domain import pool_scaling as pool_rules
from shared.domain import pools as pools_dom
from shared.domain.cluster import Cluster
from shared.domain.pools import Pool
from shared.domain.states import State
from shared.errors import InvalidParameterValue, PermissionDenied
from shared.ports import Clock, Provisioner, ReadyReports, Store
from shared.services.auth import Principal
from shared.services.clusters import ClusterService
from shared.services.documents import Activity, ClusterRepo, upsert
from shared.services.messages import pool_message
from shared.services.pool_scaling import PoolScaling
from shared.services.pools import KIND as POOL_KIND
from shared.services.prewarm import TICK_MARGIN_S, Forecasts
from shared.services.sample_windows import SAMPLE, SampleWindows
from shared.services.worker_boot import WorkerBoot
from shared.settings import Settings

log = logging.getLogger("sparkplane.utilization")

# The latest local-disk report of each node (partition: cluster, id: node).
DISK = "disk"
_TS_MAX = 10**13


class WorkerIn(BaseModel):
    node_id: str = Field(max_length=200)
    running_tasks: int = Field(default=0, ge=0)
    shuffle_bytes: int = Field(default=0, ge=0)
    cached_bytes: int = Field(default=0, ge=0)
    disk_used_bytes: int = Field(default=0, ge=0)
    disk_total_bytes: int = Field(default=0, ge=0)


class DiskIn(BaseModel):
    node_id: str = Field(min_length=1, max_length=200)
    used_bytes: int = Field(ge=0)
    total_bytes: int = Field(ge=0)


class ReadyIn(BaseModel):
    workspace_id: str = Field(default="", max_length=200)
    node_id: str = Field(default="", max_length=200)
    executors: int = Field(default=0, ge=0)


class SampleIn(BaseModel):
    running_tasks: int = Field(default=0, ge=0)
    pending_tasks: int = Field(default=0, ge=0)
    active_jobs: int = Field(default=0, ge=0)
    active_queries: int = Field(default=0, ge=0)
    total_slots: int = Field(default=0, ge=0)
    workers: list[WorkerIn] = Field(default_factory=list, max_length=1000)


def to_sample(
    ts_ms: int, s: dict[str, Any], node_ids: Mapping[str, str] | None = None
) -> pol.Sample:
    """A stored sample as the policy's input. The agent names workers by their web UI address;
    `node_ids` maps those to the cluster's node ids. (Hot: the autoscale tick converts every
    recent sample of every running cluster, so no generic field handling here.)"""
    ids = node_ids or {}
    workers = s.get("workers")
    return pol.Sample(
        ts_ms=ts_ms,
        running_tasks=s.get("running_tasks", 0),
        pending_tasks=s.get("pending_tasks", 0),
        active_jobs=s.get("active_jobs", 0),
        active_queries=s.get("active_queries", 0),
        total_slots=s.get("total_slots", 0),
        workers=tuple(
            pol.WorkerLoad(
                node_id=ids.get(w["node_id"], w["node_id"]),
                running_tasks=w.get("running_tasks", 0),
                shuffle_bytes=w.get("shuffle_bytes", 0),
                cached_bytes=w.get("cached_bytes", 0),
            )
            for w in workers
        )
        if workers
        else (),
    )


def autoscale_params(
    settings: Settings, base: pol.AutoscaleParams | None = None
) -> pol.AutoscaleParams:
    """The policy's defaults (`base`: AutoscaleParams()), overridden by
    SPARKPLANE_AUTOSCALE_PARAMS (a JSON object)."""
    base = base if base is not None else pol.AutoscaleParams()
    if not settings.autoscale_params:
        return base
    return replace(base, **json.loads(settings.autoscale_params))


class Utilization:
    def __init__(
        self,
        store: Store,
        repo: ClusterRepo,
        clusters: ClusterService,
        clock: Clock,
        settings: Settings,
        provisioner: Provisioner | None = None,
        *,
        ready_reports: ReadyReports | None = None,
    ) -> None:
        self.store = store
        self.provisioner = provisioner
        # Where ready reports go besides the reconcile they trigger: the provisioner, when it
        # cannot see readiness itself (ARM; ports.ReadyReports).
        self.ready_reports = ready_reports
        self.storage_params = storage.StorageParams(
            min_step_bytes=settings.storage_min_step_mb * 2**20,
            max_total_bytes=settings.storage_max_gb * 2**30,
        )
        self.repo = repo
        self.clusters = clusters
        self.clock = clock
        self.settings = settings
        self.params = autoscale_params(settings)
        # A run's job cluster (cluster source JOB) starts from the job-cluster preset, as the
        # simulator's job clusters do (shared/domain/autoscale.py, JOB_CLUSTER_PARAMS).
        self.job_params = autoscale_params(settings, pol.JOB_CLUSTER_PARAMS)
        # The forecast hold of clusters that opted in (shared/services/prewarm.py).
        self.forecasts = Forecasts(store)
        # Pools' acquisition times and the forecast asks (shared/services/pool_scaling.py).
        self.pool_scaling = PoolScaling(store)
        # Worker join times learned per node type (shared/services/worker_boot.py).
        self.worker_boot = WorkerBoot(store)
        # Each autoscaled cluster's recent samples and policy memory, between ticks.
        self.windows = SampleWindows(store, to_sample)
        self.minute_ms = int(settings.idle_minute_s * 1000)

    # ------------------------------------------------------------------ heartbeats

    def heartbeat(self, p: Principal, body: dict[str, Any]) -> dict[str, Any]:
        cluster_id = body.get("cluster_id")
        if p.role != "agent" or cluster_id != p.scope:
            raise PermissionDenied("This token may only report for its own cluster.")
        try:
            # The driver's agent sends a Spark sample (and its node's disk); a worker's node
            # agent only its disk.
            sample = SampleIn.model_validate(body["sample"]) if "sample" in body else None
            disk = DiskIn.model_validate(body["disk"]) if body.get("disk") else None
            ready = ReadyIn.model_validate(body["ready"]) if "ready" in body else None
        except ValidationError as e:
            raise InvalidParameterValue(f"Invalid report: {e.errors()[0]['msg']}") from None
        if ready is not None:
            self._ready(cluster_id, ready)
            return {}
        if sample is None and disk is None:
            raise InvalidParameterValue("A heartbeat carries a sample, a disk report or both.")
        now = self.clock.now_ms()
        if sample is not None:
            doc = {"ts_ms": now, **sample.model_dump()}
            sid = f"{_TS_MAX - now:013d}-{secrets.token_hex(2)}"
            self.store.create(SAMPLE, cluster_id, sid, doc, ttl_s=self.settings.sample_ttl_s)
            if to_sample(now, doc).busy:
                self._touch(cluster_id, now)
        if disk is not None:
            self._put_disk(cluster_id, {"ts_ms": now, **disk.model_dump()})
        return {}

    def _ready(self, cluster_id: str, ready: ReadyIn) -> None:
        """The driver's agent says the cluster got readier (Spark Connect answered a query, an
        executor registered): hand the report to the provisioner where it keeps them (ARM),
        and reconcile now instead of at the next interval. One message per
        (driver, executor count): a replayed report is dropped by duplicate detection. The
        agent's token names its cluster, not the workspace: the report does when its agent
        knows it (a wrong one finds no document and sends nothing); else the cluster is looked
        up by id (a cross-partition query, a few times per start)."""
        if ready.workspace_id:
            got = self.repo.load(ready.workspace_id, cluster_id)
            cluster = got[0] if got is not None else None
        else:
            found = self.store.scan("cluster", field="cluster_id", values=[cluster_id])
            cluster = next((Cluster.model_validate(r.body) for r in found), None)
        if cluster is not None:
            if self.ready_reports is not None:
                # First, so that the reconcile it triggers sees it.
                self.ready_reports.ready_reported(
                    cluster_id, ready.node_id, ready.executors, self.clock.now_ms()
                )
            msg_id = f"ready:{cluster_id}:{ready.node_id}:{ready.executors}"
            self.clusters.kick(cluster, msg_id)

    def _put_disk(self, cluster_id: str, body: dict[str, Any]) -> None:
        """The node's latest report replaces the previous one (one writer per node)."""
        self._upsert(DISK, cluster_id, body["node_id"], body, ttl_s=self.settings.sample_ttl_s)

    def _touch(self, cluster_id: str, now: int) -> None:
        """Record the last busy moment (unless a later one is stored)."""
        Activity(self.store).touch(cluster_id, now)

    def _upsert(self, kind: str, pk: str, id: str, body: dict[str, Any], ttl_s: int) -> None:
        """Create or replace the document; a concurrent write (a replayed heartbeat) makes it
        look again."""
        upsert(self.store, kind, pk, id, body, ttl_s=ttl_s)

    def samples(
        self, cluster_id: str, limit: int, node_ids: Mapping[str, str] | None = None
    ) -> list[pol.Sample]:
        """The newest `limit` samples, oldest first."""
        page = self.store.list(SAMPLE, cluster_id, page_size=limit, page_token=None)
        return [to_sample(r.body["ts_ms"], r.body, node_ids) for r in reversed(page.items)]

    def last_activity(self, c: Cluster) -> int:
        became_running = max(c.running_since, c.start_time)
        seen = Activity(self.store).last(c.cluster_id) or 0
        return max(seen, became_running)

    # ------------------------------------------------------------------ timers

    def autoscale_tick(self) -> dict[str, int]:
        """The autoscaler timer: worker counts of autoscale clusters, then local storage of
        clusters with elastic disk."""
        now = self.clock.now_ms()
        changed = 0
        looked = 0
        disks = 0
        for r in self.store.scan(
            "cluster", field="state", values=[State.RUNNING.value, State.RESIZING.value]
        ):
            if r.body.get("desired") != "RUNNING":
                continue
            spec = r.body.get("spec", {})
            if spec.get("enable_elastic_disk"):
                disks += self._storage_one(r.body, now)
            if not spec.get("autoscale"):
                continue
            looked += 1
            changed += self._autoscale_one(r.body, now)
        self.windows.end_tick()
        return {"clusters": looked, "changed": changed, "disk_steps": disks}

    def _storage_one(self, b: dict[str, Any], now: int) -> int:
        """Grow a node's local disk before it runs out (EXPANDED_DISK), say once when it can't
        grow further (DID_NOT_EXPAND_DISK); a growth asked for but not seen yet is asked again
        (the provisioner's grow is idempotent)."""
        if self.provisioner is None:
            return 0
        cluster_id = b["cluster_id"]
        # A node's agent names its reports by its VM (ARM: a worker's scale-set instance, its
        # `instance_id`), the cluster by node id: either leads to the node.
        wired = [*b.get("executors", []), *([b["driver"]] if b.get("driver") else [])]
        nodes = {e["node_id"]: e["node_id"] for e in wired}
        nodes.update({e["instance_id"]: e["node_id"] for e in wired if e.get("instance_id")})
        targets: dict[str, int] = b.get("disk_targets") or {}
        grown: dict[str, tuple[int, int, int]] = {}
        at_limit: dict[str, tuple[int, int]] = {}
        page = self.store.list(DISK, cluster_id, page_size=1000, page_token=None)
        for r in page.items:
            node_id = nodes.get(r.id)
            if node_id is None:
                continue  # a node that is gone
            report = storage.DiskReport(
                node_id=node_id,
                used_bytes=r.body["used_bytes"],
                total_bytes=r.body["total_bytes"],
                ts_ms=r.body["ts_ms"],
            )
            d = storage.decide(report, targets.get(node_id), self.storage_params)
            if d.grow_to is not None:
                previous = max(report.total_bytes, targets.get(node_id) or 0)
                grown[node_id] = (previous, d.grow_to, d.free_bytes)
            elif d.at_limit:
                at_limit[node_id] = (report.total_bytes, d.free_bytes)
            elif d.reapply:
                self._grow(cluster_id, node_id, targets[node_id])
        if not grown and not set(at_limit) - set(b.get("disk_at_limit") or []):
            return 0
        system = Principal(b["workspace_id"], "storage-monitor", "system")

        def command(cur: Cluster) -> Cluster:
            return dom.disk_steps(cur, grown=grown, at_limit=at_limit, now=self.clock.now_ms())

        try:
            self.clusters.mutate(system, cluster_id, command)
        except Exception:
            log.exception("disk step failed", extra={"cluster_id": cluster_id})
            return 0
        failed = {}
        for node_id, (_, size, _) in grown.items():
            error = self._grow(cluster_id, node_id, size)
            if error:
                failed[node_id] = error
        if failed:
            with contextlib.suppress(Exception):
                self.clusters.mutate(
                    system,
                    cluster_id,
                    lambda cur: dom.disk_steps(
                        cur, grown={}, at_limit={}, failed=failed, now=self.clock.now_ms()
                    ),
                )
        return len(grown) + len(at_limit)

    def _grow(self, cluster_id: str, node_id: str, size: int) -> str | None:
        assert self.provisioner is not None
        try:
            self.provisioner.grow_storage(cluster_id, node_id, size)
        except Exception as e:
            log.exception("grow storage failed", extra={"cluster_id": cluster_id})
            return f"{type(e).__name__}: {e}"
        log.info(
            "storage grown", extra={"cluster_id": cluster_id, "node_id": node_id, "bytes": size}
        )
        return None

    def _pool(self, b: dict[str, Any]) -> Pool | None:
        """The instance pool the cluster's workers come from, as its last reconcile left it."""
        pool_id = b["spec"].get("instance_pool_id")
        rec = self.store.get(POOL_KIND, b["workspace_id"], pool_id) if pool_id else None
        return Pool.model_validate(rec.body) if rec else None

    def _max_workers(self, b: dict[str, Any], current: int, pool: Pool | None) -> int:
        """autoscale.max_workers, or less when the cluster's instance pool cannot give that
        many more nodes (growing past it would only fail with ADD_NODES_FAILED)."""
        auto = b["spec"]["autoscale"]
        left = pools_dom.room(pool) if pool is not None else None
        if left is None:
            return int(auto["max_workers"])
        return max(auto["min_workers"], min(auto["max_workers"], current + left))

    def _autoscale_one(self, b: dict[str, Any], now: int) -> int:
        """Decide on the raw document (the tick reads every running cluster, so it skips
        model validation); only a change goes through the cluster service.

        A RESIZING cluster (workers joining or leaving) takes one decision only: cancelling
        workers that have not joined yet, whose backlog is gone (rule 6 of
        shared/domain/autoscale.py). A RUNNING cluster cancels only on a sample newer than its
        last state change: in an older one, workers that have joined since look joining. A
        decision not taken stores no memory: the next evaluation folds the same samples in
        again."""
        cluster_id = b["cluster_id"]
        resizing = b.get("state") == State.RESIZING.value
        current = int(b["target_workers"])
        auto = b["spec"]["autoscale"]
        nt = self.clusters.catalog.node_types.get(b["spec"].get("node_type_id") or "")
        slots = int(nt.num_cores) if nt else 1
        node_ids = {
            e["worker_ui_url"]: e["node_id"] for e in b.get("executors", []) if "worker_ui_url" in e
        }
        samples = self.windows.samples(cluster_id, self.settings.autoscale_samples, node_ids)
        mem = b.get("scaling_memory")
        memory = self.windows.memory(cluster_id, pol.ScalingMemory.from_doc(mem) if mem else None)
        pool = self._pool(b)
        hi = self._max_workers(b, current, pool)
        spark_conf = b["spec"].get("spark_conf")
        default = self.job_params if b.get("cluster_source") == "JOB" else self.params
        params = autoscale_settings.params_for(spark_conf, default)
        node_boot_s = self.worker_boot.projection_boot_s(
            b["workspace_id"], b["spec"].get("node_type_id") or "", params.expected_boot_s, now
        )
        if node_boot_s != params.expected_boot_s:
            params = replace(params, expected_boot_s=node_boot_s)
        if pool is not None:
            boot_s = self.pool_scaling.expected_boot_s(pool, node_boot_s, now)
            if boot_s != node_boot_s:
                params = replace(params, expected_boot_s=boot_s)
        d = pol.decide_size(samples, auto["min_workers"], hi, current, slots, memory, now, params)
        if resizing and not d.cancels_only:
            return 0  # the resize goes on as asked
        if d.cancels_only and not resizing and samples[-1].ts_ms < int(b.get("state_since", 0)):
            return 0  # the resize converged after this sample: its "joining" workers joined
        forecasting = pool is not None and autoscale_settings.flag(
            spark_conf, autoscale_settings.FORECAST
        )
        hold_params = params
        if pool is not None and forecasting and params.expected_boot_s != node_boot_s:
            # One acquisition ahead only when the pool's idle nodes cover the forecast.
            f = self.forecasts.over(cluster_id, now, node_boot_s + TICK_MARGIN_S)
            join_s = self.pool_scaling.hold_join_s(
                pool, node_boot_s, params.expected_boot_s, f, current=current, max_workers=hi
            )
            hold_params = replace(params, expected_boot_s=join_s)
        d = self.forecasts.hold(
            b,
            d,
            samples,
            slots=slots,
            max_workers=hi,
            current=current,
            memory=memory,
            now=now,
            params=hold_params,
        )
        if resizing and not d.cancels_only:
            return 0  # the forecast keeps the workers: the resize goes on as asked
        self.windows.remember(cluster_id, d.memory)
        if pool is not None and forecasting and not resizing:
            lead_s = node_boot_s + hold_params.expected_boot_s
            self._ask_pool(b, pool, d.target, hi, lead_s, now)
        if d.target == current:
            return 0

        seen_state = State.RESIZING if resizing else State.RUNNING

        def command(cur: Cluster) -> Cluster:
            if cur.state != seen_state or cur.target_workers != current:
                return cur  # something changed since we looked: decide again next tick
            out = dom.autoscale_to(
                cur,
                target=d.target,
                remove=d.remove,
                reason=d.reason,
                now=self.clock.now_ms(),
                stats={k: float(v) for k, v in d.stats.items()},
            )
            out.scaling_memory = asdict(d.memory) if d.memory else None
            return out

        system = Principal(b["workspace_id"], "autoscaler", "system")
        try:
            self.clusters.mutate(system, cluster_id, command)
        except Exception:
            # This cluster waits for the next tick; the others go on.
            log.exception("autoscale failed", extra={"cluster_id": cluster_id})
            return 0
        log.info("autoscale", extra={"cluster_id": cluster_id, "from": current, "to": d.target})
        return 1

    def _ask_pool(
        self, b: dict[str, Any], pool: Pool, holds: int, hi: int, lead_s: float, now: int
    ) -> None:
        """Ask the pool for the idle nodes the cluster's forecast wants over the next node
        boot and join (`lead_s`: a node the pool starts now is idle after a boot, and the
        cluster takes it one join time before its demand); pre-warm the pool, not the
        cluster. A new ask makes the pool look."""
        horizon = lead_s + TICK_MARGIN_S
        f = self.forecasts.over(b["cluster_id"], now, horizon)
        ask = pool_rules.pool_ask(f, current_workers=holds, max_workers=hi, horizon_s=horizon)
        pool_id = pool.instance_pool_id
        if not self.pool_scaling.ask(pool_id, b["cluster_id"], ask, now):
            return
        msg = pool_message(
            b["workspace_id"], pool_id, f"pool-ask:{pool_id}:{b['cluster_id']}:{now}"
        )
        try:
            self.clusters.bus.send(self.settings.lifecycle_queue, [msg])
        except Exception:
            # Not fatal: the reconciler timer's sweep reconciles every pool, asks included.
            log.exception("send pool reconcile failed", extra={"pool_id": pool_id})

    def idle_tick(self) -> dict[str, int]:
        now = self.clock.now_ms()
        terminated = 0
        for r in self.store.scan(
            "cluster", field="state", values=[State.RUNNING.value, State.RESIZING.value]
        ):
            minutes = r.body.get("spec", {}).get("autotermination_minutes")
            if not minutes or r.body.get("desired") != "RUNNING":
                continue
            c = Cluster.model_validate(r.body)
            latest = self.samples(c.cluster_id, 1)
            fresh = bool(latest) and now - latest[-1].ts_ms < 3 * self.settings.heartbeat_s * 1000
            busy_now = fresh and latest[-1].busy
            last = self.last_activity(c)
            # Minutes are `idle_minute_s` long (60 s; tests may shorten them).
            scaled_now = last + (now - last) * 60_000 // max(1, self.minute_ms)
            d = pol.idle_decision(last, minutes, scaled_now, busy_now)
            if d is None:
                continue
            reason = dom.TerminationReason(
                code="INACTIVITY",
                type="SUCCESS",
                parameters={"inactivity_duration_min": str(d.inactivity_duration_min)},
            )
            system = Principal(c.workspace_id, "idle-monitor", "system")

            message = f"Terminating inactive cluster: {d.reason}."

            def command(
                cur: Cluster, reason: dom.TerminationReason = reason, message: str = message
            ) -> Cluster:
                if cur.state not in (State.RUNNING, State.RESIZING):
                    return cur
                return dom.terminate(
                    cur,
                    reason=reason,
                    user=None,
                    now=self.clock.now_ms(),
                    message=message,
                )

            try:
                self.clusters.mutate(system, c.cluster_id, command)
            except Exception:
                log.exception("idle termination failed", extra={"cluster_id": c.cluster_id})
                continue
            terminated += 1
        return {"terminated": terminated}
