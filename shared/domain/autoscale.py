"""Autoscaling and idle-termination policies: pure functions of utilization samples.

No I/O, no clock reads, no globals: the caller passes the samples, the cluster's bounds and
current size, the policy's memory from the previous evaluation (`ScalingMemory`) and the time.
The same code runs in the autoscaling / idle timers and, unchanged, in the simulator under
`bench/` (docs/autoscaling.md has the measurements).

Autoscaling (`decide_size`); every number is in `AutoscaleParams`:

1. Bounds first: a size below `min_workers` or above `max_workers` is corrected at once.
2. No fresh sample (the agent is silent): hold. A policy that cannot see the load does not act.
3. Scale up fast, to the backlog's demand: when tasks are pending, the target is the number of
   workers that runs every running and pending task at once, ceil((running + pending) /
   slots_per_worker), in one step. Workers still joining count. When the previous sample also
   had a backlog and it is shrinking, the backlog left after `expected_boot_s` (at the rate it
   shrinks) is what counts: a backlog the current workers drain before new ones could join adds
   nothing. On a backlog's first sample the rate is the one the cluster drained its newest
   backlog of the last `drain_memory_s` at (from that backlog's sample to the next, scaled
   down if the cluster has fewer slots now; none if that backlog grew). Why: on streams of
   short jobs most backlogs last one sample, and asking for their whole demand requested
   workers that joined after the tasks had ended and were then held by rule 4 (94% of the
   2,631 workers of one generated stream joined with nothing pending). A backlog that does
   not drain is still met one sample later, by the rate between its own samples. On 20
   generated shapes it removed 1, 1 and 4 of the 13, 13 and 14 cells where a baseline was
   Pareto-better (seed 0, used to choose it, and held-out seeds 3 and 4) and 1 of 7 on the
   built-in traces, with none new; measured again on top of rule 4's zero-based average,
   1 and 4 of 12 and 12 held out, 0 of 5 built-in: 3-9% fewer node-hours on the short-job
   streams at a p95 up to 10% higher (docs/autoscaling.md, "Sizing a backlog by what the
   cluster drains").
   The rate is remembered (`ScalingMemory.drain_rate`) for `drain_memory_s`, 15 minutes: a
   cluster's tasks take about as long from one backlog to the next, and with 3 minutes the
   streams of large jobs a few minutes apart asked for every backlog's whole demand, their
   workers joined as it drained, and were released before the next one (gen-18: 675 joins
   in 12 h against Dataproc's 125, at a higher p95). On 20 generated shapes, 4 seeds, it
   removed 10 of 41 cells where a baseline was Pareto-better, and 1 cell was added on the
   built-in traces (docs/autoscaling.md, "The drain rate remembered, the quiet release").
   Measured on all-purpose clusters; the job-cluster preset and the other settings keep
   it off. A backlog to take a rate from is a sample whose slots were all busy: tasks
   pending beside free slots were only caught between their submission and their start.
   A backlog no larger than the cluster's task slots is met only once it has lasted
   `up_small_backlog_s` (10 s: a second sample). Why: such a backlog is one more round of
   the cluster's own slots, and on streams of small queries it is gone by the next sample;
   met at once, the worker asked for joined after it had cleared and was billed for its
   boot and a hold window, for no gain in latency (Spark dynamic allocation waits its 1 s
   `schedulerBacklogTimeout` and cancels requests that are no longer needed). A larger
   backlog, or one that lasts, is met as above. What it costs: where such a backlog is the
   start of sustained load (a square wave's first job), the scale-up comes a sample later.
   On the scenario shapes (bench/sim/scenarios.py, 6 seeds) the cells where a baseline was
   Pareto-better went from 93 to 76 of 600 (23 went, 17 of them on interactive streams; 6
   came, 4 on square waves); on the generated shapes (6 seeds) and the built-in traces none
   changed but one, gone, on a job cluster (docs/autoscaling.md, "Scenario shapes, and a
   small backlog waits a sample"). The job-cluster preset waits too; the other settings
   meet every backlog at once.
4. Scale down only on sustained under-use, never while tasks are pending. The workers kept are
   the largest of: the peak demand of the last `down_hold_s` (samples must cover that window);
   older demand, whose weight halves every `down_half_life_s` from the moment it left that
   window (a decaying peak); and
   `floor_factor` times the average demand (an exponentially weighted mean with time constant
   `floor_tau_s`, starting from zero at the first sample), at most `floor_max_fraction` of
   `max_workers`. Capacity thus follows a burst down gradually, and a cluster that is busy on
   and off keeps a warm floor. Load that returns within the hold window (a square wave of a few
   minutes) keeps the workers: no flapping. Why the floor is capped (at three quarters of
   `max_workers` by default): where a few huge jobs fill the cluster (a scheduled job of
   hundreds of tasks every 40 minutes), each job lifts the average so far that twice it is the
   whole cluster, and after every job the floor kept every worker until the average had fallen;
   the next job comes much later, and its time is its own size's, not a cold start's. Capped, a
   busy cluster still keeps three quarters of its maximum warm. On 20 generated shapes it cut
   those shapes' node-hours by 7-8% at the same p95 and removed 2 of the 15 cells where a
   baseline was better, on seeds not used to choose it; half of `max_workers` made periodic
   shapes of large jobs slower (docs/autoscaling.md, "The floor cap").
   The quiet release: when each of the cluster's last 3 quiet periods (no task running or
   pending) lasted `quiet_gap_s` (420 s) or more, a cluster quiet for `quiet_release_s`
   (60 s) keeps only its floor, without the hold window's peak and the decaying peak. By
   then a held peak would have decayed to a quarter (the 180 s hold plus two 120 s
   half-lives), so holding it through such a gap only bills idle workers (periodic jobs a
   quarter of an hour apart: Spark dynamic allocation released them after its 60 s
   executor idle timeout, at the same p95). One short quiet period among the last 3 keeps
   the hold.
5. Step limits and cooldowns: at most `down_max_fraction` of the workers go in one decision;
   none within `down_interval_s` of another scale-down or `down_delay_after_up_s` of a scale-up.
6. Which workers go: workers that have not joined yet first (the size set minus the alive
   workers of the sample; they are cancelled). They hold no data and run nothing, and every
   second of their boot is billed, so a backlog that cleared before they joined should not pay
   for their boot and a hold window after it (Spark dynamic allocation cancels its outstanding
   requests the same way; the control plane's reconciler already takes not-yet-running nodes
   first on any reduction, so this is the order a reduction is carried out in anyway). Then
   alive workers holding no shuffle or cached data, then the least loaded (they are
   decommissioned gracefully and finish their running tasks). Workers that hold shuffle or
   cached data (removing them makes Spark recompute it) go only when no sample of the last
   `stateful_down_window_s` used the whole cluster.
   Once no task is pending, workers not joined yet go at once, without waiting for rule 4's
   hold window or rule 5's cooldowns, down to the largest of `min_workers`, the alive
   workers, the running tasks' workers and rule 4's floor (`cancel_joining`). Why: a worker
   asked for a backlog that cleared while it booted would join and be billed for the hold
   window, for nothing (Spark dynamic allocation cancels its outstanding executor requests
   as soon as the backlog is gone). The floor is in the bound because a periodic cluster
   would lose the warm workers it is about to need (without it, a prototype made the
   scenario cells worse: 78 against 76). Cells where a baseline was Pareto-better: scenario
   shapes 76 -> 74 of 600, generated shapes (seeds 0, 1, 3, 4, 6, 7) 41 -> 37 of 1,200,
   built-in traces 6 -> 6 of 160; cells where the policy is Pareto-better than Databricks
   optimized, generated shapes 36 -> 52 of 240. What it costs: it is a cheaper point, not a
   free one (median node-hours -4.5 to -5.4% per family, median p95 0 to +2.7%; a square
   wave of 4 minutes at a 180 s boot pays a p95 of 2.0 instead of 1.0 for 25% fewer
   node-hours). The live timer takes this one decision while the cluster is RESIZING.
   On in `balanced` and `cost`; off in the other settings and the job-cluster preset (there
   it cost up to twice the p95 at a 180 s boot for 3% fewer node-hours). docs/autoscaling.md,
   "Cancelling joining workers once their backlog is gone".

`JOB_CLUSTER_PARAMS` is the preset for job clusters: a 40 s hold, no decaying peak, no floor,
and at most half of the workers per scale-down step. Without a decaying peak, the step limit is
what makes the descent gradual: dropping to the last 40 s' peak at once made the next burst of a
bursty job cluster wait a full boot (on generated Markov-modulated shapes, p95 slowdown 2-3x
Databricks optimized's, whose scale-down removes a percentage of the nodes per window).

The memory carries the decaying peak and the average demand from one evaluation to the next, so
the caller only has to pass the samples of the last few minutes if it stores `Decision.memory`
after every evaluation. A caller that stores it only on changes should pass a longer history
(e.g. 15 minutes): samples newer than `seen_until_ms` are folded in on every call.

Idle termination (`idle_decision`, `last_activity`, `IdleDecision`) lives in
shared/domain/idle.py and is re-exported here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from shared.domain.autoscale_memory import ScalingMemory, ceil_div, decay, remember


@dataclass(frozen=True, slots=True)
class WorkerLoad:
    """One alive worker in a sample: its running tasks and the Spark state stored on it."""

    node_id: str
    running_tasks: int = 0
    shuffle_bytes: int = 0
    cached_bytes: int = 0

    @property
    def holds_state(self) -> bool:
        """Removing this worker loses shuffle or cached blocks that Spark would recompute."""
        return self.shuffle_bytes > 0 or self.cached_bytes > 0


@dataclass(frozen=True, slots=True)
class Sample:
    """One utilization sample of a cluster at `ts_ms`, as the driver agent reports it.

    `total_slots` is the cores of the alive executors; `workers` lists the alive workers that are
    not being decommissioned.
    """

    ts_ms: int
    running_tasks: int = 0
    pending_tasks: int = 0
    active_jobs: int = 0
    active_queries: int = 0
    total_slots: int = 0
    workers: tuple[WorkerLoad, ...] = ()

    @property
    def busy(self) -> bool:
        """Any activity: running or pending tasks, an active job or an executing query."""
        return (
            self.running_tasks > 0
            or self.pending_tasks > 0
            or self.active_jobs > 0
            or self.active_queries > 0
        )


# How far apart two samples one period apart may be short of that period: agents post them
# every period give or take some milliseconds, so a backlog seen in two samples "10 s" apart
# may have lasted 9.998 s by their timestamps, and must count as lasting the period (a live
# run of the `cost` setting, up_backlog_s 10 s, never scaled up for that).
SAMPLE_JITTER_MS = 1000


@dataclass(frozen=True, slots=True)
class AutoscaleParams:
    """Every tunable of `decide_size`, with the defaults the benchmark was measured with.

    The defaults assume one sample every ~10 s and an evaluation every ~10 s.
    """

    # A worker counts as `slots_per_worker * target_utilization` task slots of demand. Below
    # 1.0 keeps spare slots; above 1.0 accepts a short queue.
    target_utilization: float = 1.0
    # Scale up only when tasks have been pending at least this long (0: on the first sample).
    up_backlog_s: float = 0.0
    # ... and a backlog no larger than the cluster's task slots only once it has lasted this
    # long (0: as any other backlog).
    up_small_backlog_s: float = 10.0
    # How long a new worker takes to join, for the drain projection of rule 3 (0: off).
    expected_boot_s: float = 120.0
    # On a backlog's first sample, project with the newest drain rate seen during a backlog in
    # the last `drain_memory_s` (0: off; only a backlog's second sample is projected).
    drain_memory_s: float = 900.0
    # The most workers one scale-up adds (None: straight to the demand).
    max_up_step: int | None = None
    # Scale-down keeps the peak demand of the last `down_hold_s` in full ...
    down_hold_s: float = 180.0
    # ... older demand with a weight halving every `down_half_life_s` (0: not at all) ...
    down_half_life_s: float = 120.0
    # ... and `floor_factor` times the average demand, averaged with time constant floor_tau_s
    # (floor_factor 0: no floor).
    floor_factor: float = 2.0
    floor_tau_s: float = 900.0
    # ... at most `floor_max_fraction` of max_workers (1.0: no cap).
    floor_max_fraction: float = 0.75
    # Extra workers kept above all that.
    headroom_workers: int = 0
    # At most this fraction of the current workers goes in one decision (at least 1).
    down_max_fraction: float = 1.0
    # No scale-down within this long of a scale-up, or of another scale-down.
    down_delay_after_up_s: float = 0.0
    down_interval_s: float = 60.0
    # Workers holding shuffle or cached data go only after this long without full use.
    stateful_down_window_s: float = 900.0
    # The newest sample must be at most this old, or the policy holds.
    stale_after_s: float = 120.0
    # The biggest gap between samples still counted as covering a window.
    max_sample_gap_s: float = 45.0
    # Cancel the workers not joined yet as soon as no task is pending (rule 6).
    cancel_joining: bool = True
    # When the last 3 quiet periods (no task running or pending) each lasted at least
    # `quiet_gap_s`, a cluster quiet for `quiet_release_s` keeps only its floor (0: off).
    quiet_gap_s: float = 420.0
    quiet_release_s: float = 60.0


@dataclass(frozen=True, slots=True)
class Decision:
    """The target size, why, and which workers go on a scale-down.

    `target` is always within [min_workers, max_workers]. When it is below `current_workers`,
    workers that have not joined yet (`current_workers` minus the sample's alive workers, or
    its slots over the slots per worker if more) are the first to go (the caller cancels
    them), and `remove` names the alive workers to decommission for the rest of the
    reduction. `cancel` counts the not-joined workers, so that `current_workers - target ==
    cancel + len(remove)` on a scale-down. `memory` is what to pass as `last_change` next
    time (store it after every evaluation). `stats` are the inputs, for the
    AUTOSCALING_STATS_REPORT event.
    """

    target: int
    reason: str
    remove: tuple[str, ...] = ()
    cancel: int = 0
    memory: ScalingMemory | None = None
    stats: Mapping[str, float] = field(default_factory=dict)

    @property
    def cancels_only(self) -> bool:
        """A scale-down that takes only workers not joined yet (no alive worker goes)."""
        return self.cancel > 0 and not self.remove


def _pick_removals(
    workers: Sequence[WorkerLoad], count: int, allow_stateful: bool
) -> tuple[str, ...]:
    """Up to `count` workers: no shuffle or cached data first, then the least loaded."""
    stateless = sorted(
        (w for w in workers if not w.holds_state), key=lambda w: (w.running_tasks, w.node_id)
    )
    chosen = [w.node_id for w in stateless[:count]]
    if len(chosen) < count and allow_stateful:
        stateful = sorted(
            (w for w in workers if w.holds_state),
            key=lambda w: (w.running_tasks, w.shuffle_bytes + w.cached_bytes, w.node_id),
        )
        chosen.extend(w.node_id for w in stateful[: count - len(chosen)])
    return tuple(chosen)


def _lasted(samples: Sequence[Sample], latest: Sample, window_s: float) -> bool:
    """Tasks have been pending in every sample from `window_s` before `latest` (give or take
    an agent's jitter) up to it."""
    since = latest.ts_ms
    for s in reversed(samples):
        if s.ts_ms > latest.ts_ms:
            continue
        if s.pending_tasks == 0:
            break
        since = s.ts_ms
    return latest.ts_ms - since >= window_s * 1000 - SAMPLE_JITTER_MS


def _covers(samples: Sequence[Sample], start_ms: int, now_ms: int, max_gap_ms: int) -> bool:
    """The samples (in time order) are continuous (no gap above max_gap_ms) from start_ms to
    now_ms. Walked from the newest back to the first at or before start_ms: the caller keeps
    a longer history than the window, and the timer asks this for every cluster each tick."""
    later = now_ms
    seen = False
    for s in reversed(samples):
        if s.ts_ms > now_ms:
            continue
        if later - s.ts_ms > max_gap_ms:
            return False
        if s.ts_ms <= start_ms:
            return True
        seen = True
        later = s.ts_ms
    return seen and later - start_ms <= max_gap_ms


def decide_size(
    samples: Sequence[Sample],
    min_workers: int,
    max_workers: int,
    current_workers: int,
    slots_per_worker: int,
    last_change: ScalingMemory | None,
    now_ms: int,
    params: AutoscaleParams | None = None,
) -> Decision:
    """The target number of workers of an autoscaling cluster (rules in the module doc).

    `samples`: the cluster's recent samples in time order (at least the last `down_hold_s`);
    `current_workers`: the size the cluster is set to, workers still joining included.
    """
    p = params if params is not None else _DEFAULT
    lo = max(0, min_workers)
    hi = max(lo, max_workers)
    cur = max(0, current_workers)
    per_worker = max(1, slots_per_worker) * p.target_utilization
    if per_worker <= 0:
        per_worker = 1.0

    latest: Sample | None = None
    for s in reversed(samples):
        if s.ts_ms <= now_ms:
            latest = s
            break
    mem = remember(last_change or ScalingMemory(), samples, now_ms, per_worker, hi, p)

    def hold(reason: str, stats: dict[str, float] | None = None) -> Decision:
        return Decision(target=cur, reason=reason, memory=mem, stats=stats or {})

    def change(
        target: int,
        reason: str,
        stats: dict[str, float],
        remove: tuple[str, ...] = (),
        cancel: int = 0,
    ) -> Decision:
        direction: Literal["up", "down"] = "up" if target > cur else "down"
        m = replace(
            mem, changed_at_ms=now_ms, direction=direction, from_workers=cur, to_workers=target
        )
        return Decision(
            target=target, reason=reason, remove=remove, cancel=cancel, memory=m, stats=stats
        )

    # 1. Bounds.
    if cur < lo:
        return change(lo, f"below the minimum: {cur} -> {lo} workers", {})
    if cur > hi:
        workers = latest.workers if latest is not None else ()
        joining = min(cur - hi, max(0, cur - len(workers)))
        remove = _pick_removals(workers, cur - hi - joining, allow_stateful=True)
        note = f" ({joining} not joined yet are cancelled)" if joining else ""
        return change(hi, f"above the maximum: {cur} -> {hi} workers{note}", {}, remove, joining)

    # 2. Fresh samples only.
    if latest is None or now_ms - latest.ts_ms > p.stale_after_s * 1000:
        return hold(f"no sample in the last {p.stale_after_s:.0f} s; holding {cur} workers")

    running, pending = latest.running_tasks, latest.pending_tasks
    need = ceil_div(running + pending, per_worker)
    stats: dict[str, float] = {
        "running_tasks": running,
        "pending_tasks": pending,
        "total_slots": latest.total_slots,
        "alive_workers": len(latest.workers),
        "current_workers": cur,
        "needed_workers": need,
    }

    # 3. Scale up to the backlog's demand.
    if pending > 0:
        if cur >= hi:
            return hold(
                f"{pending} pending + {running} running tasks need {need} workers; "
                f"at the maximum of {hi}",
                stats,
            )
        if p.up_backlog_s > 0 and not _lasted(samples, latest, p.up_backlog_s):
            return hold(
                f"{pending} pending tasks; scaling up once the backlog has lasted "
                f"{p.up_backlog_s:.0f} s",
                stats,
            )
        demand = float(running + pending)
        note = ""
        prev = _previous(samples, latest)
        rate = 0.0
        if p.expected_boot_s > 0 and prev is not None and prev.pending_tasks > 0:
            dt_s = (latest.ts_ms - prev.ts_ms) / 1000
            before = prev.running_tasks + prev.pending_tasks
            if dt_s > 0 and before > demand:
                rate = (before - demand) / dt_s
        elif (
            p.expected_boot_s > 0
            and mem.drain_at_ms >= 0
            and 0 < latest.ts_ms - mem.drain_at_ms <= p.drain_memory_s * 1000
        ):
            # Scaled down to the slots the cluster has now, when it has fewer.
            scale = latest.total_slots / mem.drain_slots if latest.total_slots > 0 else 1.0
            rate = mem.drain_rate * min(1.0, scale)
        if rate > 0:
            demand = max(0.0, demand - rate * p.expected_boot_s)
            stats["drain_tasks_per_s"] = round(rate, 3)
            note = (
                f"; draining at {rate:.1f} tasks/s, {demand:.0f} left in {p.expected_boot_s:.0f} s"
            )
        target = min(hi, ceil_div(demand, per_worker))
        if p.max_up_step is not None:
            target = min(target, cur + max(1, p.max_up_step))
        if target <= cur:
            return hold(
                f"{pending} pending + {running} running tasks{note}: the {cur} workers set "
                "(some may still be joining) are enough",
                stats,
            )
        if (
            p.up_small_backlog_s > 0
            and pending <= latest.total_slots
            and not _lasted(samples, latest, p.up_small_backlog_s)
        ):
            return hold(
                f"{pending} pending tasks, no more than the cluster's {latest.total_slots} "
                f"slots; scaling up once the backlog has lasted {p.up_small_backlog_s:.0f} s",
                stats,
            )
        return change(
            target,
            f"{pending} pending + {running} running tasks{note}: need {target} workers of "
            f"{slots_per_worker} slots; scaling up {cur} -> {target}",
            stats,
        )

    floor = min(p.floor_factor * mem.avg_workers, p.floor_max_fraction * hi)
    floor_workers = ceil_div(floor - 1e-6, 1.0)
    # The alive workers; a sample without the per-worker list still has their slots.
    alive = max(len(latest.workers), latest.total_slots // max(1, slots_per_worker))

    # 6, ahead of rule 4's hold window: workers not joined yet go once their backlog is gone.
    if p.cancel_joining and cur > alive:
        keep = max(lo, alive, ceil_div(running, per_worker), floor_workers)
        if keep < cur:
            stats.update(avg_workers=round(mem.avg_workers, 2), keep_workers=keep)
            return change(
                keep,
                f"no backlog; {running} running tasks need {ceil_div(running, per_worker)} "
                f"workers, {alive} have joined, the floor is {floor:.1f}: cancelling "
                f"{cur - keep} not joined yet",
                stats,
                cancel=cur - keep,
            )

    # 4. Scale down on sustained under-use.
    if cur <= lo:
        return hold(f"no backlog; at the minimum of {lo} workers", stats)
    if mem.changed_at_ms is not None:
        since_s = (now_ms - mem.changed_at_ms) / 1000
        if mem.direction == "up" and since_s < p.down_delay_after_up_s:
            return hold(
                f"no scale-down within {p.down_delay_after_up_s:.0f} s of a scale-up "
                f"({since_s:.0f} s ago)",
                stats,
            )
        if mem.direction == "down" and since_s < p.down_interval_s:
            return hold(
                f"no scale-down within {p.down_interval_s:.0f} s of the last one "
                f"({since_s:.0f} s ago)",
                stats,
            )
    hold_ms = int(p.down_hold_s * 1000)
    gap_ms = int(p.max_sample_gap_s * 1000)
    if not _covers(samples, now_ms - hold_ms, now_ms, gap_ms):
        return hold(f"no backlog; samples do not cover the last {p.down_hold_s:.0f} s yet", stats)
    peak = 0
    for s in reversed(samples):  # newest first, back to the window's start
        if s.ts_ms > now_ms:
            continue
        if s.ts_ms < now_ms - hold_ms:
            break
        peak = max(peak, ceil_div(s.running_tasks + s.pending_tasks, per_worker))
    peak = min(peak, hi)
    tail = decay(mem.tail_workers, now_ms - mem.tail_ref_ms, p.down_half_life_s * 1000)
    if (
        p.quiet_gap_s > 0
        and mem.quiet_since_ms >= 0
        and now_ms - mem.quiet_since_ms >= p.quiet_release_s * 1000
        and len(mem.quiet_gaps) >= 3
        and min(mem.quiet_gaps) >= p.quiet_gap_s * 1000
    ):
        peak, tail = 0, 0.0  # rule 4's quiet release (module doc)
    keep = max(lo, max(peak, ceil_div(max(tail, floor) - 1e-6, 1.0)) + p.headroom_workers)
    stats.update(
        peak_workers=peak,
        decaying_peak_workers=round(tail, 2),
        avg_workers=round(mem.avg_workers, 2),
        keep_workers=keep,
    )
    capped = " (capped)" if floor < p.floor_factor * mem.avg_workers else ""
    why = (
        f"peak demand of the last {p.down_hold_s:.0f} s needs {peak} workers, the decaying "
        f"earlier peak {tail:.1f}, {p.floor_factor:g}x the average demand {floor:.1f}{capped}"
    )
    if keep >= cur:
        return hold(f"{why}: keeping {cur}", stats)
    count = min(cur - keep, max(1, int(cur * p.down_max_fraction)))
    # Workers that have not joined yet go first: they hold nothing and their boot is pure cost.
    cancel = min(count, max(0, cur - alive))
    allow_stateful = now_ms - mem.full_at_ms >= p.stateful_down_window_s * 1000
    remove = _pick_removals(latest.workers, count - cancel, allow_stateful)
    if not remove and not cancel:
        return hold(
            f"{why}: {keep} of {cur} would do, but every worker that could go holds shuffle or "
            "cached data",
            stats,
        )
    with_state = sum(1 for w in latest.workers if w.holds_state and w.node_id in remove)
    note = f" ({with_state} holding shuffle/cached data)" if with_state else ""
    if cancel:
        note += f" and cancelling {cancel} not joined yet"
    return change(
        cur - cancel - len(remove),
        f"no backlog; {why}: removing {len(remove)} of {cur} workers{note}",
        stats,
        remove,
        cancel,
    )


_DEFAULT = AutoscaleParams()

# For job clusters (one pipeline, no interactive user waiting for warm capacity): release
# capacity once 40 s pass without the demand for it, like Databricks' 40 s job-cluster window;
# no decaying peak and no floor. Without a decaying peak, at most half of the workers go per
# step (every `down_interval_s`): a burst's capacity halves down instead of dropping to the
# last 40 s' peak at once, so a lull between bursts does not cost the next burst a full boot.
JOB_CLUSTER_PARAMS = AutoscaleParams(
    down_hold_s=40.0,
    down_half_life_s=0.0,
    floor_factor=0.0,
    down_max_fraction=0.5,
    drain_memory_s=0.0,  # the first-sample drain projection was measured on all-purpose only
    quiet_gap_s=0.0,  # and so was the quiet release
    # Joining workers stay for the 40 s hold: cancelling them at once cost the bursty job
    # shapes up to twice their p95 at a 180 s boot for 3% fewer node-hours (rule 6).
    cancel_joining=False,
)


def _previous(samples: Sequence[Sample], latest: Sample) -> Sample | None:
    found = False
    for s in reversed(samples):
        if found and s.ts_ms < latest.ts_ms:
            return s
        if s is latest:
            found = True
    return None


# Idle termination is its own module; these names stay importable from here.
from shared.domain.idle import IdleDecision, idle_decision, last_activity  # noqa: E402

__all__ = [
    "JOB_CLUSTER_PARAMS",
    "AutoscaleParams",
    "Decision",
    "IdleDecision",
    "Sample",
    "ScalingMemory",
    "WorkerLoad",
    "decide_size",
    "idle_decision",
    "last_activity",
]
