"""Raw HTTP against a devhost: a GET's parameters as a JSON body (as aiohttp clients, Airflow's
triggerer among them, send them), numbers written as strings (as Airflow's operators send every
number), and the job_id of a one-time run (runs/submit)."""

from __future__ import annotations

import json
from typing import Any

import httpx

from devhost.process import DevhostProcess
from tests.support import http

V = "4.1.x-scala2.13"


def call(
    h: DevhostProcess,
    method: str,
    path: str,
    body: Any = None,
    params: dict[str, Any] | None = None,
    content: bytes | None = None,
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {h.token}", "Content-Type": "application/json"}
    if body is not None:
        content = json.dumps(body).encode()
    return http.request(
        method, h.url + path, params=params, content=content, headers=headers, timeout=30
    )


def test_get_parameters_in_a_json_body(devhost: DevhostProcess) -> None:
    # Numbers as strings: accepted, and kept and answered as numbers.
    spec = {"spark_version": V, "node_type_id": "rec-small", "num_workers": "1"}
    r = call(devhost, "POST", "/api/2.1/clusters/create", spec | {"autotermination_minutes": "30"})
    assert r.status_code == 200, r.text
    cid = r.json()["cluster_id"]
    r = call(devhost, "POST", "/api/2.1/clusters/create", spec | {"num_workers": "1.5"})
    assert r.status_code == 400 and r.json()["error_code"] == "INVALID_PARAMETER_VALUE", r.text

    # clusters/get with the cluster_id in a JSON body.
    r = call(devhost, "GET", "/api/2.1/clusters/get", {"cluster_id": cid})
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["cluster_id"] == cid
    assert (got["num_workers"], got["autotermination_minutes"]) == (1, 30)
    # The query string wins over the body.
    r = call(devhost, "GET", "/api/2.1/clusters/get", {"cluster_id": "nope"}, {"cluster_id": cid})
    assert r.status_code == 200 and r.json()["cluster_id"] == cid, r.text
    # A body that is not a JSON object is malformed; no parameter at all is still missing.
    r = call(devhost, "GET", "/api/2.1/clusters/get", content=b'{"cluster_id": ')
    assert r.status_code == 400 and r.json()["error_code"] == "MALFORMED_REQUEST", r.text
    r = call(devhost, "GET", "/api/2.1/clusters/get")
    assert r.status_code == 400 and "Missing required field" in r.json()["message"], r.text

    # A one-time run on that cluster, its timeout_seconds as a string.
    task = {
        "task_key": "once",
        "existing_cluster_id": cid,
        "spark_python_task": {"python_file": "dbfs:/get-body/task.py"},
        "timeout_seconds": "60",
    }
    submit = {"run_name": "get body", "tasks": [task], "timeout_seconds": "600"}
    r = call(devhost, "POST", "/api/2.2/jobs/runs/submit", submit)
    assert r.status_code == 200, r.text
    run_id = r.json()["run_id"]
    bad = call(devhost, "POST", "/api/2.2/jobs/runs/submit", submit | {"timeout_seconds": "1e3"})
    assert bad.status_code == 400 and "timeout_seconds" in bad.json()["message"], bad.text

    # jobs/runs/get with the run_id in a JSON body (a JSON number, as the hook sends it).
    r = call(devhost, "GET", "/api/2.2/jobs/runs/get", {"run_id": run_id})
    assert r.status_code == 200, r.text
    run = r.json()
    assert run["run_id"] == run_id and run["run_type"] == "SUBMIT_RUN"
    assert run["tasks"][0]["timeout_seconds"] == 60
    # A one-time run has a job_id (its own run id): stable, and no job of jobs/get or jobs/list.
    job_id = run["job_id"]
    assert job_id == run_id
    again = call(devhost, "GET", "/api/2.2/jobs/runs/get", params={"run_id": run_id}).json()
    assert again["job_id"] == job_id
    r = call(devhost, "GET", "/api/2.2/jobs/get", params={"job_id": job_id})
    assert r.status_code == 404 and r.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST", r.text
    jobs = call(devhost, "GET", "/api/2.2/jobs/list").json().get("jobs", [])
    assert job_id not in [j["job_id"] for j in jobs]
    listed = call(devhost, "GET", "/api/2.2/jobs/runs/list", {"job_id": job_id}).json()["runs"]
    assert [x["run_id"] for x in listed] == [run_id]
    call(devhost, "POST", "/api/2.2/jobs/runs/cancel", {"run_id": run_id})
