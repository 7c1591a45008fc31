"""What the real-Spark end-to-end tests share: the devhost they run against, and the check
that a Spark Connect endpoint refuses a session."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from devhost.process import DevhostProcess

# The local Spark provisioner, reconciled every second, agents reporting every 2 s.
LOCAL_SPARK = {
    "SPARKPLANE_PROVISIONER": "local",
    "SPARKPLANE_RECONCILE_INTERVAL_S": "1",
    "SPARKPLANE_HEARTBEAT_S": "2",
}
# A fast autoscaling policy for tests (SPARKPLANE_AUTOSCALE_PARAMS): react on the first backlog
# sample, hold a short window before scaling down.
FAST_AUTOSCALE = {
    "expected_boot_s": 0,
    "down_hold_s": 8,
    "down_half_life_s": 0,
    "down_interval_s": 4,
    "stateful_down_window_s": 8,
    "stale_after_s": 30,
    "max_sample_gap_s": 10,
}


@contextlib.contextmanager
def local_spark_devhost(
    data_dir: Path, env: Mapping[str, str] | None = None
) -> Iterator[DevhostProcess]:
    """devhost with real local Spark clusters; on the way out (a failure too) it stops and
    kills every process started for `data_dir`."""
    h = DevhostProcess(data_dir, env={**LOCAL_SPARK, **(env or {})})
    try:
        yield h.start()
    finally:
        try:
            h.stop()
        finally:
            h.kill_leftovers()


def assert_connect_refused(url: str) -> None:
    """A Spark Connect session with `url` is refused (its token is not the server's)."""
    from pyspark.sql import SparkSession

    intruder = SparkSession.builder.remote(url).create()
    # An answer at once: the client retries a server that does not answer (UNAVAILABLE) for
    # about 10 minutes, and a refused session has no server-side session to release.
    intruder.client.set_retry_policies([])
    intruder.release_session_on_close = False
    try:
        with pytest.raises(Exception, match=r"(?i)authenticat"):
            intruder.range(3).collect()
    finally:
        with contextlib.suppress(Exception):  # the refused session may not close cleanly
            intruder.stop()
