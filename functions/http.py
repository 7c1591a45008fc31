"""Translation between func.HttpRequest/HttpResponse and the services (no decisions here)."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import azure.functions as func

from shared.domain.ratelimit import client_address
from shared.errors import (
    ApiError,
    EndpointNotFound,
    InvalidParameterValue,
    MalformedRequest,
    PermissionDenied,
    RequestLimitExceeded,
    TooLarge,
    Unauthenticated,
)
from shared.ports import PreconditionFailed
from shared.services.auth import Principal, Role
from shared.wiring import Container, container

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
    wait = e.retry_after_s
    return respond(e.body(), e.status, {"Retry-After": str(wait)} if wait else None)


def json_body(
    req: func.HttpRequest,
    max_bytes: int = MAX_BODY_BYTES,
    too_large: type[ApiError] = TooLarge,
) -> dict[str, Any]:
    """The JSON object of a request body of at most `max_bytes` (beyond: `too_large`)."""
    raw = req.get_body() or b""
    if len(raw) > max_bytes:
        raise too_large(f"Request body is larger than {max_bytes} bytes.")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise MalformedRequest(f"Malformed JSON request body: {e}") from None
    if not isinstance(body, dict):
        raise MalformedRequest("The request body must be a JSON object.")
    try:
        # JSON may escape lone surrogates ("\ud800"): not text any store or node can keep.
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise MalformedRequest(
            "The request body has a string that is not valid Unicode (a lone surrogate)."
        ) from None
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


_limiter_lock = threading.Lock()


def too_many(message: str, wait_s: float) -> func.HttpResponse:
    """429 REQUEST_LIMIT_EXCEEDED with Retry-After in whole seconds (at least 1), as Databricks
    answers it (the SDK waits that long and retries)."""
    e = RequestLimitExceeded(message)
    return respond(e.body(), e.status, {"Retry-After": str(max(1, math.ceil(wait_s)))})


def api(
    req: func.HttpRequest,
    role: Role,
    run: Callable[[Container, Principal], Any],
) -> func.HttpResponse:
    """Throttle the client address if it sent too many requests without a valid token (from
    memory, before the store is read), authenticate (the token's role must match), rate-limit
    per token, run, answer JSON (or, when `run` makes one, its own response: a file's raw
    bytes)."""

    def go() -> func.HttpResponse:
        c = container()
        address = client_address(req.headers.get("X-Forwarded-For"), c.settings.trusted_proxy_hops)
        authorization = req.headers.get("Authorization")
        wait = c.throttle.check(address, authorization)
        if wait is not None:
            return too_many("Too many requests without a valid token from this address.", wait)
        try:
            p = c.auth.authenticate(authorization)
        except Unauthenticated:
            # Spends the address's budget of failures, then answers the 401 as it is.
            c.throttle.failed(address, authorization)
            raise
        c.throttle.succeeded(authorization)
        if p.role != role:
            raise PermissionDenied(f"A {p.role} token cannot call this endpoint.")
        with _limiter_lock:
            wait = c.limiter.take(p.token_id, time.monotonic())
        if wait is not None:
            return too_many("Too many requests for this token; retry later.", wait)
        result = run(c, p)
        if isinstance(result, func.HttpResponse):
            return result
        return respond(result if result is not None else {})

    return guarded(go)


S = TypeVar("S")
Handler = Callable[[S, Principal, func.HttpRequest], Any]


def body_op(fn: Callable[[S, Principal, dict[str, Any]], Any]) -> Handler[S]:
    """The handler of an operation that takes the request's JSON body."""

    def handler(s: S, p: Principal, req: func.HttpRequest) -> Any:
        return fn(s, p, json_body(req))

    return handler


def dispatch(
    req: func.HttpRequest,
    path: str,
    post: Mapping[str, Handler[S]],
    get: Mapping[str, Handler[S]],
    service: Callable[[Container], S],
    *,
    versions: tuple[str, ...] | None = None,
) -> func.HttpResponse:
    """One call of a Databricks API family (`/api/{path}/{op}`, or `/api/{version}/{path}/{op}`
    for a route with a version among `versions`): the handler of `op` for the method (else
    ENDPOINT_NOT_FOUND), run by `api` for a user token on the request as `with_body_params`
    reads it."""
    op = req.route_params.get("op", "")
    table = post if req.method == "POST" else get
    known_version = True
    if versions is not None:
        version = req.route_params.get("version") or ""
        path = f"{version}/{path}"
        known_version = version in versions
    if not known_version or op not in table:
        e = EndpointNotFound(f"No API found for '{req.method} /api/{path}/{op}'")
        return respond(e.body(), e.status)
    return api(req, "user", lambda c, p: table[op](service(c), p, with_body_params(req)))


def with_body_params(req: func.HttpRequest) -> func.HttpRequest:
    """A GET's parameters come in its query string or as a JSON body, as Databricks reads them
    (aiohttp clients such as Airflow's triggerer send a body): the request with the body's
    parameters among its query parameters, the query string winning. A body that is not a JSON
    object is MALFORMED_REQUEST; any other request is returned as it is."""
    raw = req.get_body() or b""
    if req.method != "GET" or not raw.strip():
        return req
    params: dict[str, str] = {}
    for name, value in json_body(req).items():
        params.update(_query_params(name, value))
    params.update(req.params)
    return func.HttpRequest(
        req.method,
        req.url,
        headers=dict(req.headers),
        params=params,
        route_params=dict(req.route_params),
        body=raw,
    )


def _query_params(name: str, value: Any) -> Iterator[tuple[str, str]]:
    """A JSON body's parameter as the query string would carry it: an object as dotted names
    (`filter_by.cluster_states`), a list comma-joined (as the host joins a repeated key),
    booleans as true/false, null left out."""
    if value is None:
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _query_params(f"{name}.{key}", item)
    elif isinstance(value, list):
        if any(isinstance(item, (Mapping, list)) for item in value):
            raise InvalidParameterValue(f"{name} must be a list of values, not of objects.")
        yield name, ",".join(_query_text(item) for item in value if item is not None)
    else:
        yield name, _query_text(value)


def _query_text(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


BOOLEAN_FILTERS = frozenset({"is_pinned"})


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
        if name in BOOLEAN_FILTERS:
            if value.lower() not in ("true", "false"):
                raise InvalidParameterValue(f"{key} must be true or false.")
            out[name] = value.lower() == "true"
        else:
            out[name] = [v for v in value.split(",") if v]
    return out
