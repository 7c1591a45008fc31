"""HTTP triggers of the Token API (users) and the operator-only admin endpoints."""

from __future__ import annotations

from typing import Any

import azure.functions as func

from functions.http import api, json_body, respond
from shared.domain import quotas
from shared.errors import EndpointNotFound, InvalidParameterValue
from shared.services.auth import Principal, parse_lifetime
from shared.wiring import Container

bp = func.Blueprint()
ANON = func.AuthLevel.ANONYMOUS


def _not_found(req: func.HttpRequest) -> func.HttpResponse:
    path = "/" + req.url.split("://", 1)[-1].split("/", 1)[-1].split("?", 1)[0]
    e = EndpointNotFound(f"No API found for '{req.method} {path}'")
    return respond(e.body(), e.status)


@bp.route(route="api/2.0/token/{op}", methods=["GET", "POST"], auth_level=ANON)
def tokens_api(req: func.HttpRequest) -> func.HttpResponse:
    op = (req.method, req.route_params.get("op"))

    def create(c: Container, p: Principal) -> Any:
        body = json_body(req)
        comment = body.get("comment") or ""
        if not isinstance(comment, str) or len(comment) > 1000:
            raise InvalidParameterValue("comment must be a string of at most 1000 characters.")
        lifetime_s = parse_lifetime(body)
        with c.quotas.admit(p.workspace_id, f"tokens:{p.user}") as q:
            quotas.check_tokens(q, c.quotas.tokens(p.workspace_id, p.user))
            token, info = c.auth.create_token(p, comment=comment, lifetime_s=lifetime_s)
        return {"token_value": token, "token_info": info}

    def delete(c: Container, p: Principal) -> Any:
        token_id = json_body(req).get("token_id")
        if not isinstance(token_id, str) or not token_id:
            raise InvalidParameterValue("Missing required field: token_id")
        c.auth.revoke(p.workspace_id, token_id, user=p.user)

    handlers = {
        ("POST", "create"): create,
        ("GET", "list"): lambda c, p: {"token_infos": c.auth.list_tokens(p)},
        ("POST", "delete"): delete,
    }
    if op not in handlers:
        return _not_found(req)
    return api(req, "user", handlers[op])


@bp.route(
    route="api/admin/workspaces/{workspace_id?}", methods=["GET", "POST", "DELETE"], auth_level=ANON
)
def admin_workspaces(req: func.HttpRequest) -> func.HttpResponse:
    ws = req.route_params.get("workspace_id")
    if ws is None and req.method == "GET":
        return api(req, "operator", lambda c, p: c.admin.list_workspaces())
    if ws is None and req.method == "POST":
        return api(req, "operator", lambda c, p: c.admin.create_workspace(json_body(req), p))
    if ws is not None and req.method == "GET":
        return api(req, "operator", lambda c, p: c.admin.get_workspace(ws))
    if ws is not None and req.method == "DELETE":
        return api(req, "operator", lambda c, p: c.admin.delete_workspace(ws))
    return _not_found(req)


@bp.route(
    route="api/admin/workspaces/{workspace_id}/quotas", methods=["GET", "PATCH"], auth_level=ANON
)
def admin_workspace_quotas(req: func.HttpRequest) -> func.HttpResponse:
    ws = req.route_params["workspace_id"]
    if req.method == "PATCH":
        return api(req, "operator", lambda c, p: c.admin.set_quotas(ws, json_body(req)))
    return api(req, "operator", lambda c, p: c.admin.get_quotas(ws))


@bp.route(route="api/admin/tokens/{token_id?}", methods=["GET", "POST", "DELETE"], auth_level=ANON)
def admin_tokens(req: func.HttpRequest) -> func.HttpResponse:
    """Operator tokens: list (GET), make one for the caller (POST), revoke one (DELETE)."""
    token_id = req.route_params.get("token_id")
    if token_id is None and req.method == "GET":
        return api(req, "operator", lambda c, p: c.admin.list_operator_tokens())
    if token_id is None and req.method == "POST":
        return api(req, "operator", lambda c, p: c.admin.create_operator_token(p, json_body(req)))
    if token_id is not None and req.method == "DELETE":
        return api(req, "operator", lambda c, p: c.admin.revoke_operator_token(token_id))
    return _not_found(req)


@bp.route(route="api/admin/status", methods=["GET"], auth_level=ANON)
def admin_status(req: func.HttpRequest) -> func.HttpResponse:
    """Every workspace's clusters and the queues' counts (`sparkplane status`)."""
    return api(req, "operator", lambda c, p: c.admin.status())


def _seq(req: func.HttpRequest) -> int:
    raw = req.route_params.get("seq", "")
    if not raw.isdigit() or int(raw) > 2**63 - 1:
        raise InvalidParameterValue("The sequence number must be a non-negative 64-bit integer.")
    return int(raw)


@bp.route(route="api/admin/dead-letters/{queue}", methods=["GET", "DELETE"], auth_level=ANON)
def admin_dead_letters(req: func.HttpRequest) -> func.HttpResponse:
    queue = req.route_params["queue"]
    if req.method == "DELETE":
        return api(req, "operator", lambda c, p: c.admin.purge(queue))
    return api(req, "operator", lambda c, p: c.admin.dead_letters(queue))


@bp.route(
    route="api/admin/dead-letters/{queue}/{seq}/{action?}",
    methods=["GET", "POST", "DELETE"],
    auth_level=ANON,
)
def admin_dead_letter(req: func.HttpRequest) -> func.HttpResponse:
    queue = req.route_params["queue"]
    action = req.route_params.get("action")
    if req.method == "GET" and action is None:
        return api(req, "operator", lambda c, p: c.admin.dead_letter(queue, _seq(req)))
    if req.method == "DELETE" and action is None:
        return api(req, "operator", lambda c, p: c.admin.purge(queue, _seq(req)))
    if req.method == "POST" and action == "resubmit":
        return api(req, "operator", lambda c, p: c.admin.resubmit(queue, _seq(req)))
    return _not_found(req)
