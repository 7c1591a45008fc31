"""The agent's summary of Spark's REST payloads, its disk reports and its heartbeats."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from shared import agent, agent_ready
from shared.agent import summarize, worker_key


def ex(
    id_: str, port: int, cores: int, active: int, shuffle: int = 0, mem: int = 0, rdd: int = 0
) -> dict:
    return {
        "id": id_,
        "isActive": True,
        "totalCores": cores,
        "activeTasks": active,
        "totalShuffleWrite": shuffle,
        "memoryUsed": mem,
        "diskUsed": 0,
        "rddBlocks": rdd,
        "executorLogs": {"stdout": f"http://127.0.0.1:{port}/logPage/?appId=a&executorId={id_}"},
    }


def test_summary_of_two_apps() -> None:
    app1 = {
        "jobs": [{"jobId": 1}],
        "stages": [
            {"numTasks": 10, "numActiveTasks": 2, "numCompleteTasks": 3},
            {"numTasks": 4, "numActiveTasks": 0, "numCompleteTasks": 0},
        ],
        "executors": [
            {"id": "driver", "totalCores": 8, "activeTasks": 0},
            ex("0", 8081, 2, 2, shuffle=100),
            ex("1", 8082, 2, 0),
        ],
        "sql": [{"status": "RUNNING"}, {"status": "COMPLETED"}],
    }
    app2 = {"jobs": [], "stages": [], "executors": [ex("0", 8082, 1, 0, mem=5, rdd=1)], "sql": []}
    s = summarize([app1, app2])
    assert s["running_tasks"] == 2 and s["pending_tasks"] == 5 + 4
    assert s["active_jobs"] == 1 and s["active_queries"] == 1 and s["total_slots"] == 5
    assert s["workers"] == [
        {
            "node_id": "http://127.0.0.1:8081/",
            "running_tasks": 2,
            "shuffle_bytes": 100,
            "cached_bytes": 0,
        },
        {
            "node_id": "http://127.0.0.1:8082/",
            "running_tasks": 0,
            "shuffle_bytes": 0,
            "cached_bytes": 5,
        },
    ]


def test_broadcast_blocks_alone_are_not_cached_data() -> None:
    """Every executor that ran a task stores the task's broadcast code (Spark counts it in
    memoryUsed); without RDD blocks nothing would be recomputed if the worker went, so the
    worker holds no state and the autoscaler may remove it."""
    app = {"jobs": [], "stages": [], "executors": [ex("0", 8081, 2, 0, mem=471779)], "sql": []}
    [w] = summarize([app])["workers"]
    assert w["cached_bytes"] == 0


def test_idle_cluster_and_worker_key_fallback() -> None:
    assert summarize([])["running_tasks"] == 0
    assert worker_key({"hostPort": "10.0.0.5:4000"}) == "10.0.0.5:4000"


# -- local disk reports and node mode -----------------------------------------------------------


def test_used_bytes_sums_the_files_under_the_directory(tmp_path: Path) -> None:
    (tmp_path / "blockmgr-1" / "0a").mkdir(parents=True)
    (tmp_path / "blockmgr-1" / "0a" / "shuffle_0_0_0.data").write_bytes(b"x" * 1000)
    (tmp_path / "blockmgr-1" / "0a" / "shuffle_0_0_0.index").write_bytes(b"x" * 24)
    (tmp_path / "spark-abc").mkdir()
    (tmp_path / "spark-abc" / "temp_shuffle").write_bytes(b"x" * 5)
    (tmp_path / "empty").mkdir()
    # A symbolic link is not followed (it would count the target twice, or outside files).
    (tmp_path / "link").symlink_to(tmp_path / "blockmgr-1")
    assert agent.used_bytes(str(tmp_path)) == 1029
    assert agent.used_bytes(str(tmp_path / "empty")) == 0
    with pytest.raises(FileNotFoundError):
        agent.used_bytes(str(tmp_path / "missing"))


def test_used_bytes_tolerates_entries_vanishing_during_the_walk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "gone-dir").mkdir()
    (tmp_path / "gone-dir" / "f").write_bytes(b"x" * 10)
    (tmp_path / "gone-file").write_bytes(b"x" * 100)
    (tmp_path / "stays").write_bytes(b"x" * 7)
    real_scandir = os.scandir

    def scandir_then_delete(path: str) -> Any:
        # List the directory, then delete entries before the walk reads them (what Spark does
        # when a shuffle is cleaned up meanwhile).
        entries = list(real_scandir(path))
        if path == str(tmp_path):
            (tmp_path / "gone-file").unlink()
            shutil.rmtree(tmp_path / "gone-dir")

        class It:
            def __iter__(self) -> Any:
                return iter(entries)

            def __enter__(self) -> Any:
                return self

            def __exit__(self, *_: object) -> None:
                return None

        return It()

    monkeypatch.setattr(agent.os, "scandir", scandir_then_delete)
    assert agent.used_bytes(str(tmp_path)) == 7


def test_measure_disk_quota_file_and_scratch_dir_fallback(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "f").write_bytes(b"x" * 300)
    quota = tmp_path / "quota"
    quota.write_text("1073741824\n")
    env = {
        "SPARKPLANE_NODE_ID": "node-1",
        "SPARKPLANE_SCRATCH_DIR": str(scratch),
        "SPARKPLANE_DISK_QUOTA_FILE": str(quota),
    }
    assert agent.measure_disk(env) == {
        "node_id": "node-1",
        "used_bytes": 300,
        "total_bytes": 1073741824,
    }
    # The provisioner grows the quota: the next report says so.
    quota.write_text("2147483648")
    assert agent.measure_disk(env)["total_bytes"] == 2147483648  # type: ignore[index]
    # Without a quota file: the file system's size. SPARK_LOCAL_DIRS names the dirs; one that
    # does not exist is left out (Spark leaves it out too).
    env = {"SPARKPLANE_NODE_ID": "node-1", "SPARK_LOCAL_DIRS": f"{scratch},{tmp_path}/other"}
    assert agent.scratch_dir(env) == str(scratch)
    assert agent.measure_disk(env) == {
        "node_id": "node-1",
        "used_bytes": 300,
        "total_bytes": shutil.disk_usage(scratch).total,
    }
    # No directory (or no node id): no disk object.
    assert agent.measure_disk({"SPARKPLANE_NODE_ID": "node-1"}) is None
    assert agent.measure_disk({"SPARKPLANE_SCRATCH_DIR": str(scratch)}) is None
    assert agent.scratch_dir({"SPARK_LOCAL_DIRS": ""}) is None
    # An unreadable quota is an error (the heartbeat then goes without a disk object).
    quota.write_text("lots")
    with pytest.raises(ValueError):
        agent.measure_disk({**env, "SPARKPLANE_DISK_QUOTA_FILE": str(quota)})
    with pytest.raises(FileNotFoundError):  # not written yet
        agent.measure_disk({**env, "SPARKPLANE_DISK_QUOTA_FILE": str(tmp_path / "nope")})


def _local_dirs(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Three Spark local dirs (the temp disk's and two data disks', say) with files in them."""
    a, b, c = tmp_path / "mnt" / "spark", tmp_path / "mnt" / "spark-0", tmp_path / "spark-1"
    for d, n in ((a, 100), (b, 20), (c, 3)):
        (d / "blockmgr-1" / "0a").mkdir(parents=True)
        (d / "blockmgr-1" / "0a" / "shuffle_0_0_0.data").write_bytes(b"x" * n)
    return a, b, c


