"""function_app composes the blueprints; trigger settings are what the hosts rely on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from function_app import app

ROOT = Path(__file__).resolve().parents[2]


# get_functions() builds the functions; a second call would register them twice.
TRIGGERS = {f.get_function_name(): f.get_trigger().get_dict_repr() for f in app.get_functions()}


def triggers() -> dict[str, dict]:
    return TRIGGERS


def test_http_routes_carry_their_full_path_with_an_empty_route_prefix() -> None:
    t = triggers()
    assert t["clusters_api"]["route"] == "api/{version}/clusters/{op}"
    assert t["databricks_config"]["route"] == ".well-known/databricks-config"
    host = json.loads((ROOT / "host.json").read_text())
    assert host["extensions"]["http"]["routePrefix"] == ""


def test_lifecycle_queue_is_session_enabled_and_named_by_setting() -> None:
    t = triggers()["cluster_lifecycle"]
    assert t["type"] == "serviceBusTrigger"
    assert t["isSessionsEnabled"] is True
    assert t["queueName"] == "%SPARKPLANE_LIFECYCLE_QUEUE%"
    for settings in ("local.settings.json", "devhost.settings.json"):
        values = json.loads((ROOT / settings).read_text())["Values"]
        assert values["SPARKPLANE_LIFECYCLE_QUEUE"] == "cluster-lifecycle"


def test_reconciler_timer_has_a_six_field_schedule() -> None:
    t = triggers()["reconciler"]
    assert t["schedule"] == "%SPARKPLANE_RECONCILER_SCHEDULE%"
    for settings in ("local.settings.json", "devhost.settings.json"):
        values = json.loads((ROOT / settings).read_text())["Values"]
        assert len(values["SPARKPLANE_RECONCILER_SCHEDULE"].split()) == 6


def test_devhost_route_templates() -> None:
    from devhost.routes import compile_route

    r = compile_route("api/{version}/clusters/{op}")
    assert r.match("/api/2.1/clusters/get") == {"version": "2.1", "op": "get"}
    assert r.match("/api/2.1/clusters/get/extra") is None
    assert compile_route("jobs/{id:int}").match("jobs/12") == {"id": "12"}
    assert compile_route("jobs/{id:int}").match("jobs/x") is None
    assert compile_route("files/{*path}").match("files/a/b/c") == {"path": "a/b/c"}
    assert compile_route("items/{id?}").match("items") == {}
    assert compile_route("items/{id?}").match("items/7") == {"id": "7"}
    assert compile_route("a/{x:maxlength(2)}").match("a/xy") == {"x": "xy"}
    assert compile_route("a/{x:maxlength(2)}").match("a/xyz") is None


def test_devhost_serves_a_request_target_in_absolute_form_as_its_path() -> None:
    # What a client sends to a proxy (RFC 9112 3.2.2): how the legacy CLI reaches devhost.
    from devhost.host import origin_form

    scope = {"type": "http", "path": "http://sparkplane/api/2.0/dbfs/list", "raw_path": b""}
    assert origin_form(scope)["path"] == "/api/2.0/dbfs/list"
    assert origin_form({**scope, "path": "https://h:8/"})["path"] == "/"
    assert origin_form({**scope, "path": "http://h"})["path"] == "/"
    for plain in ("/api/2.0/dbfs/list", "/http://x/api"):
        assert origin_form({**scope, "path": plain})["path"] == plain


def test_a_lone_surrogate_in_a_json_body_is_a_malformed_request() -> None:
    import azure.functions as func

    from functions.http import json_body
    from shared.errors import MalformedRequest

    req = func.HttpRequest("POST", "/x", body=b'{"cluster_id": "\\ud800"}', headers={})
    with pytest.raises(MalformedRequest, match="lone surrogate"):
        json_body(req)
    ok = func.HttpRequest("POST", "/x", body='{"n": "\\u00e9t\u00e9"}'.encode(), headers={})
    assert json_body(ok) == {"n": "\u00e9t\u00e9"}
