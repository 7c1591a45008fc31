"""Capacity ahead of predicted use: the forecaster's state per cluster, the forecast hold of the
autoscaling timer, and the starts ahead of use (proactive resume, scheduled runs on an
existing cluster).

The rules are pure (shared/domain/forecast.py, autoscale_forecast.py, autoscale_prewarm.py);
this module only feeds and applies them.

- `Forecasts` keeps each opted-in cluster's `ForecastState` (spark_conf
  `spark.sparkplane.autoscaling.forecast` or `...proactiveResume` on) in its own document (kind
  `forecast`, partition and id the cluster id), cached in process: the autoscaling timer is its
  only writer. Only the samples newer than the last one folded in are observed. A state whose
  bin closed (every `bin_s`, at a per-cluster phase, so 10,000 clusters spread over the ticks)
  is written at the start of a later tick, at most `WRITES_PER_TICK` a tick, the longest
  waiting first; with 10,000 opted-in clusters a state is written about every 80 minutes,
  which is what a restart of the process can lose. After a start, at most `LOADS_PER_TICK`
  states are read per tick, so the first ticks stay as fast as the others; a cluster not read
  yet is held reactively.
- `Prewarm.tick` (called from the jobs scheduler's timer) starts a cluster ahead of use: a
  cluster that idle termination stopped, with proactive resume on, when its predicted next use
  is one expected start away; and a terminated `existing_cluster_id` target of a scheduled job,
  an expected start before the fire time. The expected start time is learned per workspace
  and node type from the starts this service made (and the job clusters created ahead of
  scheduled runs, shared/services/job_prewarm.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from shared.domain import autoscale as pol
from shared.domain import autoscale_forecast as af
from shared.domain import autoscale_prewarm as rules
from shared.domain import autoscale_settings as conf
from shared.domain import forecast as fc
from shared.domain.cluster import Cluster
from shared.domain.jobs import Job
from shared.domain.states import State
from shared.ports import AlreadyExists, Clock, PreconditionFailed, Store
from shared.services.auth import Principal
from shared.services.clusters import ClusterService
from shared.services.documents import update
from shared.services.job_docs import scheduled_jobs

log = logging.getLogger("sparkplane.prewarm")

KIND = "forecast"
# Learned start times: partition the workspace (deleted with it; its region sets its VMs'
# boot), id the node type.
BOOT_KIND = "boot"
STARTS_KIND = "prewarm_start"  # partition "start", id the cluster: a start this service made
# The autoscaling timer's period, added to the boot period the forecast looks ahead.
TICK_MARGIN_S = 60.0
# Forecast states read from the store per autoscaling tick (the rest wait for the next ticks).
LOADS_PER_TICK = 1000
# Forecast states written per autoscaling tick: a write costs a store round trip, and 10,000
# clusters close a bin 11 times a second; states wait in memory (their later bins included).
WRITES_PER_TICK = 20


@dataclass(slots=True)
class _Cached:
    state: fc.ForecastState
    seen_ms: int
    stored_bin: int
    # The last forecast and its window key (fc.window_key): recomputed when the key changes.
    key: tuple[int, int, int] = (-1, -1, -1)
    forecast: fc.Forecast | None = None
    # The same for the node boot period (a pool's ask, shared/services/pool_scaling.py).
    boot_key: tuple[int, int, int] = (-1, -1, -1)
    boot_forecast: fc.Forecast | None = None


class Forecasts:
    def __init__(
        self,
        store: Store,
        params: fc.ForecastParams | None = None,
        *,
        loads_per_tick: int = LOADS_PER_TICK,
        writes_per_tick: int = WRITES_PER_TICK,
    ) -> None:
        self.store = store
        self.params = params or fc.ForecastParams()
        self._cache: dict[str, _Cached] = {}
        self.loads_per_tick = loads_per_tick
        self.writes_per_tick = writes_per_tick
        # States whose bin closed since their last write (ordered: the oldest first).
        self._dirty: dict[str, None] = {}
        self._tick_ms = -1
        self._loads_left = loads_per_tick

    def _tick(self, now: int) -> None:
        """A new timer tick (a tick is one `now`): renew the read budget and write the states
        that waited longest."""
        if now != self._tick_ms:
            self._tick_ms = now
            self._loads_left = self.loads_per_tick
            self.flush(self.writes_per_tick)

    def _may_load(self) -> bool:
        """At most `loads_per_tick` states are read from the store per tick: after a process
        start, 10,000 opted-in clusters are read over several ticks, and those not read yet
        are held by the reactive policy alone meanwhile."""
        if self._loads_left <= 0:
            return False
        self._loads_left -= 1
        return True

    def load(self, cluster_id: str) -> fc.ForecastState:
        got = self._cache.get(cluster_id)
        if got is not None:
            return got.state
        rec = self.store.get(KIND, cluster_id, cluster_id)
        state = fc.from_doc(rec.body) if rec else fc.new_state(cluster_id, self.params)
        stored = state.cur_bin if rec else -1
        self._cache[cluster_id] = _Cached(state, -1, stored)
        return state

    def observe(self, cluster_id: str, samples: Sequence[pol.Sample], slots: int, hi: int) -> None:
        """Fold the samples not seen yet; write the document when a bin has closed."""
        self.load(cluster_id)
        entry = self._cache[cluster_id]
        state = entry.state
        fresh = []
        for s in reversed(samples):  # newest first, up to the last one folded in
            if s.ts_ms <= entry.seen_ms:
                break
            fresh.append(s)
        for s in reversed(fresh):
            w = fc.demand_workers(s.running_tasks, s.pending_tasks, slots, hi)
            state = fc.observe(state, s.ts_ms, w, self.params)
        if fresh:
            entry.seen_ms = fresh[0].ts_ms
        entry.state = state
        if state.cur_bin == entry.stored_bin or not state.recent:
            return  # no bin closed since the last write (or none at all yet)
        self._dirty[cluster_id] = None

    def flush(self, limit: int | None = None) -> int:
        """Write up to `limit` states whose bin closed since their last write, the longest
        waiting first (None: all of them)."""
        written = 0
        for cluster_id in list(self._dirty):
            if limit is not None and written >= limit:
                break
            del self._dirty[cluster_id]
            entry = self._cache.get(cluster_id)
            if entry is None:
                continue
            self._save(cluster_id, entry.state)
            entry.stored_bin = entry.state.cur_bin
            written += 1
        return written

    def _save(self, cluster_id: str, state: fc.ForecastState) -> None:
        doc = fc.to_doc(state)
        try:
            rec = self.store.get(KIND, cluster_id, cluster_id)
            if rec is None:
                self.store.create(KIND, cluster_id, cluster_id, doc)
            else:
                self.store.replace(KIND, cluster_id, cluster_id, doc, etag=rec.etag)
        except (AlreadyExists, PreconditionFailed):
            # Another writer (a second timer instance): its state is as good; ours retries
            # at the next closed bin.
            log.info("forecast state write raced", extra={"cluster_id": cluster_id})

    def over(self, cluster_id: str, now: int, horizon_s: float) -> fc.Forecast | None:
        """The forecast of a cluster `hold` has read, over `horizon_s` from `now` (None: its
        state is not read yet)."""
        entry = self._cache.get(cluster_id)
        if entry is None:
            return None
        key = fc.window_key(entry.state, now, horizon_s, self.params)
        if key != entry.boot_key:
            entry.boot_key = key
            entry.boot_forecast = fc.forecast(entry.state, now, horizon_s, self.params)
        return entry.boot_forecast

    def hold(
        self,
        body: dict[str, Any],
        d: pol.Decision,
        samples: Sequence[pol.Sample],
        *,
        slots: int,
        max_workers: int,
        current: int,
        memory: pol.ScalingMemory | None,
        now: int,
        params: pol.AutoscaleParams,
    ) -> pol.Decision:
        """The autoscaling decision with the forecast hold applied (clusters that opted in)."""
        spark_conf = body["spec"].get("spark_conf")
        use = conf.flag(spark_conf, conf.FORECAST)
        if not use and not conf.flag(spark_conf, conf.PROACTIVE_RESUME):
            return d
        cid = body["cluster_id"]
        self._tick(now)
        if cid not in self._cache and not self._may_load():
            return d
        self.observe(cid, samples, slots, max_workers)
        if not use:
            return d
        horizon = params.expected_boot_s + TICK_MARGIN_S
        entry = self._cache[cid]
        key = fc.window_key(entry.state, now, horizon, self.params)
        if key != entry.key:
            entry.key = key
            entry.forecast = fc.forecast(entry.state, now, horizon, self.params)
        f = entry.forecast
        lo = int(body["spec"]["autoscale"]["min_workers"])
        return af.with_forecast(
            d,
            f,
            min_workers=lo,
            max_workers=max_workers,
            current_workers=current,
            last_change=memory,
            now_ms=now,
        )


class Prewarm:
    def __init__(
        self,
        store: Store,
        clusters: ClusterService,
        clock: Clock,
        forecasts: Forecasts | None = None,
        params: rules.PrewarmParams | None = None,
    ) -> None:
        self.store = store
        self.clusters = clusters
        self.clock = clock
        self.forecasts = forecasts or Forecasts(store)
        self.params = params or rules.PrewarmParams()

    # ------------------------------------------------------------------ learned start times

    def horizon_ms(self) -> int:
        """How far ahead a fire may be for a pass to start anything for it: no start is
        expected to take longer than `max_boot_s`, plus the timers' margin (the longer one,
        TICK_MARGIN_S, covers the job clusters' tick_margin_s too)."""
        return int((self.params.max_boot_s + TICK_MARGIN_S) * 1000)

    def expected_start_s(self, ws: str, node_type: str) -> float:
        """The expected start of `node_type` in workspace `ws` (learned from its starts)."""
        rec = self.store.get(BOOT_KIND, ws, node_type)
        stats = rules.BootStats(**rec.body["stats"]) if rec else None
        return rules.expected_boot_s(stats, self.params)

    def _learn(self) -> int:
        """Fold the start times of the clusters this service started and that are running."""
        learned = 0
        for rec in list(self.store.scan(STARTS_KIND, field="kind", values=["start"])):
            got = self.clusters.repo.load(rec.body["workspace_id"], rec.id)
            if got is None:
                self.store.delete(STARTS_KIND, rec.pk, rec.id)
                continue
            c = got[0]
            if c.state == State.TERMINATED or c.running_since < rec.body["started_ms"]:
                continue
            seconds = (c.running_since - rec.body["started_ms"]) / 1000
            node_type = rec.body["node_type"]

            def fold(
                old: dict[str, Any] | None, seconds: float = seconds, node_type: str = node_type
            ) -> dict[str, Any]:
                prev = rules.BootStats(**old["stats"]) if old else None
                stats = rules.learn_boot(prev, seconds, self.params)
                return {"node_type": node_type, "stats": stats.as_dict()}

            try:
                update(self.store, BOOT_KIND, rec.body["workspace_id"], node_type, fold)
            except PreconditionFailed:
                continue  # others kept writing it: this start is learned next tick
            self.store.delete(STARTS_KIND, rec.pk, rec.id)
            learned += 1
        return learned

    def _start(self, c: Cluster, command_reason: str, make: Any) -> bool:
        system = Principal(c.workspace_id, af.RESUME_USER, "system")
        try:
            out = self.clusters.mutate(system, c.cluster_id, make)
        except Exception:
            # This cluster is tried again at the next tick; the others go on.
            log.exception("start ahead failed", extra={"cluster_id": c.cluster_id})
            return False
        if out.state == State.TERMINATED:
            return False
        self.record_start(c.workspace_id, c.cluster_id, c.spec.node_type_id or "")
        log.info(command_reason, extra={"cluster_id": c.cluster_id})
        return True

    def record_start(self, ws: str, cluster_id: str, node_type: str) -> None:
        """A start this service made (now): timed once the cluster runs (`_learn`)."""
        body = {
            "kind": "start",
            "workspace_id": ws,
            "node_type": node_type,
            "started_ms": self.clock.now_ms(),
        }
        try:
            self.store.create(STARTS_KIND, "start", cluster_id, body, ttl_s=86_400)
        except AlreadyExists:
            log.info("start already recorded", extra={"cluster_id": cluster_id})

    # ------------------------------------------------------------------ the timer

    def tick(self, scheduled: Iterable[Job] | None = None) -> dict[str, int]:
        """Resume clusters ahead of predicted use; start existing clusters of the `scheduled`
        jobs' runs (None: every SCHEDULED job in the store)."""
        now = self.clock.now_ms()
        stats = {"learned": self._learn(), "resumed": 0, "started_for_schedule": 0}
        for rec in self.store.scan("cluster", field="state", values=[State.TERMINATED.value]):
            spark_conf = rec.body.get("spec", {}).get("spark_conf")
            if not conf.flag(spark_conf, conf.PROACTIVE_RESUME):
                continue
            c = Cluster.model_validate(rec.body)
            lead = self.expected_start_s(c.workspace_id, c.spec.node_type_id or "") + TICK_MARGIN_S
            state = self.forecasts.load(c.cluster_id)
            nxt = fc.next_use(state, now, lead, self.forecasts.params)
            f = fc.forecast(state, nxt, 0.0, self.forecasts.params) if nxt is not None else None
            r = af.resume_decision(
                nxt,
                f,
                now_ms=now,
                lead_s=lead,
                autotermination_minutes=c.spec.autotermination_minutes,
            )
            if r is None:
                continue

            def resume(cur: Cluster, r: af.ResumeDecision = r) -> Cluster:
                return af.proactive_start(cur, r, now=self.clock.now_ms())

            stats["resumed"] += self._start(c, "proactive resume", resume)
        jobs = scheduled_jobs(self.store) if scheduled is None else scheduled
        stats["started_for_schedule"] = self._scheduled(now, jobs)
        return stats

    def _scheduled(self, now: int, jobs: Iterable[Job]) -> int:
        """A terminated existing_cluster_id target of a scheduled job, started an expected
        start before the fire time."""
        started = 0
        horizon_ms = self.horizon_ms()
        # Each target read once a tick (many jobs may run on one cluster): the terminated
        # ones; None for a cluster that is not, or that this tick started.
        terminated: dict[tuple[str, str], Cluster | None] = {}
        for job in jobs:
            fire = job.schedule_next_ms
            if fire is None or not 0 <= fire - now <= horizon_ms:
                continue  # most jobs: no cluster of theirs is read
            targets = {t.existing_cluster_id for t in job.settings.tasks if t.existing_cluster_id}
            for cid in sorted(targets):
                key = (job.workspace_id, cid)
                if key not in terminated:
                    got = self.clusters.repo.load(*key)
                    ok = got is not None and got[0].state == State.TERMINATED
                    terminated[key] = got[0] if got is not None and ok else None
                c = terminated[key]
                if c is None:
                    continue
                nt = c.spec.node_type_id or ""
                lead = self.expected_start_s(c.workspace_id, nt) + TICK_MARGIN_S
                why = rules.start_ahead(fire, now, lead)
                if why is None:
                    continue

                def start(cur: Cluster, why: str = why) -> Cluster:
                    return rules.start_for_schedule(cur, why, now=self.clock.now_ms())

                started += self._start(c, "started ahead of a scheduled run", start)
                terminated[key] = None
        return started


def tick(prewarm: Prewarm, scheduled: Iterable[Job] | None = None) -> dict[str, int]:
    """The jobs scheduler's hook: one `Prewarm` pass (errors are logged, never raised into the
    scheduler, whose own work must go on)."""
    try:
        return prewarm.tick(scheduled)
    except Exception:
        log.exception("prewarm tick failed")
        return {}
