"""Drive a sparkplane host with Apache Airflow's Databricks provider, as Airflow itself does.

Run with the Airflow venv (`make airflow-venv` builds `.venv-airflow`), never with the project's
venv: pytest does not collect this file (its name does not start with `test_`), and
tests/integration/test_airflow.py runs it as a subprocess:

    .venv-airflow/bin/python tests/integration/airflow_driver.py \
        --host http://127.0.0.1:PORT SCENARIO [--spec JSON]

The token comes from --token or SPARKPLANE_TOKEN. The result is one JSON object on stdout;
Airflow's own logs go to stderr.

With --serve instead of a scenario it runs many: Airflow is imported once, then each line on
stdin ({"scenario", "spec", "out", "err"}) runs in a process forked from that one (as Airflow's
own executors fork a task from an imported Airflow), which writes the result to the file `out`
and its stderr to the file `err`; one line {"code": exit code} on stdout answers each. The test
module uses it: importing Airflow costs more CPU than most scenarios do.

No scheduler, webserver or metadata database: the connection is the environment variable
AIRFLOW_CONN_DATABRICKS_DEFAULT (Airflow's environment-variables secrets backend, which every
Airflow reads first), and AIRFLOW_HOME is a throwaway directory unless the caller sets one.

How the provider builds its URLs (hooks/databricks_base.py): `host` (or extra["host"]) goes
through `_parse_host`, which keeps only the hostname of a URL, so a host given as
`http://127.0.0.1:PORT` loses both its scheme and its port; the request URL is then
`{conn.schema or "https"}://{host}{":" + conn.port if conn.port}/api/...`. To reach
http://127.0.0.1:PORT the connection therefore says host=127.0.0.1, port=PORT, schema=http
(in URI form: databricks://:TOKEN@127.0.0.1:PORT/http, the path being the schema). The token
is the password with an empty login (the provider's recommended place for a PAT).

Scenarios (each prints what it saw; the test asserts on it):
  connection    what the hook resolves for the JSON, URI and naive connection forms, and
                `test_connection()` (GET 2.1/clusters/spark-versions) against the host
  submit-run    DatabricksSubmitRunOperator.execute: runs/submit, then polls runs/get until the
                run is terminal; then get_run / get_run_state / get_run_output of the task run
  failing-run   the same with a task that fails: the operator raises with the task's error
  run-now       DatabricksCreateJobsOperator.execute twice (jobs/create, then jobs/list by name
                and jobs/reset), DatabricksRunNowOperator.execute by job_id and by job_name
  trigger       the deferrable path: runs/submit, then DatabricksExecutionTrigger.run() (the
                hook's aiohttp calls) until its TriggerEvent
  clusters      cluster management through the hook: create and list (no hook method exists
                for them: `_do_api_call`, the hook's one request path), then get_cluster_state,
                terminate_cluster, start_cluster and restart_cluster, with the states seen
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import traceback
from typing import Any
from urllib.parse import quote, urlsplit

CONN_ID = "databricks_default"
POLL_S = 1
STATE_TIMEOUT_S = 60.0


def connection_json(host_url: str, token: str) -> dict[str, Any]:
    """The Airflow connection that reaches host_url (any scheme and port) with a bearer token."""
    u = urlsplit(host_url)
    conn: dict[str, Any] = {
        "conn_type": "databricks",
        "host": u.hostname,
        "schema": u.scheme or "https",
        "password": token,
    }
    if u.port:
        conn["port"] = u.port
    return conn


def connection_uri(host_url: str, token: str) -> str:
    u = urlsplit(host_url)
    port = f":{u.port}" if u.port else ""
    return f"databricks://:{quote(token, safe='')}@{u.hostname}{port}/{u.scheme or 'https'}"


def configure(host_url: str, token: str) -> None:
    """Environment for Airflow, set before anything of Airflow is imported."""
    if "AIRFLOW_HOME" not in os.environ:  # run by hand: a home of its own (the tests pass theirs)
        os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="airflow-home-")
    os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = json.dumps(connection_json(host_url, token))
    # Two more forms, only resolved (never called) by the connection scenario.
    os.environ["AIRFLOW_CONN_SPARKPLANE_URI"] = connection_uri(host_url, token)
    os.environ["AIRFLOW_CONN_SPARKPLANE_NAIVE"] = json.dumps(
        {"conn_type": "databricks", "host": host_url, "password": token}
    )


def hook(caller: str = "airflow_driver") -> Any:
    from airflow.providers.databricks.hooks.databricks import DatabricksHook

    return DatabricksHook(CONN_ID, retry_limit=3, retry_delay=1, caller=caller)


def operator_kwargs(task_id: str) -> dict[str, Any]:
    """What a DAG author would pass, minus what needs a running task (XCom, task state)."""
    return {
        "task_id": task_id,
        "databricks_conn_id": CONN_ID,
        "polling_period_seconds": POLL_S,
        "do_xcom_push": False,
        "durable": False,
        "deferrable": False,
    }


def run_report(h: Any, run_id: int) -> dict[str, Any]:
    """What Airflow users read back after a run: the run, its state, each task's output."""
    run = h.get_run(run_id)
    state = h.get_run_state(run_id)
    tasks = []
    for t in h.get_run_tasks(run_id):
        out = h.get_run_output(t["run_id"])
        tasks.append(
            {
                "task_key": t["task_key"],
                "run_id": t["run_id"],
                "state": t.get("state", {}),
                "logs": out.get("logs"),
                "error": out.get("error"),
                "metadata_state": out.get("metadata", {}).get("state", {}),
            }
        )
    return {
        "run_id": run_id,
        "job_id": run.get("job_id"),
        "run_page_url": h.get_run_page_url(run_id),
        "life_cycle_state": state.life_cycle_state,
        "result_state": state.result_state,
        "state_message": state.state_message,
        "is_terminal": state.is_terminal,
        "is_successful": state.is_successful,
        "state_str": h.get_run_state_str(run_id),
        "tasks": tasks,
    }


