"""Cluster events (the Databricks ClusterEvent shape)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class EventType(StrEnum):
    CREATING = "CREATING"
    STARTING = "STARTING"
    RESTARTING = "RESTARTING"
    TERMINATING = "TERMINATING"
    EDITED = "EDITED"
    RUNNING = "RUNNING"
    RESIZING = "RESIZING"
    UPSIZE_COMPLETED = "UPSIZE_COMPLETED"
    NODES_LOST = "NODES_LOST"
    DRIVER_HEALTHY = "DRIVER_HEALTHY"
    DRIVER_NOT_RESPONDING = "DRIVER_NOT_RESPONDING"
    DRIVER_UNAVAILABLE = "DRIVER_UNAVAILABLE"
    AUTOSCALING_STATS_REPORT = "AUTOSCALING_STATS_REPORT"
    AUTOSCALING_FAILED = "AUTOSCALING_FAILED"
    ADD_NODES_FAILED = "ADD_NODES_FAILED"
    PINNED = "PINNED"
    UNPINNED = "UNPINNED"
    DECOMMISSION_STARTED = "DECOMMISSION_STARTED"
    DECOMMISSION_ENDED = "DECOMMISSION_ENDED"
    EXPANDED_DISK = "EXPANDED_DISK"
    DID_NOT_EXPAND_DISK = "DID_NOT_EXPAND_DISK"
    FAILED_TO_EXPAND_DISK = "FAILED_TO_EXPAND_DISK"


def event(
    cluster_id: str, type_: EventType, now: int, event_id: str, details: dict[str, Any]
) -> dict[str, Any]:
    """One event; `event_id` is unique per cluster so a re-flushed event is stored once."""
    return {
        "id": event_id,
        "cluster_id": cluster_id,
        "timestamp": now,
        "type": type_.value,
        "details": details,
    }


def wire(ev: dict[str, Any]) -> dict[str, Any]:
    """The event as the API returns it."""
    return {k: ev[k] for k in ("cluster_id", "timestamp", "type", "details") if k in ev}
