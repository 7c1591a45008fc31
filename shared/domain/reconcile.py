"""The reconcile rule: desired cluster + observed nodes -> the next provisioning step.

Level-triggered: the plan depends only on the document and what the provisioner observes, so a
duplicate, late or replayed reconcile message is one more harmless evaluation. Passive changes
(mirroring what the nodes are) and active ones (the next step) are both decided here; the
lifecycle service only carries them out.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.domain import spark_auth
from shared.domain.cluster import Cluster, TerminationReason, _bump, _move
from shared.domain.events import EventType, event
from shared.domain.nodes import Node
from shared.domain.states import TRANSITIONAL, State


@dataclass(frozen=True)
class StartDriver:
    pass


@dataclass(frozen=True)
class AddWorkers:
    count: int


@dataclass(frozen=True)
class RemoveWorkers:
    node_ids: tuple[str, ...]


@dataclass(frozen=True)
class StopCluster:
    pass


Action = StartDriver | AddWorkers | RemoveWorkers | StopCluster


@dataclass
class Plan:
    cluster: Cluster
    actions: list[Action] = field(default_factory=list)
    # Save the document (it changed).
    changed: bool = False
    # Reconcile again after this many seconds (not converged yet).
    requeue: bool = False
    # The cluster is permanently deleted and its nodes are gone: remove the document.
    delete_document: bool = False


def _node_wire(n: Node) -> dict[str, Any]:
    out: dict[str, Any] = {
        "node_id": n.node_id,
        "instance_id": n.instance_id or n.node_id,
        "private_ip": n.private_ip,
        "host_private_ip": n.private_ip,
        "start_timestamp": n.start_ms,
    }
    out.update(n.attrs)
    out.pop(spark_auth.CREDENTIAL_ID_ATTR, None)  # kept in Cluster.credential_id
    return out


def _snapshot(c: Cluster, nodes: Sequence[Node]) -> bool:
    drivers = [n for n in nodes if n.role == "driver" and n.status in ("STARTING", "RUNNING")]
    workers = [n for n in nodes if n.role == "worker" and n.status == "RUNNING"]
    driver = _node_wire(drivers[0]) if drivers else None
    executors = [_node_wire(n) for n in sorted(workers, key=lambda n: (n.start_ms, n.node_id))]
    credential_id = (
        spark_auth.adopted_credential_id(
            c.cluster_id, drivers[0].attrs.get(spark_auth.CREDENTIAL_ID_ATTR)
        )
        if drivers
        else ""
    )
    if driver != c.driver or executors != c.executors or credential_id != c.credential_id:
        c.driver = driver
        c.executors = executors
        c.credential_id = credential_id
        return True
    return False


def _fail(c: Cluster, now: int, code: str, type_: str, message: str, **params: str) -> None:
    reason = TerminationReason(code=code, type=type_, parameters=dict(params))  # type: ignore[arg-type]
    c.desired = "TERMINATED"
    c.termination_reason = reason
    c.restart_pending = False
    _move(c, State.TERMINATING, now, message)


def plan(
    cluster: Cluster,
    nodes: Sequence[Node],
    *,
    now: int,
    startup_timeout_ms: int = 10 * 60_000,
    rng: random.Random | None = None,
) -> Plan:
    c = cluster.clone()
    events: list[tuple[EventType, dict[str, Any]]] = []
    p = Plan(cluster=c)
    driver = next((n for n in nodes if n.role == "driver"), None)
    workers = [n for n in nodes if n.role == "worker"]
    snapshot_changed = _snapshot(c, nodes)

    def finish() -> Plan:
        # Any difference from the stored document is saved (a state change with no event,
        # such as the end of a downsize, included).
        if events or p.changed or snapshot_changed or c != cluster:
            p.changed = True
            _bump(c, events, now)
        return p

    # ---- stopping: desired TERMINATED (terminate, permanent delete, failures)
    if c.desired == "TERMINATED":
        if c.state not in (State.TERMINATING, State.TERMINATED):
            _move(c, State.TERMINATING, now, c.state_message or "Terminating cluster")
            p.changed = True
        if nodes:
            if any(n.status != "STOPPING" for n in nodes):
                p.actions.append(StopCluster())
            p.requeue = True
            return finish()
        if c.state != State.TERMINATED:
            reason = c.termination_reason
            _move(c, State.TERMINATED, now, _terminated_message(reason))
            c.terminated_time = now
            c.spark_context_id = None
            c.remove_hint = []
            p.changed = True
        p.delete_document = c.deleted
        return finish()

    if c.state == State.TERMINATED:
        return finish()  # a stale message for a cluster that is down: nothing to do

    # ---- restart (also how an edit of a running cluster is applied): all nodes go first
    if c.restart_pending:
        if nodes:
            if any(n.status != "STOPPING" for n in nodes):
                p.actions.append(StopCluster())
            p.requeue = True
            return finish()
        c.restart_pending = False
        p.changed = True

    # ---- the driver
    was_up = c.state in (State.RUNNING, State.RESIZING)
    if driver is None or driver.status in ("LOST", "STOPPING"):
        if was_up or (driver is not None and driver.status == "LOST"):
            code = "DRIVER_UNREACHABLE" if was_up else "SPARK_STARTUP_FAILURE"
            type_ = "SERVICE_FAULT"
            params: dict[str, str] = {}
            failure = driver.attrs.get("failure", "") if driver is not None else ""
            if driver is not None and failure and not was_up:
                # The provisioner named why the driver never started (ARM: its VM failed in
                # the cloud, a temporary failure; or it ran but never reported ready, a
                # permanent one): that is the reason, with its kind.
                kind = driver.attrs.get("failure_kind", "")
                code, params = failure, {"failure_kind": kind}
                type_ = "CLOUD_FAILURE" if kind == "temporary" else "SERVICE_FAULT"
            msg = (
                "The driver node is unreachable; the cluster was terminated."
                if was_up
                else "The driver node failed to start."
            )
            _fail(c, now, code, type_, msg, **params)
            c.last_state_loss_time = now
            events.append((EventType.DRIVER_UNAVAILABLE, {}))
            events.append((EventType.TERMINATING, {"reason": c.termination_reason.model_dump()}))  # type: ignore[union-attr]
            if nodes:
                p.actions.append(StopCluster())
            p.requeue = True
            return finish()
        p.actions.append(StartDriver())

    # ---- the workers: replace lost ones, grow or shrink to the target
    lost = [w for w in workers if w.status == "LOST"]
    if lost:
        events.append(
            (
                EventType.NODES_LOST,
                {
                    "current_num_workers": len(workers) - len(lost),
                    "target_num_workers": c.target_workers,
                    "instance_id": ",".join(w.node_id for w in lost),
                    "cause": "AUTORECOVERY",
                },
            )
        )
        p.actions.append(RemoveWorkers(tuple(w.node_id for w in lost)))
    live = [w for w in workers if w.status in ("STARTING", "RUNNING")]
    stopping = [w for w in workers if w.status == "STOPPING"]
    if len(live) < c.target_workers:
        p.actions.append(AddWorkers(c.target_workers - len(live)))
    elif len(live) > c.target_workers:
        p.actions.append(RemoveWorkers(tuple(_choose_removals(live, c))))

    converged = (
        driver is not None
        and driver.status == "RUNNING"
        and not p.actions
        and not stopping
        and all(w.status == "RUNNING" for w in live)
    )
    if converged:
        if c.state in (State.PENDING, State.RESTARTING):
            restarted = c.state == State.RESTARTING
            _move(c, State.RUNNING, now, "")
            c.running_since = now
            c.spark_context_id = (rng or random.Random()).randrange(1, 2**62)
            if restarted:
                c.last_restarted_time = now
            events.append((EventType.RUNNING, {"current_num_workers": len(live)}))
        elif c.state == State.RESIZING:
            grew = c.resize_from is None or len(live) > c.resize_from
            c.resize_from = None
            _move(c, State.RUNNING, now, "")
            if grew:
                events.append(
                    (
                        EventType.UPSIZE_COMPLETED,
                        {"current_num_workers": len(live), "target_num_workers": c.target_workers},
                    )
                )
        if c.remove_hint:
            c.remove_hint = []
            p.changed = True
        return finish()

    if c.state == State.PENDING and now - c.state_since > startup_timeout_ms:
        _fail(c, now, "BOOTSTRAP_TIMEOUT", "CLOUD_FAILURE", "The cluster did not start in time.")
        events.append((EventType.TERMINATING, {"reason": c.termination_reason.model_dump()}))  # type: ignore[union-attr]
        p.actions = [StopCluster()] if nodes else []
    p.requeue = True
    return finish()


def _choose_removals(live: Sequence[Node], c: Cluster) -> list[str]:
    """Which workers go on scale-down: not-yet-running ones, then the autoscaler's preference
    (nodes without shuffle or cached data), then the newest."""
    excess = len(live) - c.target_workers
    hint = {nid: i for i, nid in enumerate(c.remove_hint)}

    def key(n: Node) -> tuple[int, int, int]:
        return (0 if n.status == "STARTING" else 1, hint.get(n.node_id, len(hint)), -n.start_ms)

    return [n.node_id for n in sorted(live, key=key)[:excess]]


def _terminated_message(reason: TerminationReason | None) -> str:
    if reason is None or reason.code == "USER_REQUEST":
        return "Terminated by user request."
    if reason.code == "INACTIVITY":
        minutes = reason.parameters.get("inactivity_duration_min", "?")
        return f"Inactive cluster terminated (inactive for {minutes} minutes)."
    return f"Cluster terminated. Reason: {reason.code}"


def nodes_unavailable(
    p: Plan, *, code: str, message: str, live_workers: int, now: int, **params: str
) -> Plan:
    """A step of the plan could not get nodes (an instance pool at max_capacity, a pool that
    is gone, a provisioner that cannot use pools). A starting cluster fails with `code`; a
    running one stays at the size it has, with an ADD_NODES_FAILED event."""
    c = p.cluster.clone()
    events: list[tuple[EventType, dict[str, Any]]] = []
    if c.state in (State.RUNNING, State.RESIZING):
        reason = {"code": code, "type": "CLIENT_ERROR", "parameters": dict(params)}
        events.append(
            (
                EventType.ADD_NODES_FAILED,
                {
                    "current_num_workers": live_workers,
                    "target_num_workers": c.target_workers,
                    "reason": reason,
                },
            )
        )
        c.target_workers = live_workers
        c.resize_from = None
        c.remove_hint = []
        _move(c, State.RUNNING, now, f"Could not add nodes: {message}")
    elif c.desired == "RUNNING":
        _fail(c, now, code, "CLIENT_ERROR", message, **params)
        events.append((EventType.TERMINATING, {"reason": c.termination_reason.model_dump()}))  # type: ignore[union-attr]
    else:
        return p
    if p.changed:
        # The plan's own events are pending already: these follow them in the same write.
        base = len(c.pending_events)
        c.pending_events = [
            *c.pending_events,
            *(
                event(c.cluster_id, t, now, f"{c.generation}-{base + i}", d)
                for i, (t, d) in enumerate(events)
            ),
        ]
    else:
        _bump(c, events, now)
    return Plan(cluster=c, actions=[], changed=True, requeue=True)


# ---------------------------------------------------------------- the cloud's request limits


def refused(c: Cluster, now: int, retry_ms: int) -> Cluster | None:
    """The document after a reconcile the cloud's request limits refused, its retry due in
    `retry_ms`; None: nothing to write (a cluster on its way nowhere is never taken for stuck).
    A PENDING cluster is waiting for ARM's budget, not failing to start: its startup timeout
    counts from the refusal."""
    if c.state not in TRANSITIONAL:
        return None
    update: dict[str, Any] = {"retry_at": now + retry_ms}
    if c.state == State.PENDING:
        update["state_since"] = now
    return c.model_copy(update=update)


def stuck(c: Cluster, now: int, stuck_ms: int) -> bool:
    """Whether the reconciler timer sends a cluster one more reconcile: on its way (a
    transitional state) and not moved for `stuck_ms`, its message lost or its handler crashed.
    A refused reconcile's retry is a scheduled message: the cluster is not stuck before it is
    due, else each tick of its wait would start one more chain of retries."""
    return c.state in TRANSITIONAL and now - max(c.state_since, c.retry_at) >= stuck_ms
