"""The scaling policies the simulator compares.

`Sparkplane` runs the production code of `shared.domain.autoscale` unchanged: it only builds
`Sample`s from the simulated cluster, keeps the `ScalingMemory` the control plane would store,
and carries out the `Decision`.

The baselines are re-implementations of documented rules (the sources are collected in
/work/shared/reference/autoscaling-peers.md, section 1). Where a document leaves a number open,
the comment says what was assumed; when in doubt the assumption favours the baseline.
Every baseline sees the same simulated cluster: a worker is one Spark executor with
`slots_per_worker` cores, "pending tasks" are tasks of active stages not yet launched.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import replace

from bench.sim.engine import READY, Node, Policy, Sim
from shared.domain import worker_boot
from shared.domain.autoscale import (
    JOB_CLUSTER_PARAMS,
    AutoscaleParams,
    Decision,
    Sample,
    ScalingMemory,
    decide_size,
    idle_decision,
    last_activity,
)
from shared.domain.autoscale_forecast import resume_decision, with_forecast
from shared.domain.autoscale_prewarm import BootStats
from shared.domain.autoscale_settings import PREFERENCES
from shared.domain.forecast import (
    ForecastParams,
    demand_workers,
    forecast,
    new_state,
    next_use,
    observe,
)
from shared.domain.pool_scaling import expected_boot_s, hold_join_s, pool_ask


def _need(sim: Sim) -> int:
    """Workers that would run every running and pending task at once."""
    return math.ceil((sim.running + sim.pending) / sim.S)


class Static:
    """A fixed-size cluster (num_workers = max or = min)."""

    period_s = None

    def __init__(self, name: str, which: str) -> None:
        self.name = name
        self.which = which

    def initial_workers(self, sim: Sim) -> int:
        spec = sim.spec
        return spec.max_workers if self.which == "max" else spec.min_workers

    def tick(self, sim: Sim) -> None:  # pragma: no cover - never ticks
        pass

    def on_restart(self, sim: Sim) -> None:
        pass


class Sparkplane:
    """shared.domain.autoscale as the timers run it: every `period_s` one sample from the
    agent, then the idle policy, then the autoscaling policy. Without explicit params, job
    clusters get JOB_CLUSTER_PARAMS and all-purpose clusters the defaults.

    The live timer's timing, off by default (bench/autoscale_live.py measures it on real
    Spark): `report_lag_s` reads the agent's report made that long before each tick instead of
    the state at the tick, and `hold_while_resizing` decides nothing while workers are joining
    or leaving but to cancel workers not joined yet (the live timer takes only that decision
    from a RESIZING cluster until it has converged)."""

    def __init__(
        self,
        params: AutoscaleParams | None = None,
        *,
        period_s: float = 10.0,
        idle_termination: bool = True,
        name: str = "sparkplane",
        report_lag_s: float | None = None,
        hold_while_resizing: bool = False,
    ) -> None:
        self.name = name
        self.period_s = period_s
        self.report_lag_s = report_lag_s
        self.hold_while_resizing = hold_while_resizing
        self.reported: Sample | None = None
        self.explicit = params
        self.params = params or AutoscaleParams()
        self.idle_termination = idle_termination
        self.samples: deque[Sample] = deque()
        self.memory: ScalingMemory | None = None
        self.last_activity_ms = 0
        self.decisions = 0
        # The workers' join times learned from this run's joins (shared/domain/worker_boot.py).
        self.join_stats: BootStats | None = None
        self.joins_seen = 0

    def initial_workers(self, sim: Sim) -> int:
        if self.explicit is None:
            # As the live timer reads it: the cluster's preference, else the defaults.
            pref = sim.spec.preference
            if pref is not None:
                self.params = PREFERENCES[pref]
            else:
                self.params = JOB_CLUSTER_PARAMS if sim.spec.kind == "job" else AutoscaleParams()
        # The policy needs the samples of its hold window; its memory carries the rest.
        keep_s = max(self.params.down_hold_s, self.params.up_backlog_s) + 60
        self.samples = deque(maxlen=int(keep_s / self.period_s) + 2)
        return sim.spec.min_workers

    def on_restart(self, sim: Sim) -> None:
        self.samples.clear()
        self.memory = None
        self.last_activity_ms = int(sim.now * 1000)

    def params_now(self, sim: Sim) -> AutoscaleParams:
        """The parameters of this decision, as the live timer sets them: the node boot is the
        mean of the joins timed so far (shared/domain/worker_boot.py), and a worker joins in
        the pool's acquisition time while the pool has idle instances
        (shared/domain/pool_scaling.py)."""
        if len(sim.joins) > self.joins_seen:
            self.join_stats = worker_boot.learn(self.join_stats, sim.joins[self.joins_seen :])
            self.joins_seen = len(sim.joins)
        node_boot = worker_boot.projection_boot_s(self.join_stats, self.params.expected_boot_s)
        boot = (
            node_boot
            if sim.pool is None
            else expected_boot_s(node_boot, sim.pool.acquire_s, sim.pool.idle(sim.now))
        )
        return (
            self.params
            if boot == self.params.expected_boot_s
            else (replace(self.params, expected_boot_s=boot))
        )

    def decide(self, sim: Sim, s: Sample) -> Decision:
        spec = sim.spec
        return decide_size(
            self.samples,
            spec.min_workers,
            spec.max_workers,
            sim.size,
            spec.slots_per_worker,
            self.memory,
            int(sim.now * 1000),  # the tick's time; the sample's when there is no report lag
            self.params_now(sim),
        )

    def report(self, sim: Sim) -> None:
        """The agent's report (with `report_lag_s`): the state now, read at the next tick."""
        self.reported = sim.sample()

    def tick(self, sim: Sim) -> None:
        spec = sim.spec
        s = self.reported if self.report_lag_s and self.reported is not None else sim.sample()
        self.samples.append(s)
        self.last_activity_ms = last_activity((s,), self.last_activity_ms)
        if self.idle_termination:
            idle = idle_decision(
                self.last_activity_ms, spec.autotermination_minutes, s.ts_ms, s.busy
            )
            if idle is not None:
                sim.terminate()
                return
        resizing = self.hold_while_resizing and len(sim.ready) != len(sim.nodes)
        d = self.decide(sim, s)
        if resizing and not d.cancels_only:
            # Workers booting or decommissioning: the live cluster is RESIZING, and the timer
            # takes only a cancellation of workers not joined yet (memory not stored).
            return
        self.decisions += 1
        self.memory = d.memory
        if d.target > sim.size:
            sim.add_nodes(d.target - sim.size)
        elif d.target < sim.size:
            sim.remove_nodes(reconcile_removals(sim, sim.size - d.target, d.remove))


