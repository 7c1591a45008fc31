"""HTTP triggers of the Instance Pools API (`/api/2.0/instance-pools/*`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import azure.functions as func

from functions.http import dispatch, json_body
from shared.services.auth import Principal
from shared.services.pools import PoolService

bp = func.Blueprint()

Handler = Callable[[PoolService, Principal, func.HttpRequest], Any]

POST: dict[str, Handler] = {
    "create": lambda s, p, r: s.create(p, json_body(r)),
    "edit": lambda s, p, r: s.edit(p, json_body(r)),
    "delete": lambda s, p, r: s.delete(p, json_body(r)),
}
GET: dict[str, Handler] = {
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
