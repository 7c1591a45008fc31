"""The console's HTTP triggers: its page and static files, with their security headers."""

from __future__ import annotations

import re

import azure.functions as func

from functions import console
from tests.unit.test_function_app import TRIGGERS


def get(fn: func.FunctionApp, name: str = "") -> func.HttpResponse:
    req = func.HttpRequest("GET", "http://h/", body=b"", route_params={"name": name})
    return fn(req)


def test_the_console_is_served_at_the_root_and_its_files_under_console() -> None:
    assert TRIGGERS["console_page"]["route"] == "{root:maxlength(0)?}"
    assert TRIGGERS["console_asset"]["route"] == "console/{name}"
    from devhost.routes import compile_route

    root = compile_route(console.ROOT_ROUTE)
    assert root.match("/") == {"root": ""}
    assert root.match("") == {"root": ""}
    for elsewhere in ("/x", "/api/2.1/clusters/list", "/console/app.js"):
        assert root.match(elsewhere) is None


def test_the_page_has_a_content_security_policy_and_no_inline_script() -> None:
    r = get(console.console_page)
    assert r.status_code == 200
    assert r.mimetype == "text/html"
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert "unsafe-inline" not in csp
    html = r.get_body().decode()
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)  # every script is a file
    assert not re.search(r"\son[a-z]+=", html)  # no inline event handlers
    assert not re.search(r"(src|href)=\"(https?:)?//", html)  # nothing from elsewhere (no CDN)


def test_static_files_have_their_types_and_unknown_names_are_not_found() -> None:
    js = get(console.console_asset, "app.js")
    assert js.status_code == 200 and js.mimetype == "text/javascript"
    assert js.headers["X-Content-Type-Options"] == "nosniff"
    assert get(console.console_asset, "style.css").mimetype == "text/css"
    for name in ("nope.js", "..", "../function_app.py", "index.html.bak"):
        assert get(console.console_asset, name).status_code == 404
