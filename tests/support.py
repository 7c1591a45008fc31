"""What many tests share: one fake clock and one poller."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


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
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)
