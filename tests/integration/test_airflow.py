"""Apache Airflow's Databricks provider, unchanged, against a devhost subprocess (record
provisioner).

Airflow lives in .venv-airflow (`make airflow-venv`, pinned in tools/airflow/): each scenario is
a run of tests/integration/airflow_driver.py with that venv's Python, which uses the provider's
own operators and DatabricksHook (see the driver's docstring for the scenarios and how the
connection reaches http://127.0.0.1:PORT) and prints what it saw as JSON. Without that venv
these tests skip, except in CI (CI=true), where they fail.

The runs' task is a Python file put on DBFS through the DBFS API (POST /api/2.0/dbfs/put) and
named `dbfs:/airflow/task.py`, as an Airflow user's DAG would name an uploaded file: the tests
that run it fail until the control plane serves that API. Connection and cluster management do
not need it.

Three things the provider depends on have their own tests:
- every number in an operator's JSON goes out as a string (`normalise_json_content`), which
  Databricks accepts, and so does this control plane (stored and answered as numbers);
- deferrable operators call `get_job_id(run_id)`, which reads `job_id` from runs/get, which a
  runs/submit run has too (its own run id, docs/jobs.md);
- the triggerer's aiohttp calls send a GET's parameters as a JSON body, not a query string.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import select
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devhost.process import DevhostProcess
from tests.support import http

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW_VENV = ROOT / ".venv-airflow"
AIRFLOW_PY = AIRFLOW_VENV / "bin" / "python"
AIRFLOW_STAMP = AIRFLOW_VENV / ".installed"
REQUIREMENTS = ROOT / "tools" / "airflow" / "requirements.txt"
DRIVER = Path(__file__).with_name("airflow_driver.py")
DRIVER_TIMEOUT_S = 150

V = "4.1.x-scala2.13"
TASK_FILE = "dbfs:/airflow/task.py"
TASK = """
import sys
n = int(sys.argv[1])
print(f"airflow task: sum of squares below {n} is {sum(i * i for i in range(n))}", flush=True)
if sys.argv[2:] == ["fail"]:
    raise ValueError(f"asked to fail at {n}")
"""

Drive = Callable[..., dict[str, Any]]


def squares(n: int) -> str:
    return f"airflow task: sum of squares below {n} is {sum(i * i for i in range(n))}"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def pinned() -> dict[str, str]:
    """The versions tools/airflow/requirements.txt pins, by package name."""
    out = {}
    for line in REQUIREMENTS.read_text().splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, version = line.split("==", 1)
            out[name.strip()] = version.strip()
    return out


class DriverFailed(AssertionError):
    def __init__(self, scenario: str, code: int, stderr: str) -> None:
        super().__init__(f"airflow_driver {scenario} exited {code}:\n{stderr[-6000:]}")
        self.stderr = stderr


@pytest.fixture(scope="module")
def airflow_python() -> Path:
    if not AIRFLOW_STAMP.is_file() or not AIRFLOW_PY.is_file():
        reason = f"{AIRFLOW_VENV.name} is missing; run `make airflow-venv`"
        if _in_ci():
            pytest.fail(f"Airflow unavailable in CI: {reason}", pytrace=False)
        pytest.skip(f"Airflow unavailable: {reason}")
    return AIRFLOW_PY


@pytest.fixture(scope="module")
def host(
    airflow_python: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DevhostProcess]:
    h = DevhostProcess(
        tmp_path_factory.mktemp("airflow") / "data",
        env={"SPARKPLANE_JOBS_POLL_INTERVAL_S": "0.3"},
    ).start()
    try:
        yield h
    finally:
        h.stop()
        h.kill_leftovers()


@pytest.fixture(scope="module")
def airflow(
    airflow_python: Path, host: DevhostProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Drive]:
    """Runs one driver scenario in the Airflow venv; returns its JSON result. One driver
    process imports Airflow once and forks a process per scenario (airflow_driver.py --serve)."""
    home = tmp_path_factory.mktemp("airflow-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "DATABRICKS_"))}
    env.update({"SPARKPLANE_TOKEN": host.token, "AIRFLOW_HOME": str(home)})
    env.pop("PYTHONPATH", None)
    server_err = home / "driver.err"
    with open(server_err, "wb") as err:
        server = subprocess.Popen(
            [str(airflow_python), str(DRIVER), "--host", host.url, "--serve"],
            env=env,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            start_new_session=True,  # its scenario processes too, for the kill below
        )
    assert server.stdin is not None and server.stdout is not None
    calls = itertools.count()

    def drive(scenario: str, spec: dict[str, Any] | None = None) -> dict[str, Any]:
        assert server.stdin is not None and server.stdout is not None
        n = next(calls)
        out, err = home / f"{n}-{scenario}.json", home / f"{n}-{scenario}.err"
        req = {"scenario": scenario, "spec": spec or {}, "out": str(out), "err": str(err)}
        server.stdin.write(json.dumps(req) + "\n")
        server.stdin.flush()
        if not select.select([server.stdout], [], [], DRIVER_TIMEOUT_S)[0]:
            os.killpg(server.pid, signal.SIGKILL)
            raise subprocess.TimeoutExpired(scenario, DRIVER_TIMEOUT_S)
        line = server.stdout.readline()
        if not line:
            raise DriverFailed(scenario, server.wait(10), server_err.read_text())
        code = json.loads(line)["code"]
        if code != 0:
            raise DriverFailed(scenario, code, err.read_text())
        return json.loads(out.read_text().strip().splitlines()[-1])

    try:
        yield drive
    finally:
        server.stdin.close()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)


def api(host: DevhostProcess, method: str, path: str, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {host.token}"}
    return http.request(method, host.url + path, headers=headers, timeout=30, **kw)


def dbfs_put(host: DevhostProcess, path: str, text: str) -> None:
    """Put a file on DBFS through the DBFS API, as a user uploads a task's file."""
    body = {
        "path": path,
        "contents": base64.b64encode(text.encode()).decode(),
        "overwrite": True,
    }
    r = api(host, "POST", "/api/2.0/dbfs/put", json=body)
    if r.status_code == 404 and "ENDPOINT_NOT_FOUND" in r.text:
        pytest.fail(
            "this control plane does not serve the DBFS API (POST /api/2.0/dbfs/put) yet, "
            f"so {path} cannot be uploaded: {r.text}",
            pytrace=False,
        )
    assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def task_file(host: DevhostProcess) -> str:
    dbfs_put(host, TASK_FILE.removeprefix("dbfs:"), TASK)
    return TASK_FILE