def submit_task(spec: dict[str, Any], key: str = "main") -> dict[str, Any]:
    task: dict[str, Any] = {
        "task_key": key,
        "spark_python_task": {
            "python_file": spec["python_file"],
            "parameters": spec.get("parameters", []),
        },
    }
    if "existing_cluster_id" in spec:
        task["existing_cluster_id"] = spec["existing_cluster_id"]
    else:
        task["new_cluster"] = spec["new_cluster"]
    return task


def scenario_connection(spec: dict[str, Any]) -> dict[str, Any]:
    import airflow
    from airflow.providers.databricks import __version__ as provider_version
    from airflow.providers.databricks.hooks.databricks import DatabricksHook

    forms = {}
    for name, conn_id in (
        ("json", CONN_ID),
        ("uri", "sparkplane_uri"),
        ("naive", "sparkplane_naive"),
    ):
        h = DatabricksHook(conn_id)
        c = h.databricks_conn
        forms[name] = {
            "conn": {"host": c.host, "port": c.port, "schema": c.schema, "login": c.login},
            "hook_host": h.host,
            "endpoint": h._endpoint_url("api/2.2/jobs/runs/get"),
            "token_auth": h._get_token() is not None,
        }
    ok, message = hook().test_connection()
    return {
        "airflow": airflow.__version__,
        "provider": provider_version,
        "forms": forms,
        "test_connection": {"ok": ok, "message": message},
    }


def scenario_submit_run(spec: dict[str, Any]) -> dict[str, Any]:
    from airflow.providers.databricks.operators.databricks import DatabricksSubmitRunOperator

    op = DatabricksSubmitRunOperator(
        **operator_kwargs("airflow_submit"),
        run_name=spec.get("run_name", "airflow submit"),
        tasks=[submit_task(spec)],
    )
    op.execute(context={})  # polls runs/get until terminal; raises unless SUCCESS
    return {"operator_run_id": op.run_id, **run_report(op._hook, op.run_id)}


def scenario_failing_run(spec: dict[str, Any]) -> dict[str, Any]:
    from airflow.providers.common.compat.sdk import AirflowException
    from airflow.providers.databricks.operators.databricks import DatabricksSubmitRunOperator

    op = DatabricksSubmitRunOperator(
        **operator_kwargs("airflow_failing"),
        run_name=spec.get("run_name", "airflow failing"),
        tasks=[submit_task(spec)],
    )
    raised = None
    try:
        op.execute(context={})
    except AirflowException as e:
        raised = str(e)
    return {"raised": raised, **run_report(op._hook, op.run_id)}