def reconcile_removals(sim: Sim, excess: int, hint: tuple[str, ...]) -> list[Node]:
    """The workers a target `excess` below the size takes away, in the order the control plane's
    reconciler picks them (shared/domain/reconcile.py `_choose_removals`): workers not joined
    yet first (they are cancelled, newest first), then the policy's `remove` hint, then the
    newest."""
    hinted = {name: i for i, name in enumerate(hint)}

    def key(n: Node) -> tuple[int, int, float]:
        return (0 if n.state != READY else 1, hinted.get(n.name, len(hinted)), -n.requested_at)

    return sorted([*sim.booting.values(), *sim.ready.values()], key=key)[:excess]


class SparkplaneForecast(Sparkplane):
    """Sparkplane with `spark.sparkplane.autoscaling.forecast` and `...proactiveResume` on:
    every tick folds the sample into the forecaster's state (shared/domain/forecast.py), the
    reactive decision is raised to the forecast of the next boot period
    (shared/domain/autoscale_forecast.py: with_forecast), and while the cluster is terminated
    it is started when its predicted next use is one cold start and boot away."""

    def __init__(
        self,
        params: AutoscaleParams | None = None,
        *,
        name: str = "sparkplane-forecast",
        forecast_params: ForecastParams | None = None,
        resume: bool = True,
        pool_only: bool = False,
    ) -> None:
        super().__init__(params, name=name)
        self.pool_only = pool_only
        self.base_idle: int | None = None
        self.pending_idle: int | None = None
        self.fparams = forecast_params or ForecastParams(week_start_ms=0)
        self.fstate = new_state(name, self.fparams)
        self.resume = resume
        self.forecast_actions = 0

    def initial_workers(self, sim: Sim) -> int:
        self.fstate = new_state(sim.trace.name, self.fparams)
        return super().initial_workers(sim)

    def _observe(self, sim: Sim, ts_ms: int) -> None:
        spec = sim.spec
        w = demand_workers(sim.running, sim.pending, spec.slots_per_worker, spec.max_workers)
        self.fstate = observe(self.fstate, ts_ms, w, self.fparams)

    def decide(self, sim: Sim, s: Sample) -> Decision:
        spec = sim.spec
        self._observe(sim, s.ts_ms)
        d = super().decide(sim, s)
        out = d
        # The cluster holds the forecast of the time its new workers take to join: a pool's
        # acquisition while the pool's idle instances cover what the forecast adds, else a
        # boot (shared/domain/pool_scaling.py: hold_join_s).
        join_s = sim.boot_s
        if sim.pool is not None:
            fc_boot = forecast(
                self.fstate, s.ts_ms, sim.boot_s + float(self.period_s), self.fparams
            )
            extra = pool_ask(
                fc_boot, current_workers=sim.size, max_workers=spec.max_workers, horizon_s=0
            ).extra
            join_s = hold_join_s(sim.boot_s, sim.pool.acquire_s, sim.pool.idle(sim.now), extra)
        if not self.pool_only or sim.pool is None:
            fc = forecast(self.fstate, s.ts_ms, join_s + float(self.period_s), self.fparams)
            out = with_forecast(
                d,
                fc,
                min_workers=spec.min_workers,
                max_workers=spec.max_workers,
                current_workers=sim.size,
                last_change=self.memory,
                now_ms=s.ts_ms,
            )
            self.forecast_actions += out is not d and out.target != d.target
        if sim.pool is not None:
            # The pool's ask, as the autoscaling timer writes it (shared/services/
            # utilization.py): the forecast of the next node boot and join beyond what the
            # cluster holds after this decision; the pool keeps max(min_idle, ask) idle
            # instances.
            # With `pool_only` the cluster scales reactively from the pool ("pre-warm the
            # pool, not the cluster").
            if self.base_idle is None:
                self.base_idle = sim.pool.min_idle
            lead_s = sim.boot_s + join_s + float(self.period_s)
            fc_lead = forecast(self.fstate, s.ts_ms, lead_s, self.fparams)
            ask = pool_ask(
                fc_lead, current_workers=out.target, max_workers=spec.max_workers, horizon_s=lead_s
            )
            # Applied once the cluster has acted on the decision (`tick`): live, the pool's
            # reconcile follows the cluster's, and a lapsed ask's extra idle nodes wait for
            # the pool's idle timeout, so the nodes the cluster takes now are not released.
            self.pending_idle = max(self.base_idle, ask.extra)
        return out

    def tick(self, sim: Sim) -> None:
        self.pending_idle = None
        super().tick(sim)
        if sim.pool is not None and self.pending_idle is not None:
            sim.pool.set_min_idle(sim.now, self.pending_idle)

    def tick_terminated(self, sim: Sim) -> None:
        now_ms = int(sim.now * 1000)
        self._observe(sim, now_ms)
        if sim.pool is not None and self.base_idle is not None:
            # A terminated cluster asks nothing (live, its ask lapses within 5 minutes).
            sim.pool.set_min_idle(sim.now, self.base_idle)
        if not self.resume:
            return
        lead = sim.cold_start_s + sim.boot_s + float(self.period_s)
        nxt = next_use(self.fstate, now_ms, lead, self.fparams)
        fc = forecast(self.fstate, nxt, 0.0, self.fparams) if nxt is not None else None
        r = resume_decision(
            nxt,
            fc,
            now_ms=now_ms,
            lead_s=lead,
            autotermination_minutes=sim.spec.autotermination_minutes,
        )
        if r is not None:
            sim.resume()


