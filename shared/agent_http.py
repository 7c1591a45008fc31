"""The cluster agent's HTTP client: JSON requests over the standard library (urllib).

The agent runs on every node that reports (the driver always), so what it imports counts
against the node's memory, and on Azure VMs what it needs is installed by cloud-init. httpx,
which the control plane uses, imports its command-line interface's click and rich too when
they are installed: measured on this project's venv, a Python that imports httpx holds
29.0 MB and spent 0.14 s of CPU on the import, one that imports urllib.request, http.client
and json 19.2 MB and 0.05 s. The agent's requests are few (a heartbeat every 10 s, the
driver's own Spark UI, a task's progress) and simple, so the stdlib serves; the interface is
the small part of httpx's that the agent used (`Client.get/post/request`, `Response`).
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from types import TracebackType
from typing import Any


class HTTPError(Exception):
    """A request that got no HTTP answer (refused, reset, timed out, a malformed response), or
    `raise_for_status` on an error status."""


class Response:
    def __init__(self, status_code: int, content: bytes) -> None:
        self.status_code = status_code
        self.content = content

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def raise_for_status(self) -> None:
        if not self.is_success:
            raise HTTPError(f"HTTP {self.status_code}")

    def json(self) -> Any:
        """The body as JSON (ValueError when it is not)."""
        return json.loads(self.content)


class Client:
    """Requests with one timeout and default headers; every HTTP status is a `Response`."""

    def __init__(self, timeout: float = 5.0, headers: Mapping[str, str] | None = None) -> None:
        self.timeout = timeout
        self.headers = dict(headers or {})

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
    ) -> Response:
        if params:
            url += ("&" if "?" in url else "?") + urllib.parse.urlencode(params)
        headers = dict(self.headers)
        data = None
        if json is not None:
            data = _json_dumps(json)
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return Response(r.status, r.read())
        except urllib.error.HTTPError as e:  # an answer with an error status: the caller decides
            with e:
                return Response(e.code, e.read())
        except (OSError, http.client.HTTPException) as e:  # no answer: one kind for the callers
            raise HTTPError(f"{type(e).__name__}: {e}") from e

    def get(self, url: str, *, params: Mapping[str, str] | None = None) -> Response:
        return self.request("GET", url, params=params)

    def post(self, url: str, *, json: Any = None) -> Response:
        return self.request("POST", url, json=json)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


def _json_dumps(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()
