"""The local stand-in for the Azure Functions host.

It loads `function_app.app` and runs its functions the way the Functions host does: HTTP
triggers behind a real HTTP server (route parameters filled), timer triggers on their NCRONTAB
schedules (six fields, seconds first), Service Bus triggers fed from the embedded bus as the
concrete `azure.functions.ServiceBusMessage` with peek-lock, complete on success and abandon on
an exception, with the concurrency host.json sets.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import azure.functions as func
from azure.functions.servicebus import ServiceBusMessage
from azure.functions.timer import TimerRequest
from croniter import croniter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from devhost.routes import RouteTemplate, compile_route
from shared.ports import Delivery, Receiver

log = logging.getLogger("sparkplane.devhost")

_SETTING = re.compile(r"%([A-Za-z0-9_]+)%")
MAX_REQUEST_BYTES = 100 << 20  # the Functions host's own request size limit
# "http://host[:port]" before the path of a request target in absolute-form.
_ABSOLUTE_FORM = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*")


def resolve(value: str) -> str:
    """App-setting references (`%NAME%`) as the host resolves them."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in os.environ:
            raise KeyError(f"app setting {name} is not set (referenced as %{name}%)")
        return os.environ[name]

    return _SETTING.sub(sub, value)


def load_settings(path: Path) -> None:
    """A settings file's Values become environment defaults, as Core Tools does with
    `local.settings.json` (devhost reads `devhost.settings.json`: the embedded bus needs no
    connection, which the real host's `local.settings.json` must give)."""
    if path.exists():
        values = json.loads(path.read_text()).get("Values", {})
        for k, v in values.items():
            os.environ.setdefault(k, str(v))


@dataclass
class HttpFunction:
    name: str
    route: RouteTemplate
    methods: frozenset[str]
    arg: str
    fn: Callable[..., Any]


@dataclass
class TimerFunction:
    name: str
    schedule: str
    arg: str
    fn: Callable[..., Any]
    run_on_startup: bool = False


@dataclass
class QueueFunction:
    name: str
    queue: str
    sessions: bool
    arg: str
    fn: Callable[..., Any]


@dataclass
class FunctionIndex:
    http: list[HttpFunction] = field(default_factory=list)
    timers: list[TimerFunction] = field(default_factory=list)
    queues: list[QueueFunction] = field(default_factory=list)


def disabled(name: str) -> bool:
    """`AzureWebJobs.<name>.Disabled` (or with underscores, as on Linux) disables a function."""
    for key in (f"AzureWebJobs.{name}.Disabled", f"AzureWebJobs_{name}_Disabled"):
        if os.environ.get(key, "").lower() in ("1", "true"):
            return True
    return False


def index(app: func.FunctionApp) -> FunctionIndex:
    out = FunctionIndex()
    for f in app.get_functions():
        name = f.get_function_name()
        trigger = f.get_trigger()
        if name is None or trigger is None:
            raise ValueError(f"a function without a name or trigger: {f}")
        if disabled(name):
            continue
        d = trigger.get_dict_repr()
        kind = d["type"]
        fn = f.get_user_function()
        if kind == "httpTrigger":
            methods = d.get("methods") or ["GET", "POST", "PUT", "PATCH", "DELETE"]
            out.http.append(
                HttpFunction(
                    name,
                    compile_route(resolve(d.get("route") or name)),
                    frozenset(str(getattr(m, "value", m)).upper() for m in methods),
                    d["name"],
                    fn,
                )
            )
        elif kind == "timerTrigger":
            out.timers.append(
                TimerFunction(
                    name, resolve(d["schedule"]), d["name"], fn, bool(d.get("runOnStartup"))
                )
            )
        elif kind == "serviceBusTrigger":
            queue = resolve(d.get("queueName") or d.get("queue_name") or "")
            out.queues.append(
                QueueFunction(name, queue, bool(d.get("isSessionsEnabled")), d["name"], fn)
            )
        else:
            raise ValueError(f"devhost does not support trigger type {kind} ({name})")
    return out


