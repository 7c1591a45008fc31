"""What a driver node's agent reports of a job task it runs (the value the runs' planner reads).

Dependency-free: the agent on a node imports it too (the node has only the standard library,
httpx, psutil and pyspark).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SubmissionState = Literal["PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELED", "LOST"]


@dataclass(frozen=True, slots=True)
class SubmissionStatus:
    """A task handed to a driver node, as its agent last reported it. PENDING: the agent has
    not taken it yet; LOST: the node that ran it is gone."""

    state: SubmissionState
    exit_code: int | None = None
    # The tail of the program's standard output and error (for runs/get-output).
    stdout_tail: str = ""
    stderr_tail: str = ""
    started_ms: int = 0
    ended_ms: int | None = None
