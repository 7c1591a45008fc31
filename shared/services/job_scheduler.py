"""The jobs timer: fire due schedules, heal the slot ledgers, re-kick runs that stopped moving.

A fire is written into the job document (`pending_fire`, with the run id it will create) before
its run is created, so a crash neither loses nor doubles it: the next tick finds the fire and
creates the run under the same id, or finds the run and only clears the fire.

A fire is carried out at its time, not at the next tick: a tick that finds a fire due within
`JOB_PREWARM.tick_margin_s` sends a `fire` message to the jobs queue, scheduled for the fire
time (message id per job and fire: one message however many ticks send it); its handler is
`fire` (a fire found not due yet is left to the tick, which fires anything due).
The job clusters of a scheduled run are created ahead of the fire (shared/services/
job_prewarm.py); the fire takes the run id reserved for it and the run starts with them.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from shared.domain import job_prewarm as jp
from shared.domain import jobs as dom
from shared.ports import AlreadyExists, Bus, Clock, PreconditionFailed
from shared.services.documents import retry_on_conflict
from shared.services.job_docs import JOB, RUN, JobDocs
from shared.services.job_prewarm import JobPrewarm
from shared.services.job_runs import Slots
from shared.services.messages import advance_message, fire_message
from shared.services.prewarm import Prewarm
from shared.services.prewarm import tick as prewarm_tick
from shared.settings import Settings

log = logging.getLogger("sparkplane.jobs")


class Scheduler:
    def __init__(
        self,
        docs: JobDocs,
        slots: Slots,
        bus: Bus,
        clock: Clock,
        settings: Settings,
        prewarm: Prewarm | None = None,
    ) -> None:
        self.docs = docs
        self.prewarm = prewarm
        self.job_prewarm = JobPrewarm(docs, prewarm) if prewarm is not None else None
        self.prewarm_horizon_ms = prewarm.horizon_ms() if prewarm is not None else 0
        # Fires due within this long are sent to the queue for their exact time.
        self.fire_ahead_ms = int(jp.JobPrewarmParams().tick_margin_s * 1000)
        self.slots = slots
        self.bus = bus
        self.clock = clock
        self.queue = settings.jobs_queue
        self.stuck_ms = max(1, int(settings.jobs_stuck_after_s * 1000))

    def tick(self) -> dict[str, int]:
        """Fire due schedules, heal the slot ledgers, re-kick runs that stopped moving."""
        now = self.clock.now_ms()
        fired = healed = kicked = 0
        store = self.docs.store
        # The scheduled jobs as this tick leaves them whose next fire is near enough for the
        # pre-warming passes to act on (one scan for the three; the far ones are not kept).
        soon: list[dom.Job] = []
        for rec in store.scan(JOB, field="state", values=["SCHEDULED", "IDLE"]):
            if self._nothing_to_do(rec.body, now):
                continue  # most jobs: a fire far off and no run
            job = dom.Job.model_validate(rec.body)
            if job.pending_fire is not None or (
                job.state == "SCHEDULED"
                and job.schedule_next_ms is not None
                and job.schedule_next_ms <= now
            ):
                n, after = self._fire_due(job)
                fired += n
            else:
                after = job
                if job.state == "SCHEDULED" and job.schedule_next_ms is not None:
                    self._fire_at(job, job.schedule_next_ms, now)
            nxt = after.schedule_next_ms
            if (
                after.state == "SCHEDULED"
                and nxt is not None
                and 0 <= nxt - now <= self.prewarm_horizon_ms
            ):
                soon.append(after)
            if job.active_runs or job.waiting_runs:
                healed += self.slots.heal(job)
        active = [s.value for s in dom.ACTIVE]
        for rec in store.scan(RUN, field="state", values=active):
            updated = int(rec.body.get("updated_ms", 0))
            if now - updated < self.stuck_ms:
                continue
            run_id = int(rec.body["run_id"])
            msg_id = f"kick:{run_id}:{rec.etag}:{now // self.stuck_ms}"
            self.bus.send(self.queue, [advance_message(rec.pk, run_id, msg_id)])
            kicked += 1
        if self.prewarm is not None:
            prewarm_tick(self.prewarm, soon)  # capacity ahead of predicted and scheduled use
        if self.job_prewarm is not None:
            try:
                self.job_prewarm.tick(soon)  # job clusters ahead of scheduled runs
            except Exception:  # the scheduler's own work is done; the next tick tries again
                log.exception("job prewarm tick failed")
        return {"fired": fired, "healed": healed, "kicked": kicked}

    def _nothing_to_do(self, body: dict[str, Any], now: int) -> bool:
        """A job document this tick would neither fire, send a fire for, heal nor pre-warm
        for (read from the stored fields: the tick reads every scheduled job)."""
        if body.get("pending_fire") or body.get("active_runs") or body.get("waiting_runs"):
            return False
        nxt = body.get("schedule_next_ms")
        if body.get("state") != "SCHEDULED" or nxt is None:
            return True
        return nxt - now > max(self.fire_ahead_ms, self.prewarm_horizon_ms)

    def _fire_due(self, job: dom.Job) -> tuple[int, dom.Job]:
        """Fire the job's due trigger: 1 when it fired, and the job as the fire left it (its
        next fire time, which the pre-warming passes of this tick look at)."""
        try:
            n = self.fire(job.workspace_id, job.job_id)
        except Exception:  # one job's failure must not stop the others' fires
            log.exception("schedule fire failed", extra={"job_id": job.job_id})
            return 0, job
        got = self.docs.find_job(job.workspace_id, job.job_id) if n else None
        return n, got[0] if got is not None else job

    def _fire_at(self, job: dom.Job, fire_ms: int, now: int) -> None:
        """A fire within the margin: a `fire` message scheduled for its time, so the run does
        not wait for the next tick (a lost send: the tick fires it)."""
        if fire_ms - now > self.fire_ahead_ms:
            return
        ws = job.workspace_id
        msg = fire_message(ws, job.job_id, f"fire:{ws}:{job.job_id}:{fire_ms}", fire_ms)
        try:
            self.bus.send(self.queue, [msg])
        except Exception:  # the bus refuses: the tick at or after the fire time fires it
            log.exception("send fire failed", extra={"job_id": job.job_id})

    def fire(self, ws: str, job_id: int) -> int:
        """One due schedule: write the fire into the job document, create its run (the id
        written there), admit and kick it, then clear the fire. 1 when it fired."""
        try:
            return retry_on_conflict(lambda: self._fire(ws, job_id), f"job {job_id}")
        except PreconditionFailed:  # written by others all along: the next tick fires it
            return 0

    def _fire(self, ws: str, job_id: int) -> int:
        got = self.docs.find_job(ws, job_id)
        if got is None:
            return 0
        job, jrec = got
        now = self.clock.now_ms()
        updated, fire = dom.schedule_tick(
            job, now=now, new_run_id=self.docs.next_slot() * dom.TASK_SLOTS
        )
        if fire is None:
            return 0
        pre = None
        if self.job_prewarm is not None and jp.prewarm_keys(job.settings):
            pre = self.job_prewarm.load(ws, job_id)  # clusters created ahead of this fire
        if updated is not job:
            run_id = jp.fire_run_id(pre, fire.fire_ms, fire.run_id)  # reserved for this fire
            fire = updated.pending_fire = dom.PendingFire(fire_ms=fire.fire_ms, run_id=run_id)
            jrec = self.docs.jobs.save(jrec, updated)
            job = updated
        run = dom.new_run(
            run_id=fire.run_id,
            workspace_id=ws,
            settings=job.settings,
            user=job.creator_user_name,
            now=now,
            job_id=job.job_id,
            trigger="PERIODIC",
            fire_ms=fire.fire_ms,
        )
        run = jp.adopt(run, pre)  # the job clusters created ahead of this fire
        try:
            rec = self.docs.create_run(run)
        except AlreadyExists:  # created by an earlier tick that crashed, or an id collision
            found = self.docs.load_run(ws, run.run_id)
            if found is None or found[0].job_id != job_id or found[0].fire_ms != fire.fire_ms:
                # The id was taken by another run: write a new one into the fire, fire again.
                moved = job.model_copy(deep=True)
                moved.pending_fire = dom.PendingFire(
                    fire_ms=fire.fire_ms, run_id=self.docs.next_slot() * dom.TASK_SLOTS
                )
                with contextlib.suppress(PreconditionFailed):
                    self.docs.jobs.save(jrec, moved)
                raise PreconditionFailed(f"run id {run.run_id} taken") from None
            run, rec = found
        if not run.admitted and not run.final:
            self.slots.start(run, rec)
        self._clear_fire(ws, job_id, run.run_id)
        log.info("schedule fired", extra={"job_id": job_id, "run_id": run.run_id})
        return 1

    def _clear_fire(self, ws: str, job_id: int, run_id: int) -> None:
        """The fire is carried out: clear it (a concurrent writer keeps it for the next tick,
        which finds the run and only clears)."""

        def step() -> None:
            got = self.docs.find_job(ws, job_id)
            if got is None:
                return
            cur, rec = got
            if cur.pending_fire is None or cur.pending_fire.run_id != run_id:
                return
            cur.pending_fire = None
            cur.generation += 1
            self.docs.jobs.save(rec, cur)

        with contextlib.suppress(PreconditionFailed):
            retry_on_conflict(step, f"job {job_id}")
