"""The admin API as the CLI calls it: one request, its JSON answer, or one readable line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx


class CliError(Exception):
    """What the CLI prints as its one line on stderr (exit code 1)."""


def default_url() -> str:
    return f"http://127.0.0.1:{os.environ.get('SPARKPLANE_PORT', '7071')}"


def default_token_file() -> Path:
    return Path(os.environ.get("SPARKPLANE_DATA_DIR", ".sparkplane")) / "operator-token"


class Api:
    def __init__(self, url: str, token_file: Path, token: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.token_file = token_file
        self._token = token

    def token(self) -> str:
        if self._token:
            return self._token
        try:
            return self.token_file.read_text().strip()
        except OSError as e:
            # No token file (no local devhost yet, or another directory): say where we looked.
            raise CliError(
                f"no operator token: cannot read {self.token_file} ({e.strerror}); "
                "set SPARKPLANE_OPERATOR_TOKEN or --token-file"
            ) from None

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        token = self.token()
        headers = {"Authorization": f"Bearer {token}"}
        try:
            r = httpx.request(method, self.url + path, headers=headers, json=body, timeout=30)
        except httpx.HTTPError as e:
            # Nothing listens there, or the network failed: no API answer to show (and the
            # error may quote the header: never print the token).
            raise CliError(f"cannot reach {self.url}: {str(e).replace(token, '***')}") from None
        if r.is_success:
            return r.json() if r.content else {}
        try:
            err = r.json()
            message = f"{err['error_code']}: {err['message']}"
        except (ValueError, KeyError, TypeError):
            # Not the API's error body (a proxy, or not sparkplane): show the status line.
            message = f"HTTP {r.status_code} {r.reason_phrase} from {method} {path}"
        raise CliError(message)
