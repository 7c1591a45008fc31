"""The cluster model: Databricks create/edit request fields, the stored document, and the
user commands as pure functions (cluster in, cluster and events out)."""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.domain.autoscale_settings import conf_problem as autoscaling_conf_problem
from shared.domain.events import EventType, event
from shared.domain.node_env import spark_env_problem
from shared.domain.states import State, check_move
from shared.domain.wire import Int
from shared.errors import InvalidParameterValue, InvalidState

# The largest cluster this control plane makes (Databricks' own limits are in this range).
MAX_WORKERS = 10_000
# The workers of an ARM cluster are one uniform VM scale set, which holds at most 1,000 instances
# (with a custom or Marketplace image: 600; the templates use a platform image).
SCALE_SET_MAX_WORKERS = 1_000


def worker_cap(provisioner: str) -> int:
    """The most workers a cluster may ask for (num_workers, autoscale.max_workers) with this
    provisioner ("records", "local", "arm")."""
    return SCALE_SET_MAX_WORKERS if provisioner == "arm" else MAX_WORKERS


class AutoScale(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    min_workers: Int = Field(ge=0, le=MAX_WORKERS)
    max_workers: Int = Field(ge=1, le=MAX_WORKERS)


class TerminationReason(BaseModel):
    code: str
    type: Literal["SUCCESS", "CLIENT_ERROR", "SERVICE_FAULT", "CLOUD_FAILURE"] = "SUCCESS"
    parameters: dict[str, str] = Field(default_factory=dict)


class ClusterSpec(BaseModel):
    """The user's cluster specification (create and edit bodies, the `spec` of GET).

    Unknown fields are kept (Databricks has many we store and return but do not act on).
    """

    model_config = ConfigDict(extra="allow")

    spark_version: str
    # Databricks answers "" for a cluster created without a name (clients index it).
    cluster_name: str = Field(default="", max_length=100)
    node_type_id: str | None = None
    driver_node_type_id: str | None = None
    num_workers: Int | None = Field(default=None, ge=0, le=MAX_WORKERS)
    autoscale: AutoScale | None = None
    autotermination_minutes: Int | None = None
    spark_conf: dict[str, str] = Field(default_factory=dict)
    spark_env_vars: dict[str, str] = Field(default_factory=dict)
    custom_tags: dict[str, str] = Field(default_factory=dict)
    ssh_public_keys: list[str] = Field(default_factory=list)
    instance_pool_id: str | None = None
    driver_instance_pool_id: str | None = None
    policy_id: str | None = None
    enable_elastic_disk: bool | None = Field(default=None, strict=True)
    runtime_engine: Literal["STANDARD", "PHOTON", "NULL"] | None = None
    data_security_mode: str | None = None
    single_user_name: str | None = None
    is_single_node: bool | None = None

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


# Fields of a create body that are request options, not part of the cluster's spec.
REQUEST_ONLY_FIELDS = ("idempotency_token", "cluster_id")
# Fields the server computes: a request that sends them has them ignored, so they can never
# shadow the real values in GET.
RESPONSE_ONLY_FIELDS = frozenset(
    {
        "state",
        "state_message",
        "start_time",
        "terminated_time",
        "last_restarted_time",
        "last_state_loss_time",
        "last_activity_time",
        "termination_reason",
        "driver",
        "executors",
        "spark_context_id",
        "jdbc_port",
        "cluster_memory_mb",
        "cluster_cores",
        "default_tags",
        "creator_user_name",
        "cluster_source",
        "spec",
        "cluster_log_status",
        "pinned_by_user_name",
        "init_scripts_safe_mode",
        "cluster_id",
    }
)


def validation_message(e: ValidationError) -> str:
    """A pydantic error as the API's message, naming the field."""
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "body"
    if err["type"] == "missing":
        return f"Missing required field: {loc}"
    return f"Invalid value for field {loc}: {err['msg']}"


def parse_spec(body: Mapping[str, Any]) -> ClusterSpec:
    """Parse a create/edit body into a spec (shape and types only; see `validate_spec`)."""
    data = {
        k: v
        for k, v in body.items()
        if k not in REQUEST_ONLY_FIELDS and k not in RESPONSE_ONLY_FIELDS
    }
    try:
        return ClusterSpec.model_validate(data)
    except ValidationError as e:
        raise InvalidParameterValue(validation_message(e)) from None


def typed_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """A cluster body as a job keeps it (a task's or a job cluster's new_cluster): as sent, with
    each field the spec types as parsed, so `"num_workers": "1"` is kept and answered as 1."""
    try:
        # A serverless pool's body may leave spark_version out (ClusterService.spec).
        spec = ClusterSpec.model_validate({"spark_version": "", **body})
    except ValidationError:
        # Kept as sent: the job's cluster check refuses it with parse_spec's message.
        return dict(body)
    typed = set(body) & set(ClusterSpec.model_fields)
    return {**body, **spec.model_dump(mode="json", include=typed)}


def parse_autoscale(value: Any) -> AutoScale:
    try:
        return AutoScale.model_validate(value)
    except ValidationError as e:
        raise InvalidParameterValue(validation_message(e)) from None


def validate_size(
    num_workers: int | None, autoscale: AutoScale | None, max_workers: int = MAX_WORKERS
) -> None:
    if num_workers is not None and autoscale is not None:
        raise InvalidParameterValue("Only one of num_workers and autoscale may be set, not both.")
    for name, asked in (
        ("num_workers", num_workers),
        ("autoscale.max_workers", autoscale.max_workers if autoscale else None),
    ):
        if asked is not None and asked > max_workers:
            raise InvalidParameterValue(
                f"{name} ({asked}) is more than the {max_workers} workers a cluster can have "
                "here (its workers are one VM scale set)."
                if max_workers == SCALE_SET_MAX_WORKERS
                else f"{name} ({asked}) is more than the {max_workers} workers a cluster can have."
            )
    if autoscale is not None and autoscale.max_workers <= autoscale.min_workers:
        raise InvalidParameterValue(
            f"autoscale.max_workers ({autoscale.max_workers}) must be greater than "
            f"autoscale.min_workers ({autoscale.min_workers})."
        )


def validate_spec(
    spec: ClusterSpec,
    *,
    node_types: set[str],
    spark_versions: set[str],
    max_workers: int = MAX_WORKERS,
) -> ClusterSpec:
    """Databricks' validation rules; returns the spec with defaults filled in."""
    if spec.spark_version not in spark_versions:
        raise InvalidParameterValue(
            f"Invalid spark version {spec.spark_version}. "
            "List the valid keys with GET /api/2.1/clusters/spark-versions."
        )
    if not spec.node_type_id and not spec.instance_pool_id:
        raise InvalidParameterValue("Missing required field: node_type_id")
    for field, value in (
        ("node_type_id", spec.node_type_id),
        ("driver_node_type_id", spec.driver_node_type_id),
    ):
        if value is not None and value not in node_types:
            raise InvalidParameterValue(
                f"Node type {value} is not supported ({field}). "
                "List the valid ids with GET /api/2.1/clusters/list-node-types."
            )
    validate_size(spec.num_workers, spec.autoscale, max_workers)
    at = spec.autotermination_minutes
    if at is not None and at != 0 and not 10 <= at <= 10000:
        raise InvalidParameterValue(
            f"Automatic termination must be 0 (disabled) or between 10 and 10000 minutes, got {at}."
        )
    if len(spec.custom_tags) > 45:
        raise InvalidParameterValue("A cluster can have at most 45 custom tags.")
    for name, value in spec.spark_env_vars.items():
        problem = spark_env_problem(name, value)
        if problem:
            raise InvalidParameterValue(f"Invalid spark_env_vars: {problem}.")
    if len(spec.ssh_public_keys) > 10:
        raise InvalidParameterValue("A cluster can have at most 10 SSH public keys.")
    problem = autoscaling_conf_problem(spec.spark_conf)
    if problem:
        raise InvalidParameterValue(problem)
    updates: dict[str, Any] = {}
    if spec.num_workers is None and spec.autoscale is None:
        updates["num_workers"] = 0
    if spec.driver_node_type_id is None and spec.node_type_id is not None:
        updates["driver_node_type_id"] = spec.node_type_id
    return spec.model_copy(update=updates) if updates else spec


def initial_workers(spec: ClusterSpec) -> int:
    """The size a cluster starts at: num_workers, or autoscale.min_workers."""
    if spec.autoscale is not None:
        return spec.autoscale.min_workers
    return spec.num_workers or 0


def cluster_size(spec: ClusterSpec) -> dict[str, Any]:
    if spec.autoscale is not None:
        return {"autoscale": spec.autoscale.model_dump()}
    return {"num_workers": spec.num_workers or 0}


def new_cluster_id(now_ms: int) -> str:
    """Databricks' id shape: MMdd-HHmmss-<8 random chars>."""
    t = datetime.fromtimestamp(now_ms / 1000, tz=UTC)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return t.strftime("%m%d-%H%M%S-") + "".join(secrets.choice(alphabet) for _ in range(8))


class Cluster(BaseModel):
    """The stored cluster document (desired state, observed state, and history markers)."""

    cluster_id: str
    workspace_id: str
    spec: ClusterSpec
    creator_user_name: str = ""
    cluster_source: str = "API"
    state: State = State.PENDING
    state_message: str = ""
    state_since: int = 0
    # When a reconcile the cloud's request limits refused is due again (0: none); until then
    # the reconciler timer does not take the cluster for stuck (reconcile.stuck).
    retry_at: int = 0
    desired: Literal["RUNNING", "TERMINATED"] = "RUNNING"
    # Workers the cluster should have now (autoscaling moves it within the range).
    target_workers: int = 0
    restart_pending: bool = False
    deleted: bool = False
    pinned: bool = False
    start_time: int = 0
    terminated_time: int | None = None
    last_restarted_time: int | None = None
    last_state_loss_time: int | None = None
    last_activity_time: int | None = None
    termination_reason: TerminationReason | None = None
    spark_context_id: int | None = None
    # Observed nodes (a snapshot the reconciler writes for GET).
    driver: dict[str, Any] | None = None
    # The id the cluster's Spark credentials are derived from when its driver is a hot pool
    # node ("" = its own id; shared/domain/spark_auth.py, "Adopted credentials"). Not a secret.
    credential_id: str = ""
    executors: list[dict[str, Any]] = Field(default_factory=list)
    # Preferred workers to remove on scale-down (set by the autoscaler).
    remove_hint: list[str] = Field(default_factory=list)
    # The worker count when the current resize began (to tell an upsize from a downsize).
    resize_from: int | None = None
    # When the cluster last became RUNNING after a start or restart (idle time counts from it).
    running_since: int = 0
    # The autoscaler's last change (shared.domain.autoscale.ScalingMemory as a dict).
    scaling_memory: dict[str, Any] | None = None
    # Local storage (enable_elastic_disk): the disk size last asked for each node, and the
    # nodes that reached the largest size (reported once).
    disk_targets: dict[str, int] = Field(default_factory=dict)
    disk_at_limit: list[str] = Field(default_factory=list)
    # Every write bumps the generation; events carry it so they are written exactly once.
    generation: int = 0
    pending_events: list[dict[str, Any]] = Field(default_factory=list)

    def doc(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def clone(self) -> Cluster:
        """An independent deep copy (a dump validated back: about 4x faster than
        `model_copy(deep=True)`, which the reconcile path did on every message)."""
        return Cluster.model_validate(self.model_dump())


def _move(c: Cluster, dst: State, now: int, message: str = "") -> None:
    if c.state != dst:
        check_move(c.state, dst)
        c.state = dst
        c.state_since = now
    c.state_message = message


def _bump(c: Cluster, events: Sequence[tuple[EventType, dict[str, Any]]], now: int) -> Cluster:
    c.generation += 1
    c.pending_events = [
        event(c.cluster_id, t, now, f"{c.generation}-{i}", details)
        for i, (t, details) in enumerate(events)
    ]
    return c


def _unexpected(c: Cluster) -> InvalidState:
    return InvalidState(f"Cluster {c.cluster_id} is in unexpected state {c.state.value}.")


def create(
    *,
    cluster_id: str,
    workspace_id: str,
    spec: ClusterSpec,
    user: str,
    now: int,
    source: str = "API",
) -> Cluster:
    c = Cluster(
        cluster_id=cluster_id,
        workspace_id=workspace_id,
        spec=spec,
        creator_user_name=user,
        cluster_source=source,
        state=State.PENDING,
        state_since=now,
        state_message="Starting Spark cluster",
        target_workers=initial_workers(spec),
        start_time=now,
    )
    return _bump(
        c,
        [(EventType.CREATING, {"attributes": spec.wire(), "user": user, **cluster_size(spec)})],
        now,
    )


def edit(c: Cluster, spec: ClusterSpec, *, user: str, now: int) -> Cluster:
    if c.state not in (State.RUNNING, State.TERMINATED):
        raise _unexpected(c)
    c = c.clone()
    details = {
        "previous_attributes": c.spec.wire(),
        "attributes": spec.wire(),
        "previous_cluster_size": cluster_size(c.spec),
        "cluster_size": cluster_size(spec),
        "user": user,
    }
    c.spec = spec
    c.target_workers = initial_workers(spec)
    if c.state == State.RUNNING:
        # Databricks restarts a running cluster to apply an edit.
        _move(c, State.RESTARTING, now, "Restarting to apply the new configuration")
        c.restart_pending = True
    return _bump(c, [(EventType.EDITED, details)], now)


def start(c: Cluster, *, user: str, now: int) -> Cluster:
    if c.state != State.TERMINATED:
        raise _unexpected(c)
    if c.cluster_source == "JOB":
        raise InvalidParameterValue(
            f"Cluster {c.cluster_id} is a job cluster and cannot be started."
        )
    c = c.clone()
    _move(c, State.PENDING, now, "Starting Spark cluster")
    c.desired = "RUNNING"
    c.target_workers = initial_workers(c.spec)
    c.termination_reason = None
    c.terminated_time = None
    # The autoscaler's memory (demand history, last change) was of the run that ended: a new
    # run starts without it, or the gap since would fold the new run's first sample in as
    # the whole average demand (shared/domain/autoscale.py, rule 4's floor).
    c.scaling_memory = None
    return _bump(c, [(EventType.STARTING, {"user": user})], now)


def restart(c: Cluster, *, user: str, now: int) -> Cluster:
    if c.state != State.RUNNING:
        raise _unexpected(c)
    c = c.clone()
    _move(c, State.RESTARTING, now, "Restarting Spark cluster")
    c.restart_pending = True
    return _bump(c, [(EventType.RESTARTING, {"user": user})], now)


def resize(
    c: Cluster,
    *,
    num_workers: int | None,
    autoscale: AutoScale | None,
    user: str,
    now: int,
    max_workers: int = MAX_WORKERS,
) -> Cluster:
    if num_workers is None and autoscale is None:
        raise InvalidParameterValue("One of num_workers or autoscale must be given.")
    validate_size(num_workers, autoscale, max_workers)
    if c.state != State.RUNNING:
        raise _unexpected(c)
    c = c.clone()
    current = c.target_workers
    if autoscale is not None:
        c.spec = c.spec.model_copy(update={"autoscale": autoscale, "num_workers": None})
        target = min(max(current, autoscale.min_workers), autoscale.max_workers)
    else:
        c.spec = c.spec.model_copy(update={"autoscale": None, "num_workers": num_workers})
        target = num_workers or 0
    c.target_workers = target
    c.remove_hint = []
    events: list[tuple[EventType, dict[str, Any]]] = []
    if target != current:
        c.resize_from = current
        _move(c, State.RESIZING, now, f"Resizing cluster from {current} to {target} workers")
        events.append(
            (
                EventType.RESIZING,
                {
                    "current_num_workers": current,
                    "target_num_workers": target,
                    "cause": "USER_REQUEST",
                    "user": user,
                },
            )
        )
    return _bump(c, events, now)


def autoscale_to(
    c: Cluster,
    *,
    target: int,
    remove: Sequence[str],
    reason: str,
    now: int,
    stats: Mapping[str, float] | None = None,
) -> Cluster:
    """The autoscaler's resize: only autoscale clusters, clamped to the range. A RUNNING
    cluster may go either way; a RESIZING one only down (the policy cancels workers that have
    not joined yet), and its resize still counts from the size it had before.

    Events: AUTOSCALING_STATS_REPORT with the policy's inputs, then RESIZING (cause AUTOSCALE).
    """
    if c.state not in (State.RUNNING, State.RESIZING) or c.spec.autoscale is None:
        raise _unexpected(c)
    if c.desired != "RUNNING":
        raise _unexpected(c)
    lo, hi = c.spec.autoscale.min_workers, c.spec.autoscale.max_workers
    target = min(max(target, lo), hi)
    if target == c.target_workers:
        return c
    if c.state == State.RESIZING and target > c.target_workers:
        raise _unexpected(c)
    c = c.clone()
    current = c.target_workers
    c.target_workers = target
    c.remove_hint = list(remove) if target < current else []
    if c.state == State.RUNNING or c.resize_from is None:
        c.resize_from = current
    _move(c, State.RESIZING, now, f"Autoscaling from {current} to {target} workers: {reason}")
    return _bump(
        c,
        [
            (
                EventType.AUTOSCALING_STATS_REPORT,
                {
                    "current_num_workers": current,
                    "target_num_workers": target,
                    "reason": {
                        "code": "AUTOSCALE",
                        "type": "SUCCESS",
                        "parameters": {
                            "explanation": reason,
                            **{k: str(v) for k, v in (stats or {}).items()},
                        },
                    },
                },
            ),
            (
                EventType.RESIZING,
                {
                    "current_num_workers": current,
                    "target_num_workers": target,
                    "cause": "AUTOSCALE",
                },
            ),
        ],
        now,
    )


def terminate(
    c: Cluster,
    *,
    reason: TerminationReason,
    user: str | None,
    now: int,
    message: str = "Terminating cluster",
) -> Cluster:
    """delete (= terminate): a no-op on a TERMINATING or TERMINATED cluster."""
    if c.state in (State.TERMINATING, State.TERMINATED):
        return c
    c = c.clone()
    _move(c, State.TERMINATING, now, message)
    c.desired = "TERMINATED"
    c.termination_reason = reason
    c.restart_pending = False
    details: dict[str, Any] = {"reason": reason.model_dump()}
    if user:
        details["user"] = user
    return _bump(c, [(EventType.TERMINATING, details)], now)


USER_REQUEST = TerminationReason(code="USER_REQUEST", type="SUCCESS", parameters={})


def permanent_delete(c: Cluster, *, user: str, now: int) -> Cluster:
    c = terminate(c, reason=USER_REQUEST, user=user, now=now) if not c.deleted else c
    c = c.clone()
    c.deleted = True
    c.desired = "TERMINATED"
    return _bump(c, [], now)


def pin(c: Cluster, *, pinned: bool, user: str, now: int) -> Cluster:
    if c.pinned == pinned:
        return c
    c = c.clone()
    c.pinned = pinned
    return _bump(c, [(EventType.PINNED if pinned else EventType.UNPINNED, {"user": user})], now)


def disk_steps(
    c: Cluster,
    *,
    grown: Mapping[str, tuple[int, int, int]],
    at_limit: Mapping[str, tuple[int, int]],
    failed: Mapping[str, str] | None = None,
    now: int,
) -> Cluster:
    """Record local-storage steps: `grown` node -> (previous size, new size, free bytes) with
    EXPANDED_DISK, `at_limit` node -> (size, free bytes) with DID_NOT_EXPAND_DISK (once per
    node), `failed` node -> error with FAILED_TO_EXPAND_DISK."""
    new_limits = {n: v for n, v in at_limit.items() if n not in c.disk_at_limit}
    if not grown and not new_limits and not failed:
        return c
    c = c.clone()
    events: list[tuple[EventType, dict[str, Any]]] = []
    for node_id, (previous, size, free) in sorted(grown.items()):
        c.disk_targets[node_id] = size
        events.append(
            (
                EventType.EXPANDED_DISK,
                {
                    "instance_id": node_id,
                    "previous_disk_size": previous,
                    "disk_size": size,
                    "free_space": free,
                },
            )
        )
    for node_id, (size, free) in sorted(new_limits.items()):
        c.disk_at_limit.append(node_id)
        events.append(
            (
                EventType.DID_NOT_EXPAND_DISK,
                {
                    "instance_id": node_id,
                    "disk_size": size,
                    "free_space": free,
                    "did_not_expand_reason": "The node's local storage is at its largest size.",
                },
            )
        )
    for node_id, error in sorted((failed or {}).items()):
        events.append(
            (
                EventType.FAILED_TO_EXPAND_DISK,
                {"instance_id": node_id, "did_not_expand_reason": error[:500]},
            )
        )
    return _bump(c, events, now)