class DatabricksStandard:
    """Databricks standard autoscaling (Standard plan).

    Source: Databricks "Cluster size and autoscaling" (docs.databricks.com/clusters/configure.html,
    section "How autoscaling behaves"): "Starts with adding 8 nodes. Thereafter, scales up
    exponentially, but can take many steps to reach the max" (first step:
    spark.databricks.autoscaling.standardFirstStepUp = 8); "Scales down only when the cluster is
    completely idle and it has been underutilized for the last 10 minutes. Scales down
    exponentially, starting with 1 node."
    Assumptions: evaluated every 10 s (not documented); a scale-up step is never larger than the
    backlog needs, and the next step waits until the previous one's workers joined (a resize is
    one operation); "completely idle" is read loosely, as the issue states it: at least 90% of
    the workers run no task and nothing is pending, for 10 minutes; only idle workers are
    removed, 1, 2, 4, ... per evaluation while the condition lasts.
    """

    name = "databricks-standard"
    period_s = 10.0
    FIRST_STEP = 8
    DOWN_AFTER_S = 600.0
    IDLE_FRACTION = 0.9

    def __init__(self) -> None:
        self.next_up = self.FIRST_STEP
        self.next_down = 1
        self.under_since: float | None = None

    def initial_workers(self, sim: Sim) -> int:
        return sim.spec.min_workers

    def on_restart(self, sim: Sim) -> None:
        self.__init__()  # type: ignore[misc]

    def tick(self, sim: Sim) -> None:
        spec = sim.spec
        if sim.pending > 0:
            self.under_since = None
            self.next_down = 1
            if sim.booting or sim.size >= spec.max_workers:
                return
            target = min(spec.max_workers, sim.size + self.next_up, _need(sim))
            if target > sim.size:
                sim.add_nodes(target - sim.size)
                self.next_up *= 2
            return
        if not sim.booting:
            self.next_up = self.FIRST_STEP
        ready = list(sim.ready.values())
        idle = [n for n in ready if n.busy == 0]
        if ready and len(idle) >= self.IDLE_FRACTION * len(ready):
            if self.under_since is None:
                self.under_since = sim.now
        else:
            self.under_since = None
            self.next_down = 1
            return
        if sim.now - self.under_since < self.DOWN_AFTER_S or sim.size <= spec.min_workers:
            return
        k = min(self.next_down, sim.size - spec.min_workers, len(idle))
        if k > 0:
            idle.sort(key=lambda n: n.idle_since)
            sim.remove_nodes(idle[:k])
            self.next_down *= 2