def scenario_run_now(spec: dict[str, Any]) -> dict[str, Any]:
    from airflow.providers.databricks.operators.databricks import (
        DatabricksCreateJobsOperator,
        DatabricksRunNowOperator,
    )

    name = spec["job_name"]
    settings = {
        "name": name,
        "tasks": [submit_task(spec, key="square")],
        "max_concurrent_runs": 1,
    }
    create = dict(operator_kwargs("airflow_create_job"))
    for k in ("polling_period_seconds", "do_xcom_push", "durable", "deferrable"):
        create.pop(k)
    created = DatabricksCreateJobsOperator(**create, json=settings).execute(context={})
    # Same name again: the operator finds the job by name (jobs/list?name=) and resets it.
    reset_settings = {**settings, "tags": {"reset": "yes"}}
    reset = DatabricksCreateJobsOperator(**create, json=reset_settings).execute(context={})
    h = hook()
    job = h._do_api_call(("GET", "2.2/jobs/get"), {"job_id": created})

    by_id = DatabricksRunNowOperator(
        **operator_kwargs("airflow_run_now_id"),
        job_id=created,
        python_params=spec.get("python_params_by_id", []),
    )
    by_id.execute(context={})
    by_name = DatabricksRunNowOperator(
        **operator_kwargs("airflow_run_now_name"),
        job_name=name,
        python_params=spec.get("python_params_by_name", []),
    )
    by_name.execute(context={})
    return {
        "created_job_id": created,
        "reset_job_id": reset,
        "found_by_name": h.find_job_id_by_name(name),
        "job_tags": job.get("settings", {}).get("tags"),
        "by_id": run_report(h, by_id.run_id),
        "by_name": run_report(h, by_name.run_id),
    }


def first_event(trigger: Any) -> Any:
    """What the triggerer does with a deferred task's trigger: run it until its first event."""
    import asyncio

    async def first() -> Any:
        async for event in trigger.run():
            return event.payload
        return None

    return asyncio.run(asyncio.wait_for(first(), timeout=STATE_TIMEOUT_S))


def scenario_trigger(spec: dict[str, Any]) -> dict[str, Any]:
    from airflow.providers.databricks.triggers.databricks import DatabricksExecutionTrigger

    h = hook("DatabricksSubmitRunOperator")
    run_id = h.submit_run({"run_name": "airflow trigger", "tasks": [submit_task(spec)]})
    trigger = DatabricksExecutionTrigger(
        run_id=run_id,
        databricks_conn_id=CONN_ID,
        polling_period_seconds=POLL_S,
        retry_delay=1,
        run_page_url=h.get_run_page_url(run_id),
    )
    return {"event": first_event(trigger), **run_report(h, run_id)}


def scenario_deferrable(spec: dict[str, Any]) -> dict[str, Any]:
    from airflow.providers.common.compat.sdk import TaskDeferred
    from airflow.providers.databricks.operators.databricks import DatabricksSubmitRunOperator

    op = DatabricksSubmitRunOperator(
        **{**operator_kwargs("airflow_deferrable"), "deferrable": True},
        run_name="airflow deferrable",
        tasks=[submit_task(spec)],
    )
    event = None
    try:
        op.execute(context={})  # finished before it could defer: execute_complete ran inside
    except TaskDeferred as deferred:
        # The worker stops here; the triggerer runs the trigger, then a worker resumes the task.
        event = first_event(deferred.trigger)
        getattr(op, deferred.method_name)(context={}, event=event)
    return {"deferred": event is not None, "event": event, **run_report(op._hook, op.run_id)}


def scenario_numbers(spec: dict[str, Any]) -> dict[str, Any]:
    """The operators pass their JSON through normalise_json_content, which sends every number
    as a string ("num_workers": "1"): Databricks accepts that. Reports what this host says."""
    from airflow.providers.databricks.exceptions import DatabricksApiError
    from airflow.providers.databricks.operators.databricks import (
        DatabricksCreateJobsOperator,
        DatabricksSubmitRunOperator,
    )

    def attempt(fn: Any) -> dict[str, Any]:
        try:
            return {"accepted": True, "id": fn()}
        except DatabricksApiError as e:
            return {"accepted": False, "status": e.http_status_code, "error": str(e)}

    def submit() -> Any:
        op = DatabricksSubmitRunOperator(
            **operator_kwargs("airflow_numbers"),
            run_name="airflow numbers",
            tasks=[submit_task(spec)],
            timeout_seconds=600,
            wait_for_termination=False,
        )
        op.execute(context={})
        return op.run_id

    def create() -> Any:
        settings = {
            "name": spec["job_name"],
            "max_concurrent_runs": 2,
            "timeout_seconds": 600,
            "job_clusters": [{"job_cluster_key": "main", "new_cluster": spec["new_cluster"]}],
            "tasks": [
                {
                    "task_key": "main",
                    "job_cluster_key": "main",
                    "max_retries": 1,
                    "spark_python_task": {"python_file": spec["python_file"]},
                }
            ],
        }
        return DatabricksCreateJobsOperator(
            task_id="airflow_numbers_job", databricks_conn_id=CONN_ID, json=settings
        ).execute(context={})

    return {"submit": attempt(submit), "create_job": attempt(create)}


