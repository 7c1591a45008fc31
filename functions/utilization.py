"""Heartbeats from the cluster agents, and the autoscaling and idle-termination timers."""

from __future__ import annotations

import logging

import azure.functions as func

from functions.http import api, json_body
from shared.wiring import container

bp = func.Blueprint()
log = logging.getLogger("sparkplane.utilization")


@bp.route(
    route="api/sparkplane/agent/heartbeat",
    methods=["POST"],
    auth_level=func.AuthLevel.ANONYMOUS,
)
def agent_heartbeat(req: func.HttpRequest) -> func.HttpResponse:
    # Only a cluster's own agent token is accepted, and only for that cluster.
    return api(req, "agent", lambda c, p: c.utilization.heartbeat(p, json_body(req)))


@bp.timer_trigger(arg_name="timer", schedule="%SPARKPLANE_AUTOSCALE_SCHEDULE%")
def autoscaler(timer: func.TimerRequest) -> None:
    stats = container().utilization.autoscale_tick()
    if stats["changed"]:
        log.info("autoscale tick", extra=stats)


@bp.timer_trigger(arg_name="timer", schedule="%SPARKPLANE_IDLE_SCHEDULE%")
def idle_terminator(timer: func.TimerRequest) -> None:
    stats = container().utilization.idle_tick()
    if stats["terminated"]:
        log.info("idle tick", extra=stats)
