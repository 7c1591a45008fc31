"""Instance pools: the request fields (Instance Pools API 2.0), the stored document, and the
pool rule (warm idle nodes kept at min_idle_instances, extra idle nodes terminated after
idle_instance_autotermination_minutes, never more than max_capacity nodes) as pure functions.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.domain.cluster import validation_message
from shared.domain.nodes import PoolNode
from shared.domain.wire import Int
from shared.errors import InvalidParameterValue

# Databricks' default when idle_instance_autotermination_minutes is not set.
DEFAULT_IDLE_MINUTES = 60
MAX_POOL_SIZE = 10_000
# Fields the server computes (ignored in requests).
RESPONSE_ONLY_FIELDS = frozenset({"instance_pool_id", "default_tags", "state", "stats", "status"})


class PoolSpec(BaseModel):
    """The create/edit body. Unknown fields are kept and returned (cloud attributes, ...)."""

    model_config = ConfigDict(extra="allow")

    instance_pool_name: str = Field(min_length=1, max_length=100)
    node_type_id: str = Field(min_length=1)
    min_idle_instances: Int = Field(default=0, ge=0, le=MAX_POOL_SIZE)
    max_capacity: Int | None = Field(default=None, ge=1, le=MAX_POOL_SIZE)
    idle_instance_autotermination_minutes: Int | None = Field(default=None, ge=0, le=10_000)
    custom_tags: dict[str, str] = Field(default_factory=dict)
    # strict: 0, "yes", "off", ... are not booleans (the SDK sends JSON true/false).
    enable_elastic_disk: bool | None = Field(default=None, strict=True)
    preloaded_spark_versions: list[str] = Field(default_factory=list, max_length=1)

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


def parse_spec(
    body: Mapping[str, Any], *, node_types: set[str], spark_versions: set[str]
) -> PoolSpec:
    data = {k: v for k, v in body.items() if k not in RESPONSE_ONLY_FIELDS}
    try:
        spec = PoolSpec.model_validate(data)
    except ValidationError as e:
        raise InvalidParameterValue(validation_message(e)) from None
    if spec.node_type_id not in node_types:
        raise InvalidParameterValue(
            f"Node type {spec.node_type_id} is not supported (node_type_id). "
            "List the valid ids with GET /api/2.1/clusters/list-node-types."
        )
    for v in spec.preloaded_spark_versions:
        if v not in spark_versions:
            raise InvalidParameterValue(f"Invalid spark version {v} (preloaded_spark_versions).")
    if spec.max_capacity is not None and spec.min_idle_instances > spec.max_capacity:
        raise InvalidParameterValue(
            f"min_idle_instances ({spec.min_idle_instances}) must not exceed max_capacity "
            f"({spec.max_capacity})."
        )
    if len(spec.custom_tags) > 45:
        raise InvalidParameterValue("A pool can have at most 45 custom tags.")
    return spec


def pool_id_of(value: Any) -> str:
    """The instance_pool_id of an edit, delete or get request, or INVALID_PARAMETER_VALUE."""
    if value is None or value == "":
        raise InvalidParameterValue("Missing required field: instance_pool_id")
    if not isinstance(value, str):
        raise InvalidParameterValue("Invalid value for field instance_pool_id: must be a string")
    return value


def new_pool_id(now_ms: int) -> str:
    """Databricks' shape: MMdd-HHmmss-<word>-pool-<8 chars>."""
    t = datetime.fromtimestamp(now_ms / 1000, tz=UTC)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    word = "".join(secrets.choice(alphabet) for _ in range(6))
    tail = "".join(secrets.choice(alphabet) for _ in range(8))
    return t.strftime("%m%d-%H%M%S-") + f"{word}-pool-{tail}"


