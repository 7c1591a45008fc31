"""HTTP triggers of the Instance Pools API (`/api/2.0/instance-pools/*`)."""

from __future__ import annotations

import azure.functions as func

from functions.http import Handler, body_op, dispatch
from shared.services.pools import PoolService

bp = func.Blueprint()

POST: dict[str, Handler[PoolService]] = {
    "create": body_op(lambda s, p, b: s.create(p, b)),
    "edit": body_op(lambda s, p, b: s.edit(p, b)),
    "delete": body_op(lambda s, p, b: s.delete(p, b)),
}
GET: dict[str, Handler[PoolService]] = {
    "get": lambda s, p, r: s.get(p, r.params.get("instance_pool_id")),
    "list": lambda s, p, r: s.list(p),
}


@bp.route(
    route="api/2.0/instance-pools/{op}",
    methods=["GET", "POST"],
    auth_level=func.AuthLevel.ANONYMOUS,
)
def instance_pools_api(req: func.HttpRequest) -> func.HttpResponse:
    return dispatch(req, "2.0/instance-pools", POST, GET, lambda c: c.pools)
