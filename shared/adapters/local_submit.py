"""The local Submitter: runs a job task's Python file as a detached local process.

With a master URL (a local Spark standalone cluster) the program is
`<pyspark>/bin/spark-submit --master <url> --deploy-mode client <file> <params...>`; without
one (the record provisioner has no Spark) it is `python <file> <params...>`.

Everything is on disk under `<root>/<key>/`, so a restarted control plane finds its running
and finished submissions again:

    cmd.json    the command, its pid and the process's create time (psutil), written at start
    stdout      the program's standard output
    stderr      the program's standard error
    exit_code   the exit status, written by a small `sh` wrapper when the program ends
    cancel      present once cancel() was called (its content: when SIGTERM was sent)

The process runs in a session (and process group) of its own, so it survives a crash of the
control plane and a cancel signals the whole group (spark-submit's JVM, the Python driver):
SIGTERM first, SIGKILL after `kill_grace_s` on a later cancel() call (every call returns
quickly; the runs' advance calls cancel() until the process is gone).
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

from shared.ports import SubmissionStatus

log = logging.getLogger("sparkplane.local_submit")

TAIL_BYTES = 16 * 1024
LOOPBACK = "127.0.0.1"
# The wrapper keeps running when its group gets SIGTERM (the trap), waits for the program and
# writes its exit status atomically. A trapped (not ignored) signal is reset in the child.
WRAPPER = (
    "trap 'true' TERM INT; \"$@\"; rc=$?; echo $rc > exit_code.tmp && mv exit_code.tmp exit_code"
)


def spark_home() -> Path:
    """The Spark distribution bundled in the installed pyspark package."""
    import pyspark

    return Path(pyspark.__file__).parent


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


class LocalSubmitter:
    def __init__(
        self,
        root: Path,
        *,
        kill_grace_s: float = 10.0,
        python: str = sys.executable,
        spark_home_dir: Path | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.kill_grace_s = kill_grace_s
        self.python = python
        self._spark_home = spark_home_dir
        self._lock = threading.Lock()
        # Children of this process, to reap them (a zombie would look alive).
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    def _dir(self, key: str) -> Path:
        if not key or "/" in key or key in (".", ".."):
            raise ValueError(f"bad submission key {key!r}")
        return self.root / key

    def command(
        self, master_url: str | None, python_file: str, parameters: Sequence[str]
    ) -> list[str]:
        if not master_url:
            return [self.python, python_file, *parameters]
        home = self._spark_home or spark_home()
        return [
            str(home / "bin" / "spark-submit"),
            "--master",
            master_url,
            "--deploy-mode",
            "client",
            "--conf",
            f"spark.driver.host={LOOPBACK}",
            "--conf",
            f"spark.driver.bindAddress={LOOPBACK}",
            "--conf",
            "spark.ui.showConsoleProgress=false",
            # Spark's own INFO logging would push the program's output and error out of the
            # tails that runs/get-output shows.
            "--conf",
            "spark.log.level=WARN",
            python_file,
            *parameters,
        ]

    def submit(
        self,
        key: str,
        *,
        master_url: str | None,
        python_file: str,
        parameters: Sequence[str],
        env: Mapping[str, str],
    ) -> None:
        d = self._dir(key)
        with self._lock:
            d.mkdir(parents=True, exist_ok=True)
            try:  # once per key, also across processes
                fd = os.open(d / "submitted", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                return
            os.close(fd)
            cmd = self.command(master_url, python_file, parameters)
            penv = {k: v for k, v in os.environ.items() if not k.startswith("SPARKPLANE_")}
            if master_url:
                home = self._spark_home or spark_home()
                penv = {k: v for k, v in penv.items() if not k.startswith(("SPARK_", "PYSPARK_"))}
                penv.update(
                    {
                        "SPARK_HOME": str(home),
                        "PYSPARK_PYTHON": self.python,
                        "PYSPARK_DRIVER_PYTHON": self.python,
                        "SPARK_LOCAL_IP": LOOPBACK,
                    }
                )
            penv.update(env)
            info: dict[str, Any] = {"cmd": cmd, "started_ms": _now_ms()}
            try:
                with open(d / "stdout", "ab") as out, open(d / "stderr", "ab") as err:
                    proc = subprocess.Popen(
                        ["sh", "-c", WRAPPER, "sh", *cmd],
                        cwd=d,
                        env=penv,
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
        log.info("task submitted", extra={"key": key, "pid": proc.pid, "spark": bool(master_url)})

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
        d = self._dir(key)
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
        d = self._dir(key)
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
