"""HTTP triggers of the DBFS API (`/api/2.0/dbfs/*`) and the Workspace API's file operations
(`/api/2.0/workspace/*`), and the timer that drops abandoned upload handles."""

from __future__ import annotations

import logging
from typing import Any

import azure.functions as func

from functions.http import Handler, body_op, dispatch, json_body
from shared.domain import files as dom
from shared.errors import (
    ApiError,
    InvalidParameterValue,
    MaxBlockSizeExceeded,
    MaxNotebookSizeExceeded,
    TooLarge,
)
from shared.services.auth import Principal
from shared.services.files import FilesService
from shared.wiring import container

bp = func.Blueprint()
log = logging.getLogger("sparkplane.files")


# Request bodies that carry a file: room for its base64 text (or, in a form, its bytes).
BLOCK_BODY = dom.encoded_size(dom.MAX_BLOCK_BYTES) + dom.JSON_SLACK_BYTES
IMPORT_BODY = dom.encoded_size(dom.MAX_IMPORT_BYTES) + dom.JSON_SLACK_BYTES
FORM_PUT_BODY = dom.MAX_FORM_PUT_BYTES + dom.JSON_SLACK_BYTES
# The form parts a file may come in: DBFS put's `contents` (curl -F) or `file` (legacy CLI),
# Workspace import's `content` (databricks-sdk).
FILE_PARTS = ("contents", "content", "file")


def _is_form(req: func.HttpRequest) -> bool:
    return req.headers.get("Content-Type", "").lower().startswith("multipart/form-data")


def _form(
    req: func.HttpRequest, max_bytes: int, too_large: type[ApiError]
) -> tuple[dict[str, str], bytes | None]:
    """A multipart/form-data body's fields and the bytes of its one file part (None without
    one: then the fields carry the file as base64, as a JSON body would)."""
    if len(req.get_body() or b"") > max_bytes:
        raise too_large(f"Request body is larger than {max_bytes} bytes.")
    try:
        fields = {k: req.form[k] for k in req.form}
        parts = req.files
    except ValueError as e:  # werkzeug's answer to a malformed form
        raise InvalidParameterValue(f"Malformed multipart/form-data body: {e}") from None
    names = [n for n in FILE_PARTS if n in parts] or list(parts)
    if len(names) > 1:
        raise InvalidParameterValue("The form has more than one file part.")
    return fields, (parts[names[0]].read() if names else None)


def _put(s: FilesService, p: Principal, r: func.HttpRequest) -> Any:
    if _is_form(r):
        fields, data = _form(r, FORM_PUT_BODY, TooLarge)
        return s.dbfs_put(p, fields) if data is None else s.dbfs_put_form(p, fields, data)
    return s.dbfs_put(p, json_body(r, BLOCK_BODY, MaxBlockSizeExceeded))


def _import(s: FilesService, p: Principal, r: func.HttpRequest) -> Any:
    if _is_form(r):
        fields, data = _form(r, IMPORT_BODY, MaxNotebookSizeExceeded)
        return s.ws_import(p, fields) if data is None else s.ws_import_form(p, fields, data)
    return s.ws_import(p, json_body(r, IMPORT_BODY, MaxNotebookSizeExceeded))


def _export(s: FilesService, p: Principal, r: func.HttpRequest) -> Any:
    got = s.ws_export(
        p, r.params.get("path"), r.params.get("format"), r.params.get("direct_download")
    )
    if isinstance(got, bytes):
        return func.HttpResponse(got, status_code=200, mimetype="application/octet-stream")
    return got


DBFS_POST: dict[str, Handler[FilesService]] = {
    "put": _put,
    "create": body_op(lambda s, p, b: s.dbfs_create(p, b)),
    "add-block": lambda s, p, r: s.dbfs_add_block(
        p, json_body(r, BLOCK_BODY, MaxBlockSizeExceeded)
    ),
    "close": body_op(lambda s, p, b: s.dbfs_close(p, b)),
    "mkdirs": body_op(lambda s, p, b: s.dbfs_mkdirs(p, b)),
    "delete": body_op(lambda s, p, b: s.dbfs_delete(p, b)),
    "move": body_op(lambda s, p, b: s.dbfs_move(p, b)),
}
DBFS_GET: dict[str, Handler[FilesService]] = {
    "read": lambda s, p, r: s.dbfs_read(
        p, r.params.get("path"), r.params.get("offset"), r.params.get("length")
    ),
    "get-status": lambda s, p, r: s.dbfs_get_status(p, r.params.get("path")),
    "list": lambda s, p, r: s.dbfs_list(p, r.params.get("path")),
}
WORKSPACE_POST: dict[str, Handler[FilesService]] = {
    "import": _import,
    "mkdirs": body_op(lambda s, p, b: s.ws_mkdirs(p, b)),
    "delete": body_op(lambda s, p, b: s.ws_delete(p, b)),
}
WORKSPACE_GET: dict[str, Handler[FilesService]] = {
    "export": _export,
    "get-status": lambda s, p, r: s.ws_get_status(p, r.params.get("path")),
    "list": lambda s, p, r: s.ws_list(p, r.params.get("path")),
}


@bp.route(route="api/2.0/dbfs/{op}", methods=["GET", "POST"], auth_level=func.AuthLevel.ANONYMOUS)
def dbfs_api(req: func.HttpRequest) -> func.HttpResponse:
    return dispatch(req, "2.0/dbfs", DBFS_POST, DBFS_GET, lambda c: c.files_service)


@bp.route(
    route="api/2.0/workspace/{op}", methods=["GET", "POST"], auth_level=func.AuthLevel.ANONYMOUS
)
def workspace_api(req: func.HttpRequest) -> func.HttpResponse:
    return dispatch(req, "2.0/workspace", WORKSPACE_POST, WORKSPACE_GET, lambda c: c.files_service)


@bp.timer_trigger(arg_name="timer", schedule="0 */5 * * * *")
def dbfs_handle_sweeper(timer: func.TimerRequest) -> None:
    # Uploads abandoned between create and close: their handles and staged blocks go.
    dropped = container().files_service.sweep_handles()
    if dropped:
        log.info("expired upload handles dropped", extra={"dropped": dropped})
