"""The run machinery behind the `job-runs` queue: admission to a job's slots and `advance`.

- Slots: max_concurrent_runs, with the job document as the ledger of slots. A new run is
  admitted at once (so successive triggers are admitted in order), waits in the job's queue or
  is skipped; a finished run gives its slot back and the first waiting run is kicked.
- RunQueue.advance loads a run, observes its clusters (their documents) and its tasks (the
  `task` documents the driver agents report into, shared/services/tasks.py), lets the pure
  planner (`shared/domain/jobs.py`) decide, saves the run with an ETag check, then carries out
  the planner's "ensure" effects and schedules a follow-up while the run is active.
  Level-triggered: a duplicate or late message is one more evaluation. The queue also carries
  `fire` messages (a job's schedule due at the message's time), handed to the scheduler.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from shared.domain import cluster as cdom
from shared.domain import jobs as dom
from shared.domain.jobs import LifeCycle as L
from shared.domain.jobs import Result as R
from shared.errors import ApiError, InvalidParameterValue, InvalidState
from shared.ports import Clock, PreconditionFailed, Record
from shared.services.auth import Principal
from shared.services.clusters import ClusterService
from shared.services.documents import retry_on_conflict
from shared.services.job_docs import JobDocs
from shared.services.tasks import TaskService

log = logging.getLogger("sparkplane.jobs")

# A cluster running a task is marked active this often (idle termination must not end it).
ACTIVITY_EVERY_MS = 30_000


class Slots:
    """Admission of runs of a job to its max_concurrent_runs slots."""

    def __init__(self, docs: JobDocs, clock: Clock) -> None:
        self.docs = docs
        self.clock = clock

    def start(self, run: dom.Run, rec: Record) -> None:
        """Admit a new run at once (so successive triggers are admitted in order), then send
        its first `advance` (which admits it if this could not)."""

        def admit() -> tuple[dom.Run, Record] | None:
            nonlocal run, rec
            try:
                return self.admission(run, rec)
            except PreconditionFailed:  # the run changed: admit it as it is now
                got = self.docs.load_run(run.workspace_id, run.run_id)
                if got is None:
                    return None
                run, rec = got
                raise

        try:
            admitted = retry_on_conflict(admit, f"run {run.run_id}")
        except PreconditionFailed:  # written by others all along: its `advance` admits it
            admitted = run, rec
        if admitted is None:
            return
        run, rec = admitted
        self.docs.kick(run, f"cmd:{run.run_id}:{rec.etag}")
        if run.final:
            self.release(run)

    def admission(self, run: dom.Run, rec: Record) -> tuple[dom.Run, Record]:
        """Decide whether a queued run starts, waits or is skipped (max_concurrent_runs), with
        the job document as the ledger of slots. Raises PreconditionFailed if the run document
        changed meanwhile."""
        if run.admitted or run.final:
            return run, rec
        now = self.clock.now_ms()
        if run.job_id is None:
            new = dom.admit(run, now=now)
            return new, self.docs.save_run(rec, new)
        if run.idempotency_token is not None:
            holder = self.docs.idempotency.find(run.workspace_id, run.idempotency_token)
            if holder is not None and int(holder) != run.run_id:
                # Left behind by a request that lost an idempotency race: never run it.
                new = dom.skip(run, now=now, message="Duplicate run.", result=None, code="SKIPPED")
                return new, self.docs.save_run(rec, new)
        job_id = run.job_id

        def take() -> tuple[dom.Job, dom.Admission] | None:
            got = self.docs.find_job(run.workspace_id, job_id)
            if got is None:
                return None
            job, jrec = got
            decision = dom.admission(job, run.run_id, queue_enabled=run.queue_enabled)
            if decision == "WAIT" and now - run.start_time >= dom.QUEUE_TIMEOUT_MS:
                decision = "SKIP"
            if decision != "HELD":
                updated = dom.take_slot(job, run.run_id, decision)
                if (updated.active_runs, updated.waiting_runs) != (
                    job.active_runs,
                    job.waiting_runs,
                ):
                    self.docs.jobs.save(jrec, updated)
            return job, decision

        taken = retry_on_conflict(take, f"job {job_id}")
        if taken is None:
            new = dom.skip(
                run,
                now=now,
                message=f"Job {job_id} was deleted.",
                result=R.CANCELED,
                code="CANCELED",
            )
            return new, self.docs.save_run(rec, new)
        job, decision = taken
        max_runs = job.settings.max_concurrent_runs
        if decision in ("ADMIT", "HELD"):
            new = dom.admit(run, now=now)
        elif decision == "WAIT":
            new = dom.wait_in_queue(run, now=now, max_concurrent=max_runs)
        else:
            new = dom.skip_max_concurrent(run, now=now, max_concurrent=max_runs)
        if new is run:
            return run, rec
        return new, self.docs.save_run(rec, new)

    def release(self, run: dom.Run) -> None:
        """A finished run gives its slot back; the first queued run is kicked."""
        if run.job_id is not None:
            self._give_back(run.workspace_id, run.job_id, [run.run_id])

    def heal(self, job: dom.Job) -> int:
        """Slots held by runs that are gone or finished (a release lost to a crash)."""
        stale = []
        for rid in [*job.active_runs, *job.waiting_runs]:
            got = self.docs.load_run(job.workspace_id, rid)
            if got is None or got[0].final:
                stale.append(rid)
        if stale and not self._give_back(job.workspace_id, job.job_id, stale):
            return 0
        return len(stale)

    def _give_back(self, ws: str, job_id: int, run_ids: list[int]) -> bool:
        """The slots of `run_ids` go back to the job, whose first waiting run is kicked; False
        when the job is gone."""

        def step() -> bool:
            got = self.docs.find_job(ws, job_id)
            if got is None:
                return False
            job, jrec = got
            if any(r in job.active_runs or r in job.waiting_runs for r in run_ids):
                job = dom.release(job, run_ids)
                jrec = self.docs.jobs.save(jrec, job)
            self.kick_waiting(job, jrec.etag)
            return True

        try:
            return retry_on_conflict(step, f"job {job_id}")
        except PreconditionFailed:  # written by others all along: the jobs timer heals it
            return True

    def kick_waiting(self, job: dom.Job, etag: str) -> None:
        if job.waiting_runs and len(job.active_runs) < job.settings.max_concurrent_runs:
            head = job.waiting_runs[0]
            got = self.docs.load_run(job.workspace_id, head)
            if got is not None:
                self.docs.kick(got[0], f"slot:{head}:{etag}")


class RunQueue:
    """The handler of the `job-runs` queue: one `advance` of one run per message."""

    def __init__(
        self,
        docs: JobDocs,
        slots: Slots,
        clusters: ClusterService,
        tasks: TaskService,
        clock: Clock,
        timing: dom.Timing,
    ) -> None:
        self.docs = docs
        self.slots = slots
        self.clusters = clusters
        self.tasks = tasks
        self.clock = clock
        self.timing = timing
        # Job clusters whose creation failed (an invalid spec): seen as TERMINATED by the run.
        self._create_errors: dict[str, str] = {}
        # The handler of `fire` messages (a job's schedule due now): the jobs scheduler's.
        self.on_fire: Callable[[str, int], int] | None = None

    def handle(self, body: bytes) -> None:
        msg: dict[str, Any] = json.loads(body)
        match msg.get("type"):
            case "advance":
                self.advance(str(msg["workspace_id"]), int(msg["run_id"]))
            case "fire" if self.on_fire is not None:
                self.on_fire(str(msg["workspace_id"]), int(msg["job_id"]))
            case other:
                raise ValueError(f"unknown jobs message type {other!r}")

    def advance(self, ws: str, run_id: int) -> None:
        retry_on_conflict(lambda: self._advance(ws, run_id), f"run {run_id}")

    def _advance(self, ws: str, run_id: int) -> None:
        """One evaluation; PreconditionFailed when somebody wrote in between (evaluated again
        on the new document)."""
        got = self.docs.load_run(ws, run_id)
        if got is None:
            return
        run, rec = got
        if run.final:
            self.slots.release(run)
            return
        if not run.admitted:
            run, rec = self.slots.admission(run, rec)
            if run.final:
                self.slots.release(run)
                return
            if not run.admitted:
                self.docs.follow_up(run, rec.etag, max(self.timing.poll_ms, 5000))
                return
        obs = self._observe(run)
        plan = dom.advance(
            run,
            obs,
            now=self.clock.now_ms(),
            new_cluster_id=lambda: cdom.new_cluster_id(self.clock.now_ms()),
            timing=self.timing,
        )
        if plan.changed:
            rec = self.docs.save_run(rec, plan.run)
        self._carry_out(plan)
        self._forget_tasks(run, plan.run)
        self._mark_busy(plan.run)
        if plan.run.final:
            log.info(
                "run finished",
                extra={
                    "run_id": run_id,
                    "state": plan.run.state.value,
                    "result": plan.run.result.value if plan.run.result else None,
                },
            )
            self.slots.release(plan.run)
        elif plan.requeue_ms is not None:
            self.docs.follow_up(plan.run, rec.etag, plan.requeue_ms)

    def view(self, ws: str, cluster_id: str) -> dom.ClusterView:
        """A cluster as the planner sees it."""
        if cluster_id in self._create_errors:
            return dom.ClusterView(
                state="TERMINATED",
                message=self._create_errors[cluster_id],
                reason="INVALID_ARGUMENT",
            )
        c = self.clusters.find(ws, cluster_id)
        if c is None or c.deleted:
            return dom.MISSING
        return dom.ClusterView(
            state=c.state.value,
            message=c.state_message,
            reason=c.termination_reason.code if c.termination_reason else None,
            spark_context_id=c.spark_context_id,
            spark_env_vars=dict(c.spec.spark_env_vars),
            spark_version=c.spec.spark_version,
        )

    def _observe(self, run: dom.Run) -> dom.Observed:
        ids = set(run.owned_clusters)
        ids |= {a.cluster_id for a in run.tasks if a.cluster_id}
        ids |= {t.existing_cluster_id for t in run.settings.tasks if t.existing_cluster_id}
        clusters = {cid: self.view(run.workspace_id, cid) for cid in ids}
        subs = {
            a.submission_key: self.tasks.status(
                a.cluster_id,
                a.submission_key,
                cluster_gone=clusters[a.cluster_id].state in dom.DEAD,
            )
            for a in run.tasks
            if a.submission_key and a.cluster_id and not a.process_done
        }
        return dom.Observed(clusters=clusters, submissions=subs)

    def _forget_tasks(self, before: dom.Run, after: dom.Run) -> None:
        """Tasks whose end the saved run now holds (logs, exit code) leave their cluster's
        list (their documents would otherwise wait for their TTL)."""
        done = {a.run_id for a in before.tasks if a.process_done}
        for a in after.tasks:
            if a.process_done and a.run_id not in done and a.submission_key and a.cluster_id:
                self.tasks.forget(a.cluster_id, a.submission_key)

    def _mark_busy(self, run: dom.Run) -> None:
        """A running task is activity of its cluster, as Databricks counts it: the idle timer
        reads the same `activity` document the cluster agent's heartbeats write (a task that
        runs plain Python between its Spark queries shows no Spark activity)."""
        now = self.clock.now_ms()
        for cid in {a.cluster_id for a in run.tasks if a.state == L.RUNNING and a.cluster_id}:
            self.clusters.mark_active(cid, now, every_ms=ACTIVITY_EVERY_MS)

    def _carry_out(self, plan: dom.Plan) -> None:
        run = plan.run
        p = Principal(workspace_id=run.workspace_id, user=run.creator_user_name, token_id="jobs")
        for action in plan.actions:
            try:
                match action:
                    case dom.EnsureCluster():
                        self._ensure_cluster(run, action)
                    case dom.StartCluster(cluster_id=cid):
                        self.clusters.start(p, {"cluster_id": cid})
                    case dom.TerminateCluster(cluster_id=cid):
                        self.clusters.terminate_for_job(p, cid)
                    case dom.Submit():
                        self.tasks.submit(
                            action.key,
                            cluster_id=action.cluster_id,
                            workspace_id=action.workspace_id,
                            python_file=action.python_file,
                            parameters=action.parameters,
                            env=action.env,
                        )
                    case dom.CancelSubmission(key=key, cluster_id=cid):
                        self.tasks.cancel(cid, key)
            except ApiError as e:  # refused (a cluster gone, a state): the next advance sees it
                log.warning(
                    "run action refused",
                    extra={"run_id": run.run_id, "action": repr(action)[:200], "error": e.message},
                )
            except Exception:  # a failed send or store call: the follow-up tries again
                log.exception("run action failed", extra={"run_id": run.run_id})

    def _ensure_cluster(self, run: dom.Run, a: dom.EnsureCluster) -> None:
        """Create the job cluster unless it exists; a spec that cannot be created is the
        cluster's end as the run sees it."""
        owner = Principal(run.workspace_id, run.creator_user_name, "job-run")
        try:
            created = self.clusters.create_for_job(owner, a.cluster_id, a.spec)
        except (InvalidParameterValue, InvalidState) as e:
            self._create_errors[a.cluster_id] = e.message
            return
        if created:
            log.info(
                "job cluster created", extra={"run_id": run.run_id, "cluster_id": a.cluster_id}
            )
