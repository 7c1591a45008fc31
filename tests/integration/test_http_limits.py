"""The limits `docs/openapi.yaml` promises, checked against a running devhost: 413 for an
oversized body (also a chunked one, without buffering it all), 400 with an error body for
malformed JSON, 401 without a valid token, 400 for cluster sizes beyond the documented maximum,
unknown fields that cannot pose as server-computed ones, and a devhost that refuses a
non-loopback bind unless it is asked for explicitly. (The generated requests against the same
document are in tests/integration/test_schemathesis.py and test_schemathesis_clusters.py.)
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from devhost.process import ROOT, DevhostProcess, free_port
from tests.integration.fuzzing import NO_RATE_LIMIT, SPEC, V, bearer, wait_state
from tests.support import http


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevhostProcess]:
    h = DevhostProcess(tmp_path_factory.mktemp("limits") / "data", env=NO_RATE_LIMIT).start()
    try:
        yield h
    finally:
        h.close()


def _error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["error_code"] == code and isinstance(body["message"], str) and body["message"]


def test_oversized_body_gets_413(host: DevhostProcess) -> None:
    big = b'{"cluster_name": "' + b"x" * (1 << 20) + b'"}'
    for path in ("/api/2.1/clusters/create", "/api/2.0/clusters/edit", "/api/2.0/token/create"):
        r = http.post(host.url + path, content=big, headers=bearer(host.token), timeout=30)
        _error(r, 413, "REQUEST_ENTITY_TOO_LARGE")


def test_body_beyond_the_host_limit_gets_413_before_it_is_read(host: DevhostProcess) -> None:
    # 200 MiB announced, nothing sent: the host answers from the headers alone.
    with socket.create_connection(("127.0.0.1", host.port), timeout=10) as s:
        s.sendall(
            b"POST /api/2.1/clusters/create HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Authorization: Bearer " + host.token.encode() + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: 209715200\r\n\r\n"
        )
        raw = b""
        while b"\r\n\r\n" not in raw or not raw.rstrip().endswith(b"}"):
            chunk = s.recv(65536)
            if not chunk:
                break
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), raw[:300]
    assert json.loads(body)["error_code"] == "REQUEST_ENTITY_TOO_LARGE"


@pytest.mark.parametrize(
    "body",
    [b"{", b'{"spark_version": }', b"[1, 2]", b'"text"', b"\xff\xfe{}", b'{"a": 1} x'],
    ids=["truncated", "no-value", "array", "string", "not-utf8", "trailing-garbage"],
)
def test_malformed_json_gets_400_with_an_error_body(host: DevhostProcess, body: bytes) -> None:
    for path in ("/api/2.1/clusters/create", "/api/2.0/clusters/resize", "/api/2.0/token/delete"):
        r = http.post(
            host.url + path,
            content=body,
            headers={**bearer(host.token), "Content-Type": "application/json"},
        )
        _error(r, 400, "MALFORMED_REQUEST")


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer dapi00000000000000000000000000000000",
        "Basic dXNlcg==",
    ],
    ids=["absent", "empty", "no-token", "unknown-token", "basic"],
)
def test_no_valid_token_gets_401(host: DevhostProcess, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path in (
        ("GET", "/api/2.1/clusters/list"),
        ("GET", "/api/2.0/clusters/get?cluster_id=x"),
        ("POST", "/api/2.1/clusters/create"),
        ("GET", "/api/2.0/token/list"),
        ("GET", "/api/admin/workspaces"),
        ("POST", "/api/admin/dead-letters/cluster-lifecycle/1/resubmit"),
    ):
        r = http.request(method, host.url + path, headers=headers, json={})
        _error(r, 401, "UNAUTHENTICATED")


def _node_type(host: DevhostProcess) -> str:
    r = http.get(host.url + "/api/2.1/clusters/list-node-types", headers=bearer(host.token))
    return str(r.json()["node_types"][0]["node_type_id"])


def test_chunked_body_is_not_buffered_without_bound(host: DevhostProcess) -> None:
    """A chunked body has no Content-Length for the host to check up front: it must still be
    refused with 413 without the whole body landing in the devhost's memory."""
    assert host.proc is not None
    proc = psutil.Process(host.proc.pid)
    before = proc.memory_info().rss
    peak = [before]
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], proc.memory_info().rss)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    chunk = b"%x\r\n%s\r\n" % (1 << 20, b" " * (1 << 20))
    raw = b""
    try:
        with socket.create_connection(("127.0.0.1", host.port), timeout=60) as s:
            s.sendall(
                b"POST /api/2.1/clusters/create HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Authorization: Bearer " + host.token.encode() + b"\r\n"
                b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            try:
                for _ in range(384):  # 384 MiB
                    s.sendall(chunk)
                    if select.select([s], [], [], 0)[0]:
                        break  # the host answered early: stop sending
                else:
                    s.sendall(b"0\r\n\r\n")
            except OSError:
                pass  # the host closed the connection after answering
            while not raw.rstrip().endswith(b"}"):
                got = s.recv(65536)
                if not got:
                    break
                raw += got
    finally:
        done.set()
        watcher.join(5)
    assert raw.startswith(b"HTTP/1.1 413"), raw[:300]
    growth_mb = (peak[0] - before) / 2**20
    assert growth_mb < 300, f"devhost RSS grew by {growth_mb:.0f} MB for a 384 MiB chunked body"


def test_cluster_sizes_beyond_the_documented_maximum_get_400(host: DevhostProcess) -> None:
    doc = yaml.safe_load(SPEC.read_text())
    most = doc["components"]["schemas"]["NumWorkers"]["maximum"]
    node = _node_type(host)
    url, auth = host.url + "/api/2.1/clusters", bearer(host.token)
    r = http.post(
        url + "/create",
        json={"spark_version": V, "node_type_id": node, "num_workers": 0},
        headers=auth,
    )
    cid = r.json()["cluster_id"]
    wait_state(host.url, host.token, cid, "RUNNING")
    for size in (
        {"num_workers": most + 1},
        {"autoscale": {"min_workers": 0, "max_workers": most + 1}},
    ):
        r = http.post(url + "/resize", json={"cluster_id": cid, **size}, headers=auth)
        _error(r, 400, "INVALID_PARAMETER_VALUE")
    for size in (
        {"num_workers": most + 1},
        {"num_workers": 10**23},
        {"autoscale": {"min_workers": 0, "max_workers": most + 1}},
        {"autoscale": {"min_workers": 10**23, "max_workers": 10**24}},
    ):
        body = {"spark_version": V, "node_type_id": node, **size}
        r = http.post(url + "/create", json=body, headers=auth)
        _error(r, 400, "INVALID_PARAMETER_VALUE")
        r = http.post(url + "/edit", json={**body, "cluster_id": cid}, headers=auth)
        _error(r, 400, "INVALID_PARAMETER_VALUE")
    assert http.get(url + "/list", headers=auth).status_code == 200


def test_unknown_fields_never_shadow_what_the_server_reports(host: DevhostProcess) -> None:
    """Unknown create fields are kept and returned (Databricks has many), but a field the
    server computes (driver, terminated_time, cluster_cores, spec, ...) is the server's."""
    shadows = {
        "driver": "x",
        "terminated_time": "never",
        "cluster_cores": "lots",
        "cluster_memory_mb": "lots",
        "termination_reason": 1,
        "spark_context_id": "x",
        "last_restarted_time": "x",
        "pinned_by_user_name": 5,
        "spec": 7,
    }
    body = {"spark_version": V, "node_type_id": _node_type(host), "num_workers": 0, **shadows}
    url, auth = host.url + "/api/2.1/clusters", bearer(host.token)
    r = http.post(url + "/create", json=body, headers=auth)
    if r.status_code == 400:  # refusing them is fine too
        _error(r, 400, "INVALID_PARAMETER_VALUE")
        return
    cid = r.json()["cluster_id"]
    got = http.get(url + "/get", params={"cluster_id": cid}, headers=auth).json()
    [listed] = [
        c
        for c in http.get(url + "/list", headers=auth).json()["clusters"]
        if c["cluster_id"] == cid
    ]
    for details in (got, listed):
        for key, value in shadows.items():
            assert details.get(key) != value, (key, details.get(key))
    host.client().clusters.get(cid)  # the SDK can read it


@pytest.mark.parametrize("bind", ["0.0.0.0", "::", "192.0.2.10"])
def test_devhost_refuses_a_non_loopback_bind_by_default(tmp_path: Path, bind: str) -> None:
    for allow in (None, "false"):
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("SPARKPLANE_", "DATABRICKS_"))
        }
        env.update(
            SPARKPLANE_HOST=bind,
            SPARKPLANE_PORT=str(free_port()),
            SPARKPLANE_DATA_DIR=str(tmp_path / "data"),
        )
        if allow is not None:
            env["SPARKPLANE_ALLOW_REMOTE_BIND"] = allow
        p = subprocess.run(
            [sys.executable, "-m", "devhost"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
        assert f"refusing to bind {bind}" in p.stderr
        assert "SPARKPLANE_ALLOW_REMOTE_BIND=true" in p.stderr
        assert "sparkplane control plane:" not in p.stdout
        # It stopped before taking the data directory (no store, no tokens written).
        assert not (tmp_path / "data" / "token").exists()