def test_the_disk_is_all_the_spark_local_dirs(tmp_path: Path) -> None:
    a, b, c = _local_dirs(tmp_path)
    env = {"SPARKPLANE_NODE_ID": "w-1", "SPARK_LOCAL_DIRS": f" {a}, {b},,{c} "}
    assert agent.local_dirs(env) == [str(a), str(b), str(c)]
    # Every dir's files; the three dirs are on one file system here: its size, counted once.
    assert agent.measure_disk(env) == {
        "node_id": "w-1",
        "used_bytes": 123,
        "total_bytes": shutil.disk_usage(a).total,
    }
    # A dir named twice, under another name (a symbolic link) or inside another one: its files
    # are counted once.
    (tmp_path / "alias").symlink_to(b)
    twice = f"{a},{b},{tmp_path}/alias,{a}/blockmgr-1,{c},{a}"
    assert agent.local_dirs({"SPARK_LOCAL_DIRS": twice}) == [
        str(a),
        str(b),
        f"{tmp_path}/alias",
        f"{a}/blockmgr-1",
        str(c),
    ]
    disk = agent.measure_disk({**env, "SPARK_LOCAL_DIRS": twice})
    assert disk is not None and disk["used_bytes"] == 123
    # SPARKPLANE_SCRATCH_DIR, a list too, wins over SPARK_LOCAL_DIRS.
    env2 = {**env, "SPARKPLANE_SCRATCH_DIR": f"{b},{c}"}
    assert agent.local_dirs(env2) == [str(b), str(c)]
    assert agent.measure_disk(env2)["used_bytes"] == 23  # type: ignore[index]
    # None of them there (yet): an error, and the heartbeat goes without a disk object.
    with pytest.raises(FileNotFoundError):
        agent.measure_disk({**env, "SPARK_LOCAL_DIRS": f"{tmp_path}/x,{tmp_path}/y"})