class DatabricksOptimized:
    """Databricks optimized autoscaling (Premium plan; all-purpose since DBR 6.4, job compute).

    Source: Databricks "Cluster size and autoscaling" (docs.databricks.com/clusters/configure.html):
    "Scales up from min to max in 2 steps. Can scale down even if the cluster is not idle by
    looking at shuffle file state. Scales down based on a percentage of current nodes. On job
    clusters, scales down if the cluster is underutilized over the last 40 seconds. On
    all-purpose clusters, ... over the last 150 seconds." Blog "Introducing Databricks Optimized
    Autoscaling" (2018-05-02): a worker is removed only if it is idle and holds no shuffle data.
    Assumptions: evaluated every 10 s; a step adds ceil((max - min) / 2) workers, never more
    than the backlog needs, the next step once the previous one joined; a scale-down decision
    every window (spark.databricks.aggressiveWindowDownS is not documented; we take the window)
    removes the workers idle for the whole window and holding no shuffle data, at most 50% of
    the current workers (the percentage is not documented), when nothing was pending in the
    window.
    """

    name = "databricks-optimized"
    period_s = 10.0
    DOWN_FRACTION = 0.5

    def __init__(self) -> None:
        self.last_pending_t = -1e18
        self.last_down_t = -1e18

    def initial_workers(self, sim: Sim) -> int:
        return sim.spec.min_workers

    def on_restart(self, sim: Sim) -> None:
        self.__init__()  # type: ignore[misc]

    def tick(self, sim: Sim) -> None:
        spec = sim.spec
        window = 40.0 if spec.kind == "job" else 150.0
        if sim.pending > 0:
            self.last_pending_t = sim.now
            if sim.booting or sim.size >= spec.max_workers:
                return
            step = max(1, math.ceil((spec.max_workers - spec.min_workers) / 2))
            target = min(spec.max_workers, sim.size + step, _need(sim))
            if target > sim.size:
                sim.add_nodes(target - sim.size)
            return
        if sim.now - self.last_pending_t < window or sim.now - self.last_down_t < window:
            return
        if sim.size <= spec.min_workers:
            return
        cand = [
            n
            for n in sim.ready.values()
            if n.busy == 0 and n.shuffle_bytes == 0 and sim.now - n.idle_since >= window
        ]
        k = min(
            len(cand),
            sim.size - spec.min_workers,
            max(1, math.ceil(self.DOWN_FRACTION * sim.size)),
        )
        if k > 0:
            cand.sort(key=lambda n: n.idle_since)
            sim.remove_nodes(cand[:k])
            self.last_down_t = sim.now


