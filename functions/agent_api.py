"""The routes a cluster's driver agent takes its job tasks from (shared/services/tasks.py).

Only a cluster's own agent token is accepted, and it sees only that cluster's tasks.
"""

from __future__ import annotations

import azure.functions as func

from functions.http import api, json_body

bp = func.Blueprint()


@bp.route(route="api/sparkplane/agent/tasks", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def agent_tasks(req: func.HttpRequest) -> func.HttpResponse:
    return api(req, "agent", lambda c, p: c.tasks.assigned(p))


@bp.route(
    route="api/sparkplane/agent/tasks/{key}/file",
    methods=["GET"],
    auth_level=func.AuthLevel.ANONYMOUS,
)
def agent_task_file(req: func.HttpRequest) -> func.HttpResponse:
    key = req.route_params.get("key", "")
    return api(req, "agent", lambda c, p: c.tasks.file(p, key))


@bp.route(
    route="api/sparkplane/agent/tasks/{key}/status",
    methods=["POST"],
    auth_level=func.AuthLevel.ANONYMOUS,
)
def agent_task_status(req: func.HttpRequest) -> func.HttpResponse:
    key = req.route_params.get("key", "")
    return api(req, "agent", lambda c, p: c.tasks.report(p, key, json_body(req)))
