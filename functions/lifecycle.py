"""Queue and timer triggers of the cluster lifecycle."""

from __future__ import annotations

import logging

import azure.functions as func

from shared.wiring import container

bp = func.Blueprint()
log = logging.getLogger("sparkplane.lifecycle")


@bp.service_bus_queue_trigger(
    arg_name="msg",
    queue_name="%SPARKPLANE_LIFECYCLE_QUEUE%",
    connection="SPARKPLANE_SERVICEBUS",
    is_sessions_enabled=True,
)
def cluster_lifecycle(msg: func.ServiceBusMessage) -> None:
    # An exception abandons the message (redelivered; dead-lettered after 10 deliveries).
    container().lifecycle.handle(msg.get_body())


@bp.timer_trigger(arg_name="timer", schedule="%SPARKPLANE_RECONCILER_SCHEDULE%")
def reconciler(timer: func.TimerRequest) -> None:
    stats = container().lifecycle.sweep()
    if any(stats.values()):
        log.info("reconciler sweep", extra=stats)