class Dataproc:
    """Google Dataproc autoscaling policy (basicAlgorithm / yarnConfig).

    Source: cloud.google.com/dataproc/docs/concepts/configuring-clusters/autoscaling ("How
    autoscaling works") and the BasicYarnAutoscalingConfig API reference: every cooldown period
    (default 2m; "a scaling period starts after the update operation from the previous event has
    completed") Δexact = avg(pending memory - available memory) / memory per worker over the last
    cooldown; Δ = ceil(Δexact * scaleUpFactor) if positive, floor(Δexact * scaleDownFactor) if
    negative; workers leave through YARN graceful decommission bounded by
    gracefulDecommissionTimeout.
    Assumptions: scaleUpFactor = scaleDownFactor = 1.0 (the most reactive values),
    min-worker fractions 0.0 (defaults), gracefulDecommissionTimeout = 1h (required field, no
    default; the docs' examples use 1h). Memory is counted in worker units: Spark on Dataproc
    runs dynamic allocation, so pending memory = executors Spark asks for (ceil((running +
    pending) / slots)) minus executors it holds, available memory = workers whose executor
    dynamic allocation released (no task for 60 s). YARN graceful decommission waits for the
    running containers and for the applications that ran on the worker
    (yarn.resourcemanager.decommissioning-nodes-watcher.wait-for-applications, default true),
    i.e. for its live shuffle, until the timeout. Which workers go: the least loaded.
    Metrics are averaged from one reading every 10 s.
    """

    name = "dataproc"
    period_s = 10.0
    COOLDOWN_S = 120.0
    UP_FACTOR = 1.0
    DOWN_FACTOR = 1.0
    DECOMMISSION_TIMEOUT_S = 3600.0
    EXECUTOR_IDLE_S = 60.0

    def __init__(self) -> None:
        self.readings: list[float] = []
        self.period_start: float | None = None
        self.op_pending: set[Node] = set()

    def initial_workers(self, sim: Sim) -> int:
        return sim.spec.min_workers

    def on_restart(self, sim: Sim) -> None:
        self.__init__()  # type: ignore[misc]

    def tick(self, sim: Sim) -> None:
        spec = sim.spec
        # The previous update operation must complete before a new period starts.
        if self.op_pending:
            self.op_pending = {
                n for n in self.op_pending if n.name in sim.nodes and n.state != READY
            }
            if self.op_pending:
                return
            self.period_start = None
        if self.period_start is None:
            self.period_start = sim.now
            self.readings = []
        now = sim.now
        held = 0
        for n in sim.ready.values():
            if n.busy > 0 or now - n.idle_since < self.EXECUTOR_IDLE_S:
                held += 1
        pending_mem = max(0, _need(sim) - held)
        available_mem = len(sim.ready) - held
        self.readings.append(pending_mem - available_mem)
        if now - self.period_start < self.COOLDOWN_S:
            return
        exact = sum(self.readings) / len(self.readings)
        self.period_start = None
        if exact > 0:
            delta = math.ceil(exact * self.UP_FACTOR)
            target = min(spec.max_workers, sim.size + delta)
            if target > sim.size:
                before = set(sim.booting.values())
                sim.add_nodes(target - sim.size)
                self.op_pending = set(sim.booting.values()) - before
        elif exact < 0:
            delta = math.floor(-exact * self.DOWN_FACTOR)
            k = min(delta, sim.size - spec.min_workers)
            if k > 0:
                cand = sorted(
                    sim.ready.values(), key=lambda n: (n.busy, n.shuffle_bytes, n.idle_since)
                )[:k]
                sim.remove_nodes(cand, timeout_s=self.DECOMMISSION_TIMEOUT_S, wait_shuffle=True)
                self.op_pending = {n for n in cand if n.name in sim.nodes}