def wait_state(h: Any, cluster_id: str, want: str, seen: list[str]) -> str:
    deadline = time.monotonic() + STATE_TIMEOUT_S
    while True:
        st = h.get_cluster_state(cluster_id)
        if not seen or seen[-1] != st.state:
            seen.append(st.state)
        if st.state == want:
            return st.state_message
        if time.monotonic() > deadline:
            raise TimeoutError(f"cluster {cluster_id} not {want} after {STATE_TIMEOUT_S}s: {seen}")
        time.sleep(0.2)


def scenario_clusters(spec: dict[str, Any]) -> dict[str, Any]:
    h = hook("DatabricksClusters")
    cluster_id = h._do_api_call(("POST", "2.1/clusters/create"), spec["cluster"])["cluster_id"]
    steps: list[dict[str, Any]] = []

    def step(name: str, want: str) -> None:
        seen: list[str] = []
        message = wait_state(h, cluster_id, want, seen)
        st = h.get_cluster_state(cluster_id)
        steps.append(
            {
                "step": name,
                "seen": seen,
                "state": st.state,
                "is_running": st.is_running,
                "is_terminal": st.is_terminal,
                "state_message": message,
            }
        )

    step("create", "RUNNING")
    listed = h._do_api_call(("GET", "2.1/clusters/list"), {})
    ids = [c["cluster_id"] for c in listed.get("clusters", [])]
    h.terminate_cluster({"cluster_id": cluster_id})
    step("terminate_cluster", "TERMINATED")
    h.start_cluster({"cluster_id": cluster_id})
    step("start_cluster", "RUNNING")
    h.restart_cluster({"cluster_id": cluster_id})
    step("restart_cluster", "RUNNING")
    h.terminate_cluster({"cluster_id": cluster_id})
    step("terminate_cluster", "TERMINATED")
    got = h._do_api_call(("GET", "2.1/clusters/get"), {"cluster_id": cluster_id})
    h._do_api_call(("POST", "2.1/clusters/permanent-delete"), {"cluster_id": cluster_id})
    after = h._do_api_call(("GET", "2.1/clusters/list"), {})
    return {
        "cluster_id": cluster_id,
        "listed": cluster_id in ids,
        "cluster_name": got.get("cluster_name"),
        "steps": steps,
        "listed_after_permanent_delete": cluster_id
        in [c["cluster_id"] for c in after.get("clusters", [])],
    }


SCENARIOS = {
    "connection": scenario_connection,
    "submit-run": scenario_submit_run,
    "failing-run": scenario_failing_run,
    "run-now": scenario_run_now,
    "trigger": scenario_trigger,
    "deferrable": scenario_deferrable,
    "numbers": scenario_numbers,
    "clusters": scenario_clusters,
}


def run_scenario(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    # Whatever Airflow prints goes to stderr; stdout carries the JSON result.
    with contextlib.redirect_stdout(sys.stderr):
        return SCENARIOS[name](spec)


def serve() -> int:
    """Scenarios read from stdin, each in a forked process (the module docstring)."""
    # Imported before the forks: what each scenario's process saves.
    import airflow
    import airflow.providers.databricks.operators.databricks
    import airflow.providers.databricks.triggers.databricks  # noqa: F401

    for line in sys.stdin:
        req = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the scenario's process: it never returns into this loop
            code = 1
            try:
                err = os.open(req["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                os.dup2(err, 2)
                result = run_scenario(req["scenario"], req["spec"])
                with open(req["out"], "w") as f:
                    f.write(json.dumps(result, default=str) + "\n")
                code = 0
            except BaseException:  # reported as a script's uncaught exception would be
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        sys.stdout.write(json.dumps({"code": os.waitstatus_to_exitcode(status)}) + "\n")
        sys.stdout.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", required=True, help="the sparkplane URL, e.g. http://127.0.0.1:8080")
    ap.add_argument("--token", default=os.environ.get("SPARKPLANE_TOKEN"), help="a PAT")
    ap.add_argument("--spec", default="{}", help="the scenario's inputs (JSON)")
    ap.add_argument("--serve", action="store_true", help="scenarios from stdin (docstring)")
    ap.add_argument("scenario", nargs="?", choices=sorted(SCENARIOS))
    args = ap.parse_args(argv)
    if not args.token:
        ap.error("--token or SPARKPLANE_TOKEN is required")
    if args.serve == (args.scenario is not None):
        ap.error("give a scenario or --serve")
    configure(args.host, args.token)
    if args.serve:
        return serve()
    out = sys.stdout
    result = run_scenario(args.scenario, json.loads(args.spec))
    out.write(json.dumps(result, default=str) + "\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
