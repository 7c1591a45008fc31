"""The run planner (`advance`): given the run document and what is observed (clusters and
submissions), the next document and the side effects to carry out. It is level-triggered: the
effects are "ensure" operations (create this cluster if missing, submit this attempt unless
submitted, cancel this process if still running, terminate this cluster unless terminating),
so evaluating the same document again is harmless."""

from __future__ import annotations

from collections.abc import Callable

from shared.domain.job_settings import (
    SUCCESS_LIKE,
    TASK_SLOTS,
    L,
    LifeCycle,
    R,
    Result,
    Task,
    topological_order,
)
from shared.domain.job_state import Attempt, Run, touch
from shared.domain.job_steps import (
    DEAD,
    MISSING,
    Action,
    CancelSubmission,
    ClusterView,
    EnsureCluster,
    Observed,
    Plan,
    StartCluster,
    Submit,
    TerminateCluster,
    Timing,
    cluster_spec_for,
    compute_key,
    error_of,
    reference_context,
    render_parameters,
    run_if_met,
    should_retry,
)
from shared.domain.node_env import accepted_spark_env


def _finish(
    a: Attempt,
    *,
    now: int,
    result: Result,
    message: str,
    code: str,
    state: LifeCycle = L.TERMINATED,
    user: bool = False,
) -> None:
    a.state = state
    a.result = result
    a.message = message
    a.code = code
    a.user_cancelled_or_timedout = user
    a.exec_end = now
    if a.submission_key is None:
        a.process_done = True


def _new_attempt(r: Run, prev: Attempt, t: Task, now: int) -> Attempt | None:
    if len(r.tasks) >= TASK_SLOTS - 1:
        return None
    a = Attempt(
        task_key=prev.task_key,
        run_id=r.run_id + 1 + len(r.tasks),
        attempt_number=prev.attempt_number + 1,
        state=L.WAITING_FOR_RETRY,
        created=now,
        not_before=(prev.exec_end or now) + t.min_retry_interval_millis,
        message="Waiting for retry",
    )
    r.tasks.append(a)
    return a


def _result(r: Run) -> tuple[LifeCycle, Result, str, str]:
    """The final life cycle state, result, message and code of a run whose tasks are done."""
    if r.stop == "CANCELED":
        who = f" by {r.cancelled_by}" if r.cancelled_by else ""
        return L.TERMINATED, R.CANCELED, f"Run was canceled{who}.", "USER_CANCELED"
    if r.stop == "TIMEDOUT":
        return (
            L.TERMINATED,
            R.TIMEDOUT,
            f"Run timed out after {r.settings.timeout_seconds} seconds.",
            "CANCELED",
        )
    latest = r.latest()
    results = {k: a.result for k, a in latest.items()}
    if all(res in SUCCESS_LIKE for res in results.values()):
        return L.TERMINATED, R.SUCCESS, "", "SUCCESS"
    upstream = {d.task_key for t in r.settings.tasks for d in t.depends_on}
    leaves = [k for k in results if k not in upstream]
    if all(results[k] in SUCCESS_LIKE for k in leaves):
        return L.TERMINATED, R.SUCCESS_WITH_FAILURES, "", "SUCCESS_WITH_FAILURES"
    order = topological_order(r.settings.tasks)
    culprit = next(
        (
            latest[k]
            for k in order
            if latest[k].result not in SUCCESS_LIKE
            and latest[k].result not in (R.UPSTREAM_FAILED, R.UPSTREAM_CANCELED)
        ),
        next(latest[k] for k in order if latest[k].result not in SUCCESS_LIKE),
    )
    message = culprit.message
    if len(latest) > 1:
        message = f"Task {culprit.task_key} failed with message: {culprit.message}"
        if any(a.result in (R.UPSTREAM_FAILED, R.UPSTREAM_CANCELED) for a in latest.values()):
            message += " This caused all downstream tasks to get skipped."
    state = L.INTERNAL_ERROR if culprit.state == L.INTERNAL_ERROR else L.TERMINATED
    if culprit.result == R.CANCELED:
        return L.TERMINATED, R.CANCELED, message, "USER_CANCELED"
    if culprit.result == R.TIMEDOUT:
        return state, R.TIMEDOUT, message, "CANCELED"
    code = culprit.code or "RUN_EXECUTION_ERROR"
    if code == "SUCCESS":
        code = "RUN_EXECUTION_ERROR"
    return state, R.FAILED, message, code