class SparkDynamicAllocation:
    """Spark dynamic allocation (ExecutorAllocationManager), one executor per worker.

    Source: apache/spark core/src/main/scala/org/apache/spark/ExecutorAllocationManager.scala and
    docs/job-scheduling.md: target = ceil((running + pending) * executorAllocationRatio(1.0) /
    tasksPerExecutor); executors are added after schedulerBacklogTimeout (1 s) of backlog, then
    every sustainedSchedulerBacklogTimeout (1 s), 1, 2, 4, 8 ... per round ("TCP slow start"),
    capped at the target; the round size resets when the target is reached or the backlog
    clears. When fewer are needed the target drops at once (outstanding requests are cancelled).
    An executor idle for executorIdleTimeout (60 s) is removed, never below the target or
    minExecutors; with shuffle tracking (default since 3.4, SPARK-39846) an executor holding live
    shuffle is kept (shuffleTracking.timeout = infinity). Evaluated every second (the manager
    polls every 100 ms; 1 s is the resolution of its timeouts).
    """

    name = "spark-dynamic-allocation"
    period_s = 1.0
    BACKLOG_S = 1.0
    SUSTAINED_S = 1.0
    IDLE_S = 60.0

    def __init__(self) -> None:
        self.target: int | None = None
        self.to_add = 1
        self.add_time: float | None = None

    def initial_workers(self, sim: Sim) -> int:
        return sim.spec.min_workers

    def on_restart(self, sim: Sim) -> None:
        self.__init__()  # type: ignore[misc]

    def tick(self, sim: Sim) -> None:
        spec = sim.spec
        now = sim.now
        if self.target is None:
            self.target = sim.size
        # backlog timer
        if sim.pending > 0:
            if self.add_time is None:
                self.add_time = now + self.BACKLOG_S
        else:
            self.add_time = None
        needed = max(spec.min_workers, min(spec.max_workers, _need(sim)))
        if needed < self.target:
            self.target = needed
            self.to_add = 1
            # cancel outstanding requests beyond the target
            excess = sim.size - self.target
            if excess > 0 and sim.booting:
                newest = sorted(sim.booting.values(), key=lambda n: -n.requested_at)
                sim.remove_nodes(newest[:excess])
        elif self.add_time is not None and now >= self.add_time:
            new_target = min(self.target + self.to_add, needed)
            delta = new_target - self.target
            if delta > 0:
                self.target = new_target
                self.to_add = self.to_add * 2 if delta == self.to_add else 1
            else:
                self.to_add = 1
            self.add_time = now + self.SUSTAINED_S
        if self.target > sim.size:
            sim.add_nodes(self.target - sim.size)
        # idle executors
        if sim.size > self.target:
            removable = sim.size - max(self.target, spec.min_workers)
            if removable > 0:
                idle = [
                    n
                    for n in sim.ready.values()
                    if n.busy == 0 and n.shuffle_bytes == 0 and now - n.idle_since >= self.IDLE_S
                ]
                if idle:
                    idle.sort(key=lambda n: n.idle_since)
                    sim.remove_nodes(idle[:removable])


