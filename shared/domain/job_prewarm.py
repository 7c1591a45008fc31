"""Job clusters of a scheduled run, created ahead of its fire time. Pure.

A scheduled run on a `new_cluster` (or a `job_clusters` entry) waits a whole cluster start
after its cron time before its first task runs. The jobs timer knows the next fire time, so
the cluster can be asked for earlier and be RUNNING when the run fires.

1. **What** (`prewarm_keys`): the compute of the run's root tasks (no `depends_on`) that the
   run would create itself: a task's own `new_cluster` ("task:<key>") or a shared job cluster
   ("jc:<job_cluster_key>"). Downstream tasks start only when their upstream tasks end, so
   their clusters are left to the run (created when the task becomes PENDING, as before).
2. **When** (`plan`): once the next fire is at most `lead_s` away and not past, and only
   while the job has a free slot (max_concurrent_runs) that no queued run waits for: a run
   that would wait in the queue or be skipped gets no cluster ahead (a job fired every
   minute whose runs take longer is not pre-warmed until a run ends); `lead_s` is the
   expected start of the slowest node type among those clusters (learned per workspace and
   node type, shared/domain/autoscale_prewarm.py) plus `tick_margin_s`, the jobs timer's
   period with slack (the timer is what notices that the fire came within reach). A job fired every
   minute whose clusters take longer than a minute to start is pre-warmed right after the
   previous fire.
3. **How it is tied to the run** (`Prewarmed`, `fire_run_id`, `adopt`): one record per job
   names the fire time, a run id reserved for that fire, and per compute key the cluster id
   and the spec it was created with. The record is created (create-if-absent, so one
   writer wins) *before* any cluster, and every creator creates the clusters under the ids of
   the stored record (a create by id is idempotent): whatever the number of timer instances
   and crashes, there is one cluster per (job, fire, compute key). The fire of that time
   takes the reserved run id, and the run starts with those clusters as its own
   (`Run.clusters`, `owned_clusters`) for every compute key whose spec is still the one it
   would create; the run then treats them as the job clusters it created: it submits its
   task once the cluster is RUNNING, creates it if it is missing, and terminates it at its
   end (JOB_FINISHED), like any job cluster.
4. **Cleanup** (`sweep`): a record whose clusters no run will use is marked `done`, its
   clusters terminated, then the record is deleted (a crash in between repeats the
   terminations, which are idempotent). That happens when the job is deleted, when it is no
   longer scheduled for that fire (paused, schedule changed, or the fire already passed
   without taking the reserved id), when the fire is `grace_ms` late with no run, and when
   the run under the reserved id ended without them (skipped by max_concurrent_runs,
   cancelled while queued): a final run's clusters are terminated; clusters the admitted run
   did not adopt (a changed spec) at once. A creator that finds, after its create, that the
   record is gone or done terminates what it created, so a cluster created concurrently with
   the sweep is not left behind.
5. **Opting out** (`enabled`): on for every scheduled job; the job tag
   `sparkplane.prewarm: "false"` turns it off (the run then creates its clusters at the fire,
   as before). The cost of pre-warming is the time a cluster runs before its fire: about the
   margin of the expected start (its standard deviations) plus `tick_margin_s`, per fire.
6. **Why** (`creation_details`): the cluster's CREATING event names the cause
   (`SCHEDULED_RUN`), the job, its schedule, the fire time and the expected start used
   (`job_id`, `schedule`, `fire_time`, `expected_start_s`, `lead_s`, and a sentence in `why`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

from shared.domain.job_settings import JobSettings, Task
from shared.domain.job_state import Job, Run, new_run
from shared.domain.job_steps import cluster_spec_for, compute_key

# A job tag: "false" turns pre-warming off for the job (on by default).
OPT_OUT_TAG = "sparkplane.prewarm"


@dataclass(frozen=True, slots=True)
class JobPrewarmParams:
    # Added to the expected start: the jobs timer's period (5 s by default) with slack.
    tick_margin_s: float = 10.0
    # A fire this late with no run under the reserved id: its clusters are terminated.
    grace_ms: int = 10 * 60_000


class Prewarmed(BaseModel):
    """The job clusters pre-created for one fire of one job."""

    kind: Literal["fire"] = "fire"  # what the sweep scans for
    job_id: int
    workspace_id: str
    user: str = ""
    # The job's Quartz cron expression and time zone, as the event shows them.
    schedule: str = ""
    fire_ms: int
    run_id: int
    # Compute key -> cluster id, and the spec each was created with.
    clusters: dict[str, str] = Field(default_factory=dict)
    specs: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # The learned start of the slowest node type, and how far ahead of the fire (plus margin).
    expected_start_s: float = 0.0
    lead_s: float = 0.0
    created_ms: int = 0
    # Marked by the sweep before it terminates the clusters (then the record is deleted).
    done: bool = False


def enabled(settings: JobSettings) -> bool:
    """On unless the job's tag `sparkplane.prewarm` is "false" (or "off", "0", "no")."""
    value = settings.tags.get(OPT_OUT_TAG, "true").strip().lower()
    return value not in ("false", "off", "0", "no")