def advance(
    run: Run,
    obs: Observed,
    *,
    now: int,
    new_cluster_id: Callable[[], str],
    timing: Timing | None = None,
) -> Plan:
    """The next step of an admitted run (pure)."""
    if run.final or not run.admitted:
        return Plan(run=run)
    timing = timing or Timing()
    r = run.model_copy(deep=True)
    actions: list[Action] = []

    def view(cid: str | None) -> ClusterView:
        return obs.clusters.get(cid, MISSING) if cid else MISSING

    # 1. Run-level stops: a cancel or the job's timeout end every unfinished attempt.
    if r.stop is None:
        if r.cancel_requested:
            r.stop = "CANCELED"
        elif (
            r.settings.timeout_seconds
            and r.setup_start is not None
            and now - r.setup_start >= r.settings.timeout_seconds * 1000
        ):
            r.stop = "TIMEDOUT"
    if r.stop is not None:
        result = R.CANCELED if r.stop == "CANCELED" else R.TIMEDOUT
        why = "Run was canceled." if r.stop == "CANCELED" else "Run timed out."
        for a in r.tasks:
            if not a.final:
                _finish(
                    a,
                    now=now,
                    result=result if a.state == L.RUNNING else R.CANCELED,
                    message=why,
                    code="USER_CANCELED" if r.stop == "CANCELED" else "CANCELED",
                    user=True,
                )

    # 2. Each task's latest attempt, in dependency order.
    latest = r.latest()
    for key in topological_order(r.settings.tasks):
        attempt = latest.get(key)
        if attempt is None or attempt.final:
            continue
        a = attempt
        t = r.task(key)
        if a.cancel_requested:
            _finish(
                a,
                now=now,
                result=R.CANCELED,
                message="Task run was canceled.",
                code="USER_CANCELED",
                user=True,
            )
            continue
        if a.state == L.BLOCKED:
            ups = [latest[d.task_key] for d in t.depends_on]
            if not all(u.final for u in ups):
                continue
            results = [u.result for u in ups]
            if run_if_met(t.run_if, results):
                a.state = L.PENDING
                a.pending_since = now
                a.message = ""
            else:
                canceled = any(res in (R.CANCELED, R.UPSTREAM_CANCELED) for res in results)
                if (t.run_if or "ALL_SUCCESS") == "ALL_SUCCESS":
                    res = R.UPSTREAM_CANCELED if canceled else R.UPSTREAM_FAILED
                    msg = "Upstream task was canceled." if canceled else "Upstream task failed."
                else:
                    res, msg = R.EXCLUDED, f"The run_if condition {t.run_if} was not met."
                _finish(a, now=now, result=res, message=msg, code="SKIPPED", state=L.SKIPPED)
                continue
        if a.state == L.WAITING_FOR_RETRY:
            if a.not_before is not None and now < a.not_before:
                continue
            a.state = L.PENDING
            a.pending_since = now
            a.message = ""
        if a.state == L.PENDING:
            _setup(
                r,
                a,
                t,
                view,
                actions,
                now=now,
                new_cluster_id=new_cluster_id,
                timing=timing,
            )
        elif a.state == L.RUNNING:
            _running(r, a, t, view, obs, actions, now=now, timing=timing)
        if a.final and should_retry(t, a) and r.stop is None:
            retry = _new_attempt(r, a, t, now)
            if retry is not None:
                latest[key] = retry  # downstream tasks wait for the retry

    # 3. Processes of finished attempts that still run get cancelled (until seen gone).
    for a in r.tasks:
        if not a.final or a.process_done or a.submission_key is None:
            continue
        st = obs.submissions.get(a.submission_key)
        if st is not None and st.state in ("PENDING", "RUNNING"):
            actions.append(CancelSubmission(a.submission_key, a.cluster_id or ""))
        else:
            a.process_done = True
            if st is not None:
                a.logs = a.logs or st.stdout_tail

    # 4. Job clusters no unfinished task needs any more are terminated (JOB_FINISHED).
    latest = r.latest()
    needed = {r.clusters.get(compute_key(r.task(k))) for k, a in latest.items() if not a.final}
    for cid in r.owned_clusters:
        if cid not in needed and view(cid).state not in ("TERMINATING", "TERMINATED", "MISSING"):
            actions.append(TerminateCluster(cid))

    # 5. The run's own state.
    done = all(a.final for a in latest.values())
    if done:
        if r.exec_end is None:
            r.exec_end = now
            r.exec_start = r.exec_start if r.exec_start is not None else now
        if r.state != L.TERMINATING:
            r.state = L.TERMINATING
            r.message = "Cleaning up."
        clean = all(
            view(cid).state in ("TERMINATED", "MISSING") for cid in r.owned_clusters
        ) and all(a.process_done for a in r.tasks)
        if clean or now - (r.exec_end or now) >= timing.cleanup_timeout_ms:
            state, result, message, code = _result(r)
            r.state = state
            r.result = result
            r.message = message
            r.code = code
            r.user_cancelled_or_timedout = r.stop is not None or result in (
                R.CANCELED,
                R.TIMEDOUT,
            )
            r.end_time = now
    else:
        if any(a.state == L.RUNNING for a in r.tasks):
            if r.state != L.RUNNING:
                r.state = L.RUNNING
                r.message = ""
            if r.exec_start is None:
                r.exec_start = now
        elif r.state == L.QUEUED:
            r.state = L.PENDING

    changed = r.model_dump() != run.model_dump()
    if changed:
        touch(r, now)
    requeue: int | None = None
    if not r.final:
        requeue = timing.poll_ms
        waits = [
            a.not_before - now for a in r.tasks if a.state == L.WAITING_FOR_RETRY and a.not_before
        ]
        if waits:
            requeue = max(1, min(requeue, min(waits)))
    return Plan(run=r, actions=actions, changed=changed, requeue_ms=requeue)