@pytest.fixture(scope="module")
def cluster_id(host: DevhostProcess) -> Iterator[str]:
    """An all-purpose cluster the runs use (existing_cluster_id: no numbers in the runs' JSON)."""
    spec = {"cluster_name": "airflow runs", "spark_version": V}
    spec |= {"node_type_id": "rec-small", "num_workers": 1}
    r = api(host, "POST", "/api/2.1/clusters/create", json=spec)
    assert r.status_code == 200, r.text
    cid = r.json()["cluster_id"]
    yield cid
    api(host, "POST", "/api/2.1/clusters/permanent-delete", json={"cluster_id": cid})


def run_spec(python_file: str, cluster: str, *params: str) -> dict[str, Any]:
    return {"python_file": python_file, "parameters": list(params), "existing_cluster_id": cluster}


def assert_succeeded(run: dict[str, Any], host: DevhostProcess, printed: str) -> None:
    assert run["life_cycle_state"] == "TERMINATED", run
    assert run["result_state"] == "SUCCESS", run
    assert run["is_terminal"] and run["is_successful"]
    assert run["run_page_url"].startswith(host.url)
    [task] = run["tasks"]
    assert task["state"]["result_state"] == "SUCCESS"
    assert task["metadata_state"]["result_state"] == "SUCCESS"
    assert printed in task["logs"], task
    assert task["error"] is None


# ------------------------------------------------------------------ needs no upload: passes today


def test_connection_reaches_an_http_port(airflow: Drive, host: DevhostProcess) -> None:
    got = airflow("connection")
    versions = pinned()
    assert got["airflow"] == versions["apache-airflow"]
    assert got["provider"] == versions["apache-airflow-providers-databricks"]
    # host + port + schema=http, in JSON or URI form (databricks://:TOKEN@127.0.0.1:PORT/http).
    for form in ("json", "uri"):
        f = got["forms"][form]
        assert f["endpoint"] == f"{host.url}/api/2.2/jobs/runs/get", f
        assert f["hook_host"] == "127.0.0.1" and f["token_auth"], f
    # The URL as host alone loses its scheme and port: the hook would call https on 443.
    naive = got["forms"]["naive"]
    assert naive["endpoint"] == "https://127.0.0.1/api/2.2/jobs/runs/get", naive
    # test_connection() calls GET 2.1/clusters/spark-versions with the token.
    assert got["test_connection"] == {"ok": True, "message": "Connection successfully tested"}


def test_cluster_management_through_the_hook(airflow: Drive, host: DevhostProcess) -> None:
    name = f"airflow-{uuid.uuid4().hex[:8]}"
    spec = {"cluster_name": name, "spark_version": V, "node_type_id": "rec-small"}
    got = airflow("clusters", {"cluster": spec | {"num_workers": 1}})
    assert got["listed"] and got["cluster_name"] == name
    steps = got["steps"]
    assert [s["step"] for s in steps] == [
        "create",
        "terminate_cluster",
        "start_cluster",
        "restart_cluster",
        "terminate_cluster",
    ]
    allowed = {
        "create": {"PENDING", "RUNNING"},
        "start_cluster": {"PENDING", "RUNNING"},
        "restart_cluster": {"RESTARTING", "RUNNING"},
        "terminate_cluster": {"TERMINATING", "TERMINATED"},
    }
    for s in steps:
        assert set(s["seen"]) <= allowed[s["step"]], s
        if s["step"] == "terminate_cluster":
            assert s["state"] == "TERMINATED" and s["is_terminal"] and not s["is_running"], s
            assert s["state_message"], s
        else:
            assert s["state"] == "RUNNING" and s["is_running"] and not s["is_terminal"], s
    # start_cluster and restart_cluster really went through a boot and a restart.
    assert steps[2]["seen"][0] == "PENDING", steps[2]
    assert steps[3]["seen"][0] == "RESTARTING", steps[3]
    assert not got["listed_after_permanent_delete"]
    r = api(host, "GET", "/api/2.1/clusters/get", params={"cluster_id": got["cluster_id"]})
    assert r.status_code == 404 and r.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST", r.text


