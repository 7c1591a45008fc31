"""Hostile input against a running devhost: what the fuzzing modules share.

schemathesis generates requests from `docs/openapi.yaml` (valid and invalid ones, for every
operation) and checks each answer: no 5xx, a documented status code, the documented content type,
headers and body schema. Afterwards the devhost must still be alive, within its memory bound, with
no failed request or background function in its log.

The operations are fuzzed in two modules, each against a devhost of its own, so that two workers
share them (the cluster commands wait for their clusters to settle, which takes most of the
time): tests/integration/test_schemathesis_clusters.py takes the clusters API,
tests/integration/test_schemathesis.py every other operation.

The run is bounded and reproducible: a fixed seed, derandomized generation, no example database,
and at most MAX_EXAMPLES generated cases per operation in the fuzzing phase (plus schemathesis'
deterministic examples and coverage phases).
"""

from __future__ import annotations

import json
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from devhost.process import ROOT, DevhostProcess
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


def load_schema() -> Any:
    """`docs/openapi.yaml` with the run's bounds, for each fuzzing module's `api_schema`
    fixture. Loaded by the fixture rather than at import (`schemathesis.pytest.from_fixture`):
    schemathesis then builds the operations' tests only on the worker that runs the module, not
    at every worker's collection (about 2 s of CPU each, docs/testing.md)."""
    schema = schemathesis.openapi.from_path(SPEC)
    schema.config.seed = SEED
    schema.config.generation.update(max_examples=MAX_EXAMPLES, deterministic=True, database="none")
    return schema


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# The operations of the clusters API (tests/integration/test_schemathesis_clusters.py).
CLUSTERS_API = r"/clusters/"


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


def wait_state(url: str, token: str, cluster_id: str, state: str, timeout: float = 60) -> None:
    def get() -> str | None:
        r = http.get(
            url + "/api/2.1/clusters/get", params={"cluster_id": cluster_id}, headers=bearer(token)
        )
        return r.json().get("state")

    wait_for(f"cluster {cluster_id} {state}", lambda: get() == state, timeout, every=0.2)


def fuzz_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """The devhost to fuzz, with clusters, pools and files for the requests to hit (a module
    fixture of each fuzzing module)."""
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
            wait_state(h.url, user, cid, "RUNNING")
        http.post(
            h.url + "/api/2.1/clusters/delete", json={"cluster_id": t.clusters[2]}, headers=headers
        ).raise_for_status()
        wait_state(h.url, user, t.clusters[2], "TERMINATED")
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


def call_and_check(case: Any, target: Target) -> None:
    """Send one generated request (aimed at the target's objects) and check its answer."""
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


def assert_left_healthy(target: Target) -> None:
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
