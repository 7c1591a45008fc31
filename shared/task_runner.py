"""Runs a job task's program on the node, as a detached process group (the agent's side).

The driver node's agent (shared/agent_tasks.py) hands each task it claims to a TaskRunner:
`python <file> <params...>` in the task's own directory, with an allowlisted environment (see
`task_env`) and SPARK_REMOTE pointing at the cluster's own Spark Connect server, so that
`SparkSession.builder.getOrCreate()` joins the cluster's one Spark application.

Everything is on disk under `<root>/<key>/`, so a restarted agent finds its running and
finished tasks again:

    cmd.json    the command, its pid and the process's create time (psutil), written at start
    stdout      the program's standard output
    stderr      the program's standard error
    exit_code   the exit status, written by a small `sh` wrapper when the program ends
    cancel      present once cancel() was called (its content: when SIGTERM was sent)

The process runs in a session (and process group) of its own: a cancel signals the whole group
(the Python program and whatever it started): SIGTERM first, SIGKILL after `kill_grace_s` on a
later cancel() call (every call returns quickly; the agent calls cancel() until it is gone).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from shared.domain.tasks import SubmissionStatus

log = logging.getLogger("sparkplane.task_runner")

TAIL_BYTES = 16 * 1024
# What a task inherits from the node (the agent's own environment, itself allowlisted by the
# provisioner): nothing else of the node reaches user code, the agent's token file included.
INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "JAVA_HOME", "SPARK_HOME")
# The wrapper keeps running when its group gets SIGTERM (the trap), waits for the program and
# writes its exit status atomically. A trapped (not ignored) signal is reset in the child.
WRAPPER = (
    "trap 'true' TERM INT; \"$@\"; rc=$?; echo $rc > exit_code.tmp && mv exit_code.tmp exit_code"
)


def _tail(path: Path, limit: int = TAIL_BYTES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            data = f.read()
    except FileNotFoundError:
        return ""
    text = data.decode("utf-8", errors="replace")
    if size > limit:  # drop the partial first line
        text = text.split("\n", 1)[-1]
    return text


def _now_ms() -> int:
    return int(time.time() * 1000)


def task_env(node_env: Mapping[str, str], env: Mapping[str, str]) -> dict[str, str]:
    """A task's environment: INHERITED_ENV of the node, then the task's own (the cluster's
    validated spark_env_vars, SPARK_REMOTE, the run's ids)."""
    out = {k: node_env[k] for k in INHERITED_ENV if k in node_env}
    out.update(env)
    return out


class TaskRunner:
    def __init__(self, root: Path, *, kill_grace_s: float = 10.0) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.kill_grace_s = kill_grace_s
        self._lock = threading.Lock()
        # Children of this process, to reap them (a zombie would look alive).
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    def dir(self, key: str) -> Path:
        if not key or "/" in key or key in (".", "..") or "\0" in key:
            raise ValueError(f"bad task key {key!r}")
        return self.root / key

    def known(self, key: str) -> bool:
        """Whether this node has started the task (also before a restart of the agent)."""
        return (self.dir(key) / "submitted").exists()

    def submit(
        self,
        key: str,
        *,
        file_name: str,
        program: bytes,
        argv: Sequence[str],
        env: Mapping[str, str],
    ) -> None:
        """Write the program as `<key>/<file_name>` (0600) and start
        `python <file_name> <argv...>` once per key."""
        d = self.dir(key)
        if Path(file_name).name != file_name or file_name in ("", ".", ".."):
            raise ValueError(f"bad file name {file_name!r}")
        with self._lock:
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:  # once per key, also across processes
                fd = os.open(d / "submitted", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                return
            os.close(fd)
            fd = os.open(d / file_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(program)
            cmd = [sys.executable, file_name, *argv]
            info: dict[str, Any] = {"cmd": cmd, "started_ms": _now_ms()}
            try:
                with open(d / "stdout", "ab") as out, open(d / "stderr", "ab") as err:
                    proc = subprocess.Popen(
                        ["sh", "-c", WRAPPER, "sh", *cmd],
                        cwd=d,
                        env=dict(env),
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=err,
                        start_new_session=True,
                    )
            except OSError as e:
                (d / "stderr").write_text(f"could not start {cmd[0]}: {e}\n")
                (d / "exit_code").write_text("127\n")
                info["error"] = str(e)
                (d / "cmd.json").write_text(json.dumps(info))
                return
            info["pid"] = proc.pid
            with contextlib.suppress(psutil.Error):
                info["create_time"] = psutil.Process(proc.pid).create_time()
            self._children[key] = proc
            tmp = d / "cmd.json.tmp"
            tmp.write_text(json.dumps(info))
            tmp.replace(d / "cmd.json")
        log.info("task started", extra={"key": key, "pid": proc.pid})

    def _info(self, d: Path) -> dict[str, Any] | None:
        try:
            return json.loads((d / "cmd.json").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def _alive(self, key: str, info: Mapping[str, Any]) -> bool:
        child = self._children.get(key)
        if child is not None and child.poll() is not None:
            self._children.pop(key, None)
        pid = info.get("pid")
        if not pid:
            return False
        try:
            p = psutil.Process(int(pid))
            if p.status() == psutil.STATUS_ZOMBIE:
                return False
            created = info.get("create_time")
            return created is None or abs(p.create_time() - float(created)) < 0.01
        except psutil.Error:
            return False

    def status(self, key: str) -> SubmissionStatus | None:
        d = self.dir(key)
        if not (d / "submitted").exists():
            return None
        info = self._info(d)
        if info is None:
            # Between the marker and cmd.json (a crash while starting): it never ran.
            return SubmissionStatus(state="LOST", stderr_tail=_tail(d / "stderr"))
        started = int(info.get("started_ms", 0))
        canceled = (d / "cancel").exists()
        code_file = d / "exit_code"
        if code_file.exists() and not self._alive(key, info):
            try:
                code: int | None = int(code_file.read_text().strip())
            except ValueError:
                code = None
            ended = int(code_file.stat().st_mtime * 1000)
            state = "SUCCEEDED" if code == 0 else "CANCELED" if canceled else "FAILED"
            return SubmissionStatus(
                state=state,  # type: ignore[arg-type]
                exit_code=code,
                stdout_tail=_tail(d / "stdout"),
                stderr_tail=_tail(d / "stderr"),
                started_ms=started,
                ended_ms=ended,
            )
        if self._alive(key, info):
            return SubmissionStatus(
                state="RUNNING",
                stdout_tail=_tail(d / "stdout"),
                stderr_tail=_tail(d / "stderr"),
                started_ms=started,
            )
        # Gone without an exit status: killed with its wrapper (SIGKILL), or lost.
        return SubmissionStatus(
            state="CANCELED" if canceled else "LOST",
            stdout_tail=_tail(d / "stdout"),
            stderr_tail=_tail(d / "stderr"),
            started_ms=started,
            ended_ms=_now_ms(),
        )

    def cancel(self, key: str) -> None:
        """SIGTERM to the process group; SIGKILL on a later call after the grace period. Only
        a process whose pid and create time match is signalled (never a reused pid)."""
        d = self.dir(key)
        marker = d / "cancel"
        info = self._info(d)
        if info is None or not info.get("pid"):
            if (d / "submitted").exists() and not marker.exists():
                marker.write_text(str(_now_ms()))
            return
        pid = int(info["pid"])
        if not marker.exists():
            marker.write_text(str(_now_ms()))
            if self._alive(key, info):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGTERM)
                log.info("task cancelled (SIGTERM)", extra={"key": key, "pid": pid})
            return
        try:
            sent = int(marker.read_text().strip() or 0)
        except ValueError:
            sent = 0
        if _now_ms() - sent >= self.kill_grace_s * 1000 and self._alive(key, info):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            log.info("task killed (SIGKILL)", extra={"key": key, "pid": pid})

    def stop_all(self, wait_s: float) -> None:
        """The node is stopping: SIGTERM every task still running, SIGKILL what is left after
        `wait_s` (a task must not outlive its node)."""
        alive = []
        for d in self.root.iterdir():
            info = self._info(d)
            if info and info.get("pid") and self._alive(d.name, info):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(int(info["pid"]), signal.SIGTERM)
                alive.append((d.name, info))
        deadline = time.monotonic() + wait_s
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = [(k, i) for k, i in alive if self._alive(k, i)]
        for _, info in alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(info["pid"]), signal.SIGKILL)