def test_numbers_as_strings(airflow: Drive, host: DevhostProcess) -> None:
    """The operators stringify every number: a new_cluster's num_workers goes out as "1"; it
    is accepted, and kept and answered as the number."""
    spec = {
        "job_name": f"airflow-numbers-{uuid.uuid4().hex[:8]}",
        "python_file": TASK_FILE,
        "parameters": ["3"],
        "new_cluster": {
            "spark_version": V,
            "node_type_id": "rec-small",
            "num_workers": 1,
            "autotermination_minutes": 30,
        },
    }
    got = airflow("numbers", spec)
    assert all(v["accepted"] for v in got.values()), got
    job = api(host, "GET", "/api/2.2/jobs/get", params={"job_id": got["create_job"]["id"]})
    settings = job.json()["settings"]
    assert (settings["max_concurrent_runs"], settings["timeout_seconds"]) == (2, 600), settings
    [cluster] = settings["job_clusters"]
    assert cluster["new_cluster"]["num_workers"] == 1, cluster
    assert cluster["new_cluster"]["autotermination_minutes"] == 30, cluster
    assert settings["tasks"][0]["max_retries"] == 1, settings
    run_id = got["submit"]["id"]
    run = api(host, "GET", "/api/2.2/jobs/runs/get", params={"run_id": run_id}).json()
    assert run["tasks"][0]["new_cluster"]["num_workers"] == 1, run
    api(host, "POST", "/api/2.2/jobs/runs/cancel", json={"run_id": run_id})


# ------------------------------------------------ needs the DBFS API to upload the task's file


def test_submit_run_polls_to_success_and_reads_the_output(
    airflow: Drive, host: DevhostProcess, task_file: str, cluster_id: str
) -> None:
    got = airflow("submit-run", run_spec(task_file, cluster_id, "10"))
    assert got["operator_run_id"] == got["run_id"]
    assert_succeeded(got, host, squares(10))
    assert got["state_str"] == "State: TERMINATED. Result: SUCCESS. "


def test_failing_run_fails_the_operator_with_the_task_error(
    airflow: Drive, task_file: str, cluster_id: str
) -> None:
    got = airflow("failing-run", run_spec(task_file, cluster_id, "3", "fail"))
    assert got["life_cycle_state"] == "TERMINATED" and got["result_state"] == "FAILED", got
    assert not got["is_successful"]
    [task] = got["tasks"]
    assert squares(3) in task["logs"]
    assert "ValueError: asked to fail at 3" in task["error"]
    # The operator raised with the task's error, read through get-output of the task run.
    assert got["raised"] and "ValueError: asked to fail at 3" in got["raised"], got
    assert f"'run_id': {task['run_id']}" in got["raised"]


def test_create_job_then_run_now_by_id_and_by_name(
    airflow: Drive, host: DevhostProcess, task_file: str, cluster_id: str
) -> None:
    spec = run_spec(task_file, cluster_id, "5")
    spec |= {
        "job_name": f"airflow-job-{uuid.uuid4().hex[:8]}",
        "python_params_by_id": ["6"],
        "python_params_by_name": ["7"],
    }
    got = airflow("run-now", spec)
    job_id = got["created_job_id"]
    assert got["reset_job_id"] == job_id and got["found_by_name"] == job_id
    assert got["job_tags"] == {"reset": "yes"}
    assert_succeeded(got["by_id"], host, squares(6))
    assert_succeeded(got["by_name"], host, squares(7))
    assert got["by_id"]["job_id"] == got["by_name"]["job_id"] == job_id
    assert got["by_id"]["run_id"] != got["by_name"]["run_id"]


def test_trigger_polls_over_aiohttp(
    airflow: Drive, host: DevhostProcess, task_file: str, cluster_id: str
) -> None:
    got = airflow("trigger", run_spec(task_file, cluster_id, "4"))
    assert_succeeded(got, host, squares(4))
    event = got["event"]
    assert event["run_id"] == got["run_id"] and event["errors"] == []
    assert json.loads(event["run_state"])["result_state"] == "SUCCESS"


def test_deferrable_submit_run(
    airflow: Drive, host: DevhostProcess, task_file: str, cluster_id: str
) -> None:
    got = airflow("deferrable", run_spec(task_file, cluster_id, "8"))
    assert_succeeded(got, host, squares(8))
    # get_job_id(run_id) read it; a one-time run's job_id is its own run id.
    assert got["job_id"] == got["run_id"]