class ClusterAutoscaler:
    """Kubernetes cluster-autoscaler, Spark executors as pods.

    Source: kubernetes/autoscaler cluster-autoscaler/FAQ.md: scan every 10 s (--scan-interval);
    scale up when pods are unschedulable, sized by bin-packing them on the node template
    (upcoming nodes count as capacity); a node is unneeded when the requests of its pods are
    below 50% of allocatable (--scale-down-utilization-threshold) and its pods can move, for 10
    minutes (--scale-down-unneeded-time); no scale-down for 10 minutes after a scale-up
    (--scale-down-delay-after-add); empty nodes are removed up to 10 at a time, non-empty ones
    one at a time; graceful termination at most 600 s.
    Assumptions: a pending task is an unschedulable one-core pod; a node's utilization is its
    running tasks over its slots; its pods can move (tasks still running after 600 s are
    killed and re-run; its shuffle output is lost).
    """

    name = "k8s-cluster-autoscaler"
    period_s = 10.0
    THRESHOLD = 0.5
    UNNEEDED_S = 600.0
    DELAY_AFTER_ADD_S = 600.0
    EMPTY_BULK = 10
    GRACE_S = 600.0

    def __init__(self) -> None:
        self.unneeded_since: dict[str, float] = {}
        self.last_add = -1e18

    def initial_workers(self, sim: Sim) -> int:
        return sim.spec.min_workers

    def on_restart(self, sim: Sim) -> None:
        self.__init__()  # type: ignore[misc]

    def tick(self, sim: Sim) -> None:
        spec = sim.spec
        now = sim.now
        S = sim.S
        free = sum(S - n.busy for n in sim.ready.values()) + S * len(sim.booting)
        unschedulable = sim.pending - free
        if unschedulable > 0 and sim.size < spec.max_workers:
            add = min(spec.max_workers - sim.size, math.ceil(unschedulable / S))
            sim.add_nodes(add)
            self.last_add = now
            return
        # unneeded nodes
        seen: dict[str, float] = {}
        for n in sim.ready.values():
            if n.busy < self.THRESHOLD * S:
                seen[n.name] = self.unneeded_since.get(n.name, now)
        self.unneeded_since = seen
        if now - self.last_add < self.DELAY_AFTER_ADD_S or sim.size <= spec.min_workers:
            return
        if sim.pending > 0:
            return
        ripe = [sim.ready[name] for name, t in seen.items() if now - t >= self.UNNEEDED_S]
        if not ripe:
            return
        room = sim.size - spec.min_workers
        empty = [n for n in ripe if n.busy == 0][: min(self.EMPTY_BULK, room)]
        if empty:
            sim.remove_nodes(empty, timeout_s=self.GRACE_S)
        else:
            ripe.sort(key=lambda n: (n.busy, now - seen[n.name]))
            sim.remove_nodes(ripe[:1], timeout_s=self.GRACE_S)
        for n in empty or ripe[:1]:
            self.unneeded_since.pop(n.name, None)


BASELINES = (
    "databricks-standard",
    "databricks-optimized",
    "dataproc",
    "spark-dynamic-allocation",
    "k8s-cluster-autoscaler",
)
STATIC = ("static-max", "static-min")
# sparkplane with the forecast (and proactive resume, or without it).
# With a pool (--pool-idle), "sparkplane-forecast-pool" drives the pool's idle instances by the
# forecast instead of the cluster's size.
PREDICTIVE = ("sparkplane-forecast", "sparkplane-forecast-noresume", "sparkplane-forecast-pool")


# The knob's settings (spark.sparkplane.autoscaling.preference), from the cheapest to the most
# responsive, for the frontier check (python -m bench.autoscale --frontier): rows
# `sparkplane-<setting>`. `balanced` is the default. The earlier names k0..k4 still resolve.
FRONTIER = {f"sparkplane-{name}": params for name, params in PREFERENCES.items()}
_K_NAMES = {f"sparkplane-k{i}": name for i, name in enumerate(FRONTIER)}


def make_policy(name: str, params: AutoscaleParams | None = None) -> Policy:
    if name in _K_NAMES:
        return Sparkplane(FRONTIER[_K_NAMES[name]], name=name)
    if name in FRONTIER:
        return Sparkplane(FRONTIER[name], name=name)
    if name == "sparkplane":
        return Sparkplane(params)
    if name == PREDICTIVE[0]:
        return SparkplaneForecast(params)
    if name == PREDICTIVE[1]:
        return SparkplaneForecast(params, name=name, resume=False)
    if name == PREDICTIVE[2]:
        return SparkplaneForecast(params, name=name, pool_only=True)
    if name == "sparkplane-noterm":
        return Sparkplane(params, idle_termination=False, name=name)
    if name == "static-max":
        return Static(name, "max")
    if name == "static-min":
        return Static(name, "min")
    classes = {
        c.name: c
        for c in (
            DatabricksStandard,
            DatabricksOptimized,
            Dataproc,
            SparkDynamicAllocation,
            ClusterAutoscaler,
        )
    }
    return classes[name]()
