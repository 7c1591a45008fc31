"""Per-workspace quotas: the limits an operator sets and the pure rules that check a request
against what the workspace already uses (the services count; these functions decide).

A quota is checked at the request that would pass it, never later: a refused request changes
nothing, and what was admitted is never failed afterwards for a quota. Errors are Databricks'
(shared/errors.py): QUOTA_EXCEEDED (400) for what only the caller can lower, RESOURCE_EXHAUSTED
(429, Retry-After) for concurrent runs, which free themselves.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.domain.cluster import ClusterSpec, validation_message
from shared.errors import InvalidParameterValue, QuotaExceeded, ResourceExhausted


class Quotas(BaseModel):
    """The limits of one workspace (the defaults are documented in docs/security.md)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    # Clusters not TERMINATED (job clusters included) and the sum of their workers (an
    # autoscaling cluster counts its max_workers).
    max_clusters: int = Field(default=50, ge=0, le=10**15)
    max_total_workers: int = Field(default=200, ge=0, le=10**15)
    # num_workers or autoscale.max_workers of one cluster (job clusters included).
    max_workers_per_cluster: int = Field(default=100, ge=0, le=10**15)
    # Job runs not finished (one-time submits included).
    max_concurrent_runs: int = Field(default=100, ge=0, le=10**15)
    max_jobs: int = Field(default=1000, ge=0, le=10**15)
    # The shortest time between two fires of a job's cron schedule.
    min_schedule_period_s: int = Field(default=10, ge=0, le=10**15)
    # Instance pools not deleted, and max_capacity of each (a pool created without one gets
    # this as its max_capacity).
    max_pools: int = Field(default=20, ge=0, le=10**15)
    max_pool_capacity: int = Field(default=100, ge=1, le=10**15)
    # Personal access tokens of one user.
    max_tokens_per_user: int = Field(default=100, ge=0, le=10**15)
    # Bytes of all files of the workspace (DBFS and workspace files together).
    max_file_store_bytes: int = Field(default=10 * 2**30, ge=0, le=10**18)

    def wire(self) -> dict[str, int]:
        return self.model_dump()


NAMES = tuple(Quotas.model_fields)


def parse(body: Mapping[str, Any], base: Quotas | None = None, where: str = "quotas") -> Quotas:
    """`base` with the limits `body` names (an operator's request); or INVALID_PARAMETER_VALUE."""
    if not isinstance(body, Mapping):
        raise InvalidParameterValue(f"{where} must be an object.")
    unknown = sorted(set(body) - set(NAMES))
    if unknown:
        raise InvalidParameterValue(
            f"{where}: unknown quota {', '.join(unknown)} (known: {', '.join(NAMES)})."
        )
    try:
        return Quotas.model_validate({**(base or Quotas()).wire(), **body})
    except ValidationError as e:
        raise InvalidParameterValue(f"{where}: {validation_message(e)}") from None


def _exceeded(what: str, limit: int, detail: str = "") -> QuotaExceeded:
    extra = f" ({detail})" if detail else ""
    return QuotaExceeded(
        f"The quota for the {what} has been reached{extra}. The current quota is {limit}."
    )


# ---------------------------------------------------------------------------------- clusters


@dataclass(frozen=True, slots=True)
class ClusterUsage:
    """What the workspace's clusters that count hold: how many, and their workers."""

    clusters: int = 0
    workers: int = 0


def cluster_workers(spec: ClusterSpec) -> int:
    """The most workers a cluster of this spec can hold."""
    if spec.autoscale is not None:
        return spec.autoscale.max_workers
    return spec.num_workers or 0


def stored_workers(spec: Mapping[str, Any]) -> int:
    """cluster_workers of a stored spec (a cluster document's "spec"), read without building
    the model: counting a workspace's clusters reads every one of them at each request."""
    auto = spec.get("autoscale")
    if auto:
        return int(auto.get("max_workers") or 0)
    return int(spec.get("num_workers") or 0)


