"""Translation between func.HttpRequest/HttpResponse and the services (no decisions here)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import azure.functions as func

from shared.errors import ApiError, MalformedRequest, TooLarge
from shared.ports import PreconditionFailed

log = logging.getLogger("sparkplane.http")

MAX_BODY_BYTES = 1 << 20


def respond(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps(body, separators=(",", ":")),
        status_code=status,
        mimetype="application/json",
        headers=headers,
    )


def error(e: ApiError) -> func.HttpResponse:
    return respond(e.body(), e.status)


def json_body(req: func.HttpRequest) -> dict[str, Any]:
    raw = req.get_body() or b""
    if len(raw) > MAX_BODY_BYTES:
        raise TooLarge(f"Request body is larger than {MAX_BODY_BYTES} bytes.")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise MalformedRequest(f"Malformed JSON request body: {e}") from None
    if not isinstance(body, dict):
        raise MalformedRequest("The request body must be a JSON object.")
    return body


def guarded(handler: Callable[[], func.HttpResponse]) -> func.HttpResponse:
    """Run a handler; map API errors to their Databricks bodies and anything else to 500."""
    try:
        return handler()
    except ApiError as e:
        return error(e)
    except PreconditionFailed:
        return respond(
            {"error_code": "ABORTED", "message": "Concurrent modification; retry the request."},
            409,
        )
    except Exception:
        log.exception("internal error")
        return respond({"error_code": "INTERNAL_ERROR", "message": "Internal error."}, 500)


_TRUE = {"true": True, "false": False}


def query_filters(req: func.HttpRequest, prefix: str) -> dict[str, Any]:
    """`filter_by.cluster_states=A&filter_by.cluster_states=B` -> {"cluster_states": [A, B]}.

    The SDK sends nested booleans as Python's True/False, so booleans parse case-insensitively.
    func.HttpRequest.params keeps one value per key; the host passes repeated keys comma-joined.
    """
    out: dict[str, Any] = {}
    for key, value in req.params.items():
        if not key.startswith(prefix + "."):
            continue
        name = key[len(prefix) + 1 :]
        if value.lower() in _TRUE:
            out[name] = _TRUE[value.lower()]
        else:
            out[name] = [v for v in value.split(",") if v]
    return out