def test_each_file_system_is_counted_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, c = _local_dirs(tmp_path)
    # The temp disk holds a; b and c are two data disks (mount points), as on an Azure node.
    device = {str(a): 1, str(b): 2, str(c): 3, f"{a}/blockmgr-1": 1}
    size = {1: 150 << 30, 2: 64 << 30, 3: 32 << 30}
    monkeypatch.setattr(agent, "_device", lambda p: device[p])
    monkeypatch.setattr(
        agent.shutil, "disk_usage", lambda p: SimpleNamespace(total=size[device[p]])
    )
    assert agent.filesystems_bytes([str(a), str(b), str(c)]) == (150 + 64 + 32) << 30
    # Two dirs on the temp disk are one disk.
    assert agent.filesystems_bytes([str(a), f"{a}/blockmgr-1", str(b)]) == (150 + 64) << 30
    env = {"SPARKPLANE_NODE_ID": "w-1", "SPARK_LOCAL_DIRS": f"{a},{b},{c}"}
    assert agent.measure_disk(env) == {
        "node_id": "w-1",
        "used_bytes": 123,
        "total_bytes": (150 + 64 + 32) << 30,
    }
    # The quota file, when given, is the size whatever the file systems (local provisioner).
    quota = tmp_path / "quota"
    quota.write_text("1073741824\n")
    env["SPARKPLANE_DISK_QUOTA_FILE"] = str(quota)
    assert agent.measure_disk(env)["total_bytes"] == 1 << 30  # type: ignore[index]


class ControlPlane:
    """A tiny HTTP server on loopback standing in for the control plane (and, for the driver
    agent, for the Spark UI's application list). It stops the agent after `want` heartbeats."""

    def __init__(self, stop: threading.Event, want: int = 1) -> None:
        self.heartbeats: list[tuple[str, dict[str, Any]]] = []
        seen = self.heartbeats

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                n = int(self.headers["Content-Length"])
                seen.append((self.headers["Authorization"], json.loads(self.rfile.read(n))))
                self._reply(b"{}")
                if len(seen) >= want:
                    stop.set()

            def do_GET(self) -> None:
                self._reply(b"[]" if self.path.startswith("/api/v1/applications") else b"{}")

            def _reply(self, data: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def run_agent(env: dict[str, str], want: int = 1) -> list[tuple[str, dict[str, Any]]]:
    stop = threading.Event()
    cp = ControlPlane(stop, want)
    try:
        t = threading.Thread(
            target=agent.run,
            args=(stop, {"SPARKPLANE_CONTROL_PLANE_URL": cp.url, **env}),
            daemon=True,
        )
        t.start()
        t.join(timeout=20)
        stop.set()
        t.join(timeout=5)
        assert not t.is_alive()
        return cp.heartbeats
    finally:
        cp.close()


def _node_env(tmp_path: Path) -> dict[str, str]:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "shuffle.data").write_bytes(b"x" * 4096)
    (tmp_path / "quota").write_text("10737418240")
    (tmp_path / "token").write_text("agent-token\n")
    return {
        "SPARKPLANE_CLUSTER_ID": "0101-000000-abcdefgh",
        "SPARKPLANE_AGENT_TOKEN_FILE": str(tmp_path / "token"),
        "SPARKPLANE_NODE_ID": "w-1",
        "SPARKPLANE_SCRATCH_DIR": str(scratch),
        "SPARKPLANE_DISK_QUOTA_FILE": str(tmp_path / "quota"),
        "SPARKPLANE_HEARTBEAT_S": "0.05",
    }


def test_node_mode_posts_only_the_disk(tmp_path: Path) -> None:
    beats = run_agent(_node_env(tmp_path), want=2)
    assert len(beats) == 2
    auth, body = beats[0]
    assert auth == "Bearer agent-token"
    assert body == {
        "cluster_id": "0101-000000-abcdefgh",
        "disk": {"node_id": "w-1", "used_bytes": 4096, "total_bytes": 10737418240},
    }


def test_node_mode_reports_over_every_local_dir(tmp_path: Path) -> None:
    a, b, c = _local_dirs(tmp_path)
    env = {**_node_env(tmp_path), "SPARKPLANE_SCRATCH_DIR": "", "SPARK_LOCAL_DIRS": f"{a},{b},{c}"}
    del env["SPARKPLANE_DISK_QUOTA_FILE"]
    (_, body), *_ = run_agent(env)
    assert body == {
        "cluster_id": "0101-000000-abcdefgh",
        "disk": {"node_id": "w-1", "used_bytes": 123, "total_bytes": shutil.disk_usage(a).total},
    }


