"""The agent's stdlib HTTP client (shared/agent_http.py) against a real local HTTP server."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from shared import agent_http


class Handler(BaseHTTPRequestHandler):
    def _answer(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.startswith("/missing"):
            self._answer(404, {"message": "no such thing"})
            return
        self._answer(200, {"path": self.path, "auth": self.headers.get("Authorization")})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self._answer(201, {"got": body, "type": self.headers.get("Content-Type")})

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def base() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_get_with_params_and_default_headers(base: str) -> None:
    with agent_http.Client(timeout=5, headers={"Authorization": "Bearer t"}) as c:
        r = c.get(base + "/api/v1/applications", params={"status": "running"})
    assert r.is_success and r.status_code == 200
    assert r.json() == {"path": "/api/v1/applications?status=running", "auth": "Bearer t"}


def test_post_sends_json(base: str) -> None:
    r = agent_http.Client().post(base + "/beat", json={"cluster_id": "c", "n": [1, 2]})
    assert r.status_code == 201
    assert r.json() == {"got": {"cluster_id": "c", "n": [1, 2]}, "type": "application/json"}


def test_an_error_status_is_a_response_until_raise_for_status(base: str) -> None:
    r = agent_http.Client().get(base + "/missing")
    assert r.status_code == 404 and not r.is_success
    assert r.json()["message"] == "no such thing"
    with pytest.raises(agent_http.HTTPError, match="HTTP 404"):
        r.raise_for_status()


def test_no_answer_is_an_http_error() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(agent_http.HTTPError):
        agent_http.Client(timeout=2).get(f"http://127.0.0.1:{port}/")


def test_a_body_that_is_not_json_raises_value_error() -> None:
    r = agent_http.Response(200, b"<html>")
    with pytest.raises(ValueError):
        r.json()
    assert r.text == "<html>"