async def _read_body(request: Request) -> bytes | None:
    """The body, or None past the host's size limit (checked while streaming, so a chunked
    upload without Content-Length cannot grow the process either)."""
    try:
        declared = int(request.headers.get("content-length") or 0)
    except ValueError:
        declared = 0
    if declared > MAX_REQUEST_BYTES:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_REQUEST_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def origin_form(scope: dict[str, Any]) -> dict[str, Any]:
    """A request target in absolute-form (`GET http://host/api/... HTTP/1.1`, what a client
    sends to a proxy) as the path it names: HTTP/1.1 servers must accept it (RFC 9112 3.2.2).
    This is how the legacy databricks-cli, which drops the port of its host, reaches a devhost
    on any port: `HTTP_PROXY=http://127.0.0.1:<port>` (docs/jobs.md)."""
    m = _ABSOLUTE_FORM.match(scope.get("path", ""))
    if m is None:
        return scope
    path = scope["path"][m.end() :] or "/"
    return {**scope, "path": path, "raw_path": path.encode("utf-8", "surrogateescape")}


def forwarded_for(headers: dict[str, str], client: Any) -> dict[str, str]:
    """The headers with the connection's peer appended to X-Forwarded-For (`ip:port`, as the
    Functions host's front end appends it): the app finds the client address there, in Azure
    and here alike. What the client sent itself stays left of it, where the app ignores it."""
    if client is None:
        return headers
    host, port = client
    peer = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    sent = headers.get("x-forwarded-for", "").strip()
    return {**headers, "x-forwarded-for": f"{sent}, {peer}" if sent else peer}


def _utc(ms: int | None) -> dt.datetime | None:
    return None if ms is None else dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


def to_message(d: Delivery) -> ServiceBusMessage:
    """The concrete class the Python worker hands to a Service Bus trigger."""
    return ServiceBusMessage(
        body=d.body,
        message_id=d.message_id,
        session_id=d.session_id,
        delivery_count=d.delivery_count,
        enqueued_time_utc=_utc(d.enqueued_ms),
        scheduled_enqueue_time_utc=_utc(d.scheduled_enqueue_ms),
        sequence_number=d.sequence_number,
        lock_token=d.lock_token,
        locked_until=_utc(d.locked_until_ms),
        content_type="application/json",
        application_properties=dict(d.application_properties),
        user_properties=dict(d.application_properties),
    )


