"""Autoscaling local storage (Databricks' enable_elastic_disk): a node's local disk, where
Spark writes shuffle and spill files, grows before it fills up.

Pure functions, no I/O. The agent on each node reports the bytes used under the Spark scratch
directory and the disk's size (`DiskReport`); `decide` says whether to ask the provisioner for
a bigger disk (`Provisioner.grow_storage`), given the size the control plane last asked for.

The rule (numbers in `StorageParams`):

1. The node's size is the larger of what it reports and what was last asked for: a growth that
   has not landed yet counts, so the same report does not ask twice.
2. Grow when used >= grow_at_fraction x size, by max(size, min_step_bytes): the disk doubles
   (few growths for a fast-filling disk), at least by min_step_bytes (a tiny or empty disk gets
   a useful size at once), never beyond max_total_bytes.
3. At max_total_bytes there is no growth: `at_limit` says so (the caller reports it once).
4. A node that reports less than was asked for did not get the last growth (the provisioner's
   call was lost, or the node restarted with its old disk): `reapply` asks for it again
   (grow_storage is idempotent).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from shared.domain.cluster import ClusterSpec

GiB = 1024**3
TiB = 1024**4


@dataclass(frozen=True, slots=True)
class StorageParams:
    # Grow when the used bytes reach this fraction of the disk.
    grow_at_fraction: float = 0.7
    # The smallest growth (the growth is the current size otherwise: doubling).
    min_step_bytes: int = 16 * GiB
    # The largest disk of a node (Databricks' limit of attached local storage per VM).
    max_total_bytes: int = 5 * TiB

    def __post_init__(self) -> None:
        if not 0 < self.grow_at_fraction <= 1:
            raise ValueError(f"grow_at_fraction must be in (0, 1], got {self.grow_at_fraction}")
        if self.min_step_bytes <= 0:
            raise ValueError(f"min_step_bytes must be positive, got {self.min_step_bytes}")
        if self.max_total_bytes <= 0:
            raise ValueError(f"max_total_bytes must be positive, got {self.max_total_bytes}")

    def step(self, total_bytes: int) -> int:
        return max(total_bytes, self.min_step_bytes)


@dataclass(frozen=True, slots=True)
class DiskReport:
    """A node's local disk as its agent measured it at `ts_ms`."""

    node_id: str
    used_bytes: int
    total_bytes: int
    ts_ms: int

    def __post_init__(self) -> None:
        if self.used_bytes < 0 or self.total_bytes < 0:
            raise ValueError(
                f"disk sizes must not be negative (used {self.used_bytes}, "
                f"total {self.total_bytes})"
            )


@dataclass(frozen=True, slots=True)
class StorageDecision:
    # The new size to ask for (None: no growth).
    grow_to: int | None
    # The disk should grow but is already at max_total_bytes.
    at_limit: bool
    # The node reports less than was last asked for: ask for target_bytes again.
    reapply: bool
    # Free bytes on the disk the node has now (reported size minus used, at least 0).
    free_bytes: int

    def ask_bytes(self, target_bytes: int | None) -> int | None:
        """The size to pass to grow_storage now (a growth, else the reapplied target)."""
        if self.grow_to is not None:
            return self.grow_to
        return target_bytes if self.reapply else None


def elastic(spec: ClusterSpec) -> bool:
    """The cluster has autoscaling local storage."""
    return spec.enable_elastic_disk is True


def decide(report: DiskReport, target_bytes: int | None, params: StorageParams) -> StorageDecision:
    """Grow the node's disk? `target_bytes` is the size last asked for it (None: never)."""
    effective = max(report.total_bytes, target_bytes or 0)
    # Exact comparison (0.7 * 10 is 7.000000000000001 in floating point): the decimal the
    # fraction is written as.
    fraction = Fraction(str(params.grow_at_fraction))
    full = report.used_bytes >= fraction * effective
    grow_to = None
    at_limit = False
    if full:
        if effective >= params.max_total_bytes:
            at_limit = True
        else:
            grow_to = min(params.max_total_bytes, effective + params.step(effective))
    return StorageDecision(
        grow_to=grow_to,
        at_limit=at_limit,
        reapply=target_bytes is not None and report.total_bytes < target_bytes,
        free_bytes=max(0, report.total_bytes - report.used_bytes),
    )
