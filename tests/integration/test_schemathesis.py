"""Hostile input against a running devhost.

schemathesis generates requests from `docs/openapi.yaml` (valid and invalid ones, for every
operation) and checks each answer: no 5xx, a documented status code, the documented content type,
headers and body schema. Afterwards the devhost must still be alive, within its memory bound, with
no failed request or background function in its log. Plain tests check the limits the document
promises: 413 for an oversized body (also a chunked one, without buffering it all), 400 with an
error body for malformed JSON, 401 without a valid token, 400 for cluster sizes beyond the
documented maximum, unknown fields that cannot pose as server-computed ones, and a devhost that
refuses a non-loopback bind unless it is asked for explicitly.

The run is bounded and reproducible: a fixed seed, derandomized generation, no example database,
and at most MAX_EXAMPLES generated cases per operation in the fuzzing phase (plus schemathesis'
deterministic examples and coverage phases).
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import schemathesis
import yaml
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from devhost.process import ROOT, DevhostProcess, free_port
from tests.support import http, wait_for

SPEC = ROOT / "docs" / "openapi.yaml"
SEED = 20261126
MAX_EXAMPLES = 20
# The devhost's resident memory must stay below this whatever it is sent (it idles at ~60 MB);
# beyond it the watchdog kills the devhost so a runaway cannot take the CI machine down.
RSS_LIMIT_MB = 1024
NO_RATE_LIMIT = {
    "SPARKPLANE_RATE_LIMIT_PER_S": "100000",
    "SPARKPLANE_RATE_LIMIT_BURST": "100000",
    # the fuzzer sends many requests without a valid token from one address
    "SPARKPLANE_BAD_AUTH_RATE_LIMIT_PER_S": "100000",
    "SPARKPLANE_BAD_AUTH_RATE_LIMIT_BURST": "100000",
}
V = "4.1.x-scala2.13"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]

schema = schemathesis.openapi.from_path(SPEC)
schema.config.seed = SEED
schema.config.generation.update(max_examples=MAX_EXAMPLES, deterministic=True, database="none")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ---------------------------------------------------------------------------- the fuzzed devhost


@dataclass
class Target:
    """The devhost under fuzzing, its tokens, and clusters and instance pools for the generated
    requests to hit."""

    host: DevhostProcess
    user: str
    operator: str
    spark_versions: list[str]
    node_types: list[str]
    clusters: list[str]
    # instance pool id -> its node type (an edit cannot change it)
    pools: dict[str, str] = field(default_factory=dict)
    # DBFS and workspace paths that exist (files and directories), open upload handles
    dbfs_paths: list[str] = field(default_factory=list)
    workspace_paths: list[str] = field(default_factory=list)
    handles: list[int] = field(default_factory=list)
    peak_rss_mb: float = 0.0
    killed: str = ""
    _stop: threading.Event = field(default_factory=threading.Event)

    def token_for(self, path: str) -> dict[str, str]:
        if path.startswith("/.well-known/"):
            return {}
        return bearer(self.operator if path.startswith("/api/admin/") else self.user)

    def create_cluster(self, **spec: Any) -> str:
        body = {"spark_version": V, "node_type_id": self.node_types[0], "num_workers": 1, **spec}
        r = http.post(
            self.host.url + "/api/2.1/clusters/create", json=body, headers=bearer(self.user)
        )
        r.raise_for_status()
        return str(r.json()["cluster_id"])

    def create_pool(self, node_type_id: str, **spec: Any) -> str:
        name = f"fuzz-pool-{len(self.pools)}-{time.monotonic_ns()}"
        body = {"instance_pool_name": name, "node_type_id": node_type_id, **spec}
        r = http.post(
            self.host.url + "/api/2.0/instance-pools/create", json=body, headers=bearer(self.user)
        )
        r.raise_for_status()
        pool_id = str(r.json()["instance_pool_id"])
        self.pools[pool_id] = node_type_id
        return pool_id

    def post(self, op: str, body: dict[str, Any]) -> httpx.Response:
        r = http.post(f"{self.host.url}/api/2.0/{op}", json=body, headers=bearer(self.user))
        r.raise_for_status()
        return r

    def create_files(self) -> None:
        self.post("dbfs/mkdirs", {"path": "/fuzz/dir"})
        self.post("dbfs/put", {"path": "dbfs:/fuzz/a.txt", "contents": "YQ==", "overwrite": True})
        self.dbfs_paths = ["/fuzz", "/fuzz/dir", "/fuzz/a.txt", "dbfs:/fuzz/a.txt"]
        self.post("workspace/mkdirs", {"path": "/Shared/fuzz/dir"})
        self.post("workspace/import", {"path": "/Shared/fuzz/a.py", "content": "YQ=="})
        self.workspace_paths = ["/Shared/fuzz", "/Shared/fuzz/a.py", "/Workspace/Shared/fuzz/a.py"]
        self.handles = [self.create_handle() for _ in range(3)]

    def create_handle(self) -> int:
        n = time.monotonic_ns()
        return int(self.post("dbfs/create", {"path": f"/fuzz/up-{n}"}).json()["handle"])

    def settle(self, cluster_id: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = http.get(
                self.host.url + "/api/2.1/clusters/get",
                params={"cluster_id": cluster_id},
                headers=bearer(self.user),
            )
            if r.status_code != 200 or r.json().get("state") in ("RUNNING", "TERMINATED"):
                return
            time.sleep(0.05)

    def watch_memory(self) -> None:
        assert self.host.proc is not None
        proc = psutil.Process(self.host.proc.pid)
        while not self._stop.wait(0.1):
            try:
                rss = proc.memory_info().rss / 2**20
            except psutil.Error:
                return
            self.peak_rss_mb = max(self.peak_rss_mb, rss)
            if rss > RSS_LIMIT_MB:
                self.killed = f"devhost RSS reached {rss:.0f} MB (limit {RSS_LIMIT_MB} MB)"
                self.host.proc.kill()
                return


def _wait_state(url: str, token: str, cluster_id: str, state: str, timeout: float = 60) -> None:
    def get() -> str | None:
        r = http.get(
            url + "/api/2.1/clusters/get", params={"cluster_id": cluster_id}, headers=bearer(token)
        )
        return r.json().get("state")

    wait_for(f"cluster {cluster_id} {state}", lambda: get() == state, timeout, every=0.2)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    # The fuzzer makes many clusters; the test replaces the ones it deletes, which needs room
    # under the clusters quota (the other quotas stay at their defaults and are fuzzed too).
    env = {**NO_RATE_LIMIT, "SPARKPLANE_QUOTA_DEFAULTS": '{"max_clusters": 100000}'}
    h = DevhostProcess(tmp_path_factory.mktemp("fuzz") / "data", env=env).start()
    try:
        user = h.token
        operator = h.operator_token
        headers = bearer(user)
        versions = http.get(h.url + "/api/2.1/clusters/spark-versions", headers=headers).json()
        nodes = http.get(h.url + "/api/2.1/clusters/list-node-types", headers=headers).json()
        t = Target(
            host=h,
            user=user,
            operator=operator,
            spark_versions=[v["key"] for v in versions["versions"]],
            node_types=[n["node_type_id"] for n in nodes["node_types"]],
            clusters=[],
        )
        # Clusters in the states the commands care about: RUNNING (edit, resize, restart) and
        # TERMINATED (start, edit).
        t.clusters = [t.create_cluster(cluster_name=f"fuzz-{i}") for i in range(3)]
        for cid in t.clusters:
            _wait_state(h.url, user, cid, "RUNNING")
        http.post(
            h.url + "/api/2.1/clusters/delete", json={"cluster_id": t.clusters[2]}, headers=headers
        ).raise_for_status()
        _wait_state(h.url, user, t.clusters[2], "TERMINATED")
        # Pools for the pool operations (and pooled clusters) to hit: one with warm nodes.
        t.create_pool(t.node_types[0], min_idle_instances=1, max_capacity=4)
        t.create_pool(t.node_types[-1])
        # Files and upload handles for the DBFS and Workspace API operations.
        t.create_files()
        watchdog = threading.Thread(target=t.watch_memory, name="rss-watchdog", daemon=True)
        watchdog.start()
        yield t
        t._stop.set()
        watchdog.join(5)
    finally:
        h.close()


def _pick(value: Any, choices: list[str]) -> Any:
    """Most generated ids are replaced by real ones (deterministically, from the generated
    value), so the requests get past "does not exist" into the validation and state rules;
    the rest keep exercising the not-found paths."""
    if not isinstance(value, str) or not choices:
        return value
    h = zlib.crc32(value.encode("utf-8", "surrogatepass"))
    return value if h % 4 == 0 else choices[h % len(choices)]


def _pick_handle(value: Any, handles: list[int]) -> Any:
    """The same for upload handles (int64s)."""
    if isinstance(value, bool) or not isinstance(value, int) or not handles:
        return value
    return value if value % 4 == 0 else handles[value % len(handles)]


def _file_paths(case: Any, t: Target) -> list[str]:
    if "/api/2.0/dbfs/" in case.path:
        return t.dbfs_paths
    return t.workspace_paths if "/api/2.0/workspace/" in case.path else []


# Commands that only apply to a settled (RUNNING or TERMINATED) cluster.
SETTLED_ONLY = ("/edit", "/start", "/restart", "/resize")


def _aim(case: Any, t: Target) -> None:
    if isinstance(case.body, dict):
        body = case.body
        for key, choices in (
            ("cluster_id", t.clusters),
            ("spark_version", t.spark_versions),
            ("node_type_id", t.node_types),
            ("driver_node_type_id", t.node_types),
        ):
            if key in body:
                body[key] = _pick(body[key], choices)
        if "instance_pool_id" in body:
            body["instance_pool_id"] = _pick(body["instance_pool_id"], list(t.pools))
            if case.path.endswith("/instance-pools/edit") and "node_type_id" in body:
                # The pool's own node type (changing it is a 400), so edits get past that rule.
                body["node_type_id"] = t.pools.get(body["instance_pool_id"], body["node_type_id"])
        for key in ("path", "source_path", "destination_path"):
            if key in body:
                body[key] = _pick(body[key], _file_paths(case, t))
        if "handle" in body:
            body["handle"] = _pick_handle(body["handle"], t.handles)
        versions = body.get("preloaded_spark_versions")
        if isinstance(versions, list):
            body["preloaded_spark_versions"] = [_pick(v, t.spark_versions) for v in versions]
        if case.path.endswith(SETTLED_ONLY) and body.get("cluster_id") in t.clusters:
            # Earlier cases keep the clusters restarting and resizing; let this one settle
            # (a second at most with the record provisioner) so valid commands get through.
            t.settle(body["cluster_id"])
    if isinstance(case.query, dict) and "cluster_id" in case.query:
        case.query["cluster_id"] = _pick(case.query["cluster_id"], t.clusters)
    if isinstance(case.query, dict) and "instance_pool_id" in case.query:
        case.query["instance_pool_id"] = _pick(case.query["instance_pool_id"], list(t.pools))
    if isinstance(case.query, dict) and "path" in case.query:
        case.query["path"] = _pick(case.query["path"], _file_paths(case, t))


@schema.parametrize()
def test_api_conforms_to_its_openapi_document(case: Any, target: Target) -> None:
    assert not target.killed, target.killed
    _aim(case, target)
    response = case.call_and_validate(
        base_url=target.host.url,
        headers=target.token_for(case.path),
        checks=CHECKS,
        timeout=30,
    )
    if case.path.endswith("/permanent-delete") and response.status_code == 200:
        # Keep a full set of clusters for the operations that come after.
        gone = case.body["cluster_id"]
        if gone in target.clusters:
            target.clusters[target.clusters.index(gone)] = target.create_cluster(num_workers=0)
    if case.path.endswith("/instance-pools/delete") and response.status_code == 200:
        # The same for pools.
        node_type = target.pools.pop(case.body["instance_pool_id"], None)
        if node_type is not None:
            target.create_pool(node_type)
    closed = case.body.get("handle") if isinstance(case.body, dict) else None
    closed = closed if case.path.endswith("/dbfs/close") else None
    if closed in target.handles:
        # And for upload handles: a close ends its handle, whether it published or not.
        target.handles.remove(closed)
        target.handles.append(target.create_handle())


def test_fuzzing_left_the_devhost_healthy(target: Target) -> None:
    """After the generated requests: the devhost is alive, answers, stayed within its memory
    bound, and neither a request nor a background function failed on what was stored."""
    assert not target.killed, target.killed
    h = target.host
    assert h.proc is not None and h.proc.poll() is None
    r = http.get(h.url + "/api/2.1/clusters/list", headers=bearer(target.user))
    assert r.status_code == 200, r.text
    r = http.get(
        h.url + "/api/admin/dead-letters/cluster-lifecycle", headers=bearer(target.operator)
    )
    assert r.status_code == 200 and r.json()["messages"] == [], r.text
    failures = []
    for line in h.log.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        msg = str(rec.get("msg", ""))
        if rec.get("level") in ("ERROR", "CRITICAL") or msg.startswith("function failed"):
            failures.append(f"{msg}: {rec.get('exc') or rec.get('error') or ''}")
    assert not failures, f"peak RSS {target.peak_rss_mb:.0f} MB\n" + "\n".join(failures[:5])
    assert target.peak_rss_mb < RSS_LIMIT_MB, f"peak RSS {target.peak_rss_mb:.0f} MB"


# ---------------------------------------------------------------------------- plain limits


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
    _wait_state(host.url, host.token, cid, "RUNNING")
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
