"""What many tests share: one fake clock, one poller and one HTTP client."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx
import psutil

T = TypeVar("T")

# The tests' plain HTTP requests (`http.get(...)` where httpx.get would do). httpx's module
# functions build a client for every request, and with it an SSL context that loads the CA
# bundle: about 20 ms of CPU a request, even for http://, where this client pays it once.
# No connection is kept alive, so every request has a connection of its own, as with httpx.get.
http = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))


class FakeClock:
    """Epoch milliseconds that move only when a test moves them (`advance`, or `ms += n`).

    Services read it through `now_ms()` (the Clock port); stores take it as their callable.
    """

    def __init__(self, ms: int = 1_800_000_000_000) -> None:
        self.ms = ms

    def now_ms(self) -> int:
        return self.ms

    def __call__(self) -> int:
        return self.ms

    def advance(self, ms: int) -> None:
        self.ms += ms


def wait_for(what: str, fn: Callable[[], T | None], timeout: float = 60, every: float = 0.25) -> T:
    """`fn()`'s first truthy answer; AssertionError naming `what` once `timeout` s have passed."""
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {got!r})")
        time.sleep(every)


# Kept by the platform, not by a workspace: a revoked token's tombstone (so that no bootstrap
# file brings the token back) and a client address's count of failed authentications (it
# expires with its window).
PLATFORM_KINDS = frozenset({"token-revoked", "auth-failure"})


def owned_counts(data_dir: Path, host_pid: int) -> dict[str, int]:
    """What a devhost's workspaces own, counted: documents per kind (but the platform's own)
    and events of its SQLite store, files and directories of its file store, and processes
    started for its data directory (but the host's own), with their descendants."""
    out: dict[str, int] = {}
    with sqlite3.connect(f"file:{data_dir / 'store.db'}?mode=ro", uri=True) as db:
        for kind, n in db.execute("SELECT kind, count(*) FROM docs GROUP BY kind"):
            if kind not in PLATFORM_KINDS:
                out[f"doc:{kind}"] = n
        out["events"] = db.execute("SELECT count(*) FROM events").fetchone()[0]
    out["files"] = sum(len(d) + len(f) for _, d, f in os.walk(data_dir / "files"))
    found: set[int] = set()
    for p in psutil.process_iter(["environ"]):
        try:
            env = p.info["environ"] or {}
            if p.pid != host_pid and env.get("SPARKPLANE_DATA_DIR", "").startswith(str(data_dir)):
                found.add(p.pid)
                found.update(c.pid for c in p.children(recursive=True))
        except psutil.Error:
            continue  # ended meanwhile, or not ours to read
    out["processes"] = len(found)
    return out