def test_driver_posts_sample_and_disk(tmp_path: Path) -> None:
    stop = threading.Event()
    spark_ui = ControlPlane(stop)  # answers GET /api/v1/applications with no application
    try:
        beats = run_agent({**_node_env(tmp_path), "SPARKPLANE_SPARK_UI_URL": spark_ui.url})
    finally:
        spark_ui.close()
    (_, body) = beats[0]
    assert body["disk"] == {"node_id": "w-1", "used_bytes": 4096, "total_bytes": 10737418240}
    assert body["sample"] == summarize([])


def test_driver_with_spark_down_still_reports_the_disk(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"  # bound, not listening: refused
        beats = run_agent({**_node_env(tmp_path), "SPARKPLANE_SPARK_UI_URL": closed})
    assert set(beats[0][1]) == {"cluster_id", "disk"}


def test_nothing_to_report_returns_at_once(tmp_path: Path) -> None:
    env = _node_env(tmp_path)
    del env["SPARKPLANE_SCRATCH_DIR"]
    stop = threading.Event()
    agent.run(stop, {"SPARKPLANE_CONTROL_PLANE_URL": "http://127.0.0.1:9", **env})
    assert not stop.is_set()


# ------------------------------------------------------------------------------- readiness


def test_connect_target_reads_the_address_and_the_token() -> None:
    assert agent_ready.connect_target("sc://localhost:15002") == ("localhost:15002", "")
    url = "sc://localhost:15002/;user_id=x;token=a%2Fb%3D"
    assert agent_ready.connect_target(url) == ("localhost:15002", "a/b=")


def test_connect_does_not_answer_where_nothing_listens() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, not listening: refused
        assert not agent_ready.connect_answers(f"sc://localhost:{s.getsockname()[1]}", timeout_s=5)


class SparkUI:
    """The Spark UI's REST API of one application with the given executors."""

    def __init__(self, executors: list[dict[str, Any]]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/api/v1/applications?"):
                    data: Any = [{"id": "app-1"}]
                elif self.path == "/api/v1/applications/app-1/executors":
                    data = executors
                else:
                    data = {}
                raw = json.dumps(data).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_registered_workers_are_the_workers_of_active_executors() -> None:
    def ex(i: str, worker: str, active: bool = True) -> dict[str, Any]:
        logs = {"stderr": f"http://127.0.0.1:{worker}/logPage/?appId=app-1&executorId={i}"}
        return {"id": i, "isActive": active, "executorLogs": logs}

    ui = SparkUI([{"id": "driver"}, ex("0", "8081"), ex("1", "8082"), ex("2", "8083", False)])
    try:
        with httpx.Client(timeout=5) as client:
            workers = agent_ready.registered_workers(client, ui.url)
    finally:
        ui.close()
    assert workers == ["http://127.0.0.1:8081/", "http://127.0.0.1:8082/"]


def test_the_ready_file_is_replaced_whole(tmp_path: Path) -> None:
    path = str(tmp_path / "ready.json")
    agent_ready.write_ready(path, [])
    agent_ready.write_ready(path, ["http://127.0.0.1:8081/"])
    assert json.loads(Path(path).read_text()) == {
        "connect": True,
        "workers": ["http://127.0.0.1:8081/"],
    }
    assert [p.name for p in tmp_path.iterdir()] == ["ready.json"]


def test_the_readiness_child_ends_on_sigterm_while_it_waits_for_connect(tmp_path: Path) -> None:
    """The node's stop (SIGTERM to its process group) ends the readiness-only agent at once,
    even while it waits in gRPC for a Connect server that accepts and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPARKPLANE_")}
        env |= {
            "SPARKPLANE_CONNECT_URL": f"sc://localhost:{server.getsockname()[1]}",
            "SPARKPLANE_READY_FILE": str(tmp_path / "ready.json"),
        }
        root = Path(__file__).resolve().parents[2]
        child = subprocess.Popen([sys.executable, "-m", "shared.agent"], env=env, cwd=root)
        try:
            conn, _ = server.accept()  # the child is in its gRPC call now
            with conn:
                child.send_signal(signal.SIGTERM)
                assert child.wait(timeout=3) == -signal.SIGTERM
        finally:
            child.kill()
            child.wait()
    assert not (tmp_path / "ready.json").exists()
