"""HTTP triggers of the Clusters API (`/api/2.1/clusters/*`, aliased under 2.0)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import azure.functions as func

from functions.http import dispatch, json_body, query_filters, respond
from shared.domain.wire import integer
from shared.services.auth import Principal
from shared.services.clusters import ClusterService

bp = func.Blueprint()

VERSIONS = ("2.0", "2.1")

Handler = Callable[[ClusterService, Principal, func.HttpRequest], Any]


def _page_size(req: func.HttpRequest) -> int:
    raw = req.params.get("page_size")
    return 100 if raw is None or raw == "" else integer(raw, "page_size", 1, 1000)


def _post(fn: Callable[[ClusterService, Principal, dict[str, Any]], Any]) -> Handler:
    def h(s: ClusterService, p: Principal, req: func.HttpRequest) -> Any:
        return fn(s, p, json_body(req))

    return h


POST: dict[str, Handler] = {
    "create": _post(lambda s, p, b: {"cluster_id": s.create(p, b)}),
    "edit": _post(lambda s, p, b: s.edit(p, b)),
    "start": _post(lambda s, p, b: s.start(p, b)),
    "restart": _post(lambda s, p, b: s.restart(p, b)),
    "resize": _post(lambda s, p, b: s.resize(p, b)),
    "delete": _post(lambda s, p, b: s.delete(p, b)),
    "permanent-delete": _post(lambda s, p, b: s.permanent_delete(p, b)),
    "pin": _post(lambda s, p, b: s.pin(p, b, True)),
    "unpin": _post(lambda s, p, b: s.pin(p, b, False)),
    "events": _post(lambda s, p, b: s.events(p, b)),
}

GET: dict[str, Handler] = {
    "get": lambda s, p, r: s.get(p, r.params.get("cluster_id")),
    "list": lambda s, p, r: s.list(
        p,
        page_size=_page_size(r),
        page_token=r.params.get("page_token") or None,
        flt=query_filters(r, "filter_by"),
    ),
    "list-node-types": lambda s, p, r: s.node_types(),
    "spark-versions": lambda s, p, r: s.spark_versions(),
}


@bp.route(
    route="api/{version}/clusters/{op}",
    methods=["GET", "POST"],
    auth_level=func.AuthLevel.ANONYMOUS,
)
def clusters_api(req: func.HttpRequest) -> func.HttpResponse:
    version = req.route_params.get("version")
    path = f"{version}/clusters"
    return dispatch(req, path, POST, GET, lambda c: c.clusters, known_version=version in VERSIONS)


@bp.route(
    route=".well-known/databricks-config",
    methods=["GET"],
    auth_level=func.AuthLevel.ANONYMOUS,
)
def databricks_config(req: func.HttpRequest) -> func.HttpResponse:
    # The SDK probes this path without a token at start-up; `{}` keeps its defaults.
    return respond({})
