"""Paths users give (DBFS, workspace files, a task's python_file) and the file-store paths they
name.

A workspace's files live in one file store (shared/ports.py FileStore) under two roots:

    DBFS             dbfs:/a/b.py, /a/b.py (DBFS API)      ->  /dbfs/a/b.py
    workspace files  /Users/me/etl.py, /Workspace/Users/.. ->  /workspace/Users/me/etl.py

Rules, the same for every API and for a job task's file:
- A path is absolute. Repeated "/" and a trailing "/" are dropped (as Databricks does).
- "." and ".." segments, NUL and other control characters, backslashes and lone surrogates
  are refused (INVALID_PARAMETER_VALUE): nothing a user writes can name a path outside the
  workspace's own roots, whatever the adapter underneath does with it.
- A task's python_file is `dbfs:/...` (or the FUSE form `/dbfs/...`) or a workspace path
  (`/Workspace/...`, or any other absolute path, as Databricks reads an absolute python_file
  as a workspace path). Other schemes (`file:`, `s3:`, `abfss:`, ...) are refused: a task runs
  only code the workspace uploaded.
"""

from __future__ import annotations

import re
from typing import Literal

from shared.errors import InvalidParameterValue

Root = Literal["dbfs", "workspace"]

MAX_PATH = 4096
_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f\\]|[\ud800-\udfff]")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def _segments(path: str, what: str) -> list[str]:
    if not isinstance(path, str) or not path:
        raise InvalidParameterValue(f"{what} must be a non-empty string.")
    if len(path) > MAX_PATH:
        raise InvalidParameterValue(f"{what} is longer than {MAX_PATH} characters.")
    if _BAD_CHARS.search(path):
        raise InvalidParameterValue(
            f"{what} has a control character, a backslash or invalid Unicode: {path!r}."
        )
    if not path.startswith("/"):
        raise InvalidParameterValue(f"{what} must be absolute (start with '/'): {path!r}.")
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise InvalidParameterValue(f"{what} must not contain '.' or '..' segments: {path!r}.")
    return parts


def dbfs(path: str, what: str = "path") -> str:
    """A DBFS API path (`dbfs:/a/b` or `/a/b`) as the user-visible normal form `/a/b`."""
    if isinstance(path, str) and path.startswith("dbfs:"):
        path = path.removeprefix("dbfs:")
    return "/" + "/".join(_segments(path, what))


def workspace(path: str, what: str = "path") -> str:
    """A Workspace API path (`/Users/me/x.py`, or the same under `/Workspace`) as `/Users/...`."""
    parts = _segments(path, what)
    if parts and parts[0] == "Workspace":
        parts = parts[1:]
    return "/" + "/".join(parts)


def store_path(root: Root, user_path: str) -> str:
    """The file-store path of a normal-form path (`dbfs` or `workspace` output) under `root`."""
    return f"/{root}" + ("" if user_path == "/" else user_path)


def store_parts(path: str) -> list[str]:
    """The segments of a file-store path ([] for "/"). ValueError unless the path is in the
    normal form `store_path` makes, so a path that skipped the API's normalisation is refused
    by every FileStore adapter, never reinterpreted (defence in depth)."""
    try:
        parts = _segments(path, "path")
    except InvalidParameterValue as e:
        raise ValueError(e.message) from None  # the adapters' contract: ValueError
    if path != "/" + "/".join(parts):
        raise ValueError(f"path is not in normal form: {path!r}.")
    return parts


def user_path(root: Root, stored: str) -> str:
    """The inverse of `store_path`."""
    rest = stored.removeprefix(f"/{root}")
    return rest or "/"


def task_file(python_file: str, what: str = "python_file") -> tuple[Root, str]:
    """(root, normal-form path) of a task's python_file; refuses every other form."""
    if not isinstance(python_file, str) or not python_file:
        raise InvalidParameterValue(f"{what} must be a non-empty string.")
    if python_file.startswith("dbfs:"):
        p = dbfs(python_file, what)
        root: Root = "dbfs"
    elif _SCHEME.match(python_file):
        raise InvalidParameterValue(
            f"{what} must be a dbfs:/ path or a workspace path (/Workspace/... or /Users/...); "
            f"'{python_file.split(':', 1)[0]}:' files are not supported: upload the file with "
            "the DBFS or Workspace API."
        )
    elif python_file == "/dbfs" or python_file.startswith("/dbfs/"):
        p = dbfs(python_file.removeprefix("/dbfs") or "/", what)
        root = "dbfs"
    else:
        p = workspace(python_file, what)
        root = "workspace"
    if p == "/":
        raise InvalidParameterValue(f"{what} names a directory, not a file: {python_file!r}.")
    return root, p


def parent(user_path: str) -> str:
    """The folder a normal-form path is in ("/" for "/" itself)."""
    head = user_path.rsplit("/", 1)[0]
    return head or "/"


def standard_folders(user: str) -> frozenset[str]:
    """Workspace folders that exist without being made, as in a Databricks workspace: the
    root, /Users, /Shared and the caller's home folder /Users/<user>."""
    home = ("/Users/" + user,) if user and "/" not in user and user not in (".", "..") else ()
    return frozenset(("/", "/Users", "/Shared", *home))
