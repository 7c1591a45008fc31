"""Job clusters created ahead of a scheduled run (the rule: shared/domain/job_prewarm.py).

Called by the jobs timer (`Scheduler.tick`), after the fires. Each tick:
- `sweep`: every `prewarm_fire` record (kind "prewarm_fire", partition the workspace, id the
  job) is judged against its job and the run under its reserved id, read in that order; a
  record whose clusters no run will use is marked done (ETag), its clusters terminated, then
  it is deleted.
- `plan`: for every scheduled job whose next fire is within an expected start (learned per
  node type by `Prewarm`) plus the timer margin, the record is created if the job has none
  (create-if-absent: one writer wins, the others use its cluster ids), then its clusters are
  created under those ids (idempotent) with a CREATING event naming the schedule. Each
  creation is recorded as a start to learn from. A creator that finds its record gone or done
  afterwards terminates what it created (the sweep ran in between).
The fire (`Scheduler._fire`) reads the record: the run of that fire takes the reserved run id
and the clusters (`adopt`); from then on they are the run's job clusters.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from shared.domain import cluster as cdom
from shared.domain import job_prewarm as rules
from shared.domain import jobs as dom
from shared.errors import ApiError, InvalidParameterValue, InvalidState
from shared.ports import AlreadyExists, NotFound, PreconditionFailed, Record
from shared.services.auth import Principal
from shared.services.documents import Documents
from shared.services.job_docs import JobDocs, job_doc_id, scheduled_jobs
from shared.services.prewarm import Prewarm

log = logging.getLogger("sparkplane.jobs.prewarm")

KIND = "prewarm_fire"
# A record outlives any fire it can be for; the TTL only bounds what a lost workspace leaves.
TTL_S = 7 * 86_400


class JobPrewarm:
    def __init__(
        self, docs: JobDocs, prewarm: Prewarm, params: rules.JobPrewarmParams | None = None
    ) -> None:
        self.docs = docs
        self.prewarm = prewarm
        self.clusters = prewarm.clusters
        self.clock = docs.clock
        self.params = params or rules.JobPrewarmParams()
        self.records = Documents(docs.store, KIND, rules.Prewarmed, ttl_s=TTL_S)

    def load(self, ws: str, job_id: int) -> rules.Prewarmed | None:
        got = self.records.load(ws, job_doc_id(job_id))
        return None if got is None else got[0]

    def expected_start_s(
        self, job: dom.Job, known: dict[tuple[str, str], float] | None = None
    ) -> float:
        """The slowest expected start among the node types of the job's clusters, in its
        workspace (`known`: the starts read this tick)."""
        known = {} if known is None else known
        keys = [(job.workspace_id, nt) for nt in rules.node_types(job.settings)]
        for k in keys:
            if k not in known:
                known[k] = self.prewarm.expected_start_s(*k)
        return max((known[k] for k in keys), default=0.0)

    # ------------------------------------------------------------------ the timer

    def tick(self, scheduled: Iterable[dom.Job] | None = None) -> dict[str, int]:
        """Create job clusters ahead of the `scheduled` jobs' fires (None: every SCHEDULED job
        in the store; the jobs timer passes the ones its own scan read)."""
        now = self.clock.now_ms()
        swept = self.sweep(now)
        created = 0
        known: dict[tuple[str, str], float] = {}  # expected starts, read once a tick
        for job in scheduled_jobs(self.docs.store) if scheduled is None else scheduled:
            if job.pending_fire is not None or not rules.prewarm_keys(job.settings):
                continue
            expected = self.expected_start_s(job, known)
            if not rules.due(job, now=now, lead_s=expected + self.params.tick_margin_s):
                continue  # most jobs: their fire is far (no read of their record)
            try:
                created += self._prewarm(job, now, expected)
            except Exception:  # one job's failure must not stop the others' pre-warming
                log.exception("prewarm of a job failed", extra={"job_id": job.job_id})
        return {"job_clusters_created": created, "job_prewarms_finished": swept}

    def _prewarm(self, job: dom.Job, now: int, expected_s: float) -> int:
        ws = job.workspace_id
        rec = self.load(ws, job.job_id)
        if rec is None:
            planned = rules.plan(
                job,
                now=now,
                expected_start_s=expected_s,
                run_id=self.docs.next_slot() * dom.TASK_SLOTS,
                new_cluster_id=lambda: cdom.new_cluster_id(now),
                p=self.params,
            )
            if planned is None:
                return 0
            try:
                self.records.create(ws, job_doc_id(job.job_id), planned)
                rec = planned
            except AlreadyExists:  # another timer instance planned first: its ids stand
                rec = self.load(ws, job.job_id)
        if rec is None or rec.done or rec.fire_ms != job.schedule_next_ms:
            return 0
        return self._create(rec, now)

    def _create(self, rec: rules.Prewarmed, now: int) -> int:
        owner = Principal(rec.workspace_id, rec.user, "job-prewarm")
        made = 0
        for ck, cid in rec.clusters.items():
            spec = rec.specs[ck]
            try:
                created = self.clusters.create_for_job(
                    owner, cid, spec, why=rules.creation_details(rec, now)
                )
            except (InvalidParameterValue, InvalidState) as e:
                # Permanent for this fire (a spec refused, the workspace being deleted): the
                # run meets the same answer when it creates the cluster itself.
                log.warning(
                    "prewarm refused",
                    extra={"job_id": rec.job_id, "cluster_id": cid, "error": e.message},
                )
                continue
            if not created:
                continue
            made += 1
            node_type = str(spec.get("node_type_id") or spec.get("driver_node_type_id") or "")
            self.prewarm.record_start(rec.workspace_id, cid, node_type)
            log.info(
                "job cluster created ahead of its run",
                extra={"job_id": rec.job_id, "cluster_id": cid, "fire_ms": rec.fire_ms},
            )
            if not self._wanted(rec, cid):
                self._terminate(rec, [cid])
        return made

    def _wanted(self, rec: rules.Prewarmed, cid: str) -> bool:
        """After a create: the record still stands, or the run already took the cluster."""
        cur = self.load(rec.workspace_id, rec.job_id)
        if cur is not None and not cur.done and cur.run_id == rec.run_id:
            return True
        got = self.docs.load_run(rec.workspace_id, rec.run_id)
        return got is not None and not got[0].final and cid in got[0].owned_clusters

    # ------------------------------------------------------------------ the sweep

    def sweep(self, now: int) -> int:
        finished = 0
        for r in list(self.docs.store.scan(KIND, field="kind", values=["fire"])):
            try:
                finished += self._sweep_one(r, now)
            except Exception:  # one record's failure must not stop the others: next tick
                log.exception("prewarm sweep failed", extra={"record": r.id})
        return finished

    def _sweep_one(self, r: Record, now: int) -> int:
        rec = self.records.parse(r)
        ws = rec.workspace_id
        job = self.docs.find_job(ws, rec.job_id)  # the job first, then the run (see `sweep`)
        run = self.docs.load_run(ws, rec.run_id)
        s = rules.sweep(
            rec,
            job[0] if job else None,
            run[0] if run else None,
            now=now,
            p=self.params,
        )
        if s.finish and not rec.done:
            rec.done = True
            try:
                r = self.records.save(r, rec)
            except PreconditionFailed:  # changed meanwhile: judged again at the next tick
                return 0
        if s.terminate:
            log.info("prewarmed job clusters ended", extra={"job_id": rec.job_id, "why": s.why})
            self._terminate(rec, s.terminate)
        if not s.finish:
            return 0
        try:
            self.records.delete(r.pk, r.id, etag=r.etag)
        except (NotFound, PreconditionFailed):  # deleted or re-planned by another instance
            return 0
        return 1

    def _terminate(self, rec: rules.Prewarmed, cluster_ids: Any) -> None:
        owner = Principal(rec.workspace_id, rec.user, "job-prewarm")
        for cid in cluster_ids:
            try:
                self.clusters.terminate_for_job(owner, cid)
            except ApiError as e:  # never created, or deleted with its workspace: nothing to end
                log.info("prewarm terminate refused", extra={"cluster_id": cid, "error": e.message})