def _setup(
    r: Run,
    a: Attempt,
    t: Task,
    view: Callable[[str | None], ClusterView],
    actions: list[Action],
    *,
    now: int,
    new_cluster_id: Callable[[], str],
    timing: Timing,
) -> None:
    """A PENDING attempt: get its cluster RUNNING, then submit."""
    if a.pending_since is None:
        a.pending_since = now
    ck = compute_key(t)
    cid: str | None
    if t.existing_cluster_id is not None:
        cid = t.existing_cluster_id
        a.cluster_id = cid
        v = view(cid)
        if v.state == "MISSING":
            _finish(
                a,
                now=now,
                result=R.FAILED,
                message=f"Cluster {cid} does not exist",
                code="RESOURCE_NOT_FOUND",
                state=L.INTERNAL_ERROR,
            )
            return
        if v.state == "TERMINATED":
            if a.start_requested:
                _cluster_error(a, now, f"Cluster {cid} could not be started: {v.message}")
                return
            a.start_requested = True
            a.message = f"Starting cluster {cid}"
            actions.append(StartCluster(cid))
            return
    else:
        cid = a.cluster_id or r.clusters.get(ck)
        if cid is None or (a.cluster_id is None and view(cid).state in DEAD - {"MISSING"}):
            cid = new_cluster_id()
            r.clusters[ck] = cid
            r.owned_clusters.append(cid)
        a.cluster_id = cid
        v = view(cid)
        if v.state == "MISSING":
            a.message = f"Creating job cluster {cid}"
            actions.append(EnsureCluster(cid, cluster_spec_for(r, t)))
            _setup_deadline(a, cid, now=now, timing=timing)
            return
        if v.state in DEAD:
            reason = f" ({v.reason})" if v.reason else ""
            _cluster_error(a, now, f"Cluster {cid} failed to start{reason}: {v.message}")
            return
    if v.state not in ("RUNNING", "RESIZING"):
        a.message = f"Waiting for cluster {cid} ({v.state})"
        _setup_deadline(a, cid, now=now, timing=timing)
        return
    # The cluster is up: submit.
    assert t.spark_python_task is not None
    key = str(a.run_id)
    a.state = L.RUNNING
    a.message = ""
    a.exec_start = now
    a.submission_key = key
    a.spark_context_id = v.spark_context_id
    actions.append(_submit(r, a, t, v))


def _cluster_error(a: Attempt, now: int, message: str) -> None:
    """The attempt fails on its cluster (an empty cluster message leaves no trailing ": ")."""
    _finish(
        a,
        now=now,
        result=R.FAILED,
        state=L.INTERNAL_ERROR,
        code="CLUSTER_ERROR",
        message=message.rstrip(": "),
    )


