"""The decorated functions called in-process, as Microsoft documents for unit-testing Python
functions (`<function>.build().get_user_function()`, then a call with the trigger's object):
no host in between, the embedded adapters behind them. An HTTP create, the lifecycle queue's
messages handed to the queue function by hand, the timers called with a TimerRequest."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from azure.functions.servicebus import ServiceBusMessage
from azure.functions.timer import TimerRequest

from functions import clusters_api, lifecycle, utilization
from shared import wiring
from shared.adapters.embedded_bus import EmbeddedBus


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[wiring.Container]:
    for name, value in {
        "SPARKPLANE_DATA_DIR": str(tmp_path),
        "SPARKPLANE_STORE": "sqlite",
        "SPARKPLANE_BUS": "embedded",
        "SPARKPLANE_PROVISIONER": "records",
        "SPARKPLANE_RECORD_AGENTS": "false",
        "SPARKPLANE_RECORD_BOOT_S": "0",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(wiring, "_container", None)  # the functions' own, built from the env
    yield wiring.container()


def call_http(
    fn: Any, method: str, route: str, params: dict[str, str], token: str, body: Any = None
) -> func.HttpResponse:
    req = func.HttpRequest(
        method=method,
        url=f"http://localhost/{route}",
        headers={"Authorization": f"Bearer {token}"},
        route_params=params,
        params={},
        body=json.dumps(body).encode() if body is not None else b"",
    )
    return fn.build().get_user_function()(req)


def deliver_lifecycle(c: wiring.Container) -> int:
    """Hand every visible lifecycle message to the queue function, as the host would."""
    bus = c.bus
    assert isinstance(bus, EmbeddedBus)
    handle = lifecycle.cluster_lifecycle.build().get_user_function()
    n = 0
    while (d := bus.receive(c.settings.lifecycle_queue)) is not None:
        props = dict(d.application_properties)
        handle(
            ServiceBusMessage(
                body=d.body,
                message_id=d.message_id,
                session_id=d.session_id,
                application_properties=props,
                user_properties=props,
            )
        )
        bus.complete(d)
        n += 1
    return n


def test_a_cluster_made_through_the_functions_alone_gets_running(app: wiring.Container) -> None:
    token = app.admin.create_workspace({"name": "in-process", "workspace_id": "inproc"})[
        "token_value"
    ]
    spec = {"spark_version": "4.1.x-scala2.13", "node_type_id": "rec-small", "num_workers": 2}
    r = call_http(
        clusters_api.clusters_api, "POST", "api/2.1/clusters/create",
        {"version": "2.1", "op": "create"}, token, spec,
    )  # fmt: skip
    assert r.status_code == 200, r.get_body()
    cluster_id = json.loads(r.get_body())["cluster_id"]

    def state() -> str:
        got = call_http(
            clusters_api.clusters_api, "GET", "api/2.1/clusters/get",
            {"version": "2.1", "op": "get"}, token, {"cluster_id": cluster_id},
        )  # fmt: skip
        return str(json.loads(got.get_body())["state"])

    assert state() == "PENDING"
    deadline = time.monotonic() + 30
    while state() != "RUNNING":
        assert time.monotonic() < deadline, f"still {state()}"
        if not deliver_lifecycle(app):  # follow-ups are scheduled a moment later
            lifecycle.reconciler.build().get_user_function()(TimerRequest(past_due=False))
            time.sleep(0.2)
    for timer in (utilization.autoscaler, utilization.idle_terminator):
        timer.build().get_user_function()(TimerRequest(past_due=False))
    assert state() == "RUNNING"


def test_a_bad_token_is_refused_in_the_api_format(app: wiring.Container) -> None:
    r = call_http(
        clusters_api.clusters_api, "GET", "api/2.1/clusters/list",
        {"version": "2.1", "op": "list"}, "dapi" + "0" * 32,
    )  # fmt: skip
    assert r.status_code == 401
    assert json.loads(r.get_body())["error_code"] in ("UNAUTHENTICATED", "INVALID_TOKEN")
