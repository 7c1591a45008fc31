"""The queue messages the services send one another: their bodies, ids and sessions.

One place for each format, so the sender (an API call, a timer) and the handler (a queue
function) read the same shape. The message id is chosen by the caller: the bus drops a second
message with the same id (duplicate detection), which is how a retried send stays one message.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from shared.domain.cluster import Cluster
from shared.ports import OutMessage


def _message(
    body: Mapping[str, object], message_id: str, session_id: str, due_ms: int | None
) -> OutMessage:
    return OutMessage(
        body=json.dumps(body).encode(),
        message_id=message_id,
        session_id=session_id,
        scheduled_enqueue_ms=due_ms,
    )


def reconcile_message(c: Cluster, message_id: str, due_ms: int | None = None) -> OutMessage:
    """`reconcile` of one cluster (lifecycle queue; session = cluster id: one at a time)."""
    body = {"type": "reconcile", "cluster_id": c.cluster_id, "workspace_id": c.workspace_id}
    return _message(body, message_id, c.cluster_id, due_ms)


def advance_message(
    workspace_id: str, run_id: int, message_id: str, due_ms: int | None = None
) -> OutMessage:
    """`advance` of one job run (jobs queue; session = run id: one handler per run at a time)."""
    body = {"type": "advance", "workspace_id": workspace_id, "run_id": run_id}
    return _message(body, message_id, str(run_id), due_ms)


def fire_message(
    workspace_id: str, job_id: int, message_id: str, due_ms: int | None = None
) -> OutMessage:
    """`fire`: carry out a job's due schedule (jobs queue; session = the job)."""
    body = {"type": "fire", "workspace_id": workspace_id, "job_id": job_id}
    return _message(body, message_id, f"job:{job_id}", due_ms)


def pool_message(
    workspace_id: str, pool_id: str, message_id: str, due_ms: int | None = None
) -> OutMessage:
    """`pool`: reconcile one instance pool (lifecycle queue; session = the pool)."""
    body = {"type": "pool", "pool_id": pool_id, "workspace_id": workspace_id}
    return _message(body, message_id, f"pool:{pool_id}", due_ms)


def deletion_message(ws: str, message_id: str, due_ms: int | None = None) -> OutMessage:
    """`delete_workspace`: one pass of a workspace's deletion (lifecycle queue)."""
    body = {"type": "delete_workspace", "workspace_id": ws}
    return _message(body, message_id, f"workspace:{ws}", due_ms)
