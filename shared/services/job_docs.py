"""The documents of the Jobs API and the `advance` messages that move runs.

Documents: kind "job" (pk workspace, id = zero-padded job id) and kind "run" (pk workspace,
id = 10**19 - run id, zero-padded, so a partition lists newest first), the latter with a TTL;
idempotency records of runs/submit and run-now ("run:<token>" -> run id). Job ids and run ids
come from one increasing slot counter (milliseconds, one more on a tie); a run id is a multiple
of dom.TASK_SLOTS (its task runs take the ids after it).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from shared.domain import jobs as dom
from shared.errors import ResourceDoesNotExist
from shared.ports import AlreadyExists, Bus, Clock, NotFound, PreconditionFailed, Record, Store
from shared.services.documents import Documents, Idempotency, retry_on_conflict
from shared.services.messages import advance_message
from shared.settings import Settings

log = logging.getLogger("sparkplane.jobs")

JOB = "job"
RUN = "run"
RUN_SPACE = 10**19
# Tries to find a free id (another process took the same millisecond): ids increase, so a
# collision is rare and the next slot is free.
ID_ATTEMPTS = 1000

T = TypeVar("T")


def scheduled_jobs(store: Store) -> Iterator[dom.Job]:
    """Every job whose schedule is on (the jobs timer's scan; the pre-warming passes take the
    list it read, or scan here when called on their own)."""
    for rec in store.scan(JOB, field="state", values=["SCHEDULED"]):
        yield dom.Job.model_validate(rec.body)


def job_doc_id(job_id: int) -> str:
    return f"{job_id:020d}"


def run_doc_id(run_id: int) -> str:
    return f"{RUN_SPACE - run_id:020d}"


class JobDocs:
    """Load, save and page job and run documents; send `advance` for a run."""

    def __init__(self, store: Store, bus: Bus, clock: Clock, settings: Settings) -> None:
        self.store = store
        self.bus = bus
        self.clock = clock
        self.queue = settings.jobs_queue
        self.jobs = Documents(store, JOB, dom.Job)
        self.runs = Documents(
            store, RUN, dom.Run, ttl_s=max(1, settings.jobs_run_retention_days * 86400)
        )
        self.idempotency = Idempotency(store, "run", "run_id")
        self._slot_lock = threading.Lock()
        self._last_slot = 0

    # ----------------------------------------------------------------------------- ids

    def next_slot(self) -> int:
        with self._slot_lock:
            self._last_slot = max(self.clock.now_ms(), self._last_slot + 1)
            return self._last_slot

    def allocate(self, create: Callable[[int], T]) -> T:
        """`create(slot)` under fresh slots until one is not taken (AlreadyExists)."""
        for _ in range(ID_ATTEMPTS):
            try:
                return create(self.next_slot())
            except AlreadyExists:
                continue  # taken by another process in the same millisecond: the next one
        raise RuntimeError("could not allocate an id")

    # ----------------------------------------------------------------------------- jobs

    def find_job(self, ws: str, job_id: int) -> tuple[dom.Job, Record] | None:
        return self.jobs.load(ws, job_doc_id(job_id))

    def load_job(self, ws: str, job_id: int) -> tuple[dom.Job, Record]:
        got = self.find_job(ws, job_id)
        if got is None:
            raise ResourceDoesNotExist(f"Job {job_id} does not exist.")
        return got

    def create_job(self, job: dom.Job) -> None:
        self.jobs.create(job.workspace_id, job_doc_id(job.job_id), job)

    def mutate_job(self, ws: str, job_id: int, change: Callable[[dom.Job], dom.Job]) -> dom.Job:
        """Apply `change` with an ETag check (again on a conflict); 404 when there is none."""

        def step() -> dom.Job:
            job, rec = self.load_job(ws, job_id)
            new = change(job)
            if new is not job:
                self.jobs.save(rec, new)
            return new

        return retry_on_conflict(step, f"job {job_id}")

    # ----------------------------------------------------------------------------- runs

    def load_run(self, ws: str, run_id: int) -> tuple[dom.Run, Record] | None:
        """The run of `run_id`, or of the task run `run_id` names."""
        return self.runs.load(ws, run_doc_id(dom.parent_run_id(run_id)))

    def run_or_404(self, ws: str, run_id: int) -> tuple[dom.Run, Record, dom.Attempt | None]:
        """The run, its record and the task run `run_id` names (None for the run itself)."""
        got = self.load_run(ws, run_id)
        if got is None:
            raise ResourceDoesNotExist(f"Run {run_id} does not exist.")
        run, rec = got
        if run_id == run.run_id:
            return run, rec, None
        a = run.attempt(run_id)
        if a is None:
            raise ResourceDoesNotExist(f"Run {run_id} does not exist.")
        return run, rec, a

    def create_run(self, run: dom.Run) -> Record:
        return self.runs.create(run.workspace_id, run_doc_id(run.run_id), run)

    def delete(self, rec: Record, *, checked: bool = False) -> None:
        """Delete a job's or run's document (gone already: fine); `checked`: only as `rec`
        read it (PreconditionFailed otherwise)."""
        try:
            self.store.delete(rec.kind, rec.pk, rec.id, etag=rec.etag if checked else None)
        except NotFound:  # deleted already (a retried request, a TTL): nothing to do
            return

    def save_run(self, rec: Record, run: dom.Run) -> Record:
        """Replace with an ETag check (PreconditionFailed on a concurrent write); a change of
        state is logged."""
        out = self.runs.save(rec, run)
        result = run.result.value if run.result is not None else None
        if (rec.body.get("state"), rec.body.get("result")) != (run.state.value, result):
            # What `make run` shows and Application Insights keeps: a run's state change.
            log.info(
                "run state",
                extra={
                    "run_id": run.run_id,
                    "job_id": run.job_id,
                    "run_name": run.run_name or run.settings.name or "",
                    "workspace": run.workspace_id,
                    "state": run.state.value,
                    "result": result,
                    "reason": run.message,
                },
            )
        return out

    def insert_run(self, build: Callable[[int], dom.Run]) -> tuple[dom.Run, Record]:
        """Create a run document under a fresh run id (a multiple of 1000, increasing)."""

        def create(slot: int) -> tuple[dom.Run, Record]:
            run = build(slot * dom.TASK_SLOTS)
            return run, self.create_run(run)

        return self.allocate(create)

    def mutate_run(
        self, ws: str, run_id: int, change: Callable[[dom.Run], dom.Run]
    ) -> tuple[dom.Run, Record]:
        def step() -> tuple[dom.Run, Record]:
            run, rec, _ = self.run_or_404(ws, run_id)
            new = change(run)
            if new is run:
                return run, rec
            return new, self.save_run(rec, new)

        return retry_on_conflict(step, f"run {run_id}")

    def idempotent_run(
        self, ws: str, token: str | None, build: Callable[[int], dom.Run]
    ) -> tuple[dom.Run, Record, bool]:
        """Create a run, or find the one an earlier request with the same idempotency_token
        made. Returns (run, record, created)."""
        if token is not None:
            earlier = self.idempotency.find(ws, token)
            found = self.load_run(ws, int(earlier)) if earlier is not None else None
            if found is not None:
                return found[0], found[1], False
        run, rec = self.insert_run(build)
        if token is None:
            return run, rec, True
        holder = self.idempotency.claim(ws, token, run.run_id)
        if holder == run.run_id:
            return run, rec, True
        # A concurrent request with the same token won: ours was never started.
        self.delete(rec, checked=True)
        found = self.load_run(ws, int(holder)) if holder is not None else None
        if found is None:
            raise PreconditionFailed("concurrent run with the same idempotency_token")
        return found[0], found[1], False

    def page(
        self,
        kind: str,
        ws: str,
        limit: int,
        offset: int,
        page_token: str | None,
        keep: Callable[[Mapping[str, Any]], bool],
    ) -> tuple[list[Record], str | None]:
        """Up to `limit` matching documents; the token continues after the last store page
        read (the last page has no token)."""
        out: list[Record] = []
        token = page_token
        skip = offset if page_token is None else 0
        while True:
            want = limit - len(out) + skip
            page = self.store.list(kind, ws, page_size=max(1, want), page_token=token)
            for r in page.items:
                if not keep(r.body):
                    continue
                if skip:
                    skip -= 1
                    continue
                out.append(r)
            token = page.next_token
            if token is None or len(out) >= limit:
                return out, token

    # ----------------------------------------------------------------------------- messages

    def kick(self, run: dom.Run, message_id: str) -> None:
        """Send `advance`; a failed send is not fatal: the jobs timer re-kicks stuck runs."""
        try:
            self.bus.send(self.queue, [advance_message(run.workspace_id, run.run_id, message_id)])
        except Exception:  # the bus is down or refuses: not the caller's failure (above)
            log.exception("send advance failed", extra={"run_id": run.run_id})

    def follow_up(self, run: dom.Run, etag: str, delay_ms: int) -> None:
        """The next `advance`, scheduled. Two chains of one run reading the same version merge
        (same id in the same bucket); one chain's successive follow-ups always differ."""
        due = self.clock.now_ms() + delay_ms
        msg_id = f"f:{run.run_id}:{etag}:{delay_ms}:{due // delay_ms}"
        self.bus.send(self.queue, [advance_message(run.workspace_id, run.run_id, msg_id, due)])