def prewarm_keys(settings: JobSettings) -> dict[str, Task]:
    """The compute keys of the root tasks that run on a cluster the run creates (the first
    task of each key); none for a job that opted out."""
    out: dict[str, Task] = {}
    if not enabled(settings):
        return out
    for t in settings.tasks:
        if t.depends_on or t.existing_cluster_id is not None:
            continue
        if t.new_cluster is None and t.job_cluster_key is None:
            continue
        out.setdefault(compute_key(t), t)
    return out


def node_types(settings: JobSettings) -> list[str]:
    """The node types of the clusters `plan` would create (their expected starts set the lead);
    a spec drawing from an instance pool names none ("")."""
    out = []
    for t in prewarm_keys(settings).values():
        spec = _spec(settings, t)
        out.append(str(spec.get("node_type_id") or spec.get("driver_node_type_id") or ""))
    return out


def _spec(settings: JobSettings, t: Task) -> Mapping[str, Any]:
    if t.job_cluster_key is not None:
        for jc in settings.job_clusters:
            if jc.job_cluster_key == t.job_cluster_key:
                return jc.new_cluster
        return {}
    return t.new_cluster or {}


def _stub_run(job: Job, run_id: int, fire_ms: int) -> Run:
    """The run the fire will create, as far as its clusters' specs go."""
    return new_run(
        run_id=run_id,
        workspace_id=job.workspace_id,
        settings=job.settings,
        user=job.creator_user_name,
        now=fire_ms,
        job_id=job.job_id,
        trigger="PERIODIC",
        fire_ms=fire_ms,
    )


def due(job: Job, *, now: int, lead_s: float) -> bool:
    """The next fire is within `lead_s` and not past (cheap: checked before anything is read)."""
    fire = job.schedule_next_ms
    return fire is not None and 0 < fire - now <= lead_s * 1000


def plan(
    job: Job,
    *,
    now: int,
    expected_start_s: float,
    run_id: int,
    new_cluster_id: Callable[[], str],
    p: JobPrewarmParams = JobPrewarmParams(),
) -> Prewarmed | None:
    """The record of the clusters to create now for the job's next fire, or None (not
    scheduled, a fire being carried out, no free slot, nothing to create, or the fire not
    within the expected start plus the margin, or already past). The caller creates it only
    if the job has none."""
    fire = job.schedule_next_ms
    if job.state != "SCHEDULED" or fire is None or job.pending_fire is not None:
        return None
    if len(job.active_runs) + len(job.waiting_runs) >= job.settings.max_concurrent_runs:
        return None  # the fired run would wait for a slot (or be skipped): no cluster yet
    keys = prewarm_keys(job.settings)
    lead_s = expected_start_s + p.tick_margin_s
    if not keys or not due(job, now=now, lead_s=lead_s):
        return None
    stub = _stub_run(job, run_id, fire)
    cron = job.settings.schedule
    return Prewarmed(
        job_id=job.job_id,
        workspace_id=job.workspace_id,
        user=job.creator_user_name,
        schedule=f"{cron.quartz_cron_expression} {cron.timezone_id}" if cron else "",
        fire_ms=fire,
        run_id=run_id,
        clusters={ck: new_cluster_id() for ck in keys},
        specs={ck: cluster_spec_for(stub, t) for ck, t in keys.items()},
        expected_start_s=expected_start_s,
        lead_s=lead_s,
        created_ms=now,
    )


