"""HTTP triggers of the Clusters API (`/api/2.1/clusters/*`, aliased under 2.0)."""

from __future__ import annotations

import azure.functions as func

from functions.http import Handler, body_op, dispatch, query_filters, respond
from shared.domain.wire import integer
from shared.services.clusters import ClusterService

bp = func.Blueprint()

VERSIONS = ("2.0", "2.1")


def _page_size(req: func.HttpRequest) -> int:
    raw = req.params.get("page_size")
    return 100 if raw is None or raw == "" else integer(raw, "page_size", 1, 1000)


POST: dict[str, Handler[ClusterService]] = {
    "create": body_op(lambda s, p, b: {"cluster_id": s.create(p, b)}),
    "edit": body_op(lambda s, p, b: s.edit(p, b)),
    "start": body_op(lambda s, p, b: s.start(p, b)),
    "restart": body_op(lambda s, p, b: s.restart(p, b)),
    "resize": body_op(lambda s, p, b: s.resize(p, b)),
    "delete": body_op(lambda s, p, b: s.delete(p, b)),
    "permanent-delete": body_op(lambda s, p, b: s.permanent_delete(p, b)),
    "pin": body_op(lambda s, p, b: s.pin(p, b, True)),
    "unpin": body_op(lambda s, p, b: s.pin(p, b, False)),
    "events": body_op(lambda s, p, b: s.events(p, b)),
}

GET: dict[str, Handler[ClusterService]] = {
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
    return dispatch(req, "clusters", POST, GET, lambda c: c.clusters, versions=VERSIONS)


@bp.route(
    route=".well-known/databricks-config",
    methods=["GET"],
    auth_level=func.AuthLevel.ANONYMOUS,
)
def databricks_config(req: func.HttpRequest) -> func.HttpResponse:
    # The SDK probes this path without a token at start-up; `{}` keeps its defaults.
    return respond({})