class DevHost:
    def __init__(
        self,
        app: func.FunctionApp,
        receiver: Receiver | None,
        host_json: dict[str, Any],
        *,
        lock_s: float = 30.0,
    ) -> None:
        self.functions = index(app)
        self.receiver = receiver
        sb = host_json.get("extensions", {}).get("serviceBus", {})
        self.max_sessions = int(sb.get("maxConcurrentSessions", 8))
        self.max_calls = int(sb.get("maxConcurrentCalls", 16))
        self.renew_max_s = _timespan(sb.get("maxAutoLockRenewalDuration", "00:05:00"))
        self.lock_s = lock_s
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._inflight: dict[str, tuple[Delivery, float]] = {}
        self._inflight_lock = threading.Lock()
        self._timer_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="timer")

    # ------------------------------------------------------------------ HTTP

    async def asgi(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        request = Request(origin_form(scope), receive)
        response = await self.handle_http(request)
        await response(scope, receive, send)

    async def handle_http(self, request: Request) -> Response:
        path = request.url.path
        method = request.method.upper()
        matched = None
        allowed: set[str] = set()
        for f in self.functions.http:
            found = f.route.match(path)
            if found is None:
                continue
            if method in f.methods:
                matched = (f, found)
                break
            allowed |= f.methods
        if matched is None:
            message = f"No API found for '{method} {path}'"
            if allowed:
                return JSONResponse(
                    {"error_code": "METHOD_NOT_ALLOWED", "message": message},
                    405,
                    headers={"Allow": ", ".join(sorted(allowed))},
                )
            return JSONResponse({"error_code": "ENDPOINT_NOT_FOUND", "message": message}, 404)
        body = await _read_body(request)
        if body is None:
            return JSONResponse(
                {"error_code": "REQUEST_ENTITY_TOO_LARGE", "message": "Request too large."}, 413
            )
        f, route_params = matched
        params: dict[str, str] = {}
        for k, v in parse_qsl(request.url.query, keep_blank_values=True):
            params[k] = f"{params[k]},{v}" if k in params else v
        req = func.HttpRequest(
            method=method,
            url=str(request.url),
            headers=forwarded_for(dict(request.headers), request.client),
            params=params,
            route_params=route_params,
            body=body,
        )
        resp: func.HttpResponse = await run_in_threadpool(f.fn, **{f.arg: req})
        headers = {k: v for k, v in resp.headers.items() if k.lower() != "content-length"}
        return Response(
            content=resp.get_body(),
            status_code=resp.status_code,
            headers=headers,
            media_type=resp.mimetype,
        )

    # ------------------------------------------------------------------ queues

    def _deliver_loop(self, q: QueueFunction) -> None:
        assert self.receiver is not None
        rx = self.receiver
        wait = getattr(rx, "wait", None)
        while not self._stop.is_set():
            try:
                d = rx.receive(q.queue)
            except Exception:
                log.exception("receive failed", extra={"queue": q.queue})
                self._stop.wait(1.0)
                continue
            if d is None:
                if wait is not None:
                    wait(q.queue, 0.2)
                else:
                    self._stop.wait(0.2)
                continue
            self._run_message(q, d)

    def _run_message(self, q: QueueFunction, d: Delivery) -> None:
        assert self.receiver is not None
        rx = self.receiver
        with self._inflight_lock:
            self._inflight[d.lock_token] = (d, time.monotonic())
        try:
            q.fn(**{q.arg: to_message(d)})
        except Exception as e:
            why = f"{type(e).__name__}: {e}"
            log.warning(
                "function failed; message abandoned",
                extra={
                    "function": q.name,
                    "message_id": d.message_id,
                    "delivery_count": d.delivery_count,
                    "error": why,
                },
            )
            self._settle(d, lambda cur: rx.abandon(cur, reason=why))
        else:
            self._settle(d, lambda cur: rx.complete(cur))

    def _settle(self, d: Delivery, op: Callable[[Delivery], None]) -> None:
        with self._inflight_lock:
            cur, _ = self._inflight.pop(d.lock_token, (d, 0.0))
        try:
            op(cur)
        except Exception:
            # The lock was lost (expired): the message is redelivered, which the handlers
            # tolerate (level-triggered).
            log.warning("settle failed; message will be redelivered", extra={"id": d.message_id})

    def _renew_loop(self) -> None:
        assert self.receiver is not None
        while not self._stop.wait(max(0.5, self.lock_s / 3)):
            with self._inflight_lock:
                items = list(self._inflight.items())
            for token, (d, started) in items:
                if time.monotonic() - started > self.renew_max_s:
                    continue
                try:
                    renewed = self.receiver.renew_lock(d)
                except Exception:
                    continue
                with self._inflight_lock:
                    if token in self._inflight:
                        self._inflight[token] = (renewed, started)

    # ------------------------------------------------------------------ timers

    def _timer_loop(self, t: TimerFunction) -> None:
        it = croniter(t.schedule, dt.datetime.now(dt.UTC), second_at_beginning=True)
        running: list[Any] = []
        if t.run_on_startup:
            running.append(self._timer_pool.submit(self._fire, t, False))
        while not self._stop.is_set():
            due = it.get_next(dt.datetime)
            delay = (due - dt.datetime.now(dt.UTC)).total_seconds()
            if delay > 0 and self._stop.wait(delay):
                return
            if running and not running[-1].done():
                continue  # the previous run is still going: timers never overlap
            past_due = (dt.datetime.now(dt.UTC) - due).total_seconds() > 1
            running[:] = [self._timer_pool.submit(self._fire, t, past_due)]

    def _fire(self, t: TimerFunction, past_due: bool) -> None:
        try:
            t.fn(**{t.arg: TimerRequest(past_due=past_due)})
        except Exception:
            log.exception("timer function failed", extra={"function": t.name})

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self.functions.queues and self.receiver is None:
            raise RuntimeError("queue triggers need a receiver (the embedded bus)")
        for q in self.functions.queues:
            n = self.max_sessions if q.sessions else self.max_calls
            for i in range(n):
                self._spawn(f"{q.name}-{i}", self._deliver_loop, q)
        if self.functions.queues:
            self._spawn("lock-renewal", self._renew_loop)
        for t in self.functions.timers:
            self._spawn(f"timer-{t.name}", self._timer_loop, t)

    def _spawn(self, name: str, target: Callable[..., None], *args: Any) -> None:
        th = threading.Thread(target=target, args=args, name=name, daemon=True)
        th.start()
        self._threads.append(th)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking work and let in-flight handlers finish (bounded)."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for th in self._threads:
            th.join(max(0.0, deadline - time.monotonic()))
        self._timer_pool.shutdown(wait=False, cancel_futures=True)


def _timespan(value: str) -> float:
    h, m, s = (float(x) for x in value.split(":"))
    return h * 3600 + m * 60 + s
