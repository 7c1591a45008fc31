"""A discrete-event simulator of one Spark cluster under a workload and a scaling policy.

The model:

- Workers have `slots_per_worker` task slots. A worker is billed per second from the moment it
  is requested (booting included) until it is released. The driver is not counted.
- A requested worker joins after `boot_s` (after a termination, a cold start adds
  `cold_start_s`: driver start, init scripts).
- Task durations vary by +-20% around the stage's task_s, a fixed function of each task (the
  same for every policy), so waves do not stay in lock-step.
- Tasks are placed the way Spark's TaskSchedulerImpl places them: offers are spread over the
  workers (one task per worker per round, workers with the most free slots first), so a lightly
  loaded cluster has few completely idle workers. Jobs share slots fairly (Spark FAIR
  scheduling; Databricks gives every notebook its own pool): a free slot goes to the job with
  the fewest running tasks.
- A task's shuffle output stays on its worker until its job ends. A released worker loses it;
  the job re-runs the lost tasks (tasks of the current stage, and of the stage it reads).
- Removal is graceful (Spark decommissioning): a removed worker takes no new tasks and is
  released when its running tasks end; a policy may cap that with a timeout after which the
  running tasks are killed and re-queued, and may wait for the worker's live shuffle too.
- Idle termination (sparkplane only) releases every worker; the next job starts the cluster
  again at its minimum size with a cold start.
- An instance pool (`pool_min_idle`, bench/sim/pool.py): a worker taken from the pool's idle
  instances joins after `pool_acquire_s` instead of `boot_s`; the idle instances are billed.
- Warm-up (`warmup_s`): jobs submitted before it are left out of the slowdowns, and node-hours,
  idle node-hours, scaling actions, reversals and recomputed work count from it on, for every
  policy alike; a forecaster's learning days are run but not scored. Terminations and false
  terminations count over the whole run.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from bench.sim.model import JobSpec, Trace, task_factor
from bench.sim.pool import Pool
from shared.domain.autoscale import Sample, WorkerLoad

BOOTING, READY, DECOM = 0, 1, 2

# Event kinds, in the order they are handled at the same instant.
(
    EV_FINISH,
    EV_DRIVER_END,
    EV_READY,
    EV_FORCE,
    EV_ARRIVE,
    EV_TICK,
    EV_RECORD,
    EV_WARMUP,
    EV_REPORT,
) = range(9)

REVERSAL_WINDOW_S = 600.0


class Node:
    __slots__ = (
        "_wl",
        "batches",
        "busy",
        "idle_s",
        "idle_since",
        "name",
        "outputs",
        "ready_at",
        "release_deadline",
        "requested_at",
        "shuffle_bytes",
        "state",
        "wait_shuffle",
    )

    def __init__(self, name: str, now: float, ready_at: float) -> None:
        self.name = name
        self.state = BOOTING
        self.requested_at = now
        self.ready_at = ready_at
        self.busy = 0
        self.batches: dict[int, tuple[Job, int, int, bool]] = {}
        # (job, stage index) -> tasks whose shuffle output lives here
        self.outputs: dict[tuple[Job, int], int] = {}
        self.shuffle_bytes = 0
        self.idle_since = now
        self.idle_s = 0.0
        self.release_deadline: float | None = None
        self.wait_shuffle = False
        self._wl: WorkerLoad | None = None

    def worker_load(self) -> WorkerLoad:
        wl = self._wl
        if wl is None or wl.running_tasks != self.busy or wl.shuffle_bytes != self.shuffle_bytes:
            wl = self._wl = WorkerLoad(self.name, self.busy, self.shuffle_bytes, 0)
        return wl


class Job:
    __slots__ = (
        "done",
        "driver",
        "finished_at",
        "holders",
        "next_ord",
        "pending",
        "redo",
        "redo_ord",
        "redo_running",
        "running",
        "spec",
        "stage",
        "ver",
    )

    def __init__(self, spec: JobSpec) -> None:
        self.ver = 0
        self.next_ord = 0  # launch order of the current stage's tasks
        self.redo_ord = 1 << 30  # re-runs get ordinals of their own
        self.spec = spec
        self.stage = -1
        self.pending = 0
        self.running = 0
        self.done = 0
        # Lost shuffle of the stage before the current one: [count, stage index] to re-run.
        self.redo: list[list[int]] = []
        self.redo_running = 0
        self.holders: set[Node] = set()
        self.driver = False
        self.finished_at: float | None = None

    def waiting(self) -> int:
        return self.pending + sum(r[0] for r in self.redo)


class Policy(Protocol):
    name: str
    # Seconds between ticks; None: never ticks (static sizes).
    period_s: float | None

    def initial_workers(self, sim: Sim) -> int: ...

    def tick(self, sim: Sim) -> None: ...

    def on_restart(self, sim: Sim) -> None: ...


@dataclass
class Result:
    trace: str
    shape: str
    seed: int
    policy: str
    boot_s: float
    node_hours: float
    idle_node_hours: float
    slowdown_p50: float
    slowdown_p95: float
    slowdown_mean: float
    scaling_actions: int
    reversals: int
    false_terminations: int
    terminations: int
    recomputed_task_hours: float
    jobs: int
    jobs_finished: int
    end_s: float
    timeline: list[tuple[float, int, int]] = field(default_factory=list)

    def row(self) -> dict[str, object]:
        return {
            "trace": self.trace,
            "shape": self.shape,
            "seed": self.seed,
            "policy": self.policy,
            "boot_s": self.boot_s,
            "node_hours": round(self.node_hours, 3),
            "idle_node_hours": round(self.idle_node_hours, 3),
            "slowdown_p50": round(self.slowdown_p50, 4),
            "slowdown_p95": round(self.slowdown_p95, 4),
            "slowdown_mean": round(self.slowdown_mean, 4),
            "scaling_actions": self.scaling_actions,
            "reversals": self.reversals,
            "false_terminations": self.false_terminations,
            "terminations": self.terminations,
            "recomputed_task_hours": round(self.recomputed_task_hours, 3),
            "jobs": self.jobs,
            "jobs_finished": self.jobs_finished,
            "end_s": round(self.end_s, 1),
        }


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), q in [0, 100]."""
    if not values:
        return float("nan")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


