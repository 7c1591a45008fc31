"""The CLI's own small parts: KEY=VALUE quota settings and the one-line errors of answers that
are not the API's (a proxy's page), with a mock transport."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from sparkplane_cli import api as api_mod
from sparkplane_cli.api import Api, CliError
from sparkplane_cli.main import _assignments


def test_assignments() -> None:
    assert _assignments(["max_jobs=7", "max_clusters=default"]) == {
        "max_jobs": 7,
        "max_clusters": None,
    }
    for bad in ("max_jobs", "=3", "max_jobs=many"):
        with pytest.raises(CliError):
            _assignments([bad])


@pytest.mark.parametrize(
    ("status", "body", "line"),
    [
        (403, b'{"error_code": "PERMISSION_DENIED", "message": "No."}', "PERMISSION_DENIED: No."),
        (502, b"<html>Bad gateway</html>", "HTTP 502 Bad Gateway from GET /api/admin/tokens"),
        (404, b'{"detail": "x"}', "HTTP 404 Not Found from GET /api/admin/tokens"),
    ],
)
def test_error_lines(monkeypatch: pytest.MonkeyPatch, status: int, body: bytes, line: str) -> None:
    def fake(method: str, url: str, **kw: object) -> httpx.Response:
        return httpx.Response(status, content=body, request=httpx.Request(method, url))

    monkeypatch.setattr(api_mod.httpx, "request", fake)
    with pytest.raises(CliError) as e:
        Api("http://x", Path("/nonexistent"), "tok").call("GET", "/api/admin/tokens")
    assert str(e.value) == line


def test_a_transport_error_never_shows_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake(method: str, url: str, **kw: object) -> httpx.Response:
        raise httpx.LocalProtocolError("Illegal header value b'Bearer secret-value\\n'")

    monkeypatch.setattr(api_mod.httpx, "request", fake)
    with pytest.raises(CliError) as e:
        Api("http://x", Path("/nonexistent"), "secret-value").call("GET", "/")
    assert "secret-value" not in str(e.value) and "***" in str(e.value)
