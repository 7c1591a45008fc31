"""Run devhost as a subprocess (integration tests, end-to-end tests, benchmarks)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from shared.private_files import private, private_dir

if TYPE_CHECKING:
    from databricks.sdk import WorkspaceClient

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DevhostProcess:
    def __init__(
        self, data_dir: Path, env: Mapping[str, str] | None = None, args: Sequence[str] = ()
    ) -> None:
        self.data_dir = data_dir
        self.args = list(args)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "SPARKPLANE_DATA_DIR": str(data_dir),
            "SPARKPLANE_PORT": str(self.port),
            "SPARKPLANE_PROVISIONER": "records",
            "SPARKPLANE_RECORD_BOOT_S": "0.3",
            "SPARKPLANE_RECONCILE_INTERVAL_S": "0.3",
            "SPARKPLANE_RECONCILER_SCHEDULE": "*/2 * * * * *",
            "SPARKPLANE_STUCK_AFTER_S": "3",
            "SPARKPLANE_BUS_LOCK_S": "5",
            **(env or {}),
        }
        for k in list(self.env):
            if k.startswith("DATABRICKS_"):
                del self.env[k]
        self.proc: subprocess.Popen[bytes] | None = None
        # stderr: the structured logs; stdout: the start-up banner (it shows the token).
        self.log = data_dir / "devhost.log"
        self.out = data_dir / "devhost.out"

    def start(self, timeout: float = 60.0) -> DevhostProcess:
        private_dir(self.data_dir)
        with (
            open(self.log, "ab", opener=private) as err,
            open(self.out, "ab", opener=private) as out,
        ):
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "devhost", *self.args],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=err,
            )
        deadline = time.monotonic() + timeout
        # One client for the polls: each httpx.get would build an SSL context (~20 ms of CPU).
        with httpx.Client(timeout=1) as probe:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"devhost exited: {self.log.read_text()[-3000:]}")
                try:
                    if probe.get(self.url + "/.well-known/databricks-config").is_success:
                        return self
                except httpx.HTTPError:
                    pass  # not listening yet
                time.sleep(0.1)
        raise TimeoutError(f"devhost did not start: {self.log.read_text()[-3000:]}")

    @property
    def token(self) -> str:
        return (self.data_dir / "token").read_text().strip()

    @property
    def operator_token(self) -> str:
        return (self.data_dir / "operator-token").read_text().strip()

    def client(self) -> WorkspaceClient:
        from databricks.sdk import WorkspaceClient
        from databricks.sdk.config import Config

        cfg = Config(host=self.url, token=self.token, auth_type="pat", retry_timeout_seconds=60)
        return WorkspaceClient(config=cfg)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise

    def close(self) -> None:
        """Stop the host and every node process it left running (a test's clean-up)."""
        try:
            self.stop()
        finally:
            self.kill_leftovers()

    def kill_leftovers(self) -> int:
        """Kill processes started for this data directory that outlived it (the nodes of a
        test that failed before deleting its clusters), with their descendants (a job task
        runs in a process group of its own under the driver's agent); returns how many."""
        import psutil

        doomed: dict[int, psutil.Process] = {}
        for p in psutil.process_iter(["environ"]):
            try:
                env = p.info["environ"] or {}
                if env.get("SPARKPLANE_DATA_DIR", "").startswith(str(self.data_dir)):
                    doomed[p.pid] = p
                    doomed.update((c.pid, c) for c in p.children(recursive=True))
            except psutil.Error:
                continue  # ended meanwhile, or not ours to read
        for p in doomed.values():
            try:
                p.kill()
            except psutil.Error:
                continue  # ended meanwhile
        return len(doomed)
