"""The rules of the DBFS and Workspace APIs that need no I/O: sizes, formats, request values,
upload handles and the shapes of the answers.

Sizes are Databricks' own: a DBFS `put` with inline `contents` and each `add-block` carry at
most 1 MB (MAX_BLOCK_SIZE_EXCEEDED), a `read` returns at most 1 MB (MAX_READ_SIZE_EXCEEDED,
0.5 MB when no length is given), a workspace import or export at most 10 MB
(MAX_NOTEBOOK_SIZE_EXCEEDED); an upload handle is dropped after 10 minutes without a call.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from shared.errors import ApiError, InvalidParameterValue, MaxReadSizeExceeded


@dataclass(frozen=True, slots=True)
class FileInfo:
    """One entry of a workspace's file store (shared/ports.py FileStore)."""

    path: str
    is_dir: bool
    size: int = 0
    modified_ms: int = 0


MB = 1 << 20
MAX_BLOCK_BYTES = MB
MAX_READ_BYTES = MB
DEFAULT_READ_BYTES = MB // 2
# A multipart/form-data `put` (the legacy CLI's `fs cp`) sends the file itself: it is bounded
# by the Functions host's request limit (100 MB), less room for the form's other fields.
MAX_FORM_PUT_BYTES = 99 * MB
MAX_IMPORT_BYTES = 10 * MB
MAX_EXPORT_BYTES = 10 * MB
# The largest file a job task may run (read_task_file).
MAX_TASK_FILE_BYTES = 10 * MB
# An upload handle with no call for this long is gone (Databricks: a 10 minute idle timeout).
HANDLE_IDLE_S = 600
# Handle documents live this long after their last write whatever happens: the store's own
# backstop should the sweep that discards expired uploads not run.
HANDLE_DOC_TTL_S = 86400
# Slack for the JSON around a base64 value when a request body's size is bounded.
JSON_SLACK_BYTES = 64 * 1024

# Every workspace object is a file, kept and returned byte for byte: AUTO and SOURCE (and RAW,
# the SDK's name for "the bytes as they are") mean just that.
IMPORT_FORMATS = frozenset({"AUTO", "SOURCE", "RAW"})
EXPORT_FORMATS = frozenset({"AUTO", "SOURCE", "RAW"})
# Databricks' notebook formats: refused with a message that says what is supported.
NOTEBOOK_FORMATS = frozenset({"HTML", "JUPYTER", "DBC", "R_MARKDOWN"})
LANGUAGES = frozenset({"PYTHON", "SQL", "SCALA", "R"})


def encoded_size(n: int) -> int:
    """Length of the base64 text of n bytes."""
    return 4 * ((n + 2) // 3)


def b64(value: Any, what: str, limit: int, too_large: type[ApiError]) -> bytes:
    """Strict base64 text of at most `limit` bytes (absent: no bytes)."""
    if value is None:
        return b""
    if not isinstance(value, str):
        raise InvalidParameterValue(f"{what} must be a base64 string.")
    if len(value) > encoded_size(limit):
        raise too_large(f"{what} is larger than {limit} bytes.")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):  # not base64 (or not ASCII): the caller's mistake
        raise InvalidParameterValue(f"{what} is not valid base64.") from None
    if len(data) > limit:
        raise too_large(f"{what} is larger than {limit} bytes.")
    return data


def flag(value: Any, what: str) -> bool:
    """A boolean as JSON (true), a query or form string (true/True/false) or absent (false)."""
    if value is None or value == "":
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise InvalidParameterValue(f"{what} must be true or false.")


def integer(value: Any, what: str, default: int) -> int:
    """A non-negative integer as JSON or query text (absent: the default)."""
    if value is None or value == "":
        return default
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidParameterValue(f"{what} must be an integer.")
    if value < 0:
        raise InvalidParameterValue(f"{what} must not be negative.")
    return value


def read_range(offset: Any, length: Any) -> tuple[int, int]:
    off = integer(offset, "offset", 0)
    n = integer(length, "length", DEFAULT_READ_BYTES)
    if n > MAX_READ_BYTES:
        raise MaxReadSizeExceeded(f"length {n} is larger than the maximum of {MAX_READ_BYTES}.")
    return off, n


def _choice(value: Any, what: str, allowed: frozenset[str], default: str) -> str:
    if value is None or value == "":
        return default
    if isinstance(value, str) and value in allowed:
        return value
    supported = ", ".join(sorted(allowed))
    if isinstance(value, str) and value in NOTEBOOK_FORMATS:
        raise InvalidParameterValue(
            f"{what} {value} is not supported: workspace objects are files ({supported})."
        )
    raise InvalidParameterValue(f"{what} must be one of {supported}.")


def import_format(value: Any) -> str:
    return _choice(value, "format", IMPORT_FORMATS, "SOURCE")


def export_format(value: Any) -> str:
    return _choice(value, "format", EXPORT_FORMATS, "SOURCE")


def language(value: Any) -> str | None:
    """The language of an import: accepted and checked, not kept (every object is a file)."""
    if value is None or value == "":
        return None
    return _choice(value, "language", LANGUAGES, "")


def handle_id(value: Any) -> int:
    """A handle as the client sends it (an int64, JSON number or numeric text)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**63:
        raise InvalidParameterValue("handle must be a positive 64-bit integer.")
    return value


def new_handle() -> int:
    """A handle nobody can guess (handles are per workspace, and only its tokens use them)."""
    return secrets.randbits(62) + 1


def handle_live(body: dict[str, Any], now_ms: int) -> bool:
    return body.get("state") == "open" and int(body.get("expires_ms", 0)) > now_ms


def handle_expiry(now_ms: int) -> int:
    return now_ms + HANDLE_IDLE_S * 1000


# ------------------------------------------------------------------ answers


def dbfs_file_info(user_path: str, info: FileInfo) -> dict[str, Any]:
    return {
        "path": user_path,
        "is_dir": info.is_dir,
        "file_size": 0 if info.is_dir else info.size,
        "modification_time": info.modified_ms,
    }


def object_id(user_path: str) -> int:
    """A workspace object's id: stable for its path, a positive int64."""
    digest = hashlib.sha256(user_path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> 1 or 1


def object_info(user_path: str, info: FileInfo) -> dict[str, Any]:
    oid = object_id(user_path)
    out: dict[str, Any] = {
        "object_type": "DIRECTORY" if info.is_dir else "FILE",
        "path": user_path,
        "object_id": oid,
        "resource_id": str(oid),
        "created_at": info.modified_ms,
        "modified_at": info.modified_ms,
    }
    if not info.is_dir:
        out["size"] = info.size
    return out


def file_type(user_path: str) -> str:
    """An export's `file_type`: the name's extension, without the dot ("" if none)."""
    name = user_path.rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[1] if "." in name.strip(".") else ""