def check_workers_per_cluster(q: Quotas, workers: int) -> None:
    if workers > q.max_workers_per_cluster:
        raise _exceeded(
            "number of workers of one cluster",
            q.max_workers_per_cluster,
            f"the cluster asks for {workers}",
        )


def check_clusters(q: Quotas, usage: ClusterUsage, new: Sequence[int]) -> None:
    """Clusters about to count (each its workers) on top of `usage` (which must not include
    them: an edited or started cluster is left out of its own usage)."""
    for workers in new:
        check_workers_per_cluster(q, workers)
    if new and usage.clusters + len(new) > q.max_clusters:
        raise _exceeded("number of clusters", q.max_clusters, f"{usage.clusters} not terminated")
    if usage.workers + sum(new) > q.max_total_workers:
        raise _exceeded(
            "total number of workers",
            q.max_total_workers,
            f"{usage.workers} in use, {sum(new)} asked for",
        )


# ---------------------------------------------------------------------------------- jobs


def check_jobs(q: Quotas, jobs: int) -> None:
    """`jobs`: the workspace's jobs before the new one."""
    if jobs + 1 > q.max_jobs:
        raise _exceeded("number of jobs", q.max_jobs)


def min_period_ms(fire_times_ms: Sequence[int]) -> int | None:
    """The shortest gap between successive fire times (None: fewer than two)."""
    gaps = [b - a for a, b in itertools.pairwise(fire_times_ms)]
    return min(gaps) if gaps else None


def check_schedule(q: Quotas, fire_times_ms: Sequence[int]) -> None:
    """`fire_times_ms`: the schedule's next fires (a window of them: a cron expression whose
    shortest gap lies beyond the window is not seen)."""
    period = min_period_ms(fire_times_ms)
    if period is not None and period < q.min_schedule_period_s * 1000:
        raise _exceeded(
            "minimum period of a schedule",
            q.min_schedule_period_s,
            f"the schedule fires {period // 1000} s apart; seconds",
        )


def check_runs(q: Quotas, active: int) -> None:
    """`active`: the workspace's runs not finished, before the new one."""
    if active + 1 > q.max_concurrent_runs:
        raise ResourceExhausted(
            f"The quota for the number of concurrent runs has been reached ({active} active). "
            f"The current quota is {q.max_concurrent_runs}; retry when a run has finished."
        )


# ---------------------------------------------------------------------------------- pools


def check_pools(q: Quotas, pools: int) -> None:
    """`pools`: the workspace's pools not deleted, before the new one."""
    if pools + 1 > q.max_pools:
        raise _exceeded("number of instance pools", q.max_pools)


def pool_capacity(q: Quotas, min_idle: int, max_capacity: int | None) -> int:
    """The max_capacity a pool gets: its own (at most the quota) or the quota's."""
    cap = q.max_pool_capacity if max_capacity is None else max_capacity
    if cap > q.max_pool_capacity:
        raise _exceeded("capacity of an instance pool", q.max_pool_capacity, f"max_capacity {cap}")
    if min_idle > cap:
        raise _exceeded(
            "capacity of an instance pool", q.max_pool_capacity, f"min_idle_instances {min_idle}"
        )
    return cap


# ---------------------------------------------------------------------------------- tokens, files


def check_tokens(q: Quotas, tokens: int) -> None:
    """`tokens`: the user's tokens before the new one."""
    if tokens + 1 > q.max_tokens_per_user:
        raise _exceeded("number of tokens of a user", q.max_tokens_per_user)


def check_file_bytes(q: Quotas, used: int, adding: int) -> None:
    """`used`: bytes of the workspace's files (without a file being replaced); `adding`: the
    bytes the request writes."""
    if used + adding > q.max_file_store_bytes:
        raise _exceeded(
            "bytes of the workspace's files",
            q.max_file_store_bytes,
            f"{used} used, {adding} more asked for",
        )