def creation_details(rec: Prewarmed, now: int) -> dict[str, Any]:
    """What the CREATING event of a pre-created cluster says about why it was created."""
    ahead_s = max(0.0, (rec.fire_ms - now) / 1000)
    return {
        "cause": "SCHEDULED_RUN",
        "job_id": rec.job_id,
        "schedule": rec.schedule,
        "fire_time": rec.fire_ms,
        "expected_start_s": round(rec.expected_start_s, 1),
        "lead_s": round(rec.lead_s, 1),
        # Not "reason": the SDK parses that as a TerminationReason object.
        "why": (
            f"job {rec.job_id} fires in {ahead_s:.0f} s; "
            f"a start takes about {rec.expected_start_s:.0f} s"
        ),
    }


def fire_run_id(rec: Prewarmed | None, fire_ms: int, default: int) -> int:
    """The run id of the fire at `fire_ms`: the one reserved for it, if any."""
    if rec is not None and not rec.done and rec.fire_ms == fire_ms:
        return rec.run_id
    return default


def adopt(run: Run, rec: Prewarmed | None) -> Run:
    """The fired run with the pre-created clusters of its fire as its own job clusters (those
    whose spec is still the one the run would create); unchanged otherwise."""
    if rec is None or rec.done or rec.run_id != run.run_id or rec.fire_ms != run.fire_ms:
        return run
    keys = prewarm_keys(run.settings)
    taken = {
        ck: cid
        for ck, cid in rec.clusters.items()
        if ck in keys
        and ck not in run.clusters
        and cluster_spec_for(run, keys[ck]) == rec.specs.get(ck)
    }
    if not taken:
        return run
    r = run.model_copy(deep=True)
    for ck, cid in taken.items():
        r.clusters[ck] = cid
        r.owned_clusters.append(cid)
    return r


@dataclass(frozen=True, slots=True)
class Sweep:
    """What to do with a record: terminate these clusters; `finish`: mark it done (then, after
    the terminations, delete it); `why` for the log."""

    terminate: tuple[str, ...] = ()
    finish: bool = False
    why: str = ""


KEEP = Sweep()


def sweep(
    rec: Prewarmed,
    job: Job | None,
    run: Run | None,
    *,
    now: int,
    p: JobPrewarmParams,
) -> Sweep:
    """The record's fate. `job` and `run` (under the reserved id) must be read in this order:
    a fire that cleared its `pending_fire` before the job was read has created its run."""
    every = tuple(rec.clusters.values())
    if run is not None and run.job_id != rec.job_id:
        run = None  # the reserved id went to another run (a collision): not ours
    if rec.done:
        return Sweep(every, finish=True, why="finishing")
    if run is not None:
        unused = tuple(c for c in every if c not in run.owned_clusters)
        if run.final:
            return Sweep(every, finish=True, why="the run ended")
        if not run.admitted:
            return Sweep(unused, why="the run waits") if unused else KEEP
        return Sweep(unused, finish=True, why="adopted by the run")
    if job is None:
        return Sweep(every, finish=True, why="the job was deleted")
    if job.pending_fire is not None and job.pending_fire.run_id == rec.run_id:
        return KEEP  # the fire is being carried out
    if job.state == "SCHEDULED" and job.schedule_next_ms == rec.fire_ms:
        if now < rec.fire_ms + p.grace_ms:
            return KEEP
        return Sweep(every, finish=True, why="the fire did not happen")
    return Sweep(every, finish=True, why="the job is no longer scheduled for this fire")