def _setup_deadline(a: Attempt, cid: str, *, now: int, timing: Timing) -> None:
    if a.pending_since is not None and now - a.pending_since >= timing.setup_timeout_ms:
        minutes = timing.setup_timeout_ms // 60_000
        _cluster_error(a, now, f"Cluster {cid} did not become RUNNING within {minutes} minutes.")


def _submit(r: Run, a: Attempt, t: Task, v: ClusterView) -> Submit:
    assert t.spark_python_task is not None and a.submission_key and a.cluster_id
    params = r.python_params if r.python_params is not None else t.spark_python_task.parameters
    env = {
        **accepted_spark_env(v.spark_env_vars),  # (a cluster stored before the rule)
        "SPARKPLANE_JOB_ID": str(r.shown_job_id),
        "SPARKPLANE_RUN_ID": str(r.run_id),
        "SPARKPLANE_TASK_RUN_ID": str(a.run_id),
        "SPARKPLANE_TASK_KEY": a.task_key,
        "SPARKPLANE_CLUSTER_ID": a.cluster_id,
        "PYTHONUNBUFFERED": "1",
    }
    if v.spark_version:
        env["DATABRICKS_RUNTIME_VERSION"] = v.spark_version
    return Submit(
        key=a.submission_key,
        cluster_id=a.cluster_id,
        workspace_id=r.workspace_id,
        python_file=t.spark_python_task.python_file,
        parameters=tuple(render_parameters(params, reference_context(r, a))),
        env=env,
    )


def _running(
    r: Run,
    a: Attempt,
    t: Task,
    view: Callable[[str | None], ClusterView],
    obs: Observed,
    actions: list[Action],
    *,
    now: int,
    timing: Timing,
) -> None:
    """A RUNNING attempt: read its submission's status."""
    assert a.submission_key is not None
    st = obs.submissions.get(a.submission_key)
    v = view(a.cluster_id)
    if (st is None or st.state in ("PENDING", "RUNNING", "LOST")) and v.state in DEAD:
        reason = f" ({v.reason})" if v.reason else ""
        _finish(
            a,
            now=now,
            result=R.FAILED,
            code="CLUSTER_ERROR",
            message=f"Cluster {a.cluster_id} was terminated during the run{reason}. "
            f"{v.message}".strip(),
        )
        return
    if st is None:
        actions.append(_submit(r, a, t, v))  # not started yet (a crash): again
        return
    if st.state == "PENDING" and a.exec_start and now - a.exec_start >= timing.setup_timeout_ms:
        # No agent took it: the driver runs none (e.g. no agent source in Azure) or is stuck.
        _cluster_error(
            a,
            now,
            f"The driver node of cluster {a.cluster_id} did not start the task within "
            f"{timing.setup_timeout_ms // 60_000} minutes (is its cluster agent running?).",
        )
        return
    if st.state in ("PENDING", "RUNNING"):
        if t.timeout_seconds and a.exec_start and now - a.exec_start >= t.timeout_seconds * 1000:
            _finish(
                a,
                now=now,
                result=R.TIMEDOUT,
                code="CANCELED",
                user=True,
                message=f"Task {a.task_key} timed out after {t.timeout_seconds} seconds.",
            )
        return  # the process is cancelled with the other finished attempts' processes
    a.exit_code = st.exit_code
    a.logs = st.stdout_tail
    a.process_done = True
    if st.state == "SUCCEEDED":
        _finish(a, now=now, result=R.SUCCESS, message="", code="SUCCESS")
        a.process_done = True
        return
    error, trace = error_of(st.stderr_tail, st.stdout_tail)
    a.error, a.error_trace = error, trace
    if st.state == "LOST":
        _finish(
            a,
            now=now,
            result=R.FAILED,
            state=L.INTERNAL_ERROR,
            code="INTERNAL_ERROR",
            message="The task's process was lost (its host restarted?).",
        )
    elif st.state == "CANCELED":
        _finish(
            a,
            now=now,
            result=R.FAILED,
            code="RUN_EXECUTION_ERROR",
            message=error or "The task's process was terminated.",
        )
    else:
        msg = error or f"The task's process exited with code {st.exit_code}."
        _finish(a, now=now, result=R.FAILED, message=msg, code="RUN_EXECUTION_ERROR")
    a.process_done = True
