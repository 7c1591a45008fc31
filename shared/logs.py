"""Structured (JSON lines) logging. Secrets never reach a log: tokens and keys are not passed
to loggers, and a filter masks anything shaped like a token as a second line of defence."""

from __future__ import annotations

import json
import logging
import logging.handlers
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

_TOKEN = re.compile(r"(dapi[0-9a-f]{8})[0-9a-f]+|(Bearer\s+)\S+", re.IGNORECASE)
_STD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def mask(text: str) -> str:
    return _TOKEN.sub(lambda m: (m.group(1) or m.group(2)) + "***", text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in record.__dict__.items():
            if k not in _STD and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return mask(json.dumps(out, default=str))


def setup(
    level: str = "INFO",
    *,
    json_file: Path | None = None,
    json_stream: TextIO | None = sys.stderr,
    extra: Sequence[logging.Handler] = (),
) -> None:
    """JSON lines on `json_stream` (stderr by default) and/or appended to `json_file`
    (rotated), plus `extra` handlers (devhost's readable console)."""
    handlers: list[logging.Handler] = []
    if json_stream is not None:
        handlers.append(logging.StreamHandler(json_stream))
    if json_file is not None:
        handlers.append(
            logging.handlers.RotatingFileHandler(
                json_file, maxBytes=50 * 2**20, backupCount=3, encoding="utf-8"
            )
        )
    for h in handlers:
        h.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [*handlers, *extra]
    root.setLevel(level)
    for noisy in ("uvicorn.access", "azure", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
