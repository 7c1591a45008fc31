"""The Jobs API (2.1/2.2) as application services: validate, write the job or run document with
an ETag check, and send `advance` for a run to the jobs queue (session id = run id: one handler
per run at a time).

The parts: the documents and messages (job_docs.py), the wire shapes (job_wire.py), admission
to a job's slots and the `job-runs` queue handler (job_runs.py: `runs`), the jobs timer
(job_scheduler.py: `scheduler`). The rules are the pure functions of shared/domain/jobs.py.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from shared.domain import jobs as dom
from shared.domain import quotas as quota
from shared.domain import schedule as sched
from shared.domain.jobs import LifeCycle as L
from shared.errors import ApiError, InvalidParameterValue, InvalidState, QuotaExceeded
from shared.ports import Bus, Clock, Store
from shared.services import job_wire as wire
from shared.services.auth import Principal
from shared.services.clusters import ClusterService
from shared.services.job_docs import JOB, RUN, JobDocs
from shared.services.job_runs import RunQueue, Slots
from shared.services.job_scheduler import Scheduler
from shared.services.prewarm import Prewarm
from shared.services.tasks import TaskService
from shared.settings import Settings

if TYPE_CHECKING:
    from shared.services.quotas import QuotaService

log = logging.getLogger("sparkplane.jobs")

MULTI_TASK_OUTPUT = (
    "Retrieving the output of runs with multiple tasks is not supported. "
    "Please retrieve the output of each individual task run instead."
)


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
        self.quotas = quotas
        self.clusters = clusters
        self.tasks = tasks
        self.clock = clock
        self.docs = JobDocs(store, bus, clock, settings)
        self.slots = Slots(self.docs, clock)
        timing = dom.Timing(
            poll_ms=max(1, int(settings.jobs_poll_interval_s * 1000)),
            setup_timeout_ms=int(settings.jobs_setup_timeout_s * 1000),
            cleanup_timeout_ms=int(settings.jobs_cleanup_timeout_s * 1000),
        )
        self.runs = RunQueue(self.docs, self.slots, clusters, tasks, clock, timing)
        prewarm = Prewarm(store, clusters, clock)
        self.scheduler = Scheduler(self.docs, self.slots, bus, clock, settings, prewarm)
        self.runs.on_fire = self.scheduler.fire
        self.wire = wire.RunWire(f"http://{settings.host}:{settings.port}")

    # ----------------------------------------------------------------------------- validation

    def _check_spec(self, p: Principal, spec: dict[str, Any], where: str) -> None:
        try:
            checked = self.clusters.spec(p, spec)
        except InvalidParameterValue as e:  # say which cluster spec is not valid
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
            if token is None or self.docs.idempotency.find(p.workspace_id, token) is None:
                quota.check_runs(q, self.quotas.active_runs(p.workspace_id))
                quota.check_clusters(
                    q, self.quotas.clusters(p.workspace_id), self._new_clusters(p, s)
                )
            yield

    def _validated(self, p: Principal, s: dom.JobSettings, *, submit: bool = False) -> None:
        def existing(cluster_id: str, where: str) -> None:
            c = self.clusters.find(p.workspace_id, cluster_id)
            if c is None or c.deleted:
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
        data = {k: v for k, v in body.items() if k not in wire.REQUEST_ONLY}
        settings = dom.parse_settings(data)
        self._validated(p, settings)
        if self.quotas is None:
            return self._create(p, settings)
        with self.quotas.admit(p.workspace_id, "jobs") as q:
            quota.check_jobs(q, self.quotas.jobs(p.workspace_id))
            return self._create(p, settings)

    def _create(self, p: Principal, settings: dom.JobSettings) -> dict[str, Any]:
        now = self.clock.now_ms()

        def create(job_id: int) -> int:
            job = dom.Job(
                job_id=job_id,
                workspace_id=p.workspace_id,
                creator_user_name=p.user,
                created_time=now,
                settings=dom.JobSettings(),
            )
            self.docs.create_job(dom.with_settings(job, settings, now=now))
            return job_id

        job_id = self.docs.allocate(create)
        log.info("job created", extra={"job_id": job_id, "workspace": p.workspace_id})
        return {"job_id": job_id}

    def get(self, p: Principal, job_id: Any) -> dict[str, Any]:
        job, _ = self.docs.load_job(p.workspace_id, wire.int_id(job_id, "job_id"))
        return wire.job(job)

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

        items, token = self.docs.page(JOB, p.workspace_id, limit, offset, page_token, keep)
        jobs = [wire.job(self.docs.jobs.parse(r), with_tasks=expand_tasks) for r in items]
        return wire.page_answer("jobs", jobs, token)

    def update(self, p: Principal, body: Mapping[str, Any]) -> None:
        job_id = wire.int_id(body.get("job_id"), "job_id")
        new_settings = body.get("new_settings") or {}
        if not isinstance(new_settings, Mapping):
            raise InvalidParameterValue("new_settings must be an object.")
        remove = body.get("fields_to_remove") or []
        if not isinstance(remove, builtins.list):
            raise InvalidParameterValue("fields_to_remove must be a list of strings.")
        now = self.clock.now_ms()

        def change(job: dom.Job) -> dom.Job:
            merged = dom.merge_update(job.settings, new_settings, remove)
            settings = dom.parse_settings(merged, "new_settings")
            self._validated(p, settings)
            return dom.with_settings(job, settings, now=now)

        self.docs.mutate_job(p.workspace_id, job_id, change)

    def reset(self, p: Principal, body: Mapping[str, Any]) -> None:
        job_id = wire.int_id(body.get("job_id"), "job_id")
        if not isinstance(body.get("new_settings"), Mapping):
            raise InvalidParameterValue("Missing required field: new_settings")
        settings = dom.parse_settings(body["new_settings"], "new_settings")
        self._validated(p, settings)
        now = self.clock.now_ms()
        self.docs.mutate_job(
            p.workspace_id, job_id, lambda job: dom.with_settings(job, settings, now=now)
        )

    def delete(self, p: Principal, body: Mapping[str, Any]) -> None:
        """Delete a job; its active and queued runs are cancelled."""
        job_id = wire.int_id(body.get("job_id"), "job_id")
        job, rec = self.docs.load_job(p.workspace_id, job_id)
        self.docs.delete(rec)
        for run_id in [*job.active_runs, *job.waiting_runs]:
            with contextlib.suppress(ApiError):  # finished meanwhile: nothing to cancel
                self.cancel_run(p, {"run_id": run_id})
        log.info("job deleted", extra={"job_id": job_id, "workspace": p.workspace_id})

    # ----------------------------------------------------------------------------- triggering

    def _trigger(
        self, p: Principal, s: dom.JobSettings, token: str | None, build: Callable[[int], dom.Run]
    ) -> dom.Run:
        """Create the run (or find the one of an earlier request with the same token) within
        the runs quota, and start a new one."""
        with self._admit_run(p, s, token):
            run, rec, created = self.docs.idempotent_run(p.workspace_id, token, build)
        if created:
            self.slots.start(run, rec)
        return run

    def run_now(self, p: Principal, body: Mapping[str, Any]) -> dict[str, Any]:
        job_id = wire.int_id(body.get("job_id"), "job_id")
        job, _ = self.docs.load_job(p.workspace_id, job_id)
        python_params = wire.str_list(body.get("python_params"), "python_params")
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
        token = wire.token(body.get("idempotency_token"))
        now = self.clock.now_ms()
        run = self._trigger(
            p,
            job.settings,
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
        return {"run_id": run.run_id, "number_in_job": run.run_id}

    def submit(self, p: Principal, body: Mapping[str, Any]) -> dict[str, Any]:
        settings = dom.submit_settings(body)
        self._validated(p, settings, submit=True)
        token = wire.token(body.get("idempotency_token"))
        now = self.clock.now_ms()
        run = self._trigger(
            p,
            settings,
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
        return {"run_id": run.run_id}

    # ----------------------------------------------------------------------------- runs

    def get_run(self, p: Principal, run_id: Any) -> dict[str, Any]:
        rid = wire.int_id(run_id, "run_id")
        run, _, a = self.docs.run_or_404(p.workspace_id, rid)
        return self.wire.task_run(run, a) if a is not None else self.wire.run(run)

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

        items, token = self.docs.page(RUN, p.workspace_id, limit, offset, page_token, keep)
        runs = [self.wire.run(self.docs.runs.parse(r), with_tasks=expand_tasks) for r in items]
        return wire.page_answer("runs", runs, token)

    def cancel_run(self, p: Principal, body: Mapping[str, Any]) -> None:
        rid = wire.int_id(body.get("run_id"), "run_id")
        now = self.clock.now_ms()
        parent = dom.parent_run_id(rid)
        task = rid if rid != parent else None
        run, rec = self.docs.mutate_run(
            p.workspace_id,
            rid,
            lambda r: dom.request_cancel(r, now=now, user=p.user, task_run_id=task),
        )
        if run.final:
            self.slots.release(run)
        else:
            self.docs.kick(run, f"cmd:{run.run_id}:{rec.etag}")

    def cancel_all(self, p: Principal, body: Mapping[str, Any]) -> None:
        job_id = body.get("job_id")
        all_queued = bool(body.get("all_queued_runs"))
        if job_id is None and not all_queued:
            raise InvalidParameterValue("One of job_id and all_queued_runs must be set.")
        if job_id is not None:
            job, _ = self.docs.load_job(p.workspace_id, wire.int_id(job_id, "job_id"))
            ids = [*job.active_runs, *job.waiting_runs]
        else:
            ids = [
                int(r.body["run_id"])
                for r in self.docs.store.scan(RUN, field="state", values=[L.QUEUED.value])
                if r.pk == p.workspace_id
            ]
        for rid in ids:
            with contextlib.suppress(ApiError):  # finished meanwhile: nothing to cancel
                self.cancel_run(p, {"run_id": rid})

    def delete_run(self, p: Principal, body: Mapping[str, Any]) -> None:
        rid = wire.int_id(body.get("run_id"), "run_id")
        run, rec, a = self.docs.run_or_404(p.workspace_id, rid)
        if a is not None:
            raise InvalidParameterValue("Task runs cannot be deleted; delete the job run.")
        if not run.final:
            raise InvalidState(f"Run {rid} is active; cancel it before deleting it.")
        self.docs.delete(rec)

    def get_output(self, p: Principal, run_id: Any) -> dict[str, Any]:
        rid = wire.int_id(run_id, "run_id")
        run, _, a = self.docs.run_or_404(p.workspace_id, rid)
        if a is None:
            if len(run.settings.tasks) > 1:
                raise InvalidParameterValue(MULTI_TASK_OUTPUT)
            a = run.latest().get(run.settings.tasks[0].task_key) if run.settings.tasks else None
            meta = self.wire.run(run)
        else:
            meta = self.wire.task_run(run, a)
        out: dict[str, Any] = {"metadata": meta}
        if a is None:
            return out
        logs, error, trace = a.logs, a.error, a.error_trace
        if a.submission_key and a.cluster_id and not a.process_done:
            gone = self.runs.view(run.workspace_id, a.cluster_id).state in dom.DEAD
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
