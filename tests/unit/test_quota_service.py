"""What the quota service counts, with the real store and file store: only the workspace's own
documents, clusters that hold capacity, runs not finished, pools not deleted, one user's own
tokens, and the bytes of every file; and the operator's limits over the defaults."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from shared.adapters.local_files import LocalFileStore
from shared.adapters.sqlite_store import SqliteStore
from shared.domain import cluster as cdom
from shared.domain.cluster import AutoScale, ClusterSpec
from shared.domain.states import State
from shared.services.quotas import QuotaService
from shared.settings import Settings


def service(tmp_path: Path, defaults: str = "") -> tuple[QuotaService, SqliteStore, LocalFileStore]:
    store = SqliteStore(tmp_path / "store.db")
    files = LocalFileStore(tmp_path / "files")
    return QuotaService(store, files, Settings(quota_defaults=defaults)), store, files


def add_cluster(store: SqliteStore, ws: str, cid: str, spec: ClusterSpec, **state: object) -> None:
    c = cdom.create(cluster_id=cid, workspace_id=ws, spec=spec, user="u", now=1)
    store.create("cluster", ws, cid, c.model_copy(update=state).doc())


def test_clusters_count_what_holds_capacity(tmp_path: Path) -> None:
    q, store, _ = service(tmp_path)
    add_cluster(store, "a", "c1", ClusterSpec(spark_version="v", num_workers=3))
    auto = ClusterSpec(spark_version="v", autoscale=AutoScale(min_workers=1, max_workers=8))
    add_cluster(store, "a", "c2", auto)
    add_cluster(
        store, "a", "c3", ClusterSpec(spark_version="v", num_workers=5), state=State.TERMINATED
    )
    add_cluster(store, "a", "c4", ClusterSpec(spark_version="v", num_workers=5), deleted=True)
    add_cluster(store, "b", "c5", ClusterSpec(spark_version="v", num_workers=7))
    u = q.clusters("a")
    assert (u.clusters, u.workers) == (2, 11)
    u = q.clusters("a", without="c2")
    assert (u.clusters, u.workers) == (1, 3)


def test_runs_pools_jobs_and_tokens_are_the_workspaces_own(tmp_path: Path) -> None:
    q, store, _ = service(tmp_path)
    for i, state in enumerate(["RUNNING", "QUEUED", "PENDING", "TERMINATED", "SKIPPED"]):
        store.create("run", "a", f"r{i}", {"run_id": i, "state": state})
    store.create("run", "b", "r9", {"run_id": 9, "state": "RUNNING"})
    assert q.active_runs("a") == 3 and q.active_runs("b") == 1
    store.create("instance_pool", "a", "p1", {"state": "ACTIVE"})
    store.create("instance_pool", "a", "p2", {"state": "DELETED"})
    assert q.pools("a") == 1
    store.create("job", "a", "j1", {})
    store.create("job", "a", "j2", {})
    assert q.jobs("a") == 2 and q.jobs("b") == 0
    for i, (user, role) in enumerate([("me", "user"), ("me", "user"), ("you", "user")]):
        store.create("token-info", "a", f"t{i}", {"user": user, "role": role})
    store.create("token-info", "a", "op", {"user": "me", "role": "operator"})
    assert q.tokens("a", "me") == 2 and q.tokens("a", "you") == 1 and q.tokens("b", "me") == 0


def test_file_bytes_walk_every_directory(tmp_path: Path) -> None:
    q, _, files = service(tmp_path)
    assert q.file_bytes("a") == 0  # nothing written yet
    files.write("a", "/dbfs/x.bin", b"x" * 10, overwrite=False)
    files.write("a", "/dbfs/deep/er/y.bin", b"y" * 20, overwrite=False)
    files.write("a", "/workspace/Shared/z.py", b"z" * 5, overwrite=False)
    files.write("b", "/dbfs/other.bin", b"o" * 100, overwrite=False)
    files.stage_block("a", "upload1", 0, b"s" * 1000)  # staged, not a file yet
    assert q.file_bytes("a") == 35 and q.file_bytes("b") == 100


def test_limits_are_the_operators_over_the_defaults(tmp_path: Path) -> None:
    q, store, _ = service(tmp_path, '{"max_jobs": 3}')
    assert q.of("a").max_jobs == 3  # no workspace document: the defaults
    store.create("workspace", "a", "a", {"state": "ACTIVE", "quotas": {"max_clusters": 2}})
    got = q.of("a")
    assert (got.max_clusters, got.max_jobs, got.max_pools) == (2, 3, 20)


def test_admit_serialises_one_workspace_and_resource_only(tmp_path: Path) -> None:
    q, _, _ = service(tmp_path)
    inside: list[str] = []
    overlap = threading.Event()

    def hold(ws: str, resource: str) -> None:
        with q.admit(ws, resource):
            inside.append(ws + resource)
            if len(inside) > 1:
                overlap.set()
            time.sleep(0.2)
            inside.remove(ws + resource)

    same = [threading.Thread(target=hold, args=("a", "clusters")) for _ in range(2)]
    for t in same:
        t.start()
    for t in same:
        t.join()
    assert not overlap.is_set()
    other = [
        threading.Thread(target=hold, args=(ws, r)) for ws, r in (("a", "jobs"), ("b", "jobs"))
    ]
    for t in other:
        t.start()
    for t in other:
        t.join()
    assert overlap.is_set()
