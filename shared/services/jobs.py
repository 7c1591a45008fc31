"""The Jobs API (2.1/2.2) and the run machinery behind the `job-runs` queue and the jobs timer.

- API calls validate, write the job or run document with an ETag check, and send `advance`
  for a run to the jobs queue (session id = run id: one handler per run at a time).
- `advance` loads a run, observes its clusters (their documents) and its tasks (the `task`
  documents the driver agents report into, shared/services/tasks.py), lets the pure planner
  (`shared/domain/jobs.py`) decide, saves the run with an ETag check, then carries out the
  planner's "ensure" effects and schedules a follow-up while the run is active.
  Level-triggered: a duplicate or late message is one more evaluation.
- The timer fires due schedules (a fire is written into the job document before its run is
  created, so a crash neither loses nor doubles it), re-kicks runs that stopped moving, and
  heals the slot ledger of max_concurrent_runs.

Documents: kind "job" (pk workspace, id = zero-padded job id) and kind "run" (pk workspace,
id = 10**19 - run id, zero-padded, so a partition lists newest first), the latter with a TTL.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from shared.domain import cluster as cdom
from shared.domain import jobs as dom
from shared.domain import quotas as quota
from shared.domain import schedule as sched
from shared.domain.jobs import LifeCycle as L
from shared.domain.jobs import Result as R
from shared.domain.wire import integer
from shared.errors import (
    ApiError,
    InvalidParameterValue,
    InvalidState,
    QuotaExceeded,
    ResourceDoesNotExist,
)
from shared.ports import (
    AlreadyExists,
    Bus,
    Clock,
    NotFound,
    OutMessage,
    PreconditionFailed,
    Record,
    Store,
)
from shared.services import prewarm
from shared.services.auth import Principal
from shared.services.clusters import ACTIVITY, ClusterService
from shared.services.tasks import TaskService
from shared.settings import Settings

if TYPE_CHECKING:
    from shared.services.quotas import QuotaService

log = logging.getLogger("sparkplane.jobs")

JOB = "job"
RUN = "run"
IDEM = "idempotency"
RUN_SPACE = 10**19
MAX_CAS = 20
IDEM_TTL_S = 7 * 86400
REQUEST_ONLY = ("access_control_list", "idempotency_token")
# A cluster running a task is marked active this often (idle termination must not end it).
ACTIVITY_EVERY_MS = 30_000
MULTI_TASK_OUTPUT = (
    "Retrieving the output of runs with multiple tasks is not supported. "
    "Please retrieve the output of each individual task run instead."
)


def job_doc_id(job_id: int) -> str:
    return f"{job_id:020d}"


def run_doc_id(run_id: int) -> str:
    return f"{RUN_SPACE - run_id:020d}"


def _int_id(value: Any, name: str) -> int:
    if value is None or value == "":
        raise InvalidParameterValue(f"Missing required field: {name}")
    return integer(value, name, lo=1)


def _str_list(value: Any, name: str) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidParameterValue(f"{name} must be a list of strings.")
    return list(value)


def _token(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        raise InvalidParameterValue("idempotency_token must be a string of 1..64 characters.")
    return value


# ---------------------------------------------------------------------------------------------
# Wire shapes (Databricks' Job, BaseJob, Run, RunTask).

_V2 = {
    L.QUEUED: "QUEUED",
    L.PENDING: "PENDING",
    L.RUNNING: "RUNNING",
    L.TERMINATING: "TERMINATING",
    L.TERMINATED: "TERMINATED",
    L.SKIPPED: "TERMINATED",
    L.INTERNAL_ERROR: "TERMINATED",
    L.BLOCKED: "BLOCKED",
    L.WAITING_FOR_RETRY: "WAITING",
}
_CODE_TYPE = {
    "SUCCESS": "SUCCESS",
    "SUCCESS_WITH_FAILURES": "SUCCESS",
    "USER_CANCELED": "SUCCESS",
    "CANCELED": "SUCCESS",
    "SKIPPED": "SUCCESS",
    "CLUSTER_ERROR": "CLOUD_FAILURE",
    "INTERNAL_ERROR": "INTERNAL_ERROR",
}


def _state(
    life: L, result: R | None, message: str, user: bool, queue_reason: str | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "life_cycle_state": life.value,
        "state_message": message,
        "user_cancelled_or_timedout": user,
    }
    if result is not None:
        out["result_state"] = result.value
    if queue_reason:
        out["queue_reason"] = queue_reason
    return out


def _status(life: L, code: str | None, message: str, queue_reason: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"state": _V2[life]}
    if life in dom.FINAL and code:
        out["termination_details"] = {
            "code": code,
            "type": _CODE_TYPE.get(code, "CLIENT_ERROR"),
            "message": message,
        }
    if queue_reason:
        out["queue_details"] = {"code": "MAX_CONCURRENT_RUNS_REACHED", "message": queue_reason}
    return out


def _durations(
    start: int, setup: int | None, exec_start: int | None, exec_end: int | None, end: int | None
) -> dict[str, int]:
    out: dict[str, int] = {}
    if setup is not None:
        out["queue_duration"] = max(0, setup - start)
    if setup is not None and exec_start is not None:
        out["setup_duration"] = max(0, exec_start - setup)
    if exec_start is not None and exec_end is not None:
        out["execution_duration"] = max(0, exec_end - exec_start)
    if exec_end is not None and end is not None:
        out["cleanup_duration"] = max(0, end - exec_end)
    if end is not None:
        out["end_time"] = end
        out["run_duration"] = max(0, end - start)
    return out


class JobService:
    def __init__(
        self,
        store: Store,
        bus: Bus,
        clusters: ClusterService,
        tasks: TaskService,
        clock: Clock,
        settings: Settings,
        *,
        quotas: QuotaService | None = None,
    ) -> None:
        self.store = store
        self.bus = bus
        self.quotas = quotas
        self.clusters = clusters
        self.tasks = tasks
        self.clock = clock
        self.settings = settings
        self.poll_ms = max(1, int(settings.jobs_poll_interval_s * 1000))
        self.stuck_ms = max(1, int(settings.jobs_stuck_after_s * 1000))
        self.run_ttl_s = max(1, settings.jobs_run_retention_days * 86400)
        self.timing = dom.Timing(
            poll_ms=self.poll_ms,
            setup_timeout_ms=int(settings.jobs_setup_timeout_s * 1000),
            cleanup_timeout_ms=int(settings.jobs_cleanup_timeout_s * 1000),
        )
        self.base_url = f"http://{settings.host}:{settings.port}"
        self._slot_lock = threading.Lock()
        self._last_slot = 0
        # Job clusters whose creation failed (an invalid spec): seen as TERMINATED by the run.
        self._create_errors: dict[str, str] = {}

    # ----------------------------------------------------------------------------- documents

    def _load_job(self, ws: str, job_id: int) -> tuple[dom.Job, Record]:
        rec = self.store.get(JOB, ws, job_doc_id(job_id))
        if rec is None:
            raise ResourceDoesNotExist(f"Job {job_id} does not exist.")
        return dom.Job.model_validate(rec.body), rec

    def _load_run(self, ws: str, run_id: int) -> tuple[dom.Run, Record] | None:
        rec = self.store.get(RUN, ws, run_doc_id(dom.parent_run_id(run_id)))
        if rec is None:
            return None
        return dom.Run.model_validate(rec.body), rec

    def _run_or_404(self, ws: str, run_id: int) -> tuple[dom.Run, Record, dom.Attempt | None]:
        got = self._load_run(ws, run_id)
        if got is None:
            raise ResourceDoesNotExist(f"Run {run_id} does not exist.")
        run, rec = got
        if run_id == run.run_id:
            return run, rec, None
        a = run.attempt(run_id)
        if a is None:
            raise ResourceDoesNotExist(f"Run {run_id} does not exist.")
        return run, rec, a

    def _save_run(self, rec: Record, run: dom.Run) -> Record:
        out = self.store.replace(RUN, run.workspace_id, rec.id, run.doc(), etag=rec.etag)
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

    def _next_slot(self) -> int:
        with self._slot_lock:
            self._last_slot = max(self.clock.now_ms(), self._last_slot + 1)
            return self._last_slot

    def _insert_run(self, build: Callable[[int], dom.Run]) -> tuple[dom.Run, Record]:
        """Create a run document under a fresh run id (a multiple of 1000, increasing)."""
        for _ in range(1000):
            run = build(self._next_slot() * dom.TASK_SLOTS)
            try:
                rec = self.store.create(
                    RUN, run.workspace_id, run_doc_id(run.run_id), run.doc(), ttl_s=self.run_ttl_s
                )
            except AlreadyExists:
                continue
            return run, rec
        raise RuntimeError("could not allocate a run id")

    # ----------------------------------------------------------------------------- messages

    def _message(self, run: dom.Run, message_id: str, due_ms: int | None = None) -> OutMessage:
        body = {"type": "advance", "workspace_id": run.workspace_id, "run_id": run.run_id}
        return OutMessage(
            body=json.dumps(body).encode(),
            message_id=message_id,
            session_id=str(run.run_id),
            scheduled_enqueue_ms=due_ms,
        )

    def kick(self, run: dom.Run, message_id: str) -> None:
        """Send `advance`; a failed send is not fatal: the jobs timer re-kicks stuck runs."""
        try:
            self.bus.send(self.settings.jobs_queue, [self._message(run, message_id)])
        except Exception:
            log.exception("send advance failed", extra={"run_id": run.run_id})

    def _follow_up(self, run: dom.Run, etag: str, delay_ms: int) -> None:
        # Two chains of one run reading the same version merge (same id in the same bucket);
        # one chain's successive follow-ups always differ.
        due = self.clock.now_ms() + delay_ms
        msg_id = f"f:{run.run_id}:{etag}:{delay_ms}:{due // delay_ms}"
        self.bus.send(self.settings.jobs_queue, [self._message(run, msg_id, due)])

    # ----------------------------------------------------------------------------- validation

    def _check_spec(self, p: Principal, spec: dict[str, Any], where: str) -> None:
        try:
            checked = self.clusters.spec(p, spec)
        except InvalidParameterValue as e:
            raise InvalidParameterValue(f"{where}: {e.message}") from None
        if self.quotas is not None:
            q = self.quotas.of(p.workspace_id)
            try:
                quota.check_workers_per_cluster(q, quota.cluster_workers(checked))
            except QuotaExceeded as e:  # say which cluster spec, as for invalid ones
                raise QuotaExceeded(f"{where}: {e.message}") from None

    def _check_schedule(self, p: Principal, s: dom.JobSettings) -> None:
        """A schedule fires no more often than the workspace's min_schedule_period_s (judged
        on its next 100 fire times)."""
        if self.quotas is None or s.schedule is None:
            return
        compiled = sched.compile_schedule(s.schedule.quartz_cron_expression, s.schedule.timezone_id)
        fires = sched.fire_times(compiled, self.clock.now_ms(), 100)
        quota.check_schedule(self.quotas.of(p.workspace_id), fires)

    def _new_clusters(self, p: Principal, s: dom.JobSettings) -> list[int]:
        """The workers of each cluster a run of these settings makes (its job clusters that
        tasks use and its tasks' own new clusters)."""
        specs: dict[str, Mapping[str, Any]] = {}
        job_clusters = {jc.job_cluster_key: jc.new_cluster for jc in s.job_clusters}
        for t in s.tasks:
            if t.job_cluster_key is not None and t.job_cluster_key in job_clusters:
                specs[dom.compute_key(t)] = job_clusters[t.job_cluster_key]
            elif t.new_cluster is not None:
                specs[dom.compute_key(t)] = t.new_cluster
        out: list[int] = []
        for spec in specs.values():
            try:
                out.append(quota.cluster_workers(self.clusters.spec(p, spec)))
            except InvalidParameterValue:  # its creation fails the task (as ever): no cluster
                continue
        return out

    @contextlib.contextmanager
    def _admit_run(self, p: Principal, s: dom.JobSettings, token: str | None) -> Iterator[None]:
        """Hold the workspace's runs quota while a run is counted, checked and created: the
        runs not finished, and the clusters the run will make (a retry of an answered request,
        same idempotency_token, is not counted again)."""
        if self.quotas is None:
            yield
            return
        with self.quotas.admit(p.workspace_id, "runs") as q:
            if token is None or self.store.get(IDEM, p.workspace_id, f"run:{token}") is None:
                quota.check_runs(q, self.quotas.active_runs(p.workspace_id))
                quota.check_clusters(
                    q, self.quotas.clusters(p.workspace_id), self._new_clusters(p, s)
                )
            yield

    def _validated(self, p: Principal, s: dom.JobSettings, *, submit: bool = False) -> None:
        def existing(cluster_id: str, where: str) -> None:
            got = self.clusters.repo.load(p.workspace_id, cluster_id)
            if got is None or got[0].deleted:
                raise InvalidParameterValue(f"{where}: Cluster {cluster_id} does not exist")

        dom.validate_settings(
            s,
            now_ms=self.clock.now_ms(),
            check_cluster_spec=lambda spec, where: self._check_spec(p, spec, where),
            check_existing_cluster=existing,
            submit=submit,
        )
        self._check_schedule(p, s)

    # ----------------------------------------------------------------------------- jobs

    def create(self, p: Principal, body: Mapping[str, Any]) -> dict[str, Any]:
        data = {k: v for k, v in body.items() if k not in REQUEST_ONLY}
        settings = dom.parse_settings(data)
        self._validated(p, settings)
        if self.quotas is None:
            return self._create(p, settings)
        with self.quotas.admit(p.workspace_id, "jobs") as q:
            quota.check_jobs(q, self.quotas.jobs(p.workspace_id))
            return self._create(p, settings)

    def _create(self, p: Principal, settings: dom.JobSettings) -> dict[str, Any]:
        now = self.clock.now_ms()
        for _ in range(1000):
            job_id = self._next_slot()
            job = dom.Job(
                job_id=job_id,
                workspace_id=p.workspace_id,
                creator_user_name=p.user,
                created_time=now,
                settings=dom.JobSettings(),
            )
            job = dom.with_settings(job, settings, now=now)
            try:
                self.store.create(JOB, p.workspace_id, job_doc_id(job_id), job.doc())
            except AlreadyExists:
                continue
            log.info("job created", extra={"job_id": job_id, "workspace": p.workspace_id})
            return {"job_id": job_id}
        raise RuntimeError("could not allocate a job id")

    def job_wire(self, job: dom.Job, *, with_tasks: bool = True) -> dict[str, Any]:
        return {
            "job_id": job.job_id,
            "creator_user_name": job.creator_user_name,
            "run_as_user_name": job.creator_user_name,
            "created_time": job.created_time,
            "settings": job.settings.wire(with_tasks=with_tasks),
        }

    def get(self, p: Principal, job_id: Any) -> dict[str, Any]:
        job, _ = self._load_job(p.workspace_id, _int_id(job_id, "job_id"))
        return self.job_wire(job)

    def list(
        self,
        p: Principal,
        *,
        limit: int,
        offset: int,
        page_token: str | None,
        name: str | None,
        expand_tasks: bool,
    ) -> dict[str, Any]:
        def keep(body: Mapping[str, Any]) -> bool:
            return name is None or str(body["settings"].get("name", "")).lower() == name.lower()

        items, token = self._page(JOB, p.workspace_id, limit, offset, page_token, keep)
        jobs = [
            self.job_wire(dom.Job.model_validate(r.body), with_tasks=expand_tasks) for r in items
        ]
        return _page_answer("jobs", jobs, token)

    def _page(
        self,
        kind: str,
        ws: str,
        limit: int,
        offset: int,
        page_token: str | None,
        keep: Callable[[Mapping[str, Any]], bool],
    ) -> tuple[builtins.list[Record], str | None]:
        """Up to `limit` matching documents; the token continues after the last store page
        read (the last page has no token)."""
        out: builtins.list[Record] = []
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

    def _mutate_job(
        self, p: Principal, job_id: int, change: Callable[[dom.Job], dom.Job]
    ) -> dom.Job:
        for _ in range(MAX_CAS):
            job, rec = self._load_job(p.workspace_id, job_id)
            new = change(job)
            if new is job:
                return job
            try:
                self.store.replace(JOB, p.workspace_id, rec.id, new.doc(), etag=rec.etag)
            except PreconditionFailed:
                continue
            return new
        raise PreconditionFailed(f"job {job_id} changed too often; retry")

    def update(self, p: Principal, body: Mapping[str, Any]) -> None:
        job_id = _int_id(body.get("job_id"), "job_id")
        new_settings = body.get("new_settings") or {}
        if not isinstance(new_settings, Mapping):
            raise InvalidParameterValue("new_settings must be an object.")
        remove = body.get("fields_to_remove") or []
        if not isinstance(remove, list):
            raise InvalidParameterValue("fields_to_remove must be a list of strings.")
        now = self.clock.now_ms()

        def change(job: dom.Job) -> dom.Job:
            merged = dom.merge_update(job.settings, new_settings, remove)
            settings = dom.parse_settings(merged, "new_settings")
            self._validated(p, settings)
            return dom.with_settings(job, settings, now=now)

        self._mutate_job(p, job_id, change)

    def reset(self, p: Principal, body: Mapping[str, Any]) -> None:
        job_id = _int_id(body.get("job_id"), "job_id")
        if not isinstance(body.get("new_settings"), Mapping):
            raise InvalidParameterValue("Missing required field: new_settings")
        settings = dom.parse_settings(body["new_settings"], "new_settings")
        self._validated(p, settings)
        now = self.clock.now_ms()
        self._mutate_job(p, job_id, lambda job: dom.with_settings(job, settings, now=now))

    def delete(self, p: Principal, body: Mapping[str, Any]) -> None:
        """Delete a job; its active and queued runs are cancelled."""
        job_id = _int_id(body.get("job_id"), "job_id")
        job, rec = self._load_job(p.workspace_id, job_id)
        with contextlib.suppress(NotFound):
            self.store.delete(JOB, p.workspace_id, rec.id)
        for run_id in [*job.active_runs, *job.waiting_runs]:
            with contextlib.suppress(ApiError):
                self.cancel_run(p, {"run_id": run_id})
        log.info("job deleted", extra={"job_id": job_id, "workspace": p.workspace_id})

    # ----------------------------------------------------------------------------- triggering

    def _idempotent_run(
        self, p: Principal, token: str | None, build: Callable[[int], dom.Run]
    ) -> tuple[dom.Run, Record, bool]:
        """Create a run, or find the one an earlier request with the same idempotency_token
        made. Returns (run, record, created)."""
        if token is not None:
            got = self.store.get(IDEM, p.workspace_id, f"run:{token}")
            if got is not None:
                run_id = int(got.body["run_id"])
                found = self._load_run(p.workspace_id, run_id)
                if found is not None:
                    return found[0], found[1], False
        run, rec = self._insert_run(build)
        if token is None:
            return run, rec, True
        try:
            self.store.create(
                IDEM, p.workspace_id, f"run:{token}", {"run_id": run.run_id}, ttl_s=IDEM_TTL_S
            )
        except AlreadyExists:
            # A concurrent request with the same token won: ours was never started.
            with contextlib.suppress(NotFound):
                self.store.delete(RUN, p.workspace_id, rec.id, etag=rec.etag)
            got = self.store.get(IDEM, p.workspace_id, f"run:{token}")
            found = self._load_run(p.workspace_id, int(got.body["run_id"])) if got else None
            if found is None:
                raise PreconditionFailed("concurrent run with the same idempotency_token") from None
            return found[0], found[1], False
        return run, rec, True

    def run_now(self, p: Principal, body: Mapping[str, Any]) -> dict[str, Any]:
        job_id = _int_id(body.get("job_id"), "job_id")
        job, _ = self._load_job(p.workspace_id, job_id)
        python_params = _str_list(body.get("python_params"), "python_params")
        params = body.get("job_parameters") or {}
        if not isinstance(params, Mapping) or not all(isinstance(v, str) for v in params.values()):
            raise InvalidParameterValue("job_parameters must be an object of strings.")
        known = {jp.name for jp in job.settings.parameters}
        unknown = sorted(set(params) - known)
        if unknown:
            raise InvalidParameterValue(f"Unknown job parameters: {', '.join(unknown)}")
        queue = body.get("queue")
        queue_enabled = None
        if isinstance(queue, Mapping) and "enabled" in queue:
            queue_enabled = bool(queue["enabled"])
        token = _token(body.get("idempotency_token"))
        now = self.clock.now_ms()
        with self._admit_run(p, job.settings, token):
            run, rec, created = self._idempotent_run(
                p,
                token,
                lambda run_id: dom.new_run(
                    run_id=run_id,
                    workspace_id=p.workspace_id,
                    settings=job.settings,
                    user=p.user,
                    now=now,
                    job_id=job_id,
                    trigger="ONE_TIME",
                    python_params=python_params,
                    job_parameters=params,
                    queue_enabled=queue_enabled,
                    idempotency_token=token,
                ),
            )
        if created:
            self._start(run, rec)
        return {"run_id": run.run_id, "number_in_job": run.run_id}

    def submit(self, p: Principal, body: Mapping[str, Any]) -> dict[str, Any]:
        settings = dom.submit_settings(body)
        self._validated(p, settings, submit=True)
        token = _token(body.get("idempotency_token"))
        now = self.clock.now_ms()
        with self._admit_run(p, settings, token):
            run, rec, created = self._idempotent_run(
                p,
                token,
                lambda run_id: dom.new_run(
                    run_id=run_id,
                    workspace_id=p.workspace_id,
                    settings=settings,
                    user=p.user,
                    now=now,
                    run_type="SUBMIT_RUN",
                    idempotency_token=token,
                ),
            )
        if created:
            self._start(run, rec)
        return {"run_id": run.run_id}

    def _start(self, run: dom.Run, rec: Record) -> None:
        """Admit a new run at once (so successive triggers are admitted in order), then send
        its first `advance`."""
        for _ in range(MAX_CAS):
            try:
                run, rec = self._admission(run, rec)
                break
            except PreconditionFailed:
                got = self._load_run(run.workspace_id, run.run_id)
                if got is None:
                    return
                run, rec = got
        self.kick(run, f"cmd:{run.run_id}:{rec.etag}")
        if run.final:
            self._release(run)

    def _admission(self, run: dom.Run, rec: Record) -> tuple[dom.Run, Record]:
        """Decide whether a queued run starts, waits or is skipped (max_concurrent_runs), with
        the job document as the ledger of slots. Raises PreconditionFailed if the run document
        changed meanwhile."""
        if run.admitted or run.final:
            return run, rec
        now = self.clock.now_ms()
        if run.job_id is None:
            new = dom.admit(run, now=now)
            return new, self._save_run(rec, new)
        if run.idempotency_token is not None:
            idem = self.store.get(IDEM, run.workspace_id, f"run:{run.idempotency_token}")
            if idem is not None and int(idem.body["run_id"]) != run.run_id:
                # Left behind by a request that lost an idempotency race: never run it.
                new = dom.skip(run, now=now, message="Duplicate run.", result=None, code="SKIPPED")
                return new, self._save_run(rec, new)
        for _ in range(MAX_CAS):
            jrec = self.store.get(JOB, run.workspace_id, job_doc_id(run.job_id))
            if jrec is None:
                new = dom.skip(
                    run,
                    now=now,
                    message=f"Job {run.job_id} was deleted.",
                    result=R.CANCELED,
                    code="CANCELED",
                )
                return new, self._save_run(rec, new)
            job = dom.Job.model_validate(jrec.body)
            decision = dom.admission(job, run.run_id, queue_enabled=run.queue_enabled)
            if decision == "WAIT" and now - run.start_time >= dom.QUEUE_TIMEOUT_MS:
                decision = "SKIP"
            if decision != "HELD":
                updated = dom.take_slot(job, run.run_id, decision)
                if (updated.active_runs, updated.waiting_runs) != (
                    job.active_runs,
                    job.waiting_runs,
                ):
                    try:
                        self.store.replace(
                            JOB, run.workspace_id, jrec.id, updated.doc(), etag=jrec.etag
                        )
                    except PreconditionFailed:
                        continue
            max_runs = job.settings.max_concurrent_runs
            if decision in ("ADMIT", "HELD"):
                new = dom.admit(run, now=now)
            elif decision == "WAIT":
                new = dom.wait_in_queue(run, now=now, max_concurrent=max_runs)
            else:
                new = dom.skip_max_concurrent(run, now=now, max_concurrent=max_runs)
            if new is run:
                return run, rec
            return new, self._save_run(rec, new)
        raise PreconditionFailed(f"job {run.job_id} changed too often; retry")

    def _release(self, run: dom.Run) -> None:
        """A finished run gives its slot back; the first queued run is kicked."""
        if run.job_id is None:
            return
        for _ in range(MAX_CAS):
            jrec = self.store.get(JOB, run.workspace_id, job_doc_id(run.job_id))
            if jrec is None:
                return
            job = dom.Job.model_validate(jrec.body)
            if run.run_id in job.active_runs or run.run_id in job.waiting_runs:
                job = dom.release(job, [run.run_id])
                try:
                    jrec = self.store.replace(
                        JOB, run.workspace_id, jrec.id, job.doc(), etag=jrec.etag
                    )
                except PreconditionFailed:
                    continue
            self._kick_waiting(job, jrec.etag)
            return

    def _kick_waiting(self, job: dom.Job, etag: str) -> None:
        if job.waiting_runs and len(job.active_runs) < job.settings.max_concurrent_runs:
            head = job.waiting_runs[0]
            got = self._load_run(job.workspace_id, head)
            if got is not None:
                self.kick(got[0], f"slot:{head}:{etag}")

    # ----------------------------------------------------------------------------- runs

    def run_wire(
        self, run: dom.Run, *, with_tasks: bool = True, live: bool = False
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "run_id": run.run_id,
            "job_run_id": run.run_id,
            "number_in_job": run.run_id,
            "original_attempt_run_id": run.run_id,
            "attempt_number": 0,
            "creator_user_name": run.creator_user_name,
            "run_name": run.run_name,
            "run_type": run.run_type,
            "trigger": run.trigger,
            "format": "MULTI_TASK",
            "state": _state(
                run.state, run.result, run.message, run.user_cancelled_or_timedout, run.queue_reason
            ),
            "status": _status(run.state, run.code, run.message, run.queue_reason),
            "start_time": run.start_time,
            **_durations(
                run.start_time, run.setup_start, run.exec_start, run.exec_end, run.end_time
            ),
        }
        out["job_id"] = run.shown_job_id
        out["run_page_url"] = f"{self.base_url}/#job/{run.shown_job_id}/run/{run.run_id}"
        if run.schedule is not None:
            out["schedule"] = run.schedule.model_dump(mode="json", exclude_none=True)
        if run.python_params is not None:
            out["overriding_parameters"] = {"python_params": run.python_params}
        if run.settings.parameters:
            out["job_parameters"] = [
                {
                    "name": jp.name,
                    "default": jp.default,
                    "value": run.job_parameters.get(jp.name, jp.default),
                }
                for jp in run.settings.parameters
            ]
        if with_tasks:
            out["tasks"] = [self.task_wire(run, a) for a in run.tasks]
            out["job_clusters"] = [
                jc.model_dump(mode="json", exclude_none=True) for jc in run.settings.job_clusters
            ]
        latest = run.latest()
        if len(run.settings.tasks) == 1 and latest:
            only = next(iter(latest.values()))
            if only.cluster_id:
                out["cluster_instance"] = self._cluster_instance(only)
            t = run.task(only.task_key)
            spec = {
                k: v
                for k, v in (
                    ("existing_cluster_id", t.existing_cluster_id),
                    ("new_cluster", t.new_cluster),
                    ("job_cluster_key", t.job_cluster_key),
                )
                if v is not None
            }
            out["cluster_spec"] = spec
        return out

    @staticmethod
    def _cluster_instance(a: dom.Attempt) -> dict[str, Any]:
        ci: dict[str, Any] = {"cluster_id": a.cluster_id}
        if a.spark_context_id is not None:
            ci["spark_context_id"] = str(a.spark_context_id)
        return ci

    def task_wire(self, run: dom.Run, a: dom.Attempt) -> dict[str, Any]:
        t = run.task(a.task_key)
        out = t.model_dump(mode="json", exclude_none=True)
        out.update(
            {
                "run_id": a.run_id,
                "attempt_number": a.attempt_number,
                "state": _state(a.state, a.result, a.message, a.user_cancelled_or_timedout),
                "status": _status(a.state, a.code, a.message, None),
                "start_time": a.created,
                **_durations(
                    a.created,
                    a.created,
                    a.exec_start,
                    a.exec_end,
                    a.exec_end if a.final else None,
                ),
                "run_page_url": f"{self.base_url}/#job/{run.shown_job_id}/run/{a.run_id}",
            }
        )
        out.pop("queue_duration", None)
        if a.cluster_id:
            out["cluster_instance"] = self._cluster_instance(a)
        return out

    def _task_run_wire(self, run: dom.Run, a: dom.Attempt) -> dict[str, Any]:
        """runs/get of a task run id: a Run describing that one task run."""
        first = next(x for x in run.tasks if x.task_key == a.task_key)
        out = self.run_wire(run, with_tasks=False)
        out.update(
            {
                "run_id": a.run_id,
                "job_run_id": run.run_id,
                "original_attempt_run_id": first.run_id,
                "attempt_number": a.attempt_number,
                "run_name": a.task_key,
                "state": _state(a.state, a.result, a.message, a.user_cancelled_or_timedout),
                "status": _status(a.state, a.code, a.message, None),
                "start_time": a.created,
                "tasks": [self.task_wire(run, a)],
            }
        )
        for k in ("end_time", "run_duration", "setup_duration", "execution_duration"):
            out.pop(k, None)
        out.update(
            _durations(
                a.created, a.created, a.exec_start, a.exec_end, a.exec_end if a.final else None
            )
        )
        out.pop("queue_duration", None)
        if a.cluster_id:
            out["cluster_instance"] = self._cluster_instance(a)
        return out

    def get_run(self, p: Principal, run_id: Any) -> dict[str, Any]:
        rid = _int_id(run_id, "run_id")
        run, _, a = self._run_or_404(p.workspace_id, rid)
        return self._task_run_wire(run, a) if a is not None else self.run_wire(run)

    def list_runs(
        self,
        p: Principal,
        *,
        job_id: int | None,
        active_only: bool,
        completed_only: bool,
        limit: int,
        offset: int,
        page_token: str | None,
        run_type: str | None,
        start_time_from: int | None,
        start_time_to: int | None,
        expand_tasks: bool,
    ) -> dict[str, Any]:
        if active_only and completed_only:
            raise InvalidParameterValue("active_only and completed_only cannot both be true.")
        if run_type is not None and run_type not in ("JOB_RUN", "SUBMIT_RUN", "WORKFLOW_RUN"):
            raise InvalidParameterValue(f"Invalid run_type {run_type}.")
        active = {s.value for s in dom.ACTIVE}

        def keep(b: Mapping[str, Any]) -> bool:
            if job_id is not None and dom.shown_job_id(b.get("job_id"), b["run_id"]) != job_id:
                return False
            if active_only and b.get("state") not in active:
                return False
            if completed_only and b.get("state") in active:
                return False
            if run_type is not None and b.get("run_type") != run_type:
                return False
            start = int(b.get("start_time", 0))
            if start_time_from is not None and start < start_time_from:
                return False
            return start_time_to is None or start <= start_time_to

        items, token = self._page(RUN, p.workspace_id, limit, offset, page_token, keep)
        runs = [
            self.run_wire(dom.Run.model_validate(r.body), with_tasks=expand_tasks) for r in items
        ]
        return _page_answer("runs", runs, token)

    def _mutate_run(
        self, ws: str, run_id: int, change: Callable[[dom.Run], dom.Run]
    ) -> tuple[dom.Run, Record]:
        for _ in range(MAX_CAS):
            run, rec, _ = self._run_or_404(ws, run_id)
            new = change(run)
            if new is run:
                return run, rec
            try:
                return new, self._save_run(rec, new)
            except PreconditionFailed:
                continue
        raise PreconditionFailed(f"run {run_id} changed too often; retry")

    def cancel_run(self, p: Principal, body: Mapping[str, Any]) -> None:
        rid = _int_id(body.get("run_id"), "run_id")
        now = self.clock.now_ms()
        parent = dom.parent_run_id(rid)
        task = rid if rid != parent else None
        run, rec = self._mutate_run(
            p.workspace_id,
            rid,
            lambda r: dom.request_cancel(r, now=now, user=p.user, task_run_id=task),
        )
        if run.final:
            self._release(run)
        else:
            self.kick(run, f"cmd:{run.run_id}:{rec.etag}")

    def cancel_all(self, p: Principal, body: Mapping[str, Any]) -> None:
        job_id = body.get("job_id")
        all_queued = bool(body.get("all_queued_runs"))
        if job_id is None and not all_queued:
            raise InvalidParameterValue("One of job_id and all_queued_runs must be set.")
        if job_id is not None:
            job, _ = self._load_job(p.workspace_id, _int_id(job_id, "job_id"))
            ids = [*job.active_runs, *job.waiting_runs]
        else:
            ids = [
                int(r.body["run_id"])
                for r in self.store.scan(RUN, field="state", values=[L.QUEUED.value])
                if r.pk == p.workspace_id
            ]
        for rid in ids:
            with contextlib.suppress(ApiError):
                self.cancel_run(p, {"run_id": rid})

    def delete_run(self, p: Principal, body: Mapping[str, Any]) -> None:
        rid = _int_id(body.get("run_id"), "run_id")
        run, rec, a = self._run_or_404(p.workspace_id, rid)
        if a is not None:
            raise InvalidParameterValue("Task runs cannot be deleted; delete the job run.")
        if not run.final:
            raise InvalidState(f"Run {rid} is active; cancel it before deleting it.")
        with contextlib.suppress(NotFound):
            self.store.delete(RUN, p.workspace_id, rec.id)

    def get_output(self, p: Principal, run_id: Any) -> dict[str, Any]:
        rid = _int_id(run_id, "run_id")
        run, _, a = self._run_or_404(p.workspace_id, rid)
        if a is None:
            if len(run.settings.tasks) > 1:
                raise InvalidParameterValue(MULTI_TASK_OUTPUT)
            a = run.latest().get(run.settings.tasks[0].task_key) if run.settings.tasks else None
            meta = self.run_wire(run)
        else:
            meta = self._task_run_wire(run, a)
        out: dict[str, Any] = {"metadata": meta}
        if a is None:
            return out
        logs, error, trace = a.logs, a.error, a.error_trace
        if a.submission_key and a.cluster_id and not a.process_done:
            gone = self._view(run.workspace_id, a.cluster_id).state in dom.DEAD
            st = self.tasks.status(a.cluster_id, a.submission_key, cluster_gone=gone)
            if st is not None:
                logs = st.stdout_tail
                if st.state not in ("PENDING", "RUNNING", "SUCCEEDED") and not error:
                    error, trace = dom.error_of(st.stderr_tail, st.stdout_tail)
        if a.submission_key:
            out["logs"] = logs
            out["logs_truncated"] = False
        if a.result is not None and a.result not in dom.SUCCESS_LIKE:
            out["error"] = error or a.message
            if trace:
                out["error_trace"] = trace
        return out

    # ----------------------------------------------------------------------------- advance

    def handle(self, body: bytes) -> None:
        msg: dict[str, Any] = json.loads(body)
        if msg.get("type") != "advance":
            raise ValueError(f"unknown jobs message type {msg.get('type')!r}")
        self.advance(str(msg["workspace_id"]), int(msg["run_id"]))

    def advance(self, ws: str, run_id: int) -> None:
        for _ in range(10):
            got = self._load_run(ws, run_id)
            if got is None:
                return
            run, rec = got
            if run.final:
                self._release(run)
                return
            try:
                if not run.admitted:
                    run, rec = self._admission(run, rec)
                    if run.final:
                        self._release(run)
                        return
                    if not run.admitted:
                        self._follow_up(run, rec.etag, max(self.poll_ms, 5000))
                        return
                obs = self._observe(run)
                now = self.clock.now_ms()
                plan = dom.advance(
                    run,
                    obs,
                    now=now,
                    new_cluster_id=lambda: cdom.new_cluster_id(self.clock.now_ms()),
                    timing=self.timing,
                )
                if plan.changed:
                    rec = self._save_run(rec, plan.run)
            except PreconditionFailed:
                continue  # somebody wrote in between: evaluate again on the new document
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
                self._release(plan.run)
            elif plan.requeue_ms is not None:
                self._follow_up(plan.run, rec.etag, plan.requeue_ms)
            return
        raise RuntimeError(f"run {run_id}: too many concurrent writes, retry later")

    def _view(self, ws: str, cluster_id: str) -> dom.ClusterView:
        if cluster_id in self._create_errors:
            return dom.ClusterView(
                state="TERMINATED",
                message=self._create_errors[cluster_id],
                reason="INVALID_ARGUMENT",
            )
        got = self.clusters.repo.load(ws, cluster_id)
        if got is None or got[0].deleted:
            return dom.MISSING
        c = got[0]
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
        clusters = {cid: self._view(run.workspace_id, cid) for cid in ids}
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
            try:
                rec = self.store.get(ACTIVITY, cid, cid)
                body = {"cluster_id": cid, "last_activity_ms": now}
                if rec is None:
                    self.store.create(ACTIVITY, cid, cid, body)
                elif now - int(rec.body.get("last_activity_ms", 0)) >= ACTIVITY_EVERY_MS:
                    self.store.replace(ACTIVITY, cid, cid, body, etag=rec.etag)
            except (AlreadyExists, PreconditionFailed):
                continue  # a heartbeat wrote it just now

    def _principal(self, run: dom.Run) -> Principal:
        return Principal(workspace_id=run.workspace_id, user=run.creator_user_name, token_id="jobs")

    def _carry_out(self, plan: dom.Plan) -> None:
        run = plan.run
        p = self._principal(run)
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
            except ApiError as e:
                log.warning(
                    "run action refused",
                    extra={"run_id": run.run_id, "action": repr(action)[:200], "error": e.message},
                )
            except Exception:
                log.exception("run action failed", extra={"run_id": run.run_id})

    def _ensure_cluster(self, run: dom.Run, a: dom.EnsureCluster) -> None:
        """Create the job cluster unless it exists (cluster_source JOB: it cannot be started
        again by a user)."""
        ws = run.workspace_id
        if self.clusters.repo.load(ws, a.cluster_id) is not None:
            return
        home = self.store.get("workspace", ws, ws)
        if home is not None and home.body.get("state") == "DELETING":
            # A run read before its workspace's deletion removed it: start nothing more.
            self._create_errors[a.cluster_id] = f"Workspace {ws} is being deleted."
            return
        try:
            owner = Principal(ws, run.creator_user_name, "job-run")
            spec = self.clusters.spec(owner, a.spec)
        except InvalidParameterValue as e:
            self._create_errors[a.cluster_id] = e.message
            return
        c = cdom.create(
            cluster_id=a.cluster_id,
            workspace_id=ws,
            spec=spec,
            user=run.creator_user_name,
            now=self.clock.now_ms(),
            source="JOB",
        )
        try:
            rec = self.clusters.repo.insert(c)
        except AlreadyExists:
            return
        self.clusters.kick(c, f"cmd:{c.cluster_id}:{rec.etag}")
        log.info("job cluster created", extra={"run_id": run.run_id, "cluster_id": c.cluster_id})

    # ----------------------------------------------------------------------------- timer

    def tick(self) -> dict[str, int]:
        """Fire due schedules, heal the slot ledgers, re-kick runs that stopped moving."""
        now = self.clock.now_ms()
        fired = healed = kicked = 0
        for rec in self.store.scan(JOB, field="state", values=["SCHEDULED", "IDLE"]):
            job = dom.Job.model_validate(rec.body)
            if job.pending_fire is not None or (
                job.state == "SCHEDULED"
                and job.schedule_next_ms is not None
                and job.schedule_next_ms <= now
            ):
                try:
                    fired += self._fire(job.workspace_id, job.job_id)
                except Exception:
                    log.exception("schedule fire failed", extra={"job_id": job.job_id})
            if job.active_runs or job.waiting_runs:
                healed += self._heal(job)
        active = [s.value for s in dom.ACTIVE]
        for rec in self.store.scan(RUN, field="state", values=active):
            updated = int(rec.body.get("updated_ms", 0))
            if now - updated < self.stuck_ms:
                continue
            run_id = int(rec.body["run_id"])
            msg = OutMessage(
                body=json.dumps(
                    {"type": "advance", "workspace_id": rec.pk, "run_id": run_id}
                ).encode(),
                message_id=f"kick:{run_id}:{rec.etag}:{now // self.stuck_ms}",
                session_id=str(run_id),
            )
            self.bus.send(self.settings.jobs_queue, [msg])
            kicked += 1
        prewarm.tick(self.store, self.clusters, self.clock)  # capacity ahead of predicted use
        return {"fired": fired, "healed": healed, "kicked": kicked}

    def _heal(self, job: dom.Job) -> int:
        """Slots held by runs that are gone or finished (a release lost to a crash)."""
        stale = []
        for rid in [*job.active_runs, *job.waiting_runs]:
            got = self._load_run(job.workspace_id, rid)
            if got is None or got[0].final:
                stale.append(rid)
        if stale:
            for _ in range(MAX_CAS):
                jrec = self.store.get(JOB, job.workspace_id, job_doc_id(job.job_id))
                if jrec is None:
                    return 0
                cur = dom.release(dom.Job.model_validate(jrec.body), stale)
                try:
                    jrec = self.store.replace(
                        JOB, job.workspace_id, jrec.id, cur.doc(), etag=jrec.etag
                    )
                except PreconditionFailed:
                    continue
                self._kick_waiting(cur, jrec.etag)
                break
        return len(stale)

    def _fire(self, ws: str, job_id: int) -> int:
        """One due schedule: write the fire into the job document, create its run (the id
        written there), admit and kick it, then clear the fire."""
        for _ in range(MAX_CAS):
            jrec = self.store.get(JOB, ws, job_doc_id(job_id))
            if jrec is None:
                return 0
            job = dom.Job.model_validate(jrec.body)
            now = self.clock.now_ms()
            updated, fire = dom.schedule_tick(
                job, now=now, new_run_id=self._next_slot() * dom.TASK_SLOTS
            )
            if fire is None:
                return 0
            if updated is not job:
                try:
                    jrec = self.store.replace(JOB, ws, jrec.id, updated.doc(), etag=jrec.etag)
                except PreconditionFailed:
                    continue
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
            try:
                rec = self.store.create(
                    RUN, ws, run_doc_id(run.run_id), run.doc(), ttl_s=self.run_ttl_s
                )
            except AlreadyExists:
                got = self._load_run(ws, run.run_id)
                if got is None or got[0].job_id != job_id or got[0].fire_ms != fire.fire_ms:
                    # The id was taken by another run: write a new one into the fire.
                    moved = job.model_copy(deep=True)
                    moved.pending_fire = dom.PendingFire(
                        fire_ms=fire.fire_ms, run_id=self._next_slot() * dom.TASK_SLOTS
                    )
                    with contextlib.suppress(PreconditionFailed):
                        self.store.replace(JOB, ws, jrec.id, moved.doc(), etag=jrec.etag)
                    continue
                run, rec = got
            if not run.admitted and not run.final:
                self._start(run, rec)
            # The fire is carried out: clear it (a concurrent writer keeps it for the next tick,
            # which finds the run and only clears).
            for _ in range(MAX_CAS):
                cur_rec = self.store.get(JOB, ws, job_doc_id(job_id))
                if cur_rec is None:
                    break
                cur = dom.Job.model_validate(cur_rec.body)
                if cur.pending_fire is None or cur.pending_fire.run_id != run.run_id:
                    break
                cur.pending_fire = None
                cur.generation += 1
                try:
                    self.store.replace(JOB, ws, cur_rec.id, cur.doc(), etag=cur_rec.etag)
                except PreconditionFailed:
                    continue
                break
            log.info("schedule fired", extra={"job_id": job_id, "run_id": run.run_id})
            return 1
        return 0


def _page_answer(key: str, items: list[dict[str, Any]], token: str | None) -> dict[str, Any]:
    """A list page as the SDK reads it: the last page leaves next_page_token out."""
    out: dict[str, Any] = {key: items, "has_more": token is not None}
    if token is not None:
        out["next_page_token"] = token
    return out