class Pool(BaseModel):
    """The stored pool document; `stats` and `errors` are the last reconcile's snapshot."""

    instance_pool_id: str
    workspace_id: str
    spec: PoolSpec
    creator_user_name: str = ""
    state: Literal["ACTIVE", "STOPPED", "DELETED"] = "ACTIVE"
    created_ms: int = 0
    stats: dict[str, int] = Field(default_factory=dict)
    # Why nodes could not be started (GET shows them as status.pending_instance_errors).
    errors: list[str] = Field(default_factory=list)
    # The idle nodes the forecasts of its clusters ask for beyond min_idle_instances, and the
    # forecasts (shared/domain/pool_scaling.py); 0 and "" without live asks.
    forecast_idle: int = 0
    forecast_why: str = ""

    def doc(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def idle_minutes(spec: PoolSpec) -> int:
    v = spec.idle_instance_autotermination_minutes
    return DEFAULT_IDLE_MINUTES if v is None else v


def stats(nodes: Sequence[PoolNode]) -> dict[str, int]:
    """The API's stats: a returning node counts as pending idle (it is on its way back)."""
    count = {"used_count": 0, "idle_count": 0, "pending_used_count": 0, "pending_idle_count": 0}
    key = {
        "USED": "used_count",
        "IDLE": "idle_count",
        "PENDING_USED": "pending_used_count",
        "PENDING_IDLE": "pending_idle_count",
        "RETURNING": "pending_idle_count",
    }
    for n in nodes:
        if n.status in key:
            count[key[n.status]] += 1
    return count


def room(pool: Pool) -> int | None:
    """How many more nodes clusters can take from the pool (its idle nodes and the new ones
    max_capacity allows), by its last stats; None: no limit."""
    if pool.spec.max_capacity is None:
        return None
    taken = pool.stats.get("used_count", 0) + pool.stats.get("pending_used_count", 0)
    return max(0, pool.spec.max_capacity - taken)


@dataclass
class PoolPlan:
    add_idle: int = 0
    remove_idle: list[str] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)
    # Reconcile again soon: nodes are starting, returning or stopping.
    requeue: bool = False
    # A deleted pool whose nodes are all gone.
    gone: bool = False


def plan(
    pool: Pool,
    nodes: Sequence[PoolNode],
    *,
    now: int,
    minute_ms: int = 60_000,
    idle_target: int | None = None,
) -> PoolPlan:
    """The pool rule, level-triggered (only the document and the observed nodes count).
    `idle_target` (at least min_idle_instances) replaces min_idle_instances as the idle nodes
    kept: the forecast's (shared/domain/pool_scaling.py)."""
    p = PoolPlan(stats=stats(nodes))
    live = [n for n in nodes if n.status not in ("STOPPING", "LOST")]
    idle = [n for n in live if n.status in ("IDLE", "PENDING_IDLE")]
    lost = [n.node_id for n in nodes if n.status == "LOST" and not n.cluster_id]
    p.remove_idle.extend(lost)
    settling = any(
        n.status in ("PENDING_IDLE", "PENDING_USED", "RETURNING", "STOPPING") for n in nodes
    )
    if pool.state == "DELETED":
        p.remove_idle.extend(n.node_id for n in idle)
        p.gone = not nodes
        p.requeue = bool(nodes)
        return p
    spec = pool.spec
    keep = max(spec.min_idle_instances, idle_target or 0)
    room = spec.max_capacity - len(live) if spec.max_capacity is not None else keep
    p.add_idle = max(0, min(keep - len(idle), room))
    extra = len(idle) - keep
    if extra > 0:
        # Terminate the extra idle nodes that have been idle long enough, longest idle first;
        # a pending one never counts as idle for long.
        limit_ms = idle_minutes(spec) * minute_ms
        ready = sorted((n for n in idle if n.status == "IDLE"), key=lambda n: n.idle_since_ms)
        expired = [n.node_id for n in ready if now - n.idle_since_ms >= limit_ms][:extra]
        p.remove_idle.extend(expired)
        # The others expire later: the reconciler timer looks at every pool on each sweep.
    p.requeue = settling or p.add_idle > 0 or bool(p.remove_idle)
    return p