class Sim:
    def __init__(
        self,
        trace: Trace,
        policy: Policy,
        boot_s: float,
        *,
        cold_start_s: float = 120.0,
        record_period_s: float | None = None,
        jitter: float = 0.2,
        warmup_s: float = 0.0,
        pool_min_idle: int | None = None,
        pool_acquire_s: float = 20.0,
        initial_workers: int | None = None,
    ) -> None:
        self.trace = trace
        # The workers at time zero (None: the policy's initial size, the cluster's minimum).
        self.initial_workers = initial_workers
        # An instance pool under the cluster (bench/sim/pool.py), or None: every worker boots.
        self.pool = None if pool_min_idle is None else Pool(pool_min_idle, pool_acquire_s, boot_s)
        self.warmup_s = max(0.0, warmup_s)
        # Task durations vary by +-jitter around task_s, a fixed function of each task.
        self.jitter = jitter
        self.spec = trace.cluster
        self.S = trace.cluster.slots_per_worker
        self.policy = policy
        self.boot_s = boot_s
        self.cold_start_s = cold_start_s
        self.now = 0.0
        self._heap: list[tuple[float, int, int, object, object]] = []
        self._seq = 0
        self._bid = 0
        self._node_seq = 0
        self.nodes: dict[str, Node] = {}  # every live node (booting, ready, decommissioning)
        self.ready: dict[str, Node] = {}  # ready and not decommissioning
        self.booting: dict[str, Node] = {}
        self.active: dict[Job, None] = {}
        self._fair: list[tuple[int, int, Job]] = []  # fair-share heap of jobs with tasks to launch
        self.running = 0
        self.pending = 0
        self.task_jobs = 0  # jobs in a task stage
        self.driver_jobs = 0  # jobs in a driver-only phase
        self.arrivals_left = len(trace.jobs)
        self.last_finish = 0.0
        self.terminated = False
        # metrics
        self.node_s = 0.0
        self.idle_node_s = 0.0
        self.actions = 0
        self.reversals = 0
        self._last_action: tuple[float, int] | None = None
        self.false_terminations = 0
        self.terminations = 0
        self.resumes = 0
        self.recomputed_task_s = 0.0
        self.slowdowns: list[float] = []
        # job id -> finish time (bench/autoscale_live.py compares them job by job)
        self.finish_s: dict[int, float] = {}
        self.jobs_finished = 0
        self.record_period_s = record_period_s
        self.timeline: list[tuple[float, int, int]] = []
        # Seconds from request to join of each worker a running cluster without a pool added,
        # in join order: what the live reconcile times (shared/domain/worker_boot.py).
        self.joins: list[float] = []
        self._timed: set[str] = set()

    # ---------------------------------------------------------------- events

    def _push(self, t: float, kind: int, a: object = None, b: object = None) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, kind, self._seq, a, b))

    def run(self) -> Result:
        for spec in self.trace.jobs:
            self._push(spec.submit_s, EV_ARRIVE, spec)
        n0 = self.policy.initial_workers(self)
        if self.initial_workers is not None:
            n0 = self.initial_workers
        for _ in range(n0):
            node = self._new_node(0.0)
            self._node_ready(node)
        if self.policy.period_s:
            self._push(self.policy.period_s, EV_TICK)
            # A policy reading reports made `report_lag_s` before its ticks (the live agent's).
            lag = getattr(self.policy, "report_lag_s", None)
            if lag:
                self._push(max(0.0, self.policy.period_s - lag), EV_REPORT)
        if self.record_period_s:
            self._push(0.0, EV_RECORD)
        if self.warmup_s > 0:
            self._push(self.warmup_s, EV_WARMUP)
        duration = self.trace.duration_s
        heap = self._heap
        pop = heapq.heappop
        end_t = duration
        while heap:
            t = heap[0][0]
            if self.arrivals_left == 0 and not self.active and t >= duration:
                end_t = max(duration, self.last_finish)
                break
            t, kind, _, a, b = pop(heap)
            self.now = t
            if kind == EV_FINISH:
                self._finish(a, b)  # type: ignore[arg-type]
            elif kind == EV_TICK:
                if not self.terminated:
                    self.policy.tick(self)
                else:
                    # Only policies that predict use look at a terminated cluster.
                    resume_check = getattr(self.policy, "tick_terminated", None)
                    if resume_check is not None:
                        resume_check(self)
                self._push(t + self.policy.period_s, EV_TICK)  # type: ignore[operator]
            elif kind == EV_ARRIVE:
                self._arrive(a)  # type: ignore[arg-type]
            elif kind == EV_READY:
                node = a
                if node.state == BOOTING and node.name in self.booting:  # type: ignore[union-attr]
                    self._node_ready(node)  # type: ignore[arg-type]
            elif kind == EV_DRIVER_END:
                job = a
                job.driver = False  # type: ignore[union-attr]
                self.driver_jobs -= 1
                self._next_stage(job)  # type: ignore[arg-type]
            elif kind == EV_FORCE:
                node = a
                if node.name in self.nodes and node.state == DECOM:  # type: ignore[union-attr]
                    self._release(node)  # type: ignore[arg-type]
            elif kind == EV_RECORD:
                self.timeline.append((t, len(self.nodes), len(self.ready)))
                self._push(t + self.record_period_s, EV_RECORD)  # type: ignore[operator]
            elif kind == EV_WARMUP:
                self._start_scoring()
            elif kind == EV_REPORT:
                self.policy.report(self)  # type: ignore[attr-defined]
                self._push(t + self.policy.period_s, EV_REPORT)  # type: ignore[operator]
            self._dispatch()
        else:
            end_t = max(duration, self.last_finish, self.now)
        self.now = end_t
        for node in list(self.nodes.values()):
            self._bill(node)
        self.nodes.clear()
        if self.pool is not None:
            pool_s = self.pool.close(end_t)
            self.node_s += pool_s
            self.idle_node_s += pool_s
        if self.record_period_s:
            self.timeline.append((end_t, 0, 0))
        return self._result(end_t)

    def _result(self, end_t: float) -> Result:
        sd = self.slowdowns
        return Result(
            trace=self.trace.name,
            shape=self.trace.shape,
            seed=self.trace.seed,
            policy=self.policy.name,
            boot_s=self.boot_s,
            node_hours=self.node_s / 3600,
            idle_node_hours=self.idle_node_s / 3600,
            slowdown_p50=percentile(sd, 50),
            slowdown_p95=percentile(sd, 95),
            slowdown_mean=sum(sd) / len(sd) if sd else float("nan"),
            scaling_actions=self.actions,
            reversals=self.reversals,
            false_terminations=self.false_terminations,
            terminations=self.terminations,
            recomputed_task_hours=self.recomputed_task_s / 3600,
            jobs=len(self.trace.jobs),
            jobs_finished=self.jobs_finished,
            end_s=end_t,
            timeline=self.timeline,
        )

    # ---------------------------------------------------------------- the policy's view

    @property
    def size(self) -> int:
        """Workers requested and not being removed (booting + ready)."""
        return len(self.ready) + len(self.booting)

    def sample(self) -> Sample:
        return Sample(
            ts_ms=int(self.now * 1000),
            running_tasks=self.running,
            pending_tasks=self.pending,
            active_jobs=self.task_jobs,
            active_queries=self.driver_jobs,
            total_slots=len(self.ready) * self.S,
            workers=tuple(n.worker_load() for n in self.ready.values()),
        )

    @property
    def has_work(self) -> bool:
        return bool(self.active)

    # ---------------------------------------------------------------- the policy's actions

    def _count_action(self, direction: int) -> None:
        self.actions += 1
        last = self._last_action
        if last is not None and last[1] != direction and self.now - last[0] <= REVERSAL_WINDOW_S:
            self.reversals += 1
        self._last_action = (self.now, direction)

    def add_nodes(self, count: int, *, extra_boot_s: float = 0.0, action: bool = True) -> None:
        if count <= 0:
            return
        for _ in range(count):
            acquire = self.pool.take(self.now) if self.pool is not None else None
            join_s = self.boot_s if acquire is None else acquire
            node = self._new_node(self.now + join_s + extra_boot_s)
            if action and self.pool is None:
                self._timed.add(node.name)
            self.booting[node.name] = node
            self._push(node.ready_at, EV_READY, node)
        if action:
            self._count_action(+1)

    def remove_nodes(
        self,
        nodes: list[Node],
        *,
        timeout_s: float | None = None,
        wait_shuffle: bool = False,
    ) -> int:
        """Decommission `nodes` (booting ones are cancelled). Returns how many."""
        n = 0
        for node in nodes:
            if node.name not in self.nodes or node.state == DECOM:
                continue
            n += 1
            if node.state == BOOTING:
                del self.booting[node.name]
                self._release(node)
                continue
            del self.ready[node.name]
            node.state = DECOM
            node.wait_shuffle = wait_shuffle
            if timeout_s is not None:
                node.release_deadline = self.now + timeout_s
                self._push(self.now + timeout_s, EV_FORCE, node)
            self._maybe_release(node)
        if n:
            self._count_action(-1)
        return n

    def node(self, name: str) -> Node:
        return self.nodes[name]

    def terminate(self) -> None:
        """Idle termination: release every worker."""
        self.terminations += 1
        if self.running or self.pending or self.active:
            self.false_terminations += 1
        for node in list(self.nodes.values()):
            self.booting.pop(node.name, None)
            self.ready.pop(node.name, None)
            node.state = DECOM
            self._release(node)
        self.terminated = True
        if self.active:
            # A terminated busy cluster: its work is resubmitted at once (a cold start).
            self._restart()

    def resume(self) -> None:
        """Start the terminated cluster ahead of use (a proactive resume): a cold start, as
        when a job arrives."""
        if self.terminated:
            self.resumes += 1
            self._restart()

    def _restart(self) -> None:
        self.terminated = False
        self.policy.on_restart(self)
        self.add_nodes(self.spec.min_workers, extra_boot_s=self.cold_start_s, action=False)

    # ---------------------------------------------------------------- mechanics

    def _start_scoring(self) -> None:
        """The end of the warm-up: what was billed, idle or counted so far is not scored;
        the workers alive now are billed from now on."""
        self.node_s = 0.0
        self.idle_node_s = 0.0
        self.actions = 0
        self.reversals = 0
        self.recomputed_task_s = 0.0
        if self.pool is not None:
            self.pool.reset_billing(self.now)
        for node in self.nodes.values():
            node.requested_at = max(node.requested_at, self.now)
            node.idle_s = 0.0
            node.idle_since = self.now

    def _new_node(self, ready_at: float) -> Node:
        self._node_seq += 1
        node = Node(f"w{self._node_seq}", self.now, ready_at)
        self.nodes[node.name] = node
        return node

    def _node_ready(self, node: Node) -> None:
        self.booting.pop(node.name, None)
        if node.name in self._timed:
            self._timed.discard(node.name)
            self.joins.append(node.ready_at - node.requested_at)
        node.state = READY
        self.ready[node.name] = node

    def _bill(self, node: Node) -> None:
        self.node_s += max(0.0, self.now - node.requested_at)
        if node.busy == 0:
            node.idle_s += self.now - node.idle_since
        self.idle_node_s += node.idle_s

    def _maybe_release(self, node: Node) -> None:
        if node.busy == 0 and not (node.wait_shuffle and node.shuffle_bytes > 0):
            self._release(node)

    def _release(self, node: Node) -> None:
        """The worker goes away: running tasks are re-queued, its shuffle output is lost."""
        if node.name not in self.nodes:
            return
        self._timed.discard(node.name)  # released while booting: it never joined
        for job, st, k, redo in node.batches.values():
            self.running -= k
            if redo:
                job.redo_running -= k
                job.redo.append([k, st])
            else:
                job.running -= k
                job.pending += k
            self.pending += k
            self.recomputed_task_s += 0.5 * k * job.spec.stages[st].task_s
            self._wait(job)
        node.batches.clear()
        if node.busy:
            node.busy = 0
            node.idle_since = self.now
        for (job, st), c in node.outputs.items():
            job.holders.discard(node)
            if job.finished_at is not None or job.driver:
                continue
            if st == job.stage:
                job.done -= c
                job.pending += c
            elif st == job.stage - 1:
                job.redo.append([c, st])
            else:
                continue
            self.pending += c
            self.recomputed_task_s += c * job.spec.stages[st].task_s
            self._wait(job)
        node.outputs.clear()
        node.shuffle_bytes = 0
        self._bill(node)
        del self.nodes[node.name]
        if self.pool is not None:
            self.pool.give_back(self.now)

    def _wait(self, job: Job) -> None:
        """(Re-)enter the job in the fair-share heap with its current running count."""
        self._seq += 1
        job.ver = self._seq
        heapq.heappush(self._fair, (job.running + job.redo_running, self._seq, job))

    def _arrive(self, spec: JobSpec) -> None:
        self.arrivals_left -= 1
        if self.terminated:
            self._restart()
        job = Job(spec)
        self.active[job] = None
        self._next_stage(job)

    def _next_stage(self, job: Job) -> None:
        stages = job.spec.stages
        job.stage += 1
        if job.stage >= len(stages):
            self._job_done(job)
            return
        st = stages[job.stage]
        if st.tasks == 0:
            job.driver = True
            self.driver_jobs += 1
            self._push(self.now + st.task_s, EV_DRIVER_END, job)
            return
        if job.stage == 0 or stages[job.stage - 1].tasks == 0:
            self.task_jobs += 1
        job.pending = st.tasks
        job.done = 0
        job.next_ord = 0
        self.pending += st.tasks
        self._wait(job)

    def _job_done(self, job: Job) -> None:
        job.finished_at = self.now
        self.finish_s[job.spec.job_id] = self.now
        del self.active[job]
        self.jobs_finished += 1
        self.last_finish = self.now
        ideal = job.spec.ideal_s(self.jitter)
        if ideal > 0 and job.spec.submit_s >= self.warmup_s:
            self.slowdowns.append((self.now - job.spec.submit_s) / ideal)
        for node in job.holders:
            freed = 0
            for key in [k for k in node.outputs if k[0] is job]:
                c = node.outputs.pop(key)
                freed += c * job.spec.stages[key[1]].shuffle_bytes_per_task
            node.shuffle_bytes -= freed
            if node.state == DECOM:
                self._maybe_release(node)
        job.holders.clear()

    def _finish(self, node: Node, bid: int) -> None:
        b = node.batches.pop(bid, None)
        if b is None:
            return
        job, st, k, redo = b
        node.busy -= k
        if node.busy == 0:
            node.idle_since = self.now
        self.running -= k
        stage = job.spec.stages[st]
        if stage.shuffle_bytes_per_task:
            key = (job, st)
            node.outputs[key] = node.outputs.get(key, 0) + k
            node.shuffle_bytes += k * stage.shuffle_bytes_per_task
            job.holders.add(node)
        if redo:
            job.redo_running -= k
        else:
            job.running -= k
            job.done += k
        if job.pending or job.redo:
            self._wait(job)
        cur = job.spec.stages[job.stage]
        if (
            job.done >= cur.tasks
            and job.running == 0
            and job.redo_running == 0
            and not job.redo
            and job.pending == 0
        ):
            if job.stage + 1 >= len(job.spec.stages) or job.spec.stages[job.stage + 1].tasks == 0:
                self.task_jobs -= 1
            self._next_stage(job)
        if node.state == DECOM:
            self._maybe_release(node)

    def _dispatch(self) -> None:
        if self.pending <= 0 or not self.ready:
            return
        S = self.S
        free_nodes = [n for n in self.ready.values() if n.busy < S]
        if not free_nodes:
            return
        free_total = 0
        for n in free_nodes:
            free_total += S - n.busy
        slots = min(free_total, self.pending)
        # Fair share: each slot to the waiting job with the fewest running tasks. The heap holds
        # (running tasks, version, job); an entry is valid while its version is the job's.
        grants: dict[Job, int] = {}
        fair = self._fair
        left = slots
        while left > 0 and fair:
            key, ver, job = fair[0]
            if ver != job.ver:
                heapq.heappop(fair)
                continue
            waiting = job.waiting() - grants.get(job, 0)
            if waiting <= 0:
                heapq.heappop(fair)
                continue
            heapq.heappop(fair)
            nxt = fair[0][0] if fair else key + left
            g = min(left, waiting, max(1, nxt - key + 1))
            grants[job] = grants.get(job, 0) + g
            left -= g
            if waiting > g:
                self._seq += 1
                job.ver = self._seq
                heapq.heappush(fair, (key + g, self._seq, job))
        slots -= left
        if slots <= 0:
            return
        # Spread over the workers: one task per worker per round, emptiest first.
        free_nodes.sort(key=lambda n: n.busy)
        alloc = [0] * len(free_nodes)
        left = slots
        level = free_nodes[0].busy
        while left > 0 and level < S:
            for i, n in enumerate(free_nodes):
                if n.busy > level:
                    break
                if n.busy + alloc[i] == level:
                    alloc[i] += 1
                    left -= 1
                    if left == 0:
                        break
            level += 1
        # Pair the jobs' grants with the workers' allocations.
        ni = 0
        node_left = alloc[0]
        now = self.now
        jitter = self.jitter
        for job, g in grants.items():
            while g > 0:
                # what to run: lost shuffle first, then the current stage
                if job.redo:
                    item = job.redo[0]
                    st = item[1]
                    take_max = item[0]
                    redo = True
                else:
                    st = job.stage
                    take_max = job.pending
                    redo = False
                while node_left == 0:
                    ni += 1
                    node_left = alloc[ni]
                node = free_nodes[ni]
                k = min(g, take_max, node_left)
                g -= k
                node_left -= k
                if redo:
                    item[0] -= k
                    if item[0] == 0:
                        job.redo.pop(0)
                    job.redo_running += k
                else:
                    job.pending -= k
                    job.running += k
                self.pending -= k
                self.running += k
                if node.busy == 0:
                    node.idle_s += now - node.idle_since
                node.busy += k
                task_s = job.spec.stages[st].task_s
                jid = job.spec.job_id
                for _ in range(k):
                    if redo:
                        ordinal = job.redo_ord
                        job.redo_ord += 1
                    else:
                        ordinal = job.next_ord
                        job.next_ord += 1
                    self._bid += 1
                    node.batches[self._bid] = (job, st, 1, redo)
                    dur = task_s * task_factor(jid, st, ordinal, jitter) if jitter else task_s
                    self._push(now + dur, EV_FINISH, node, self._bid)


def run(
    trace: Trace,
    policy_factory: Callable[[], Policy],
    boot_s: float,
    *,
    record_period_s: float | None = None,
    warmup_s: float = 0.0,
) -> Result:
    return Sim(
        trace, policy_factory(), boot_s, record_period_s=record_period_s, warmup_s=warmup_s
    ).run()
