"""HTTP triggers of the web console: its page at `/` and its static files at `/console/*`.

The console is plain HTML, one JavaScript module and one style sheet (`console/` beside
function_app.py, shipped in the package); in the browser it calls the same Databricks REST API
as any client, with the token the user pastes. No script is inline, and the Content-Security-
Policy lets the page load nothing but this app's own files and call nothing but its own API.
"""

from __future__ import annotations

from pathlib import Path

import azure.functions as func

bp = func.Blueprint()

STATIC = Path(__file__).resolve().parents[1] / "console"
FILES = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "style.css": "text/css",
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def static_file(name: str) -> func.HttpResponse:
    """One of the console's files with its type and the security headers; others are 404."""
    if name not in FILES:
        return func.HttpResponse("Not found", status_code=404, mimetype="text/plain")
    body = (STATIC / name).read_bytes()
    return func.HttpResponse(body, headers=HEADERS, mimetype=FILES[name], charset="utf-8")


# The site's root: the Functions host never matches an empty route, so an optional parameter
# that must stay empty stands for it (the host's home page is off: AzureWebJobsDisableHomepage).
ROOT_ROUTE = "{root:maxlength(0)?}"


@bp.route(route=ROOT_ROUTE, methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def console_page(req: func.HttpRequest) -> func.HttpResponse:
    return static_file("index.html")


@bp.route(route="console/{name}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def console_asset(req: func.HttpRequest) -> func.HttpResponse:
    return static_file(req.route_params.get("name", ""))
